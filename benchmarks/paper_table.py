"""The paper's table on real routing data: `python benchmarks/paper_table.py [--trials N] [--datasets a,b]`.

For each staged dataset (routerbench_partial, alpacaeval, routerdc_7llm under ../shared/data, or
$UNIROUTE_DATA), embeds the prompts locally with all-MiniLM-L6-v2 (cached on disk), runs the
protocol of `uniroute_jax` (random 60/10/30 prompt splits, 1/3 of the LLMs unseen, K and k chosen
per trial with the training LLMs) and writes, under `--out` (default benchmarks/results/):
`<dataset>.md` (Area, Area(50%), QNC ± std, sign tests, the command and timings), `<dataset>.csv`
and `<dataset>.png` (mean deferral curves with bands).
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

from uniroute_jax._src import evaluation as ev
from uniroute_jax._src.data import load_shared
from uniroute_jax._src.embedding import TextEmbedder

DATASETS = ("routerbench_partial", "alpacaeval", "routerdc_7llm")
METHODS = (ev.ZERO, ev.KNN, ev.KMEANS, ev.LEARNED, ev.MLP, ev.ORACLE)


def run(name: str, trials: int, out: Path, embedder: TextEmbedder, k_grid: tuple[int, ...], command: str) -> dict:
    t0 = time.perf_counter()
    ds = load_shared(name)
    ds = ds.with_embeddings(embedder(list(ds.texts)))
    t_embed = time.perf_counter() - t0
    cfg = ev.ProtocolConfig(n_trials=trials, seed=0, k_grid=k_grid)
    res = ev.evaluate(ds, METHODS, config=cfg)
    out.mkdir(parents=True, exist_ok=True)
    table = res.table()
    cost_note = {"routerbench_partial": "USD actually spent per prompt (RouterBench)",
                 "alpacaeval": "mean output length in characters (a proxy; AlpacaEval has no prices)",
                 "routerdc_7llm": "uniform (all LLMs are 7-8B)"}[name]
    k_counts = dict(zip(*np.unique(res.chosen_k, return_counts=True)))
    knn_counts = dict(zip(*np.unique(res.chosen_knn_k, return_counts=True)))
    lines = [
        f"# {name}: {res.dataset}",
        "",
        f"{ds.n_prompts} prompts, {ds.n_models} LLMs ({int(res.splits.unseen[0].sum())} unseen per trial), "
        f"{trials} trials, cost = {cost_note}. Mean ± std over trials; QNC is averaged over the trials that reach "
        "the best unseen LLM's accuracy (count in the next column). The last column is a paired sign test of Area "
        "against UniRoute (K-Means): wins/losses of the row's method, p-value, `*` when p < 0.01.",
        "",
        table,
        "",
        f"K chosen per trial: {', '.join(f'{int(k)}: {int(c)}' for k, c in k_counts.items())}; "
        f"K-NN k: {', '.join(f'{int(k)}: {int(c)}' for k, c in knn_counts.items())}.",
        "",
        f"Command: `{command}`",
        f"Machine: {platform.machine()}, {jax.device_count()} {jax.default_backend()} device(s), jax {jax.__version__}; "
        f"embedding {t_embed:.0f}s (cache hits are instant), protocol "
        + ", ".join(f"{k} {v:.0f}s" for k, v in res.seconds.items()) + ".",
    ]
    write_text(out / f"{name}.md", "\n".join(lines) + "\n")
    write_text(out / f"{name}.csv", res.table("csv"))
    res.plot(out / f"{name}.png", title=f"{name}: mean deferral curves over {trials} trials\n(unseen LLMs, ± 1 std over trials)")
    print("\n".join(lines), flush=True)
    return {m: float(np.mean(res.metrics[m].area)) for m in res.methods}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--datasets", default=",".join(DATASETS))
    ap.add_argument("--trials", type=int, default=100)
    ap.add_argument("--trials-routerdc", type=int, default=None,
                    help="trials for routerdc_7llm (20,600 prompts; default: --trials)")
    ap.add_argument("--k-grid", default="5,10,25,50,100")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = ap.parse_args(argv)
    command = "python benchmarks/paper_table.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    embedder = TextEmbedder()
    k_grid = tuple(int(k) for k in args.k_grid.split(","))
    summary = {}
    for name in args.datasets.split(","):
        trials = args.trials_routerdc if (name == "routerdc_7llm" and args.trials_routerdc) else args.trials
        summary[name] = run(name, trials, Path(args.out), embedder, k_grid, command)
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
