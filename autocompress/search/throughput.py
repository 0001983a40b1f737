"""Throughput figures of a run: how much of the night went into trials that decided something.

Trials finished or decided per hour, the share stopped early and at which stage, cache reuse,
and an estimate of the time those saved (labelled as an estimate: a stopped trial's full cost
is taken as the median duration of finished trials that ran their whole fine-tune; a teacher batch
read from the run's store, the mean time the teacher took on the batches it ran).
"""

from __future__ import annotations

import statistics

from autocompress.trial import TrialRecord


def throughput(records: list[TrialRecord], wall_s: float, since: float | None = None) -> dict:
    """Summarises trial records.

    Args:
        records: Trial records (``trials.jsonl``), interrupted ones included.
        wall_s: Wall-clock seconds of the search session the rate is computed over.
        since: Only records started at or after this time count towards the rate (a resumed
            session); ``None`` = all.

    Returns:
        ``trials_per_hour`` (finished or stopped, not failed), counts by outcome, ``stopped_by_stage``,
        ``stopped_fraction``, ``cache_hits``, ``probes_reused``, ``teacher_batches_reused``,
        ``reused_work_s`` (the recorded seconds of the fine-tunes and artefacts cache hits reused: a
        figure the records hold) and ``time_saved_s_estimate`` (an estimate, never printed as a
        measurement).
    """
    decided = [r for r in records if not r.interrupted and r.state in ("complete", "pruned")]
    stopped = [r for r in decided if r.stopped]
    by_stage: dict[str, int] = {}
    for r in stopped:
        by_stage[r.stopped.stage] = by_stage.get(r.stopped.stage, 0) + 1
    full = [r.duration_s for r in decided
            if r.state == "complete" and not r.stopped and r.curve and not (r.cache and r.cache.hit)]
    full_cost = statistics.median(full) if full else None
    saved = 0.0
    if full_cost is not None:
        saved += sum(max(0.0, full_cost - r.duration_s) for r in stopped)
    hits = [r for r in decided if r.cache and r.cache.hit]
    reused_work = sum(float(r.cache.saved_s or 0.0) for r in hits)
    saved += reused_work
    teacher = [r.teacher_batches for r in decided if r.teacher_batches]
    computed = sum(t.computed for t in teacher)
    reused = sum(t.reused for t in teacher)
    if computed:  # a batch read instead of run saved what running one cost on average
        saved += reused * sum(t.compute_s for t in teacher) / computed
    counted = [r for r in decided if since is None or r.started >= since]
    return {
        "wall_s": round(wall_s, 1),
        "trials_per_hour": round(len(counted) / wall_s * 3600, 1) if wall_s > 0 else None,
        "decided": len(decided),
        "completed": sum(r.state == "complete" and not r.stopped for r in decided),
        "stopped": len(stopped),
        "stopped_fraction": round(len(stopped) / len(decided), 3) if decided else 0.0,
        "stopped_by_stage": by_stage,
        "cache_hits": len(hits),
        "probes_reused": sum(r.probe_from is not None for r in decided),
        "teacher_batches_reused": reused,
        "time_saved_s_estimate": round(saved, 1),
        "reused_work_s": round(reused_work, 1),
    }


def describe(figures: dict) -> str:
    """One line for the terminal."""
    stages = ", ".join(f"{n} at {stage}" for stage, n in sorted(figures.get("stopped_by_stage", {}).items()))
    rate = figures.get("trials_per_hour")
    return (f"{rate if rate is not None else '?'} trials/h; {figures['decided']} decided, {figures['stopped']} stopped early "
            f"({figures['stopped_fraction']:.0%}{'; ' + stages if stages else ''}), {figures['cache_hits']} cache hits, "
            f"{figures.get('probes_reused', 0)} structure probes reused, "
            f"{figures.get('teacher_batches_reused', 0)} teacher batches reused"
            # only what the records hold (the reused fine-tunes' and artefacts' own recorded seconds); the
            # estimate of what stopped trials saved stays in the figures, labelled, never on the terminal
            + (f"; the cache hits reused {figures['reused_work_s'] / 60:.1f} min of recorded work"
               if figures.get("reused_work_s") else ""))
