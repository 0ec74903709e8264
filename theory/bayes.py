"""Proposition 1: the Bayes-optimal dynamic router and an independent exact solution of the
constrained problem it claims to solve.

Setting. A population of *units* `u` with weights `w_u` (a unit is a prompt, or a (pool, prompt)
pair when several pools are drawn), each with a set of allowed models (its pool), per-query costs
`c_u(h)` and exact error probabilities `p_u(h) = P(error | x_u, h)`. A randomised router picks a
distribution `q_u` over the allowed models of each unit. The constrained problem is

    minimise   E(q) = sum_u w_u sum_h q_u(h) p_u(h)
    subject to C(q) = sum_u w_u sum_h q_u(h) c_u(h) <= B.

Its value `E*(B)` (the *exact frontier*) is computed here without any trade-off parameter: the
problem is a fractional multiple-choice knapsack. Each unit keeps only the lower-left convex hull
of its points `(c_u(h), p_u(h))` (found by gift wrapping), starts at its cheapest model, and the
hull segments of all units, sorted by slope `d error / d cost` (most negative first), are bought
greedily until the budget runs out, the last one fractionally. This greedy is exactly optimal for
the LP (Sinha and Zoltners, 1979), so `E*` is piecewise linear and convex with vertices at the
cumulative sums.

Proposition 1 says that one `lambda >= 0`, shared by all units (so by all pools), solves the
problem with the router `argmin_h p_u(h) + lambda * c_u(h)`. `check_proposition1` verifies both
halves: every lambda-sweep point lies on `E*` (nothing beats it at its own cost), and the
Lagrangian dual of `E*` equals the Bayes router's Lagrangian risk at every lambda (so the sweep
reaches every vertex of the frontier when lambda crosses the corresponding slope).

The frontier is computed in NumPy float64, independently of the JAX routing code it checks.
"""

from __future__ import annotations

import itertools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike


class OperatingPoints(NamedTuple):
    """Expected cost and error of a router at each trade-off."""

    cost: jax.Array  # [n_lams] expected cost per query
    error: jax.Array  # [n_lams] expected error probability


class Frontier(NamedTuple):
    """Vertices of a piecewise linear, convex, non-increasing cost-error frontier (float64)."""

    cost: np.ndarray  # [n_vertices] strictly increasing expected cost
    error: np.ndarray  # [n_vertices] non-increasing expected error


class Prop1Check(NamedTuple):
    """Residuals of Proposition 1 at each trade-off (all about 0 when it holds)."""

    sweep_cost: np.ndarray  # [n_lams] expected cost of the Bayes router
    sweep_error: np.ndarray  # [n_lams] expected error of the Bayes router
    frontier_gap: np.ndarray  # [n_lams] sweep_error - E*(sweep_cost): >= 0 always, 0 under Prop. 1
    dual_gap: np.ndarray  # [n_lams] Lagrangian risk of the Bayes router - min_B (E*(B) + lam B)


# ------------------------------------------------------------------------------ JAX routing


def relative_costs(costs: jax.Array, model_mask: jax.Array) -> jax.Array:
    """`c(h) - min_{h' allowed} c(h')` along the last axis (0 when nothing is allowed).

    Subtracting a per-unit constant changes no decision, but keeps float32 precise at large
    `lam`: with absolute costs every loss is about `lam * c_min` (1e3 or more), whose rounding
    (about 1e-4) would swamp error differences; relative to the cheapest model, only models whose
    cost is within about `1 / lam` of it have losses near the minimum, and those are small.
    """
    c_min = jnp.min(jnp.where(model_mask, costs, jnp.inf), axis=-1, keepdims=True)
    return costs - jnp.where(jnp.isfinite(c_min), c_min, 0.0)


def lagrangian_choice(scores: jax.Array, costs: jax.Array, model_mask: jax.Array, lam: ArrayLike) -> jax.Array:
    """`argmin_h scores[u, h] + lam * costs[u, h]` over the allowed models of each unit.

    Ties go to the cheaper, then the lower-index model (the library's rule in `route`). The
    columns are put in (cost, index) order first so that a single `argmin` decides: comparing the
    scores with a separately computed minimum can disagree in the last bit when XLA fuses the two
    differently, and was seen to send rows to model 0 under `jit(vmap(vmap(...)))`. Costs enter
    relative to the cheapest allowed model (`relative_costs`), which leaves the argmin unchanged.

    Args:
      scores: [n_units, max_models] estimated or exact error probabilities.
      costs: [max_models] or [n_units, max_models] costs.
      model_mask: [max_models] or [n_units, max_models] bool, True for allowed models.
      lam: [] trade-off >= 0.

    Returns:
      [n_units] int32 chosen model; -1 for a unit with no allowed model.
    """
    costs = jnp.broadcast_to(costs, scores.shape)
    mask = jnp.broadcast_to(model_mask, scores.shape)
    order = jnp.argsort(costs, axis=-1, stable=True)
    take = lambda a: jnp.take_along_axis(a, order, axis=-1)  # noqa: E731
    total = jnp.where(take(mask), take(scores) + lam * take(relative_costs(costs, mask)), jnp.inf)
    pos = jnp.argmin(total, axis=-1)
    choice = jnp.take_along_axis(order, pos[..., None], axis=-1)[..., 0].astype(jnp.int32)
    return jnp.where(jnp.any(mask, axis=-1), choice, -1)


def bayes_choice(p_error: jax.Array, costs: jax.Array, model_mask: jax.Array, lam: ArrayLike) -> jax.Array:
    """The Bayes-optimal dynamic router of Proposition 1, `argmin_h P(error | x, h) + lam c(h)`.

    Args:
      p_error: [n_units, max_models] exact error probabilities.
      costs: [max_models] or [n_units, max_models].
      model_mask: [max_models] or [n_units, max_models] bool.
      lam: [] trade-off >= 0.

    Returns:
      [n_units] int32 chosen model.
    """
    return lagrangian_choice(p_error, costs, model_mask, lam)


@jax.jit
def bayes_choices(p_error: jax.Array, costs: jax.Array, model_mask: jax.Array, lams: jax.Array) -> jax.Array:
    """`bayes_choice` at every trade-off, `[n_lams, n_units]` int32."""
    return jax.vmap(lambda lam: bayes_choice(p_error, costs, model_mask, lam))(lams)


def _take(table: jax.Array, choice: jax.Array) -> jax.Array:
    return jnp.take_along_axis(table, jnp.maximum(choice, 0)[:, None], axis=1)[:, 0]


def operating_point(p_error: jax.Array, costs: jax.Array, choice: jax.Array,
                    weights: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
    """Exact expected `(cost, error)` of the deterministic router `choice [n_units]`."""
    costs = jnp.broadcast_to(costs, p_error.shape)
    w = jnp.ones(p_error.shape[0], p_error.dtype) if weights is None else weights
    w = w / jnp.sum(w)
    return jnp.sum(w * _take(costs, choice)), jnp.sum(w * _take(p_error, choice))


@jax.jit
def bayes_sweep(p_error: jax.Array, costs: jax.Array, model_mask: jax.Array, lams: jax.Array,
                weights: jax.Array | None = None) -> OperatingPoints:
    """Expected cost and error of the Bayes router at each trade-off (one lambda for all units).

    Args:
      p_error: [n_units, max_models].
      costs: [max_models] or [n_units, max_models].
      model_mask: [max_models] or [n_units, max_models] bool.
      lams: [n_lams] trade-offs.
      weights: optional [n_units] unit weights (default uniform).

    Returns:
      `OperatingPoints` with `[n_lams]` fields.
    """

    def one(lam):
        return operating_point(p_error, costs, bayes_choice(p_error, costs, model_mask, lam), weights)

    return OperatingPoints(*jax.vmap(one)(lams))


# ------------------------------------------------------------------- exact LP (NumPy float64)


def exact_frontier(p_error: ArrayLike, costs: ArrayLike, model_mask: ArrayLike | None = None,
                   weights: ArrayLike | None = None) -> Frontier:
    """Exact optimum `E*(B)` of the constrained routing LP over randomised routers.

    Args:
      p_error: [n_units, n_models] error probabilities.
      costs: [n_models] or [n_units, n_models] costs.
      model_mask: optional [n_models] or [n_units, n_models] bool (default: all allowed); every
        unit with positive weight needs at least one allowed model.
      weights: optional [n_units] non-negative unit weights (default uniform).

    Returns:
      The `Frontier`: its first vertex is every unit on its cheapest model (the least feasible
      budget), its last is every unit on its most accurate model (more budget does not help).

    Raises:
      ValueError if a weighted unit has no allowed model.
    """
    p = np.asarray(p_error, np.float64)
    if p.ndim != 2:
        raise ValueError(f"p_error must have shape [n_units, n_models], got {p.shape}")
    c = np.broadcast_to(np.asarray(costs, np.float64), p.shape)
    mask = np.ones(p.shape, bool) if model_mask is None else np.broadcast_to(np.asarray(model_mask, bool), p.shape)
    w = np.ones(p.shape[0]) if weights is None else np.asarray(weights, np.float64)
    keep = w > 0
    p, c, mask, w = p[keep], c[keep], mask[keep], w[keep] / w[keep].sum()
    if not mask.any(axis=1).all():
        raise ValueError("every unit with positive weight needs at least one allowed model")
    rows = np.arange(p.shape[0])

    # Hull start: the cheapest allowed model, the most accurate among equally cheap ones.
    c_allowed = np.where(mask, c, np.inf)
    at_min = mask & (c_allowed == c_allowed.min(axis=1, keepdims=True))
    v = np.argmin(np.where(at_min, p, np.inf), axis=1)
    cur_c, cur_p = c[rows, v], p[rows, v]
    base_cost, base_error = float(w @ cur_c), float(w @ cur_p)

    # Gift wrapping: from the current vertex, the steepest descent to a costlier, more accurate
    # model is the next hull vertex (the farthest one when several are collinear).
    seg_dc, seg_dp, seg_w = [], [], []
    for _ in range(p.shape[1] - 1):
        cand = mask & (c > cur_c[:, None]) & (p < cur_p[:, None])
        dc = np.where(cand, c - cur_c[:, None], 1.0)
        slope = np.where(cand, (p - cur_p[:, None]) / dc, np.inf)
        tied = cand & (slope <= slope.min(axis=1, keepdims=True))
        nxt = np.argmax(np.where(tied, c, -np.inf), axis=1)
        has = cand.any(axis=1)
        seg_dc.append(np.where(has, c[rows, nxt] - cur_c, 0.0))
        seg_dp.append(np.where(has, p[rows, nxt] - cur_p, 0.0))
        seg_w.append(np.where(has, w, 0.0))
        cur_c = np.where(has, c[rows, nxt], cur_c)
        cur_p = np.where(has, p[rows, nxt], cur_p)
    if not seg_dc:
        return Frontier(np.array([base_cost]), np.array([base_error]))
    dc, dp, sw = (np.concatenate(a) for a in (seg_dc, seg_dp, seg_w))
    real = sw > 0
    dc, dp, sw = dc[real], dp[real], sw[real]
    # Within a unit, hull slopes increase along the hull, so one global sort keeps each unit's
    # segments in order: the greedy buys the best error-per-cost first, across all units.
    order = np.argsort(dp / dc, kind="stable")
    cost = base_cost + np.concatenate([[0.0], np.cumsum(sw[order] * dc[order])])
    error = base_error + np.concatenate([[0.0], np.cumsum(sw[order] * dp[order])])
    return Frontier(cost, error)


def frontier_error(frontier: Frontier, budget: ArrayLike) -> np.ndarray:
    """`E*(B)`: the least expected error at expected cost `<= B` (`inf` below the least budget)."""
    b = np.asarray(budget, np.float64)
    e = np.interp(b, frontier.cost, frontier.error)
    # A budget equal to the least one up to summation order is affordable.
    least = frontier.cost[0] - 1e-9 * max(abs(frontier.cost[0]), 1e-12)
    return np.where(b < least, np.inf, e)


def frontier_dual(frontier: Frontier, lam: ArrayLike) -> np.ndarray:
    """Lagrangian dual `min_B E*(B) + lam * B`; `E*` is convex, so the minimum is at a vertex."""
    lam = np.asarray(lam, np.float64)
    return np.min(frontier.error[None, :] + lam.reshape(-1, 1) * frontier.cost[None, :], axis=1).reshape(lam.shape)


def lower_hull(cost: ArrayLike, error: ArrayLike) -> Frontier:
    """Best mixtures of a finite set of operating points (a router family randomised over lambda).

    Args:
      cost: [n_points] expected costs.
      error: [n_points] expected errors.

    Returns:
      The lower-left convex hull as a `Frontier` (one unit whose "models" are the points).
    """
    return exact_frontier(np.asarray(error, np.float64)[None, :], np.asarray(cost, np.float64)[None, :])


def check_proposition1(p_error: ArrayLike, costs: ArrayLike, model_mask: ArrayLike, lams: ArrayLike,
                       weights: ArrayLike | None = None) -> Prop1Check:
    """Residuals of Proposition 1 for the Bayes router on a finite population.

    Args:
      p_error: [n_units, max_models] exact error probabilities (a unit may be a (pool, prompt)).
      costs: [max_models] or [n_units, max_models].
      model_mask: [max_models] or [n_units, max_models] bool.
      lams: [n_lams] trade-offs (one shared by every unit).
      weights: optional [n_units] weights.

    Returns:
      `Prop1Check`; both gaps are about 0 (float32 rounding of the router's argmin) when the
      Bayes router is optimal.
    """
    p = np.asarray(p_error, np.float32)
    c = np.asarray(costs, np.float32)
    m = np.asarray(model_mask, bool)
    lams = np.asarray(lams, np.float32)
    frontier = exact_frontier(p, c, m, weights)
    # Choices in JAX (the code under test); exact expectations of those choices in float64.
    choices = np.asarray(bayes_choices(jnp.asarray(p), jnp.asarray(c), jnp.asarray(m), jnp.asarray(lams)))
    rows = np.arange(p.shape[0])[None, :]
    w64 = np.ones(p.shape[0]) if weights is None else np.asarray(weights, np.float64)
    w64 = w64 / w64.sum()
    sweep_cost = np.broadcast_to(c.astype(np.float64), p.shape)[rows, choices] @ w64
    sweep_error = p.astype(np.float64)[rows, choices] @ w64
    return Prop1Check(sweep_cost, sweep_error, sweep_error - frontier_error(frontier, sweep_cost),
                      sweep_error + lams.astype(np.float64) * sweep_cost - frontier_dual(frontier, lams))


# ------------------------------------------------------------ brute force (tiny instances only)


def deterministic_routers(p_error: ArrayLike, costs: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Expected `(cost, error)` of every deterministic router, `n_models ** n_prompts` of them.

    Args:
      p_error: [n_prompts, n_models] (uniform prompt weights); at most 10^6 routers.
      costs: [n_models].

    Returns:
      `(cost [n_routers], error [n_routers])`.
    """
    p = np.asarray(p_error, np.float64)
    c = np.asarray(costs, np.float64)
    n, m = p.shape
    if m ** n > 10 ** 6:
        raise ValueError(f"{m}^{n} routers is too many to enumerate")
    choice = np.array(list(itertools.product(range(m), repeat=n)))  # [n_routers, n_prompts]
    return c[choice].mean(axis=1), p[np.arange(n), choice].mean(axis=1)


def best_mixture_error(cost: ArrayLike, error: ArrayLike, budget: ArrayLike) -> np.ndarray:
    """Least error of a randomisation over the given routers with expected cost `<= B`.

    The LP over mixtures has one constraint besides the simplex, so a basic optimal solution mixes
    at most two routers; this enumerates all pairs (O(n_routers^2) per budget: tiny inputs only).

    Args:
      cost: [n_routers]; error: [n_routers]; budget: [n_budgets].

    Returns:
      [n_budgets] least error (`inf` where no mixture is affordable).
    """
    c = np.asarray(cost, np.float64)
    e = np.asarray(error, np.float64)
    out = []
    for b in np.atleast_1d(np.asarray(budget, np.float64)):
        single = np.where(c <= b, e, np.inf).min()
        lo = c[:, None] <= b
        hi = c[None, :] > b
        theta = np.where(lo & hi, (b - c[:, None]) / np.where(lo & hi, c[None, :] - c[:, None], 1.0), 0.0)
        mix = np.where(lo & hi, (1 - theta) * e[:, None] + theta * e[None, :], np.inf)
        out.append(min(single, mix.min()))
    return np.array(out)
