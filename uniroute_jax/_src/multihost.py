"""Several JAX processes on one machine, as on several hosts: a sharded sweep and `evaluate` across them.

    python -m uniroute_jax._src.multihost --processes 4     # or: uniroute multihost --processes 4

starts `--processes` Python processes on 127.0.0.1, each with one CPU device, joined by
`jax.distributed.initialize` (a free port, CPU collectives over gloo). Together they run a sweep
whose pools are split over the processes' devices (`sharded_sweep`) and the evaluation protocol
whose trials are split the same way (`evaluate`); each process prints its results, and the
launcher checks that every process got the numbers one process computes alone. On real hosts the
same code runs with one process per host and the cluster's coordinator address.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time

import numpy as np

N_TRIALS = 4
METHODS = ("ZeroRouter", "K-NN", "UniRoute (K-Means)")


def _inputs():
    import uniroute_jax as ur

    rng = np.random.default_rng(1)
    n_units, n_models, n_pools, n_budgets = 9, 6, 13, 11
    est = rng.uniform(0, 1, (n_units, n_models)).astype(np.float32)
    costs = rng.uniform(0.1, 2.0, n_models).astype(np.float32)
    labels = rng.integers(0, n_units, 60)
    quality = (rng.random((60, n_models)) < 0.6).astype(np.float32)
    units = ur.make_units(labels, n_units=n_units, quality=quality, costs=costs)
    masks = rng.random((n_pools, n_models)) < 0.6
    masks[:, 0] = True
    return est, units, costs, ur.lambda_grid(costs, n_budgets), masks


def compute(sharded: bool) -> dict:
    """The numbers to compare: a sweep's curves and the protocol's per-trial Areas (JSON-ready)."""
    import uniroute_jax as ur
    from jax.experimental import multihost_utils

    est, units, costs, lams, masks = _inputs()
    if sharded:
        res = ur.sharded_sweep(est, units, costs, lams, pool_masks=masks, mesh=ur.pool_mesh())
        res = multihost_utils.process_allgather(res, tiled=True)
    else:
        res = ur.sweep(est, units, costs, lams, pool_masks=masks)
    dataset = ur.synthetic_dataset(0, n_prompts=600, n_models=6)
    config = ur.ProtocolConfig(n_trials=N_TRIALS, k_grid=(5, 10), knn_grid=(5, 20))
    ev = ur.evaluate(dataset, METHODS, config=config, progress=False)
    return {"sweep_cost": np.asarray(res.mean_cost).tolist(), "sweep_quality": np.asarray(res.mean_quality).tolist(),
            "area": {m: np.asarray(ev.metrics[m].area).tolist() for m in METHODS},
            "chosen_k": np.asarray(ev.chosen_k).tolist()}


def _worker(port: int, n_processes: int, process_id: int) -> None:
    import jax

    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=f"127.0.0.1:{port}", num_processes=n_processes,
                               process_id=process_id, initialization_timeout=120)
    out = {"process": jax.process_index(), "devices": jax.device_count(), **compute(sharded=True)}
    print("RESULT " + json.dumps(out), flush=True)
    jax.distributed.shutdown()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_processes(n_processes: int, *, timeout: float = 300.0) -> list[dict]:
    """Starts `n_processes` workers on 127.0.0.1 and returns each one's results, in process order.

    Every worker is stopped before this returns, also on a timeout, an error or Ctrl-C.
    """
    if not isinstance(n_processes, int) or isinstance(n_processes, bool) or n_processes < 1:
        raise ValueError(f"n_processes must be an int >= 1, got {n_processes!r}")
    port = free_port()
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    env.pop("XLA_FLAGS", None)  # one CPU device per process, as one host each
    procs = [subprocess.Popen([sys.executable, "-m", "uniroute_jax._src.multihost", "--worker", str(port),
                               str(n_processes), str(i)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env=env) for i in range(n_processes)]
    deadline = time.monotonic() + timeout
    results = []
    try:
        for i, p in enumerate(procs):
            out, err = p.communicate(timeout=max(1.0, deadline - time.monotonic()))
            if p.returncode != 0:
                raise RuntimeError(f"process {i} of {n_processes} exited with {p.returncode}: {err[-3000:]}")
            line = next((ln for ln in out.splitlines() if ln.startswith("RESULT ")), None)
            if line is None:
                raise RuntimeError(f"process {i} of {n_processes} printed no result: {err[-3000:]}")
            results.append(json.loads(line[len("RESULT "):]))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait()
    return results


def largest_gap(a, b) -> float:
    """Largest absolute difference between two nested JSON structures of numbers (NaN == NaN)."""
    if isinstance(a, dict):
        if set(a) != set(b):
            return float("inf")
        return max((largest_gap(a[k], b[k]) for k in a), default=0.0)
    x, y = np.asarray(a, float), np.asarray(b, float)
    if x.shape != y.shape:
        return float("inf")
    with np.errstate(invalid="ignore"):
        d = np.where((x == y) | (np.isnan(x) & np.isnan(y)), 0.0, np.abs(x - y))
    return float(np.max(d, initial=0.0))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Check that several JAX processes give one process's numbers.")
    ap.add_argument("--processes", type=int, default=2)
    ap.add_argument("--timeout", type=float, default=300.0)
    ap.add_argument("--worker", nargs=3, type=int, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        _worker(*args.worker)
        return 0
    start = time.perf_counter()
    results = run_processes(args.processes, timeout=args.timeout)
    reference = compute(sharded=False)
    ok = True
    for r in results:
        gap = largest_gap({k: r[k] for k in reference}, reference)
        ok &= gap <= 1e-5 and r["devices"] == args.processes and r["chosen_k"] == reference["chosen_k"]
        print(f"process {r['process']} of {args.processes} ({r['devices']} devices in all): largest difference "
              f"from one process {gap:.2e}, chosen K {'the same' if r['chosen_k'] == reference['chosen_k'] else 'DIFFERENT'}")
    print(f"{'same numbers' if ok else 'DIFFERENT numbers'} in {time.perf_counter() - start:.1f}s")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
