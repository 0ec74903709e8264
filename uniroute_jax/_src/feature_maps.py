"""Prompt feature maps `Phi(x)`: the one part that differs between UniRoute's two variants.

A router estimates the error of LLM `h` on prompt `x` as `Phi(x) . Psi(h)`. Everything else
(representing LLMs, routing, sweeps, exact curves, calibration, files) is the same whichever map
gives `Phi`:

- `HardMap`: k-means centroids; `Phi(x)` is the one-hot vector of the nearest centroid
  (UniRoute (K-Means)). Prompts of one cluster share every decision, so routing is a per-cluster
  lookup and sweeps run on one unit per cluster.
- `SoftMap`: a learned softmax over the same clusters, `Phi_k(x) = softmax_k(theta_k . x + b_k)`
  (UniRoute (LearnedMap)); decisions are made per prompt. Its `psi_source` says whether LLMs are
  represented on the hard clusters of the centroids it started from (the paper's recipe) or on
  the soft weights themselves.

Both keep their centroids: `assign` (the hard cluster of a prompt) is defined for either map.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from uniroute_jax._src import validation
from uniroute_jax._src.kmeans import METRICS, assign_kernel

PSI_SOURCES = ("hard", "soft")


class MapParams(NamedTuple):
    """Parameters of the soft prompt map."""

    theta: jax.Array  # [n_clusters, dim]
    bias: jax.Array  # [n_clusters]


def prepare(x: jax.Array, metric: str) -> jax.Array:
    """Embeddings as the soft map sees them: unit rows under the cosine metric."""
    if metric == "cosine":
        return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-12)
    return x


def prepare_host(x: np.ndarray, metric: str) -> np.ndarray:
    """NumPy twin of `prepare`, for data prepared once on the host."""
    if metric == "cosine":
        return (x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)).astype(np.float32)
    return x.astype(np.float32)


def soft_map(params: MapParams, x: jax.Array) -> jax.Array:
    """`softmax(x theta^T + b)` over clusters for prepared `x [n, dim]`: `[n, n_clusters]`."""
    return jax.nn.softmax(x @ params.theta.T + params.bias, axis=-1)


@functools.partial(jax.jit, static_argnames=("metric",))
def features_kernel(params: MapParams, x: jax.Array, *, metric: str) -> jax.Array:
    """Unchecked `Phi(x) [n_prompts, n_clusters]` of the soft map for raw embeddings `x [n_prompts, dim]`."""
    return soft_map(params, prepare(x, metric))


def _centroids(centroids, metric: str, name: str = "centroids") -> np.ndarray:
    validation.choice(metric, "metric", METRICS)
    c = validation.float_array(centroids, name, ndim=2)
    if c.shape[0] == 0 or c.shape[1] == 0:
        raise ValueError(f"{name} must have at least one cluster and one dimension, got shape {c.shape}")
    return c


@dataclasses.dataclass(frozen=True, eq=False)
class HardMap:
    """Nearest-centroid clusters: `Phi(x)` is one-hot (UniRoute (K-Means)).

    Attributes:
      centroids: [n_clusters, dim] k-means centroids (unit rows under the cosine metric).
      metric: "cosine" or "euclidean".
    """

    centroids: np.ndarray
    metric: str = "cosine"

    kind = "hard"
    hard = True  # one decision per cluster

    def __post_init__(self):
        object.__setattr__(self, "centroids", _centroids(self.centroids, self.metric))
        if self.metric == "cosine":
            validation.unit_rows(self.centroids, "centroids")

    @property
    def n_clusters(self) -> int:
        return self.centroids.shape[0]

    @property
    def dim(self) -> int:
        return self.centroids.shape[1]

    def assign(self, x: np.ndarray) -> np.ndarray:
        """Nearest centroid of each row of checked `x [n, dim]`: `[n]` int32."""
        return np.asarray(assign_kernel(jnp.asarray(x), jnp.asarray(self.centroids), metric=self.metric))

    def features(self, x: np.ndarray) -> np.ndarray:
        """One-hot `Phi(x)`: `[n, n_clusters]` float32."""
        return np.eye(self.n_clusters, dtype=np.float32)[self.assign(x)]

    def representation_weights(self, x: np.ndarray) -> np.ndarray:
        """What LLMs are represented on: the hard cluster of each validation prompt, `[n]` int32."""
        return self.assign(x)

    def representation(self) -> tuple[dict[str, np.ndarray], dict[str, str]]:
        """`(arrays, metadata)` that decide how LLMs are represented: pools built from equal ones
        hold the same rows, whichever router built them."""
        return {"centroids": self.centroids}, {"metric": self.metric, "psi_source": "hard"}

    def to_file(self) -> tuple[dict[str, np.ndarray], dict[str, str]]:
        """`(arrays, metadata)` that `map_from_file` turns back into this map."""
        return {"centroids": self.centroids}, {"feature_map": self.kind, "metric": self.metric}


@dataclasses.dataclass(frozen=True, eq=False)
class SoftMap:
    """A learned softmax over the clusters: `Phi(x) = softmax(theta x + b)` (UniRoute (LearnedMap)).

    Attributes:
      theta: [n_clusters, dim] map weights (applied to unit rows under the cosine metric).
      bias: [n_clusters] map offsets.
      centroids: [n_clusters, dim] the k-means centroids the map started from: `assign` and, with
        `psi_source="hard"`, the clusters LLMs are represented on.
      metric: "cosine" or "euclidean".
      psi_source: "hard" (represent LLMs on the hard clusters, the paper's recipe) or "soft" (on
        the map's own weights, as in training).
    """

    theta: np.ndarray
    bias: np.ndarray
    centroids: np.ndarray
    metric: str = "cosine"
    psi_source: str = "hard"

    kind = "soft"
    hard = False  # decisions per prompt

    def __post_init__(self):
        validation.choice(self.psi_source, "psi_source", PSI_SOURCES)
        theta = _centroids(self.theta, self.metric, "theta")
        k, dim = theta.shape
        object.__setattr__(self, "theta", theta)
        object.__setattr__(self, "bias", validation.float_array(self.bias, "bias", shape=(k,)))
        object.__setattr__(self, "centroids", validation.float_array(self.centroids, "centroids", shape=(k, dim)))
        if self.metric == "cosine":
            validation.unit_rows(self.centroids, "centroids")

    @property
    def n_clusters(self) -> int:
        return self.theta.shape[0]

    @property
    def dim(self) -> int:
        return self.theta.shape[1]

    @property
    def params(self) -> MapParams:
        return MapParams(jnp.asarray(self.theta), jnp.asarray(self.bias))

    def assign(self, x: np.ndarray) -> np.ndarray:
        """Hard k-means cluster (nearest centroid) of each row of checked `x [n, dim]`: `[n]` int32."""
        return np.asarray(assign_kernel(jnp.asarray(x), jnp.asarray(self.centroids), metric=self.metric))

    def features(self, x: np.ndarray) -> np.ndarray:
        """Soft cluster weights `Phi(x)`: `[n, n_clusters]`, rows summing to 1."""
        return np.asarray(features_kernel(self.params, jnp.asarray(x), metric=self.metric))

    def representation_weights(self, x: np.ndarray) -> np.ndarray:
        """Hard clusters `[n]` (psi_source "hard") or soft weights `[n, n_clusters]` ("soft")."""
        return self.assign(x) if self.psi_source == "hard" else self.features(x)

    def representation(self) -> tuple[dict[str, np.ndarray], dict[str, str]]:
        """As `HardMap.representation`: on hard clusters a pool is the k-means router's pool too."""
        if self.psi_source == "hard":
            return HardMap(self.centroids, self.metric).representation()
        arrays = {"theta": self.theta, "bias": self.bias, "centroids": self.centroids}
        return arrays, {"metric": self.metric, "psi_source": "soft"}

    def to_file(self) -> tuple[dict[str, np.ndarray], dict[str, str]]:
        """`(arrays, metadata)` that `map_from_file` turns back into this map."""
        arrays = {"theta": self.theta, "bias": self.bias, "centroids": self.centroids}
        return arrays, {"feature_map": self.kind, "metric": self.metric, "psi_source": self.psi_source}


FeatureMap = HardMap | SoftMap


def map_from_file(arrays: dict[str, np.ndarray], meta: dict) -> FeatureMap:
    """The feature map stored by `to_file`; raises `KeyError` naming a missing field."""
    kind = meta.get("feature_map", "hard")  # files written before soft maps existed hold hard maps
    if kind == "hard":
        return HardMap(arrays["centroids"], meta["metric"])
    if kind == "soft":
        return SoftMap(arrays["theta"], arrays["bias"], arrays["centroids"], meta["metric"], meta["psi_source"])
    raise ValueError(f"unknown feature map {kind!r}: expected 'hard' or 'soft'")
