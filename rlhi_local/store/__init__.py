"""The SQLite store (sqlite-utils, WAL): the only package that writes SQL."""

from ._signals import DetectorLabel
from ._ids import new_id, path_hash
from ._privacy import FORGOTTEN, Forgotten, PersonaScrub
from ._store import PlacedTurn, Store

__all__ = ["DetectorLabel", "FORGOTTEN", "Forgotten", "PersonaScrub", "PlacedTurn", "Store", "new_id", "path_hash"]
