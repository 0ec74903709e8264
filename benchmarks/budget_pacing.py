"""Does a dollar budget hold over time? Online pacing replayed on real data against the hindsight optimum.

For each dataset and seed: a random 60 / 10 / 30 split of the prompts; a k-means router fit on the
training prompts, every LLM represented on the validation prompts; request streams of
`--requests` prompts drawn from the test prompts (stationary, drifting, abrupt, bursts: see
`uniroute_jax.streams`), the same streams for every method. The budget is `rho * n_requests` with
`rho` a fraction of the way from the cheapest LLM's mean cost to the most accurate routing's, both
measured on the validation prompts. Methods:

- `pacer`: online dual descent (`ur.replay`), warm start from the exact calibration on the
  validation prompts, `target="remaining"`;
- `pacer + hard cap`: the same, never spending past the budget;
- `fixed (calibrated)`: today's `target_cost`, the exact calibration's mix of two lambdas on the
  validation prompts, held fixed;
- `cliff`: the calibrated mix until the budget is gone, then the cheapest LLM only (what a
  gateway that blocks spend does, short of refusing requests).

Each is scored by final spend / budget and by its realised quality against two hindsight optima
on the same stream, every counterfactual outcome known: the fixed lambda that spends exactly the
same on it (the stream's exact curve at that spend), and the best mix of fixed lambdas at no more
spend (the curve's upper hull, chosen on realised outcomes). Replay throughput: the vmapped scan
against a Python loop of the same pacer (`ur.Pacer`), same run.

    python benchmarks/budget_pacing.py                 # three datasets with costs, 10 seeds (about 20 min)
    python benchmarks/budget_pacing.py --quick         # one dataset, 2 seeds

Results: benchmarks/results/budget_pacing/{summary.json, budget_pacing.md, spend.png}.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import jax
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import uniroute_jax as ur  # noqa: E402
from common import write_text  # noqa: E402

OUT = Path(__file__).resolve().parent / "results" / "budget_pacing"
# routerdc_7llm is left out: it has no costs (seven 7-8B LLMs at one price), so there is nothing to pace.
DATASETS = ("routerbench_partial", "alpacaeval", "synthetic")
KINDS = ur.streams.KINDS
FRACTIONS = (0.25, 0.5)  # budget: this fraction of the way from the cheapest LLM to lambda = 0
ETAS = (0.1, 0.3, 1.0, 3.0, 10.0)  # step sizes replayed; 1.0 is the default
ROUTERDC_PROMPTS = 6000  # a fixed random subset (embedding all 20,600 prompts takes ~30 min on 2 cores)


def load(name: str, seed: int = 0):
    """`(embeddings [n, d], quality [n, m], costs [m] or [n, m], tasks [n], model names)`."""
    if name == "synthetic":
        world = ur.synthetic_world(seed, n_prompts=6000, n_models=10)
        x = np.asarray(world.prompts.embeddings, np.float32)
        tasks = np.asarray(world.prompts.components)  # the world's latent prompt components
        names = tuple(f"llm-{i}" for i in range(10))
        return x, np.asarray(world.quality, np.float32), np.asarray(world.llms.costs, np.float64), np.asarray(tasks), names
    ds = ur.load_shared(name)
    if name == "routerdc_7llm":
        keep = np.sort(np.random.default_rng(0).choice(len(ds.prompt_ids), ROUTERDC_PROMPTS, replace=False))
        ds = ds.subset(keep)
    x = np.asarray(ur.TextEmbedder()(list(ds.texts)), np.float32)
    tasks = ds.tasks if ds.tasks is not None else np.asarray(ur.kmeans(x, 6, seed=0).labels)
    return x, np.asarray(ds.quality, np.float32), np.asarray(ds.costs, np.float64), np.asarray(tasks), ds.model_names


def hindsight_quality(errors, costs, quality, order, spends, *, hull: bool = True):
    """Realised mean quality of the hindsight fixed lambda on the stream `order` at each spend.

    The exact curve of the stream (one unit per request) gives every fixed lambda's (cost,
    quality); mixing two neighbouring lambdas reaches the segment between. `hull=False`: the one
    fixed lambda (mix) that spends exactly `spend` on this stream, the curve interpolated at it.
    `hull=True`: the best mix of any fixed lambdas at mean cost <= spend (the upper concave hull),
    which also picks, with hindsight, lambdas whose realised quality is high by chance. NaN below
    the cheapest point.
    """
    c = costs[order] if costs.ndim == 2 else np.broadcast_to(costs, (order.size, costs.size))
    units = ur.make_units(None, quality=quality[order], prompt_costs=c)
    curve = ur.exact_curve(errors[order], units, c)
    ok = np.asarray(curve.valid[0])
    pc, pq = np.asarray(curve.mean_cost[0])[ok].astype(np.float64), np.asarray(curve.mean_quality[0])[ok].astype(np.float64)
    by = np.lexsort((-pq, pc))
    pc, pq = pc[by], pq[by]
    s = np.asarray(spends, np.float64)
    if not hull:
        return np.where(s < pc[0] * (1 - 1e-9), np.nan, np.interp(s, pc, pq))
    keep: list[int] = []  # upper hull, left to right, non-decreasing quality
    for i in range(pc.size):
        if keep and pq[i] <= pq[keep[-1]]:
            continue
        while len(keep) >= 2:
            a, b = keep[-2], keep[-1]
            if (pq[b] - pq[a]) * (pc[i] - pc[a]) <= (pq[i] - pq[a]) * (pc[b] - pc[a]):
                keep.pop()
            else:
                break
        keep.append(i)
    hc, hq = pc[keep], pq[keep]
    return np.where(s < hc[0] * (1 - 1e-9), np.nan, np.interp(s, hc, hq))


def calibrated_fixed(errors, costs, quality, order, cal, budget, rng):
    """Fixed calibrated mix and the cliff on one stream: `(cost, quality)` arrays `[n_requests]` each."""
    c = costs[order] if costs.ndim == 2 else np.broadcast_to(costs, (order.size, costs.size))
    e, q = errors[order], quality[order]
    lam_hi, lam_lo, p = cal
    def pick(lam):
        return np.lexsort((np.arange(e.shape[1])[None, :].repeat(e.shape[0], 0), c, e + lam * c), axis=1)[:, 0]
    high = rng.random(order.size) < p
    choice = np.where(high, pick(lam_hi), pick(lam_lo))
    rows = np.arange(order.size)
    cost, qual = c[rows, choice], q[rows, choice]
    # Cliff: once the spend so far reaches the budget, every later request goes to the cheapest model.
    cheapest = np.lexsort((np.arange(e.shape[1])[None, :].repeat(e.shape[0], 0), e, c), axis=1)[:, 0]
    gone = np.concatenate([[0.0], np.cumsum(cost)[:-1]]) >= budget
    cliff_choice = np.where(gone, cheapest, choice)
    return (cost, qual), (c[rows, cliff_choice], q[rows, cliff_choice])


def run_dataset(name: str, seeds: int, n_requests: int, k: int) -> dict:
    x, quality, costs, tasks, names = load(name)
    n, m = quality.shape
    rows = []
    t0 = time.perf_counter()
    for seed in range(seeds):
        rng = np.random.default_rng(seed)
        perm = rng.permutation(n)
        tr, va, te = perm[: int(0.6 * n)], perm[int(0.6 * n): int(0.7 * n)], perm[int(0.7 * n):]
        router = ur.UniRouter.fit(x[tr], n_clusters=k, seed=seed)
        model_costs = costs if costs.ndim == 1 else costs[va].mean(axis=0)
        pool = router.represent(x[va], quality[va], list(names), model_costs)
        err_val, err_te = router.estimates(x[va], pool), router.estimates(x[te], pool)
        c_val = costs if costs.ndim == 1 else costs[va]
        c_te = costs if costs.ndim == 1 else costs[te]
        cv = np.broadcast_to(c_val, err_val.shape)
        best = np.lexsort((np.arange(m)[None, :].repeat(len(va), 0), cv, err_val), axis=1)[:, 0]
        c_hi, c_lo = cv[np.arange(len(va)), best].mean(), cv.min(axis=1).mean()
        span = ur.lambda_span(err_val, c_val)
        orders = np.stack([ur.streams.make_stream(kind, tasks[te], n_requests, np.random.default_rng([seed, i]))
                           for i, kind in enumerate(KINDS)])  # [n_kinds, n_requests] indices into te
        for frac in FRACTIONS:
            rho = c_lo + frac * (c_hi - c_lo)
            budget = rho * n_requests
            lam0 = ur.warm_start(err_val, c_val, rho)
            units = ur.make_units(None, prompt_costs=cv)
            cal = ur.calibrate(ur.exact_curve(err_val, units, cv), cost=rho)
            cal3 = (float(cal.lam_high_cost[0]), float(cal.lam_low_cost[0]), float(cal.p_high[0]))
            n_set = len(KINDS) * len(ETAS)
            ords = np.repeat(orders, len(ETAS), axis=0)
            etas = np.tile(np.asarray(ETAS, np.float32), len(KINDS))
            res = {}
            for cap in (False, True):
                r = ur.replay(err_te, c_te, quality[te], ords, budget, etas=etas, lam0=lam0, spans=span, hard_cap=cap)
                res[cap] = (np.asarray(r.cost), np.asarray(r.quality))
            for i, kind in enumerate(KINDS):
                fixed, cliff = calibrated_fixed(err_te, c_te, quality[te], orders[i], cal3, budget,
                                                np.random.default_rng([seed, i, 7]))
                entries = {}
                for j, eta in enumerate(ETAS):
                    s = i * len(ETAS) + j
                    for cap in (False, True):
                        entries[("pacer + hard cap" if cap else "pacer") + f" eta={eta:g}"] = (res[cap][0][s], res[cap][1][s])
                entries["fixed (calibrated)"], entries["cliff"] = fixed, cliff
                spends = np.array([v[0].astype(np.float64).sum() / n_requests for v in entries.values()])
                opt = hindsight_quality(err_te, c_te, quality[te], orders[i], spends, hull=False)
                best = hindsight_quality(err_te, c_te, quality[te], orders[i], spends)
                for (method, (cst, ql)), o, o_hull in zip(entries.items(), opt, best):
                    cst = cst.astype(np.float64)  # float32 running sums drift by ~1e-5 of the budget
                    cum = np.cumsum(cst) / budget
                    rows.append({"dataset": name, "seed": seed, "kind": kind, "fraction": frac, "method": method,
                                 "spend_ratio": float(cst.sum() / budget), "quality": float(ql.mean()),
                                 "hindsight_quality": float(o), "quality_ratio": float(ql.mean() / o),
                                 "hull_quality": float(o_hull), "hull_ratio": float(ql.mean() / o_hull),
                                 "max_spend_ratio": float(cum.max()),
                                 "spend_path": cum[np.linspace(0, n_requests - 1, 51).astype(int)].round(5).tolist()})
        print(f"  {name}: seed {seed + 1}/{seeds} done ({time.perf_counter() - t0:.0f} s)", flush=True)
    return {"rows": rows, "n_prompts": n, "n_models": m}


def throughput(n_requests: int) -> dict:
    """Settings x requests per second: vmapped scan vs a Python loop of `ur.Pacer`, same problem."""
    rng = np.random.default_rng(0)
    n, m = 2000, 8
    err = rng.uniform(0, 1, (n, m)).astype(np.float32)
    costs = np.geomspace(1e-4, 1e-2, m)
    qual = (rng.random((n, m)) > err).astype(np.float32)
    budget, span, lam0 = 3e-3 * n_requests, ur.lambda_span(err, costs), ur.warm_start(err, costs, 3e-3)
    out = {"n_requests": n_requests, "n_models": m}
    for n_settings in (64, 1024):
        orders = rng.integers(0, n, (n_settings, n_requests))
        etas = rng.uniform(0.25, 4, n_settings)
        fn = lambda: ur.replay(err, costs, qual, orders, budget, etas=etas, lam0=lam0, spans=span, hard_cap=True)
        jax.block_until_ready(fn())
        times = []
        for _ in range(3):
            t = time.perf_counter()
            jax.block_until_ready(fn())
            times.append(time.perf_counter() - t)
        out[f"scan_{n_settings}"] = n_settings * n_requests / min(times)
    loop_settings = 2
    t = time.perf_counter()
    for s in range(loop_settings):
        order = rng.integers(0, n, n_requests)
        pacer = ur.Pacer(ur.Budget(budget, n_requests), span=span, lam0=lam0, eta=1.0, hard_cap=True)
        for i in order:
            pick, _, _ = pacer.choose(err[i], costs)
            pacer.charge(costs[pick], costs.min())
    out["python_loop"] = loop_settings * n_requests / (time.perf_counter() - t)
    out["speedup_1024"] = out["scan_1024"] / out["python_loop"]
    return out


def summarise(rows: list[dict]) -> list[dict]:
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["dataset"], r["kind"], r["fraction"], r["method"]), []).append(r)
    out = []
    for (ds, kind, frac, method), rs in groups.items():
        sr = np.array([r["spend_ratio"] for r in rs])
        qr = np.array([r["quality_ratio"] for r in rs])
        hr = np.array([r["hull_ratio"] for r in rs])
        out.append({"dataset": ds, "kind": kind, "fraction": frac, "method": method, "n": len(rs),
                    "spend_ratio_mean": float(sr.mean()), "spend_ratio_sd": float(sr.std(ddof=1)) if len(rs) > 1 else 0.0,
                    "spend_error_max": float(np.abs(sr - 1).max()), "over_budget_max": float(max(r["max_spend_ratio"] for r in rs)),
                    "quality_ratio_mean": float(np.nanmean(qr)), "quality_ratio_min": float(np.nanmin(qr)),
                    "quality_ratio_sd": float(np.nanstd(qr, ddof=1)) if len(rs) > 1 else 0.0,
                    "hull_ratio_mean": float(np.nanmean(hr)), "hull_ratio_min": float(np.nanmin(hr))})
    return out


MAIN = ("pacer eta=1", "pacer + hard cap eta=1", "fixed (calibrated)", "cliff")


def markdown(summary: list[dict], thr: dict, args) -> str:
    lines = ["# Budget pacing replayed on real data", "",
             f"`python benchmarks/budget_pacing.py{' --quick' if args.quick else ''}`: {args.seeds} seeds, "
             f"{args.requests} requests per stream, K = {args.k}. Spend / budget (mean ± sd over seeds, and the "
             "largest |spend / budget - 1|). Quality against two hindsight optima on the same stream (mean, min over "
             "seeds): the fixed lambda that spends exactly the same on it (\"same spend\"), and the best mix of "
             "fixed lambdas at no more spend, chosen on the stream's realised outcomes (\"hull\"; where the "
             "router's gain is small against the outcomes' noise, as on alpacaeval, this optimum is mostly luck "
             "and every online method sits well below it).", ""]
    for ds in dict.fromkeys(s["dataset"] for s in summary):
        lines += [f"## {ds}", "", "| stream | budget | method | spend / B | max abs err | peak spend / B | quality / same spend | quality / hull |",
                  "|---|---|---|---|---|---|---|---|"]
        for s in summary:
            if s["dataset"] == ds and s["method"] in MAIN:
                lines.append(f"| {s['kind']} | {s['fraction']:g} | {s['method']} | {s['spend_ratio_mean']:.4f} ± "
                             f"{s['spend_ratio_sd']:.4f} | {s['spend_error_max']:.4f} | {s['over_budget_max']:.4f} | "
                             f"{s['quality_ratio_mean']:.4f}, {s['quality_ratio_min']:.4f} | "
                             f"{s['hull_ratio_mean']:.4f}, {s['hull_ratio_min']:.4f} |")
        lines.append("")
    lines += ["## Step size", "", "Pacer (no cap), mean over datasets, streams and budgets:", "",
              "| eta | mean abs(spend / B - 1) | worst | quality / same spend | quality / hull |", "|---|---|---|---|---|"]
    for eta in ETAS:
        ss = [s for s in summary if s["method"] == f"pacer eta={eta:g}"]
        if ss:
            lines.append(f"| {eta:g} | {np.mean([abs(s['spend_ratio_mean'] - 1) for s in ss]):.4f} | "
                         f"{max(s['spend_error_max'] for s in ss):.4f} | {np.mean([s['quality_ratio_mean'] for s in ss]):.4f} | "
                         f"{np.mean([s['hull_ratio_mean'] for s in ss]):.4f} |")
    lines += ["", "## Replay throughput", "",
              f"Settings x requests per second ({thr['n_requests']} requests, {thr['n_models']} models, hard cap): "
              f"vmapped scan {thr['scan_64']:.3g} (64 settings), {thr['scan_1024']:.3g} (1,024 settings); "
              f"Python loop of `ur.Pacer` {thr['python_loop']:.3g}; ratio {thr['speedup_1024']:.0f}x.", ""]
    return "\n".join(lines)


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    datasets = list(dict.fromkeys(r["dataset"] for r in rows))
    fig, axes = plt.subplots(len(datasets), len(KINDS), figsize=(3.2 * len(KINDS), 2.6 * len(datasets)), squeeze=False,
                             sharex=True)
    s = np.linspace(0, 1, 51)
    colours = {"pacer eta=1": "C0", "pacer + hard cap eta=1": "C2", "fixed (calibrated)": "C3", "cliff": "C1"}
    for a, ds in enumerate(datasets):
        for b, kind in enumerate(KINDS):
            ax = axes[a, b]
            ax.plot(s, s, "k--", lw=0.8, label="budget line")
            for method, col in colours.items():
                paths = [r["spend_path"] for r in rows if r["dataset"] == ds and r["kind"] == kind
                         and r["method"] == method and r["fraction"] == FRACTIONS[-1]]
                if paths:
                    p = np.asarray(paths)
                    ax.plot(s, p.mean(0), color=col, lw=1.2, label=method)
                    ax.fill_between(s, p.min(0), p.max(0), color=col, alpha=0.12, lw=0)
            ax.set_title(f"{ds}: {kind}", fontsize=8)
            ax.tick_params(labelsize=7)
            if b == 0:
                ax.set_ylabel("spend / budget", fontsize=8)
            if a == len(datasets) - 1:
                ax.set_xlabel("share of the horizon", fontsize=8)
    axes[0, 0].legend(fontsize=6, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", default=",".join(DATASETS))
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--k", type=int, default=20)
    parser.add_argument("--quick", action="store_true", help="routerbench_partial, 2 seeds")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    if args.quick:
        args.datasets, args.seeds = "routerbench_partial", 2
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    try:
        for name in args.datasets.split(","):
            print(f"{name}:", flush=True)
            rows += run_dataset(name, args.seeds, args.requests, args.k)["rows"]
    except KeyboardInterrupt:
        print("interrupted: writing what finished", flush=True)
    thr = throughput(args.requests)
    summary = summarise(rows)
    write_text(args.out / "summary.json", json.dumps({"summary": summary, "throughput": thr,
                                                      "args": {k: str(v) for k, v in vars(args).items()}}, indent=1))
    write_text(args.out / "budget_pacing.md", markdown(summary, thr, args))
    plot(rows, args.out / "spend.png")
    print(markdown(summary, thr, args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
