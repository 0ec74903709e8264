"""Meta-distributions in which every routing quantity is known exactly.

An *instance* is one draw from the meta-distribution of `uniroute_jax`'s synthetic generator: a
prompt space (a mixture of `K*` Gaussian components), a finite **population** of prompts, a
separate training sample for k-means, and a padded table of LLMs whose first `pool_size` rows form
the pool. The population is treated as *the* prompt distribution: every expectation over `x` in
this package is an exact, uniformly weighted average over its `n_pop` prompts, so the
inequalities of Propositions 1 and 2 are checked exactly (up to float32 rounding), not up to
Monte-Carlo error. Monte-Carlo error enters only when a number is read as a property of the
continuous generator: a mean of a quantity in `[0, 1]` over `n_pop` i.i.d. prompts has standard
error at most `0.5 / sqrt(n_pop)` (0.008 for `n_pop = 4000`).

The knobs that vary between instances are arrays (`InstanceSettings`), so one compiled function
serves a whole batch mapped over keys and settings:

* `heterogeneity` scales the within-component, per-prompt variation of each LLM's skill (it is
  passed straight to `uniroute_jax.error_probability`; the `heterogeneity` field of the
  `WorldConfig` is not used).
* `cost_power` `s` spreads the costs: `c -> c ** s`. The generator's costs are
  `exp(cost_slope * ability + cost_noise * noise - max)`, so this is the same generator with
  `cost_slope` and `cost_noise` both multiplied by `s` (the most expensive table row keeps cost 1).
* `pool_size` masks the table to its first `pool_size` LLMs; the LLMs are i.i.d., so that is a
  pool of that size drawn from the meta-distribution.
* `ability_shift` adds a constant to every LLM's ability and skills: the same generator with
  `ability_mean + ability_shift` (costs are normalised by their maximum, so a common shift of the
  log-cost leaves them unchanged). Negative shifts give a regime where LLMs are mostly wrong.

Shape-setting sizes (`n_pop`, `n_train`, `max_models`, `n_clusters`, `n_val`) are Python ints.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

import uniroute_jax as ur

# The unchecked kernels are used so that k-means and the error vectors vmap over instances; the
# checked entry points validate on the host and cannot be traced.
from uniroute_jax.kernels import assign_kernel, error_vectors_kernel, kmeans_kernel


class InstanceSettings(NamedTuple):
    """Per-instance knobs (scalars for one instance, `[n_instances]` for a batch)."""

    heterogeneity: jax.Array  # [] float, within-component variation of skill
    cost_power: jax.Array  # [] float, exponent applied to the costs (cost spread)
    pool_size: jax.Array  # [] int32, number of LLMs in the pool (<= max_models)
    ability_shift: jax.Array  # [] float, added to every LLM's ability (accuracy regime)


class Instance(NamedTuple):
    """One draw from the meta-distribution, with exact error probabilities."""

    space: ur.PromptSpace  # the latent mixture
    prompts: ur.Prompts  # population: embeddings [n_pop, dim], components [n_pop]
    train: ur.Prompts  # k-means training prompts: embeddings [n_train, dim]
    llms: ur.LLMs  # [max_models] table (costs as drawn, before cost_power)
    p_error: jax.Array  # [n_pop, max_models] exact P(error | x, h)
    costs: jax.Array  # [max_models] cost per query after cost_power, max 1
    model_mask: jax.Array  # [max_models] bool, True for the LLMs of the pool


class Clustering(NamedTuple):
    """A hard partition of the population into `n_clusters` cells."""

    labels: jax.Array  # [n_pop] int32 cluster of each population prompt
    weights: jax.Array  # [n_clusters] population mass of each cluster (sums to 1)


class ValidationSample(NamedTuple):
    """Validation prompts drawn i.i.d. from the population, with sampled 0/1 errors."""

    index: jax.Array  # [n_val] int32 row of the population
    errors: jax.Array  # [n_val, max_models] float32, 1 where the LLM erred


def settings(heterogeneity: ArrayLike = 0.5, cost_power: ArrayLike = 1.0, pool_size: ArrayLike = 8,
             ability_shift: ArrayLike = 0.0) -> InstanceSettings:
    """Builds `InstanceSettings` from scalars or arrays, broadcast to a common shape."""
    fields = jnp.broadcast_arrays(jnp.asarray(heterogeneity, jnp.float32), jnp.asarray(cost_power, jnp.float32),
                                  jnp.asarray(pool_size, jnp.int32), jnp.asarray(ability_shift, jnp.float32))
    return InstanceSettings(*fields)


@functools.partial(jax.jit, static_argnames=("config", "n_pop", "n_train", "max_models"))
def sample_instance(key: jax.Array, knobs: InstanceSettings, *, config: ur.WorldConfig, n_pop: int,
                    n_train: int, max_models: int) -> Instance:
    """Draws one instance; vmap over `key` and `knobs` for a batch.

    Args:
      key: PRNG key.
      knobs: scalar `InstanceSettings`.
      config: the generator's `WorldConfig` (static; its `heterogeneity` is ignored).
      n_pop: population size (static).
      n_train: k-means training sample size (static).
      max_models: size of the padded LLM table (static).

    Returns:
      An `Instance` with `p_error [n_pop, max_models]`.
    """
    k_space, k_pop, k_train, k_llms = jax.random.split(key, 4)
    space = ur.sample_prompt_space(k_space, config)
    prompts = ur.sample_prompts(k_pop, space, n_pop)
    train = ur.sample_prompts(k_train, space, n_train)
    llms = ur.sample_llms(k_llms, config, max_models)
    llms = llms._replace(ability=llms.ability + knobs.ability_shift, skills=llms.skills + knobs.ability_shift)
    p_error = ur.error_probability(space, prompts, llms, knobs.heterogeneity)
    costs = llms.costs ** knobs.cost_power
    mask = jnp.arange(max_models) < knobs.pool_size
    return Instance(space, prompts, train, llms, p_error, costs, mask)


def _cluster_weights(labels: jax.Array, n_clusters: int) -> jax.Array:
    return jnp.bincount(labels, length=n_clusters).astype(jnp.float32) / labels.shape[0]


def true_clustering(instance: Instance) -> Clustering:
    """The latent components themselves (`K = K*`), the setting of Proposition 2."""
    n_clusters = instance.space.means.shape[0]
    labels = instance.prompts.components
    return Clustering(labels, _cluster_weights(labels, n_clusters))


def kmeans_clustering(key: jax.Array, instance: Instance, n_clusters: int, *, n_init: int = 2,
                      max_iter: int = 100) -> Clustering:
    """UniRoute's prompt side: k-means on the *training* prompts, population by nearest centroid.

    Args:
      key: PRNG key for the k-means restarts.
      instance: an `Instance`.
      n_clusters: K (static; may differ from `K*`).
      n_init: k-means restarts (static).
      max_iter: Lloyd iterations per restart (static).

    Returns:
      A `Clustering` of the population.
    """
    x = instance.train.embeddings
    # scikit-learn's tolerance scaling, as `uniroute_jax.kmeans` does on the host.
    tol = 1e-4 * jnp.mean(jnp.var(x, axis=0))
    res = kmeans_kernel(key, x, jnp.ones(x.shape[0], x.dtype), tol, n_clusters=n_clusters, n_init=n_init,
                        max_iter=max_iter, metric="euclidean")
    labels = assign_kernel(instance.prompts.embeddings, res.centroids, metric="euclidean")
    return Clustering(labels, _cluster_weights(labels, n_clusters))


def population_psi(p_error: jax.Array, labels: jax.Array, n_clusters: int) -> jax.Array:
    """Exact cluster means `Psi*_k(h) = E[P(error | x, h) | k(x) = k]`, `[max_models, n_clusters]`.

    Uses the library's error-vector kernel with the exact error probabilities as soft labels and
    `alpha = 0` (the paper's plain mean). A cluster with no population prompt gets the model's
    overall error; it carries zero mass, so no risk depends on it.
    """
    quality = 1.0 - p_error
    mask = jnp.ones(p_error.shape, bool)
    return error_vectors_kernel(labels, quality, mask, jnp.asarray(0.0, p_error.dtype), n_clusters=n_clusters).psi


def sample_validation(key: jax.Array, instance: Instance, n_val: int) -> ValidationSample:
    """Draws `n_val` validation prompts i.i.d. from the population and their 0/1 errors.

    Sampling rows with replacement makes the validation prompts i.i.d. draws from the prompt
    distribution, which is what the Hoeffding step of the finite-sample bound needs.
    """
    k_idx, k_lab = jax.random.split(key)
    n_pop = instance.p_error.shape[0]
    index = jax.random.randint(k_idx, (n_val,), 0, n_pop).astype(jnp.int32)
    p = instance.p_error[index]
    errors = (jax.random.uniform(k_lab, p.shape) < p).astype(jnp.float32)
    return ValidationSample(index, errors)


def estimated_psi(validation: ValidationSample, clustering: Clustering, n_clusters: int,
                  n_used: ArrayLike | None = None) -> ur.ErrorVectors:
    """The paper's estimator `Psi_hat_k(h)`: mean validation error of `h` in cluster `k` (`alpha = 0`).

    A cluster with no validation prompt falls back to the model's overall validation error (the
    library's behaviour at `alpha = 0`).

    Args:
      validation: a `ValidationSample` of `max_val` prompts.
      clustering: the population's partition.
      n_clusters: K (static).
      n_used: optional [] int, use only the first `n_used` validation prompts. Validation sizes
        are data, not shapes: one compiled study serves every `N_val` (the prompts of a smaller
        set are then the first ones of a larger set drawn with the same key).

    Returns:
      `ErrorVectors` with `psi [max_models, n_clusters]` and `counts [max_models, n_clusters]`.
    """
    labels = clustering.labels[validation.index]
    quality = 1.0 - validation.errors
    rows = jnp.ones(validation.index.shape, bool) if n_used is None else jnp.arange(validation.index.shape[0]) < n_used
    mask = jnp.broadcast_to(rows[:, None], quality.shape)
    return error_vectors_kernel(labels, quality, mask, jnp.asarray(0.0, quality.dtype), n_clusters=n_clusters)
