"""Cold start: the command line's start-up and the first requests through a real LiteLLM proxy.

    python benchmarks/cold_start.py [--source DIR] [--label NAME] [--repeats 3] [--out benchmarks/results]

Every case runs in fresh processes on 127.0.0.1 (no network), with the library imported from
`--source` (default: this checkout; give an unpacked older tree to measure it the same way):
  - `uniroute --help`;
  - `uniroute add-model` with the default estimator on small files (a 32-d router with 8
    clusters, a pool of 4 LLMs, 200 validation labels): with an empty compilation cache, then
    again with the cache the first call filled;
  - a LiteLLM proxy (`examples/litellm/config.yaml`: three mock deployments, the UniRoute plugin
    with all-MiniLM-L6-v2 on the CPU): seconds until it accepts connections, then the latency of
    one request of each of several prompt lengths (one length bucket each), in three starts:
    an empty cache with requests sent at once, the same after `--settle` seconds, and a restart
    on the cache the first starts filled, requests at once. Each length is then asked a second
    time (a compiled shape) for reference.
Each run's caches live in a fresh temporary folder (`UNIROUTE_CACHE_DIR`,
`UNIROUTE_COMPILATION_CACHE`). Results are merged by `--label` into `cold_start.json`, and
`cold_start.md` shows every label side by side.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import write_text  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "examples" / "litellm" / "config.yaml"
# Prompt lengths in words (about 1.3 tokens each): each lands in its own length bucket, the last
# is cut to 256 tokens.
LENGTHS = (6, 20, 45, 90, 160, 400)
WORDS = ["route", "model", "cost", "answer", "prompt", "cluster", "budget", "quality", "latency", "python",
         "function", "poem", "capital", "equation", "error", "river", "letter", "loop", "prime", "story"]

MAKE_FILES = """
import numpy as np, uniroute_jax as ur
w = ur.synthetic_world(0, n_prompts=1200, n_models=5, config=ur.WorldConfig(dim=32))
x, q = np.asarray(w.prompts.embeddings), np.asarray(w.quality)
r = ur.UniRouter.fit(x[:600], 8, seed=0, n_init=1)
r.save("router.npz")
r.represent(x[600:900], q[600:900, :4], [f"llm-{i}" for i in range(4)], np.asarray(w.llms.costs)[:4]).save("pool.npz")
np.save("val.npy", x[900:1100]); np.save("correct.npy", q[900:1100, 4])
from uniroute_jax.integrations._litellm_demo import write_demo_files
write_demo_files("demo")
"""
CLI = "import sys; from uniroute_jax._src.cli import main; sys.exit(main())"


def load() -> float:
    return round(os.getloadavg()[0], 2)


def run(cmd, env, cwd) -> float:
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True)
    took = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd} failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    return took


def cache_entries(folder: Path) -> int:
    return sum(1 for p in folder.glob("*-cache")) if folder.is_dir() else 0


def cli_cases(env, work: Path, repeats: int) -> dict:
    py = [sys.executable, "-c", CLI]
    helps = [run([*py, "--help"], env, work) for _ in range(repeats)]
    add = [*py, "add-model", "-r", "router.npz", "--val-embeddings", "val.npy", "--correctness", "correct.npy",
           "--name", "new", "--cost", "0.5"]
    out = {"help_s": helps, "help_median_s": statistics.median(helps), "load_before": load()}
    runs = []
    for i in range(1 + repeats):  # the first call starts on an empty compilation cache
        shutil.copy(work / "pool.npz", work / f"pool{i}.npz")
        runs.append(run([*add, "-p", f"pool{i}.npz"], env, work))
        if i == 0:
            out["cache_entries_after_first"] = cache_entries(Path(env["UNIROUTE_COMPILATION_CACHE"]))
    out.update(add_model_empty_cache_s=runs[0], add_model_warm_cache_s=runs[1:],
               add_model_warm_cache_median_s=statistics.median(runs[1:]), load_after=load())
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ask(port: int, key: str, text: str) -> tuple[float, dict]:
    body = json.dumps({"model": "uniroute", "messages": [{"role": "user", "content": text}]}).encode()
    req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/chat/completions", data=body, method="POST",
                                 headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"})
    start = time.perf_counter()
    with urllib.request.urlopen(req, timeout=300) as resp:
        resp.read()
        headers = dict(resp.headers)
    return time.perf_counter() - start, headers


def proxy_case(env, work: Path, settle: float) -> dict:
    port, key = free_port(), "sk-" + secrets.token_hex(8)
    demo = work / "demo"
    penv = {**env, "LITELLM_MASTER_KEY": key, "UNIROUTE_ROUTER": str(demo / "router.npz"),
            "UNIROUTE_POOL": str(demo / "pool.npz"), "UNIROUTE_LAM": "0.3"}
    exe = shutil.which("litellm", path=str(Path(sys.executable).parent))
    cmd = [exe] if exe else [sys.executable, "-c", "from litellm.proxy.proxy_cli import run_server; run_server()"]
    log = open(work / "proxy.log", "a")
    start = time.perf_counter()
    proc = subprocess.Popen([*cmd, "--config", str(CONFIG), "--host", "127.0.0.1", "--port", str(port)], cwd=work,
                            env=penv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    out = {"load_before": load()}
    try:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"the proxy exited with {proc.returncode}: see {work / 'proxy.log'}")
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                time.sleep(0.1)
        out["start_s"] = time.perf_counter() - start
        if settle:
            time.sleep(settle)
        rng_words = iter(range(10**6))
        texts = {n: " ".join(WORDS[(7 * next(rng_words)) % len(WORDS)] for _ in range(n)) for n in LENGTHS}
        first, again, models = {}, {}, {}
        t, _ = ask(port, key, "hi")  # LiteLLM's own first request (bucket 8, warmed by either version)
        out["first_request_hi_s"] = t
        for n, text in texts.items():
            first[n], headers = ask(port, key, text)
            models[n] = headers.get("x-uniroute-model"), headers.get("x-uniroute-fallback")
        for n, text in texts.items():
            again[n], _ = ask(port, key, text + " again")
        if any(m is None or f for m, f in models.values()):
            raise RuntimeError(f"a request was not routed by UniRoute: {models}")
        out.update(first_request_s={str(k): v for k, v in first.items()},
                   second_request_s={str(k): v for k, v in again.items()},
                   first_requests_total_s=sum(first.values()), load_after=load())
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()
    out["cache_entries_after"] = cache_entries(Path(env["UNIROUTE_COMPILATION_CACHE"]))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--source", default=str(ROOT), help="tree whose uniroute_jax is measured (default this one)")
    ap.add_argument("--label", default="this checkout")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--settle", type=float, default=120.0, help="seconds to wait before the second start's requests")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = ap.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="uniroute-cold-") as tmp:
        work = Path(tmp)
        env = {**os.environ, "PYTHONPATH": str(Path(args.source).resolve()),
               "UNIROUTE_CACHE_DIR": str(work / "cache"), "UNIROUTE_COMPILATION_CACHE": str(work / "jax_cache"),
               "LITELLM_LOCAL_MODEL_COST_MAP": "True", "JAX_PLATFORMS": "cpu", "HF_HUB_OFFLINE": "1"}
        for k in ("JAX_COMPILATION_CACHE_DIR", "UNIROUTE_WARM_UP"):
            env.pop(k, None)
        run([sys.executable, "-c", MAKE_FILES], env, work)
        shutil.rmtree(work / "jax_cache", ignore_errors=True)  # making the files compiled into it
        result = {"cli": cli_cases(env, work, args.repeats)}
        shutil.rmtree(work / "jax_cache", ignore_errors=True)
        result["proxy_empty_cache"] = proxy_case(env, work, 0.0)
        shutil.rmtree(work / "jax_cache", ignore_errors=True)
        result["proxy_empty_cache_settled"] = proxy_case(env, work, args.settle)
        result["proxy_restart_warm_cache"] = proxy_case(env, work, 0.0)

    import jax  # noqa: PLC0415
    result["env"] = {"python": platform.python_version(), "jax": jax.__version__, "cpus": os.cpu_count(),
                     "machine": platform.machine(), "date": time.strftime("%Y-%m-%d %H:%M"),
                     "source": str(Path(args.source).resolve()), "settle_s": args.settle,
                     "lengths_words": list(LENGTHS)}
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "cold_start.json"
    runs = json.loads(path.read_text()) if path.is_file() else {}
    runs[args.label] = result
    write_text(path, json.dumps(runs, indent=2) + "\n")
    md = render(runs)
    write_text(out_dir / "cold_start.md", md)
    print(md)
    return 0


def render(runs: dict) -> str:
    labels = list(runs)
    head = "| | " + " | ".join(labels) + " |\n|---|" + "---|" * len(labels)
    f = lambda v: f"{v:.2f}"
    rows = [("`uniroute --help` (median)", lambda r: f(r["cli"]["help_median_s"])),
            ("`uniroute add-model`, empty compilation cache", lambda r: f(r["cli"]["add_model_empty_cache_s"])),
            ("`uniroute add-model`, warm cache (median)", lambda r: f(r["cli"]["add_model_warm_cache_median_s"])),
            ("compilation-cache entries after the first `add-model`",
             lambda r: str(r["cli"].get("cache_entries_after_first", 0)))]
    for case, name in (("proxy_empty_cache", "proxy, empty cache, requests at once"),
                       ("proxy_empty_cache_settled", "proxy, empty cache, requests after the settle time"),
                       ("proxy_restart_warm_cache", "proxy restarted on the filled cache, requests at once")):
        rows.append((f"{name}: start until it accepts connections", lambda r, c=case: f(r[c]["start_s"])))
        rows.append((f"{name}: first request (\"hi\")", lambda r, c=case: f(r[c]["first_request_hi_s"])))
        rows.append((f"{name}: first request of each length, " + " / ".join(f"{n}" for n in LENGTHS) + " words",
                     lambda r, c=case: " / ".join(f(v) for v in r[c]["first_request_s"].values())))
        rows.append((f"{name}: their sum (second request of each length)",
                     lambda r, c=case: f"{r[c]['first_requests_total_s']:.2f} "
                                       f"({sum(r[c]['second_request_s'].values()):.2f})"))
    lines = ["# Cold start: the command line and the first requests through a LiteLLM proxy", "",
             "`python benchmarks/cold_start.py --label NAME [--source TREE]`; seconds, wall clock, each process "
             "fresh; columns are runs of the same script on the same machine.", "", head]
    lines += [f"| {name} | " + " | ".join(fn(runs[l]) for l in labels) + " |" for name, fn in rows]
    lines += ["", "| run | date | CPUs | jax | settle (s) | 1-min load average before / after each proxy start |",
              "|---|---|---|---|---|---|"]
    for l in labels:
        r, e = runs[l], runs[l]["env"]
        loads = ", ".join(f"{r[c]['load_before']} / {r[c]['load_after']}" for c in
                          ("proxy_empty_cache", "proxy_empty_cache_settled", "proxy_restart_warm_cache"))
        lines.append(f"| {l} | {e['date']} | {e['cpus']} | {e['jax']} | {e['settle_s']:g} | {loads} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
