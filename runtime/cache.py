"""Where medclf keeps what it derives and can derive again: decoded-image caches, TensorRT engines."""

from __future__ import annotations

import os
from pathlib import Path


def default_cache_dir() -> Path:
    """``$MEDCLF_CACHE``, else ``~/.cache/medclf``; an empty ``MEDCLF_CACHE`` (``docker run -e MEDCLF_CACHE=``)
    counts as unset, not as the working folder. Raises OSError where there is no home to put it in (HOME unset
    and a user the system does not know: a container run as an arbitrary user id); callers that can go without
    a cache then do."""
    if configured := os.environ.get("MEDCLF_CACHE"):
        return Path(configured)
    try:
        return Path.home() / ".cache" / "medclf"
    except RuntimeError:  # "Could not determine home directory."
        raise OSError("no folder for medclf's cache: HOME is unset and this user has no home directory; set "
                      "MEDCLF_CACHE") from None
