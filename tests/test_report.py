import itertools

import numpy as np
import pytest

from kdtrain.report import pareto_mask


def brute_force(points, directions):
    """Textbook definition, one pair at a time."""
    def better_or_equal(a, b, d):
        return a >= b if d == "maximize" else a <= b

    def strictly_better(a, b, d):
        return a > b if d == "maximize" else a < b

    front = []
    for i, p in enumerate(points):
        dominated = False
        for j, q in enumerate(points):
            if i != j and all(better_or_equal(q[k], p[k], d) for k, d in enumerate(directions)) \
                    and any(strictly_better(q[k], p[k], d) for k, d in enumerate(directions)):
                dominated = True
                break
        front.append(not dominated)
    return np.array(front)


@pytest.mark.parametrize("k", [1, 2, 3, 4])
@pytest.mark.parametrize("seed", range(5))
def test_pareto_matches_brute_force_on_random_points(k, seed):
    g = np.random.default_rng(seed)
    for directions in itertools.product(["maximize", "minimize"], repeat=k):
        # small integer grids make ties and exact duplicates common
        pts = g.integers(0, 6, size=(int(g.integers(1, 40)), k)).astype(float)
        assert (pareto_mask(pts, list(directions)) == brute_force(pts.tolist(), directions)).all()


def test_duplicates_are_all_on_the_front():
    pts = [[0.9, 100], [0.9, 100], [0.8, 200]]
    assert pareto_mask(pts, ["maximize", "minimize"]).tolist() == [True, True, False]


def test_empty():
    assert pareto_mask(np.zeros((0, 2)), ["maximize", "minimize"]).tolist() == []
