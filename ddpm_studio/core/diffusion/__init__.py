"""The diffusion process itself: the noise schedule, the forward process, the losses and the bound, the samplers."""
