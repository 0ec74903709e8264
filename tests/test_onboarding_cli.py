"""`uniroute add-model --estimator` from any number of labels, and `uniroute select-prompts`."""

import csv

import numpy as np
import pytest

import uniroute_jax as ur
from uniroute_jax._src.cli import main


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("onboard")
    w = ur.synthetic_world(2, n_prompts=700, n_models=5)
    e, q = np.asarray(w.prompts.embeddings), np.asarray(w.quality)
    np.save(d / "train.npy", e[:400])
    np.save(d / "val.npy", e[400:600])
    np.save(d / "cand.npy", e[600:])
    for m in range(5):
        np.save(d / f"q{m}.npy", q[400:600, m])
    return d


def _build(capsys, d, tmp_path, n_labels):
    """A pool built one LLM at a time through `add-model`, each LLM labelled on its first `n_labels`
    validation prompts; returns the last call's output."""
    assert run(capsys, "fit", d / "train.npy", "-k", 6, "-o", tmp_path / "r.npz")[0] == 0
    for m in range(5):
        q = np.load(d / f"q{m}.npy").astype(float)
        q[n_labels:] = np.nan
        np.save(tmp_path / f"q{m}.npy", q)
        code, out, err = run(capsys, "add-model", "-r", tmp_path / "r.npz", "-p", tmp_path / "p.npz",
                             "--val-embeddings", d / "val.npy", "--correctness", tmp_path / f"q{m}.npy",
                             "--name", f"m{m}", "--cost", m + 1)
        assert code == 0, err
    return out


# Behaviour change: add-model prints per-cluster intervals only once the pool's routing can be told
# from ZeroRouter's; before that it says so and how many labels would change it.
@pytest.mark.parametrize("n_labels", [1, 5])
def test_add_model_says_when_labels_are_too_few(files, capsys, n_labels, tmp_path):
    out = _build(capsys, files, tmp_path, n_labels)
    assert "estimator 'prior'" in out or "estimator 'shrinkage' ('prior' fell back" in out
    assert "routing gain of the pool over ZeroRouter" in out
    assert "cannot be told from ZeroRouter's" in out
    assert not any(line.strip().startswith("cluster ") for line in out.splitlines())
    assert "more labels per LLM" in out or "show no gain to resolve" in out
    pool = ur.Pool.load(tmp_path / "p.npz")
    assert pool.estimator == "prior" and pool.names == ("m0", "m1", "m2", "m3", "m4")
    assert np.all(pool.counts.sum(1) == n_labels) and np.all((pool.psi >= 0) & (pool.psi <= 1))


def test_add_model_prints_intervals_once_the_gain_is_resolved(files, capsys, tmp_path):
    out = _build(capsys, files, tmp_path, 200)
    gain = [line for line in out.splitlines() if line.startswith("routing gain")][0]
    lower = float(gain.split("[")[1].split(",")[0])
    assert lower > 0, gain
    assert "cannot be told" not in out
    assert sum(line.strip().startswith("cluster ") for line in out.splitlines()) == 6
    assert "more prompts" in out and "halve" in out


def test_labels_to_halve_inverts_the_width_model():
    from uniroute_jax._src.estimators import labels_to_halve

    widths, eff, masses = np.array([0.4, 0.2]), np.array([4.0, 30.0]), np.array([0.5, 0.5])
    n = labels_to_halve(widths, eff, masses)
    mean_width = lambda k: np.sum(0.5 * widths * np.sqrt(eff / (eff + k * 0.5)))
    assert mean_width(n) <= 0.5 * np.sum(0.5 * widths) < mean_width(n - 1)


def test_select_prompts_command(files, capsys, tmp_path):
    d = files
    assert run(capsys, "fit", d / "train.npy", "-k", 6, "-o", tmp_path / "r.npz")[0] == 0
    code, out, err = run(capsys, "select-prompts", "-r", tmp_path / "r.npz", "--candidates", d / "cand.npy", "-n", 7)
    rows = list(csv.DictReader(out.splitlines()))
    assert code == 0 and len(rows) == 7 and len({r["prompt"] for r in rows}) == 7
    code, _, err = run(capsys, "select-prompts", "-r", tmp_path / "r.npz", "--candidates", d / "cand.npy", "-n", 7,
                       "--strategy", "informative")
    assert code == 2 and "informative" in err
    code, _, err = run(capsys, "select-prompts", "-r", tmp_path / "r.npz", "--candidates", d / "cand.npy", "-n", 1000)
    assert code == 2 and "n must be" in err
