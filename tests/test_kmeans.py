import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn.cluster import KMeans
from sklearn.datasets import make_blobs
from sklearn.metrics import adjusted_rand_score

import uniroute_jax as ur
from uniroute_jax._src import kmeans as km


def numpy_assign(x, centroids):
    d2 = ((x[:, None, :] - centroids[None]) ** 2).sum(-1)
    return d2.argmin(1), d2.min(1)


def numpy_lloyd(x, init, n_iter):
    """Plain Lloyd iterations from a given start: the reference twin of the update."""
    c = init.copy()
    for _ in range(n_iter):
        lab, _ = numpy_assign(x, c)
        c = np.stack([x[lab == k].mean(0) if (lab == k).any() else c[k] for k in range(len(c))])
    return c


@pytest.fixture(scope="module")
def blobs():
    x, y = make_blobs(400, centers=5, n_features=4, cluster_std=0.6, random_state=3)
    return x.astype(np.float32), y


def test_matches_sklearn_on_blobs(blobs):
    x, _ = blobs
    ours = ur.kmeans(x, 5, key=0, n_init=3)
    ref = KMeans(5, n_init=3, random_state=0).fit(x)
    assert adjusted_rand_score(np.asarray(ours.labels), ref.labels_) == 1.0
    assert abs(float(ours.inertia) - ref.inertia_) <= 0.01 * ref.inertia_
    assert bool(ours.converged)


def test_result_consistent_with_numpy_twin(blobs):
    x, _ = blobs
    res = ur.kmeans(x, 5, key=1)
    lab, d2 = numpy_assign(x, np.asarray(res.centroids))
    np.testing.assert_array_equal(np.asarray(res.labels), lab)
    np.testing.assert_allclose(float(res.inertia), d2.sum(), rtol=1e-4)
    # A converged solution is a fixed point of the Lloyd update.
    np.testing.assert_allclose(numpy_lloyd(x, np.asarray(res.centroids), 1), np.asarray(res.centroids), atol=1e-4)


def test_assign_matches_numpy(blobs):
    x, _ = blobs
    c = x[:7]
    np.testing.assert_array_equal(np.asarray(ur.assign_clusters(x, c)), numpy_assign(x, c)[0])
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    cn = xn[:7]
    np.testing.assert_array_equal(np.asarray(ur.assign_clusters(xn, cn, metric="cosine")), (xn @ cn.T).argmax(1))


def test_zero_weight_rows_are_padding(blobs):
    x, _ = blobs
    key = jax.random.key(0)
    base = ur.kmeans(x, 5, key=key)
    garbage = np.full((37, x.shape[1]), 1e3, np.float32)
    padded = ur.kmeans(np.concatenate([x, garbage]), 5, key=key,
                       weights=np.concatenate([np.ones(len(x)), np.zeros(37)]))
    # Same data, same partition; the padding never becomes a centroid.
    assert adjusted_rand_score(np.asarray(padded.labels)[: len(x)], np.asarray(base.labels)) == 1.0
    assert np.abs(np.asarray(padded.centroids)).max() < 100
    np.testing.assert_allclose(float(padded.inertia), float(base.inertia), rtol=1e-4)


def test_weights_act_as_repetition():
    x = np.array([[0.0], [1.0], [10.0], [11.0]], np.float32)
    res = ur.kmeans(x, 2, key=0, weights=[3, 1, 1, 1])
    cents = np.sort(np.asarray(res.centroids)[:, 0])
    np.testing.assert_allclose(cents, [0.25, 10.5], atol=1e-5)


def test_empty_cluster_relocated_to_a_valid_point():
    # Two identical far points and a tight group: a seed on a duplicate leaves a cluster empty.
    x = np.array([[0, 0], [0, 0], [0, 0], [5, 5], [5, 5.1], [9, 9]], np.float32)
    res = ur.kmeans(x, 3, key=0, n_init=4)
    lab = np.asarray(res.labels)
    assert len(np.unique(lab)) == 3
    assert float(res.inertia) < 0.01


def test_cosine_centroids_unit_norm(blobs):
    x, _ = blobs
    res = ur.kmeans(x + 5.0, 4, key=0, metric="cosine")
    np.testing.assert_allclose(np.linalg.norm(np.asarray(res.centroids), axis=1), 1.0, atol=1e-5)


def test_restarts_keep_lowest_inertia(blobs):
    x, _ = blobs
    tol = jnp.asarray(1e-6)
    w = jnp.ones(len(x))
    key = jax.random.key(5)
    best = km.kmeans_kernel(key, jnp.asarray(x), w, tol, n_clusters=6, n_init=4, max_iter=100, metric="euclidean")
    singles = jax.vmap(lambda k: km._kmeans_single(k, jnp.asarray(x), w, tol, n_clusters=6, max_iter=100,
                                                     cosine=False))(jax.random.split(key, 4))
    assert float(best.inertia) == pytest.approx(float(singles.inertia.min()))


def test_eager_equals_jit_and_no_retrace(blobs):
    x, _ = blobs
    args = (jax.random.key(2), jnp.asarray(x), jnp.ones(len(x)), jnp.asarray(1e-6))
    kw = dict(n_clusters=4, n_init=2, max_iter=50, metric="euclidean")
    with jax.disable_jit():
        eager = km.kmeans_kernel(*args, **kw)
    jitted = km.kmeans_kernel(*args, **kw)
    np.testing.assert_array_equal(np.asarray(eager.labels), np.asarray(jitted.labels))
    np.testing.assert_allclose(np.asarray(eager.centroids), np.asarray(jitted.centroids), atol=1e-4)

    counted = chex.assert_max_traces(n=1)(lambda k, a, w, t: km._kmeans_single(
        k, a, w, t, n_clusters=4, max_iter=50, cosine=False))
    f = jax.jit(counted)
    f(*args)
    f(jax.random.key(3), *args[1:])


@pytest.mark.parametrize("bad, exc, match", [
    (dict(x=np.zeros((5,))), ValueError, "x must have 2 dimensions"),
    (dict(n_clusters=10), ValueError, "n_clusters must be <="),
    (dict(n_clusters=0), ValueError, "n_clusters must be >= 1"),
    (dict(n_clusters=2.5), TypeError, "n_clusters must be an int"),
    (dict(x=np.full((6, 2), np.nan)), ValueError, "x must be finite"),
    (dict(weights=-np.ones(6)), ValueError, "weights must be >= 0"),
    (dict(weights=np.ones(4)), ValueError, "weights must have shape"),
    (dict(metric="manhattan"), ValueError, "metric must be one of"),
    (dict(x=np.array([["a", "b"]] * 6)), TypeError, "x must be a numeric array"),
])
def test_bad_input_raises(bad, exc, match):
    kw = dict(x=np.random.default_rng(0).normal(size=(6, 2)), n_clusters=2)
    kw.update(bad)
    with pytest.raises(exc, match=match):
        ur.kmeans(kw.pop("x"), kw.pop("n_clusters"), **kw)


def test_assign_dimension_mismatch():
    with pytest.raises(ValueError, match="centroids expect dimension 3"):
        ur.assign_clusters(np.zeros((4, 2)), np.zeros((2, 3)))
