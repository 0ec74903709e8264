"""Dollar budgets for the LiteLLM plugin: which budgets a request is charged to, and where they live.

A request is charged to its model group's budget (`"model_group=<group>"`) and, for each
configured metadata key the request carries (LiteLLM's proxy puts `user_api_key_team_id`,
`user_api_key_hash`, `user_api_key_alias`, `user_api_key_user_id`, `user_api_key_end_user_id`
in the request's metadata), to that value's budget (`"user_api_key_team_id=team-a"`), created
from a template on first sight. The rule is `pacing`'s (the module docstring there): the request's
`lambda` is the sum of its budgets' duals; the choice is `argmin error + lambda * cost`, among the
affordable candidates under a hard cap.

Charging happens twice. At the decision the chosen candidate's estimated cost is charged (the
dual step of `pacing.charge`), so concurrent decisions, on this replica or another, see each
other's spend and the hard cap holds under concurrency; after the call the charge is corrected to
LiteLLM's `response_cost` (`adjust`: spend and `lambda` move by the difference; a failed call is
corrected to zero). A correction is exact up to the clip of `lambda` at its bounds.

State: in the process (a `pacing.Pacer`), or in Redis when a URL is given, so that several proxy
replicas share one budget. Each budget is a Redis hash (`lam`, `spent`, `seen`, `cheapest`,
`wstart`); a Lua script applies the rule to the stored fields atomically (the hard-cap choice among
the replica's candidates in score order, the window roll, the dual step with its clip) and returns
the new state, which is the replica's view for its next `lambda`: no read-modify-write race, one
round trip per decision and one per correction. If Redis is unreachable the replica keeps routing
on its last view, charging it locally; it counts the writes it could not make, logs once per
outage, does not retry for `retry_s` (so a request never waits on Redis more than one short socket
timeout), and re-reads every budget when Redis answers again. A budget Redis does not hold (first
use, or a restart without persistence) is seeded from the writing replica's view.
"""

from __future__ import annotations

import logging
import math
import threading
import time
import uuid
import weakref
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np

from uniroute_jax._src import validation
from uniroute_jax._src.pacing import FLOOR, Budget, Pacer, PacerParams, PacerState, clip_lam, rate

try:
    from litellm.integrations.custom_logger import CustomLogger
except ImportError as err:  # pragma: no cover - exercised only without the extra
    raise ImportError('uniroute_jax.integrations.litellm needs LiteLLM: pip install "uniroute-jax[litellm]"') from err

logger = logging.getLogger("uniroute_jax.litellm")

CHARGE_SIGNAL = "uniroute_charge"
"""Key (next to the trace) of what a decision charged, read back by `budget_spend` after the call."""

SPEND_FROM = ("response_cost", "estimate")
MAX_BUDGETS = 100_000  # distinct tenant budgets per replica; past this, new key values are not budgeted
MAX_PENDING = 100_000  # decisions awaiting their correction; the oldest keep their estimate when exceeded
FIELDS = ("lam", "spent", "seen", "cheapest", "wstart")


class BudgetSpec(NamedTuple):
    """Validated budget settings of a plugin (`budget_spec`)."""

    groups: Budget | dict[str, Budget]  # one template for every routed group, or group -> Budget
    tenants: dict[str, Budget]  # fixed budgets by full name "<metadata key>=<value>"
    keys: tuple[str, ...]  # metadata keys that name tenant budgets
    key_budget: Budget | None  # template for a new value of one of `keys`
    hard_cap: bool
    taper: float
    eta: float
    redis_url: str | None
    redis_prefix: str
    redis_timeout: float
    spend_from: str

    def group_names(self) -> list[str] | None:
        """The model groups with a budget of their own (None: every routed group)."""
        return None if isinstance(self.groups, Budget) else list(self.groups)


def _as_budget(value, what: str, expected_requests, budget_window) -> Budget:
    """A number (with `expected_requests`, `budget_window`) or a `Budget`, checked; errors name `what`."""
    if isinstance(value, Budget):
        amount, horizon, window = value
        names = (f"{what}.amount", f"{what}.horizon", f"{what}.window")
    elif isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
        raise TypeError(f"{what} must be a number (spend over the horizon) or a Budget(amount, horizon, window), "
                        f"got {type(value).__name__} {value!r}")
    else:
        if expected_requests is None:
            raise ValueError(f"{what}={value!r} needs expected_requests: the requests expected over the budget "
                             f"(per budget_window when it is set)")
        amount, horizon, window = value, expected_requests, budget_window
        names = (what, "expected_requests", "budget_window")
    amount = validation.nonnegative_float(amount, names[0])
    horizon = validation.nonnegative_float(horizon, names[1])
    if amount <= 0:
        raise ValueError(f"{names[0]} must be > 0, got {amount}")
    if horizon <= 0:
        raise ValueError(f"{names[1]} must be > 0 requests, got {horizon}")
    if window is not None:
        window = validation.nonnegative_float(window, names[2])
        if window <= 0:
            raise ValueError(f"{names[2]} must be > 0 seconds (or None: no renewal), got {window}")
    return Budget(amount, horizon, window)


def budget_spec(budget, *, expected_requests=None, budget_window=None, budget_keys: Sequence[str] = (),
                key_budget=None, hard_cap: bool = False, taper: float = 1.0, eta: float = 1.0,
                redis_url: str | None = None, redis_prefix: str = "uniroute:{budgets}:", redis_timeout: float = 0.2,
                spend_from: str = "response_cost") -> BudgetSpec:
    """Checks the plugin's budget arguments once, at construction; errors name the argument."""
    if isinstance(budget_keys, str):
        budget_keys = (budget_keys,)
    keys = tuple(budget_keys or ())
    for k in keys:
        if not isinstance(k, str) or not k or "=" in k:
            raise TypeError(f"budget_keys must be metadata key names (non-empty strings without '=', such as "
                            f"'user_api_key_team_id'), got {k!r}")
    groups: Budget | dict[str, Budget]
    tenants: dict[str, Budget] = {}
    if isinstance(budget, Mapping):
        groups = {}
        for name, value in budget.items():
            if not isinstance(name, str) or not name:
                raise TypeError(f"budget names must be model groups or '<metadata key>=<value>' strings, got {name!r}")
            b = _as_budget(value, f"budget[{name!r}]", expected_requests, budget_window)
            if "=" in name:
                if name.split("=", 1)[0] not in keys:
                    raise ValueError(f"budget[{name!r}] names metadata key {name.split('=', 1)[0]!r}, which is not "
                                     f"in budget_keys {list(keys)}")
                tenants[name] = b
            else:
                groups[name] = b
        if not groups:
            raise ValueError("budget must give at least one model group a budget (a name without '=')")
    else:
        groups = _as_budget(budget, "budget", expected_requests, budget_window)
    if keys and key_budget is None and not tenants:
        raise ValueError("budget_keys needs key_budget: the budget of each new value (a number or a Budget)")
    if key_budget is not None and not keys:
        raise ValueError("key_budget needs budget_keys: the metadata keys whose values get a budget each")
    template = None if key_budget is None else _as_budget(key_budget, "key_budget", expected_requests, budget_window)
    taper = validation.nonnegative_float(taper, "taper")
    if not 0 < taper <= 1:
        raise ValueError(f"taper must be in (0, 1] (the fraction of a budget spent where lambda starts its ramp; "
                         f"1 = off), got {taper}")
    eta = validation.nonnegative_float(eta, "budget_eta")
    if redis_url is not None:
        if not isinstance(redis_url, str) or not redis_url:
            raise TypeError(f"redis_url must be a non-empty string such as 'redis://host:6379/0', got {redis_url!r}")
        _parse_redis_url(redis_url)
    if not isinstance(redis_prefix, str):
        raise TypeError(f"redis_prefix must be a string, got {type(redis_prefix).__name__}")
    redis_timeout = validation.nonnegative_float(redis_timeout, "redis_timeout")
    if redis_timeout <= 0:
        raise ValueError(f"redis_timeout must be > 0 seconds, got {redis_timeout}")
    validation.choice(spend_from, "spend_from", SPEND_FROM)
    return BudgetSpec(groups, tenants, keys, template, bool(hard_cap), taper, eta, redis_url, redis_prefix,
                      redis_timeout, spend_from)


def budget_env(env: Mapping[str, str]) -> dict[str, Any]:
    """The plugin's budget arguments from `UNIROUTE_*` variables (errors name the variable).

    `UNIROUTE_BUDGET` (spend per routed group over the horizon), `UNIROUTE_EXPECTED_REQUESTS`
    (requests over the horizon, per window), `UNIROUTE_BUDGET_WINDOW` (seconds; unset: no
    renewal), `UNIROUTE_BUDGET_KEYS` (comma-separated metadata keys) with `UNIROUTE_KEY_BUDGET`
    and `UNIROUTE_KEY_EXPECTED_REQUESTS` (default: the group's), `UNIROUTE_HARD_CAP=1`,
    `UNIROUTE_TAPER`, `UNIROUTE_REDIS_URL`, `UNIROUTE_REDIS_PREFIX`, `UNIROUTE_REDIS_TIMEOUT`,
    `UNIROUTE_SPEND_FROM`.
    """
    def number(name: str, default=None):
        raw = env.get(name, "").strip()
        if not raw:
            return default
        try:
            return float(raw)
        except ValueError:
            raise ValueError(f"{name} must be a number, got {raw!r}") from None

    expected = number("UNIROUTE_EXPECTED_REQUESTS")
    window = number("UNIROUTE_BUDGET_WINDOW")
    kw: dict[str, Any] = {"budget": number("UNIROUTE_BUDGET"), "expected_requests": expected,
                          "budget_window": window, "taper": number("UNIROUTE_TAPER", 1.0),
                          "hard_cap": env.get("UNIROUTE_HARD_CAP", "").lower() in ("1", "true", "yes"),
                          "redis_url": env.get("UNIROUTE_REDIS_URL") or None,
                          "spend_from": env.get("UNIROUTE_SPEND_FROM") or "response_cost"}
    if env.get("UNIROUTE_REDIS_PREFIX"):
        kw["redis_prefix"] = env["UNIROUTE_REDIS_PREFIX"]
    if env.get("UNIROUTE_REDIS_TIMEOUT"):
        kw["redis_timeout"] = number("UNIROUTE_REDIS_TIMEOUT")
    keys = [k.strip() for k in env.get("UNIROUTE_BUDGET_KEYS", "").split(",") if k.strip()]
    if keys:
        kw["budget_keys"] = keys
        amount = number("UNIROUTE_KEY_BUDGET")
        if amount is not None:
            kw["key_budget"] = Budget(amount, number("UNIROUTE_KEY_EXPECTED_REQUESTS", expected), window)
    return kw


def _parse_redis_url(url: str) -> dict:
    try:
        from redis.connection import parse_url  # noqa: PLC0415 (only with a Redis URL)
    except ImportError as err:
        raise ImportError('redis_url needs the redis package: pip install "uniroute-jax[litellm]"') from err
    try:
        return parse_url(url)
    except ValueError as err:
        raise ValueError(f"redis_url {url!r} does not parse: {err}") from None


def adjust(state: PacerState, params: PacerParams, member, delta) -> PacerState:
    """The state after a charged request's cost is corrected by `delta` (actual minus charged).

    Spend moves by `delta` and `log lam` by the step `delta` adds to the request's subgradient in
    `pacing.charge` (`eta * delta / (rho * sqrt(horizon))`): the step on `log lam` is linear in the
    cost, so a charge of `c` corrected by `delta` equals a charge of `c + delta` up to the clip to
    `[FLOOR * span, span]`. `delta = -c` is a call that failed: charged nothing. NumPy,
    `[n_budgets]` fields.
    """
    step = params.eta * delta / (rate(params) * np.sqrt(params.horizon))
    return state._replace(lam=np.where(member, clip_lam(state.lam * np.exp(step), params), state.lam),
                          spent=np.where(member, np.maximum(state.spent + delta, 0.0), state.spent))


# The rule of `pacing` (window roll, live horizon, `affordable`, `charge`) and `adjust`, on the
# stored fields of the budgets in KEYS, in one atomic step. Numbers are stored with 17
# significant digits, so a stored double reads back bit for bit.
#   ARGV: op ('charge' | 'adjust'), now, target ('remaining' | 'fixed'), hard_cap ('1' | '0'),
#         cheapest_cost, n, cost_1..cost_n (the candidates in the replica's score order; for
#         'adjust' one number, the correction), fallback (position of the cheapest candidate),
#         FLOOR (`pacing.FLOOR`), then per key: amount, horizon, window (0 = none), span, eta, and the caller's view of
#         lam, spent, seen, cheapest, wstart (the seed of a budget Redis does not hold).
#   Returns: {position charged (1-based), then lam, spent, seen, cheapest, wstart per key}.
LUA = """
local op, now, fixed, cap = ARGV[1], tonumber(ARGV[2]), ARGV[3] == 'fixed', ARGV[4] == '1'
local cheap_cost, n = tonumber(ARGV[5]), tonumber(ARGV[6])
local floor = tonumber(ARGV[8 + n])
local costs = {}
for j = 1, n do costs[j] = tonumber(ARGV[6 + j]) end
local fallback = tonumber(ARGV[7 + n])
local b = {}
for i, key in ipairs(KEYS) do
  local a = 8 + n + (i - 1) * 10
  local s = {amount = tonumber(ARGV[a + 1]), horizon = tonumber(ARGV[a + 2]), window = tonumber(ARGV[a + 3]),
             span = tonumber(ARGV[a + 4]), eta = tonumber(ARGV[a + 5])}
  local v = redis.call('HMGET', key, 'lam', 'spent', 'seen', 'cheapest', 'wstart')
  if not v[1] then v = {ARGV[a + 6], ARGV[a + 7], ARGV[a + 8], ARGV[a + 9], ARGV[a + 10]} end
  s.lam, s.spent, s.seen, s.cheapest, s.wstart = tonumber(v[1]), tonumber(v[2]), tonumber(v[3]), tonumber(v[4]),
                                                 tonumber(v[5])
  if s.window > 0 and now - s.wstart >= s.window then
    s.wstart = s.wstart + s.window * math.floor((now - s.wstart) / s.window)
    s.spent, s.seen, s.cheapest = 0, 0, 0
  end
  s.h = s.horizon
  if s.window > 0 and now - s.wstart >= 0.1 * s.window and s.seen > 0 then
    s.h = math.max(s.seen + 1, s.seen * s.window / (now - s.wstart))
  end
  s.rho = s.amount / s.h
  b[i] = s
end
local pick = 1
if op == 'charge' then
  if cap then
    pick = fallback
    for j = 1, n do
      local ok = true
      for _, s in ipairs(b) do
        local reserve = math.max(s.h - s.seen - 1, 0) * ((s.cheapest + cheap_cost) / (s.seen + 1))
        if costs[j] > s.amount - s.spent - reserve + 1e-6 * s.amount then ok = false break end
      end
      if ok then pick = j break end
    end
  end
  local cost = costs[pick]
  for _, s in ipairs(b) do
    local aim = s.rho
    if not fixed then aim = math.max(s.amount - s.spent, 0) / math.max(s.h - s.seen, 1) end
    local g = (cost - aim) / s.rho
    s.lam = math.min(math.max(s.lam * math.exp(s.eta * g / math.sqrt(s.h)), floor * s.span), s.span)
    s.spent, s.seen, s.cheapest = s.spent + cost, s.seen + 1, s.cheapest + cheap_cost
  end
else
  local delta = costs[1]
  for _, s in ipairs(b) do
    local step = s.eta * delta / (s.rho * math.sqrt(s.h))
    s.lam = math.min(math.max(s.lam * math.exp(step), floor * s.span), s.span)
    s.spent = math.max(s.spent + delta, 0)
  end
end
local out = {pick}
for i, s in ipairs(b) do
  local f = {}
  for k, x in ipairs({s.lam, s.spent, s.seen, s.cheapest, s.wstart}) do f[k] = string.format('%.17g', x) end
  redis.call('HSET', KEYS[i], 'lam', f[1], 'spent', f[2], 'seen', f[3], 'cheapest', f[4], 'wstart', f[5])
  for _, x in ipairs(f) do out[#out + 1] = x end
end
return out
"""


class _Pending(NamedTuple):
    names: tuple[str, ...]
    estimate: float | None  # charged at the decision; None: nothing charged yet (a fallback)
    cheapest: float | None


class BudgetBook:
    """The budgets of one plugin: a `pacing.Pacer` in the process, mirrored from Redis when shared.

    Args:
      spec: `budget_spec(...)`.
      span: `lambda` (user's units) above which every request goes to its cheapest model (> 0).
      lam0_at: `rate -> lambda`: the warm start of a new budget spending `rate` per request.
      clock: `() -> seconds` (windows).
      retry_s: seconds between tries to reach Redis after a failure.
    """

    def __init__(self, spec: BudgetSpec, *, span: float, lam0_at, clock=time.time, retry_s: float = 1.0):
        self.spec = spec
        self.span = float(span)
        self.lam0_at = lam0_at
        self.clock = clock
        self.retry_s = float(retry_s)
        self.token = uuid.uuid4().hex
        self.pacer: Pacer | None = None
        self.failed_writes = 0
        self._lam0: dict[float, float] = {}
        self._pending: OrderedDict[int, _Pending] = OrderedDict()
        self._next_id = 0
        self._lock = threading.RLock()
        self._warned: set[str] = set()
        self._down_since: float | None = None
        self._retry_at = -math.inf
        self._client = self._script = None
        if spec.redis_url is not None:
            import redis  # noqa: PLC0415 (only with a Redis URL)
            from redis.backoff import NoBackoff  # noqa: PLC0415
            from redis.retry import Retry  # noqa: PLC0415

            # Short timeouts and no client-side retries: a request never waits long on Redis.
            self._client = redis.Redis.from_url(spec.redis_url, socket_timeout=spec.redis_timeout,
                                                socket_connect_timeout=spec.redis_timeout, retry=Retry(NoBackoff(), 0),
                                                health_check_interval=0)
            self._script = self._client.register_script(LUA)
            self._redis_errors = (redis.RedisError, OSError)
        _BOOKS[self.token] = self

    # ------------------------------------------------------------------------ budgets

    def _template(self, name: str) -> Budget | None:
        key, _, value = name.partition("=")
        if key == "model_group":
            return self.spec.groups if isinstance(self.spec.groups, Budget) else self.spec.groups.get(value)
        return self.spec.tenants.get(name, self.spec.key_budget)

    def _ensure(self, name: str, budget: Budget) -> bool:
        """Adds budget `name` (warm-started at its rate) unless present; False when the book is full."""
        if self.pacer is not None and name in self.pacer.budgets:
            return True
        if self.pacer is not None and len(self.pacer.names) >= MAX_BUDGETS:
            self._warn_once("full", "uniroute: %d budgets already; new metadata values are not budgeted", MAX_BUDGETS)
            return False
        r = budget.amount / budget.horizon
        if r not in self._lam0:
            self._lam0[r] = float(self.lam0_at(r))
        if self.pacer is None:
            self.pacer = Pacer({name: budget}, span=self.span, lam0=self._lam0[r], eta=self.spec.eta,
                               taper=self.spec.taper, hard_cap=self.spec.hard_cap, clock=self.clock)
        else:
            self.pacer.add_budget(name, budget, lam0=self._lam0[r])
        return True

    def names_for(self, group: str | None, metadata: Mapping | None) -> tuple[str, ...]:
        """The budgets a request of `group` with `metadata` is charged to (created on first sight)."""
        names = []
        with self._lock:
            candidates = [f"model_group={group}"] if group is not None else []
            md = metadata if isinstance(metadata, Mapping) else {}
            for key in self.spec.keys:
                value = md.get(key)
                if isinstance(value, (str, int)) and not isinstance(value, bool) and str(value):
                    candidates.append(f"{key}={value}")
                elif value is not None:
                    self._warn_once(f"type:{key}", "uniroute: metadata %r is a %s, not a string: not budgeted",
                                    key, type(value).__name__)
            for name in candidates:
                budget = self._template(name)
                if budget is not None and self._ensure(name, budget):
                    names.append(name)
        return tuple(names)

    # ------------------------------------------------------------------------ Redis

    def _args(self, names: Sequence[str]) -> list:
        p, s, out = self.pacer, self.pacer.state, []
        for n in names:
            i = p.names.index(n)
            window = p.budgets[n].window or 0.0
            out += [repr(float(p.params.budget[i])), repr(float(p.params.horizon[i])), repr(float(window)),
                    repr(float(p.params.span[i])), repr(float(p.params.eta[i])), repr(float(s.lam[i])),
                    repr(float(s.spent[i])), repr(float(s.seen[i])), repr(float(s.cheapest[i])),
                    repr(float(p.window_start[i]))]
        return out

    def _store(self, names: Sequence[str], values: Sequence) -> None:
        """Writes Redis's fields of `names` (`FIELDS` per name, in order) into the local view."""
        p = self.pacer
        lam, spent, seen, cheap = (np.array(f, np.float64, copy=True) for f in p.state[:4])
        for j, n in enumerate(names):
            i = p.names.index(n)
            lam[i], spent[i], seen[i], cheap[i], p.window_start[i] = (float(v) for v in values[5 * j:5 * j + 5])
        p.state = p.state._replace(lam=lam, spent=spent, seen=seen, cheapest=cheap)

    def _redis(self, op: str, names: Sequence[str], costs: Sequence[float], cheapest: float, fallback: int):
        """Runs the script; returns the 0-based position charged, or None when Redis is not reachable."""
        if self._client is None:
            return None
        now = self.clock()
        if self._down_since is not None and time.monotonic() < self._retry_at:
            self.failed_writes += 1
            return None
        keys = [self.spec.redis_prefix + n for n in names]
        args = [op, repr(float(now)), self.pacer.target, "1" if self.spec.hard_cap else "0", repr(float(cheapest)),
                len(costs), *(repr(float(c)) for c in costs), fallback + 1, repr(FLOOR),
                *self._args(names)]
        try:
            if self._down_since is not None:
                self._resync()
            out = self._script(keys=keys, args=args)
        except self._redis_errors as err:
            self.failed_writes += 1
            self._retry_at = time.monotonic() + self.retry_s
            if self._down_since is None:
                self._down_since = now
                logger.warning("uniroute: Redis at %s is unreachable (%s: %s); routing on the last budget state, "
                               "charging it here; will retry every %g s", self._url(), type(err).__name__, err,
                               self.retry_s)
            return None
        self._store(names, out[1:])
        return int(out[0]) - 1

    def _resync(self) -> None:
        """Reads every budget back from Redis after an outage (raises if Redis is still down)."""
        names = [n for n in self.pacer.names]
        pipe = self._client.pipeline(transaction=False)
        for n in names:
            pipe.hmget(self.spec.redis_prefix + n, *FIELDS)
        rows = pipe.execute()
        held = [(n, r) for n, r in zip(names, rows) if r[0] is not None]
        for n, r in held:
            self._store([n], r)
        logger.warning("uniroute: Redis at %s is reachable again after %.1f s; %d budget writes could not be made "
                       "(counted, not replayed); %d budgets re-read", self._url(), self.clock() - self._down_since,
                       self.failed_writes, len(held))
        self._down_since = None

    def _url(self) -> str:
        kw = _parse_redis_url(self.spec.redis_url)
        return f"{kw.get('host', 'localhost')}:{kw.get('port', 6379)}" if "path" not in kw else kw["path"]

    # ------------------------------------------------------------------------ requests

    def decide(self, errors: np.ndarray, costs: np.ndarray, names: tuple[str, ...]) -> dict[str, Any]:
        """Chooses among candidates `[n]` for a request charged to `names` and charges the estimate.

        Returns `{"index", "lam", "capped", "spent", "budget_left", "charge"}`: the trace fields
        and the record `settle` needs (`charge`, to be put next to the trace).
        """
        e = np.asarray(errors, np.float64)
        c = np.asarray(costs, np.float64)
        with self._lock:
            p = self.pacer
            lam = p.price(names)
            order = np.lexsort((np.arange(e.size), c, e + lam * c))
            cheapest = float(c.min())
            fallback = int(np.lexsort((np.arange(e.size), c))[0])
            pos = self._redis("charge", names, c[order], cheapest, int(np.flatnonzero(order == fallback)[0]))
            if pos is None:  # in the process: the pacer's own choice and charge
                index, lam, capped = p.choose(e, c, names)
                p.charge(float(c[index]), cheapest, names)
            else:
                index, capped = int(order[pos]), pos != 0
            cid = self._next_id
            self._next_id += 1
            self._pending[cid] = _Pending(names, float(c[index]), cheapest)
            if len(self._pending) > MAX_PENDING:
                self._pending.popitem(last=False)
            return {"index": index, "lam": lam, "capped": bool(capped), **self.status(names),
                    "charge": {"book": self.token, "id": cid}}

    def fallback_charge(self, names: tuple[str, ...]) -> dict[str, Any]:
        """Record for a request routed without a decision (a fallback): charged its bill after the call."""
        with self._lock:
            cid = self._next_id
            self._next_id += 1
            self._pending[cid] = _Pending(names, None, None)
            return {"book": self.token, "id": cid}

    def settle(self, cid: int, response_cost, *, failed: bool = False, deployment: str | None = None) -> None:
        """Corrects decision `cid`'s charge to the call's bill (`response_cost`; nothing if `failed`)."""
        with self._lock:
            rec = self._pending.pop(cid, None)
            if rec is None or not rec.names:
                return  # settled already (a callback registered twice), or not budgeted
            actual = 0.0 if failed else self._bill(rec, response_cost, deployment)
            if rec.estimate is None:  # nothing charged at the decision: a full charge now
                if actual is None or failed:
                    return
                if self._redis("charge", rec.names, [actual], actual, 0) is None:
                    self.pacer.charge(actual, actual, rec.names)
                return
            delta = actual - rec.estimate
            if delta == 0.0:
                return
            if self._redis("adjust", rec.names, [delta], 0.0, 0) is None:
                now = self.clock()
                p = self.pacer
                p._roll(now)
                p.state = adjust(p.state, p._live_params(now), p.member(rec.names), delta)

    def _bill(self, rec: _Pending, response_cost, deployment) -> float | None:
        if self.spec.spend_from == "estimate":
            return rec.estimate
        try:
            cost = float(response_cost)
        except (TypeError, ValueError):
            cost = math.nan
        if not math.isfinite(cost) or cost < 0:
            return rec.estimate
        if cost == 0.0 and rec.estimate:  # LiteLLM reports 0 for a model it has no price for
            self._warn_once(f"zero:{deployment}", "uniroute: LiteLLM reports cost 0 for deployment %s (no price "
                            "known?); charging UniRoute's estimate instead", deployment)
            return rec.estimate
        return cost

    def status(self, names: Sequence[str]) -> dict[str, dict[str, float]]:
        """`{"spent": {name: ...}, "budget_left": {name: ...}}` as this replica last saw them."""
        p = self.pacer
        idx = [p.names.index(n) for n in names]
        spent = {n: round(float(p.state.spent[i]), 12) for n, i in zip(names, idx)}
        left = {n: round(float(p.params.budget[i] - p.state.spent[i]), 12) for n, i in zip(names, idx)}
        return {"spent": spent, "budget_left": left}

    def _warn_once(self, key: str, msg: str, *args) -> None:
        if key not in self._warned:
            self._warned.add(key)
            logger.warning(msg, *args)


_BOOKS: weakref.WeakValueDictionary[str, BudgetBook] = weakref.WeakValueDictionary()


def _charge_record(kwargs: Mapping) -> Mapping | None:
    params = kwargs.get("litellm_params") if isinstance(kwargs, Mapping) else None
    for source in (params, kwargs):
        if not isinstance(source, Mapping):
            continue
        for key in ("metadata", "litellm_metadata"):
            md = source.get(key)
            signals = md.get("routing_plugin_signals") if isinstance(md, Mapping) else None
            if isinstance(signals, Mapping) and isinstance(signals.get(CHARGE_SIGNAL), Mapping):
                return signals[CHARGE_SIGNAL]
    return None


class BudgetSpend(CustomLogger):
    """LiteLLM callback that corrects each budgeted request's charge to its bill after the call."""

    def _settle(self, kwargs, *, failed: bool) -> None:
        rec = _charge_record(kwargs)
        book = None if rec is None else _BOOKS.get(rec.get("book"))
        if book is None:
            return
        try:
            params = kwargs.get("litellm_params") or {}
            book.settle(rec["id"], kwargs.get("response_cost"), failed=failed,
                        deployment=(params.get("model") if isinstance(params, Mapping) else None) or kwargs.get("model"))
        except Exception as err:  # noqa: BLE001 - a budget correction must never break the response path
            logger.warning("uniroute: could not settle a budget charge: %s: %s", type(err).__name__, err)

    async def async_log_success_event(self, kwargs, response_obj, start_time, end_time):
        self._settle(kwargs, failed=False)

    async def async_log_failure_event(self, kwargs, response_obj, start_time, end_time):
        self._settle(kwargs, failed=True)


budget_spend = BudgetSpend()
"""The callback instance: registered by a plugin with a budget; the proxy config may also name it."""
