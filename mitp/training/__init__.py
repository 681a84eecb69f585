"""Training one model: the fit loop and its steps, data loaders, checkpoints, device and thread setup, memory, and the main table of runs."""
