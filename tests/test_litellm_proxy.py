"""A real LiteLLM proxy process with UniRoute as its routing plugin, on 127.0.0.1 (no network)."""

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

litellm = pytest.importorskip("litellm", reason='LiteLLM is not installed: pip install -e ".[litellm]"')
openai = pytest.importorskip("openai", reason="the OpenAI client comes with LiteLLM")
pytest.importorskip("litellm.proxy.proxy_server", reason='the LiteLLM proxy is not installed: pip install "litellm[proxy]"')

import uniroute_jax as ur  # noqa: E402

from child_processes import stop_group  # noqa: E402
from litellm_helpers import NAMES, HashEmbedder, fitted, make_texts  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::UserWarning")]

TESTS_DIR = Path(__file__).resolve().parent
ROOT = TESTS_DIR.parent
LAM = 0.25
STARTUP_TIMEOUT_S = 120

PLUGIN = textwrap.dedent("""
    # Names the component for the proxy: router_settings.plugins: ["uniroute_test_plugin.plugin"].
    import sys
    sys.path.insert(0, {tests_dir!r})
    from litellm_helpers import HashEmbedder
    from uniroute_jax.integrations.litellm import UniRoutePlugin

    class FlakyEmbedder(HashEmbedder):
        # Fails on demand, as an embedding service that is down would.
        def __call__(self, texts):
            if any("FAIL_EMBED" in t for t in texts):
                raise RuntimeError("embedder made to fail")
            return super().__call__(texts)

    plugin = UniRoutePlugin({router!r}, {pool!r}, lam={lam}, model_groups=["uniroute"], embedder=FlakyEmbedder(),
                            default_model="llm-small", check_every=0.0)
""")


def config(names):
    deployments = "".join(
        f"  - model_name: uniroute\n    litellm_params: {{model: openai/{n}, api_key: sk-none, "
        f"mock_response: 'answer from {n}'}}\n" for n in names)
    return ("model_list:\n" + deployments
            + "router_settings:\n  plugins: [\"uniroute_test_plugin.plugin\"]\n"
            + "litellm_settings:\n  callbacks: [\"uniroute_jax.integrations.litellm.trace_headers\"]\n")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def proxy(tmp_path_factory):
    d = tmp_path_factory.mktemp("proxy")
    embedder = HashEmbedder()
    router, pool = fitted(embedder)
    router.save(d / "router.npz")
    pool.save(d / "pool.npz")
    (d / "uniroute_test_plugin.py").write_text(PLUGIN.format(tests_dir=str(TESTS_DIR), router=str(d / "router.npz"),
                                                             pool=str(d / "pool.npz"), lam=LAM))
    (d / "config.yaml").write_text(config(NAMES))
    port, key = free_port(), "sk-" + secrets.token_hex(16)
    exe = shutil.which("litellm", path=str(Path(sys.executable).parent))
    cmd = ([exe] if exe else [sys.executable, "-c", "from litellm.proxy.proxy_cli import run_server; run_server()"])
    env = {**os.environ, "LITELLM_MASTER_KEY": key, "LITELLM_LOCAL_MODEL_COST_MAP": "True",
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]), "JAX_PLATFORMS": "cpu"}
    log = open(d / "proxy.log", "w")
    proc = subprocess.Popen([*cmd, "--config", str(d / "config.yaml"), "--host", "127.0.0.1", "--port", str(port)],
                            cwd=d, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=key, timeout=30, max_retries=0)
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"the proxy exited with {proc.returncode}:\n{(d / 'proxy.log').read_text()[-3000:]}")
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the proxy did not start in {STARTUP_TIMEOUT_S} s:\n"
                                       f"{(d / 'proxy.log').read_text()[-3000:]}") from None
                time.sleep(0.3)
        yield {"client": client, "dir": d, "router": router, "pool": pool, "embedder": embedder}
    finally:
        # Stop the proxy (and anything it started in its session), also when a test failed.
        stop_group(proc, timeout=15)
        log.close()


def ask(client, text):
    raw = client.chat.completions.with_raw_response.create(
        model="uniroute", messages=[{"role": "user", "content": text}])
    resp = raw.parse()
    return resp.choices[0].message.content.removeprefix("answer from "), raw.headers


def test_proxy_routes_each_request_and_shows_the_decision(proxy):
    texts = make_texts(24, 31)
    expected = proxy["router"].route(proxy["embedder"](texts), proxy["pool"], LAM)
    for text, model, cluster in zip(texts, expected.model, expected.cluster):
        served, headers = ask(proxy["client"], text)
        assert served == model
        assert headers["x-uniroute-model"] == model and headers["x-litellm-model-name"] == f"openai/{model}"
        assert headers["x-uniroute-cluster"] == str(cluster) and headers["x-uniroute-lambda"] == f"{LAM:g}"
        trace = json.loads(headers["x-uniroute-trace"])
        assert {c["name"] for c in trace["candidates"]} == set(NAMES) and trace["fallback"] is None
        # This request's trace names the deployment that answered it, not one of the others.
        assert trace["model"] == served and trace["deployment"] == f"openai/{served}"
    assert len(set(expected.model)) > 1


def test_proxy_falls_back_when_the_embedder_fails(proxy):
    served, headers = ask(proxy["client"], "solve this FAIL_EMBED equation")
    assert served == "llm-small"
    assert "embedder made to fail" in headers["x-uniroute-fallback"]
    assert "x-uniroute-model" not in headers or headers["x-uniroute-model"] == "llm-small"


def test_proxy_picks_up_a_pool_file_replaced_while_it_runs(proxy):
    pool = proxy["pool"]
    texts = make_texts(12, 41)
    before = [ask(proxy["client"], t)[0] for t in texts]
    assert set(before) != {"llm-large"}
    # llm-large becomes error-free everywhere, so at this lambda it wins every cluster.
    psi = pool.psi.copy()
    psi[2] = 0.0
    psi[:2] = np.maximum(psi[:2], 0.9)
    ur.Pool(pool.names, pool.costs, psi, pool.counts, pool.error_sums).save(proxy["dir"] / "pool.npz")
    after = [ask(proxy["client"], t) for t in texts]
    assert {s for s, _ in after} == {"llm-large"}
    assert json.loads(after[0][1]["x-uniroute-trace"])["pool_version"] == 2
