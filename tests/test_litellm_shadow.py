"""Shadow mode in a real `litellm.Router` (mock_response deployments: no network) and its report."""

import asyncio
import json
import logging
import os

import numpy as np
import pytest
from scipy import stats

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # no fetch of the remote price list
litellm = pytest.importorskip("litellm", reason='LiteLLM is not installed: pip install -e ".[litellm]"')

import uniroute_jax as ur  # noqa: E402
from uniroute_jax._src.cli import main  # noqa: E402
from uniroute_jax.integrations.litellm import SIGNAL, UniRoutePlugin, trace_headers_of  # noqa: E402

from litellm_helpers import COSTS, NAMES, HashEmbedder, fitted, make_texts  # noqa: E402

GROUP = "uniroute"
LAM = 0.25
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")  # LiteLLM's pydantic schema notices


def model_list():
    return [{"model_name": GROUP, "litellm_params": {"model": f"openai/{n}", "api_key": "sk-none",
                                                     "mock_response": f"answer from {n}"}} for n in NAMES]


def log_lines(path) -> int:
    return sum(1 for _ in open(path)) if os.path.exists(path) else 0


async def send(router, texts, log=None):
    """Sends each text; returns (LLM that answered, trace) per text, once every record is written."""
    out = []
    for text in texts:
        md = {}
        resp = await router.acompletion(model=GROUP, messages=[{"role": "user", "content": text}], metadata=md)
        out.append((resp.choices[0].message.content.removeprefix("answer from "),
                    md["routing_plugin_signals"][SIGNAL]))
    for _ in range(10_000):  # the success callbacks run as tasks after their responses
        if all("served" in t for _, t in out) and (log is None or log_lines(log) >= len(texts)):
            break
        await asyncio.sleep(0)
    return out


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    embedder = HashEmbedder()
    router, pool = fitted(embedder)
    log = tmp_path_factory.mktemp("shadow") / "shadow.jsonl"
    plugin = UniRoutePlugin(router, pool, lam=LAM, model_groups=[GROUP], embedder=embedder, embed_in_thread=False,
                            shadow=True, shadow_log=log)
    texts = make_texts(120, 21)
    results = asyncio.run(send(litellm.Router(model_list=model_list(), plugins=[plugin]), texts, log))
    return dict(embedder=embedder, router=router, pool=pool, log=log, texts=texts, results=results)


def test_shadow_mode_decides_without_enforcing(run):
    router, pool, texts = run["router"], run["pool"], run["texts"]
    records = ur.read_shadow_log(run["log"])
    assert len(records) == len(texts)
    # UniRoute's choice is the core kernel's; the group's own strategy (a shuffle) picked what answered.
    expected = list(router.route(run["embedder"](texts), pool, LAM).model)
    assert [r["model"] for r in records] == expected
    served = [s for s, _ in run["results"]]
    assert [r["served"] for r in records] == served
    assert [r["deployment"] for r in records] == [f"openai/{s}" for s in served]
    agree = np.mean([s == m for s, m in zip(served, expected)])
    assert 0.0 < agree < 1.0 and set(served) == set(NAMES)
    # The caller's trace is the record, and every record has its call's id (to join outcomes on).
    assert [t for _, t in run["results"]] == records
    assert len({r["request_id"] for r in records}) == len(texts) and all(r["shadow"] for r in records)
    assert trace_headers_of(records[0])["x-uniroute-shadow"] == "1"


def twin(records, pool, outcomes):
    """NumPy: per request, agreement, saving, estimated and observed quality change."""
    idx = lambda n: NAMES.index(n)
    k = np.array([r["cluster"] for r in records])
    u = np.array([idx(r["model"]) for r in records])
    s = np.array([idx(r["served"]) for r in records])
    agree = (u == s).astype(float)
    saving = np.asarray(COSTS)[s] - np.asarray(COSTS)[u]
    quality = pool.psi[s, k] - pool.psi[u, k]
    c = np.array([outcomes.get(r["request_id"], np.nan) for r in records])
    observed = np.where(u == s, 0.0, 1 - pool.psi[u, k] - c)
    return k, agree, saving, quality, c, observed


def test_report_follows_a_numpy_twin(run):
    pool, records = run["pool"], ur.read_shadow_log(run["log"])
    rng = np.random.default_rng(5)
    outcomes = {r["request_id"]: float(rng.random() < 0.7) for r in records[::3] + records[1::3]}
    rep = ur.shadow_report(records, pool=pool, outcomes=outcomes, level=0.9)
    k, agree, saving, quality, c, observed = twin(records, pool, outcomes)
    n, a = agree.size, agree.sum()
    assert (rep.n_requests, rep.n_skipped, rep.n_outcomes) == (n, 0, len(outcomes))
    assert rep.agreement.value == pytest.approx(a / n)
    cp = stats.binomtest(int(a), n).proportion_ci(0.9, method="exact")
    assert (rep.agreement.lower, rep.agreement.upper) == pytest.approx((cp.low, cp.high), abs=2e-4)
    has = ~np.isnan(c)
    for iv, v in ((rep.cost_saving, saving), (rep.quality_change, quality), (rep.observed_quality_change, observed[has])):
        assert iv.value == pytest.approx(v.mean(), abs=1e-6)
        # A bootstrap percentile interval of a mean is close to the normal one at these sizes.
        half = stats.norm.ppf(0.95) * v.std() / np.sqrt(v.size)
        assert iv.lower < iv.value < iv.upper
        assert (iv.upper - iv.lower) / 2 == pytest.approx(half, rel=0.25)
    assert rep.served_cost == pytest.approx(np.asarray(COSTS)[[NAMES.index(r["served"]) for r in records]].mean())
    np.testing.assert_array_equal(rep.clusters, np.unique(k))
    np.testing.assert_array_equal(rep.cluster_requests, [np.sum(k == j) for j in np.unique(k)])
    for i, j in enumerate(np.unique(k)):
        sel = k == j
        assert rep.cluster_agreement.value[i] == pytest.approx(agree[sel].mean())
        assert rep.cluster_cost_saving.value[i] == pytest.approx(saving[sel].mean(), abs=1e-6)
        assert rep.cluster_quality_change.value[i] == pytest.approx(quality[sel].mean(), abs=1e-6)
        got, want = rep.cluster_observed_quality_change.value[i], observed[sel & has]
        assert (np.isnan(got) and want.size == 0) or got == pytest.approx(want.mean(), abs=1e-6)
    # Without a pool, the costs and estimates logged with each decision give the same numbers here.
    logged = ur.shadow_report(records, outcomes=outcomes, level=0.9)
    assert logged.cost_source == "log" and rep.cost_source == "pool"
    for name in ("cost_saving", "quality_change", "observed_quality_change"):
        assert getattr(logged, name).value == pytest.approx(getattr(rep, name).value, abs=1e-6)


def test_cli_reads_a_jsonl_file_or_log_lines(run, tmp_path, capsys, caplog):
    pool, records = run["pool"], ur.read_shadow_log(run["log"])
    pool.save(tmp_path / "pool.npz")
    with open(tmp_path / "outcomes.csv", "w") as f:
        f.write("request_id,correct\n" + "".join(f"{r['request_id']},{i % 2}\n" for i, r in enumerate(records[:40])))
    outcomes = {r["request_id"]: float(i % 2) for i, r in enumerate(records[:40])}
    code = main(["shadow-report", str(run["log"]), "-p", str(tmp_path / "pool.npz"), "--outcomes",
                 str(tmp_path / "outcomes.csv")])
    out = capsys.readouterr().out
    assert code == 0 and out.strip() == ur.shadow_report(records, pool=pool, outcomes=outcomes).summary()
    assert "40 with an outcome" in out
    # The same records read from the plugin's log lines, among other log output.
    with caplog.at_level(logging.INFO, logger="uniroute_jax.litellm"):
        embedder, router = run["embedder"], run["router"]
        plugin = UniRoutePlugin(router, pool, lam=LAM, model_groups=[GROUP], embedder=embedder,
                                embed_in_thread=False, shadow=True)
        results = asyncio.run(send(litellm.Router(model_list=model_list(), plugins=[plugin]), run["texts"][:10]))
    lines = [f"2026-01-01 INFO {r.name}: {r.getMessage()}" for r in caplog.records]
    (tmp_path / "proxy.log").write_text("\n".join(lines) + "\n")
    from_log = ur.read_shadow_log(tmp_path / "proxy.log")
    assert from_log == [t for _, t in results] and len(from_log) == 10
    code = main(["shadow-report", str(tmp_path / "proxy.log")])
    assert code == 0 and "10 requests compared" in capsys.readouterr().out


def test_bad_input_is_named(run, tmp_path, capsys):
    pool, records = run["pool"], ur.read_shadow_log(run["log"])
    rid = records[0]["request_id"]
    with pytest.raises(ValueError, match=rf"outcomes: request '{rid}' has quality 1.5"):
        ur.shadow_report(records, outcomes={rid: 1.5})
    with pytest.raises(ValueError, match=r"records\[0\] names model"):
        ur.shadow_report(records, pool=pool.select(["llm-code", "llm-large"] if records[0]["model"] == "llm-small"
                                                    else ["llm-small"]))
    with pytest.raises(ValueError, match="none of the 2 shadow records can be compared"):
        ur.shadow_report([{"shadow": True, "fallback": "RuntimeError: x"}] * 2)
    with pytest.raises(ValueError, match=r"records\[0\] has no field 'cluster'"):
        ur.shadow_report([{"shadow": True, "model": "a", "served": "a", "fallback": None}])
    (tmp_path / "bad.log").write_text("starting\nINFO uniroute shadow: {not json\n")
    with pytest.raises(ValueError, match="line 2 is not a JSON shadow record"):
        ur.read_shadow_log(tmp_path / "bad.log")
    (tmp_path / "o.csv").write_text("id,correct\nx,1\n")
    code = main(["shadow-report", str(run["log"]), "--outcomes", str(tmp_path / "o.csv")])
    assert code == 2 and "'request_id' and 'correct'" in capsys.readouterr().err


def test_a_failed_decision_is_logged_and_never_narrows(run, tmp_path):
    router, pool = run["router"], run["pool"]

    def broken(texts):
        raise RuntimeError("embedder down")

    log = tmp_path / "fallback.jsonl"
    plugin = UniRoutePlugin(router, pool, lam=LAM, model_groups=[GROUP], embedder=broken, embed_in_thread=False,
                            default_model="llm-small", shadow=True, shadow_log=log)
    results = asyncio.run(send(litellm.Router(model_list=model_list(), plugins=[plugin]), make_texts(30, 4), log))
    # Shadow mode changes nothing, not even on failure: the default model is not enforced either.
    assert len({s for s, _ in results}) > 1
    records = ur.read_shadow_log(log)
    assert len(records) == 30 and all(r["fallback"].startswith("RuntimeError") for r in records)
    with pytest.raises(ValueError, match="none of the 30"):
        ur.shadow_report(records)


def test_settings(run, tmp_path):
    router, pool = run["router"], run["pool"]
    router.save(tmp_path / "r.npz")
    pool.save(tmp_path / "p.npz")
    env = {"UNIROUTE_ROUTER": str(tmp_path / "r.npz"), "UNIROUTE_POOL": str(tmp_path / "p.npz"),
           "UNIROUTE_WARM_UP": "0", "UNIROUTE_SHADOW": "1", "UNIROUTE_SHADOW_LOG": str(tmp_path / "s.jsonl")}
    plugin = UniRoutePlugin.from_env(env)
    assert plugin.shadow and plugin.shadow_log == str(tmp_path / "s.jsonl")
    assert not UniRoutePlugin.from_env({**env, "UNIROUTE_SHADOW": "0"}).shadow
    with pytest.raises(ValueError, match="shadow=True does not go with budget="):
        UniRoutePlugin(router, pool, budget=10.0, expected_requests=100, shadow=True)
    with pytest.raises(ValueError, match="shadow_log is the log of shadow mode"):
        UniRoutePlugin(router, pool, lam=0.0, shadow_log=tmp_path / "x.jsonl")
