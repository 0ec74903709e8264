"""The tie rule every routing decision follows: lowest score, then the cheaper model, then the lower index.

Routing kernels, sweeps, exact curves and calibration all decide through `choose` (or through
`argmin_ordered` on columns already put in `cheapest_first` order), so a prompt goes to the same
model whichever path computed its decision.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def cheapest_first(costs: jax.Array) -> jax.Array:
    """Model order by (cost, index): `argmin`'s first-index rule then breaks ties toward cheaper."""
    return jnp.argsort(costs, stable=True)


def argmin_ordered(scores: jax.Array, model_mask: jax.Array) -> jax.Array:
    """Row-wise argmin of `scores [n, max_models]` whose columns are already cheapest-first.

    One reduction decides: comparing a recomputed minimum with the scores could disagree in the
    last bit when the compiler fuses the two differently. Returns -1 for an empty mask.
    """
    choice = jnp.argmin(jnp.where(model_mask[None, :], scores, jnp.inf), axis=-1).astype(jnp.int32)
    return jnp.where(jnp.any(model_mask), choice, -1)


def cost_rows(costs: jax.Array) -> jax.Array:
    """Decision costs as rows: `[1, max_models]` for per-model costs, `[n, max_models]` kept as is.

    Decision costs are either one per model or one per (request, model); adding `lam * cost_rows`
    to `[n, max_models]` scores handles both.
    """
    return costs[None, :] if costs.ndim == 1 else costs


def choose(scores: jax.Array, costs: jax.Array, model_mask: jax.Array) -> jax.Array:
    """Row-wise argmin of `scores [n, max_models]`; ties go to the cheaper, then lower-index model.

    Args:
      scores: [n, max_models] score of each model for each row (lower is better).
      costs: [max_models] per-query costs, or [n, max_models] per-request costs, for the tie rule.
      model_mask: [max_models] bool, True for models that may be chosen.

    Returns:
      [n] int32 model index, -1 when the mask selects no model.
    """
    if costs.ndim == 1:
        order = cheapest_first(costs)
        choice = argmin_ordered(scores[:, order], model_mask[order])
        return jnp.where(choice >= 0, order[jnp.maximum(choice, 0)], -1)
    # Per-request costs: each row has its own cheapest-first order.
    order = jnp.argsort(costs, axis=-1, stable=True)
    ordered = jnp.where(model_mask[order], jnp.take_along_axis(scores, order, axis=1), jnp.inf)
    choice = jnp.argmin(ordered, axis=-1)
    model = jnp.take_along_axis(order, choice[:, None], axis=1)[:, 0].astype(jnp.int32)
    return jnp.where(jnp.any(model_mask), model, -1)
