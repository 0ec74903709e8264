"""uniroute-jax: dynamic LLM routing (UniRoute) with a JAX numerical core."""

from uniroute_jax._src.baselines import oracle_estimates, zero_router_estimates
from uniroute_jax._src.error_vectors import DEFAULT_ALPHA, ErrorVectors, error_vectors
from uniroute_jax._src.kmeans import KMeansResult, assign_clusters, kmeans
from uniroute_jax._src.router import Curves, Pool, Routing, UniRouter
from uniroute_jax._src.routing import (
    RouteResult,
    RoutingUnits,
    SweepResult,
    lambda_grid,
    make_units,
    route,
    sweep,
)
from uniroute_jax._src.synthetic import (
    LLMs,
    PromptSpace,
    Prompts,
    World,
    WorldConfig,
    error_probability,
    make_world,
    sample_llms,
    sample_prompt_space,
    sample_prompts,
    synthetic_world,
)

__version__ = "0.1.0"

__all__ = [
    "Curves",
    "DEFAULT_ALPHA",
    "ErrorVectors",
    "KMeansResult",
    "LLMs",
    "Pool",
    "PromptSpace",
    "Prompts",
    "RouteResult",
    "Routing",
    "RoutingUnits",
    "SweepResult",
    "UniRouter",
    "World",
    "WorldConfig",
    "assign_clusters",
    "error_probability",
    "error_vectors",
    "kmeans",
    "lambda_grid",
    "make_units",
    "make_world",
    "oracle_estimates",
    "route",
    "sample_llms",
    "sample_prompt_space",
    "sample_prompts",
    "sweep",
    "synthetic_world",
    "zero_router_estimates",
]
