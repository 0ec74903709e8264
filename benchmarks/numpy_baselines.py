"""The NumPy and scikit-learn baselines of `run.py`, run in their own process.

`run.py` starts this script with `OPENBLAS_CORETYPE` and `OPENBLAS_L2_SIZE` removed from the
environment: some machines set them for old OpenBLAS builds, and they make a current NumPy pick
slower kernels. The library's side keeps the machine's settings. Each call prints one JSON line:
the timings, the BLAS library and kernel that threadpoolctl reports, and (under `--save`) the
baseline's outputs as `.npz` for `run.py` to compare with its own.

    python benchmarks/numpy_baselines.py CASE '{"param": value, ...}' [--save out.npz]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from common import blas_info, clustered_data, routing_problem, sweep_problem, timed  # noqa: E402


# ----------------------------------------------------------------------------- k-means


def kmeans_case(n, dim, k, n_init, repeats, variants=("lloyd",), seed0=100) -> tuple[dict, dict]:
    from sklearn.cluster import KMeans, MiniBatchKMeans

    x = clustered_data(n, dim, n_centers=2 * k)
    out, arrays = {}, {}
    for variant in variants:
        seeds = iter(range(seed0, seed0 + repeats + 1))
        fitted = {}

        def fit():
            if variant == "minibatch":
                fitted["m"] = MiniBatchKMeans(k, n_init=n_init, random_state=next(seeds), batch_size=4096).fit(x)
            else:
                fitted["m"] = KMeans(k, n_init=n_init, tol=1e-4, random_state=next(seeds)).fit(x)

        t = timed(fit, repeats)
        # Inertia of the last fit's centroids on the whole data (MiniBatchKMeans reports its own estimate).
        c = fitted["m"].cluster_centers_
        d = (x * x).sum(1)[:, None] - 2 * x @ c.T + (c * c).sum(1)[None]
        out[variant] = {**t, "inertia": float(np.maximum(d.min(1), 0).sum())}
    return out, arrays


# ------------------------------------------------------------------------------- sweeps


def cheapest_first(psi, costs, quality, masks):
    """The problem with its model axis in (cost, index) order: a plain `argmin` then breaks ties
    toward the cheaper model, then the lower index (the library's rule), at no cost per decision."""
    order = np.lexsort((np.arange(costs.size), costs))
    return psi[order], costs[order], quality[:, order], masks[:, order]


def loop_sweep(psi, costs, labels, quality, masks, lams, pairs=None):
    """How peer libraries build curves: for each pool and budget, score every prompt, take argmin."""
    psi, costs, quality, masks = cheapest_first(psi, costs, quality, masks)
    est = psi.T[labels]
    rows = np.arange(len(labels))
    out = np.zeros((len(masks), len(lams), 2))
    todo = [(p, b) for p in range(len(masks)) for b in range(len(lams))]
    for p, b in todo[:pairs]:
        choice = np.where(masks[p], est + lams[b] * costs, np.inf).argmin(1)
        out[p, b] = costs[choice].mean(), quality[rows, choice].mean()
    return out


def vectorised_sweep(psi, costs, labels, quality, masks, lams):
    """The direct method at its best in NumPy: per-cluster decisions for all budgets of a pool at once."""
    psi, costs, quality, masks = cheapest_first(psi, costs, quality, masks)
    k = psi.shape[1]
    weight = np.bincount(labels, minlength=k)
    q_sums = np.zeros((k, psi.shape[0]))
    np.add.at(q_sums, labels, quality)
    out = np.zeros((len(masks), len(lams), 2))
    for p, mask in enumerate(masks):
        scores = psi.T[None] + lams[:, None, None] * costs[None, None]  # [B, K, M]
        choice = np.where(mask, scores, np.inf).argmin(-1)  # [B, K]
        out[p, :, 0] = (weight[None] * costs[choice]).sum(1) / len(labels)
        out[p, :, 1] = np.take_along_axis(q_sums[None].repeat(len(lams), 0), choice[..., None], 2)[..., 0].sum(1) / len(labels)
    return out


def breakpoint_curve(est, weight, q_sums, c_sums, costs, mask):
    """The breakpoint algorithm in NumPy, for one pool: `(lam_start, cost, quality)` of every point.

    The same algorithm as `uniroute_jax.exact_curve`: each unit walks the lower envelope of its
    lines `est[u, m] + lam * costs[m]` from the `lam = 0` decision to ever cheaper models, every
    switch is an event of the unit's sums, and a sort plus cumulative sums give the curve.
    """
    n_units, m = est.shape
    units = np.arange(n_units)
    # The tie rule as one integer key: cheaper first (equal costs share a rank), then lower index.
    rank = (costs[None, :] < costs[:, None]).sum(1)
    tie_key = rank * m + np.arange(m)
    order = np.argsort(tie_key)
    cur = order[np.where(mask[order][None, :], est[:, order], np.inf).argmin(1)]
    base = np.array([c_sums[units, cur].sum(), q_sums[units, cur].sum()])
    t_prev = np.zeros(n_units)
    times, deltas = [], []
    live = np.ones(n_units, bool)
    for _ in range(m - 1):
        cheaper = mask[None, :] & (rank[None, :] < rank[cur][:, None]) & live[:, None]
        gap = np.where(cheaper, costs[cur][:, None] - costs[None, :], 1.0)
        t = np.where(cheaper, (est - est[units, cur][:, None]) / gap, np.inf)
        t_min = t.min(1)
        moved = np.isfinite(t_min)
        if not moved.any():
            break
        nxt = np.where(moved, np.where(t <= t_min[:, None], tie_key[None, :], m * m).min(1) % m, cur)
        t_event = np.maximum(t_min, t_prev)
        times.append(t_event[moved])
        deltas.append(np.stack([c_sums[units, nxt] - c_sums[units, cur], q_sums[units, nxt] - q_sums[units, cur]],
                               axis=1)[moved])
        t_prev = np.where(moved, t_event, t_prev)
        live &= moved
        cur = nxt
    times = np.concatenate(times) if times else np.zeros(0)
    deltas = np.concatenate(deltas) if deltas else np.zeros((0, 2))
    order = np.argsort(times, kind="stable")
    values = base[None, :] + np.concatenate([np.zeros((1, 2)), np.cumsum(deltas[order], axis=0)])
    total = weight.sum()
    return np.concatenate([[0.0], times[order]]), values[:, 0] / total, values[:, 1] / total


def breakpoint_sweep(psi, costs, labels, quality, masks, lams):
    """Every budget read off each pool's exact curve (NumPy twin of `method="breakpoints"`)."""
    k = psi.shape[1]
    weight = np.bincount(labels, minlength=k).astype(np.float64)
    q_sums = np.zeros((k, psi.shape[0]))
    np.add.at(q_sums, labels, quality)
    c_sums = weight[:, None] * costs[None, :]
    out = np.zeros((len(masks), len(lams), 2))
    for p, mask in enumerate(masks):
        lam_start, cost, qual = breakpoint_curve(psi.T.astype(np.float64), weight, q_sums, c_sums,
                                                 costs.astype(np.float64), mask)
        idx = np.searchsorted(lam_start, lams, side="right") - 1
        out[p, :, 0], out[p, :, 1] = cost[idx], qual[idx]
    return out


def sweep_case(n_pools, n_budgets, n_prompts, n_clusters, max_models, loop_pairs, repeats) -> tuple[dict, dict]:
    problem = sweep_problem(n_pools, n_budgets, n_prompts, n_clusters, max_models)
    total_pairs = n_pools * n_budgets
    pairs = total_pairs if loop_pairs is None else min(loop_pairs, total_pairs)
    t0 = time.perf_counter()
    loop = loop_sweep(*problem, pairs=pairs)
    t_loop = (time.perf_counter() - t0) * total_pairs / pairs
    t_vec = timed(lambda: vectorised_sweep(*problem), 1)
    t_bp = timed(lambda: breakpoint_sweep(*problem), 1)
    out = {"loop_s": t_loop, "loop_pairs_timed": pairs, "vectorised": t_vec, "breakpoints": t_bp}
    return out, {"loop": loop, "vectorised": vectorised_sweep(*problem), "breakpoints": breakpoint_sweep(*problem)}


def exact_case(n_pools, n_clusters, max_models, grid_points, repeats) -> tuple[dict, dict]:
    psi, costs, labels, quality, masks, _ = sweep_problem(n_pools, 2, 5000, n_clusters, max_models)
    k = psi.shape[1]
    weight = np.bincount(labels, minlength=k).astype(np.float64)
    q_sums = np.zeros((k, psi.shape[0]))
    np.add.at(q_sums, labels, quality)
    c_sums = weight[:, None] * costs[None, :]

    def all_pools():
        return [breakpoint_curve(psi.T.astype(np.float64), weight, q_sums, c_sums, costs.astype(np.float64), m)
                for m in masks]

    t = timed(all_pools, repeats)
    curves = all_pools()
    return {"breakpoints": t, "points_per_pool_median": float(np.median([c[0].size for c in curves]))}, {}


# ------------------------------------------------------------------------------ routing


def routing_case(batch, dim, k, n_models, table, repeats) -> tuple[dict, dict]:
    centroids, _, _, x = routing_problem(batch, dim, k, n_models)
    table = np.asarray(table, np.int32)
    route = lambda: table[(x @ centroids.T).argmax(1)]
    t = timed(route, repeats)
    return {"numpy": t, "routes_per_s": batch / t["median_s"]}, {"rows": route()}


CASES = {"kmeans": kmeans_case, "sweep": sweep_case, "exact": exact_case, "routing": routing_case}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("case", choices=list(CASES))
    ap.add_argument("params", help="JSON object of the case's parameters")
    ap.add_argument("--save", help="write the baseline's outputs here (.npz)")
    args = ap.parse_args(argv)
    out, arrays = CASES[args.case](**json.loads(args.params))
    if args.save and arrays:
        np.savez(args.save, **arrays)
    import sklearn

    print(json.dumps({**out, "blas": blas_info(), "numpy": np.__version__, "sklearn": sklearn.__version__}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
