"""Training recipes and the checkpoint store that trains each model once."""
