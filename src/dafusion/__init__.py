"""DA-Fusion: few-shot data augmentation with text-to-image diffusion models."""

__version__ = "0.4.0"
