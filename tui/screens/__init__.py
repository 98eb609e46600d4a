"""The chat's modal screens: help, confirm, edit an answer, rename a conversation."""

from __future__ import annotations

from .confirm import ConfirmScreen
from .edit import EditScreen
from .help import HelpScreen
from .rename import RenameScreen

__all__ = ["ConfirmScreen", "EditScreen", "HelpScreen", "RenameScreen"]
