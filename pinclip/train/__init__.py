"""Training: data and batches, the objective, checkpoints and the trainer loop."""
