"""Lagrangian routing: `argmin_h Phi(x) . Psi(h) + lambda * cost(h)` over the models of a pool.

Pools are masks over one padded model table (`max_models` rows), so pools of any size share one
compiled kernel. Sweeps work on *routing units*: a unit is either one prompt (soft features) or one
hard cluster, weighted by its number of prompts. With hard clusters every prompt of a cluster gets
the same decision, so deciding once per cluster and weighting by per-cluster sums gives the same
curve at `n_clusters / n_prompts` of the work and never builds a
`[n_pools, n_budgets, n_prompts, max_models]` array.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from uniroute_jax._src import validation
from uniroute_jax._src.decisions import argmin_ordered, cheapest_first, choose, cost_rows


class RouteResult(NamedTuple):
    """Output of `route`."""

    choice: jax.Array  # [n_prompts] int32 index into the model table; -1 when the pool is empty
    feasible: jax.Array  # [] bool, False when the pool has no model


class SweepResult(NamedTuple):
    """Output of `sweep`: one cost-quality operating point per (pool, budget)."""

    mean_cost: jax.Array  # [n_pools, n_budgets] mean realised cost per prompt
    mean_quality: jax.Array  # [n_pools, n_budgets] mean realised quality (NaN without labels)
    mean_error_estimate: jax.Array  # [n_pools, n_budgets] mean of the routed Phi . Psi
    feasible: jax.Array  # [n_pools] bool, False for an empty pool (its rows are NaN)


class RoutingUnits(NamedTuple):
    """Test prompts grouped into units that share one routing decision."""

    weight: jax.Array  # [n_units] number of prompts in the unit
    quality_sums: jax.Array  # [n_units, max_models] summed test quality (zeros without labels)
    cost_sums: jax.Array  # [n_units, max_models] summed realised cost


@jax.jit
def route_kernel(phi: jax.Array, psi: jax.Array, costs: jax.Array, model_mask: jax.Array, lam: jax.Array) -> RouteResult:
    """Unchecked routing of one batch for one pool and one `lam`.

    Args:
      phi: [n_prompts, n_clusters] prompt features (one-hot or soft).
      psi: [max_models, n_clusters] estimated error rates.
      costs: [max_models] cost per query, or [n_prompts, max_models] cost per request.
      model_mask: [max_models] bool, True for models in the pool.
      lam: [] trade-off, >= 0.
    """
    scores = phi @ psi.T + lam * cost_rows(costs)
    return RouteResult(choose(scores, costs, model_mask), jnp.any(model_mask))


def _sweep_one(estimates, units: RoutingUnits, costs, model_mask, lam):
    """One (pool, budget). With per-model costs the model axis of every argument is already
    cheapest-first; per-request costs `[n_units, max_models]` order each row in `choose`."""
    if costs.ndim == 1:
        choice = argmin_ordered(estimates + lam * costs[None, :], model_mask)
    else:
        choice = choose(estimates + lam * costs, costs, model_mask)
    safe = jnp.maximum(choice, 0)[:, None]
    total = jnp.sum(units.weight)
    pick = lambda table: jnp.sum(jnp.take_along_axis(table, safe, axis=1)[:, 0]) / total
    feasible = jnp.any(model_mask)
    nan_if_empty = lambda v: jnp.where(feasible, v, jnp.nan)
    return (nan_if_empty(pick(units.cost_sums)), nan_if_empty(pick(units.quality_sums)),
            nan_if_empty(pick(estimates * units.weight[:, None])))


@functools.partial(jax.jit, static_argnames=("pool_batch",))
def sweep_kernel(estimates: jax.Array, units: RoutingUnits, costs: jax.Array, pool_masks: jax.Array,
                 lams: jax.Array, *, pool_batch: int = 1) -> SweepResult:
    """Unchecked sweep over pools and budgets.

    Args:
      estimates: [n_units, max_models] estimated error of each model on each unit (`Phi . Psi`).
      units: `RoutingUnits` with `n_units` rows over `max_models` models.
      costs: [max_models] the per-query costs the router decides with, or [n_units, max_models]
        per-request costs.
      pool_masks: [n_pools, max_models] bool.
      lams: [n_budgets] trade-offs.
      pool_batch: pools vmapped together inside a sequential map; bounds peak memory at about
        `pool_batch * n_budgets * n_units * max_models` scores.
    """
    if costs.ndim == 1:
        # Put the model axis in (cost, index) order once, so each decision is a single argmin.
        order = cheapest_first(costs)
        estimates, costs, pool_masks = estimates[:, order], costs[order], pool_masks[:, order]
        units = RoutingUnits(units.weight, units.quality_sums[:, order], units.cost_sums[:, order])
    per_budget = jax.vmap(_sweep_one, in_axes=(None, None, None, None, 0))
    cost, quality, err = jax.lax.map(lambda mask: per_budget(estimates, units, costs, mask, lams), pool_masks,
                                     batch_size=pool_batch)
    return SweepResult(cost, quality, err, jnp.any(pool_masks, axis=1))


def sweep_pool_batch(n_budgets: int, n_units: int, max_models: int, n_pools: int) -> int:
    # Keep each vmapped chunk near 2^24 scores (64 MiB in float32).
    per_pool = max(n_budgets * n_units * max_models, 1)
    return int(max(1, min(n_pools, (1 << 24) // per_pool)))


# ---------------------------------------------------------------- checked entry points


def check_costs(costs, n_rows: int, max_models: int, *, dtype=np.float32) -> np.ndarray:
    """Decision costs, `[max_models]` per model or `[n_rows, max_models]` per request, checked >= 0."""
    arr = validation.float_array(costs, "costs", dtype=dtype)
    if arr.shape not in ((max_models,), (n_rows, max_models)):
        raise ValueError(f"costs must have shape ({max_models},) (one per model) or ({n_rows}, {max_models}) "
                         f"(one per request and model), got shape {arr.shape}")
    return validation.nonnegative(arr, "costs")


def route(
    phi: ArrayLike,
    psi: ArrayLike,
    costs: ArrayLike,
    lam: float,
    *,
    model_mask: ArrayLike | None = None,
) -> RouteResult:
    """Routes each prompt to `argmin_m phi . psi[m] + lam * cost[m]` over the pool's models.

    Ties go to the cheaper model, then to the lower index.

    Args:
      phi: [n_prompts, n_clusters] prompt features (one-hot rows for k-means clusters).
      psi: [max_models, n_clusters] per-cluster error rates of the model table.
      costs: [max_models] cost per query, or [n_prompts, max_models] cost per request; >= 0.
      lam: trade-off >= 0; 0 picks the lowest estimated error, large values the cheapest model.
      model_mask: optional [max_models] bool, True for models in the pool (default: all).

    Returns:
      `RouteResult(choice [n_prompts], feasible)`; `choice` is -1 and `feasible` False when the
      mask selects no model.

    Raises:
      ValueError / TypeError naming the argument.
    """
    psi = validation.unit_interval(validation.float_array(psi, "psi", ndim=2), "psi")
    phi = validation.float_array(phi, "phi", ndim=2)
    if phi.shape[1] != psi.shape[1]:
        raise ValueError(f"phi has shape {phi.shape} but psi has {psi.shape[1]} clusters")
    costs = check_costs(costs, phi.shape[0], psi.shape[0])
    mask = np.ones(psi.shape[0], bool) if model_mask is None else validation.bool_array(
        model_mask, "model_mask", shape=(psi.shape[0],))
    if not mask.any():
        raise ValueError("model_mask selects no model: the pool is empty")
    lam = validation.nonnegative_float(lam, "lam")
    return route_kernel(jnp.asarray(phi), jnp.asarray(psi), jnp.asarray(costs), jnp.asarray(mask),
                        jnp.asarray(lam, jnp.float32))


def make_units(
    labels: ArrayLike | None,
    *,
    n_units: int | None = None,
    quality: ArrayLike | None = None,
    prompt_costs: ArrayLike | None = None,
    costs: ArrayLike | None = None,
) -> RoutingUnits:
    """Sums test labels and realised costs over the prompts that share a routing decision.

    Args:
      labels: [n_prompts] int unit of each prompt (hard clusters: its cluster), or None for one
        unit per prompt (soft features, per-prompt estimates).
      n_units: number of units when `labels` is given (the number of clusters).
      quality: optional [n_prompts, max_models] test quality in [0, 1], no missing entries.
      prompt_costs: optional [n_prompts, max_models] realised cost of each model on each prompt.
      costs: [max_models] per-query costs, used when `prompt_costs` is not given.

    Returns:
      `RoutingUnits`.
    """
    q = pc = None
    if quality is not None:
        q = validation.unit_interval(validation.float_array(quality, "quality", ndim=2), "quality")
    if prompt_costs is not None:
        pc = validation.float_array(prompt_costs, "prompt_costs", ndim=2)
        validation.nonnegative(pc, "prompt_costs")
        if q is not None and pc.shape != q.shape:
            raise ValueError(f"prompt_costs has shape {pc.shape} but quality has shape {q.shape}")
    elif costs is not None:
        c = validation.nonnegative(validation.float_array(costs, "costs", ndim=1), "costs")
        n_prompts = q.shape[0] if q is not None else (np.asarray(labels).shape[0] if labels is not None else None)
        if n_prompts is None:
            raise ValueError("labels=None needs quality or prompt_costs to know the number of prompts")
        if q is not None and c.shape[0] != q.shape[1]:
            raise ValueError(f"costs has shape {c.shape} but quality has {q.shape[1]} model columns")
        pc = np.broadcast_to(c, (n_prompts, c.shape[0]))
    else:
        raise ValueError("give prompt_costs or costs: the realised cost of each routed prompt")
    if q is None:
        q = np.zeros(pc.shape, np.float32)
    n_prompts = pc.shape[0]
    if n_prompts == 0:
        raise ValueError("the units must hold at least one prompt")
    if labels is None:
        return RoutingUnits(jnp.ones(n_prompts, jnp.float32), jnp.asarray(q), jnp.asarray(pc, jnp.float32))
    n_units = validation.positive_int(n_units, "n_units")
    lab = validation.int_array(labels, "labels", shape=(n_prompts,), high=n_units)
    seg = functools.partial(jax.ops.segment_sum, segment_ids=jnp.asarray(lab), num_segments=n_units)
    weight, q_sums, c_sums = seg(jnp.ones(n_prompts, jnp.float32)), seg(jnp.asarray(q)), seg(jnp.asarray(pc, jnp.float32))
    return RoutingUnits(weight, q_sums, c_sums)


def check_sweep(estimates, units: RoutingUnits, costs, lams, pool_masks):
    """`sweep`'s input checks, shared with `sharding.sharded_sweep`: host (NumPy) copies of
    `(estimates, costs, lams, pool_masks)`, the masks defaulting to one pool of every model."""
    n_units, max_models = units.quality_sums.shape
    est = validation.float_array(estimates, "estimates", shape=(n_units, max_models))
    costs = check_costs(costs, n_units, max_models)
    lams = validation.nonnegative(validation.float_array(lams, "lams", ndim=1), "lams")
    if lams.size == 0:
        raise ValueError("lams must hold at least one value")
    masks = np.ones((1, max_models), bool) if pool_masks is None else validation.bool_array(
        pool_masks, "pool_masks", shape=(None, max_models))
    empty = np.flatnonzero(~masks.any(axis=1))
    if empty.size:
        raise ValueError(f"pool_masks rows {empty.tolist()} select no model: those pools are empty")
    return est, costs, lams, masks


def lambda_grid(costs: ArrayLike, n_budgets: int = 256) -> np.ndarray:
    """A grid of `n_budgets` trade-offs that spans every decision for errors in [0, 1].

    It holds 0 (most accurate), then geometric steps up to `2 / (smallest positive cost gap)`,
    beyond which every prompt goes to the cheapest model.

    Args:
      costs: [n_models] per-query costs of the models that may be routed to.
      n_budgets: grid size (>= 2).

    Returns:
      [n_budgets] float32 increasing trade-offs.
    """
    n_budgets = validation.positive_int(n_budgets, "n_budgets", minimum=2)
    c = validation.nonnegative(validation.float_array(costs, "costs", ndim=1), "costs")
    gaps = np.diff(np.unique(c))
    if gaps.size == 0:
        return np.zeros(n_budgets, np.float32)
    hi = 2.0 / gaps.min()
    lo = 1e-4 / (c.max() - c.min())
    return np.concatenate([[0.0], np.geomspace(lo, hi, n_budgets - 1)]).astype(np.float32)
