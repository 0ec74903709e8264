"""Routers compared with the Bayes frontier: K-NN and the prompt-agnostic hull (ZeroRouter).

UniRoute's cluster router is `theory.bounds.cluster_decisions`; the Bayes router is
`theory.bayes.bayes_choice`. Both baselines here follow the paper's evaluation section.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

# The unchecked kernel of `uniroute_jax.knn_estimates`, so that it traces inside a jitted study.
from uniroute_jax.kernels import knn_kernel
from theory.bayes import Frontier, exact_frontier


def knn_estimates(embeddings: jax.Array, val_embeddings: jax.Array, val_errors: jax.Array, k: int) -> jax.Array:
    """K-NN error estimates: mean 0/1 validation error of the `k` nearest validation prompts.

    The library's K-NN router (`uniroute_jax.knn_estimates`) with Euclidean distance, every label
    present: UniRoute's K-NN special case (`K = N_val`, `Psi` the raw validation error vectors,
    `Phi(x)` uniform on the `k` nearest validation prompts).

    Args:
      embeddings: [n_prompts, dim] prompts to route.
      val_embeddings: [n_val, dim] validation prompts.
      val_errors: [n_val, max_models] 0/1 validation errors.
      k: number of neighbours (static, <= n_val).

    Returns:
      [n_prompts, max_models] estimated error probabilities.
    """
    mask = jnp.ones(val_errors.shape, bool)
    return knn_kernel(embeddings, val_embeddings, val_errors, mask, jnp.asarray([k]), k_max=k, metric="euclidean")[0]


def prompt_agnostic_frontier(p_error: ArrayLike, costs: ArrayLike, model_mask: ArrayLike) -> Frontier:
    """ZeroRouter: best randomisation over single models, ignoring the prompt.

    Each pool model is one point (its cost, its population mean error); the frontier is their
    lower convex hull, i.e. the exact LP over prompt-agnostic randomised routers (what sweeping
    `uniroute_jax.zero_router_estimates` and mixing neighbouring points traces).

    Args:
      p_error: [n_prompts, max_models]; costs: [max_models]; model_mask: [max_models] bool.

    Returns:
      A `Frontier`.
    """
    mask = np.asarray(model_mask, bool)
    mean_err = np.asarray(p_error, np.float64).mean(axis=0)[mask]
    return exact_frontier(mean_err[None, :], np.asarray(costs, np.float64)[mask][None, :])
