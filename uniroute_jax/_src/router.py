"""The public router: fit once on unlabelled prompts, represent any LLM from a small labelled run.

    router = UniRouter.fit(train_embeddings, n_clusters=25)
    pool = router.represent(val_embeddings, val_quality, names=[...], costs=[...])
    pool = pool + router.represent(val_embeddings, new_llm_quality[:, None], names=["new"], costs=[0.3])
    chosen = router.route(prompt_embeddings, pool, lam=0.5)          # model name per prompt
    curves = router.sweep(test_embeddings, pool, quality=test_quality) # every budget at once
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
from uniroute_jax._src.curves import ExactCurve, exact_curve
from uniroute_jax._src.error_vectors import DEFAULT_ALPHA, error_vectors
from uniroute_jax._src.kmeans import METRICS, assign_kernel, kmeans
from uniroute_jax._src.routing import SweepResult, lambda_grid, make_units, route_kernel, sweep

# ------------------------------------------------------------------------------------- pools


@dataclasses.dataclass(frozen=True, eq=False)
class Pool:
    """A named set of represented LLMs with costs. Adding or removing an LLM adds or removes a row.

    Attributes:
      names: model names, unique.
      costs: [n_models] cost per query (any unit: USD, parameters, ...), >= 0.
      psi: [n_models, n_clusters] estimated per-cluster error rates.
      counts: [n_models, n_clusters] validation labels behind each estimate.
      error_sums: [n_models, n_clusters] summed validation errors behind each estimate.
    """

    names: tuple[str, ...]
    costs: np.ndarray
    psi: np.ndarray
    counts: np.ndarray
    error_sums: np.ndarray

    def __post_init__(self):
        names = tuple(self.names)
        for n in names:
            if not isinstance(n, str) or not n:
                raise TypeError(f"names must be non-empty strings, got {n!r}")
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"names must be unique, got duplicates {dupes}")
        m = len(names)
        psi = validation.unit_interval(validation.float_array(self.psi, "psi", shape=(m, None)), "psi")
        k = psi.shape[1]
        costs = validation.nonnegative(validation.float_array(self.costs, "costs", shape=(m,)), "costs")
        counts = validation.nonnegative(validation.float_array(self.counts, "counts", shape=(m, k)), "counts")
        sums = validation.nonnegative(validation.float_array(self.error_sums, "error_sums", shape=(m, k)), "error_sums")
        for field, value in (("names", names), ("costs", costs), ("psi", psi), ("counts", counts), ("error_sums", sums)):
            object.__setattr__(self, field, value)

    @classmethod
    def empty(cls, n_clusters: int) -> Pool:
        """A pool with no model, ready for `+`."""
        k = validation.positive_int(n_clusters, "n_clusters")
        z = np.zeros((0, k), np.float32)
        return cls((), np.zeros(0, np.float32), z, z, z)

    @property
    def n_models(self) -> int:
        return len(self.names)

    @property
    def n_clusters(self) -> int:
        return self.psi.shape[1]

    def __len__(self) -> int:
        return len(self.names)

    def __contains__(self, name: object) -> bool:
        return name in self.names

    def __repr__(self) -> str:
        shown = ", ".join(self.names[:6]) + (", ..." if len(self) > 6 else "")
        return f"Pool({len(self)} models, {self.n_clusters} clusters: {shown})"

    def index(self, names: str | Sequence[str]) -> np.ndarray:
        """Row indices of `names`; raises `KeyError`-free `ValueError` naming unknown models."""
        names = [names] if isinstance(names, str) else list(names)
        missing = [n for n in names if n not in self.names]
        if missing:
            raise ValueError(f"models {missing} are not in the pool; it holds {list(self.names)}")
        return np.array([self.names.index(n) for n in names], np.int32)

    def select(self, names: Sequence[str]) -> Pool:
        """The sub-pool of `names`, in that order."""
        idx = self.index(names)
        return Pool(tuple(self.names[i] for i in idx), self.costs[idx], self.psi[idx], self.counts[idx],
                    self.error_sums[idx])

    def remove(self, *names: str) -> Pool:
        """The pool without `names`."""
        self.index(names)
        return self.select([n for n in self.names if n not in names])

    def __add__(self, other: Pool) -> Pool:
        if not isinstance(other, Pool):
            return NotImplemented
        if other.n_clusters != self.n_clusters:
            raise ValueError(f"cannot add a pool of {other.n_clusters} clusters to one of {self.n_clusters}")
        cat = lambda field: np.concatenate([getattr(self, field), getattr(other, field)])
        return Pool(self.names + other.names, cat("costs"), cat("psi"), cat("counts"), cat("error_sums"))

    def with_costs(self, costs: ArrayLike) -> Pool:
        """The same pool with new per-query costs `[n_models]`."""
        return dataclasses.replace(self, costs=costs)

    def masks(self, subsets: Sequence[Sequence[str]] | ArrayLike) -> np.ndarray:
        """`[n_pools, n_models]` membership masks from lists of names (or a bool array, checked)."""
        if isinstance(subsets, np.ndarray) and subsets.dtype == bool:
            return validation.bool_array(subsets, "subsets", shape=(None, len(self)))
        rows = []
        for i, subset in enumerate(subsets):
            if isinstance(subset, str):
                raise TypeError(f"subsets[{i}] must be a list of model names, got the string {subset!r}")
            row = np.zeros(len(self), bool)
            row[self.index(subset)] = True
            if not row.any():
                raise ValueError(f"subsets[{i}] is empty")
            rows.append(row)
        if not rows:
            raise ValueError("subsets must hold at least one pool")
        return np.stack(rows)

    def save(self, path) -> Path:
        """Writes the pool to a versioned `.npz` file (see `persistence`)."""
        arrays = {"costs": self.costs, "psi": self.psi, "counts": self.counts, "error_sums": self.error_sums}
        return persistence.save_arrays(path, "pool", arrays, {"names": list(self.names)})

    @classmethod
    def load(cls, path) -> Pool:
        """Reads a pool written by `save`."""
        arrays, meta = persistence.load_arrays(path, "pool")
        try:
            return cls(tuple(meta["names"]), arrays["costs"], arrays["psi"], arrays["counts"], arrays["error_sums"])
        except KeyError as err:
            raise ValueError(f"{path} is missing the pool field {err}") from None


# ------------------------------------------------------------------------------------ curves


class Curves(NamedTuple):
    """Cost-quality curves of one router over pools and budgets."""

    lams: np.ndarray  # [n_budgets] trade-offs, increasing
    mean_cost: np.ndarray  # [n_pools, n_budgets]
    mean_quality: np.ndarray  # [n_pools, n_budgets] (NaN when no labels were given)
    mean_error_estimate: np.ndarray  # [n_pools, n_budgets]
    masks: np.ndarray  # [n_pools, n_models] which pool models each curve used


def _to_curves(lams, result: SweepResult, masks, has_quality: bool) -> Curves:
    q = np.asarray(result.mean_quality)
    return Curves(np.asarray(lams), np.asarray(result.mean_cost), q if has_quality else np.full_like(q, np.nan),
                  np.asarray(result.mean_error_estimate), masks)


@functools.partial(jax.jit, static_argnames=("metric",))
def route_embeddings_kernel(x: jax.Array, centroids: jax.Array, table: jax.Array, *, metric: str):
    """Unchecked serving path: `(model row [n_prompts], cluster [n_prompts])` for `x [n_prompts, dim]`."""
    labels = assign_kernel(x, centroids, metric=metric)
    return table[labels], labels


@dataclasses.dataclass(frozen=True, eq=False)
class RoutingTable:
    """A router frozen at one pool and one `lambda`, for serving: nearest centroid, then a lookup.

    Small batches run in NumPy on the host (a batch of one takes microseconds, where a JAX
    dispatch and host-device copy cost about 50-100 us on a CPU); batches of `jax_from` rows or
    more run the jitted `route_embeddings_kernel`. Both give the same decisions.

    Attributes:
      centroids: [n_clusters, dim]; table: [n_clusters] model row per cluster; names: pool names.
      metric: "cosine" or "euclidean"; jax_from: the batch size from which JAX is used.
    """

    centroids: np.ndarray
    table: np.ndarray
    names: tuple[str, ...]
    metric: str
    jax_from: int = 256

    def rows(self, embeddings: ArrayLike) -> np.ndarray:
        """Model row of each prompt, `[n_prompts]` int32, from `[n_prompts, dim]` embeddings."""
        x = np.asarray(embeddings, np.float32)
        if x.ndim != 2 or x.shape[1] != self.centroids.shape[1]:
            raise ValueError(f"embeddings must have shape (n_prompts, {self.centroids.shape[1]}), got {x.shape}")
        if x.shape[0] >= self.jax_from:
            return np.asarray(route_embeddings_kernel(jnp.asarray(x), jnp.asarray(self.centroids),
                                                      jnp.asarray(self.table), metric=self.metric)[0])
        scores = x @ self.centroids.T
        if self.metric == "euclidean":
            labels = np.argmin(np.sum(self.centroids**2, axis=1)[None, :] - 2.0 * scores, axis=1)
        else:
            labels = np.argmax(scores, axis=1)
        return self.table[labels]

    def __call__(self, embeddings: ArrayLike) -> np.ndarray:
        """Chosen model name of each prompt, `[n_prompts]` str."""
        return np.asarray(self.names)[self.rows(embeddings)]


class Routing(NamedTuple):
    """Decisions for a batch of prompts."""

    model: np.ndarray  # [n_prompts] str, chosen model name
    index: np.ndarray  # [n_prompts] int32, row of the chosen model in the pool
    cluster: np.ndarray  # [n_prompts] int32, cluster of each prompt


# ------------------------------------------------------------------------------------ router


def check_pool(pool: Pool, n_clusters: int) -> None:
    """Raises unless `pool` is a non-empty `Pool` over `n_clusters` clusters (any router's check)."""
    if not isinstance(pool, Pool):
        raise TypeError(f"pool must be a Pool, got {type(pool).__name__}")
    if pool.n_clusters != n_clusters:
        raise ValueError(f"pool has {pool.n_clusters} clusters but the router has {n_clusters}")
    if len(pool) == 0:
        raise ValueError("pool is empty: represent at least one LLM first")


def check_prompt_tables(n_prompts: int, pool: Pool, **tables) -> None:
    """Raises unless each given per-prompt table (test quality, prompt costs) is `[n_prompts, n_models]`."""
    for name, arr in tables.items():
        if arr is not None and np.shape(arr) != (n_prompts, len(pool)):
            raise ValueError(f"{name} must have shape ({n_prompts}, {len(pool)}) (prompts, pool models), "
                             f"got {np.shape(arr)}")


def _log(verbose: bool, msg: str) -> None:
    if verbose:
        print(f"[uniroute] {msg}", file=sys.stderr, flush=True)


@dataclasses.dataclass(frozen=True, eq=False)
class UniRouter:
    """UniRoute (K-Means): prompts map to their nearest k-means centroid; LLMs to per-cluster errors.

    Attributes:
      centroids: [n_clusters, dim] k-means centroids (unit rows under the cosine metric).
      metric: "cosine" (default; sentence embeddings) or "euclidean".
      alpha: pseudo-count shrinking sparse clusters toward an LLM's overall error.
      info: fit diagnostics (inertia, iterations, converged, seconds).
    """

    centroids: np.ndarray
    metric: str = "cosine"
    alpha: float = DEFAULT_ALPHA
    info: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        validation.choice(self.metric, "metric", METRICS)
        object.__setattr__(self, "centroids", validation.float_array(self.centroids, "centroids", ndim=2))
        object.__setattr__(self, "alpha", validation.nonnegative_float(self.alpha, "alpha"))

    @property
    def n_clusters(self) -> int:
        return self.centroids.shape[0]

    @property
    def dim(self) -> int:
        return self.centroids.shape[1]

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
        verbose: bool = False,
    ) -> UniRouter:
        """Fits k-means on unlabelled training-prompt embeddings `[n_prompts, dim]`.

        No LLM label is needed: LLMs are represented afterwards with `represent`.
        """
        seed = validation.positive_int(seed, "seed", minimum=0)
        x = validation.float_array(embeddings, "embeddings", ndim=2)
        _log(verbose, f"k-means: {x.shape[0]} prompts x {x.shape[1]} dims, K={n_clusters}, n_init={n_init}")
        start = time.perf_counter()
        res = kmeans(x, n_clusters, jax.random.key(seed), n_init=n_init, max_iter=max_iter, tol=tol, metric=metric)
        res.inertia.block_until_ready()
        info = {"inertia": float(res.inertia), "n_iter": int(res.n_iter), "converged": bool(res.converged),
                "seconds": round(time.perf_counter() - start, 3), "n_train": int(x.shape[0]), "seed": seed}
        _log(verbose, f"k-means done in {info['seconds']}s: {info['n_iter']} iterations, converged={info['converged']}")
        return cls(np.asarray(res.centroids), metric, alpha, info)

    def _embeddings(self, embeddings: ArrayLike, name: str = "embeddings") -> np.ndarray:
        x = validation.float_array(embeddings, name, ndim=2)
        if x.shape[1] != self.dim:
            raise ValueError(f"{name} has shape {x.shape} but the router's centroids expect dimension {self.dim}")
        if x.shape[0] == 0:
            raise ValueError(f"{name} holds no prompt")
        return x

    def assign(self, embeddings: ArrayLike) -> np.ndarray:
        """Cluster of each prompt: `[n_prompts]` int32 from embeddings `[n_prompts, dim]`."""
        x = self._embeddings(embeddings)
        return np.asarray(assign_kernel(jnp.asarray(x), jnp.asarray(self.centroids), metric=self.metric))

    def represent(
        self,
        val_embeddings: ArrayLike,
        val_quality: ArrayLike,
        names: Sequence[str],
        costs: ArrayLike,
        *,
        label_mask: ArrayLike | None = None,
    ) -> Pool:
        """Represents LLMs — seen in training or brand-new — from their validation labels. No refit.

        Args:
          val_embeddings: [n_val, dim] embeddings of the validation ("representative") prompts.
          val_quality: [n_val, n_models] quality in [0, 1] of each LLM on each validation prompt
            ([n_val] for one LLM); NaN (or `label_mask` False) where an LLM was not run.
          names: [n_models] names of the LLMs.
          costs: [n_models] cost per query.
          label_mask: optional [n_val, n_models] bool.

        Returns:
          A `Pool` of those LLMs.
        """
        x = self._embeddings(val_embeddings, "val_embeddings")
        q = np.asarray(val_quality)
        q = validation.float_array(q[:, None] if q.ndim == 1 else q, "val_quality", ndim=2, allow_nan=True)
        if q.shape[0] != x.shape[0]:
            raise ValueError(f"val_quality has {q.shape[0]} rows but val_embeddings has {x.shape[0]} prompts")
        names = (names,) if isinstance(names, str) else tuple(names)
        if len(names) != q.shape[1]:
            raise ValueError(f"names has {len(names)} entries but val_quality has {q.shape[1]} model columns")
        labels = self.assign(x)
        ev = error_vectors(labels, q, n_clusters=self.n_clusters, label_mask=label_mask, alpha=self.alpha)
        costs = np.atleast_1d(costs) if np.isscalar(costs) else costs
        return Pool(names, costs, np.asarray(ev.psi), np.asarray(ev.counts), np.asarray(ev.error_sums))

    def route(self, embeddings: ArrayLike, pool: Pool, lam: float, *, models: Sequence[str] | None = None) -> Routing:
        """Sends each prompt to `argmin_h Psi(h)[cluster] + lam * cost(h)` over the pool.

        Args:
          embeddings: [n_prompts, dim].
          pool: a `Pool` built by this router (same clusters).
          lam: trade-off >= 0: 0 is the most accurate choice; larger values save cost.
          models: optional subset of the pool's names to route among.

        Returns:
          `Routing(model, index, cluster)`, each `[n_prompts]`.
        """
        table = self.decision_table(pool, lam, models=models)
        x = self._embeddings(embeddings)
        index, labels = (np.asarray(a) for a in route_embeddings_kernel(
            jnp.asarray(x), jnp.asarray(self.centroids), jnp.asarray(table), metric=self.metric))
        return Routing(np.asarray(pool.names)[index], index, labels)

    def decision_table(self, pool: Pool, lam: float, *, models: Sequence[str] | None = None) -> np.ndarray:
        """The model row chosen for each cluster, `[n_clusters]` int32: routing is then a lookup.

        Serving code can keep the table and call `route_embeddings_kernel` per batch (one jitted
        call: nearest centroid plus a gather).
        """
        self._check_pool(pool)
        lam = validation.nonnegative_float(lam, "lam")
        mask = np.ones(len(pool), bool) if models is None else pool.masks([models])[0]
        # One decision per cluster: no [n_prompts, n_models] score matrix is ever built.
        per_cluster = route_kernel(jnp.eye(self.n_clusters, dtype=jnp.float32), jnp.asarray(pool.psi),
                                   jnp.asarray(pool.costs), jnp.asarray(mask), jnp.asarray(lam, jnp.float32))
        return np.asarray(per_cluster.choice)

    def routing_table(self, pool: Pool, lam: float, *, models: Sequence[str] | None = None,
                      jax_from: int = 256) -> RoutingTable:
        """The router frozen at `pool` and `lam` for serving (see `RoutingTable`)."""
        table = self.decision_table(pool, lam, models=models)
        return RoutingTable(self.centroids.copy(), table, pool.names, self.metric,
                            validation.positive_int(jax_from, "jax_from"))

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

        Returns:
          `Curves` with `[n_pools, n_budgets]` arrays.
        """
        self._check_pool(pool)
        labels = self.assign(embeddings)
        check_prompt_tables(labels.shape[0], pool, quality=quality, prompt_costs=prompt_costs)
        lams = lambda_grid(pool.costs, n_budgets) if lams is None else lams
        masks = np.ones((1, len(pool)), bool) if subsets is None else pool.masks(subsets)
        units = make_units(labels, n_units=self.n_clusters, quality=quality, prompt_costs=prompt_costs,
                           costs=pool.costs)
        # Read every budget off the exact curve: one pass per pool whatever the number of budgets.
        result = sweep(pool.psi.T, units, pool.costs, lams, pool_masks=masks, method="breakpoints")
        return _to_curves(lams, result, masks, quality is not None)

    def exact_curve(
        self,
        embeddings: ArrayLike,
        pool: Pool,
        *,
        quality: ArrayLike | None = None,
        prompt_costs: ArrayLike | None = None,
        subsets: Sequence[Sequence[str]] | np.ndarray | None = None,
    ) -> ExactCurve:
        """Every operating point of the router, over all `lambda >= 0`, for each sub-pool.

        Same arguments as `sweep` without a grid: the result lists each breakpoint where some
        cluster's decision changes (at most `n_clusters * (n_models - 1)`), see `curves.exact_curve`.
        """
        self._check_pool(pool)
        labels = self.assign(embeddings)
        check_prompt_tables(labels.shape[0], pool, quality=quality, prompt_costs=prompt_costs)
        masks = np.ones((1, len(pool)), bool) if subsets is None else pool.masks(subsets)
        units = make_units(labels, n_units=self.n_clusters, quality=quality, prompt_costs=prompt_costs,
                           costs=pool.costs)
        return exact_curve(pool.psi.T, units, pool.costs, pool_masks=masks)

    def _check_pool(self, pool: Pool) -> None:
        check_pool(pool, self.n_clusters)

    def save(self, path) -> Path:
        """Writes the router to a versioned `.npz` file."""
        meta = {"metric": self.metric, "alpha": self.alpha, "info": self.info}
        return persistence.save_arrays(path, "router", {"centroids": self.centroids}, meta)

    @classmethod
    def load(cls, path) -> UniRouter:
        """Reads a router written by `save`."""
        arrays, meta = persistence.load_arrays(path, "router")
        try:
            return cls(arrays["centroids"], meta["metric"], meta["alpha"], meta.get("info", {}))
        except KeyError as err:
            raise ValueError(f"{path} is missing the router field {err}") from None
