"""What every benchmark script shares: inputs generated the same way (same seeds, NumPy only) in
the JAX process and in the baselines' process, so both sides time the same problem; the timer; and
the environment and BLAS record of the NumPy / scikit-learn baselines."""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable

import numpy as np

from uniroute_jax._src.persistence import write_atomic


# Overrides this machine sets for old OpenBLAS builds; they slow a current NumPy, so the baselines'
# processes run without them (the library and its JAX side keep the machine's settings).
BASELINE_UNSET = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")


def baseline_env() -> dict[str, str]:
    """This process's environment without `BASELINE_UNSET`, for a baseline's subprocess."""
    return {k: v for k, v in os.environ.items() if k not in BASELINE_UNSET}


def blas_info() -> list[dict]:
    """What threadpoolctl sees in this process: library, version, kernel (`architecture`), threads."""
    from threadpoolctl import threadpool_info

    keep = ("user_api", "internal_api", "version", "architecture", "num_threads")
    return [{k: d.get(k) for k in keep} for d in threadpool_info()]


def write_text(path, text: str) -> None:
    """Writes `text` to `path` through a unique temp file in its folder, renamed over it."""
    with write_atomic(path, "w", encoding="utf-8") as f:
        f.write(text)


def timed(fn: Callable[[], object], repeats: int, ready: Callable[[object], object] = lambda x: x) -> dict:
    """First call (compile + run) and the median of `repeats` further calls, in seconds.

    `ready` waits for the result (`jax.block_until_ready` for device work).
    """
    t0 = time.perf_counter()
    ready(fn())
    first = time.perf_counter() - t0
    runs = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        ready(fn())
        runs.append(time.perf_counter() - t0)
    return {"first_call_s": first, "median_s": statistics.median(runs), "runs_s": runs}


def clustered_data(n: int, dim: int, n_centers: int, seed: int = 0) -> np.ndarray:
    """Unit-norm points around `n_centers` directions, like sentence embeddings of mixed tasks."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(n_centers, dim))
    x = centers[rng.integers(0, n_centers, n)] + 0.6 * rng.normal(size=(n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def sweep_problem(n_pools, n_budgets, n_prompts, n_clusters, max_models, seed=0):
    """`(psi [M, K], costs [M], labels [n], quality [n, M], masks [P, M], lams [B])` of a random pool table."""
    rng = np.random.default_rng(seed)
    psi = rng.uniform(0.05, 0.6, (max_models, n_clusters)).astype(np.float32)
    costs = np.exp(rng.normal(size=max_models)).astype(np.float32)
    labels = rng.integers(0, n_clusters, n_prompts).astype(np.int32)
    quality = (rng.random((n_prompts, max_models)) < 1 - psi.T[labels]).astype(np.float32)
    sizes = rng.integers(2, max_models + 1, n_pools)
    masks = np.zeros((n_pools, max_models), bool)
    for p, s in enumerate(sizes):
        masks[p, rng.choice(max_models, s, replace=False)] = True
    # The default grid of `uniroute_jax.lambda_grid`, written out so this module needs no JAX.
    gaps = np.diff(np.unique(costs))
    lams = np.concatenate([[0.0], np.geomspace(1e-4 / (costs.max() - costs.min()), 2.0 / gaps.min(),
                                                n_budgets - 1)]).astype(np.float32)
    return psi, costs, labels, quality, masks, lams


def routing_problem(batch: int, dim: int, k: int, n_models: int):
    """`(centroids [K, dim], psi [M, K], costs [M], x [batch, dim])` for the routing throughput case."""
    rng = np.random.default_rng(0)
    centroids = clustered_data(k, dim, k)
    psi = rng.uniform(0.05, 0.6, (n_models, k)).astype(np.float32)
    costs = np.exp(rng.normal(size=n_models)).astype(np.float32)
    return centroids, psi, costs, clustered_data(batch, dim, k, seed=1)
