"""The run folder: its files, written so that a crash never leaves a half-written one."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterable


class RunFolder:
    """Paths and writers of ``results/<run>/``.

    Layout::

        config.yaml      the resolved run config
        machine.json     CPU (lscpu), threads, library versions
        base.json        the base model's measured record
        base/            its weights and artefact
        trials.jsonl     one line per finished trial
        pareto.json      the feasible non-dominated trials (rewritten after every trial)
        trials/NNNN/     artefacts of front trials (others are removed when dominated)
        study.db         the Optuna study (SQLite, unless another storage is configured)
        run.log          progress lines
    """

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    @property
    def trials_file(self) -> Path:
        return self.path / "trials.jsonl"

    def write_json(self, name: str, data: Any) -> Path:
        return atomic_write(self.path / name, json.dumps(data, indent=1, default=_jsonable))

    def read_json(self, name: str) -> Any:
        return json.loads((self.path / name).read_text())

    def append_trial(self, record: Any) -> None:
        """Appends one record (a dict, or a typed record with ``to_json()``) to ``trials.jsonl``, durably."""
        with open(self.trials_file, "a+b") as fh:
            torn = False
            if fh.seek(0, os.SEEK_END) > 0:
                fh.seek(-1, os.SEEK_END)
                torn = fh.read(1) != b"\n"  # a crash cut the last line: never glue a record onto it
            fh.write((("\n" if torn else "") + json.dumps(record, default=_jsonable) + "\n").encode())
            fh.flush()
            os.fsync(fh.fileno())

    def trials(self) -> list[dict[str, Any]]:
        """Every recorded trial; the last line wins for a number recorded twice; a torn last line is skipped."""
        if not self.trials_file.exists():
            return []
        out: dict[int, dict] = {}
        for line in self.trials_file.read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            out[record["number"]] = record
        return [out[k] for k in sorted(out)]

    def sweep_temporaries(self) -> list[Path]:
        """Removes half-written files a killed process left behind (see :func:`atomic_write`)."""
        stale = [p for p in self.path.glob(".*.*") if p.is_file() and p.name not in {".lock"}
                 and any(p.name.startswith(f".{n}.") for n in ("pareto.json", "base.json", "probe.json", "data.json",
                                                               "machine.json", "config.yaml", "trials.jsonl"))]
        remove_files(stale)
        return stale

    def log(self, line: str) -> None:
        with open(self.path / "run.log", "a") as fh:
            fh.write(line.rstrip() + "\n")


def _jsonable(value: Any) -> Any:
    """JSON for what ``json`` cannot write itself: a typed record's ``to_json()``, else its text."""
    to_json = getattr(value, "to_json", None)
    return to_json() if callable(to_json) else str(value)


def atomic_write(path: Path, text: str | bytes) -> Path:
    """Writes text or bytes through a temporary file and ``os.replace`` so readers see old or new,
    never half."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)  # mkstemp creates 0600; give it the mode a plain open() would
        with os.fdopen(fd, "wb" if isinstance(text, bytes) else "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def remove_files(paths: Iterable[Path]) -> None:
    for p in paths:
        Path(p).unlink(missing_ok=True)
