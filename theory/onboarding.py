"""Excess risk of onboarding new LLMs from few labels, on the meta-distributions of `theory.meta`.

Setting, per instance: a pool of `n_ref` represented LLMs whose error vectors are known well (their
exact cluster means `Psi*`), and `n_new` new LLMs of the same meta-distribution, each labelled on
`n` validation prompts drawn i.i.d. from the population. An estimator (`uniroute_jax`'s
`estimators`, fitted on the represented LLMs' labels on `n_ref_labels` prompts) gives the new LLMs'
`Psi_hat`. The cluster router then sends cluster `k` to `argmin_h Psi[h, k] + lam * c_h` over all
LLMs. Its Lagrangian risk is exact (a mass-weighted sum over clusters of the *true* cluster errors
and costs of the chosen LLMs); the excess risk is that risk minus the risk of the same router with
the exact `Psi*` of every LLM, the best any cluster router can do. It is non-negative in every
instance, averaged over a grid of `lam`.

    python -m theory.onboarding            # writes theory/results/onboarding.{md,png}
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

import uniroute_jax as ur
from theory import meta
from uniroute_jax._src.estimators import METHODS, default_n_groups, estimate_kernel, fit_kernel

LAMS = np.linspace(0.0, 0.5, 11).astype(np.float32)


class OnboardingStudy(NamedTuple):
    """Mean excess risk over instances, `[n_methods, n_budgets]`, and its standard error."""

    budgets: np.ndarray  # [n_budgets] labels per new LLM
    excess: np.ndarray  # [n_methods, n_budgets]
    stderr: np.ndarray  # [n_methods, n_budgets]


def cluster_risk(psi_used: jax.Array, psi_true: jax.Array, weights: jax.Array, costs: jax.Array,
                 lams: jax.Array) -> jax.Array:
    """Exact Lagrangian risk `[n_lams]` of routing cluster `k` to `argmin_h psi_used[h, k] + lam c_h`.

    Args:
      psi_used: [n_models, K] error vectors the router uses.
      psi_true: [n_models, K] exact cluster means.
      weights: [K] population mass of each cluster.
      costs: [n_models] cost per query.
      lams: [n_lams] trade-offs.
    """
    def one(lam):
        choice = jnp.argmin(psi_used + lam * costs[:, None], axis=0)  # [K]
        picked = psi_true[choice, jnp.arange(psi_true.shape[1])] + lam * costs[choice]
        return jnp.sum(weights * picked)

    return jax.vmap(one)(lams)


@functools.partial(jax.jit, static_argnames=("config", "n_pop", "n_ref", "n_new", "n_clusters", "n_ref_labels",
                                             "max_labels"))
def _instance_excess(key, budgets, lams, *, config, n_pop, n_ref, n_new, n_clusters, n_ref_labels, max_labels):
    """Excess risk `[n_methods, n_budgets]` of one instance (averaged over `lams`)."""
    k_inst, k_km, k_ref, k_new, k_fit = jax.random.split(key, 5)
    knobs = meta.settings(pool_size=n_ref + n_new)
    inst = meta.sample_instance(k_inst, knobs, config=config, n_pop=n_pop, n_train=n_pop // 2,
                                max_models=n_ref + n_new)
    clus = meta.kmeans_clustering(k_km, inst, n_clusters)
    psi_true = meta.population_psi(inst.p_error, clus.labels, n_clusters)  # [M, K]
    onehot = lambda idx: jax.nn.one_hot(clus.labels[idx], n_clusters)
    ref = meta.sample_validation(k_ref, inst, n_ref_labels)
    w_ref = onehot(ref.index)  # [n_ref_labels, K]
    ref_counts = jnp.broadcast_to(w_ref.sum(0), (n_ref, n_clusters))
    ref_sums = (w_ref.T @ ref.errors[:, :n_ref]).T
    x = inst.prompts.embeddings
    centroids = (jax.ops.segment_sum(x, clus.labels, num_segments=n_clusters)
                 / jnp.maximum(clus.weights * n_pop, 1.0)[:, None])
    fitted = fit_kernel(k_fit, ref_counts, ref_sums, jnp.ones(n_ref, bool), centroids, clus.weights,
                        jnp.asarray(ur.DEFAULT_ALPHA, jnp.float32), n_groups=default_n_groups(n_clusters))
    new = meta.sample_validation(k_new, inst, max_labels)
    w_new = onehot(new.index)  # [max_labels, K]
    full = cluster_risk(psi_true, psi_true, clus.weights, inst.costs, lams).mean()

    def at_budget(n):
        use = (jnp.arange(max_labels) < n).astype(jnp.float32)[:, None]
        counts = jnp.broadcast_to((w_new * use).sum(0), (n_new, n_clusters))
        sums = ((w_new * use).T @ new.errors[:, n_ref:]).T
        out = []
        for method in METHODS:
            psi_new = estimate_kernel(fitted, counts, sums, method=method).psi
            used = jnp.concatenate([psi_true[:n_ref], psi_new])
            out.append(cluster_risk(used, psi_true, clus.weights, inst.costs, lams).mean() - full)
        return jnp.stack(out)

    return jax.vmap(at_budget)(budgets).T


def onboarding_study(seed: int = 0, *, budgets=(1, 5, 10, 20, 50, 100, 200, 1000), n_instances: int = 40,
                     n_clusters: int = 12, n_ref: int = 12, n_new: int = 4, n_ref_labels: int = 400,
                     n_pop: int = 2000, config: ur.WorldConfig | None = None) -> OnboardingStudy:
    """Mean excess risk of each estimator against the number of labels per new LLM.

    Args:
      seed: PRNG seed of the instances.
      budgets: labels per new LLM.
      n_instances: instances drawn from the meta-distribution.
      n_clusters: K of the cluster router (k-means on each instance's training prompts).
      n_ref: represented LLMs; n_new: new LLMs per instance.
      n_ref_labels: validation labels of each represented LLM (the estimators' fit).
      n_pop: population prompts per instance.
      config: the generator's `WorldConfig` (default `ur.WorldConfig()`).
    """
    b = np.asarray(budgets, np.int32)
    if b.ndim != 1 or b.size == 0 or b.min() < 0:
        raise ValueError(f"budgets must be a non-empty list of label counts >= 0, got {budgets}")
    config = config or ur.WorldConfig()
    run = functools.partial(_instance_excess, config=config, n_pop=n_pop, n_ref=n_ref, n_new=n_new,
                            n_clusters=n_clusters, n_ref_labels=n_ref_labels, max_labels=int(b.max()))
    keys = jax.random.split(jax.random.key(seed), n_instances)
    ex = np.stack([np.asarray(run(k, jnp.asarray(b), jnp.asarray(LAMS))) for k in keys])  # [I, methods, budgets]
    return OnboardingStudy(b, ex.mean(0), ex.std(0, ddof=1) / np.sqrt(n_instances))


def main(out: str | Path = Path(__file__).parent / "results") -> int:
    from uniroute_jax._src import plots

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    res = onboarding_study()
    lines = ["# Excess risk of onboarding new LLMs from n labels", "",
             "Meta-distribution of `theory.meta` (default `WorldConfig`), 40 instances, K = 12 k-means clusters, "
             "12 represented LLMs (400 validation labels each, the estimators' fit) and 4 new LLMs per instance. "
             "Excess Lagrangian risk of the cluster router over the router with every LLM's exact cluster errors, "
             f"averaged over lam in {LAMS[0]:.2f}..{LAMS[-1]:.2f}; mean ± standard error over instances.", "",
             "| estimator | " + " | ".join(f"n={n}" for n in res.budgets) + " |",
             "|---|" + "---|" * len(res.budgets)]
    for i, m in enumerate(METHODS):
        lines.append(f"| {m} | " + " | ".join(f"{e:.4f} ± {s:.4f}" for e, s in zip(res.excess[i], res.stderr[i])) + " |")
    (out / "onboarding.md").write_text("\n".join(lines) + "\n")
    plt = plots._pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for i, m in enumerate(METHODS):
        ax.plot(np.maximum(res.budgets, 1), res.excess[i], marker="o", ms=3, label=m)
        ax.fill_between(np.maximum(res.budgets, 1), res.excess[i] - res.stderr[i], res.excess[i] + res.stderr[i],
                        alpha=0.15, lw=0)
    ax.set_xscale("log")
    ax.set_xlabel("labels per new LLM")
    ax.set_ylabel("excess Lagrangian risk")
    ax.set_title("Cluster router: excess risk against labels (± 1 s.e.)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    plots.save_figure(fig, out / "onboarding.png")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
