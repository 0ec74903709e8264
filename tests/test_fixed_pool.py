"""Tests for the fixed-pool routers (MLP, matrix factorisation) and the random router."""

from __future__ import annotations

import dataclasses
import doctest

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from uniroute_jax import WorldConfig, make_units, sweep, synthetic_world
from uniroute_jax._src import fixed_pool, learned_map, training
from uniroute_jax._src.fixed_pool import FixedPoolConfig, FixedPoolRouter, random_router_estimates

N_FIT, N_TEST, N_MODELS, DIM = 500, 300, 5, 8
# Small network, few epochs: the world below is easy, and compile time dominates on two cores.
CONFIG = FixedPoolConfig(hidden=32, latent_dim=8, learning_rate=1e-2, batch_size=128, epochs=30, patience=5)


@pytest.fixture(scope="module")
def world():
    # Strong cluster structure: well-separated components, LLMs that differ a lot between
    # components and not within one.
    cfg = WorldConfig(dim=DIM, n_components=4, separation=4.0, skill_spread=2.5, heterogeneity=0.0)
    w = synthetic_world(0, n_prompts=N_FIT + N_TEST, n_models=N_MODELS, config=cfg)
    x, q = np.asarray(w.prompts.embeddings), np.asarray(w.quality)
    return dict(x=x[:N_FIT], q=q[:N_FIT], x_te=x[N_FIT:], q_te=q[N_FIT:], costs=np.asarray(w.llms.costs))


@pytest.fixture(scope="module", params=["mlp", "mf"])
def fitted(request, world):
    return FixedPoolRouter.fit(world["x"], world["q"], kind=request.param, seed=0, config=CONFIG)


def _constant_log_loss(q_fit, q_test):
    p = np.clip(q_fit.mean(axis=0), 1e-7, 1 - 1e-7)
    return float(-np.mean(q_test * np.log(p) + (1 - q_test) * np.log1p(-p)))


def test_training_reduces_the_loss(fitted):
    assert min(fitted.info["train_loss"]) < fitted.info["initial_train_loss"] - 0.05
    assert min(fitted.info["heldout_loss"]) < fitted.info["initial_heldout_loss"] - 0.05


def test_beats_the_constant_predictor_on_test_prompts(fitted, world):
    constant = _constant_log_loss(world["q"], world["q_te"])
    assert fitted.log_loss(world["x_te"], world["q_te"]) < constant - 0.05
    # And as a router: at lambda = 0 it is more accurate than always picking the best single LLM.
    est = fitted.estimates(world["x_te"])
    routed = world["q_te"][np.arange(N_TEST), np.argmin(est, axis=1)].mean()
    assert routed > world["q_te"].mean(axis=0).max()


def test_estimates_are_one_minus_predicted_correctness(fitted, world):
    p = fitted.predict_correct(world["x_te"])
    assert p.shape == (N_TEST, N_MODELS) and np.all((p > 0) & (p < 1))
    np.testing.assert_allclose(fitted.estimates(world["x_te"]), 1.0 - p, atol=1e-7)


def test_eager_equals_jit(fitted, world):
    params = type(fitted.params)(*(jnp.asarray(a) for a in fitted.params))
    args = (params, jnp.asarray(world["x_te"][:20]), jnp.asarray(fitted.mean), jnp.asarray(fitted.scale))
    jitted = fixed_pool._predict_jit(*args, kind=fitted.kind)
    with jax.disable_jit():
        eager = fixed_pool.predict_correct_kernel(*args, kind=fitted.kind)
    np.testing.assert_allclose(np.asarray(eager), np.asarray(jitted), rtol=1e-5, atol=1e-6)


def test_second_fit_with_the_same_shapes_does_not_recompile(fitted, world):
    before = training.train_epoch._cache_size()
    rng = np.random.default_rng(1)
    x = world["x"] + 0.1 * rng.normal(size=world["x"].shape)
    q = world["q"][rng.permutation(N_FIT)]
    again = FixedPoolRouter.fit(x, q, kind=fitted.kind, seed=5, config=CONFIG)
    assert training.train_epoch._cache_size() == before
    assert again.info["n_fit"] == fitted.info["n_fit"]


def test_deterministic_for_a_seed(fitted, world):
    again = FixedPoolRouter.fit(world["x"], world["q"], kind=fitted.kind, seed=0, config=CONFIG)
    for a, b in zip(again.params, fitted.params):
        np.testing.assert_array_equal(a, b)
    assert again.info["train_loss"] == fitted.info["train_loss"]


def test_label_mask_excludes_entries(world):
    # Labels outside the mask are flipped: a router trained with the mask must not see them.
    rng = np.random.default_rng(2)
    mask = rng.random(world["q"].shape) > 0.3
    corrupted = np.where(mask, world["q"], 1.0 - world["q"])
    cfg = dataclasses.replace(CONFIG, epochs=3)
    with_mask = FixedPoolRouter.fit(world["x"], corrupted, kind="mlp", label_mask=mask, seed=0, config=cfg)
    with_nan = FixedPoolRouter.fit(world["x"], np.where(mask, world["q"], np.nan), kind="mlp", seed=0, config=cfg)
    for a, b in zip(with_mask.params, with_nan.params):
        np.testing.assert_array_equal(a, b)


def test_save_load_round_trip(fitted, world, tmp_path):
    loaded = FixedPoolRouter.load(fitted.save(tmp_path / "fp"))
    assert loaded.kind == fitted.kind and loaded.info == fitted.info
    np.testing.assert_array_equal(loaded.estimates(world["x_te"]), fitted.estimates(world["x_te"]))


def test_random_router():
    est = np.asarray(random_router_estimates(0, 4000, 3))
    assert est.shape == (4000, 3) and np.all((est >= 0) & (est < 1))
    np.testing.assert_array_equal(est, np.asarray(random_router_estimates(jax.random.key(0), 4000, 3)))
    costs = np.array([1.0, 2.0, 4.0], np.float32)
    q = np.tile(np.array([[0.0, 1.0, 1.0]], np.float32), (4000, 1))
    res = sweep(est, make_units(None, quality=q, costs=costs), costs, np.array([0.0, 10.0], np.float32))
    # lambda = 0: a uniform draw per prompt; a large lambda: always the cheapest model.
    assert np.asarray(res.mean_cost)[0, 0] == pytest.approx(costs.mean(), rel=0.05)
    assert np.asarray(res.mean_quality)[0, 0] == pytest.approx(2 / 3, abs=0.03)
    assert np.asarray(res.mean_cost)[0, 1] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="n_models must be >= 1"):
        random_router_estimates(0, 3, 0)


@pytest.mark.parametrize(
    "change, match",
    [
        (dict(kind="svm"), "kind must be one of"),
        (dict(q=np.full((N_FIT, N_MODELS), -0.5)), r"quality must lie in \[0, 1\]"),
        (dict(q=np.ones((N_FIT + 1, N_MODELS))), "quality has 501 rows"),
        (dict(x=np.full((N_FIT, DIM), np.inf)), "embeddings must be finite"),
        (dict(q=np.full((N_FIT, N_MODELS), np.nan)), "no label at all"),
        (dict(config=learned_map.LearnedMapConfig()), "config must be a FixedPoolConfig"),
        (dict(seed=-1), "seed must be >= 0"),
    ],
)
def test_invalid_inputs_raise(world, change, match):
    kw = dict(x=world["x"], q=world["q"], kind="mlp", config=CONFIG, seed=0) | change
    with pytest.raises((ValueError, TypeError), match=match):
        FixedPoolRouter.fit(kw["x"], kw["q"], kind=kw["kind"], config=kw["config"], seed=kw["seed"])


def test_invalid_config_and_prediction_inputs(fitted):
    with pytest.raises(ValueError, match="hidden must be >= 1"):
        FixedPoolConfig(hidden=0)
    with pytest.raises(ValueError, match="embeddings has shape"):
        fitted.estimates(np.ones((3, DIM + 2)))
    with pytest.raises(ValueError, match="quality has 2 model columns"):
        fitted.log_loss(np.ones((3, DIM)), np.ones((3, 2)))


@pytest.mark.slow  # compiles the doctest's own shapes
def test_docstring_examples():
    assert doctest.testmod(fixed_pool, extraglobs={"np": np}).failed == 0
