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
    w = ur.synthetic_world(2, n_prompts=700, n_models=4)
    e, q = np.asarray(w.prompts.embeddings), np.asarray(w.quality)
    np.save(d / "train.npy", e[:400])
    np.save(d / "val.npy", e[400:600])
    np.save(d / "cand.npy", e[600:])
    for m in range(4):
        np.save(d / f"q{m}.npy", q[400:600, m])
    return d


@pytest.mark.parametrize("n_labels", [1, 5, 20])
def test_add_model_from_few_labels_reports_intervals(files, capsys, n_labels, tmp_path):
    d = files
    assert run(capsys, "fit", d / "train.npy", "-k", 6, "-o", tmp_path / "r.npz")[0] == 0
    for m in (0, 1, 2):
        assert run(capsys, "add-model", "-r", tmp_path / "r.npz", "-p", tmp_path / "p.npz", "--val-embeddings",
                   d / "val.npy", "--correctness", d / f"q{m}.npy", "--name", f"m{m}", "--cost", m + 1)[0] == 0
    q = np.load(d / "q3.npy").astype(float)
    q[n_labels:] = np.nan
    np.save(tmp_path / "few.npy", q)
    code, out, err = run(capsys, "add-model", "-r", tmp_path / "r.npz", "-p", tmp_path / "p.npz", "--val-embeddings",
                         d / "val.npy", "--correctness", tmp_path / "few.npy", "--name", "new", "--cost", 0.5,
                         "--estimator", "prior")
    assert code == 0, err
    assert "estimator 'prior'" in out and f"{n_labels} labels" in out
    assert sum(line.strip().startswith("cluster ") for line in out.splitlines() if "interval" not in line) >= 6
    assert "more prompts" in out and "halve" in out
    pool = ur.Pool.load(tmp_path / "p.npz")
    psi = pool.psi[pool.names.index("new")]
    assert np.all((psi >= 0) & (psi <= 1)) and pool.counts[pool.names.index("new")].sum() == n_labels


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
