"""Training: loops and losses, row-wise Adam, the continual reference model, candidate training, metrics."""
