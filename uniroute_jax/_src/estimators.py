"""Estimators of a new LLM's per-cluster error vector from a few labels.

A new LLM labelled on `n_k` validation prompts of cluster `k`, with `e_k` errors among them, gets
`psi_k = (e_k + s_k * p_k) / (n_k + s_k)`: its cluster mean shrunk toward a prior guess `p_k`
with strength `s_k` (pseudo-labels). The estimators differ in the prior and how its strength is
chosen:

* `mean`: the paper's plain cluster mean (`s = 0`); an empty cluster gets the overall error.
* `shrinkage`: `error_vectors`' rule, a fixed pseudo-count `alpha` toward the overall error.
* `hierarchical`: a tree population -> LLM -> group of clusters -> cluster. Groups are a
  k-means of the centroids weighted by cluster mass. Each level is shrunk toward its parent with a
  strength chosen by empirical Bayes: the one that maximises the Beta-Binomial marginal likelihood
  of the already represented LLMs' counts (each cell against its parent computed without it).
* `prior`: a population prior learnt from the represented LLMs,
  `logit Psi[h, k] = a_h + b_k + u_k . v_h` (fitted with optax). Cluster `k` of an LLM is
  predicted from the LLM's labels in the other clusters (its `(a, v)`: MAP under a Gaussian fitted
  to the represented LLMs' factors), and the prediction's own uncertainty is counted: that of
  `(a, v)` (Laplace), that of the cluster's `(b_k, u_k)` (the population fit's curvature, small
  only where many labels back it) and the LLM's deviation from the model, `N(0, tau_h^2)` on the
  logit scale. The Beta prior of the cluster matches those moments, so its strength is what the
  population supports and falls to nothing for a thin one. How far LLMs deviate is learnt as a
  distribution of `tau` over `TAU_GRID` (nonparametric empirical Bayes, by marginal likelihood of
  every represented LLM's clusters predicted without that LLM and without the cluster); an LLM's
  own `tau_h` is that distribution updated by its labels in its other clusters, so the prior's
  weight fades as an LLM's own labels show how it departs from the population. Where that prior
  does not predict the represented LLMs' clusters better than each LLM's own overall error (the
  shrinkage rule, its strength learnt the same way), `prior` is the `shrinkage` rule
  (`Estimator.used` says which).

Every estimator works from one label upward, for empty clusters and for any `K`; each is a
jitted kernel for one LLM, vmapped over LLMs. All the fitted numbers of every method live in one
`EstimatorParams` pytree, so the fit also vmaps (over trials in the label-efficiency study).

    est = fit_estimator("prior", pool.counts, pool.error_sums, cluster_masses=masses)
    psi = est.estimate(new_counts, new_error_sums)          # [n_new, K]
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.scipy.special import betaln
from jax.typing import ArrayLike

from uniroute_jax._src import validation
from uniroute_jax._src.error_vectors import DEFAULT_ALPHA
from uniroute_jax._src.kmeans import kmeans_kernel
from uniroute_jax._src.small_linalg import spd_inv, spd_solve

METHODS = ("mean", "shrinkage", "hierarchical", "prior")
DEFAULT_METHOD = "prior"
"""Estimator used by default: the one that won the label-efficiency study on most datasets
(benchmarks/results/label_efficiency/)."""

# Candidate strengths (pseudo-labels) of the empirical-Bayes searches, log-spaced.
STRENGTH_GRID = np.geomspace(0.1, 3000.0, 72).astype(np.float32)
# Candidate standard deviations (logit scale) of an LLM's deviation from the population
# prediction, `tau` of `prior`; 0 trusts the prediction as far as its own uncertainty allows.
TAU_GRID = np.concatenate([[0.0], np.geomspace(0.02, 8.0, 47)]).astype(np.float32)
# Pseudo-LLMs spread evenly over a hyper-parameter grid in its learnt distribution (a Dirichlet
# smoothing of the EM): a few LLMs leave most values possible.
_GRID_PSEUDO_LLMS = 1.0
_EPS = 1e-3  # priors are kept in [_EPS, 1 - _EPS] so Beta parameters stay positive
# Probabilists' Gauss-Hermite rule: moments of sigmoid(z) for a Gaussian logit z.
_GH_NODES, _GH_WEIGHTS = np.polynomial.hermite_e.hermegauss(24)
_GH_NODES, _GH_WEIGHTS = _GH_NODES.astype(np.float32), (_GH_WEIGHTS / _GH_WEIGHTS.sum()).astype(np.float32)
SHARED_PROMPT_CORRELATION = 0.3
"""Correlation of two LLMs' outcomes on one prompt beyond their cluster's rates (a prompt is hard
for most LLMs). Counts cannot show it, so intervals assume it: 0.21-0.28 on routerbench_partial,
0.29-0.43 on alpacaeval and 0.50 on routerdc_7llm (pairs of LLMs within k-means clusters of the
validation prompts, K = 10), 0 in the synthetic world."""


def _effective(counts, error_sums):
    """Labels as evidence about an LLM's place among the others on the same prompts: its outcomes
    share `SHARED_PROMPT_CORRELATION` of their variance with every LLM's there (the prompts'
    difficulty), which a comparison on those prompts cancels, so each label is worth
    `1 / (1 - rho)` for it."""
    scale = 1.0 / (1.0 - SHARED_PROMPT_CORRELATION)
    return counts * scale, error_sums * scale


# A unit Gaussian worth this many LLMs in the spread of LLMs' factors: one represented LLM does
# not make the next one like it.
_PRIOR_LLMS = 2.0


class EstimatorParams(NamedTuple):
    """Fitted numbers of every estimator (a pytree; unused fields of a method are ignored).

    `K` clusters, `G` groups, `r` factors (the first column of `factors` is all ones: the LLM's
    intercept).
    """

    alpha: jax.Array  # [] pseudo-count of `shrinkage`
    population_error: jax.Array  # [] mean overall error of the represented LLMs
    groups: jax.Array  # [K] int32 group of each cluster (`hierarchical`)
    strengths: jax.Array  # [3] LLM|population, group|LLM, cluster|group strengths (`hierarchical`)
    factors: jax.Array  # [K, r + 1] cluster loadings `(1, u_k)` (`prior`)
    offsets: jax.Array  # [K] cluster offsets `b_k` (`prior`)
    v_mean: jax.Array  # [r + 1] prior mean of an LLM's `(a, v)` (`prior`)
    v_precision: jax.Array  # [r + 1, r + 1] prior precision of `(a, v)` (`prior`)
    kappa: jax.Array  # [] strength of a cluster's own deviation (`tau`) at the prior mean, median over clusters
    factor_cov: jax.Array | None = None  # [K, r + 1, r + 1] covariance of each cluster's `(b_k, u_k)` (`prior`)
    tau_weights: jax.Array | None = None  # [T] log-probabilities of an LLM's `tau` over TAU_GRID (`prior`)
    use_prior: jax.Array | None = None  # [] bool: False when `prior` is the `shrinkage` rule
    support: jax.Array | None = None  # [K] mean labels per represented LLM behind the factors in each cluster (`prior`'s cap)


class Estimate(NamedTuple):
    """Output of the kernels, one row per LLM: `psi = (e + s p) / (n + s)` (for `prior`, a mixture
    of such over `tau`, with `prior` and `strength` their posterior means)."""

    psi: jax.Array  # [..., K] estimated error per cluster, in [0, 1]
    prior: jax.Array  # [..., K] prior guess `p` each cluster is shrunk toward
    strength: jax.Array  # [..., K] its weight `s` in pseudo-labels (0 for `mean`)
    a: jax.Array | None = None  # [..., K] Beta posterior of the rate on the labelled prompts (`_effective` labels)
    b: jax.Array | None = None  # [..., K]; None: `Beta(e' + s p + 1/2, n' - e' + s (1 - p) + 1/2)`


# ------------------------------------------------------------------------------- kernels


def _overall(counts, error_sums, fallback):
    n = jnp.sum(counts)
    return jnp.where(n > 0, jnp.sum(error_sums) / jnp.where(n > 0, n, 1.0), fallback)


def _beta_posterior(counts, error_sums, prior, strength):
    """`(a, b)` of `Beta(e' + s p + 1/2, n' - e' + s (1 - p) + 1/2)` on `_effective` labels (Jeffreys'
    half-counts keep it proper for a strength of zero)."""
    n, e = _effective(counts, error_sums)
    return e + strength * prior + 0.5, jnp.maximum(n - e, 0.0) + strength * (1 - prior) + 0.5


def _shrink(counts, error_sums, prior, strength):
    denom = counts + strength
    psi = jnp.where(denom > 0, (error_sums + strength * prior) / jnp.where(denom > 0, denom, 1.0), prior)
    strength = jnp.broadcast_to(strength, psi.shape)
    return Estimate(jnp.clip(psi, 0.0, 1.0), prior, strength, *_beta_posterior(counts, error_sums, prior, strength))


def _mean_one(params, counts, error_sums):
    overall = _overall(counts, error_sums, params.population_error)
    return _shrink(counts, error_sums, jnp.full_like(counts, overall), jnp.zeros_like(counts))


def _shrinkage_one(params, counts, error_sums):
    # The pseudo-count rule of `error_vectors_kernel`, written on counts: same numbers.
    overall = _overall(counts, error_sums, params.population_error)
    return _shrink(counts, error_sums, jnp.full_like(counts, overall), jnp.full_like(counts, params.alpha))


def _hierarchical_parents(params, counts, error_sums):
    """Group-level estimate of each cluster's parent, `[K]`, and the LLM's shrunk root `[]`."""
    t_root, t_group, _ = params.strengths[0], params.strengths[1], params.strengths[2]
    root = (jnp.sum(error_sums) + t_root * params.population_error) / (jnp.sum(counts) + t_root)
    n_groups = params.groups.shape[0]  # groups are ids in [0, K)
    seg = functools.partial(jax.ops.segment_sum, segment_ids=params.groups, num_segments=n_groups)
    group = (seg(error_sums) + t_group * root) / (seg(counts) + t_group)
    return group[params.groups], root


def _hierarchical_one(params, counts, error_sums):
    parent, _ = _hierarchical_parents(params, counts, error_sums)
    return _shrink(counts, error_sums, parent, jnp.full_like(counts, params.strengths[2]))


def _log_posterior(params, counts, error_sums, v):
    z = params.factors @ v + params.offsets
    d = v - params.v_mean
    return (jnp.sum(error_sums * jax.nn.log_sigmoid(z) + (counts - error_sums) * jax.nn.log_sigmoid(-z))
            - 0.5 * d @ params.v_precision @ d)


_STEP_SCALES = (1.0, 0.5, 0.25, 0.1, 0.0)


def _logistic_map(params, counts, error_sums, n_steps: int = 30, v0=None):
    """MAP `(a, v)` of one LLM under the Gaussian prior: Newton steps from `v0` (default the prior
    mean) with a step-size search over `_STEP_SCALES` (a plain Newton step can overshoot far from
    the optimum; the posterior is strictly concave, so the ascent converges)."""
    f = params.factors
    scales = jnp.asarray(_STEP_SCALES)

    def step(_, v):
        m = jax.nn.sigmoid(f @ v + params.offsets)
        grad = f.T @ (error_sums - counts * m) - params.v_precision @ (v - params.v_mean)
        hess = (f * (counts * m * (1 - m))[:, None]).T @ f + params.v_precision
        delta = spd_solve(hess, grad)
        cand = v[None, :] + scales[:, None] * delta[None, :]
        value = jax.vmap(lambda c: _log_posterior(params, counts, error_sums, c))(cand)
        return cand[jnp.argmax(value)]

    return jax.lax.fori_loop(0, n_steps, step, params.v_mean if v0 is None else v0)


def _cell_prediction(params, counts, error_sums, k):
    """Logit of cluster `k` predicted from the LLM's labels in the other clusters, `[]`, and the
    prediction's variance `[]`: that of the LLM's `(a, v)` (Laplace at the MAP) plus that of the
    cluster's own `(b_k, u_k)` (`factor_cov`). The cluster's own labels never enter its prior."""
    z, var, _ = _cell_prediction_from(params, counts, error_sums, k)
    return z, var


def _cell_prediction_from(params, counts, error_sums, k, n_steps: int = 30, v0=None):
    """`_cell_prediction` with its leave-`k`-out MAP found by `n_steps` Newton steps from `v0`
    (default: 30 from the prior mean), and that MAP: `(z, var, v)`."""
    f = params.factors
    keep = 1.0 - jax.nn.one_hot(k, f.shape[0], dtype=counts.dtype)
    n, e = counts * keep, error_sums * keep
    v = _logistic_map(params, n, e, n_steps, v0)
    m = jax.nn.sigmoid(f @ v + params.offsets)
    cov_v = spd_inv((f * (n * m * (1 - m))[:, None]).T @ f + params.v_precision)
    g = v.at[0].set(1.0)  # d logit_k / d (b_k, u_k)
    return f[k] @ v + params.offsets[k], f[k] @ cov_v @ f[k] + g @ params.factor_cov[k] @ g, v


def _cell_predictions(params, counts, error_sums):
    """`_cell_prediction` of every cluster: logits `[K]` and variances `[K]`."""
    return jax.vmap(lambda k: _cell_prediction(params, counts, error_sums, k))(jnp.arange(params.factors.shape[0]))


def _beta_prior(z, var):
    """`(mean, strength)` of the Beta with the mean and variance of `sigmoid(N(z, var))` (any shape)."""
    nodes = jnp.reshape(jnp.asarray(_GH_NODES, z.dtype), (1,) * z.ndim + (-1,))
    weights = jnp.reshape(jnp.asarray(_GH_WEIGHTS, z.dtype), (1,) * z.ndim + (-1,))
    p = jax.nn.sigmoid(z[..., None] + jnp.sqrt(jnp.maximum(var, 0.0))[..., None] * nodes)
    mean = jnp.sum(weights * p, -1)
    spread = jnp.sum(weights * (p - mean[..., None]) ** 2, -1)
    mean = jnp.clip(mean, _EPS, 1 - _EPS)
    strength = mean * (1 - mean) / jnp.maximum(spread, 1e-12) - 1.0
    return mean, jnp.clip(strength, 1e-3, STRENGTH_GRID[-1])


def _tau_priors(z, var):
    """Beta priors `(pred, strength)`, `[T, K]` each, of the clusters at every `tau` of the grid."""
    tau2 = jnp.reshape(jnp.asarray(TAU_GRID, z.dtype) ** 2, (-1, 1))
    return _beta_prior(z[None, :] + 0.0 * tau2, var[None, :] + tau2)


def _tau_loglik(z, var, counts, error_sums):
    """`[T, K]` Beta-Binomial log-likelihood of each cluster's labels at each `tau` of the grid (0
    for a cluster without labels), its prior from the prediction `z, var` (`[K]` each)."""
    pred, strength = _tau_priors(z, var)
    n, e = _effective(counts, error_sums)
    ll = _beta_binomial_loglik(e[None, :], n[None, :], pred, strength)
    return jnp.where(counts[None, :] > 0, ll, 0.0)


def _mixture_posterior(log_weights, z, var, counts, error_sums, support) -> Estimate:
    """Posterior of each cluster under the scale mixture `sum_t pi_t Beta-prior(tau_t)`
    (`log_weights [T]`): each `tau` weighted by the cluster's own labels, so a cluster whose labels
    depart from the prediction keeps them. The labels count as `_effective` labels, and no prior
    counts for more than the labels a represented LLM has in the cluster (`support [K]`): what the
    population knows of a cluster rests on them. `psi` is the posterior mean, `prior` and
    `strength` the posterior means of the components', `a, b` the Beta with the posterior's mean
    and variance."""
    pred, strength = _tau_priors(z, var)  # [T, K]
    cap = jnp.maximum(_effective(support, support)[0], 1e-3)
    strength = jnp.minimum(strength, cap[None, :])
    counts, error_sums = _effective(counts, error_sums)
    ll = _beta_binomial_loglik(error_sums[None, :], counts[None, :], pred, strength)
    post = jax.nn.softmax(log_weights[:, None] + jnp.where(counts[None, :] > 0, ll, 0.0), axis=0)
    psi = jnp.sum(post * (error_sums + strength * pred) / (counts + strength), 0)
    a = error_sums + strength * pred + 0.5
    b = counts - error_sums + strength * (1 - pred) + 0.5
    m = a / (a + b)
    mean = jnp.sum(post * m, 0)
    spread = jnp.sum(post * (m * (1 - m) / (a + b + 1) + (m - mean[None, :]) ** 2), 0)
    total = mean * (1 - mean) / jnp.maximum(spread, 1e-12) - 1.0
    return Estimate(jnp.clip(psi, 0.0, 1.0), jnp.sum(post * pred, 0), jnp.sum(post * strength, 0),
                    mean * total, (1 - mean) * total)


def _prior_one(params, counts, error_sums):
    z, var = _cell_predictions(params, counts, error_sums)
    shrunk = _shrinkage_one(params, counts, error_sums)
    return jax.tree.map(lambda a, b: jnp.where(params.use_prior, a, b),
                        _mixture_posterior(params.tau_weights, z, var, counts, error_sums, params.support), shrunk)


_ONE = {"mean": _mean_one, "shrinkage": _shrinkage_one, "hierarchical": _hierarchical_one, "prior": _prior_one}


@functools.partial(jax.jit, static_argnames=("method",))
def estimate_kernel(params: EstimatorParams, counts: jax.Array, error_sums: jax.Array, *, method: str) -> Estimate:
    """Unchecked: estimates of `[n_models, K]` counts (one row per LLM), a vmap of one LLM's kernel.

    Args:
      params: fitted `EstimatorParams`.
      counts: [n_models, K] labels per cluster (hard assignment; zero for an empty cluster).
      error_sums: [n_models, K] errors among them.
      method: one of `METHODS` (static).
    """
    return jax.vmap(_ONE[method], in_axes=(None, 0, 0))(params, counts, error_sums)


# -------------------------------------------------------------------- empirical Bayes fit


def _beta_binomial_loglik(errors, counts, prior, strength):
    """log P(errors | counts) under Beta(s p, s (1 - p)), without the binomial coefficient (which
    does not depend on `s` or `p`)."""
    a, b = strength * prior, strength * (1 - prior)
    return betaln(errors + a, counts - errors + b) - betaln(a, b)


def _best_strength(errors, counts, prior, weight):
    """The grid strength that maximises the summed Beta-Binomial log-likelihood of `weight`ed cells."""
    prior = jnp.clip(prior, _EPS, 1 - _EPS)
    grid = jnp.asarray(STRENGTH_GRID)
    ll = jax.vmap(lambda s: jnp.sum(weight * _beta_binomial_loglik(errors, counts, prior, s)))(grid)
    return grid[jnp.argmax(ll)]


def _fit_hierarchy(counts, errors, model_mask, groups, population_error):
    """Strengths of the three levels, each against its parent computed without the cell itself."""
    w = model_mask.astype(counts.dtype)
    n_h, e_h = counts.sum(1), errors.sum(1)  # [R]
    n_all, e_all = jnp.sum(w * n_h), jnp.sum(w * e_h)
    loo_pop = (e_all - w * e_h) / jnp.maximum(n_all - w * n_h, 1e-6)
    t_root = _best_strength(e_h, n_h, loo_pop, w)
    root = (e_h + t_root * population_error) / (n_h + t_root)  # [R]
    K = counts.shape[1]
    seg = jax.vmap(lambda x: jax.ops.segment_sum(x, groups, num_segments=K))
    n_g, e_g = seg(counts), seg(errors)  # [R, K] (by group id)
    loo_root = (e_h[:, None] - e_g + t_root * population_error) / (n_h[:, None] - n_g + t_root)
    t_group = _best_strength(e_g, n_g, loo_root, w[:, None] * (n_g > 0))
    n_par, e_par = n_g[:, groups] - counts, e_g[:, groups] - errors
    loo_group = (e_par + t_group * root[:, None]) / (n_par + t_group)
    t_cluster = _best_strength(errors, counts, loo_group, w[:, None] * (counts > 0))
    return jnp.stack([t_root, t_group, t_cluster])


def _fit_low_rank(key, counts, errors, model_mask, *, rank: int, n_steps: int, ridge: float, init=None,
                  learning_rate: float = 0.05):
    """Maximum-penalised-likelihood `logit Psi[h, k] = a_h + b_k + u_k . v_h` on the represented LLMs
    (from `init`, a previous fit's parameters, when given)."""
    R, K = counts.shape
    w = model_mask.astype(counts.dtype)[:, None]
    total = jnp.maximum(jnp.sum(w * counts), 1.0)
    rate = (jnp.sum(w * errors) + 0.5) / (total + 1.0)
    k_u, k_v = jax.random.split(key)
    params = init if init is not None else {
        "u": 0.1 * jax.random.normal(k_u, (K, rank)), "v": 0.1 * jax.random.normal(k_v, (R, rank)),
        "a": jnp.zeros(R), "b": jnp.full(K, jnp.log(rate / (1 - rate)))}

    def loss(p):
        z = p["a"][:, None] + p["b"][None, :] + p["v"] @ p["u"].T
        nll = -jnp.sum(w * (errors * jax.nn.log_sigmoid(z) + (counts - errors) * jax.nn.log_sigmoid(-z)))
        # A unit-variance Gaussian prior on every factor, in units of labels; a weak one on the
        # intercepts fixes the a + b shift.
        pen = 0.5 * ridge * (jnp.sum(w * p["v"] ** 2) + jnp.sum(p["u"] ** 2)) + 0.5e-3 * jnp.sum(w[:, 0] * p["a"] ** 2)
        return (nll + pen) / total

    opt = optax.adam(learning_rate)

    def step(carry, _):
        p, state = carry
        g = jax.grad(loss)(p)
        updates, state = opt.update(g, state, p)
        return (optax.apply_updates(p, updates), state), None

    (p, _), _ = jax.lax.scan(step, (params, opt.init(params)), None, length=n_steps)
    return p


def _population(p, counts, errors, weight, *, rank: int, ridge: float):
    """`(factors [K, r + 1], offsets [K], v_mean [r + 1], v_precision, factor_cov [K, r + 1, r + 1])`
    of the population prior of the low-rank fit `p` on the rows of `weight [R]`."""
    R, K = counts.shape
    factors = jnp.concatenate([jnp.ones((K, 1)), p["u"]], axis=1)
    av = jnp.concatenate([p["a"][:, None], p["v"]], axis=1)  # [R, r + 1]
    n_ref = jnp.sum(weight)
    mean = jnp.sum(weight[:, None] * av, 0) / jnp.maximum(n_ref, 1.0)
    centred = (av - mean) * weight[:, None]
    cov = (centred.T @ centred + _PRIOR_LLMS * jnp.eye(rank + 1)) / (n_ref + _PRIOR_LLMS)
    # Curvature of the penalised likelihood in each cluster's (b_k, u_k): the labels behind it. b_k
    # is not penalised; a tiny term keeps a cluster without labels finite (and uninformative).
    m = jax.nn.sigmoid(p["a"][:, None] + p["b"][None, :] + p["v"] @ p["u"].T)
    g = jnp.concatenate([jnp.ones((R, 1)), p["v"]], axis=1)
    info = weight[:, None] * counts * m * (1 - m)  # [R, K]
    hess = jnp.einsum("hk,hi,hj->kij", info, g, g) + jnp.diag(jnp.concatenate([jnp.full(1, 1e-2), jnp.full(rank, ridge)]))
    return factors, p["b"], mean, spd_inv(cov), spd_inv(hess)


def _grid_distribution(ll, weight, n_iter: int = 50):
    """Log-probabilities `[G]` of a hyper-parameter over its grid: the mixing distribution that
    maximises `sum_h weight_h log sum_g pi_g exp(ll[h, g])` (EM on `ll [R, G]`, each LLM's
    log-likelihood at each grid value), with `_GRID_PSEUDO_LLMS` spread evenly over the grid."""
    G = ll.shape[1]

    def step(_, log_pi):
        post = jax.nn.softmax(log_pi[None, :] + ll, axis=1)
        mass = jnp.sum(weight[:, None] * post, 0) + _GRID_PSEUDO_LLMS / G
        return jnp.log(mass / jnp.sum(mass))

    return jax.lax.fori_loop(0, n_iter, step, jnp.full(G, -jnp.log(G), ll.dtype))


def _held_out_evidence(ll, cells):
    """`sum_hk cells_hk log sum_g pi_{-h}(g) exp(ll[h, g, k])`: every cluster's marginal likelihood
    (`ll [R, G, K]`) under the grid distribution learnt on the other LLMs' clusters (`cells
    [R, K]` weights them: 0 for padding and clusters without labels), and those `[R, G]`."""
    R, G, K = ll.shape
    units, unit_w = jnp.moveaxis(ll, 1, 2).reshape(R * K, G), cells.reshape(-1)
    owner = jnp.repeat(jnp.eye(R, dtype=cells.dtype), K, axis=1)  # [R, R * K]
    log_pi = jax.vmap(lambda drop: _grid_distribution(units, unit_w * (1.0 - drop)))(owner)
    per_cell = jax.scipy.special.logsumexp(log_pi[:, :, None] + ll, axis=1)  # [R, K]
    return jnp.sum(cells * per_cell), log_pi


def _fit_prior(key, counts, errors, model_mask, factor_counts, factor_errors, base: EstimatorParams, *, rank: int,
               n_steps: int, ridge: float) -> tuple[EstimatorParams, Estimate]:
    """Population prior of the represented LLMs and their own rows, each estimated without itself.

    The factors are fitted on `factor_counts` (all the labels of the represented LLMs), once on
    every LLM (the returned params, for new LLMs) and once without each LLM. Each LLM's clusters
    are predicted by the fit without it, from its labels in the other clusters, as a new LLM's
    would be; their labels in `counts` (the prompts a new LLM is labelled on) give each LLM's
    likelihood of every `tau` of the grid, and the distribution of `tau` over LLMs
    (`tau_weights`) is learnt from those. `use_prior` compares the held-out evidence of that prior
    with the shrinkage rule's (each LLM's own overall error without the cluster, its strength's
    distribution over `STRENGTH_GRID` learnt the same way).

    Returns:
      `(params, rows)`: `base` with the prior's fields, and `Estimate [R, K]` of every represented
      LLM under a prior fitted without it.
    """
    R, K = counts.shape
    w = model_mask.astype(counts.dtype)
    fit = functools.partial(_fit_low_rank, key, factor_counts, factor_errors, rank=rank, ridge=ridge)
    population = functools.partial(_population, counts=factor_counts, errors=factor_errors, rank=rank, ridge=ridge)
    full = fit(model_mask, n_steps=n_steps)
    # Each LLM left out in turn: the full fit moved a little, so a short, gentler run from it.
    left_out = w[None] * (1.0 - jnp.eye(R, dtype=w.dtype))
    loo_fits = jax.vmap(lambda wt: population(fit(wt, n_steps=max(1, n_steps // 5), init=full, learning_rate=0.01),
                                              weight=wt))(left_out)
    with_fit = lambda f: base._replace(factors=f[0], offsets=f[1], v_mean=f[2], v_precision=f[3], factor_cov=f[4])
    z, var = jax.vmap(lambda f, n, e: _cell_predictions(with_fit(f), n, e))(loo_fits, counts, errors)  # [R, K] each
    ll = jax.vmap(_tau_loglik)(z, var, counts, errors)  # [R, T, K]
    # Every cluster draws its own tau from one distribution over the grid, learnt on the clusters
    # with labels (each LLM's clusters held out of the distribution they are scored under).
    cells = w[:, None] * (counts > 0)
    evidence, loo_weights = _held_out_evidence(ll, cells)
    # The shrinkage rule on the same footing: each cluster shrunk toward the LLM's other clusters.
    n_h, e_h = counts.sum(1, keepdims=True), errors.sum(1, keepdims=True)
    rest = n_h - counts
    own = jnp.clip(jnp.where(rest > 0, (e_h - errors) / jnp.maximum(rest, 1e-6), base.population_error),
                   _EPS, 1 - _EPS)
    n_eff, e_eff = _effective(counts, errors)
    ll_own = jax.vmap(lambda t: jnp.where(counts > 0, _beta_binomial_loglik(e_eff, n_eff, own, t), 0.0),
                      out_axes=1)(jnp.asarray(STRENGTH_GRID, counts.dtype))  # [R, S, K]
    use_prior = evidence > _held_out_evidence(ll_own, cells)[0]
    weights = _grid_distribution(jnp.moveaxis(ll, 1, 2).reshape(R * K, -1), cells.reshape(-1))
    support = jnp.sum(w[:, None] * factor_counts, 0) / jnp.maximum(jnp.sum(w), 1.0)
    params = with_fit(population(full, weight=w))._replace(tau_weights=weights, use_prior=use_prior,
                                                           support=support)
    # Prompt selection's summary: the strength of a cluster's own deviation at the prior mean.
    tau2 = jnp.sum(jnp.exp(weights) * jnp.asarray(TAU_GRID, counts.dtype) ** 2)
    kappa = jnp.median(_beta_prior(params.factors @ params.v_mean + params.offsets, jnp.full(K, tau2))[1])
    params = params._replace(kappa=kappa)
    # Each row's cap from the other LLMs' labels behind the factors.
    fw = w[:, None] * factor_counts
    others = (jnp.sum(fw, 0)[None, :] - fw) / jnp.maximum(jnp.sum(w) - w, 1.0)[:, None]
    mixed = jax.vmap(_mixture_posterior)(loo_weights, z, var, counts, errors, others)
    shrunk = jax.vmap(_shrinkage_one, in_axes=(None, 0, 0))(params, counts, errors)
    rows = jax.tree.map(lambda a, b: jnp.where(use_prior, a, b), mixed, shrunk)
    return params, rows


def _fit_all(key, counts, error_sums, model_mask, centroids, cluster_masses, alpha, extra_counts, extra_error_sums,
             *, n_groups: int, rank: int, n_steps: int, with_prior: bool):
    """`fit_kernel`'s params and the prior's rows of the represented LLMs (None without the prior)."""
    k_groups, k_prior = jax.random.split(key)
    R, K = counts.shape
    w = model_mask.astype(counts.dtype)
    overall = counts.sum(1)
    overall = jnp.where(overall > 0, error_sums.sum(1) / jnp.maximum(overall, 1e-6), 0.5)
    population_error = jnp.clip(jnp.sum(w * overall) / jnp.maximum(jnp.sum(w), 1.0), _EPS, 1 - _EPS)
    masses = jnp.maximum(cluster_masses, 0.0)
    masses = jnp.where(jnp.sum(masses) > 0, masses, jnp.ones_like(masses))
    km = kmeans_kernel(k_groups, centroids, masses, jnp.asarray(0.0, centroids.dtype), n_clusters=n_groups,
                       n_init=3, max_iter=100, metric="euclidean")
    groups = km.labels.astype(jnp.int32)
    strengths = _fit_hierarchy(counts, error_sums, model_mask, groups, population_error)
    f = jnp.zeros((K, rank + 1), counts.dtype).at[:, 0].set(1.0)
    base = EstimatorParams(jnp.asarray(alpha, counts.dtype), population_error, groups, strengths, f,
                           jnp.zeros(K, counts.dtype), jnp.zeros(rank + 1, counts.dtype), jnp.eye(rank + 1),
                           jnp.zeros((), counts.dtype), jnp.zeros((K, rank + 1, rank + 1), counts.dtype),
                           jnp.full(TAU_GRID.shape, -math.log(TAU_GRID.size), counts.dtype), jnp.zeros((), bool),
                           jnp.zeros(K, counts.dtype))
    if not with_prior:  # `prior` would be the shrinkage rule (use_prior False)
        return base, None
    fc, fe = counts, error_sums
    if extra_counts is not None:
        fc, fe = counts + extra_counts, error_sums + extra_error_sums
    return _fit_prior(k_prior, counts, error_sums, model_mask, fc, fe, base, rank=rank, n_steps=n_steps, ridge=1.0)


@functools.partial(jax.jit, static_argnames=("n_groups", "rank", "n_steps", "with_prior"))
def fit_kernel(key: jax.Array, counts: jax.Array, error_sums: jax.Array, model_mask: jax.Array,
               centroids: jax.Array, cluster_masses: jax.Array, alpha: jax.Array, extra_counts: jax.Array | None = None,
               extra_error_sums: jax.Array | None = None, *, n_groups: int, rank: int = 2,
               n_steps: int = 1500, with_prior: bool = True) -> EstimatorParams:
    """Unchecked fit of every estimator from the represented LLMs (padded rows masked out).

    Args:
      key: PRNG key (k-means of the centroids, factor initialisation).
      counts: [R, K] validation labels per cluster of the represented LLMs.
      error_sums: [R, K] errors among them.
      model_mask: [R] bool, False for padding rows.
      centroids: [K, dim] cluster centroids (grouped by k-means for `hierarchical`).
      cluster_masses: [K] share of prompts per cluster (k-means weights).
      alpha: [] pseudo-count of `shrinkage`.
      extra_counts, extra_error_sums: optional [R, K] further labels of the represented LLMs on other
        prompts (e.g. training prompts); they enter the low-rank factors only, not the strengths.
      n_groups: number of coarse groups G <= K (static).
      rank: number of free factors r (static).
      n_steps: Adam steps of each low-rank fit (static).
      with_prior: fit the population prior (static; without it `prior` is the shrinkage rule).
    """
    return _fit_all(key, counts, error_sums, model_mask, centroids, cluster_masses, alpha, extra_counts,
                    extra_error_sums, n_groups=n_groups, rank=rank, n_steps=n_steps, with_prior=with_prior)[0]


@functools.partial(jax.jit, static_argnames=("method", "n_groups", "rank", "n_steps"))
def pool_kernel(key: jax.Array, counts: jax.Array, error_sums: jax.Array, model_mask: jax.Array,
                centroids: jax.Array, cluster_masses: jax.Array, alpha: jax.Array, *, method: str, n_groups: int,
                rank: int = 2, n_steps: int = 1500) -> tuple[EstimatorParams, Estimate]:
    """Unchecked: `fit_kernel`'s params and every represented LLM's row `Estimate [R, K]` under
    `method`; for `prior` each row's prior is fitted without that LLM (see `_fit_prior`)."""
    params, rows = _fit_all(key, counts, error_sums, model_mask, centroids, cluster_masses, alpha, None, None,
                            n_groups=n_groups, rank=rank, n_steps=n_steps, with_prior=method == "prior")
    if method != "prior":
        rows = jax.vmap(_ONE[method], in_axes=(None, 0, 0))(params, counts, error_sums)
    return params, rows


def default_n_groups(n_clusters: int) -> int:
    """Coarse groups of the hierarchy: about sqrt(K), at least 1."""
    return max(1, min(n_clusters, round(math.sqrt(n_clusters))))


# ------------------------------------------------------------------------------ public API


@dataclasses.dataclass(frozen=True)
class Estimator:
    """A fitted estimator: `estimate(counts, error_sums)` gives a new LLM's `psi`."""

    method: str
    params: EstimatorParams

    @property
    def n_clusters(self) -> int:
        return int(self.params.offsets.shape[0])

    @property
    def used(self) -> str:
        """The rule the estimates follow: `method`, or "shrinkage" where the population prior did not
        predict held-out LLMs better than that rule (or could not be fitted)."""
        if self.method == "prior" and not bool(self.params.use_prior):
            return "shrinkage"
        return self.method

    def _check(self, counts: ArrayLike, error_sums: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
        n = np.asarray(counts)
        n = validation.float_array(n[None] if n.ndim == 1 else n, "counts", shape=(None, self.n_clusters))
        validation.nonnegative(n, "counts")
        e = np.asarray(error_sums)
        e = validation.float_array(e[None] if e.ndim == 1 else e, "error_sums", shape=n.shape)
        validation.nonnegative(e, "error_sums")
        if np.any(e > n + 1e-4):
            raise ValueError("error_sums must not exceed counts")
        return n, e

    def estimate_full(self, counts: ArrayLike, error_sums: ArrayLike) -> Estimate:
        """`Estimate(psi, prior, strength)`, each `[n_models, K]` (a 1-D input is one LLM)."""
        n, e = self._check(counts, error_sums)
        return estimate_kernel(self.params, jnp.asarray(n), jnp.asarray(e), method=self.method)

    def estimate(self, counts: ArrayLike, error_sums: ArrayLike) -> np.ndarray:
        """Per-cluster error estimates `psi [n_models, K]` of LLMs with these labels.

        Args:
          counts: [n_models, K] (or [K]) labels per cluster, >= 0; zero clusters are fine.
          error_sums: same shape, errors among those labels (<= counts).
        """
        return np.asarray(self.estimate_full(counts, error_sums).psi)

    def intervals(self, counts: ArrayLike, error_sums: ArrayLike, *, level: float = 0.95):
        """Central Beta intervals `Beta(e + s p + 1/2, n - e + s (1 - p) + 1/2)` of every estimate
        (`onboarding.ErrorIntervals`, each field `[n_models, K]`)."""
        from uniroute_jax._src.onboarding import ErrorIntervals, _beta_quantile

        level = validation.nonnegative_float(level, "level")
        if not 0 < level < 1:
            raise ValueError(f"level must be in (0, 1), got {level}")
        n, e = self._check(counts, error_sums)
        return estimate_intervals(self.estimate_full(n, e), n, e, level=level)


def posterior_rows(est: Estimate, counts: ArrayLike, error_sums: ArrayLike) -> tuple[jax.Array, jax.Array]:
    """`(a, b)`, each `[n_models, K]`: the Beta posterior of each rate on the labelled prompts of
    `Estimate` rows with labels `counts`, `error_sums` (`est.a, est.b` where the estimator gives them,
    else `Beta(e' + s p + 1/2, n' - e' + s (1 - p) + 1/2)` on `_effective` labels)."""
    if est.a is not None:
        return jnp.asarray(est.a, jnp.float32), jnp.asarray(est.b, jnp.float32)
    return _beta_posterior(jnp.asarray(counts, jnp.float32), jnp.asarray(error_sums, jnp.float32),
                           jnp.asarray(est.prior, jnp.float32), jnp.asarray(est.strength, jnp.float32))


def estimate_intervals(est: Estimate, counts: ArrayLike, error_sums: ArrayLike, *, level: float = 0.95):
    """Central Beta intervals of the per-cluster error rates of `Estimate` rows with labels
    `counts`, `error_sums` (each `[n_models, K]`): `onboarding.ErrorIntervals`.

    The LLM's rate on the labelled prompts has the posterior `est.a, est.b` (when None,
    `Beta(e' + s p + 1/2, n' - e' + s (1 - p) + 1/2)`, `n', e'`: `_effective` labels; Jeffreys'
    half-counts keep an interval for a strength of zero, plain means). Its rate on the cluster's
    prompts at large differs by the labelled prompts' shared difficulty, `rho psi (1 - psi) / n`
    in variance (`rho`: `SHARED_PROMPT_CORRELATION`), which no label of the pool can remove; with
    a strength of zero the two add up to the plain mean's own variance. The returned `a, b` are
    the Beta with the total variance and the posterior's mean.
    """
    from uniroute_jax._src.onboarding import ErrorIntervals, _beta_quantile

    n = jnp.asarray(counts, jnp.float32)
    a, b = posterior_rows(est, n, error_sums)
    mean, total = a / (a + b), a + b
    shared = jnp.where(n > 0, SHARED_PROMPT_CORRELATION / jnp.maximum(n, 1.0), 0.0)
    var = mean * (1 - mean) * (1 / (total + 1) + shared)
    total = mean * (1 - mean) / var - 1
    a, b = mean * total, (1 - mean) * total
    tail = jnp.asarray((1 - level) / 2, jnp.float32)
    return ErrorIntervals(jnp.asarray(est.psi), _beta_quantile(a, b, tail), _beta_quantile(a, b, 1 - tail), a, b)


def _padded_rows(n_rows: int) -> int:
    """Rows the fit kernels see for `n_rows` LLMs: a power of two >= 2 (padding is masked out), so
    pools growing one LLM at a time compile a handful of shapes."""
    return max(2, 1 << max(0, n_rows - 1).bit_length())


def _pad(x: np.ndarray, rows: int) -> np.ndarray:
    return np.concatenate([x, np.zeros((rows - x.shape[0], x.shape[1]), np.float32)]).astype(np.float32)


def fit_estimator(method: str, reference_counts: ArrayLike, reference_error_sums: ArrayLike, *,
                  centroids: ArrayLike | None = None, cluster_masses: ArrayLike | None = None,
                  alpha: float = DEFAULT_ALPHA, rank: int = 2, n_groups: int | None = None,
                  seed: int = 0, extra_counts: ArrayLike | None = None,
                  extra_error_sums: ArrayLike | None = None) -> Estimator:
    """Fits an estimator of new LLMs' error vectors from the LLMs already represented.

    Args:
      method: one of `METHODS` ("mean", "shrinkage", "hierarchical", "prior").
      reference_counts: [R, K] validation labels per cluster of the represented LLMs (`Pool.counts`);
        R may be 0 for "mean" and "shrinkage".
      reference_error_sums: [R, K] errors among them (`Pool.error_sums`).
      centroids: [K, dim] cluster centroids; the hierarchy groups them (default: one group per
        cluster-mass rank, i.e. a grouping by mass alone).
      cluster_masses: [K] share of prompts in each cluster, >= 0 (default: the reference labels' shares).
      alpha: pseudo-count of "shrinkage", >= 0.
      rank: free factors of the population prior, >= 1 (capped at R - 1).
      n_groups: coarse groups of the hierarchy (default `default_n_groups(K)`).
      seed: seed of the grouping and factor initialisation.
      extra_counts, extra_error_sums: optional [R, K] further labels of the represented LLMs on
        other prompts than a new LLM's (e.g. their training prompts); both or neither. They enter
        the population prior's factors only; the strengths stay fitted on `reference_counts`, the
        prompts a new LLM is labelled on.

    Returns:
      An `Estimator`.

    Raises:
      ValueError / TypeError naming the argument.
    """
    method = validation.choice(method, "method", METHODS)
    n = validation.nonnegative(validation.float_array(reference_counts, "reference_counts", ndim=2), "reference_counts")
    R, K = n.shape
    if K == 0:
        raise ValueError("reference_counts must have at least one cluster column")
    e = validation.nonnegative(validation.float_array(reference_error_sums, "reference_error_sums", shape=(R, K)),
                               "reference_error_sums")
    if np.any(e > n + 1e-4):
        raise ValueError("reference_error_sums must not exceed reference_counts")
    if (extra_counts is None) != (extra_error_sums is None):
        raise ValueError("extra_counts and extra_error_sums go together: pass both or neither")
    extra = ()
    if extra_counts is not None:
        xn = validation.nonnegative(validation.float_array(extra_counts, "extra_counts", shape=(R, K)), "extra_counts")
        xe = validation.nonnegative(validation.float_array(extra_error_sums, "extra_error_sums", shape=(R, K)),
                                    "extra_error_sums")
        if np.any(xe > xn + 1e-4):
            raise ValueError("extra_error_sums must not exceed extra_counts")
        extra = (jnp.asarray(xn), jnp.asarray(xe))
    if method in ("hierarchical", "prior") and (R == 0 or n.sum() == 0):
        raise ValueError(f"method {method!r} learns from represented LLMs: reference_counts holds no label")
    if cluster_masses is None:
        masses = n.sum(0) + 1e-3
    else:
        masses = validation.nonnegative(validation.float_array(cluster_masses, "cluster_masses", shape=(K,)),
                                        "cluster_masses")
        if masses.sum() <= 0:
            raise ValueError("cluster_masses must have a positive entry")
    if centroids is None:
        cents = np.argsort(np.argsort(-masses)).astype(np.float32)[:, None]
    else:
        cents = validation.float_array(centroids, "centroids", shape=(K, None))
    alpha = validation.nonnegative_float(alpha, "alpha")
    rank = validation.positive_int(rank, "rank")
    rank = max(1, min(rank, R - 1))
    n_groups = default_n_groups(K) if n_groups is None else validation.positive_int(n_groups, "n_groups")
    if n_groups > K:
        raise ValueError(f"n_groups must be <= the {K} clusters, got {n_groups}")
    seed = validation.positive_int(seed, "seed", minimum=0)
    rows = _padded_rows(R)  # R = 0 (mean / shrinkage need nothing from the population) is all padding
    extra = tuple(jnp.asarray(_pad(np.asarray(x), rows)) for x in extra)
    params = fit_kernel(jax.random.key(seed), jnp.asarray(_pad(n, rows)), jnp.asarray(_pad(e, rows)),
                        jnp.asarray(np.arange(rows) < R), jnp.asarray(cents), jnp.asarray(masses),
                        jnp.asarray(alpha, jnp.float32), *extra, n_groups=n_groups, rank=rank,
                        with_prior=method == "prior")
    return Estimator(method, params)


def estimate_rows(method: str, counts: ArrayLike, error_sums: ArrayLike, *, cluster_masses: ArrayLike | None = None,
                  alpha: float = DEFAULT_ALPHA, rank: int = 2, seed: int = 0) -> tuple[Estimator, Estimate]:
    """Every represented LLM's row from its own labels, under `method` fitted on all of them.

    For "prior" each row's prior is the population fitted without that LLM (leave-one-LLM-out:
    the same prior a new LLM gets from the others, its `tau` distribution included), and the
    choice between the prior and the shrinkage rule is made on every LLM's labels. The other methods estimate
    every row with the fit on all rows. The rows depend on the set of LLMs, not on their order,
    up to the order of floating-point sums (`Pool` fixes one order: by name).

    Args:
      method: one of `METHODS`.
      counts: [R, K] labels per cluster of the LLMs (R >= 1).
      error_sums: [R, K] errors among them.
      cluster_masses: [K] share of prompts in each cluster (default: the labels' shares).
      alpha: pseudo-count of "shrinkage" (and of "prior" where it falls back to that rule).
      rank: free factors of the population prior (capped at R - 1).
      seed: seed of the fit.

    Returns:
      `(estimator, rows)`: the fit on every LLM (what a further LLM would be estimated with) and
      `Estimate` rows `[R, K]` (`psi`, the `prior` each cluster is shrunk toward, its `strength`).
    """
    method = validation.choice(method, "method", METHODS)
    n = validation.nonnegative(validation.float_array(counts, "counts", ndim=2), "counts")
    R, K = n.shape
    if R == 0 or K == 0:
        raise ValueError(f"counts must hold at least one LLM and one cluster, got shape {n.shape}")
    e = validation.nonnegative(validation.float_array(error_sums, "error_sums", shape=(R, K)), "error_sums")
    if np.any(e > n + 1e-4):
        raise ValueError("error_sums must not exceed counts")
    masses = n.sum(0) + 1e-3 if cluster_masses is None else validation.nonnegative(
        validation.float_array(cluster_masses, "cluster_masses", shape=(K,)), "cluster_masses")
    alpha = validation.nonnegative_float(alpha, "alpha")
    rank = max(1, min(validation.positive_int(rank, "rank"), R - 1))
    seed = validation.positive_int(seed, "seed", minimum=0)
    rows = _padded_rows(R)
    cents = np.argsort(np.argsort(-masses)).astype(np.float32)[:, None]
    params, est = pool_kernel(jax.random.key(seed), jnp.asarray(_pad(n, rows)), jnp.asarray(_pad(e, rows)),
                              jnp.asarray(np.arange(rows) < R), jnp.asarray(cents), jnp.asarray(masses, jnp.float32),
                              jnp.asarray(alpha, jnp.float32), method=method, n_groups=default_n_groups(K), rank=rank)
    return Estimator(method, params), Estimate(*(np.asarray(x)[:R] for x in est))


def labels_to_counts(assignments: ArrayLike, quality: ArrayLike, *, n_clusters: int,
                     label_mask: ArrayLike | None = None) -> tuple[np.ndarray, np.ndarray]:
    """`(counts, error_sums)`, each `[n_models, K]`, from hard cluster labels of validation prompts.

    Args:
      assignments: [n_val] cluster of each validation prompt.
      quality: [n_val, n_models] quality in [0, 1]; NaN where not labelled.
      n_clusters: K.
      label_mask: optional [n_val, n_models] bool (default: not NaN).
    """
    n_clusters = validation.positive_int(n_clusters, "n_clusters")
    q = validation.float_array(quality, "quality", ndim=2, allow_nan=True)
    mask = ~np.isnan(q) if label_mask is None else validation.bool_array(label_mask, "label_mask", shape=q.shape)
    validation.unit_interval(q, "quality", where=mask)
    a = validation.int_array(assignments, "assignments", shape=(q.shape[0],), high=n_clusters)
    onehot = np.eye(n_clusters, dtype=np.float64)[a]  # [n_val, K]
    err = np.where(mask, 1.0 - np.where(mask, q, 0.0), 0.0)
    return (onehot.T @ mask).T.astype(np.float32), (onehot.T @ err).T.astype(np.float32)


# ------------------------------------------------------------------- onboarding one LLM


def labels_to_halve(widths: ArrayLike, effective_counts: ArrayLike, masses: ArrayLike) -> int:
    """More labels, spread by cluster mass, that halve the mass-weighted mean interval width.

    A Beta interval's width shrinks like `1 / sqrt(effective labels)`; cluster `k` (effective
    count `c_k = n_k + s_k + 1`) receives `N w_k` of `N` new labels, so its width becomes
    `width_k sqrt(c_k / (c_k + N w_k))`. Returns the smallest such `N` (doubling, then bisection).
    """
    w_ = np.asarray(widths, np.float64).ravel()
    c = np.maximum(np.asarray(effective_counts, np.float64).ravel(), 1e-9)
    m = np.asarray(masses, np.float64).ravel()
    m = m / m.sum()
    target = 0.5 * np.sum(m * w_)
    mean_width = lambda n: np.sum(m * w_ * np.sqrt(c / (c + n * m)))
    hi = 1
    while mean_width(hi) > target and hi < 1 << 40:
        hi *= 2
    lo = hi // 2
    while lo + 1 < hi:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if mean_width(mid) > target else (lo, mid)
    return int(hi)


def _labels(n) -> str:
    """`"1 label"`, `"0 labels"`, `"12 labels"`."""
    n = int(n)
    return f"{n} label" if n == 1 else f"{n} labels"


def _fallback_note(method: str, used: str, n_models: int) -> str:
    if used == method:
        return ""
    if n_models < 2:
        return f" ('{method}' needs at least two LLMs to learn from)"
    return (f" ('{method}' fell back: its population prior predicts held-out LLMs' clusters no better than "
            "each LLM's own overall error)")


def _interval_lines(name: str, counts, iv, i: int, used: str, note: str, masses, level: float) -> list[str]:
    """Per-cluster intervals of row `i` and the labels that would halve them."""
    n_i, psi = np.asarray(counts[i]), np.asarray(iv.mean[i], np.float64)
    lo, hi = np.asarray(iv.lower[i]), np.asarray(iv.upper[i])
    lines = [f"{name}: estimator '{used}'{note}, {_labels(n_i.sum())}; per-cluster error [{level:.0%} interval]:"]
    lines += [f"  cluster {k}: {psi[k]:.3f} [{lo[k]:.3f}, {hi[k]:.3f}] from {_labels(n_i[k])}"
              for k in range(psi.shape[0])]
    more = labels_to_halve(hi - lo, np.asarray(iv.a[i] + iv.b[i]), masses)
    lines.append(f"  labelling about {more} more prompts (spread by cluster mass; `uniroute select-prompts`) "
                 f"would halve the mean interval width ({np.sum(masses * (hi - lo)) / masses.sum():.3f} now)")
    return lines


def represent_new(pool, new, method: str = DEFAULT_METHOD, *, level: float = 0.95, seed: int = 0):
    """Estimates freshly represented LLMs with an estimator fitted on the pool's LLMs only.

    The new LLMs' labels never enter the fit: their rows are what `fit_estimator(method,
    pool.counts, pool.error_sums)` gives them. (Adding them to a pool that derives its rows is
    `add_to_pool`.)

    Args:
      pool: the `Pool` of LLMs already represented (the estimator's reference; may be empty).
      new: a `Pool` of the new LLMs from `router.represent` (its counts and error sums are used).
      method: one of `METHODS`; "hierarchical" and "prior" fall back to "shrinkage" while the pool
        holds fewer than two LLMs (there is no population to learn from), "prior" also where its
        prior does not predict the pool's LLMs better than that rule (`Estimator.used`).
      level: probability of the reported intervals.
      seed: seed of the fit.

    Returns:
      `(pool_of_new, lines)`: the new LLMs with the estimator's `psi`, and a human-readable report:
      per-cluster intervals and one line saying how many more labels would tighten them.
    """
    method = validation.choice(method, "method", METHODS)
    used = method
    if method in ("hierarchical", "prior") and (len(pool) < 2 or float(np.sum(pool.counts)) == 0):
        used = "shrinkage"
    if used in ("mean", "shrinkage"):
        ref_n, ref_e = np.zeros((0, new.counts.shape[1])), np.zeros((0, new.counts.shape[1]))
    else:
        ref_n, ref_e = pool.counts, pool.error_sums
    masses = np.asarray(pool.counts).sum(0) + np.asarray(new.counts).sum(0) + 1e-3
    est = fit_estimator(used, ref_n, ref_e, cluster_masses=masses, seed=seed)
    iv = est.intervals(new.counts, new.error_sums, level=level)
    out = dataclasses.replace(new, psi=np.asarray(iv.mean, np.float64))  # same counts, names, costs, fingerprint
    note = _fallback_note(method, est.used, len(pool))
    lines = []
    for i, name in enumerate(new.names):
        lines += _interval_lines(name, new.counts, iv, i, est.used, note, masses, level)
    return out, lines


class PoolEstimates(NamedTuple):
    """A pool's rows derived by one estimator (`pool_estimates`)."""

    pool: object  # the `Pool` with the derived rows, recording the estimator
    rows: Estimate  # [n_models, K] in the pool's order: psi, the prior each cluster is shrunk toward, its strength
    estimator: Estimator  # fitted on every LLM of the pool (what a further LLM would get)


def pool_estimates(pool, method: str, *, seed: int = 0) -> PoolEstimates:
    """Every row of `pool` derived from its labels by `method` (`estimate_rows`, LLMs in name order
    so that the rows do not depend on the order they were added in).

    Args:
      pool: a non-empty `Pool`.
      method: one of `METHODS`.
      seed: seed of the fit.
    """
    method = validation.choice(method, "method", METHODS)
    if not len(pool):
        raise ValueError("pool is empty: there is no row to derive")
    order = np.argsort(np.asarray(pool.names, dtype=object), kind="stable")
    back = np.argsort(order)
    est, rows = estimate_rows(method, np.asarray(pool.counts)[order], np.asarray(pool.error_sums)[order], seed=seed)
    rows = Estimate(*(np.asarray(x)[back] for x in rows))
    out = dataclasses.replace(pool, psi=np.clip(rows.psi, 0.0, 1.0).astype(np.float32), estimator=method)
    return PoolEstimates(out, rows, est)


def add_to_pool(pool, new, method: str | None = None, *, level: float = 0.95, seed: int = 0):
    """Adds freshly represented LLMs to a pool and re-derives every row (what `uniroute add-model` does).

    The pool's estimator (`method`, else the one the pool records, else `DEFAULT_METHOD`) is fitted
    on every LLM's labels and each row estimated from the LLM's own (`pool_estimates`). The report
    first asks whether the pool's routing can be told from ZeroRouter's under the uncertainty of
    its estimates (`onboarding.routing_gain`); only then does it print the new LLMs' per-cluster
    intervals, otherwise it says how many labels per LLM would tell them apart.

    Args:
      pool: the `Pool` of LLMs already represented (may be empty).
      new: a `Pool` of the new LLMs (`router.represent`); names not in `pool`.
      method: one of `METHODS`, or None (the pool's own).
      level: probability of the reported intervals.
      seed: seed of the fit.

    Returns:
      `(pool, lines)`: the whole pool (new LLMs last) and a human-readable report.
    """
    from uniroute_jax._src.onboarding import routing_gain

    method = validation.choice(method or pool.estimator or DEFAULT_METHOD, "method", METHODS)
    lines = []
    if pool.estimator is not None and pool.estimator != method and len(pool):
        lines.append(f"the pool's rows followed estimator '{pool.estimator}'; every row is now re-derived with "
                     f"'{method}'")
    plain = lambda p: dataclasses.replace(p, estimator=None)  # concatenate first, derive once below
    res = pool_estimates(plain(pool) + plain(new), method, seed=seed)
    out, rows = res.pool, res.rows
    iv = estimate_intervals(rows, out.counts, out.error_sums, level=level)
    masses = np.asarray(out.counts, np.float64).sum(0) + 1e-3
    used = res.estimator.used
    note = _fallback_note(method, used, len(out))
    index = [out.names.index(n) for n in new.names]
    if len(out) < 2:
        gain = None
        lines.append("a pool of one LLM routes every prompt to it: per-cluster estimates start to matter with a "
                     "second LLM")
    else:
        gain = routing_gain(iv.a, iv.b, rows.psi, out.costs, masses, level=level, seed=seed)
        lines.append(f"routing gain of the pool over ZeroRouter (Area, {level:.0%} interval over what its "
                     f"estimates do not know): {gain.mean:+.4f} [{gain.lower:+.4f}, {gain.upper:+.4f}]")
    if gain is None or gain.lower <= 0:
        if gain is not None:
            lines.append("  the pool's estimates cannot be told from ZeroRouter's (one LLM per budget) with these "
                         "labels: per-cluster estimates are not shown")
            per = int(np.median(np.asarray(out.counts).sum(1)))
            if gain.labels_per_llm is not None:
                lines.append(f"  about {gain.labels_per_llm} more labels per LLM (about {per + gain.labels_per_llm} "
                             f"each, spread by cluster mass) would tell this gain from zero")
            else:
                lines.append(f"  these labels (about {per} per LLM) show no gain to resolve: label more prompts, "
                             "or route with ZeroRouter's choice")
        for i in index:
            n_i = np.asarray(out.counts[i])
            e = float(np.asarray(out.error_sums[i]).sum()) / max(float(n_i.sum()), 1.0)
            lines.append(f"{out.names[i]}: estimator '{used}'{note}, {_labels(n_i.sum())}, overall error {e:.3f}")
    else:
        for i in index:
            lines += _interval_lines(out.names[i], out.counts, iv, i, used, note, masses, level)
    return out, lines
