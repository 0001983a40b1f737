"""Content-addressed caches of models in the run folder.

:class:`ModelCache`: trials that share their first stages (the same pruning and distillation, a
different quantization) reuse the fine-tuned float model instead of training it again. Each
entry is a pickled module plus a JSON sidecar with its SHA-256; an entry whose bytes do not
match is deleted and rebuilt, never loaded (so only bytes this run wrote are ever unpickled).

:class:`ArtefactCache`: a trial that repeats an earlier trial's whole configuration (samplers
propose repeats) reuses its finished artefact and accuracy, verified the same way, and only
times it again.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
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
        _evict_oldest(entries, self.max_bytes, keep, lambda key: [p.unlink(missing_ok=True) for p in self._paths(key)])


class ArtefactCache:
    """Finished artefacts by the trial's whole configuration, under ``root``.

    An entry is a folder of files (hard links to the trial's own files where the file system
    allows, so a kept artefact is not stored twice) and a JSON sidecar, written last, with
    each file's SHA-256 and the figures that depend only on the bytes (accuracy, params). A
    file that is missing or does not match removes the entry: the trial runs in full.

    Args:
        root: The cache folder (``RUN/cache/artefacts``).
        max_bytes: Disk cap; after a ``put`` the least recently used entries beyond it are removed.
    """

    def __init__(self, root: Path | str, max_bytes: float | None = None) -> None:
        self.root = Path(root)
        self.max_bytes = max_bytes
        self.corrupt = 0

    def get(self, key: str) -> tuple[dict[str, Path], dict] | None:
        """``({file name: path}, metadata)`` of a whole entry, or ``None`` (missing or corrupt: then removed)."""
        sidecar = self.root / f"{key}.json"
        if not sidecar.exists():
            return None
        try:
            info = json.loads(sidecar.read_text())
            files = {name: self.root / key / name for name in info["files"]}
            ok = all(path.is_file() and _sha256(path) == info["files"][name] for name, path in files.items())
        except (OSError, ValueError, KeyError, TypeError):
            ok = False
        if not ok:
            self.corrupt += 1
            self._remove(key)
            return None
        os.utime(sidecar)  # recently used: evicted last
        return files, info.get("meta", {})

    def put(self, key: str, files: list[Path], meta: dict | None = None) -> None:
        """Stores ``files`` (by name) and ``meta``; a reader sees the whole entry or none."""
        folder = self.root / key
        self._remove(key)
        folder.mkdir(parents=True, exist_ok=True)
        digests = {}
        for path in map(Path, files):
            dest = link_or_copy(path, folder / path.name)
            digests[path.name] = _sha256(dest)
        atomic_write(self.root / f"{key}.json", json.dumps({"files": digests, "meta": meta or {}}))
        if self.max_bytes is not None:
            self._evict(keep=key)

    def _remove(self, key: str) -> None:
        (self.root / f"{key}.json").unlink(missing_ok=True)
        shutil.rmtree(self.root / key, ignore_errors=True)

    def _evict(self, keep: str) -> None:
        entries = []
        for sidecar in self.root.glob("*.json"):
            try:
                size = sidecar.stat().st_size + sum(f.stat().st_size for f in (self.root / sidecar.stem).iterdir())
                entries.append((sidecar.stat().st_mtime, sidecar.stem, size))
            except OSError:
                continue
        _evict_oldest(entries, self.max_bytes, keep, self._remove)


def link_or_copy(src: Path, dest: Path) -> Path:
    """Puts ``src``'s bytes at ``dest`` (replacing it) as a hard link, or a copy where links are impossible."""
    dest.unlink(missing_ok=True)
    try:
        os.link(src, dest)
    except OSError:  # another file system, or no hard links
        shutil.copyfile(src, dest)
    return dest


def _evict_oldest(entries: list[tuple[float, str, int]], max_bytes: float, keep: str, remove) -> None:
    """Removes the least recently used ``(mtime, key, bytes)`` entries until the rest fit ``max_bytes``."""
    total = sum(size for _, _, size in entries)
    for _, key, size in sorted(entries):
        if total <= max_bytes:
            break
        if key == keep:
            continue
        remove(key)
        total -= size
