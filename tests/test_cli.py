import csv
import json
import subprocess
import sys

import numpy as np
import pytest

import uniroute_jax as ur
from uniroute_jax._src.cli import main


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    w = ur.synthetic_world(1, n_prompts=1200, n_models=3)
    e, q = np.asarray(w.prompts.embeddings), np.asarray(w.quality)
    np.save(d / "train.npy", e[:700])
    np.savez(d / "val.npz", embeddings=e[700:900])
    np.savetxt(d / "test.csv", e[900:], delimiter=",")
    with open(d / "q0.csv", "w") as f:  # a header and one missing label
        f.write("correct\n\n" + "\n".join(str(v) for v in q[701:900, 0]) + "\n")
    np.save(d / "q1.npy", q[700:900, 1])
    np.save(d / "q_test.npy", q[900:, :2])
    return d


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_fit_add_route_sweep(files, capsys):
    d = files
    assert run(capsys, "fit", d / "train.npy", "-k", 5, "-o", d / "router.npz")[0] == 0
    for name, q, cost in (("cheap", "q0.csv", 0.1), ("dear", "q1.npy", 1.0)):
        code, out, _ = run(capsys, "add-model", "-r", d / "router.npz", "-p", d / "pool.npz", "--val-embeddings",
                           d / "val.npz", "--correctness", d / q, "--name", name, "--cost", cost)
        assert code == 0 and name in out
    pool = ur.Pool.load(d / "pool.npz")
    assert pool.names == ("cheap", "dear")
    assert pool.counts[0].sum() == 199  # the blank cell is a missing label

    code, out, _ = run(capsys, "route", "-r", d / "router.npz", "-p", d / "pool.npz", "-e", d / "test.csv",
                       "--lam", 0.0)
    rows = list(csv.DictReader(out.splitlines()))
    assert code == 0 and len(rows) == 300 and {r["model"] for r in rows} <= {"cheap", "dear"}
    router = ur.UniRouter.load(d / "router.npz")
    expected = router.route(np.loadtxt(d / "test.csv", delimiter=","), pool, 0.0).model
    assert [r["model"] for r in rows] == list(expected)

    code, _, _ = run(capsys, "route", "-r", d / "router.npz", "-p", d / "pool.npz", "-e", d / "test.csv",
                     "--lam", 5, "-o", d / "out.jsonl")
    lines = [json.loads(l) for l in (d / "out.jsonl").read_text().splitlines()]
    assert code == 0 and lines[0].keys() == {"prompt", "model", "cluster"}

    code, out, _ = run(capsys, "sweep", "-r", d / "router.npz", "-p", d / "pool.npz", "-e", d / "test.csv",
                       "-q", d / "q_test.npy", "--n-budgets", 16, "--plot", d / "sweep.png")
    rows = list(csv.DictReader(out.splitlines()))
    assert code == 0 and len(rows) == 16
    costs = [float(r["mean_cost"]) for r in rows]
    assert costs == sorted(costs, reverse=True) and (d / "sweep.png").stat().st_size > 1000


@pytest.mark.parametrize("argv, match", [
    (["route", "-r", "R", "-p", "P", "-e", "missing.npy", "--lam", "1"], "no router file"),
    (["fit", "missing.npy", "-k", "3", "-o", "x.npz"], "no such file"),
    (["route", "-r", "{d}/router.npz", "-p", "{d}/pool.npz", "-e", "{d}/test.csv", "--lam", "1", "--models", "gpt"],
     "not in the pool"),
    (["route", "-r", "{d}/router.npz", "-p", "{d}/pool.npz", "-e", "{d}/q1.npy", "--lam", "1"], "2 dimensions"),
    (["route", "-r", "{d}/router.npz", "-p", "{d}/pool.npz", "-e", "{d}/test.csv", "--lam", "-1"], "lam must be"),
    (["route", "-r", "{d}/pool.npz", "-p", "{d}/pool.npz", "-e", "{d}/test.csv", "--lam", "1"], "not a 'router'"),
    (["add-model", "-r", "{d}/router.npz", "-p", "{d}/pool.npz", "--val-embeddings", "{d}/val.npz",
      "--correctness", "{d}/q1.npy", "--name", "cheap", "--cost", "1"], "already in"),
    (["add-model", "-r", "{d}/router.npz", "-p", "{d}/pool2.npz", "--val-embeddings", "{d}/val.npz",
      "--correctness", "{d}/q_test.npy", "--name", "x", "--cost", "1"], "one value per validation prompt"),
])
def test_errors_are_one_line_and_nonzero(files, capsys, argv, match):
    if not (files / "router.npz").exists():
        pytest.skip("needs test_fit_add_route_sweep to have written the router")
    code, _, err = run(capsys, *[a.format(d=files) for a in argv])
    assert code == 2
    assert err.startswith("uniroute: error:") and err.count("\n") == 1 and match in err
    assert "Traceback" not in err


def test_help_everywhere():
    for sub in ([], ["demo"], ["fit"], ["add-model"], ["route"], ["sweep"]):
        res = subprocess.run([sys.executable, "-m", "uniroute_jax._src.cli", *sub, "--help"], capture_output=True,
                             text=True)
        assert res.returncode == 0 and "usage: uniroute" in res.stdout


@pytest.mark.slow
def test_demo_runs_and_beats_zero_router(tmp_path):
    from uniroute_jax._src.demo import run_demo

    res = run_demo(0, n_prompts=3000, n_models=24, n_clusters=12, n_pools=4, n_budgets=64, out_dir=tmp_path,
                   log=lambda m: None)
    assert res.plot.exists()
    # The oracle bounds every router; UniRoute uses prompt features, ZeroRouter does not.
    assert np.all(res.area["Oracle"] >= res.area["UniRoute (K-Means)"] - 1e-6)
    assert res.area["UniRoute (K-Means)"].mean() > res.area["ZeroRouter"].mean()
    assert "| UniRoute (K-Means) |" in res.table
