"""How the store fails: SQLite errors translated by their cause, and a damaged file refused unread.

SQLite says SQLITE_FULL for a full disk, but a read-only filesystem, an immutable file or a dying
disk all reach it as an I/O error (SQLITE_IOERR_*, SQLITE_READONLY, SQLITE_CANTOPEN): the
filesystem of the data dir tells them apart. Every message names the data dir or the file and the
fix. A damaged database is refused before SQLite opens it, so nothing (not even a WAL checkpoint)
writes into a file the user must restore from a backup; the check reads only the 100-byte header
and the size (a full `PRAGMA quick_check` costs ~0.5 s per 50 MB at every start, measured).
"""

from __future__ import annotations

import os
import shutil
import sqlite3
from pathlib import Path

from ..errors import DiskFullError, StoreError, StoreUnwritableError

__all__ = ["check_database_file", "damaged_error", "open_error", "read_error", "write_error"]

SQLITE_HEADER = b"SQLite format 3\x00"
# Primary result codes (the low byte of an extended code), from sqlite3.h.
_PERM, _READONLY, _IOERR, _CORRUPT, _FULL, _CANTOPEN, _NOTADB = 3, 8, 10, 11, 13, 14, 26
_UNWRITABLE = {_PERM, _READONLY, _IOERR, _CANTOPEN}
LOW_SPACE_BYTES = 1 << 20
"""Under this much free space an I/O error on write is taken for a full disk (SQLite reports
ENOSPC mid-page, and EFBIG, as a plain I/O error)."""


def _code(exc: sqlite3.Error) -> int:
    return int(getattr(exc, "sqlite_errorcode", 0) or 0) & 0xFF


def _read_only(folder: Path) -> bool:
    try:
        return bool(os.statvfs(folder).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def _low_space(folder: Path) -> bool:
    try:
        return shutil.disk_usage(folder).free < LOW_SPACE_BYTES
    except OSError:
        return False


def damaged_error(path: Path, what: str) -> StoreError:
    return StoreError(
        f"The database {path} is damaged ({what}). Stop the daemon (`rlhi stop`), move the file "
        f"aside (the daemon then starts with a new, empty one) and restore it from a backup. "
        f"The file itself was left as it is."
    )


def write_error(exc: sqlite3.Error, path: Path) -> StoreError:
    """The error for a failed write to the database at `path` (the transaction was rolled back)."""
    folder = path.parent
    code = _code(exc)
    if code == _FULL or (code in _UNWRITABLE and _low_space(folder)):
        return DiskFullError(
            f"The disk holding the data dir {folder} is full ({exc}). Nothing of this request was "
            f"stored, and everything stored before is intact. Free disk space, then try again."
        )
    if code in _UNWRITABLE and _read_only(folder):
        return StoreUnwritableError(
            f"The data dir {folder} is on a read-only filesystem ({exc}), so nothing new can be "
            f"stored; what is stored can still be read. Remount it read-write (or move the data "
            f"to a writable disk and point RLHI_HOME there), then try again."
        )
    if code in _UNWRITABLE:
        return StoreUnwritableError(
            f"Writing to {path} failed ({exc}): the disk or the file refuses writes. Nothing of "
            f"this request was stored. Check that {folder} and its files are writable (mode, "
            f"`lsattr` for the immutable flag, `dmesg` for disk errors) and have free space, then "
            f"try again."
        )
    if code in (_CORRUPT, _NOTADB):
        return damaged_error(path, str(exc))
    return StoreError(f"Writing to {path} failed: {exc}.")


def open_error(exc: sqlite3.Error, path: Path) -> StoreError:
    """The error for a database that SQLite could not open (or migrate) at start."""
    error = write_error(exc, path)
    if isinstance(error, StoreUnwritableError) or _code(exc) in (_CORRUPT, _NOTADB):
        return error
    return StoreError(
        f"The database {path} cannot be opened: {exc}. If it is damaged, move it aside (the daemon "
        f"then starts a new one) and restore it from a backup."
    )


def read_error(exc: sqlite3.Error, path: Path) -> StoreError:
    if _code(exc) in (_CORRUPT, _NOTADB):
        return damaged_error(path, str(exc))
    return StoreError(f"Reading {path} failed: {exc}.")


def check_database_file(path: Path) -> None:
    """Refuse a database file that is not SQLite or is shorter than its header says.

    An empty or missing file is a new database. The size check is skipped while a non-empty WAL
    sits beside the file: a checkpoint interrupted by a crash legitimately leaves the file short
    until SQLite replays the WAL.
    """
    try:
        size = path.stat().st_size
        if size == 0:
            return
        with path.open("rb") as f:
            header = f.read(100)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise StoreError(f"The database {path} cannot be read: {exc}. Check its permissions.") from exc
    if not header.startswith(SQLITE_HEADER):
        raise damaged_error(path, f"it does not start with the SQLite header but with {header[:16]!r}")
    if len(header) < 100:
        raise damaged_error(path, f"it is {size} bytes, shorter than the 100-byte SQLite header")
    page_size = int.from_bytes(header[16:18], "big")
    page_size = 65536 if page_size == 1 else page_size
    if page_size < 512 or page_size & (page_size - 1):
        raise damaged_error(path, f"its header names an impossible page size, {page_size}")
    wal = Path(str(path) + "-wal")
    if wal.exists() and wal.stat().st_size > 0:
        return
    pages = int.from_bytes(header[28:32], "big")
    # The page count in the header is valid only while the change counter matches (offset 92).
    counted = pages if header[24:28] == header[92:96] and pages else 0
    if size % page_size:
        raise damaged_error(path, f"it is truncated: {size} bytes is not a whole number of "
                                  f"{page_size}-byte pages")
    if size < counted * page_size:
        raise damaged_error(path, f"it is truncated: {size} bytes, but its header says {counted} pages "
                                  f"of {page_size} bytes ({counted * page_size} bytes)")
