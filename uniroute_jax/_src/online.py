"""Online learning of new LLMs from the outcomes of served requests (bandit onboarding).

A new LLM enters the pool with few labels (or none) and its per-cluster errors are learnt from the
traffic itself: each request goes to one LLM, and only that LLM's outcome is seen (a judge, a
user's thumbs, a test that passed). The outcomes enter the same per-cluster `counts` and
`error_sums` a `Pool` stores, and the new LLM's estimate and its uncertainty come from the
configured estimator (`estimators`, default `prior`): its parameters are fitted once on the
established LLMs, and its per-LLM kernel is applied to the new LLM's current counts before every
decision. With zero labels the new LLM starts from the population prior alone; each outcome moves
the posterior of its cluster. The established LLMs keep their pool rows (their outcomes are
counted too, for a later `observe`).

The rule, for a request in cluster `k` (`psi, a, b`: the estimator's mean and Beta posterior of
each new LLM in `k`; established LLMs at their pool rows):

    greedy      e_h = psi_h
    thompson    e_h = F^-1_{Beta(a_h, b_h)}(u_h)           u_h uniform: one posterior draw
    optimistic  e_h = max(psi_h - bonus * sd(Beta(a_h, b_h)), 0)     a lower confidence bound
    pick        = argmin_h e_h + lam * cost_h               (ties: cheaper, then lower index)

and the greedy pick uses `psi` for every LLM. A pick that differs from greedy's is exploration;
it is allowed only while the explored share of requests stays within `explore_cap`, overall and
per LLM (`llm_cap`), counted in the state: `explored_h + 1 <= llm_cap * (steps + 1)` and
`sum explored + 1 <= explore_cap * (steps + 1)`; otherwise greedy's pick is served. So the cost
of exploring is bounded whatever the posterior says, and greedy is the policy with cap 0.

When to use which: `greedy` spends nothing on exploration and learns only where the prior mean
already sends traffic, so a new LLM the prior underrates can stay unseen. `thompson` explores in
proportion to the chance that the new LLM is the best choice, so it fades by itself as the
posterior tightens: the default. `optimistic` explores every cluster where the bound is below the
incumbents, which learns fastest in clusters with little traffic but keeps trying a weak LLM
until its interval clears; keep `bonus` near 1. In the replay study
(`benchmarks/results/online_learning/`, 30 seeds, zero starting labels, cap 0.2) Thompson had
the lowest regret of the online policies against full labels on the synthetic world and
routerbench_partial, tied with the optimistic rule on routerdc_7llm, and greedy never served the
new LLM on three datasets of four.

Feedback as it comes (the replay draws it from full-information data; the serving learner takes
whatever `record` receives):
- `delay`: the outcome of request `t` arrives before request `t + 1 + delay` is decided (a ring
  buffer of pending outcomes in the scan state); 0 is immediate.
- `p_observe`: each outcome arrives with this probability (missing feedback).
- `flip`: an arrived outcome is flipped with this probability (a judge wrong with probability
  `flip`); the estimator is not told, so its estimates are pulled toward 1/2, which the replay's
  regret measures.
- `weight`: an arrived outcome counts as `weight` labels.

The rule is written once over an array namespace (`numpy` or `jax.numpy`): `OnlineLearner` runs it
in NumPy per request, `replay_online` inside a `lax.scan` over a request stream, vmapped over
seeds, policies, caps, which LLMs are new, starting labels and feedback settings.
"""

from __future__ import annotations

import collections
import functools
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from uniroute_jax._src import persistence, validation
from uniroute_jax._src.decisions import choose as choose_rows
from uniroute_jax._src.estimators import (
    _ONE,
    METHODS,
    Estimate,
    Estimator,
    EstimatorParams,
    _cell_prediction,
    _cell_prediction_from,
    _logistic_map,
    _mixture_posterior,
    _shrinkage_one,
)
from uniroute_jax._src.onboarding import _beta_quantile
from uniroute_jax._src.pool import Pool

POLICIES = ("greedy", "thompson", "optimistic")
SLACK = 1e-4
"""Rounding allowance of the caps, in requests: float32 products of a share and a count."""
N_UNIFORMS = 3
NEWTON_STEPS = 4
"""Warm-started Newton steps per request of the replay's `prior` estimate (`replay_online`)."""
"""Uniforms per request besides the Thompson draws: the outcome, whether it arrives, whether it is flipped."""


class OnlineState(NamedTuple):
    """What the learner has seen: the pool's label counts and the exploration spent."""

    counts: Any  # [n_models, n_clusters] labels per cluster (initial labels plus arrived outcomes, weighted)
    error_sums: Any  # [n_models, n_clusters] errors among them
    explored: Any  # [n_models] requests sent to each LLM where greedy would have chosen another
    steps: Any  # [] requests decided so far


# ----------------------------------------------------------------------- the rule, once


def posterior_sd(a, b, xp=np):
    """Standard deviation of `Beta(a, b)` (any shape)."""
    total = a + b
    return xp.sqrt(a * b / (total * total * (total + 1.0)))


def policy_errors(psi, a, b, draw, policy: int, bonus, xp=np):
    """Errors the policy decides on for the new LLMs in one cluster, `[n_new]` each input.

    `draw` is the Thompson sample (a Beta quantile of a uniform), computed by the caller so that
    NumPy and JAX may use their own quantile routine; `policy` indexes `POLICIES`.
    """
    optimistic = xp.maximum(psi - bonus * posterior_sd(a, b, xp), 0.0)
    return xp.where(policy == 1, draw, xp.where(policy == 2, optimistic, psi))


def capped(pick, greedy, state: OnlineState, explore_cap, llm_cap, xp=np):
    """`(served, explored)`: the policy's pick where exploring stays within both caps, else greedy's."""
    allowed = ((xp.sum(state.explored) + 1.0 <= explore_cap * (state.steps + 1.0) + SLACK)
               & (state.explored[pick] + 1.0 <= llm_cap * (state.steps + 1.0) + SLACK))
    served = xp.where((pick != greedy) & ~allowed, greedy, pick)
    return served, served != greedy


def outcome(quality, u, flip, p_observe, xp=np):
    """`(error, arrived)` of a served request: the error drawn as Bernoulli(1 - quality) from the
    uniform `u[0]` (a 0/1 quality is used as is), flipped when `u[2] < flip`, arriving when
    `u[1] < p_observe`."""
    error = xp.where(u[0] < quality, 0.0, 1.0)
    error = xp.where(u[2] < flip, 1.0 - error, error)
    return error, u[1] < p_observe


def step_state(state: OnlineState, served, explored, xp=np) -> OnlineState:
    """The state after deciding one request (exploration counted; labels arrive through `fold`)."""
    one = xp.where(xp.arange(state.explored.shape[0]) == served, 1.0, 0.0)
    return state._replace(explored=state.explored + xp.where(explored, one, 0.0), steps=state.steps + 1)


def fold(state: OnlineState, model, cluster, error, weight, xp=np) -> OnlineState:
    """The state with one arrived outcome of `model` in `cluster` counted as `weight` labels."""
    m, k = state.counts.shape
    cell = xp.where((xp.arange(m)[:, None] == model) & (xp.arange(k)[None, :] == cluster), weight, 0.0)
    return state._replace(counts=state.counts + cell, error_sums=state.error_sums + cell * error)


# ------------------------------------------------------------------------- replay kernel


def _prior_from_cell(params, counts, error_sums, k, z, var) -> Estimate:
    """Column `k` of the `prior` kernel (`[]` fields) from cluster `k`'s predicted logit and variance."""
    one = lambda x: x[k][None]
    mixed = _mixture_posterior(params.tau_weights, z[None], var[None], one(counts), one(error_sums),
                               one(params.support))
    shrunk = jax.tree.map(one, _shrinkage_one(params, counts, error_sums))
    return jax.tree.map(lambda a, b: jnp.where(params.use_prior, a, b)[0], mixed, shrunk)


def _prior_cluster(params, counts, error_sums, k) -> Estimate:
    """Column `k` of the `prior` kernel for one LLM, computed alone (`[]` fields).

    The full kernel predicts every cluster from the others (one MAP fit per cluster); a decision
    needs only the request's cluster, so this is the same computation for that one column, K
    times cheaper. `tests/test_online.py` checks it against the full kernel."""
    z, var = _cell_prediction(params, counts, error_sums, k)
    return _prior_from_cell(params, counts, error_sums, k, z, var)


def _leave_out_maps(params, counts, error_sums):
    """`[n_clusters, dim]` leave-cluster-`k`-out MAP `v` of one LLM for every `k`, fitted in full."""
    f = params.factors
    keep = 1.0 - jnp.eye(f.shape[0], dtype=counts.dtype)
    return jax.vmap(lambda w: _logistic_map(params, counts * w, error_sums * w))(keep)


def _prior_cluster_warm(params, counts, error_sums, k, v0, n_steps: int):
    """`(estimate, v)`: `_prior_cluster` with the leave-`k`-out MAP refined by `n_steps` Newton steps
    from `v0` (the MAP of an earlier request of cluster `k`) instead of fitted from the prior mean.

    Between two requests of a cluster only a few labels arrive, so the old MAP is close to the new
    one and the Newton steps on the strictly concave posterior converge quadratically from it; the
    step-size search of `_logistic_map` is kept, so a far start still ascends."""
    z, var, v = _cell_prediction_from(params, counts, error_sums, k, n_steps, v0)
    return _prior_from_cell(params, counts, error_sums, k, z, var), v


def cluster_estimate(params: EstimatorParams, counts: jax.Array, error_sums: jax.Array, k: jax.Array, *,
                     method: str) -> Estimate:
    """One LLM's estimate in cluster `k` (`[]` fields) from its `[n_clusters]` counts: column `k` of
    the estimator's per-LLM kernel."""
    if method == "prior":
        return _prior_cluster(params, counts, error_sums, k)
    return jax.tree.map(lambda x: x[k], _ONE[method](params, counts, error_sums))



def warm_cache(params, counts, error_sums) -> jax.Array:
    """`[n_new, n_clusters, dim]` leave-cluster-out MAPs of the new LLMs' `[n_new, n_clusters]` counts."""
    return jax.vmap(_leave_out_maps, in_axes=(None, 0, 0))(params, counts, error_sums)


def warm_estimates(params, counts, error_sums, k, cache, *, n_steps: int):
    """`(estimate, cache)`: the new LLMs' `prior` estimates in cluster `k` (`[n_new]` fields) from
    their `[n_new, n_clusters]` counts, each cluster-`k` MAP refined from `cache[:, k]`, and the
    cache with those MAPs written back. Labels of cluster `k` do not enter its leave-out MAP, so an
    entry goes stale only by labels of other clusters, and is refined when its cluster comes again."""
    est, v = jax.vmap(functools.partial(_prior_cluster_warm, n_steps=n_steps), in_axes=(None, 0, 0, None, 0))(
        params, counts, error_sums, k, cache[:, k])
    return est, cache.at[:, k].set(v)


class OnlineReplay(NamedTuple):
    """One replayed stream per setting (leading `[n_settings]` axis from `replay_online`)."""

    choice: jax.Array  # [n_requests] int32 model served to each request
    quality: jax.Array  # [n_requests] quality of the served model on the request's prompt
    greedy: jax.Array  # [n_requests] int32 greedy's choice at the same state
    explored: jax.Array  # [n_requests] bool: the served model differs from greedy's
    error: jax.Array  # [n_requests] the outcome drawn for the served model (1 = wrong), after the flip
    arrived: jax.Array  # [n_requests] bool: the request's outcome reaches the learner (within the stream or not)
    state: OnlineState  # final state (outcomes still in flight at the end not counted)


def uniforms(key: jax.Array, n_requests: int, n_new: int) -> jax.Array:
    """`[n_requests, 3 + n_new]` uniforms of one setting: outcome, arrival, flip, Thompson draws."""
    return jax.random.uniform(key, (n_requests, N_UNIFORMS + n_new))


def _replay_one(params, psi, costs, quality, clusters, model_mask, order, key, new, counts0, sums0, policy,
                explore_cap, llm_cap, bonus, lam, delay, p_observe, flip, weight, *, method: str, max_delay: int,
                newton_steps: int | None = None):
    m, K = psi.shape
    n_new = new.shape[0]
    L = max_delay + 1
    warm = method == "prior" and newton_steps is not None
    if warm:
        cache0 = warm_cache(params, counts0[new], sums0[new])
    else:
        estimate = jax.vmap(functools.partial(cluster_estimate, method=method), in_axes=(None, 0, 0, None))
        cache0 = jnp.zeros((n_new, K, 0), counts0.dtype)
    u_all = uniforms(key, order.shape[0], n_new)
    c = costs

    def body(carry, t):
        state, cache, b_model, b_cluster, b_error, b_live = carry
        # Outcomes due now arrive before the decision.
        slot = t % L
        state = jax.tree.map(lambda new_, old: jnp.where(b_live[slot], new_, old),
                             fold(state, b_model[slot], b_cluster[slot], b_error[slot], weight, jnp), state)
        b_live = b_live.at[slot].set(False)
        i = order[t]
        k = clusters[i]
        u = u_all[t]
        if warm:
            est, cache = warm_estimates(params, state.counts[new], state.error_sums[new], k, cache,
                                        n_steps=newton_steps)
        else:
            est = estimate(params, state.counts[new], state.error_sums[new], k)
        p_k, a_k, b_k = est.psi, est.a, est.b
        draw = _beta_quantile(a_k, b_k, u[N_UNIFORMS:])
        greedy_err = psi[:, k].at[new].set(p_k)
        policy_err = psi[:, k].at[new].set(policy_errors(p_k, a_k, b_k, draw, policy, bonus, jnp))
        greedy = choose_rows((greedy_err + lam * c)[None, :], c, model_mask)[0]
        pick = choose_rows((policy_err + lam * c)[None, :], c, model_mask)[0]
        served, explored = capped(pick, greedy, state, explore_cap, llm_cap, jnp)
        state = step_state(state, served, explored, jnp)
        q = quality[i, served]
        error, arrived = outcome(q, u, flip, p_observe, jnp)
        due = (t + 1 + delay) % L
        carry = (state, cache, b_model.at[due].set(served), b_cluster.at[due].set(k), b_error.at[due].set(error),
                 b_live.at[due].set(arrived))
        return carry, (served, q, greedy, explored, error, arrived)

    state0 = OnlineState(counts0, sums0, jnp.zeros(m, counts0.dtype), jnp.zeros((), counts0.dtype))
    carry0 = (state0, cache0, jnp.zeros(L, jnp.int32), jnp.zeros(L, jnp.int32), jnp.zeros(L, counts0.dtype),
              jnp.zeros(L, bool))
    (state, *_), outs = jax.lax.scan(body, carry0, jnp.arange(order.shape[0]))
    return OnlineReplay(*outs, state)


@functools.partial(jax.jit, static_argnames=("method", "max_delay", "newton_steps"))
def online_replay_kernel(params: EstimatorParams, psi: jax.Array, costs: jax.Array, quality: jax.Array,
                         clusters: jax.Array, model_masks: jax.Array, orders: jax.Array, keys: jax.Array,
                         new_models: jax.Array, counts0: jax.Array, error_sums0: jax.Array, policies: jax.Array,
                         explore_caps: jax.Array, llm_caps: jax.Array, bonuses: jax.Array, lams: jax.Array,
                         delays: jax.Array, p_observe: jax.Array, flips: jax.Array, weights: jax.Array, *,
                         method: str, max_delay: int, newton_steps: int | None = None) -> OnlineReplay:
    """Unchecked `replay_online`: every per-setting argument has a leading `[n_settings]` axis;
    `params, psi, costs, quality, clusters` are shared."""
    fn = functools.partial(_replay_one, method=method, max_delay=max_delay, newton_steps=newton_steps)
    return jax.vmap(fn, in_axes=(None, None, None, None, None) + (0,) * 15)(
        params, psi, costs, quality, clusters, model_masks, orders, keys, new_models, counts0, error_sums0, policies,
        explore_caps, llm_caps, bonuses, lams, delays, p_observe, flips, weights)


def _per_setting(value, name: str, n: int, *, low: float = 0.0, high: float | None = None) -> np.ndarray:
    arr = validation.float_array(value, name)
    if arr.ndim == 0:
        arr = np.full(n, arr, np.float32)
    if arr.shape != (n,):
        raise ValueError(f"{name} must be a scalar or have shape ({n},) (one per setting), got shape {arr.shape}")
    if np.any(arr < low) or (high is not None and np.any(arr > high)):
        bad = arr[(arr < low) | ((arr > high) if high is not None else False)][0]
        rng = f"[{low:g}, {high:g}]" if high is not None else f">= {low:g}"
        raise ValueError(f"{name} must be in {rng}, got {bad:g}")
    return arr


def policy_codes(policies, n: int) -> np.ndarray:
    """`[n]` int32 codes (indices into `POLICIES`) of a policy name, a list of names, or codes."""
    if isinstance(policies, str):
        policies = [policies] * n
    arr = np.asarray(policies)
    if arr.dtype.kind in "US":
        for p in arr.ravel():
            validation.choice(str(p), "policies", POLICIES)
        arr = np.array([POLICIES.index(str(p)) for p in arr.ravel()]).reshape(arr.shape)
    arr = validation.int_array(arr, "policies", high=len(POLICIES))
    arr = np.full(n, arr, np.int32) if arr.ndim == 0 else arr
    if arr.shape != (n,):
        raise ValueError(f"policies must be one policy or one per setting ({n}), got shape {arr.shape}")
    return arr


def replay_online(
    estimator: Estimator,
    psi: ArrayLike,
    costs: ArrayLike,
    quality: ArrayLike,
    clusters: ArrayLike,
    orders: ArrayLike,
    new_masks: ArrayLike,
    *,
    seeds: ArrayLike = 0,
    counts0: ArrayLike | None = None,
    error_sums0: ArrayLike | None = None,
    model_masks: ArrayLike | None = None,
    policies: str | Sequence[str] | ArrayLike = "thompson",
    explore_caps: ArrayLike = 1.0,
    llm_caps: ArrayLike = 1.0,
    bonuses: ArrayLike = 1.0,
    lams: ArrayLike = 0.0,
    delays: ArrayLike = 0,
    p_observe: ArrayLike = 1.0,
    flips: ArrayLike = 0.0,
    weights: ArrayLike = 1.0,
    newton_steps: int | None = NEWTON_STEPS,
) -> OnlineReplay:
    """Replays request streams through online learning of new LLMs, many settings in one jitted call.

    Every counterfactual outcome is known (full-information data), so the loop route -> outcome
    of the served LLM -> update is replayed exactly: the outcome of a request is drawn as
    Bernoulli(quality) with the setting's key (a 0/1 quality is used as is).

    Args:
      estimator: fitted on the established LLMs (`fit_estimator` on the pool's counts); its
        per-LLM kernel estimates the new LLMs from their counts before every decision.
      psi: [max_models, n_clusters] rows of the established LLMs (new LLMs' rows are ignored).
      costs: [max_models] per-model costs, >= 0.
      quality: [n_prompts, max_models] quality in [0, 1] of every model on every prompt.
      clusters: [n_prompts] hard cluster of each prompt (`router.assign`).
      orders: [n_settings, n_requests] int prompt indices: each setting's stream.
      new_masks: [n_settings, max_models] bool, the LLMs learnt online; the same number per setting.
      seeds: [n_settings] (or scalar) int seeds of the outcome, arrival, flip and Thompson draws.
      counts0, error_sums0: [n_settings, max_models, n_clusters] (or [max_models, n_clusters])
        labels each LLM starts with (default: none); the new LLMs' rows are their starting labels.
      model_masks: optional [n_settings, max_models] bool pools (default: every model).
      policies: a name of `POLICIES`, or one per setting (names or codes).
      explore_caps: [n_settings] (or scalar) largest share of requests served off greedy, in [0, 1].
      llm_caps: [n_settings] (or scalar) the same share per LLM, in [0, 1].
      bonuses: [n_settings] (or scalar) posterior sds subtracted by `optimistic`, >= 0.
      lams: [n_settings] (or scalar) lambda (error per unit cost), >= 0.
      delays: [n_settings] (or scalar) int requests an outcome is late by, >= 0.
      p_observe: [n_settings] (or scalar) probability an outcome arrives, in [0, 1].
      flips: [n_settings] (or scalar) probability an arrived outcome is flipped, in [0, 1].
      weights: [n_settings] (or scalar) labels an arrived outcome counts as, >= 0.
      newton_steps: with the `prior` estimator, the Newton steps that refine each new LLM's
        leave-cluster-out MAP from its value at the cluster's previous request (carried in the
        scan) instead of the full fit from the prior mean on every request; `None` refits in
        full (the serving learner's computation). Ignored by the other estimators.

    Returns:
      `OnlineReplay` with a leading `[n_settings]` axis.

    Raises:
      ValueError / TypeError naming the argument.
    """
    if not isinstance(estimator, Estimator):
        raise TypeError(f"estimator must be an Estimator (fit_estimator), got {type(estimator).__name__}")
    if newton_steps is not None:
        newton_steps = validation.positive_int(newton_steps, "newton_steps", minimum=0)
    p = validation.unit_interval(validation.float_array(psi, "psi", ndim=2), "psi")
    m, K = p.shape
    if K != estimator.n_clusters:
        raise ValueError(f"psi has {K} clusters but the estimator was fitted on {estimator.n_clusters}")
    c = validation.nonnegative(validation.float_array(costs, "costs", shape=(m,)), "costs")
    q = validation.unit_interval(validation.float_array(quality, "quality", shape=(None, m)), "quality")
    n_prompts = q.shape[0]
    cl = validation.int_array(clusters, "clusters", shape=(n_prompts,), high=K)
    orders = validation.int_array(orders, "orders", shape=(None, None), high=n_prompts)
    n, horizon = orders.shape
    if n == 0 or horizon == 0:
        raise ValueError(f"orders must hold at least one setting and one request, got shape {orders.shape}")
    new = validation.bool_array(new_masks, "new_masks", shape=(n, m))
    n_new = new.sum(axis=1)
    if n_new.min() != n_new.max() or n_new[0] == 0:
        raise ValueError("new_masks must mark the same number (>= 1) of new LLMs in every setting, "
                         f"got {n_new.tolist()}")
    masks = np.ones((n, m), bool) if model_masks is None else validation.bool_array(
        model_masks, "model_masks", shape=(n, m))
    if not masks.any(axis=1).all():
        raise ValueError(f"model_masks row {int(np.argmin(masks.any(axis=1)))} selects no model: the pool is empty")
    if np.any(new & ~masks):
        raise ValueError("new_masks marks an LLM that model_masks leaves out of the pool")

    def start(value, name):
        if value is None:
            return np.zeros((n, m, K), np.float32)
        arr = validation.nonnegative(validation.float_array(value, name), name)
        if arr.shape == (m, K):
            arr = np.broadcast_to(arr, (n, m, K))
        if arr.shape != (n, m, K):
            raise ValueError(f"{name} must have shape ({m}, {K}) or ({n}, {m}, {K}), got {arr.shape}")
        return np.array(arr, np.float32)

    n0, e0 = start(counts0, "counts0"), start(error_sums0, "error_sums0")
    if np.any(e0 > n0 + 1e-4):
        raise ValueError("error_sums0 must not exceed counts0")
    seeds = validation.int_array(np.broadcast_to(np.asarray(seeds), (n,)) if np.ndim(seeds) == 0 else seeds,
                                 "seeds", shape=(n,))
    delays = validation.int_array(np.broadcast_to(np.asarray(delays), (n,)) if np.ndim(delays) == 0 else delays,
                                  "delays", shape=(n,))
    codes = policy_codes(policies, n)
    caps = _per_setting(explore_caps, "explore_caps", n, high=1.0)
    llm_caps = _per_setting(llm_caps, "llm_caps", n, high=1.0)
    bonuses, lams = _per_setting(bonuses, "bonuses", n), _per_setting(lams, "lams", n)
    p_obs = _per_setting(p_observe, "p_observe", n, high=1.0)
    flips, weights = _per_setting(flips, "flips", n, high=1.0), _per_setting(weights, "weights", n)
    keys = jax.vmap(jax.random.key)(jnp.asarray(seeds))
    new_idx = np.stack([np.flatnonzero(row) for row in new]).astype(np.int32)
    return online_replay_kernel(
        estimator.params, jnp.asarray(p), jnp.asarray(c), jnp.asarray(q), jnp.asarray(cl), jnp.asarray(masks),
        jnp.asarray(orders), keys, jnp.asarray(new_idx), jnp.asarray(n0), jnp.asarray(e0), jnp.asarray(codes),
        jnp.asarray(caps), jnp.asarray(llm_caps), jnp.asarray(bonuses), jnp.asarray(lams), jnp.asarray(delays),
        jnp.asarray(p_obs), jnp.asarray(flips), jnp.asarray(weights), method=estimator.method,
        max_delay=int(delays.max()), newton_steps=newton_steps)


# ---------------------------------------------------------------------- serving learner


class OnlineDecision(NamedTuple):
    """One request's decision from `OnlineLearner.choose`."""

    index: int  # the model served, an index into the pool
    model: str  # its name
    request_id: int  # pass to `record` with the outcome
    explored: bool  # the policy served another model than greedy would have


@functools.partial(jax.jit, static_argnames=("method",))
def _estimate(params, counts, error_sums, *, method: str):
    return jax.vmap(_ONE[method], in_axes=(None, 0, 0))(params, counts, error_sums)


class OnlineLearner:
    """Serves requests while learning new LLMs from their outcomes: the module's rule, in NumPy.

    Args:
      pool: the `Pool`, established and new LLMs together; the new LLMs' rows are their starting
        labels (`counts`, `error_sums`, possibly zero), their `psi` is ignored.
      estimator: an `Estimator` fitted on the established LLMs (`fit_estimator`).
      new: names of the LLMs learnt online (at least one, all in `pool`).
      policy: one of `POLICIES`.
      lam: lambda (error per unit cost), >= 0.
      explore_cap, llm_cap: largest share of requests served off greedy, overall and per LLM, in [0, 1].
      bonus: posterior sds subtracted by `optimistic`, >= 0.
      weight: labels an outcome counts as, >= 0.
      seed: seed of the Thompson draws.
      max_pending: requests kept waiting for an outcome; the oldest are dropped beyond it.

    Example:
      >>> learner = OnlineLearner(pool, fit_estimator("prior", est_pool.counts, est_pool.error_sums), ["new-llm"])
      >>> d = learner.choose(cluster=3)
      >>> learner.record(d.request_id, d.model, 1.0)     # when the outcome comes in
    """

    def __init__(self, pool: Pool, estimator: Estimator, new: Sequence[str], *, policy: str = "thompson",
                 lam: float = 0.0, explore_cap: float = 0.1, llm_cap: float = 1.0, bonus: float = 1.0,
                 weight: float = 1.0, seed: int = 0, max_pending: int = 100_000):
        if not isinstance(pool, Pool):
            raise TypeError(f"pool must be a Pool, got {type(pool).__name__}")
        if not isinstance(estimator, Estimator):
            raise TypeError(f"estimator must be an Estimator (fit_estimator), got {type(estimator).__name__}")
        if estimator.n_clusters != pool.psi.shape[1]:
            raise ValueError(f"pool has {pool.psi.shape[1]} clusters but the estimator was fitted on "
                             f"{estimator.n_clusters}")
        new = [new] if isinstance(new, str) else list(new)
        if not new:
            raise ValueError("new must name at least one LLM of the pool")
        self.pool, self.estimator = pool, estimator
        self.new = np.asarray(pool.index(new), np.int64)
        self.policy = validation.choice(policy, "policy", POLICIES)
        self.lam = validation.nonnegative_float(lam, "lam")
        self.explore_cap = validation.nonnegative_float(explore_cap, "explore_cap")
        self.llm_cap = validation.nonnegative_float(llm_cap, "llm_cap")
        for name, v in (("explore_cap", self.explore_cap), ("llm_cap", self.llm_cap)):
            if v > 1:
                raise ValueError(f"{name} must be in [0, 1], got {v}")
        self.bonus = validation.nonnegative_float(bonus, "bonus")
        self.weight = validation.nonnegative_float(weight, "weight")
        self.seed = validation.positive_int(seed, "seed", minimum=0)
        self.max_pending = validation.positive_int(max_pending, "max_pending")
        self.rng = np.random.default_rng(self.seed)
        m = len(pool)
        self.state = OnlineState(np.asarray(pool.counts, np.float64).copy(),
                                 np.asarray(pool.error_sums, np.float64).copy(), np.zeros(m), np.float64(0.0))
        self.pending: collections.OrderedDict[int, int] = collections.OrderedDict()  # request id -> cluster
        self.next_id = 0
        self._cache: tuple[bytes, Any] | None = None

    def estimates(self):
        """The new LLMs' `Estimate` at the current counts (each field `[n_new, n_clusters]`)."""
        n, e = self.state.counts[self.new], self.state.error_sums[self.new]
        key = n.tobytes() + e.tobytes()
        if self._cache is None or self._cache[0] != key:  # re-estimate only when a new LLM's labels moved
            est = _estimate(self.estimator.params, jnp.asarray(n, jnp.float32), jnp.asarray(e, jnp.float32),
                            method=self.estimator.method)
            self._cache = (key, jax.tree.map(lambda x: np.asarray(x, np.float64), est))
        return self._cache[1]

    def choose(self, cluster: int, costs: ArrayLike | None = None) -> OnlineDecision:
        """Decides one request of `cluster` (`router.assign`); `costs` [n_models] overrides the pool's."""
        from scipy.stats import beta

        K = self.pool.psi.shape[1]
        if isinstance(cluster, (bool, np.bool_)) or not isinstance(cluster, (int, np.integer)):
            raise TypeError(f"cluster must be an int cluster index, got {cluster!r}")
        if not 0 <= int(cluster) < K:
            raise ValueError(f"cluster must be in [0, {K}), got {cluster}")
        k = int(cluster)
        c = np.asarray(self.pool.costs, np.float64) if costs is None else validation.nonnegative(
            validation.float_array(costs, "costs", shape=(len(self.pool),), dtype=np.float64), "costs")
        est = self.estimates()
        p_k, a_k, b_k = est.psi[:, k], est.a[:, k], est.b[:, k]
        draw = beta.ppf(self.rng.random(self.new.size), a_k, b_k) if self.policy == "thompson" else p_k
        greedy_err = np.asarray(self.pool.psi[:, k], np.float64).copy()
        greedy_err[self.new] = p_k
        policy_err = greedy_err.copy()
        policy_err[self.new] = policy_errors(p_k, a_k, b_k, draw, POLICIES.index(self.policy), self.bonus)
        order = lambda e: int(np.lexsort((np.arange(e.size), c, e + self.lam * c))[0])
        greedy, pick = order(greedy_err), order(policy_err)
        served, explored = capped(pick, greedy, self.state, self.explore_cap, self.llm_cap)
        served, explored = int(served), bool(explored)
        self.state = step_state(self.state, served, explored)
        rid = self.next_id
        self.next_id += 1
        self.pending[rid] = k
        while len(self.pending) > self.max_pending:
            self.pending.popitem(last=False)
        return OnlineDecision(served, self.pool.names[served], rid, explored)

    def record(self, request_id: int, model: str, outcome: float) -> None:
        """Folds a request's outcome (quality in [0, 1], 1 = correct) of `model` into the counts.

        Raises (changing nothing) on an unknown or already recorded `request_id`, a `model` not in
        the pool, or an `outcome` outside [0, 1] or NaN.
        """
        if isinstance(request_id, (bool, np.bool_)) or not isinstance(request_id, (int, np.integer)):
            raise TypeError(f"request_id must be an int from choose, got {request_id!r}")
        if int(request_id) not in self.pending:
            raise ValueError(f"request_id {request_id} is unknown (never decided, already recorded, or dropped)")
        if not isinstance(model, str) or model not in self.pool.names:
            raise ValueError(f"model {model!r} is not in the pool {list(self.pool.names)}")
        value = validation.nonnegative_float(outcome, "outcome")
        if value > 1:
            raise ValueError(f"outcome must be in [0, 1], got {value}")
        k = self.pending.pop(int(request_id))
        self.state = fold(self.state, self.pool.names.index(model), k, 1.0 - value, self.weight)

    # ------------------------------------------------------------------------ files

    def _options(self) -> dict[str, Any]:
        return {"policy": self.policy, "lam": self.lam, "explore_cap": self.explore_cap, "llm_cap": self.llm_cap,
                "bonus": self.bonus, "weight": self.weight, "seed": self.seed, "max_pending": self.max_pending}

    def save(self, path: str | os.PathLike) -> Path:
        """Writes pool, estimator, options, state, pending requests and the random state to a `.npz`."""
        arrays = {f"state_{k}": np.asarray(v, np.float64) for k, v in self.state._asdict().items()}
        arrays.update({"pool_costs": np.asarray(self.pool.costs), "pool_psi": np.asarray(self.pool.psi),
                       "pool_counts": np.asarray(self.pool.counts), "pool_error_sums": np.asarray(self.pool.error_sums),
                       "pending_ids": np.fromiter(self.pending.keys(), np.int64, len(self.pending)),
                       "pending_clusters": np.fromiter(self.pending.values(), np.int64, len(self.pending))})
        fields = [f for f in EstimatorParams._fields if getattr(self.estimator.params, f) is not None]
        arrays.update({f"est_{f}": np.asarray(getattr(self.estimator.params, f)) for f in fields})
        meta = {"names": list(self.pool.names), "new": [self.pool.names[i] for i in self.new],
                "router_fingerprint": self.pool.router_fingerprint, "method": self.estimator.method,
                "options": self._options(), "next_id": self.next_id,
                "rng": json.loads(json.dumps(self.rng.bit_generator.state))}
        return persistence.save_arrays(path, "online_learner", arrays, meta)

    @classmethod
    def load(cls, path: str | os.PathLike) -> OnlineLearner:
        """Reads a learner written by `save`: the next decisions are the ones the saved learner would make."""
        arrays, meta = persistence.load_arrays(path, "online_learner")
        try:
            pool = Pool(tuple(meta["names"]), arrays["pool_costs"], arrays["pool_psi"], arrays["pool_counts"],
                        arrays["pool_error_sums"], meta["router_fingerprint"])
            params = EstimatorParams(**{f: jnp.asarray(arrays[f"est_{f}"]) for f in EstimatorParams._fields
                                        if f"est_{f}" in arrays})
            learner = cls(pool, Estimator(validation.choice(meta["method"], "method", METHODS), params), meta["new"],
                          **meta["options"])
            learner.state = OnlineState(**{k: arrays[f"state_{k}"] for k in OnlineState._fields})
            learner.pending = collections.OrderedDict(zip(arrays["pending_ids"].tolist(),
                                                          arrays["pending_clusters"].tolist()))
            learner.next_id = int(meta["next_id"])
            learner.rng.bit_generator.state = meta["rng"]
        except (KeyError, TypeError) as err:
            raise ValueError(f"{path} is missing online learner field {err}") from None
        return learner

    def __repr__(self) -> str:
        names = ", ".join(self.pool.names[i] for i in self.new)
        return f"OnlineLearner(new: {names}; policy={self.policy!r}, explore_cap={self.explore_cap})"
