"""Throughput figures of a run, from its records."""

import pytest

from autocompress.search.throughput import describe, throughput
from autocompress.trial import TrialRecord


def _rec(number, state="complete", duration=10.0, started=100.0, cache=None, **extra):
    if cache is not None:
        cache = {"key": f"k{number}", "kind": "model", **cache}
    return TrialRecord.from_json({"number": number, "choices": {}, "state": state, "duration_s": duration,
                                  "started": started, "cache": cache, **extra}, f"record {number}")


def test_throughput_counts_decided_trials_stops_and_reuse():
    records = [
        _rec(0, curve=[[1, 70], [2, 80]], duration=40.0),                          # a whole fine-tune
        _rec(1, curve=[[1, 70], [2, 82]], duration=60.0),
        _rec(2, stopped={"stage": "structure"}, duration=2.0, probe_from=0),        # stopped before training
        _rec(3, state="pruned", stopped={"stage": "distill"}, duration=20.0),       # stopped after epoch 1
        _rec(4, curve=[[1, 70]], duration=5.0, cache={"hit": True, "saved_s": 30.0}),
        _rec(8, curve=[[1, 75]], duration=30.0, cache={"hit": False},                # the teacher ran 10 batches
             teacher_batches={"reused": 0, "computed": 10, "compute_s": 4.0}),
        _rec(9, curve=[[1, 76]], duration=30.0, cache={"hit": False},                # and was read back 20 times
             teacher_batches={"reused": 20, "computed": 0, "compute_s": 0.0}),
        _rec(5, state="fail", duration=1.0),                                         # failed: not decided
        _rec(6, interrupted=True, state="fail", duration=1.0),
        _rec(7, duration=3.0, started=10.0),                                         # an earlier session
    ]
    figures = throughput(records, wall_s=360.0, since=50.0)
    assert figures["decided"] == 8 and figures["completed"] == 6 and figures["stopped"] == 2
    assert figures["trials_per_hour"] == pytest.approx(7 / 360 * 3600)              # trial 7 predates `since`
    assert figures["stopped_by_stage"] == {"structure": 1, "distill": 1}
    assert figures["stopped_fraction"] == pytest.approx(2 / 8, abs=1e-3)
    assert figures["cache_hits"] == 1 and figures["probes_reused"] == 1 and figures["teacher_batches_reused"] == 20
    # a stopped trial saved the median whole fine-tune (of 40, 60, 30, 30 s: 35 s) minus what it ran; a
    # cache hit its saved_s; a teacher batch read back, the teacher's mean time per batch it ran (0.4 s)
    assert figures["time_saved_s_estimate"] == pytest.approx((35 - 2) + (35 - 20) + 30 + 20 * 0.4)
    line = describe(figures)
    assert "70.0 trials/h" in line and "1 at distill, 1 at structure" in line and "1 structure probes reused" in line
    assert "20 teacher batches reused" in line
    # the terminal line says only what the records hold: the cache hit's recorded 30 s, no estimate
    assert figures["reused_work_s"] == 30.0
    assert "estimate" not in line and "the cache hits reused 0.5 min of recorded work" in line
