import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, strategies as st
from hypothesis.extra import numpy as hnp

import uniroute_jax as ur
from uniroute_jax._src.error_vectors import error_vectors_kernel

N_VAL, N_MODELS, K = 12, 3, 4


def numpy_error_vectors(weights, quality, mask, alpha):
    """Loop-by-loop reference twin: weights [n_val, K] (one-hot for hard labels)."""
    n_val, m = quality.shape
    k = weights.shape[1]
    psi = np.zeros((m, k))
    counts = np.zeros((m, k))
    for h in range(m):
        labelled = mask[:, h]
        overall = (1 - quality[labelled, h]).mean()
        for c in range(k):
            w = weights[labelled, c]
            counts[h, c] = w.sum()
            s = (w * (1 - quality[labelled, h])).sum()
            psi[h, c] = overall if counts[h, c] + alpha == 0 else (s + alpha * overall) / (counts[h, c] + alpha)
    return psi, counts


labels_st = hnp.arrays(np.int32, (N_VAL,), elements=st.integers(0, K - 1))
quality_st = hnp.arrays(np.float32, (N_VAL, N_MODELS), elements=st.sampled_from([0.0, 0.25, 1.0]))
mask_st = hnp.arrays(bool, (N_VAL, N_MODELS)).filter(lambda m: m.any(axis=0).all())


@given(labels_st, quality_st, mask_st, st.sampled_from([0.0, 1.0, 3.5]))
def test_hard_labels_match_numpy(labels, quality, mask, alpha):
    res = ur.error_vectors(labels, np.where(mask, quality, np.nan), n_clusters=K, alpha=alpha)
    psi, counts = numpy_error_vectors(np.eye(K)[labels], quality, mask, alpha)
    np.testing.assert_allclose(np.asarray(res.psi), psi, atol=1e-6)
    np.testing.assert_allclose(np.asarray(res.counts), counts)


@given(hnp.arrays(np.float32, (N_VAL, K), elements=st.floats(0, 1, width=32)), quality_st, mask_st)
def test_soft_weights_match_numpy(weights, quality, mask):
    res = ur.error_vectors(weights, quality, n_clusters=K, label_mask=mask, alpha=0.5)
    psi, counts = numpy_error_vectors(weights, quality, mask, 0.5)
    np.testing.assert_allclose(np.asarray(res.psi), psi, atol=1e-5)
    np.testing.assert_allclose(np.asarray(res.counts), counts, atol=1e-5)


def test_alpha_zero_is_plain_mean_and_empty_cluster_uses_overall():
    labels = np.array([0, 0, 1, 1, 1])
    q = np.array([[1, 0], [0, 0], [1, 1], [1, 1], [0, 1]], np.float32)
    res = ur.error_vectors(labels, q, n_clusters=3, alpha=0.0)
    np.testing.assert_allclose(np.asarray(res.psi), [[0.5, 1 / 3, 0.4], [1.0, 0.0, 0.4]], atol=1e-6)


def test_shrinkage_moves_sparse_clusters_most():
    labels = np.array([0] * 50 + [1])
    q = np.zeros((51, 1), np.float32)
    q[:25] = 1  # cluster 0 half right; cluster 1 (one prompt) wrong
    res = np.asarray(ur.error_vectors(labels, q, n_clusters=2, alpha=1.0).psi)[0]
    overall = 26 / 51
    assert res[0] == pytest.approx((25 + overall) / 51)
    assert res[1] == pytest.approx((1 + overall) / 2)


def test_eager_jit_vmap_and_no_retrace():
    rng = np.random.default_rng(0)
    labels = jnp.asarray(rng.integers(0, K, (3, N_VAL)))
    q = jnp.asarray(rng.integers(0, 2, (3, N_VAL, N_MODELS)).astype(np.float32))
    mask = jnp.ones((N_VAL, N_MODELS), bool)
    alpha = jnp.asarray(1.0)
    with jax.disable_jit():
        eager = error_vectors_kernel(labels[0], q[0], mask, alpha, n_clusters=K)
    jitted = error_vectors_kernel(labels[0], q[0], mask, alpha, n_clusters=K)
    np.testing.assert_allclose(np.asarray(eager.psi), np.asarray(jitted.psi), atol=1e-6)
    batched = jax.vmap(lambda l, qq: error_vectors_kernel(l, qq, mask, alpha, n_clusters=K).psi)(labels, q)
    for i in range(3):
        np.testing.assert_allclose(np.asarray(batched[i]),
                                   np.asarray(error_vectors_kernel(labels[i], q[i], mask, alpha, n_clusters=K).psi),
                                   atol=1e-6)
    f = jax.jit(chex.assert_max_traces(n=1)(lambda l, qq: error_vectors_kernel(l, qq, mask, alpha, n_clusters=K)))
    f(labels[0], q[0])
    f(labels[1], q[1])


def test_padded_models_do_not_change_real_rows():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, K, N_VAL)
    q = rng.integers(0, 2, (N_VAL, 2)).astype(np.float32)
    padded = np.concatenate([q, np.ones((N_VAL, 2), np.float32)], axis=1)
    a = np.asarray(ur.error_vectors(labels, q, n_clusters=K).psi)
    b = np.asarray(ur.error_vectors(labels, padded, n_clusters=K).psi)
    np.testing.assert_array_equal(a, b[:2])


@pytest.mark.parametrize("kwargs, exc, match", [
    (dict(quality=np.full((4, 2), 1.5)), ValueError, "quality must lie in"),
    (dict(quality=np.full((4, 2), np.inf)), ValueError, "quality must be finite"),
    (dict(assignments=np.array([0, 1, 2, 9])), ValueError, "assignments values must be in"),
    (dict(assignments=np.zeros(3, int)), ValueError, "assignments must have shape"),
    (dict(alpha=-1.0), ValueError, "alpha must be"),
    (dict(quality=np.full((4, 2), np.nan)), ValueError, "no label at all"),
    (dict(label_mask=np.ones((4, 3), bool)), ValueError, "label_mask must have shape"),
])
def test_bad_input_raises(kwargs, exc, match):
    base = dict(assignments=np.array([0, 1, 0, 1]), quality=np.ones((4, 2), np.float32))
    base.update(kwargs)
    with pytest.raises(exc, match=match):
        ur.error_vectors(base.pop("assignments"), base.pop("quality"), n_clusters=3, **base)
