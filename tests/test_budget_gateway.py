"""Dollar budgets in the LiteLLM plugin, with the real parts: a `redis-server` started here on
127.0.0.1, `litellm.Router`, and three LiteLLM proxy processes sharing one budget through Redis.

Mock deployments bill a known amount: LiteLLM's mock response reports 10 prompt and 20
completion tokens, so `output_cost_per_token = bill / 20` (input free) makes `response_cost` the
bill. Bills are 0.8 of the pool's cost (the plugin's estimate), so a plugin that charged its
estimate instead of the bill would be caught.
"""

import asyncio
import json
import logging
import math
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

litellm = pytest.importorskip("litellm", reason='LiteLLM is not installed: pip install -e ".[litellm]"')
redis = pytest.importorskip("redis", reason='the redis client is not installed: pip install -e ".[litellm]"')

from uniroute_jax._src.pacing import FLOOR, Budget, Pacer  # noqa: E402
from uniroute_jax.integrations import _budget  # noqa: E402
from uniroute_jax.integrations.litellm import SIGNAL, UniRoutePlugin  # noqa: E402

from child_processes import stop_group  # noqa: E402
from litellm_helpers import COSTS, NAMES, HashEmbedder, fitted, make_texts  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")  # LiteLLM's pydantic schema notices

TESTS_DIR = Path(__file__).resolve().parent
ROOT = TESTS_DIR.parent
GROUP = "uniroute"
BILL = 0.8  # a call's bill as a fraction of the pool's cost (the plugin's estimate)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def deployments(names=NAMES, costs=COSTS):
    return [{"model_name": GROUP, "litellm_params": {
        "model": f"openai/{n}", "api_key": "sk-none", "mock_response": f"answer from {n}",
        "input_cost_per_token": 0.0, "output_cost_per_token": BILL * c / 20}} for n, c in zip(names, costs)]


# --------------------------------------------------------------------------- redis-server


class RedisServer:
    """A `redis-server` on 127.0.0.1 without persistence, started and stopped by the test."""

    def __init__(self, folder: Path):
        self.exe = shutil.which("redis-server")
        self.port = free_port()
        self.folder = folder
        self.proc = None
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def start(self):
        self.log = open(self.folder / f"redis-{time.monotonic_ns()}.log", "w")
        self.proc = subprocess.Popen([self.exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                                      "--appendonly", "no", "--dir", str(self.folder)],
                                     stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        client = redis.Redis(port=self.port, socket_timeout=1)
        start = time.monotonic()
        while True:  # ready within 200 times its first failed try's duration, or the server's exit
            try:
                client.ping()
                return self
            except redis.ConnectionError:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"redis-server exited with {self.proc.returncode}") from None
                if time.monotonic() - start > 30:
                    raise RuntimeError("redis-server did not answer") from None
                time.sleep(0.02)

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=30)
            self.log.close()
        self.proc = None

    def client(self):
        return redis.Redis(port=self.port, socket_timeout=5, decode_responses=True)


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory):
    if shutil.which("redis-server") is None:
        if os.environ.get("CI"):
            pytest.fail("redis-server is missing in CI: .ci/run installs it with apt-get (package redis-server)")
        pytest.skip("redis-server is not installed (apt-get install redis-server): the Redis budget tests need it")
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def world():
    embedder = HashEmbedder()
    router, pool = fitted(embedder)
    return embedder, router, pool


async def send(router, texts, metadata=None, concurrency=1, settle=None):
    """Sends each text; returns (served model, trace, response_cost) per text.

    With `settle` (a plugin), waits after each response until its charge is corrected, so the
    next decision sees it: the order a NumPy twin replays.
    """
    sem = asyncio.Semaphore(concurrency)

    async def one(i, text):
        async with sem:
            md = dict(metadata[i]) if metadata else {}
            resp = await router.acompletion(model=GROUP, messages=[{"role": "user", "content": text}], metadata=md)
            if settle is not None:
                for _ in range(1000):
                    if not settle._book._pending:
                        break
                    await asyncio.sleep(0)
            served = resp.choices[0].message.content.removeprefix("answer from ")
            return served, md["routing_plugin_signals"][SIGNAL], resp._hidden_params.get("response_cost")

    out = await asyncio.gather(*(one(i, t) for i, t in enumerate(texts)))
    await asyncio.sleep(0.05)  # the last success callbacks
    return out


# ------------------------------------------------------------------------ bad input, at once


def test_bad_budget_arguments_fail_at_construction(world):
    _, router, pool = world
    make = lambda **kw: UniRoutePlugin(router, pool, model_groups=[GROUP], **{"expected_requests": 100, **kw})
    cases = [
        (dict(budget=-1.0), ValueError, "budget must be a finite number >= 0"),
        (dict(budget=float("nan")), ValueError, "budget must be a finite number >= 0, got nan"),
        (dict(budget=0.0), ValueError, "budget must be > 0"),
        (dict(budget=10.0, expected_requests=0), ValueError, "expected_requests must be > 0"),
        (dict(budget=10.0, expected_requests=None), ValueError, "needs expected_requests"),
        (dict(budget={GROUP: Budget(10.0, 0)}), ValueError, r"budget\['uniroute'\].horizon must be > 0"),
        (dict(budget=10.0, budget_window=0), ValueError, "budget_window must be > 0"),
        (dict(budget="10"), TypeError, "budget must be a number"),
        (dict(budget=10.0, budget_keys=[3], key_budget=1.0), TypeError, "budget_keys must be metadata key names"),
        (dict(budget=10.0, budget_keys=["team"]), ValueError, "budget_keys needs key_budget"),
        (dict(budget=10.0, key_budget=1.0), ValueError, "key_budget needs budget_keys"),
        (dict(budget=10.0, budget_keys=["team"], key_budget=-2), ValueError, "key_budget must be a finite"),
        (dict(budget=10.0, redis_url="localhost:6379"), ValueError, "redis_url 'localhost:6379' does not parse"),
        (dict(budget=10.0, redis_url="redis://host:port"), ValueError, "redis_url .* does not parse"),
        (dict(budget=10.0, redis_url=6379), TypeError, "redis_url must be a non-empty string"),
        (dict(budget=10.0, taper=0.0), ValueError, r"taper must be in \(0, 1\]"),
        (dict(budget=10.0, spend_from="bill"), ValueError, "spend_from must be one of"),
        (dict(budget={"other": 5.0}), ValueError, r"no budget to model groups \['uniroute'\]"),
        (dict(budget=10.0, lam=0.5), ValueError, "exactly one of lam=, target_cost= or budget="),
    ]
    for kw, err, match in cases:
        with pytest.raises(err, match=match):
            make(**kw)
    env = {"UNIROUTE_ROUTER": "r.npz", "UNIROUTE_POOL": "p.npz", "UNIROUTE_BUDGET": "lots"}
    with pytest.raises(ValueError, match="UNIROUTE_BUDGET must be a number, got 'lots'"):
        UniRoutePlugin.from_env(env)


def test_budget_settings_from_the_environment(world, tmp_path):
    _, router, pool = world
    router.save(tmp_path / "r.npz")
    pool.save(tmp_path / "p.npz")
    env = {"UNIROUTE_ROUTER": str(tmp_path / "r.npz"), "UNIROUTE_POOL": str(tmp_path / "p.npz"),
           "UNIROUTE_WARM_UP": "0", "UNIROUTE_BUDGET": "100", "UNIROUTE_EXPECTED_REQUESTS": "20000",
           "UNIROUTE_BUDGET_WINDOW": "86400", "UNIROUTE_BUDGET_KEYS": "user_api_key_team_id, user",
           "UNIROUTE_KEY_BUDGET": "5", "UNIROUTE_KEY_EXPECTED_REQUESTS": "1000", "UNIROUTE_HARD_CAP": "1",
           "UNIROUTE_TAPER": "0.8", "UNIROUTE_REDIS_URL": "redis://127.0.0.1:1/0"}
    spec = UniRoutePlugin.from_env(env).budget
    assert spec.groups == Budget(100.0, 20000.0, 86400.0) and spec.key_budget == Budget(5.0, 1000.0, 86400.0)
    assert spec.keys == ("user_api_key_team_id", "user") and spec.hard_cap and spec.taper == 0.8
    assert spec.redis_url == "redis://127.0.0.1:1/0"
    with pytest.raises(ValueError, match="redis_url 'nope' does not parse"):
        UniRoutePlugin.from_env({**env, "UNIROUTE_REDIS_URL": "nope"})


# ------------------------------------------------------------------ the Lua rule = NumPy's


def _twin_adjust(pacer, names, delta):
    now = pacer.clock()
    pacer._roll(now)
    pacer.state = _budget.adjust(pacer.state, pacer._live_params(now), pacer.member(names), delta)


@pytest.mark.parametrize("target, hard_cap", [("remaining", True), ("fixed", False)])
def test_lua_charge_equals_numpy_pacing(redis_server, target, hard_cap):
    """A random stream of decisions and corrections through Redis's script and through
    `pacing.Pacer` in NumPy (windows rolling, several budgets per request, costs that push
    `lambda` onto both clip bounds): the same choices and the same stored state."""
    rng = np.random.default_rng(7 if hard_cap else 8)
    now = [1000.0]
    clock = lambda: now[0]
    budgets = {"model_group=g": Budget(30.0, 200.0, None), "team=a": Budget(8.0, 60.0, 40.0),
               "team=b": Budget(5.0, 80.0, None)}
    spec = _budget.budget_spec({"g": budgets["model_group=g"], "team=a": budgets["team=a"],
                                "team=b": budgets["team=b"]}, budget_keys=["team"], hard_cap=hard_cap,
                               taper=0.7, eta=4.0, redis_url=redis_server.url, redis_prefix=f"lua-{target}:")
    lam0 = {0.15: 1.5, 8.0 / 60.0: 0.4, 5.0 / 80.0: 3.0}  # per rate
    book = _budget.BudgetBook(spec, span=6.0, lam0_at=lambda r: lam0[r], clock=clock)
    twin = Pacer({n: b for n, b in budgets.items()}, span=6.0, lam0={n: lam0[b.amount / b.horizon]
                                                                      for n, b in budgets.items()},
                 eta=4.0, taper=0.7, hard_cap=hard_cap, target=target, clock=clock)
    client = redis_server.client()
    for n in budgets:  # the book knows every budget from the start, as the twin does
        book._ensure(n, budgets[n])
    book.pacer.target = target
    hit_top = hit_zero = capped = 0
    for step in range(400):
        now[0] += float(rng.exponential(0.6))
        names = tuple(n for n in budgets if n == "model_group=g" or rng.random() < 0.5)
        k = int(rng.integers(2, 5))
        e = rng.random(k)
        scale = [0.0, 0.05, 0.3, 3.0][int(rng.integers(4))]  # free, cheap, typical, very dear requests
        c = np.round(rng.random(k) * scale, 6)
        got = book.decide(e, c, names)
        want, lam, cap = twin.choose(e, c, names)
        assert (got["index"], got["capped"]) == (want, cap) and got["lam"] == pytest.approx(lam, rel=1e-9)
        twin.charge(float(c[want]), float(c.min()), names)
        if rng.random() < 0.7:  # the bill: the estimate corrected by up to +-30%, or a failed call
            failed = rng.random() < 0.1
            bill = 0.0 if failed else float(c[want]) * float(rng.uniform(0.7, 1.3))
            book.settle(got["charge"]["id"], bill, failed=failed)
            if bill != float(c[want]):
                _twin_adjust(twin, names, bill - float(c[want]))
        for n in names:
            i = twin.names.index(n)
            row = client.hgetall(spec.redis_prefix + n)
            stored = [float(row[f]) for f in _budget.FIELDS]
            expect = [twin.state.lam[i], twin.state.spent[i], twin.state.seen[i], twin.state.cheapest[i],
                      twin.window_start[i]]
            assert stored == pytest.approx(expect, rel=1e-9, abs=1e-12), (step, n)
            hit_top += twin.state.lam[i] >= twin.params.span[i] * (1 - 1e-12)
            hit_zero += twin.state.lam[i] <= twin.params.span[i] * FLOOR * (1 + 1e-9)
        capped += cap
    assert hit_top and hit_zero  # both clip bounds were exercised
    assert capped or not hard_cap
    assert book.failed_writes == 0


# ----------------------------------------------------------- in the process: litellm.Router


def numpy_pacing(errors, costs, bills, budget, horizon, span, lam0, eta=1.0):
    """The module docstring's rule for one budget, hard cap on, written out: (picks, lambdas, spent)."""
    rho = budget / horizon
    span_n = span * rho
    floor = 1e-6 * span_n
    lam = min(max(lam0 * rho, floor), span_n)
    spent = seen = cheap = 0.0
    picks, lams, caps = [], [], []
    for e, c, bill in zip(errors, costs, bills):
        price = lam / rho
        order = np.lexsort((np.arange(c.size), c, e + price * c))
        reserve = max(horizon - seen - 1, 0) * (cheap + c.min()) / (seen + 1)
        ok = c <= budget - spent - reserve + 1e-6 * budget
        pick = next((int(i) for i in order if ok[i]), int(np.lexsort((np.arange(c.size), c))[0]))
        aim = max(budget - spent, 0.0) / max(horizon - seen, 1.0)
        lam = min(max(lam * math.exp(eta * (c[pick] - aim) / rho / math.sqrt(horizon)), floor), span_n)
        spent, seen, cheap = spent + c[pick], seen + 1, cheap + c.min()
        # after the call: the charge corrected to the bill
        lam = min(max(lam * math.exp(eta * (bill - c[pick]) / (rho * math.sqrt(horizon))), floor), span_n)
        spent += bill - c[pick]
        picks.append(pick)
        lams.append(price)
        caps.append(pick != int(order[0]))
    return picks, lams, spent, caps


@pytest.mark.parametrize("per_request", [0.3, 0.12])
def test_router_paces_a_budget_and_charges_the_bill(world, per_request):
    embedder, router, pool = world
    import uniroute_jax as ur

    n = 150
    budget = n * per_request
    sample = make_texts(200, 13)
    plugin = UniRoutePlugin(router, pool, budget=budget, expected_requests=n, hard_cap=True,
                            calibration_prompts=sample, model_groups=[GROUP], embedder=embedder,
                            embed_in_thread=False)
    llm_router = litellm.Router(model_list=deployments(), plugins=[plugin])
    texts = make_texts(n, 23)
    results = asyncio.run(send(llm_router, texts, settle=plugin))
    served = [s for s, _, _ in results]
    traces = [t for _, t, _ in results]
    bills = [b for _, _, b in results]
    name = f"model_group={GROUP}"
    # The trace: lambda used, spend so far and budget left (this request's estimate included), capped.
    for t in traces:
        assert set(t) >= {"lam", "spent", "budget_left", "capped"} and t["fallback"] is None
        assert t["spent"][name] + t["budget_left"][name] == pytest.approx(budget)
    assert len({round(t["lam"], 9) for t in traces}) > n // 2  # lambda moves with the spend
    # The bills LiteLLM reported are what the budget was charged, not the estimates.
    assert bills == pytest.approx([BILL * COSTS[NAMES.index(s)] for s in served], rel=1e-6)
    spent = plugin._book.status([name])["spent"][name]
    assert spent == pytest.approx(sum(bills), rel=1e-9) and spent <= budget
    # An independent NumPy twin of the rule, fed the same bills: the same choices and lambdas.
    x = embedder(sample)
    errors = np.asarray(pool.psi, np.float64)[:, router.assign(x)].T
    costs = np.asarray(pool.costs, np.float64)
    span, lam0 = ur.lambda_span(errors, costs), ur.warm_start(errors, costs, budget / n)
    e_req = np.asarray(pool.psi, np.float64)[:, router.assign(embedder(texts))].T
    picks, lams, twin_spent, capped = numpy_pacing(e_req, [costs] * n, bills, budget, n, span, lam0)
    assert served == [NAMES[i] for i in picks]
    assert [t["lam"] for t in traces] == pytest.approx(lams, rel=1e-9)
    assert twin_spent == pytest.approx(spent, rel=1e-9)
    assert [t["capped"] for t in traces] == capped
    assert sum(capped) > 0 or per_request > 0.2  # the tight budget's hard cap changed some choices
    assert spent > 0.9 * budget  # and the pacing used the budget


def test_tenant_budgets_from_metadata_and_failed_calls_charge_nothing(world):
    embedder, router, pool = world
    n = 120
    # The group's budget is loose; each team's is its own: team-b a fixed one, team-a the template's.
    plugin = UniRoutePlugin(router, pool, expected_requests=n, hard_cap=True,
                            budget={GROUP: 1000.0, "user_api_key_team_id=team-b": Budget(0.6 * n / 2, n / 2)},
                            budget_keys=["user_api_key_team_id"], key_budget=Budget(0.15 * n / 2, n / 2),
                            model_groups=[GROUP], embedder=embedder, embed_in_thread=False)
    llm_router = litellm.Router(model_list=deployments(), plugins=[plugin], num_retries=0)
    texts = make_texts(n, 29)
    metadata = [{"user_api_key_team_id": "team-a" if i % 2 else "team-b"} for i in range(n)]
    results = asyncio.run(send(llm_router, texts, metadata=metadata, concurrency=8))
    book = plugin._book
    names = ["model_group=uniroute", "user_api_key_team_id=team-a", "user_api_key_team_id=team-b"]
    spent = book.status(names)["spent"]
    bill = {team: sum(b for (_, _, b), md in zip(results, metadata) if md["user_api_key_team_id"] == team)
            for team in ("team-a", "team-b")}
    assert spent[names[1]] == pytest.approx(bill["team-a"], rel=1e-9) and spent[names[1]] <= 0.15 * n / 2
    assert spent[names[2]] == pytest.approx(bill["team-b"], rel=1e-9) and spent[names[2]] <= 0.6 * n / 2
    assert spent[names[0]] == pytest.approx(bill["team-a"] + bill["team-b"], rel=1e-9)
    t = results[1][1]
    assert set(t["spent"]) == {names[0], names[1]} and set(t["budget_left"]) == {names[0], names[1]}
    # The tighter team's requests went to cheaper models.
    cost_of = lambda team: np.mean([COSTS[NAMES.index(s)] for (s, _, _), md in zip(results, metadata)
                                    if md["user_api_key_team_id"] == team])
    assert cost_of("team-a") < cost_of("team-b")
    # A call that fails charges nothing; the budget is back where it was once LiteLLM reports it.
    before = book.status(names)["spent"]

    async def failing():
        md = {"user_api_key_team_id": "team-a"}
        with pytest.raises(Exception, match="provider down"):
            await llm_router.acompletion(model=GROUP, messages=[{"role": "user", "content": texts[0]}],
                                         metadata=md, mock_response=Exception("provider down"))
        for _ in range(1000):
            if not book._pending:
                break
            await asyncio.sleep(0)
        return md

    md = asyncio.run(failing())
    assert md["routing_plugin_signals"][SIGNAL]["spent"][names[1]] > before[names[1]]  # charged at the decision
    assert book.status(names)["spent"] == pytest.approx(before, rel=1e-12)  # and refunded after the failure


def test_redis_outage_keeps_routing_counts_writes_and_resyncs(world, tmp_path, caplog):
    """Redis stopped mid-run: every request is still served, on the last state; the plugin logs
    once and counts the writes it could not make; restarted (empty), Redis is seeded again from
    the replica's view, so the spend of the outage is not lost."""
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    embedder, router, pool = world
    server = RedisServer(tmp_path).start()
    try:
        n = 90
        plugin = UniRoutePlugin(router, pool, budget=0.3 * n, expected_requests=n, hard_cap=True,
                                model_groups=[GROUP], embedder=embedder, embed_in_thread=False,
                                redis_url=server.url, redis_prefix="outage:")
        llm_router = litellm.Router(model_list=deployments(), plugins=[plugin])
        texts = make_texts(n, 37)
        key = f"outage:model_group={GROUP}"
        before = asyncio.run(send(llm_router, texts[:30], concurrency=4))
        book = plugin._book
        assert book.failed_writes == 0
        assert float(server.client().hget(key, "spent")) == pytest.approx(sum(b for *_, b in before), rel=1e-9)
        book.retry_s = 0.0  # try Redis on every request: each try fails at once (connection refused)
        server.stop()
        with caplog.at_level(logging.INFO, logger="uniroute_jax.litellm"):
            during = asyncio.run(send(llm_router, texts[30:70], concurrency=4))
        assert len(during) == 40 and all(t["fallback"] is None for _, t, _ in during)
        assert sum("is unreachable" in r.getMessage() for r in caplog.records) == 1
        # Each request's decision and its correction (bills differ from estimates) were not written.
        assert book.failed_writes == 2 * 40 and during[-1][1]["failed_writes"] >= 40
        server.start()  # empty: no persistence
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="uniroute_jax.litellm"):
            after = asyncio.run(send(llm_router, texts[70:], concurrency=4))
        assert book.failed_writes == 80 and len(after) == 20
        assert sum("reachable again" in r.getMessage() for r in caplog.records) == 1
        total = sum(b for part in (before, during, after) for *_, b in part)
        name = f"model_group={GROUP}"
        assert book.status([name])["spent"][name] == pytest.approx(total, rel=1e-9)
        assert float(server.client().hget(key, "spent")) == pytest.approx(total, rel=1e-9)
        assert float(server.client().hget(key, "seen")) == n
    finally:
        server.stop()


# ------------------------------------------------- three proxy processes, one budget in Redis

PROXY_PLUGIN = textwrap.dedent("""
    # Names the component for the proxy: router_settings.plugins: ["uniroute_budget_plugin.plugin"].
    import sys
    sys.path.insert(0, {tests_dir!r})
    from litellm_helpers import HashEmbedder
    from uniroute_jax.integrations.litellm import UniRoutePlugin

    plugin = UniRoutePlugin({router!r}, {pool!r}, budget={budget!r}, expected_requests={horizon!r}, hard_cap=True,
                            model_groups=["uniroute"], embedder=HashEmbedder(), embed_in_thread=False,
                            redis_url={url!r}, redis_prefix={prefix!r})
""")


def proxy_config():
    lines = ["model_list:"]
    for d in deployments():
        p = d["litellm_params"]
        lines += [f"  - model_name: {GROUP}", f"    litellm_params: {{model: {p['model']}, api_key: sk-none, "
                  f"mock_response: '{p['mock_response']}', input_cost_per_token: 0.0, "
                  f"output_cost_per_token: {p['output_cost_per_token']!r}}}"]
    lines += ["router_settings:", '  plugins: ["uniroute_budget_plugin.plugin"]',
              "general_settings:", "  disable_spend_logs: true", "  disable_error_logs: true", "litellm_settings:",
              "  turn_off_message_logging: true",
              '  callbacks: ["uniroute_jax.integrations.litellm.trace_headers", '
              '"uniroute_jax.integrations.litellm.budget_spend"]']
    return "\n".join(lines) + "\n"


def start_proxies(folder: Path, n: int, key: str):
    exe = shutil.which("litellm", path=str(Path(sys.executable).parent))
    cmd = [exe] if exe else [sys.executable, "-c", "from litellm.proxy.proxy_cli import run_server; run_server()"]
    env = {**os.environ, "LITELLM_MASTER_KEY": key, "LITELLM_LOCAL_MODEL_COST_MAP": "True", "JAX_PLATFORMS": "cpu",
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    procs = []
    for i in range(n):
        port = free_port()
        log = open(folder / f"proxy{i}.log", "w")
        proc = subprocess.Popen([*cmd, "--config", str(folder / "config.yaml"), "--host", "127.0.0.1", "--port",
                                 str(port)], cwd=folder, env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        procs.append((proc, port, log, folder / f"proxy{i}.log"))
    return procs


def stop_proxies(procs):
    for proc, _, _, _ in procs:  # every proxy told first, so they stop together
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
    for proc, _, log, _ in procs:
        stop_group(proc)
        log.close()


def wait_ready(procs, limit_s: float) -> float:
    """Seconds until every proxy accepts connections; raises when one exits or `limit_s` passes."""
    start = time.monotonic()
    pending = list(procs)
    while pending:
        for p in list(pending):
            proc, port, _, path = p
            if proc.poll() is not None:
                raise RuntimeError(f"a proxy exited with {proc.returncode}:\n{path.read_text()[-3000:]}")
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    pending.remove(p)
            except OSError:
                pass
        if pending and time.monotonic() - start > limit_s:
            raise RuntimeError(f"proxies not up in {limit_s:.0f} s:\n{pending[0][3].read_text()[-3000:]}")
        time.sleep(0.2)
    return time.monotonic() - start


async def hammer(ports, key, texts, concurrency, deadline_s):
    """Sends the texts round-robin over the proxies; returns (status, response cost, trace) each."""
    import httpx

    sem = asyncio.Semaphore(concurrency)
    stop_at = time.monotonic() + deadline_s
    async with httpx.AsyncClient(timeout=60, headers={"Authorization": f"Bearer {key}"}) as client:
        async def one(i, text):
            async with sem:
                if time.monotonic() > stop_at:
                    return None, None, None
                r = await client.post(f"http://127.0.0.1:{ports[i % len(ports)]}/v1/chat/completions",
                                      json={"model": GROUP, "messages": [{"role": "user", "content": text}]})
                trace = r.headers.get("x-uniroute-trace")
                return r.status_code, r.headers.get("x-litellm-response-cost"), json.loads(trace) if trace else None

        return await asyncio.gather(*(one(i, t) for i, t in enumerate(texts)))


@pytest.mark.slow
def test_three_proxies_share_one_budget_through_redis(world, redis_server, tmp_path):
    """3,000 requests over three LiteLLM proxies sharing one hard-capped budget in Redis: the
    spend stays within the budget and Redis's total is the sum of the bills the responses
    report (no update lost). Then Redis stops: requests keep flowing, each proxy logs once."""
    embedder, router, pool = world
    n, budget, prefix = 3000, 3000 * 0.25, f"proxies-{secrets.token_hex(4)}:"
    router.save(tmp_path / "router.npz")
    pool.save(tmp_path / "pool.npz")
    (tmp_path / "uniroute_budget_plugin.py").write_text(PROXY_PLUGIN.format(
        tests_dir=str(TESTS_DIR), router=str(tmp_path / "router.npz"), pool=str(tmp_path / "pool.npz"),
        budget=budget, horizon=n, url=redis_server.url, prefix=prefix))
    (tmp_path / "config.yaml").write_text(proxy_config())
    key = "sk-" + secrets.token_hex(16)
    procs = start_proxies(tmp_path, 3, key)
    try:
        # Every later deadline scales with the measured start-up (itself bounded by the proxies' exit).
        up_s = wait_ready(procs, limit_s=600)
        ports = [p for _, p, _, _ in procs]
        texts = make_texts(n, 43)
        # The first requests compile each proxy's warm start; the rest get 10x the start-up time.
        results = asyncio.run(hammer(ports, key, texts[:30], 6, deadline_s=20 * up_s + 60))
        results += asyncio.run(hammer(ports, key, texts[30:], 24, deadline_s=10 * up_s + 60))
        assert [s for s, _, _ in results] == [200] * n
        bills = [float(c) for _, c, _ in results]
        traces = [t for _, _, t in results]
        assert all(t["fallback"] is None and t["failed_writes"] == 0 for t in traces)
        assert bills == pytest.approx([BILL * COSTS[NAMES.index(t["model"])] for t in traces], rel=1e-6)
        time.sleep(0.5)  # the last success callbacks run after their responses
        row = redis_server.client().hgetall(prefix + f"model_group={GROUP}")
        spent = float(row["spent"])
        assert float(row["seen"]) == n
        assert spent == pytest.approx(sum(bills), rel=1e-9)  # no update lost
        assert spent <= budget  # the hard cap, across replicas
        assert spent > 0.9 * budget
        # Redis goes away mid-run: every request is still served; each proxy logs it once.
        redis_server.stop()
        down = asyncio.run(hammer(ports, key, make_texts(60, 47), 12, deadline_s=10 * up_s + 60))
        assert [s for s, _, _ in down] == [200] * 60
        assert all(t["fallback"] is None for _, _, t in down) and max(t["failed_writes"] for *_, t in down) > 0
        time.sleep(0.5)
        for *_, path in procs:
            assert path.read_text().count("is unreachable") == 1, path.read_text()[-3000:]
    finally:
        stop_proxies(procs)
        redis_server.stop()
        redis_server.start()
