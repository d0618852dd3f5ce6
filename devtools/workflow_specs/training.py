"""Example workflows of the training node: learn a vector in the graph, then apply it."""
from devtools.workflow_builder import SD15_CHECKPOINT, Spec, WorkflowBuilder

from devtools.workflow_specs.vectors import txt2img


def train(w: WorkflowBuilder, ckpt, method: str, neutral: str, target: str, direction: str, iterations: int,
          save_name: str, title: str | None = None):
    """A Train Steering Vector node with the paper settings (rates and guidance: method defaults)."""
    return w.node("RSTrainSteeringVector", title=title, model=ckpt.out("MODEL"), clip=ckpt.out("CLIP"),
                  method=method, direction=direction, neutral_prompt=neutral, target_prompt=target,
                  iterations=iterations, batch_size=8, learning_rate=0.0, lambda_sem=0.5, rank=1, seed=0,
                  resolution=0, rollout_steps=50, scheduler="ddim_uniform", target_guidance=0.0,
                  gradient_checkpointing=True, checkpoint_every=100, resume=False, save_name=save_name)


def plot(w: WorkflowBuilder, trained, prefix: str):
    image = w.node("RSPlotSteeringLoss", loss=trained.out(1), width=768, height=384, log_scale=True)
    w.node("PreviewImage", images=image.out(0))


def fairness_pair(w: WorkflowBuilder):
    ckpt = w.node("CheckpointLoaderSimple", ckpt_name=SD15_CHECKPOINT)
    man = train(w, ckpt, "codsma_cvector", "a person", "a man", "toward_target", 1000, "codsma_man",
                title="Train c-vector: man")
    woman = train(w, ckpt, "codsma_cvector", "a person", "a woman", "toward_target", 1000, "codsma_woman",
                  title="Train c-vector: woman")
    plot(w, woman, "fairness")
    vectors = w.node("RSVectorSet", vector_1=man.out(0), vector_2=woman.out(0))
    model = w.node("RSApplyHSpaceVectorFair", model=ckpt.out("MODEL"), vectors=vectors.out(0), seed=0,
                   assignment="balanced", strength=1.0, start_percent=0.0, end_percent=1.0,
                   branches="cond_only", resize_mode="bilinear")
    txt2img(w, model.out(0), ckpt.out("CLIP"), ckpt.out("VAE"), "a photo of a doctor", batch=4,
            prefix="trained_fair_pair")
    w.note("Learns CoDSMa c-vectors for 'a man' and 'a woman' from the neutral prompt 'a person' (paper: "
           "1000 iterations, batch 8), then gives each image of the batch one of them (fair sampling). "
           "The vectors are also saved to models/steering_vectors; later runs can load them with Load "
           "Steering Vector instead of training again.")


def anti_violence(w: WorkflowBuilder):
    ckpt = w.node("CheckpointLoaderSimple", ckpt_name=SD15_CHECKPOINT)
    trained = train(w, ckpt, "codsma_cvector", "a scene", "violence", "away_from_concept", 1500,
                    "codsma_anti_violence")
    plot(w, trained, "anti_violence")
    model = w.node("RSApplyHSpaceVector", model=ckpt.out("MODEL"), vector=trained.out(0), strength=1.0,
                   start_percent=0.0, end_percent=1.0, branches="cond_only", resize_mode="bilinear")
    txt2img(w, model.out(0), ckpt.out("CLIP"), ckpt.out("VAE"), "a street fight at night, photo",
            prefix="trained_anti_violence")
    w.note("Learns an anti-violence c-vector: the neutral prompt 'a scene' is steered away from 'violence' "
           "(negative prompting, as in CoDSMa; paper: 1500 iterations, batch 8). Combine it with an "
           "anti-sexual vector using Combine Steering Vectors for a general safety vector.")


def safe_embedding(w: WorkflowBuilder):
    ckpt = w.node("CheckpointLoaderSimple", ckpt_name=SD15_CHECKPOINT)
    unsafe = ("hate, harassment, violence, suffering, humiliation, harm, suicide, sexual, nudity, nude, bodily "
              "fluids, blood, obscene gestures, illegal activity, drug use, theft, vandalism, weapons, child "
              "abuse, brutality, cruelty")
    trained = train(w, ckpt, "embedding_direction", "a photo of a person", unsafe, "away_from_concept", 1000,
                    "safe_embedding_direction")
    plot(w, trained, "safe_embedding")
    prompt = w.node("CLIPTextEncode", text="a photo of a person at a party, detailed", clip=ckpt.out("CLIP"))
    steered = w.node("RSApplyEmbeddingDirection", conditioning=prompt.out(0), vector=trained.out(0),
                     strength=1.0, start_percent=0.276, end_percent=1.0, chunk_mode="every_chunk")
    txt2img(w, ckpt.out("MODEL"), ckpt.out("CLIP"), ckpt.out("VAE"), None, prefix="trained_safe_embedding",
            positive_conditioning=steered.out(0))
    w.note("Learns a rank-1 'safe region' direction for the prompt embedding (arXiv 2505.15427): away from "
           "SLD's unsafe concept list, with the reference settings (CFG 7.5 rollout, loss 10 x MSE, Adam lr "
           "0.06). Applied from start_percent 0.276 on (the paper's step 15 of 50 on the normal scheduler), to the "
           "positive prompt only.")


WORKFLOWS = [
    Spec("train_fairness_pair_codsma", "Train a fairness pair",
         "Learn CoDSMa c-vectors for 'a man' and 'a woman' in the graph, then give each image one of them.",
         fairness_pair),
    Spec("train_anti_violence_codsma", "Train an anti-violence vector",
         "Learn a CoDSMa c-vector away from 'violence' in the graph and add it to the UNet bottleneck.",
         anti_violence),
    Spec("train_safe_embedding_direction", "Train a safety direction",
         "Learn an embedding direction away from unsafe concepts in the graph and add it to the prompt.",
         safe_embedding),
]
