"""avdet: self-supervised audio-visual object detection."""

__version__ = "0.1.0"
