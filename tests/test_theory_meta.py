"""The meta-distribution knobs of theory.meta: the library generator's own parameters, and each
moves the statistic it is meant to move."""

import dataclasses

import jax
import numpy as np
import pytest

import uniroute_jax as ur
from theory import meta


def test_ability_shift_and_cost_power_match_the_generator_parameters():
    key = jax.random.key(3)
    base = ur.WorldConfig()
    llms = ur.sample_llms(key, base, 6)
    # ability_shift: the generator with ability_mean + shift (costs are normalised by their max).
    shifted = ur.sample_llms(key, dataclasses.replace(base, ability_mean=base.ability_mean - 2.5), 6)
    np.testing.assert_allclose(np.asarray(shifted.skills), np.asarray(llms.skills) - 2.5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(shifted.costs), np.asarray(llms.costs), rtol=1e-5)
    # cost_power s: the generator with cost_slope and cost_noise both scaled by s.
    spread = ur.sample_llms(key, dataclasses.replace(base, cost_slope=2 * base.cost_slope,
                                                     cost_noise=2 * base.cost_noise), 6)
    np.testing.assert_allclose(np.asarray(spread.costs), np.asarray(llms.costs) ** 2, rtol=1e-4)


# ------------------------------------------------------------------ each knob of theory.meta moves its statistic

SIZES = dict(config=ur.WorldConfig(dim=4, n_components=3), n_pop=600, n_train=40, max_models=6)


def _instance(**knobs):
    # One key for every call: only the knob differs between the instances compared.
    return jax.tree.map(np.asarray, meta.sample_instance(jax.random.key(5), meta.settings(**knobs), **SIZES))


def _within_component_std(inst):
    comp = inst.prompts.components
    return np.mean([inst.p_error[comp == k].std(axis=0).mean() for k in np.unique(comp)])


def test_heterogeneity_knob_spreads_error_within_components():
    stds = [_within_component_std(_instance(heterogeneity=h)) for h in (0.0, 0.5, 2.0)]
    assert stds[0] < 1e-6  # no heterogeneity: P(error) is constant on each component
    assert stds[0] < stds[1] < stds[2]
    assert stds[2] > 0.05


def test_cost_power_knob_raises_the_costs_to_its_power():
    one, two, half = (_instance(cost_power=s) for s in (1.0, 2.0, 0.5))
    np.testing.assert_allclose(two.costs, one.costs ** 2, rtol=1e-5)
    np.testing.assert_allclose(half.costs, np.sqrt(one.costs), rtol=1e-5)
    spread = lambda inst: np.log(inst.costs).std()  # noqa: E731
    assert spread(two) == pytest.approx(2 * spread(one), rel=1e-4)
    assert np.ptp(one.costs) > 0.05  # the costs do differ, so the power has something to spread
    np.testing.assert_array_equal(two.p_error, one.p_error)  # errors untouched


def test_ability_shift_knob_moves_the_error_rate_and_not_the_costs():
    easy, base, hard = (_instance(ability_shift=s) for s in (1.0, 0.0, -2.5))
    assert easy.p_error.mean() < base.p_error.mean() - 0.05
    assert hard.p_error.mean() > base.p_error.mean() + 0.2
    np.testing.assert_allclose(hard.costs, base.costs, rtol=1e-5)


def test_pool_size_knob_masks_the_first_rows():
    for size in (1, 3, 6):
        mask = _instance(pool_size=size).model_mask
        np.testing.assert_array_equal(mask, np.arange(6) < size)
