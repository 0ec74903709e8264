"""Live outcomes: fold served requests' correctness back into the pool's per-cluster estimates.

Each estimate `Psi(h)[k]` is the mean of a Beta posterior over the LLM's error rate in cluster
`k`, built from the labels behind it (`counts`, `error_sums`) and a prior centred on the LLM's
overall error with the weight of `alpha` pseudo-labels (the rule of `error_vectors`):

    Psi(h)[k] = (error_sums[h, k] + alpha * overall(h)) / (counts[h, k] + alpha)
              = mean of Beta(error_sums + alpha * overall, counts - error_sums + alpha * (1 - overall))

`observe` adds new labels to those counts and recomputes the rows it touched; a pool that records
an estimator (`Pool.estimator`, as `uniroute add-model` writes) has changed, so every row is
re-derived with it instead (`Pool.rederive`: the estimator learns from every LLM); `observe_file`
does the same on a pool file under a lock, so concurrent writers never lose an update and a
reader always finds a whole file. `sample_psi` draws from the posteriors (Thompson sampling), so
an LLM with few labels gets traffic until its estimate tightens; `sampling_posterior` gives them,
from the pool's estimator where it records one.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from jax.typing import ArrayLike

from uniroute_jax._src import validation
from uniroute_jax._src.filelock import locked
from uniroute_jax._src.pool import Pool


def _overall_error(pool: Pool) -> np.ndarray:
    """[n_models] mean error over every label; the mean of `psi` for a model without counts."""
    n = pool.counts.sum(axis=1).astype(np.float64)
    s = pool.error_sums.sum(axis=1).astype(np.float64)
    return np.where(n > 0, s / np.maximum(n, 1e-12), pool.psi.mean(axis=1))


def posterior(pool: Pool, alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """Beta parameters `(a, b)`, each `[n_models, n_clusters]`, whose means are the error estimates."""
    alpha = validation.nonnegative_float(alpha, "alpha")
    overall = _overall_error(pool)[:, None]
    a = pool.error_sums.astype(np.float64) + alpha * overall
    b = (pool.counts - pool.error_sums).astype(np.float64) + alpha * (1.0 - overall)
    return a, np.maximum(b, 0.0)


def sampling_posterior(pool: Pool, alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """Beta parameters `(a, b)`, each `[n_models, n_clusters]`, that Thompson draws come from.

    Every Beta has the pool's estimate as its mean, except at an estimate of exactly 0 or 1. A
    pool that records an estimator takes the width from that estimator's posterior
    (`estimators.posterior_rows`: the concentration `a + b`, which carries the population prior's
    and the hierarchy's strengths, as `OnlineLearner`'s does; the estimator is refitted on the
    pool's labels for this); a pool of rows as given takes the `alpha` rule of `posterior`, whose
    mean is its estimate.
    """
    if pool.estimator is None:
        return posterior(pool, alpha)
    from uniroute_jax._src.estimators import pool_estimates, posterior_rows

    a, b = posterior_rows(pool_estimates(pool, pool.estimator).rows, pool.counts, pool.error_sums)
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    psi = np.clip(np.asarray(pool.psi, np.float64), 0.0, 1.0)
    # Jeffreys' half-counts move the posterior's mean off the estimate by up to 1 / (2 (n + 1)):
    # draws centred elsewhere than the rows the router serves would explore for no reason. An
    # estimate of exactly 0 or 1 (plain means of all-right or all-wrong labels) keeps the
    # posterior itself: a Beta centred there would never move a draw.
    edge = (psi <= 0.0) | (psi >= 1.0)
    return np.where(edge, a, psi * (a + b)), np.where(edge, b, (1.0 - psi) * (a + b))


def sample_psi(a: np.ndarray, b: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One Thompson draw of the error rates from Beta(a, b) (any shape); degenerate ends stay put."""
    safe_a, safe_b = np.where(a > 0, a, 1.0), np.where(b > 0, b, 1.0)
    draw = rng.beta(safe_a, safe_b)
    return np.where(a <= 0, 0.0, np.where(b <= 0, 1.0, draw))


def observe(pool: Pool, router, embeddings: ArrayLike, model: str | Sequence[str], correct: ArrayLike) -> Pool:
    """The pool with new labels folded into its counts and the touched rows' estimates.

    Args:
      pool: a `Pool` represented by `router`.
      router: the router that assigns clusters (its `alpha` is the prior's weight).
      embeddings: [n_obs, dim] embeddings of the served prompts.
      model: the model that answered: one name for all, or `n_obs` names.
      correct: [n_obs] quality in [0, 1] of each answer (1 = correct).

    Returns:
      A new `Pool` (the input is not modified).

    Raises:
      ValueError / TypeError naming the argument (unknown model, wrong length, value outside [0, 1]).
    """
    router.check_pool(pool)  # a non-empty Pool of this router (clusters and fingerprint)
    if getattr(router.feature_map, "psi_source", "hard") != "hard":
        raise ValueError("observe folds labels into hard clusters; this router represents LLMs on its soft "
                         "map's weights (psi_source='soft'): represent them again with the new labels instead")
    q = np.atleast_1d(np.asarray(correct, np.float64))
    q = validation.unit_interval(validation.float_array(q, "correct", ndim=1, dtype=np.float64), "correct")
    n = q.shape[0]
    if n == 0:
        raise ValueError("correct holds no observation")
    if isinstance(model, str):
        names = [model] * n
    elif isinstance(model, Sequence) or isinstance(model, np.ndarray):
        names = list(model)
        for i, name in enumerate(names):
            if not isinstance(name, str):
                raise TypeError(f"model[{i}] must be a model name (str), got {name!r}")
    else:
        raise TypeError(f"model must be the name of the pool model that answered, or one name per "
                        f"observation, got {model!r}")
    if len(names) != n:
        raise ValueError(f"model has {len(names)} names but correct has {n} values")
    rows = pool.index(names)
    clusters = router.assign(embeddings)
    if clusters.shape[0] != n:
        raise ValueError(f"embeddings has {clusters.shape[0]} prompts but correct has {n} values")
    counts = pool.counts.astype(np.float64)
    sums = pool.error_sums.astype(np.float64)
    np.add.at(counts, (rows, clusters), 1.0)
    np.add.at(sums, (rows, clusters), 1.0 - q)
    touched = np.unique(rows)
    updated = dataclasses.replace(pool, counts=counts, error_sums=sums)
    if pool.estimator is not None:
        return updated.rederive()
    a, b = posterior(updated, router.alpha)
    psi = pool.psi.astype(np.float64)
    denom = a[touched] + b[touched]
    # A cluster with no label and alpha = 0 keeps the overall error, as error_vectors does.
    psi[touched] = np.where(denom > 0, a[touched] / np.where(denom > 0, denom, 1.0),
                            _overall_error(updated)[touched, None])
    return dataclasses.replace(updated, psi=np.clip(psi, 0.0, 1.0))


def observe_file(pool_path: str | os.PathLike, router, embeddings: ArrayLike, model: str | Sequence[str],
                 correct: ArrayLike, *, lock_timeout: float | None = None) -> Pool:
    """`observe` on a pool file: locked read-change-write, atomic replace; returns the new pool.

    The lock is `filelock.locked` (a sidecar `<pool>.lock`), so every writer using it
    (threads or processes on one machine) applies its update to the latest file. Bad input raises
    before anything is written. `lock_timeout`: seconds to wait for another writer's lock before
    raising `TimeoutError` (default: wait; after a second the holder is named on stderr). A
    read-only pool file raises `PermissionError`, as every save does.
    """
    path = Path(pool_path)
    if path.suffix != ".npz":
        raise ValueError(f"pool_path must name a .npz pool file, got {pool_path}")
    if not path.exists():
        raise FileNotFoundError(f"no pool file at {path}")
    with locked(path, timeout=lock_timeout):
        pool = router.check_pool(Pool.load(path), what=f"pool {path}")
        new = observe(pool, router, embeddings, model, correct)
        new.save(path)  # a unique temp file in the folder, fsynced, then renamed over the old one
    return new
