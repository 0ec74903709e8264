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
    # Eager and jitted scatter-adds may sum in another order: equal up to float32 rounding, while
    # the restarts' inertias differ by 0.1% or more.
    assert float(best.inertia) == pytest.approx(float(singles.inertia.min()), rel=1e-5)


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
    (dict(x=np.eye(6, 2)[[0, 1, 0, 2, 1, 0]], metric="cosine"), ValueError, r"x has 1 rows? .*\(first: row 3, all-zero\)"),
])
def test_bad_input_raises(bad, exc, match):
    kw = dict(x=np.random.default_rng(0).normal(size=(6, 2)), n_clusters=2)
    kw.update(bad)
    with pytest.raises(exc, match=match):
        ur.kmeans(kw.pop("x"), kw.pop("n_clusters"), **kw)


def test_assign_dimension_mismatch():
    with pytest.raises(ValueError, match="centroids expect dimension 3"):
        ur.assign_clusters(np.zeros((4, 2)), np.zeros((2, 3)))


# ------------------------------------------------------------------ traffic-log scale


def test_blocked_assignment_and_sums_equal_one_block(monkeypatch):
    # 1,000 points in blocks of 64 (15 blocks and a remainder of 40) against one block.
    rng = np.random.default_rng(7)
    x = rng.normal(size=(1000, 5)).astype(np.float32)
    w = rng.uniform(0.5, 2.0, 1000).astype(np.float32)
    c = x[:9].copy()
    xs = jnp.asarray(x)
    x_sq = jnp.sum(xs * xs, axis=1)
    one = km._nearest_and_sums(xs, x_sq, jnp.asarray(w), jnp.asarray(c))
    monkeypatch.setattr(km, "ASSIGN_BLOCK", 64)
    blocked = km._nearest_and_sums(xs, x_sq, jnp.asarray(w), jnp.asarray(c))
    lab, d2 = numpy_assign(x.astype(np.float64), c.astype(np.float64))
    for labels, min_d2, sums, mass in (one, blocked):
        np.testing.assert_array_equal(np.asarray(labels), lab)
        np.testing.assert_allclose(np.asarray(min_d2), d2, rtol=1e-4, atol=1e-4)
        want_sums = np.stack([(w[lab == k, None] * x[lab == k]).sum(0) for k in range(9)])
        np.testing.assert_allclose(np.asarray(sums), want_sums, rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(np.asarray(mass), np.bincount(lab, weights=w, minlength=9), rtol=1e-5)


def test_blocked_fit_matches_unblocked_fit(monkeypatch):
    x, _ = make_blobs(1003, centers=6, n_features=3, cluster_std=0.5, random_state=4)
    x = x.astype(np.float32)
    ref = ur.kmeans(x, 6, key=3, n_init=2)
    monkeypatch.setattr(km, "ASSIGN_BLOCK", 100)  # 10 blocks and a remainder of 3 points
    got = ur.kmeans(x, 6, key=3, n_init=2)
    assert got.labels.shape == (1003,)
    np.testing.assert_array_equal(np.asarray(got.labels), np.asarray(ref.labels))
    np.testing.assert_allclose(np.asarray(got.centroids), np.asarray(ref.centroids), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(float(got.inertia), float(ref.inertia), rtol=1e-5)


def test_sampler_draws_in_proportion_and_never_zero_mass():
    rng = np.random.default_rng(3)
    n = 2 * km.SAMPLE_BLOCK + 300  # two full blocks and a padded third
    p = rng.random(n).astype(np.float32) ** 3
    p[rng.random(n) < 0.3] = 0.0
    p[-1] = 5.0  # heavy last point, next to the padding
    draws = np.asarray(jax.jit(lambda k: km._sample(k, jnp.asarray(p), 400_000))(jax.random.key(0)))
    assert draws.min() >= 0 and draws.max() < n
    counts = np.bincount(draws, minlength=n)
    assert counts[p == 0].sum() == 0
    expected = 400_000 * p / p.sum()
    # Each count is binomial: within 5 standard deviations (+1 for tiny expectations).
    assert np.all(np.abs(counts - expected) <= 5 * np.sqrt(expected) + 1)


def test_progress_lines_and_ctrl_c_during_seeding(monkeypatch, capsys):
    import _thread

    x = np.random.default_rng(0).normal(size=(500, 4)).astype(np.float32)
    ur.kmeans(x, 8, key=0, n_init=1, progress=True)
    err = capsys.readouterr().err
    assert "[kmeans] k-means++ seeding on 500 points: 8/8 centroids" in err and "[kmeans] Lloyd iteration" in err
    ur.kmeans(x, 8, key=0, n_init=1)
    assert capsys.readouterr().err == ""  # quiet unless asked

    monkeypatch.setattr(km, "CHUNK_WORK", 1)  # one seed per chunk
    chunks = []  # seeds chosen when each chunk ends
    real = km._seed_chunk

    def chunk(seeds, x, x_sq, weights, start, stop):
        out = real(seeds, x, x_sq, weights, start, stop)
        chunks.append(int(stop))
        if len(chunks) == 1:
            # What Ctrl-C does, once the chunk is done: an interrupt raised while JAX traces or
            # compiles would leave its caches half-built for every later test.
            _thread.interrupt_main()
        return out

    monkeypatch.setattr(km, "_seed_chunk", chunk)
    with pytest.raises(KeyboardInterrupt):
        ur.kmeans(x, 30, key=0, n_init=1)
    assert chunks == [2]  # stopped after the first chunk of one seed, not after all 30


def test_init_sample_draws_distinct_weighted_in_points_and_fits_as_well():
    x, _ = make_blobs(3000, centers=8, n_features=4, cluster_std=0.7, random_state=5)
    x = x.astype(np.float32)
    w = np.ones(3000, np.float32)
    w[::3] = 0.0  # a third of the points are padding
    xs, ws = km._init_sample(jax.random.key(1), jnp.asarray(np.arange(3000.0)[:, None]), jnp.asarray(w), size=500)
    picked = np.asarray(xs)[:, 0].astype(int)
    assert len(np.unique(picked)) == 500 and np.all(w[picked] > 0) and np.all(np.asarray(ws) == 1.0)
    # Every weighted-in point is equally likely: over 40 draws each is picked ~ 40 * 500 / 2000 = 10 times.
    counts = np.zeros(3000)
    for k in range(40):
        xs, _ = km._init_sample(jax.random.key(k), jnp.asarray(np.arange(3000.0)[:, None]), jnp.asarray(w), size=500)
        counts[np.asarray(xs)[:, 0].astype(int)] += 1
    assert counts[w == 0].sum() == 0 and abs(counts[w > 0].mean() - 10) < 1e-9 and counts[w > 0].std() < 4.5

    full = ur.kmeans(x, 8, key=0, n_init=1, weights=w)
    sampled = ur.kmeans(x, 8, key=0, n_init=1, weights=w, init_sample=300)
    assert float(sampled.inertia) <= 1.02 * float(full.inertia)
    lab, _ = numpy_assign(x, np.asarray(sampled.centroids))
    np.testing.assert_array_equal(np.asarray(sampled.labels), lab)
    same = ur.kmeans(x, 8, key=0, n_init=1, weights=w, init_sample=5000)  # more than the points: all of them
    np.testing.assert_array_equal(np.asarray(same.centroids), np.asarray(full.centroids))
    with pytest.raises(ValueError, match="init_sample must be >= n_clusters"):
        ur.kmeans(x, 8, init_sample=5)
