"""k-means at traffic-log scale: `uniroute_jax.kmeans` against scikit-learn `KMeans` and
`MiniBatchKMeans` on up to 1,000,000 x 384 prompts.

Every fit runs in its own process, so that its peak memory (`VmHWM`) is its own; the
scikit-learn ones without `OPENBLAS_CORETYPE` / `OPENBLAS_L2_SIZE` (see `run.py`), with the BLAS
kernel threadpoolctl reports recorded. The data (unit-norm points around 2K directions, as
`common.clustered_data`) are written once to a temp `.npy` that each process loads. Each fit
saves its centroids and this script scores all of them the same way: the inertia over the whole
data, in float64, in blocks. One fit per case (a 1M fit takes minutes): times include k-means++
seeding and, for ours, compilation.

    python benchmarks/kmeans_scale.py --out benchmarks/results/kmeans_scale
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from common import baseline_env, blas_info, write_text  # noqa: E402

METHODS = ("uniroute_jax", "uniroute_jax_init_sample", "sklearn_kmeans", "sklearn_minibatch")
INIT_SAMPLE = 50_000  # points k-means++ seeds on in "uniroute_jax_init_sample"


def make_data(path: Path, n: int, dim: int, n_centers: int, seed: int = 0, block: int = 100_000) -> None:
    """`common.clustered_data` written in blocks, so that generating 1M x 384 stays small in memory."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(n_centers, dim))
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n, dim))
    for start in range(0, n, block):
        m = min(block, n - start)
        x = centers[rng.integers(0, n_centers, m)] + 0.6 * rng.normal(size=(m, dim))
        out[start:start + m] = x / np.linalg.norm(x, axis=1, keepdims=True)
    out.flush()


def inertia(x: np.ndarray, centroids: np.ndarray, block: int = 65_536) -> float:
    """Sum of squared distances to the nearest centroid, float64, in blocks of points."""
    c = centroids.astype(np.float64)
    c_sq = (c * c).sum(1)
    total = 0.0
    for start in range(0, len(x), block):
        xb = x[start:start + block].astype(np.float64)
        d2 = (xb * xb).sum(1)[:, None] - 2.0 * xb @ c.T + c_sq[None, :]
        total += float(np.maximum(d2.min(1), 0.0).sum())
    return total


def load_rows(path: str, n: int) -> np.ndarray:
    """The first `n` rows of a float32 `.npy`, read into memory (a memory map would count the
    file's pages in this process's peak)."""
    with open(path, "rb") as f:
        np.lib.format.read_magic(f)
        shape, _, _ = np.lib.format.read_array_header_1_0(f)
        x = np.empty((n, shape[1]), np.float32)
        f.readinto(memoryview(x).cast("B"))
    return x


def peak_rss_mib() -> float:
    """This process's peak resident memory. `VmHWM` belongs to the running program; `ru_maxrss`
    would also carry the parent's peak at the time it forked (Linux keeps it across `execve`)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(method: str, data: str, n: int, k: int, max_iter: int, out: str) -> None:
    """One fit in this process; prints one JSON line and saves the centroids to `out`."""
    x = load_rows(data, n)
    rss_data = peak_rss_mib()
    info: dict = {}
    t0 = time.perf_counter()
    if method.startswith("uniroute_jax"):
        import jax

        from uniroute_jax import kmeans

        init_sample = INIT_SAMPLE if method == "uniroute_jax_init_sample" else None
        res = kmeans(x, k, key=0, n_init=1, max_iter=max_iter, tol=1e-4, progress=True, init_sample=init_sample)
        centroids = np.asarray(jax.block_until_ready(res.centroids))
        info.update(n_iter=int(res.n_iter), backend=jax.default_backend())
    else:
        from sklearn.cluster import KMeans, MiniBatchKMeans
        if method == "sklearn_kmeans":
            model = KMeans(k, n_init=1, max_iter=max_iter, tol=1e-4, random_state=0, algorithm="lloyd").fit(x)
        else:
            model = MiniBatchKMeans(k, n_init=1, batch_size=4096, random_state=0).fit(x)
        centroids = model.cluster_centers_.astype(np.float32)
        info.update(n_iter=int(model.n_iter_), blas=blas_info())
    seconds = time.perf_counter() - t0
    np.save(out, centroids)
    peak = peak_rss_mib()
    print(json.dumps({"seconds": seconds, "peak_rss_mib": peak, "rss_after_data_mib": rss_data, **info}))


def run_case(method: str, data: Path, n: int, k: int, max_iter: int, tmp: Path) -> dict:
    env = baseline_env() if method.startswith("sklearn") else dict(os.environ)
    out = tmp / f"{method}_{n}_{k}.npy"
    cmd = [sys.executable, __file__, "--child", method, str(data), str(n), str(k), str(max_iter), str(out)]
    res = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, env=env)  # stderr: the fit's progress
    if res.returncode != 0:
        raise RuntimeError(f"{method} n={n} K={k} failed with exit code {res.returncode}")
    return {**json.loads(res.stdout.strip().splitlines()[-1]), "centroids": np.load(out)}


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from uniroute_jax._src.plots import save_figure

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for k, ax in zip(sorted({r["k"] for r in rows}), axes):
        for method in METHODS:
            pts = sorted((r["n"], r["seconds"]) for r in rows if r["k"] == k and r["method"] == method)
            if pts:
                ax.loglog(*zip(*pts), "o-", label=method)
        ax.set(title=f"K = {k}", xlabel="prompts", ylabel="fit time (s)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    fig.suptitle("k-means fit time against prompts (384-d, one fit, seeding included)")
    save_figure(fig, path)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--child", nargs=6, metavar=("METHOD", "DATA", "N", "K", "MAX_ITER", "OUT"), help=argparse.SUPPRESS)
    ap.add_argument("--sizes", default="62500,250000,1000000", help="prompt counts for K = 100")
    ap.add_argument("--large-k", type=int, default=1000, help="second K, run at the largest size only")
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--max-iter", type=int, default=30, help="Lloyd iteration cap of both full-batch fits")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "kmeans_scale")
    args = ap.parse_args(argv)
    if args.child:
        method, data, n, k, max_iter, out = args.child
        child(method, data, int(n), int(k), int(max_iter), out)
        return 0
    sizes = [int(s) for s in args.sizes.split(",")]
    cases = [(n, 100) for n in sizes] + [(max(sizes), args.large_k)]
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    with tempfile.TemporaryDirectory(dir=args.out) as tmp:
        tmp = Path(tmp)
        data = tmp / "x.npy"
        make_data(data, max(sizes), args.dim, n_centers=200)
        x_all = np.load(data, mmap_mode="r")
        for n, k in cases:
            x = x_all[:n]
            case = {}
            for method in METHODS:
                print(f"== {method}, {n} x {args.dim}, K = {k}", file=sys.stderr, flush=True)
                r = run_case(method, data, n, k, args.max_iter, tmp)
                r["inertia"] = inertia(x, r.pop("centroids"))
                case[method] = r
            ref = case["sklearn_kmeans"]
            for method in METHODS:
                case[method]["inertia_ratio_vs_kmeans"] = case[method]["inertia"] / ref["inertia"]
                case[method]["speedup_vs_kmeans"] = ref["seconds"] / case[method]["seconds"]
                rows.append({"method": method, "n": n, "k": k, **case[method]})
            print(json.dumps({"n": n, "k": k, **{m: {f: v for f, v in r.items() if f != "blas"}
                                                   for m, r in case.items()}}), flush=True)
    meta = {"date": time.strftime("%Y-%m-%d"), "dim": args.dim, "max_iter": args.max_iter, "n_init": 1,
            "tol": 1e-4, "init_sample": INIT_SAMPLE, "minibatch": "batch_size=4096, n_init=1, sklearn defaults otherwise",
            "data": "unit-norm points around 200 random directions, noise 0.6 (common.clustered_data)"}
    write_text(args.out / "kmeans_scale.json", json.dumps({"meta": meta, "rows": rows}, indent=1))
    lines = ["| prompts | K | method | time (s) | Lloyd iterations | inertia / KMeans | speed-up vs KMeans | peak RSS (MiB) |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['n']:,} | {r['k']} | {r['method']} | {r['seconds']:.1f} | {r['n_iter']} | "
                     f"{r['inertia_ratio_vs_kmeans']:.4f} | {r['speedup_vs_kmeans']:.2f}x | {r['peak_rss_mib']:.0f} |")
    blas = next((r["blas"] for r in rows if "blas" in r), [])
    text = (f"# k-means at scale ({meta['date']})\n\n`python benchmarks/kmeans_scale.py` on {args.dim}-d data "
            f"({meta['data']}); full-batch fits: n_init=1, max_iter={args.max_iter}, tol=1e-4 "
            f"(`uniroute_jax_init_sample`: k-means++ on {INIT_SAMPLE:,} random points, `init_sample`); MiniBatchKMeans: "
            f"{meta['minibatch']}. One fit per row, own process; inertia scored on all points in float64.\n\n"
            + "\n".join(lines) + f"\n\nBLAS of the scikit-learn processes: {json.dumps(blas)}\n\n![scaling](kmeans_scale.png)\n")
    write_text(args.out / "kmeans_scale.md", text)
    plot(rows, args.out / "kmeans_scale.png")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
