import pytest

from autocompress.objectives.front import dominates, front, hypervolume


def rec(n, acc, lat, size):
    return {"number": n, "metrics": {"accuracy": acc, "latency_ms": lat, "size_mb": size}}


def test_dominance_respects_directions():
    assert dominates([90, 1, 1], [89, 1, 1])
    assert not dominates([90, 1, 1], [90, 1, 1])
    assert not dominates([90, 2, 1], [89, 1, 1])


def test_front_keeps_trade_offs_and_drops_dominated():
    records = [rec(0, 90, 1.0, 5), rec(1, 95, 2.0, 5), rec(2, 89, 1.5, 6), rec(3, 80, 0.5, 1)]
    assert [r["number"] for r in front(records)] == [1, 0, 3]


def timed(n, acc, ms, size, ratio, key=None, pooled=None, of=None):
    m = {"accuracy": acc, "latency_ms": ms, "size_mb": size, "latency_vs_base": ratio}
    if key is not None:
        m.update(latency_key=key, latency_vs_base_pooled=pooled, latency_pooled_from=of)
    return {"number": n, "metrics": m}


def test_the_front_compares_latency_beside_the_base_not_milliseconds_from_windows_hours_apart():
    # 0 was timed at the start of a night (the base read 1.0 ms), 1 hours later (the base read 1.5 ms)
    early = timed(0, 79.0, 0.40, 3.0, 0.40)
    late = timed(1, 80.0, 0.45, 3.0, 0.30)
    assert [r["number"] for r in front([early, late])] == [1]
    assert [r["number"] for r in front([early, late], ["accuracy", "size"])] == [1]
    # a record with no ratio (a run from before it): all in milliseconds, as measured
    old = rec(2, 78.0, 0.42, 2.0)
    assert [r["number"] for r in front([early, late, old])] == [1, 0, 2]


def test_one_structure_stands_on_the_front_by_its_most_accurate_artefact_and_its_latest_pooled_ratio():
    # 1 and 2 share a structure: 2 is more accurate but a byte larger and was timed in a slower window
    first = timed(1, 79.5, 0.30, 2.882435, 0.26, key="s", pooled=0.26, of=1)
    later = timed(2, 80.5, 0.38, 2.882436, 0.40, key="s", pooled=0.33, of=6)
    other = timed(3, 80.0, 0.33, 2.9, 0.30, key="t", pooled=0.30, of=3)
    assert [r["number"] for r in front([first, later])] == [2]
    # structure s is judged at 0.33 (pooled over 6 timings), not first's 0.26: other (0.30) is a trade-off
    assert [r["number"] for r in front([first, later, other])] == [2, 3]
    # without later, s reads 0.26 (first's own pooling): a trade-off with other
    assert [r["number"] for r in front([first, other])] == [3, 1]
    assert [r["number"] for r in front([timed(1, 79.5, 0.30, 2.8, 0.26, key="s", pooled=0.26, of=9), later, other])
            ] == [2]


def test_hypervolume_of_boxes():
    assert hypervolume([[0.5, 0.5]], [1, 1]) == pytest.approx(0.25)
    assert hypervolume([[0.5, 0.5], [0.25, 0.75]], [1, 1]) == pytest.approx(0.25 + 0.25 * 0.25)
    assert hypervolume([[0, 0, 0]], [1, 2, 3]) == pytest.approx(6)
    two = hypervolume([[0.5, 0, 0], [0, 0.5, 0.5]], [1, 1, 1])
    assert two == pytest.approx(0.5 + 0.25 - 0.5 * 0.5 * 0.5)
    assert hypervolume([[1.5, 0, 0]], [1, 1, 1]) == 0.0


def test_an_append_after_a_torn_line_starts_a_new_line(tmp_path):
    from autocompress.store.run_folder import RunFolder

    run = RunFolder(tmp_path)
    run.append_trial({"number": 0})
    with open(run.trials_file, "a") as fh:
        fh.write('{"number": 1, "sta')
    run.append_trial({"number": 2})
    assert [r["number"] for r in run.trials()] == [0, 2]
    assert run.trials_file.read_text().count("\n") == 3


def test_the_latency_ratio_budget_judges_the_ratio_timed_beside_the_base_not_milliseconds():
    from autocompress.config.schema import BudgetConfig
    from autocompress.objectives import constraints

    budget = BudgetConfig(max_latency_ms=None, max_size_mb=None, max_accuracy_drop=None, max_latency_vs_base=0.75)
    slow_machine = {"metrics": {"accuracy": 80.0, "latency_ms": 9.0, "size_mb": 1.0, "latency_vs_base": 0.6}}
    assert constraints(slow_machine, budget, 80.0) == {"latency_vs_base": pytest.approx(0.6 / 0.75 - 1)}
    too_slow = {"metrics": {"accuracy": 80.0, "latency_ms": 0.1, "size_mb": 1.0, "latency_vs_base": 0.9}}
    assert constraints(too_slow, budget, 80.0)["latency_vs_base"] == pytest.approx(0.2)
    both = BudgetConfig(max_latency_ms=1.0, max_size_mb=None, max_accuracy_drop=None, max_latency_vs_base=0.75)
    assert set(constraints(slow_machine, both, 80.0)) == {"latency", "latency_vs_base"}


def test_the_speed_up_is_over_the_base_timed_beside_the_model_where_there_is_one():
    from autocompress.objectives import vs_base

    base = {"accuracy": 80.0, "latency_ms": 1.0, "size_mb": 40.0}
    model = {"accuracy": 79.5, "latency_ms": 0.4, "size_mb": 4.0}
    beside = {**model, "latency_vs_base": 0.25}   # timed in a window where the base read 1.6 ms
    assert vs_base(beside, base) == {
        "accuracy_pp": -0.5, "latency_x": 4.0, "size_x": 10.0, "params_x": None, "macs_x": None, "memory_x": None,
        "energy_x": None}
    assert vs_base({**beside, "latency_vs_base_pooled": 0.2}, base)["latency_x"] == 5.0  # what the budget judges
    assert vs_base(model, base)["latency_x"] == 2.5   # no ratio from the same window: the two figures'


def test_the_reports_projection_lines_follow_the_runs_front_rule():
    import time

    from autocompress.results.report import _front_2d
    from autocompress.trial import TrialRecord

    def typed(n, acc, ms, ratio):
        return TrialRecord.measured(number=n, choices={}, started=time.time(), host=None, structure_only=False, parts={
            "metrics": {"accuracy": acc, "latency_ms": ms, "size_bytes": 3_000_000, "size_mb": 3.0, "params": 1,
                        "precision": "int8", "runtime": "onnxruntime", "latency_vs_base": ratio}})

    # 1 is faster and more accurate beside the base; 0 only read fewer milliseconds, in a quicker window
    early, late = typed(0, 79.0, 0.40, 0.40), typed(1, 80.0, 0.45, 0.30)
    assert [r.number for r in _front_2d([early, late], "latency_ms", "accuracy")] == [1]
