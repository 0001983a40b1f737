import pytest

from autocompress.early_stop import StopRule, StopTrial


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
    StopRule(mode="budget", floor=90, history=one).check(1, 70)      # 70 + 30 (default) >= 90
    with pytest.raises(StopTrial):
        StopRule(mode="budget", floor=90, history=one * 3).check(1, 70)   # 70 + 1 < 90


def test_halving_stops_below_the_median_of_peers():
    history = [[[1, 70], [2, 80]], [[1, 72], [2, 82]], [[1, 74], [2, 84]]]
    rule = StopRule(mode="halving", floor=None, history=history)
    rule.check(1, 73)
    with pytest.raises(StopTrial, match="behind finished trials"):
        rule.check(1, 71)
    rule.check(3, 10)                       # nobody reached step 3: no comparison
