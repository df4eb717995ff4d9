"""Images out: generating from a model folder as a job, its cost forecast, grids, PNGs and animations."""
