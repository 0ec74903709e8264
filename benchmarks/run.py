"""One benchmark runner: `python benchmarks/run.py --size smoke|full [--out results.json] [--only a,b]`.

Every case warms up (the first call compiles; its time is reported apart), blocks until the
device is done, takes the median of repeats, and measures its baseline in the same run, printed
as a ratio. Peak resident memory of the process is reported after each case.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import uniroute_jax as ur

sys.path.insert(0, str(Path(__file__).parent))
from common import baseline_env, clustered_data, routing_problem, sweep_problem, write_text  # noqa: E402
from common import timed as host_timed  # noqa: E402

SIZES = {
    "smoke": dict(
        kmeans=dict(n=5000, dim=384, k=50, n_init=1, repeats=3),
        sweep=dict(n_pools=64, n_budgets=256, n_prompts=20000, n_clusters=50, max_models=16, loop_pairs=None, repeats=3),
        routing=dict(batch=4096, dim=384, k=100, n_models=64, latency_calls=500, repeats=10),
        exact=dict(n_pools=64, n_clusters=50, max_models=16, grid_points=1000, repeats=3),
        protocol=dict(n_trials=20, n_prompts=2000, n_models=15, methods=("UniRoute (K-Means)", "ZeroRouter",
                                                                          "K-NN", "Oracle"), repeats=1),
        embedding=dict(n=128, repeats=1),
    ),
    "full": dict(
        kmeans=dict(n=20000, dim=384, k=100, n_init=1, repeats=3),
        # The per-prompt loop over 400k (pool, budget) pairs would run for many minutes: it is timed
        # on `loop_pairs` pairs and extrapolated linearly (each pair is independent work).
        sweep=dict(n_pools=400, n_budgets=1000, n_prompts=10000, n_clusters=100, max_models=64, loop_pairs=2000,
                   repeats=3),
        routing=dict(batch=4096, dim=384, k=100, n_models=64, latency_calls=2000, repeats=20),
        exact=dict(n_pools=400, n_clusters=100, max_models=64, grid_points=1000, repeats=3),
        protocol=dict(n_trials=100, n_prompts=3000, n_models=24, methods=("UniRoute (K-Means)", "ZeroRouter",
                                                                           "K-NN", "Oracle"), repeats=1),
        embedding=dict(n=512, repeats=2),
    ),
}


def _ready(x):
    return jax.block_until_ready(x)


def timed(fn: Callable[[], object], repeats: int) -> dict:
    """`common.timed`, waiting for the device: first call and median of `repeats` calls, in seconds."""
    return host_timed(fn, repeats, ready=_ready)


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def baseline(case: str, **params) -> tuple[dict, dict]:
    """Runs `numpy_baselines.py CASE` in its own process, without the OpenBLAS overrides.

    Returns `(its JSON: timings, BLAS kernel, versions; its saved output arrays)`.
    """
    env = baseline_env()
    with tempfile.TemporaryDirectory() as tmp:
        save = Path(tmp) / "out.npz"
        res = subprocess.run([sys.executable, str(Path(__file__).parent / "numpy_baselines.py"), case,
                              json.dumps(params), "--save", str(save)], capture_output=True, text=True, env=env)
        if res.returncode != 0:
            raise RuntimeError(f"baseline {case} failed: {res.stderr[-3000:]}")
        arrays = dict(np.load(save)) if save.exists() else {}
    return json.loads(res.stdout.strip().splitlines()[-1]), arrays


# --------------------------------------------------------------------------------- k-means


def bench_kmeans(n: int, dim: int, k: int, n_init: int, repeats: int) -> dict:
    x = clustered_data(n, dim, n_centers=2 * k)
    seeds = iter(range(100))
    ours_result = {}

    def ours():
        res = ur.kmeans(x, k, key=next(seeds), n_init=n_init, tol=1e-4)
        ours_result["inertia"] = res.inertia
        return res.inertia

    t_ours = timed(ours, repeats)
    sk, _ = baseline("kmeans", n=n, dim=dim, k=k, n_init=n_init, repeats=repeats)
    inertia_ours = float(ours_result["inertia"])
    return {
        "case": f"k-means {n}x{dim}, K={k}, n_init={n_init} (init included)",
        "ours": t_ours, "baseline": sk["lloyd"], "baseline_name": "scikit-learn KMeans (lloyd)",
        "baseline_blas": sk["blas"],
        "speedup": sk["lloyd"]["median_s"] / t_ours["median_s"],
        "inertia_ratio": inertia_ours / sk["lloyd"]["inertia"],
    }


# ----------------------------------------------------------------------------------- sweep


def bench_sweep(n_pools, n_budgets, n_prompts, n_clusters, max_models, loop_pairs, repeats) -> dict:
    psi, costs, labels, quality, masks, lams = sweep_problem(n_pools, n_budgets, n_prompts, n_clusters, max_models)
    units = ur.make_units(labels, n_units=n_clusters, quality=quality, costs=costs)

    t_ours = timed(lambda: ur.sweep(psi.T, units, costs, lams, pool_masks=masks).mean_cost, repeats)
    t_bp = timed(lambda: ur.sweep(psi.T, units, costs, lams, pool_masks=masks, method="breakpoints").mean_cost,
                 repeats)
    res = ur.sweep(psi.T, units, costs, lams, pool_masks=masks)
    res_bp = ur.sweep(psi.T, units, costs, lams, pool_masks=masks, method="breakpoints")
    # The per-cluster units are summed on the host once per test set: time it as part of ours.
    t_units = timed(lambda: ur.make_units(labels, n_units=n_clusters, quality=quality, costs=costs).weight, 1)
    np_res, np_out = baseline("sweep", n_pools=n_pools, n_budgets=n_budgets, n_prompts=n_prompts,
                              n_clusters=n_clusters, max_models=max_models, loop_pairs=loop_pairs, repeats=repeats)
    pairs = np_res["loop_pairs_timed"]
    p_idx, b_idx = np.unravel_index(np.arange(pairs), (n_pools, n_budgets))
    ours_direct, ours_bp = t_ours["median_s"] + t_units["median_s"], t_bp["median_s"] + t_units["median_s"]
    t_vec, t_np_bp = np_res["vectorised"]["median_s"], np_res["breakpoints"]["median_s"]
    diff = lambda ours, theirs: float(np.abs(np.asarray(ours)[p_idx, b_idx] - theirs[p_idx, b_idx]).max())
    return {
        "case": f"sweep {n_pools} pools x {n_budgets} budgets x {n_prompts} prompts, K={n_clusters}, "
                f"max_models={max_models}",
        "ours": t_ours, "ours_breakpoints": t_bp, "make_units_s": t_units["median_s"],
        "numpy_loop_s": np_res["loop_s"], "numpy_loop_pairs_timed": pairs,
        "numpy_vectorised_s": t_vec, "numpy_breakpoints_s": t_np_bp, "baseline_blas": np_res["blas"],
        "speedup_vs_loop": np_res["loop_s"] / ours_direct,
        "speedup_vs_vectorised": t_vec / ours_direct,
        "breakpoints_speedup_vs_loop": np_res["loop_s"] / ours_bp,
        "breakpoints_speedup_vs_vectorised": t_vec / ours_bp,
        # What the algorithm buys (NumPy direct -> NumPy breakpoints) and what JAX buys (same algorithm).
        "algorithm_speedup_numpy": t_vec / t_np_bp,
        "jax_speedup_same_algorithm": t_np_bp / ours_bp,
        "max_abs_diff_vs_loop_cost": diff(res.mean_cost, np_out["loop"][..., 0]),
        "max_abs_diff_breakpoints_vs_loop_cost": diff(res_bp.mean_cost, np_out["loop"][..., 0]),
        "max_abs_diff_breakpoints_vs_numpy_breakpoints_cost": float(
            np.abs(np.asarray(res_bp.mean_cost) - np_out["breakpoints"][..., 0]).max()),
        "max_abs_diff_vs_vectorised_quality": float(np.abs(np.asarray(res.mean_quality) - np_out["vectorised"][..., 1]).max()),
    }


# --------------------------------------------------------------------------------- routing


def matmul_peak_flops(n: int = 2048, repeats: int = 5) -> float:
    """Measured float32 matmul FLOP/s of this device: the practical peak to compare against."""
    a = jnp.ones((n, n), jnp.float32)
    f = jax.jit(lambda a: a @ a)
    t = timed(lambda: f(a), repeats)["median_s"]
    return 2 * n**3 / t


def bench_routing(batch: int, dim: int, k: int, n_models: int, latency_calls: int, repeats: int) -> dict:
    from uniroute_jax.kernels import route_embeddings_kernel

    centroids, psi, costs, x_host = routing_problem(batch, dim, k, n_models)
    pool = ur.Pool(tuple(f"m{i}" for i in range(n_models)), costs, psi, np.ones_like(psi), psi)
    router = ur.UniRouter(centroids, "cosine")
    table = jnp.asarray(router.decision_table(pool, 0.3))
    c = jnp.asarray(centroids)
    x_big = jax.device_put(x_host)
    kernel = lambda x: route_embeddings_kernel(x, c, table, metric="cosine")[0]
    t_batch = timed(lambda: kernel(x_big), repeats)
    # Batch 1 latency: one host array in, one decision out, as a server would call it.
    x_one = clustered_data(latency_calls, dim, k, seed=2)
    _ready(kernel(jnp.asarray(x_one[:1])))
    lat = []
    for i in range(latency_calls):
        t0 = time.perf_counter()
        int(np.asarray(kernel(x_one[i:i + 1]))[0])
        lat.append(time.perf_counter() - t0)
    serving = router.routing_table(pool, 0.3)
    assert np.array_equal(serving.rows(x_one[:64]), np.asarray(kernel(jnp.asarray(x_one[:64]))))
    lat_table = []
    for i in range(latency_calls):
        t0 = time.perf_counter()
        int(serving.rows(x_one[i:i + 1])[0])
        lat_table.append(time.perf_counter() - t0)
    lat_api = []
    for i in range(min(latency_calls, 200)):
        t0 = time.perf_counter()
        router.route(x_one[i:i + 1], pool, 0.3)
        lat_api.append(time.perf_counter() - t0)
    flops = 2 * batch * dim * k / t_batch["median_s"]
    peak = matmul_peak_flops()
    np_res, np_out = baseline("routing", batch=batch, dim=dim, k=k, n_models=n_models,
                              table=np.asarray(table).tolist(), repeats=repeats)
    return {
        "case": f"routing, batch {batch}, {dim}-d, K={k}, {n_models} models (nearest centroid + table lookup)",
        "ours": t_batch, "routes_per_s": batch / t_batch["median_s"],
        "numpy_routes_per_s": np_res["routes_per_s"], "baseline_blas": np_res["blas"],
        "speedup_vs_numpy": (batch / t_batch["median_s"]) / np_res["routes_per_s"],
        "decisions_equal_numpy": bool(np.array_equal(np.asarray(kernel(x_big)), np_out["rows"])),
        "gflops_achieved": flops / 1e9, "gflops_matmul_peak_measured": peak / 1e9,
        "latency_batch1_p50_us": 1e6 * float(np.percentile(lat, 50)),
        "latency_batch1_p99_us": 1e6 * float(np.percentile(lat, 99)),
        "latency_router_route_batch1_p50_us": 1e6 * float(np.percentile(lat_api, 50)),
        "latency_routing_table_batch1_p50_us": 1e6 * float(np.percentile(lat_table, 50)),
        "latency_routing_table_batch1_p99_us": 1e6 * float(np.percentile(lat_table, 99)),
    }


# ----------------------------------------------------------------------------- exact curve


def bench_exact(n_pools, n_clusters, max_models, grid_points, repeats) -> dict:
    """The exact-breakpoint curve versus a `grid_points` grid sweep on the same problem."""
    psi, costs, labels, quality, masks, _ = sweep_problem(n_pools, 2, 5000, n_clusters, max_models)
    units = ur.make_units(labels, n_units=n_clusters, quality=quality, costs=costs)
    lams = ur.lambda_grid(costs, grid_points)
    t_exact = timed(lambda: ur.exact_curve(psi.T, units, costs, pool_masks=masks).mean_cost, repeats)
    t_grid = timed(lambda: ur.sweep(psi.T, units, costs, lams, pool_masks=masks).mean_cost, repeats)
    exact = ur.exact_curve(psi.T, units, costs, pool_masks=masks)
    grid = ur.sweep(psi.T, units, costs, lams, pool_masks=masks)
    # Every grid point must be one of the exact curve's points (the exact curve evaluated there).
    at = ur.curve_at(exact, lams)
    n_valid = np.asarray(exact.valid).sum(1)
    np_res, _ = baseline("exact", n_pools=n_pools, n_clusters=n_clusters, max_models=max_models,
                         grid_points=grid_points, repeats=repeats)
    return {
        "numpy_breakpoints": np_res["breakpoints"], "baseline_blas": np_res["blas"],
        "speedup_vs_numpy_same_algorithm": np_res["breakpoints"]["median_s"] / t_exact["median_s"],
        "numpy_points_per_pool_median": np_res["points_per_pool_median"],
        "case": f"exact curve vs {grid_points}-point grid, {n_pools} pools x {n_clusters} clusters x "
                f"{max_models} models",
        "ours": t_exact, "baseline": t_grid, "baseline_name": f"routing.sweep on {grid_points} lambdas",
        "speedup": t_grid["median_s"] / t_exact["median_s"],
        "breakpoints_per_pool_median": float(np.median(n_valid)),
        "max_abs_diff_grid_vs_exact_at_grid": float(np.abs(np.asarray(at.mean_cost) - np.asarray(grid.mean_cost)).max()),
    }


# -------------------------------------------------------------------------------- protocol


def bench_protocol(n_trials, n_prompts, n_models, methods, repeats) -> dict:
    """The trial protocol batched over trials (vmap) versus a Python loop over the same kernels."""
    import dataclasses

    ds = ur.synthetic_dataset(0, n_prompts=n_prompts, n_models=n_models)
    cfg = ur.ProtocolConfig(n_trials=n_trials, seed=0)
    areas = {}

    def run(c, name):
        areas[name] = ur.evaluate(ds, methods, config=c, progress=False).metrics[methods[0]].area
        return areas[name]

    t_batched = timed(lambda: run(cfg, "batched"), repeats)
    t_loop = timed(lambda: run(dataclasses.replace(cfg, trial_batch=1), "looped"), repeats)
    same = bool(np.allclose(areas["batched"], areas["looped"], atol=1e-5))
    return {
        "case": f"protocol, {n_trials} trials, {n_prompts} prompts x {n_models} LLMs (synthetic), methods {list(methods)}",
        "ours": t_batched, "baseline": t_loop, "baseline_name": "Python loop over trials (trial_batch=1), same kernels",
        "speedup": t_loop["median_s"] / t_batched["median_s"], "same_numbers": same,
    }


# ------------------------------------------------------------------------------- embedding


def bench_embedding(n: int, repeats: int) -> dict:
    try:
        from uniroute_jax import TextEmbedder
        embedder = TextEmbedder(cache=False, progress=False)
    except (ImportError, FileNotFoundError) as err:
        return {"case": "embedding", "skipped": str(err).splitlines()[0]}
    rng = np.random.default_rng(0)
    words = "route model prompt cost answer question cluster budget accuracy token query router".split()
    out = {"case": f"embedding {n} prompts with all-MiniLM-L6-v2 (JAX), cache off"}
    for n_words in (24, 100, 220):
        texts = [" ".join(rng.choice(words, n_words)) for _ in range(n)]
        t = timed(lambda: embedder(texts), repeats)
        out[f"prompts_per_s_{n_words}_words"] = n / t["median_s"]
        out[f"first_call_s_{n_words}_words"] = t["first_call_s"]
    return out


CASES = {"kmeans": bench_kmeans, "sweep": bench_sweep, "routing": bench_routing, "exact": bench_exact,
         "protocol": bench_protocol, "embedding": bench_embedding}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--size", choices=list(SIZES), default="smoke")
    ap.add_argument("--out", help="write the results as JSON here")
    ap.add_argument("--only", help="comma-separated cases: " + ",".join(CASES))
    args = ap.parse_args(argv)
    chosen = args.only.split(",") if args.only else list(CASES)
    unknown = set(chosen) - set(CASES)
    if unknown:
        ap.error(f"unknown cases {sorted(unknown)}; choose from {list(CASES)}")
    meta = {"size": args.size, "date": time.strftime("%Y-%m-%d"), "machine": platform.machine(),
            "cpus": jax.device_count("cpu") if jax.default_backend() == "cpu" else None,
            "backend": jax.default_backend(), "devices": [str(d) for d in jax.devices()],
            "python": platform.python_version(), "jax": jax.__version__, "numpy": np.__version__}
    print(json.dumps(meta), file=sys.stderr)
    results = {"meta": meta, "cases": {}}
    for name in chosen:
        print(f"== {name}", file=sys.stderr, flush=True)
        r = CASES[name](**SIZES[args.size][name])
        r["peak_rss_mib"] = peak_rss_mib()
        results["cases"][name] = r
        summary = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()
                   if not isinstance(v, dict)}
        summary.update({f"{k}_median_s": round(v["median_s"], 4) for k, v in r.items() if isinstance(v, dict)})
        summary.update({f"{k}_first_call_s": round(v["first_call_s"], 3) for k, v in r.items() if isinstance(v, dict)})
        print(json.dumps(summary, indent=1))
    if args.out:
        write_text(args.out, json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
