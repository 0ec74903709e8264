"""Drift report and shadow mode on a replayed drifting stream of the synthetic world.

One synthetic world (8 prompt components, 6 LLMs), split 40 / 20 / 40 into training, validation
and test prompts; a k-means router (K = 8) fit on the training prompts and every LLM represented
on the validation prompts. A drifting stream (`uniroute_jax.streams`, task = the prompt's latent
component) of `--requests` test prompts is replayed, every outcome read from the world's labels:

- **drift**: UniRoute routes the stream at a fixed lambda; from the middle of the stream on, one
  LLM breaks (each of its answers is wrong with probability `--break-rate` more). Each window of
  `--window` requests gets a `drift_report` against the validation prompts, with the outcomes of
  the LLMs that answered; the table lists PSI, the test and the flagged clusters and cells, and
  `drift.png` is the last window's plot (written by `uniroute drift`, the command line).
- **shadow**: the first `--shadow-requests` requests go through a real `litellm.Router` (mock
  deployments, one per LLM; the group's own strategy is LiteLLM's shuffle) with
  `UniRoutePlugin(shadow=True)`; the served answers' outcomes are joined on the request ids, and
  `uniroute shadow-report` reads the log.

    python benchmarks/drift_shadow_replay.py --out /tmp/drift_shadow     # about a minute on 2 cores

Writes into --out: drift_windows.md, drift.png, drift.txt (the command's output), shadow.jsonl,
outcomes.csv, shadow_report.txt.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import os
import random
from pathlib import Path

import numpy as np

import uniroute_jax as ur
from uniroute_jax._src.cli import main as cli


def world_and_router(seed: int):
    w = ur.synthetic_world(seed, n_prompts=3000, n_models=6, config=ur.WorldConfig(n_components=8))
    x, q, tasks = np.asarray(w.prompts.embeddings), np.asarray(w.quality), np.asarray(w.prompts.components)
    order = np.random.default_rng(seed).permutation(3000)
    tr, va, te = order[:1200], order[1200:1800], order[1800:]
    router = ur.UniRouter.fit(x[tr], 8, seed=seed, n_init=2)
    names = [f"llm-{i}" for i in range(6)]
    pool = router.represent(x[va], q[va], names, np.asarray(w.llms.costs, np.float64))
    return x, q, tasks, tr, va, te, router, pool, names


def run_cli(argv) -> tuple[int, str]:
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        code = cli([str(a) for a in argv])
    return code, buf.getvalue()


async def shadow_run(router, pool, names, x, prompts, log: Path):
    import litellm

    from uniroute_jax.integrations.litellm import SIGNAL, UniRoutePlugin

    # The texts are prompt ids and the embedder looks their vectors up: the world has no texts.
    embed = lambda texts: x[[int(t.split()[1]) for t in texts]]
    plugin = UniRoutePlugin(router, pool, lam=LAM, model_groups=["g"], embedder=embed, embed_in_thread=False,
                            shadow=True, shadow_log=log)
    model_list = [{"model_name": "g", "litellm_params": {"model": f"openai/{n}", "api_key": "sk-none",
                                                         "mock_response": f"answer from {n}"}} for n in names]
    llm = litellm.Router(model_list=model_list, plugins=[plugin])
    traces = []
    for i in prompts:
        md = {}
        await llm.acompletion(model="g", messages=[{"role": "user", "content": f"prompt {i}"}], metadata=md)
        traces.append(md["routing_plugin_signals"][SIGNAL])
    for _ in range(10_000):  # the success callbacks run as tasks after their responses
        if all("served" in t for t in traces):
            break
        await asyncio.sleep(0)
    return traces


LAM = 0.0  # set in main from the pool's costs


def plot_windows(series: np.ndarray, args, broken: str, path: Path) -> None:
    """PSI per window with the moved clusters, and the flagged (LLM, cluster) cells."""
    from uniroute_jax._src.plots import _pyplot, save_figure

    plt = _pyplot()
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 3.8))
    mid = series[:, 0] + args.window / 2
    a.plot(mid, series[:, 1], "o-", color="tab:blue", label="PSI (served window vs validation)")
    a.axhline(0.2, color="gray", ls="--", lw=0.8, label="threshold 0.2")
    a.set_xlabel("request")
    a.set_ylabel("PSI")
    for m, v, n in zip(mid, series[:, 1], series[:, 2]):
        a.annotate(f"{int(n)}", (m, v), xytext=(0, 6), textcoords="offset points", ha="center", fontsize=7)
    a.set_title("cluster mix of a drifting stream (clusters moved per window)", fontsize=10)
    a.legend(fontsize=8)
    a.grid(alpha=0.3)
    w = args.window * 0.4
    b.bar(mid - w / 2, series[:, 3], w, color="tab:red", label=f"{broken} (breaks at {args.requests // 2})")
    b.bar(mid + w / 2, series[:, 4], w, color="tab:gray", label="other LLMs")
    b.axvline(args.requests // 2, color="black", lw=0.8, ls=":")
    b.set_xlabel("request")
    b.set_ylabel("(LLM, cluster) cells flagged")
    b.set_title("calibration: estimate outside the 95% interval of the observed error", fontsize=10)
    b.legend(fontsize=8)
    b.grid(alpha=0.3, axis="y")
    save_figure(fig, path)


def main() -> None:
    global LAM
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="benchmarks/results/drift_shadow")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--requests", type=int, default=6000)
    ap.add_argument("--window", type=int, default=500)
    ap.add_argument("--break-rate", type=float, default=0.3)
    ap.add_argument("--shadow-requests", type=int, default=600)
    args = ap.parse_args()
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    x, q, tasks, tr, va, te, router, pool, names = world_and_router(args.seed)
    # A trade-off in the middle of the pool's range: error spread over cost spread.
    LAM = 0.5 * float(np.ptp(pool.psi.mean(1)) / np.ptp(pool.costs))
    rng = np.random.default_rng(args.seed)
    stream = te[ur.streams.make_stream("drifting", tasks[te], args.requests, rng)]
    chosen = np.asarray(router.route(x[stream], pool, LAM).model)
    idx = np.array([names.index(m) for m in chosen])
    correct = q[stream, idx].astype(float)
    # The LLM that serves the most traffic breaks halfway: extra wrong answers from then on.
    broken = int(np.bincount(idx, minlength=len(names)).argmax())
    later = (np.arange(args.requests) >= args.requests // 2) & (idx == broken)
    correct[later & (rng.random(args.requests) < args.break_rate)] = 0.0

    rows = ["| window | requests | PSI | chi2 p | mix moved | clusters moved | cells flagged (of cells with outcomes) |",
            "|---|---|---|---|---|---|---|"]
    series = []  # (window start, PSI, clusters moved, cells of the broken LLM flagged, other cells flagged)
    for w0 in range(0, args.requests, args.window):
        sl = slice(w0, w0 + args.window)
        rep = ur.drift_report(router, pool, x[stream[sl]], x[va], outcomes=(list(chosen[sl]), correct[sl]))
        series.append((w0, rep.psi, int(rep.cluster_moved.sum()), int(rep.miscalibrated[broken].sum()),
                       int(rep.miscalibrated.sum() - rep.miscalibrated[broken].sum())))
        cells = [f"{names[m]}/{k}" for m, k in np.argwhere(rep.miscalibrated)]
        rows.append(f"| {w0}-{w0 + args.window} | {args.window} | {rep.psi:.3f} | {rep.p_value:.2g} | "
                    f"{'yes' if rep.mix_moved else 'no'} | {', '.join(map(str, np.flatnonzero(rep.cluster_moved))) or '-'}"
                    f" | {', '.join(cells) or '-'} ({int((rep.n_outcomes > 0).sum())}) |")
    table = (f"Drifting stream of {args.requests} requests, windows of {args.window}; UniRoute at lambda {LAM:.4g}; "
             f"{names[broken]} breaks at request {args.requests // 2} (+{args.break_rate:g} wrong answers).\n\n"
             + "\n".join(rows) + "\n")
    (out / "drift_windows.md").write_text(table)
    print(table)
    plot_windows(np.asarray(series, float), args, names[broken], out / "psi_windows.png")

    # The last window through the command line: files in, report and plot out.
    last = slice(args.requests - args.window, args.requests)
    router.save(out / "router.npz")
    pool.save(out / "pool.npz")
    np.save(out / "served.npy", x[stream[last]])
    np.save(out / "validation.npy", x[va])
    with open(out / "drift_outcomes.csv", "w") as f:
        f.write("model,correct\n" + "".join(f"{m},{c:g}\n" for m, c in zip(chosen[last], correct[last])))
    code, text = run_cli(["drift", "-r", out / "router.npz", "-p", out / "pool.npz", "--served", out / "served.npy",
                          "--validation", out / "validation.npy", "--outcomes", out / "drift_outcomes.csv",
                          "--plot", out / "drift.png"])
    (out / "drift.txt").write_text(text)
    print(f"$ uniroute drift ... (exit {code})\n{text}")

    # Shadow mode on the stream's first requests, through LiteLLM.
    log = out / "shadow.jsonl"
    log.unlink(missing_ok=True)
    prompts = stream[: args.shadow_requests]
    random.seed(args.seed)  # LiteLLM's shuffle draws from Python's global generator
    traces = asyncio.run(shadow_run(router, pool, names, x, prompts, log))
    with open(out / "outcomes.csv", "w") as f:
        f.write("request_id,correct\n")
        for i, t in zip(prompts, traces):
            if t.get("served") is not None:
                f.write(f"{t['request_id']},{q[i, names.index(t['served'])]:g}\n")
    code, text = run_cli(["shadow-report", log, "-p", out / "pool.npz", "--outcomes", out / "outcomes.csv"])
    (out / "shadow_report.txt").write_text(text)
    print(f"$ uniroute shadow-report ... (exit {code})\n{text}")
    # What the shadow decisions would really have scored on these prompts (every outcome is known here).
    u = np.array([names.index(t["model"]) for t in traces])
    s = np.array([names.index(t["served"]) for t in traces])
    print(f"true quality change on these {len(prompts)} prompts: {q[prompts, u].mean() - q[prompts, s].mean():+.4f}; "
          f"true cost saving per request: {pool.costs[s].mean() - pool.costs[u].mean():+.4g}")


if __name__ == "__main__":
    main()
