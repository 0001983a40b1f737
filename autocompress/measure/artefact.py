"""What a trial ships: a saved model for one runtime."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Artefact:
    """A saved model for one runtime: what is measured, shipped and reloaded.

    Attributes:
        path: The main file (``.onnx``, ``.pt2``, ...).
        runtime: Name of the runtime that loads it.
        precision: ``fp32``, ``int8``, ``mixed`` ...
        extra_files: Further files that belong to it (weights beside an IR, ...).
    """

    path: Path
    runtime: str
    precision: str = "fp32"
    extra_files: list[Path] = field(default_factory=list)

    @property
    def files(self) -> list[Path]:
        return [Path(self.path), *map(Path, self.extra_files)]

    def size_bytes(self) -> int:
        """Bytes on disk of every file of the artefact."""
        return sum(f.stat().st_size for f in self.files)
