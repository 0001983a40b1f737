"""One memo mechanism for everything a run reuses: entries by content key, verified on read.

An entry is a folder of files under ``root/KEY/`` and a sidecar ``root/KEY.json``, written last,
with every file's SHA-256 and the entry's metadata (JSON). A reader sees a whole entry or none:
a missing sidecar is a miss; a file that is missing or does not match its digest, or a sidecar
that does not parse, removes the entry, and it is counted as corrupt and rebuilt, never used.
Entries beyond a disk cap are removed least recently used first after a write (``evict``), or
new entries stop being written (``stop``: for entries that are cheap to recompute and many).

What uses it (each a ``kind`` folder of ``RUN/cache``): fine-tuned float modules (``models``),
finished artefacts (``artefacts``), the figures of probed structures (``probes``) and the
teacher's outputs per batch (``teacher``).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Literal

from autocompress.store.run_folder import atomic_write
from autocompress.store.safe_io import sha256_file


def content_key(*parts: Any) -> str:
    """A stable key for JSON-able parts."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:24]


@dataclass(frozen=True)
class MemoEntry:
    """A verified entry: its files by name, and its metadata."""

    key: str
    folder: Path
    files: dict[str, Path]
    meta: dict[str, Any]


class Memo:
    """Entries by content key under ``root``.

    Args:
        root: The entries' folder (one per kind, e.g. ``RUN/cache/models``).
        max_bytes: Disk cap of ``root`` (``None`` = none).
        when_full: ``evict`` removes the least recently used entries beyond the cap after a
            write; ``stop`` writes no new entry once the cap is reached.
    """

    def __init__(self, root: Path | str, *, max_bytes: float | None = None,
                 when_full: Literal["evict", "stop"] = "evict") -> None:
        self.root, self.max_bytes, self.when_full = Path(root), max_bytes, when_full
        self.hits = self.misses = self.corrupt = 0
        self._bytes: int | None = None  # tracked for ``stop`` only

    def get(self, key: str) -> MemoEntry | None:
        """The entry, its files checked against their digests; ``None`` when missing or corrupt."""
        sidecar = self.root / f"{key}.json"
        try:
            info = json.loads(sidecar.read_text())
        except FileNotFoundError:
            self.misses += 1
            return None
        except (OSError, ValueError):
            return self._corrupt(key)
        try:
            files = {name: self.root / key / name for name in info["sha256"]}
            ok = isinstance(info.get("meta", {}), dict) and all(
                path.is_file() and sha256_file(path) == info["sha256"][name] for name, path in files.items())
        except (OSError, KeyError, TypeError, AttributeError):
            ok = False
        if not ok:
            return self._corrupt(key)
        self.hits += 1
        if self.when_full == "evict":
            os.utime(sidecar)  # recently used: evicted last
        return MemoEntry(key, self.root / key, files, info.get("meta", {}))

    def put(self, key: str, files: Iterable[Path] = (), meta: dict | None = None) -> MemoEntry | None:
        """Stores ``files`` (by name; hard links where the file system allows) and ``meta``.

        Returns:
            The entry, or ``None`` when the cap stops new entries.
        """
        paths = [Path(p) for p in files]
        return self.put_with(key, lambda folder: [link_or_copy(p, folder / p.name) for p in paths], meta)

    def put_with(self, key: str, write: Callable[[Path], Iterable[Path]], meta: dict | None = None) -> MemoEntry | None:
        """Stores the files ``write(folder)`` writes into the entry's folder, and ``meta``.

        ``write`` may raise to store nothing; the error propagates and no entry is left behind.
        """
        if self.when_full == "stop" and self.max_bytes is not None and self._used() >= self.max_bytes:
            return None
        self.remove(key)
        folder = self.root / key
        staging = self.root / f".{key}.{uuid.uuid4().hex[:8]}"
        staging.mkdir(parents=True)
        try:
            written = [Path(p) for p in write(staging)]
            os.replace(staging, folder)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        digests = {p.name: sha256_file(folder / p.name) for p in written}
        text = json.dumps({"sha256": digests, "meta": meta or {}})
        atomic_write(self.root / f"{key}.json", text)
        if self.max_bytes is not None:
            if self.when_full == "evict":
                self._evict(keep=key)
            elif self._bytes is not None:
                self._bytes += len(text) + sum((folder / name).stat().st_size for name in digests)
        return MemoEntry(key, folder, {name: folder / name for name in digests}, meta or {})

    def remove(self, key: str) -> None:
        """Removes an entry (its sidecar first, so no reader sees it half gone)."""
        (self.root / f"{key}.json").unlink(missing_ok=True)
        shutil.rmtree(self.root / key, ignore_errors=True)

    def keys(self) -> list[str]:
        """Keys of the entries whose sidecar is written."""
        return sorted(p.stem for p in self.root.glob("*.json")) if self.root.is_dir() else []

    def _corrupt(self, key: str) -> None:
        self.corrupt += 1
        self.misses += 1
        self.remove(key)
        return None

    def _size(self, key: str) -> int:
        folder = self.root / key
        files = folder.iterdir() if folder.is_dir() else []
        return (self.root / f"{key}.json").stat().st_size + sum(f.stat().st_size for f in files)

    def _used(self) -> int:
        if self._bytes is None:
            self._bytes = 0
            for key in self.keys():
                try:
                    self._bytes += self._size(key)
                except OSError:
                    continue
        return self._bytes

    def _evict(self, keep: str) -> None:
        entries = []
        for key in self.keys():
            try:
                entries.append(((self.root / f"{key}.json").stat().st_mtime, key, self._size(key)))
            except OSError:
                continue
        total = sum(size for _, _, size in entries)
        for _, key, size in sorted(entries):
            if total <= self.max_bytes:
                break
            if key != keep:
                self.remove(key)
                total -= size


def link_or_copy(src: Path, dest: Path) -> Path:
    """Puts ``src``'s bytes at ``dest`` (replacing it) as a hard link, or a copy where links are impossible."""
    dest.unlink(missing_ok=True)
    try:
        os.link(src, dest)
    except OSError:  # another file system, or no hard links
        shutil.copyfile(src, dest)
    return dest
