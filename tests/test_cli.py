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


def test_fit_with_a_seeding_sample(files, capsys):
    d = files
    code, _, err = run(capsys, "fit", d / "train.npy", "-k", 5, "-o", d / "sampled.npz", "--init-sample", 200)
    assert code == 0 and "[kmeans] k-means++ seeding on 200 points: 5/5 centroids" in err
    x = np.load(d / "train.npy")
    want = ur.UniRouter.fit(x, 5, init_sample=200)  # the CLI's defaults otherwise
    np.testing.assert_array_equal(ur.UniRouter.load(d / "sampled.npz").centroids, want.centroids)
    code, _, err = run(capsys, "fit", d / "train.npy", "-k", 5, "-o", d / "bad.npz", "--init-sample", 3)
    assert code != 0 and "init_sample must be >= n_clusters (5), got 3" in err


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


def test_text_in_model_out_round_trip(tmp_path, capsys):
    """fit and add-model on embedded texts, then `route --texts`: names come back per prompt."""
    from uniroute_jax._src.embedding import resolve_model_dir

    try:
        resolve_model_dir(download=False)
    except FileNotFoundError as err:
        pytest.skip(f"no local all-MiniLM-L6-v2 folder: {str(err).splitlines()[0]}")
    embedder = ur.TextEmbedder(cache_dir=tmp_path / "cache", progress=False)
    maths = [f"What is {a} plus {b}?" for a, b in zip(range(8), range(3, 11))]
    poems = [f"Write a short poem about the {w}." for w in ("sea", "moon", "sun", "rain", "wind", "snow", "fire", "sky")]
    x = embedder(maths + poems)
    np.save(tmp_path / "train.npy", x)
    np.save(tmp_path / "val.npy", x)
    good_at_maths = np.array([1.0] * 8 + [0.0] * 8)
    np.save(tmp_path / "maths.npy", good_at_maths)
    np.save(tmp_path / "poet.npy", 1 - good_at_maths)
    d = tmp_path
    assert run(capsys, "fit", d / "train.npy", "-k", 2, "-o", d / "r.npz", "--n-init", 5)[0] == 0
    for name, f in (("calculator", "maths.npy"), ("poet", "poet.npy")):
        assert run(capsys, "add-model", "-r", d / "r.npz", "-p", d / "p.npz", "--val-embeddings", d / "val.npy",
                   "--correctness", d / f, "--name", name, "--cost", 1)[0] == 0
    (d / "q.jsonl").write_text('{"text": "What is 12 plus 30?"}\n{"prompt": "Write a short poem about the stars."}\n')
    code, out, err = run(capsys, "route", "-r", d / "r.npz", "-p", d / "p.npz", "--texts", d / "q.jsonl", "--lam", 0)
    assert code == 0, err
    assert [r["model"] for r in csv.DictReader(out.splitlines())] == ["calculator", "poet"]
    # The same through the Python one-liner of the README.
    router, pool = ur.UniRouter.load(d / "r.npz"), ur.Pool.load(d / "p.npz")
    assert router.route(ur.embed_texts(["What is 7 plus 1?"], embedder), pool, lam=0.0).model[0] == "calculator"
