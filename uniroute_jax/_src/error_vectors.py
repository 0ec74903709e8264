"""LLM representation: per-cluster validation error rates `Psi [n_models, n_clusters]`.

An LLM is represented by how often it errs on the validation prompts of each cluster. Adding an
LLM to a pool means evaluating it on the validation prompts once and calling this kernel: no
retraining. Clusters with few labels are shrunk toward the LLM's overall validation error.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from uniroute_jax._src import validation

DEFAULT_ALPHA = 1.0
"""Default pseudo-count of the shrinkage toward the overall error.

One pseudo-prompt: a Beta prior centred on the LLM's overall validation error with the weight of a
single observation. It fills empty clusters with the overall error, damps the 0% / 100% estimates
that a cluster with one or two labels would otherwise produce, and moves a cluster with `n` labels
by at most `1 / (n + 1)`, so well-populated clusters keep the paper's plain mean.
"""


class ErrorVectors(NamedTuple):
    """Output of `error_vectors`."""

    psi: jax.Array  # [n_models, n_clusters] estimated error rate per cluster
    counts: jax.Array  # [n_models, n_clusters] (soft) number of validation labels per cluster
    error_sums: jax.Array  # [n_models, n_clusters] (soft) sum of validation errors per cluster
    overall_error: jax.Array  # [n_models] mean validation error over all labelled prompts


@functools.partial(jax.jit, static_argnames=("n_clusters",))
def error_vectors_kernel(
    assignments: jax.Array, quality: jax.Array, label_mask: jax.Array, alpha: jax.Array, *, n_clusters: int
) -> ErrorVectors:
    """Unchecked kernel behind `error_vectors`.

    Args:
      assignments: [n_val] int cluster labels, or [n_val, n_clusters] soft weights.
      quality: [n_val, n_models] quality in [0, 1] (error = 1 - quality).
      label_mask: [n_val, n_models] bool, True where a label exists.
      alpha: [] pseudo-count of the shrinkage toward each model's overall error.
    """
    if assignments.ndim == 1:
        weights = jax.nn.one_hot(assignments, n_clusters, dtype=quality.dtype)
    else:
        weights = assignments.astype(quality.dtype)
    observed = label_mask.astype(quality.dtype)
    # Double where: missing entries may hold NaN, which must not leak into the sums.
    err = jnp.where(label_mask, 1.0 - jnp.where(label_mask, quality, 0.0), 0.0)
    counts = (weights.T @ observed).T  # [n_models, n_clusters]
    error_sums = (weights.T @ err).T
    n_labels = jnp.sum(observed, axis=0)
    overall = jnp.sum(err, axis=0) / jnp.maximum(n_labels, 1.0)
    prior = overall[:, None]
    denom = counts + alpha
    psi = jnp.where(denom > 0, (error_sums + alpha * prior) / jnp.where(denom > 0, denom, 1.0), prior)
    return ErrorVectors(psi, counts, error_sums, overall)


def error_vectors(
    assignments: ArrayLike,
    quality: ArrayLike,
    *,
    n_clusters: int,
    label_mask: ArrayLike | None = None,
    alpha: float = DEFAULT_ALPHA,
) -> ErrorVectors:
    """Per-cluster validation error of each model, shrunk toward its overall error.

    `psi[m, k] = (errors of m in cluster k + alpha * overall_error[m]) / (labels of m in k + alpha)`.
    With `alpha = 0` this is the paper's plain per-cluster mean, and the overall error is used only
    for a cluster with no label.

    Args:
      assignments: [n_val] int cluster labels in [0, n_clusters), or [n_val, n_clusters] soft
        weights (rows of a soft map, non-negative).
      quality: [n_val, n_models] validation quality in [0, 1] (1 = correct). Entries outside the
        mask may be NaN.
      n_clusters: number of clusters K.
      label_mask: optional [n_val, n_models] bool, True where the model was labelled on the prompt.
        Defaults to "not NaN".
      alpha: pseudo-count >= 0 (default `DEFAULT_ALPHA`).

    Returns:
      `ErrorVectors` with `psi [n_models, n_clusters]`.

    Raises:
      ValueError / TypeError naming the argument; ValueError if a model has no label at all.
    """
    n_clusters = validation.positive_int(n_clusters, "n_clusters")
    q = validation.float_array(quality, "quality", ndim=2, allow_nan=True)
    n_val, n_models = q.shape
    if label_mask is None:
        mask = ~np.isnan(q)
    else:
        mask = validation.bool_array(label_mask, "label_mask", shape=(n_val, n_models))
        if np.isnan(q[mask]).any():
            raise ValueError("quality is NaN where label_mask is True")
    validation.unit_interval(q, "quality", where=mask)
    a = np.asarray(assignments)
    if a.ndim == 1:
        a = validation.int_array(a, "assignments", shape=(n_val,), high=n_clusters)
    else:
        a = validation.nonnegative(validation.float_array(a, "assignments", shape=(n_val, n_clusters)), "assignments")
    alpha = validation.nonnegative_float(alpha, "alpha")
    unlabelled = np.flatnonzero(~mask.any(axis=0))
    if unlabelled.size:
        raise ValueError(f"quality has no label at all for model column(s) {unlabelled.tolist()}")
    return error_vectors_kernel(jnp.asarray(a), jnp.asarray(np.where(mask, q, 0.0)), jnp.asarray(mask),
                                jnp.asarray(alpha, jnp.float32), n_clusters=n_clusters)
