"""Per-request vs per-model decision costs on RouterBench's real USD costs: `python benchmarks/request_costs.py`.

RouterBench records what each LLM actually cost on each prompt, and that varies with the prompt
(input length) and the answer (output length). A router can decide with one cost per model, or
with a cost per (request, model). Three ways to decide, the same UniRoute (K-Means) router and
the same splits in every trial, measured always with the realised per-prompt costs:

- `per-model`: each model's mean cost on the validation prompts (what the router knows without
  looking at the request);
- `per-request (predicted)`: `a_h + b_h * words(x)` per model, fitted by least squares on the
  validation prompts (the run that labels a new LLM also records its costs); only the request's
  length is used at decision time;
- `per-request (realised)`: the prompt's actual cost, known only after the answer: the most that
  per-request costing could buy.

Per trial (the paper's protocol otherwise): a random 60/10/30 split of the prompts, 1/3 of the LLMs
held out as the unseen test pool, k-means on the training prompts, the unseen LLMs represented on
the validation prompts, an exact curve on the test prompts; Area (normalised by the most expensive
test LLM's mean cost). Writes `benchmarks/results/request_costs.{md,json}`.
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import sys
import time
from pathlib import Path

import jax
import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from common import write_text  # noqa: E402

import uniroute_jax as ur
from uniroute_jax._src.embedding import TextEmbedder

MODES = ("per-model", "per-request (predicted)", "per-request (realised)")


def _length_model(words: np.ndarray, cost: np.ndarray) -> np.ndarray:
    """Least-squares `cost ~ a + b * words` per model, clipped at 0: `[2, n_models]` coefficients."""
    design = np.stack([np.ones_like(words), words], axis=1)
    coef, *_ = np.linalg.lstsq(design, cost, rcond=None)
    return coef


def run_trial(ds: ur.RoutingDataset, words: np.ndarray, seed: int, n_clusters: int) -> dict[str, float]:
    rng = np.random.default_rng(seed)
    perm = rng.permutation(ds.n_prompts)
    n_tr, n_va = int(0.6 * ds.n_prompts), int(0.1 * ds.n_prompts)
    train, val, test = perm[:n_tr], perm[n_tr:n_tr + n_va], perm[n_tr + n_va:]
    unseen = np.sort(rng.permutation(ds.n_models)[: ds.n_models // 3])
    x, q, c = ds.embeddings, ds.quality[:, unseen], ds.prompt_costs[:, unseen]
    router = ur.UniRouter.fit(x[train], n_clusters, seed=seed)
    names = [ds.model_names[i] for i in unseen]
    pool = router.represent(x[val], q[val], names, c[val].mean(axis=0))
    coef = _length_model(words[val], c[val])
    predicted = np.maximum(coef[0][None, :] + words[test][:, None] * coef[1][None, :], 0.0)
    decide = {MODES[0]: None, MODES[1]: predicted, MODES[2]: c[test]}
    cost_norm = c[test].mean(axis=0).max()
    out = {}
    for mode, request_costs in decide.items():
        curve = router.exact_curve(x[test], pool, quality=q[test], prompt_costs=c[test], request_costs=request_costs)
        out[mode] = float(ur.area(curve.mean_cost[0], curve.mean_quality[0], curve.valid[0], cost_norm))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=100)
    ap.add_argument("--clusters", type=int, default=10, help="K (10: the value most trials choose in routerbench_partial.md)")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = ap.parse_args(argv)
    command = "python benchmarks/request_costs.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    t0 = time.perf_counter()
    ds = ur.load_shared("routerbench_partial")
    ds = ds.with_embeddings(TextEmbedder()(list(ds.texts)))
    words = np.array([len(t.split()) for t in ds.texts], np.float64)
    areas = {m: [] for m in MODES}
    try:
        for t in range(args.trials):
            for mode, a in run_trial(ds, words, t, args.clusters).items():
                areas[mode].append(a)
            print(f"\rtrial {t + 1}/{args.trials}", end="", file=sys.stderr, flush=True)
    except KeyboardInterrupt:
        print(f"\ninterrupted: reporting the {len(areas[MODES[0]])} finished trials", file=sys.stderr)
    print(file=sys.stderr)
    a = {m: np.asarray(v) for m, v in areas.items()}
    n = a[MODES[0]].size
    base = a[MODES[0]]
    rows = ["| decision costs | Area | paired difference vs per-model | wins / losses |", "|---|---|---|---|"]
    for m in MODES:
        d = a[m] - base
        diff = "-" if m == MODES[0] else f"{d.mean():+.4f} ± {d.std(ddof=1) / np.sqrt(n):.4f} (s.e.)"
        wl = "-" if m == MODES[0] else f"{int((d > 0).sum())} / {int((d < 0).sum())}"
        rows.append(f"| {m} | {a[m].mean():.4f} ± {a[m].std():.4f} | {diff} | {wl} |")
    lines = [
        "# Per-request vs per-model decision costs (routerbench_partial, real USD per prompt)",
        "",
        f"UniRoute (K-Means), K = {args.clusters}, {n} trials (random 60/10/30 prompt splits, 1/3 of the 11 LLMs "
        "unseen); the same router and splits for the three rows; realised per-prompt costs on the x-axis in all "
        "of them. Mean ± std over trials.",
        "",
        *rows,
        "",
        f"Command: `{command}`",
        f"Machine: {platform.machine()}, {jax.device_count()} {jax.default_backend()} device(s), jax {jax.__version__}; "
        f"{time.perf_counter() - t0:.0f}s.",
    ]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / "request_costs.md", "\n".join(lines) + "\n")
    write_text(out / "request_costs.json", json.dumps({m: v.tolist() for m, v in a.items()}, indent=1) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
