"""Datasets as tensors in [0, 1] pixel units, and the frequency variants applied to them."""
