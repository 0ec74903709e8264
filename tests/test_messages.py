"""Wording of user-facing messages: counts take the right number, searched folders are listed once."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

import uniroute_jax as ur
from uniroute_jax._src import data
from uniroute_jax._src.estimators import represent_new

ROOT = Path(__file__).resolve().parents[1]


def test_one_label_is_singular():
    new = ur.Pool(["m"], [0.5], np.array([[0.5, 0.0, 0.2]]), np.array([[1.0, 0.0, 12.0]]),
                  np.array([[0.0, 0.0, 3.0]]))
    _, lines = represent_new(ur.Pool.empty(3), new, "mean")
    text = "\n".join(lines)
    assert "from 1 label\n" in text + "\n" and "from 0 labels" in text and "from 12 labels" in text
    assert not re.search(r"\b1 labels\b", text)
    single = ur.Pool(["m"], [0.5], np.array([[0.0]]), np.array([[1.0]]), np.array([[0.0]]))
    assert "'mean', 1 label;" in "\n".join(represent_new(ur.Pool.empty(1), single, "mean")[1])


def test_shared_data_folders_are_listed_once(monkeypatch, tmp_path):
    monkeypatch.delenv("UNIROUTE_DATA", raising=False)
    monkeypatch.chdir(ROOT)  # from the repository's root, ../shared/data is both the cwd's and the repo's
    found = data.shared_data_candidates()
    assert len(found) == 1 and found[0].resolve() == (ROOT / ".." / "shared" / "data").resolve()
    monkeypatch.setenv("UNIROUTE_DATA", str(ROOT / ".." / "shared" / "data"))
    assert len(data.shared_data_candidates()) == 1
    monkeypatch.setenv("UNIROUTE_DATA", str(tmp_path))
    monkeypatch.chdir(tmp_path)  # three different folders, in order
    found = [p.resolve() for p in data.shared_data_candidates()]
    assert found == [tmp_path.resolve(), (tmp_path / ".." / "shared" / "data").resolve(),
                     (ROOT / ".." / "shared" / "data").resolve()]


def test_demo_explains_its_columns_under_the_table(monkeypatch, capsys):
    from uniroute_jax._src import demo

    table = "| method | Area | Area(50%) | QNC | peak accuracy |"
    monkeypatch.setattr(demo, "run_demo", lambda seed, out_dir, log: demo.DemoResult(table, {}, None))
    assert demo.main(0, "unused") == 0
    out = capsys.readouterr().out
    assert out.index(table) < out.index("Area: ") < out.index("Area(50%): ") < out.index("QNC: ")
