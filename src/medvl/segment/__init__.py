"""Segmentation with foundation encoders: data, losses, training, inference (see each module)."""
