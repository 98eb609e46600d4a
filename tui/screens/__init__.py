"""The chat's modal screens: help, confirm, edit an answer, rename a conversation, the persona,
training."""

from __future__ import annotations

from .confirm import ConfirmScreen
from .edit import EditScreen
from .help import HelpScreen
from .persona import PersonaScreen
from .rename import RenameScreen
from .training import TrainingScreen

__all__ = ["ConfirmScreen", "EditScreen", "HelpScreen", "PersonaScreen", "RenameScreen", "TrainingScreen"]
