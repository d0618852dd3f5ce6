"""Training objectives and the shared training loop (see the training issue)."""
