"""`uniroute route --target-cost` and `uniroute sweep --target-cost` against a NumPy twin of the exact calibration."""

from __future__ import annotations

import csv
import re

import numpy as np
import pytest

import uniroute_jax as ur
from uniroute_jax._src.cli import main

N_CLUSTERS = 6


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("target_cost")
    w = ur.synthetic_world(3, n_prompts=900, n_models=3)
    x, q = np.asarray(w.prompts.embeddings, np.float32), np.asarray(w.quality, np.float32)
    router = ur.UniRouter.fit(x[:400], N_CLUSTERS, seed=0, n_init=1)
    pool = router.represent(x[400:700], q[400:700], ["small", "mid", "large"], [0.2, 0.5, 1.3])
    router.save(d / "router.npz")
    pool.save(d / "pool.npz")
    np.save(d / "test.npy", x[700:])
    np.save(d / "quality.npy", q[700:])
    return d, router, pool, x[700:], q[700:]


def operating_points(router, pool, x):
    """Every distinct decision vector over lam >= 0, in NumPy: `[(lam_lo, lam_hi, choice [n])]`, lam increasing."""
    c = router.centroids / np.linalg.norm(router.centroids, axis=1, keepdims=True)
    cluster = np.argmax((x / np.linalg.norm(x, axis=1, keepdims=True)) @ c.T, axis=1)
    psi, cost = pool.psi.astype(np.float32), pool.costs.astype(np.float32)
    # Decisions change only where two models' scores cross in some cluster.
    cross = [(psi[i, k] - psi[j, k]) / (cost[j] - cost[i]) for k in range(psi.shape[1])
             for i in range(len(cost)) for j in range(len(cost)) if cost[j] != cost[i]]
    edges = np.unique([0.0, *[b for b in cross if b > 0]])
    probes = [*(edges[:-1] + edges[1:]) / 2, edges[-1] * 2 + 1.0]
    points = []
    for lo, hi, lam in zip(edges, [*edges[1:], np.inf], probes):
        score = psi[:, cluster].T + np.float32(lam) * cost
        choice = np.argmin(score, axis=1)
        if points and np.array_equal(points[-1][2], choice):
            points[-1] = (points[-1][0], hi, choice)
        else:
            points.append((lo, hi, choice))
    return points


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def bracket(points, costs, target):
    """The two adjacent operating points around `target` and the probability of the dearer one."""
    means = [float(costs[ch].mean()) for _, _, ch in points]
    j = next(i for i, m in enumerate(means) if m <= target)  # the first (smallest lam) at or below it
    hi, lo = points[j - 1], points[j]
    p = (target - means[j]) / (means[j - 1] - means[j])
    return hi, lo, p, means[j - 1], means[j]


def parse_line(err: str):
    m = re.search(r"target mean cost (\S+) on (\d+) prompts: lambda (\S+) with probability (\S+), else (\S+); "
                  r"expected mean cost ([-+.\deE]+)", err)
    assert m, err
    return [float(v) for v in m.groups()]


def test_route_meets_a_target_mean_cost(files, capsys):
    d, router, pool, x, _ = files
    points = operating_points(router, pool, x)
    means = [float(pool.costs[ch].mean()) for _, _, ch in points]
    assert len(points) >= 3 and means == sorted(means, reverse=True)
    # Halfway between two operating points in the middle of the curve: a real mix (p = 0.5).
    j = len(points) // 2
    target = (means[j - 1] + means[j]) / 2
    hi, lo, p, c_hi, c_lo = bracket(points, pool.costs, target)
    code, out, err = run(capsys, "route", "-r", d / "router.npz", "-p", d / "pool.npz", "-e", d / "test.npy",
                         "--target-cost", target)
    assert code == 0, err
    _, n, lam_hi, p_got, lam_lo, achieved = parse_line(err)
    assert n == x.shape[0]
    assert hi[0] < lam_hi < hi[1] and lo[0] < lam_lo < lo[1]  # inside each point's lam interval
    assert p_got == pytest.approx(p, abs=1e-4) and achieved == pytest.approx(target, rel=1e-5)
    rows = list(csv.DictReader(out.splitlines()))
    chosen = np.array([pool.names.index(r["model"]) for r in rows])
    assert len(rows) == x.shape[0]
    assert np.all((chosen == hi[2]) | (chosen == lo[2]))  # each prompt takes one of the two decisions
    differ = hi[2] != lo[2]
    took_hi = (chosen == hi[2])[differ]
    assert differ.sum() >= 10
    assert abs(took_hi.mean() - p) < 4 * np.sqrt(p * (1 - p) / differ.sum())  # a fair draw, not one side
    # Another seed draws other prompts; the same seed the same ones.
    again = run(capsys, "route", "-r", d / "router.npz", "-p", d / "pool.npz", "-e", d / "test.npy",
                "--target-cost", target)[1]
    other = run(capsys, "route", "-r", d / "router.npz", "-p", d / "pool.npz", "-e", d / "test.npy",
                "--target-cost", target, "--seed", 1)[1]
    assert again == out and other != out


def test_route_at_an_operating_points_cost_is_that_decision(files, capsys):
    d, router, pool, x, _ = files
    points = operating_points(router, pool, x)
    j = len(points) // 2
    target = float(pool.costs[points[j][2]].mean()) * (1 + 1e-9)
    code, out, err = run(capsys, "route", "-r", d / "router.npz", "-p", d / "pool.npz", "-e", d / "test.npy",
                         "--target-cost", target, "--models", "small,mid,large")
    assert code == 0, err
    chosen = np.array([pool.names.index(r["model"]) for r in csv.DictReader(out.splitlines())])
    np.testing.assert_array_equal(chosen, points[j][2])


def test_route_below_the_cheapest_decision_says_so(files, capsys):
    d, router, pool, x, _ = files
    code, out, err = run(capsys, "route", "-r", d / "router.npz", "-p", d / "pool.npz", "-e", d / "test.npy",
                         "--target-cost", 0.01)
    assert code == 0 and "below the cheapest" in err
    assert {r["model"] for r in csv.DictReader(out.splitlines())} == {"small"}


def test_route_takes_lam_or_target_cost_not_both(files, capsys):
    d = files[0]
    base = ["route", "-r", d / "router.npz", "-p", d / "pool.npz", "-e", d / "test.npy"]
    for extra in ([], ["--lam", 1, "--target-cost", 0.5]):
        with pytest.raises(SystemExit) as e:
            run(capsys, *base, *extra)
        assert e.value.code == 2
    code, _, err = run(capsys, *base, "--target-cost", -1)
    assert code == 2 and "target_cost must be" in err


def test_sweep_prints_the_calibrated_lambda_and_quality(files, capsys):
    d, router, pool, x, q = files
    points = operating_points(router, pool, x)
    means = [float(pool.costs[ch].mean()) for _, _, ch in points]
    j = len(points) // 2
    target = 0.3 * means[j - 1] + 0.7 * means[j]
    hi, lo, p, _, _ = bracket(points, pool.costs, target)
    code, out, err = run(capsys, "sweep", "-r", d / "router.npz", "-p", d / "pool.npz", "-e", d / "test.npy",
                         "-q", d / "quality.npy", "--target-cost", target, "--n-budgets", 16)
    assert code == 0, err
    assert len(list(csv.DictReader(out.splitlines()))) == 16  # the curve is still written
    _, _, lam_hi, p_got, lam_lo, achieved = parse_line(err)
    assert hi[0] < lam_hi < hi[1] and lo[0] < lam_lo < lo[1] and p_got == pytest.approx(p, abs=1e-4)
    quality = lambda ch: float(q[np.arange(len(ch)), ch].mean())  # noqa: E731
    want = p * quality(hi[2]) + (1 - p) * quality(lo[2])
    got = float(re.search(r"mean quality ([-+.\deE]+)", err).group(1))
    assert got == pytest.approx(want, abs=6e-5)  # printed to 4 decimals
