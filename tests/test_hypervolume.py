"""The hypervolume is Optuna's own; it gives the figure the project computed itself before
(the slicing implementation kept here as the reference), and the proof benchmark's stored
joint-search hypervolume for seed 0 again."""

import json
import random
from pathlib import Path

import pytest

from autocompress.objectives import hypervolume

PROOF = Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "proof" / "proof.json"
ACCURACY_SCALE_PP = 5.0  # benchmarks/proof.py: accuracy loss in units of 5 pp


def _sliced(points, ref):
    """The project's former implementation: slices along the first objective, recursively."""
    pts = [tuple(p) for p in points if all(v < r for v, r in zip(p, ref))]
    return _hv(pts, tuple(ref)) if pts else 0.0


def _hv(pts, ref):
    if len(ref) == 1:
        return ref[0] - min(p[0] for p in pts)
    if len(ref) == 2:
        area, best_y = 0.0, ref[1]
        for x, y in sorted(pts):
            if y < best_y:
                area += (ref[0] - x) * (best_y - y)
                best_y = y
        return area
    pts = sorted(pts)
    volume = 0.0
    for i, p in enumerate(pts):
        upper = pts[i + 1][0] if i + 1 < len(pts) else ref[0]
        if upper > p[0]:
            volume += (upper - p[0]) * _hv([q[1:] for q in pts[: i + 1]], ref[1:])
    return volume


def _front(rng, n, dims):
    """Random points around the reference box: some beyond it, some repeated, some sharing a coordinate."""
    pts = [[round(rng.uniform(-0.2, 1.2), 3) for _ in range(dims)] for _ in range(n)]
    pts += [list(pts[0]), [pts[1][0]] + [round(rng.uniform(0, 1), 3) for _ in range(dims - 1)]]
    return pts


@pytest.mark.parametrize("dims", [2, 3, 4])
@pytest.mark.parametrize("seed", range(5))
def test_the_same_figure_as_before_on_random_fronts(dims, seed):
    rng = random.Random(seed * 10 + dims)
    points = _front(rng, rng.randint(3, 25), dims)
    ref = [1.0] * dims
    expected = _sliced(points, ref)
    assert expected > 0
    assert hypervolume(points, ref) == pytest.approx(expected, rel=1e-12, abs=1e-15)


def test_boxes_and_points_beyond_the_reference():
    assert hypervolume([[0.5, 0.5], [0.25, 0.75]], [1, 1]) == pytest.approx(0.25 + 0.25 * 0.25)
    assert hypervolume([[0, 0, 0]], [1, 2, 3]) == pytest.approx(6)
    assert hypervolume([[1.5, 0, 0], [0.5, 1.0, 0]], [1, 1, 1]) == 0.0   # beyond, and on the reference
    assert hypervolume([], [1, 1]) == 0.0
    assert hypervolume([[0.2], [0.6]], [1.0]) == pytest.approx(_sliced([[0.2], [0.6]], [1.0]))


def test_the_proof_benchmarks_joint_search_hypervolume_for_seed_0():
    if not PROOF.is_file():
        pytest.skip(f"{PROOF} is not stored in this checkout")
    proof = json.loads(PROOF.read_text())
    row = next(r for r in proof["results"] if r["group"] == "arm" and r["arm"] == "joint" and r["seed"] == 0)
    base = proof["reference"]["by_runtime"][proof["reference"]["fastest"]]
    # each stored front point: accuracy, latency as a multiple of the fastest base, size, runtime
    points = [[(base["accuracy"] - acc) / ACCURACY_SCALE_PP, latency_x, size / base["size_mb"]]
              for acc, latency_x, size, _ in row["front_points"]]
    assert len(points) == row["front"] == 4
    assert round(hypervolume(points, [1.0, 1.0, 1.0]), 5) == row["hypervolume"]
    assert hypervolume(points, [1.0, 1.0, 1.0]) == pytest.approx(_sliced(points, [1.0, 1.0, 1.0]), rel=1e-12)
