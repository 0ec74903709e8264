"""Exact deferral curves and budget calibration.

`sweeps.sweep` evaluates the router on a grid of trade-offs `lam`. The curve it samples is
piecewise constant in `lam`: unit `u` goes to `argmin_m E[u, m] + lam * c[m]`, which follows the
lower envelope of the lines `E[u, m] + lam * c[m]` and so changes at most `max_models - 1` times,
each time to a strictly cheaper model. This module finds every such switch exactly:

1. Per unit, start from the tie-broken argmin at `lam = 0` and walk the envelope: from the
   current model `cur`, the next switch is at `t = min_{m': c[m'] < c[cur]} (E[u, m'] - E[u, cur])
   / (c[cur] - c[m'])`, to the cheapest model attaining it (then the lowest index): the rule
   `decisions.choose` applies at `lam = t` itself. At most `max_models - 1` steps for all units
   at once (a `while_loop` that stops when no unit moves; shapes stay fixed), masked models never
   chosen, exhausted units emit `+inf` times.
2. Each switch is an event `(t, delta cost, delta quality, delta estimate)` of the unit's sums.
   Sorting a pool's `n_units * (max_models - 1)` events by time and cumulatively summing their
   deltas from the `lam = 0` operating point gives the curve at every breakpoint, in
   `O(n_units * max_models * (max_models + log(n_units * max_models)))` per pool.

Output shape is fixed: `n_points = n_units * max_steps + 1`, with `max_steps = max_models - 1` in
the kernel unless the caller knows a smaller bound on every unit's switches (`exact_curve`
measures one first: most units switch a few times, and the sort and sums then run over far
fewer empty slots). Point `j` holds for
`lam in [lam_start[j], lam_start[j + 1])`. Several events at exactly the same time are merged:
only the last point of a run of equal `lam_start` is `valid` (every point of the run holds the
full run's state), and unused event slots (`lam_start = +inf`) are not valid. A unit of weight 0
(a cluster with no prompt) still switches, so its breakpoints are valid points whose values
repeat the previous point's: its decisions matter for held-out prompts in that cluster.

Precision. With x64 enabled everything runs in float64. In float32 a cumulative sum of
thousands of deltas drifts: measured against float64 on 40,000 events, a sequential float32
cumsum is off by up to 3e-5 of the curve's scale, XLA's (tree-ordered) `jnp.cumsum` on CPU by
about 3e-7. The sums here add a second cumsum of the first one's rounding residuals
(`_compensated_cumsum`), which brings the error to about one float32 ulp (3e-8 to 5e-8 of the
scale, for either summation order): no worse than the direct sum `sweeps.sweep` computes. The
breakpoints themselves are float divisions: `sweeps.sweep` at a `lam` within a few ulps of a
breakpoint may fall on either side of it, and that is the only place the two can disagree (the
tests compare them to 1e-5 relative everywhere else).

Calibration. Given a target mean cost `B` on a calibration set, `calibrate` finds
`lam* = inf{lam : cost(lam) <= B}`: the first point `k` (in increasing `lam`) whose cost is within
budget and the valid point `j` before it (cost above budget), and the probability `p` of using
`j`'s decision so that `p * cost[j] + (1 - p) * cost[k] = B` exactly. A target mean quality `Q`
is handled the same way from the cheap end: `j` is the last point with quality `>= Q`, `k` the
next one, and `p` meets `Q` exactly. `apply_calibration` and `route_calibrated` carry a
calibration to held-out prompts.

Example:
  >>> import numpy as np
  >>> import uniroute_jax as ur
  >>> est = np.array([[0.1, 0.3, 0.6], [0.2, 0.25, 0.4]], np.float32)  # [n_units, max_models]
  >>> costs = np.array([1.0, 0.5, 0.1], np.float32)
  >>> units = ur.make_units([0, 1], n_units=2, costs=costs)
  >>> curve = exact_curve(est, units, costs)
  >>> [round(float(x), 4) for x in curve.lam_start[0][curve.valid[0]]]
  [0.0, 0.1, 0.375, 0.4, 0.75]
  >>> [round(float(x), 4) for x in curve.mean_cost[0][curve.valid[0]]]
  [1.0, 0.75, 0.55, 0.3, 0.1]
  >>> cal = calibrate(curve, cost=0.5)  # mixes the 0.55 and 0.3 points
  >>> round(float(cal.p_high[0]), 4), round(float(cal.achieved_cost[0]), 4)
  (0.8, 0.5)
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from uniroute_jax._src import validation
from uniroute_jax._src.decisions import choose, cost_rows
from uniroute_jax._src.routing import RoutingUnits, SweepResult, check_costs


class ExactCurve(NamedTuple):
    """Every operating point of the router as `lam` runs over `[0, inf)`, per pool."""

    lam_start: jax.Array  # [n_pools, n_points] point j holds for lam in [lam_start_j, lam_start_{j+1})
    mean_cost: jax.Array  # [n_pools, n_points] mean realised cost per prompt
    mean_quality: jax.Array  # [n_pools, n_points] mean realised quality
    mean_error_estimate: jax.Array  # [n_pools, n_points] mean of the routed estimates
    valid: jax.Array  # [n_pools, n_points] bool; False for merged duplicates and unused slots
    feasible: jax.Array  # [n_pools] bool, False for an empty pool (its values are NaN)


class CurvePoints(NamedTuple):
    """Operating points in the form the metrics take (`metrics.area(cost, quality, valid, ...)`)."""

    cost: jax.Array  # [n_pools, n_points]
    quality: jax.Array  # [n_pools, n_points]
    valid: jax.Array  # [n_pools, n_points] bool


class Calibration(NamedTuple):
    """A trade-off (or a mix of two) that meets a target on the calibration set, per pool."""

    # "high" is the smaller-lam point of the pair, "low" the larger-lam one: higher and lower
    # decision cost, and higher and lower realised cost whenever realised costs follow them.
    lam_high_cost: jax.Array  # [n_pools] a lam strictly inside the high point's interval
    lam_low_cost: jax.Array  # [n_pools] a lam strictly inside the low point's interval (>= lam_high_cost)
    p_high: jax.Array  # [n_pools] probability of taking the high point's decision
    achieved_cost: jax.Array  # [n_pools] p * cost_high + (1 - p) * cost_low on the calibration set
    achieved_quality: jax.Array  # [n_pools] same for quality
    feasible: jax.Array  # [n_pools] bool, False when no mix of operating points meets the target
    point_high: jax.Array  # [n_pools] int32 index of the higher-cost point in the ExactCurve
    point_low: jax.Array  # [n_pools] int32 index of the lower-cost point


class CalibratedResult(NamedTuple):
    """Realised outcome of a calibration on (held-out) units, per pool."""

    mean_cost: jax.Array  # [n_pools] expectation over the randomisation: p * high + (1 - p) * low
    mean_quality: jax.Array  # [n_pools]
    mean_error_estimate: jax.Array  # [n_pools]
    sampled_cost: jax.Array | None  # [n_pools] one draw, each unit independently; None without a key
    sampled_quality: jax.Array | None  # [n_pools]; None without a key


class CalibratedRoute(NamedTuple):
    """Per-prompt decisions under a calibration."""

    choice: jax.Array  # [n_pools, n_prompts] int32 index into the model table; -1 for an empty pool
    high: jax.Array  # [n_pools, n_prompts] bool, True where the higher-cost decision was drawn


# ------------------------------------------------------------------------------------ kernels


def _float_dtype() -> jnp.dtype:
    # float64 when x64 is enabled, float32 otherwise.
    return jax.dtypes.canonicalize_dtype(jnp.float64)


def _compensated_cumsum(x: jax.Array) -> jax.Array:
    """Cumulative sum along axis 0, corrected for its own rounding.

    Whatever order the backend adds in, `s = cumsum(x)` telescopes: `s_j = sum_{k <= j} d_k` with
    `d_k = s_k - s_{k-1}`, and `d_k` is exact in floating point when consecutive partial sums are
    within a factor 2 (Sterbenz), which holds along a curve except near zero crossings. So
    `r_k = x_k - d_k` is exactly what the rounding lost, tiny, and `s + cumsum(r)` is the prefix
    sum up to about one rounding of the result. Two plain cumsums: cheap to compile, unlike a
    double-float associative scan.
    """
    s = jnp.cumsum(x, axis=0)
    d = s - jnp.concatenate([jnp.zeros_like(s[:1]), s[:-1]])
    return s + jnp.cumsum(x - d, axis=0)


def _envelope_events(estimates, costs, model_mask, max_steps: int | None = None):
    """Every decision switch of every unit as `lam` grows; see the module docstring.

    `max_steps` (default `max_models - 1`, always enough) sizes the outputs; a smaller value
    must bound every unit's number of switches (`envelope_steps_kernel` measures it).

    Returns:
      start [n_units] int32, the decision at `lam = 0` (-1 for an empty pool); times
      [max_steps, n_units] (+inf where the unit has no further switch); and the model
      before / after each switch, [max_steps, n_units] int32 (equal on +inf events, so
      their deltas are exactly 0).
    """
    n_units, max_models = estimates.shape
    n_steps = max(max_models - 1, 0) if max_steps is None else max_steps
    start = choose(estimates, costs, model_mask).astype(jnp.int32)  # ties: cheaper, then lower index
    live = start >= 0
    # Costs as rows: one shared row for per-model costs, one row per unit for per-request costs.
    rows = cost_rows(costs)
    # The tie rule (cheapest, then lowest index) as one integer key, so a step needs a single
    # integer min instead of a float min followed by an argmax.
    rank = jnp.sum(rows[:, None, :] < rows[:, :, None], axis=2).astype(jnp.int32)  # [1 or n_units, max_models]
    tie_key = rank * max_models + jnp.arange(max_models, dtype=jnp.int32)
    no_key = jnp.int32(max_models * max_models)
    per_unit = lambda table, idx: jnp.take_along_axis(jnp.broadcast_to(table, estimates.shape), idx[:, None], axis=1)

    def body(state):
        step, cur, t_prev, _, times, before, after = state
        safe = jnp.maximum(cur, 0)
        e_cur = jnp.take_along_axis(estimates, safe[:, None], axis=1)
        c_cur = per_unit(rows, safe)
        cheaper = model_mask[None, :] & (rank < per_unit(rank, safe)) & live[:, None]
        gap = jnp.where(cheaper, c_cur - rows, 1.0)  # double-where: no 0/0 off the mask
        t = jnp.where(cheaper, (estimates - e_cur) / gap, jnp.inf)
        t_min = jnp.min(t, axis=1)
        moved = jnp.isfinite(t_min)
        best = jnp.min(jnp.where(t <= t_min[:, None], tie_key, no_key), axis=1)
        nxt = jnp.where(moved, best % max_models, cur).astype(jnp.int32)
        # In exact arithmetic one unit's switch times increase; clamp so rounding cannot reorder
        # them. `where(> 0)` also turns a -0.0 into 0.0, which matters for the integer sort keys.
        t_event = jnp.maximum(t_min, t_prev)
        t_event = jnp.where(moved, jnp.where(t_event > 0, t_event, 0.0), jnp.inf)
        times = jax.lax.dynamic_update_index_in_dim(times, t_event, step, 0)
        before = jax.lax.dynamic_update_index_in_dim(before, cur, step, 0)
        after = jax.lax.dynamic_update_index_in_dim(after, nxt, step, 0)
        return step + 1, nxt, jnp.where(moved, t_event, t_prev), jnp.any(moved), times, before, after

    # A unit walks at most `max_models - 1` switches, but usually far fewer (only the models on
    # the lower convex hull of its (cost, estimate) points); stop once no unit moves. The output
    # shape stays fixed.
    cond = lambda state: (state[0] < n_steps) & state[3]
    idx = jnp.zeros((n_steps, n_units), jnp.int32)
    init = (jnp.int32(0), start, jnp.zeros(n_units, estimates.dtype), jnp.any(live),
            jnp.full((n_steps, n_units), jnp.inf, estimates.dtype), idx, idx)
    if n_steps == 0:  # a one-model table never switches
        return start, init[4], idx, idx
    *_, times, before, after = jax.lax.while_loop(cond, body, init)
    return start, times, before, after


def _sort_key(t: jax.Array) -> jax.Array:
    """An integer key ordered like the non-negative floats `t` (+inf included).

    IEEE-754 bit patterns of non-negative floats sort like their values, and a one-operand
    integer sort is several times faster on CPU than a float sort carrying payloads.
    """
    int_type = jnp.int64 if t.dtype == jnp.float64 else jnp.int32
    return jax.lax.bitcast_convert_type(t, int_type)


def _exact_curve_one(estimates, units: RoutingUnits, costs, model_mask, max_steps: int | None = None):
    """One pool's exact curve: flat arrays of `n_units * max_steps + 1` points."""
    dtype = estimates.dtype
    start, times, before, after = _envelope_events(estimates, costs, model_mask, max_steps)
    tables = (units.cost_sums, units.quality_sums, estimates * units.weight[:, None])
    safe_start = jnp.maximum(start, 0)[:, None]
    base = jnp.stack([jnp.sum(jnp.take_along_axis(tab, safe_start, axis=1)) for tab in tables])
    # tab[u, after[s, u]] - tab[u, before[s, u]] for every event, as [n_events, 3].
    gather = lambda tab, idx: jnp.take_along_axis(tab, idx.T, axis=1).T.reshape(-1)
    deltas = jnp.stack([gather(tab, after) - gather(tab, before) for tab in tables], axis=1)
    # Sort only the times; each event then finds the first slot of its run of equal times and
    # adds its deltas there. This avoids a multi-operand sort, and every point of a run of equal
    # times ends up holding the full run's state.
    keys = _sort_key(times.reshape(-1))
    sorted_keys = jax.lax.sort(keys)
    first = jnp.searchsorted(sorted_keys, keys, side="left", method="scan_unrolled")
    n_events = keys.shape[0]
    increments = jnp.zeros((n_events + 1, 3), dtype).at[0].set(base).at[first + 1].add(deltas)
    lam_start = jnp.concatenate([jnp.zeros(1, dtype), jax.lax.bitcast_convert_type(sorted_keys, dtype)])
    total = jnp.sum(units.weight)
    feasible = jnp.any(model_mask)
    values = jnp.where(feasible, _compensated_cumsum(increments) / total, jnp.nan)
    nxt = jnp.concatenate([lam_start[1:], jnp.full(1, jnp.inf, dtype)])
    valid = jnp.isfinite(lam_start) & (lam_start < nxt) & feasible
    return ExactCurve(lam_start, values[:, 0], values[:, 1], values[:, 2], valid, feasible)


def _cast_units(units: RoutingUnits, dtype) -> RoutingUnits:
    return RoutingUnits(*(jnp.asarray(x, dtype) for x in units))


@functools.partial(jax.jit, static_argnames=("pool_batch", "max_steps"))
def exact_curve_kernel(estimates: jax.Array, units: RoutingUnits, costs: jax.Array, pool_masks: jax.Array,
                       *, pool_batch: int = 1, max_steps: int | None = None) -> ExactCurve:
    """Unchecked exact curves over pools (vmappable over trials).

    Args:
      estimates: [n_units, max_models] estimated error of each model on each unit.
      units: `RoutingUnits` with `n_units` rows over `max_models` models.
      costs: [max_models] per-query costs the router decides with, or [n_units, max_models].
      pool_masks: [n_pools, max_models] bool.
      pool_batch: pools vmapped together inside a sequential map (bounds peak memory).
      max_steps: switches kept per unit; None (default) keeps `max_models - 1`, always enough. A
        smaller value must be at least `envelope_steps_kernel(...)` for these inputs, or later
        switches are lost: it shrinks the sort and the sums, which otherwise run over mostly
        empty slots (a unit switches only along the lower hull of its (cost, estimate) points).

    Returns:
      `ExactCurve` with `[n_pools, n_units * max_steps + 1]` arrays, in the dtype of `estimates`.
    """
    dtype = jnp.result_type(estimates)
    units = _cast_units(units, dtype)
    costs = jnp.asarray(costs, dtype)
    one = lambda mask: _exact_curve_one(estimates, units, costs, mask, max_steps)
    return _map_pools(one, pool_masks, pool_batch)


@functools.partial(jax.jit, static_argnames=("pool_batch",))
def envelope_steps_kernel(estimates: jax.Array, costs: jax.Array, pool_masks: jax.Array, *,
                          pool_batch: int = 1) -> jax.Array:
    """Most switches any unit makes as `lam` grows, `[]` int32 over all pools: the smallest valid
    `max_steps` of `exact_curve_kernel` (the envelope walk alone, without sorting or sums)."""
    dtype = jnp.result_type(estimates)
    costs = jnp.asarray(costs, dtype)

    def one(mask):
        times = _envelope_events(estimates, costs, mask)[1]
        return jnp.max(jnp.sum(jnp.isfinite(times), axis=0), initial=0).astype(jnp.int32)

    return jnp.max(_map_pools(one, pool_masks, pool_batch))


def _map_pools(fn, pool_masks, pool_batch: int):
    """`vmap(fn)(pool_masks)`, run `pool_batch` pools at a time.

    Pads the pools to a multiple of `pool_batch` (repeating the first) instead of letting
    `lax.map` compile a second body for the remainder; one chunk is a plain vmap.
    """
    n_pools = pool_masks.shape[0]
    if pool_batch >= n_pools:
        return jax.vmap(fn)(pool_masks)
    n_chunks = -(-n_pools // pool_batch)
    pad = n_chunks * pool_batch - n_pools
    padded = jnp.concatenate([pool_masks, jnp.broadcast_to(pool_masks[:1], (pad, pool_masks.shape[1]))])
    out = jax.lax.map(jax.vmap(fn), padded.reshape(n_chunks, pool_batch, -1))
    return jax.tree.map(lambda x: x.reshape(n_chunks * pool_batch, *x.shape[2:])[:n_pools], out)


def _curve_at_one(lam_start, cost, quality, error, feasible, lams):
    idx = jnp.searchsorted(lam_start, lams, side="right") - 1
    idx = jnp.clip(idx, 0, lam_start.shape[0] - 1)  # lam_start[0] = 0 <= every lam
    return cost[idx], quality[idx], error[idx]


@jax.jit
def curve_at_kernel(exact: ExactCurve, lams: jax.Array) -> SweepResult:
    """Unchecked evaluation of exact curves at `lams [n_budgets]`; see `curve_at`."""
    lams = jnp.asarray(lams, exact.lam_start.dtype)
    cost, quality, error = jax.vmap(_curve_at_one, in_axes=(0, 0, 0, 0, 0, None))(
        exact.lam_start, exact.mean_cost, exact.mean_quality, exact.mean_error_estimate, exact.feasible, lams)
    return SweepResult(cost, quality, error, exact.feasible)


def _interval_lams(lam_start, valid):
    """A lam strictly inside each valid point's interval `[lam_start_j, next valid start)`.

    The midpoint, or twice the start for the last, unbounded interval (0 when that is the only
    point). A point strictly inside keeps every calibration unit's decision clear of a tie, so
    float rounding at a breakpoint cannot flip it.
    """
    starts = jnp.where(valid, lam_start, jnp.inf)
    # next valid start after j: reverse running minimum, shifted by one.
    rev_min = jax.lax.cummin(starts, reverse=True)
    nxt = jnp.concatenate([rev_min[1:], jnp.full(1, jnp.inf, lam_start.dtype)])
    return jnp.where(jnp.isfinite(nxt), 0.5 * (lam_start + nxt), 2.0 * lam_start)


def _calibrate_one(lam_start, cost, quality, valid, feasible, target, by_quality: bool):
    n = lam_start.shape[0]
    idx = jnp.arange(n)
    if by_quality:
        ok = valid & (quality >= target)
        any_ok = jnp.any(ok)
        hi = jnp.max(jnp.where(ok, idx, -1))  # cheapest-side point still meeting the target
        later = valid & (idx > hi)
        lo = jnp.where(jnp.any(later), jnp.argmax(later), hi)
        fallback = jnp.argmax(jnp.where(valid, quality, -jnp.inf))  # best reachable quality
        num, den = target - quality[lo], quality[hi] - quality[lo]
    else:
        ok = valid & (cost <= target)
        any_ok = jnp.any(ok)
        lo = jnp.argmax(ok)  # first point (smallest lam) within budget
        earlier = valid & (idx < lo)
        hi = jnp.where(jnp.any(earlier), jnp.max(jnp.where(earlier, idx, -1)), lo)
        fallback = jnp.argmin(jnp.where(valid, cost, jnp.inf))  # cheapest point
        num, den = target - cost[lo], cost[hi] - cost[lo]
    hi = jnp.where(any_ok, hi, fallback).astype(jnp.int32)
    lo = jnp.where(any_ok, lo, fallback).astype(jnp.int32)
    mixed = any_ok & (hi != lo)
    p = jnp.where(mixed, num / jnp.where(mixed, den, 1.0), 1.0)
    p = jnp.clip(p, 0.0, 1.0)
    mix = lambda v: p * v[hi] + (1 - p) * v[lo]
    lams = _interval_lams(lam_start, valid)
    ok_all = any_ok & feasible
    nan = lambda v: jnp.where(feasible, v, jnp.nan)
    return Calibration(nan(lams[hi]), nan(lams[lo]), nan(p), nan(mix(cost)), nan(mix(quality)), ok_all, hi, lo)


@functools.partial(jax.jit, static_argnames=("by_quality",))
def calibrate_kernel(exact: ExactCurve, target: jax.Array, *, by_quality: bool = False) -> Calibration:
    """Unchecked calibration of every pool of `exact` to `target [n_pools]`; see `calibrate`."""
    target = jnp.asarray(target, exact.lam_start.dtype)
    one = functools.partial(_calibrate_one, by_quality=by_quality)
    return jax.vmap(one)(exact.lam_start, exact.mean_cost, exact.mean_quality, exact.valid, exact.feasible,
                         target)


def _decide_one(cal_hi, cal_lo, estimates, costs, model_mask):
    hi = choose(estimates + cal_hi * cost_rows(costs), costs, model_mask)
    lo = choose(estimates + cal_lo * cost_rows(costs), costs, model_mask)
    return hi, lo


def _apply_one(lam_hi, lam_lo, p, key, estimates, units, costs, model_mask, sample: bool):
    hi, lo = _decide_one(lam_hi, lam_lo, estimates, costs, model_mask)
    total = jnp.sum(units.weight)
    tables = (units.cost_sums, units.quality_sums, estimates * units.weight[:, None])
    per_unit = lambda tab, choice: jnp.take_along_axis(tab, jnp.maximum(choice, 0)[:, None], axis=1)[:, 0]
    feasible = jnp.any(model_mask)
    nan = lambda v: jnp.where(feasible, v, jnp.nan)
    expected = [nan((p * jnp.sum(per_unit(t, hi)) + (1 - p) * jnp.sum(per_unit(t, lo))) / total) for t in tables]
    if not sample:
        return (*expected, None, None)
    take_hi = jax.random.bernoulli(key, p, hi.shape)
    choice = jnp.where(take_hi, hi, lo)
    sampled = [nan(jnp.sum(per_unit(t, choice)) / total) for t in tables[:2]]
    return (*expected, *sampled)


@functools.partial(jax.jit, static_argnames=("sample",))
def apply_calibration_kernel(calibration: Calibration, estimates: jax.Array, units: RoutingUnits, costs: jax.Array,
                             pool_masks: jax.Array, key: jax.Array, *, sample: bool = True) -> CalibratedResult:
    """Unchecked; see `apply_calibration`. `key` is ignored when `sample` is False."""
    dtype = jnp.result_type(estimates)
    units = _cast_units(units, dtype)
    costs = jnp.asarray(costs, dtype)
    keys = jax.random.split(key, pool_masks.shape[0])
    one = functools.partial(_apply_one, sample=sample)
    out = jax.vmap(one, in_axes=(0, 0, 0, 0, None, None, None, 0))(
        jnp.asarray(calibration.lam_high_cost, dtype), jnp.asarray(calibration.lam_low_cost, dtype),
        jnp.asarray(calibration.p_high, dtype), keys, estimates, units, costs, pool_masks)
    return CalibratedResult(*out)


@jax.jit
def route_calibrated_kernel(calibration: Calibration, estimates: jax.Array, costs: jax.Array, pool_masks: jax.Array,
                            key: jax.Array) -> CalibratedRoute:
    """Unchecked; see `route_calibrated`."""
    dtype = jnp.result_type(estimates)
    costs = jnp.asarray(costs, dtype)

    def one(lam_hi, lam_lo, p, k, mask):
        hi, lo = _decide_one(lam_hi, lam_lo, estimates, costs, mask)
        take_hi = jax.random.bernoulli(k, p, hi.shape)
        return jnp.where(take_hi, hi, lo), take_hi

    keys = jax.random.split(key, pool_masks.shape[0])
    choice, high = jax.vmap(one)(jnp.asarray(calibration.lam_high_cost, dtype),
                                 jnp.asarray(calibration.lam_low_cost, dtype),
                                 jnp.asarray(calibration.p_high, dtype), keys, pool_masks)
    return CalibratedRoute(choice, high)


# ------------------------------------------------------------------------ checked entry points


def _pool_batch(n_units: int, max_models: int, n_pools: int) -> int:
    # Each pool's events take about n_units * max_models entries per table; keep a chunk near
    # 2^22 events so the sort and the scans stay in cache-friendly sizes and memory stays bounded.
    per_pool = max(n_units * max_models, 1)
    return int(max(1, min(n_pools, (1 << 22) // per_pool)))


def _check_units(units) -> RoutingUnits:
    if not isinstance(units, RoutingUnits):
        raise TypeError(f"units must be a RoutingUnits (see make_units), got {type(units).__name__}")
    shape = np.shape(units.quality_sums)
    if len(shape) != 2:
        raise ValueError(f"units.quality_sums must have shape (n_units, max_models), got shape {shape}")
    if np.shape(units.cost_sums) != shape:
        raise ValueError(f"units.cost_sums must have shape {shape} like units.quality_sums, "
                         f"got shape {np.shape(units.cost_sums)}")
    if np.shape(units.weight) != shape[:1]:
        raise ValueError(f"units.weight must have shape ({shape[0]},), got shape {np.shape(units.weight)}")
    total = float(np.sum(units.weight))
    if not total > 0:
        raise ValueError(f"units.weight must sum to more than 0 (at least one prompt), got {total}")
    return units


def _check_table(estimates, units: RoutingUnits, costs, pool_masks):
    n_units, max_models = np.shape(units.quality_sums)
    dtype = _float_dtype()
    est = validation.float_array(estimates, "estimates", shape=(n_units, max_models), dtype=dtype)
    costs = check_costs(costs, n_units, max_models, dtype=dtype)
    masks = np.ones((1, max_models), bool) if pool_masks is None else validation.bool_array(
        pool_masks, "pool_masks", shape=(None, max_models))
    if masks.shape[0] == 0:
        raise ValueError("pool_masks must hold at least one pool, got shape (0, max_models)")
    empty = np.flatnonzero(~masks.any(axis=1))
    if empty.size:
        raise ValueError(f"pool_masks rows {empty.tolist()} select no model: those pools are empty")
    return jnp.asarray(est, dtype), jnp.asarray(costs, dtype), jnp.asarray(masks)


def exact_curve(
    estimates: ArrayLike,
    units: RoutingUnits,
    costs: ArrayLike,
    *,
    pool_masks: ArrayLike | None = None,
) -> ExactCurve:
    """Every operating point of the router over `lam in [0, inf)`, for every pool, in one call.

    Args:
      estimates: [n_units, max_models] estimated error of each model on each unit (`psi.T` for
        hard clusters, `phi @ psi.T` for per-prompt units), as for `sweeps.sweep`.
      units: from `make_units`.
      costs: [max_models] per-query costs the router decides with, or [n_units, max_models]
        per-request costs; >= 0.
      pool_masks: optional [n_pools, max_models] bool (default: one pool of every model).

    Returns:
      `ExactCurve` with `[n_pools, n_points]` arrays, `n_points = n_units * max_steps + 1` where
      `max_steps <= max_models - 1` bounds every unit's number of switches (the longest envelope,
      rounded up to a power of two), points sorted by `lam_start`; point `j` is the router's
      outcome for every `lam` in `[lam_start[j], lam_start[j + 1])`. Only `valid` points are operating points. float64 when
      x64 is enabled, float32 otherwise.

    Raises:
      ValueError / TypeError naming the argument.
    """
    units = _check_units(units)
    est, costs, masks = _check_table(estimates, units, costs, pool_masks)
    n_units, max_models = est.shape
    batch = _pool_batch(n_units, max_models, masks.shape[0])
    max_steps = _steps_bound(est, costs, masks, batch)
    return exact_curve_kernel(est, units, costs, masks, pool_batch=batch, max_steps=max_steps)


def _steps_bound(est, costs, masks, pool_batch: int) -> int:
    """`max_steps` for `exact_curve_kernel`: the longest envelope of these inputs, rounded up to a
    power of two (so that similar problems share a compiled kernel). Most of the `max_models - 1`
    event slots of a unit would otherwise be empty."""
    steps = int(envelope_steps_kernel(est, costs, masks, pool_batch=pool_batch))
    return min(max(est.shape[1] - 1, 0), 1 << max(steps - 1, 0).bit_length())


def _check_exact(exact) -> ExactCurve:
    if not isinstance(exact, ExactCurve):
        raise TypeError(f"exact must be an ExactCurve (see exact_curve), got {type(exact).__name__}")
    shape = np.shape(exact.lam_start)
    if len(shape) != 2:
        raise ValueError(f"exact.lam_start must have shape (n_pools, n_points), got shape {shape}")
    for name in ("mean_cost", "mean_quality", "mean_error_estimate", "valid"):
        if np.shape(getattr(exact, name)) != shape:
            raise ValueError(f"exact.{name} must have shape {shape} like exact.lam_start, "
                             f"got shape {np.shape(getattr(exact, name))}")
    if np.shape(exact.feasible) != shape[:1]:
        raise ValueError(f"exact.feasible must have shape ({shape[0]},), got shape {np.shape(exact.feasible)}")
    return exact


def curve_at(exact: ExactCurve, lams: ArrayLike) -> SweepResult:
    """Evaluates exact curves at the trade-offs `lams`: the same result as `sweeps.sweep`.

    Args:
      exact: from `exact_curve`.
      lams: [n_budgets] trade-offs >= 0.

    Returns:
      `SweepResult` with `[n_pools, n_budgets]` arrays. It equals `sweeps.sweep` on the same
      inputs up to float summation order, except at a `lam` within a few ulps of a breakpoint,
      where the float comparison inside `sweep` may fall on either side.

    Raises:
      ValueError / TypeError naming the argument.
    """
    exact = _check_exact(exact)
    lams = validation.nonnegative(validation.float_array(lams, "lams", ndim=1, dtype=_float_dtype()), "lams")
    if lams.size == 0:
        raise ValueError("lams must hold at least one value")
    return curve_at_kernel(exact, jnp.asarray(lams))


def curve_points(exact: ExactCurve) -> CurvePoints:
    """The valid operating points of exact curves, as `(cost, quality, valid)` for the metrics.

    Args:
      exact: from `exact_curve`.

    Returns:
      `CurvePoints` with `[n_pools, n_points]` arrays; invalid entries hold 0 so they cannot leak
      NaN or padding values into a metric.
    """
    exact = _check_exact(exact)
    valid = jnp.asarray(exact.valid)
    zero = lambda v: jnp.where(valid, v, 0)
    return CurvePoints(zero(exact.mean_cost), zero(exact.mean_quality), valid)


def _check_target(value, name: str, n_pools: int, *, unit: bool) -> np.ndarray:
    arr = validation.float_array(value, name, dtype=_float_dtype())
    if arr.ndim == 0:
        arr = np.full(n_pools, arr, arr.dtype)
    elif arr.shape != (n_pools,):
        raise ValueError(f"{name} must be a scalar or have shape ({n_pools},) (one per pool), got shape {arr.shape}")
    validation.nonnegative(arr, name)
    if unit:
        validation.unit_interval(arr, name)
    return arr


def calibrate(exact: ExactCurve, *, cost: ArrayLike | None = None, quality: ArrayLike | None = None) -> Calibration:
    """Finds the trade-off, or the mix of two neighbouring decisions, that meets a target exactly.

    With a cost target `B`: the lower-cost point is the first point (smallest `lam`) whose mean
    cost is `<= B`, the higher-cost point the valid point just before it, and `p_high` solves
    `p * cost_high + (1 - p) * cost_low = B`. If the `lam = 0` point already costs `<= B`, both
    points are that one and `p_high = 1` (the budget is not binding). If every point costs more
    than `B`, `feasible` is False and both points are the cheapest one (`p_high = 1`).

    With a quality target `Q`: the higher-cost point is the last point (largest `lam`) whose mean
    quality is `>= Q`, the lower-cost point the valid point after it, and `p_high` meets `Q`
    exactly. If even the last point reaches `Q`, both points are that one. If no point reaches `Q`,
    `feasible` is False and both points are the most accurate one.

    Decisions are made by `lam` only, so any `lam` in a point's interval reproduces it on the
    calibration set; the returned `lam`s are interval midpoints (twice the start for the last,
    unbounded interval), away from ties.

    Args:
      exact: from `exact_curve` on the calibration units.
      cost: target mean cost per prompt, >= 0: a scalar or `[n_pools]`.
      quality: target mean quality in [0, 1]: a scalar or `[n_pools]`. Give exactly one target.

    Returns:
      `Calibration` with `[n_pools]` arrays.

    Raises:
      ValueError / TypeError naming the argument.
    """
    exact = _check_exact(exact)
    if (cost is None) == (quality is None):
        raise ValueError("give exactly one of cost= or quality=, got "
                         + ("neither" if cost is None else "both"))
    n_pools = np.shape(exact.lam_start)[0]
    if quality is not None:
        target = _check_target(quality, "quality", n_pools, unit=True)
    else:
        target = _check_target(cost, "cost", n_pools, unit=False)
    return calibrate_kernel(exact, jnp.asarray(target), by_quality=quality is not None)


def _check_calibration(calibration, n_pools: int) -> Calibration:
    if not isinstance(calibration, Calibration):
        raise TypeError(f"calibration must be a Calibration (see calibrate), got {type(calibration).__name__}")
    for name in ("lam_high_cost", "lam_low_cost", "p_high"):
        shape = np.shape(getattr(calibration, name))
        if shape != (n_pools,):
            raise ValueError(f"calibration.{name} must have shape ({n_pools},) (one per pool of pool_masks), "
                             f"got shape {shape}")
    return calibration


def _check_key(key, name: str = "key") -> jax.Array:
    if not isinstance(key, jax.Array):
        raise TypeError(f"{name} must be a JAX PRNG key (jax.random.key(seed)), got {type(key).__name__}")
    if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        if key.shape != ():
            raise ValueError(f"{name} must be a single key of shape (), got shape {key.shape}")
    elif key.shape != (2,) or key.dtype != jnp.uint32:
        raise ValueError(f"{name} must be a PRNG key, got an array of shape {key.shape} and dtype {key.dtype}")
    return key


def apply_calibration(
    calibration: Calibration,
    estimates: ArrayLike,
    units: RoutingUnits,
    costs: ArrayLike,
    key: jax.Array | None = None,
    *,
    pool_masks: ArrayLike | None = None,
) -> CalibratedResult:
    """Realised mean cost and quality of a calibration on other (held-out) units.

    Args:
      calibration: from `calibrate`, with one row per pool of `pool_masks`.
      estimates: [n_units, max_models] estimates for the held-out units.
      units: held-out `RoutingUnits` (from `make_units`).
      costs: [max_models] the decision costs used for calibration, or [n_units, max_models]
        per-request costs (those of the prompts routed now).
      key: optional PRNG key; when given, also draws the randomisation once, each unit
        independently taking the higher-cost decision with probability `p_high` (give per-prompt
        units, `make_units(None, ...)`, for a per-prompt draw).
      pool_masks: optional [n_pools, max_models] bool, as for the calibration (default: one pool
        of every model).

    Returns:
      `CalibratedResult` with `[n_pools]` arrays: the exact expectation over the randomisation,
      `p * outcome(lam_high) + (1 - p) * outcome(lam_low)`, and, with a key, one sampled outcome.

    Raises:
      ValueError / TypeError naming the argument.
    """
    units = _check_units(units)
    est, costs, masks = _check_table(estimates, units, costs, pool_masks)
    calibration = _check_calibration(calibration, masks.shape[0])
    sample = key is not None
    key = _check_key(key) if sample else jax.random.key(0)
    return apply_calibration_kernel(calibration, est, units, costs, masks, key, sample=sample)


def route_calibrated(
    calibration: Calibration,
    estimates: ArrayLike,
    costs: ArrayLike,
    key: jax.Array,
    *,
    pool_masks: ArrayLike | None = None,
) -> CalibratedRoute:
    """Routes prompts under a calibration: each prompt independently takes the higher-cost
    decision (`lam_high_cost`) with probability `p_high`, else the lower-cost one.

    Args:
      calibration: from `calibrate`, one row per pool.
      estimates: [n_prompts, max_models] estimated error of each model on each prompt.
      costs: [max_models] the decision costs used for calibration, or [n_units, max_models]
        per-request costs (those of the prompts routed now).
      key: PRNG key (`jax.random.key(seed)`).
      pool_masks: optional [n_pools, max_models] bool (default: one pool of every model).

    Returns:
      `CalibratedRoute(choice, high)` with `[n_pools, n_prompts]` arrays.

    Raises:
      ValueError / TypeError naming the argument.
    """
    dtype = _float_dtype()
    est = validation.float_array(estimates, "estimates", ndim=2, dtype=dtype)
    max_models = est.shape[1]
    costs = check_costs(costs, est.shape[0], max_models, dtype=dtype)
    masks = np.ones((1, max_models), bool) if pool_masks is None else validation.bool_array(
        pool_masks, "pool_masks", shape=(None, max_models))
    empty = np.flatnonzero(~masks.any(axis=1))
    if empty.size:
        raise ValueError(f"pool_masks rows {empty.tolist()} select no model: those pools are empty")
    calibration = _check_calibration(calibration, masks.shape[0])
    key = _check_key(key)
    return route_calibrated_kernel(calibration, jnp.asarray(est, dtype), jnp.asarray(costs, dtype),
                                   jnp.asarray(masks), key)
