"""Tests for the K-NN router's error estimates."""

from __future__ import annotations

import doctest

import hypothesis.strategies as st
import jax
import numpy as np
import pytest
from hypothesis import given, settings

from uniroute_jax._src import knn
from uniroute_jax._src.knn import knn_estimates, knn_estimates_multi, knn_kernel

PROPERTY = settings(deadline=None, derandomize=True, database=None, max_examples=30)
N_TEST, N_VAL, DIM, N_MODELS = 7, 20, 5, 4  # one shape for the property examples: one compile


def np_knn(test, val, quality, k, mask=None, metric="cosine"):
    """Brute-force twin: loops, np.argsort, explicit fallback."""
    test, val, quality = (np.asarray(a, np.float64) for a in (test, val, quality))
    mask = ~np.isnan(quality) if mask is None else np.asarray(mask, bool)
    err = np.where(mask, 1.0 - np.nan_to_num(quality), 0.0)
    overall = err.sum(0) / mask.sum(0)
    if metric == "cosine":
        test = test / np.linalg.norm(test, axis=1, keepdims=True)
        val = val / np.linalg.norm(val, axis=1, keepdims=True)
    out = np.zeros((test.shape[0], quality.shape[1]))
    for i, t in enumerate(test):
        score = val @ t if metric == "cosine" else -np.sum((val - t) ** 2, axis=1)
        nearest = np.argsort(-score, kind="stable")[:k]
        for m in range(quality.shape[1]):
            labelled = [j for j in nearest if mask[j, m]]
            out[i, m] = np.mean(err[labelled, m]) if labelled else overall[m]
    return out


def _data(seed=0, missing=0.3, n_test=N_TEST, n_val=N_VAL):
    rng = np.random.default_rng(seed)
    test = rng.normal(size=(n_test, DIM)).astype(np.float32)
    val = rng.normal(size=(n_val, DIM)).astype(np.float32)
    q = rng.integers(0, 2, size=(n_val, N_MODELS)).astype(np.float32)
    q[rng.random(q.shape) < missing] = np.nan
    q[0] = 1.0  # every model keeps at least one label
    return test, val, q


@pytest.mark.parametrize("k, metric", [(1, "cosine"), (3, "cosine"), (N_VAL, "cosine"), (3, "euclidean")])
def test_matches_numpy_twin_with_missing_labels(k, metric):
    test, val, q = _data(k)
    got = np.asarray(knn_estimates(test, val, q, k, metric=metric))
    np.testing.assert_allclose(got, np_knn(test, val, q, k, metric=metric), atol=1e-6)


def test_explicit_label_mask_ignores_masked_values():
    test, val, q = _data(1, missing=0.0)
    mask = np.random.default_rng(1).random(q.shape) > 0.4
    mask[0] = True
    garbage = np.where(mask, q, 0.5)  # masked entries hold a value that must not be used
    got = np.asarray(knn_estimates(test, val, garbage, 5, label_mask=mask))
    np.testing.assert_allclose(got, np_knn(test, val, q, 5, mask=mask), atol=1e-6)


def test_multi_k_equals_single_k_calls():
    test, val, q = _data(2)
    ks = [1, 3, 3, N_VAL]  # the single-k shapes are those compiled above
    multi = np.asarray(knn_estimates_multi(test, val, q, ks))
    assert multi.shape == (len(ks), N_TEST, N_MODELS)
    for j, k in enumerate(ks):
        np.testing.assert_allclose(multi[j], np.asarray(knn_estimates(test, val, q, k)), atol=1e-6)


def test_k_equal_n_val_gives_overall_error():
    test, val, q = _data(3)
    overall = 1.0 - np.nanmean(q, axis=0)
    got = np.asarray(knn_estimates(test, val, q, N_VAL))
    np.testing.assert_allclose(got, np.broadcast_to(overall, got.shape), atol=1e-6)


def test_falls_back_to_overall_error_without_neighbour_labels():
    val = np.array([[1.0, 0.0], [0.9, 0.1], [-1.0, 0.0], [-0.9, -0.1]], np.float32)
    # Model 1 is labelled only on the far side.
    q = np.array([[1, np.nan], [0, np.nan], [1, 0], [1, 1]], np.float32)
    got = np.asarray(knn_estimates(np.array([[1.0, 0.05]]), val, q, 2))
    np.testing.assert_allclose(got, [[0.5, 0.5]])


def _kernel_args(seed):
    test, val, q = _data(seed)
    mask = ~np.isnan(q)
    errors = np.where(mask, 1 - np.nan_to_num(q), 0).astype(np.float32)
    return test[:4], val, errors, mask, np.array([1, 4, 9])


def test_chunked_equals_unchunked():
    args = _kernel_args(4)
    whole = np.asarray(knn_kernel(*args, k_max=9, chunk=4))
    chunked = np.asarray(knn_kernel(*args, k_max=9, chunk=3))  # 4 = 3 + 1: a ragged last chunk
    np.testing.assert_allclose(chunked, whole, atol=1e-6)


@pytest.mark.slow  # eager mode compiles every primitive separately: seconds on two cores
def test_eager_equals_jit():
    args = _kernel_args(4)
    jitted = np.asarray(knn_kernel(*args, k_max=9, chunk=4))
    with jax.disable_jit():
        eager = np.asarray(knn_kernel(*args, k_max=9, chunk=4))
    np.testing.assert_allclose(eager, jitted, atol=1e-6)


def test_second_call_with_same_shapes_does_not_recompile():
    knn_estimates_multi(*_data(5), [2, 6])
    before = knn_kernel._cache_size()
    knn_estimates_multi(*_data(6), [3, 6])  # new data and new ks, same shapes and k_max
    assert knn_kernel._cache_size() == before


def test_chunk_size_bounds_memory():
    assert knn._chunk_size(10, 100, 5, 3) == 10
    assert knn._chunk_size(10**6, 10**5, 100, 100) * 10**5 <= knn._CHUNK_ELEMENTS
    assert knn._chunk_size(5, 10**9, 1, 1) == 1


@PROPERTY
@given(seed=st.integers(0, 2**31 - 1), k=st.integers(1, N_VAL), missing=st.sampled_from([0.0, 0.3, 0.7]))
def test_property_matches_twin(seed, k, missing):
    test, val, q = _data(seed % 1000, missing)
    # `N_VAL` in the grid keeps k_max, hence the compiled shape, fixed across examples.
    got = np.asarray(knn_estimates_multi(test, val, q, [k, N_VAL]))
    np.testing.assert_allclose(got[0], np_knn(test, val, q, k), atol=1e-6)
    assert np.all((got >= 0) & (got <= 1))


@pytest.mark.parametrize(
    "change, match",
    [
        (dict(k=0), "k must be >= 1"),
        (dict(k=N_VAL + 1), "k must be <= the number of validation prompts"),
        (dict(k=2.0), "k must be an int"),
        (dict(test=np.ones((3, DIM + 1))), "test_embeddings has shape"),
        (dict(val=np.full((N_VAL, DIM), np.nan)), "val_embeddings must be finite"),
        (dict(q=np.full((N_VAL, N_MODELS), 2.0)), r"val_quality must lie in \[0, 1\]"),
        (dict(q=np.ones((N_VAL + 1, N_MODELS))), "val_quality has 21 rows"),
        (dict(q=np.full((N_VAL, N_MODELS), np.nan)), "no label at all"),
        (dict(test=np.zeros((2, DIM))), "all zeros"),
        (dict(metric="manhattan"), "metric must be one of"),
    ],
)
def test_invalid_inputs_raise(change, match):
    test, val, q = _data(7)
    kw = dict(test=test, val=val, q=q, k=3, metric="cosine") | change
    with pytest.raises((ValueError, TypeError), match=match):
        knn_estimates(kw["test"], kw["val"], kw["q"], kw["k"], metric=kw["metric"])


def test_multi_rejects_bad_ks():
    test, val, q = _data(8)
    with pytest.raises(ValueError, match="ks values must be in"):
        knn_estimates_multi(test, val, q, [1, N_VAL + 1])
    with pytest.raises(ValueError, match="ks must hold at least one value"):
        knn_estimates_multi(test, val, q, np.array([], np.int32))
    with pytest.raises(ValueError, match="label_mask must have shape"):
        knn_estimates_multi(test, val, q, [1], label_mask=np.ones((2, 2), bool))


def test_docstring_examples():
    assert doctest.testmod(knn, extraglobs={"np": np}).failed == 0
