"""The paper's evaluation protocol, batched over trials.

Per trial: a random 60/10/30 train / validation / test split of the prompts and a random 2/3
training / 1/3 unseen-test split of the LLMs. Routers see the training prompts' embeddings (and,
for the supervised ones, the *training* LLMs' labels on them) and every LLM's labels on the
validation prompts; they are scored on the test prompts with the unseen LLMs only. `K` (and `k`
for K-NN) is chosen per trial from a grid with the training LLMs alone: their `Psi` comes from
the validation prompts and the candidate's Area is measured on the training prompts, which the
validation labels never saw.

Trials share their shapes, so the unsupervised pipeline (k-means for every `K` of the grid, error
vectors, K-NN, exact curves, metrics) runs as one vmap over a chunk of trials; only the trained
routers (LearnedMap, the fixed-pool MLP) loop over trials in Python, each call jitted.
"""

from __future__ import annotations

import dataclasses
import functools
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from uniroute_jax._src import metrics, plots, validation
from uniroute_jax._src.curves import exact_curve_kernel
from uniroute_jax._src.data import RoutingDataset
from uniroute_jax._src.error_vectors import DEFAULT_ALPHA, error_vectors_kernel
from uniroute_jax._src.estimators import METHODS as ESTIMATORS
from uniroute_jax._src.estimators import default_n_groups, estimate_kernel, fit_kernel
from uniroute_jax._src.kmeans import assign_kernel, kmeans_kernel
from uniroute_jax._src.knn import knn_kernel
from uniroute_jax._src.peers import PEERS, peer, peer_view
from uniroute_jax._src.routing import RoutingUnits
from uniroute_jax._src.sharding import trial_mesh, trial_vmap

ZERO, KNN, KMEANS, LEARNED, MLP, MLP_RETRAINED, ORACLE = (
    "ZeroRouter", "K-NN", "UniRoute (K-Means)", "UniRoute (LearnedMap)", "MLP (clairvoyant)", "MLP (retrained)",
    "Oracle")
METHODS = (ZERO, KNN, KMEANS, LEARNED, MLP, MLP_RETRAINED, ORACLE) + PEERS
DEFAULT_METHODS = (ZERO, KNN, KMEANS, LEARNED, MLP, ORACLE)
COST_GRID = np.linspace(0.0, 1.0, 101)


@dataclasses.dataclass(frozen=True)
class ProtocolConfig:
    """Settings of `evaluate` (the paper's protocol unless noted).

    Attributes:
      n_trials: random splits.
      seed: seed of every split, k-means restart and training run.
      fractions: train / validation / test shares of the prompts (60/10/30).
      unseen_fraction: share of the LLMs held out as unseen test LLMs (1/3).
      k_grid: candidate numbers of clusters; values above the training-prompt count are dropped.
      knn_grid: candidate neighbour counts for K-NN; values above the validation count are dropped.
      n_init: k-means restarts.
      metric: embedding geometry, "cosine" or "euclidean".
      alpha: shrinkage pseudo-count of the error vectors.
      estimator: how UniRoute (K-Means) estimates every LLM's error vector from its validation labels,
        one of `estimators.METHODS`: "shrinkage" (the paper's, with `alpha`), "mean", or
        "hierarchical" / "prior", fitted on the training LLMs' validation labels as references,
        as `UniRouter.represent(..., estimator=, reference=)` does; the prior's factors also learn
        from the training LLMs' training-prompt labels (K is still chosen without them).
      trial_batch: trials vmapped together (0: at most 32, within a ~256 MiB budget for the prompts).
    """

    n_trials: int = 20
    seed: int = 0
    fractions: tuple[float, float, float] = (0.6, 0.1, 0.3)
    unseen_fraction: float = 1 / 3
    k_grid: tuple[int, ...] = (5, 10, 25, 50, 100)
    knn_grid: tuple[int, ...] = (1, 3, 5, 10, 25, 50, 100)
    n_init: int = 3
    metric: str = "cosine"
    alpha: float = DEFAULT_ALPHA
    estimator: str = "shrinkage"
    trial_batch: int = 0

    def __post_init__(self):
        validation.positive_int(self.n_trials, "n_trials")
        validation.positive_int(self.seed, "seed", minimum=0)
        f = tuple(float(x) for x in self.fractions)
        if len(f) != 3 or min(f) <= 0 or abs(sum(f) - 1) > 1e-6:
            raise ValueError(f"fractions must be three positive shares summing to 1, got {self.fractions}")
        if not 0 < self.unseen_fraction < 1:
            raise ValueError(f"unseen_fraction must be in (0, 1), got {self.unseen_fraction}")
        for name in ("k_grid", "knn_grid"):
            grid = getattr(self, name)
            if not grid or any(isinstance(k, bool) or not isinstance(k, int) or k < 1 for k in grid):
                raise ValueError(f"{name} must be a non-empty tuple of positive ints, got {grid}")
        validation.choice(self.metric, "metric", ("cosine", "euclidean"))
        validation.choice(self.estimator, "estimator", ESTIMATORS)


class Splits(NamedTuple):
    """Index arrays of every trial (same sizes in every trial, so trials stack)."""

    train: np.ndarray  # [n_trials, n_train] prompt indices
    val: np.ndarray  # [n_trials, n_val]
    test: np.ndarray  # [n_trials, n_test]
    seen: np.ndarray  # [n_trials, n_models] bool, training LLMs
    unseen: np.ndarray  # [n_trials, n_models] bool, unseen test LLMs


class EvaluationResult(NamedTuple):
    """Per-trial metrics of every method on the same splits."""

    dataset: str
    methods: tuple[str, ...]
    metrics: dict[str, metrics.CurveMetrics]  # method -> fields of shape [n_trials]
    curves: dict[str, np.ndarray]  # method -> [n_trials, len(COST_GRID)] accuracy at normalised cost
    chosen_k: np.ndarray  # [n_trials] K picked for UniRoute
    chosen_knn_k: np.ndarray  # [n_trials] k picked for K-NN (0 when K-NN was not run)
    splits: Splits
    config: ProtocolConfig
    seconds: dict[str, float]  # stage -> wall time

    def table(self, fmt: str = "markdown") -> str:
        """Mean ± std over trials of Area, Area(50%), QNC and peak accuracy (markdown or csv)."""
        return format_table(self, fmt)

    def sign_test(self, a: str, b: str, field: str = "area") -> metrics.SignTestResult:
        """Paired sign test of `a` against `b` on a metric over trials."""
        return metrics.sign_test(np.asarray(getattr(self.metrics[a], field)),
                                 np.asarray(getattr(self.metrics[b], field)))

    def plot(self, path: str | Path, title: str | None = None) -> Path:
        """PNG of the mean deferral curves with ± one-std bands over trials."""
        return plot_mean_curves(self, path, title)


def _log(progress: bool, msg: str) -> None:
    if progress:
        print(f"[evaluate] {msg}", file=sys.stderr, flush=True)


def make_splits(n_prompts: int, n_models: int, config: ProtocolConfig) -> Splits:
    """Random prompt and LLM splits for every trial, from `config.seed`."""
    rng = np.random.default_rng(config.seed)
    n_tr = int(round(config.fractions[0] * n_prompts))
    n_va = int(round(config.fractions[1] * n_prompts))
    n_unseen = max(1, int(round(config.unseen_fraction * n_models)))
    if n_models - n_unseen < 1 or n_unseen < 2:
        raise ValueError(f"the protocol needs at least 2 unseen and 1 training LLM; {n_models} LLMs give "
                         f"{n_unseen} unseen")
    if min(n_tr, n_va, n_prompts - n_tr - n_va) < 2:
        raise ValueError(f"{n_prompts} prompts are too few for a {config.fractions} split")
    tr, va, te, seen, unseen = [], [], [], [], []
    for _ in range(config.n_trials):
        p = rng.permutation(n_prompts)
        tr.append(np.sort(p[:n_tr]))
        va.append(np.sort(p[n_tr:n_tr + n_va]))
        te.append(np.sort(p[n_tr + n_va:]))
        m = rng.permutation(n_models)
        mask = np.zeros(n_models, bool)
        mask[m[:n_unseen]] = True
        unseen.append(mask)
        seen.append(~mask)
    return Splits(*(np.stack(a) for a in (tr, va, te, seen, unseen)))


# ------------------------------------------------------------------------- batched kernels


def _cluster_units(labels, quality, prompt_costs, n_units: int) -> RoutingUnits:
    seg = functools.partial(jax.ops.segment_sum, segment_ids=labels, num_segments=n_units)
    return RoutingUnits(seg(jnp.ones(labels.shape[0], quality.dtype)), seg(quality), seg(prompt_costs))


def _own_fill(quality, label_mask):
    """Quality of a subset of prompts with its missing labels filled from its own labelled rows.

    `evaluate` fills missing labels once, with means over every prompt; selection on training
    prompts must not see the test prompts' labels through that fill, so it refills here.
    """
    n = jnp.sum(label_mask, axis=0)
    mean = jnp.sum(jnp.where(label_mask, quality, 0.0), axis=0) / jnp.maximum(n, 1)
    return jnp.where(label_mask, quality, mean[None, :])


def _prompt_units(quality, prompt_costs) -> RoutingUnits:
    return RoutingUnits(jnp.ones(quality.shape[0], quality.dtype), quality, prompt_costs)


def _area_of(estimates, units: RoutingUnits, costs, pool, model_cost):
    """Area of one router's exact curve on one pool: the score that picks K and k."""
    curve = exact_curve_kernel(estimates, units, costs, pool[None])
    cost_norm = jnp.max(jnp.where(pool, model_cost, 0.0))
    return metrics.area(curve.mean_cost[0], curve.mean_quality[0], curve.valid[0], cost_norm)


def _metrics_of(estimates, units: RoutingUnits, costs, pool, model_cost, model_quality, *, with_grid: bool = False):
    """Metrics of one router's exact curve on one pool (one trial); optionally its accuracy at
    the normalised costs of `COST_GRID` too (one curve serves both)."""
    curve = exact_curve_kernel(estimates, units, costs, pool[None])
    cost, quality, valid = curve.mean_cost[0], curve.mean_quality[0], curve.valid[0]
    ref = metrics.pool_reference(model_cost, model_quality, pool)
    m = metrics.curve_metrics(cost, quality, valid, ref)
    if not with_grid:
        return m
    at = jnp.asarray(COST_GRID, cost.dtype) * ref.cost_norm
    return m, metrics.interpolate_curve(cost, quality, valid, at)


def _cluster_estimates(key, centroids, lab_tr, lab_va, quality_val, mask_val, seen, alpha, train_labels=None, *,
                       n_clusters: int, estimators: tuple[str, ...], rank: int):
    """`[K, n_models]` error estimates of every LLM under each estimator, from validation labels.

    "shrinkage" and "mean" (alpha = 0) are the pseudo-count rule; "hierarchical" and "prior" are
    fitted on the training LLMs' validation labels (an unseen LLM's row is estimated from its own
    labels, never fitted on), with `fold_in(key, 1)` so the k-means key stays the protocol's.
    `train_labels = (quality_train, mask_train)`, when given, adds the training LLMs' labels on the
    training prompts to the population prior's factors.
    """
    ev = error_vectors_kernel(lab_va, quality_val, mask_val, 0.0, n_clusters=n_clusters)
    out = {"mean": ev.psi.T}
    if "shrinkage" in estimators:
        out["shrinkage"] = error_vectors_kernel(lab_va, quality_val, mask_val, alpha, n_clusters=n_clusters).psi.T
    if any(name in ("hierarchical", "prior") for name in estimators):
        masses = jnp.bincount(lab_tr, length=n_clusters).astype(centroids.dtype) / lab_tr.shape[0]
        extra = ()
        if train_labels is not None:
            tr = error_vectors_kernel(lab_tr, *train_labels, 0.0, n_clusters=n_clusters)
            extra = (tr.counts, tr.error_sums)
        params = fit_kernel(jax.random.fold_in(key, 1), ev.counts, ev.error_sums, seen, centroids, masses, alpha,
                            *extra, n_groups=default_n_groups(n_clusters), rank=rank)
        for name in estimators:
            if name in ("hierarchical", "prior"):
                out[name] = estimate_kernel(params, ev.counts, ev.error_sums, method=name).psi.T
    return [out[name] for name in estimators]


def _selection_area_fn(lab_tr, quality_train, mask_train, prompt_costs_train, costs, seen, *, n_clusters: int):
    """Selection score of a cluster router's estimates `[K, n_models]`: the training LLMs, Psi from
    validation, scored on the training prompts (their units built once for every estimate)."""
    units = _cluster_units(lab_tr, _own_fill(quality_train, mask_train), prompt_costs_train, n_clusters)
    model_cost = prompt_costs_train.mean(0)
    return lambda est: _area_of(est, units, costs, seen, model_cost)


@functools.partial(jax.jit, static_argnames=("n_clusters", "estimators", "metric", "rank"))
def _selection_scores(key, centroids, emb, quality, label_mask, prompt_costs, costs, train, val, seen, alpha, *,
                     n_clusters: int, estimators: tuple[str, ...], metric: str, rank: int = 2):
    """`[n_estimators]` selection scores of one trial's k-means centroids under each estimator: what
    picks K when `evaluate` runs with that estimator."""
    lab_tr = assign_kernel(emb[train], centroids, metric=metric)
    lab_va = assign_kernel(emb[val], centroids, metric=metric)
    ests = _cluster_estimates(key, centroids, lab_tr, lab_va, quality[val], label_mask[val], seen, alpha,
                              n_clusters=n_clusters, estimators=estimators, rank=rank)
    area = _selection_area_fn(lab_tr, quality[train], label_mask[train], prompt_costs[train], costs, seen,
                              n_clusters=n_clusters)
    return jnp.stack([area(e) for e in ests])


@functools.partial(jax.jit, static_argnames=("n_clusters", "n_init", "metric", "estimator", "rank"))
def _kmeans_trial(key, emb, quality, label_mask, prompt_costs, costs, train, val, test, seen, unseen, alpha, *,
                  n_clusters: int, n_init: int, metric: str, estimator: str = "shrinkage", rank: int = 2):
    """UniRoute (K-Means) at one `K` on one trial: selection score and test metrics."""
    x = emb[train]
    xs = x / jnp.maximum(jnp.linalg.norm(x, axis=1, keepdims=True), 1e-12) if metric == "cosine" else x
    tol = 1e-4 * jnp.mean(jnp.var(xs, axis=0))
    km = kmeans_kernel(key, x, jnp.ones(x.shape[0], x.dtype), tol, n_clusters=n_clusters, n_init=n_init,
                       max_iter=300, metric=metric)
    # Cosine assignment is an argmax of dot products with unit centroids: rows need no normalising.
    assign = lambda idx: assign_kernel(emb[idx], km.centroids, metric=metric)
    lab_tr, lab_va, lab_te = assign(train), assign(val), assign(test)
    (est,) = _cluster_estimates(key, km.centroids, lab_tr, lab_va, quality[val], label_mask[val], seen, alpha,
                                n_clusters=n_clusters, estimators=(estimator,), rank=rank)
    sel_area = _selection_area_fn(lab_tr, quality[train], label_mask[train], prompt_costs[train], costs, seen,
                                  n_clusters=n_clusters)(est)
    if estimator == "prior":
        # The training LLMs' labels on the training prompts are the protocol's data too (the
        # supervised routers learn from them): the deployed router's population prior learns its
        # factors from them as well. The selection score above cannot: it is measured on them.
        (est,) = _cluster_estimates(key, km.centroids, lab_tr, lab_va, quality[val], label_mask[val], seen, alpha,
                                    (quality[train], label_mask[train]), n_clusters=n_clusters,
                                    estimators=(estimator,), rank=rank)
    te_units = _cluster_units(lab_te, quality[test], prompt_costs[test], n_clusters)
    model_cost, model_quality = prompt_costs[test].mean(0), quality[test].mean(0)
    test_m, grid = _metrics_of(est, te_units, costs, unseen, model_cost, model_quality, with_grid=True)
    return sel_area, test_m, grid, km.centroids


@functools.partial(jax.jit, static_argnames=("k_max", "metric"))
def _knn_trial(emb, quality, label_mask, prompt_costs, costs, train, val, test, seen, unseen, ks, *, k_max: int,
               metric: str):
    """K-NN on one trial for every k of the grid: selection scores [n_ks] and test metrics [n_ks]."""
    errors = jnp.where(label_mask[val], 1.0 - quality[val], 0.0)
    est_tr = knn_kernel(emb[train], emb[val], errors, label_mask[val], ks, k_max=k_max, metric=metric)
    est_te = knn_kernel(emb[test], emb[val], errors, label_mask[val], ks, k_max=k_max, metric=metric)
    tr_units = _prompt_units(_own_fill(quality[train], label_mask[train]), prompt_costs[train])
    te_units = _prompt_units(quality[test], prompt_costs[test])
    model_cost, model_quality = prompt_costs[test].mean(0), quality[test].mean(0)
    sel = jax.vmap(lambda e: _area_of(e, tr_units, costs, seen, prompt_costs[train].mean(0)))(est_tr)
    best = jnp.argmax(sel)
    test_m, grid = _metrics_of(est_te[best], te_units, costs, unseen, model_cost, model_quality, with_grid=True)
    return ks[best], test_m, grid


@jax.jit
def _fixed_estimates_trial(est_test, quality, prompt_costs, costs, test, unseen):
    """Metrics and grid curve of per-prompt test estimates [n_test, n_models] on one trial."""
    units = _prompt_units(quality[test], prompt_costs[test])
    model_cost, model_quality = prompt_costs[test].mean(0), quality[test].mean(0)
    return _metrics_of(est_test, units, costs, unseen, model_cost, model_quality, with_grid=True)


@jax.jit
def _zero_trial(quality, label_mask, prompt_costs, costs, val, test, unseen):
    errors = jnp.where(label_mask[val], 1.0 - quality[val], 0.0)
    overall = errors.sum(0) / jnp.maximum(label_mask[val].sum(0), 1)
    units = _cluster_units(jnp.zeros(test.shape[0], jnp.int32), quality[test], prompt_costs[test], 1)
    model_cost, model_quality = prompt_costs[test].mean(0), quality[test].mean(0)
    return _metrics_of(overall[None], units, costs, unseen, model_cost, model_quality, with_grid=True)


@jax.jit
def _oracle_trial(quality, prompt_costs, costs, test, unseen):
    return _fixed_estimates_trial(1.0 - quality[test], quality, prompt_costs, costs, test, unseen)


@functools.lru_cache(maxsize=64)
def _trial_fn(kind: str, mesh, *, n_clusters: int = 0, n_init: int = 0, metric: str = "", k_max: int = 0,
              estimator: str = "shrinkage", rank: int = 2):
    """The trial-batched (and device-split) version of a per-trial kernel, built once per setting
    so that repeated `evaluate` calls reuse its compiled code."""
    if kind == "zero":
        return trial_vmap(_zero_trial, in_axes=(None,) * 4 + (0, 0, 0), mesh=mesh)
    if kind == "kmeans":
        return trial_vmap(functools.partial(_kmeans_trial, n_clusters=n_clusters, n_init=n_init, metric=metric,
                                            estimator=estimator, rank=rank),
                          in_axes=(0, None, None, None, None, None, 0, 0, 0, 0, 0, None), mesh=mesh)
    if kind == "knn":
        return trial_vmap(functools.partial(_knn_trial, k_max=k_max, metric=metric),
                          in_axes=(None,) * 5 + (0,) * 5 + (None,), mesh=mesh)
    if kind == "oracle":
        return trial_vmap(_oracle_trial, in_axes=(None, None, None, 0, 0), mesh=mesh)
    raise ValueError(f"unknown trial kernel {kind!r}")


# ------------------------------------------------------------------------------- protocol


def _filled_quality(ds: RoutingDataset) -> np.ndarray:
    """Quality with missing labels replaced by the model's mean over every prompt: for the test
    sums. Selection on training prompts refills its rows from them alone (`_own_fill`)."""
    q = ds.quality.astype(np.float32).copy()
    mean = (q * ds.label_mask).sum(0) / np.maximum(ds.label_mask.sum(0), 1)
    return np.where(ds.label_mask, q, mean[None, :]).astype(np.float32)


def _chunks(n: int, size: int):
    for start in range(0, n, size):
        yield slice(start, min(n, start + size))


def evaluate(
    dataset: RoutingDataset,
    methods: Sequence[str] = DEFAULT_METHODS,
    n_trials: int | None = None,
    *,
    config: ProtocolConfig | None = None,
    progress: bool = True,
) -> EvaluationResult:
    """Runs the protocol: every method on the same random splits, metrics per trial.

    Args:
      dataset: a `RoutingDataset` with `embeddings` (embed its texts first if needed).
      methods: any of `METHODS`; the peers' onboarding methods (`peers.PEERS`) are fitted per trial
        on the training LLMs and given the unseen LLMs' validation labels, on UniRoute (K-Means)'s
        clusters where they use ours.
      n_trials: overrides `config.n_trials`.
      config: `ProtocolConfig` (defaults otherwise).
      progress: progress lines on stderr.

    Returns:
      `EvaluationResult`; `.table()` gives the markdown table, `.plot(path)` the curves.

    Raises:
      ValueError / TypeError naming the problem (no embeddings, unknown method, too few prompts).
    """
    from uniroute_jax._src.fixed_pool import FixedPoolRouter
    from uniroute_jax._src.router import UniRouter

    if not isinstance(dataset, RoutingDataset):
        raise TypeError(f"dataset must be a RoutingDataset, got {type(dataset).__name__}")
    if dataset.embeddings is None:
        raise ValueError(f"dataset {dataset.name!r} has no embeddings: embed its texts (uniroute_jax.TextEmbedder) "
                         "or attach precomputed ones with dataset.with_embeddings(...)")
    methods = tuple(methods)
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise ValueError(f"methods must be a non-empty subset of {list(METHODS)}, got unknown {unknown}")
    config = config or ProtocolConfig()
    if n_trials is not None:
        config = dataclasses.replace(config, n_trials=validation.positive_int(n_trials, "n_trials"))
    seconds: dict[str, float] = {}
    t_start = time.perf_counter()

    if config.metric == "cosine":
        validation.embedding_rows(np.asarray(dataset.embeddings), "dataset.embeddings")
    else:
        validation.float_array(dataset.embeddings, "dataset.embeddings", ndim=2)
    splits = make_splits(dataset.n_prompts, dataset.n_models, config)
    n_tr, n_va = splits.train.shape[1], splits.val.shape[1]
    # A model without a validation label would get psi = 0 (never wrong) and win every cluster.
    n_val_labels = np.asarray(dataset.label_mask)[splits.val].sum(axis=1)  # [T, n_models]
    if (n_val_labels == 0).any():
        t, j = (int(i) for i in np.argwhere(n_val_labels == 0)[0])
        raise ValueError(f"model {dataset.model_names[j]!r} has no label among the {n_va} validation prompts of "
                         f"trial {t}: its error cannot be estimated (label more prompts, or drop the model)")
    k_grid = tuple(k for k in config.k_grid if k <= n_tr)
    ks = tuple(k for k in config.knn_grid if k <= n_va)
    if not k_grid:
        raise ValueError(f"every k_grid value exceeds the {n_tr} training prompts")
    emb = jnp.asarray(dataset.embeddings, jnp.float32)
    quality = jnp.asarray(_filled_quality(dataset))
    label_mask = jnp.asarray(dataset.label_mask)
    prompt_costs = jnp.asarray(dataset.prompt_costs, jnp.float32)
    costs = jnp.asarray(dataset.model_costs, jnp.float32)
    alpha = jnp.asarray(config.alpha, jnp.float32)
    T = config.n_trials
    # Default chunk: at most 32 trials and ~256 MiB of training prompts. Past a few dozen trials a
    # single vmap only adds memory traffic on a CPU (100 at once ran 1.3x slower than 25 at a time).
    batch = config.trial_batch or max(1, min(T, 32, (256 << 20) // max(1, 4 * n_tr * emb.shape[1])))
    # Even chunks: every chunk but possibly the last has one size, so one compile serves them.
    batch = -(-T // -(-T // batch))
    # Trials are split over every device; a chunk that is a multiple of the device count splits evenly.
    mesh = trial_mesh()
    batch = -(-batch // mesh.size) * mesh.size
    keys = jax.random.split(jax.random.key(config.seed), T)
    per_trial = lambda name: jnp.asarray(getattr(splits, name))
    sp = {name: per_trial(name) for name in Splits._fields}
    results: dict[str, list] = {m: [] for m in methods}
    grids: dict[str, list] = {m: [] for m in methods}
    chosen_k = np.zeros(T, np.int32)
    chosen_knn = np.zeros(T, np.int32)
    centroids: list[np.ndarray] = [None] * T  # type: ignore[list-item]
    _log(progress, f"{dataset.name}: {T} trials, {n_tr}/{n_va}/{splits.test.shape[1]} prompts, "
                   f"{int(splits.unseen[0].sum())} unseen of {dataset.n_models} LLMs, trials batched by {batch}")

    common = (quality, label_mask, prompt_costs, costs)
    if ZERO in methods:
        t0 = time.perf_counter()
        m, g = _trial_fn("zero", mesh)(*common, sp["val"], sp["test"],
                                                                                  sp["unseen"])
        results[ZERO], grids[ZERO] = m, g
        seconds[ZERO] = time.perf_counter() - t0

    peers = [m for m in methods if m in PEERS]
    if KMEANS in methods or LEARNED in methods or peers:
        t0 = time.perf_counter()
        rank = max(1, min(2, int(splits.seen[0].sum()) - 1))  # factors of the "prior" estimator, as fit_estimator
        sel_all, test_all, grid_all, cents_all = [], [], [], []
        for k in k_grid:
            sel_k, test_k, grid_k, cent_k = [], [], [], []
            fn = _trial_fn("kmeans", mesh, n_clusters=k, n_init=config.n_init, metric=config.metric,
                           estimator=config.estimator, rank=rank)
            for chunk in _chunks(T, batch):
                s, m, g, c = fn(keys[chunk], emb, *common, sp["train"][chunk], sp["val"][chunk], sp["test"][chunk],
                                sp["seen"][chunk], sp["unseen"][chunk], alpha)
                sel_k.append(np.asarray(s))
                test_k.append(m)
                grid_k.append(np.asarray(g))
                cent_k.append(np.asarray(c))
            sel_all.append(np.concatenate(sel_k))
            test_all.append(jax.tree.map(lambda *a: np.concatenate(a), *test_k))
            grid_all.append(np.concatenate(grid_k))
            cents_all.append(np.concatenate(cent_k))
            _log(progress, f"UniRoute (K-Means): K={k} done for {T} trials ({time.perf_counter() - t0:.1f}s)")
        best = np.argmax(np.stack(sel_all), axis=0)  # [T]
        chosen_k = np.asarray(k_grid)[best]
        pick = lambda arrays: np.stack(arrays)[best, np.arange(T)]
        results[KMEANS] = jax.tree.map(lambda *a: pick(a), *test_all)
        grids[KMEANS] = pick(grid_all)
        centroids = [cents_all[best[t]][t] for t in range(T)]
        seconds[KMEANS] = time.perf_counter() - t0

    if KNN in methods:
        t0 = time.perf_counter()
        fn = _trial_fn("knn", mesh, k_max=max(ks), metric=config.metric)
        out_k, out_m, out_g = [], [], []
        for chunk in _chunks(T, batch):
            k_best, m, g = fn(emb, *common, sp["train"][chunk], sp["val"][chunk], sp["test"][chunk], sp["seen"][chunk],
                              sp["unseen"][chunk], jnp.asarray(ks))
            out_k.append(np.asarray(k_best))
            out_m.append(m)
            out_g.append(np.asarray(g))
        chosen_knn = np.concatenate(out_k)
        results[KNN] = jax.tree.map(lambda *a: np.concatenate(a), *out_m)
        grids[KNN] = np.concatenate(out_g)
        seconds[KNN] = time.perf_counter() - t0
        _log(progress, f"K-NN done ({seconds[KNN]:.1f}s)")

    if ORACLE in methods:
        t0 = time.perf_counter()
        m, g = _trial_fn("oracle", mesh)(quality, prompt_costs, costs, sp["test"], sp["unseen"])
        results[ORACLE], grids[ORACLE] = m, g
        seconds[ORACLE] = time.perf_counter() - t0

    for name in peers:
        t0 = time.perf_counter()
        fit, predict = peer(name)
        fit, predict = jax.jit(fit), jax.jit(predict)
        per = []
        for t in range(T):
            view = peer_view(quality, label_mask, sp["train"][t], sp["val"][t], sp["unseen"][t])
            params = fit(jax.random.fold_in(keys[t], 2), emb, *view, sp["train"][t], sp["val"][t], sp["seen"][t],
                         jnp.asarray(centroids[t]), jnp.asarray([n_va], jnp.int32))
            est = predict(params, emb, *view, sp["val"][t], sp["test"][t], sp["seen"][t], jnp.ones(n_va, bool))
            per.append(_fixed_estimates_trial(est, quality, prompt_costs, costs, sp["test"][t], sp["unseen"][t]))
        results[name] = jax.tree.map(lambda *a: np.stack(a), *[p[0] for p in per])
        grids[name] = np.stack([np.asarray(p[1]) for p in per])
        seconds[name] = time.perf_counter() - t0
        _log(progress, f"{name} done ({seconds[name]:.1f}s)")

    trained = [m for m in (LEARNED, MLP, MLP_RETRAINED) if m in methods]
    if trained:
        emb_np, q_np, mask_np = np.asarray(dataset.embeddings, np.float32), np.asarray(dataset.quality), dataset.label_mask
        q_nan = np.where(mask_np, q_np, np.nan).astype(np.float32)
        for name in trained:
            t0 = time.perf_counter()
            per = []
            for t in range(T):
                tr, va, te = splits.train[t], splits.val[t], splits.test[t]
                seen = np.flatnonzero(splits.seen[t])
                if name == LEARNED:
                    router = UniRouter(centroids[t], config.metric, config.alpha)
                    lm = router.learn_map(emb_np[tr], q_nan[tr][:, seen], emb_np[va], q_nan[va][:, seen],
                                          seed=config.seed + t)
                    pool = lm.represent(emb_np[va], q_nan[va], list(dataset.model_names), np.asarray(costs))
                    est = lm.estimates(emb_np[te], pool)
                else:
                    x, q = (emb_np[tr], q_nan[tr]) if name == MLP else (emb_np[va], q_nan[va])
                    est = FixedPoolRouter.fit(x, q, kind="mlp", seed=config.seed + t).estimates(emb_np[te])
                per.append(_fixed_estimates_trial(jnp.asarray(est, jnp.float32), quality, prompt_costs, costs,
                                                  sp["test"][t], sp["unseen"][t]))
                if progress and (t + 1) % max(1, T // 10) == 0:
                    _log(progress, f"{name}: {t + 1}/{T} trials ({time.perf_counter() - t0:.1f}s)")
            results[name] = jax.tree.map(lambda *a: np.stack(a), *[p[0] for p in per])
            grids[name] = np.stack([np.asarray(p[1]) for p in per])
            seconds[name] = time.perf_counter() - t0

    seconds["total"] = time.perf_counter() - t_start
    _log(progress, f"done in {seconds['total']:.1f}s")
    as_np = {m: metrics.CurveMetrics(*(np.asarray(f) for f in results[m])) for m in methods}
    return EvaluationResult(dataset.name, methods, as_np, {m: np.asarray(grids[m]) for m in methods}, chosen_k,
                            chosen_knn, splits, config, seconds)


# --------------------------------------------------------------------------------- output


def _mean_std(x: np.ndarray) -> str:
    return f"{np.mean(x):.3f} ± {np.std(x):.3f}"


def format_table(res: EvaluationResult, fmt: str = "markdown") -> str:
    """Mean ± std over trials; QNC averages the trials that reach the target and counts them."""
    validation.choice(fmt, "fmt", ("markdown", "csv"))
    T = len(res.chosen_k)
    # Paired sign tests on Area: against ZeroRouter ("does routing beat the best fixed mix?") and
    # against UniRoute (K-Means), each when that method was run.
    refs = [r for r in (ZERO, KMEANS) if r in res.methods]
    head = ["method", "Area", "Area(50%)", "QNC", "QNC reached", "peak accuracy", "AIQ", "APGR"]
    head += [f"Area vs {ref}: wins/losses, p (sign test)" for ref in refs]
    rows = []
    for name in res.methods:
        m = res.metrics[name]
        qnc = np.asarray(m.qnc)
        ok = np.isfinite(qnc)
        row = [name, _mean_std(m.area), _mean_std(m.area_50),
               _mean_std(qnc[ok]) if ok.any() else "never", f"{ok.sum()}/{T}", _mean_std(m.peak_quality),
               _mean_std(m.aiq), _mean_std(np.asarray(m.apgr)[np.isfinite(m.apgr)]) if np.isfinite(m.apgr).any()
               else "n/a"]
        for ref in refs:
            if name == ref:
                row.append("-")
            else:
                st = res.sign_test(name, ref)
                mark = " *" if st.p_value < 0.01 else ""
                row.append(f"{st.n_wins_a}/{st.n_wins_b}, p={st.p_value:.2g}{mark}")
        rows.append(row)
    if fmt == "csv":
        import csv
        import io

        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(head)
        w.writerows(rows)
        return buf.getvalue()
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def plot_mean_curves(res: EvaluationResult, path: str | Path, title: str | None = None) -> Path:
    plt = plots._pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for name in res.methods:
        g = res.curves[name]
        mean, std = g.mean(0), g.std(0)
        colour = plots.COLOURS.get(name)
        ax.plot(COST_GRID, mean, label=name, color=colour, lw=1.6)
        ax.fill_between(COST_GRID, mean - std, mean + std, color=colour, alpha=0.08, lw=0)
    ax.set_xlabel("mean cost / cost of the priciest unseen LLM")
    ax.set_ylabel("test accuracy (unseen LLMs)")
    ax.set_title(title or f"{res.dataset}: mean deferral curves\nover {len(res.chosen_k)} trials (± 1 std)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    return plots.save_figure(fig, path)


def synthetic_dataset(seed: int = 0, *, n_prompts: int = 3000, n_models: int = 24) -> RoutingDataset:
    """The synthetic world as a `RoutingDataset` (with embeddings), for the protocol and the CLI."""
    from uniroute_jax._src.synthetic import WorldConfig, synthetic_world

    w = synthetic_world(seed, n_prompts=n_prompts, n_models=n_models, config=WorldConfig(n_components=12))
    return RoutingDataset(
        name=f"synthetic(seed={seed})", prompt_ids=np.array([f"p{i}" for i in range(n_prompts)]),
        quality=np.asarray(w.quality), label_mask=np.ones((n_prompts, n_models), bool),
        costs=np.asarray(w.llms.costs, np.float64), model_names=tuple(f"llm-{i:02d}" for i in range(n_models)),
        embeddings=np.asarray(w.prompts.embeddings))
