"""What a trial reuses, each kind a :class:`~autocompress.store.Memo` under ``RUN/cache``.

:class:`ModelCache` (``models``): trials that share their first stages (the same pruning and
distillation, a different quantization) reuse the fine-tuned float module instead of training
it again. An entry holds the module in the code-free form of :mod:`autocompress.store.safe_io`
(safetensors weights and a JSON structure; nothing is unpickled); a module that cannot be
written that way (one with hooks, a custom layer) is not kept.

:class:`ArtefactCache` (``artefacts``): a trial that repeats an earlier trial's whole
configuration (samplers propose repeats) reuses its finished artefact and accuracy, and only
times it again.

:class:`ProbeMemo` (``probes``): the figures of a structure already probed in this run.

Every entry is verified on read by the memo; one that does not match is removed and rebuilt.
"""

from __future__ import annotations

from pathlib import Path

import torch

from autocompress.errors import UserError
from autocompress.store import Memo, NotRebuildable, content_key, load_module, save_module

__all__ = ["ArtefactCache", "LatencyHistory", "ModelCache", "ProbeMemo", "content_key"]

_STEM = "model"


class _Kind:
    """One kind of entry in its own :class:`~autocompress.store.Memo`, capped at ``max_bytes``
    (least recently used out first)."""

    def __init__(self, root: Path | str, max_bytes: float | None = None) -> None:
        self.memo = Memo(root, max_bytes=max_bytes)

    @property
    def corrupt(self) -> int:
        """Entries found corrupt (removed, never used) by this instance."""
        return self.memo.corrupt


class ModelCache(_Kind):
    """Fine-tuned float modules by key under ``root`` (``RUN/cache/models``).

    Args:
        root: The entries' folder.
        max_bytes: Disk cap; after a ``put`` the least recently used entries beyond it are removed.
    """

    def get(self, key: str) -> tuple[torch.nn.Module, dict] | None:
        """The module and its metadata, or ``None`` (missing, or corrupt: then removed)."""
        entry = self.memo.get(key)
        if entry is None:
            return None
        try:
            return load_module(entry.folder / _STEM), entry.meta
        except UserError:  # bytes as written, yet not a module this install rebuilds
            self.memo.remove(key)
            return None

    def put(self, key: str, module: torch.nn.Module, meta: dict | None = None, *, example: torch.Tensor,
            kwargs: dict | None = None) -> bool:
        """Stores a module; ``False`` when it cannot be written in the code-free form (nothing is stored).

        Args:
            example: An input batch, to check that the written module rebuilds to the same outputs.
            kwargs: ``timm.create_model`` keyword arguments the module was built with.
        """
        try:
            entry = self.memo.put_with(key, lambda folder: save_module(module, folder / _STEM, example, kwargs=kwargs),
                                       meta)
        except NotRebuildable:
            return False
        return entry is not None


class ArtefactCache(_Kind):
    """Finished artefacts by the trial's whole configuration, under ``root`` (``RUN/cache/artefacts``).

    An entry holds the artefact's files (hard links to the trial's own files where the file
    system allows, so a kept artefact is not stored twice) and the figures that depend only on
    the bytes (accuracy, params).

    Args:
        root: The entries' folder.
        max_bytes: Disk cap; after a ``put`` the least recently used entries beyond it are removed.
    """

    def get(self, key: str) -> tuple[dict[str, Path], dict] | None:
        """``({file name: path}, metadata)`` of a whole entry, or ``None`` (missing, or corrupt: then removed)."""
        entry = self.memo.get(key)
        return None if entry is None else (entry.files, entry.meta)

    def put(self, key: str, files: list[Path], meta: dict | None = None) -> None:
        """Stores ``files`` (by name) and ``meta``."""
        self.memo.put(key, files, meta)


class ProbeMemo:
    """The figures of structures already probed in this run, by base, runtime and structural steps.

    Latency and size depend on the structure alone, so a later trial with the same pruning and
    quantization (parameters in a plugin's ``probe_ignores`` aside) reuses them instead of
    building and timing the same artefact again.

    Args:
        root: The entries' folder (``RUN/cache/probes``).
        key: The structure's content key.
    """

    def __init__(self, root: Path | str, key: str) -> None:
        self.memo, self.key = Memo(root), key

    def get(self) -> dict | None:
        """The probe's figures with the number of the trial that measured them, or ``None``."""
        entry = self.memo.get(self.key)
        if entry is None or not {"metrics", "trial"} <= entry.meta.keys():
            return None
        return dict(entry.meta)

    def put(self, probe: dict, trial: int) -> None:
        self.memo.put(self.key, (), {**probe, "trial": trial})

    def others(self) -> list[dict]:
        """The figures of every other structure probed in this run (each with its ``trial``)."""
        found = []
        for key in self.memo.keys():
            entry = self.memo.get(key) if key != self.key else None
            if entry is not None and {"metrics", "trial"} <= entry.meta.keys():
                found.append(dict(entry.meta))
        return found


class LatencyHistory:
    """Every ``latency_vs_base`` this run measured for one structure (``RUN/cache/latency``): artefacts of
    one structure run alike, so the latency budget is judged on the median of all of them rather than
    on one window's ratio.

    Args:
        root: The entries' folder (``RUN/cache/latency``).
        key: The structure's content key (as :class:`ProbeMemo`'s).
        keep: The most recent measurements kept.
    """

    def __init__(self, root: Path | str, key: str, keep: int = 25) -> None:
        self.memo, self.key, self.keep = Memo(root), key, keep

    def seen(self) -> list[float]:
        """The ratios measured so far, oldest first."""
        entry = self.memo.get(self.key)
        seen = entry.meta.get("seen") if entry is not None else None
        return [float(r) for _, r in seen] if isinstance(seen, list) else []

    def add(self, ratio: float, trial: int) -> None:
        """Adds one measurement (a lost race between two workers loses one sample, nothing else)."""
        entry = self.memo.get(self.key)
        seen = list(entry.meta.get("seen") or []) if entry is not None else []
        self.memo.put(self.key, (), {"seen": [*seen, [trial, float(ratio)]][-self.keep:]})
