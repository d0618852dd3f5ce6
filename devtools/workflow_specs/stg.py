"""Example workflows of STG (safe text-embedding guidance) and the detect / censor nodes."""
from devtools.workflow_builder import SD15_CHECKPOINT, Spec, WorkflowBuilder

CLIP_MODEL = "clip-vit-large-patch14"
STG_DEFAULTS = dict(rho=0.5, start_percent=0.1, end_percent=0.9, update_ratio=1.0, prior_weight=0.0,
                    rebase=False, guide_pooled=False, decoder="vae", autocast="none")


def prompts(w: WorkflowBuilder, ckpt, text: str, negative: str = ""):
    pos = w.node("CLIPTextEncode", text=text, clip=ckpt.out("CLIP"))
    neg = w.node("CLIPTextEncode", text=negative, clip=ckpt.out("CLIP"))
    return pos.out(0), neg.out(0)


def stg_nudity(w: WorkflowBuilder):
    ckpt = w.node("CheckpointLoaderSimple", ckpt_name=SD15_CHECKPOINT)
    pos, neg = prompts(w, ckpt, "a photo of a person at the beach, detailed")
    score = w.node("RSNudeNetScore", label_preset="stg_nudity", custom_labels="", detection_threshold=0.01,
                   threshold=0.0)
    latent = w.node("EmptyLatentImage", width=512, height=512, batch_size=2)
    sampler = w.node("RSSTGKSampler", model=ckpt.out("MODEL"), seed=42, steps=50, cfg=7.5, sampler_name="euler",
                     scheduler="normal", positive=pos, negative=neg, latent_image=latent.out(0), denoise=1.0,
                     vae=ckpt.out("VAE"), safety_score=score.out(0), **STG_DEFAULTS)
    image = w.node("VAEDecode", samples=sampler.out(0), vae=ckpt.out("VAE"))
    w.node("SaveImage", images=image.out(0), filename_prefix="responsible-steering/stg_nudity")
    w.node("PreviewAny", source=sampler.out("report"))
    w.note("STG (arXiv 2510.24012): on steps 5-45 of 50 (window 0.1-0.9), every image whose NudeNet score "
           "(sum of confidences of the four STG classes; detections above 0.01, per-class NMS at IoU 0.7, at most "
           "300, as the reference) is above 0 gets its prompt "
           "embedding moved against the score's gradient, through the UNet, the denoised estimate and the VAE. "
           "rho 0.5 as in the authors' README runs; rho = 0 gives KSampler's image exactly. The NudeNet "
           "detector comes from the installed nudenet package (or models/nudenet/320n.onnx).")


def stg_violence(w: WorkflowBuilder):
    ckpt = w.node("CheckpointLoaderSimple", ckpt_name=SD15_CHECKPOINT)
    pos, neg = prompts(w, ckpt, "a street scene at night, people arguing")
    score = w.node("RSCLIPViolenceScore", clip_model=CLIP_MODEL,
                   violence_texts="violence\nblood\na bloody wound\na fight\na gun\ngore\nbrutality",
                   threshold=0.2)
    guider = w.node("RSSTGGuider", model=ckpt.out("MODEL"), positive=pos, negative=neg, cfg=7.5,
                    vae=ckpt.out("VAE"), safety_score=score.out(0), **{**STG_DEFAULTS, "rho": 2.0})
    noise = w.node("RandomNoise", noise_seed=7)
    sampler = w.node("KSamplerSelect", sampler_name="dpmpp_2m")
    sigmas = w.node("BasicScheduler", model=ckpt.out("MODEL"), scheduler="karras", steps=30, denoise=1.0)
    latent = w.node("EmptyLatentImage", width=512, height=512, batch_size=1)
    sampled = w.node("SamplerCustomAdvanced", noise=noise.out(0), guider=guider.out(0), sampler=sampler.out(0),
                     sigmas=sigmas.out(0), latent_image=latent.out(0))
    image = w.node("VAEDecode", samples=sampled.out(0), vae=ckpt.out("VAE"))
    w.node("SaveImage", images=image.out(0), filename_prefix="responsible-steering/stg_violence")
    w.note(f"The STG Guider works with any sampler and scheduler through SamplerCustomAdvanced. The violence "
           f"score is the mean CLIP similarity between the image and the violence texts; images above 0.2 are "
           f"guided. Put a CLIP model (Hugging Face layout: config.json + model.safetensors, e.g. "
           f"openai/clip-vit-large-patch14 saved locally) into models/safety_clip/{CLIP_MODEL}/: CLIP weights "
           f"are never downloaded.")


def detect_and_censor(w: WorkflowBuilder):
    ckpt = w.node("CheckpointLoaderSimple", ckpt_name=SD15_CHECKPOINT)
    pos, neg = prompts(w, ckpt, "a photo of people at the beach")
    latent = w.node("EmptyLatentImage", width=512, height=512, batch_size=2)
    sampler = w.node("KSampler", model=ckpt.out("MODEL"), positive=pos, negative=neg, latent_image=latent.out(0),
                     seed=3, steps=30, cfg=7.5, sampler_name="euler", scheduler="normal", denoise=1.0)
    image = w.node("VAEDecode", samples=sampler.out(0), vae=ckpt.out("VAE"))
    # the same detection settings as Censor's defaults (the nudenet package's), fed RGB
    score = w.node("RSNudeNetScore", label_preset="all_exposed", custom_labels="", detection_threshold=0.25,
                   threshold=0.0, nms_iou=0.45, class_wise_nms=False, max_detections=0, resize="letterbox")
    detect = w.node("RSDetectUnsafe", images=image.out(0), safety_score=score.out(0))
    w.node("PreviewAny", source=detect.out("report"))
    censored = w.node("RSCensor", images=image.out(0), label_preset="all_exposed", custom_labels="",
                      detection_threshold=0.25, mode="pixelate", strength=16, padding=0.1)
    w.node("SaveImage", images=censored.out(0), filename_prefix="responsible-steering/censored")
    w.note("Detect Unsafe scores every image of the batch (per-image scores, masks, a report); Censor pixelates "
           "(or blurs / blacks out) the boxes of the chosen NudeNet labels. Both use the same label presets.")


WORKFLOWS = [
    Spec("stg_nudity_sd15", "STG against nudity",
         "Safe Text-embedding Guidance with the NudeNet score: unsafe images are steered during sampling.",
         stg_nudity),
    Spec("stg_violence_clip", "STG against violence (CLIP)",
         "The STG Guider with a CLIP violence score, through SamplerCustomAdvanced.", stg_violence),
    Spec("detect_and_censor", "Detect and censor nudity",
         "Score a batch with NudeNet, report it, and pixelate the detected regions.", detect_and_censor),
]
