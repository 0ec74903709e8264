"""Do the 95% intervals `uniroute add-model` prints cover a held-out LLM's per-cluster error?

`nice -n 5 python benchmarks/onboarding_coverage.py [--trials N] [--datasets a,b] [--clusters K]`

Per trial, the paper's prompt splits (`make_splits`); the router is k-means with K clusters on the
training prompts (as `uniroute fit`). A pool of P training LLMs plus one new LLM, drawn at random,
every one labelled on the trial's first n validation prompts, is derived as `add-model` derives it
(`estimators.pool_estimates`, the function it calls) and the new LLM's per-cluster intervals are
the ones `add-model` prints (`estimate_intervals`). They are checked against the LLM's test
prompts of each cluster (m_k prompts, x_k errors), two ways:

* raw: the test mean x_k / m_k inside the interval. The test mean is itself noisy (a cluster has
  a few dozen test prompts), so this undercounts once the interval is narrower than that noise.
* predictive: x_k inside the central 95% of the interval's Beta posterior mixed with a binomial of
  m_k draws (beta-binomial): the test prompts' own noise accounted. A calibrated posterior covers
  at least 95% here (discreteness adds a little).

For reference the same is done for Jeffreys intervals of plain means and for the shrinkage rule.
Also reported: mean interval width, and the median of add-model's "labels to halve the width".
Writes `--out`/onboarding_coverage.md.
"""

from __future__ import annotations

import argparse
import platform
import shlex
import sys
import time
from pathlib import Path

import jax
import numpy as np
from scipy import stats

from uniroute_jax._src import evaluation as ev
from uniroute_jax._src.estimators import (DEFAULT_METHOD, Estimate, estimate_intervals, labels_to_counts,
                                          labels_to_halve, pool_estimates)
from uniroute_jax._src.pool import Pool
from uniroute_jax._src.router import UniRouter

sys.path.insert(0, str(Path(__file__).parent))
from common import write_text  # noqa: E402
from pool_one_at_a_time import _dataset  # noqa: E402

DATASETS = ("routerbench_partial", "routerdc_7llm", "alpacaeval")
BUDGETS = (20, 50)
RULES = ("default", "shrinkage", "plain means")


def _log(msg: str) -> None:
    print(f"[onboarding_coverage] {msg}", file=sys.stderr, flush=True)


def _check(a, b, test_n, test_e):
    """Per cluster with test prompts: (raw covered, predictive covered, width) of Beta(a, b) intervals."""
    lo, hi = stats.beta.ppf(0.025, a, b), stats.beta.ppf(0.975, a, b)  # as `estimate_intervals` prints them
    has = test_n > 0
    mean = test_e / np.maximum(test_n, 1)
    pred = stats.betabinom(test_n.astype(int), a, b)
    inside = (test_e >= pred.ppf(0.025)) & (test_e <= pred.ppf(0.975))
    return ((mean >= lo) & (mean <= hi))[has], inside[has], (hi - lo)[has]


def _rule(counts, sums, prior, strength):
    """`Estimate` rows of a fixed rule: `prior` with `strength` pseudo-labels (0: plain means)."""
    s = np.full_like(counts, strength)
    denom = counts + s
    return Estimate(np.where(denom > 0, (sums + s * prior) / np.where(denom > 0, denom, 1), prior), prior, s)


def run(name: str, trials: int, n_clusters: int) -> dict:
    t0 = time.perf_counter()
    ds = _dataset(name)
    sp = ev.make_splits(ds.n_prompts, ds.n_models, ev.ProtocolConfig(n_trials=trials, seed=0))
    quality, mask = ev._filled_quality(ds), ds.label_mask
    n_val, M = sp.val.shape[1], ds.n_models
    budgets = [b for b in BUDGETS if b < n_val] + [n_val]
    sizes = sorted({p for p in (2, 3, 5) if p < M - 1} | {M - 1})
    cells = {}  # (P, n, rule) -> lists
    for t in range(trials):
        tr, va, te = sp.train[t], sp.val[t], sp.test[t]
        router = UniRouter.fit(ds.embeddings[tr], n_clusters)
        lab_va, lab_te = router.assign(ds.embeddings[va]), router.assign(ds.embeddings[te])
        test_n, test_e = labels_to_counts(lab_te, np.where(mask[te], quality[te], np.nan), n_clusters=n_clusters)
        q_val = np.where(mask[va], quality[va], np.nan)
        rng = np.random.default_rng(20_000 + t)
        order = rng.permutation(n_val)
        for P in sizes:
            llms = rng.permutation(M)[:P + 1]  # the last one is the new LLM
            for n in budgets:
                q = np.full((n_val, P + 1), np.nan)
                q[order[:n]] = q_val[order[:n]][:, llms]
                counts, sums = labels_to_counts(lab_va, q, n_clusters=n_clusters)
                pool = Pool(tuple(f"m{h:02d}" for h in llms), np.ones(P + 1), np.full(counts.shape, 0.5), counts, sums)
                res = pool_estimates(pool, DEFAULT_METHOD)
                overall = sums.sum(1, keepdims=True) / np.maximum(counts.sum(1, keepdims=True), 1)
                masses = counts.sum(0) + 1e-3
                rules = (res.rows, _rule(counts, sums, np.repeat(overall, n_clusters, 1), 1.0),
                         _rule(counts, sums, np.full_like(counts, 0.5), 0.0))
                for rule, est in zip(RULES, rules):
                    # The intervals add-model prints: the new LLM's row of the pool's estimates.
                    iv = estimate_intervals(Estimate(*(None if x is None else np.asarray(x)[-1:] for x in est)),
                                            counts[-1:], sums[-1:])
                    a, b = np.asarray(iv.a[0], np.float64), np.asarray(iv.b[0], np.float64)
                    raw, pred, width = _check(a, b, test_n[llms[-1]], test_e[llms[-1]])
                    c = cells.setdefault((P, n, rule), {"raw": [], "pred": [], "width": [], "halve": [], "prior": []})
                    c["raw"].append(raw)
                    c["pred"].append(pred)
                    c["width"].append(width)
                    if rule == "default":
                        lo, hi = np.asarray(iv.lower[0]), np.asarray(iv.upper[0])
                        c["halve"].append(labels_to_halve(hi - lo, a + b, masses))
                        c["prior"].append(res.estimator.used == DEFAULT_METHOD)
        _log(f"{name}: trial {t + 1}/{trials} ({time.perf_counter() - t0:.0f}s)")
    return {"name": name, "cells": cells, "sizes": sizes, "budgets": budgets, "n_models": M, "trials": trials,
            "seconds": time.perf_counter() - t0}


def markdown(results: list[dict], command: str, n_clusters: int) -> str:
    lines = ["# Coverage of add-model's 95% per-cluster intervals on held-out LLMs", "",
             f"K = {n_clusters}. A pool of P training LLMs plus the new LLM, all with the same n labels; coverage "
             "over the new LLM's clusters and the trials (see the script's docstring: 'predictive' accounts for "
             "the test prompts' own noise, 'raw' does not). Target for the default: 90-97% predictive.", ""]
    for r in results:
        lines += [f"## {r['name']} ({r['n_models']} LLMs, {r['trials']} trials)", "",
                  "| P | labels | default: predictive | default: raw | width | prior used | labels to halve "
                  "(median) | shrinkage: predictive | plain means (Jeffreys): predictive |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for P in r["sizes"]:
            for j, n in enumerate(r["budgets"]):
                c = {rule: r["cells"][(P, n, rule)] for rule in RULES}
                cov = lambda rule, k: np.concatenate(c[rule][k]).mean()
                label = f"all ({n})" if j == len(r["budgets"]) - 1 else str(n)
                p_label = f"{P} (all but one)" if P == r["n_models"] - 1 else str(P)
                lines.append(f"| {p_label} | {label} | {cov('default', 'pred'):.1%} | {cov('default', 'raw'):.1%} | "
                             f"{cov('default', 'width'):.3f} | {np.mean(c['default']['prior']):.0%} | "
                             f"{int(np.median(c['default']['halve']))} | {cov('shrinkage', 'pred'):.1%} | "
                             f"{cov('plain means', 'pred'):.1%} |")
        lines += ["", f"Run time {r['seconds']:.0f} s.", ""]
    lines += [f"Command: `{command}`",
              f"Machine: {platform.machine()}, {jax.device_count()} {jax.default_backend()} device(s), jax "
              f"{jax.__version__}."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", default=",".join(DATASETS))
    ap.add_argument("--trials", type=int, default=20)
    ap.add_argument("--clusters", type=int, default=10)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = ap.parse_args(argv)
    command = "python benchmarks/onboarding_coverage.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = []
    for name in args.datasets.split(","):
        results.append(run(name, args.trials, args.clusters))
        write_text(out / "onboarding_coverage.md", markdown(results, command, args.clusters))
        _log(f"{name} written")
    return 0


if __name__ == "__main__":
    sys.exit(main())
