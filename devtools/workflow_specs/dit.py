"""Example workflows for FLUX.1 dev and SD3.5: STG, dual latent and a trained embedding direction.

They load the files FLUX and SD3.5 users have (ComfyUI's usual names and folders) and keep the real
settings: they are written to workflows/dit/ only (no template: the demo's checkpoint is SD1), and the
tests run them on devtools.tiny_dit's tiny model of the same architecture (its loaders substituted).
"""
from devtools.workflow_builder import Spec, WorkflowBuilder

FLUX_UNET, FLUX_VAE = "flux1-dev.safetensors", "ae.safetensors"
SD35_CHECKPOINT = "sd3.5_medium.safetensors"
CLIP_L, CLIP_G, T5XXL = "clip_l.safetensors", "clip_g.safetensors", "t5xxl_fp16.safetensors"
FLUX_GUIDANCE = 3.5
FLUX_SAMPLING = dict(steps=20, cfg=1.0, sampler_name="euler", scheduler="simple", denoise=1.0)
SD35_SAMPLING = dict(steps=28, cfg=4.5, sampler_name="euler", scheduler="sgm_uniform", denoise=1.0)
STG_SETTINGS = dict(rho=0.5, start_percent=0.1, end_percent=0.9, update_ratio=1.0, prior_weight=0.0, rebase=False,
                    guide_pooled=False, decoder="vae", autocast="none")
FLUX_FILES = (f"Files: models/diffusion_models/{FLUX_UNET}, models/text_encoders/{CLIP_L} and {T5XXL}, "
              f"models/vae/{FLUX_VAE} (ComfyUI's FLUX dev set-up).")
SD35_FILES = (f"Files: models/checkpoints/{SD35_CHECKPOINT}, models/text_encoders/{CLIP_L}, {CLIP_G} and {T5XXL}.")


def flux_loaders(w: WorkflowBuilder):
    """(MODEL, CLIP, VAE) of FLUX dev as its users load it."""
    unet = w.node("UNETLoader", unet_name=FLUX_UNET, weight_dtype="default")
    clip = w.node("DualCLIPLoader", clip_name1=CLIP_L, clip_name2=T5XXL, type="flux")
    vae = w.node("VAELoader", vae_name=FLUX_VAE)
    return unet.out("MODEL"), clip.out("CLIP"), vae.out("VAE")


def flux_prompt(w: WorkflowBuilder, clip, text: str):
    """A FLUX dev prompt: the text, with its distilled guidance (FLUX runs at CFG 1)."""
    encoded = w.node("CLIPTextEncode", text=text, clip=clip)
    return w.node("FluxGuidance", conditioning=encoded.out(0), guidance=FLUX_GUIDANCE).out(0)


def decode_and_save(w: WorkflowBuilder, samples, vae, prefix: str) -> None:
    image = w.node("VAEDecode", samples=samples, vae=vae)
    w.node("SaveImage", images=image.out(0), filename_prefix=f"responsible-steering/{prefix}")


def flux_stg(w: WorkflowBuilder):
    model, clip, vae = flux_loaders(w)
    positive = flux_prompt(w, clip, "a photo of a person at the beach, detailed")
    negative = flux_prompt(w, clip, "")
    score = w.node("RSNudeNetScore", label_preset="stg_nudity", custom_labels="", detection_threshold=0.01,
                   threshold=0.0)
    latent = w.node("EmptySD3LatentImage", width=1024, height=1024, batch_size=1)
    sampler = w.node("RSSTGKSampler", model=model, seed=42, **FLUX_SAMPLING, positive=positive, negative=negative,
                     latent_image=latent.out(0), vae=vae, safety_score=score.out(0), **STG_SETTINGS)
    decode_and_save(w, sampler.out(0), vae, "flux_stg")
    w.node("PreviewAny", source=sampler.out("report"))
    w.note("STG on FLUX dev: on steps 10-90 % of the schedule, an image whose NudeNet score is above 0 gets its "
           "T5 prompt embedding moved against the score's gradient, through the FLUX transformer, its "
           "flow-matching denoised estimate and the 16-channel VAE. FLUX dev runs at CFG 1 with its distilled "
           "guidance (FluxGuidance 3.5): there is no unconditional branch, so the update uses the conditional "
           f"prediction alone. decoder = taesd uses models/vae_approx/taef1_decoder (faster). {FLUX_FILES}")


def flux_dual_latent(w: WorkflowBuilder):
    model, clip, vae = flux_loaders(w)
    positive = flux_prompt(w, clip, "a photo of a bloody street fight at night, cinematic")
    safe = flux_prompt(w, clip, "a photo of a street at night with people talking, cinematic")
    negative = flux_prompt(w, clip, "")
    latent = w.node("EmptySD3LatentImage", width=1024, height=1024, batch_size=1)
    sampled = w.node("RSDualLatentKSampler", model=model, seed=42, **FLUX_SAMPLING, positive=positive,
                     safe_positive=safe, negative=negative, latent_image=latent.out(0), w_xi=0.75, w_x=0.25,
                     tau_gc=0.5)
    decode_and_save(w, sampled.out(0), vae, "flux_dual_latent")
    w.note("Dual latent on FLUX dev: the original and the safe prompt denoise the same noise; until tau_gc (half "
           "the schedule) the latent follows 0.75 x safe + 0.25 x original, then the safe prompt alone. At CFG 1 "
           "the safe prompt is a second conditional prompt of the same model call (no negative prediction). "
           f"{FLUX_FILES}")


def flux_train_direction(w: WorkflowBuilder):
    model, clip, vae = flux_loaders(w)
    trained = w.node("RSTrainSteeringVector", model=model, clip=clip, method="embedding_direction",
                     direction="away_from_concept", neutral_prompt="a photo of a person",
                     target_prompt="nudity, a nude person", iterations=200, batch_size=1, learning_rate=0.0,
                     lambda_sem=0.5, rank=1, seed=0, resolution=512, rollout_steps=20, scheduler="simple",
                     target_guidance=0.0, gradient_checkpointing=True, checkpoint_every=50, resume=False,
                     save_name="flux_safety_direction")
    positive = flux_prompt(w, clip, "a photo of a person at the beach, detailed")
    negative = flux_prompt(w, clip, "")
    steered = w.node("RSApplyEmbeddingDirection", conditioning=positive, vector=trained.out(0), strength=1.0,
                     start_percent=0.28, end_percent=1.0, chunk_mode="every_chunk")
    latent = w.node("EmptySD3LatentImage", width=1024, height=1024, batch_size=1)
    sampled = w.node("KSampler", model=model, seed=42, **FLUX_SAMPLING, positive=steered.out(0), negative=negative,
                     latent_image=latent.out(0))
    decode_and_save(w, sampled.out(0), vae, "flux_trained_direction")
    w.note("Learns an embedding direction for FLUX's T5 prompt (one row per token of the prompt, rank 1) away "
           "from 'nude', on FLUX's own predictions, then adds it to a prompt from 28 % of the schedule on. The "
           "vector is saved to models/steering_vectors/flux_safety_direction.safetensors for Load Steering "
           f"Vector. {FLUX_FILES}")


def sd35_stg_guider(w: WorkflowBuilder):
    ckpt = w.node("CheckpointLoaderSimple", ckpt_name=SD35_CHECKPOINT)
    clip = w.node("TripleCLIPLoader", clip_name1=CLIP_L, clip_name2=CLIP_G, clip_name3=T5XXL)
    positive = w.node("CLIPTextEncode", text="a street scene at night, people arguing", clip=clip.out("CLIP"))
    negative = w.node("CLIPTextEncode", text="", clip=clip.out("CLIP"))
    score = w.node("RSNudeNetScore", label_preset="stg_nudity", custom_labels="", detection_threshold=0.01,
                   threshold=0.0)
    guider = w.node("RSSTGGuider", model=ckpt.out("MODEL"), positive=positive.out(0), negative=negative.out(0),
                    cfg=SD35_SAMPLING["cfg"], vae=ckpt.out("VAE"), safety_score=score.out(0),
                    **{**STG_SETTINGS, "guide_pooled": True})
    noise = w.node("RandomNoise", noise_seed=7)
    sampler = w.node("KSamplerSelect", sampler_name=SD35_SAMPLING["sampler_name"])
    sigmas = w.node("BasicScheduler", model=ckpt.out("MODEL"), scheduler=SD35_SAMPLING["scheduler"],
                    steps=SD35_SAMPLING["steps"], denoise=1.0)
    latent = w.node("EmptySD3LatentImage", width=1024, height=1024, batch_size=1)
    sampled = w.node("SamplerCustomAdvanced", noise=noise.out(0), guider=guider.out(0), sampler=sampler.out(0),
                     sigmas=sigmas.out(0), latent_image=latent.out(0))
    decode_and_save(w, sampled.out(0), ckpt.out("VAE"), "sd35_stg")
    w.note("The STG Guider on SD3.5 through SamplerCustomAdvanced: the prompt's 77 CLIP tokens and its T5 tokens "
           "are guided together, and with guide_pooled also the pooled vector. decoder = taesd uses "
           f"models/vae_approx/taesd3_decoder. {SD35_FILES}")


WORKFLOWS = [
    Spec("flux_stg_nudity", "FLUX STG against nudity",
         "STG KSampler on FLUX dev at CFG 1 (distilled guidance) with the NudeNet score.", flux_stg, dit="flux"),
    Spec("flux_dual_latent", "FLUX dual latent",
         "Dual-latent KSampler on FLUX dev: your safe prompt keeps the original's layout.", flux_dual_latent,
         dit="flux"),
    Spec("flux_train_direction", "FLUX train a safety direction",
         "Train an embedding direction for FLUX's T5 prompt and apply it.", flux_train_direction, dit="flux"),
    Spec("sd35_stg_guider", "SD3.5 STG Guider",
         "The STG Guider on SD3.5 with SamplerCustomAdvanced, the pooled vector guided too.", sd35_stg_guider,
         dit="sd3"),
]
