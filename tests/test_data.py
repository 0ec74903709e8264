"""Tests for the dataset type and its loaders.

Every format is exercised on tiny files written into `tmp_path`; the staged shared folders are
checked when present (skipped otherwise).
"""

from __future__ import annotations

import dataclasses
import os
import re
import textwrap
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from uniroute_jax._src import data
from uniroute_jax._src.data import RoutingDataset

settings.register_profile("data", derandomize=True, deadline=None, database=None,
                          max_examples=200)


def _shared_root() -> Path | None:
    for candidate in (os.environ.get("UNIROUTE_DATA"),
                      Path(__file__).parents[1] / ".." / "shared" / "data"):
        if candidate and (Path(candidate) / "routerbench_partial").is_dir():
            return Path(candidate)
    return None


SHARED = _shared_root()
needs_shared = pytest.mark.skipif(
    SHARED is None, reason="shared data not found (set UNIROUTE_DATA or place it at ../shared/data "
                           "next to the repository)")


def _write(folder: Path, files: dict[str, str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        (folder / name).write_text(textwrap.dedent(content).lstrip("\n"), encoding="utf-8")
    return folder


GOOD = {
    "prompts.csv": """
        prompt_id,text,task,split
        p1,"What is 2+2?",math,train
        p2,"Say ""hi"", politely
        on two lines",chat,test
        p3,Unlabelled prompt,chat,train
        """,
    "quality.csv": """
        prompt_id,big,small
        p1,1,0
        p2,0.75,
        """,
    "models.csv": """
        model,cost
        small,0.5
        big,2
        """,
}


def _small_dataset(rng=None, per_prompt=False, embeddings=True) -> RoutingDataset:
    rng = rng or np.random.default_rng(0)
    n, m = 5, 3
    mask = rng.random((n, m)) < 0.7
    quality = np.where(mask, rng.random((n, m)), 0).astype(np.float32)
    quality[0, 0], mask[0, 0] = 1 / 3, True
    costs = rng.random((n, m)) * 1e-3 if per_prompt else np.array([0.1, 1e-7, 3.0])
    return RoutingDataset(
        name="small", prompt_ids=np.array([f"q{i}" for i in range(n)]), quality=quality,
        label_mask=mask, costs=costs, model_names=("m,1", "m\"2", "m3"),
        texts=("plain", "comma, inside", "quote \" and\nnewline", "ünïcödé 🙂", ""),
        tasks=np.array(["a", "b", "a", "b", "a"]), splits=np.array(["train"] * 3 + ["test"] * 2),
        embeddings=rng.normal(size=(n, 4)).astype(np.float32) if embeddings else None)


def _assert_same(a: RoutingDataset, b: RoutingDataset) -> None:
    for f in dataclasses.fields(RoutingDataset):
        x, y = getattr(a, f.name), getattr(b, f.name)
        if isinstance(x, np.ndarray):
            assert x.dtype == y.dtype and x.shape == y.shape, f.name
            np.testing.assert_array_equal(x, y, err_msg=f.name)
        else:
            assert x == y, f.name


# ------------------------------------------------------------------------------------------------
# RoutingDataset
# ------------------------------------------------------------------------------------------------


def test_dataset_normalises_and_freezes():
    ds = RoutingDataset(name="t", prompt_ids=["a", "b"], quality=[[1, np.nan], [0.5, 0.2]],
                        label_mask=[[True, False], [True, True]], costs=[1, 2],
                        model_names=["x", "y"])
    assert ds.quality.dtype == np.float32 and ds.quality[0, 1] == 0.0
    assert ds.costs.dtype == np.float64 and ds.model_names == ("x", "y")
    assert (ds.n_prompts, ds.n_models) == (2, 2)
    with pytest.raises(ValueError, match="read-only"):
        ds.quality[0, 0] = 0.3
    with pytest.raises(dataclasses.FrozenInstanceError):
        ds.name = "u"
    assert "n_prompts=2, n_models=2" in repr(ds)


@pytest.mark.parametrize("change, error, match", [
    (dict(quality=[[1.5, 0], [0, 0]]), ValueError, r"quality must lie in \[0, 1\]"),
    (dict(quality=[[np.nan, 0], [0, 0]]), ValueError, "quality is NaN at labelled entry"),
    (dict(quality=[[1, 0]]), ValueError, r"quality must have shape \(2, 2\)"),
    (dict(costs=[1, -1]), ValueError, "costs must be >= 0"),
    (dict(costs=[1, np.inf]), ValueError, "costs must be finite"),
    (dict(costs=[1, 2, 3]), ValueError, r"costs must have shape \(2,\) or \(2, 2\)"),
    (dict(model_names=("x", "x")), ValueError, "model_names must be unique"),
    (dict(prompt_ids=["a", "a"]), ValueError, "prompt_ids must be unique"),
    (dict(texts=("only one",)), ValueError, "texts must have 2 entries"),
    (dict(tasks=["t"]), ValueError, "tasks must have 2 entries"),
    (dict(embeddings=np.zeros((3, 4))), ValueError, r"embeddings must have shape \(2, \*\)"),
    (dict(label_mask=[[1, 2], [0, 0]]), TypeError, "label_mask must be a boolean mask"),
])
def test_dataset_rejects_bad_fields(change, error, match):
    base = dict(name="t", prompt_ids=["a", "b"], quality=np.zeros((2, 2)),
                label_mask=np.ones((2, 2), bool), costs=[1.0, 2.0], model_names=("x", "y"))
    with pytest.raises(error, match=match):
        RoutingDataset(**{**base, **change})


def test_model_costs_average_labelled_prompts():
    ds = RoutingDataset(name="t", prompt_ids=["a", "b", "c"], quality=np.zeros((3, 2)),
                        label_mask=[[1, 0], [1, 0], [0, 0]],
                        costs=[[1.0, 5.0], [3.0, 7.0], [100.0, 9.0]], model_names=("x", "y"))
    np.testing.assert_allclose(ds.model_costs, [2.0, 7.0])  # y has no label: mean of all
    assert ds.prompt_costs.shape == (3, 2)
    flat = dataclasses.replace(ds, costs=[1.0, 2.0])
    np.testing.assert_array_equal(flat.prompt_costs, [[1, 2]] * 3)


def test_subset_and_with_embeddings():
    ds = _small_dataset(per_prompt=True)
    sub = ds.subset(prompts=ds.splits == "test", models=["m3", "m,1"])
    assert sub.prompt_ids.tolist() == ["q3", "q4"] and sub.model_names == ("m3", "m,1")
    np.testing.assert_array_equal(sub.quality, ds.quality[3:, [2, 0]])
    np.testing.assert_array_equal(sub.costs, ds.costs[3:, [2, 0]])
    assert sub.texts == ds.texts[3:] and sub.embeddings.shape == (2, 4)
    assert ds.subset(prompts=["q2", "q0"]).prompt_ids.tolist() == ["q2", "q0"]
    assert ds.subset(models=[-1]).model_names == ("m3",)
    assert ds.subset(prompts=[]).n_prompts == 0
    with pytest.raises(ValueError, match=r"models names unknown models: \['nope'\]"):
        ds.subset(models=["nope"])
    with pytest.raises(ValueError, match=r"prompts as a mask must have shape \(5,\)"):
        ds.subset(prompts=np.ones(4, bool))
    with pytest.raises(ValueError, match="prompts values must be in"):
        ds.subset(prompts=[7])
    new = ds.with_embeddings(np.ones((5, 2)))
    assert new.embeddings.shape == (5, 2) and ds.embeddings.shape == (5, 4)
    with pytest.raises(ValueError, match="embeddings must have shape"):
        ds.with_embeddings(np.ones((4, 2)))


# ------------------------------------------------------------------------------------------------
# Generic folder format
# ------------------------------------------------------------------------------------------------


def test_load_folder(tmp_path):
    ds = data.load_folder(_write(tmp_path / "toy", GOOD))
    assert ds.name == "toy" and ds.model_names == ("small", "big")
    assert ds.prompt_ids.tolist() == ["p1", "p2", "p3"]
    assert ds.texts[1] == 'Say "hi", politely\non two lines'
    np.testing.assert_array_equal(ds.quality, [[0, 1], [0, 0.75], [0, 0]])
    np.testing.assert_array_equal(ds.label_mask, [[1, 1], [0, 1], [0, 0]])
    np.testing.assert_array_equal(ds.costs, [0.5, 2.0])
    assert ds.tasks.tolist() == ["math", "chat", "chat"] and ds.splits[2] == "train"
    assert ds.embeddings is None


def test_load_folder_optional_files(tmp_path):
    folder = _write(tmp_path / "toy", {**GOOD, "costs.csv": """
        prompt_id,small,big
        p1,0.1,
        p3,0.3,3
        """, "prompts.csv": "prompt_id\np1\np2\np3\n"})
    np.save(folder / "embeddings.npy", np.arange(6, dtype=np.float32).reshape(3, 2))
    ds = data.load_folder(folder)
    assert ds.texts is None and ds.tasks is None
    np.testing.assert_array_equal(ds.costs, [[0.1, 2.0], [0.5, 2.0], [0.3, 3.0]])
    assert ds.embeddings.shape == (3, 2)
    np.save(folder / "embeddings.npy", np.zeros((2, 2)))
    with pytest.raises(ValueError, match=r"embeddings.npy: expected shape \(3, dim\)"):
        data.load_folder(folder)


@pytest.mark.parametrize("per_prompt", [False, True])
def test_folder_round_trip_is_exact(tmp_path, per_prompt):
    ds = _small_dataset(per_prompt=per_prompt)
    data.save_folder(ds, tmp_path / "small")
    _assert_same(ds, data.load_folder(tmp_path / "small"))
    with pytest.raises(FileExistsError, match="overwrite=True"):
        data.save_folder(ds, tmp_path / "small")
    # Overwriting with a dataset lacking the optional parts removes the stale files.
    bare = dataclasses.replace(ds, costs=ds.model_costs, embeddings=None, texts=None)
    data.save_folder(bare, tmp_path / "small", overwrite=True)
    _assert_same(bare, data.load_folder(tmp_path / "small"))


@settings(settings.get_profile("data"))
@given(st.floats(0, 1, width=32), st.floats(0, 1e6, allow_subnormal=True))
def test_number_text_round_trips(q, c):
    assert np.float32(float(data._fmt(q, True))) == np.float32(q)
    assert float(data._fmt(c, False)) == c


BAD_CASES = [
    ("quality.csv", None, r"quality.csv: file not found"),
    ("prompts.csv", "id,text\np1,x\n", r"prompts.csv: missing column\(s\) \['prompt_id'\]"),
    ("models.csv", "model,price\nbig,1\n", r"models.csv: missing column\(s\) \['cost'\]"),
    ("quality.csv", "prompt_id,big,small,huge\np1,1,0,1\n",
     r"quality.csv: model column\(s\) \['huge'\] are not listed in .*models.csv"),
    ("quality.csv", "prompt_id,big\np1,1\n",
     r"quality.csv: model\(s\) \['small'\] listed in .*models.csv have no column"),
    ("quality.csv", "prompt_id,big,small\np1,1,0\np2,abc,1\n",
     r"quality.csv, line 3, column 'big': quality 'abc' is not a number"),
    ("quality.csv", "prompt_id,big,small\np1,1,1.5\n",
     r"quality.csv, line 2, column 'small': quality must be in \[0, 1\], got '1.5'"),
    ("quality.csv", "prompt_id,big,small\np9,1,1\n",
     r"quality.csv, line 2, column 'prompt_id': prompt id 'p9' is not in .*prompts.csv"),
    ("quality.csv", "prompt_id,big,small\np1,1,1\np1,0,0\n",
     r"quality.csv, line 3, column 'prompt_id': duplicate prompt id 'p1' \(first at line 2\)"),
    ("quality.csv", "prompt_id,big,small\np1,1\n", r"quality.csv, line 2: expected 3 cells"),
    ("prompts.csv", "prompt_id,text\np1,a\np2,b\np1,c\n",
     r"prompts.csv, line 4, column 'prompt_id': duplicate prompt id 'p1' \(first at line 2\)"),
    ("models.csv", "model,cost\nsmall,-1\nbig,1\n",
     r"models.csv, line 2, column 'cost': cost must be finite and >= 0"),
    ("models.csv", "model,cost\nsmall,cheap\nbig,1\n",
     r"models.csv, line 2, column 'cost': cost 'cheap' is not a number"),
    ("models.csv", "model,cost\nsmall,1\nsmall,2\n", r"models.csv, line 3, .*duplicate model"),
    ("models.csv", "", r"models.csv: file is empty"),
]


@pytest.mark.parametrize("name, content, match", BAD_CASES)
def test_load_folder_errors_name_file_line_and_column(tmp_path, name, content, match):
    folder = _write(tmp_path / "bad", GOOD)
    if content is None:
        (folder / name).unlink()
    else:
        (folder / name).write_text(content, encoding="utf-8")
    with pytest.raises(ValueError, match=match):
        data.load_folder(folder)


def test_a_file_that_is_not_utf8_names_the_file_line_and_byte(tmp_path):
    folder = _write(tmp_path / "bad", GOOD)
    (folder / "prompts.csv").write_bytes("prompt_id,text\np1,tea\np2,caf\xe9 au lait\np3,x\n".encode("latin-1"))
    with pytest.raises(ValueError, match=r"prompts.csv, line 3: not UTF-8 text \(byte 0xe9 at offset 28\)"):
        data.load_folder(folder)


@settings(settings.get_profile("data"))
@given(st.text(alphabet="ab \n\r\f\v\x1c\x1d\x1e\x85\u2028\u2029"))
def test_split_lines_breaks_on_newline_only(text):
    # Twin: a regular expression over "\n" and "\r\n", the only line ends of a prompt file.
    want = re.split(r"\r?\n", text)
    if want[-1] == "":
        want.pop()
    assert data.split_lines(text) == want


def test_load_folder_missing_folder(tmp_path):
    with pytest.raises(ValueError, match="dataset folder not found"):
        data.load_folder(tmp_path / "nowhere")


# ------------------------------------------------------------------------------------------------
# Shared folders
# ------------------------------------------------------------------------------------------------


@needs_shared
def test_routerbench_partial_shapes():
    ds = data.load_routerbench_partial(SHARED / "routerbench_partial")
    assert (ds.n_prompts, ds.n_models) == (3150, 11)
    assert ds.costs.shape == (3150, 11) and ds.label_mask.all()
    assert set(np.unique(ds.quality)) <= {0.0, 1.0}
    assert set(ds.tasks) == {"arc-challenge", "mbpp", "winogrande"}
    assert (ds.splits == "train").sum() == 1019 + 299 + 887
    assert "gpt-4-1106-preview" in ds.model_names and len(ds.texts) == 3150
    np.testing.assert_allclose(ds.model_costs.min(), 8.1e-5, rtol=0.05)


@needs_shared
def test_alpacaeval_shapes():
    ds = data.load_shared("alpacaeval", SHARED)
    assert (ds.n_prompts, ds.n_models) == (805, 48) and ds.costs.shape == (48,)
    for dropped in ("NullModel", "gpt4_gamed", "gpt4_1106_preview", "alpaca-7b_concise",
                    "alpaca-7b_verbose"):
        assert dropped not in ds.model_names
    assert np.all(ds.costs > 0) and ds.quality.max() <= 1.0
    assert set(ds.tasks) == {"helpful_base", "koala", "oasst", "selfinstruct", "vicuna"}
    ae1 = data.load_alpacaeval(SHARED, version=1)
    assert ae1.n_prompts == 805 and not ae1.label_mask.all()  # 0 and NaN cells are missing


@needs_shared
def test_routerdc_shapes():
    ds = data.load_shared("routerdc", SHARED)
    assert (ds.n_prompts, ds.n_models) == (20600, 7)
    np.testing.assert_array_equal(ds.costs, np.ones(7))
    mc = np.isin(ds.tasks, data.ROUTERDC_MULTIPLE_CHOICE)
    assert set(np.unique(ds.quality[mc])) == {0.0, 1.0}
    assert (ds.splits == "ood").sum() == 871 + 500 + 1346
    assert len(set(ds.prompt_ids.tolist())) == 20600


def test_load_shared_reports_where_it_looked(tmp_path, monkeypatch):
    monkeypatch.setenv("UNIROUTE_DATA", str(tmp_path / "env"))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(data, "__file__", str(tmp_path / "a" / "b" / "c" / "data.py"))
    with pytest.raises(FileNotFoundError) as info:
        data.load_shared("routerbench_partial")
    msg = str(info.value)
    assert str(tmp_path / "env") in msg and "UNIROUTE_DATA" in msg and "root=" in msg
    with pytest.raises(ValueError, match="name must be one of"):
        data.load_shared("mmlu")


def test_load_shared_uses_env_var(tmp_path, monkeypatch):
    npz = tmp_path / "routerbench_partial"
    npz.mkdir()
    np.savez(npz / "routerbench_partial.npz", scores=np.array([[1.0, 0.0]], np.float32),
             costs=np.array([[0.1, 0.2]]), models=np.array(["a", "b"]),
             sample_id=np.array(["s1"]), eval_name=np.array(["mbpp"]), split=np.array(["test"]))
    _write(npz, {"prompts.csv": "row,sample_id,eval_name,split,prompt\n0,s1,mbpp,test,hi\n"})
    monkeypatch.setenv("UNIROUTE_DATA", str(tmp_path))
    ds = data.load_shared("routerbench_partial")
    assert ds.texts == ("hi",) and ds.costs.shape == (1, 2)


# ------------------------------------------------------------------------------------------------
# EmbedLLM layout
# ------------------------------------------------------------------------------------------------


EMBEDLLM = {
    "model_order.csv": """
        model_id,model_name
        0,Llama-2-7b-chat
        1,Mixtral-8x7B-Instruct
        2,phi-2-2.7B
        """,
    "question_order.csv": """
        prompt_id,prompt,category
        0,What is 1+1?,math
        1,Name a colour.,chat
        2,Capital of Peru?,geo
        3,Unused prompt,geo
        """,
    "train.csv": """
        model_id,prompt_id,label
        0,0,1
        1,0,0
        2,0,1
        0,1,0
        1,1,1
        """,
    "val.csv": """
        model_id,prompt_id,label
        0,2,1
        1,2,1
        """,
    "test.csv": """
        model_id,prompt_id,label
        2,1,0
        """,
}


def test_load_embedllm(tmp_path):
    ds = data.load_embedllm(_write(tmp_path / "e", EMBEDLLM))
    assert ds.model_names == ("Llama-2-7b-chat", "Mixtral-8x7B-Instruct", "phi-2-2.7B")
    assert ds.prompt_ids.tolist() == ["0", "1", "2", "3"]
    np.testing.assert_array_equal(ds.label_mask, [[1, 1, 1], [1, 1, 1], [1, 1, 0], [0, 0, 0]])
    np.testing.assert_array_equal(ds.quality[:3], [[1, 0, 1], [0, 1, 0], [1, 1, 0]])
    assert ds.splits.tolist() == ["train", "train+test", "val", ""]
    assert ds.tasks.tolist() == ["math", "chat", "geo", "geo"]
    assert ds.texts[2] == "Capital of Peru?"
    np.testing.assert_array_equal(ds.costs, [1, 1, 1])
    sized = data.load_embedllm(tmp_path / "e", costs="param_count")
    np.testing.assert_allclose(sized.costs, [7, 56, 2.7])
    mapped = data.load_embedllm(tmp_path / "e", costs={n: i for i, n in enumerate(ds.model_names)})
    np.testing.assert_array_equal(mapped.costs, [0, 1, 2])


def test_load_embedllm_without_order_files(tmp_path):
    files = {"train.csv": """
        model_id,prompt_id,label,model_name,prompt,category
        5,10,1,m5,ten,a
        3,10,0,m3,ten,a
        3,2,1,m3,two,b
        """}
    ds = data.load_embedllm(_write(tmp_path / "e", files))
    assert ds.model_names == ("m3", "m5") and ds.prompt_ids.tolist() == ["2", "10"]
    assert ds.texts == ("two", "ten") and ds.tasks.tolist() == ["b", "a"]


@pytest.mark.parametrize("name, content, match", [
    ("train.csv", "model_id,prompt_id,score\n0,0,1\n",
     r"train.csv: missing column\(s\) \['label'\]"),
    ("train.csv", "model_id,prompt_id,label\n0,0,2\n",
     r"train.csv, line 2, column 'label': label must be in \[0, 1\], got '2'"),
    ("train.csv", "model_id,prompt_id,label\n0,0,yes\n",
     r"train.csv, line 2, column 'label': label 'yes' is not a number"),
    ("test.csv", "model_id,prompt_id,label\n9,3,1\n",
     r"model_id\(s\) \['9'\] appear in the split files"),
    ("question_order.csv", "prompt_id,body\n0,x\n", "missing a text column"),
])
def test_load_embedllm_errors(tmp_path, name, content, match):
    folder = _write(tmp_path / "e", EMBEDLLM)
    (folder / name).write_text(content, encoding="utf-8")
    with pytest.raises(ValueError, match=match):
        data.load_embedllm(folder)


def test_load_embedllm_missing_files_and_costs(tmp_path):
    with pytest.raises(ValueError, match="no EmbedLLM split file found"):
        data.load_embedllm(tmp_path)
    folder = _write(tmp_path / "e", {**EMBEDLLM, "model_order.csv": "model_id,model_name\n"
                                     "0,gpt-4\n1,claude\n2,x-1b\n"})
    with pytest.raises(ValueError, match=r"cannot read a size from model name\(s\) \['gpt-4', "):
        data.load_embedllm(folder, costs="param_count")
    with pytest.raises(ValueError, match="costs has no entry for model"):
        data.load_embedllm(folder, costs={"gpt-4": 1.0})


@pytest.mark.parametrize("name, size", [
    ("Llama-2-13b-chat-hf", 13), ("Mixtral-8x7B-Instruct-v0.1", 56), ("pythia-410m", 0.41),
    ("Qwen1.5-0.5B-Chat", 0.5), ("gpt-4", None), ("Yi-34B-Chat", 34), ("mpt-7b-8k", 7)])
def test_parameter_count(name, size):
    got = data.parameter_count(name)
    assert got == pytest.approx(size) if size is not None else got is None


# ------------------------------------------------------------------------------------------------
# RouterBench layout
# ------------------------------------------------------------------------------------------------


def _routerbench_columns() -> dict[str, list]:
    return {
        "sample_id": ["mmlu.1", "gsm8k.1", "mmlu.1", "arc.7"],
        "prompt": ["['Q one?']", "plain two", "['Q one?']", ["list", "prompt"]],
        "eval_name": ["mmlu", "gsm8k", "mmlu", "arc"],
        "oracle_model_to_route_to": ["a", "b", "a", "a"],
        "gpt-4": [np.nan, 1.0, 1.0, 0.0],
        "gpt-4|total_cost": [np.nan, 0.01, 0.02, 0.03],
        "gpt-4|model_response": ["x", "y", "z", "w"],
        "mistral-7b": [0.0, 0.0, 1.0, np.nan],
        "mistral-7b|total_cost": [0.001, 0.002, 0.003, np.nan],
    }


def test_routerbench_from_columns():
    ds = data.routerbench_from_columns(_routerbench_columns())
    assert ds.model_names == ("gpt-4", "mistral-7b")
    # The duplicate mmlu.1 keeps the row with every score present (the third).
    assert ds.prompt_ids.tolist() == ["gsm8k.1", "mmlu.1", "arc.7"]
    np.testing.assert_array_equal(ds.quality, [[1, 0], [1, 1], [0, 0]])
    np.testing.assert_array_equal(ds.label_mask, [[1, 1], [1, 1], [1, 0]])
    np.testing.assert_array_equal(ds.costs, [[0.01, 0.002], [0.02, 0.003], [0.03, 0.0]])
    assert ds.texts == ("plain two", "Q one?", "list\nprompt")
    assert ds.tasks.tolist() == ["gsm8k", "mmlu", "arc"]
    with pytest.raises(ValueError, match=r"lacks column\(s\) \['eval_name'\]"):
        data.routerbench_from_columns({"sample_id": [], "prompt": []})
    with pytest.raises(ValueError, match="no model columns"):
        data.routerbench_from_columns({"sample_id": [], "prompt": [], "eval_name": []})


def test_routerbench_pickle_needs_opt_in(tmp_path):
    marker = tmp_path / "ran"
    # A pickle whose loading would create `marker`: refusing must not touch it.
    (tmp_path / data.ROUTERBENCH_FILE).write_bytes(
        b"cos\nsystem\n(S'touch " + str(marker).encode() + b"'\ntR.")
    with pytest.raises(ValueError, match=r"pickle.*arbitrary code.*allow_pickle=True"):
        data.load_routerbench(tmp_path)
    with pytest.raises(ValueError, match="allow_pickle=True"):
        data.load_routerbench(tmp_path / data.ROUTERBENCH_FILE)
    assert not marker.exists()
    with pytest.raises(FileNotFoundError, match="RouterBench pickle not found"):
        data.load_routerbench(tmp_path / "elsewhere", allow_pickle=True)


def test_routerbench_pickle_with_opt_in(tmp_path):
    pd = pytest.importorskip("pandas", reason="pandas is not installed; the opt-in path reads "
                                              "the pickle with pandas")
    path = tmp_path / data.ROUTERBENCH_FILE
    pd.DataFrame(_routerbench_columns()).to_pickle(path)
    ds = data.load_routerbench(path, allow_pickle=True)
    assert ds.name == "routerbench" and ds.model_names == ("gpt-4", "mistral-7b")
    assert ds.costs.shape == (3, 2)
