"""ToyWorld: the pack's demo model. A tiny (5.6 MB) text-to-image diffusion model the project trained
itself, built from ComfyUI's own classes, whose world has an unsafe concept (red), proximal benign
concepts (orange, pink), a biased attribute (the background) and exact classifiers. It shows every
method of the pack working on any machine, with nothing to download.

world.py: the world, its captions and classifiers; model.py: the model and its weights
(toyworld.safetensors); comfy_objects.py: MODEL, CLIP and VAE for ComfyUI's nodes; judges.py: safety
score and attribute classifier; steering_vectors/toyworld/: vectors learned on it with the pack's
training loop (benchmarks/toyworld/efficacy.py). The training and benchmark scripts live in
benchmarks/toyworld/.
"""
