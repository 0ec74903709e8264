"""Reference routers expressed as error estimates, so every router runs through the same sweep.

A router here is a table of estimated errors `[n_units, n_models]`; routing at `lambda` takes the
row-wise `argmin estimate + lambda * cost`. A prompt-agnostic router has one row for all prompts;
the oracle has one row per prompt holding the true errors.
"""

from __future__ import annotations

import numpy as np
from jax.typing import ArrayLike

from uniroute_jax._src import validation


def zero_router_estimates(overall_error: ArrayLike) -> np.ndarray:
    """ZeroRouter: the same estimate for every prompt, each model's overall validation error.

    Sweeping `lambda` over `argmin_m error[m] + lambda * cost[m]` visits exactly the vertices of the
    lower convex hull of the (cost, error) points, i.e. the upper hull of (cost, accuracy); mixing
    neighbouring vertices (linear interpolation of the curve) is the paper's randomised ZeroRouter.

    Args:
      overall_error: [n_models] validation error of each model.

    Returns:
      [1, n_models] estimates: one routing unit that holds every prompt.
    """
    err = validation.float_array(overall_error, "overall_error", ndim=1)
    return validation.unit_interval(err, "overall_error")[None, :]


def oracle_estimates(quality: ArrayLike) -> np.ndarray:
    """Per-prompt oracle: the true error of every model on every prompt.

    With ties broken toward the cheaper model, `lambda = 0` sends each prompt to its cheapest
    correct model (or the cheapest model when none is correct).

    Args:
      quality: [n_prompts, n_models] test quality in [0, 1].

    Returns:
      [n_prompts, n_models] estimates, one routing unit per prompt.
    """
    q = validation.float_array(quality, "quality", ndim=2)
    return 1.0 - validation.unit_interval(q, "quality")
