"""A content-addressed cache of intermediate models in the run folder.

Trials that share their first stages (the same pruning and distillation, a different
quantization) reuse the fine-tuned float model instead of training it again. Each entry is a
pickled module plus a JSON sidecar with its SHA-256; an entry whose bytes do not match is
deleted and rebuilt, never loaded (so only bytes this run wrote are ever unpickled).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from pathlib import Path
from typing import Any

import torch

from autocompress.results import atomic_write


def content_key(*parts: Any) -> str:
    """A stable key for JSON-able parts."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:24]


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class ModelCache:
    """Modules by key under ``root``.

    Args:
        root: The cache folder (``RUN/cache``).
        max_bytes: Disk cap; after a ``put`` the least recently used entries beyond it are removed.
    """

    def __init__(self, root: Path | str, max_bytes: float | None = None) -> None:
        self.root = Path(root)
        self.max_bytes = max_bytes
        self.hits = self.misses = self.corrupt = 0

    def _paths(self, key: str) -> tuple[Path, Path]:
        return self.root / f"{key}.pt", self.root / f"{key}.json"

    def get(self, key: str) -> tuple[torch.nn.Module, dict] | None:
        """The cached module and its metadata, or ``None`` (missing or corrupt: then removed)."""
        blob, meta = self._paths(key)
        if not (blob.exists() and meta.exists()):
            self.misses += 1
            return None
        try:
            info = json.loads(meta.read_text())
            ok = info.get("sha256") == _sha256(blob)
        except (OSError, ValueError):
            ok = False
        if not ok:
            self.corrupt += 1
            self.misses += 1
            blob.unlink(missing_ok=True)
            meta.unlink(missing_ok=True)
            return None
        self.hits += 1
        os.utime(meta)  # recently used: evicted last
        module = torch.load(blob, map_location="cpu", weights_only=False)
        return module, info.get("meta", {})

    def put(self, key: str, module: torch.nn.Module, meta: dict | None = None) -> None:
        """Stores a module atomically (a reader sees the whole entry or none)."""
        blob, sidecar = self._paths(key)
        buffer = io.BytesIO()
        torch.save(module, buffer)
        atomic_write(blob, buffer.getvalue())
        atomic_write(sidecar, json.dumps({"sha256": hashlib.sha256(buffer.getbuffer()).hexdigest(), "meta": meta or {}}))
        if self.max_bytes is not None:
            self._evict(keep=key)

    def _evict(self, keep: str) -> None:
        entries = []
        for sidecar in self.root.glob("*.json"):
            blob = sidecar.with_suffix(".pt")
            try:
                entries.append((sidecar.stat().st_mtime, sidecar.stem, blob.stat().st_size + sidecar.stat().st_size))
            except OSError:
                continue
        total = sum(size for _, _, size in entries)
        for _, key, size in sorted(entries):
            if total <= self.max_bytes:
                break
            if key == keep:
                continue
            for path in self._paths(key):
                path.unlink(missing_ok=True)
            total -= size
