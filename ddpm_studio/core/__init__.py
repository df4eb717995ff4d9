"""The engine: diffusion mathematics, the U-Net, data, training and model folders. Never imports Qt."""
