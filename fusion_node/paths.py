"""Where the project keeps things on disk: the shipped models and the one cache folder.

The shipped model bundle is package data of ``models`` (``models/default/manifest.json``); the
node finds it by path, without importing the training package. Everything the project caches
(TensorRT engines, models exported for the benchmark) goes under one folder,
``$XDG_CACHE_HOME/fusion-node`` (``~/.cache/fusion-node`` by default).
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["SHIPPED_MODELS", "cache_dir"]

SHIPPED_MODELS = Path(__file__).resolve().parents[1] / "models" / "default" / "manifest.json"


def cache_dir(*parts: str) -> Path:
    """``$XDG_CACHE_HOME/fusion-node/<parts>`` (not created here)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base, "fusion-node", *parts)
