"""A synthetic routing world in which every quantity is known.

Prompts come from a mixture of `n_components` Gaussian components in `R^dim`. An LLM has an
overall ability, a per-component skill around it, and a direction along which its skill varies
*within* a component; `heterogeneity` scales that within-component variation, so at 0 the
error probability is constant on each component and a router on the true components is
Bayes-optimal. Costs rise with ability, with noise, so no model dominates for free.

    logit P(correct | x, h) = skill[h, z(x)] - difficulty[z(x)]
                              + heterogeneity * <direction[h], x - mean[z(x)]> / sqrt(dim)

Every sampler takes an explicit key and fixed-shape arguments, so it vmaps over keys to draw
many worlds, pools or trials at once. The `theory` package builds its meta-distributions on these.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from uniroute_jax._src import validation


@dataclasses.dataclass(frozen=True)
class WorldConfig:
    """Shape and spread of a synthetic world (all fields are static under jit).

    Attributes:
      dim: embedding dimension.
      n_components: number of latent prompt components `K*`.
      separation: standard deviation of the component means (within-component noise has std 1).
      skill_spread: std of an LLM's per-component skill around its ability (specialisation).
      difficulty_spread: std of the per-component difficulty.
      heterogeneity: scale of the within-component, per-prompt variation of an LLM's skill.
      cost_slope: log-cost gained per unit of ability.
      cost_noise: std of the log-cost noise.
      ability_mean: mean LLM ability (logit units); sets the overall accuracy level.
    """

    dim: int = 16
    n_components: int = 8
    separation: float = 3.0
    skill_spread: float = 1.2
    difficulty_spread: float = 1.0
    heterogeneity: float = 0.5
    cost_slope: float = 1.5
    cost_noise: float = 0.4
    ability_mean: float = 1.0


class PromptSpace(NamedTuple):
    """The latent prompt mixture."""

    means: jax.Array  # [n_components, dim]
    difficulty: jax.Array  # [n_components]
    weights: jax.Array  # [n_components] mixture weights, sum to 1


class Prompts(NamedTuple):
    embeddings: jax.Array  # [n_prompts, dim]
    components: jax.Array  # [n_prompts] int32 latent component


class LLMs(NamedTuple):
    ability: jax.Array  # [n_models]
    skills: jax.Array  # [n_models, n_components] logit of correctness per component
    directions: jax.Array  # [n_models, dim] within-component sensitivity
    costs: jax.Array  # [n_models] cost per query (> 0)


class World(NamedTuple):
    space: PromptSpace
    prompts: Prompts
    llms: LLMs
    p_error: jax.Array  # [n_prompts, n_models] exact P(error | x, h)
    quality: jax.Array  # [n_prompts, n_models] sampled 0/1 correctness (float32)


def sample_prompt_space(key: jax.Array, config: WorldConfig) -> PromptSpace:
    """Draws component means, difficulties and mixture weights."""
    k_mean, k_diff, k_w = jax.random.split(key, 3)
    means = config.separation * jax.random.normal(k_mean, (config.n_components, config.dim))
    difficulty = config.difficulty_spread * jax.random.normal(k_diff, (config.n_components,))
    # Log-normal weights (std 0.4 in log space): unequal, but no component vanishes. Cheaper to
    # compile than a Dirichlet draw, whose gamma sampler dominates the world's compile time.
    weights = jax.nn.softmax(0.4 * jax.random.normal(k_w, (config.n_components,)))
    return PromptSpace(means, difficulty, weights)


def sample_prompts(key: jax.Array, space: PromptSpace, n_prompts: int) -> Prompts:
    """Draws `n_prompts` prompts from the mixture."""
    k_z, k_x = jax.random.split(key)
    z = jax.random.categorical(k_z, jnp.log(space.weights), shape=(n_prompts,)).astype(jnp.int32)
    x = space.means[z] + jax.random.normal(k_x, (n_prompts, space.means.shape[1]))
    return Prompts(x, z)


def sample_llms(key: jax.Array, config: WorldConfig, n_models: int) -> LLMs:
    """Draws `n_models` LLMs from the meta-distribution."""
    k_a, k_s, k_d, k_c = jax.random.split(key, 4)
    ability = config.ability_mean + jax.random.normal(k_a, (n_models,))
    skills = ability[:, None] + config.skill_spread * jax.random.normal(k_s, (n_models, config.n_components))
    directions = jax.random.normal(k_d, (n_models, config.dim))
    log_cost = config.cost_slope * ability + config.cost_noise * jax.random.normal(k_c, (n_models,))
    return LLMs(ability, skills, directions, jnp.exp(log_cost - jnp.max(log_cost)))


def error_probability(space: PromptSpace, prompts: Prompts, llms: LLMs, heterogeneity: ArrayLike) -> jax.Array:
    """Exact `P(error | x, h)`, `[n_prompts, n_models]`."""
    z = prompts.components
    offset = prompts.embeddings - space.means[z]
    dim = space.means.shape[1]
    logit = (llms.skills[:, z].T - space.difficulty[z][:, None]
             + heterogeneity * (offset @ llms.directions.T) / jnp.sqrt(dim))
    return jax.nn.sigmoid(-logit)


@functools.partial(jax.jit, static_argnames=("config", "n_prompts", "n_models"))
def make_world(key: jax.Array, config: WorldConfig, n_prompts: int, n_models: int) -> World:
    """Draws a whole world: prompt space, prompts, LLMs, exact error probabilities and labels.

    Args:
      key: PRNG key.
      config: a `WorldConfig` (static).
      n_prompts: number of prompts (static).
      n_models: number of LLMs (static).

    Returns:
      A `World`; `quality[i, h]` is 1 when LLM `h` answered prompt `i` correctly.
    """
    k_space, k_prompts, k_llms, k_labels = jax.random.split(key, 4)
    space = sample_prompt_space(k_space, config)
    prompts = sample_prompts(k_prompts, space, n_prompts)
    llms = sample_llms(k_llms, config, n_models)
    p_err = error_probability(space, prompts, llms, config.heterogeneity)
    quality = (jax.random.uniform(k_labels, p_err.shape) >= p_err).astype(jnp.float32)
    return World(space, prompts, llms, p_err, quality)


def synthetic_world(seed: int = 0, *, n_prompts: int = 6000, n_models: int = 30,
                    config: WorldConfig | None = None) -> World:
    """Checked entry point: a world drawn from `seed` with the default (or given) config."""
    n_prompts = validation.positive_int(n_prompts, "n_prompts")
    n_models = validation.positive_int(n_models, "n_models")
    seed = validation.positive_int(seed, "seed", minimum=0)
    config = WorldConfig() if config is None else config
    if not isinstance(config, WorldConfig):
        raise TypeError(f"config must be a WorldConfig, got {type(config).__name__}")
    return make_world(jax.random.key(seed), config, n_prompts, n_models)
