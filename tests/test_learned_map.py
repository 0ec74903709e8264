"""Tests for UniRoute (LearnedMap): the router with a soft feature map, and the shared training loop."""

from __future__ import annotations

import dataclasses
import doctest

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn.cluster import KMeans

from uniroute_jax import make_units
from uniroute_jax import sweep as routing_sweep
from uniroute_jax._src import persistence, router as router_module, training
from uniroute_jax._src.feature_maps import HardMap, SoftMap
from uniroute_jax._src.learned_map import LearnedMapConfig, initial_map
from uniroute_jax._src.router import Pool, UniRouter

K = 4
N_TRAIN, N_VAL, N_TEST = 450, 100, 150
TRAIN_LLMS, TEST_LLMS = [0, 1, 2, 3], [4, 5]
# batch 128: 405 fitting prompts (10% held out) and 450 (none held out) both pad to 512 rows,
# so every test below shares one compile of the training epoch.
CONFIG = LearnedMapConfig(epochs=8, batch_size=128, patience=8)


def _world(seed=0, n_components=6, dim=8, n_models=6):
    """A small cluster world in NumPy: per-component skills plus a within-component slope.

    The learned map can improve on hard clusters here because the error probability varies
    inside a component and K = 4 merges some of the 6 components.
    """
    rng = np.random.default_rng(seed)
    n = N_TRAIN + N_VAL + N_TEST
    means = 3.0 * rng.normal(size=(n_components, dim))
    z = rng.integers(0, n_components, size=n)
    x = means[z] + rng.normal(size=(n, dim))
    skills = rng.normal(size=(n_models, n_components)) * 1.5 + 0.5
    slopes = rng.normal(size=(n_models, dim))
    logit = skills[:, z].T + (x - means[z]) @ slopes.T / np.sqrt(dim)
    q = (rng.random((n, n_models)) < 1 / (1 + np.exp(-logit))).astype(np.float32)
    costs = np.exp(rng.normal(size=n_models))
    return x.astype(np.float32), q, costs


@pytest.fixture(scope="module")
def data():
    x, q, costs = _world()
    tr, va, te = np.split(np.arange(x.shape[0]), [N_TRAIN, N_TRAIN + N_VAL])
    # scikit-learn's k-means stands in for `kmeans` here: the router only needs centroids, and
    # this keeps the k-means compile out of the test time.
    centroids = KMeans(K, n_init=3, random_state=0).fit(x[tr]).cluster_centers_
    base = UniRouter(centroids, metric="euclidean")
    return dict(x_tr=x[tr], q_tr=q[tr][:, TRAIN_LLMS], x_va=x[va], q_va=q[va], x_te=x[te], q_te=q[te],
                base=base, costs=costs)


def _fit(d, *, base=None, config=CONFIG, **kw):
    return (base or d["base"]).learn_map(d["x_tr"], d["q_tr"], d["x_va"], d["q_va"][:, TRAIN_LLMS], config=config,
                                         **kw)


def _pool(router, d, llms):
    names = [f"llm{i}" for i in llms]
    return router.represent(d["x_va"], d["q_va"][:, llms], names, d["costs"][llms])


@pytest.fixture(scope="module")
def trained(data):
    return _fit(data, seed=0)


def test_training_lowers_the_training_loss(data):
    # No held-out split: every epoch is kept, so the loss must go down on the data it sees.
    cfg = dataclasses.replace(CONFIG, holdout_fraction=0.0)
    start = _fit(data, config=dataclasses.replace(cfg, epochs=0))
    end = _fit(data, config=cfg)
    pool = _pool(end, data, TRAIN_LLMS)
    assert end.log_loss(data["x_tr"], data["q_tr"], pool) < start.log_loss(data["x_tr"], data["q_tr"], pool) - 1e-3
    assert end.info["train_loss"][-1] < end.info["initial_train_loss"]
    assert end.info["epochs_run"] == cfg.epochs and end.info["n_heldout"] == 0


def test_early_stopping_keeps_the_best_heldout_epoch(trained):
    held = np.array(trained.info["heldout_loss"])
    best = trained.info["best_epoch"]
    if best > 0:
        assert held[best - 1] == pytest.approx(held.min())
        assert held.min() < trained.info["initial_heldout_loss"]
    else:
        assert held.min() >= trained.info["initial_heldout_loss"] - CONFIG.min_delta


@pytest.mark.parametrize("psi_source", ["hard", "soft"])
def test_one_cluster_routes_by_overall_validation_error(data, psi_source):
    x = data["x_tr"]
    base = UniRouter(x.mean(axis=0, keepdims=True), metric="euclidean")
    cfg = dataclasses.replace(CONFIG, epochs=2 if psi_source == "hard" else 0)
    lm = _fit(data, base=base, config=cfg, psi_source=psi_source)
    np.testing.assert_allclose(lm.features(data["x_te"]), 1.0)
    pool = _pool(lm, data, TEST_LLMS)
    overall = 1.0 - data["q_va"][:, TEST_LLMS].mean(axis=0)
    est = lm.estimates(data["x_te"], pool)
    np.testing.assert_allclose(est, np.broadcast_to(overall, est.shape), atol=1e-6)
    costs = pool.costs
    for lam in (0.0, 0.3, 10.0):
        score = overall + lam * costs
        best = np.flatnonzero(score <= score.min() + 1e-7)
        expected = best[np.argmin(costs[best])]
        assert np.all(lm.route(data["x_te"], pool, lam).index == expected)


def test_deterministic_for_a_seed(data, trained):
    again = _fit(data, seed=0)
    np.testing.assert_array_equal(again.feature_map.theta, trained.feature_map.theta)
    np.testing.assert_array_equal(again.feature_map.bias, trained.feature_map.bias)
    other = _fit(data, seed=1)
    assert not np.array_equal(other.feature_map.theta, trained.feature_map.theta)


def test_soft_psi_option_trains_and_represents_softly(data):
    lm = _fit(data, psi_source="soft", config=dataclasses.replace(CONFIG, holdout_fraction=0.0))
    assert lm.feature_map.psi_source == "soft"
    assert lm.info["train_loss"][-1] < lm.info["initial_train_loss"]
    pool = _pool(lm, data, TEST_LLMS)
    # Soft weights make fractional label counts; hard clusters make integer ones.
    assert not np.allclose(pool.counts, np.round(pool.counts))
    np.testing.assert_allclose(pool.counts.sum(axis=1), N_VAL, rtol=1e-5)
    est = lm.estimates(data["x_te"], pool)
    assert est.shape == (N_TEST, len(TEST_LLMS)) and np.all((est >= 0) & (est <= 1))


def test_initial_map_is_a_tempered_kmeans_assignment(data):
    lm = _fit(data, config=dataclasses.replace(CONFIG, epochs=0))
    phi = lm.features(data["x_tr"])
    np.testing.assert_allclose(phi.sum(axis=1), 1.0, rtol=1e-5)
    labels = data["base"].assign(data["x_tr"])
    assert np.mean(phi[np.arange(N_TRAIN), labels]) == pytest.approx(CONFIG.init_sharpness, abs=1e-3)
    np.testing.assert_array_equal(np.argmax(phi, axis=1), labels)


def test_initial_map_under_cosine_metric():
    rng = np.random.default_rng(0)
    c = rng.normal(size=(3, 5))
    c /= np.linalg.norm(c, axis=1, keepdims=True)
    x = rng.normal(size=(200, 5))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    params = initial_map(c, x, "cosine", 0.8)
    logits = x @ np.asarray(params.theta).T + np.asarray(params.bias)
    phi = np.exp(logits - logits.max(1, keepdims=True))
    phi /= phi.sum(1, keepdims=True)
    np.testing.assert_array_equal(np.argmax(phi, 1), np.argmax(x @ c.T, 1))
    assert phi.max(1).mean() == pytest.approx(0.8, abs=1e-3)


def test_route_and_sweep_agree_with_the_estimates(data, trained):
    pool = _pool(trained, data, TEST_LLMS)
    est = trained.estimates(data["x_te"], pool)
    lam = 0.2
    score = est + lam * pool.costs
    assert np.array_equal(trained.route(data["x_te"], pool, lam).index, np.argmin(score, axis=1))
    lams = np.array([0.0, 0.1, 1.0, 100.0], np.float32)
    curves = trained.sweep(data["x_te"], pool, lams, quality=data["q_te"][:, TEST_LLMS])
    units = make_units(None, quality=data["q_te"][:, TEST_LLMS], costs=pool.costs)
    ref = routing_sweep(est, units, pool.costs, lams)
    np.testing.assert_allclose(curves.mean_quality, np.asarray(ref.mean_quality), atol=1e-6)
    np.testing.assert_allclose(curves.mean_cost, np.asarray(ref.mean_cost), atol=1e-6)
    no_labels = trained.sweep(data["x_te"], pool, lams)
    assert np.all(np.isnan(no_labels.mean_quality))
    np.testing.assert_allclose(no_labels.mean_cost, curves.mean_cost, atol=1e-6)


def test_save_load_round_trip_is_exact(data, trained, tmp_path):
    path = trained.save(tmp_path / "lm")
    loaded = UniRouter.load(path)
    assert isinstance(loaded.feature_map, SoftMap)
    for field in ("theta", "bias", "centroids"):
        np.testing.assert_array_equal(getattr(loaded.feature_map, field), getattr(trained.feature_map, field))
    assert (loaded.metric, loaded.alpha, loaded.feature_map.psi_source) == (trained.metric, trained.alpha, trained.feature_map.psi_source)
    assert loaded.info == trained.info
    pool = _pool(trained, data, TEST_LLMS)
    np.testing.assert_array_equal(loaded.estimates(data["x_te"], pool), trained.estimates(data["x_te"], pool))
    assert isinstance(UniRouter.load(data["base"].save(tmp_path / "base")).feature_map, HardMap)
    with pytest.raises(ValueError, match="holds a 'pool'"):
        UniRouter.load(pool.save(tmp_path / "pool"))


def test_files_of_the_former_learned_map_router_still_load(data, trained, tmp_path):
    # The layout the separate LearnedMapRouter class wrote: its own kind, no "feature_map" field.
    fmap = trained.feature_map
    meta = {"metric": fmap.metric, "alpha": trained.alpha, "psi_source": fmap.psi_source, "info": trained.info}
    path = persistence.save_arrays(tmp_path / "old", "learned_map_router",
                                   {"theta": fmap.theta, "bias": fmap.bias, "centroids": fmap.centroids}, meta)
    loaded = UniRouter.load(path)
    pool = _pool(trained, data, TEST_LLMS)
    np.testing.assert_array_equal(loaded.estimates(data["x_te"], pool), trained.estimates(data["x_te"], pool))
    assert loaded.feature_map.psi_source == fmap.psi_source


def test_verbose_prints_one_line_per_epoch(data, capsys):
    _fit(data, config=dataclasses.replace(CONFIG, epochs=2), verbose=True)
    err = capsys.readouterr().err
    assert "epoch 1/2: train" in err and "epoch 2/2" in err and "held-out" in err


def test_pool_from_another_router_is_rejected(data, trained):
    other = Pool(("a",), [1.0], np.full((1, K + 1), 0.5), np.ones((1, K + 1)), np.ones((1, K + 1)))
    with pytest.raises(ValueError, match="clusters but this router has"):
        trained.estimates(data["x_te"], other)
    with pytest.raises(TypeError, match="pool must be a Pool"):
        trained.route(data["x_te"], "pool", 0.1)


@pytest.mark.parametrize(
    "change, match",
    [
        (dict(q_tr=np.full((N_TRAIN, 4), 1.5)), r"train_quality must lie in \[0, 1\]"),
        (dict(q_tr=np.ones((N_TRAIN, 3))), "val_quality has 4 model columns but 3 were expected"),
        (dict(q_tr=np.ones((N_TRAIN - 1, 4))), "train_quality has 449 rows"),
        (dict(x_tr=np.ones((N_TRAIN, 3))), "train_embeddings has shape"),
        (dict(x_va=np.full((N_VAL, 8), np.nan)), "val_embeddings must be finite"),
        (dict(q_tr=np.full((N_TRAIN, 4), np.nan)), "no label at all"),
        (dict(psi_source="both"), "psi_source must be one of"),
    ],
)
def test_invalid_inputs_raise(data, change, match):
    kw = dict(x_tr=data["x_tr"], q_tr=data["q_tr"], x_va=data["x_va"], psi_source="hard") | change
    with pytest.raises((ValueError, TypeError), match=match):
        data["base"].learn_map(kw["x_tr"], kw["q_tr"], kw["x_va"], data["q_va"][:, TRAIN_LLMS],
                               psi_source=kw["psi_source"], config=CONFIG)


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(learning_rate=0.0), "learning_rate must be > 0"),
        (dict(epochs=-1), "epochs must be >= 0"),
        (dict(batch_size=0), "batch_size must be >= 1"),
        (dict(holdout_fraction=1.0), r"holdout_fraction must be in \[0, 1\)"),
        (dict(init_sharpness=1.0), r"init_sharpness must be in \(0, 1\)"),
        (dict(eps=0.0), r"eps must be in \(0, 0.5\)"),
        (dict(patience=2.5), "patience must be an int"),
    ],
)
def test_invalid_config_raises(kw, match):
    with pytest.raises((ValueError, TypeError), match=match):
        LearnedMapConfig(**kw)


def test_seed_must_be_an_int_or_key(data):
    with pytest.raises(TypeError, match="seed must be an int >= 0 or a PRNG key"):
        _fit(data, seed="zero")
    assert training.as_key(jax.random.PRNGKey(3)).shape == ()


def test_heldout_split_sizes():
    key = jax.random.key(0)
    fit, hold = training.split_heldout(key, 4, 0.1, "x")  # rounds to 0, but one is always held out
    assert hold.size == 1 and fit.size == 3 and np.union1d(fit, hold).tolist() == [0, 1, 2, 3]
    assert training.split_heldout(key, 4, 0.0, "x")[1].size == 0
    with pytest.raises(ValueError, match="leaves no prompt"):
        training.split_heldout(key, 1, 0.1, "x")


@pytest.mark.slow  # runs k-means, whose compile takes several seconds on two cores
def test_fit_runs_kmeans_then_trains(data):
    lm = UniRouter.fit_learned_map(data["x_tr"], data["q_tr"], data["x_va"], data["q_va"][:, TRAIN_LLMS], K, seed=0,
                              metric="cosine", config=dataclasses.replace(CONFIG, epochs=2))
    assert lm.n_clusters == K and lm.metric == "cosine"
    np.testing.assert_allclose(np.linalg.norm(lm.centroids, axis=1), 1.0, rtol=1e-5)
    again = UniRouter.fit_learned_map(data["x_tr"], data["q_tr"], data["x_va"], data["q_va"][:, TRAIN_LLMS], K,
                                 seed=0, metric="cosine", config=dataclasses.replace(CONFIG, epochs=2))
    np.testing.assert_array_equal(lm.feature_map.theta, again.feature_map.theta)


@pytest.mark.slow  # compiles the example's own shapes
def test_docstring_examples():
    globs = {"np": np, "LearnedMapConfig": LearnedMapConfig}
    assert doctest.testmod(router_module, extraglobs=globs).failed == 0


def _log_barrier_loss(params, batch, aux):
    # log(w - 0.5) falls without bound as w -> 0.5 and is NaN below it: gradient steps walk into NaN.
    w = params["w"]
    return jnp.sum(batch["mask"] * jnp.log(w - 0.5)), jnp.sum(batch["mask"])


@pytest.mark.parametrize("with_heldout", [False, True])
def test_training_stops_on_a_non_finite_loss_and_keeps_finite_parameters(with_heldout):
    data = {"mask": jnp.ones((8,), jnp.float32)}
    params = {"w": jnp.ones((), jnp.float32)}
    with pytest.warns(RuntimeWarning, match="non-finite"):
        best, history = training.train(_log_barrier_loss, params, jax.random.key(0), data, 8,
                                       data if with_heldout else None, None,
                                       config=LearnedMapConfig(learning_rate=0.2, weight_decay=0.0, batch_size=8,
                                                               epochs=20, patience=20, min_delta=0.0))
    assert history.diverged and not history.stopped_early
    last = history.heldout_loss[-1] if with_heldout else history.train_loss[-1]
    assert history.train_loss.size < 20 and not np.isfinite(last)
    assert np.isfinite(float(best["w"])) and float(best["w"]) > 0.5
    assert history.best_epoch < history.train_loss.size


def test_a_pool_is_shared_exactly_when_the_rows_would_be_equal(data, trained):
    # psi_source="hard": the learned router represents LLMs on the k-means clusters, so the
    # k-means router's pool is its pool too; a soft-Psi router would build other rows.
    base_pool = _pool(data["base"], data, TEST_LLMS)
    np.testing.assert_array_equal(_pool(trained, data, TEST_LLMS).psi, base_pool.psi)
    assert trained.estimates(data["x_te"], base_pool).shape == (N_TEST, len(TEST_LLMS))
    soft = _fit(data, psi_source="soft", config=dataclasses.replace(CONFIG, epochs=0))
    with pytest.raises(ValueError, match="built with another router"):
        soft.estimates(data["x_te"], base_pool)
    with pytest.raises(ValueError, match="two different routers"):
        base_pool + _pool(soft, data, [0])
