"""Learning a new LLM from served traffic: online onboarding replayed on real data against full labels.

For each seed and dataset: a random 60 / 10 / 30 split of the prompts; a k-means router fit on the
training prompts; every LLM represented on the validation prompts (the full-label pool). One LLM
is held out as new: the one whose removal from the full-label pool costs its routing the most
utility (`quality - lam * cost`) on the validation prompts, so that learning it matters. The
estimator (`prior`) is fitted on the other LLMs only. The new LLM enters with 0 or 20 labels
(random validation prompts), and a stationary stream of `--requests` test prompts is replayed
(`ur.replay_online`; every counterfactual outcome is known). `lam` is the calibrated lambda that
spends half-way from the cheapest LLM's mean cost to the most accurate routing's on the
validation prompts (costs scaled to a maximum of 1; routerdc_7llm has one price, so `lam` does
not matter there). Every policy may explore on at most 20% of requests (`explore_cap=0.2`).

Metrics (utility `u = quality - lam * cost` of the served model on each request):
- cumulative regret against full-label UniRoute (the new LLM represented with all its validation
  labels) on the same stream, over the 5,000 requests;
- outcomes to 80% of the gain: every 250 requests, the greedy rule at the learner's current
  estimates routes all the test prompts; its gain over ZeroRouter (the one LLM with the best
  validation utility, new LLM included with full labels) as a share of full-label UniRoute's gain
  on the same prompts. Reported is the number of the new LLM's outcomes received when the share
  first reaches 0.8 (censored at the horizon: then `>` the outcomes received by its end). Offline
  onboarding labels `n` random validation prompts of the new LLM up front, with `n` on a grid;
  reported is the smallest `n` of the grid that reaches 0.8;
- the same on one grid for both sides (`GRID`, new-LLM label counts 0, 2, 5, ..., 5,000): online, the
  share after the new LLM's j-th arrived outcome (in the order outcomes land); offline, with j random
  validation labels; per seed the first grid value reaching 0.8, and the paired per-seed difference
  online - offline (bootstrap 95% interval over seeds where both reach it; wins / ties / losses, a
  side that never reaches 0.8 counting as infinite). For `... 20` settings j counts outcomes beyond
  the 20 starting labels;
- "label first" onboarding, which pays for its labels in the same traffic: the first n requests of the
  stream go to the new LLM (their outcomes are its labels), then every request is routed by the rule
  at the estimate from those n labels; its regret counts all requests. n = the seed's offline labels
  to 80% on the grid, and 20, 50, 100; compared with Thompson's regret paired per seed;
- methods: greedy, Thompson and optimistic (lower confidence bound) on the estimator's posterior;
  a LiteLLM-style per-model Beta-Thompson that ignores the prompt (Beta(1 + correct, 1 + wrong)
  over each model's outcomes, established models starting from their validation labels); and
  offline onboarding with as many labels as Thompson received outcomes (`offline (same n, labels not
  charged)`: the cost of its labels is not in its regret);
- zero-label checks: (a) traffic to the new LLM where it is best: share of the requests 500-1,000
  in the clusters where full-label UniRoute picks it that are served to it (success: >= 0.5);
  (b) a new LLM worse everywhere (the least accurate LLM's answers with 30% of its correct ones
  turned wrong, at the highest price, the held-out LLM left out of the pool): its share of the
  5,000 requests;
- feedback: Thompson from zero labels with outcomes 250 requests late, 30% of outcomes arriving,
  and 20% of them flipped, against immediate feedback;
- replay throughput (settings x requests per second) against a Python loop of `ur.OnlineLearner`.

    python benchmarks/online_learning.py --seeds 30          # four datasets
    python benchmarks/online_learning.py --quick             # synthetic, 2 seeds

Progress is printed per seed; Ctrl-C writes what finished. Results:
benchmarks/results/online_learning/{summary.json, online_learning.md, regret.png, area_windows.png}.
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
from budget_pacing import load  # noqa: E402
from common import write_text  # noqa: E402

OUT = Path(__file__).resolve().parent / "results" / "online_learning"
DATASETS = ("synthetic", "routerbench_partial", "alpacaeval", "routerdc_7llm")
POLICIES = ("greedy", "thompson", "optimistic")
STARTS = (0, 20)
OFFLINE_N = (0, 10, 20, 50, 100, 200, 400, 800)
# One grid of new-LLM label counts for both sides: online after its j-th arrived outcome, offline with j labels.
GRID = (0, 2, 5, 10, 15, 20, 25, 30, 40, 50, 60, 80, 100, 125, 150, 200, 250, 300, 400, 500, 600, 800, 1000,
        1250, 1500, 2000, 2500, 3000, 4000, 5000)
LABEL_FIRST = (20, 50, 100)  # fixed label budgets of "label first" onboarding, besides the seed's labels-to-80
FEEDBACK = {"delay 250": dict(delays=250), "30% observed": dict(p_observe=0.3), "20% flipped": dict(flips=0.2)}
EVERY = 250  # requests between evaluations of the learner's rule
WINDOW = 500  # requests per window of the Area measure
AREA_SETTINGS = ("thompson 0", "optimistic 0", "greedy 0", "thompson 20")
CAP = 0.2
METHOD = "prior"


def utilities(quality, cost, lam):
    return quality - lam * cost[None, :]


def rule_choice(psi, clusters, cost, lam, mask):
    """[n_prompts] greedy choice of the rows `psi [m, K]` at the prompts' clusters (ties: cheaper, lower index)."""
    score = psi.T[clusters] + lam * cost[None, :]
    score = np.where(mask[None, :], score, np.inf)
    m = psi.shape[0]
    return np.lexsort((np.broadcast_to(np.arange(m), score.shape), np.broadcast_to(cost, score.shape), score),
                      axis=1)[:, 0]


def litellm_thompson(n0, s0, order_q, cost, lam, mask, rng):
    """Per-model Beta(1 + correct, 1 + wrong) Thompson ignoring the prompt: `[n_requests]` choices."""
    correct, wrong = n0 - s0, s0.copy()
    picks = np.empty(order_q.shape[0], np.int64)
    for t in range(order_q.shape[0]):
        draw = rng.beta(1.0 + correct, 1.0 + wrong) - lam * cost
        h = int(np.argmax(np.where(mask, draw, -np.inf)))
        picks[t] = h
        ok = rng.random() < order_q[t, h]
        correct[h] += ok
        wrong[h] += 1 - ok
    return picks


def stays_at_80(shares: dict) -> int | None:
    """The smallest label count from which the share of the gain is >= 0.8 at every larger count of the grid
    (None when the last one is below): sturdier than the first crossing when the share is noisy."""
    counts = list(shares)
    below = [j for j in counts if shares[j] < 0.8]
    if not counts or (below and below[-1] == counts[-1]):
        return None
    return counts[counts.index(below[-1]) + 1] if below else counts[0]


def run_seed(name, data, seed, n_requests, k):
    x, quality, costs, tasks, names = data
    n, m = quality.shape
    rng = np.random.default_rng(seed)
    perm = rng.permutation(n)
    tr, va, te = perm[: int(0.6 * n)], perm[int(0.6 * n): int(0.7 * n)], perm[int(0.7 * n):]
    cost = costs if costs.ndim == 1 else costs[va].mean(axis=0)
    cost = (cost / cost.max()).astype(np.float32)
    router = ur.UniRouter.fit(x[tr], n_clusters=k, seed=seed)
    pool = router.represent(x[va], quality[va], list(names), cost)
    cl_va, cl_te = router.assign(x[va]), router.assign(x[te])
    psi = np.asarray(pool.psi, np.float32)
    err_val = psi.T[cl_va]
    best = np.lexsort((np.broadcast_to(np.arange(m), err_val.shape), np.broadcast_to(cost, err_val.shape), err_val),
                      axis=1)[:, 0]
    c_hi, c_lo = cost[best].mean(), cost.min()
    lam = float(ur.warm_start(err_val, cost, c_lo + 0.5 * (c_hi - c_lo))) if c_hi > c_lo + 1e-9 else 0.0
    everyone = np.ones(m, bool)
    u_va = utilities(quality[va], cost, lam)
    full_va = u_va[np.arange(len(va)), rule_choice(psi, cl_va, cost, lam, everyone)].mean()
    loss = [full_va - u_va[np.arange(len(va)), rule_choice(psi, cl_va, cost, lam, everyone & (np.arange(m) != h))].mean()
            for h in range(m)]
    new = int(np.argmax(loss))
    others = np.arange(m) != new
    est = ur.fit_estimator(METHOD, pool.counts[others], pool.error_sums[others], cluster_masses=pool.counts.sum(0))
    zero = int(np.argmax(u_va.mean(0)))  # ZeroRouter: the best single LLM at this lam
    u_te = utilities(quality[te], cost, lam)
    full_te = rule_choice(psi, cl_te, cost, lam, everyone)
    U_full, U_zero = u_te[np.arange(len(te)), full_te].mean(), u_te[:, zero].mean()

    def share_of_gain(psi_new):
        rows = psi.copy()
        rows[new] = psi_new
        ch = rule_choice(rows, cl_te, cost, lam, everyone)
        return (u_te[np.arange(len(te)), ch].mean() - U_zero) / max(U_full - U_zero, 1e-12)

    # Area of a rule's whole curve (lam swept) on the test prompts, normalised by the pool's top cost.
    units = ur.make_units(cl_te, n_units=k, quality=quality[te], costs=cost)
    ref = ur.pool_reference(cost, quality[te].mean(0))

    def area(rows, u=units, pool=None):
        c = ur.exact_curve(rows, u, cost, pool_masks=None if pool is None else pool[None])
        return float(ur.curve_metrics(c.mean_cost[0], c.mean_quality[0], c.valid[0], ref).area)

    def area_of(psi_new):
        rows = psi.copy()
        rows[new] = psi_new
        return area(rows.T)

    def start_labels(n_lab, key):
        pick = np.random.default_rng([seed, key]).choice(len(va), n_lab, replace=False)
        c0, s0 = pool.counts.copy(), pool.error_sums.copy()
        c0[new] = np.bincount(cl_va[pick], minlength=k)
        s0[new] = np.bincount(cl_va[pick], weights=1.0 - quality[va][pick, new], minlength=k)
        return c0.astype(np.float32), s0.astype(np.float32)

    # A new LLM worse everywhere: the least accurate LLM's answers with 30% of the correct ones wrong, top price.
    worst = int(np.argmin(quality[va].mean(0)))
    bad_q = quality[:, worst] * (np.random.default_rng([seed, 99]).random(n) >= 0.3)
    q_all = np.concatenate([quality, bad_q[:, None]], 1).astype(np.float32)
    cost_all = np.append(cost, 1.0).astype(np.float32)
    psi_all = np.concatenate([psi, np.full((1, k), 0.5, np.float32)])
    order = ur.streams.stationary(len(te), n_requests, np.random.default_rng([seed, 1]))
    settings = []  # (label, start, policy, feedback kwargs, bad)
    for start in STARTS:
        for pol in POLICIES:
            settings.append((f"{pol} {start}", start, pol, {}, False))
    for fb, kw in FEEDBACK.items():
        settings.append((f"thompson 0 {fb}", 0, "thompson", kw, False))
    for pol in POLICIES:
        settings.append((f"{pol} 0 worse-everywhere", 0, pol, {}, True))
    S = len(settings)
    c0s, s0s, newm, poolm = [], [], np.zeros((S, m + 1), bool), np.ones((S, m + 1), bool)
    for s, (_, start, _, _, bad) in enumerate(settings):
        c0, s0 = start_labels(start, 0)
        c0s.append(np.concatenate([c0, np.zeros((1, k), np.float32)]))
        s0s.append(np.concatenate([s0, np.zeros((1, k), np.float32)]))
        newm[s, m if bad else new] = True
        poolm[s, new if bad else m] = False
    fb_arg = lambda key, default: np.array([st[3].get(key, default) for st in settings])
    t0 = time.perf_counter()
    r = ur.replay_online(est, psi_all, cost_all, q_all[te], cl_te, np.repeat(order[None], S, 0), newm,
                         seeds=seed * 1000 + np.arange(S), counts0=np.stack(c0s), error_sums0=np.stack(s0s),
                         model_masks=poolm, policies=[st[2] for st in settings], explore_caps=CAP, lams=lam,
                         delays=fb_arg("delays", 0), p_observe=fb_arg("p_observe", 1.0), flips=fb_arg("flips", 0.0))
    jax.block_until_ready(r)
    replay_s = time.perf_counter() - t0
    choice, error, arrived = np.asarray(r.choice), np.asarray(r.error), np.asarray(r.arrived)
    u_stream = u_te[order]  # [T, m]
    u_full_stream = u_stream[np.arange(n_requests), full_te[order]]
    cl_stream = cl_te[order]
    out = {"dataset": name, "seed": seed, "new": names[new], "lam": lam, "full_gain": float(U_full - U_zero),
           "replay_seconds": replay_s, "settings": {}, "area_full": area(psi.T),
           "area_zero": area(1.0 - quality[va].mean(0)[None], ur.make_units(np.zeros(len(te), np.int32), n_units=1,
                                                                        quality=quality[te], costs=cost)),
           "area_without_new": area(psi.T, pool=others)}
    checkpoints = np.arange(EVERY, n_requests + 1, EVERY)
    for s, (label, start, pol, kw, bad) in enumerate(settings):
        row = {}
        if bad:
            row["traffic_share"] = float((choice[s] == m).mean())
            row["traffic_share_last_1000"] = float((choice[s, -1000:] == m).mean())
            out["settings"][label] = row
            continue
        u_on = u_stream[np.arange(n_requests), choice[s]]
        reg = np.cumsum(u_full_stream - u_on)
        row["regret"] = float(reg[-1])
        row["regret_path"] = reg[checkpoints - 1].round(2).tolist()
        # The new LLM's labels over time: an outcome arrives before request t + 1 + delay.
        land = np.arange(n_requests) + 1 + kw.get("delays", 0)
        got = arrived[s] & (choice[s] == new)
        c0, s0 = c0s[s][new], s0s[s][new]
        shares, outcomes = [], []
        cl_stream = cl_te[order]
        # The estimate after the j-th arrived outcome, j on GRID (outcomes in the order they land).
        idx = np.flatnonzero(got)
        idx = idx[np.argsort(land[idx], kind="stable")]
        grid_share = {}
        for j in GRID:
            if j > idx.size:
                break
            sel_j = idx[:j]
            cn = c0 + np.bincount(cl_stream[sel_j], minlength=k)
            se = s0 + np.bincount(cl_stream[sel_j], weights=error[s][sel_j], minlength=k)
            grid_share[j] = float(share_of_gain(est.estimate(cn, se)[0]))
        reach_g = [j for j, sh in grid_share.items() if sh >= 0.8]
        row["grid_share"] = {str(j): round(v, 4) for j, v in grid_share.items()}
        row["outcomes_to_80_grid"] = reach_g[0] if reach_g else None
        row["outcomes_to_80_grid_stays"] = stays_at_80(grid_share)

        def estimate_by(t, got=got, land=land, c0=c0, s0=s0, s=s):  # the new LLM's row from the outcomes landed by request t
            sel = got & (land <= t)
            return est.estimate(c0 + np.bincount(cl_stream[sel], minlength=k),
                                s0 + np.bincount(cl_stream[sel], weights=error[s][sel], minlength=k))[0]

        for cp in checkpoints:
            shares.append(share_of_gain(estimate_by(cp)))
            outcomes.append(int((got & (land <= cp)).sum()))
        reach = [o for sh, o in zip(shares, outcomes) if sh >= 0.8]
        row["share_path"] = np.round(shares, 4).tolist()
        row["outcomes_to_80"] = reach[0] if reach else None
        row["outcomes_total"] = outcomes[-1]
        if label in AREA_SETTINGS:  # the learner's rule at the end of each window, its whole curve on the test prompts
            row["area_windows"] = [round(area_of(estimate_by(w)), 5) for w in range(WINDOW, n_requests + 1, WINDOW)]
        row["new_traffic"] = float((choice[s] == new).mean())
        if label in ("thompson 0", "optimistic 0", "greedy 0"):
            wins = np.isin(cl_stream, np.unique(cl_te[full_te == new]))
            window = wins & (np.arange(n_requests) >= 500) & (np.arange(n_requests) < 1000)
            row["served_where_best_500_1000"] = float((choice[s][window] == new).mean()) if window.any() else None
            first = wins & (np.arange(n_requests) < 1000)
            row["served_where_best_first_1000"] = float((choice[s][first] == new).mean()) if first.any() else None
            hit = np.flatnonzero(wins & (choice[s] == new))
            row["first_served_where_best"] = int(hit[0]) if hit.size else None
        out["settings"][label] = row
    # LiteLLM-style Beta-Thompson, and offline onboarding.
    for start in STARTS:
        c0, s0 = start_labels(start, 0)
        picks = litellm_thompson(c0.sum(1), s0.sum(1), q_all[te][order][:, :m], cost, lam, everyone,
                                 np.random.default_rng([seed, 7, start]))
        out["settings"][f"litellm {start}"] = {"regret": float(np.cumsum(u_full_stream - u_stream[np.arange(n_requests), picks])[-1]),
                                               "regret_path": np.cumsum(u_full_stream - u_stream[np.arange(n_requests), picks])[checkpoints - 1].round(2).tolist(),
                                               "new_traffic": float((picks == new).mean())}
    offline = {}
    for n_lab in OFFLINE_N + (out["settings"]["thompson 0"]["outcomes_total"],):
        n_lab = min(n_lab, len(va))
        c0, s0 = start_labels(n_lab, 1)
        rows = psi.copy()
        rows[new] = est.estimate(c0[new], s0[new])[0]
        ch = rule_choice(rows, cl_te, cost, lam, everyone)
        reg = np.cumsum(u_full_stream - u_stream[np.arange(n_requests), ch[order]])
        offline[n_lab] = {"share": float(share_of_gain(rows[new])), "regret": float(reg[-1]),
                          "regret_path": reg[checkpoints - 1].round(2).tolist()}
    # Offline on the same grid as online: j random validation labels (first grid value reaching 0.8).
    off_grid = {}
    for j in GRID:
        if j > len(va):
            break
        c0, s0 = start_labels(j, 1)
        off_grid[j] = float(share_of_gain(est.estimate(c0[new], s0[new])[0]))
    reach_g = [j for j, sh in off_grid.items() if sh >= 0.8]
    out["offline_grid_share"] = {str(j): round(v, 4) for j, v in off_grid.items()}
    out["offline_labels_to_80_grid"] = reach_g[0] if reach_g else None
    out["offline_labels_to_80_grid_stays"] = stays_at_80(off_grid)
    out["area_offline"] = {str(j): round(area_of(est.estimate(*(a[new] for a in start_labels(j, 1)))[0]), 5)
                           for j in LABEL_FIRST if j <= len(va)}
    # "Label first": the first n requests go to the new LLM (its labels, on the stream's prompts), then
    # every request is routed by the rule at the estimate from those n labels; regret counts all requests.
    q_stream = quality[te][order]
    out["label_first"] = {}
    budgets = dict.fromkeys(LABEL_FIRST)
    if out["offline_labels_to_80_grid"] is not None:
        budgets = {"labels_to_80": out["offline_labels_to_80_grid"], **{str(b): b for b in LABEL_FIRST}}
    else:
        budgets = {str(b): b for b in LABEL_FIRST}
    for key, n_lab in budgets.items():
        n_lab = min(n_lab, n_requests)
        cn = np.bincount(cl_stream[:n_lab], minlength=k).astype(np.float32)
        se = np.bincount(cl_stream[:n_lab], weights=1.0 - q_stream[:n_lab, new], minlength=k).astype(np.float32)
        rows = psi.copy()
        rows[new] = est.estimate(cn, se)[0]
        ch = rule_choice(rows, cl_te, cost, lam, everyone)[order]
        ch[:n_lab] = new
        reg = np.cumsum(u_full_stream - u_stream[np.arange(n_requests), ch])
        out["label_first"][key] = {"n": int(n_lab), "regret": float(reg[-1]), "regret_path": reg[checkpoints - 1].round(2).tolist(),
                                   "share": float(share_of_gain(rows[new]))}
    reach = [n_lab for n_lab in sorted(offline) if n_lab in OFFLINE_N and offline[n_lab]["share"] >= 0.8]
    out["offline"] = {str(kk): {"share": round(v["share"], 4), "regret": round(v["regret"], 2)} for kk, v in offline.items()}
    out["offline_labels_to_80"] = reach[0] if reach else None
    same = offline[min(out["settings"]["thompson 0"]["outcomes_total"], len(va))]
    out["settings"]["offline (same n, labels not charged)"] = {"regret": same["regret"], "regret_path": same["regret_path"]}
    lf = out["label_first"].get("labels_to_80", {"regret": None, "regret_path": None})
    out["settings"]["label first (n = offline labels to 80%)"] = {"regret": lf["regret"], "regret_path": lf["regret_path"]}
    for b in LABEL_FIRST:
        out["settings"][f"label first (n = {b})"] = {k2: out["label_first"][str(b)][k2] for k2 in ("regret", "regret_path")}
    return out


def throughput(n_requests: int) -> dict:
    """Settings x requests per second: the vmapped scan against a Python loop of `ur.OnlineLearner`."""
    rng = np.random.default_rng(0)
    m, k, n = 8, 10, 2000
    rate = rng.uniform(0.1, 0.7, (m, k)).astype(np.float32)
    clusters = rng.integers(0, k, n)
    quality = (rng.random((n, m)) > rate[:, clusters].T).astype(np.float32)
    counts = np.full((m, k), 40.0, np.float32)
    sums = np.round(counts * rate).astype(np.float32)
    est = ur.fit_estimator(METHOD, counts[:-1], sums[:-1])
    counts[-1], sums[-1] = 0.0, 0.0
    cost = np.linspace(0.1, 1.0, m).astype(np.float32)
    out = {"n_requests": n_requests, "n_models": m, "n_clusters": k, "method": METHOD}
    for S in (16, 64):
        orders = rng.integers(0, n, (S, n_requests))
        new = np.zeros((S, m), bool)
        new[:, -1] = True
        fn = lambda: ur.replay_online(est, sums / np.maximum(counts, 1), cost, quality, clusters, orders, new,
                                      seeds=np.arange(S), counts0=counts, error_sums0=sums, explore_caps=CAP, lams=0.1)
        jax.block_until_ready(fn())
        t = time.perf_counter()
        jax.block_until_ready(fn())
        out[f"scan_{S}"] = S * n_requests / (time.perf_counter() - t)
    pool = ur.Pool(tuple(f"m{i}" for i in range(m)), cost, sums / np.maximum(counts, 1), counts, sums)
    learner = ur.OnlineLearner(pool, est, ["m7"], policy="thompson", lam=0.1, explore_cap=CAP)
    learner.choose(0)  # compile outside the timing
    loop = 500
    t = time.perf_counter()
    for i in rng.integers(0, n, loop):
        d = learner.choose(int(clusters[i]))
        learner.record(d.request_id, d.model, float(quality[i, d.index]))
    out["python_loop"] = loop / (time.perf_counter() - t)
    out["speedup_64"] = out["scan_64"] / out["python_loop"]
    return out


def _ci(values):
    v = np.asarray([x for x in values if x is not None], np.float64)
    if v.size == 0:
        return None
    half = 1.96 * v.std(ddof=1) / np.sqrt(v.size) if v.size > 1 else float("nan")
    return {"mean": float(v.mean()), "ci": float(half), "median": float(np.median(v)), "n": int(v.size)}


def _paired(a, b, n_boot=2000):
    """Per-seed `a - b` (None: not reached, taken as +inf for wins/ties/losses): mean, bootstrap 95% interval
    over the seeds where both are finite, and wins (a < b) / ties / losses."""
    inf = float("inf")
    a = [inf if v is None else float(v) for v in a]
    b = [inf if v is None else float(v) for v in b]
    d = np.asarray([x - y for x, y in zip(a, b) if np.isfinite(x) and np.isfinite(y)])
    out = {"wins": sum(x < y for x, y in zip(a, b)), "ties": sum(x == y for x, y in zip(a, b)),
           "losses": sum(x > y for x, y in zip(a, b)), "n": int(d.size)}
    if d.size:
        boot = np.random.default_rng(0).choice(d, (n_boot, d.size)).mean(1)
        out.update(mean=float(d.mean()), median=float(np.median(d)), lo=float(np.quantile(boot, 0.025)),
                   hi=float(np.quantile(boot, 0.975)))
    return out


def summarise(results: list[dict]) -> dict:
    out = {}
    for ds in dict.fromkeys(r["dataset"] for r in results):
        rs = [r for r in results if r["dataset"] == ds]
        labels = list(rs[0]["settings"])
        # A share of the full-label gain needs a gain: seeds where full-label UniRoute does not beat
        # ZeroRouter on the test prompts are left out of the 80% measures (counted in `no_gain`).
        gained = [r for r in rs if r["full_gain"] > 0]
        entry = {"seeds": len(rs), "new_llms": sorted({r["new"] for r in rs}), "full_gain": _ci([r["full_gain"] for r in rs]),
                 "no_gain": len(rs) - len(gained),
                 "offline_labels_to_80": _ci([r["offline_labels_to_80"] for r in gained]),
                 "offline_never_80": sum(r["offline_labels_to_80"] is None for r in gained), "settings": {}}
        off80 = [r.get("offline_labels_to_80_grid") for r in gained]
        entry["grid"] = {"offline_labels_to_80": _ci(off80), "offline_never_80": sum(v is None for v in off80),
                         "online": {}, "regret_vs_label_first": {}}
        off80s = [r.get("offline_labels_to_80_grid_stays") for r in gained]
        entry["grid"]["offline_labels_to_80_stays"] = _ci(off80s)
        entry["grid"]["offline_never_80_stays"] = sum(v is None for v in off80s)
        for lab in AREA_SETTINGS:
            on80 = [r["settings"][lab].get("outcomes_to_80_grid") for r in gained]
            on80s = [r["settings"][lab].get("outcomes_to_80_grid_stays") for r in gained]
            entry["grid"]["online"][lab] = {"outcomes_to_80": _ci(on80), "never_80": sum(v is None for v in on80),
                                            "minus_offline": _paired(on80, off80),
                                            "outcomes_to_80_stays": _ci(on80s), "never_80_stays": sum(v is None for v in on80s),
                                            "minus_offline_stays": _paired(on80s, off80s)}
        if "area_full" in rs[0]:  # runs stored before the Area measure have none
            entry["area"] = {"full labels": _ci([r["area_full"] for r in rs]), "ZeroRouter": _ci([r["area_zero"] for r in rs]),
                             "pool without the new LLM": _ci([r["area_without_new"] for r in rs]),
                             **{f"offline {j} labels": _ci([r["area_offline"].get(str(j)) for r in rs]) for j in LABEL_FIRST},
                             "windows": {lab: [_ci(col) for col in zip(*[r["settings"][lab]["area_windows"] for r in rs])]
                                         for lab in AREA_SETTINGS},
                             "window_minus_full": {lab: [_paired(col, [r["area_full"] for r in rs]) for col in
                                                         zip(*[r["settings"][lab]["area_windows"] for r in rs])]
                                                   for lab in AREA_SETTINGS}}
        for lf in [k2 for k2 in labels if k2.startswith("label first")]:
            for lab in ("thompson 0", "thompson 20"):
                both = [r for r in rs if r["settings"][lf]["regret"] is not None]
                entry["grid"]["regret_vs_label_first"][f"{lab} - {lf}"] = _paired(
                    [r["settings"][lab]["regret"] for r in both], [r["settings"][lf]["regret"] for r in both])
        for lab in labels:
            rows = [r["settings"][lab] for r in rs]
            e = {}
            for key in ("regret", "outcomes_total", "new_traffic", "traffic_share", "served_where_best_500_1000",
                        "served_where_best_first_1000", "first_served_where_best"):
                if key in rows[0]:
                    e[key] = _ci([row[key] for row in rows])
            if "outcomes_to_80" in rows[0]:
                e["outcomes_to_80"] = _ci([r["settings"][lab]["outcomes_to_80"] for r in gained])
                e["never_80"] = sum(r["settings"][lab]["outcomes_to_80"] is None for r in gained)
            if "served_where_best_500_1000" in rows[0]:
                vals = [row["served_where_best_500_1000"] for row in rows if row["served_where_best_500_1000"] is not None]
                e["seeds_served_where_best"] = f"{sum(v >= 0.5 for v in vals)}/{len(vals)}"
                vals = [row["served_where_best_first_1000"] for row in rows if row["served_where_best_first_1000"] is not None]
                e["seeds_traffic_first_1000"] = f"{sum(v >= 0.1 for v in vals)}/{len(vals)}"
            if "traffic_share" in rows[0]:
                e["seeds_at_most_2pct"] = f"{sum(row['traffic_share'] <= 0.02 for row in rows)}/{len(rows)}"
            entry["settings"][lab] = e
        out[ds] = entry
    return out


def _fmt(c, digits=1):
    if c is None:
        return "-"
    return f"{c['mean']:.{digits}f} ± {c['ci']:.{digits}f}"


def markdown(summary: dict, thr: dict, args) -> str:
    lines = ["# Learning a new LLM from served traffic", "",
             f"`python benchmarks/online_learning.py --seeds {args.seeds}{' --datasets ' + args.datasets if args.datasets != ','.join(DATASETS) else ''}`: "
             f"{args.requests} requests of a stationary test stream per seed, K = {args.k}, estimator `{METHOD}`, "
             f"explore cap {CAP:g}. Mean ± 95% interval half-width over seeds (normal approximation). Regret: "
             "cumulative utility (`quality - lam * cost`) lost against full-label UniRoute on the same stream. "
             "Outcomes / labels to 80%: see the module docstring; `never` counts seeds that did not reach 80% "
             "(outcomes: within the horizon; labels: within the largest grid value, 800), left out of the mean. "
             "`offline (same n, labels not charged)` labels as many random validation prompts up front as `thompson 0` "
             "received outcomes; the cost of those labels is not charged to its regret. `label first (n = ...)` sends "
             "the first n requests of the stream to the new LLM as its labels (their utility lost is in its regret), "
             "then routes by the rule at the estimate from them; n = the seed's offline labels to 80% on the shared "
             "grid, or fixed. Streams draw the test prompts with "
             "replacement: on alpacaeval (805 prompts: about 240 test and 80 validation prompts) each test prompt "
             "recurs about 20 times, so outcomes learnt online are partly on the prompts scored, against full "
             "labels from 80 prompts; a negative regret there means online beats full labels on that stream.", ""]
    for ds, e in summary.items():
        lines += [f"## {ds}", "", f"{e['seeds']} seeds; new LLM(s): {', '.join(e['new_llms'])}; full-label gain over "
                  f"ZeroRouter {_fmt(e['full_gain'], 4)} utility per request (not positive in {e['no_gain']} seeds, left out of "
                  f"the 80% measures); offline labels to 80%: {_fmt(e['offline_labels_to_80'])} "
                  f"(never: {e['offline_never_80']}).", "",
                  f"| method | regret at {args.requests:,} | new-LLM outcomes to 80%, checked every {EVERY} requests (never) | outcomes received | traffic to new LLM |",
                  "|---|---|---|---|---|"]
        for lab, s in e["settings"].items():
            if "regret" not in s:
                continue
            never = f" ({s['never_80']})" if "never_80" in s else ""
            lines.append(f"| {lab} | {_fmt(s['regret'])} | {_fmt(s.get('outcomes_to_80'))}{never} | "
                         f"{_fmt(s.get('outcomes_total'))} | {_fmt(s.get('new_traffic'), 3)} |")
        g = e.get("grid")
        if g:
            lines += ["", f"Same grid for both sides (new-LLM label counts {', '.join(map(str, GRID[:12]))}, ...): offline "
                      f"labels to 80% {_fmt(g['offline_labels_to_80'])} (never: {g['offline_never_80']}). Paired per seed, "
                      "online minus offline (mean, bootstrap 95% interval over seeds where both reach 80%; wins = "
                      "online needs fewer, a side that never reaches 80% counts as infinite):", "",
                      "| online method | outcomes to 80% (never) | online - offline | 95% interval | wins / ties / losses |",
                      "|---|---|---|---|---|"]
            for lab, o in g["online"].items():
                d = o["minus_offline"]
                lines.append(f"| {lab} | {_fmt(o['outcomes_to_80'])} ({o['never_80']}) | {d.get('mean', float('nan')):.1f} | "
                             f"[{d.get('lo', float('nan')):.1f}, {d.get('hi', float('nan')):.1f}] | "
                             f"{d['wins']} / {d['ties']} / {d['losses']} |")
            lines += ["", f"Counted from where the share stays at or above 0.8 at every larger count of the grid (not only first "
                      f"touches it): offline {_fmt(g.get('offline_labels_to_80_stays'))} labels (never: "
                      f"{g.get('offline_never_80_stays', '-')}); online - offline, paired:", "",
                      "| online method | outcomes to 80%, stays (never) | online - offline | 95% interval | wins / ties / losses |",
                      "|---|---|---|---|---|"]
            for lab, o in g["online"].items():
                if "minus_offline_stays" not in o:
                    continue
                d = o["minus_offline_stays"]
                lines.append(f"| {lab} | {_fmt(o['outcomes_to_80_stays'])} ({o['never_80_stays']}) | {d.get('mean', float('nan')):.1f} | "
                             f"[{d.get('lo', float('nan')):.1f}, {d.get('hi', float('nan')):.1f}] | "
                             f"{d['wins']} / {d['ties']} / {d['losses']} |")
            lines += ["", "Regret at the horizon, paired per seed against \"label first\" onboarding (its first n requests "
                      "sent to the new LLM as labels, charged to its regret; wins = online regret lower):", "",
                      "| pair | seeds | mean difference | 95% interval | wins / ties / losses |", "|---|---|---|---|---|"]
            for lab, d in g["regret_vs_label_first"].items():
                lines.append(f"| {lab} | {d['n']} | {d.get('mean', float('nan')):.1f} | [{d.get('lo', float('nan')):.1f}, "
                             f"{d.get('hi', float('nan')):.1f}] | {d['wins']} / {d['ties']} / {d['losses']} |")
        a = e.get("area")
        if a:
            ends = list(range(WINDOW, args.requests + 1, WINDOW))
            show = [i for i, w in enumerate(ends) if w in (500, 1000, 2000, args.requests)]
            lines += ["", f"Area of the learner's rule (its whole curve, lam swept, on the test prompts) at the end of "
                      f"windows of {WINDOW} requests, against full labels (paired difference, bootstrap 95% interval). "
                      f"Full labels {_fmt(a['full labels'], 4)}; ZeroRouter {_fmt(a['ZeroRouter'], 4)}; the pool without "
                      f"the new LLM {_fmt(a['pool without the new LLM'], 4)}; offline with "
                      + ", ".join(f"{j} labels {_fmt(a[f'offline {j} labels'], 4)}" for j in LABEL_FIRST) + ".", "",
                      "| method | " + " | ".join(f"after {ends[i]:,}" for i in show) + " |", "|---|" + "---|" * len(show)]
            for lab, cols in a["windows"].items():
                diffs = a["window_minus_full"][lab]
                lines.append(f"| {lab} | " + " | ".join(
                    f"{cols[i]['mean']:.4f} ({diffs[i].get('mean', float('nan')):+.4f} [{diffs[i].get('lo', float('nan')):+.4f}, "
                    f"{diffs[i].get('hi', float('nan')):+.4f}])" for i in show) + " |")
        lines += ["", "Zero-label checks:", ""]
        for lab, s in e["settings"].items():
            if "served_where_best_500_1000" in s:
                lines.append(f"- {lab}: in the new LLM's winning clusters (where full-label UniRoute picks it), the "
                             f"share of the first 1,000 requests served to it {_fmt(s['served_where_best_first_1000'], 3)}, "
                             f"seeds >= 10%: {s['seeds_traffic_first_1000']}; first such request served to it "
                             f"{_fmt(s['first_served_where_best'], 0)} (median {s['first_served_where_best']['median'] if s['first_served_where_best'] else '-'}); "
                             f"share of requests 500-1,000 {_fmt(s['served_where_best_500_1000'], 3)}, seeds >= 50%: "
                             f"{s['seeds_served_where_best']}")
            if "traffic_share" in s:
                lines.append(f"- {lab}: share of the {args.requests:,} requests {_fmt(s['traffic_share'], 4)}; seeds <= 2%: "
                             f"{s['seeds_at_most_2pct']}")
        lines.append("")
    lines += ["## Replay throughput", "",
              f"Settings x requests per second ({thr['n_requests']} requests, {thr['n_models']} models, K = "
              f"{thr['n_clusters']}, `{thr['method']}`, Thompson): vmapped scan {thr['scan_16']:.3g} (16 settings), "
              f"{thr['scan_64']:.3g} (64 settings); Python loop of `ur.OnlineLearner` {thr['python_loop']:.3g}; "
              f"ratio {thr['speedup_64']:.0f}x (same run, 2 shared CPU cores).", ""]
    return "\n".join(lines)


def _panels(results: list[dict], path: Path, ylabel: str, draw) -> None:
    """One panel per dataset (`draw(ax, its runs)`), titled with its seed count, written to `path`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    datasets = list(dict.fromkeys(r["dataset"] for r in results))
    if not datasets:
        return
    fig, axes = plt.subplots(1, len(datasets), figsize=(3.6 * len(datasets), 3.0), squeeze=False)
    for ax, ds in zip(axes[0], datasets):
        rs = [r for r in results if r["dataset"] == ds]
        draw(ax, rs)
        ax.set_title(f"{ds} ({len(rs)} seeds)", fontsize=8)
        ax.set_xlabel("requests", fontsize=8)
        ax.tick_params(labelsize=7)
    axes[0, 0].set_ylabel(ylabel, fontsize=8)
    axes[0, 0].legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot(results: list[dict], path: Path, n_requests: int) -> None:
    """Mean cumulative regret against full labels per dataset."""
    x = np.arange(EVERY, n_requests + 1, EVERY)
    show = {"thompson 0": "C0", "optimistic 0": "C2", "greedy 0": "C3", "litellm 0": "C1", "offline (same n, labels not charged)": "C4",
            "label first (n = 50)": "C5",
            "thompson 20": "C0"}

    def draw(ax, rs):
        for lab, col in show.items():
            if lab not in rs[0]["settings"]:  # runs stored before a setting existed
                continue
            p = np.asarray([r["settings"][lab]["regret_path"] for r in rs])
            ax.plot(x, p.mean(0), color=col, ls="--" if lab.endswith("20") else "-", lw=1.2, label=lab)

    _panels(results, path, "cumulative regret vs full labels", draw)


def plot_area(results: list[dict], path: Path, n_requests: int) -> None:
    """Mean Area of the learner's rule per window, with full labels, ZeroRouter and the pool without the new LLM."""
    x = np.arange(WINDOW, n_requests + 1, WINDOW)

    def draw(ax, rs):
        for lab, col in zip(AREA_SETTINGS, ("C0", "C2", "C3", "C0")):
            p = np.asarray([r["settings"][lab]["area_windows"] for r in rs])
            half = 1.96 * p.std(0, ddof=1) / np.sqrt(len(rs)) if len(rs) > 1 else 0 * p[0]
            ax.plot(x, p.mean(0), color=col, ls="--" if lab.endswith("20") else "-", lw=1.2, label=lab)
            ax.fill_between(x, p.mean(0) - half, p.mean(0) + half, color=col, alpha=0.12, lw=0)
        for key, lab, col in (("area_full", "full labels", "k"), ("area_zero", "ZeroRouter", "C7"),
                              ("area_without_new", "without the new LLM", "C5")):
            ax.axhline(np.mean([r[key] for r in rs]), color=col, ls=":", lw=1.0, label=lab)

    _panels([r for r in results if "area_full" in r], path, "Area of the learner's rule", draw)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", default=",".join(DATASETS))
    parser.add_argument("--seeds", type=int, default=30)
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--quick", action="store_true", help="synthetic, 2 seeds")
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--resummarise", action="store_true",
                        help="rewrite the summary, table and plot from the runs stored in --out/summary.json")
    args = parser.parse_args(argv)
    if args.resummarise:
        stored = json.loads((args.out / "summary.json").read_text())
        for key in ("seeds", "requests", "k", "datasets"):
            setattr(args, key, type(getattr(args, key))(stored["args"][key]))
        return _write(stored["runs"], stored["throughput"], args)
    if args.quick:
        args.datasets, args.seeds = "synthetic", 2
    args.out.mkdir(parents=True, exist_ok=True)
    results: list[dict] = []
    t0 = time.perf_counter()
    try:
        data = {}
        for name in args.datasets.split(","):
            data[name] = load(name)
            print(f"loaded {name} ({time.perf_counter() - t0:.0f} s)", flush=True)
        for seed in range(args.seeds):  # seeds outermost: an interrupted run keeps every dataset at similar depth
            for name in data:
                results.append(run_seed(name, data[name], seed, args.requests, args.k))
                s = results[-1]["settings"]
                print(f"  {name} seed {seed}: regret thompson {s['thompson 0']['regret']:.1f}, greedy "
                      f"{s['greedy 0']['regret']:.1f}, litellm {s['litellm 0']['regret']:.1f} "
                      f"({time.perf_counter() - t0:.0f} s)", flush=True)
    except KeyboardInterrupt:
        print("interrupted: writing what finished", flush=True)
    if not results:
        return 1
    done = {}
    for r in results:
        done[r["dataset"]] = done.get(r["dataset"], 0) + 1
    args.seeds = min(done.values())
    results = [r for r in results if r["seed"] < args.seeds]  # every dataset on the same seeds
    return _write(results, throughput(2000), args)


def _write(results: list[dict], thr: dict, args) -> int:
    # The runs first, so that a failing summary loses nothing: `--resummarise` reads them back.
    write_text(args.out / "summary.json", json.dumps({"summary": None, "throughput": thr,
                                                      "args": {k: str(v) for k, v in vars(args).items()},
                                                      "runs": results}, separators=(",", ":")))
    summary = summarise(results)
    write_text(args.out / "summary.json", json.dumps({"summary": summary, "throughput": thr,
                                                      "args": {k: str(v) for k, v in vars(args).items()},
                                                      "runs": results}, separators=(",", ":")))
    write_text(args.out / "online_learning.md", markdown(summary, thr, args))
    plot(results, args.out / "regret.png", args.requests)
    plot_area(results, args.out / "area_windows.png", args.requests)
    print(markdown(summary, thr, args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
