"""Example workflows of dual latent reconstruction (arXiv 2411.13982)."""
from devtools.workflow_builder import SD15_CHECKPOINT, Spec, WorkflowBuilder

PROMPT = "a photo of a bloody street fight at night, cinematic"
NEGATIVE = "blurry, low quality"


def decode_and_save(w: WorkflowBuilder, samples, vae, prefix: str) -> None:
    image = w.node("VAEDecode", samples=samples, vae=vae)
    w.node("SaveImage", images=image.out(0), filename_prefix=f"responsible-steering/{prefix}")


def user_safe_prompt(w: WorkflowBuilder):
    ckpt = w.node("CheckpointLoaderSimple", ckpt_name=SD15_CHECKPOINT)
    clip = ckpt.out("CLIP")
    positive = w.node("CLIPTextEncode", text=PROMPT, clip=clip)
    safe = w.node("CLIPTextEncode", text="a photo of a street at night with people talking, cinematic", clip=clip)
    negative = w.node("CLIPTextEncode", text=NEGATIVE, clip=clip)
    latent = w.node("EmptyLatentImage", width=512, height=512, batch_size=1)
    sampled = w.node("RSDualLatentKSampler", model=ckpt.out("MODEL"), seed=42, steps=30, cfg=7.5,
                     sampler_name="dpmpp_2m", scheduler="karras", positive=positive.out(0), safe_positive=safe.out(0),
                     negative=negative.out(0), latent_image=latent.out(0), denoise=1.0, w_xi=0.75, w_x=0.25,
                     tau_gc=0.5)
    decode_and_save(w, sampled.out(0), ckpt.out("VAE"), "dual_latent_user_safe_prompt")
    w.note("The original and your safe rewrite denoise the same noise in one batched UNet call. Until "
           "tau_gc (half the schedule) the latent follows 0.75 x safe + 0.25 x original, keeping the "
           "original's layout; then only the safe prompt continues. w_xi = 0 with tau_gc = 1 is the plain "
           "KSampler; tau_gc = 0 is the safe prompt alone.")


def input_detector(w: WorkflowBuilder):
    ckpt = w.node("CheckpointLoaderSimple", ckpt_name=SD15_CHECKPOINT)
    clip = ckpt.out("CLIP")
    detector = w.node("RSDualLatentInputDetector", clip=clip, text=PROMPT)
    negative = w.node("CLIPTextEncode", text=NEGATIVE, clip=clip)
    guider = w.node("RSDualLatentGuider", model=ckpt.out("MODEL"), positive=detector.out("positive"),
                    safe_positive=detector.out("safe_positive"), negative=negative.out(0), cfg=7.5, w_xi=0.75,
                    w_x=0.25, tau_gc=0.5)
    noise = w.node("RandomNoise", noise_seed=42)
    sampler = w.node("KSamplerSelect", sampler_name="euler_ancestral")
    sigmas = w.node("BasicScheduler", model=ckpt.out("MODEL"), scheduler="normal", steps=30, denoise=1.0)
    latent = w.node("EmptyLatentImage", width=512, height=512, batch_size=1)
    sampled = w.node("SamplerCustomAdvanced", noise=noise.out(0), guider=guider.out(0), sampler=sampler.out(0),
                     sigmas=sigmas.out(0), latent_image=latent.out(0))
    decode_and_save(w, sampled.out(0), ckpt.out("VAE"), "dual_latent_input_detector")
    w.node("PreviewAny", source=detector.out("report"))
    w.note("The input detector compares the prompt's CLIP embedding with the unsafe and safe concept lists "
           "(editable). An unsafe prompt gets a safe rewrite (unsafe words removed, a suffix added) and both "
           "branches run; a safe prompt passes through unchanged and costs one branch only. The report shows "
           "the verdict, the nearest concepts and the safe prompt.")


WORKFLOWS = [
    Spec("dual_latent_user_safe_prompt", "Dual-latent, your safe prompt",
         "Editing-free safe generation (arXiv 2411.13982): the original prompt keeps the global context, "
         "your safe rewrite decides the content.", user_safe_prompt),
    Spec("dual_latent_input_detector", "Dual-latent, input detector",
         "A nearest-neighbour detector flags unsafe prompts and writes the safe prompt; the Dual-Latent Guider "
         "mixes both branches in SamplerCustomAdvanced.", input_detector),
]
