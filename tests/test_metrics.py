"""Tests for the deferral-curve metrics, the upper convex hull and the sign test."""

from __future__ import annotations

import doctest
import math

import chex
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings

from uniroute_jax._src import metrics
from uniroute_jax._src.metrics import (
    PoolReference,
    aiq,
    apgr,
    area,
    auc,
    cpt,
    curve_metrics,
    interpolate_curve,
    pareto_mask,
    peak_quality,
    pool_reference,
    qnc,
    sign_test,
    upper_hull_mask,
)

PROPERTY = settings(deadline=None, derandomize=True, database=None, max_examples=60)
N_POINTS = 12  # one shape for every property example, so one compile serves them all


# ---------------------------------------------------------------------------------------------
# Plain NumPy reference twins, written without the JAX module's tricks: loops, a monotone-chain
# hull, np.interp, trapezoids over explicit breakpoints.
# ---------------------------------------------------------------------------------------------


def np_pareto(cost, quality, valid):
    cost, quality = np.asarray(cost, np.float64), np.asarray(quality, np.float64)
    keep = np.zeros(len(cost), bool)
    for i in range(len(cost)):
        if not valid[i]:
            continue
        keep[i] = True
        for j in range(len(cost)):
            if j == i or not valid[j]:
                continue
            better_or_equal = cost[j] <= cost[i] and quality[j] >= quality[i]
            strictly = cost[j] < cost[i] or quality[j] > quality[i]
            if (better_or_equal and strictly) or (cost[j] == cost[i] and quality[j] == quality[i]
                                                  and j < i):
                keep[i] = False
                break
    return keep


def np_upper_hull(cost, quality, valid):
    cost, quality = np.asarray(cost, np.float64), np.asarray(quality, np.float64)
    front = np.flatnonzero(np_pareto(cost, quality, valid))
    front = front[np.argsort(cost[front], kind="stable")]
    hull: list[int] = []
    for p in front:
        while len(hull) >= 2:
            o, a = hull[-2], hull[-1]
            cross = ((cost[a] - cost[o]) * (quality[p] - quality[o])
                     - (quality[a] - quality[o]) * (cost[p] - cost[o]))
            if cross >= 0:  # left turn or collinear: `a` is not a strict vertex
                hull.pop()
            else:
                break
        hull.append(p)
    mask = np.zeros(len(cost), bool)
    mask[hull] = True
    return mask


def np_hull_by_definition(cost, quality, valid):
    """Front points with a line through them that has every other front point strictly below."""
    cost, quality = np.asarray(cost, np.float64), np.asarray(quality, np.float64)
    front = np.flatnonzero(np_pareto(cost, quality, valid))
    mask = np.zeros(len(cost), bool)
    for i in front:
        lefts = [j for j in front if cost[j] < cost[i]]
        rights = [k for k in front if cost[k] > cost[i]]
        mask[i] = all((cost[i] - cost[j]) * (quality[k] - quality[i])
                      < (quality[i] - quality[j]) * (cost[k] - cost[i])
                      for j in lefts for k in rights)
    return mask


def np_knots(cost, quality, mask):
    cost, quality = np.asarray(cost, np.float64), np.asarray(quality, np.float64)
    idx = np.flatnonzero(mask)
    idx = idx[np.argsort(cost[idx], kind="stable")]
    return cost[idx], quality[idx]


def np_integral(xs, qs, lo, hi):
    inner = [x for x in xs if lo < x < hi]
    pts = np.array(sorted({lo, hi, *inner}))
    vals = np.interp(pts, xs, qs)  # np.interp is flat outside [xs[0], xs[-1]]
    return float(np.sum(np.diff(pts) * (vals[1:] + vals[:-1]) / 2))


def np_first_cost(xs, qs, target):
    for k in range(len(xs)):
        if qs[k] >= target:
            if k == 0:
                return float(xs[0])
            frac = (target - qs[k - 1]) / (qs[k] - qs[k - 1])
            return float(xs[k - 1] + frac * (xs[k] - xs[k - 1]))
    return math.inf


def np_metrics(cost, quality, valid, ref):
    xs, qs = np_knots(cost, quality, np_pareto(cost, quality, valid))
    hx, hq = np_knots(cost, quality, np_upper_hull(cost, quality, valid))
    norm, wc, wq, sc, sq = (float(v) for v in ref)
    auc_value = np_integral(xs, qs, wc, sc) / (sc - wc)

    def cpt_value(frac):
        c = np_first_cost(xs, qs, wq + frac * (sq - wq))
        return (c - wc) / (sc - wc)

    return dict(
        area=np_integral(xs, qs, 0.0, norm) / norm,
        area_50=np_integral(xs, qs, 0.0, 0.5 * norm) / norm,
        qnc=np_first_cost(xs, qs, sq) / norm,
        peak_quality=float(np.max(np.asarray(quality, np.float64)[valid])),
        aiq=np_integral(hx, hq, 0.0, norm) / norm,
        auc=auc_value,
        apgr=(auc_value - wq) / (sq - wq),
        cpt_50=cpt_value(0.5),
        cpt_80=cpt_value(0.8),
    )


def assert_metrics_close(got, want, atol=2e-5):
    for name, value in want.items():
        g = float(getattr(got, name))
        if math.isinf(value):
            assert math.isinf(g) and g > 0, (name, g, value)
        else:
            assert g == pytest.approx(value, abs=atol), (name, g, value)


# ---------------------------------------------------------------------------------------------
# Strategies: dyadic grid values (k / 16) are exact in float32, so hull collinearity decisions
# are the same in float32 and float64 and the masks must agree exactly.
# ---------------------------------------------------------------------------------------------


@st.composite
def grid_curves(draw):
    cost = np.array(draw(st.lists(st.integers(0, 16), min_size=N_POINTS, max_size=N_POINTS))) / 16
    quality = np.array(draw(st.lists(st.integers(0, 16), min_size=N_POINTS,
                                     max_size=N_POINTS))) / 16
    valid = np.array(draw(st.lists(st.booleans(), min_size=N_POINTS, max_size=N_POINTS)))
    valid[draw(st.integers(0, N_POINTS - 1))] = True
    return cost.astype(np.float32), quality.astype(np.float32), valid


@st.composite
def curves_with_pool(draw):
    """A grid curve plus a pool reference with a genuine weak-to-strong gap."""
    cost, quality, valid = draw(grid_curves())
    wc, sc = sorted(draw(st.lists(st.integers(0, 16), min_size=2, max_size=2, unique=True)))
    wq, sq = sorted(draw(st.lists(st.integers(0, 16), min_size=2, max_size=2, unique=True)))
    norm = max(sc, draw(st.integers(1, 20)))
    ref = PoolReference(*(np.float32(v / 16) for v in (norm, wc, wq, sc, sq)))
    return cost, quality, valid, ref


@st.composite
def float_curves(draw):
    floats = st.floats(0, 1, allow_nan=False, width=32)
    cost = np.array(draw(st.lists(floats, min_size=N_POINTS, max_size=N_POINTS)), np.float32)
    quality = np.array(draw(st.lists(floats, min_size=N_POINTS, max_size=N_POINTS)), np.float32)
    valid = np.array(draw(st.lists(st.booleans(), min_size=N_POINTS, max_size=N_POINTS)))
    valid[draw(st.integers(0, N_POINTS - 1))] = True
    return cost, quality, valid


# ---------------------------------------------------------------------------------------------
# Hand-computed curves.
# ---------------------------------------------------------------------------------------------

TWO = ([0.2, 1.0], [0.5, 0.9], [True, True])


def test_area_two_points_by_hand():
    # Flat 0.5 on [0, 0.2], then the trapezoid 0.8 * (0.5 + 0.9) / 2.
    assert float(area(*TWO, cost_norm=1.0)) == pytest.approx(0.1 + 0.56, abs=1e-6)
    # Area(50%) stops at 0.5 where q = 0.65, and is not rescaled.
    assert float(area(*TWO, cost_norm=1.0, upper=0.5)) == pytest.approx(0.1 + 0.3 * 1.15 / 2,
                                                                        abs=1e-6)


def test_dominated_point_is_ignored():
    cost, quality = [0.2, 1.0, 0.6, 0.2], [0.5, 0.9, 0.45, 0.4]
    valid = [True] * 4
    assert float(area(cost, quality, valid, 1.0)) == pytest.approx(0.66, abs=1e-6)
    np.testing.assert_array_equal(pareto_mask(cost, quality, valid), [True, True, False, False])


def test_front_point_below_hull_lowers_area_but_not_aiq():
    cost, quality, valid = [0.2, 0.6, 1.0], [0.5, 0.6, 0.9], [True] * 3
    # 0.2 * 0.5 + 0.4 * (0.5 + 0.6) / 2 + 0.4 * (0.6 + 0.9) / 2
    assert float(area(cost, quality, valid, 1.0)) == pytest.approx(0.62, abs=1e-6)
    assert float(aiq(cost, quality, valid, 1.0)) == pytest.approx(0.66, abs=1e-6)
    np.testing.assert_array_equal(upper_hull_mask(cost, quality, valid), [True, False, True])


def test_left_and_right_extensions():
    # Right: with cost_norm 2 the curve is flat at 0.9 on normalised cost [0.5, 1].
    assert float(area(*TWO, cost_norm=2.0)) == pytest.approx(0.05 + 0.4 * 0.7 + 0.5 * 0.9,
                                                             abs=1e-6)
    # Left: a budget below the cheapest point gets the cheapest point's quality.
    np.testing.assert_allclose(interpolate_curve(*TWO, [0.0, 0.1, 0.2, 0.6, 1.0, 5.0]),
                               [0.5, 0.5, 0.5, 0.7, 0.9, 0.9], atol=1e-6)
    assert float(area([0.5, 1.0], [0.5, 0.9], [True, True], 1.0)) == pytest.approx(0.6, abs=1e-6)


def test_single_point_curve():
    assert float(area([0.4], [0.7], [True], 1.0)) == pytest.approx(0.7, abs=1e-6)
    assert float(aiq([0.4], [0.7], [True], 1.0)) == pytest.approx(0.7, abs=1e-6)
    assert float(qnc([0.4], [0.7], [True], 0.7, 1.0).value) == pytest.approx(0.4)


def test_qnc_exact_on_segment_and_unreached():
    value, reached = qnc(*TWO, target_quality=0.7, cost_norm=1.0)
    assert float(value) == pytest.approx(0.2 + 0.5 * 0.8, abs=1e-6) and bool(reached)
    # Normalising by the best model's cost (here 0.5) is just another cost_norm.
    assert float(qnc(*TWO, 0.7, 0.5).value) == pytest.approx(1.2, abs=1e-6)
    assert float(qnc(*TWO, 0.9, 1.0).value) == pytest.approx(1.0)
    value, reached = qnc(*TWO, 0.95, 1.0)
    assert math.isinf(float(value)) and float(value) > 0 and not bool(reached)
    # Reached at the cheapest point: its own cost, not 0 from the left extension.
    assert float(qnc(*TWO, 0.4, 1.0).value) == pytest.approx(0.2)


def test_routellm_metrics_by_hand():
    cost, quality, valid = [0.2, 0.6, 1.0], [0.5, 0.8, 0.9], [True] * 3
    weak, strong = (0.2, 0.5), (1.0, 0.9)
    # p = 0, 0.5, 1 and PGR = 0, 0.75, 1.
    assert float(auc(cost, quality, valid, weak, strong)) == pytest.approx(0.75, abs=1e-6)
    assert float(apgr(cost, quality, valid, weak, strong)) == pytest.approx(0.625, abs=1e-6)
    assert float(cpt(cost, quality, valid, weak, strong, 0.5).value) == pytest.approx(1 / 3,
                                                                                     abs=1e-6)
    assert float(cpt(cost, quality, valid, weak, strong, 0.8).value) == pytest.approx(0.6, abs=1e-6)
    # The weak/strong mixing line recovers half the gap on average and half at p = 0.5.
    assert float(apgr(*TWO, weak, strong)) == pytest.approx(0.5, abs=1e-6)
    assert float(cpt(*TWO, weak, strong, 0.5).value) == pytest.approx(0.5, abs=1e-6)
    # A PGR level beyond the router's best point is never reached.
    value, reached = cpt([0.2, 0.6], [0.5, 0.7], [True, True], weak, strong, 0.8)
    assert math.isinf(float(value)) and not bool(reached)


def test_hull_mask_by_hand():
    cost = [0.0, 0.5, 1.0, 0.5, 0.25, 0.5, 1.2, 0.75]
    quality = [0.2, 0.5, 0.6, 0.3, 0.35, 0.5, 0.6, 0.4]
    valid = [True] * 7 + [False]
    # 3 is dominated, 4 lies on the edge 0-1 (not a vertex), 5 duplicates 1 (lower index kept),
    # 6 is as accurate as 2 but costlier, 7 is padding.
    np.testing.assert_array_equal(upper_hull_mask(cost, quality, valid),
                                  [True, True, True, False, False, False, False, False])
    np.testing.assert_array_equal(pareto_mask(cost, quality, valid),
                                  [True, True, True, False, True, False, False, False])


def test_pool_reference_and_peak_quality():
    ref = pool_reference([0.3, 0.1, 0.1, 0.9, 0.5, 7.0], [0.6, 0.4, 0.5, 0.8, 0.8, 1.0],
                         [True] * 5 + [False])
    np.testing.assert_allclose([float(v) for v in ref], [0.9, 0.1, 0.5, 0.5, 0.8], atol=1e-7)
    assert float(peak_quality([0.6, 0.4, 1.0], [True, True, False])) == pytest.approx(0.6)


def test_curve_metrics_matches_single_functions():
    cost, quality, valid = [0.2, 0.6, 1.0, 0.7], [0.5, 0.8, 0.9, 0.6], [True] * 4
    ref = PoolReference(*(np.float32(v) for v in (1.25, 0.2, 0.5, 1.0, 0.9)))
    weak, strong = (0.2, 0.5), (1.0, 0.9)
    m = curve_metrics(cost, quality, valid, ref)
    assert float(m.area) == pytest.approx(float(area(cost, quality, valid, 1.25)), abs=1e-6)
    assert float(m.area_50) == pytest.approx(float(area(cost, quality, valid, 1.25, 0.5)),
                                             abs=1e-6)
    assert float(m.qnc) == pytest.approx(float(qnc(cost, quality, valid, 0.9, 1.25).value))
    assert bool(m.qnc_reached)
    assert float(m.aiq) == pytest.approx(float(aiq(cost, quality, valid, 1.25)), abs=1e-6)
    assert float(m.peak_quality) == pytest.approx(0.9)
    assert float(m.auc) == pytest.approx(float(auc(cost, quality, valid, weak, strong)), abs=1e-6)
    assert float(m.apgr) == pytest.approx(float(apgr(cost, quality, valid, weak, strong)),
                                          abs=1e-6)
    assert float(m.cpt_80) == pytest.approx(float(cpt(cost, quality, valid, weak, strong,
                                                      0.8).value), abs=1e-6)


def test_curve_metrics_without_gap_gives_nan_not_error():
    ref = pool_reference([0.1, 1.0], [0.9, 0.5])  # the cheapest model is also the best
    m = curve_metrics([0.1, 1.0], [0.9, 0.5], [True, True], ref)
    assert math.isnan(float(m.apgr)) and math.isnan(float(m.cpt_50))
    assert float(m.qnc) == pytest.approx(0.1)


def test_no_valid_point_under_jit_is_nan():
    none = (jnp.zeros(3), jnp.zeros(3), jnp.zeros(3, bool))
    assert math.isnan(float(jax.jit(area)(*none, 1.0)))
    assert math.isnan(float(jax.jit(qnc)(*none, 0.5, 1.0).value))


# ---------------------------------------------------------------------------------------------
# Against the NumPy twin.
# ---------------------------------------------------------------------------------------------


@PROPERTY
@given(grid_curves())
def test_masks_match_reference(curve):
    cost, quality, valid = curve
    np.testing.assert_array_equal(pareto_mask(cost, quality, valid),
                                  np_pareto(cost, quality, valid))
    hull = np_upper_hull(cost, quality, valid)
    np.testing.assert_array_equal(upper_hull_mask(cost, quality, valid), hull)
    np.testing.assert_array_equal(hull, np_hull_by_definition(cost, quality, valid))


@PROPERTY
@given(curves_with_pool())
def test_metrics_match_reference(case):
    cost, quality, valid, ref = case
    got = curve_metrics(cost, quality, valid, ref)
    assert_metrics_close(got, np_metrics(cost, quality, valid, ref))
    assert float(got.aiq) >= float(got.area) - 1e-6


@PROPERTY
@given(float_curves())
def test_float_curves_match_reference(curve):
    # Off the grid, near-collinear hull points may be decided either way; areas must still agree.
    cost, quality, valid = curve
    xs, qs = np_knots(cost, quality, np_pareto(cost, quality, valid))
    hx, hq = np_knots(cost, quality, np_upper_hull(cost, quality, valid))
    assert float(area(cost, quality, valid, 1.0)) == pytest.approx(np_integral(xs, qs, 0, 1),
                                                                   abs=2e-5)
    assert float(aiq(cost, quality, valid, 1.0)) == pytest.approx(np_integral(hx, hq, 0, 1),
                                                                  abs=2e-5)
    at = np.linspace(-0.1, 1.1, 7, dtype=np.float32)
    np.testing.assert_allclose(interpolate_curve(cost, quality, valid, at),
                               np.interp(at, xs, qs), atol=2e-5)


# ---------------------------------------------------------------------------------------------
# JAX transformations: eager == jit, vmap == loop, padding invariance, no retracing.
# ---------------------------------------------------------------------------------------------


def _batch(seed, n_curves=5, n_points=N_POINTS):
    rng = np.random.default_rng(seed)
    cost = (rng.integers(0, 17, (n_curves, n_points)) / 16).astype(np.float32)
    quality = (rng.integers(0, 17, (n_curves, n_points)) / 16).astype(np.float32)
    valid = rng.random((n_curves, n_points)) < 0.7
    valid[:, 0] = True
    refs = PoolReference(
        cost_norm=np.full(n_curves, 1.5, np.float32),
        weak_cost=np.full(n_curves, 0.1, np.float32),
        weak_quality=rng.uniform(0.1, 0.4, n_curves).astype(np.float32),
        strong_cost=np.full(n_curves, 0.9, np.float32),
        strong_quality=rng.uniform(0.6, 0.9, n_curves).astype(np.float32),
    )
    return cost, quality, valid, refs


def _row(refs, i):
    return PoolReference(*(v[i] for v in refs))


def test_eager_equals_jit():
    # Op-by-op eager execution compiles every primitive separately, so check a few kernels
    # that between them use every building block of `curve_metrics`.
    cost, quality, valid, refs = _batch(0)
    args = (cost[0], quality[0], valid[0])
    ref = _row(refs, 0)
    fns = {
        "hull": upper_hull_mask,
        "area": lambda c, q, v: area(c, q, v, 1.5, 0.5),
        "aiq": lambda c, q, v: aiq(c, q, v, 1.5),
        "qnc": lambda c, q, v: qnc(c, q, v, ref.strong_quality, 1.5),
        "apgr": lambda c, q, v: apgr(c, q, v, (0.1, ref.weak_quality), (0.9, ref.strong_quality)),
    }
    for name, fn in fns.items():
        with jax.disable_jit():
            eager = fn(*args)
        chex.assert_trees_all_close(eager, jax.jit(fn)(*args), atol=1e-6, custom_message=name)


def test_vmap_equals_loop():
    cost, quality, valid, refs = _batch(1)
    batched = jax.jit(jax.vmap(curve_metrics))(cost, quality, valid, refs)
    looped = [curve_metrics(cost[i], quality[i], valid[i], _row(refs, i)) for i in range(5)]
    chex.assert_trees_all_close(batched, jax.tree.map(lambda *x: jnp.stack(x), *looped), atol=1e-6)
    hulls = jax.jit(jax.vmap(upper_hull_mask))(cost, quality, valid)
    for i in range(5):
        np.testing.assert_array_equal(hulls[i], upper_hull_mask(cost[i], quality[i], valid[i]))
    # Several budgets for one curve: vmap over `upper` only.
    uppers = jnp.array([0.25, 0.5, 1.0])
    by_upper = jax.jit(jax.vmap(area, in_axes=(None, None, None, None, 0)))(
        cost[0], quality[0], valid[0], 1.5, uppers)
    np.testing.assert_allclose(by_upper, [area(cost[0], quality[0], valid[0], 1.5, float(u))
                                          for u in uppers], atol=1e-6)


def test_padding_invariance():
    cost, quality, valid, refs = _batch(2, n_curves=1, n_points=8)
    cost, quality, valid, ref = cost[0], quality[0], valid[0], _row(refs, 0)
    # Padding may hold anything, including NaN, infinities and out-of-range values.
    pad_cost = np.array([np.nan, -3.0, 0.0, np.inf], np.float32)
    pad_quality = np.array([2.0, np.nan, 1.0, -np.inf], np.float32)
    perm = np.random.default_rng(0).permutation(12)
    padded = tuple(np.concatenate([x, p])[perm] for x, p in
                   ((cost, pad_cost), (quality, pad_quality), (valid, np.zeros(4, bool))))
    chex.assert_trees_all_close(curve_metrics(cost, quality, valid, ref),
                                curve_metrics(*padded, ref), atol=1e-6)
    # Masks are equivariant: the same points are kept, wherever they moved to.
    np.testing.assert_array_equal(
        np.flatnonzero(np.concatenate([upper_hull_mask(cost, quality, valid),
                                       np.zeros(4, bool)])[perm]),
        np.flatnonzero(upper_hull_mask(*padded)))
    # Padding also drops out under jit/vmap, where nothing is validated.
    chex.assert_trees_all_close(jax.jit(curve_metrics)(*padded, ref),
                                curve_metrics(cost, quality, valid, ref), atol=1e-6)


def test_no_retrace_on_same_shapes():
    cost, quality, valid, refs = _batch(3)
    traced = jax.jit(chex.assert_max_traces(curve_metrics, n=1))
    for i in range(3):
        traced(cost[i], quality[i], valid[i], _row(refs, i))
    # The library's own jitted kernel, used for concrete inputs, keeps one entry for one shape,
    # whether scalars arrive as Python floats or NumPy scalars.
    before = metrics._area_jit._cache_size()
    area(cost[0], quality[0], valid[0], 1.5)
    area(cost[1].tolist(), quality[1], valid[1], np.float64(2.0), upper=0.5)
    assert metrics._area_jit._cache_size() - before <= 1


# ---------------------------------------------------------------------------------------------
# Input validation at the public entry points.
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("call, error, match", [
    (lambda: area([0.2, 1.0], [0.5], [True, True], 1.0), ValueError, "quality"),
    (lambda: area([[0.2, 1.0]], [0.5, 0.9], [True, True], 1.0), ValueError, "cost"),
    (lambda: area([0.2, 1.0], [0.5, 1.9], [True, True], 1.0), ValueError, "quality"),
    (lambda: area([0.2, -1.0], [0.5, 0.9], [True, True], 1.0), ValueError, "cost"),
    (lambda: area([0.2, np.nan], [0.5, 0.9], [True, True], 1.0), ValueError, "cost"),
    (lambda: area([0.2, 1.0], [0.5, 0.9], [False, False], 1.0), ValueError, "valid"),
    (lambda: area([0.2, 1.0], [0.5, 0.9], [True], 1.0), ValueError, "valid"),
    (lambda: area([0.2, 1.0], [0.5, 0.9], ["a", "b"], 1.0), TypeError, "valid"),
    (lambda: area(["a", "b"], [0.5, 0.9], [True, True], 1.0), TypeError, "cost"),
    (lambda: area([0.2, 1.0], [0.5, 0.9], [True, True], 0.0), ValueError, "cost_norm"),
    (lambda: area([0.2, 1.0], [0.5, 0.9], [True, True], 1.0, upper=-1), ValueError, "upper"),
    (lambda: qnc([0.2, 1.0], [0.5, 0.9], [True, True], 1.5, 1.0), ValueError, "target_quality"),
    (lambda: apgr([0.2, 1.0], [0.5, 0.9], [True, True], (1.0, 0.9), (0.2, 0.5)), ValueError,
     "strong"),
    (lambda: apgr([0.2, 1.0], [0.5, 0.9], [True, True], 0.5, (0.2, 0.5)), TypeError, "weak"),
    (lambda: cpt([0.2, 1.0], [0.5, 0.9], [True, True], (0.2, 0.5), (1.0, 0.9), 1.5), ValueError,
     "fraction"),
    (lambda: interpolate_curve([0.2, 1.0], [0.5, 0.9], [True, True], [np.inf]), ValueError,
     "at_cost"),
    (lambda: peak_quality([0.5, 0.9], [False, False]), ValueError, "valid"),
    (lambda: pool_reference([0.0, 0.0], [0.5, 0.9]), ValueError, "model_cost"),
    (lambda: curve_metrics([0.2], [0.5], [True], (1.0, 0.2, 0.5, 1.0, 0.9)), TypeError,
     "reference"),
    (lambda: sign_test([1.0, 2.0], [1.0]), ValueError, "b"),
    (lambda: sign_test([1.0], [1.0], alternative="bigger"), ValueError, "alternative"),
])
def test_validation_errors(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_traced_shape_mismatch_raises():
    with pytest.raises(ValueError, match="quality"):
        jax.jit(area)(jnp.zeros(3), jnp.zeros(4), jnp.ones(3, bool), 1.0)


# ---------------------------------------------------------------------------------------------
# Sign test.
# ---------------------------------------------------------------------------------------------


def test_sign_test_by_hand():
    res = sign_test(np.ones(10), np.zeros(10))
    assert (res.n_wins_a, res.n_wins_b, res.n_ties) == (10, 0, 0)
    assert res.p_value == 2 * 0.5 ** 10
    # Ties are dropped: the same p-value with five extra tied trials.
    tied = sign_test(np.r_[np.ones(10), np.zeros(5)], np.zeros(15))
    assert (tied.n_ties, tied.p_value) == (5, res.p_value)
    assert sign_test(np.ones(10), np.zeros(10), alternative="greater").p_value == 0.5 ** 10
    assert sign_test(np.ones(10), np.zeros(10), alternative="less").p_value == 1.0
    # 8 wins of 10: P(X >= 8) = (45 + 10 + 1) / 1024.
    a, b = np.r_[np.ones(8), np.zeros(2)], np.r_[np.zeros(8), np.ones(2)]
    assert sign_test(a, b).p_value == pytest.approx(2 * 56 / 1024)
    assert sign_test(a, b, alternative="less").p_value == pytest.approx(1 - 11 / 1024)
    assert sign_test(np.r_[np.ones(5), np.zeros(5)], np.r_[np.zeros(5), np.ones(5)]).p_value == 1.0
    assert sign_test([0.3, 0.3], [0.3, 0.3]) == (0, 0, 2, 1.0)


def test_sign_test_large_n_and_symmetry():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=1000), rng.normal(size=1000) + 0.1
    res = sign_test(a, b)
    swapped = sign_test(b, a)
    assert 0.0 < res.p_value < 1.0 and res.p_value == pytest.approx(swapped.p_value)
    assert res.n_wins_a + res.n_wins_b + res.n_ties == 1000
    assert sign_test(np.ones(1000), np.zeros(1000)).p_value == 2 * 0.5 ** 1000
    stats = pytest.importorskip("scipy.stats")
    for alt in ("two-sided", "greater", "less"):
        want = stats.binomtest(res.n_wins_a, res.n_wins_a + res.n_wins_b, 0.5,
                               alternative=alt).pvalue
        assert sign_test(a, b, alternative=alt).p_value == pytest.approx(want, rel=1e-9)


def test_docstring_examples():
    failures, _ = doctest.testmod(metrics)
    assert failures == 0
