"""What the routes share: settings, the model, its queue and the store (owned by the daemon)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..config import Config
from ..engine import Engine, RequestQueue
from ..mining import Miner
from ..models import ModelSpec
from ..store import Store
from ..scheduler import Scheduler
from ..training import Trainings

if TYPE_CHECKING:
    from .warming import Warmer

__all__ = ["AppState"]


@dataclass
class AppState:
    config: Config
    spec: ModelSpec
    engine: Engine
    queue: RequestQueue
    store: Store
    miner: Miner
    trainings: Trainings
    scheduler: Scheduler | None = None
    warmer: Warmer | None = None
    """Set by the app: keeps answers fast across adapter and persona changes (`api.warming`)."""
    started_at: float = field(default_factory=time.monotonic)
