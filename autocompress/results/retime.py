"""``autocompress retime``: the base and every front model of a run timed together, in one interleaved run.

During a search each trial is timed beside the base when it finishes, so two front models' latency
ratios come from windows that may lie hours apart on a machine whose speed drifts (on a shared
2-core VM the same fp32 base has read 0.69 ms in one window and 1.87 ms in another). Retiming puts
the base and the whole front in one run of interleaved rounds, on the run's threads, warm-up and
batch size, so the front's members compare with each other and with the base in the same seconds.

Each model gets its median latency, its ratio to the base's median, and its ratio paired by round:
the model's round median over the base's in the same round, the median over rounds with its
quartiles. Pairing cancels the drift between rounds, and the quartiles show the resolution a
comparison has on this machine. ``RUN/retime.json`` keeps the figures and the machine they came from.

A run folder may come from elsewhere: every file is checked against the SHA-256 in its record before
it is loaded, and no file of the run is unpickled.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import torch

from autocompress.device import describe, paired_ratio
from autocompress.errors import UserError
from autocompress.results.load import artefact_predictor, front_record, read_run
from autocompress.results.show import RETIME_FILE
from autocompress.store import atomic_write, verify_files

DEFAULT_ROUNDS = 50
BASE = "base"


def retime(run: Path | str, *, rounds: int = DEFAULT_ROUNDS, threads: int | None = None) -> dict:
    """Times the base and every front model of ``run`` in one interleaved run; writes ``RUN/retime.json``.

    Args:
        run: A run folder (finished or running).
        rounds: Interleaved rounds (each of the run's ``device.repeats`` calls per model).
        threads: Intra-op threads (default: the run's ``device.threads``).

    Returns:
        What ``retime.json`` holds: settings, machine, and ``rows`` (base first, then the front by trial
        number), each with ``latency_ms``, ``p10_ms``, ``p90_ms``, ``vs_base``, ``paired_vs_base`` with
        ``paired_p25`` / ``paired_p75``, and ``in_search_vs_base`` (the ratio the search recorded).

    Raises:
        UserError: Not a run folder, no base or no front, latency measured on agents, a file that does
            not match its record, or ``rounds`` < 2.
    """
    from autocompress.measure import measure_latency

    if rounds < 2:
        raise UserError(f"--rounds: {rounds} is not allowed; at least 2 (pairing by round needs rounds)")
    info = read_run(run)
    config = info.config()
    d = config.device
    if d.agents:
        raise UserError(f"RUN: {info.path} timed its trials on latency agents (device.agents); retime times on this "
                        "machine only, so its figures would not compare")
    if info.base is None or info.base.metrics is None or not info.base.artefact:
        raise UserError(f"RUN: {info.path} has no measured base (base.json); there is nothing to time against")
    if not info.front_numbers:
        raise UserError(f"RUN: {info.path} has no model on its Pareto front (no feasible trial) to retime")
    verify_files(info.base.files, info.path, "the base")
    records = {BASE: info.base} | {n: front_record(info, n) for n in sorted(info.front_numbers)}
    threads = threads or d.threads
    torch.set_num_threads(threads)
    predictors = {key: artefact_predictor(info, record, "the base" if key == BASE else f"trial {key}",
                                          threads=threads, device=d.type) for key, record in records.items()}
    example = torch.randn(d.batch_size, 3, config.model.img_size, config.model.img_size,
                          generator=torch.Generator().manual_seed(0))
    started = dt.datetime.now()
    lat = measure_latency(predictors, example, warmup=d.warmup, repeats=d.repeats, rounds=rounds, threads=threads,
                          sync=torch.cuda.synchronize if d.type == "cuda" else None)
    base = lat[BASE]
    rows = []
    for key, record in records.items():
        l = lat[key]
        paired, p25, p75 = paired_ratio(l, base)
        rows.append({"trial": None if key == BASE else key, "runtime": record.metrics.runtime,
                     "precision": record.metrics.precision, "latency_ms": round(l.median_ms, 5),
                     "p10_ms": round(l.p10_ms, 5), "p90_ms": round(l.p90_ms, 5), "cv": round(l.cv, 4),
                     "vs_base": round(l.median_ms / base.median_ms, 4),
                     "paired_vs_base": round(paired, 4), "paired_p25": round(p25, 4), "paired_p75": round(p75, 4),
                     "in_search_ms": record.metrics.latency_ms,
                     "in_search_vs_base": None if key == BASE else record.latency_vs_base})
    result = {"date": started.isoformat(timespec="seconds"),
              "seconds": round((dt.datetime.now() - started).total_seconds(), 1),
              "settings": {"rounds": rounds, "repeats": d.repeats, "warmup": d.warmup, "threads": threads,
                           "batch_size": d.batch_size, "device": d.type, "interleaved": True,
                           "input": "a fixed random batch (seed 0)"},
              "machine": describe(threads), "front": sorted(info.front_numbers), "rows": rows}
    atomic_write(info.path / RETIME_FILE, json.dumps(result, indent=1))
    return result
