"""ToyWorld-SD: a second demo world whose UNet has Stable Diffusion 1.5's level structure (scaled down)."""
