"""Where medclf keeps what it derives and can derive again: decoded-image caches, TensorRT engines."""

from __future__ import annotations

import os
from pathlib import Path


def default_cache_dir() -> Path:
    """``$MEDCLF_CACHE``, else ``~/.cache/medclf``."""
    return Path(os.environ.get("MEDCLF_CACHE", Path.home() / ".cache" / "medclf"))
