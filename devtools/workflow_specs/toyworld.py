"""Try-it-now workflows on ToyWorld, the pack's demo model: one per method, each saving one labelled
before/after grid (same seeds without and with the method) in seconds on a CPU.

ToyWorld draws one circle or square on a dark or light background; red is its unsafe concept and
prompts that leave the background open get a dark one 85 % of the time (its bias). The settings are
the ones benchmarks/EFFICACY.md reports (euler / normal, 12 steps, CFG 4, negative prompt "").
The h-space templates run on ToyWorld-SD, whose bottleneck sits where SD's does, at the settings
benchmarks/EFFICACY_TOYWORLD_SD.md chose (on ToyWorld the same methods move the background but break
half the shapes)."""
from devtools.workflow_builder import Spec, WorkflowBuilder

STEPS, CFG, SEED, BATCH = 12, 4.0, 1000, 4
UNSAFE, BENIGN = "a red circle", "a green circle"
VECTORS = "toyworld/"
VECTORS_SD = "toyworld_sd/"
# the fairness strengths benchmarks/EFFICACY_TOYWORLD_SD.md chose on its tuning seeds
CODSMA_STRENGTH, RESPODIFF_STRENGTH = 4.0, 2.0


class ToyScene:
    """The nodes every ToyWorld workflow shares: the loader (ToyWorld's, or ToyWorld-SD's: `loader`), the empty
    negative prompt, a latent (ToyWorld-SD's latent is ToyWorld's)."""

    def __init__(self, w: WorkflowBuilder, batch: int = BATCH, loader: str = "RSLoadToyWorld"):
        self.w = w
        self.toy = w.node(loader)
        self.model, self.clip, self.vae = self.toy.out("MODEL"), self.toy.out("CLIP"), self.toy.out("VAE")
        self.negative = self.encode("")
        self.latent = w.node("RSToyWorldEmptyLatent", batch_size=batch).out(0)

    def encode(self, text: str):
        return self.w.node("CLIPTextEncode", text=text, clip=self.clip).out(0)

    def sample(self, positive, model=None, seed: int = SEED):
        """KSampler with the demo settings, decoded: IMAGE output."""
        latent = self.w.node("KSampler", model=model or self.model, positive=positive, negative=self.negative,
                             latent_image=self.latent, seed=seed, steps=STEPS, cfg=CFG, sampler_name="euler",
                             scheduler="normal", denoise=1.0)
        return self.decode(latent.out(0))

    def decode(self, latent):
        return self.w.node("VAEDecode", samples=latent, vae=self.vae).out(0)

    def batch(self, first, second):
        return self.w.node("ImageBatch", image1=first, image2=second).out(0)

    def save_grid(self, before, after, title: str, prefix: str, after_label: str = "after"):
        grid = self.w.node("RSBeforeAfterGrid", before=before, after=after, caption=title, before_label="before",
                           after_label=after_label, cell_size=96)
        self.w.node("SaveImage", images=grid.out(0), filename_prefix=f"responsible-steering/toyworld/{prefix}")


def embedding_direction(w: WorkflowBuilder):
    s = ToyScene(w)
    vector = w.node("RSLoadVector", vector_name=VECTORS + "embedding_direction_safety.safetensors").out(0)
    before, after = [], []
    for text in (UNSAFE, BENIGN):
        prompt = s.encode(text)
        steered = w.node("RSApplyEmbeddingDirection", conditioning=prompt, vector=vector, strength=0.5,
                         start_percent=0.0, end_percent=1.0, chunk_mode="every_chunk").out(0)
        before.append(s.sample(prompt))
        after.append(s.sample(steered))
    s.save_grid(s.batch(*before), s.batch(*after), "Embedding direction (safety), beta 0.5: "
                f"'{UNSAFE}' x4, '{BENIGN}' x4", "embedding_direction")
    w.note("Left 4: 'a red circle', right 4: 'a green circle', same seeds. The paper's safety direction "
           "(learned on ToyWorld with Train Steering Vector) removes red, and on ToyWorld it also changes the "
           "colour of benign prompts: its target is 'what the empty prompt draws, away from red' for every "
           "prompt (see benchmarks/EFFICACY.md). Vectors for your checkpoint: Train Steering Vector, or "
           "the authors' file via Import Reference Vectors.")


def stg(w: WorkflowBuilder):
    s = ToyScene(w)
    score = w.node("RSToyWorldRedScore", threshold=0.03, temperature=0.02).out(0)
    before, after = [], []
    for text in (UNSAFE, BENIGN):
        prompt = s.encode(text)
        before.append(s.sample(prompt))
        guided = w.node("RSSTGKSampler", model=s.model, seed=SEED, steps=STEPS, cfg=CFG, sampler_name="euler",
                        scheduler="normal", positive=prompt, negative=s.negative, latent_image=s.latent,
                        denoise=1.0, vae=s.vae, safety_score=score, rho=2.0, start_percent=0.1, end_percent=0.9,
                        update_ratio=1.0, prior_weight=0.0, rebase=False, guide_pooled=False, decoder="vae",
                        autocast="none")
        after.append(s.decode(guided.out("LATENT")))
    s.save_grid(s.batch(*before), s.batch(*after), f"STG, rho 2, red-pixel score: '{UNSAFE}' x4, '{BENIGN}' x4",
                "stg", after_label="STG")
    w.note("STG moves the prompt embedding of each image whose safety score (here ToyWorld's red-pixel share) "
           "is above its threshold, by the score's gradient through the UNet and the decoder: red circles "
           "lose their red, benign images are never updated and come out as without STG. On SD use the NudeNet "
           "or CLIP violence score.")


def dual_latent(w: WorkflowBuilder):
    s = ToyScene(w)
    before, after = [], []
    # the setting benchmarks/EFFICACY.md chose on its tuning seeds: a rewrite that names red's nearest safe colour
    for text, safe_text in ((UNSAFE, "a orange circle"), (BENIGN, BENIGN)):
        prompt = s.encode(text)
        before.append(s.sample(prompt))
        mixed = w.node("RSDualLatentKSampler", model=s.model, seed=SEED, steps=STEPS, cfg=CFG,
                       sampler_name="euler", scheduler="normal", positive=prompt, safe_positive=s.encode(safe_text),
                       negative=s.negative, latent_image=s.latent, denoise=1.0, w_xi=0.75, w_x=0.25, tau_gc=0.5)
        after.append(s.decode(mixed.out(0)))
    s.save_grid(s.batch(*before), s.batch(*after), "Dual latent, w_xi 0.75, tau_gc 0.5: 'a red circle' with safe "
                "prompt 'a orange circle'; 'a green circle' unchanged", "dual_latent", after_label="dual")
    w.note("The original and the safe prompt denoise the same noise together; until tau_gc the result mixes "
           "them (w_xi on the safe one), then the safe prompt finishes. A benign prompt is its own safe prompt "
           "and is unchanged. Here the safe prompt is your rewrite, red replaced by its nearest safe colour, the "
           "setting benchmarks/EFFICACY.md chose: it keeps the circle and took red out of every report image. "
           "Removing the colour word ('a circle') keeps less and sometimes draws red. The Dual-Latent Input "
           "Detector writes a safe prompt for you on SD by removing the unsafe words.")


def hspace(w: WorkflowBuilder, vector_name: str, strength: float, title: str, prefix: str, note: str):
    """'a shape' x8 on ToyWorld-SD without and with a fairness vector (toward a light background) at its
    bottleneck."""
    s = ToyScene(w, batch=8, loader="RSLoadToyWorldSD")
    vector = w.node("RSLoadVector", vector_name=VECTORS_SD + vector_name).out(0)
    shifted = w.node("RSApplyHSpaceVector", model=s.model, vector=vector, strength=strength, start_percent=0.0,
                     end_percent=1.0, branches="cond_only", resize_mode="bilinear").out(0)
    prompt = s.encode("a shape")
    s.save_grid(s.sample(prompt), s.sample(prompt, model=shifted), title, prefix)
    w.note(note)


HSPACE_FINDING = ("ToyWorld-SD's UNet is laid out as SD1.5's, its bottleneck at 1/8 of the latent, and its decoder "
                  "does not read that bottleneck: removing it at every step changes 0.14 % of the pixel range and no "
                  "attribute (benchmarks/EFFICACY_TOYWORLD_SD.md, with the patching evidence and what SD's decoder "
                  "has that this one lacks). So the vector turns no background light, at any strength; it moves "
                  "pixels, and now and then an object's colour or shape near a boundary. On "
                  "ToyWorld, whose 'bottleneck' is half the latent's side, the same kind of vector turns "
                  "backgrounds light but breaks half the shapes (benchmarks/EFFICACY.md). On SD, load a vector you "
                  "trained or imported.")


def codsma(w: WorkflowBuilder):
    hspace(w, "codsma_cvector_fair_light.safetensors", CODSMA_STRENGTH,
           f"ToyWorld-SD c-vector (CoDSMa) toward light, strength {CODSMA_STRENGTH:g}: 'a shape' x8 (background "
           "unmoved)", "codsma_cvector",
           "A CoDSMa c-vector (learned on ToyWorld-SD toward 'a shape on a light background') added to the UNet "
           "bottleneck at every step, at the strength benchmarks/EFFICACY_TOYWORLD_SD.md chose on its tuning "
           "seeds. " + HSPACE_FINDING)


def respodiff(w: WorkflowBuilder):
    hspace(w, "respodiff_ram_sam_fair_light.safetensors", RESPODIFF_STRENGTH,
           f"ToyWorld-SD RespoDiff (RAM + SAM) toward light, strength {RESPODIFF_STRENGTH:g}: 'a shape' x8 "
           "(background unmoved)", "respodiff",
           "RespoDiff's RAM + SAM pair (learned on ToyWorld-SD toward 'a shape on a light background', SAM at "
           "0.01 of RAM's learning rate) added together to the bottleneck of the conditional branch, at the "
           "strength benchmarks/EFFICACY_TOYWORLD_SD.md chose on its tuning seeds. " + HSPACE_FINDING)


def fair_sampling(w: WorkflowBuilder):
    batch = 8
    s = ToyScene(w, batch=batch)
    dark = w.node("RSLoadVector", vector_name=VECTORS + "embedding_direction_fair_dark.safetensors").out(0)
    light = w.node("RSLoadVector", vector_name=VECTORS + "embedding_direction_fair_light.safetensors").out(0)
    vectors = w.node("RSVectorSet", vector_1=dark, vector_2=light).out(0)
    prompt = s.encode("a shape")
    fair = w.node("RSApplyEmbeddingDirectionFair", conditioning=prompt, vectors=vectors, batch_size=batch, seed=0,
                  assignment="balanced", strength=2.0, start_percent=0.0, end_percent=1.0,
                  chunk_mode="every_chunk").out(0)  # the strength benchmarks/EFFICACY.md chose on its tuning seeds
    s.save_grid(s.sample(prompt), s.sample(fair), "Fair sampling, embedding directions dark / light, balanced, "
                "strength 2: 'a shape' x8", "fair_sampling", after_label="fair")
    w.note("'a shape' leaves the background open, and ToyWorld draws dark ones 85 % of the time (its bias). "
           "Fair sampling gives each image one of the two learned directions (balanced: each equally often), "
           "so half the images come out light.")


def training(w: WorkflowBuilder):
    s = ToyScene(w)
    trained = w.node("RSTrainSteeringVector", model=s.model, clip=s.clip, method="embedding_direction",
                     direction="toward_target", neutral_prompt="a shape",
                     target_prompt="a shape on a light background", iterations=40, batch_size=4, learning_rate=0.0,
                     lambda_sem=0.5, rank=1, seed=0, resolution=0, rollout_steps=STEPS, scheduler="method_default",
                     target_guidance=CFG, gradient_checkpointing=False, checkpoint_every=100, resume=False,
                     save_name="toyworld_light_background", sam_lr_scale=0.01, schedule="method_default",
                     init="method_default", rollout_sampler="method_default", respodiff_rollout="ram_sam")
    prompt = s.encode("a shape")
    steered = w.node("RSApplyEmbeddingDirection", conditioning=prompt, vector=trained.out("vector"), strength=0.25,
                     start_percent=0.0, end_percent=1.0, chunk_mode="every_chunk").out(0)
    s.save_grid(s.sample(prompt), s.sample(steered), "Train Steering Vector: 'a shape' toward "
                "'a shape on a light background', 40 iterations, applied at 0.25", "training",
                after_label="trained")
    w.note("Train Steering Vector learns an embedding direction on ToyWorld in the graph (about half a minute "
           "on a CPU), saves it to models/steering_vectors and applies it at once. The loss curve is drawn on "
           "the node.")


def detect_censor(w: WorkflowBuilder):
    s = ToyScene(w)
    images = s.batch(s.sample(s.encode(UNSAFE)), s.sample(s.encode(BENIGN)))
    score = w.node("RSToyWorldRedScore", threshold=0.03, temperature=0.02).out(0)
    found = w.node("RSDetectUnsafe", images=images, safety_score=score)
    censored = w.node("RSCensorRegions", images=images, masks=found.out("masks"), mode="black", strength=8)
    s.save_grid(images, censored.out(0), f"Detect Unsafe (red-pixel score) + Censor Regions: '{UNSAFE}' x4, "
                f"'{BENIGN}' x4", "detect_censor", after_label="censored")
    w.note("Detect Unsafe scores every image; an unsafe one gets a mask (its boxes with NudeNet, the whole image "
           "with analytic and CLIP scores), and Censor Regions blacks out the masked regions (or blurs or "
           "pixelates them: on ToyWorld the unsafe concept is a colour, which pixelation keeps). Safe images "
           "are unchanged.")


def spec(name: str, title: str, description: str, build) -> Spec:
    """A ToyWorld template: its own settings run as opened on a CPU, so it has no real-model copy."""
    return Spec(name, title, description, build, real_model=False)


WORKFLOWS = [
    spec("toyworld_stg", "ToyWorld STG", "Safety-score gradients steer the prompt embedding: red "
         "circles lose their red, green ones are untouched.", stg),
    spec("toyworld_dual_latent", "ToyWorld dual latent", "Original and safe prompt denoise "
         "together; the safe prompt takes over.", dual_latent),
    spec("toyworld_embedding_direction", "ToyWorld safety direction", "A learned direction added "
         "to the prompt embedding removes red (and, on ToyWorld, other colours).", embedding_direction),
    spec("toyworld_fair_sampling", "ToyWorld fair sampling", "One learned direction per image balances "
         "ToyWorld's biased background.", fair_sampling),
    spec("toyworld_codsma_cvector", "ToyWorld-SD c-vector (CoDSMa)", "A learned h-space vector at an SD-like "
         "bottleneck: on ToyWorld-SD, whose decoder does not read it, the background does not move.", codsma),
    spec("toyworld_respodiff", "ToyWorld-SD RespoDiff", "RAM + SAM at an SD-like bottleneck: on ToyWorld-SD, "
         "whose decoder does not read it, the background does not move.", respodiff),
    spec("toyworld_training", "ToyWorld train a vector", "Learn an embedding direction in the graph, "
         "then apply it.", training),
    spec("toyworld_detect_censor", "ToyWorld detect and censor", "Score every image and black the "
         "unsafe ones out.", detect_censor),
]
