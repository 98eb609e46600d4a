"""The SQLite store (sqlite-utils, WAL): the only package that writes SQL."""

from ._store import PlacedTurn, Store, new_id, path_hash

__all__ = ["PlacedTurn", "Store", "new_id", "path_hash"]
