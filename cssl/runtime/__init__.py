"""What a run needs around the model: launch checks, SLURM, checkpoints, loggers, trainer and run dir."""
