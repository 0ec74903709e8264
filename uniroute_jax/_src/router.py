"""The public router: a prompt feature map plus a pool of LLM rows, `argmin_h Phi(x) . Psi(h) + lam c(h)`.

    router = UniRouter.fit(train_embeddings, n_clusters=25)              # k-means map (hard)
    pool = router.represent(val_embeddings, val_quality, names=[...], costs=[...])
    pool = pool + router.represent(val_embeddings, new_llm_quality[:, None], names=["new"], costs=[0.3])
    chosen = router.route(prompt_embeddings, pool, lam=0.5)             # model name per prompt
    curves = router.sweep(test_embeddings, pool, quality=test_quality)  # every budget at once
    learned = router.learn_map(train_x, train_q, val_x, val_q)         # the same router, soft map

The feature map (`feature_maps.HardMap` or `SoftMap`) is the only part that differs between
UniRoute (K-Means) and UniRoute (LearnedMap); every method here is written once for both. With a
hard map every prompt of a cluster shares its decision, so routing is a per-cluster lookup and
sweeps work on one unit per cluster; with a soft map decisions are made per prompt.
"""

from __future__ import annotations

import dataclasses
import functools
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from uniroute_jax._src import persistence, validation
from uniroute_jax._src.curves import Calibration, ExactCurve, calibrate, exact_curve, route_calibrated
from uniroute_jax._src.error_vectors import DEFAULT_ALPHA, error_vectors
from uniroute_jax._src.estimators import fit_estimator, represent_new
from uniroute_jax._src.feature_maps import FeatureMap, HardMap, SoftMap, features_kernel, map_from_file
from uniroute_jax._src.kmeans import assign_kernel, kmeans
from uniroute_jax._src.learned_map import LearnedMapConfig, train_soft_map
from uniroute_jax._src.pool import Pool, check_pool, check_prompt_tables
from uniroute_jax._src.routing import SweepResult, lambda_grid, make_units, route_kernel
from uniroute_jax._src.selection import select_prompts
from uniroute_jax._src.sweeps import sweep
from uniroute_jax._src.training import as_key, check_quality, host_rng

FILE_KINDS = ("router", "learned_map_router")  # the second: files of the former LearnedMapRouter


class Curves(NamedTuple):
    """Cost-quality curves of one router over pools and budgets."""

    lams: np.ndarray  # [n_budgets] trade-offs, increasing
    mean_cost: np.ndarray  # [n_pools, n_budgets]
    mean_quality: np.ndarray  # [n_pools, n_budgets] (NaN when no labels were given)
    mean_error_estimate: np.ndarray  # [n_pools, n_budgets]
    masks: np.ndarray  # [n_pools, n_models] which pool models each curve used


class Routing(NamedTuple):
    """Decisions for a batch of prompts."""

    model: np.ndarray  # [n_prompts] str, chosen model name
    index: np.ndarray  # [n_prompts] int32, row of the chosen model in the pool
    cluster: np.ndarray  # [n_prompts] int32, cluster of each prompt (the heaviest one under a soft map)


@functools.partial(jax.jit, static_argnames=("metric",))
def route_embeddings_kernel(x: jax.Array, centroids: jax.Array, table: jax.Array, *, metric: str):
    """Unchecked hard-map serving path: `(model row [n_prompts], cluster [n_prompts])` for `x [n_prompts, dim]`."""
    labels = assign_kernel(x, centroids, metric=metric)
    return table[labels], labels


@functools.partial(jax.jit, static_argnames=("metric",))
def _route_soft_kernel(params, x, psi, costs, mask, lam, *, metric: str):
    phi = features_kernel(params, x, metric=metric)
    return route_kernel(phi, psi, costs, mask, lam).choice, jnp.argmax(phi, axis=1).astype(jnp.int32)


@dataclasses.dataclass(frozen=True, eq=False)
class RoutingTable:
    """A router frozen at one pool and one `lambda`, for serving.

    A hard map is a nearest-centroid search and a lookup in `table`: small batches run it in
    NumPy on the host (a batch of one takes microseconds, where a JAX dispatch and host-device
    copy cost about 50-100 us on a CPU), batches of `jax_from` rows or more the jitted kernel; both
    give the same decisions. A soft map scores every model of the frozen pool per prompt, always
    in the jitted kernel (a host softmax could round a near-tie the other way).

    Attributes:
      feature_map: the router's `HardMap` or `SoftMap`.
      psi: [n_models, n_clusters] and costs: [n_models] of the models that may be chosen.
      lam: the trade-off.
      names: [n_models] model names.
      table: [n_clusters] model row per cluster (hard maps; the soft map's heaviest-cluster choice otherwise).
      jax_from: the batch size from which JAX is used.
    """

    feature_map: FeatureMap
    psi: np.ndarray
    costs: np.ndarray
    lam: float
    names: tuple[str, ...]
    table: np.ndarray
    jax_from: int = 256

    @property
    def centroids(self) -> np.ndarray:
        return self.feature_map.centroids

    @property
    def metric(self) -> str:
        return self.feature_map.metric

    def rows(self, embeddings: ArrayLike) -> np.ndarray:
        """Model row of each prompt, `[n_prompts]` int32, from `[n_prompts, dim]` embeddings."""
        fmap = self.feature_map
        x = validation.float_array(embeddings, "embeddings", ndim=2)  # NaN, inf and None rows refused
        if x.shape[1] != fmap.dim:
            raise ValueError(f"embeddings must have shape (n_prompts, {fmap.dim}), got {x.shape}")
        if fmap.metric == "cosine":
            validation.embedding_rows(x, "embeddings")  # an all-zero row has no nearest centroid
        if fmap.hard and x.shape[0] < self.jax_from:
            scores = x @ fmap.centroids.T
            if fmap.metric == "euclidean":
                labels = np.argmin(np.sum(fmap.centroids**2, axis=1)[None, :] - 2.0 * scores, axis=1)
            else:
                labels = np.argmax(scores, axis=1)
            return self.table[labels]
        return self._rows_jax(x)

    def _rows_jax(self, x: np.ndarray) -> np.ndarray:
        fmap = self.feature_map
        if fmap.hard:
            return np.asarray(route_embeddings_kernel(jnp.asarray(x), jnp.asarray(fmap.centroids),
                                                      jnp.asarray(self.table), metric=fmap.metric)[0])
        mask = jnp.ones(len(self.names), bool)
        return np.asarray(_route_soft_kernel(fmap.params, jnp.asarray(x), jnp.asarray(self.psi),
                                             jnp.asarray(self.costs), mask, jnp.asarray(self.lam, jnp.float32),
                                             metric=fmap.metric)[0])

    def __call__(self, embeddings: ArrayLike) -> np.ndarray:
        """Chosen model name of each prompt, `[n_prompts]` str."""
        return np.asarray(self.names)[self.rows(embeddings)]


def _log(verbose: bool, msg: str) -> None:
    if verbose:
        print(f"[uniroute] {msg}", file=sys.stderr, flush=True)


@dataclasses.dataclass(frozen=True, eq=False, init=False)
class UniRouter:
    """UniRoute: prompts map to `Phi(x)` over clusters, LLMs to per-cluster error rates `Psi(h)`.

    `UniRouter(centroids, metric)` is the k-means router (a `HardMap`); `UniRouter(SoftMap(...))`
    or `router.learn_map(...)` the learned-map one.

    Attributes:
      feature_map: `HardMap` (k-means clusters, one-hot `Phi`) or `SoftMap` (learned softmax).
      alpha: pseudo-count shrinking sparse clusters toward an LLM's overall error.
      info: fit diagnostics (k-means inertia, iterations, seconds; the learned map's losses).
    """

    feature_map: FeatureMap
    alpha: float
    info: dict[str, Any]

    def __init__(self, feature_map: FeatureMap | ArrayLike, metric: str | None = None,
                 alpha: float = DEFAULT_ALPHA, info: dict[str, Any] | None = None):
        if not isinstance(feature_map, (HardMap, SoftMap)):
            feature_map = HardMap(feature_map, "cosine" if metric is None else metric)
        elif metric is not None and metric != feature_map.metric:
            raise ValueError(f"metric={metric!r} contradicts the feature map's metric {feature_map.metric!r}")
        object.__setattr__(self, "feature_map", feature_map)
        object.__setattr__(self, "alpha", validation.nonnegative_float(alpha, "alpha"))
        object.__setattr__(self, "info", {} if info is None else dict(info))

    def __repr__(self) -> str:
        return (f"UniRouter({self.feature_map.kind} map, {self.n_clusters} clusters x {self.dim} dims, "
                f"metric={self.metric!r}, alpha={self.alpha})")

    @functools.cached_property
    def fingerprint(self) -> str:
        """Identity of how this router represents LLMs (what `Psi` is computed on, and alpha),
        stored in the pools it builds: a pool is refused by a router that would build other rows.
        A learned map with `psi_source="hard"` shares it with the k-means router it started from."""
        arrays, meta = self.feature_map.representation()
        return persistence.fingerprint(arrays, {**meta, "alpha": self.alpha})

    def check_pool(self, pool: Pool, *, what: str = "pool", other: str = "this router",
                   allow_empty: bool = False) -> Pool:
        """Returns `pool` if it belongs to this router, else raises naming `what` and `other`.

        It belongs when it has a row per LLM (unless `allow_empty`) over this router's clusters
        and was built by this router (`fingerprint`; a pool saved before fingerprints were kept
        passes). The one check of every path that takes a pool for a router: the methods here,
        the command line and the LiteLLM plugin's reload of a pool file.
        """
        check_pool(pool, self.n_clusters, what=what, other=other, allow_empty=allow_empty)
        persistence.check_fingerprint(pool.router_fingerprint, self.fingerprint, what=what, other=other)
        return pool

    @property
    def centroids(self) -> np.ndarray:
        """[n_clusters, dim] k-means centroids (the starting point of a soft map)."""
        return self.feature_map.centroids

    @property
    def metric(self) -> str:
        return self.feature_map.metric

    @property
    def n_clusters(self) -> int:
        return self.feature_map.n_clusters

    @property
    def dim(self) -> int:
        return self.feature_map.dim

    # ------------------------------------------------------------------------------ fitting

    @classmethod
    def fit(
        cls,
        embeddings: ArrayLike,
        n_clusters: int,
        *,
        seed: int = 0,
        n_init: int = 3,
        max_iter: int = 300,
        tol: float = 1e-4,
        metric: str = "cosine",
        alpha: float = DEFAULT_ALPHA,
        init_sample: int | None = None,
        verbose: bool = False,
    ) -> UniRouter:
        """UniRoute (K-Means): fits k-means on unlabelled training-prompt embeddings `[n_prompts, dim]`.

        No LLM label is needed: LLMs are represented afterwards with `represent`. `init_sample`
        seeds k-means++ on that many random prompts (see `kmeans`); `verbose` prints progress.
        """
        seed = validation.positive_int(seed, "seed", minimum=0)
        x = validation.float_array(embeddings, "embeddings", ndim=2, copy=False)  # only read by kmeans
        if metric == "cosine":
            validation.embedding_rows(x, "embeddings")  # names the argument and the row
        _log(verbose, f"k-means: {x.shape[0]} prompts x {x.shape[1]} dims, K={n_clusters}, n_init={n_init}")
        start = time.perf_counter()
        res = kmeans(x, n_clusters, jax.random.key(seed), n_init=n_init, max_iter=max_iter, tol=tol, metric=metric,
                     progress=verbose, init_sample=init_sample)
        res.inertia.block_until_ready()
        info = {"inertia": float(res.inertia), "n_iter": int(res.n_iter), "converged": bool(res.converged),
                "seconds": round(time.perf_counter() - start, 3), "n_train": int(x.shape[0]), "seed": seed}
        _log(verbose, f"k-means done in {info['seconds']}s: {info['n_iter']} iterations, converged={info['converged']}")
        return cls(np.asarray(res.centroids), metric, alpha, info)

    @classmethod
    def fit_learned_map(
        cls,
        train_embeddings: ArrayLike,
        train_quality: ArrayLike,
        val_embeddings: ArrayLike,
        val_quality: ArrayLike,
        n_clusters: int,
        *,
        seed: int | jax.Array = 0,
        metric: str = "cosine",
        alpha: float = DEFAULT_ALPHA,
        psi_source: str = "hard",
        train_label_mask: ArrayLike | None = None,
        val_label_mask: ArrayLike | None = None,
        n_init: int = 3,
        max_iter: int = 300,
        config: LearnedMapConfig | None = None,
        verbose: bool = False,
    ) -> UniRouter:
        """UniRoute (LearnedMap) in one call: k-means on the training prompts, then `learn_map`.

        Args:
          train_embeddings, train_quality, val_embeddings, val_quality, psi_source, label masks,
            config, verbose: as for `learn_map`.
          n_clusters: K.
          seed: int seed or PRNG key; k-means and training use keys folded from it.
          metric, alpha, n_init, max_iter: as for `fit`.
        """
        key = as_key(seed)
        k_kmeans, k_train = jax.random.split(key)
        kmeans_seed = int(host_rng(k_kmeans).integers(0, np.iinfo(np.int32).max))
        base = cls.fit(train_embeddings, n_clusters, seed=kmeans_seed, n_init=n_init, max_iter=max_iter,
                       metric=metric, alpha=alpha, verbose=verbose)
        return base.learn_map(train_embeddings, train_quality, val_embeddings, val_quality, seed=k_train,
                              psi_source=psi_source, train_label_mask=train_label_mask,
                              val_label_mask=val_label_mask, config=config, verbose=verbose)

    def learn_map(
        self,
        train_embeddings: ArrayLike,
        train_quality: ArrayLike,
        val_embeddings: ArrayLike,
        val_quality: ArrayLike,
        *,
        seed: int | jax.Array = 0,
        psi_source: str = "hard",
        train_label_mask: ArrayLike | None = None,
        val_label_mask: ArrayLike | None = None,
        config: LearnedMapConfig | None = None,
        verbose: bool = False,
    ) -> UniRouter:
        """This k-means router with a soft map trained on the training LLMs' labels (UniRoute (LearnedMap)).

        The training LLMs' `Psi` comes from the hard clusters on the validation prompts and is held
        fixed (`psi_source="hard"`, the paper's recipe). With `psi_source="soft"`, `Psi` is
        recomputed at every step from the soft map's weights on the validation prompts, and
        `represent` later does the same for new LLMs. See `learned_map`.

        Args:
          train_embeddings: [n_train, dim] training prompts.
          train_quality: [n_train, n_models] training LLMs' quality in [0, 1]; NaN where missing.
          val_embeddings: [n_val, dim] validation prompts.
          val_quality: [n_val, n_models] the same LLMs (same columns) on the validation prompts.
          seed: int seed or PRNG key; equal seeds give identical maps.
          psi_source: "hard" or "soft".
          train_label_mask, val_label_mask: optional bool masks (default: not NaN).
          config: training settings (default `LearnedMapConfig()`); `epochs=0` returns the
            initial, tempered k-means map.
          verbose: one progress line per epoch on stderr.

        Returns:
          A `UniRouter` with a `SoftMap`; `info` holds the per-epoch losses and the k-means info.

        Example:
          >>> rng = np.random.default_rng(0)
          >>> x, q = rng.normal(size=(200, 4)), rng.integers(0, 2, size=(200, 3)).astype(float)
          >>> base = UniRouter(x[:3], metric="euclidean")  # any fitted k-means router
          >>> lm = base.learn_map(x[:150], q[:150], x[150:], q[150:], config=LearnedMapConfig(epochs=2))
          >>> pool = lm.represent(x[150:], q[150:], ["a", "b", "c"], costs=[1.0, 2.0, 4.0])
          >>> lm.estimates(x[:5], pool).shape
          (5, 3)
        """
        if not isinstance(self.feature_map, HardMap):
            raise ValueError("learn_map starts from a k-means router (a HardMap); this router already has a soft map")
        key = as_key(seed)
        train_x = self._embeddings(train_embeddings, "train_embeddings")
        val_x = self._embeddings(val_embeddings, "val_embeddings")
        soft, info = train_soft_map(self.feature_map, self.alpha, train_x, train_quality, val_x, val_quality,
                                    key=key, psi_source=psi_source, train_label_mask=train_label_mask,
                                    val_label_mask=val_label_mask, config=config, verbose=verbose)
        return UniRouter(soft, alpha=self.alpha, info={**info, "kmeans": dict(self.info)})

    # ------------------------------------------------------------------------------ prompts

    def _embeddings(self, embeddings: ArrayLike, name: str = "embeddings") -> np.ndarray:
        x = validation.float_array(embeddings, name, ndim=2)
        if x.shape[1] != self.dim:
            raise ValueError(f"{name} has shape {x.shape} but the router's centroids expect dimension {self.dim}")
        if x.shape[0] == 0:
            raise ValueError(f"{name} holds no prompt")
        if self.metric == "cosine":
            validation.embedding_rows(x, name)  # an all-zero row has no direction, so no cluster
        return x

    def assign(self, embeddings: ArrayLike) -> np.ndarray:
        """Hard k-means cluster (nearest centroid) of each prompt: `[n_prompts]` int32."""
        return self.feature_map.assign(self._embeddings(embeddings))

    def features(self, embeddings: ArrayLike) -> np.ndarray:
        """`Phi(x)`: `[n_prompts, n_clusters]`, rows summing to 1 (one-hot under a hard map)."""
        return self.feature_map.features(self._embeddings(embeddings))

    def estimates(self, embeddings: ArrayLike, pool: Pool) -> np.ndarray:
        """Estimated error `Phi(x) . Psi(h)`: `[n_prompts, n_models]`."""
        self.check_pool(pool)
        x = self._embeddings(embeddings)
        if self.feature_map.hard:
            return pool.psi.T[self.feature_map.assign(x)]
        return self.feature_map.features(x) @ pool.psi.T

    def _phi_and_clusters(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """`(Phi(x) [n, n_clusters], cluster [n])` of checked embeddings, each computed once: the hard
        cluster and its one-hot row, or the soft weights and their heaviest cluster."""
        fmap = self.feature_map
        if fmap.hard:
            cluster = fmap.assign(x)
            return np.eye(self.n_clusters, dtype=np.float32)[cluster], cluster
        phi = fmap.features(x)
        return phi, np.argmax(phi, axis=1).astype(np.int32)

    # ------------------------------------------------------------------------------ LLMs

    def represent(
        self,
        val_embeddings: ArrayLike,
        val_quality: ArrayLike,
        names: Sequence[str],
        costs: ArrayLike,
        *,
        label_mask: ArrayLike | None = None,
        estimator: str | None = None,
        reference: Pool | None = None,
    ) -> Pool:
        """Represents LLMs — seen in training or brand-new — from their validation labels. No refit.

        Args:
          val_embeddings: [n_val, dim] embeddings of the validation ("representative") prompts.
          val_quality: [n_val, n_models] quality in [0, 1] of each LLM on each validation prompt
            ([n_val] for one LLM); NaN (or `label_mask` False) where an LLM was not run.
          names: [n_models] names of the LLMs.
          costs: [n_models] cost per query.
          label_mask: optional [n_val, n_models] bool.
          estimator: None (default) for the router's pseudo-count rule (`alpha`), or one of
            `estimators.METHODS` ("mean", "shrinkage", "hierarchical", "prior"): an estimator
            that learns from the LLMs of `reference` how per-cluster errors co-vary, for LLMs
            with few labels (see `estimators`).
          reference: the pool of LLMs already represented by this router, for `estimator`.

        Returns:
          A `Pool` of those LLMs, on the hard clusters (or, for a soft map with
          `psi_source="soft"`, on its soft weights).
        """
        x = self._embeddings(val_embeddings, "val_embeddings")
        q = np.asarray(val_quality)
        q = validation.float_array(q[:, None] if q.ndim == 1 else q, "val_quality", ndim=2, allow_nan=True)
        if q.shape[0] != x.shape[0]:
            raise ValueError(f"val_quality has {q.shape[0]} rows but val_embeddings has {x.shape[0]} prompts")
        names = (names,) if isinstance(names, str) else tuple(names)
        if len(names) != q.shape[1]:
            raise ValueError(f"names has {len(names)} entries but val_quality has {q.shape[1]} model columns")
        weights = self.feature_map.representation_weights(x)
        ev = error_vectors(weights, q, n_clusters=self.n_clusters, label_mask=label_mask, alpha=self.alpha)
        costs = np.atleast_1d(costs) if np.isscalar(costs) else costs
        pool = Pool(names, costs, np.asarray(ev.psi), np.asarray(ev.counts), np.asarray(ev.error_sums),
                    self.fingerprint)
        if estimator is None:
            return pool
        if reference is None:
            reference = Pool.empty(self.n_clusters)
        elif len(reference):
            self.check_pool(reference)
        return represent_new(reference, pool, estimator)[0]

    def select_prompts(self, candidates: ArrayLike, n: int, pool: Pool | None = None, *,
                       strategy: str = "stratified", seed: int = 0) -> np.ndarray:
        """Which `n` of the candidate prompts to label for a new LLM: `[n]` row indices.

        Args:
          candidates: [n_candidates, dim] embeddings of prompts that could be labelled.
          n: how many to choose.
          pool: the LLMs already represented (needed by "informative": at least two).
          strategy: "random", "stratified" (by cluster mass, the default) or "informative"
            (greedy reduction of the decision-weighted posterior variance under the pool's prior).
          seed: for the random parts.
        """
        est = ref = None
        if strategy == "informative":
            if pool is None or len(pool) < 2:
                raise ValueError("pool must hold at least two represented LLMs for strategy='informative'")
            self.check_pool(pool)
            est, ref = fit_estimator("prior", pool.counts, pool.error_sums, seed=seed), pool.psi
        return select_prompts(self.assign(candidates), n, strategy=strategy, n_clusters=self.n_clusters,
                              estimator=est, reference_psi=ref, seed=seed)

    # ------------------------------------------------------------------------------ routing

    def _model_mask(self, pool: Pool, models: Sequence[str] | None) -> np.ndarray:
        return np.ones(len(pool), bool) if models is None else pool.masks([models])[0]

    def route(self, embeddings: ArrayLike, pool: Pool, lam: float, *, models: Sequence[str] | None = None,
              request_costs: ArrayLike | None = None) -> Routing:
        """Sends each prompt to `argmin_h Phi(x) . Psi(h) + lam * cost(x, h)` over the pool.

        Ties go to the cheaper model, then to the lower row.

        Args:
          embeddings: [n_prompts, dim].
          pool: a `Pool` built by this router (same clusters).
          lam: trade-off >= 0: 0 is the most accurate choice; larger values save cost.
          models: optional subset of the pool's names to route among.
          request_costs: optional [n_prompts, n_models] cost of each request on each pool model
            (e.g. from token counts and prices, see `request_costs`); default the pool's
            per-model costs.

        Returns:
          `Routing(model, index, cluster)`, each `[n_prompts]`.
        """
        self.check_pool(pool)
        lam = validation.nonnegative_float(lam, "lam")
        mask = self._model_mask(pool, models)
        x = self._embeddings(embeddings)
        fmap = self.feature_map
        if request_costs is not None:
            costs = self._request_costs(request_costs, x.shape[0], pool)
            phi, cluster = self._phi_and_clusters(x)
            index = np.asarray(route_kernel(jnp.asarray(phi), jnp.asarray(pool.psi), jnp.asarray(costs),
                                            jnp.asarray(mask), jnp.asarray(lam, jnp.float32)).choice)
            return Routing(np.asarray(pool.names)[index], index, cluster)
        if fmap.hard:
            out = route_embeddings_kernel(jnp.asarray(x), jnp.asarray(fmap.centroids),
                                          jnp.asarray(self._table(pool, lam, mask)), metric=fmap.metric)
        else:
            out = _route_soft_kernel(fmap.params, jnp.asarray(x), jnp.asarray(pool.psi), jnp.asarray(pool.costs),
                                     jnp.asarray(mask), jnp.asarray(lam, jnp.float32), metric=fmap.metric)
        index, cluster = (np.asarray(a) for a in out)
        return Routing(np.asarray(pool.names)[index], index, cluster)

    @staticmethod
    def _request_costs(request_costs: ArrayLike, n_prompts: int, pool: Pool) -> np.ndarray:
        rc = validation.float_array(request_costs, "request_costs", shape=(n_prompts, len(pool)))
        return validation.nonnegative(rc, "request_costs")

    def _table(self, pool: Pool, lam: float, mask: np.ndarray) -> np.ndarray:
        # One decision per cluster: no [n_prompts, n_models] score matrix is ever built.
        per_cluster = route_kernel(jnp.eye(self.n_clusters, dtype=jnp.float32), jnp.asarray(pool.psi),
                                   jnp.asarray(pool.costs), jnp.asarray(mask), jnp.asarray(lam, jnp.float32))
        return np.asarray(per_cluster.choice)

    def decision_table(self, pool: Pool, lam: float, *, models: Sequence[str] | None = None) -> np.ndarray:
        """The model row chosen for a prompt whose `Phi` is all on one cluster, `[n_clusters]` int32.

        Under a hard map that is every prompt of the cluster, so routing is a lookup in this
        table; under a soft map it is the decision at each cluster's vertex of the simplex.
        """
        self.check_pool(pool)
        return self._table(pool, validation.nonnegative_float(lam, "lam"), self._model_mask(pool, models))

    def routing_table(self, pool: Pool, lam: float, *, models: Sequence[str] | None = None,
                      jax_from: int = 256) -> RoutingTable:
        """The router frozen at `pool` and `lam` for serving (see `RoutingTable`)."""
        table = self.decision_table(pool, lam, models=models)
        rows = np.flatnonzero(self._model_mask(pool, models))
        # The frozen pool holds only the chosen models: table rows index into it.
        remap = np.full(len(pool), -1, np.int32)
        remap[rows] = np.arange(rows.size, dtype=np.int32)
        return RoutingTable(self.feature_map, pool.psi[rows].copy(), pool.costs[rows].copy(), float(lam),
                            tuple(pool.names[i] for i in rows), remap[table],
                            validation.positive_int(jax_from, "jax_from"))

    # ------------------------------------------------------------------------------ curves

    def _units(self, embeddings: ArrayLike, pool: Pool, quality, prompt_costs, request_costs=None):
        """`(estimates [n_units, n_models], units, decision costs)`: one unit per cluster (hard map,
        per-model costs) or per prompt (soft map, or per-request costs)."""
        self.check_pool(pool)
        x = self._embeddings(embeddings)
        check_prompt_tables(x.shape[0], pool, quality=quality, prompt_costs=prompt_costs)
        if request_costs is not None:
            costs = self._request_costs(request_costs, x.shape[0], pool)
            # Unless told otherwise, a request costs what the router was told it would.
            prompt_costs = costs if prompt_costs is None else prompt_costs
        else:
            costs = pool.costs
        if self.feature_map.hard and request_costs is None:
            labels = self.feature_map.assign(x)
            units = make_units(labels, n_units=self.n_clusters, quality=quality, prompt_costs=prompt_costs,
                               costs=pool.costs)
            return pool.psi.T, units, costs
        if quality is None and prompt_costs is None:
            prompt_costs = np.broadcast_to(pool.costs, (x.shape[0], len(pool)))
        units = make_units(None, quality=quality, prompt_costs=prompt_costs, costs=pool.costs)
        estimates = pool.psi.T[self.feature_map.assign(x)] if self.feature_map.hard else (
            self.feature_map.features(x) @ pool.psi.T)
        return estimates, units, costs

    def sweep(
        self,
        embeddings: ArrayLike,
        pool: Pool,
        lams: ArrayLike | None = None,
        *,
        quality: ArrayLike | None = None,
        prompt_costs: ArrayLike | None = None,
        subsets: Sequence[Sequence[str]] | np.ndarray | None = None,
        n_budgets: int = 256,
        request_costs: ArrayLike | None = None,
    ) -> Curves:
        """Cost-quality curves over many budgets and sub-pools in one jitted call.

        Args:
          embeddings: [n_prompts, dim] test prompts.
          pool: the model table; `subsets` pick pools out of it.
          lams: [n_budgets] trade-offs (default: `lambda_grid(pool.costs, n_budgets)`).
          quality: optional [n_prompts, n_models] test quality of the pool's models, for realised
            mean quality (columns in `pool.names` order).
          prompt_costs: optional [n_prompts, n_models] realised cost per prompt (default: pool costs).
          subsets: optional pools as lists of names, or an `[n_pools, n_models]` bool mask
            (default: the whole pool).
          n_budgets: grid size when `lams` is None.
          request_costs: optional [n_prompts, n_models] cost per request the router decides with
            (default: the pool's per-model costs); also the realised cost unless `prompt_costs`
            is given.

        Returns:
          `Curves` with `[n_pools, n_budgets]` arrays.
        """
        est, units, costs = self._units(embeddings, pool, quality, prompt_costs, request_costs)
        lams = lambda_grid(pool.costs, n_budgets) if lams is None else lams
        masks = np.ones((1, len(pool)), bool) if subsets is None else pool.masks(subsets)
        # Read every budget off the exact curve: one pass per pool whatever the number of budgets.
        result = sweep(est, units, costs, lams, pool_masks=masks, method="breakpoints")
        return _to_curves(lams, result, masks, quality is not None)

    def exact_curve(
        self,
        embeddings: ArrayLike,
        pool: Pool,
        *,
        quality: ArrayLike | None = None,
        prompt_costs: ArrayLike | None = None,
        subsets: Sequence[Sequence[str]] | np.ndarray | None = None,
        request_costs: ArrayLike | None = None,
    ) -> ExactCurve:
        """Every operating point of the router, over all `lambda >= 0`, for each sub-pool.

        Same arguments as `sweep` without a grid: the result lists each breakpoint where some
        unit's decision changes (at most `n_units * (n_models - 1)`), see `curves.exact_curve`.
        """
        est, units, costs = self._units(embeddings, pool, quality, prompt_costs, request_costs)
        masks = np.ones((1, len(pool)), bool) if subsets is None else pool.masks(subsets)
        return exact_curve(est, units, costs, pool_masks=masks)

    def calibrate(
        self,
        embeddings: ArrayLike,
        pool: Pool,
        *,
        cost: float | None = None,
        quality: float | None = None,
        labels: ArrayLike | None = None,
        prompt_costs: ArrayLike | None = None,
        models: Sequence[str] | None = None,
        request_costs: ArrayLike | None = None,
    ) -> Calibration:
        """The `lambda` (and mix of two neighbouring decisions) meeting a target on calibration prompts.

        Args:
          embeddings: [n_prompts, dim] calibration prompts (a sample of traffic).
          pool: the pool to route among.
          cost: target mean cost per prompt; or
          quality: target mean quality in [0, 1] (needs `labels`). Give exactly one.
          labels: optional [n_prompts, n_models] quality of the pool's models on these prompts.
          prompt_costs: optional [n_prompts, n_models] realised cost per prompt.
          models: optional subset of the pool's names.
          request_costs: optional [n_prompts, n_models] cost per request the router decides with.

        Returns:
          A one-pool `Calibration` (see `curves.calibrate`), for `route_calibrated`.
        """
        subsets = None if models is None else [list(models)]
        exact = self.exact_curve(embeddings, pool, quality=labels, prompt_costs=prompt_costs, subsets=subsets,
                                 request_costs=request_costs)
        return calibrate(exact, cost=cost, quality=quality)

    def route_calibrated(self, embeddings: ArrayLike, pool: Pool, calibration: Calibration, *, seed: int = 0,
                         models: Sequence[str] | None = None, request_costs: ArrayLike | None = None) -> Routing:
        """Routes with a calibration from `calibrate`: each prompt takes the higher-cost decision
        with the calibrated probability, so the mean cost meets the target in expectation.
        `request_costs` ([n_prompts, n_models]) as in `route`."""
        self.check_pool(pool)
        x = self._embeddings(embeddings)
        phi, cluster = self._phi_and_clusters(x)
        est = pool.psi.T[cluster] if self.feature_map.hard else phi @ pool.psi.T
        costs = pool.costs if request_costs is None else self._request_costs(request_costs, x.shape[0], pool)
        mask = self._model_mask(pool, models)[None, :]
        key = jax.random.key(validation.positive_int(seed, "seed", minimum=0))
        index = np.asarray(route_calibrated(calibration, est, costs, key, pool_masks=mask).choice)[0]
        return Routing(np.asarray(pool.names)[index], index, cluster)

    def log_loss(self, embeddings: ArrayLike, quality: ArrayLike, pool: Pool, *,
                 label_mask: ArrayLike | None = None, eps: float | None = None) -> float:
        """Mean binary log-loss of the estimates against observed errors (the learned map's objective).

        Args:
          embeddings: [n_prompts, dim].
          quality: [n_prompts, n_models] quality in [0, 1] of the pool's models (its column order);
            NaN where missing.
          pool: LLMs represented by this router.
          label_mask: optional [n_prompts, n_models] bool (default: not NaN).
          eps: prediction clip (default: the learned map's training `eps`, else 1e-4).

        Returns:
          Mean negative log-likelihood per label, in nats.
        """
        self.check_pool(pool)
        x = self._embeddings(embeddings)
        q, mask = check_quality(quality, "quality", x.shape[0], label_mask, "label_mask", len(pool))
        if not mask.any():
            raise ValueError("quality has no label at all")
        eps = self.info.get("config", {}).get("eps", 1e-4) if eps is None else validation.nonnegative_float(eps, "eps")
        p = np.clip(self.estimates(x, pool).astype(np.float64), eps, 1.0 - eps)
        err = 1.0 - q
        ll = err * np.log(p) + (1.0 - err) * np.log1p(-p)
        return float(-ll[mask].mean())

    # ------------------------------------------------------------------------------ files

    def save(self, path) -> Path:
        """Writes the router (its feature map, alpha and info) to a versioned `.npz` file."""
        arrays, meta = self.feature_map.to_file()
        return persistence.save_arrays(path, "router", arrays, {**meta, "alpha": self.alpha, "info": self.info})

    @classmethod
    def load(cls, path) -> UniRouter:
        """Reads a router written by `save` (also the former `LearnedMapRouter` files)."""
        arrays, meta = persistence.load_arrays(path, FILE_KINDS)
        if meta["kind"] == "learned_map_router":
            meta = {**meta, "feature_map": "soft"}
        try:
            return cls(map_from_file(arrays, meta), alpha=meta["alpha"], info=meta.get("info", {}))
        except KeyError as err:
            raise ValueError(f"{path} is missing the router field {err}") from None


def _to_curves(lams, result: SweepResult, masks, has_quality: bool) -> Curves:
    q = np.asarray(result.mean_quality)
    return Curves(np.asarray(lams), np.asarray(result.mean_cost), q if has_quality else np.full_like(q, np.nan),
                  np.asarray(result.mean_error_estimate), masks)
