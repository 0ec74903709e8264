"""Batched studies over many instances, each a vmap over instances and per-instance settings.

The pieces are compiled separately so that a compile serves every study that shares it (XLA
compile time, not run time, dominates on a small CPU): one instance sampler per set of sizes, one
k-means per `K`, one study per `K`. Within a call, instances run through `jax.lax.map`: vmapped
in chunks of `batch_size` for the studies (which bounds the memory of the `[n_pop, max_models]`
loss tables), sequentially for the sampler and k-means, whose vmapped forms compile far more
slowly for no gain.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

import uniroute_jax as ur
from theory import bayes, bounds, meta
from theory.baselines import knn_estimates


def default_lams(n: int = 72) -> np.ndarray:
    """Trade-offs for batched studies: 0, then `n - 1` geometric steps over [1e-3, 1e4].

    Errors lie in [0, 1] and costs in (0, 1], so decisions change for `lam` between about
    `1e-2` and `1 / (smallest cost gap)`; far above, every prompt goes to the cheapest model and
    the excess risk is 0. A fixed grid lets one compile serve instances with different costs.
    A "max over lambda" below is a max over this grid.
    """
    return np.concatenate([[0.0], np.geomspace(1e-3, 1e4, n - 1)]).astype(np.float32)


@functools.partial(jax.jit, static_argnames=("config", "n_pop", "n_train", "max_models"))
def sample_instances(keys: jax.Array, knobs: meta.InstanceSettings, *, config: ur.WorldConfig, n_pop: int,
                     n_train: int, max_models: int) -> meta.Instance:
    """`meta.sample_instance` mapped over `keys [n_instances]` and `knobs` (fields `[n_instances]`).

    A sequential `lax.map`: the samplers are cheap to run but slow to compile, and their vmapped
    form compiles about three times slower than the plain one.
    """
    one = functools.partial(meta.sample_instance, config=config, n_pop=n_pop, n_train=n_train,
                            max_models=max_models)
    return jax.lax.map(lambda a: one(*a), (keys, knobs))


@functools.partial(jax.jit, static_argnames=("n_clusters",))
def kmeans_clusterings(keys: jax.Array, instances: meta.Instance, *, n_clusters: int) -> meta.Clustering:
    """k-means with `n_clusters` on each instance's training prompts, `[n_instances]` clusterings.

    Sequential over instances (each k-means already vmaps its restarts): a vmapped `while_loop`
    runs until the slowest instance converges and compiles twice as slowly.
    """
    return jax.lax.map(lambda a: meta.kmeans_clustering(a[0], a[1], n_clusters), (keys, instances))


@jax.jit
def true_clusterings(instances: meta.Instance) -> meta.Clustering:
    """The latent components of each instance (`K = K*`)."""
    return jax.vmap(meta.true_clustering)(instances)


@functools.partial(jax.jit, static_argnames=("batch_size",))
def prop2_study(instances: meta.Instance, clusterings: meta.Clustering, lams: jax.Array, *,
                batch_size: int = 16) -> bounds.Prop2Terms:
    """Proposition 2 on a batch: the population cluster router against every bound.

    Args:
      instances: `Instance` with a leading `[n_instances]` axis.
      clusterings: `Clustering` with a leading `[n_instances]` axis (`K` from its shape).
      lams: [n_lams] trade-offs.
      batch_size: instances vmapped together (static).

    Returns:
      `Prop2Terms` with a leading `[n_instances]` axis.
    """
    n_clusters = clusterings.weights.shape[-1]

    def one(args):
        inst, clus = args
        psi = meta.population_psi(inst.p_error, clus.labels, n_clusters)
        return bounds.prop2_terms(inst.p_error, inst.costs, inst.model_mask, clus, psi, lams)

    return jax.lax.map(one, (instances, clusterings), batch_size=batch_size)


@functools.partial(jax.jit, static_argnames=("max_val", "n_draws", "batch_size"))
def finite_sample_study(keys: jax.Array, instances: meta.Instance, clusterings: meta.Clustering,
                        n_val: jax.Array, lams: jax.Array, deltas: jax.Array, *, max_val: int, n_draws: int,
                        batch_size: int | None = None) -> bounds.FiniteSampleTerms:
    """The finite-sample bound on a batch of instances, `n_draws` validation sets each.

    The partition is fixed per instance; only the validation prompts and their labels are redrawn,
    which is what the bound's probability is over.

    Args:
      keys: [n_instances] PRNG keys for the validation draws.
      instances, clusterings: batches with a leading `[n_instances]` axis.
      n_val: [] int validation prompts used (<= `max_val`; data, so no recompile per value).
      lams: [n_lams]; deltas: [n_deltas].
      max_val: validation prompts drawn per set (static).
      n_draws: validation sets per instance (static).
      batch_size: instances vmapped together (static; default sequential, the draws are vmapped).

    Returns:
      `FiniteSampleTerms` with leading `[n_instances, n_draws]` axes.
    """
    n_clusters = clusterings.weights.shape[-1]

    def one(args):
        key, inst, clus = args
        psi_star = meta.population_psi(inst.p_error, clus.labels, n_clusters)

        def draw(kv):
            val = meta.sample_validation(kv, inst, max_val)
            ev = meta.estimated_psi(val, clus, n_clusters, n_val)
            return bounds.finite_sample_terms(inst.p_error, inst.costs, inst.model_mask, clus, psi_star, ev.psi,
                                              jnp.max(ev.counts, axis=0), lams, deltas)

        # What does not depend on the draw (the regret table) is traced once, not per draw.
        return jax.vmap(draw)(jax.random.split(key, n_draws))

    return jax.lax.map(one, (keys, instances, clusterings), batch_size=batch_size)


class FrontierCurves(NamedTuple):
    """Exact (cost, error) operating points of each router on one instance, `[n_lams]` each."""

    bayes: bayes.OperatingPoints
    cluster_population: bayes.OperatingPoints  # UniRoute with Psi*
    cluster_estimated: bayes.OperatingPoints  # UniRoute with Psi_hat from N_val prompts
    knn: bayes.OperatingPoints  # K-NN on the same N_val prompts


@functools.partial(jax.jit, static_argnames=("n_val", "k_nn"))
def frontier_curves(key: jax.Array, instance: meta.Instance, clustering: meta.Clustering, lams: jax.Array, *,
                    n_val: int, k_nn: int) -> FrontierCurves:
    """Lambda sweeps of the Bayes, UniRoute (population and estimated `Psi`) and K-NN routers.

    Each router decides with its own estimates; every operating point is scored with the exact
    error probabilities of the population, so the curves compare decisions, not label noise.
    """
    n_clusters = clustering.weights.shape[0]
    p, c, m = instance.p_error, instance.costs, instance.model_mask
    psi_star = meta.population_psi(p, clustering.labels, n_clusters)
    val = meta.sample_validation(key, instance, n_val)
    psi_hat = meta.estimated_psi(val, clustering, n_clusters).psi
    knn = knn_estimates(instance.prompts.embeddings, instance.prompts.embeddings[val.index], val.errors, k_nn)

    def sweep(choice_fn):
        return bayes.OperatingPoints(*jax.vmap(lambda lam: bayes.operating_point(p, c, choice_fn(lam)))(lams))

    return FrontierCurves(
        bayes=sweep(lambda lam: bayes.bayes_choice(p, c, m, lam)),
        cluster_population=sweep(lambda lam: bounds.cluster_decisions(psi_star, c, m, lam)[clustering.labels]),
        cluster_estimated=sweep(lambda lam: bounds.cluster_decisions(psi_hat, c, m, lam)[clustering.labels]),
        knn=sweep(lambda lam: bayes.lagrangian_choice(knn, c, m, lam)),
    )


def index_instance(instances, i: int):
    """The `i`-th instance (or clustering) of a batch."""
    return jax.tree.map(lambda a: a[i], instances)


def random_pool_masks(key: jax.Array, n_pools: int, max_models: int, p_in: float = 0.5) -> jax.Array:
    """`[n_pools, max_models]` random pools (each model in with probability `p_in`, never empty)."""
    k_in, k_force = jax.random.split(key)
    masks = jax.random.bernoulli(k_in, p_in, (n_pools, max_models))
    forced = jax.nn.one_hot(jax.random.randint(k_force, (n_pools,), 0, max_models), max_models, dtype=bool)
    return masks | forced


def dynamic_pool_units(instance: meta.Instance, pool_masks: jax.Array) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Flattens (pool, prompt) pairs into LP units: the population of a dynamic-pool problem.

    Returns:
      `(p_error [n_pools * n_pop, max_models], costs [max_models], model_mask [n_pools * n_pop,
      max_models])`, pools drawn independently of prompts and weighted equally.
    """
    n_pools = pool_masks.shape[0]
    p = np.asarray(instance.p_error)
    n_pop = p.shape[0]
    return (np.tile(p, (n_pools, 1)), np.asarray(instance.costs), np.repeat(np.asarray(pool_masks), n_pop, axis=0))
