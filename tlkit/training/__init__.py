"""Training: cached features, datasets, optimizers, the loop, stage plans and state, the trainer, checkpoints
and placement on devices."""
