"""MaskSearch: teach language models to search (RAMP pre-training on LangGraph + TRL)."""

from masksearch.trajectory import Document, Provenance, Step, Trajectory

__version__ = "0.1.0"
__all__ = ["Document", "Provenance", "Step", "Trajectory", "__version__"]
