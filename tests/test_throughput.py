"""Throughput figures of a run, from its records."""

import pytest

from autocompress.throughput import describe, throughput


def _rec(number, state="complete", duration=10.0, started=100.0, **extra):
    return {"number": number, "state": state, "duration_s": duration, "started": started, **extra}


def test_throughput_counts_decided_trials_stops_and_reuse():
    records = [
        _rec(0, curve=[[1, 70], [2, 80]], duration=40.0),                          # a whole fine-tune
        _rec(1, curve=[[1, 70], [2, 82]], duration=60.0),
        _rec(2, stopped={"stage": "structure"}, duration=2.0, probe_from=0),        # stopped before training
        _rec(3, state="pruned", stopped={"stage": "distill"}, duration=20.0),       # stopped after epoch 1
        _rec(4, curve=[[1, 70]], duration=5.0, cache={"hit": True, "saved_s": 30.0}),
        _rec(5, state="fail", duration=1.0),                                         # failed: not decided
        _rec(6, interrupted=True, state="fail", duration=1.0),
        _rec(7, duration=3.0, started=10.0),                                         # an earlier session
    ]
    figures = throughput(records, wall_s=360.0, since=50.0)
    assert figures["decided"] == 6 and figures["completed"] == 4 and figures["stopped"] == 2
    assert figures["trials_per_hour"] == pytest.approx(5 / 360 * 3600)              # trial 7 predates `since`
    assert figures["stopped_by_stage"] == {"structure": 1, "distill": 1}
    assert figures["stopped_fraction"] == pytest.approx(2 / 6, abs=1e-3)
    assert figures["cache_hits"] == 1 and figures["probes_reused"] == 1
    # a stopped trial saved the median whole fine-tune (50 s) minus what it ran; a cache hit its saved_s
    assert figures["time_saved_s_estimate"] == pytest.approx((50 - 2) + (50 - 20) + 30)
    line = describe(figures)
    assert "50.0 trials/h" in line and "1 at distill, 1 at structure" in line and "1 structure probes reused" in line
