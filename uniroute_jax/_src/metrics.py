"""Metrics on cost-quality (deferral) curves, the upper convex hull, and the paired sign test.

A router's deferral curve on a test pool is a set of operating points `(cost[i], quality[i])`,
`i < n_points`, one per value of the trade-off `lambda`, with a boolean `valid[i]` marking real
points (the rest is padding). Points come in any order and may be duplicated or dominated.
Costs are mean cost per prompt in the dataset's units (>= 0); quality is mean accuracy in [0, 1].

Two curves are built from the points, and every metric says which one it uses.

* **The router's curve `q(c)`** (used by Area, QNC, AUC, APGR, CPT). Keep the Pareto front (drop a
  point when another point has lower-or-equal cost and higher-or-equal quality, strictly better
  in one; of exact duplicates keep the lowest index), sort it by cost and interpolate linearly
  between consecutive front points. To the right of the most expensive front point `q` stays at
  its quality. To the left of the cheapest point `q` stays at the cheapest point's quality: a
  budget below the cheapest operating point is treated as spending on that point. The cheapest
  operating point of a sweep is, in practice, "always route to the cheapest model", which is
  common to every router on the same pool, so this convention shifts all routers' areas alike.
  `q` is non-decreasing but not necessarily concave: linear interpolation is what a router that
  mixes two neighbouring operating points achieves, not the best mixture over all points.
* **The upper convex hull** (used by AIQ; the curve RouterBench and ZeroRouter use). The
  upper-left concave envelope of the points, from the cheapest point (the most accurate of
  those at the lowest cost) to the most accurate point (the cheapest of those at the highest
  quality). Its vertices are the front points that lie strictly above the chord of their hull
  neighbours; points exactly on a hull edge are not vertices (they change no area). It is
  extended flat to the left and right like `q`. It is the best curve reachable by randomising
  between any two operating points, so AIQ >= Area on the same points.

Every kernel handles ONE curve, takes fixed-shape arrays and a `valid` mask, uses no Python
control flow on values, and can be wrapped in `jax.jit` and `jax.vmap` over pools, trials and
methods. The public functions check their inputs on the host (shapes, dtypes, finiteness,
ranges, at least one valid point) and raise `ValueError`/`TypeError` naming the argument when
the inputs are concrete arrays. Under `jit`/`vmap` only shapes can be checked; a curve with no
valid point then gives NaN rather than an exception.

Example:
  >>> import jax, jax.numpy as jnp
  >>> cost = jnp.array([[0.2, 1.0], [0.2, 0.6]])        # two routers' curves, [2, n_points]
  >>> quality = jnp.array([[0.5, 0.9], [0.5, 0.9]])
  >>> valid = jnp.ones((2, 2), bool)
  >>> areas = jax.jit(jax.vmap(area, in_axes=(0, 0, 0, None)))(cost, quality, valid, 1.0)
  >>> [round(float(a), 4) for a in areas]
  [0.66, 0.74]
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from uniroute_jax._src import validation

__all__ = [
    "CurveMetrics",
    "PoolReference",
    "SignTestResult",
    "ThresholdCost",
    "aiq",
    "apgr",
    "area",
    "auc",
    "cpt",
    "curve_metrics",
    "interpolate_curve",
    "pareto_mask",
    "peak_quality",
    "pool_reference",
    "qnc",
    "sign_test",
    "upper_hull_mask",
]


# --------------------------------------------------------------------------------------------
# Result types.
# --------------------------------------------------------------------------------------------


class ThresholdCost(NamedTuple):
    """The lowest cost at which a curve reaches a quality threshold.

    Attributes:
      value: `[]` float. The cost (normalised as the function documents), `+inf` when the
        threshold is never reached.
      reached: `[]` bool. Whether the threshold is reached at all.
    """

    value: jax.Array  # []
    reached: jax.Array  # [] bool


class PoolReference(NamedTuple):
    """What the metrics need to know about the test pool's own models.

    Build it with `pool_reference` from the test models' (cost, accuracy), or by hand (e.g.
    `ref._replace(cost_norm=ref.strong_cost)` to normalise QNC by the best model's cost).

    Attributes:
      cost_norm: `[]` the cost that maps to normalised cost 1 (the most expensive test model).
      weak_cost: `[]` cost of the "weak" model (the cheapest test model).
      weak_quality: `[]` accuracy of the weak model.
      strong_cost: `[]` cost of the "strong" model (the most accurate test model).
      strong_quality: `[]` accuracy of the strong model; also the QNC target.
    """

    cost_norm: jax.Array  # []
    weak_cost: jax.Array  # []
    weak_quality: jax.Array  # []
    strong_cost: jax.Array  # []
    strong_quality: jax.Array  # []


class CurveMetrics(NamedTuple):
    """All metrics of one deferral curve (see the functions of the same names).

    Attributes:
      area: `[]` Area: integral of `q` over normalised cost [0, 1].
      area_50: `[]` Area(50%): the same over normalised cost [0, 0.5], not rescaled.
      qnc: `[]` quality-neutral cost (normalised by `cost_norm`), `+inf` when not reached.
      qnc_reached: `[]` bool, whether the strong model's accuracy is reached.
      peak_quality: `[]` highest quality of any valid point.
      aiq: `[]` RouterBench's AIQ: integral of the upper hull over normalised cost [0, 1].
      auc: `[]` RouteLLM's AUC: mean of `q` over the weak-to-strong cost range.
      apgr: `[]` RouteLLM's average performance gap recovered.
      cpt_50: `[]` RouteLLM's CPT(50%) as a fraction of the weak-to-strong cost range.
      cpt_80: `[]` CPT(80%).
    """

    area: jax.Array  # []
    area_50: jax.Array  # []
    qnc: jax.Array  # []
    qnc_reached: jax.Array  # [] bool
    peak_quality: jax.Array  # []
    aiq: jax.Array  # []
    auc: jax.Array  # []
    apgr: jax.Array  # []
    cpt_50: jax.Array  # []
    cpt_80: jax.Array  # []


class SignTestResult(NamedTuple):
    """Outcome of a paired sign test.

    Attributes:
      n_wins_a: trials where `a > b`.
      n_wins_b: trials where `b > a`.
      n_ties: trials where `a == b` (dropped from the test).
      p_value: exact binomial p-value under H0 "wins are fair coin flips".
    """

    n_wins_a: int
    n_wins_b: int
    n_ties: int
    p_value: float


# --------------------------------------------------------------------------------------------
# Kernels: one curve, fixed shapes, masks instead of control flow.
# --------------------------------------------------------------------------------------------


def _float_dtype(*xs) -> jnp.dtype:
    return jnp.promote_types(jnp.result_type(*xs), jnp.float32)


def _clean(cost, quality, valid):
    """Casts and zeroes padded entries so NaN/garbage padding cannot leak through arithmetic."""
    dtype = _float_dtype(cost, quality)
    valid = jnp.asarray(valid, bool)
    cost = jnp.where(valid, jnp.asarray(cost, dtype), 0)
    quality = jnp.where(valid, jnp.asarray(quality, dtype), 0)
    return cost, quality, valid


def _pareto_mask_kernel(cost, quality, valid):
    cost, quality, valid = _clean(cost, quality, valid)
    n = cost.shape[0]
    # Sorted by cost, then quality descending, then index, a point is on the front iff it is
    # strictly more accurate than every point before it: earlier points are no costlier, so an
    # equal-or-better one dominates it (or is an earlier exact duplicate). O(n log n).
    idx = jnp.arange(n)
    order = jnp.lexsort((idx, -quality, jnp.where(valid, cost, jnp.inf)))
    q_sorted = jnp.where(valid[order], quality[order], -jnp.inf)
    best_before = jnp.concatenate([jnp.full((1,), -jnp.inf, q_sorted.dtype),
                                   jax.lax.cummax(q_sorted)[:-1]])
    on_front = valid[order] & (q_sorted > best_before)
    return jnp.zeros(n, bool).at[order].set(on_front)


def _upper_hull_mask_kernel(cost, quality, valid):
    front = _pareto_mask_kernel(cost, quality, valid)
    cost, quality, _ = _clean(cost, quality, valid)
    n = cost.shape[0]
    # Front points have distinct costs, and dominated points lie under the non-decreasing
    # envelope, so the upper-left hull of all points is the upper hull of the front: Andrew's
    # monotone chain over the front sorted by cost, as a scan with a fixed-size index stack.
    # Each point is pushed once and popped at most once, so the scan is O(n_points) after the
    # sort and needs O(n_points) memory, which matters for exact curves with many points.
    order = jnp.argsort(jnp.where(front, cost, jnp.inf), stable=True)

    def turns_left_or_straight(o, a, p):
        # Popping on ">= 0" also drops points exactly on a hull edge: only strict vertices stay.
        return ((cost[a] - cost[o]) * (quality[p] - quality[o])
                - (quality[a] - quality[o]) * (cost[p] - cost[o])) >= 0

    def push(state, p):
        stack, top = state
        on_front = front[p]

        def must_pop(t):
            below = stack[jnp.maximum(t - 2, 0)], stack[jnp.maximum(t - 1, 0)]
            return on_front & (t >= 2) & turns_left_or_straight(*below, p)

        top = jax.lax.while_loop(must_pop, lambda t: t - 1, top)
        # Slots at or above `top` are free, so writing there is harmless when `p` is skipped.
        return (stack.at[top].set(p), top + on_front.astype(top.dtype)), None

    init = (jnp.zeros(n, order.dtype), jnp.zeros((), order.dtype))
    (stack, top), _ = jax.lax.scan(push, init, order)
    vertices = jnp.where(jnp.arange(n) < top, stack, n)  # index n: dropped by the scatter
    return jnp.zeros(n, bool).at[vertices].set(True, mode="drop")


def _knots(cost, quality, mask):
    """Sorts the masked points by cost into knot arrays `[max(n_points, 2)]`.

    Padding slots repeat the last knot, so they form zero-length segments that add nothing to
    integrals and keep `searchsorted` valid. With no masked point every knot is NaN.
    """
    n = cost.shape[0]
    order = jnp.argsort(jnp.where(mask, cost, jnp.inf), stable=True)
    m = jnp.sum(mask)
    take = order[jnp.minimum(jnp.arange(n), jnp.maximum(m - 1, 0))]
    xs = jnp.where(m > 0, cost[take], jnp.nan)
    qs = jnp.where(m > 0, quality[take], jnp.nan)
    if n == 1:  # static: the segment formulas need at least two knots.
        xs, qs = jnp.concatenate([xs, xs]), jnp.concatenate([qs, qs])
    return xs, qs


def _eval_knots(xs, qs, t):
    """The flat-extended piecewise-linear function through the knots, at `t` (any shape)."""
    n = xs.shape[0]
    k = jnp.searchsorted(xs, t, side="right") - 1
    k0 = jnp.clip(k, 0, n - 2)
    xa, xb, qa, qb = xs[k0], xs[k0 + 1], qs[k0], qs[k0 + 1]
    # Interior means xs[k] <= t < xs[k + 1]; real knots have distinct costs, so dx > 0 there.
    interior = (k >= 0) & (k <= n - 2)
    dx = jnp.where(interior, xb - xa, 1)
    val = qa + (t - xa) * (qb - qa) / dx
    return jnp.where(k < 0, qs[0], jnp.where(interior, val, qs[-1]))


def _integrate_knots(xs, qs, lo, hi):
    """Exact integral over [lo, hi] (lo <= hi) of the flat-extended interpolant."""
    left = (jnp.clip(xs[0], lo, hi) - lo) * qs[0]
    right = (hi - jnp.clip(xs[-1], lo, hi)) * qs[-1]
    x0, x1, q0, q1 = xs[:-1], xs[1:], qs[:-1], qs[1:]
    dx = x1 - x0
    slope = jnp.where(dx > 0, (q1 - q0) / jnp.where(dx > 0, dx, 1), 0)
    a = jnp.clip(x0, lo, hi)
    b = jnp.clip(x1, lo, hi)
    qa = q0 + slope * (a - x0)
    qb = q0 + slope * (b - x0)
    return left + right + jnp.sum((b - a) * (qa + qb) / 2)


def _first_cost_reaching(xs, qs, target):
    """Lowest cost at which the (non-decreasing) interpolant reaches `target`; `+inf` if never.

    The left flat extension is a budget convention, not an operating point: when the cheapest
    knot already reaches the target the answer is that knot's cost, not 0.
    """
    hit = qs >= target
    reached = jnp.any(hit)
    j = jnp.argmax(hit)
    jp = jnp.maximum(j - 1, 0)
    x0, x1, q0, q1 = xs[jp], xs[j], qs[jp], qs[j]
    dq = q1 - q0
    # On the crossing segment q0 < target <= q1; j == 0 gives dq == 0 and the knot's own cost.
    frac = jnp.where(dq > 0, (target - q0) / jnp.where(dq > 0, dq, 1), 0)
    cost = x0 + jnp.clip(frac, 0, 1) * (x1 - x0)
    cost = jnp.where(reached, cost, jnp.inf)
    return jnp.where(jnp.isnan(xs[0]), jnp.nan, cost), reached  # NaN knots: no valid point


def _front_knots(cost, quality, valid):
    front = _pareto_mask_kernel(cost, quality, valid)
    cost, quality, _ = _clean(cost, quality, valid)
    return _knots(cost, quality, front)


def _hull_knots(cost, quality, valid):
    hull = _upper_hull_mask_kernel(cost, quality, valid)
    cost, quality, _ = _clean(cost, quality, valid)
    return _knots(cost, quality, hull)


def _interpolate_kernel(cost, quality, valid, at_cost):
    xs, qs = _front_knots(cost, quality, valid)
    return _eval_knots(xs, qs, jnp.asarray(at_cost, xs.dtype))


def _area_kernel(cost, quality, valid, cost_norm, upper):
    xs, qs = _front_knots(cost, quality, valid)
    cost_norm = jnp.asarray(cost_norm, xs.dtype)
    # Integrate in raw cost so that distinct costs stay distinct, then change variables.
    return _integrate_knots(xs, qs, 0.0, upper * cost_norm) / cost_norm


def _aiq_kernel(cost, quality, valid, cost_norm):
    xs, qs = _hull_knots(cost, quality, valid)
    cost_norm = jnp.asarray(cost_norm, xs.dtype)
    return _integrate_knots(xs, qs, 0.0, cost_norm) / cost_norm


def _qnc_kernel(cost, quality, valid, target_quality, cost_norm):
    xs, qs = _front_knots(cost, quality, valid)
    c, reached = _first_cost_reaching(xs, qs, jnp.asarray(target_quality, xs.dtype))
    return ThresholdCost(c / jnp.asarray(cost_norm, xs.dtype), reached)


def _peak_quality_kernel(quality, valid):
    valid = jnp.asarray(valid, bool)
    quality = jnp.asarray(quality, _float_dtype(quality))
    peak = jnp.max(jnp.where(valid, quality, -jnp.inf), initial=-jnp.inf, where=valid)
    return jnp.where(jnp.any(valid), peak, jnp.nan)


def _gap(weak, strong, dtype):
    wc, wq = (jnp.asarray(v, dtype) for v in weak)
    sc, sq = (jnp.asarray(v, dtype) for v in strong)
    # A pool whose cheapest model is also its most accurate has no gap to recover: NaN.
    ok = (sc > wc) & (sq > wq)
    span_c = jnp.where(ok, sc - wc, jnp.nan)
    span_q = jnp.where(ok, sq - wq, jnp.nan)
    return wc, wq, span_c, span_q


def _auc_from_knots(xs, qs, weak, strong):
    wc, _, span_c, _ = _gap(weak, strong, xs.dtype)
    hi = wc + jnp.where(jnp.isnan(span_c), 0, span_c)
    return _integrate_knots(xs, qs, wc, hi) / span_c


def _auc_kernel(cost, quality, valid, weak, strong):
    xs, qs = _front_knots(cost, quality, valid)
    return _auc_from_knots(xs, qs, weak, strong)


def _apgr_kernel(cost, quality, valid, weak, strong):
    xs, qs = _front_knots(cost, quality, valid)
    _, wq, _, span_q = _gap(weak, strong, xs.dtype)
    return (_auc_from_knots(xs, qs, weak, strong) - wq) / span_q


def _cpt_from_knots(xs, qs, weak, strong, fraction):
    wc, wq, span_c, span_q = _gap(weak, strong, xs.dtype)
    target = wq + jnp.asarray(fraction, xs.dtype) * span_q
    c, reached = _first_cost_reaching(xs, qs, target)
    reached = reached & ~jnp.isnan(span_q)
    value = jnp.where(jnp.isnan(span_q), jnp.nan, (c - wc) / span_c)
    return ThresholdCost(value, reached)


def _cpt_kernel(cost, quality, valid, weak, strong, fraction):
    xs, qs = _front_knots(cost, quality, valid)
    return _cpt_from_knots(xs, qs, weak, strong, fraction)


def _pool_reference_kernel(model_cost, model_quality, model_valid):
    cost, quality, valid = _clean(model_cost, model_quality, model_valid)
    inf = jnp.asarray(jnp.inf, cost.dtype)
    # lexsort: the last key is primary. Padded models sort last under both orders.
    weak = jnp.lexsort((-quality, jnp.where(valid, cost, inf)))[0]
    strong = jnp.lexsort((cost, jnp.where(valid, -quality, inf)))[0]
    cost_norm = jnp.max(cost, initial=-jnp.inf, where=valid)
    ref = PoolReference(cost_norm, cost[weak], quality[weak], cost[strong], quality[strong])
    any_valid = jnp.any(valid)
    return PoolReference(*(jnp.where(any_valid, v, jnp.nan) for v in ref))


def _curve_metrics_kernel(cost, quality, valid, reference):
    front_xs, front_qs = _front_knots(cost, quality, valid)
    hull_xs, hull_qs = _hull_knots(cost, quality, valid)
    dtype = front_xs.dtype
    norm = jnp.asarray(reference.cost_norm, dtype)
    weak = (reference.weak_cost, reference.weak_quality)
    strong = (reference.strong_cost, reference.strong_quality)
    qnc_cost, qnc_reached = _first_cost_reaching(
        front_xs, front_qs, jnp.asarray(reference.strong_quality, dtype))
    auc_value = _auc_from_knots(front_xs, front_qs, weak, strong)
    _, wq, _, span_q = _gap(weak, strong, dtype)
    return CurveMetrics(
        area=_integrate_knots(front_xs, front_qs, 0.0, norm) / norm,
        area_50=_integrate_knots(front_xs, front_qs, 0.0, 0.5 * norm) / norm,
        qnc=qnc_cost / norm,
        qnc_reached=qnc_reached,
        peak_quality=_peak_quality_kernel(quality, valid).astype(dtype),
        aiq=_integrate_knots(hull_xs, hull_qs, 0.0, norm) / norm,
        auc=auc_value,
        apgr=(auc_value - wq) / span_q,
        cpt_50=_cpt_from_knots(front_xs, front_qs, weak, strong, 0.5).value,
        cpt_80=_cpt_from_knots(front_xs, front_qs, weak, strong, 0.8).value,
    )


# One jitted kernel per public function, reused by every concrete call so repeated calls with
# the same shapes never retrace.
_pareto_mask_jit = jax.jit(_pareto_mask_kernel)
_upper_hull_mask_jit = jax.jit(_upper_hull_mask_kernel)
_interpolate_jit = jax.jit(_interpolate_kernel)
_area_jit = jax.jit(_area_kernel)
_aiq_jit = jax.jit(_aiq_kernel)
_qnc_jit = jax.jit(_qnc_kernel)
_peak_quality_jit = jax.jit(_peak_quality_kernel)
_auc_jit = jax.jit(_auc_kernel)
_apgr_jit = jax.jit(_apgr_kernel)
_cpt_jit = jax.jit(_cpt_kernel)
_pool_reference_jit = jax.jit(_pool_reference_kernel)
_curve_metrics_jit = jax.jit(_curve_metrics_kernel)


# --------------------------------------------------------------------------------------------
# Host-side checks. They run only on concrete inputs; under jit/vmap shapes are checked at
# trace time and value problems show up as NaN.
# --------------------------------------------------------------------------------------------


def _traced(*xs) -> bool:
    return any(isinstance(x, jax.core.Tracer) for x in jax.tree_util.tree_leaves(xs))


def _check_traced_shapes(cost, quality, valid, names=("cost", "quality", "valid")):
    shapes = [jnp.shape(x) for x in (cost, quality, valid)]
    if len(shapes[0]) != 1:
        raise ValueError(f"{names[0]} must have shape (n_points,), got shape {shapes[0]}")
    for name, shape in zip(names[1:], shapes[1:]):
        if shape != shapes[0]:
            raise ValueError(
                f"{name} must have shape {shapes[0]} like {names[0]}, got shape {shape}")


def _masked_float(x, name: str, n: int | None, valid: np.ndarray | None) -> np.ndarray:
    """A 1-D float32 array; entries outside `valid` may hold anything (NaN, inf, garbage)."""
    if x is None:
        raise TypeError(f"{name} is required but got None")
    arr = np.asarray(x)
    if isinstance(x, (str, bytes)) or arr.dtype.kind not in "biuf":
        raise TypeError(f"{name} must be a numeric array, got dtype {arr.dtype}")
    want = "(n_points,)" if n is None else f"({n},)"
    if arr.ndim != 1 or (n is not None and arr.shape[0] != n):
        raise ValueError(f"{name} must have shape {want}, got shape {arr.shape}")
    if valid is not None:
        arr = np.where(valid, arr, 0)
    return validation.float_array(arr, name, ndim=1)


def _bucket(n: int) -> int:
    """Padded length for `n` entries: a power of two, at least 8."""
    return max(8, 1 << max(n - 1, 0).bit_length())


def _pad(x: np.ndarray, size: int) -> np.ndarray:
    return np.concatenate([x, np.zeros(size - x.shape[0], x.dtype)])


def _check_curve(cost, quality, valid, names=("cost", "quality", "valid")):
    """Host checks for one curve.

    Returns NumPy arrays (float32, float32, bool) padded with invalid points to a bucketed
    length, so that concrete calls with many different `n_points` share a few compiled kernels
    (padding never changes a result).
    """
    cost_name, quality_name, valid_name = names
    n = np.shape(cost)[0] if np.ndim(cost) == 1 else None
    if n is None:
        _masked_float(cost, cost_name, None, None)  # raises the shape error
    valid = validation.bool_array(valid, valid_name, shape=(n,))
    if not valid.any():
        raise ValueError(f"{valid_name} must mark at least one point as valid, got none of {n}")
    cost = _masked_float(cost, cost_name, n, valid)
    quality = _masked_float(quality, quality_name, n, valid)
    validation.nonnegative(cost, cost_name)
    validation.unit_interval(quality, quality_name, where=valid)
    size = _bucket(n)
    return _pad(cost, size), _pad(quality, size), _pad(valid, size)


def _check_positive(x, name: str) -> np.ndarray:
    val = validation.nonnegative_float(x, name)
    if val <= 0:
        raise ValueError(f"{name} must be > 0, got {val}")
    return np.float32(val)


def _check_cost_scalar(x, name: str) -> np.ndarray:
    return np.float32(validation.nonnegative_float(x, name))


def _check_quality_scalar(x, name: str) -> np.ndarray:
    val = validation.nonnegative_float(x, name)
    if val > 1:
        raise ValueError(f"{name} must lie in [0, 1], got {val}")
    return np.float32(val)


def _check_model(model, name: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        c, q = model
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a (cost, quality) pair, got {model!r}") from None
    return _check_cost_scalar(c, f"{name} cost"), _check_quality_scalar(q, f"{name} quality")


def _check_gap(weak, strong):
    (wc, wq), (sc, sq) = weak, strong
    if not sc > wc:
        raise ValueError(f"strong cost must exceed weak cost, got strong {sc:g} and weak {wc:g}")
    if not sq > wq:
        raise ValueError(
            f"strong quality must exceed weak quality, got strong {sq:g} and weak {wq:g}")


# --------------------------------------------------------------------------------------------
# Public API.
# --------------------------------------------------------------------------------------------


def pareto_mask(cost: ArrayLike, quality: ArrayLike, valid: ArrayLike) -> jax.Array:
    """Marks the points on the Pareto front (cheaper is better, more accurate is better).

    A valid point is dropped when another valid point has lower-or-equal cost and
    higher-or-equal quality and is strictly better in one of them. Of exact duplicates only the
    lowest index is kept, so front points have distinct costs and distinct qualities.

    Args:
      cost: `[n_points]` mean cost per prompt of each operating point, >= 0.
      quality: `[n_points]` mean accuracy of each operating point, in [0, 1].
      valid: `[n_points]` bool, False for padding (whose values are ignored).

    Returns:
      `[n_points]` bool, True for front points (always False on padding).

    Raises:
      ValueError, TypeError: on concrete inputs of the wrong shape, dtype or range, or with no
        valid point.
    """
    if _traced(cost, quality, valid):
        _check_traced_shapes(cost, quality, valid)
        return _pareto_mask_kernel(cost, quality, valid)
    curve = _check_curve(cost, quality, valid)
    return _pareto_mask_jit(*curve)[:np.shape(cost)[0]]


def upper_hull_mask(cost: ArrayLike, quality: ArrayLike, valid: ArrayLike) -> jax.Array:
    """Marks the vertices of the upper-left convex hull of the points.

    The hull is the concave envelope from the cheapest point (the most accurate of the
    cheapest) to the most accurate point (the cheapest of the most accurate), i.e. the best
    cost-quality trade-off reachable by randomising between two points. Vertices are front
    points (see `pareto_mask`, including its duplicate rule) strictly above the chord of their
    hull neighbours; points exactly on a hull edge are not vertices. O(n_points log n_points)
    time (a sort, then a monotone-chain scan) and O(n_points) memory.

    Args:
      cost: `[n_points]` costs, >= 0.
      quality: `[n_points]` qualities in [0, 1].
      valid: `[n_points]` bool padding mask.

    Returns:
      `[n_points]` bool, True for hull vertices.

    Raises:
      ValueError, TypeError: on bad concrete inputs (see `pareto_mask`).
    """
    if _traced(cost, quality, valid):
        _check_traced_shapes(cost, quality, valid)
        return _upper_hull_mask_kernel(cost, quality, valid)
    curve = _check_curve(cost, quality, valid)
    return _upper_hull_mask_jit(*curve)[:np.shape(cost)[0]]


def interpolate_curve(cost: ArrayLike, quality: ArrayLike, valid: ArrayLike,
                      at_cost: ArrayLike) -> jax.Array:
    """Evaluates the router's curve `q(c)` at the given costs.

    `q` interpolates linearly between the Pareto-front points sorted by cost; it is flat at the
    cheapest point's quality below the cheapest point (a budget below the cheapest operating
    point is spent on that point) and flat at the last quality above the most expensive one.

    Args:
      cost: `[n_points]` costs, >= 0.
      quality: `[n_points]` qualities in [0, 1].
      valid: `[n_points]` bool padding mask.
      at_cost: any shape, e.g. `[n_query]`: costs in the same (unnormalised) units as `cost`.

    Returns:
      The same shape as `at_cost`: `q(at_cost)`.

    Raises:
      ValueError, TypeError: on bad concrete inputs.

    Example:
      >>> q = interpolate_curve([0.2, 1.0], [0.5, 0.9], [True, True], [0.0, 0.6, 2.0])
      >>> [round(float(v), 4) for v in q]
      [0.5, 0.7, 0.9]
    """
    if _traced(cost, quality, valid, at_cost):
        _check_traced_shapes(cost, quality, valid)
        return _interpolate_kernel(cost, quality, valid, at_cost)
    curve = _check_curve(cost, quality, valid)
    at = validation.float_array(at_cost, "at_cost")
    flat = _pad(at.reshape(-1), _bucket(at.size))
    return _interpolate_jit(*curve, flat)[:at.size].reshape(at.shape)


def area(cost: ArrayLike, quality: ArrayLike, valid: ArrayLike, cost_norm: ArrayLike,
         upper: ArrayLike = 1.0) -> jax.Array:
    """Area under the router's curve over normalised cost [0, upper].

    `Area = integral_0^upper q(u * cost_norm) du`, computed exactly on the piecewise-linear `q`
    (see `interpolate_curve` for `q` and its flat extensions). The paper's Area is `upper=1`
    with `cost_norm` = mean cost of the most expensive test model; Area(50%) is `upper=0.5`,
    not rescaled (so its maximum is 0.5).

    Args:
      cost: `[n_points]` costs, >= 0.
      quality: `[n_points]` qualities in [0, 1].
      valid: `[n_points]` bool padding mask.
      cost_norm: `[]` cost mapped to normalised cost 1, > 0.
      upper: `[]` upper end of the normalised cost range, >= 0.

    Returns:
      `[]` the area.

    Raises:
      ValueError, TypeError: on bad concrete inputs.

    Example:
      >>> round(float(area([0.2, 1.0], [0.5, 0.9], [True, True], cost_norm=1.0)), 4)
      0.66
    """
    if _traced(cost, quality, valid, cost_norm, upper):
        _check_traced_shapes(cost, quality, valid)
        return _area_kernel(cost, quality, valid, cost_norm, upper)
    curve = _check_curve(cost, quality, valid)
    upper = np.float32(validation.nonnegative_float(upper, "upper"))
    return _area_jit(*curve, _check_positive(cost_norm, "cost_norm"), upper)


def aiq(cost: ArrayLike, quality: ArrayLike, valid: ArrayLike, cost_norm: ArrayLike) -> jax.Array:
    """RouterBench's AIQ: area under the upper convex hull over normalised cost [0, 1].

    The hull (see `upper_hull_mask`) is interpolated linearly between its vertices and extended
    flat like `q`: at the cheapest point's quality down to cost 0, at the peak quality beyond the
    most accurate point. RouterBench averages the hull over the range [c_min, c_max] of the
    points' own costs; here the range is [0, cost_norm] with the same `cost_norm` as `area`, so
    AIQ and Area share one axis and AIQ >= Area on the same points.

    Args:
      cost: `[n_points]` costs, >= 0.
      quality: `[n_points]` qualities in [0, 1].
      valid: `[n_points]` bool padding mask.
      cost_norm: `[]` cost mapped to normalised cost 1, > 0.

    Returns:
      `[]` the AIQ.

    Raises:
      ValueError, TypeError: on bad concrete inputs.
    """
    if _traced(cost, quality, valid, cost_norm):
        _check_traced_shapes(cost, quality, valid)
        return _aiq_kernel(cost, quality, valid, cost_norm)
    curve = _check_curve(cost, quality, valid)
    return _aiq_jit(*curve, _check_positive(cost_norm, "cost_norm"))


def qnc(cost: ArrayLike, quality: ArrayLike, valid: ArrayLike, target_quality: ArrayLike,
        cost_norm: ArrayLike) -> ThresholdCost:
    """Quality-neutral cost: the lowest normalised cost at which `q(c) >= target_quality`.

    Solved exactly on the crossing segment of the Pareto front. The flat extension left of the
    cheapest point is a budget convention, not an operating point: if the cheapest point already
    reaches the target, QNC is that point's normalised cost, not 0. When no point reaches the
    target QNC is `+inf` and `reached` is False (no cap at 1). The paper's target is the accuracy
    of the most accurate test model; the comparison is exact, so pass a slightly lower target to
    forgive rounding if the router's best point and the target come from different sums. The
    paper's numbers fit `cost_norm` = cost of the most expensive test model; normalising by the
    most accurate model's cost instead is just another `cost_norm`.

    Args:
      cost: `[n_points]` costs, >= 0.
      quality: `[n_points]` qualities in [0, 1].
      valid: `[n_points]` bool padding mask.
      target_quality: `[]` quality to reach, in [0, 1].
      cost_norm: `[]` cost mapped to normalised cost 1, > 0.

    Returns:
      `ThresholdCost(value [], reached [])`.

    Raises:
      ValueError, TypeError: on bad concrete inputs.
    """
    if _traced(cost, quality, valid, target_quality, cost_norm):
        _check_traced_shapes(cost, quality, valid)
        return _qnc_kernel(cost, quality, valid, target_quality, cost_norm)
    curve = _check_curve(cost, quality, valid)
    target = _check_quality_scalar(target_quality, "target_quality")
    return _qnc_jit(*curve, target, _check_positive(cost_norm, "cost_norm"))


def peak_quality(quality: ArrayLike, valid: ArrayLike) -> jax.Array:
    """The highest quality over valid points (NaN under `jit` when none is valid).

    Args:
      quality: `[n_points]` qualities in [0, 1].
      valid: `[n_points]` bool padding mask.

    Returns:
      `[]` the peak quality.

    Raises:
      ValueError, TypeError: on bad concrete inputs.
    """
    if _traced(quality, valid):
        _check_traced_shapes(quality, quality, valid, names=("quality", "quality", "valid"))
        return _peak_quality_kernel(quality, valid)
    n = np.shape(quality)[0] if np.ndim(quality) == 1 else None
    if n is None:
        _masked_float(quality, "quality", None, None)  # raises the shape error
    valid = validation.bool_array(valid, "valid", shape=(n,))
    if not valid.any():
        raise ValueError(f"valid must mark at least one point as valid, got none of {n}")
    quality = _masked_float(quality, "quality", n, valid)
    validation.unit_interval(quality, "quality", where=valid)
    return _peak_quality_jit(_pad(quality, _bucket(n)), _pad(valid, _bucket(n)))


def auc(cost: ArrayLike, quality: ArrayLike, valid: ArrayLike, weak: tuple[ArrayLike, ArrayLike],
        strong: tuple[ArrayLike, ArrayLike]) -> jax.Array:
    """RouteLLM's AUC generalised to a pool: mean of `q` over the weak-to-strong cost range.

    RouteLLM routes between one weak and one strong model and plots quality against the
    fraction `p` of calls sent to the strong model; AUC is the area under that plot over
    `p` in [0, 1]. For a pool, `p` becomes the position of the cost between the weak and strong
    models' costs, `p(c) = (c - weak_cost) / (strong_cost - weak_cost)`, which equals the
    strong-call fraction when the pool is just those two models. So
    `AUC = integral_0^1 q(weak_cost + p * (strong_cost - weak_cost)) dp`, exact, using `q` with
    its flat extensions (RouteLLM's trapezoid spans only the sampled range of `p`). It differs
    from `area` only in the cost axis: weak-to-strong instead of 0-to-`cost_norm`.

    Args:
      cost: `[n_points]` costs, >= 0.
      quality: `[n_points]` qualities in [0, 1].
      valid: `[n_points]` bool padding mask.
      weak: `(cost [], quality [])` of the weak model (usually the cheapest test model).
      strong: `(cost [], quality [])` of the strong model (usually the most accurate one).

    Returns:
      `[]` the AUC; NaN under `jit` unless `strong` is both costlier and more accurate.

    Raises:
      ValueError, TypeError: on bad concrete inputs, or if `strong` is not both costlier and
        more accurate than `weak`.
    """
    if _traced(cost, quality, valid, weak, strong):
        _check_traced_shapes(cost, quality, valid)
        return _auc_kernel(cost, quality, valid, tuple(weak), tuple(strong))
    curve = _check_curve(cost, quality, valid)
    weak, strong = _check_model(weak, "weak"), _check_model(strong, "strong")
    _check_gap(weak, strong)
    return _auc_jit(*curve, weak, strong)


def apgr(cost: ArrayLike, quality: ArrayLike, valid: ArrayLike, weak: tuple[ArrayLike, ArrayLike],
         strong: tuple[ArrayLike, ArrayLike]) -> jax.Array:
    """RouteLLM's average performance gap recovered, generalised to a pool.

    `PGR(c) = (q(c) - weak_quality) / (strong_quality - weak_quality)` and APGR is its average
    over the weak-to-strong cost range (see `auc` for the axis `p`):
    `APGR = integral_0^1 PGR(p) dp = (AUC - weak_quality) / (strong_quality - weak_quality)`,
    exact. A router that randomises between the weak and strong model scores 0.5; values above 1
    or below 0 are possible (a router beating the strong model, or trailing the weak one).

    Args:
      cost: `[n_points]` costs, >= 0.
      quality: `[n_points]` qualities in [0, 1].
      valid: `[n_points]` bool padding mask.
      weak: `(cost [], quality [])` of the weak model.
      strong: `(cost [], quality [])` of the strong model.

    Returns:
      `[]` the APGR; NaN under `jit` unless `strong` is both costlier and more accurate.

    Raises:
      ValueError, TypeError: as `auc`.
    """
    if _traced(cost, quality, valid, weak, strong):
        _check_traced_shapes(cost, quality, valid)
        return _apgr_kernel(cost, quality, valid, tuple(weak), tuple(strong))
    curve = _check_curve(cost, quality, valid)
    weak, strong = _check_model(weak, "weak"), _check_model(strong, "strong")
    _check_gap(weak, strong)
    return _apgr_jit(*curve, weak, strong)


def cpt(cost: ArrayLike, quality: ArrayLike, valid: ArrayLike, weak: tuple[ArrayLike, ArrayLike],
        strong: tuple[ArrayLike, ArrayLike], fraction: ArrayLike = 0.5) -> ThresholdCost:
    """RouteLLM's call-performance threshold CPT(fraction), generalised to a pool.

    The lowest `p` (position between the weak and strong models' costs, see `auc`; for a
    two-model pool the percentage of calls to the strong model, as a fraction) at which
    `PGR >= fraction`, i.e. at which `q` reaches
    `weak_quality + fraction * (strong_quality - weak_quality)`. Solved exactly on the crossing
    segment, with the same rules as `qnc` (the cheapest point's own cost when it already
    reaches the target; `+inf` and `reached=False` when never reached). `p` is not clipped: it
    is negative if the router reaches the target below the weak model's cost.

    Args:
      cost: `[n_points]` costs, >= 0.
      quality: `[n_points]` qualities in [0, 1].
      valid: `[n_points]` bool padding mask.
      weak: `(cost [], quality [])` of the weak model.
      strong: `(cost [], quality [])` of the strong model.
      fraction: `[]` the PGR level, e.g. 0.5 or 0.8, in [0, 1].

    Returns:
      `ThresholdCost(value [], reached [])`; value NaN under `jit` unless `strong` is both
      costlier and more accurate.

    Raises:
      ValueError, TypeError: as `auc`, or if `fraction` is outside [0, 1].
    """
    if _traced(cost, quality, valid, weak, strong, fraction):
        _check_traced_shapes(cost, quality, valid)
        return _cpt_kernel(cost, quality, valid, tuple(weak), tuple(strong), fraction)
    curve = _check_curve(cost, quality, valid)
    weak, strong = _check_model(weak, "weak"), _check_model(strong, "strong")
    _check_gap(weak, strong)
    return _cpt_jit(*curve, weak, strong, _check_quality_scalar(fraction, "fraction"))


def pool_reference(model_cost: ArrayLike, model_quality: ArrayLike,
                   model_valid: ArrayLike | None = None) -> PoolReference:
    """The reference points of a test pool, from its models' own (cost, accuracy).

    `cost_norm` is the largest model cost; the weak model is the cheapest (the most accurate of
    the cheapest on ties); the strong model is the most accurate (the cheapest of the most
    accurate on ties).

    Args:
      model_cost: `[max_models]` mean cost per prompt of each test model, >= 0.
      model_quality: `[max_models]` test accuracy of each model, in [0, 1].
      model_valid: `[max_models]` bool, False for padded model slots (default: all valid).

    Returns:
      A `PoolReference` of `[]` arrays (NaN under `jit` when no model is valid).

    Raises:
      ValueError, TypeError: on bad concrete inputs, or if every model costs 0.
    """
    if model_valid is None:
        model_valid = np.ones(np.shape(model_cost), bool)
    names = ("model_cost", "model_quality", "model_valid")
    if _traced(model_cost, model_quality, model_valid):
        _check_traced_shapes(model_cost, model_quality, model_valid, names=names)
        return _pool_reference_kernel(model_cost, model_quality, model_valid)
    c, q, v = _check_curve(model_cost, model_quality, model_valid, names=names)
    if not c[v].max() > 0:
        raise ValueError("model_cost must have a positive entry to normalise costs by, got all 0")
    return _pool_reference_jit(c, q, v)


def curve_metrics(cost: ArrayLike, quality: ArrayLike, valid: ArrayLike,
                  reference: PoolReference) -> CurveMetrics:
    """Every metric of one deferral curve, in one pass (vmappable over curves and pools).

    Uses `reference.cost_norm` for Area, Area(50%), QNC and AIQ; the strong model's accuracy as
    the QNC target; and the weak/strong models for AUC, APGR and CPT(50%), CPT(80%) (`+inf` when
    not reached). Unlike `apgr` and friends this never raises over a pool without a gap (its
    cheapest model is also its most accurate): the weak-to-strong metrics are NaN there.

    Args:
      cost: `[n_points]` costs, >= 0.
      quality: `[n_points]` qualities in [0, 1].
      valid: `[n_points]` bool padding mask.
      reference: the test pool's `PoolReference` (see `pool_reference`).

    Returns:
      A `CurveMetrics` of `[]` arrays.

    Raises:
      ValueError, TypeError: on bad concrete inputs.

    Example:
      >>> ref = pool_reference([0.2, 1.0], [0.5, 0.9])
      >>> round(float(curve_metrics([0.2, 0.6, 1.0], [0.5, 0.8, 0.9], [True] * 3, ref).apgr), 4)
      0.625
    """
    if not isinstance(reference, PoolReference):
        raise TypeError(f"reference must be a PoolReference, got {type(reference).__name__}")
    if _traced(cost, quality, valid, reference):
        _check_traced_shapes(cost, quality, valid)
        return _curve_metrics_kernel(cost, quality, valid, reference)
    curve = _check_curve(cost, quality, valid)
    ref = PoolReference(
        cost_norm=_check_positive(reference.cost_norm, "reference.cost_norm"),
        weak_cost=_check_cost_scalar(reference.weak_cost, "reference.weak_cost"),
        weak_quality=_check_quality_scalar(reference.weak_quality, "reference.weak_quality"),
        strong_cost=_check_cost_scalar(reference.strong_cost, "reference.strong_cost"),
        strong_quality=_check_quality_scalar(reference.strong_quality, "reference.strong_quality"),
    )
    return _curve_metrics_jit(*curve, ref)


# --------------------------------------------------------------------------------------------
# Paired sign test (host-side, exact).
# --------------------------------------------------------------------------------------------


def _binom_tail_ge(k: int, n: int) -> float:
    """P(X >= k) for X ~ Binomial(n, 1/2), exact.

    Integer binomial sums are exact and Python's int / int division rounds correctly even when
    2**n overflows a float, so n in the thousands is fine.
    """
    if k <= 0:
        return 1.0
    if k > n:
        return 0.0
    return sum(math.comb(n, i) for i in range(k, n + 1)) / (1 << n)


def sign_test(a: ArrayLike, b: ArrayLike, *, alternative: str = "two-sided") -> SignTestResult:
    """Paired sign test between two methods' per-trial scores.

    Trials where `a == b` exactly are ties and are dropped; under H0 each of the remaining
    `n = n_wins_a + n_wins_b` trials is a win for `a` with probability 1/2. The p-value is the
    exact binomial tail: `"greater"` tests "a beats b" (P(X >= n_wins_a)), `"less"` tests "b beats
    a" (P(X <= n_wins_a)), `"two-sided"` is `min(1, 2 * min(both tails))`, which equals the
    "sum of outcomes no more likely" rule for the symmetric null. With no untied trial the
    p-value is 1.

    Args:
      a: `[n_trials]` scores of method A (higher is better, e.g. Area per trial).
      b: `[n_trials]` scores of method B on the same trials.
      alternative: "two-sided", "greater" or "less".

    Returns:
      `SignTestResult(n_wins_a, n_wins_b, n_ties, p_value)` of Python numbers.

    Raises:
      ValueError, TypeError: on non-finite or mismatched inputs or an unknown `alternative`.

    Example:
      >>> sign_test([1.0] * 10, [0.0] * 10).p_value == 2 * 0.5 ** 10
      True
    """
    alternative = validation.choice(alternative, "alternative", ("two-sided", "greater", "less"))
    a = validation.float_array(a, "a", ndim=1, dtype=np.float64)
    b = validation.float_array(b, "b", shape=a.shape, dtype=np.float64)
    wins_a = int(np.sum(a > b))
    wins_b = int(np.sum(b > a))
    ties = int(a.shape[0]) - wins_a - wins_b
    n = wins_a + wins_b
    upper = _binom_tail_ge(wins_a, n)  # P(X >= wins_a)
    lower = _binom_tail_ge(wins_b, n)  # P(X <= wins_a) = P(n - X >= wins_b), by symmetry
    if alternative == "greater":
        p = upper
    elif alternative == "less":
        p = lower
    else:
        p = min(1.0, 2.0 * min(upper, lower))
    return SignTestResult(wins_a, wins_b, ties, float(p))
