"""Secret files: written readable by their owner only (0600 from creation, never wider)."""

from __future__ import annotations

import os
from pathlib import Path


def write_private(path: str | Path, data: bytes) -> Path:
    """Create or replace ``path`` with ``data``, mode 0600 (also when it existed with wider mode)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    os.chmod(path, 0o600)
    return path
