"""ToyWorld: a tiny text-to-image diffusion model the project trains itself, whose world
has an unsafe concept, a biased attribute and exact classifiers (see world.py, model.py)."""
