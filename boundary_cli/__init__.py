"""boundary: how far is each sample from a classifier's decision boundary, and what does it say."""

__version__ = "0.1.0"
