"""DDPM Studio: train Denoising Diffusion Probabilistic Models on your own images, and watch them work."""

__version__ = "0.1.0"
