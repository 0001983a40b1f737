"""The budget module: constraints told to Optuna, feasibility, the structure verdict and the
check before a search, each judged both ways on figures measured in a stored run
(benchmarks/results/families/convnext_atto: the base, its trials 0 and 1 and a structure probe)."""

import pytest

from autocompress.config.schema import BudgetConfig, RunConfig
from autocompress.objectives import (STOPPED_VIOLATION, Unmet, caps_figures, constraints, fixed_verdict, is_feasible,
                                     probe_problem, proxy_verdict, refusal, required_metrics, stopped_constraints,
                                     structure_verdict, within_budget)

BASE = {"accuracy": 92.2006, "latency_ms": 0.77761, "size_mb": 13.563937, "params": 3377730, "macs": 11166720,
        "memory_mb": 59.503, "energy_mj": None, "runtime": "onnxruntime"}
TRIAL_0 = {"accuracy": 92.2006, "latency_ms": 0.75226, "size_mb": 3.751237, "params": 3377730, "macs": 11166720,
           "latency_vs_base": 0.925, "memory_mb": None, "energy_mj": None, "runtime": "onnxruntime"}
TRIAL_1 = {"accuracy": 93.8719, "latency_ms": 0.48523, "size_mb": 1.143497, "params": 870306, "macs": 2842624,
           "latency_vs_base": 0.5902, "memory_mb": 17.035, "energy_mj": None, "runtime": "onnxruntime"}
PROBE = {"latency_ms": 0.48017, "size_mb": 1.143496, "params": 870306, "macs": 2842624, "latency_vs_base": 0.5764,
         "memory_mb": None, "energy_mj": None, "runtime": "onnxruntime"}  # trial 1's structure, untrained
RUN_BUDGET = BudgetConfig(max_latency_ms=None, max_latency_vs_base=0.9, max_size_mb=None, max_accuracy_drop=5.0)
"""The stored run's budget."""


def _budget(**caps) -> BudgetConfig:
    return BudgetConfig(**{"max_latency_ms": None, "max_size_mb": None, "max_accuracy_drop": None, **caps})


def test_constraints_reproduce_the_stored_runs_figures_and_feasibility():
    # trials.jsonl of the stored run: trial 0 +0.027778 on the ratio (infeasible), trial 1 within both
    slow = constraints({"metrics": TRIAL_0}, RUN_BUDGET, BASE["accuracy"])
    fast = constraints({"metrics": TRIAL_1}, RUN_BUDGET, BASE["accuracy"])
    assert {k: round(v, 6) for k, v in slow.items()} == {"latency_vs_base": 0.027778, "accuracy": -0.057339}
    assert {k: round(v, 6) for k, v in fast.items()} == {"latency_vs_base": -0.344222, "accuracy": -0.076505}
    assert not is_feasible(slow) and is_feasible(fast)


def test_constraints_cover_every_capped_figure_in_a_fixed_order():
    budget = _budget(max_latency_ms=0.5, max_size_mb=1.0, max_params=1_000_000, max_macs=2e6, max_memory_mb=20.0,
                     max_energy_mj=1.0, max_latency_vs_base=0.6, max_accuracy_drop=1.0)
    cons = constraints({"metrics": TRIAL_1}, budget, BASE["accuracy"])
    assert list(cons) == ["latency", "latency_vs_base", "size", "params", "macs", "memory", "accuracy"]  # no energy figure
    assert cons["latency"] == pytest.approx(0.48523 / 0.5 - 1) and cons["size"] == pytest.approx(0.143497)
    assert cons["params"] == pytest.approx(-0.129694) and cons["macs"] == pytest.approx(0.421312)
    assert cons["memory"] == pytest.approx(17.035 / 20 - 1)
    assert cons["accuracy"] == pytest.approx((91.2006 - 93.8719) / 91.2006)
    assert not is_feasible(cons)
    assert is_feasible({}) and is_feasible({"size": 0.0}) and not is_feasible({"size": 1e-9})


def test_within_budget_judges_the_accuracy_floor_only_where_it_is_known():
    budget = _budget(max_latency_vs_base=0.9, max_accuracy_drop=1.0)
    assert within_budget(TRIAL_1, budget=budget, floor=93.0)
    assert not within_budget(TRIAL_1, budget=budget, floor=94.0)      # under the floor
    assert within_budget(TRIAL_1, budget=budget, floor=None)          # floor not known inside the trial
    assert not within_budget(TRIAL_0, budget=budget, floor=None)      # 0.925x the base > 0.9x
    assert within_budget(TRIAL_1, budget=_budget(max_latency_vs_base=0.9), floor=200.0)  # no accuracy budget


def test_a_stopped_trial_is_infeasible_within_every_budget_and_by_its_violation_beyond_one():
    stopped = {"probe": PROBE, "stopped": {"accuracy": 91.0}}
    within = stopped_constraints(stopped, RUN_BUDGET, BASE["accuracy"])
    assert within["stopped"] == STOPPED_VIOLATION and within["latency_vs_base"] == pytest.approx(0.5764 / 0.9 - 1)
    assert not is_feasible(within)
    below = stopped_constraints({**stopped, "stopped": {"accuracy": 60.0}}, RUN_BUDGET, BASE["accuracy"])
    assert "stopped" not in below and below["accuracy"] == pytest.approx((87.2006 - 60.0) / 87.2006)
    # a capped figure the probe lacks (memory: not measured) violates nothing
    memory = stopped_constraints(stopped, _budget(max_memory_mb=1.0), BASE["accuracy"])
    assert memory == {"memory": 0.0, "stopped": STOPPED_VIOLATION}


@pytest.mark.parametrize("caps, over, within, message", [
    ({"max_size_mb": 1.0}, {}, {"max_size_mb": 1.2}, "size 1.143 MB > budget 1.0 MB before fine-tuning"),
    ({"max_latency_ms": 0.4}, {}, {"max_latency_ms": 0.44},  # 0.48017 <= 0.44 x 1.1: within the margin
     "latency 0.480 ms > budget 0.4 ms (+10% margin) before fine-tuning"),
    ({"max_latency_vs_base": 0.5}, {}, {"max_latency_vs_base": 0.53},
     "latency 0.576x the base > budget 0.5x (+10% margin) before fine-tuning"),
    ({"max_params": 870305}, {}, {"max_params": 870306}, "params 870,306 > budget 870,305"),
    ({"max_macs": 2.8e6}, {}, {"max_macs": 2842624}, "MACs 2,842,624 > budget 2,800,000"),
    ({"max_memory_mb": 15.0}, {"memory_mb": 17.035}, {"max_memory_mb": 15.5},
     "17.035 MB memory > budget 15.0 MB memory (+10% margin) before fine-tuning"),
    ({"max_energy_mj": 0.1}, {"energy_mj": 0.125}, {"max_energy_mj": 0.12},
     "0.125 mJ > budget 0.1 mJ (+10% margin) before fine-tuning"),
])
def test_structure_verdict_each_figure_both_ways(caps, over, within, message):
    metrics = {**PROBE, **over}
    assert structure_verdict(metrics, _budget(**caps), 0.1) == message
    assert structure_verdict(metrics, _budget(**within), 0.1) is None


def test_structure_verdict_margin_counts_for_measured_figures_only():
    assert structure_verdict(PROBE, _budget(max_latency_ms=0.44), 0.0) is not None   # no margin: over
    assert structure_verdict(PROBE, _budget(max_size_mb=1.1435), 0.5) is None
    assert structure_verdict(PROBE, _budget(max_size_mb=1.14), 0.5) is not None     # size: exact, whatever the margin
    assert structure_verdict(PROBE, _budget(max_memory_mb=1.0), 0.1) is None          # memory not measured: unknown


def test_fixed_verdict_names_what_the_structure_fixes_and_leaves_timed_figures_out():
    assert fixed_verdict(PROBE, _budget(max_size_mb=1.0)) == "size 1.143 MB > budget 1.0 MB"
    assert fixed_verdict(PROBE, _budget(max_params=870305)) == "params 870,306 > budget 870,305"
    assert fixed_verdict(PROBE, _budget(max_macs=2.8e6)) == "MACs 2,842,624 > budget 2,800,000"
    # latency and memory can read differently on another window: never a fixed verdict
    assert fixed_verdict({**PROBE, "memory_mb": 17.0}, _budget(max_latency_ms=0.1, max_latency_vs_base=0.1,
                                                                max_memory_mb=1.0)) is None
    assert fixed_verdict(PROBE, _budget(max_size_mb=1.2)) is None


def _problem(caps, probe=PROBE, runtime="onnxruntime"):
    return probe_problem(_budget(**caps), probe, BASE, desc="prune=channel_prune", runtime=runtime, threads=2)


def test_probe_problem_names_the_field_and_figure_that_cannot_be_met():
    assert _problem({"max_size_mb": 1.0}) == Unmet(
        "budget.max_size_mb", "1.0 MB cannot be met: the most compressed configuration (prune=channel_prune) is "
        "1.143 MB on onnxruntime (base 13.564 MB)")
    assert _problem({"max_size_mb": 1.2}) is None
    assert _problem({"max_latency_ms": 0.38}) == Unmet(
        "budget.max_latency_ms", "0.38 ms cannot be met: the most compressed configuration (prune=channel_prune) "
        "measures 0.480 ms on onnxruntime (base 0.778 ms on onnxruntime) with 2 threads")
    assert _problem({"max_latency_ms": 0.39}) is None                 # 0.48017 <= 1.25 x 0.39: may be noise
    assert _problem({"max_latency_vs_base": 0.49}) == Unmet(
        "budget.max_latency_vs_base", "0.49x the base cannot be met: the most compressed configuration "
        "(prune=channel_prune) measures 0.62x the base's 0.778 ms on onnxruntime")
    assert _problem({"max_latency_vs_base": 0.5}) is None
    assert _problem({"max_latency_vs_base": 0.49}, runtime="torch") is None  # the ratio: on the base's runtime only
    assert _problem({"max_params": 800_000}) == Unmet(
        "budget.max_params", "800,000 params cannot be met: the most compressed configuration (prune=channel_prune) "
        "has 870,306 params on onnxruntime (base 3,377,730 params)")
    assert _problem({"max_params": 870_306}) is None
    assert _problem({"max_macs": 2e6}) == Unmet(
        "budget.max_macs", "2,000,000 MACs cannot be met: the most compressed configuration (prune=channel_prune) "
        "has 2,842,624 MACs on onnxruntime (base 11,166,720 MACs)")
    assert _problem({"max_macs": 3e6}) is None
    memory = {**PROBE, "memory_mb": 17.035}
    assert _problem({"max_memory_mb": 13.0}, memory) == Unmet(
        "budget.max_memory_mb", "13.00 MB cannot be met: the most compressed configuration (prune=channel_prune) "
        "has 17.04 MB on onnxruntime (base 59.50 MB)")
    assert _problem({"max_memory_mb": 14.0}, memory) is None           # within the noise allowance
    energy = {**PROBE, "energy_mj": 0.2}
    assert _problem({"max_energy_mj": 0.15}, energy) == Unmet(
        "budget.max_energy_mj", "0.150 mJ cannot be met: the most compressed configuration (prune=channel_prune) "
        "has 0.200 mJ on onnxruntime")                                  # the base has no energy figure
    assert _problem({"max_energy_mj": 0.16}, energy) is None


def test_refusal_only_when_no_probed_runtime_can_meet_the_budget():
    size = _problem({"max_size_mb": 1.0})
    torch = _problem({"max_size_mb": 1.0}, {**PROBE, "size_mb": 2.5}, runtime="torch")
    assert refusal([size, torch], probed=2, dropped=0) == f"budget.max_size_mb: {size.text}; {torch.text}"
    assert refusal([size], probed=2, dropped=0) is None    # the other runtime can meet it
    assert refusal([size], probed=1, dropped=1) is None    # a runtime left out of the check might
    assert refusal([], probed=0, dropped=0) is None
    assert refusal([], probed=1, dropped=0) is None


def test_what_the_budget_asks_of_a_run():
    assert not caps_figures(_budget(max_accuracy_drop=1.0))
    assert caps_figures(_budget(max_latency_vs_base=0.9)) and caps_figures(_budget(max_macs=1e6))
    config = RunConfig.model_validate({"model": {"name": "resnet18"}, "data": {"source": "digits"},
                                       "objectives": ["accuracy", "params"],
                                       "budget": {"max_latency_ms": None, "max_size_mb": 5.0, "max_memory_mb": 30.0}})
    assert required_metrics(config) == {"accuracy", "params", "size_mb", "memory_mb"}


def test_proxy_verdict_gates_only_on_a_rival_within_budget_no_larger_no_slower_and_clearly_better():
    budget = _budget(max_latency_vs_base=0.9, max_size_mb=2.0)
    rival = {"metrics": {**PROBE, "size_mb": 1.0}, "proxy": 70.0, "trial": 7}

    def verdict(*others, proxy=60.0, gate=5.0, budget=budget):
        return proxy_verdict(PROBE, proxy, others, budget=budget, latency_margin=0.1, gate=gate)

    assert verdict(rival) == ("proxy 60.0 % is 10.0 points below trial 7's structure (70.0 %), which is no larger "
                              "and no slower: not worth a fine-tune (search.proxy_gate 5)")
    assert verdict(rival, proxy=66.0) is None                        # a lead within the gate
    assert verdict(rival, gate=None) is None and verdict(rival, proxy=None) is None
    assert verdict({**rival, "metrics": {**PROBE, "size_mb": 1.2}}) is None           # larger
    slower = {**PROBE, "size_mb": 1.0, "latency_vs_base": PROBE["latency_vs_base"] * 1.2}
    assert verdict({**rival, "metrics": slower}) is None                               # slower beyond the margin
    noisy = {**PROBE, "size_mb": 1.0, "latency_vs_base": PROBE["latency_vs_base"] * 1.05}
    assert verdict({**rival, "metrics": noisy}) is not None                           # within the latency noise
    tight = _budget(max_latency_vs_base=0.55, max_size_mb=2.0)  # the probe (0.576x) is within it by the 10 % margin
    assert verdict(rival, budget=tight) is not None
    assert verdict({**rival, "metrics": {**PROBE, "size_mb": 1.0, "latency_vs_base": 0.62}}, budget=tight) is None
    best = verdict(rival, {**rival, "proxy": 75.0, "trial": 9})
    assert "trial 9's" in best                                        # the best rival is named
