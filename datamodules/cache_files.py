"""Where a derived array (decoded images, log-mel features) of a file list is cached: a file name that
changes whenever anything it was computed from changes, so a stale cache is never read."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = ["keyed_cache_path"]


def keyed_cache_path(
    folder: str | Path, list_name: str, settings: Mapping[str, Any], root: Path, files: list[str]
) -> Path:
    """``folder/<list stem>-<hash>.npy`` for ``files`` (relative to ``root``) under ``settings``."""
    digest = hashlib.sha256(json.dumps(dict(settings), sort_keys=True, default=str).encode())
    for name in files:
        stat = (root / name).stat()
        digest.update(f"\n{name}\t{stat.st_size}\t{stat.st_mtime_ns}".encode())
    return Path(folder) / f"{Path(list_name).stem}-{digest.hexdigest()[:16]}.npy"
