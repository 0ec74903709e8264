"""A pool: the LLMs a router may choose from, one row of per-cluster error estimates each.

A pool keeps each LLM's labels (per-cluster counts and error sums). A pool with an `estimator`
derives every row from them with that estimator whenever it changes (`+`, `remove`,
`feedback.observe`): the estimator learns from every LLM's labels and each row comes from the
LLM's own, so the rows are a function of the set of LLMs and their labels, not of the order in
which they were added. A pool without one (built by hand, or by `UniRouter.represent` without an
estimator) keeps its rows as given. Routers check a pool against their own number of clusters
with `check_pool`.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from jax.typing import ArrayLike

from uniroute_jax._src import persistence, validation


@dataclasses.dataclass(frozen=True, eq=False)
class Pool:
    """A named set of represented LLMs with costs, one row per LLM.

    Attributes:
      names: model names, unique.
      costs: [n_models] cost per query (any unit: USD, parameters, ...), >= 0.
      psi: [n_models, n_clusters] estimated per-cluster error rates.
      counts: [n_models, n_clusters] validation labels behind each estimate.
      error_sums: [n_models, n_clusters] summed validation errors behind each estimate.
      router_fingerprint: `UniRouter.fingerprint` of the router that built the rows (None for
        pools built by hand or saved before fingerprints were kept); routers refuse a pool of
        another router.
      estimator: the `estimators.METHODS` name every row is derived with from `counts` and
        `error_sums` (`rederive`), recorded in the file; None: rows as given.
    """

    names: tuple[str, ...]
    costs: np.ndarray
    psi: np.ndarray
    counts: np.ndarray
    error_sums: np.ndarray
    router_fingerprint: str | None = None
    estimator: str | None = None

    def __post_init__(self):
        if self.estimator is not None:
            from uniroute_jax._src.estimators import METHODS

            validation.choice(self.estimator, "estimator", METHODS)
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
        """The sub-pool of `names`, in that order, rows as they are (a subset to route among;
        `remove` changes the pool and re-derives its rows)."""
        idx = self.index(names)
        return Pool(tuple(self.names[i] for i in idx), self.costs[idx], self.psi[idx], self.counts[idx],
                    self.error_sums[idx], self.router_fingerprint, self.estimator)

    def remove(self, *names: str) -> Pool:
        """The pool without `names` (rows re-derived when the pool has an estimator)."""
        self.index(names)
        rest = self.select([n for n in self.names if n not in names])
        return rest.rederive() if self.estimator is not None and len(rest) else rest

    def rederive(self, estimator: str | None = None) -> Pool:
        """This pool with every row derived from its labels by `estimator` (default: its own).

        The estimator is fitted on every LLM's labels, each row estimated from the LLM's own
        (`estimators.estimate_rows`), in the order of the names so that any order of adding gives
        the same pool. The result records `estimator`.
        """
        method = estimator if estimator is not None else self.estimator
        if method is None:
            raise ValueError("estimator: this pool records no estimator; name one of mean, shrinkage, "
                             "hierarchical, prior")
        if not len(self):
            return dataclasses.replace(self, estimator=method)
        from uniroute_jax._src.estimators import pool_estimates

        return pool_estimates(self, method).pool

    def __add__(self, other: Pool) -> Pool:
        if not isinstance(other, Pool):
            return NotImplemented
        if other.n_clusters != self.n_clusters:
            raise ValueError(f"cannot add a pool of {other.n_clusters} clusters to one of {self.n_clusters}")
        fingerprints = {p.router_fingerprint for p in (self, other)} - {None}
        if len(fingerprints) > 1:
            raise ValueError("cannot add pools represented by two different routers")
        methods = {p.estimator for p in (self, other)} - {None}
        if len(methods) > 1:
            raise ValueError(f"cannot add a pool whose rows follow estimator {other.estimator!r} to one that follows "
                             f"{self.estimator!r}: rederive one of them with the other's estimator first")
        cat = lambda field: np.concatenate([getattr(self, field), getattr(other, field)])
        out = Pool(self.names + other.names, cat("costs"), cat("psi"), cat("counts"), cat("error_sums"),
                   fingerprints.pop() if fingerprints else None, methods.pop() if methods else None)
        return out.rederive() if out.estimator is not None else out

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
        # The estimator key is always written (null for rows as given): its absence marks a file of
        # the format before pools derived their rows.
        meta = {"names": list(self.names), "estimator": self.estimator}
        if self.router_fingerprint is not None:
            meta["router_fingerprint"] = self.router_fingerprint
        return persistence.save_arrays(path, "pool", arrays, meta)

    @classmethod
    def load(cls, path, *, upgrade: bool = False) -> Pool:
        """Reads a pool written by `save`.

        A file written before pools recorded their estimator holds rows frozen in the order its
        LLMs were added. It is reported once per file (a `UserWarning`); with `upgrade` (what the
        command line does) its rows are re-derived from its labels with the default estimator,
        otherwise they are used as stored until the pool next changes (`rederive`). A row without
        labels (a hand-made estimate) is never re-derived.
        """
        arrays, meta = persistence.load_arrays(path, "pool")
        try:
            pool = cls(tuple(meta["names"]), arrays["costs"], arrays["psi"], arrays["counts"], arrays["error_sums"],
                       meta.get("router_fingerprint"), meta.get("estimator"))
        except KeyError as err:
            raise ValueError(f"{path} is missing the pool field {err}") from None
        if "estimator" in meta or not len(pool):
            return pool
        from uniroute_jax._src.estimators import DEFAULT_METHOD

        derivable = bool(np.all(pool.counts.sum(1) > 0))
        if derivable and upgrade:
            pool = pool.rederive(DEFAULT_METHOD)
            what = f"its rows were re-derived from its labels with estimator {DEFAULT_METHOD!r}"
        elif derivable:
            what = (f"its rows are used as stored until it changes; Pool.rederive({DEFAULT_METHOD!r}) (or any "
                    "command-line use) re-derives them from its labels")
        else:
            what = "it has rows without labels, so they are used as stored"
        key = (str(Path(path).resolve()), what)
        if key not in _TOLD:
            _TOLD.add(key)
            warnings.warn(f"pool {path} was written before pools recorded their estimator: {what}", UserWarning,
                          stacklevel=2)
        return pool


_TOLD: set[tuple[str, str]] = set()  # (file, message) pairs already reported by `Pool.load`


def check_pool(pool: Pool, n_clusters: int, *, what: str = "pool", other: str = "the router",
               allow_empty: bool = False) -> None:
    """Raises unless `pool` is a `Pool` over `n_clusters` clusters, non-empty unless `allow_empty`.

    The shape part of `UniRouter.check_pool`; `what` and `other` name the pool and the router in
    messages (a file, say).
    """
    if not isinstance(pool, Pool):
        raise TypeError(f"{what} must be a Pool, got {type(pool).__name__}")
    if pool.n_clusters != n_clusters:
        raise ValueError(f"{what} has {pool.n_clusters} clusters but {other} has {n_clusters}: "
                         "represent the models with this router")
    if len(pool) == 0 and not allow_empty:
        raise ValueError(f"{what} is empty: represent at least one LLM first")


def check_prompt_tables(n_prompts: int, pool: Pool, **tables) -> None:
    """Raises unless each given per-prompt table (test quality, prompt costs) is `[n_prompts, n_models]`."""
    for name, arr in tables.items():
        if arr is not None and np.shape(arr) != (n_prompts, len(pool)):
            raise ValueError(f"{name} must have shape ({n_prompts}, {len(pool)}) (prompts, pool models), "
                             f"got {np.shape(arr)}")
