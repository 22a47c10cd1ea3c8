"""The backend-agnostic training loop, its backends, checkpoints and the run folder."""
