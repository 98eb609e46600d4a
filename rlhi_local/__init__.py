"""rlhi-local: a private, on-device assistant that learns from how one person talks to it."""

__version__ = "0.1.0"

__all__ = ["__version__"]
