"""K-NN router: the error of a model on a prompt is its mean error on the nearest validation prompts.

This is UniRoute's K-NN special case (`K = n_val`, `Psi` the raw validation error vectors, `Phi(x)`
uniform weight on the `k` nearest validation prompts). Like every router in this library it is
expressed as a table of error estimates `[n_prompts, n_models]`, so `sweeps.sweep` over per-prompt
units (`make_units(None, ...)`) traces its cost-quality curve.

Missing labels: the `k` nearest validation prompts are chosen once per test prompt, without looking
at labels; a model's estimate averages its errors over those of the `k` neighbours on which it was
labelled, and falls back to its overall validation error when it was labelled on none of them.

Choosing `k` per trial is cheap: neighbours are ranked once for the largest `k`, and cumulative
sums along the ranking give the estimate for every `k` of a grid (`knn_estimates_multi`).

    est = knn_estimates(test_x, val_x, val_quality, k=10)                 # [n_test, n_models]
    grid = knn_estimates_multi(val_x2, val_x, val_quality, ks=[5, 10, 25])  # [3, n_val2, n_models]
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from uniroute_jax._src import validation

METRICS = ("cosine", "euclidean")

# Peak working set of one chunk of test prompts, in array elements: the `[chunk, n_val]`
# similarities and the `[chunk, k_max, n_models]` gathered neighbour errors (twice: values and
# cumulative sums). 2^24 float32 elements is 64 MiB, small next to any machine's memory yet large
# enough that chunking costs nothing measurable.
_CHUNK_ELEMENTS = 1 << 24


def _prepare(x: jax.Array, metric: str) -> jax.Array:
    if metric == "cosine":
        return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-12)
    return x


def _knn_one(t: jax.Array, val: jax.Array, val_sq: jax.Array, errors: jax.Array, observed: jax.Array,
             overall: jax.Array, ks: jax.Array, *, k_max: int, metric: str) -> jax.Array:
    """Estimates `[n_ks, n_models]` for one test prompt `t [dim]`."""
    if metric == "cosine":
        score = val @ t
    else:
        # -|t - v|^2 / 2 without the `|t|^2` term, which is the same for every neighbour.
        score = val @ t - 0.5 * val_sq
    # top_k breaks ties toward the lower index, matching a stable sort of `-score`.
    _, idx = jax.lax.top_k(score, k_max)  # [k_max]
    err_sums = jnp.cumsum(errors[idx], axis=0)[ks - 1]  # [n_ks, n_models]
    label_counts = jnp.cumsum(observed[idx], axis=0)[ks - 1]
    return jnp.where(label_counts > 0, err_sums / jnp.maximum(label_counts, 1.0), overall[None, :])


@functools.partial(jax.jit, static_argnames=("k_max", "metric", "chunk"))
def knn_kernel(
    test_embeddings: jax.Array,
    val_embeddings: jax.Array,
    val_errors: jax.Array,
    label_mask: jax.Array,
    ks: jax.Array,
    *,
    k_max: int,
    metric: str = "cosine",
    chunk: int = 1024,
) -> jax.Array:
    """Unchecked K-NN estimates for several `k` at once.

    Args:
      test_embeddings: [n_test, dim] prompts to estimate.
      val_embeddings: [n_val, dim] validation prompts.
      val_errors: [n_val, n_models] errors in [0, 1]; entries outside `label_mask` must be 0.
      label_mask: [n_val, n_models] bool, True where a label exists; every model needs one.
      ks: [n_ks] int neighbour counts in [1, k_max].
      k_max: the largest value of `ks` (static: the length of the neighbour ranking).
      metric: "cosine" (rows L2-normalised) or "euclidean" (static).
      chunk: test prompts handled together inside a sequential map (static); bounds memory.

    Returns:
      [n_ks, n_test, n_models] estimated error of each model on each test prompt, for each `k`.
    """
    val_errors, label_mask = jnp.asarray(val_errors), jnp.asarray(label_mask)
    observed = label_mask.astype(val_errors.dtype)
    errors = jnp.where(label_mask, val_errors, 0.0)
    overall = jnp.sum(errors, axis=0) / jnp.maximum(jnp.sum(observed, axis=0), 1.0)
    val = _prepare(jnp.asarray(val_embeddings), metric)
    val_sq = jnp.sum(val * val, axis=-1)
    one = functools.partial(_knn_one, val=val, val_sq=val_sq, errors=errors, observed=observed, overall=overall,
                            ks=jnp.asarray(ks), k_max=k_max, metric=metric)
    est = jax.lax.map(one, _prepare(jnp.asarray(test_embeddings), metric), batch_size=chunk)  # [n_test, n_ks, n_models]
    return jnp.swapaxes(est, 0, 1)


def _chunk_size(n_test: int, n_val: int, k_max: int, n_models: int) -> int:
    per_prompt = max(n_val, 2 * k_max * n_models, 1)
    return int(max(1, min(n_test, _CHUNK_ELEMENTS // per_prompt)))


def _check(test_embeddings, val_embeddings, val_quality, label_mask, metric):
    validation.choice(metric, "metric", METRICS)
    val = validation.float_array(val_embeddings, "val_embeddings", ndim=2)
    n_val, dim = val.shape
    if n_val == 0:
        raise ValueError("val_embeddings holds no prompt")
    test = validation.float_array(test_embeddings, "test_embeddings", ndim=2)
    if test.shape[1] != dim:
        raise ValueError(f"test_embeddings has shape {test.shape} but val_embeddings has dimension {dim}")
    if test.shape[0] == 0:
        raise ValueError("test_embeddings holds no prompt")
    q = validation.float_array(val_quality, "val_quality", ndim=2, allow_nan=True)
    if q.shape[0] != n_val:
        raise ValueError(f"val_quality has {q.shape[0]} rows but val_embeddings has {n_val} prompts")
    if label_mask is None:
        mask = ~np.isnan(q)
    else:
        mask = validation.bool_array(label_mask, "label_mask", shape=q.shape)
        if np.isnan(q[mask]).any():
            raise ValueError("val_quality is NaN where label_mask is True")
    validation.unit_interval(q, "val_quality", where=mask)
    unlabelled = np.flatnonzero(~mask.any(axis=0))
    if unlabelled.size:
        raise ValueError(f"val_quality has no label at all for model column(s) {unlabelled.tolist()}")
    if metric == "cosine":
        for name, arr in (("test_embeddings", test), ("val_embeddings", val)):
            zero = np.flatnonzero(np.linalg.norm(arr, axis=1) == 0)
            if zero.size:
                raise ValueError(f"{name} row {int(zero[0])} is all zeros, which has no direction under "
                                 "metric='cosine'")
    errors = np.where(mask, 1.0 - np.where(mask, q, 0.0), 0.0).astype(np.float32)
    return test, val, errors, mask


def knn_estimates_multi(
    test_embeddings: ArrayLike,
    val_embeddings: ArrayLike,
    val_quality: ArrayLike,
    ks: ArrayLike,
    *,
    label_mask: ArrayLike | None = None,
    metric: str = "cosine",
) -> jax.Array:
    """K-NN error estimates for every `k` of a grid, from one neighbour ranking.

    Neighbours are ranked once up to `max(ks)`; cumulative sums along the ranking give every `k`,
    so a grid costs about as much as its largest `k` alone. Use it to choose `k` on held-out
    prompts with the training LLMs, as `K` is chosen for UniRoute.

    Args:
      test_embeddings: [n_test, dim] prompts to estimate.
      val_embeddings: [n_val, dim] labelled validation prompts.
      val_quality: [n_val, n_models] quality in [0, 1] (1 = correct); NaN where not labelled.
      ks: [n_ks] neighbour counts, each in [1, n_val].
      label_mask: optional [n_val, n_models] bool, True where labelled (default: not NaN).
      metric: "cosine" (default; nearest by cosine similarity) or "euclidean".

    Returns:
      [n_ks, n_test, n_models] estimated error; row `j` equals `knn_estimates(..., k=ks[j])`.

    Raises:
      ValueError / TypeError naming the argument (shapes, NaN, quality outside [0, 1], a model with
      no label, k outside [1, n_val], an all-zero row under the cosine metric).

    Example:
      >>> rng = np.random.default_rng(0)
      >>> val_x, test_x = rng.normal(size=(50, 8)), rng.normal(size=(5, 8))
      >>> q = rng.integers(0, 2, size=(50, 3)).astype(float)
      >>> knn_estimates_multi(test_x, val_x, q, ks=[1, 10, 50]).shape
      (3, 5, 3)
    """
    test, val, errors, mask = _check(test_embeddings, val_embeddings, val_quality, label_mask, metric)
    n_val = val.shape[0]
    ks = validation.int_array(np.atleast_1d(ks), "ks", shape=(None,), low=1, high=n_val + 1)
    if ks.size == 0:
        raise ValueError("ks must hold at least one value")
    k_max = int(ks.max())
    chunk = _chunk_size(test.shape[0], n_val, k_max, errors.shape[1])
    return knn_kernel(jnp.asarray(test), jnp.asarray(val), jnp.asarray(errors), jnp.asarray(mask),
                      jnp.asarray(ks), k_max=k_max, metric=metric, chunk=chunk)


def knn_estimates(
    test_embeddings: ArrayLike,
    val_embeddings: ArrayLike,
    val_quality: ArrayLike,
    k: int,
    *,
    label_mask: ArrayLike | None = None,
    metric: str = "cosine",
) -> jax.Array:
    """K-NN error estimates: each model's mean validation error over the `k` nearest prompts.

    A model's estimate averages over those of the `k` neighbours it has a label on, and is its
    overall validation error when it has none. With `k = n_val` every prompt gets each model's
    overall validation error (the ZeroRouter's estimate).

    Args:
      test_embeddings: [n_test, dim] prompts to estimate.
      val_embeddings: [n_val, dim] labelled validation prompts.
      val_quality: [n_val, n_models] quality in [0, 1] (1 = correct); NaN where not labelled.
      k: number of neighbours, in [1, n_val].
      label_mask: optional [n_val, n_models] bool, True where labelled (default: not NaN).
      metric: "cosine" (default) or "euclidean".

    Returns:
      [n_test, n_models] estimated error, for `sweeps.sweep` over `make_units(None, ...)`.

    Raises:
      ValueError / TypeError naming the argument.

    Example:
      >>> rng = np.random.default_rng(0)
      >>> q = rng.integers(0, 2, size=(50, 3)).astype(float)
      >>> knn_estimates(rng.normal(size=(5, 8)), rng.normal(size=(50, 8)), q, k=10).shape
      (5, 3)
    """
    k = validation.positive_int(k, "k")
    n_val = np.shape(val_embeddings)[0] if np.ndim(val_embeddings) == 2 else None
    if n_val is not None and k > n_val:
        raise ValueError(f"k must be <= the number of validation prompts ({n_val}), got {k}")
    return knn_estimates_multi(test_embeddings, val_embeddings, val_quality, [k], label_mask=label_mask,
                               metric=metric)[0]
