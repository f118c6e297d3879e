"""The ground floor: where kdtrain keeps its store and caches, where datasets live, and hiding passwords in URLs
before anything is shown or logged. Imports nothing of kdtrain."""

from __future__ import annotations

import os
import re
from pathlib import Path


def home() -> Path:
    """kdtrain's store directory (MLflow db, Optuna journal, caches): $KDTRAIN_HOME or ./mlruns, absolute."""
    return Path(os.environ.get("KDTRAIN_HOME", "mlruns")).expanduser().resolve()


def data_root(cfg) -> Path:
    """Where the datasets of a data section (kdtrain.schema.DataConfig) live: data.root, else $KDTRAIN_DATA, else ~/.cache/kdtrain/data."""
    root = cfg.root or os.environ.get("KDTRAIN_DATA") or "~/.cache/kdtrain/data"
    return Path(root).expanduser().resolve()


def redact(text: str) -> str:
    """Hide passwords inside URLs (postgresql://user:***@host/db, ?password=***) before they are shown or logged."""
    text = re.sub(r"(://[^:/@\s]*:)[^\s/]*@", r"\1***@", str(text))  # greedy: up to the last @ of the netloc
    return re.sub(r"(?i)\b(password|passwd|pwd)=[^&\s'\"]*", r"\1=***", text)
