"""Detectors of likely-wrong predictions: pure torch/sklearn, no Hydra."""
