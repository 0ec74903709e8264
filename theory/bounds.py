"""Proposition 2 (excess risk of cluster routing) in several readings, and a finite-sample bound.

Notation (all expectations over the finite prompt population of an instance, see `theory.meta`):

* `p(x, h) = P(error | x, h)`, `L_lam(x, h) = p(x, h) + lam * c(h)`, pool `H`.
* Risk of a router `r` at `lam` (the Lagrangian risk): `R_lam(r) = E_x[L_lam(x, r(x))]`.
  The Bayes router `r*(x) = argmin_{h in H} L_lam(x, h)` minimises it pointwise, so the
  **excess risk** `R_lam(r) - R_lam(r*)` is >= 0 for every router.
* A hard partition `k(x)` into `K` clusters with masses `w_k`; population error vectors
  `Psi*_k(h) = E[p(x, h) | k(x) = k]`; the cluster router with vectors `Psi`:
  `r_Psi(x) = argmin_h Psi_{k(x)}(h) + lam * c(h)` (UniRoute with one-hot `Phi`).
* Within-cluster heterogeneity `Delta_k(x, h) = p(x, h) - Psi*_k(h)`.

Bounds on `sup_lam R_lam(r_Psi*) - R_lam(r*)` computed here (`Prop2Terms`):

* `paper_own   = E_x[max_h Delta_{k(x)}(x, h)]` - the paper's statement with `k` read as the
  prompt's own cluster (signed, no factor 2).
* `paper_all   = E_x[max_{h, k} Delta_k(x, h)]` - the paper's statement read literally, `k`
  ranging over every cluster with positive mass (weaker, so it holds at least as often).
* `corrected   = 2 E_x[max_h |Delta_{k(x)}(x, h)|]` - the reviewers' safe statement.
* `range_bound = E_x[max_h Delta - min_h Delta]` - what the corrected proof actually shows.
* `one_sided   = E_x[max_h (-Delta_{k(x)}(x, h))]` - exact for the *population* cluster router
  (proof in `theory/README.md`): the router is constant on each cluster and `Psi*` is the
  cluster mean, so the positive part of `Delta` averages out and only the Bayes router's gain
  `Psi* - p` at its own choice remains. It is at most `range_bound <= corrected`.

The finite-sample bound (`finite_sample_terms`) adds estimation of `Psi` from validation data.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from theory.bayes import lagrangian_choice, relative_costs
from theory.meta import Clustering

HOLD_TOL = 1e-5
"""Slack for "bound >= excess" and "excess >= 0" checks on float32 means over the population.

Excess risks and bounds are means over a few thousand prompts of per-prompt terms of order 1
(regrets use costs relative to the pool's cheapest model), summed in float32; their rounding is
below 1e-6. A violation smaller than this is rounding, not a counterexample.
"""


class Prop2Terms(NamedTuple):
    """Excess risk of the population cluster router and the bounds of Proposition 2."""

    excess: jax.Array  # [n_lams] R_lam(r_Psi*) - R_lam(r*)
    one_sided: jax.Array  # [] E_x max_h (Psi*_k(x)(h) - p(x, h))
    paper_own: jax.Array  # [] E_x max_h Delta_k(x)(x, h)
    paper_all: jax.Array  # [] E_x max_{h,k} Delta_k(x, h)
    range_bound: jax.Array  # [] E_x (max_h Delta - min_h Delta)
    corrected: jax.Array  # [] 2 E_x max_h |Delta_k(x)(x, h)|


class FiniteSampleTerms(NamedTuple):
    """Excess risk of the router with estimated `Psi_hat` and the finite-sample bound's parts."""

    excess: jax.Array  # [n_lams] R_lam(r_Psi_hat) - R_lam(r*)
    excess_population: jax.Array  # [n_lams] R_lam(r_Psi*) - R_lam(r*)
    population: jax.Array  # [] one_sided term of Prop2Terms
    corrected: jax.Array  # [] corrected term of Prop2Terms
    oracle_bound: jax.Array  # [] population + sum_k w_k (max_h eps_k - min_h eps_k): always holds
    max_abs_eps: jax.Array  # [] max_{k, h in pool} |Psi_hat_k(h) - Psi*_k(h)| over clusters with mass
    radius: jax.Array  # [n_deltas, n_clusters] Hoeffding radius r_k(delta)
    event: jax.Array  # [n_deltas] bool, |eps_k(h)| <= r_k(delta) for every k and pool model h
    bound: jax.Array  # [n_deltas] population + 2 sum_k w_k r_k(delta)
    bound_max: jax.Array  # [n_deltas] corrected + 2 max_{k: w_k > 0} r_k(delta)


# ---------------------------------------------------------------------------------- risks


def lagrangian_losses(p_error: jax.Array, costs: jax.Array, model_mask: jax.Array, lam: ArrayLike) -> jax.Array:
    """`L_lam(x, h) - lam * c_min = p(x, h) + lam * (c(h) - c_min)`, `+inf` outside the pool.

    Shifted by the pool's cheapest cost (a constant, so regrets and decisions are unchanged) to
    keep float32 precise at large `lam` (see `theory.bayes.relative_costs`).

    Returns:
      [n_prompts, max_models] losses.
    """
    rel = relative_costs(costs, model_mask)
    return jnp.where(model_mask[None, :], p_error + lam * rel[None, :], jnp.inf)


def _regrets(p_error: jax.Array, costs: jax.Array, model_mask: jax.Array, lam: ArrayLike) -> jax.Array:
    """`L(x, h) - min_h' L(x, h')` per prompt and pool model (0 outside the pool)."""
    # One materialised copy of the losses, so the minimum and the differences see one rounding;
    # the clamp removes what rounding is left (a regret is >= 0 by definition).
    loss = jax.lax.optimization_barrier(lagrangian_losses(p_error, costs, model_mask, lam))
    regret = jnp.maximum(loss - jnp.min(loss, axis=1, keepdims=True), 0.0)
    return jnp.where(model_mask[None, :], regret, 0.0)


def excess_risk(p_error: jax.Array, costs: jax.Array, model_mask: jax.Array, choice: jax.Array,
                lam: ArrayLike) -> jax.Array:
    """Exact Lagrangian excess risk of any deterministic router over the Bayes router.

    The mean over prompts of `L(x, r(x)) - min_h L(x, h)`: each term is >= 0, so the excess is.

    Args:
      p_error: [n_prompts, max_models] exact error probabilities.
      costs: [max_models].
      model_mask: [max_models] bool pool.
      choice: [n_prompts] int models chosen by the router (inside the pool).
      lam: [] trade-off.

    Returns:
      [] excess risk.
    """
    regret = _regrets(p_error, costs, model_mask, lam)
    return jnp.mean(jnp.take_along_axis(regret, jnp.maximum(choice, 0)[:, None], axis=1)[:, 0])


def regret_table(p_error: jax.Array, costs: jax.Array, model_mask: jax.Array, clustering: Clustering,
                 lams: jax.Array) -> jax.Array:
    """Per-cluster regret of each model, `[n_lams, n_clusters, max_models]`.

    `G_lam[k, h] = E[L_lam(x, h) - min_h' L_lam(x, h') | k(x) = k]`, the excess risk on cluster `k`
    of sending all of it to `h` (0 for models outside the pool, which no router picks). A cluster
    router's excess risk is then `sum_k w_k G_lam[k, h_k]`: a sum of non-negative terms, with no
    cancellation between two large risks (at `lam = 1e4` a risk is about `1e4 * cost`, and a float32
    difference of two such means would carry rounding of order 1e-4).

    Args:
      p_error: [n_prompts, max_models]; costs: [max_models]; model_mask: [max_models] bool.
      clustering: the partition of the prompts.
      lams: [n_lams].
    """
    n_clusters = clustering.weights.shape[0]
    size = jnp.maximum(jnp.bincount(clustering.labels, length=n_clusters), 1).astype(p_error.dtype)

    def one(lam):
        regret = _regrets(p_error, costs, model_mask, lam)
        return jax.ops.segment_sum(regret, clustering.labels, num_segments=n_clusters) / size[:, None]

    return jax.lax.map(one, lams)


def cluster_decisions(psi: jax.Array, costs: jax.Array, model_mask: jax.Array, lam: ArrayLike) -> jax.Array:
    """UniRoute's decision per cluster, `argmin_h Psi_k(h) + lam c(h)`, `[n_clusters]`.

    Args:
      psi: [max_models, n_clusters] error vectors the router decides with.
    """
    return lagrangian_choice(psi.T, costs, model_mask, lam)


def cluster_excess(psi_router: jax.Array, regret: jax.Array, cluster_weights: jax.Array, costs: jax.Array,
                   model_mask: jax.Array, lams: jax.Array) -> jax.Array:
    """Exact excess risk of the cluster router deciding with `psi_router`, `[n_lams]`.

    Args:
      psi_router: [max_models, n_clusters] vectors used to decide (`Psi*` or an estimate).
      regret: [n_lams, n_clusters, max_models] from `regret_table`.
      cluster_weights: [n_clusters] population masses.
      costs: [max_models]; model_mask: [max_models] bool; lams: [n_lams].
    """

    def one(lam, g):
        h = cluster_decisions(psi_router, costs, model_mask, lam)
        return jnp.sum(cluster_weights * jnp.take_along_axis(g, h[:, None], axis=1)[:, 0])

    return jax.vmap(one)(lams, regret)


# ------------------------------------------------------------------------- Proposition 2


def deviations(p_error: jax.Array, psi_star: jax.Array, labels: jax.Array) -> jax.Array:
    """`Delta_{k(x)}(x, h) = p(x, h) - Psi*_{k(x)}(h)`, `[n_prompts, max_models]`."""
    return p_error - psi_star.T[labels]


def _masked_max(a: jax.Array, mask: jax.Array) -> jax.Array:
    return jnp.max(a, axis=-1, where=mask, initial=-jnp.inf)


def _masked_min(a: jax.Array, mask: jax.Array) -> jax.Array:
    return jnp.min(a, axis=-1, where=mask, initial=jnp.inf)


def prop2_terms(p_error: jax.Array, costs: jax.Array, model_mask: jax.Array, clustering: Clustering,
                psi_star: jax.Array, lams: jax.Array) -> Prop2Terms:
    """Excess risk of the population cluster router and every reading of Proposition 2's bound.

    Args:
      p_error: [n_prompts, max_models] exact error probabilities of the population.
      costs: [max_models].
      model_mask: [max_models] bool pool (at least one model).
      clustering: the partition (labels `[n_prompts]`, masses `[n_clusters]`).
      psi_star: [max_models, n_clusters] population cluster means (`meta.population_psi`).
      lams: [n_lams] trade-offs.

    Returns:
      `Prop2Terms`.
    """
    mask = model_mask[None, :]
    delta = deviations(p_error, psi_star, clustering.labels)
    hi = _masked_max(delta, mask)
    lo = _masked_min(delta, mask)
    # max over k of p - Psi*_k is p - min_k Psi*_k; only clusters that hold prompts count.
    psi_min = jnp.min(psi_star, axis=1, where=clustering.weights[None, :] > 0, initial=jnp.inf)
    regret = regret_table(p_error, costs, model_mask, clustering, lams)
    excess = cluster_excess(psi_star, regret, clustering.weights, costs, model_mask, lams)
    return Prop2Terms(
        excess=excess,
        one_sided=jnp.mean(-lo),
        paper_own=jnp.mean(hi),
        paper_all=jnp.mean(_masked_max(p_error - psi_min[None, :], mask)),
        range_bound=jnp.mean(hi - lo),
        corrected=2.0 * jnp.mean(jnp.maximum(hi, -lo)),
    )


# ------------------------------------------------------------------- finite-sample bound


def hoeffding_radius(counts: jax.Array, n_models: ArrayLike, delta: ArrayLike) -> jax.Array:
    """Uniform deviation radius of the per-cluster validation means.

    With probability >= 1 - delta over the validation draw, for every cluster `k` and pool model
    `h` simultaneously, `|Psi_hat_k(h) - Psi*_k(h)| <= r_k`, where

        r_k = min(1, sqrt(log(2 K M / delta) / (2 n_k)))   (r_k = 1 when n_k = 0),

    `K` the number of clusters, `M` the pool size and `n_k` the number of validation prompts in
    cluster `k` (Hoeffding conditionally on the counts, union bound over the `K M` pairs; the cap
    at 1 holds because both sides lie in `[0, 1]`).

    Args:
      counts: [n_clusters] validation prompts per cluster.
      n_models: [] pool size `M`.
      delta: [n_deltas] failure probabilities in (0, 1).

    Returns:
      [n_deltas, n_clusters] radii.
    """
    n_clusters = counts.shape[-1]
    delta = jnp.atleast_1d(jnp.asarray(delta, jnp.float32))
    log_term = jnp.log(2.0 * n_clusters * jnp.asarray(n_models, jnp.float32) / delta)[:, None]
    safe = jnp.maximum(counts, 1.0)[None, :]
    r = jnp.sqrt(log_term / (2.0 * safe))
    return jnp.where(counts[None, :] > 0, jnp.minimum(r, 1.0), 1.0)


def finite_sample_terms(p_error: jax.Array, costs: jax.Array, model_mask: jax.Array, clustering: Clustering,
                        psi_star: jax.Array, psi_hat: jax.Array, val_counts: jax.Array, lams: jax.Array,
                        deltas: jax.Array) -> FiniteSampleTerms:
    """Excess risk of the estimated-`Psi` router against the finite-sample bound.

    **Bound.** Let the partition be fixed independently of the validation data, and let the
    `N_val` validation prompts be i.i.d. from the prompt distribution with independent 0/1 error
    labels; `Psi_hat_k(h)` is the mean error of `h` on the `n_k` validation prompts of cluster `k`
    (the model's overall validation error when `n_k = 0`). Then with probability at least
    `1 - delta`, simultaneously for every `lam >= 0`,

        R_lam(r_Psi_hat) - R_lam(r*)
            <= E_x[max_h (Psi*_{k(x)}(h) - p(x, h))] + 2 sum_k w_k r_k(delta)          (bound)
            <= 2 E_x[max_h |Delta_{k(x)}(x, h)|] + 2 max_{k: w_k > 0} r_k(delta)        (bound_max)

    with `r_k` from `hoeffding_radius`. Deterministically (on every draw),

        R_lam(r_Psi_hat) - R_lam(r*) <= E_x[max_h (Psi* - p)] + sum_k w_k (max_h eps_k(h) - min_h eps_k(h)),

    `eps = Psi_hat - Psi*` (`oracle_bound`); the high-probability bound follows because on the
    Hoeffding event `max_h eps_k - min_h eps_k <= 2 r_k`. Derivation in `theory/README.md`.

    Args:
      p_error: [n_prompts, max_models]; costs: [max_models]; model_mask: [max_models] bool.
      clustering: the fixed partition of the population.
      psi_star: [max_models, n_clusters] population cluster means.
      psi_hat: [max_models, n_clusters] validation estimate.
      val_counts: [n_clusters] validation prompts per cluster.
      lams: [n_lams] trade-offs.
      deltas: [n_deltas] failure probabilities.

    Returns:
      `FiniteSampleTerms`.
    """
    w = clustering.weights
    delta_x = deviations(p_error, psi_star, clustering.labels)
    pool = model_mask[None, :]
    hi, lo = _masked_max(delta_x, pool), _masked_min(delta_x, pool)
    one_sided = jnp.mean(-lo)
    corrected = 2.0 * jnp.mean(jnp.maximum(hi, -lo))

    regret = regret_table(p_error, costs, model_mask, clustering, lams)
    excess = cluster_excess(psi_hat, regret, w, costs, model_mask, lams)
    excess_pop = cluster_excess(psi_star, regret, w, costs, model_mask, lams)

    eps = (psi_hat - psi_star).T  # [n_clusters, max_models]
    spread = _masked_max(eps, pool) - _masked_min(eps, pool)  # [n_clusters]
    occupied = w > 0
    abs_eps = _masked_max(jnp.abs(eps), pool)  # [n_clusters]
    n_models = jnp.sum(model_mask)
    radius = hoeffding_radius(val_counts, n_models, deltas)  # [n_deltas, n_clusters]
    inside = (abs_eps[None, :] <= radius) | ~occupied[None, :]
    return FiniteSampleTerms(
        excess=excess,
        excess_population=excess_pop,
        population=one_sided,
        corrected=corrected,
        oracle_bound=one_sided + jnp.sum(w * spread),
        max_abs_eps=jnp.max(abs_eps, where=occupied, initial=0.0),
        radius=radius,
        event=jnp.all(inside, axis=1),
        bound=one_sided + 2.0 * jnp.sum(w[None, :] * radius, axis=1),
        bound_max=corrected + 2.0 * jnp.max(radius, axis=1, where=occupied[None, :], initial=0.0),
    )
