"""Decision overhead of budget pacing in the LiteLLM plugin, next to a fixed lambda, same run.

    python benchmarks/budget_overhead.py [--requests 2000] [--out benchmarks/results]

Per request, in one process (mock deployments, embedding excluded: a lookup of precomputed
vectors, called inline), the plugin's `run` (reload check, cluster, scores, trace) with:
  - a fixed `lambda`;
  - a budget paced in the process (`pacing.Pacer`; hard cap on);
  - the same budget shared through Redis (a `redis-server` started here on 127.0.0.1: one Lua
    script round trip per decision);
and the correction after a call (`budget_spend`'s settle of a bill that differs from the
estimate) in the process and through Redis. The three plugins are interleaved in blocks of 100
so drift on a shared machine hits them alike. Writes `budget_overhead.json` and `.md` into --out.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from common import write_text  # noqa: E402
from litellm_overhead import DIM, GROUP, N_CLUSTERS, N_MODELS, TimedPlugin, model_list, serving_problem, stats  # noqa: E402

import litellm  # noqa: E402

import uniroute_jax as ur  # noqa: E402
from uniroute_jax.integrations.litellm import UniRoutePlugin  # noqa: E402


def start_redis(folder: str):
    """A redis-server on a free loopback port (no persistence); None when the binary is missing."""
    exe = shutil.which("redis-server")
    if exe is None:
        return None, None
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                             "--dir", folder], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    import redis  # noqa: PLC0415

    client = redis.Redis(port=port)
    for _ in range(500):
        try:
            client.ping()
            return proc, f"redis://127.0.0.1:{port}/0"
        except redis.ConnectionError:
            time.sleep(0.02)
    proc.terminate()
    raise RuntimeError("redis-server did not answer")


async def select(router, texts):
    for t in texts:
        await router.async_get_available_deployment(model=GROUP, request_kwargs={"metadata": {"model_group": GROUP}},
                                                    messages=[{"role": "user", "content": t}])


def time_settle(plugin, bill_factor=0.8) -> list[float]:
    """Corrects every pending charge of the plugin's book to `bill_factor` of its estimate, timed."""
    book = plugin.plugin._book
    out = []
    for cid, rec in list(book._pending.items()):
        start = time.perf_counter()
        book.settle(cid, bill_factor * rec.estimate)
        out.append(time.perf_counter() - start)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = ap.parse_args(argv)
    n = args.requests

    x, router, pool, names, texts, lookup, lam = serving_problem(n)
    # A budget of the fixed lambda's mean cost, over ten times the timed requests: pacing is live
    # (lambda moves every request) and the hard cap checks every candidate.
    mean_cost = float(np.asarray(pool.costs)[router.route(x[3000:], pool, lam).index].mean())
    budget = dict(budget=mean_cost * 10 * n, expected_requests=10 * n, hard_cap=True)
    common = dict(model_groups=[GROUP], embedder=lookup, embed_in_thread=False)

    tmp = tempfile.mkdtemp(prefix="budget-overhead-")
    redis_proc, url = start_redis(tmp)
    plugins = {"fixed lambda": TimedPlugin(UniRoutePlugin(router, pool, lam=lam, **common)),
               "budget, in the process": TimedPlugin(UniRoutePlugin(router, pool, **budget, **common))}
    if url is not None:
        plugins["budget, shared through Redis"] = TimedPlugin(UniRoutePlugin(
            router, pool, **budget, redis_url=url, redis_prefix=f"bench-{os.getpid()}:", **common))
    routers = {k: litellm.Router(model_list=model_list(names), plugins=[p]) for k, p in plugins.items()}
    settle: dict[str, list[float]] = {k: [] for k in plugins if k != "fixed lambda"}
    try:
        async def run_all():
            for r in routers.values():  # warm up every path (the budget's warm start compiles once)
                await select(r, texts[:200])
            for k, p in plugins.items():
                p.times.clear()
                if k in settle:
                    time_settle(p)
            for start in range(0, n, 100):
                for k, r in routers.items():
                    await select(r, texts[start:start + 100])
                    if k in settle:
                        settle[k] += time_settle(plugins[k])

        asyncio.run(run_all())
    finally:
        if redis_proc is not None:
            redis_proc.terminate()
            redis_proc.wait(timeout=30)
        shutil.rmtree(tmp, ignore_errors=True)

    results = {"plugin_run": {k: stats(p.times) for k, p in plugins.items()},
               "settle": {k: stats(v) for k, v in settle.items()}}
    env = {"python": platform.python_version(), "jax": __import__("jax").__version__, "cpus": os.cpu_count(),
           "machine": platform.machine(), "date": time.strftime("%Y-%m-%d"),
           "load_average_1min_at_end": round(os.getloadavg()[0], 2)}
    try:
        from importlib.metadata import version

        env["litellm"], env["redis_py"] = version("litellm"), version("redis")
        env["redis_server"] = subprocess.run(["redis-server", "--version"], capture_output=True,
                                             text=True).stdout.split()[2] if url else None
    except Exception:  # noqa: BLE001
        pass
    setup = {"requests": n, "n_models": N_MODELS, "n_clusters": N_CLUSTERS, "dim": DIM, "lam": lam,
             "budget": budget["budget"], "expected_requests": budget["expected_requests"], "hard_cap": True}
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_text(out_dir / "budget_overhead.json", json.dumps({"env": env, "setup": setup, **results}, indent=2) + "\n")
    md = render(env, setup, results)
    write_text(out_dir / "budget_overhead.md", md)
    print(md)
    return 0


def render(env, setup, results) -> str:
    fmt = lambda v: f"{v:,.0f}"
    rows = [f"| plugin `run`, {k} (embedding excluded) | {fmt(s['p50_us'])} | {fmt(s['p99_us'])} | {s['n']} |"
            for k, s in results["plugin_run"].items()]
    rows += [f"| correction after the call, {k} | {fmt(s['p50_us'])} | {fmt(s['p99_us'])} | {s['n']} |"
             for k, s in results["settle"].items()]
    base = results["plugin_run"]["fixed lambda"]["p50_us"]
    extra = "; ".join(f"{k}: +{s['p50_us'] - base:,.0f} us" for k, s in results["plugin_run"].items()
                      if k != "fixed lambda")
    return (f"# Budget pacing in the LiteLLM plugin: decision overhead\n\n"
            f"`python benchmarks/budget_overhead.py` on {env['date']}: {env['cpus']} CPU cores ({env['machine']}), "
            f"Python {env['python']}, LiteLLM {env.get('litellm', '?')}, redis-py {env.get('redis_py', '?')}, "
            f"redis-server {env.get('redis_server') or 'not run'} on 127.0.0.1. {setup['n_models']} deployments, "
            f"{setup['n_clusters']} clusters, {setup['requests']} requests per case, sequential, the cases "
            f"interleaved in blocks of 100; budget {setup['budget']:.4g} over {setup['expected_requests']} "
            f"requests, hard cap on.\n\n"
            "| per request | p50 (us) | p99 (us) | n |\n|---|---|---|---|\n" + "\n".join(rows) + "\n\n"
            f"Pacing adds, at p50, over the fixed lambda: {extra}. Through Redis that is one Lua script "
            f"round trip per decision (choice under the hard cap and the dual step, atomic) and one per "
            f"correction. Load average {env['load_average_1min_at_end']} on {env['cpus']} cores at the end of "
            f"the run.\n")


if __name__ == "__main__":
    raise SystemExit(main())
