"""Runs every numerical check of the theory package and draws its figures.

    python -m theory.plots --out DIR            # full run (a few minutes on 2 CPU cores)
    python -m theory.plots --out DIR --quick    # small run (well under a minute of compute)

Writes PNGs, `summary.json` and `summary.md` to DIR and prints the summary. Every number comes
from instances drawn with explicit keys from `--seed`, so a run is reproducible.

Each check ends in a verdict (`verdicts`): holds or fails, with its margin (slack when positive,
size of the violation when negative). The process exits with status 1 when a check that
`theory/README.md` states as a theorem fails; the paper's own readings of Proposition 2, which are
not theorems, are reported but do not change the status.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from typing import Any

import jax
import jax.numpy as jnp
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

import uniroute_jax as ur  # noqa: E402
from theory import bayes, bounds, experiments, meta, online, pacing  # noqa: E402
from theory.baselines import prompt_agnostic_frontier  # noqa: E402

HET_GRID = (0.0, 0.25, 0.5, 1.0, 1.5, 2.0, 3.0)
COST_POWERS = (0.25, 0.5, 1.0, 2.0)
POOL_SIZES = (2, 4, 8, 12)
FRONTIER_HETS = (0.0, 0.5, 1.5, 3.0)
EXCESS_FLOOR = 1e-4
PROP1_TOL = 1e-6
"""Proposition 1's residuals are compared with float32's resolution of the router's argmin: the
choices are made in float32, the frontier and the expectations in float64."""
"""Ratios bound / excess are summarised over instances whose excess exceeds this (a ratio over an
excess of 1e-7 says nothing about tightness)."""

READINGS = {
    "paper_own": "paper, own cluster: E max_h Delta_k(x)",
    "paper_all": "paper, literal max over h and k",
    "corrected": "corrected: 2 E max_h |Delta|",
    "range_bound": "range: E (max_h Delta - min_h Delta)",
    "one_sided": "one-sided (exact): E max_h (Psi* - p)",
}
COLORS = {"excess": "black", "paper_own": "tab:red", "paper_all": "tab:purple", "corrected": "tab:blue",
          "range_bound": "tab:cyan", "one_sided": "tab:green"}


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """Sizes of one run."""

    n_instances: int  # instances per accuracy regime (each is clustered every way)
    n_pop: int  # population prompts per instance
    n_train: int  # k-means training prompts per instance
    max_models: int  # LLM table size (pools are its first 2..12 rows)
    ks: tuple[int, ...]  # k-means K values (K* = 8)
    n_fs_instances: int  # instances in the finite-sample study
    n_draws: int  # validation sets per instance
    n_vals: tuple[int, ...]  # validation sizes
    deltas: tuple[float, ...]  # failure probabilities
    frontier_n_val: int  # validation prompts of the frontier figure
    k_nn: int  # neighbours of the K-NN router
    n_dyn_pools: int  # pools in the dynamic-pool check of Proposition 1
    n_random_routers: int  # random routers compared with the LP frontier


FULL = RunConfig(n_instances=768, n_pop=2000, n_train=1000, max_models=12, ks=(2, 4, 8, 16, 32), n_fs_instances=48,
                 n_draws=100, n_vals=(25, 50, 100, 200, 400, 800, 1600, 3200),
                 deltas=(0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 0.8), frontier_n_val=400, k_nn=10, n_dyn_pools=8,
                 n_random_routers=1000)
QUICK = RunConfig(n_instances=64, n_pop=1000, n_train=500, max_models=12, ks=(4, 8), n_fs_instances=12,
                  n_draws=40, n_vals=(50, 200, 800), deltas=(0.05, 0.1, 0.5), frontier_n_val=200, k_nn=10,
                  n_dyn_pools=4, n_random_routers=300)

CONFIG = ur.WorldConfig()
REGIMES = {"easy": 0.0, "hard": -2.5}
"""Ability shifts of two accuracy regimes: the default generator (LLMs mostly right) and one with
`ability_mean` lowered from 1 to -1.5 (LLMs mostly wrong, error probabilities skewed the other way)."""


# ------------------------------------------------------------------------------ studies


def _knobs(rng: np.random.Generator, n: int, ability_shift: float) -> meta.InstanceSettings:
    het = rng.choice(HET_GRID, n)
    power = rng.choice(COST_POWERS, n)
    pool = rng.choice(POOL_SIZES, n)
    # The first instances are the frontier figure's: one per heterogeneity, a pool of 8, unit spread.
    nf = len(FRONTIER_HETS)
    het[:nf], power[:nf], pool[:nf] = FRONTIER_HETS, 1.0, 8
    return meta.settings(het, power, pool, np.full(n, ability_shift))


def _np(tree):
    return jax.tree.map(np.asarray, tree)


def run_prop2(run: RunConfig, key: jax.Array, rng: np.random.Generator, log) -> dict[str, Any]:
    """Samples both regimes, clusters every way, returns per-instance records and the batches."""
    lams = jnp.asarray(experiments.default_lams())
    records = []
    batches = {}
    for r_i, (regime, shift) in enumerate(REGIMES.items()):
        k_inst, k_km = jax.random.split(jax.random.fold_in(key, r_i))
        knobs = _knobs(rng, run.n_instances, shift)
        inst = experiments.sample_instances(jax.random.split(k_inst, run.n_instances), knobs, config=CONFIG,
                                            n_pop=run.n_pop, n_train=run.n_train, max_models=run.max_models)
        clusterings = {"true": experiments.true_clusterings(inst)}
        for k in run.ks:
            clusterings[f"kmeans{k}"] = experiments.kmeans_clusterings(jax.random.split(k_km, run.n_instances), inst,
                                                                       n_clusters=k)
        batches[regime] = (inst, clusterings)
        kn = _np(knobs)
        for name, clus in clusterings.items():
            terms = _np(experiments.prop2_study(inst, clus, lams))
            n_clusters = clus.weights.shape[-1]
            records.append(dict(regime=regime, clustering=name, n_clusters=n_clusters,
                                heterogeneity=kn.heterogeneity, cost_power=kn.cost_power, pool_size=kn.pool_size,
                                excess=terms.excess.max(axis=1), min_excess=terms.excess.min(axis=1),
                                **{r: getattr(terms, r) for r in READINGS}))
            log(f"prop2 {regime:4s} {name:8s} done")
    cat = {k: np.concatenate([np.broadcast_to(np.asarray(r[k]), r["excess"].shape) for r in records])
           for k in records[0]}
    return dict(records=cat, batches=batches)


def summarise_prop2(rec: dict[str, np.ndarray]) -> dict[str, Any]:
    excess = rec["excess"]
    pos = excess > EXCESS_FLOOR

    def stats(mask):
        out = {"n_instances": int(mask.sum()), "n_with_excess": int((mask & pos).sum())}
        for r in READINGS:
            b = rec[r]
            ratio = b[mask & pos] / excess[mask & pos]
            out[r] = {"hold_rate": float(np.mean(b[mask] >= excess[mask] - bounds.HOLD_TOL)),
                      "min_margin": float(np.min(b[mask] - excess[mask])) if mask.any() else None,
                      "median_ratio": float(np.median(ratio)) if ratio.size else None,
                      "min_ratio": float(ratio.min()) if ratio.size else None}
        return out

    everything = np.ones_like(pos)
    zero = (rec["clustering"] == "true") & (rec["heterogeneity"] == 0)
    summary = {"all": stats(everything),
               "zero_heterogeneity_true_clusters_max_excess": float(excess[zero].max()) if zero.any() else None,
               "min_excess_over_lambda": float(rec["min_excess"].min()),
               "by_regime": {g: stats(rec["regime"] == g) for g in np.unique(rec["regime"])},
               "by_clustering": {c: stats(rec["clustering"] == c) for c in np.unique(rec["clustering"])},
               "by_pool_size": {int(s): stats(rec["pool_size"] == s) for s in POOL_SIZES},
               "by_cost_power": {float(s): stats(rec["cost_power"] == s) for s in COST_POWERS},
               "by_heterogeneity": {float(h): stats(np.isclose(rec["heterogeneity"], h)) for h in HET_GRID}}
    return summary


def run_finite_sample(run: RunConfig, batches, key: jax.Array, log) -> dict[str, Any]:
    """Finite-sample study on the first instances of the easy regime, k-means with K = K*."""
    lams = jnp.asarray(experiments.default_lams())
    inst, clusterings = batches["easy"]
    k_star = CONFIG.n_components
    clus = clusterings.get(f"kmeans{k_star}", clusterings["true"])
    sub = lambda t: experiments.index_instance(t, slice(0, run.n_fs_instances))  # noqa: E731
    inst, clus = sub(inst), sub(clus)
    keys = jax.random.split(key, run.n_fs_instances)
    deltas = jnp.asarray(run.deltas, jnp.float32)
    out = {"n_val": [], "excess": [], "excess_population": [], "bound": [], "bound_max": [], "event": [],
           "oracle_bound": [], "population": [], "corrected": [], "max_abs_eps": []}
    for n_val in run.n_vals:
        t = _np(experiments.finite_sample_study(keys, inst, clus, jnp.asarray(n_val), lams, deltas,
                                                max_val=max(run.n_vals), n_draws=run.n_draws))
        out["n_val"].append(n_val)
        out["excess"].append(t.excess.max(axis=-1))  # [n_inst, n_draws]
        out["excess_population"].append(t.excess_population.max(axis=-1))
        for k in ("bound", "bound_max", "event", "oracle_bound", "population", "corrected", "max_abs_eps"):
            out[k].append(getattr(t, k))
        log(f"finite-sample N_val={n_val} done")
    return {k: np.asarray(v) for k, v in out.items()}


def summarise_finite(fs: dict[str, np.ndarray], run: RunConfig) -> dict[str, Any]:
    exc = fs["excess"][..., None]  # [n_vals, n_inst, n_draws, 1]
    held = fs["bound"] >= exc - bounds.HOLD_TOL  # [n_vals, n_inst, n_draws, n_deltas]
    held_max = fs["bound_max"] >= exc - bounds.HOLD_TOL
    oracle = fs["oracle_bound"] >= fs["excess"] - bounds.HOLD_TOL
    per = {}
    for i, n_val in enumerate(fs["n_val"]):
        pos = fs["excess"][i] > EXCESS_FLOOR
        per[int(n_val)] = {
            "coverage": {str(d): float(held[i, ..., j].mean()) for j, d in enumerate(run.deltas)},
            "coverage_max_form": {str(d): float(held_max[i, ..., j].mean()) for j, d in enumerate(run.deltas)},
            "hoeffding_event": {str(d): float(fs["event"][i, ..., j].mean()) for j, d in enumerate(run.deltas)},
            "oracle_bound_holds": float(oracle[i].mean()),
            "median_excess_estimated": float(np.median(fs["excess"][i])),
            "median_excess_population": float(np.median(fs["excess_population"][i])),
            "median_bound_delta_0.1": float(np.median(fs["bound"][i, ..., _delta_index(run, 0.1)])),
            "median_ratio_bound_over_excess_delta_0.1": (
                float(np.median(fs["bound"][i, ..., _delta_index(run, 0.1)][pos] / fs["excess"][i][pos]))
                if pos.any() else None),
        }
    return {"n_instances": run.n_fs_instances, "n_draws": run.n_draws, "by_n_val": per,
            "min_coverage_minus_nominal": float(min(
                held[:, ..., j].mean(axis=(1, 2)).min() - (1 - d) for j, d in enumerate(run.deltas))),
            # Coverage minus (nominal - 3 binomial standard errors of the draws): < 0 is a failure
            # the sampling noise of n_instances x n_draws draws does not explain.
            "min_coverage_minus_tolerance": float(min(
                held[:, ..., j].mean(axis=(1, 2)).min() - (1 - d) + 3 * np.sqrt(d * (1 - d) / held[0, ..., j].size)
                for j, d in enumerate(run.deltas))),
            "oracle_bound_min_margin": float(np.min(fs["oracle_bound"] - fs["excess"]))}


def _delta_index(run: RunConfig, delta: float) -> int:
    return int(np.argmin(np.abs(np.asarray(run.deltas) - delta)))


def _random_pool_choices(rng: np.random.Generator, mask: np.ndarray, n_routers: int) -> np.ndarray:
    """`[n_routers, n_units]` uniformly random allowed model per unit (unit masks `[n_units, n_models]`)."""
    counts = mask.sum(axis=1)
    rank = np.floor(rng.uniform(size=(n_routers, mask.shape[0])) * counts).astype(np.int64)  # 0..count-1
    # The rank-th allowed model of each unit: allowed model indices in order, padded at the end.
    order = np.argsort(~mask, axis=1, kind="stable")
    return order[np.arange(mask.shape[0])[None, :], rank]


def run_prop1(run: RunConfig, batches, key: jax.Array, log) -> dict[str, Any]:
    """Proposition 1 on dynamic pools over one instance, plus each frontier instance alone."""
    lams = np.asarray(experiments.default_lams(120))
    inst, _ = batches["easy"]
    out: dict[str, Any] = {"instances": []}
    for i, het in enumerate(FRONTIER_HETS):
        one = experiments.index_instance(inst, i)
        m = np.asarray(one.model_mask)
        chk = bayes.check_proposition1(np.asarray(one.p_error), np.asarray(one.costs), m, lams)
        out["instances"].append({"heterogeneity": het, "max_abs_frontier_gap": float(np.abs(chk.frontier_gap).max()),
                                 "max_abs_dual_gap": float(np.abs(chk.dual_gap).max())})
    # Dynamic pools: (pool, prompt) units with one shared lambda.
    one = experiments.index_instance(inst, 1)
    k_pool, k_rand, k_pert = jax.random.split(key, 3)
    masks = np.asarray(experiments.random_pool_masks(k_pool, run.n_dyn_pools, run.max_models))
    p, c, m = experiments.dynamic_pool_units(one, masks)
    chk = bayes.check_proposition1(p, c, m, lams)
    frontier = bayes.exact_frontier(p, c, m)
    # Random deterministic routers, and Bayes routers with 5% of their units switched at random:
    # the latter sit next to the frontier, where a flaw would show.
    n_units, n_models = p.shape
    rng = np.random.default_rng(int(jax.random.randint(k_rand, (), 0, 2 ** 31 - 1)))
    rand = _random_pool_choices(rng, m, run.n_random_routers)
    lam_set = lams[1::6]
    bayes_set = np.asarray(bayes.bayes_choices(jnp.asarray(p), jnp.asarray(c), jnp.asarray(m), jnp.asarray(lam_set)))
    base = bayes_set[rng.integers(0, lam_set.size, run.n_random_routers)]
    pert = np.where(rng.uniform(size=base.shape) < 0.05, rand, base)
    rows = np.arange(n_units)[None, :]
    cost_r, err_r = c[rand].mean(1), p[rows, rand].mean(1)
    cost_p, err_p = c[pert].mean(1), p[rows, pert].mean(1)
    gap_r = err_r - bayes.frontier_error(frontier, cost_r)
    gap_p = err_p - bayes.frontier_error(frontier, cost_p)
    # Splitting the budget equally between pools (one lambda per pool) instead of one shared lambda.
    pool_fronts = [bayes.exact_frontier(np.asarray(one.p_error), c, mk) for mk in masks]
    lo = max(f.cost[0] for f in pool_fronts)
    hi = max(f.cost[-1] for f in pool_fronts)
    grid = np.linspace(lo, hi, 200)
    split = np.mean([bayes.frontier_error(f, grid) for f in pool_fronts], axis=0)
    joint = bayes.frontier_error(frontier, grid)
    out["dynamic_pools"] = {
        "n_pools": run.n_dyn_pools, "n_units": int(n_units),
        "max_abs_frontier_gap": float(np.abs(chk.frontier_gap).max()),
        "max_abs_dual_gap": float(np.abs(chk.dual_gap).max()),
        "random_routers_min_gap": float(gap_r.min()), "perturbed_bayes_min_gap": float(gap_p.min()),
        "n_routers_beating_frontier": int((gap_r < -1e-9).sum() + (gap_p < -1e-9).sum()),
        "split_budget_max_extra_error": float((split - joint).max()),
        "split_budget_min_extra_error": float((split - joint).min()),
        "split_budget_extra_error_at": float(grid[np.argmax(split - joint)]),
    }
    log("prop1 done")
    plot_data = dict(frontier=frontier, chk=chk, lams=lams, cost_r=cost_r, err_r=err_r, cost_p=cost_p, err_p=err_p,
                     grid=grid, split=split, joint=joint)
    return {"summary": out, "plot": plot_data}


def run_frontiers(run: RunConfig, batches, key: jax.Array) -> list[dict[str, Any]]:
    lams = jnp.asarray(experiments.default_lams(160))
    inst, clusterings = batches["easy"]
    k_star = CONFIG.n_components
    clus = clusterings.get(f"kmeans{k_star}", clusterings["true"])
    panels = []
    for i, het in enumerate(FRONTIER_HETS):
        one, cl = experiments.index_instance(inst, i), experiments.index_instance(clus, i)
        curves = _np(experiments.frontier_curves(jax.random.fold_in(key, i), one, cl, lams, n_val=run.frontier_n_val,
                                                 k_nn=run.k_nn))
        p, c, m = np.asarray(one.p_error), np.asarray(one.costs), np.asarray(one.model_mask)
        hulls = {name: bayes.lower_hull(pts.cost, pts.error) for name, pts in curves._asdict().items()}
        panels.append(dict(heterogeneity=het, exact=bayes.exact_frontier(p, c, m), curves=curves, hulls=hulls,
                           agnostic=prompt_agnostic_frontier(p, c, m), max_cost=float(c[m].max())))
    return panels


# ------------------------------------------------------------------------------ figures


def _frontier_line(ax, fr: bayes.Frontier, scale: float, **kw):
    # Mixing is linear in cost, so evaluate on a dense grid rather than joining the vertices with
    # straight lines, which a log cost axis would bend. Right of the last vertex the error stays.
    x = np.unique(np.concatenate([fr.cost, np.geomspace(fr.cost[0], scale, 400)]))
    ax.plot(x / scale, bayes.frontier_error(fr, x), **kw)


def plot_frontiers(panels, path: str, run: RunConfig):
    fig, axes = plt.subplots(2, 2, figsize=(11, 9.5), sharey=False)
    for ax, pnl in zip(axes.ravel(), panels):
        s = pnl["max_cost"]
        _frontier_line(ax, pnl["agnostic"], s, color="0.55", lw=2, label="prompt-agnostic (best mix of single LLMs)")
        _frontier_line(ax, pnl["hulls"]["knn"], s, color="tab:orange", lw=1.6,
                       label=f"K-NN (k={run.k_nn}, {run.frontier_n_val} val. prompts)")
        _frontier_line(ax, pnl["hulls"]["cluster_estimated"], s, color="tab:blue", lw=1.6,
                       label=f"UniRoute K-means, Psi from {run.frontier_n_val} val. prompts")
        _frontier_line(ax, pnl["hulls"]["cluster_population"], s, color="tab:green", lw=1.6, ls="--",
                       label="UniRoute K-means, population Psi*")
        _frontier_line(ax, pnl["exact"], s, color="black", lw=2.2, label="Bayes frontier (exact LP)")
        b = pnl["curves"].bayes
        ax.plot(b.cost / s, b.error, "o", ms=2.5, color="black", alpha=0.6, label="Bayes router, lambda sweep")
        ax.set_xscale("log")
        ax.set_title(f"heterogeneity = {pnl['heterogeneity']:g}")
        ax.set_xlabel("expected cost per query (fraction of the priciest pool LLM, log scale)")
        ax.set_ylabel("expected error rate")
        ax.grid(alpha=0.3, which="both")
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=3, fontsize=9, frameon=False)
    fig.suptitle("Cost-error frontiers on one instance per heterogeneity (pool of 8 LLMs, K = K* = 8)\n"
                 "curves: best randomisation over each router's lambda sweep; all scored with exact P(error | x, h)")
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_prop1(data, summary, path: str):
    fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(12, 4.8))
    fr = data["frontier"]
    ax0.plot(data["cost_r"], data["err_r"], ".", ms=3, color="tab:red", alpha=0.4, label="random routers")
    ax0.plot(data["cost_p"], data["err_p"], ".", ms=3, color="tab:orange", alpha=0.5,
             label="Bayes routers with 5% of units switched")
    ax0.plot(fr.cost, fr.error, color="black", lw=2, label="exact LP frontier E*(B) (greedy, no lambda)")
    chk = data["chk"]
    ax0.plot(chk.sweep_cost, chk.sweep_error, "o", ms=4, mfc="none", color="tab:blue",
             label="Bayes router argmin p + lambda c (one lambda for all pools)")
    ax0.set_xscale("log")
    ax0.set_xlabel("expected cost per query (log scale)")
    ax0.set_ylabel("expected error rate")
    d = summary["dynamic_pools"]
    ax0.set_title(f"Proposition 1 on {d['n_pools']} random pools x prompts ({d['n_units']} units)")
    ax0.legend(fontsize=8)
    ax0.grid(alpha=0.3, which="both")
    floor = 1e-18
    ax1.plot(data["lams"][1:], np.maximum(np.abs(chk.frontier_gap[1:]), floor), "o-", ms=3,
             label="|E(Bayes) - E*(cost of Bayes)|")
    ax1.plot(data["lams"][1:], np.maximum(np.abs(chk.dual_gap[1:]), floor), "s-", ms=3,
             label="|R_lambda(Bayes) - min_B (E*(B) + lambda B)|")
    ax1.axhline(1e-6, color="0.5", ls=":", label="float32 resolution of the router's argmin")
    ax1.set_xscale("log")
    ax1.set_yscale("log")
    ax1.set_ylim(floor / 2, 1e-2)
    ax1.set_xlabel("lambda")
    ax1.set_ylabel(f"residual (floored at {floor:g})")
    ax1.set_title("Lambda sweep vs the independent LP solution")
    ax1.legend(fontsize=8)
    ax1.grid(alpha=0.3, which="both")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _median_band(ax, x, groups, values, color, label, band=False, **kw):
    med = np.array([np.median(values[g]) if g.any() else np.nan for g in groups])
    ax.plot(x, med, marker="o", color=color, label=label, **({"ls": "-"} | kw))
    if band:
        lo = np.array([np.quantile(values[g], 0.25) if g.any() else np.nan for g in groups])
        hi = np.array([np.quantile(values[g], 0.75) if g.any() else np.nan for g in groups])
        ax.fill_between(x, lo, hi, color=color, alpha=0.15)


def plot_vs_heterogeneity(rec, path: str):
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8), sharey=True)
    for ax, regime in zip(axes, REGIMES):
        sel = (rec["regime"] == regime) & (rec["clustering"] == "true")
        groups = [sel & np.isclose(rec["heterogeneity"], h) for h in HET_GRID]
        _median_band(ax, HET_GRID, groups, rec["excess"], "black", "excess risk (max over lambda), IQR shaded",
                     band=True, lw=2.2)
        for r, lab in READINGS.items():
            _median_band(ax, HET_GRID, groups, rec[r], COLORS[r], lab, ls="--")
        ax.set_yscale("symlog", linthresh=1e-3)
        ax.set_xlabel("heterogeneity (within-component variation of LLM skill)")
        ax.set_title(f"{regime} regime ({'LLMs mostly right' if regime == 'easy' else 'LLMs mostly wrong'})")
        ax.grid(alpha=0.3, which="both")
    axes[0].set_ylabel("median over instances (symlog scale)")
    axes[0].legend(fontsize=8)
    fig.suptitle("Proposition 2: excess risk of the population cluster router (K = K*, true components) "
                 "and its bounds")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_vs_k(rec, run: RunConfig, path: str):
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8), sharey=True)
    ks = list(run.ks)
    for ax, regime in zip(axes, REGIMES):
        base = (rec["regime"] == regime) & (rec["heterogeneity"] > 0)
        groups = [base & (rec["clustering"] == f"kmeans{k}") for k in ks]
        _median_band(ax, ks, groups, rec["excess"], "black", "excess risk (max over lambda), IQR shaded", band=True,
                     lw=2.2)
        for r, lab in READINGS.items():
            _median_band(ax, ks, groups, rec[r], COLORS[r], lab, ls="--")
        true = base & (rec["clustering"] == "true")
        ax.plot([CONFIG.n_components], [np.median(rec["excess"][true])], "*", ms=14, color="gold",
                mec="black", label="excess with the true components (K = K*)")
        ax.axvline(CONFIG.n_components, color="0.6", ls=":")
        ax.set_xscale("log", base=2)
        ax.set_xticks(ks, [str(k) for k in ks])
        ax.set_yscale("log")
        ax.set_xlabel("K (k-means clusters on training prompts; K* = 8 latent components)")
        ax.set_title(f"{regime} regime, all instances with heterogeneity > 0")
        ax.grid(alpha=0.3, which="both")
    axes[0].set_ylabel("median over instances (log scale)")
    axes[0].legend(fontsize=8)
    fig.suptitle("Proposition 2 against the number of clusters K")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_scatter(rec, path: str):
    names = ["paper_own", "paper_all", "corrected", "one_sided"]
    fig, axes = plt.subplots(1, 4, figsize=(17, 4.6), sharex=True, sharey=True)
    pos = rec["excess"] > EXCESS_FLOOR
    for ax, r in zip(axes, names):
        for regime, color in zip(REGIMES, ("tab:blue", "tab:red")):
            sel = pos & (rec["regime"] == regime)
            ax.loglog(rec["excess"][sel], rec[r][sel], ".", ms=2, alpha=0.35, color=color, label=f"{regime} regime")
        lim = [EXCESS_FLOOR, 2.0]
        ax.plot(lim, lim, color="black", lw=1, label="bound = excess")
        held = np.mean(rec[r] >= rec["excess"] - bounds.HOLD_TOL)
        ax.set_title(f"{READINGS[r]}\nholds on {100 * held:.1f}% of instances", fontsize=9)
        ax.set_xlabel("excess risk (max over lambda)")
        ax.grid(alpha=0.3, which="both")
    axes[0].set_ylabel("bound")
    axes[0].legend(fontsize=8, markerscale=4)
    fig.suptitle("Proposition 2, instance by instance (points below the line violate the bound)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_vs_nval(fs, run: RunConfig, path: str):
    fig, ax = plt.subplots(figsize=(11.5, 5))
    x = np.asarray(fs["n_val"])
    j = _delta_index(run, 0.1)

    def med(a):
        return np.array([np.median(v) for v in a])

    def q(a, p):
        return np.array([np.quantile(v, p) for v in a])

    ax.plot(x, med(fs["excess"]), "o-", color="black", lw=2, label="excess, estimated Psi_hat (median)")
    ax.fill_between(x, q(fs["excess"], 0.1), q(fs["excess"], 0.9), color="black", alpha=0.12,
                    label="excess, 10-90% over instances and draws")
    ax.plot(x, med(fs["excess_population"]), "--", color="tab:green", label="excess, population Psi*")
    ax.plot(x, med(fs["population"]), ":", color="tab:green", label="population bound E max_h (Psi* - p)")
    ax.plot(x, med(fs["bound"][..., j]), "s-", color="tab:blue",
            label="finite-sample bound (weighted radius), delta = 0.1")
    ax.plot(x, med(fs["bound_max"][..., j]), "^-", color="tab:purple",
            label="finite-sample bound (2 E max|Delta| + 2 max_k r_k), delta = 0.1")
    ax.plot(x, med(fs["oracle_bound"]), "d-", color="tab:cyan", label="deterministic bound with the realised errors")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("N_val (validation prompts)")
    ax.set_ylabel("median over instances and draws (log scale)")
    ax.set_title(f"Excess risk of UniRoute (K-means, K = 8) vs N_val\n{run.n_fs_instances} instances x "
                 f"{run.n_draws} validation draws per N_val")
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_coverage(fs, run: RunConfig, path: str):
    fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(12, 4.8))
    exc = fs["excess"][..., None]
    held = (fs["bound"] >= exc - bounds.HOLD_TOL).mean(axis=(1, 2))  # [n_vals, n_deltas]
    event = fs["event"].mean(axis=(1, 2))
    nominal = 1 - np.asarray(run.deltas)
    for i, n_val in enumerate(fs["n_val"]):
        ax0.plot(nominal, event[i], "o-", ms=4, alpha=0.8, label=f"Hoeffding event, N_val = {n_val}")
    ax0.plot(nominal, held.min(axis=0), "k*-", ms=9, label="bound holds (worst N_val)")
    ax0.plot([0, 1], [0, 1], color="0.5", ls=":", label="nominal 1 - delta")
    ax0.set_xlabel("nominal coverage 1 - delta")
    ax0.set_ylabel("empirical coverage")
    ax0.set_xlim(0.1, 1.02)
    ax0.set_ylim(0.1, 1.02)
    ax0.set_title("Coverage against nominal level")
    ax0.legend(fontsize=7)
    ax0.grid(alpha=0.3)
    j = _delta_index(run, 0.1)
    x = np.asarray(fs["n_val"])
    ax1.plot(x, held[:, j], "k*-", ms=9, label="finite-sample bound holds")
    ax1.plot(x, event[:, j], "o-", label="all |Psi_hat - Psi*| <= radius (Hoeffding event)")
    ax1.axhline(1 - run.deltas[j], color="0.5", ls=":", label=f"nominal 1 - delta = {1 - run.deltas[j]:g}")
    ax1.set_xscale("log")
    ax1.set_ylim(0.5, 1.02)
    ax1.set_xlabel("N_val (validation prompts)")
    ax1.set_ylabel("empirical coverage")
    ax1.set_title(f"Coverage at delta = {run.deltas[j]:g} ({run.n_fs_instances} instances x {run.n_draws} draws)")
    ax1.legend(fontsize=8)
    ax1.grid(alpha=0.3, which="both")
    fig.suptitle("Finite-sample bound: how often it holds")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ------------------------------------------------------------------------------ verdicts


def _verdict(check: str, theorem: bool, margin: float, detail: str) -> dict[str, Any]:
    return {"check": check, "theorem": theorem, "holds": bool(margin >= 0), "margin": float(margin), "detail": detail}


def verdicts(s: dict[str, Any]) -> list[dict[str, Any]]:
    """One verdict per check of the summary: holds when `margin >= 0`.

    `theorem` marks what `theory/README.md` proves (Proposition 1, the proven readings of
    Proposition 2, the finite-sample bound); the paper's own readings of Proposition 2 are not
    theorems and are reported for information.
    """
    p1, d, p2, fs = s["prop1"], s["prop1"]["dynamic_pools"], s["prop2"], s["finite_sample"]
    single = max(max(i["max_abs_frontier_gap"], i["max_abs_dual_gap"]) for i in p1["instances"])
    dyn = max(d["max_abs_frontier_gap"], d["max_abs_dual_gap"])
    beat = min(d["random_routers_min_gap"], d["perturbed_bayes_min_gap"])
    out = [
        _verdict("Proposition 1: the lambda sweep lies on the exact LP frontier (dynamic pools)", True,
                 PROP1_TOL - dyn, f"max |frontier gap|, |dual gap| = {dyn:.2e} (tolerance {PROP1_TOL:g})"),
        _verdict("Proposition 1: the lambda sweep lies on the exact LP frontier (single pools)", True,
                 PROP1_TOL - single, f"max gap = {single:.2e} (tolerance {PROP1_TOL:g})"),
        _verdict("Proposition 1: no random or perturbed router beats the exact frontier", True,
                 beat + 1e-9 if d["n_routers_beating_frontier"] == 0 else min(beat, -1e-9),
                 f"{d['n_routers_beating_frontier']} routers beat it; smallest gap {beat:.3g}"),
        _verdict("Proposition 1: one shared lambda is no worse than splitting the budget per pool", True,
                 d["split_budget_min_extra_error"] + 1e-12,
                 f"smallest extra error of the split = {d['split_budget_min_extra_error']:.2e}"),
        _verdict("Proposition 2: the excess risk is never negative", True,
                 p2["min_excess_over_lambda"] + bounds.HOLD_TOL, f"smallest excess {p2['min_excess_over_lambda']:.2e}"),
    ]
    zero = p2["zero_heterogeneity_true_clusters_max_excess"]
    if zero is not None:
        out.append(_verdict("Proposition 2: no excess with zero heterogeneity and the true clusters", True,
                            bounds.HOLD_TOL - zero, f"largest excess {zero:.2e}"))
    for r, label in READINGS.items():
        a = p2["all"][r]
        out.append(_verdict(f"Proposition 2, {label}", r in ("one_sided", "range_bound", "corrected"),
                            a["min_margin"] + bounds.HOLD_TOL,
                            f"holds on {100 * a['hold_rate']:.2f}% of {p2['all']['n_instances']} instances"))
    out += [
        _verdict("Finite-sample bound, deterministic form: holds on every validation draw", True,
                 fs["oracle_bound_min_margin"] + bounds.HOLD_TOL,
                 f"smallest bound - excess = {fs['oracle_bound_min_margin']:.3g}"),
        _verdict("Finite-sample bound: coverage >= 1 - delta (3 binomial standard errors)", True,
                 fs["min_coverage_minus_tolerance"],
                 f"smallest coverage - nominal = {fs['min_coverage_minus_nominal']:+.3f}"),
    ]
    if "pacing" in s:  # online budget pacing: target "fixed" is the theorem, "remaining" is reported
        out += pacing.verdicts(s["pacing"])
    if "online" in s:  # online learning of a new LLM: Thompson's sublinear regret is the theorem
        out += online.verdicts(s["online"])
    return out


def failed_theorems(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """The verdicts of theorems that fail."""
    return [v for v in summary["verdicts"] if v["theorem"] and not v["holds"]]


# ------------------------------------------------------------------------------ summary


def _fmt(x, nd=3):
    return "n/a" if x is None else f"{x:.{nd}g}"


def summary_markdown(s: dict[str, Any]) -> str:
    """The summary as Markdown: settings, then one section per check."""
    st = s["settings"]
    lines = ["# Theory checks: summary", "",
             f"Settings: `{st['mode']}` run, seed {st['seed']}, {st['n_instances_per_regime']} instances per regime "
             f"x {len(st['clusterings'])} clusterings ({', '.join(st['clusterings'])}), n_pop = {st['n_pop']} "
             f"(MC standard error of a population mean <= {st['mc_standard_error_bound']:.3f}), "
             f"pool sizes {POOL_SIZES}, heterogeneity {HET_GRID}, cost powers {COST_POWERS}, "
             f"{st['n_lams']} lambdas in [0, 1e4].", "", "## Proposition 1", ""]
    p1 = s["prop1"]
    d = p1["dynamic_pools"]
    singles = "; ".join(f"het {i['heterogeneity']:g}: frontier gap {i['max_abs_frontier_gap']:.1e}, "
                        f"dual gap {i['max_abs_dual_gap']:.1e}" for i in p1["instances"])
    lines += [f"- Dynamic pools ({d['n_pools']} pools, {d['n_units']} (pool, prompt) units, one lambda): "
              f"max |E(Bayes) - E*(cost)| = {d['max_abs_frontier_gap']:.2e}, "
              f"max Lagrangian dual gap = {d['max_abs_dual_gap']:.2e}.",
              f"- Routers beating the exact frontier: {d['n_routers_beating_frontier']} (random routers: min gap "
              f"{d['random_routers_min_gap']:.3g}; perturbed Bayes routers: min gap "
              f"{d['perturbed_bayes_min_gap']:.3g}).",
              f"- Splitting the budget equally across pools instead of sharing lambda costs up to "
              f"{d['split_budget_max_extra_error']:.4f} extra error (at budget "
              f"{d['split_budget_extra_error_at']:.3g}).",
              f"- Single pools: {singles}", "",
              "## Proposition 2 (population Psi*, Lagrangian excess risk, worst lambda of the grid)", "",
              f"Bound held if bound >= excess - {bounds.HOLD_TOL:g}; ratios over instances with excess > "
              f"{EXCESS_FLOOR:g}.", "",
              "| reading | held (all) | held (easy) | held (hard) | median bound/excess | min bound/excess |",
              "|---|---|---|---|---|---|"]
    p2 = s["prop2"]
    for r, lab in READINGS.items():
        a = p2["all"][r]
        easy, hard = p2["by_regime"]["easy"][r]["hold_rate"], p2["by_regime"]["hard"][r]["hold_rate"]
        lines.append(f"| {lab} | {100 * a['hold_rate']:.1f}% | {100 * easy:.1f}% | {100 * hard:.1f}% | "
                     f"{_fmt(a['median_ratio'])} | {_fmt(a['min_ratio'])} |")
    lines += ["", f"Instances: {p2['all']['n_instances']} ({p2['all']['n_with_excess']} with excess > "
              f"{EXCESS_FLOOR:g}); smallest excess at any lambda: {p2['min_excess_over_lambda']:.2e}; largest excess "
              f"with zero heterogeneity and the true components (Bayes-optimal in theory): "
              f"{p2['zero_heterogeneity_true_clusters_max_excess']:.2e}.", "",
              "Paper reading (own cluster) by breakdown (held %, median ratio):", ""]
    for key in ("by_clustering", "by_pool_size", "by_cost_power", "by_heterogeneity"):
        parts = [f"{k}: {100 * v['paper_own']['hold_rate']:.1f}% / {_fmt(v['paper_own']['median_ratio'])}"
                 for k, v in p2[key].items()]
        lines.append(f"- {key.replace('by_', '')}: " + "; ".join(parts))
    fs = s["finite_sample"]
    lines += ["", "## Finite-sample bound (K-means K = 8, easy regime)", "",
              f"{fs['n_instances']} instances x {fs['n_draws']} validation draws per N_val.", "",
              "| N_val | coverage (delta=0.1) | Hoeffding event (delta=0.1) | coverage, max form | median excess | "
              "median bound | median bound/excess |", "|---|---|---|---|---|---|---|"]
    for n_val, v in fs["by_n_val"].items():
        key = min(v["coverage"], key=lambda d: abs(float(d) - 0.1))
        lines.append(f"| {n_val} | {100 * v['coverage'][key]:.1f}% | {100 * v['hoeffding_event'][key]:.1f}% | "
                     f"{100 * v['coverage_max_form'][key]:.1f}% | {v['median_excess_estimated']:.4f} | "
                     f"{v['median_bound_delta_0.1']:.3f} | {_fmt(v['median_ratio_bound_over_excess_delta_0.1'])} |")
    lines += ["", f"Smallest (coverage - nominal) over all N_val and delta: "
              f"{fs['min_coverage_minus_nominal']:+.3f}.", ""]
    if "pacing" in s:
        lines += pacing.summary_lines(s["pacing"])
    if "online" in s:
        lines += online.summary_lines(s["online"])
    if "verdicts" in s:
        lines += ["## Verdicts", "", "Margin: slack when positive, size of the violation when negative.", "",
                  "| check | theorem | verdict | margin | detail |", "|---|---|---|---|---|"]
        cell = lambda text: text.replace("|", "\\|")  # noqa: E731  (absolute values inside a table)
        lines += [f"| {cell(v['check'])} | {'yes' if v['theorem'] else 'no (reported)'} | "
                  f"{'holds' if v['holds'] else 'FAILS'} | {v['margin']:+.3g} | {cell(v['detail'])} |"
                  for v in s["verdicts"]]
        failed = [v for v in s["verdicts"] if v["theorem"] and not v["holds"]]
        lines += ["", f"**{len(failed)} theorem check(s) fail.**" if failed else "Every theorem check holds.", ""]
    lines += [f"Wall time: {s['wall_seconds']:.0f} s."]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------ main


def run_all(out_dir: str, *, quick: bool = False, seed: int = 0, verbose: bool = True) -> dict[str, Any]:
    """Runs every study, writes the figures and summaries to `out_dir`, returns the summary."""
    t0 = time.time()
    run = QUICK if quick else FULL
    os.makedirs(out_dir, exist_ok=True)

    def log(msg):
        if verbose:
            print(f"[{time.time() - t0:6.1f}s] {msg}", flush=True)

    key = jax.random.key(seed)
    k2, k_fs, k1, k_fr = jax.random.split(key, 4)
    rng = np.random.default_rng(seed)
    p2 = run_prop2(run, k2, rng, log)
    rec = p2["records"]
    fs = run_finite_sample(run, p2["batches"], k_fs, log)
    p1 = run_prop1(run, p2["batches"], k1, log)
    panels = run_frontiers(run, p2["batches"], k_fr)
    log("frontiers done")

    plot_frontiers(panels, os.path.join(out_dir, "frontier.png"), run)
    plot_prop1(p1["plot"], p1["summary"], os.path.join(out_dir, "prop1_check.png"))
    plot_vs_heterogeneity(rec, os.path.join(out_dir, "prop2_vs_heterogeneity.png"))
    plot_vs_k(rec, run, os.path.join(out_dir, "prop2_vs_k.png"))
    plot_scatter(rec, os.path.join(out_dir, "prop2_scatter.png"))
    plot_vs_nval(fs, run, os.path.join(out_dir, "prop2_vs_nval.png"))
    plot_coverage(fs, run, os.path.join(out_dir, "finite_sample_coverage.png"))
    pac = pacing.run_study(pacing.QUICK if quick else pacing.FULL, seed, log)
    pacing.plot(pac, os.path.join(out_dir, "pacing_regret.png"))
    onl = online.run_study(online.QUICK if quick else online.FULL, seed, log)
    online.plot(onl, os.path.join(out_dir, "online_regret.png"))
    log("figures written")

    summary = {
        "settings": {"mode": "quick" if quick else "full", "seed": seed, **dataclasses.asdict(run),
                     "n_instances_per_regime": run.n_instances, "config": dataclasses.asdict(CONFIG),
                     "regime_ability_shift": REGIMES,
                     "clusterings": ["true"] + [f"kmeans{k}" for k in run.ks],
                     "n_lams": len(experiments.default_lams()),
                     "mc_standard_error_bound": 0.5 / np.sqrt(run.n_pop), "hold_tol": bounds.HOLD_TOL,
                     "excess_floor": EXCESS_FLOOR},
        "prop1": p1["summary"],
        "prop2": summarise_prop2(rec),
        "finite_sample": summarise_finite(fs, run),
        "pacing": pac,
        "online": onl,
    }
    summary["verdicts"] = verdicts(summary)
    summary["wall_seconds"] = time.time() - t0
    with open(os.path.join(out_dir, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1, default=float)
    md = summary_markdown(summary)
    with open(os.path.join(out_dir, "summary.md"), "w") as f:
        f.write(md)
    if verbose:
        print(md)
    return summary


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Numerical checks of UniRoute's Propositions 1 and 2, with plots.")
    parser.add_argument("--out", required=True, help="output directory for PNGs and summary.json / summary.md")
    parser.add_argument("--quick", action="store_true", help="small run (used by the tests)")
    parser.add_argument("--seed", type=int, default=0, help="PRNG seed of every draw")
    args = parser.parse_args(argv)
    summary = run_all(args.out, quick=args.quick, seed=args.seed)
    failed = failed_theorems(summary)
    for v in failed:
        print(f"theory: FAILS: {v['check']} (margin {v['margin']:+.3g}; {v['detail']})", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
