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


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """A 3-cluster router, its 2-model pool, one built by another router of 3 clusters, and inputs."""
    d = tmp_path_factory.mktemp("small")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(90, 5)).astype(np.float32)
    router = ur.UniRouter.fit(x[:60], 3, n_init=1)
    router.save(d / "router.npz")
    np.save(d / "val.npy", x[60:])
    np.save(d / "obs.npy", x[:2])
    q = (rng.random((30, 2)) < [0.4, 0.8]).astype(float)
    np.save(d / "q.npy", q[:, 0])
    router.represent(x[60:], q, ["a", "b"], [1.0, 2.0]).save(d / "pool.npz")
    other = ur.UniRouter(router.centroids[::-1].copy(), router.metric, router.alpha)  # same K, other clusters
    other.represent(x[60:], q, ["a", "b"], [1.0, 2.0]).save(d / "foreign.npz")
    return d


@pytest.mark.parametrize("command", ["route", "sweep", "explain", "select-prompts", "add-model", "observe"])
def test_every_command_refuses_a_pool_another_router_built(small, tmp_path, capsys, command):
    d = small
    pool = tmp_path / "foreign.npz"
    pool.write_bytes((d / "foreign.npz").read_bytes())
    before = pool.read_bytes()
    common = ["-r", d / "router.npz", "-p", pool]
    argv = {"route": ["-e", d / "val.npy", "--lam", 0], "sweep": ["-e", d / "val.npy"], "explain": ["-e", d / "obs.npy"],
            "select-prompts": ["--candidates", d / "val.npy", "-n", 3, "--strategy", "informative"],
            "add-model": ["--val-embeddings", d / "val.npy", "--correctness", d / "q.npy", "--name", "c", "--cost", 1],
            "observe": ["-e", d / "obs.npy", "--model", "a", "--correct", "1,0"]}[command]
    code, out, err = run(capsys, command, *common, *argv)
    assert code == 2 and "another router" in err and "foreign.npz" in err and out == ""
    assert pool.read_bytes() == before


def test_prompt_files_split_on_newlines_only(tmp_path, capsys, monkeypatch):
    from uniroute_jax._src import cli

    # Form feed, U+2028 and U+0085 are characters of a prompt, not line breaks (str.splitlines
    # breaks on all three, so every later row would shift).
    prompts = ["page one\fpage two", "a line\u2028separator", "next\x85line"]
    (tmp_path / "p.txt").write_text("\r\n".join(prompts) + "\n", encoding="utf-8", newline="")
    assert cli.read_prompts(str(tmp_path / "p.txt")) == (None, prompts)
    jsonl = "".join(json.dumps({"prompt_id": f"id{i}", "text": t}, ensure_ascii=False) + "\n" for i, t in enumerate(prompts))
    assert "\u2028" in jsonl and "\x85" in jsonl  # raw inside JSON strings, as JSON allows
    (tmp_path / "p.jsonl").write_text(jsonl, encoding="utf-8")
    assert cli.read_prompts(str(tmp_path / "p.jsonl")) == (["id0", "id1", "id2"], prompts)
    monkeypatch.setattr(cli, "_embed_texts", lambda texts, args: np.ones((len(texts), 2), np.float32))
    code, _, err = run(capsys, "embed", tmp_path / "p.txt", "-o", tmp_path / "e.npy")
    assert code == 0 and np.load(tmp_path / "e.npy").shape == (3, 2), err


def test_a_lone_surrogate_in_jsonl_names_the_file_line_and_field(tmp_path, capsys):
    (tmp_path / "s.jsonl").write_text('{"text": "fine"}\n{"text": "half \\ud83d of a pair"}\n', encoding="utf-8")
    code, _, err = run(capsys, "embed", tmp_path / "s.jsonl", "-o", tmp_path / "e.npy")
    assert code == 2 and "s.jsonl line 2" in err and "'text'" in err and "surrogate" in err


def test_fit_names_the_file_and_row_of_an_all_zero_embedding(tmp_path, capsys):
    x = np.random.default_rng(0).normal(size=(20, 4)).astype(np.float32)
    x[7] = 0
    np.save(tmp_path / "z.npy", x)
    code, _, err = run(capsys, "fit", tmp_path / "z.npy", "-k", 2, "-o", tmp_path / "r.npz")
    assert code == 2 and f"{tmp_path / 'z.npy'}" in err and "row 7" in err
    with pytest.raises(ValueError, match=r"embeddings has 1 rows? .*row 7"):
        ur.UniRouter.fit(x, 2)


def test_add_model_and_observe_write_through_a_symlinked_pool(small, tmp_path, capsys):
    d = small
    store = tmp_path / "store"
    store.mkdir()
    (store / "pool.npz").write_bytes((d / "pool.npz").read_bytes())
    link = tmp_path / "pool.npz"
    link.symlink_to(store / "pool.npz")
    code, _, err = run(capsys, "add-model", "-r", d / "router.npz", "-p", link, "--val-embeddings", d / "val.npy",
                       "--correctness", d / "q.npy", "--name", "c", "--cost", 3)
    assert code == 0, err
    code, _, err = run(capsys, "observe", "-r", d / "router.npz", "-p", link, "-e", d / "obs.npy", "--model", "c",
                       "--correct", "1,0")
    assert code == 0, err
    assert link.is_symlink() and link.resolve() == (store / "pool.npz").resolve()
    pool = ur.Pool.load(store / "pool.npz")
    assert pool.names == ("a", "b", "c") and pool.counts[2].sum() == 30 + 2
    # The lock sits beside the real file, where every writer of it looks, and no temp file is left.
    assert sorted(p.name for p in store.iterdir()) == ["pool.npz", "pool.npz.lock"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pool.npz", "store"]


FIT_ONE_LONG_CHUNK = """
import sys
import numpy as np
from uniroute_jax._src import cli, kmeans as km
# Every restart runs all max_iter Lloyd iterations in one computation (as one iteration at a
# large K does), waited for by a copy to NumPy: native code that, like an XLA compile, lets no
# KeyboardInterrupt through until it returns. Ctrl-C must not wait for it to end.
km.CHUNK_WORK, km.CHUNK_ITERS = 1e30, 10**9
km._lloyd_running = lambda s, tol, max_iter: s.n_iter < max_iter
compiled_and_dispatched = km._lloyd_chunk


def lloyd_chunk(*args, **kwargs):
    out = compiled_and_dispatched(*args, **kwargs)  # returns while the computation runs
    print("[test] Lloyd chunk running", file=sys.stderr, flush=True)
    np.asarray(out[1])
    return out


km._lloyd_chunk = lloyd_chunk
sys.exit(cli.main())
"""


@pytest.mark.slow  # two fresh processes importing JAX
@pytest.mark.skipif(sys.platform == "win32", reason="SIGINT to a child is POSIX")
@pytest.mark.parametrize("line", ["[uniroute] k-means:", "[test] Lloyd chunk running"])
def test_ctrl_c_stops_a_long_fit_at_once_and_says_so(tmp_path, line):
    """SIGINT at the start of the fit (its first compiles), or while the main thread waits in native
    code for a computation that runs for many start-ups: the command stops within twice its own
    start-up time, prints one line and exits 130."""
    import os
    import signal
    import time
    from pathlib import Path

    np.save(tmp_path / "x.npy", np.random.default_rng(0).random((200_000, 32), np.float32))
    (tmp_path / "fit.py").write_text(FIT_ONE_LONG_CHUNK)
    env = {**os.environ, "PYTHONPATH": str(Path(ur.__file__).resolve().parents[1]), "JAX_PLATFORMS": "cpu"}
    t0 = time.monotonic()
    p = subprocess.Popen([sys.executable, str(tmp_path / "fit.py"), "fit", str(tmp_path / "x.npy"), "-k", "160",
                          "--n-init", "1", "-o", str(tmp_path / "r.npz")], env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    seen = []
    for text in p.stderr:  # ends early if the child dies
        seen.append(text)
        if text.startswith(line):
            break
    startup = time.monotonic() - t0  # imports, reading 25 MB and (second case) seeding and compiles
    p.send_signal(signal.SIGINT)
    try:
        _, rest = p.communicate(timeout=2 * startup)
    except subprocess.TimeoutExpired:
        p.kill()
        p.communicate()
        pytest.fail(f"still running {2 * startup:.1f} s after Ctrl-C (start-up took {startup:.1f} s)")
    err = "".join(seen) + rest
    assert p.returncode == 130, err
    assert err.splitlines()[-1].startswith("uniroute: interrupted: fit stopped") and "Traceback" not in err
    assert sorted(f.name for f in tmp_path.iterdir()) == ["fit.py", "x.npy"]  # no router, no temp file
