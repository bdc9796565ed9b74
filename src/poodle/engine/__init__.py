"""Engine: the pretraining loop, DDP set-up, optimiser, checkpoints and logging."""
