import pytest

from autocompress.trial.early_stop import StopRule as _StopRule
from autocompress.trial.early_stop import StopTrial

EXACT = 10**9   # a slice this large has no sampling noise: the arithmetic below is exact


def StopRule(**kw):
    return _StopRule(**{"slice_size": EXACT, **kw})


def test_none_never_stops():
    StopRule(mode="none", floor=99).check(1, 0.0)


def test_budget_stops_a_curve_that_cannot_reach_the_floor():
    rule = StopRule(mode="budget", floor=90, history=[[[1, 80], [2, 85], [3, 88]], [[1, 70], [2, 72]], [[1, 60], [2, 61]]])
    rule.check(1, 83)                       # 83 + 8 gain seen = 91 >= 90: keep going
    with pytest.raises(StopTrial) as err:
        rule.check(1, 81)                   # 81 + 8 = 89 < 90
    assert err.value.step == 1 and "cannot reach the accuracy floor 90.00%" in err.value.reason


def test_budget_uses_a_default_gain_before_any_history():
    rule = StopRule(mode="budget", floor=90, default_gain_pp=10)
    rule.check(1, 81)
    with pytest.raises(StopTrial):
        rule.check(1, 79)


def test_budget_trusts_history_only_from_min_history_curves():
    one = [[[1, 80], [2, 81]]]                      # one finished curve gained 1 pp: not enough to judge
    StopRule(mode="budget", floor=90, history=one).check(1, 10)      # no gain assumed: nothing stops yet
    StopRule(mode="front", floor=90, history=one, front=[[95.0, 0.1, 0.1]], position=(1.0, 1.0)).check(1, 10)
    with pytest.raises(StopTrial):
        StopRule(mode="budget", floor=90, history=one * 3).check(1, 70)   # 70 + 1 < 90


def test_halving_stops_below_the_median_of_peers():
    history = [[[1, 70], [2, 80]], [[1, 72], [2, 82]], [[1, 74], [2, 84]]]
    rule = StopRule(mode="halving", floor=None, history=history)
    rule.check(1, 73)
    with pytest.raises(StopTrial, match="behind finished trials"):
        rule.check(1, 71)
    rule.check(3, 10)                       # nobody reached step 3: no comparison


def test_after_the_training_no_gain_is_allowed_and_halving_no_longer_applies():
    rule = StopRule(mode="halving", floor=90)                # no history: during training nothing stops
    rule.check(2, 80, last=2)
    with pytest.raises(StopTrial) as err:
        rule.check(2, 80, last=2, final=True)                # 80 + 0 < 90
    assert err.value.final is True and "(training over)" in err.value.reason
    rule.check(2, 90, last=2, final=True)
    history = [[[1, 70], [2, 80]], [[1, 72], [2, 82]], [[1, 74], [2, 84]]]
    StopRule(mode="halving", history=history).check(2, 70, last=2, final=True)   # below the median: too late to save
    front = StopRule(mode="front", front=[[85.0, 0.5, 1.0]], position=(1.0, 2.0))
    front.check(2, 84, final=False)                          # gain unbounded without history
    with pytest.raises(StopTrial, match="cannot reach the front"):
        front.check(2, 84, final=True)


def test_front_stops_a_trial_a_finished_one_beats_at_its_best():
    history = [[[1, 70], [2, 72]]] * 3                      # +2 pp seen after step 1
    rule = StopRule(mode="front", history=history, front=[[80.0, 0.5, 2.0]], position=(1.0, 2.0))
    with pytest.raises(StopTrial) as err:
        rule.check(1, 77)                                    # at best 79 % at 1 ms, 2 MB: beaten
    assert err.value.rule == "front" and "cannot reach the front" in err.value.reason
    rule.check(1, 79)                                        # at best 81 %: could be on the front


def test_front_needs_a_point_faster_by_the_margin_and_no_larger():
    history = [[[1, 70], [2, 70]]] * 3
    close = StopRule(mode="front", history=history, front=[[90.0, 0.95, 1.0]], position=(1.0, 2.0))
    close.check(1, 50)                                       # 5 % faster is within latency noise
    larger = StopRule(mode="front", history=history, front=[[90.0, 0.5, 3.0]], position=(1.0, 2.0))
    larger.check(1, 50)                                      # faster but larger: not dominated
    unknown = StopRule(mode="front", history=history, front=[[90.0, 0.5, 1.0]], position=None)
    unknown.check(1, 50)                                     # no probe: latency unknown
    budget = StopRule(mode="budget", history=history, front=[[90.0, 0.5, 1.0]], position=(1.0, 2.0))
    budget.check(1, 50)                                      # the front rule is not part of `budget`
    with pytest.raises(StopTrial) as err:
        StopRule(mode="halving", history=history, front=[[90.0, 0.5, 1.0]], position=(1.0, 2.0)).check(1, 50)
    assert err.value.rule == "front"                         # `halving` includes it


def test_front_compares_latency_as_ratios_to_the_base_when_both_have_one():
    history = [[[1, 70], [2, 70]]] * 3
    # timed while the machine was fast: fewer ms, but the same speed-up over the base as this trial
    drifted = StopRule(mode="front", history=history, front=[[90.0, 0.5, 1.0, 0.7]], position=(1.0, 2.0, 0.7))
    drifted.check(1, 50)
    faster = StopRule(mode="front", history=history, front=[[90.0, 0.9, 1.0, 0.5]], position=(0.8, 2.0, 0.7))
    with pytest.raises(StopTrial, match="0.500x vs 0.700x"):
        faster.check(1, 50)                                  # more ms, but timed on a slow machine: faster
    no_ratio = StopRule(mode="front", history=history, front=[[90.0, 0.5, 1.0, None]], position=(1.0, 2.0, 0.7))
    with pytest.raises(StopTrial):
        no_ratio.check(1, 50)                                # a point without a ratio: compared in ms


def test_only_curves_on_the_same_schedule_are_compared():
    two_epochs = [[[1, 80], [2, 81]]] * 3                 # 2-epoch fine-tunes gained 1 pp after epoch 1
    rule = StopRule(mode="budget", floor=90, history=two_epochs)
    with pytest.raises(StopTrial):
        rule.check(1, 70, last=2)                           # same schedule: 70 + 1 < 90
    rule.check(1, 10, last=3)                               # a 3-epoch one-cycle run: no peers, no stop
    three_epochs = two_epochs + [[[1, 60], [2, 75], [3, 85]]] * 3
    with pytest.raises(StopTrial, match=r"\+25\.00 pp"):
        StopRule(mode="budget", floor=90, history=three_epochs).check(1, 64, last=3)   # 64 + 25 < 90
    StopRule(mode="budget", floor=90, history=three_epochs).check(1, 66, last=3)      # 66 + 25 >= 90


def test_slice_noise_and_bias_are_allowed_for_before_stopping():
    history = [[[1, 80], [2, 81]]] * 3                      # +1 pp seen after epoch 1
    exact = _StopRule(mode="budget", floor=90, history=history, slice_size=EXACT)
    with pytest.raises(StopTrial):
        exact.check(1, 87, last=2)                           # 87 + 1 < 90
    noisy = _StopRule(mode="budget", floor=90, history=history, slice_size=512)
    noisy.check(1, 87, last=2)                               # + 2 sd of 512 images (~2.9 pp at 87 %) >= 90
    with pytest.raises(StopTrial, match="at best 89"):
        noisy.check(1, 85, last=2)                           # 85 + 1 + 3.2 = 89.2 < 90
    biased = _StopRule(mode="budget", floor=90, history=history, slice_size=EXACT, slice_bias=-3.0)
    biased.check(1, 87, last=2)                              # the slice reads 3 pp low: 87 + 3 + 1 >= 90
