"""Budget pacing: hold a spend budget over a horizon by moving `lambda` online (dual descent).

UniRoute routes to `argmin_h error(x, h) + lambda * cost(x, h)`; `lambda` is the dual variable of
the constraint "mean cost per request <= rho" (the paper's Lagrangian). A fixed `lambda`, even one
calibrated on a sample (`curves.calibrate`), overspends when the prompt mix shifts toward prompts
where the expensive LLM wins and leaves budget unused when it shifts the other way. The pacer
updates `lambda` after each request (or batch) from the spend so far: projected subgradient
descent on the dual, the online allocation rule of Balseiro, Lu & Mirrokni (2020).

The rule, per budget `b` (a request may be charged to several: a tenant's, a team's, a global one):

    rho_b     = budget_b / horizon_b                       nominal spend per request
    price     = sum_b member_b * lam_eff_b / rho_b          the request's lambda, in the user's units
    choice    = argmin_h error_h + price * cost_h           (hard cap: among the affordable ones)
    g_b       = member_b * (cost_chosen - target_b) / rho_b
    lam_b    <- clip(lam_b * exp(eta_b * g_b / sqrt(horizon_b)), FLOOR * span_b, span_b)

`lam_b` is kept normalised (error units per request's worth of budget), so one step size serves
dollars, cents or tokens alike: `lambda = lam / rho`. `target_b` is `rho_b` (`target="fixed"`, the
textbook rule with `O(sqrt(T))` regret against the best fixed `lambda` in hindsight and
`O(sqrt(T))` budget violation, checked in `theory/pacing.py`) or the rate that spends exactly what
is left over the requests left, `(budget_b - spent_b) / (horizon_b - seen_b)` (`"remaining"`, the
default: the same step, re-aimed after every request, so an early overspend is paid back over the
rest of the horizon rather than through the accumulated `lam`; final spend lands closer to the
budget).

Why a multiplicative step (mirror descent with the entropy regulariser: a subgradient step on
`log lam`): the scale of `lambda` is not known in advance. On our data the calibrated `lambda`
lies 450 to 25,000 times below `span` (the `lam` above which every request goes to its cheapest
LLM), so an additive step sized by the range `[0, span]` (the textbook `D / (G sqrt(T))`) makes
`lambda` jitter across decisions that should not change, and one sized by the warm start cannot
climb when the mix turns expensive. A step on `log lam` moves `lambda` by the same share at any
scale, with the same `O(sqrt(T))` regret against the best fixed `lambda` (up to
`sqrt(log(1 / FLOOR))`, the range of `log lam`) and the same `O(sqrt(T))` budget violation for
the fixed target, checked in `theory/pacing.py`. `g` is a request's cost in requests' worth of
budget, so one `eta` serves any currency; `FLOOR` keeps `lam` positive so that it can grow again.

Options:
- `hard_cap`: never spend past the budget. A candidate is affordable when the spend after it plus
  a reserve for the rest of the horizon (the cheapest candidate's cost, averaged over requests
  seen, for each request left) stays within every budget it is charged to; the choice is the best
  score among the affordable ones, and the cheapest candidate when none is. With per-model costs
  the total stays within the budget whenever the budget covers the cheapest LLM for every request
  of the horizon (up to float rounding, 1e-6 of the budget). With per-request costs the reserve is
  an average, so requests at the end whose cheapest candidate costs more than it can go over (by
  at most 1e-4 of the budget in `benchmarks/budget_pacing.py` on routerbench_partial's prices).
- `taper`: from this fraction of the budget spent, `lam_eff` ramps quadratically from `lam` to
  `span` as the spend reaches the budget: a soft landing onto the cheapest LLM instead of a
  cliff. `1.0` turns it off.
- batched updates (`update_every`): decide a batch at one `lambda`, then take one step with the
  batch's summed subgradient.

`step` is written once over an array namespace (`numpy` or `jax.numpy`): the serving `Pacer`
runs it in NumPy per request, `replay` runs it inside a `lax.scan` over a request stream, vmapped
over pools, budgets, step sizes and stream orders.
"""

from __future__ import annotations

import functools
import json
import math
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from uniroute_jax._src import persistence, validation
from uniroute_jax._src.curves import calibrate, exact_curve
from uniroute_jax._src.decisions import choose
from uniroute_jax._src.routing import make_units

TARGETS = ("remaining", "fixed")
FLOOR = 1e-6
"""The smallest `lam`, as a share of `span`: a multiplicative step needs `lam > 0` to move."""
COLD_START = math.sqrt(FLOOR)
"""Start without a warm start, as a share of `span`: the middle of `lam`'s range on the log scale,
so that it reaches either end in the same number of steps. `warm_start` is much better."""


class PacerParams(NamedTuple):
    """Settings of each budget, `[n_budgets]` arrays (or scalars for one budget)."""

    budget: Any  # [n_budgets] spend allowed over the horizon, > 0
    horizon: Any  # [n_budgets] requests expected over the horizon, > 0
    span: Any  # [n_budgets] upper bound of the normalised lam (every request cheapest above it), > 0
    eta: Any  # [n_budgets] step-size multiplier, >= 0
    taper: Any  # [n_budgets] fraction of the budget spent where the taper starts, in (0, 1]; 1 = off


class PacerState(NamedTuple):
    """What the pacer has learnt so far, `[n_budgets]` arrays."""

    lam: Any  # [n_budgets] normalised dual variable (lambda = lam / rho), in [FLOOR * span, span]
    spent: Any  # [n_budgets] spend charged so far
    seen: Any  # [n_budgets] requests charged so far
    cheapest: Any  # [n_budgets] summed cost of each charged request's cheapest candidate
    pending: Any  # [n_budgets] subgradient gathered since the last update (batched updates)
    steps: Any  # [] requests decided so far


def init_state(lam0: ArrayLike, xp=np) -> PacerState:
    """A fresh state starting at normalised `lam0` ([n_budgets]; `lambda * rho`)."""
    lam0 = xp.asarray(lam0)
    zero = xp.zeros_like(lam0)
    return PacerState(lam0, zero, zero, zero, zero, xp.zeros((), lam0.dtype))


# ----------------------------------------------------------------------- the rule, once


def clip_lam(lam, params: PacerParams, xp=np):
    """`lam` kept in `[FLOOR * span, span]`."""
    return xp.clip(lam, FLOOR * params.span, params.span)


def rate(params: PacerParams):
    """Nominal spend per request of each budget, `budget / horizon`."""
    return params.budget / params.horizon


def effective_lam(state: PacerState, params: PacerParams, xp=np):
    """[n_budgets] normalised lam after the taper."""
    reach = (state.spent / params.budget - params.taper) / xp.maximum(1.0 - params.taper, 1e-12)
    u = xp.where(params.taper < 1.0, xp.clip(reach, 0.0, 1.0), 0.0)
    return state.lam + u * u * (params.span - state.lam)


def price(state: PacerState, params: PacerParams, member, xp=np):
    """The request's `lambda` in the user's cost units: `sum_b member_b * lam_eff_b / rho_b`."""
    return xp.sum(xp.where(member, effective_lam(state, params, xp) / rate(params), 0.0))


def affordable(state: PacerState, params: PacerParams, member, costs, cheapest_cost, xp=np):
    """[n_models] bool: spend after each candidate plus the reserve stays within every member budget."""
    cheap = (state.cheapest + cheapest_cost) / (state.seen + 1.0)  # [n_budgets] cheapest cost per request
    reserve = xp.maximum(params.horizon - state.seen - 1.0, 0.0) * cheap
    room = params.budget - state.spent - reserve  # [n_budgets]
    slack = 1e-6 * params.budget  # float rounding of summed costs must not refuse an exact fit
    fits = costs[:, None] <= room[None, :] + slack[None, :]  # [n_models, n_budgets]
    return xp.all(fits | ~member[None, :], axis=1)


def charge(state: PacerState, params: PacerParams, member, cost, cheapest_cost, *, target: str = "remaining",
           update_every: int = 1, xp=np) -> PacerState:
    """The state after a request charged `cost` to the budgets in `member` (the dual step)."""
    rho = rate(params)
    if target == "fixed":
        aim = rho
    else:  # what is left, spread over the requests left; at least one request's worth of horizon
        aim = xp.maximum(params.budget - state.spent, 0.0) / xp.maximum(params.horizon - state.seen, 1.0)
    g = xp.where(member, (cost - aim) / rho, 0.0)
    pending = state.pending + g
    steps = state.steps + 1
    do_update = (steps % update_every) == 0
    lam = clip_lam(state.lam * xp.exp(params.eta * pending / xp.sqrt(params.horizon)), params, xp)
    return PacerState(
        lam=xp.where(do_update, lam, state.lam),
        spent=state.spent + xp.where(member, cost, 0.0),
        seen=state.seen + xp.where(member, 1.0, 0.0),
        cheapest=state.cheapest + xp.where(member, cheapest_cost, 0.0),
        pending=xp.where(do_update, 0.0, pending),
        steps=steps,
    )


# ------------------------------------------------------------------------- replay kernel


class ReplayResult(NamedTuple):
    """One replayed stream per setting (leading `[n_settings]` axis from `replay`)."""

    choice: jax.Array  # [n_requests] int32 model index chosen for each request of the stream
    cost: jax.Array  # [n_requests] cost of each request's choice
    quality: jax.Array  # [n_requests] realised quality of each request's choice
    lam: jax.Array  # [n_requests] lambda (the user's units) each request was decided at
    state: PacerState  # final state, [1] per budget field
    capped: jax.Array  # [n_requests] bool: the hard cap changed the choice


def _kahan_add(total, value, lost):
    """`(total + value, rounding lost)` of a compensated sum: `lost` carries what `total` dropped."""
    y = value - lost
    t = total + y
    return t, (t - total) - y


def _replay_one(errors, costs, quality, order, model_mask, budget, eta, lam0, span, taper, *,
                horizon: int, hard_cap: bool, target: str, update_every: int) -> ReplayResult:
    dtype = errors.dtype
    params = PacerParams(*(jnp.reshape(jnp.asarray(v, dtype), (1,)) for v in
                           (budget, float(horizon), span, eta, taper)))
    member = jnp.ones((1,), bool)
    per_request = costs.ndim == 2

    def body(carry, i):
        state, lost = carry
        e, q = errors[i], quality[i]
        c = costs[i] if per_request else costs
        lam = price(state, params, member, jnp)
        scores = (e + lam * c)[None, :]
        free = choose(scores, c, model_mask)[0]
        cheapest_cost = jnp.min(jnp.where(model_mask, c, jnp.inf))
        if hard_cap:
            ok = affordable(state, params, member, c, cheapest_cost, jnp) & model_mask
            capped_choice = choose(scores, c, ok)[0]
            fallback = choose(c[None, :], c, model_mask)[0]  # nothing affordable: the cheapest
            pick = jnp.where(jnp.any(ok), capped_choice, fallback)
        else:
            pick = free
        spend = c[pick]
        new = charge(state, params, member, spend, cheapest_cost, target=target, update_every=update_every, xp=jnp)
        # The running sums in compensated (Kahan) form: plain float32 sums drift by ~1e-3 of the
        # budget over 1e5 requests, enough to break the hard cap.
        (spent, cheapest), lost = _kahan_add(jnp.stack([state.spent, state.cheapest]),
                                             jnp.stack([spend, cheapest_cost])[:, None] * member, lost)
        return (new._replace(spent=spent, cheapest=cheapest), lost), (pick, spend, q[pick], lam, pick != free)

    state0 = init_state(clip_lam(jnp.reshape(jnp.asarray(lam0, dtype), (1,)), params, jnp), jnp)
    carry0 = (state0, jnp.zeros((2, 1), dtype))
    (state, _), (pick, spend, qual, lams, capped) = jax.lax.scan(body, carry0, order)
    return ReplayResult(pick, spend, qual, lams, state, capped)


@functools.partial(jax.jit, static_argnames=("hard_cap", "target", "update_every"))
def replay_kernel(errors: jax.Array, costs: jax.Array, quality: jax.Array, orders: jax.Array,
                  model_masks: jax.Array, budgets: jax.Array, etas: jax.Array, lam0: jax.Array,
                  spans: jax.Array, tapers: jax.Array, *, hard_cap: bool = False, target: str = "remaining",
                  update_every: int = 1) -> ReplayResult:
    """Unchecked `replay`: every per-setting argument has a leading `[n_settings]` axis."""
    fn = functools.partial(_replay_one, horizon=orders.shape[1], hard_cap=hard_cap, target=target,
                           update_every=update_every)
    return jax.vmap(fn, in_axes=(None, None, None, 0, 0, 0, 0, 0, 0, 0))(
        errors, costs, quality, orders, model_masks, budgets, etas, lam0, spans, tapers)


def _per_setting(value, name: str, n: int, *, positive: bool = False, dtype=np.float32) -> np.ndarray:
    arr = validation.float_array(value, name, dtype=dtype)
    if arr.ndim == 0:
        arr = np.full(n, arr, dtype)
    if arr.shape != (n,):
        raise ValueError(f"{name} must be a scalar or have shape ({n},) (one per setting), got shape {arr.shape}")
    validation.nonnegative(arr, name)
    if positive and np.any(arr <= 0):
        raise ValueError(f"{name} must be > 0, got {arr[arr <= 0][0]}")
    return arr


def replay(
    errors: ArrayLike,
    costs: ArrayLike,
    quality: ArrayLike,
    orders: ArrayLike,
    budgets: ArrayLike,
    *,
    model_masks: ArrayLike | None = None,
    etas: ArrayLike = 1.0,
    lam0: ArrayLike | None = None,
    spans: ArrayLike = 1.0,
    tapers: ArrayLike = 1.0,
    hard_cap: bool = False,
    target: str = "remaining",
    update_every: int = 1,
) -> ReplayResult:
    """Replays request streams through the pacer, many settings in one jitted call.

    Every counterfactual outcome of a stream is known (full-information data), so each setting's
    decisions, spend and realised quality are exact. Settings vary the stream order, the pool,
    the budget, the step size, the warm start and the taper; build a grid by broadcasting.

    Args:
      errors: [n_prompts, max_models] estimated error of each model on each prompt (`Psi(h)` at
        the prompt's cluster: `router.estimates(x, pool)`).
      costs: [max_models] per-model costs or [n_prompts, max_models] per-request costs, >= 0.
      quality: [n_prompts, max_models] realised quality in [0, 1] (the replay's outcomes).
      orders: [n_settings, n_requests] int prompt indices: each setting's stream. The horizon is
        `n_requests`.
      budgets: [n_settings] (or scalar) spend allowed over the stream, > 0.
      model_masks: optional [n_settings, max_models] bool pools (default: every model).
      etas: [n_settings] (or scalar) step-size multipliers, >= 0 (0 = a fixed lambda).
      lam0: [n_settings] (or scalar) starting lambda in the user's units (`warm_start`); None:
        `COLD_START * spans`.
      spans: [n_settings] (or scalar) lambda in the user's units above which every prompt goes to
        its cheapest model (`lambda_span`), > 0.
      tapers: [n_settings] (or scalar) taper start as a fraction of the budget, in (0, 1].
      hard_cap: never spend past the budget (see the module docstring).
      target: "remaining" or "fixed" (see the module docstring).
      update_every: requests per lambda update (a batch decided at one lambda).

    Returns:
      `ReplayResult` with a leading `[n_settings]` axis.

    Raises:
      ValueError / TypeError naming the argument.
    """
    errors = validation.unit_interval(validation.float_array(errors, "errors", ndim=2), "errors")
    n_prompts, max_models = errors.shape
    quality = validation.unit_interval(validation.float_array(quality, "quality", shape=(n_prompts, max_models)),
                                       "quality")
    costs = validation.nonnegative(validation.float_array(costs, "costs"), "costs")
    if costs.shape not in ((max_models,), (n_prompts, max_models)):
        raise ValueError(f"costs must have shape ({max_models},) or ({n_prompts}, {max_models}), got {costs.shape}")
    orders = validation.int_array(orders, "orders", shape=(None, None), low=0)
    if orders.size and orders.max() >= n_prompts:
        raise ValueError(f"orders holds prompt index {orders.max()} but errors has {n_prompts} prompts")
    n, horizon = orders.shape
    if n == 0 or horizon == 0:
        raise ValueError(f"orders must hold at least one setting and one request, got shape {orders.shape}")
    masks = np.ones((n, max_models), bool) if model_masks is None else validation.bool_array(
        model_masks, "model_masks", shape=(n, max_models))
    if not masks.any(axis=1).all():
        raise ValueError(f"model_masks row {int(np.argmin(masks.any(axis=1)))} selects no model: the pool is empty")
    budgets = _per_setting(budgets, "budgets", n, positive=True)
    spans = _per_setting(spans, "spans", n, positive=True)
    tapers = _per_setting(tapers, "tapers", n, positive=True)
    if np.any(tapers > 1):
        raise ValueError(f"tapers must be in (0, 1] (1 = no taper), got {tapers.max()}")
    etas = _per_setting(etas, "etas", n)
    lam0 = COLD_START * spans if lam0 is None else _per_setting(lam0, "lam0", n)
    validation.choice(target, "target", TARGETS)
    update_every = validation.positive_int(update_every, "update_every")
    rho = budgets / horizon  # the kernel keeps lam normalised: lam * rho
    return replay_kernel(jnp.asarray(errors), jnp.asarray(costs), jnp.asarray(quality), jnp.asarray(orders),
                         jnp.asarray(masks), jnp.asarray(budgets), jnp.asarray(etas), jnp.asarray(lam0 * rho),
                         jnp.asarray(spans * rho), jnp.asarray(tapers), hard_cap=bool(hard_cap), target=target,
                         update_every=update_every)


# ------------------------------------------------------------------ warm start and scale


def lambda_span(errors: ArrayLike, costs: ArrayLike, *, model_mask: ArrayLike | None = None) -> float:
    """The smallest `lambda` at which every prompt of a sample goes to its cheapest model.

    Args:
      errors: [n_prompts, n_models] estimated errors on a sample of traffic.
      costs: [n_models] or [n_prompts, n_models] costs, >= 0.
      model_mask: optional [n_models] bool pool.

    Returns:
      The span (user's cost units), > 0: the pacer's `lambda` lives in `[FLOOR * span, span]`.
    """
    e = validation.float_array(errors, "errors", ndim=2, dtype=np.float64)
    c = validation.nonnegative(validation.float_array(costs, "costs", dtype=np.float64), "costs")
    c = np.broadcast_to(c, e.shape) if c.shape == (e.shape[1],) else c
    if c.shape != e.shape:
        raise ValueError(f"costs must have shape ({e.shape[1]},) or {e.shape}, got {c.shape}")
    mask = np.ones(e.shape[1], bool) if model_mask is None else validation.bool_array(
        model_mask, "model_mask", shape=(e.shape[1],))
    c_min = np.min(np.where(mask, c, np.inf), axis=1, keepdims=True)
    # The cheapest model's error: among the models at the minimum cost, the lowest error wins ties.
    e_cheap = np.min(np.where(mask & (c == c_min), e, np.inf), axis=1, keepdims=True)
    dearer = mask & (c > c_min)
    ratio = np.where(dearer, (e_cheap - e) / np.where(dearer, c - c_min, 1.0), 0.0)
    span = float(np.max(ratio, initial=0.0))
    if span <= 0.0:  # the cheapest model already wins everywhere: any positive scale will do
        span = 1.0 / max(float(np.mean(np.where(mask, c, 0.0).max(axis=1))), 1e-12)
    return span * (1.0 + 1e-6)


def warm_start(errors: ArrayLike, costs: ArrayLike, target_cost: float, *,
               model_mask: ArrayLike | None = None) -> float:
    """The fixed `lambda` whose decisions on a sample cost `target_cost` per request on average.

    The exact calibration (`curves.calibrate`) on the sample mixes two neighbouring decisions to
    meet the target; the pacer starts at the mix's mean `lambda`, `p * lam_high + (1 - p) * lam_low`.

    Args:
      errors: [n_prompts, n_models] estimated errors on a sample of traffic.
      costs: [n_models] or [n_prompts, n_models] costs, >= 0.
      target_cost: mean cost per request to aim for, >= 0.
      model_mask: optional [n_models] bool pool.
    """
    e = validation.float_array(errors, "errors", ndim=2)
    c = validation.nonnegative(validation.float_array(costs, "costs"), "costs")
    target_cost = validation.nonnegative_float(target_cost, "target_cost")
    per_request = np.broadcast_to(c, e.shape) if c.ndim == 1 else c
    units = make_units(None, prompt_costs=per_request)
    masks = None if model_mask is None else validation.bool_array(model_mask, "model_mask",
                                                                   shape=(e.shape[1],))[None, :]
    cal = calibrate(exact_curve(e, units, per_request, pool_masks=masks), cost=target_cost)
    p = float(cal.p_high[0])
    lam = p * float(cal.lam_high_cost[0]) + (1.0 - p) * float(cal.lam_low_cost[0])
    return lam if math.isfinite(lam) else lambda_span(e, c, model_mask=model_mask)


# ----------------------------------------------------------------------- serving pacer


class Budget(NamedTuple):
    """One budget: `amount` of spend over a horizon of `horizon` requests, or per `window` seconds."""

    amount: float  # spend allowed over the horizon (the user's cost units: dollars, tokens, ...)
    horizon: float  # requests expected over the horizon (per window when `window` is set)
    window: float | None = None  # seconds; the budget renews every window. None: one horizon of requests


def _check_budget(name: str, budget) -> Budget:
    if not isinstance(name, str) or not name:
        raise TypeError(f"budget names must be non-empty strings, got {name!r}")
    if not isinstance(budget, Budget):
        if isinstance(budget, Mapping):
            budget = Budget(**budget)
        elif isinstance(budget, Sequence) and not isinstance(budget, str):
            budget = Budget(*budget)
        else:
            raise TypeError(f"budget {name!r} must be a Budget(amount, horizon, window=None), got {budget!r}")
    amount = validation.nonnegative_float(budget.amount, f"budget {name!r} amount")
    horizon = validation.nonnegative_float(budget.horizon, f"budget {name!r} horizon")
    if amount <= 0 or horizon <= 0:
        raise ValueError(f"budget {name!r} needs amount > 0 and horizon > 0, got amount {amount}, horizon {horizon}")
    window = None if budget.window is None else validation.nonnegative_float(budget.window, f"budget {name!r} window")
    if window is not None and window <= 0:
        raise ValueError(f"budget {name!r} window must be > 0 seconds, got {window}")
    return Budget(amount, horizon, window)


class Pacer:
    """Holds one or several spend budgets while serving: the `lambda` of each request, updated online.

    A request is charged to some of the budgets (a tenant's, a team's, a global one: `keys`); its
    `lambda` is the sum of their normalised duals, and after the call its actual cost updates each
    of them (`charge`). The rule is the module's `price` / `affordable` / `charge`, in NumPy.

    Args:
      budgets: a `Budget`, or name -> `Budget` (or `(amount, horizon[, window])`).
      span: `lambda` (user's cost units) above which every request goes to its cheapest model
        (`lambda_span` on a sample), > 0.
      lam0: starting `lambda` (user's units): one number, or name -> number (`warm_start` at each
        budget's rate); a budget without one starts at `COLD_START * span`.
      eta: step-size multiplier (module docstring), >= 0.
      taper: fraction of a budget spent where the taper starts, in (0, 1]; 1 = off.
      hard_cap: never spend past a budget (see the module docstring).
      target: "remaining" (default) or "fixed".
      update_every: requests per `lambda` step.
      clock: `() -> seconds`, for windowed budgets (default `time.time`).

    Example:
      >>> pacer = Pacer({"all": Budget(100.0, 10_000)}, span=500.0, lam0=20.0)
      >>> lam = pacer.price()                    # lambda for the next request
      >>> pacer.charge(0.012, cheapest_cost=0.0001)
    """

    def __init__(self, budgets: Budget | Mapping[str, Budget], *, span: float, lam0: float | Mapping[str, float] | None = None,
                 eta: float = 1.0, taper: float = 1.0, hard_cap: bool = False, target: str = "remaining",
                 update_every: int = 1, clock=time.time):
        if isinstance(budgets, Budget):
            budgets = {"budget": budgets}
        if not isinstance(budgets, Mapping) or not budgets:
            raise ValueError(f"budgets must be a Budget or a non-empty mapping name -> Budget, got {budgets!r}")
        self.budgets = {name: _check_budget(name, b) for name, b in budgets.items()}
        self.span = validation.nonnegative_float(span, "span")
        if self.span <= 0:
            raise ValueError(f"span must be > 0, got {span}")
        self.eta = validation.nonnegative_float(eta, "eta")
        self.taper = validation.nonnegative_float(taper, "taper")
        if not 0 < self.taper <= 1:
            raise ValueError(f"taper must be in (0, 1] (1 = no taper), got {taper}")
        self.hard_cap = bool(hard_cap)
        self.target = validation.choice(target, "target", TARGETS)
        self.update_every = validation.positive_int(update_every, "update_every")
        self.clock = clock
        self.names = tuple(self.budgets)
        cold = COLD_START * self.span
        if isinstance(lam0, Mapping):
            unknown = sorted(set(lam0) - set(self.names))
            if unknown:
                raise ValueError(f"lam0 names budgets {unknown} that are not among {list(self.names)}")
            start = [validation.nonnegative_float(lam0[n], f"lam0[{n!r}]") if n in lam0 else cold
                     for n in self.names]
        else:
            start = [cold if lam0 is None else validation.nonnegative_float(lam0, "lam0")] * len(self.names)
        self.params = self._params()
        self.state = init_state(clip_lam(np.asarray(start) * rate(self.params), self.params))
        now = self.clock()
        self.window_start = np.full(len(self.names), now, np.float64)

    def _params(self) -> PacerParams:
        b = [self.budgets[n] for n in self.names]
        amount = np.array([x.amount for x in b], np.float64)
        horizon = np.array([x.horizon for x in b], np.float64)
        rho = amount / horizon
        n = len(b)
        return PacerParams(amount, horizon, self.span * rho, np.full(n, self.eta), np.full(n, self.taper))

    def add_budget(self, name: str, budget: Budget, *, lam0: float | None = None) -> None:
        """Adds a budget (a new tenant, say), starting at `lam0` (user's units)."""
        if name in self.budgets:
            raise ValueError(f"budget {name!r} already exists")
        self.budgets[name] = _check_budget(name, budget)
        self.names = tuple(self.budgets)
        self.params = self._params()
        lam0 = COLD_START * self.span if lam0 is None else validation.nonnegative_float(lam0, "lam0")
        lam = float(clip_lam(lam0 * rate(self.params)[-1],
                             self.params._replace(span=self.params.span[-1])))
        self.state = PacerState(*(np.append(f, v) for f, v in zip(self.state[:5], (lam, 0.0, 0.0, 0.0, 0.0))),
                                self.state.steps)
        self.window_start = np.append(self.window_start, self.clock())

    def member(self, keys: str | Sequence[str] | None = None) -> np.ndarray:
        """[n_budgets] bool of the budgets `keys` names (None: all)."""
        if keys is None:
            return np.ones(len(self.names), bool)
        if isinstance(keys, str):
            keys = [keys]
        out = np.zeros(len(self.names), bool)
        for k in keys:
            if not isinstance(k, str):
                raise TypeError(f"budget keys must be strings, got {k!r}")
            if k not in self.budgets:
                raise ValueError(f"no budget named {k!r}; budgets: {list(self.names)}")
            out[self.names.index(k)] = True
        return out

    def _roll(self, now: float) -> None:
        """Renews windowed budgets whose window has passed; `lam` carries over as the next warm start."""
        for i, n in enumerate(self.names):
            w = self.budgets[n].window
            if w is not None and now - self.window_start[i] >= w:
                self.window_start[i] += w * math.floor((now - self.window_start[i]) / w)
                spent, seen, cheap, pending = (np.array(f, copy=True) for f in self.state[1:5])
                spent[i] = seen[i] = cheap[i] = pending[i] = 0.0
                self.state = self.state._replace(spent=spent, seen=seen, cheapest=cheap, pending=pending)

    def _live_params(self, now: float) -> PacerParams:
        """Windowed budgets: the horizon from the arrival rate so far once a tenth of the window has passed."""
        horizon = np.array(self.params.horizon, copy=True)
        for i, n in enumerate(self.names):
            w = self.budgets[n].window
            elapsed = now - self.window_start[i]
            if w is not None and elapsed >= 0.1 * w and self.state.seen[i] > 0:
                horizon[i] = max(self.state.seen[i] + 1.0, self.state.seen[i] * w / elapsed)
        return self.params._replace(horizon=horizon)

    def price(self, keys: str | Sequence[str] | None = None) -> float:
        """`lambda` (user's cost units) for the next request charged to `keys` (None: all budgets)."""
        now = self.clock()
        self._roll(now)
        return float(price(self.state, self._live_params(now), self.member(keys)))

    def choose(self, errors: ArrayLike, costs: ArrayLike, keys: str | Sequence[str] | None = None):
        """`(index, lambda, capped)` for one request: the argmin of `errors + lambda * costs`.

        Ties go to the cheaper, then the lower index; under `hard_cap` the choice is among the
        affordable candidates (the cheapest when none is), `capped` True when that changed it.
        """
        e = validation.float_array(errors, "errors", ndim=1, dtype=np.float64)
        c = validation.nonnegative(validation.float_array(costs, "costs", shape=e.shape, dtype=np.float64), "costs")
        if e.size == 0:
            raise ValueError("errors must hold at least one candidate")
        now = self.clock()
        self._roll(now)
        params, member = self._live_params(now), self.member(keys)
        lam = float(price(self.state, params, member))
        scores = e + lam * c
        order = np.lexsort((np.arange(e.size), c, scores))
        pick = int(order[0])
        if not self.hard_cap:
            return pick, lam, False
        ok = affordable(self.state, params, member, c, float(c.min()))
        if ok.any():
            capped = int(next(i for i in order if ok[i]))
        else:
            capped = int(np.lexsort((np.arange(e.size), c))[0])
        return capped, lam, capped != pick

    def charge(self, cost: float, cheapest_cost: float | None = None, keys: str | Sequence[str] | None = None) -> None:
        """Records a request's actual cost against `keys` and takes the dual step.

        `cheapest_cost` (the cheapest candidate's cost for this request) feeds the hard cap's
        reserve; default `cost`.
        """
        cost = validation.nonnegative_float(cost, "cost")
        cheapest_cost = cost if cheapest_cost is None else validation.nonnegative_float(cheapest_cost, "cheapest_cost")
        now = self.clock()
        self._roll(now)
        self.state = charge(self.state, self._live_params(now), self.member(keys), cost, cheapest_cost,
                            target=self.target, update_every=self.update_every)

    def status(self) -> dict[str, dict[str, float]]:
        """Per budget: `lambda` (user's units), spent, budget, left and requests seen."""
        now = self.clock()
        self._roll(now)
        params = self._live_params(now)
        lam = effective_lam(self.state, params) / rate(params)
        return {n: {"lambda": float(lam[i]), "spent": float(self.state.spent[i]),
                    "budget": float(params.budget[i]), "left": float(params.budget[i] - self.state.spent[i]),
                    "requests": float(self.state.seen[i])} for i, n in enumerate(self.names)}

    # ------------------------------------------------------------------------ files

    def _options(self) -> dict[str, Any]:
        return {"span": self.span, "eta": self.eta, "taper": self.taper, "hard_cap": self.hard_cap,
                "target": self.target, "update_every": self.update_every}

    def save(self, path: str | os.PathLike) -> Path:
        """Writes budgets, options and state to a versioned `.npz` (see `persistence`)."""
        arrays = {f"state_{k}": np.asarray(v, np.float64) for k, v in self.state._asdict().items()}
        arrays["window_start"] = self.window_start
        meta = {"budgets": {n: list(b) for n, b in self.budgets.items()}, "names": list(self.names),
                "options": self._options()}
        return persistence.save_arrays(path, "pacer", arrays, meta)

    @classmethod
    def load(cls, path: str | os.PathLike, *, clock=time.time) -> Pacer:
        """Reads a pacer written by `save`, state included."""
        arrays, meta = persistence.load_arrays(path, "pacer")
        try:
            budgets = {n: Budget(*meta["budgets"][n]) for n in meta["names"]}
            pacer = cls(budgets, clock=clock, **meta["options"])
            pacer.state = PacerState(**{k: arrays[f"state_{k}"] for k in PacerState._fields})
            pacer.window_start = arrays["window_start"]
        except (KeyError, TypeError) as err:
            raise ValueError(f"{path} is missing pacer field {err}") from None
        return pacer

    def __repr__(self) -> str:
        return f"Pacer({', '.join(self.names)}; hard_cap={self.hard_cap}, target={self.target!r})"
