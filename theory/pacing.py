"""Online budget pacing (`uniroute_jax`'s pacer): regret and budget violation grow like `sqrt(T)`.

Setting. An instance is a table known exactly: requests fall i.i.d. into `n_clusters` clusters with
mixture weights `w`, model `h` errs on a request of cluster `k` with probability `e[k, h]` (its
realised quality is Bernoulli(`1 - e[k, h]`)) and costs `c[h]`. A budget `B = rho T` is spread over
`T` requests. The offline problem "maximise expected quality subject to mean cost `<= rho`" is a
linear program over the mixture; its value `OPT(rho) = 1 - E*(rho)` is read off the exact frontier
(`bayes.exact_frontier`, no lambda involved), and its solution is a fixed `lambda*` (the
frontier's slope at `rho`) that mixes two decisions on one cluster (`optimal_policy`).

The pacer (`uniroute_jax._src.pacing`) decides each request at `argmin_h e[k, h] + lambda_t c[h]`
and moves `lambda_t` multiplicatively: mirror descent with the entropy regulariser, a step of
`eta g_t / sqrt(T)` on `log lambda` (`g_t` the request's cost less its target, in requests' worth
of budget), clipped to `[FLOOR span, span]`. Measured over seeds and instances, for `T` on a log
grid:

* regret against the best fixed `lambda`: `sum_t q*(k_t) - sum_t (1 - e[k_t, a_t])`, where `q*(k)`
  is the optimal fixed rule's expected quality on cluster `k`; its expectation is
  `T OPT(rho) - E sum_t (1 - e[k_t, a_t])` (also reported, with the cluster counts' noise in it).
  Quality is expected quality (the pseudo-regret): the pacer sees costs only, so the Bernoulli
  outcomes add zero-mean noise; the realised regret, and the regret against the best fixed
  `lambda` of each stream's own cluster counts (hindsight), are reported beside it;
* violation `max(0, spend - B)` and the signed `spend - B`;
* Lagrangian regret `regret + lambda* (spend - B)`: for any policy its expectation is `>= 0`
  (`q - lambda* c` is at most `OPT - lambda* rho` per request on average), so unlike the regret it
  cannot be bought down by overspending.

Two kinds of checks. **Slopes**: the least-squares slope of `log(mean over streams)` against
`log T`, with a 95% bootstrap interval over streams; a check fails when the whole interval lies
above `0.5 + SLOPE_TOL`. One-sided on purpose: a warm-started pacer's regret is under
`0.04 sqrt(T)` at every `T`, a few standard errors from zero, so its fitted slope is wide (tenths
either side) and only a rate well above `sqrt(T)` (the planted bugs' 1) moves the whole interval
past the limit; the sharp statements are the explicit bounds below. Slopes are measured on the
`"tiers"` ladder with warm starts (`uniroute_jax.warm_start` on a sample of requests, the
library's documented use); the cold start and the `"spread"` ladder are reported beside them, not
given verdicts. A cold start (`lambda_1 = 0`, clipped to the floor) has to climb `log(lambda* /
(FLOOR span))` in steps of `eta g_t / sqrt(T)`, buying the most accurate model meanwhile: its
violation is `O(sqrt(T))` but with that log (about 10 here) in the constant, so the spend overruns
`B` by a share that falls only like `1 / sqrt(T)`. (The additive rule this replaced stepped by
`eta span / (rho sqrt(T))` in `lambda`; on the `"spread"` ladder that step, proportional to
`span`, stayed large against `lambda*` up to `T = 1e5`, and the regret with it.)
**Explicit bounds** (target `"fixed"`, every ladder, start and `T`; the argument of Balseiro, Lu
and Mirrokni with the entropy's mirror map in place of the Euclidean one). In the pacer's
normalised units `lam = lambda rho`, `g_t = (c_t - rho) / rho` and `eta = eta_mult / sqrt(T)`,
the rule is `lam_{t+1} = clip(lam_t exp(eta g_t), lam_min, span rho)`, `lam_min = FLOOR span rho`.
The choice maximises `q - lambda_t c` and `lambda_t` does not depend on the current request, so

    E regret <= E[-sum_t lambda_t (c_t - rho)] = E[-sum_t lam_t g_t].

The right side is the regret of mirror descent on the linear losses `lam -> -lam g_t` with
`psi(x) = x log x - x` (the unnormalised entropy on `x > 0`), whose Bregman divergence is
`D(u, x) = u log(u / x) - u + x`. A step gives, for any comparator `u` in `[lam_min, span rho]`,
`eta g_t (u - lam_t) <= D(u, lam_t) - D(u, lam_{t+1}) + D(lam_t, lam_t e^{eta g_t})` (the clip is
the Bregman projection onto the range, which only lowers `D(u, .)`), and
`D(lam_t, lam_t e^x) = lam_t phi(x)` with `phi(x) = e^x - 1 - x`. Summed:

    -sum_t lam_t g_t <= -u sum_t g_t + D(u, lam_1) / eta + (1 / eta) sum_t lam_t phi(eta g_t).

`phi(x) = x^2 / 2 + O(x^3)`, so the last term is the textbook `(eta / 2) sum_t lam_t g_t^2` as the
step shrinks; `phi(x) <= x^2 / 2` for `x <= 0` and, from `exp(x) <= 1 + x + x^2`, `phi(x) <= x^2`
for `x <= 1`. The check keeps `phi` exact, so it needs no condition on `eta g_t`. The regret bound
takes `u = lam_min`: `D(lam_min, lam_1) <= lam_1`, and `-lam_min sum_t g_t <= FLOOR span rho T`
(`g_t >= -1`) is negligible, so the bound is about `lam_1 sqrt(T) / eta_mult + (eta_mult sqrt(T) /
2) mean_t lam_t g_t^2`: `O(sqrt(T))`, and in proportion to the `lam_t` the pacer uses, where the
additive rule's `(eta / 2) sum_t g_t^2` grew with its `span`-sized step. With `u = lambda* rho` the
same line bounds the Lagrangian regret (its `-u sum_t g_t` is `-lambda* (spend - B)`) by
`D(lambda* rho, lam_1) / eta + (1 / eta) E sum_t lam_t phi(eta g_t)`. And since
`log lam_{t+1} >= log lam_t + eta g_t` unless `lam` is clipped at the top of its range (the floor
only raises it), `sum_t g_t <= log(span rho / lam_1) / eta`, that is

    spend - B = rho sum_t g_t <= rho sqrt(T) log(span / lambda_1) / eta_mult

on every stream whose `lambda` never reaches the top (from a cold start `lambda_1` is the floor
and the log is `log(1 / FLOOR)`). Both bounds use the documented step: the regret bound evaluates
`phi` at it along the pacer's own `lam_t`, so a rule that takes other steps can break them.

Planted step-rule bugs the checks must catch: a constant step (`eta_mult = c sqrt(T)`, a step of
`c g_t` on `log lambda` that does not shrink with `T`: `lambda` keeps jumping by factors `e^{c g_t}`
and the regret grows linearly) and the update's sign flipped (`lambda` runs away from `lambda*`:
to the floor, where every request buys the most accurate model and spend overruns `B` linearly,
or to the top, where every request buys the cheapest and the regret is linear; the Lagrangian
regret is linear either way). The flipped rule is the kernel with a negative step
(`uniroute_jax.kernels.replay_kernel`, the unchecked entry point; `replay` refuses negative steps).

    python -m theory.pacing --out theory/results [--quick]   # this study only, merged into summary.*
"""

from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path
from typing import Any, NamedTuple

import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

import uniroute_jax as ur
from theory.summary_merge import merge_study, study_main
from theory import bayes
from uniroute_jax._src.pacing import FLOOR
from uniroute_jax.kernels import replay_kernel

SLOPE_TOL = 0.1
"""A slope check fails when the whole 95% bootstrap interval of the fitted slope lies above
`0.5 + SLOPE_TOL`. Over three decades of `T` the rule's point slopes on the `"tiers"` ladder sit at
0.41-0.49 for target `"fixed"` (see the README's table; the warm-started regret's intervals are
wide, its mean being near zero) and a linear rate gives about 1; the tolerance covers the curvature of lower-order
terms over a finite grid, not a different exponent."""

COST_LADDERS = ("tiers", "spread")

STARTS = ("warm", "cold")
TARGETS = ("fixed", "remaining")
PLANTED = {"constant_step": "constant step 1 x g on log lambda (not / sqrt(T))", "flip_sign": "update sign flipped"}


@dataclasses.dataclass(frozen=True)
class PacingConfig:
    """Sizes of one study."""

    horizons: tuple[int, ...]  # T on a log grid
    n_instances: int  # tables drawn from the meta-distribution
    n_seeds: int  # streams per (instance, start)
    n_clusters: int = 8
    n_models: int = 4
    n_warm: int = 1000  # requests of the sample the warm start is calibrated on
    constant_step: float = 1.0  # planted bug: a step of `constant_step * g` on log lam, whatever T
    n_boot: int = 1000  # bootstrap resamples of the slope intervals


FULL = PacingConfig(horizons=tuple(int(t) for t in np.round(np.geomspace(1e2, 1e5, 10))), n_instances=16, n_seeds=8)
QUICK = PacingConfig(horizons=(100, 464, 2154, 10000), n_instances=6, n_seeds=4, n_boot=300)


# ------------------------------------------------------------------------------ instances


class PacingInstances(NamedTuple):
    """Tables with a known optimum; errors and costs are float64 copies of the float32 values the
    pacer sees, so the exact computations and the pacer's decisions use the same table."""

    weights: np.ndarray  # [n_instances, n_clusters] mixture weights of the request clusters
    errors: np.ndarray  # [n_instances, n_clusters, n_models] P(error | cluster, model)
    costs: np.ndarray  # [n_instances, n_models] cost of one request on each model
    rate: np.ndarray  # [n_instances] budget per request rho
    span: np.ndarray  # [n_instances] `uniroute_jax.lambda_span` of the table (top of lambda's range)
    lam_star: np.ndarray  # [n_instances] best fixed lambda at rho (the frontier's slope there)
    frontiers: tuple  # n_instances `bayes.Frontier`s: E*(rho) of each table


def _f32(x) -> np.ndarray:
    return np.asarray(x, np.float32).astype(np.float64)


def sample_instances(rng: np.random.Generator, n_instances: int, *, n_clusters: int = 8, n_models: int = 4,
                     costs: str = "tiers") -> PacingInstances:
    """Draws tables: pricier models are better on average but not on every cluster.

    `logit P(correct | k, h) = 1.8 rank(h) / (n_models - 1) - difficulty_k + noise_kh` with
    `difficulty ~ N(0, 1)`, `noise ~ N(0, 0.7^2)`; `w ~ Dirichlet(2)`; `rho` a uniform fraction in
    [0.2, 0.8] of the way from the cheapest routing's mean cost to the most accurate routing's,
    so the budget binds. Costs: `"tiers"`, a geometric ladder `c0 * r^rank` (`c0` log-uniform in
    [0.01, 1], `r` uniform in [2, 4]: each tier a few times the price of the one below);
    `"spread"`, `n_models` log-uniform draws in [0.05, 5], sorted, so two models may cost nearly
    the same and `lambda_span` (the top of lambda's range, set by the largest error saved per
    unit of extra cost) can be hundreds of times the optimal `lambda*`.
    """
    if n_instances < 1 or n_clusters < 1 or n_models < 2:
        raise ValueError(f"need n_instances >= 1, n_clusters >= 1, n_models >= 2; got {n_instances}, "
                         f"{n_clusters}, {n_models}")
    if costs not in COST_LADDERS:
        raise ValueError(f"costs must be one of {COST_LADDERS}, got {costs!r}")
    w = _f32(rng.dirichlet(np.full(n_clusters, 2.0), size=n_instances))
    w /= w.sum(axis=1, keepdims=True)
    if costs == "tiers":
        log_c = (rng.uniform(np.log(0.01), 0.0, (n_instances, 1))
                 + np.log(rng.uniform(2.0, 4.0, (n_instances, 1))) * np.arange(n_models))
    else:
        log_c = np.sort(rng.uniform(np.log(0.05), np.log(5.0), (n_instances, n_models)), axis=1)
    c = _f32(np.exp(log_c))
    skill = 1.8 * np.arange(n_models) / (n_models - 1)
    logit = (skill[None, None, :] - rng.normal(0.0, 1.0, (n_instances, n_clusters, 1))
             + rng.normal(0.0, 0.7, (n_instances, n_clusters, n_models)))
    errors = _f32(1.0 / (1.0 + np.exp(logit)))
    frac = rng.uniform(0.2, 0.8, n_instances)
    fronts = tuple(bayes.exact_frontier(errors[i], c[i], weights=w[i]) for i in range(n_instances))
    rate = np.array([f.cost[0] + a * (f.cost[-1] - f.cost[0]) for f, a in zip(fronts, frac)])
    lam = np.array([optimal_policy(w[i], errors[i], c[i], rate[i])[1] for i in range(n_instances)])
    span = np.array([ur.lambda_span(errors[i], c[i]) for i in range(n_instances)])
    return PacingInstances(w, errors, c, rate, span, lam, fronts)


def concat_instances(*parts: PacingInstances) -> PacingInstances:
    """One batch of instances from several (same `n_clusters` and `n_models`)."""
    return PacingInstances(*(np.concatenate(f) if not isinstance(f[0], tuple) else sum(f, ())
                             for f in zip(*parts)))


def optimal_policy(weights: ArrayLike, errors: ArrayLike, costs: ArrayLike, rate: float
                   ) -> tuple[float, float, np.ndarray]:
    """The offline optimum at spend `rate`: `(OPT quality per request, lambda*, policy)`.

    `lambda*` is the exact frontier's slope at `rate`; the policy picks, on each cluster, a
    minimiser of `e + lambda* c`, mixing each tied cluster's cheapest and dearest minimisers in the
    one proportion that spends `rate` (any such mix is optimal: it minimises the Lagrangian and
    meets the budget with equality).

    Args:
      weights: [n_clusters]; errors: [n_clusters, n_models]; costs: [n_models]; rate: spend per
        request, at least the cheapest routing's.

    Returns:
      `(opt, lam_star, policy [n_clusters, n_models])`.
    """
    w, e, c = (np.asarray(a, np.float64) for a in (weights, errors, costs))
    fr = bayes.exact_frontier(e, c, weights=w)
    if rate < fr.cost[0] - 1e-12:
        raise ValueError(f"rate {rate} is below the cheapest routing's mean cost {fr.cost[0]}")
    j = max(int(np.searchsorted(fr.cost, rate, side="right")), 1)
    lam = 0.0 if j >= fr.cost.size else float((fr.error[j - 1] - fr.error[j]) / (fr.cost[j] - fr.cost[j - 1]))
    loss = e + lam * c[None, :]
    tied = loss <= loss.min(axis=1, keepdims=True) + 1e-9
    rows = np.arange(e.shape[0])
    low = np.argmin(np.where(tied, c[None, :], np.inf), axis=1)
    high = np.argmax(np.where(tied, c[None, :], -np.inf), axis=1)
    c_low, c_high = w @ c[low], w @ c[high]
    theta = 0.0 if c_high <= c_low else float(np.clip((rate - c_low) / (c_high - c_low), 0.0, 1.0))
    policy = np.zeros_like(e)
    policy[rows, low] += 1.0 - theta
    policy[rows, high] += theta
    return 1.0 - float(bayes.frontier_error(fr, min(rate, fr.cost[-1]))), lam, policy


# ------------------------------------------------------------------------------ experiment


class PacingRuns(NamedTuple):
    """Per horizon and stream; streams are `starts x instances x seeds`, flattened in that order."""

    horizons: np.ndarray  # [n_horizons] T
    start: np.ndarray  # [n_streams] "warm" or "cold"
    instance: np.ndarray  # [n_streams] index into the instances
    regret: np.ndarray  # [n_horizons, n_streams] sum_t q*(k_t) - expected quality of the pacer's choices
    regret_vs_opt: np.ndarray  # [n_horizons, n_streams] T OPT(rho) - expected quality of the pacer's choices
    regret_realised: np.ndarray  # [n_horizons, n_streams] T OPT(rho) - realised (Bernoulli) quality
    regret_hindsight: np.ndarray  # [n_horizons, n_streams] against the best fixed lambda of the stream's counts
    overspend: np.ndarray  # [n_horizons, n_streams] spend - B (float64 sum of the charged costs)
    lagrangian_regret: np.ndarray  # [n_horizons, n_streams] regret + lambda* (spend - B)
    budget: np.ndarray  # [n_horizons, n_streams] B
    regret_bound: np.ndarray  # [n_horizons, n_streams] -u sum g_t + D(u, lam_1) / eta + sum lam_t phi(eta g_t) / eta
    overspend_bound: np.ndarray  # [n_horizons, n_streams] rho log(span rho / lam_1) / eta
    reached_top: np.ndarray  # [n_horizons, n_streams] bool: lambda was clipped at the top of its range
    spend_drift: np.ndarray  # [n_horizons, n_streams] the kernel's (compensated float32) running spend - float64 sum


def warm_lambdas(instances: PacingInstances, rng: np.random.Generator, n_warm: int) -> np.ndarray:
    """[n_instances] `uniroute_jax.warm_start` on `n_warm` requests drawn from each instance's mixture."""
    out = []
    for w, e, c, r in zip(instances.weights, instances.errors, instances.costs, instances.rate):
        sample = rng.choice(w.size, size=n_warm, p=w)
        out.append(ur.warm_start(e[sample], c, float(r)))
    return np.minimum(np.asarray(out), instances.span)


def _kernel_replay(errors, costs, orders, budgets, etas, lam0, spans, *, target: str):
    """What `uniroute_jax.replay` hands its kernel (float32; lam normalised by rho), without its
    checks: the only way to run a negative step."""
    f32 = lambda a: np.asarray(a, np.float32)  # noqa: E731
    rho = f32(budgets) / np.float32(orders.shape[1])
    n = orders.shape[0]
    return replay_kernel(jnp.asarray(f32(errors)), jnp.asarray(f32(costs)), jnp.asarray(f32(1.0 - errors)),
                         jnp.asarray(np.asarray(orders, np.int32)), jnp.ones((n, errors.shape[1]), bool),
                         jnp.asarray(f32(budgets)), jnp.asarray(f32(etas)), jnp.asarray(f32(lam0) * rho),
                         jnp.asarray(f32(spans) * rho), jnp.ones(n, jnp.float32), hard_cap=False, target=target,
                         update_every=1)


def optimal_quality(instances: PacingInstances) -> np.ndarray:
    """[n_instances, n_clusters] expected quality of the optimal fixed-lambda rule on each cluster."""
    return np.array([((1.0 - e) * optimal_policy(w, e, c, r)[2]).sum(axis=1)
                     for w, e, c, r in zip(instances.weights, instances.errors, instances.costs, instances.rate)])


def _bregman(u, x):
    """`D(u, x) = u log(u / x) - u + x`, the Bregman divergence of `x log x - x` (`u, x > 0`)."""
    return u * np.log(u / x) - u + x


def replay_streams(instances: PacingInstances, instance: np.ndarray, clusters: np.ndarray, lam1: np.ndarray,
                   rng: np.random.Generator, *, target: str = "remaining", eta: float = 1.0,
                   constant_step: float | None = None, flip_sign: bool = False,
                   q_star: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Runs the pacer over given streams and measures each: the fields of `PacingRuns`, `[n_streams]`.

    Args:
      instances: the tables.
      instance: [n_streams] int, the instance of each stream.
      clusters: [n_streams, T] int, each request's cluster.
      lam1: [n_streams] starting lambda (`lambda`'s units).
      rng: draws the realised (Bernoulli) outcomes.
      target, eta, constant_step, flip_sign: as in `run_pacing_experiment`.
      q_star: optional `optimal_quality(instances)`.
    """
    n_k, n_m = instances.errors.shape[1:]
    n, T = clusters.shape
    q_star = optimal_quality(instances) if q_star is None else q_star
    errors = instances.errors.reshape(-1, n_m)  # prompt i * n_k + k: cluster k of instance i
    costs = np.repeat(instances.costs, n_k, axis=0)  # per-request costs: each instance its own
    budget = _f32(np.float32(instances.rate[instance] * T))
    span = instances.span[instance]
    etas = np.full(n, eta * (np.sqrt(T) * constant_step if constant_step is not None else 1.0))
    orders = instance[:, None] * n_k + clusters
    if flip_sign:  # `replay` refuses a negative step
        res = _kernel_replay(errors, costs, orders, budget, -etas, lam1, span, target=target)
    else:
        res = ur.replay(errors, costs, 1.0 - errors, orders, budget, etas=etas, lam0=lam1, spans=span,
                        target=target)
    rho32 = budget.astype(np.float32) / np.float32(T)  # the kernel's rho
    rho = budget / T
    top = np.maximum(np.asarray(res.lam.max(axis=1)), np.asarray(res.state.lam[:, 0]) / rho32)
    kernel_spent = np.asarray(res.state.spent[:, 0], np.float64)
    choice = np.asarray(res.choice)
    # The bounds' terms along the pacer's own path, in its normalised units: lam_t = lambda_t rho
    # and g_t = (c_t - rho) / rho (the fixed target's subgradient), step eta / sqrt(T) on log lam.
    lam_t = np.asarray(res.lam, np.float64) * rho32[:, None]  # [n, T]
    g = np.asarray(res.cost, np.float64) / rho[:, None] - 1.0  # [n, T]
    del res
    step = eta / np.sqrt(T)  # the documented step, whatever a planted bug takes
    lam_1 = lam_t[:, 0]  # lambda_1 clipped into [FLOOR span, span], times rho
    u = FLOOR * span * rho  # the comparator: the bottom of lam's range
    phi_sum = np.einsum("st,st->s", lam_t, np.expm1(step * g) - step * g)  # sum_t lam_t phi(eta g_t)
    regret_bound = -u * g.sum(axis=1) + _bregman(u, lam_1) / step + phi_sum / step
    overspend_bound = rho * np.log(span * rho / lam_1) / step
    del lam_t, g
    # Tallies per (cluster, model): every sum below is exact in float64.
    flat = (np.arange(n)[:, None] * (n_k * n_m) + clusters * n_m + choice).ravel()
    counts = np.bincount(flat, minlength=n * n_k * n_m).reshape(n, n_k, n_m).astype(np.float64)
    e, c = instances.errors[instance], instances.costs[instance]  # [n, K, M], [n, M]
    quality = np.einsum("skm,skm->s", counts, 1.0 - e)
    spend = np.einsum("skm,sm->s", counts, c)
    n_clus = counts.sum(axis=2)  # [n, K] requests per cluster
    opt = np.array([1.0 - float(bayes.frontier_error(instances.frontiers[i], r)) for i, r in zip(instance, rho)])
    hind = np.array([1.0 - float(bayes.frontier_error(
        bayes.exact_frontier(instances.errors[i], instances.costs[i], weights=n_clus[s]), r))
        for s, (i, r) in enumerate(zip(instance, rho))])
    # Realised quality: per (cluster, model), a sum of Bernoulli outcomes is a binomial.
    realised = rng.binomial(counts.astype(np.int64), 1.0 - e).sum(axis=(1, 2))
    regret = np.einsum("sk,sk->s", n_clus, q_star[instance]) - quality  # the optimal rule on the same requests
    return {"regret": regret,
            "regret_vs_opt": T * opt - quality,
            "regret_realised": T * opt - realised,
            "regret_hindsight": T * hind - quality,
            "overspend": spend - budget,
            "lagrangian_regret": regret + instances.lam_star[instance] * (spend - budget),
            "budget": budget,
            "regret_bound": regret_bound,
            "overspend_bound": overspend_bound,
            "reached_top": top >= span * (1 - 1e-5),
            "spend_drift": kernel_spent - spend}


def run_pacing_experiment(instances: PacingInstances, horizons, rng: np.random.Generator, *, n_seeds: int,
                          target: str = "remaining", eta: float = 1.0, starts=STARTS, warm: np.ndarray | None = None,
                          constant_step: float | None = None, flip_sign: bool = False,
                          batch: int = 128) -> PacingRuns:
    """Replays `starts x instances x n_seeds` i.i.d. streams per horizon through the pacer.

    Args:
      instances: tables (`sample_instances`).
      horizons: T values.
      rng: draws the streams and the realised outcomes.
      n_seeds: streams per (start, instance).
      target: the pacer's `target` ("fixed" or "remaining").
      eta: the step multiplier of the documented rule (`uniroute_jax.replay`'s `etas`).
      starts: "warm" (`warm`, by default `warm_lambdas` on 1,000 requests) and / or "cold"
        (`lambda_1 = 0`).
      warm: optional [n_instances] warm-start lambdas.
      constant_step: planted bug: the step on `log lambda` is `constant_step * g_t`, not divided by `sqrt(T)`.
      flip_sign: planted bug: the update moves `lambda` the wrong way.
      batch: streams per replay call (one compile per horizon serves every call; bounds memory).

    Returns:
      `PacingRuns`. The bounds use the documented step `eta`, whatever a planted bug does.
    """
    horizons = np.asarray(horizons, np.int64)
    if horizons.ndim != 1 or horizons.size == 0 or np.any(horizons < 1):
        raise ValueError(f"horizons must be a non-empty list of positive ints, got {horizons}")
    if target not in TARGETS:
        raise ValueError(f"target must be one of {TARGETS}, got {target!r}")
    if not starts or not set(starts) <= set(STARTS):
        raise ValueError(f"starts must be a non-empty subset of {STARTS}, got {starts}")
    if n_seeds < 1 or batch < 1:
        raise ValueError(f"n_seeds and batch must be >= 1, got {n_seeds}, {batch}")
    n_inst, n_k = instances.errors.shape[:2]
    if "warm" in starts and warm is None:
        warm = warm_lambdas(instances, rng, 1000)
    start = np.repeat(np.asarray(starts), n_inst * n_seeds)
    inst = np.tile(np.repeat(np.arange(n_inst), n_seeds), len(starts))
    lam1 = _f32(np.where(start == "warm", 0.0 if warm is None else np.asarray(warm)[inst], 0.0))
    q_star = optimal_quality(instances)
    n = inst.size
    batch = min(batch, n)
    fields = {f: np.zeros((horizons.size, n)) for f in PacingRuns._fields[3:]}
    fields["reached_top"] = np.zeros((horizons.size, n), bool)
    for h, T in enumerate(horizons):
        for b0 in range(0, n, batch):
            idx = np.arange(b0, b0 + batch) % n  # the last batch is padded with repeats: one shape, one compile
            keep = np.arange(b0, min(b0 + batch, n))
            z = np.empty((batch, int(T)), np.int32)
            for i in np.unique(inst[idx]):
                rows = inst[idx] == i
                z[rows] = rng.choice(n_k, size=(int(rows.sum()), int(T)), p=instances.weights[i])
            out = replay_streams(instances, inst[idx], z, lam1[idx], rng, target=target, eta=eta,
                                 constant_step=constant_step, flip_sign=flip_sign, q_star=q_star)
            for k, v in out.items():
                fields[k][h, keep] = v[: keep.size]
    return PacingRuns(horizons, start, inst, **fields)


# ------------------------------------------------------------------------------ fits and verdicts


class SlopeFit(NamedTuple):
    """Least-squares slope of `log(mean over streams)` against `log T`, with a bootstrap interval."""

    slope: float | None  # None when the mean is positive at fewer than 3 horizons
    low: float | None  # 2.5% bootstrap quantile (streams resampled with replacement)
    high: float | None  # 97.5% quantile
    n_points: int  # horizons whose mean is positive (the fit uses those)


def fit_slope(horizons: ArrayLike, values: ArrayLike, rng: np.random.Generator, n_boot: int = 1000) -> SlopeFit:
    """Fits `log(mean_s values[:, s]) = a + slope log T` over the horizons where the mean is positive.

    Args:
      horizons: [n_horizons] T.
      values: [n_horizons, n_streams] a quantity per stream (regret, violation).
      rng: draws the bootstrap resamples (one resample of the streams serves every horizon, so
        a stream's instance and start stay together).
      n_boot: resamples.
    """
    t = np.log(np.asarray(horizons, np.float64))
    v = np.asarray(values, np.float64)
    if v.ndim != 2 or v.shape[0] != t.size:
        raise ValueError(f"values must have shape ({t.size}, n_streams), got {v.shape}")

    def slope(mean):
        pos = mean > 0
        if pos.sum() < 3:
            return None, int(pos.sum())
        return float(np.polyfit(t[pos], np.log(mean[pos]), 1)[0]), int(pos.sum())

    point, n_points = slope(v.mean(axis=1))
    if point is None:
        return SlopeFit(None, None, None, n_points)
    boots = [slope(v[:, rng.integers(0, v.shape[1], v.shape[1])].mean(axis=1))[0] for _ in range(n_boot)]
    boots = np.array([b for b in boots if b is not None])
    return SlopeFit(point, float(np.quantile(boots, 0.025)), float(np.quantile(boots, 0.975)), n_points)


def _fit_dict(fit: SlopeFit) -> dict[str, Any]:
    return fit._asdict()


def summarise_runs(runs: PacingRuns, family: np.ndarray, rng: np.random.Generator, n_boot: int
                   ) -> dict[str, dict[str, Any]]:
    """Per `family/start` group of streams: means per `sqrt(T)`, slope fits and bound margins.

    Args:
      runs: one experiment.
      family: [n_instances] the cost ladder each instance was drawn with.
      rng: bootstrap draws.
      n_boot: bootstrap resamples per fit.
    """
    root = np.sqrt(runs.horizons)
    out = {}
    for fam in dict.fromkeys(family):
        for start in dict.fromkeys(runs.start):
            m = (family[runs.instance] == fam) & (runs.start == start)
            n = int(m.sum())
            if n == 0:
                continue
            reg, over = runs.regret[:, m], runs.overspend[:, m]
            viol = np.maximum(over, 0.0)
            gap = runs.regret_bound[:, m] - reg
            se = gap.std(axis=1, ddof=1) / np.sqrt(n) if n > 1 else np.zeros(gap.shape[0])
            free = ~runs.reached_top[:, m]  # the overspend bound assumes lambda never clipped at the top
            over_gap = np.where(free, runs.overspend_bound[:, m] - over, np.inf) / root[:, None]
            per = lambda a: [float(x) for x in a.mean(axis=1) / root]  # noqa: E731
            out[f"{fam}/{start}"] = {
                "n_streams": n,
                "regret_per_sqrt_t": per(reg),
                "regret_se_per_sqrt_t": [float(x) for x in reg.std(axis=1, ddof=min(1, n - 1)) / np.sqrt(n) / root],
                "regret_vs_opt_per_sqrt_t": per(runs.regret_vs_opt[:, m]),
                "regret_realised_per_sqrt_t": per(runs.regret_realised[:, m]),
                "regret_hindsight_per_sqrt_t": per(runs.regret_hindsight[:, m]),
                "violation_per_sqrt_t": per(viol), "overspend_per_sqrt_t": per(over),
                "spend_over_budget_minus_1": [float(x) for x in (over / runs.budget[:, m]).mean(axis=1)],
                "regret_bound_per_sqrt_t": per(runs.regret_bound[:, m]),
                "regret_slope": _fit_dict(fit_slope(runs.horizons, reg, rng, n_boot)),
                "violation_slope": _fit_dict(fit_slope(runs.horizons, viol, rng, n_boot)),
                "lagrangian_regret_per_sqrt_t": per(runs.lagrangian_regret[:, m]),
                "lagrangian_slope": _fit_dict(fit_slope(runs.horizons, runs.lagrangian_regret[:, m], rng, n_boot)),
                # (bound - regret + 3 standard errors) / sqrt(T), worst horizon: < 0 fails.
                "regret_bound_margin": float(np.min((gap.mean(axis=1) + 3 * se) / root)),
                # (bound - overspend) / sqrt(T), worst stream and horizon whose lambda stayed below the top.
                "overspend_bound_margin": float(np.min(over_gap)) if np.isfinite(over_gap).any() else None,
                "n_reached_top": int(runs.reached_top[:, m].sum()),
            }
    return out


# ------------------------------------------------------------------------------ the study


def run_study(config: PacingConfig, seed: int = 0, log=print) -> dict[str, Any]:
    """Both cost ladders, both starts, both targets, the rule and its two planted bugs.

    Returns the JSON-ready summary: `settings`, `instances` (spread of `span / lambda*`), `runs`
    (`target -> variant -> "ladder/start" -> summarise_runs entry`) and `spend_drift`.
    """
    t0 = time.time()
    rng = np.random.default_rng((seed, 21))
    parts = [sample_instances(rng, config.n_instances, n_clusters=config.n_clusters, n_models=config.n_models,
                              costs=ladder) for ladder in COST_LADDERS]
    inst = concat_instances(*parts)
    family = np.repeat(np.asarray(COST_LADDERS), config.n_instances)
    warm = warm_lambdas(inst, rng, config.n_warm)
    ratio = inst.span / inst.lam_star
    summary: dict[str, Any] = {
        "settings": {**dataclasses.asdict(config), "seed": seed,
                     "mode": {QUICK: "quick", FULL: "full"}.get(config, "custom"), "slope_tol": SLOPE_TOL,
                     "ladders": list(COST_LADDERS), "starts": list(STARTS)},
        "instances": {lad: {"span_over_lam_star": [float(np.min(ratio[family == lad])),
                                                   float(np.median(ratio[family == lad])),
                                                   float(np.max(ratio[family == lad]))],
                            "warm_over_lam_star_median": float(np.median((warm / inst.lam_star)[family == lad]))}
                      for lad in COST_LADDERS},
        "runs": {}, "spend_drift": {}}
    variants = {"rule": {}, "constant_step": {"constant_step": config.constant_step}, "flip_sign": {"flip_sign": True}}
    for target in TARGETS:
        for name, kw in variants.items():
            runs = run_pacing_experiment(inst, config.horizons, rng, n_seeds=config.n_seeds, target=target, warm=warm,
                                         **kw)
            summary["runs"].setdefault(target, {})[name] = summarise_runs(runs, family, rng, config.n_boot)
            if name == "rule":
                rel = np.abs(runs.spend_drift) / runs.budget
                summary["spend_drift"][target] = {"max_abs": [float(x) for x in np.abs(runs.spend_drift).max(axis=1)],
                                                  "max_rel": [float(x) for x in rel.max(axis=1)]}
            log(f"pacing {target:9s} {name:13s} done ({time.time() - t0:.0f} s)")
    summary["wall_seconds"] = time.time() - t0
    return summary


def _slope_verdict(check: str, theorem: bool, fit: dict[str, Any], what: str) -> dict[str, Any]:
    """Fails when the whole 95% interval of the slope lies above `0.5 + SLOPE_TOL` (margin: the
    limit minus the interval's low end)."""
    limit = 0.5 + SLOPE_TOL
    if fit["slope"] is None:
        return {"check": check, "theorem": theorem, "holds": True, "margin": SLOPE_TOL,
                "detail": f"{what}: mean positive at only {fit['n_points']} horizons (nothing grows)"}
    margin = limit - fit["low"]
    return {"check": check, "theorem": theorem, "holds": bool(margin >= 0), "margin": float(margin),
            "detail": f"{what}: slope {fit['slope']:.3f} [95% {fit['low']:.3f}, {fit['high']:.3f}], limit {limit:g}"}


def check(runs: dict[str, dict[str, Any]], target: str, *, theorem: bool = True,
          label: str = "") -> list[dict[str, Any]]:
    """The verdicts of one experiment (`summarise_runs` output) of `target`: holds when margin >= 0.

    Slopes on the `tiers` ladder with warm starts; for `target="fixed"` also the explicit bounds
    on every ladder and start.
    """
    name = f"Pacing{label}, target={target}"
    g = runs["tiers/warm"]
    out = [_slope_verdict(f"{name}: regret grows like sqrt(T)", theorem, g["regret_slope"],
                          "log mean regret vs log T, tiers ladder, warm start"),
           _slope_verdict(f"{name}: budget violation grows like sqrt(T)", theorem, g["violation_slope"],
                          "log mean max(0, spend - B) vs log T, tiers ladder, warm start"),
           _slope_verdict(f"{name}: Lagrangian regret grows like sqrt(T)", theorem, g["lagrangian_slope"],
                          "log mean (regret + lambda* (spend - B)) vs log T, tiers ladder, warm start")]
    if target == "fixed":
        reg = min(v["regret_bound_margin"] for v in runs.values())
        worst = min(runs, key=lambda k: runs[k]["regret_bound_margin"])
        out.append({"check": f"{name}: expected regret within D(lam_min, lam_1)/eta + E sum lam_t phi(eta g_t)/eta "
                             "at every T",
                    "theorem": theorem, "holds": bool(reg >= 0), "margin": float(reg),
                    "detail": f"min over T of (bound - mean regret + 3 se) / sqrt(T) = {reg:.3g} ({worst}); "
                              "every ladder and start"})
        margins = [v["overspend_bound_margin"] for v in runs.values() if v["overspend_bound_margin"] is not None]
        over = min(margins) if margins else 0.0
        top = sum(v["n_reached_top"] for v in runs.values())
        out.append({"check": f"{name}: spend - B <= rho log(span / lambda_1) / eta on every stream",
                    "theorem": theorem, "holds": bool(over >= 0), "margin": float(over),
                    "detail": f"min (bound - overspend) / sqrt(T) = {over:.3g}; {top} stream-horizons whose lambda "
                              "reached the top of its range are exempt"})
    return out


def verdicts(p: dict[str, Any]) -> list[dict[str, Any]]:
    """The real rule's verdicts: `target="fixed"` is the theorem (it gates the exit status); the
    default `"remaining"` is reported."""
    return [v for t in TARGETS if t in p["runs"] for v in check(p["runs"][t]["rule"], t, theorem=t == "fixed")]


def planted_verdicts(p: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """`"target/bug" -> verdicts` of the planted step-rule bugs (each should have a failing one)."""
    return {f"{t}/{bug}": check(p["runs"][t][bug], t, label=f" [{PLANTED[bug]}]")
            for t in TARGETS if t in p["runs"] for bug in PLANTED if bug in p["runs"][t]}


def _f(x, nd=3):
    return "n/a" if x is None else f"{x:.{nd}f}"


def _fit(fit):
    return "n/a" if fit["slope"] is None else f"{fit['slope']:.2f} [{fit['low']:.2f}, {fit['high']:.2f}]"


def summary_lines(p: dict[str, Any]) -> list[str]:
    """The study's section of `summary.md`."""
    st = p["settings"]
    hs = st["horizons"]
    lines = ["## Online budget pacing (`theory/pacing.py`)", "",
             f"T in {list(hs)}; {st['n_instances']} instances per cost ladder x {len(st['starts'])} starts x "
             f"{st['n_seeds']} streams; {st['n_clusters']} clusters, {st['n_models']} models; step "
             f"`eta g_t / sqrt(T)` on log lambda with eta = 1; slope limit 0.5 + {st['slope_tol']:g}; intervals: 95% "
             "bootstrap over streams. `span / lambda*` (min / median / max): "
             + "; ".join(f"{lad} {v['span_over_lam_star'][0]:.0f} / {v['span_over_lam_star'][1]:.0f} / "
                         f"{v['span_over_lam_star'][2]:.0f}" for lad, v in p["instances"].items()) + ".", "",
             f"Per sqrt(T) at T = {hs[0]} / {hs[-1]}. Regret: against the best fixed lambda (the optimal rule's "
             "expected quality on the same requests); hindsight: against the best fixed lambda of each stream's "
             "own cluster counts. Bound margins (target fixed): worst (bound - measured) / sqrt(T).", "",
             "| target | ladder / start | regret slope | violation slope | Lagrangian regret slope | regret | "
             "hindsight regret | violation | (spend - B) / B at largest T | regret-bound margin | spend-bound margin |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for t, variants in p["runs"].items():
        for key, g in variants["rule"].items():
            fixed = t == "fixed"
            lines.append(
                f"| {t} | {key} | {_fit(g['regret_slope'])} | {_fit(g['violation_slope'])} | "
                f"{_fit(g['lagrangian_slope'])} | {g['regret_per_sqrt_t'][0]:.3f} / {g['regret_per_sqrt_t'][-1]:.3f} | "
                f"{g['regret_hindsight_per_sqrt_t'][0]:.3f} / {g['regret_hindsight_per_sqrt_t'][-1]:.3f} | "
                f"{g['violation_per_sqrt_t'][0]:.3f} / {g['violation_per_sqrt_t'][-1]:.3f} | "
                f"{g['spend_over_budget_minus_1'][-1]:+.2e} | "
                + (f"{_f(g['regret_bound_margin'])} | {_f(g['overspend_bound_margin'])} |" if fixed else "- | - |"))
    lines += ["", "Planted step-rule bugs (the checks must fail on each):", "",
              "| target | bug | regret slope | violation slope | Lagrangian regret slope | failing checks |",
              "|---|---|---|---|---|---|"]
    for key, vs in planted_verdicts(p).items():
        t, bug = key.split("/")
        g = p["runs"][t][bug]["tiers/warm"]
        failed = [v["check"].split(": ", 1)[1] for v in vs if not v["holds"]]
        lines.append(f"| {t} | {PLANTED[bug]} | {_fit(g['regret_slope'])} | {_fit(g['violation_slope'])} | "
                     f"{_fit(g['lagrangian_slope'])} | "
                     f"{'; '.join(failed) if failed else 'NONE (the checks missed it)'} |")
    drift = "; ".join(f"{t}: {d['max_abs'][-1]:.3g} ({d['max_rel'][-1]:.1e} of B)" for t, d in p["spend_drift"].items())
    lines += ["", f"Replay kernel's running spend (compensated float32 sums) against the exact sum, largest "
              f"|difference| at T = {hs[-1]}: {drift}.", "",
              f"Pacing study: {st.get('mode', '?')} run, seed {st['seed']}, "
              f"{p.get('wall_seconds', float('nan')):.0f} s.", ""]
    return lines


def plot(p: dict[str, Any], path: str | Path) -> None:
    """Log-log regret and violation against T, with the sqrt(T) reference line."""
    import matplotlib  # noqa: PLC0415  (only the figure needs it)

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    t = np.asarray(p["settings"]["horizons"], np.float64)
    root = np.sqrt(t)
    curves = [("fixed", "rule", "tiers/warm", "target fixed (warm start)", dict(color="tab:blue", lw=2)),
              ("remaining", "rule", "tiers/warm", "target remaining (warm start)", dict(color="tab:green", lw=2)),
              ("fixed", "rule", "tiers/cold", "target fixed, cold start (regret < 0: it overspends)",
               dict(color="tab:blue", ls="--")),
              ("fixed", "rule", "spread/warm", "target fixed, spread ladder", dict(color="tab:purple", ls=":")),
              ("fixed", "constant_step", "tiers/warm", "planted: constant step", dict(color="tab:red", ls="-.")),
              ("fixed", "flip_sign", "tiers/warm", "planted: sign flipped", dict(color="tab:orange", ls="-."))]
    fig, axes = plt.subplots(1, 2, figsize=(12.5, 5))
    for ax, key, title in ((axes[0], "regret_per_sqrt_t", "regret against the best fixed lambda"),
                           (axes[1], "violation_per_sqrt_t", "budget violation max(0, spend - B)")):
        for target, variant, group, label, kw in curves:
            g = p["runs"].get(target, {}).get(variant, {}).get(group)
            if g is None:
                continue
            y = np.asarray(g[key]) * root
            ax.plot(t, np.where(y > 0, y, np.nan), marker="o", ms=3, label=label, **kw)
        ref = p["runs"]["fixed"]["rule"]["tiers/warm"]
        anchor = max(float(np.max(np.asarray(ref[key]))), 1e-3)
        ax.plot(t, anchor * root, color="black", lw=1, label="c sqrt(T)")
        if key == "regret_per_sqrt_t":
            ax.plot(t, np.asarray(ref["regret_bound_per_sqrt_t"]) * root, color="0.5", lw=1, ls="--",
                    label="explicit bound (target fixed, tiers ladder, warm)")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("T (requests in the horizon)")
        ax.set_title(f"{title}\nmean over streams; points <= 0 not drawn")
        ax.grid(alpha=0.3, which="both")
    axes[0].set_ylabel("mean over streams (log scale)")
    axes[0].legend(fontsize=8)
    fig.suptitle("Online budget pacing (multiplicative dual descent, step g / sqrt(T) on log lambda) "
                 "on i.i.d. synthetic streams")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ------------------------------------------------------------------------------ command


def merge_into(out_dir: str | Path, p: dict[str, Any]) -> dict[str, Any]:
    """Puts the study into `out_dir/summary.json` (written by `theory.plots`) and `summary.md`
    (`summary_merge.merge_study`; a summary from an older `theory.plots` gets only this study's
    verdicts and section renewed)."""
    return merge_study(out_dir, "pacing", p, verdicts=verdicts, summary_lines=summary_lines, check_prefix="Pacing",
                       name="pacing")


def main(argv=None) -> int:
    return study_main(argv,
                      description="Regret and budget violation of online pacing against T.",
                      quick_help="T up to 1e4, fewer instances and streams",
                      run=lambda quick, seed: run_study(QUICK if quick else FULL, seed), plot=plot,
                      figure="pacing_regret.png", merge_into=merge_into, summary_lines=summary_lines)


if __name__ == "__main__":
    sys.exit(main())
