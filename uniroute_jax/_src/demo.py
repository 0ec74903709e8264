"""`uniroute demo`: UniRoute on a synthetic world, routing among LLMs it never saw in training.

Steps: draw a world; split prompts 60/10/30 (train / validation / test) and LLMs 2/3 seen / 1/3
unseen; fit k-means on the training prompts (no labels); represent the *unseen* LLMs from the
validation prompts only; draw random pools of unseen LLMs; sweep every budget over every pool in
one jitted call; compare ZeroRouter (prompt-agnostic), UniRoute and the per-prompt oracle.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from uniroute_jax._src import metrics, plots
from uniroute_jax._src.baselines import oracle_estimates, zero_router_estimates
from uniroute_jax._src.router import UniRouter
from uniroute_jax._src.routing import lambda_grid, make_units
from uniroute_jax._src.sweeps import sweep
from uniroute_jax._src.synthetic import WorldConfig, synthetic_world


# Printed under the table: what its columns measure.
METRICS_NOTE = (
    "Area: test accuracy averaged over every budget from 0 to the cost of the pool's priciest LLM (the area\n"
    "under the accuracy-cost curve, cost divided by that LLM's; higher is better, at most 1). Area(50%): the\n"
    "same area over budgets up to half that cost (at most 0.5). QNC: the lowest such normalised cost at which\n"
    "the router matches the accuracy of the pool's most accurate LLM (lower is better; mean over the pools that\n"
    "reach it). Each figure is a mean ± standard deviation over random pools of LLMs unseen in training.")


class DemoResult(NamedTuple):
    table: str  # markdown table of mean (std) metrics per method
    area: dict[str, np.ndarray]  # method -> [n_pools] Area
    plot: Path | None


@jax.jit
def pool_metrics(mean_cost, mean_quality, model_cost, model_quality, masks) -> metrics.CurveMetrics:
    """Metrics of `[n_pools, n_budgets]` curves, each against its own test pool's models.

    Args:
      mean_cost, mean_quality: [n_pools, n_budgets] operating points.
      model_cost, model_quality: [max_models] test cost and accuracy of each model.
      masks: [n_pools, max_models] pool membership.
    """

    def one(cost, quality, mask):
        ref = metrics.pool_reference(model_cost, model_quality, mask)
        return metrics.curve_metrics(cost, quality, jnp.isfinite(cost), ref)

    return jax.vmap(one)(mean_cost, mean_quality, masks)


def run_demo(seed: int = 0, *, n_prompts: int = 8000, n_models: int = 36, n_clusters: int = 24, n_pools: int = 16,
             n_budgets: int = 256, out_dir: str | Path | None = "uniroute_demo", log=print) -> DemoResult:
    """Runs the demo and returns its table; writes `curves.png` into `out_dir` unless it is None."""
    start = time.perf_counter()
    world = synthetic_world(seed, n_prompts=n_prompts, n_models=n_models, config=WorldConfig(n_components=12))
    emb, quality = np.asarray(world.prompts.embeddings), np.asarray(world.quality)
    costs = np.asarray(world.llms.costs)
    rng = np.random.default_rng(seed)
    perm = rng.permutation(n_prompts)
    n_tr, n_va = int(0.6 * n_prompts), int(0.1 * n_prompts)
    train, val, test = perm[:n_tr], perm[n_tr:n_tr + n_va], perm[n_tr + n_va:]
    unseen = np.sort(rng.permutation(n_models)[: n_models // 3])
    names = [f"llm-{i:02d}" for i in unseen]
    log(f"world: {n_prompts} prompts, {n_models} LLMs; {len(unseen)} unseen LLMs, "
        f"{len(val)} validation prompts, {len(test)} test prompts")

    router = UniRouter.fit(emb[train], n_clusters, seed=seed)
    log(f"k-means on {len(train)} unlabelled training prompts: K={n_clusters}, {router.info['n_iter']} iterations, "
        f"{router.info['seconds']:.1f}s")
    pool = router.represent(emb[val], quality[val][:, unseen], names, costs[unseen])
    sizes = rng.integers(3, len(unseen) + 1, size=n_pools)
    masks = np.zeros((n_pools, len(unseen)), bool)
    for p, size in enumerate(sizes):
        masks[p, rng.choice(len(unseen), size, replace=False)] = True

    q_test = quality[test][:, unseen]
    lams = lambda_grid(pool.costs, n_budgets)
    curves = {
        "UniRoute (K-Means)": router.sweep(emb[test], pool, lams, quality=q_test, subsets=masks),
    }
    per_prompt = make_units(None, quality=q_test, costs=pool.costs)
    overall_val_error = pool.error_sums.sum(1) / pool.counts.sum(1)
    one_unit = make_units(np.zeros(len(test), np.int32), n_units=1, quality=q_test, costs=pool.costs)
    curves["ZeroRouter"] = sweep(zero_router_estimates(overall_val_error), one_unit, pool.costs, lams, pool_masks=masks)
    curves["Oracle"] = sweep(oracle_estimates(q_test), per_prompt, pool.costs, lams, pool_masks=masks)
    log(f"swept {n_budgets} budgets x {n_pools} pools for 3 routers")

    model_cost, model_quality = pool.costs, q_test.mean(0)
    results = {name: pool_metrics(np.asarray(c.mean_cost), np.asarray(c.mean_quality), model_cost, model_quality, masks)
               for name, c in curves.items()}
    order = ["ZeroRouter", "UniRoute (K-Means)", "Oracle"]
    rows = ["| method | Area | Area(50%) | QNC | peak accuracy |", "|---|---|---|---|---|"]
    for name in order:
        m = results[name]
        qnc = np.asarray(m.qnc)
        reached = np.isfinite(qnc)
        qnc_txt = (f"{np.mean(qnc[reached]):.3f} ({reached.sum()}/{n_pools} pools reach it)" if reached.any()
                   else f"never reached (0/{n_pools})")
        rows.append(f"| {name} | {np.mean(m.area):.3f} ± {np.std(m.area):.3f} | {np.mean(m.area_50):.3f} ± "
                    f"{np.std(m.area_50):.3f} | {qnc_txt} | {np.mean(m.peak_quality):.3f} |")
    table = "\n".join(rows)
    plot = None
    if out_dir is not None:
        plot = _plot(curves, order, masks, model_cost, model_quality, Path(out_dir) / "curves.png")
    log(f"done in {time.perf_counter() - start:.1f}s")
    return DemoResult(table, {k: np.asarray(v.area) for k, v in results.items()}, plot)


def _plot(curves, order, masks, model_cost, model_quality, path: Path) -> Path:
    plt = plots._pyplot()
    n_show = min(4, masks.shape[0])
    fig, axes = plt.subplots(1, n_show, figsize=(4.2 * n_show, 3.8), sharey=True)
    axes = np.atleast_1d(axes)
    for p, ax in enumerate(axes):
        lines = {name: (curves[name].mean_cost[p], curves[name].mean_quality[p]) for name in order}
        plots.draw_curves(ax, lines, cost_norm=model_cost[masks[p]].max(),
                          points=(model_cost[masks[p]], model_quality[masks[p]]))
        ax.set_title(f"pool {p}: {int(masks[p].sum())} unseen LLMs")
        ax.set_xlabel("mean cost / cost of priciest LLM")
    axes[0].set_ylabel("test accuracy")
    axes[0].legend(loc="lower right", fontsize=8)
    fig.suptitle("Deferral curves on pools of LLMs unseen in training (synthetic world)")
    return plots.save_figure(fig, path)


def main(seed: int, out_dir: str) -> int:
    res = run_demo(seed, out_dir=out_dir, log=lambda m: print(m, file=sys.stderr))
    print(res.table)
    print(f"\n{METRICS_NOTE}")
    print(f"\nplot: {res.plot}")
    return 0
