"""The meta-distribution knobs of theory.meta are the library generator's own parameters."""

import dataclasses

import jax
import numpy as np

import uniroute_jax as ur


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
