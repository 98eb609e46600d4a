"""The HTTP API (FastAPI on uvicorn, over a Unix socket): OpenAI-compatible plus native routes."""

from .app import create_app
from .state import AppState

__all__ = ["AppState", "create_app"]
