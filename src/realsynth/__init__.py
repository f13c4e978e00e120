"""realsynth: exact real/synthetic mixing and per-sample loss weights for DETR-style detectors."""

__version__ = "0.1.0"
