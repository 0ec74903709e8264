"""Sweeps over pools and budgets: one operating point per (pool, `lam`), by either algorithm.

`direct` decides every (unit, budget) with its own argmin (`routing.sweep_kernel`); `breakpoints`
builds each pool's exact curve once (`curves.exact_curve`) and reads it at every `lam`. This
module is the one place that knows both, so neither of them imports the other.
"""

from __future__ import annotations

import jax.numpy as jnp
from jax.typing import ArrayLike

from uniroute_jax._src import validation
from uniroute_jax._src.curves import curve_at_kernel, exact_curve
from uniroute_jax._src.routing import RoutingUnits, SweepResult, check_sweep, sweep_kernel, sweep_pool_batch


def sweep(
    estimates: ArrayLike,
    units: RoutingUnits,
    costs: ArrayLike,
    lams: ArrayLike,
    *,
    pool_masks: ArrayLike | None = None,
    method: str = "direct",
) -> SweepResult:
    """Mean cost and quality of routing the units for every (pool, budget) in one jitted call.

    Args:
      estimates: [n_units, max_models] estimated error of each model on each unit: `psi.T` for
        hard clusters, `phi @ psi.T` for soft features.
      units: from `make_units`.
      costs: [max_models] per-query costs the router decides with, or [n_units, max_models] per request.
      lams: [n_budgets] trade-offs >= 0.
      pool_masks: optional [n_pools, max_models] bool (default: one pool of every model).
      method: "direct" decides every (unit, budget) with its own argmin, `O(n_pools * n_budgets *
        n_units * max_models)`; "breakpoints" builds the exact curve once per pool and reads it at
        `lams`, `O(n_pools * n_units * max_models * log)` plus a binary search per budget, far
        faster for many budgets. The two agree except for a `lam` within a few ulps of a
        breakpoint, where rounding may put it on either side.

    Returns:
      `SweepResult` with `[n_pools, n_budgets]` curves.
    """
    validation.choice(method, "method", ("direct", "breakpoints"))
    est, costs, lams, masks = check_sweep(estimates, units, costs, lams, pool_masks)
    n_units, max_models = est.shape
    if method == "breakpoints":
        exact = exact_curve(est, units, costs, pool_masks=masks)
        return curve_at_kernel(exact, jnp.asarray(lams))
    batch = sweep_pool_batch(lams.size, n_units, max_models, masks.shape[0])
    return sweep_kernel(jnp.asarray(est), units, jnp.asarray(costs), jnp.asarray(masks), jnp.asarray(lams),
                        pool_batch=batch)
