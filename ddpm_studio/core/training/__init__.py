"""Training a model: its settings, the loop in named phases, the run plan, the memory estimate."""
