"""Example workflows of the vector apply nodes (embedding direction, h-space, fair sampling)."""
from devtools.workflow_builder import SD15_CHECKPOINT, Spec, WorkflowBuilder


def txt2img(w: WorkflowBuilder, model, clip, vae, positive, negative="", batch=1, seed=42, prefix="rs",
            positive_conditioning=None):
    """Prompt encoding, an empty latent, KSampler, decode and save; returns the KSampler node."""
    pos = positive_conditioning or w.node("CLIPTextEncode", text=positive, clip=clip).out(0)
    neg = w.node("CLIPTextEncode", text=negative, clip=clip)
    latent = w.node("EmptyLatentImage", width=512, height=512, batch_size=batch)
    sampler = w.node("KSampler", model=model, positive=pos, negative=neg.out(0), latent_image=latent.out(0),
                     seed=seed, steps=30, cfg=7.5, sampler_name="euler", scheduler="normal", denoise=1.0)
    image = w.node("VAEDecode", samples=sampler.out(0), vae=vae)
    w.node("SaveImage", images=image.out(0), filename_prefix=f"responsible-steering/{prefix}")
    return sampler


def embedding_direction(w: WorkflowBuilder):
    ckpt = w.node("CheckpointLoaderSimple", ckpt_name=SD15_CHECKPOINT)
    prompt = w.node("CLIPTextEncode", text="a photo of a person at the beach, detailed", clip=ckpt.out("CLIP"))
    vector = w.node("RSLoadVector", vector_name="safe-direction.safetensors")
    steered = w.node("RSApplyEmbeddingDirection", conditioning=prompt.out(0), vector=vector.out(0),
                     strength=1.0, start_percent=0.276, end_percent=1.0, chunk_mode="every_chunk")
    txt2img(w, ckpt.out("MODEL"), ckpt.out("CLIP"), ckpt.out("VAE"), None, prefix="embedding_direction",
            positive_conditioning=steered.out(0))
    w.note("safe-direction.safetensors is the authors' published SD1.4 safety direction, converted with "
           "Import Reference Vectors (or `python -m scripts.import_reference safe-direction.pth --out "
           "models/steering_vectors`). The shift starts at start_percent 0.276: exactly the paper's warm-up step "
           "15 of 50 on the normal scheduler (the same noise level at any step count), and only the positive "
           "prompt is steered.")


def hspace_vector(w: WorkflowBuilder):
    ckpt = w.node("CheckpointLoaderSimple", ckpt_name=SD15_CHECKPOINT)
    vector = w.node("RSLoadVector", vector_name="sdisc_antisexual.safetensors")
    model = w.node("RSApplyHSpaceVector", model=ckpt.out("MODEL"), vector=vector.out(0), strength=1.0,
                   start_percent=0.0, end_percent=1.0, branches="cond_only", resize_mode="bilinear")
    txt2img(w, model.out(0), ckpt.out("CLIP"), ckpt.out("VAE"), "a photo of a woman on a beach",
            prefix="hspace_vector")
    w.note("The SDisc anti-sexual h-space vector is added to the UNet bottleneck at every step, for the "
           "conditional branch only. Any CoDSMa c-vector or RespoDiff RAM+SAM file works the same way.")


def fair_sampling_sdisc(w: WorkflowBuilder):
    ckpt = w.node("CheckpointLoaderSimple", ckpt_name=SD15_CHECKPOINT)
    female = w.node("RSLoadVector", vector_name="sdisc_female.safetensors")
    male = w.node("RSLoadVector", vector_name="sdisc_male.safetensors")
    vectors = w.node("RSVectorSet", vector_1=female.out(0), vector_2=male.out(0))
    model = w.node("RSApplyHSpaceVectorFair", model=ckpt.out("MODEL"), vectors=vectors.out(0), seed=0,
                   assignment="balanced", strength=1.0, start_percent=0.0, end_percent=1.0,
                   branches="cond_only", resize_mode="bilinear")
    txt2img(w, model.out(0), ckpt.out("CLIP"), ckpt.out("VAE"), "a photo of a doctor", batch=4,
            prefix="fair_sampling_sdisc")
    w.note("Fair sampling: each of the 4 images gets the SDisc female or male vector. 'balanced' uses each "
           "vector equally often in every run of 2 images; 'uniform' draws independently, as in the papers.")


WORKFLOWS = [
    Spec("embedding_direction_sd15", "Embedding safety direction",
         "A learned safety direction (arXiv 2505.15427) is added to the prompt embedding on SD1.5.",
         embedding_direction, needs_reference_vectors=True),
    Spec("hspace_vector_sd15", "h-space vector (anti-sexual)",
         "A learned vector (CoDSMa, RespoDiff or SDisc) is added to the SD1.5 UNet bottleneck.",
         hspace_vector, needs_reference_vectors=True),
    Spec("fair_sampling_sdisc_gender", "Fair sampling by gender",
         "Each image of the batch gets one SDisc attribute vector (female or male), drawn with a seed.",
         fair_sampling_sdisc, needs_reference_vectors=True),
]
