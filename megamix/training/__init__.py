"""Training: configuration, DeepSpeed engine, the phase loop, evaluation, checkpoints, metrics."""
