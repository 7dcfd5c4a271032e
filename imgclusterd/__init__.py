"""imgclusterd: keeps a photo folder grouped by perceptual similarity, continuously."""

from __future__ import annotations

__version__ = "0.1.0"
__all__ = ["__version__"]
