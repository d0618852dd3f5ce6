"""The methods' maths: plain functions and small classes over tensors and ComfyUI model objects. No node classes
live here (see ../nodes), and no module imports ComfyUI at import time except guiders.py (ComfyUI's guider
class) and, inside its functions, comfy_compat.py (everything that differs between ComfyUI versions).

Where each method is, end to end:

| method (paper) | its maths | training objective (training/objectives.py) | nodes (nodes/) | vector file kind |
|---|---|---|---|---|
| Embedding direction (arXiv 2505.15427) | embedding_direction.py | ``EmbeddingDirection`` | embedding_direction_nodes.py: Apply Embedding Direction (+ Fair Sampling) | ``embedding_direction`` |
| STG, Safe Text-embedding Guidance (arXiv 2510.24012) | stg.py; its guider: guiders.py (scores: safety/; decoders: decoders.py) | - | stg_nodes.py: STG KSampler, STG Guider | - |
| Dual latent reconstruction (arXiv 2411.13982) | dual_latent.py, input_detector.py | - | dual_latent_nodes.py: Dual-Latent KSampler / Guider / Input Detector | - |
| CoDSMa, concept denoising score matching in h-space | codsma.py; the bottleneck patch: hspace.py | ``CodsmaCVector`` | hspace_nodes.py: Apply h-space Vector (+ Fair Sampling) | ``hspace_cvector`` |
| RespoDiff, RAM + SAM (arXiv 2509.15257) | respodiff.py; the bottleneck patch: hspace.py | ``RespoDiffRamSam`` | hspace_nodes.py | ``respodiff_ram_sam`` |
| SDisc semantic directions (CVPR 2024, imported) | hspace.py | - | hspace_nodes.py, Import Reference Vectors | ``hspace_cvector`` |

Shared pieces: guidance.py (classifier-free guidance as ComfyUI's sampler does it, KSampler-style sampling with
any guider), guiders.py (the methods as ComfyUI guiders, which only orchestrate), window.py and schedule.py
(start/end windows, paper steps), fair.py (one vector per image), architectures.py (SD1/SDXL/SD3/FLUX/ToyWorld
shapes), vector_file.py and reference_import.py (the vector format, the authors' files), safety/ (differentiable
safety scores, their registry, detect and censor), evaluation_metrics.py and label_metrics.py (the evaluation
nodes' maths), prompt_format.py (ComfyUI's prompt format), files.py (hardened reads, atomic writes); for gradient passes through
ComfyUI's models: autograd_views.py (the loaded weights as autograd-safe views), checkpointing.py (gradient
checkpointing of UNet and decoder blocks), gradient_memory.py (STG's memory check), precision.py (autocast).
"""
