import jax
import numpy as np

import uniroute_jax as ur


def test_world_is_deterministic_and_consistent():
    a = ur.synthetic_world(7, n_prompts=300, n_models=5)
    b = ur.synthetic_world(7, n_prompts=300, n_models=5)
    np.testing.assert_array_equal(np.asarray(a.quality), np.asarray(b.quality))
    assert a.p_error.shape == (300, 5) and a.quality.shape == (300, 5)
    p = np.asarray(a.p_error)
    assert np.all((p > 0) & (p < 1))
    assert np.all(np.asarray(a.llms.costs) > 0)
    # Labels follow the exact probabilities.
    assert abs(np.asarray(a.quality).mean() - (1 - p).mean()) < 0.05


def test_zero_heterogeneity_makes_error_constant_per_component():
    cfg = ur.WorldConfig(heterogeneity=0.0, n_components=4)
    w = ur.make_world(jax.random.key(0), cfg, 400, 3)
    p, z = np.asarray(w.p_error), np.asarray(w.prompts.components)
    for k in range(4):
        if (z == k).any():
            assert np.ptp(p[z == k], axis=0).max() < 1e-6


def test_costs_rise_with_ability():
    w = ur.synthetic_world(0, n_prompts=10, n_models=200)
    r = np.corrcoef(np.asarray(w.llms.ability), np.log(np.asarray(w.llms.costs)))[0, 1]
    assert r > 0.8


def test_worlds_vmap_over_keys():
    cfg = ur.WorldConfig()
    many = jax.vmap(lambda k: ur.make_world(k, cfg, 50, 4).quality)(jax.random.split(jax.random.key(1), 3))
    one = ur.make_world(jax.random.split(jax.random.key(1), 3)[1], cfg, 50, 4).quality
    np.testing.assert_array_equal(np.asarray(many[1]), np.asarray(one))
