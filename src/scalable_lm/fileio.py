"""Atomic file writes and checksums: the only file primitives the package uses (no model knowledge).

Kept apart from ``store`` so that lower layers (the query cache in ``encoder``, the demo's results) can
write files atomically without importing the model-directory format.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

TMP_SUFFIX = ".tmp"  # every temp file is ".<name>.<random>.tmp" beside its target (recovery finds them by it)


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp)`` on a temp file beside ``path``, fsync it, then rename it onto ``path``.

    A failure at any point (an exception in ``write``, a full disk, a signal) removes the temp file and
    leaves ``path`` as it was.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TMP_SUFFIX, dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~umask())  # mkstemp makes 0600; give the mode a plain write would (umask)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def umask() -> int:
    """The process umask (reading it means setting it; restored at once)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
