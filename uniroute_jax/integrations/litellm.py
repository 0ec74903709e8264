"""UniRoute inside LiteLLM: a model group becomes a dynamic pool, each request goes to its argmin.

LiteLLM (https://docs.litellm.ai) already does providers, streaming, retries, fallbacks and spend
tracking. UniRoute plugs into its documented routing-plugin interface (`Router(plugins=[...])`,
proxy `router_settings.plugins`, LiteLLM >= 1.94): a plugin gets each request's messages and
the group's candidate deployments, and narrows the candidates. `UniRoutePlugin` narrows them to
the one UniRoute chooses, so the group's own strategy, retries, cooldowns and fallbacks still run
around that choice. It is the hook LiteLLM offers for exactly this (a routing decision from the
request's content); `CustomRoutingStrategyBase` would replace the Router's whole deployment
selection (health and cooldown filters included), and `async_filter_deployments` is a
logging-callback hook with no documented place in routing order.

Per request (`UniRoutePlugin.run`):
  1. embed the last user message (optionally the system prompt before it) and find its cluster;
  2. score the group's deployments that have a row in the pool:
     `Psi(h)[cluster] + lambda * cost(request, h)`, cost per model (`pool.costs`) or per request
     from token prices (`costs.request_costs`), and pick the argmin (`explain.decide`);
  3. narrow the candidates to it and publish the decision trace as the routing signal
     `"uniroute"` (LiteLLM copies it to `metadata["routing_plugin_signals"]`); `trace_headers`
     turns it into `x-uniroute-*` response headers on the proxy; one log line per request.
Any failure (embedding, routing, a missing or broken file) falls back to `default_model`, or
leaves the candidates to the group's own strategy; the reason is logged and traced, and the
request is never dropped. Router and pool files are re-read when they change on disk (replace
them atomically, e.g. with `Pool.save`, `uniroute add-model` or `uniroute observe`): adding an LLM is a new pool row plus a
deployment, no restart.

Shadow mode (`shadow=True`, `UNIROUTE_SHADOW=1`) decides every request the same way but leaves
the candidates to the group's own strategy; after each call `shadow_record` logs UniRoute's
choice beside the deployment that answered (and appends it to `shadow_log`, a JSONL file), and
`uniroute shadow-report LOG` says what enforcing it would change: agreement, cost and quality.

Python:

    plugin = UniRoutePlugin("router.npz", "pool.npz", lam=0.5, model_groups=["uniroute"])
    router = litellm.Router(model_list=[...], plugins=[plugin])
    await router.acompletion(model="uniroute", messages=[...], metadata=(md := {}))
    md["routing_plugin_signals"]["uniroute"]   # the decision trace

Proxy (config.yaml; the plugin reads its settings from `UNIROUTE_*` environment variables, see
`UniRoutePlugin.from_env`):

    router_settings:
      plugins: ["uniroute_jax.integrations.litellm.proxy_plugin"]
    litellm_settings:
      callbacks: ["uniroute_jax.integrations.litellm.trace_headers"]
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

try:
    import litellm  # noqa: F401 (checked here so the error names the extra)
    from litellm.integrations.custom_logger import CustomLogger
    from litellm.types.router import RoutingContext
except ImportError as err:  # pragma: no cover - exercised only without the extra
    raise ImportError('uniroute_jax.integrations.litellm needs LiteLLM: pip install "uniroute-jax[litellm]"') from err

from uniroute_jax._src import costs as costs_lib
from uniroute_jax._src import compile_cache, feedback, validation
from uniroute_jax._src.curves import calibrate
from uniroute_jax._src.data import read_lines
from uniroute_jax._src.embedding import TextEmbedder, embed_texts
from uniroute_jax._src.explain import Decision, decide
from uniroute_jax._src.router import Pool, RoutingTable, UniRouter
from uniroute_jax._src.pacing import lambda_span, warm_start
from uniroute_jax.integrations import _budget
from uniroute_jax.integrations._budget import Budget, budget_spend  # noqa: F401 (public here)

logger = logging.getLogger("uniroute_jax.litellm")

SIGNAL = "uniroute"
"""Key of the decision trace in `context.signals` and `metadata["routing_plugin_signals"]`."""

SHADOW_SIGNAL = "uniroute_shadow"
"""Key of a shadow-mode request's log settings in `context.signals` (read by `shadow_record`)."""


# ------------------------------------------------------------------------------- the snapshot


class Calibrated(NamedTuple):
    """A target mean cost met on a traffic sample: use `lam_high_cost` with probability `p_high`."""

    target_cost: float
    lam_high_cost: float
    lam_low_cost: float
    p_high: float
    achieved_cost: float  # mean cost per request of this component's decisions on the sample
    feasible: bool  # False when even the cheapest decisions cost more than the target
    n_sample: int


class _Snapshot(NamedTuple):
    """Everything one decision reads; replaced whole on reload, so a request sees one version."""

    version: int
    router: UniRouter
    pool: Pool
    clusters: RoutingTable  # identity table: maps embeddings to clusters on the host
    beta: tuple[np.ndarray, np.ndarray] | None  # Thompson posteriors [n_models, n_clusters]
    stamp: tuple


def _stamp(path: Path) -> tuple[int, int, int]:
    st = os.stat(path)
    return st.st_ino, st.st_mtime_ns, st.st_size


def _message_text(message: Mapping) -> str:
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # OpenAI content parts: keep the text ones
        return "\n".join(p["text"] for p in content if isinstance(p, Mapping) and isinstance(p.get("text"), str))
    return ""


def prompt_text(messages: Sequence[Mapping], *, use_system_prompt: bool = False) -> str | None:
    """The text UniRoute embeds: the last user message, after the system prompt(s) if asked."""
    user = next((m for m in reversed(messages) if m.get("role") == "user"), None)
    if user is None:
        return None
    text = _message_text(user)
    if use_system_prompt:
        system = "\n".join(_message_text(m) for m in messages if m.get("role") in ("system", "developer"))
        text = f"{system}\n{text}" if system else text
    return text if text.strip() else None


# --------------------------------------------------------------------------------- the plugin


class UniRoutePlugin:
    """Routes each request of a LiteLLM model group to `argmin Psi + lambda * cost` (a RoutingPlugin).

    Args:
      router: a `UniRouter` or the path of a router file (re-read when it changes).
      pool: a `Pool` or the path of a pool file (re-read when it changes). Pool rows are matched
        to deployments by `litellm_params.model`: through `deployments`, else the exact string,
        else the string without its provider prefix (`"openai/gpt-4o-mini"` -> `"gpt-4o-mini"`).
      lam: trade-off >= 0 (0 = most accurate). Give `lam` or `target_cost`.
      target_cost: target mean cost per request; calibrated once per pool version and candidate
        set on `calibration_prompts` with the exact calibration (`calibrate`).
      calibration_prompts: sample of traffic texts for `target_cost`.
      model_groups: the LiteLLM model groups to route; None routes every group with at least one
        deployment in the pool and leaves the others alone.
      deployments: optional pool name -> `litellm_params.model`.
      default_model: where a request goes when routing fails (a pool name or a
        `litellm_params.model` of the group); None leaves it to the group's own strategy.
      embedder: callable `list[str] -> [n, dim]`; default all-MiniLM-L6-v2 (`TextEmbedder`).
      use_system_prompt: embed the system prompt with the last user message.
      prices: per-request costs from token prices: a `costs.Prices` over pool names, or
        `"litellm"` for `litellm.model_cost` at each deployment's model. None uses `pool.costs`.
      expected_output_tokens: with `prices="litellm"`: one number or name -> number.
      count_tokens: `str -> int` input length; default `costs.estimate_tokens`.
      thompson: score with a draw from each estimate's Beta posterior instead of its mean (the
        pool's estimator's posterior where it records one, as `OnlineLearner` draws).
      seed: seed of the Thompson draws and of the calibrated mix.
      check_every: seconds between checks of the files for changes (0 = every request).
      embed_in_thread: run the embedder in a worker thread, off the event loop (right for MiniLM,
        milliseconds a prompt). The hop there and back costs about 0.1-0.3 ms, more on a busy
        machine: pass False for an embedder that returns at once (precomputed vectors, a lookup).
      warm_up: load the embedder and compile its forward pass for every prompt-length bucket in a
        background thread right away, so no request waits for a compile. Compiled shapes go to
        JAX's persistent compilation cache (`compile_cache`: `~/.cache/uniroute_jax/jax_cache`,
        `UNIROUTE_COMPILATION_CACHE` to move it, `0` to turn it off), so a restart loads them.
      budget: instead of `lam`, a spend budget whose `lambda` is paced online (`_budget`,
        `pacing`): a number (with `expected_requests` and optional `budget_window` seconds) or a
        `Budget(amount, horizon, window)` for every routed group, or group -> number / `Budget`
        (names `"<metadata key>=<value>"` give one tenant its own). `calibration_prompts`, when
        given, set the warm start (exact calibration) and the span of `lambda`; else the pool's
        per-cluster estimates do.
      budget_keys: metadata keys (e.g. `"user_api_key_team_id"`) whose values each get a budget
        from `key_budget` (a number or a `Budget`) on first sight; a request is charged to all of
        its budgets.
      hard_cap: never spend past a budget (choose among the candidates it can still pay for).
      taper: fraction of a budget spent from which `lambda` ramps to the cheapest model; 1 = off.
      redis_url: share the budgets' state with other replicas through Redis (`redis_prefix` names
        the keys; `redis_timeout` bounds each command, seconds); None keeps it in the process.
      spend_from: `"response_cost"` (LiteLLM's bill after the call; the estimate when absent) or
        `"estimate"` (the pool's costs: any unit).
      shadow: decide every request but do not enforce it: the group's own strategy picks the
        deployment, and after the call one record with UniRoute's choice and the LLM that
        answered is logged (`shadow_record`; read by `uniroute shadow-report`). Not with a budget.
      shadow_log: with `shadow`, also append each record as a line of this JSONL file.
    """

    def __init__(self, router: UniRouter | str | os.PathLike, pool: Pool | str | os.PathLike, *,
                 lam: float | None = None, target_cost: float | None = None,
                 calibration_prompts: Sequence[str] | None = None, model_groups: Sequence[str] | None = None,
                 deployments: Mapping[str, str] | None = None, default_model: str | None = None,
                 embedder: Callable[[Sequence[str]], Any] | None = None, use_system_prompt: bool = False,
                 prices: costs_lib.Prices | str | None = None, expected_output_tokens=None,
                 count_tokens: Callable[[str], int] | None = None, thompson: bool = False, seed: int = 0,
                 check_every: float = 1.0, embed_in_thread: bool = True, warm_up: bool = False,
                 budget=None, expected_requests: float | None = None, budget_window: float | None = None,
                 budget_keys: Sequence[str] = (), key_budget=None, hard_cap: bool = False, taper: float = 1.0,
                 redis_url: str | None = None, redis_prefix: str = "uniroute:{budgets}:", redis_timeout: float = 0.2,
                 spend_from: str = "response_cost", shadow: bool = False,
                 shadow_log: str | os.PathLike | None = None):
        if sum(x is not None for x in (lam, target_cost, budget)) != 1:
            raise ValueError("give exactly one of lam=, target_cost= or budget=")
        # Budget arguments are checked here, once: a bad one is an error now, never per request.
        self.budget = None if budget is None else _budget.budget_spec(
            budget, expected_requests=expected_requests, budget_window=budget_window, budget_keys=budget_keys,
            key_budget=key_budget, hard_cap=hard_cap, taper=taper, redis_url=redis_url, redis_prefix=redis_prefix,
            redis_timeout=redis_timeout, spend_from=spend_from)
        self._book: _budget.BudgetBook | None = None
        self._book_lock = threading.Lock()
        if self.budget is not None and budget_spend not in litellm.callbacks:
            litellm.callbacks.append(budget_spend)  # corrects each charge to the call's bill
        self.shadow = bool(shadow)
        if self.shadow and self.budget is not None:
            raise ValueError("shadow=True does not go with budget=: a budget paces the spend of decisions that "
                             "are enforced")
        if shadow_log is not None and not self.shadow:
            raise ValueError("shadow_log is the log of shadow mode: pass shadow=True with it")
        self.shadow_log = None if shadow_log is None else os.fspath(shadow_log)
        if self.shadow and shadow_record not in litellm.callbacks:
            litellm.callbacks.append(shadow_record)  # logs what answered beside UniRoute's choice
        self.lam = None if lam is None else validation.nonnegative_float(lam, "lam")
        self.target_cost = None if target_cost is None else validation.nonnegative_float(target_cost, "target_cost")
        if self.target_cost is not None:
            if calibration_prompts is None or isinstance(calibration_prompts, str) or not list(calibration_prompts):
                raise ValueError("target_cost needs calibration_prompts: a non-empty list of sample texts")
            self.calibration_prompts = list(calibration_prompts)
        elif self.budget is not None and calibration_prompts is not None:  # the warm start's sample
            if isinstance(calibration_prompts, str) or not list(calibration_prompts):
                raise ValueError("calibration_prompts must be a non-empty list of sample texts")
            self.calibration_prompts = list(calibration_prompts)
        else:
            self.calibration_prompts = None
        if isinstance(model_groups, str):
            model_groups = [model_groups]
        if self.budget is not None and self.budget.group_names() is not None:
            missing = sorted(set(model_groups or ()) - set(self.budget.group_names()))
            if missing:
                raise ValueError(f"budget gives no budget to model groups {missing}; give every group in "
                                 f"model_groups one, or one budget for all")
            model_groups = self.budget.group_names() if model_groups is None else model_groups
        self.model_groups = None if model_groups is None else frozenset(model_groups)
        self.deployments = dict(deployments or {})
        self.default_model = default_model
        self.use_system_prompt = bool(use_system_prompt)
        if isinstance(prices, str) and prices != "litellm":
            raise ValueError(f"prices must be a costs.Prices, 'litellm' or None, got {prices!r}")
        if prices is not None and not isinstance(prices, (str, costs_lib.Prices)):
            raise TypeError(f"prices must be a costs.Prices, 'litellm' or None, got {type(prices).__name__}")
        if prices == "litellm" and expected_output_tokens is None:
            raise ValueError("prices='litellm' needs expected_output_tokens (one number or name -> number)")
        self.prices = prices
        self.expected_output_tokens = expected_output_tokens
        self.count_tokens = count_tokens or costs_lib.estimate_tokens
        self.thompson = bool(thompson)
        self.check_every = validation.nonnegative_float(check_every, "check_every")
        self.embed_in_thread = bool(embed_in_thread)
        self._embedder = embedder
        self._embedder_lock = threading.Lock()
        self._rng = random.Random(seed)
        self._np_rng = np.random.default_rng(seed)
        self._router_src, self._pool_src = router, pool
        self._reload_lock = threading.Lock()
        self._snapshot: _Snapshot | None = None
        self._load_error: str | None = None
        self._last_check = -np.inf
        self._calibrations: dict[tuple, Calibrated] = {}
        self._candidate_cache: dict[tuple, tuple[list[int], list[str]]] = {}
        self._calibration_embeddings: np.ndarray | None = None
        self._version = 0
        self._reload(force=True)
        # Compiled shapes outlive the process: a restarted proxy loads them instead of compiling.
        compile_cache.enable()
        self._warm_thread: threading.Thread | None = None
        if warm_up and self._snapshot is not None:
            dim = self._snapshot.router.dim
            self._warm_thread = threading.Thread(target=self._warm_up, args=(dim,), name="uniroute-warm-up",
                                                 daemon=False)
            self._warm_thread.start()

    def _warm_up(self, dim: int) -> None:
        try:
            self._embed(["warm up"], dim)
            if isinstance(self._embedder, TextEmbedder):
                # Every length bucket at batch 1 (a request's shape), shortest first; stops between
                # buckets once the main thread has ended, so a shutdown does not wait for the rest.
                start = time.perf_counter()
                n = self._embedder.warm_up((1,), stop=lambda: not threading.main_thread().is_alive())
                logger.info("uniroute: embedder warmed up: %d prompt-length buckets in %.1f s", n,
                            time.perf_counter() - start)
        except Exception as err:  # noqa: BLE001 - requests will fall back and log it again
            logger.warning("uniroute: embedder warm-up failed: %s: %s", type(err).__name__, err)

    # ------------------------------------------------------------------ settings from the env

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> UniRoutePlugin:
        """A plugin configured by environment variables (what the proxy's dotted path loads).

        `UNIROUTE_ROUTER`, `UNIROUTE_POOL` (paths, required); `UNIROUTE_LAM` or
        `UNIROUTE_TARGET_COST` with `UNIROUTE_CALIBRATION_PROMPTS` (a .txt file, one prompt a line);
        `UNIROUTE_MODEL_GROUPS` (comma-separated); `UNIROUTE_DEFAULT_MODEL`;
        `UNIROUTE_USE_SYSTEM_PROMPT=1`; `UNIROUTE_THOMPSON=1`; `UNIROUTE_CHECK_EVERY` (seconds);
        `UNIROUTE_WARM_UP=0` to load the embedder on the first request instead of at start;
        `UNIROUTE_SHADOW=1` (shadow mode) with `UNIROUTE_SHADOW_LOG` (a JSONL file to append to).
        Instead of a lambda, a budget (`_budget.budget_env`): `UNIROUTE_BUDGET` (spend per group),
        `UNIROUTE_EXPECTED_REQUESTS`, `UNIROUTE_BUDGET_WINDOW` (seconds), `UNIROUTE_BUDGET_KEYS`
        (comma-separated metadata keys) with `UNIROUTE_KEY_BUDGET` (and
        `UNIROUTE_KEY_EXPECTED_REQUESTS`), `UNIROUTE_HARD_CAP=1`, `UNIROUTE_TAPER`,
        `UNIROUTE_REDIS_URL`, `UNIROUTE_REDIS_PREFIX`, `UNIROUTE_SPEND_FROM`.
        """
        env = os.environ if environ is None else environ
        missing = [k for k in ("UNIROUTE_ROUTER", "UNIROUTE_POOL") if not env.get(k)]
        if missing:
            raise ValueError(f"set {' and '.join(missing)} to the router / pool files for the UniRoute plugin")
        kw: dict[str, Any] = {}
        if env.get("UNIROUTE_TARGET_COST"):
            kw["target_cost"] = float(env["UNIROUTE_TARGET_COST"])
            path = env.get("UNIROUTE_CALIBRATION_PROMPTS")
            if not path:
                raise ValueError("UNIROUTE_TARGET_COST needs UNIROUTE_CALIBRATION_PROMPTS (a .txt file, one prompt a line)")
            kw["calibration_prompts"] = [l for l in read_lines(path) if l.strip()]  # "\n" ends a prompt, not U+2028
        elif env.get("UNIROUTE_BUDGET"):
            kw.update(_budget.budget_env(env))
            if env.get("UNIROUTE_CALIBRATION_PROMPTS"):  # the warm start's sample
                kw["calibration_prompts"] = [l for l in read_lines(env["UNIROUTE_CALIBRATION_PROMPTS"]) if l.strip()]
        else:
            kw["lam"] = float(env.get("UNIROUTE_LAM", "0"))
        if env.get("UNIROUTE_MODEL_GROUPS"):
            kw["model_groups"] = [g.strip() for g in env["UNIROUTE_MODEL_GROUPS"].split(",") if g.strip()]
        flag = lambda name: env.get(name, "").lower() in ("1", "true", "yes")
        if flag("UNIROUTE_SHADOW"):
            kw.update(shadow=True, shadow_log=env.get("UNIROUTE_SHADOW_LOG") or None)
        return cls(env["UNIROUTE_ROUTER"], env["UNIROUTE_POOL"], default_model=env.get("UNIROUTE_DEFAULT_MODEL") or None,
                   use_system_prompt=flag("UNIROUTE_USE_SYSTEM_PROMPT"), thompson=flag("UNIROUTE_THOMPSON"),
                   check_every=float(env.get("UNIROUTE_CHECK_EVERY", "1")), warm_up=env.get("UNIROUTE_WARM_UP", "1") != "0", **kw)

    # --------------------------------------------------------------------------- loading

    @property
    def snapshot(self) -> _Snapshot | None:
        """The router and pool in use (None until a load succeeds)."""
        return self._snapshot

    def _reload(self, force: bool = False) -> None:
        """Re-reads the files if they changed; on failure keeps the previous version and logs why."""
        paths = [Path(s) for s in (self._router_src, self._pool_src) if isinstance(s, (str, os.PathLike))]
        if not force and not paths:
            return
        if not self._reload_lock.acquire(blocking=force):
            return  # another request is already reloading; this one uses the current version
        try:
            stamp = tuple(_stamp(p) for p in paths)
            if not force and self._snapshot is not None and stamp == self._snapshot.stamp:
                return
            router = self._router_src if isinstance(self._router_src, UniRouter) else UniRouter.load(self._router_src)
            pool = self._pool_src if isinstance(self._pool_src, Pool) else Pool.load(self._pool_src)
            router.check_pool(pool)  # rows, clusters and fingerprint: the check `uniroute route` applies
            if not router.feature_map.hard:
                raise ValueError("the LiteLLM component serves k-means routers (per-cluster estimates and "
                                 "posteriors); this router has a learned soft map")
            k = router.n_clusters
            # An identity table: its host path is the nearest-centroid search, one cluster per row.
            clusters = RoutingTable(router.feature_map, np.zeros((k, k), np.float32), np.zeros(k, np.float32), 0.0,
                                    tuple(map(str, range(k))), np.arange(k, dtype=np.int32), jax_from=1 << 30)
            beta = feedback.sampling_posterior(pool, router.alpha) if self.thompson else None
            self._version += 1
            self._calibrations.clear()
            self._snapshot = _Snapshot(self._version, router, pool, clusters, beta, stamp)
            self._load_error = None
            logger.info("uniroute: loaded %s clusters, %s models (%s)%s", k, len(pool), ", ".join(pool.names),
                        f" from {', '.join(map(str, paths))}" if paths else "")
        except Exception as err:  # noqa: BLE001 - a bad file must never take serving down
            self._load_error = f"{type(err).__name__}: {err}"
            if self._snapshot is None:
                logger.error("uniroute: cannot load router/pool (%s); requests fall back until fixed", self._load_error)
            else:
                logger.error("uniroute: keeping version %s; reloading failed: %s", self._snapshot.version,
                             self._load_error)
        finally:
            self._reload_lock.release()

    def _maybe_reload(self) -> None:
        now = time.monotonic()
        if now - self._last_check >= self.check_every:
            self._last_check = now
            self._reload()

    # ------------------------------------------------------------------------- embedding

    def _embed(self, texts: Sequence[str], dim: int) -> np.ndarray:
        if self._embedder is None:
            with self._embedder_lock:
                if self._embedder is None:
                    self._embedder = TextEmbedder(cache=False, progress=False, download=False)
        return embed_texts(list(texts), self._embedder, dim=dim)

    # ------------------------------------------------------------------------ candidates

    def _pool_row(self, pool: Pool, deployment_model: str) -> int | None:
        by_deployment = {v: k for k, v in self.deployments.items()}
        for name in (by_deployment.get(deployment_model), deployment_model, deployment_model.split("/", 1)[-1]):
            if name is not None and name in pool.names:
                return pool.names.index(name)
        return None

    def candidates(self, snap: _Snapshot, group: str | None, candidate_models: Sequence[str]):
        """`(pool rows, deployment models)` of the candidates that have a row; warns once per set about the rest."""
        key = (snap.version, group, tuple(candidate_models))
        hit = self._candidate_cache.get(key)
        if hit is not None:
            return hit
        rows, kept, left_out = [], [], []
        for m in dict.fromkeys(candidate_models):
            r = self._pool_row(snap.pool, m)
            if r is None or r in rows:
                left_out.append(m)
            else:
                rows.append(r)
                kept.append(m)
        if left_out and rows:  # once per candidate set and pool version: the result is cached below
            logger.warning("uniroute: model group %r: deployments %s have no row in the pool (or share one); "
                           "left out of UniRoute's choice", group, left_out)
        if len(self._candidate_cache) > 4096:  # candidate sets are few; this only bounds a pathological mix
            self._candidate_cache.clear()
        self._candidate_cache[key] = (rows, kept)
        return rows, kept

    # ------------------------------------------------------------------------------ costs

    def _costs(self, snap: _Snapshot, rows: Sequence[int], deployment_models: Sequence[str],
               texts: Sequence[str]) -> np.ndarray:
        """Cost of each text on each candidate, `[n_texts, n_candidates]`."""
        if self.prices is None:
            return np.broadcast_to(snap.pool.costs[list(rows)], (len(texts), len(rows)))
        names = [snap.pool.names[r] for r in rows]
        if self.prices == "litellm":
            import litellm as _litellm  # noqa: PLC0415

            eot = self.expected_output_tokens
            if isinstance(eot, Mapping):
                eot = {d: eot.get(n, eot.get(d)) for n, d in zip(names, deployment_models)}
                eot = {d: v for d, v in eot.items() if v is not None}
            p = costs_lib.prices_from_cost_map(deployment_models, _litellm.model_cost, eot)
        else:
            p = self.prices.select(names)
        return costs_lib.request_costs(p, [self.count_tokens(t) for t in texts])

    # ------------------------------------------------------------------------- calibration

    def _calibration(self, snap: _Snapshot, rows: list[int], deployment_models: list[str]) -> Calibrated:
        key = (snap.version, tuple(rows))
        cal = self._calibrations.get(key)
        if cal is not None:
            return cal
        if self._calibration_embeddings is None or self._calibration_embeddings.shape[1] != snap.router.dim:
            self._calibration_embeddings = self._embed(self.calibration_prompts, snap.router.dim)
        x = self._calibration_embeddings
        sub = snap.pool.select([snap.pool.names[r] for r in rows])
        per_request = self._costs(snap, rows, deployment_models, self.calibration_prompts).astype(np.float64)
        # Exact for the decisions the component makes: per model, or per request with prices.
        curve = snap.router.exact_curve(x, sub, request_costs=None if self.prices is None else per_request)
        c = calibrate(curve, cost=self.target_cost)
        lam_hi, lam_lo, p_hi = float(c.lam_high_cost[0]), float(c.lam_low_cost[0]), float(c.p_high[0])
        clusters = snap.clusters.rows(x)
        achieved = 0.0
        for lam, weight in ((lam_hi, p_hi), (lam_lo, 1.0 - p_hi)):
            if weight > 0:
                chosen = [decide(k, list(range(len(rows))), sub.psi[:, k], per_request[j], lam).model
                          for j, k in enumerate(clusters)]
                achieved += weight * float(per_request[np.arange(len(chosen)), chosen].mean())
        cal = Calibrated(self.target_cost, lam_hi, lam_lo, p_hi, achieved, bool(c.feasible[0]), int(x.shape[0]))
        self._calibrations[key] = cal
        log = logger.info if cal.feasible else logger.warning
        log("uniroute: calibrated to mean cost %g on %d prompts: lambda %g (p=%.3f) / %g, achieved %g%s",
            cal.target_cost, cal.n_sample, lam_hi, p_hi, lam_lo, achieved,
            "" if cal.feasible else " (target below the cheapest decisions: routing at the cheapest)")
        return cal

    # ------------------------------------------------------------------------- deciding

    def decision(self, text: str, embedding: np.ndarray, snap: _Snapshot, rows: list[int],
               deployment_models: list[str], *, group: str | None = None,
               metadata: Mapping | None = None) -> tuple[Decision, dict[str, Any]]:
        """The decision for one request (host side) and extra trace fields."""
        cluster = int(snap.clusters.rows(embedding)[0])
        extra: dict[str, Any] = {}
        if self.target_cost is not None:
            cal = self._calibration(snap, rows, deployment_models)
            lam = cal.lam_high_cost if self._rng.random() < cal.p_high else cal.lam_low_cost
            extra["target_cost"] = cal.target_cost
        else:
            lam = self.lam  # None with a budget: the pacer sets it below
        if snap.beta is not None:
            a, b = snap.beta
            error = feedback.sample_psi(a[rows, cluster], b[rows, cluster], self._np_rng)
            extra["thompson"] = True
        else:
            error = snap.pool.psi[rows, cluster]
        cost = self._costs(snap, rows, deployment_models, [text])[0]
        names = [snap.pool.names[r] for r in rows]
        if self.budget is None:
            return decide(cluster, names, error, cost, lam), extra
        book = self._budget_book(snap, rows, deployment_models)
        charged = book.names_for(group, metadata)
        if not charged:
            raise ValueError(f"no budget applies to this request of group {group!r}")
        # The budgets' lambda and choice (hard cap among the affordable); the estimate is charged now.
        paced = book.decide(error, cost, charged)
        extra.update(capped=paced["capped"], spent=paced["spent"], budget_left=paced["budget_left"],
                     charge=paced["charge"])
        if self.budget.redis_url is not None:
            extra["failed_writes"] = book.failed_writes
        return decide(cluster, names, error, cost, paced["lam"])._replace(model=names[paced["index"]]), extra

    def _budget_book(self, snap: _Snapshot, rows: list[int], deployment_models: list[str]) -> _budget.BudgetBook:
        """The budgets, built on the first budgeted request: span and warm start measured on a sample."""
        if self._book is not None:
            return self._book
        with self._book_lock:
            if self._book is None:
                if self.calibration_prompts is not None:  # the traffic sample: the exact calibration's
                    if self._calibration_embeddings is None or self._calibration_embeddings.shape[1] != snap.router.dim:
                        self._calibration_embeddings = self._embed(self.calibration_prompts, snap.router.dim)
                    clusters = snap.clusters.rows(self._calibration_embeddings)
                    errors = snap.pool.psi[np.ix_(rows, clusters)].T
                    costs = self._costs(snap, rows, deployment_models, self.calibration_prompts)
                else:  # no sample: each cluster once, at the costs of an empty prompt
                    errors = snap.pool.psi[rows].T
                    costs = self._costs(snap, rows, deployment_models, [""])[0]
                errors, costs = np.asarray(errors, np.float64), np.asarray(costs, np.float64)
                span = lambda_span(errors, costs)
                self._book = _budget.BudgetBook(self.budget, span=span, lam0_at=lambda r: warm_start(errors, costs, r))
                logger.info("uniroute: budgets paced with lambda in [0, %g], warm start from %s", span,
                            f"{len(self.calibration_prompts)} sample prompts" if self.calibration_prompts
                            else "the pool's per-cluster estimates")
        return self._book

    async def run(self, context: RoutingContext) -> RoutingContext:
        """The routing-plugin entry point: narrows `context.candidate_models` to UniRoute's choice."""
        group = context.metadata.get("model_group") if isinstance(context.metadata, Mapping) else None
        if self.model_groups is not None and group not in self.model_groups:
            return context
        start = time.perf_counter()
        try:
            self._maybe_reload()
            snap = self._snapshot
            if snap is None:
                raise RuntimeError(f"router/pool not loaded: {self._load_error}")
            rows, kept = self.candidates(snap, group, context.candidate_models)
            if not rows:
                if self.model_groups is None:
                    return context  # not a UniRoute group
                raise ValueError(f"no deployment of group {group!r} has a row in the pool "
                                 f"(deployments {list(context.candidate_models)}, pool {list(snap.pool.names)})")
            text = prompt_text(context.structured_messages or context.raw_messages,
                               use_system_prompt=self.use_system_prompt)
            if text is None:
                raise ValueError("the request has no user message text to route on")
            embed_start = time.perf_counter()
            if self.embed_in_thread:
                embedding = await asyncio.to_thread(self._embed, [text], snap.router.dim)
            else:
                embedding = self._embed([text], snap.router.dim)
            embed_s = time.perf_counter() - embed_start
            decision, extra = self.decision(text, embedding, snap, rows, kept, group=group, metadata=context.metadata)
        except Exception as err:  # noqa: BLE001 - never drop a request over routing
            return self._fall_back(context, group, f"{type(err).__name__}: {err}")
        deployment = kept[decision.names.index(decision.model)]
        if self.shadow:
            # Not enforced: the group's strategy picks among all candidates; `shadow_record` adds,
            # after the call, the deployment that answered (`"deployment"`, `"served"`).
            extra.update(shadow=True, uniroute_deployment=deployment, candidate_deployments=list(kept))
            context.signals[SHADOW_SIGNAL] = {"log": self.shadow_log}
            deployment = None
        else:
            context.candidate_models = [deployment]
        if "charge" in extra:  # what the budgets were charged, for `budget_spend` after the call
            context.signals[_budget.CHARGE_SIGNAL] = extra.pop("charge")
        trace = {**decision.as_dict(), "deployment": deployment, "group": group, "pool_version": snap.version,
                 "fallback": None, "decision_ms": round(1e3 * (time.perf_counter() - start - embed_s), 3),
                 "embed_ms": round(1e3 * embed_s, 3), **extra}
        context.signals[SIGNAL] = trace
        if logger.isEnabledFor(logging.INFO):
            logger.info("uniroute: %s", json.dumps(trace, separators=(",", ":")))
        return context

    def _fall_back(self, context: RoutingContext, group: str | None, reason: str) -> RoutingContext:
        target = None
        if self.default_model is not None:
            snap = self._snapshot
            for m in context.candidate_models:
                if m == self.default_model or (snap is not None and self._pool_row(snap.pool, m) is not None
                                               and snap.pool.names[self._pool_row(snap.pool, m)] == self.default_model):
                    target = m
                    break
        if target is not None and not self.shadow:
            context.candidate_models = [target]
        context.signals[SIGNAL] = {"fallback": reason, "model": self.default_model if target else None,
                                   "deployment": None if self.shadow else target, "group": group}
        if self.shadow:  # logged too: the report counts the requests it could not decide
            context.signals[SIGNAL]["shadow"] = True
            context.signals[SHADOW_SIGNAL] = {"log": self.shadow_log}
        if self._book is not None:  # no decision, but the call's bill still counts against the budgets
            try:
                names = self._book.names_for(group, context.metadata)
                if names:
                    context.signals[_budget.CHARGE_SIGNAL] = self._book.fallback_charge(names)
            except Exception as err:  # noqa: BLE001 - never drop a request over a budget
                logger.warning("uniroute: budget not charged for a fallback: %s: %s", type(err).__name__, err)
        logger.warning("uniroute: routing failed for group %r (%s); sending to %s", group, reason,
                       target or "the group's own strategy")
        return context


# ------------------------------------------------------------------------- response headers


def trace_from_request(data: Mapping) -> dict | None:
    """The UniRoute trace of a request's data (proxy request dict or Router kwargs), if any."""
    for key in ("metadata", "litellm_metadata"):
        md = data.get(key)
        if isinstance(md, Mapping):
            signals = md.get("routing_plugin_signals")
            if isinstance(signals, Mapping) and isinstance(signals.get(SIGNAL), Mapping):
                return dict(signals[SIGNAL])
    return None


def trace_headers_of(trace: Mapping) -> dict[str, str]:
    """`x-uniroute-*` headers of a trace: model, cluster, lambda, fallback and the whole trace as JSON."""
    headers = {"x-uniroute-trace": json.dumps(trace, separators=(",", ":"))}
    if trace.get("model") is not None:
        headers["x-uniroute-model"] = str(trace["model"])
    if trace.get("cluster") is not None:
        headers["x-uniroute-cluster"] = str(trace["cluster"])
    if trace.get("lam") is not None:
        headers["x-uniroute-lambda"] = f"{trace['lam']:g}"
    if trace.get("fallback"):
        headers["x-uniroute-fallback"] = str(trace["fallback"])[:200]
    if trace.get("shadow"):  # x-uniroute-model is UniRoute's choice, not what answered
        headers["x-uniroute-shadow"] = "1"
    return headers


class TraceHeaders(CustomLogger):
    """Proxy callback that copies each request's UniRoute trace into `x-uniroute-*` response headers."""

    async def async_post_call_response_headers_hook(self, data, user_api_key_dict, response,
                                                    request_headers=None, litellm_call_info=None):
        trace = trace_from_request(data)
        return None if trace is None else trace_headers_of(trace)


trace_headers = TraceHeaders()
"""The instance the proxy config names: `litellm_settings.callbacks: [uniroute_jax.integrations.litellm.trace_headers]`."""


# ------------------------------------------------------------------------------- shadow mode


def _served_deployment(kwargs: Mapping, response_obj) -> str | None:
    """The `litellm_params.model` of the deployment that answered a call."""
    params = kwargs.get("litellm_params") if isinstance(kwargs, Mapping) else None
    md = params.get("metadata") if isinstance(params, Mapping) else None
    if isinstance(md, Mapping) and isinstance(md.get("deployment"), str):
        return md["deployment"]
    hidden = getattr(response_obj, "_hidden_params", None)
    if isinstance(hidden, Mapping) and isinstance(hidden.get("litellm_model_name"), str):
        return hidden["litellm_model_name"]
    return kwargs.get("model") if isinstance(kwargs, Mapping) else None


class ShadowRecord(CustomLogger):
    """After each call of a shadow-mode request, adds what answered to its trace and logs the record.

    The record is the trace (UniRoute's `"model"`, `"cluster"`, `"candidates"`) plus `"served"`
    (the pool name of the deployment that answered; None when it has no pool row), its
    `"deployment"`, the call's `"request_id"` (`litellm_call_id`, to join outcomes on),
    `"response_cost"` and `"failed"`. It goes to the `uniroute_jax.litellm` logger as
    `uniroute shadow: {json}` and, with `shadow_log`, as one line of that JSONL file.
    """

    def _record(self, kwargs, response_obj, *, failed: bool) -> None:
        try:
            params = kwargs.get("litellm_params") or {}
            trace = trace_from_request(params) or trace_from_request(kwargs)
            signals = None
            for source in (params, kwargs):
                md = source.get("metadata") if isinstance(source, Mapping) else None
                sig = md.get("routing_plugin_signals") if isinstance(md, Mapping) else None
                if isinstance(sig, Mapping) and isinstance(sig.get(SHADOW_SIGNAL), Mapping):
                    signals = sig
                    break
            if trace is None or signals is None or not trace.get("shadow"):
                return
            served = _served_deployment(kwargs, response_obj)
            kept = trace.get("candidate_deployments") or []
            names = [c["name"] for c in trace.get("candidates") or []]
            # Matched like the plugin's candidates: the exact string, else without the provider prefix.
            strip = lambda m: m.split("/", 1)[-1] if isinstance(m, str) else m
            match = [i for i, d in enumerate(kept) if d == served] or [i for i, d in enumerate(kept)
                                                                     if strip(d) == strip(served)]
            record = {**trace, "deployment": served, "served": None if failed or not match else names[match[0]],
                      "request_id": kwargs.get("litellm_call_id"), "response_cost": kwargs.get("response_cost"),
                      "failed": failed}
            signals[SIGNAL].update(record)  # the caller's metadata shows it too (same dict as the trace)
            line = json.dumps(record, separators=(",", ":"), default=str)
            logger.info("uniroute shadow: %s", line)
            path = signals[SHADOW_SIGNAL].get("log")
            if path:
                # One write of one line to a file opened for appending: concurrent workers and
                # replicas append whole lines (O_APPEND), so no lock is needed and no line is torn.
                fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
                try:
                    os.write(fd, (line + "\n").encode())
                finally:
                    os.close(fd)
        except Exception as err:  # noqa: BLE001 - a shadow record must never break the response path
            logger.warning("uniroute: shadow record not written: %s: %s", type(err).__name__, err)

    async def async_log_success_event(self, kwargs, response_obj, start_time, end_time):
        self._record(kwargs, response_obj, failed=False)

    async def async_log_failure_event(self, kwargs, response_obj, start_time, end_time):
        self._record(kwargs, response_obj, failed=True)


shadow_record = ShadowRecord()
"""The callback instance: registered by a plugin with `shadow=True`; the proxy config may also name it."""


def __getattr__(name: str):
    # `proxy_plugin` is built on first access (the proxy's dotted-path lookup), from UNIROUTE_* variables.
    if name == "proxy_plugin":
        plugin = UniRoutePlugin.from_env()
        globals()["proxy_plugin"] = plugin
        return plugin
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# ------------------------------------------------------------------------------ command line


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m uniroute_jax.integrations.litellm demo-files DIR`: writes a demo router, pool and sample."""
    import argparse  # noqa: PLC0415

    from uniroute_jax.integrations._litellm_demo import MODELS, write_demo_files  # noqa: PLC0415

    parser = argparse.ArgumentParser(prog="python -m uniroute_jax.integrations.litellm")
    sub = parser.add_subparsers(dest="command", required=True)
    d = sub.add_parser("demo-files", help="write a small demo router.npz, pool.npz and prompts.txt into DIR")
    d.add_argument("out", help="folder to write into")
    d.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    paths = write_demo_files(args.out, seed=args.seed)
    for kind, path in paths.items():
        print(f"{kind}: {path}")
    print(f"pool models (deployments openai/<name> match them): {', '.join(MODELS)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
