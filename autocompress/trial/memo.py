"""Content-addressed caches of models in the run folder.

:class:`ModelCache`: trials that share their first stages (the same pruning and distillation, a
different quantization) reuse the fine-tuned float model instead of training it again. Each
entry is a module in the code-free form of :mod:`autocompress.store.safe_io` (safetensors weights and
a JSON structure; nothing is unpickled) plus a JSON sidecar with their SHA-256; an entry whose
bytes do not match is deleted and rebuilt, never loaded. A module that cannot be written that
way (one with hooks, a custom layer) is not cached.

:class:`ArtefactCache`: a trial that repeats an earlier trial's whole configuration (samplers
propose repeats) reuses its finished artefact and accuracy, verified the same way, and only
times it again.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch

from autocompress.errors import UserError
from autocompress.store import atomic_write
from autocompress.store import NotRebuildable, load_module, module_files, save_module, sha256_file


def content_key(*parts: Any) -> str:
    """A stable key for JSON-able parts."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:24]


_sha256 = sha256_file


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

    def _paths(self, key: str) -> list[Path]:
        """The entry's module files, then its sidecar (written last)."""
        return [*module_files(self.root / key), self.root / f"{key}.entry.json"]

    def get(self, key: str) -> tuple[torch.nn.Module, dict] | None:
        """The cached module and its metadata, or ``None`` (missing or corrupt: then removed)."""
        *files, sidecar = self._paths(key)
        if not all(p.exists() for p in (*files, sidecar)):
            self.misses += 1
            return None
        try:
            info = json.loads(sidecar.read_text())
            ok = all(info["sha256"][p.name] == _sha256(p) for p in files)
            module = load_module(self.root / key) if ok else None
        except (OSError, ValueError, KeyError, TypeError, UserError):
            ok = False
        if not ok:
            self.corrupt += 1
            self.misses += 1
            for p in (*files, sidecar):
                p.unlink(missing_ok=True)
            return None
        self.hits += 1
        os.utime(sidecar)  # recently used: evicted last
        return module, info.get("meta", {})

    def put(self, key: str, module: torch.nn.Module, meta: dict | None = None, *, example: torch.Tensor,
            kwargs: dict | None = None) -> bool:
        """Stores a module (a reader sees the whole entry or none); ``False`` when it cannot be
        written in the code-free form (then nothing is stored).

        Args:
            example: An input batch, to check that the written module rebuilds to the same outputs.
            kwargs: ``timm.create_model`` keyword arguments the module was built with.
        """
        *files, sidecar = self._paths(key)
        sidecar.unlink(missing_ok=True)
        try:
            save_module(module, self.root / key, example, kwargs=kwargs)
        except NotRebuildable:
            return False
        atomic_write(sidecar, json.dumps({"sha256": {p.name: _sha256(p) for p in files}, "meta": meta or {}}))
        if self.max_bytes is not None:
            self._evict(keep=key)
        return True

    def _evict(self, keep: str) -> None:
        entries = []
        for sidecar in self.root.glob("*.entry.json"):
            key = sidecar.name[: -len(".entry.json")]
            try:
                entries.append((sidecar.stat().st_mtime, key, sum(p.stat().st_size for p in self._paths(key))))
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
