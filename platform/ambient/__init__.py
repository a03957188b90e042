"""Ambient Platform: fine-tune SDXL on noisy data with the ambient and consistency losses."""

__version__ = "0.1.0"
