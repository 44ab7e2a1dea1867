"""Classifiers whose first layer normalises, so every input and distance is in pixel units."""
