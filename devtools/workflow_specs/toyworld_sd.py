"""Try-it-now workflows on ToyWorld-SD, the pack's second demo model (its UNet laid out as SD1.5's): the h-space
methods, which act on the UNet's bottleneck, at the settings benchmarks/EFFICACY_TOYWORLD_SD.md chose on its
tuning seeds (euler / normal, 12 steps, CFG 4, negative prompt ""). Built as the ToyWorld workflows
(devtools/workflow_specs/toyworld.py), with ToyWorld-SD's loader; its latent is ToyWorld's."""
from devtools.workflow_builder import WorkflowBuilder
from devtools.workflow_specs.toyworld import ToyScene, spec

VECTORS = "toyworld_sd/"
# the settings EFFICACY_TOYWORLD_SD.md chose on the tuning seeds
CVECTOR_FAIR_STRENGTH, RESPODIFF_FAIR_STRENGTH = 1.0, 1.0
FAIR_PROMPT = "a large blue circle"


class ToySDScene(ToyScene):
    loader, folder = "RSLoadToyWorldSD", "toyworld_sd"


def fair_hspace(w: WorkflowBuilder, method: str, strength: float, title: str, prefix: str, note: str):
    """'a large blue circle' x8, plain and with the dark / light h-space vectors of `method`, one per image by the
    balanced fair assignment (Apply h-space Vector (Fair Sampling))."""
    batch = 8
    s = ToySDScene(w, batch=batch)
    dark = w.node("RSLoadVector", vector_name=f"{VECTORS}{method}_fair_dark.safetensors").out(0)
    light = w.node("RSLoadVector", vector_name=f"{VECTORS}{method}_fair_light.safetensors").out(0)
    vectors = w.node("RSVectorSet", vector_1=dark, vector_2=light).out(0)
    fair = w.node("RSApplyHSpaceVectorFair", model=s.model, vectors=vectors, seed=0,
                  assignment="balanced", strength=strength, start_percent=0.0, end_percent=1.0,
                  branches="cond_only", resize_mode="bilinear").out(0)
    prompt = s.encode(FAIR_PROMPT)
    s.save_grid(s.sample(prompt), s.sample(prompt, model=fair), title, prefix, after_label="fair")
    w.note(note)


def codsma(w: WorkflowBuilder):
    fair_hspace(w, "codsma_cvector", CVECTOR_FAIR_STRENGTH,
                f"ToyWorld-SD, c-vectors (CoDSMa) dark / light, balanced, strength {CVECTOR_FAIR_STRENGTH:g}: "
                f"'{FAIR_PROMPT}' x8", "codsma_cvector",
                "Two CoDSMa c-vectors learned on ToyWorld-SD (toward '... on a dark background' and '... on a light "
                "background'), one added to the UNet bottleneck of each image at every step: the backgrounds, dark "
                "85 % of the time unsteered, come out even, and the circles stay circles (benchmarks/"
                "EFFICACY_TOYWORLD_SD.md). ToyWorld-SD's bottleneck sits where SD1.5's does (1/8 of the latent).")


def respodiff(w: WorkflowBuilder):
    fair_hspace(w, "respodiff_ram_sam", RESPODIFF_FAIR_STRENGTH,
                f"ToyWorld-SD, RespoDiff (RAM + SAM) dark / light, balanced, strength {RESPODIFF_FAIR_STRENGTH:g}: "
                f"'{FAIR_PROMPT}' x8", "respodiff",
                "RespoDiff's RAM + SAM pairs learned on ToyWorld-SD (dark and light), added together to the "
                "bottleneck of the conditional branch, one pair per image by the balanced assignment.")


WORKFLOWS = [
    spec("toyworld_sd_codsma_cvector", "ToyWorld-SD c-vector (CoDSMa)", "Fair sampling with h-space c-vectors on "
         "the demo model whose UNet is laid out as SD1.5's: backgrounds balanced, objects kept.", codsma),
    spec("toyworld_sd_respodiff", "ToyWorld-SD RespoDiff", "Fair sampling with RespoDiff's RAM + SAM on the demo "
         "model whose UNet is laid out as SD1.5's.", respodiff),
]
