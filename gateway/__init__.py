"""A WebSocket gateway for LLM chat."""

__all__ = ["__version__"]

__version__ = "0.1.0"
