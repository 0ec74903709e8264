"""UniRoute (LearnedMap): a soft prompt map trained on the training LLMs' correctness.

The prompt side is a linear map followed by a softmax over `K` clusters,

    Phi_k(x) = softmax_k(theta_k . phi(x) + b_k),

and the estimated error of LLM `h` on prompt `x` is `Phi(x) . Psi(h)`. `Psi` stays what UniRoute
(K-Means) uses: per-cluster validation error rates from *hard* k-means clusters on the validation
set, so a new LLM is still represented by running it once on the validation prompts, with no
gradient step. Only the prompt map is learned, from the training LLMs' labels on the (large)
training set:

    minimise  mean_{x, h labelled} BCE( clip(Phi(x) . Psi(h), eps, 1 - eps), error(x, h) )

with `Psi` of the training LLMs held fixed (the paper's recipe). `theta` starts from the k-means
solution at a temperature that makes the initial softmax close to the hard assignment, so training
starts from a tempered UniRoute (K-Means); early stopping on held-out training prompts keeps that
starting map unless training improves its held-out log-loss.

    base = UniRouter.fit(train_x, n_clusters=25)
    lm = LearnedMapRouter.from_kmeans(base, train_x, train_quality, val_x, val_quality)
    pool = lm.represent(val_x, new_quality, names=[...], costs=[...])   # any LLMs, no retraining
    curves = lm.sweep(test_x, pool, quality=test_quality)

The training loop here (`train`) is shared with the fixed-pool baselines: AdamW, whole epochs
jitted as a `lax.scan` over shuffled minibatches, early stopping on a held-out split, and shapes
padded to a multiple of the batch size so repeated fits of the same size reuse one compile.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.typing import ArrayLike

from uniroute_jax._src import persistence, validation
from uniroute_jax._src.error_vectors import DEFAULT_ALPHA, error_vectors, error_vectors_kernel
from uniroute_jax._src.kmeans import METRICS
from uniroute_jax._src.router import (Curves, Pool, Routing, UniRouter, _to_curves, check_pool,
                                      check_prompt_tables)
from uniroute_jax._src.routing import lambda_grid, make_units, route_kernel, sweep

PSI_SOURCES = ("hard", "soft")

# ============================================================================ shared training loop


class Hyper(NamedTuple):
    """AdamW hyperparameters, passed as arrays so a new value never triggers a recompile."""

    learning_rate: jax.Array  # []
    weight_decay: jax.Array  # []


class TrainHistory(NamedTuple):
    """Per-epoch losses of one training run (host arrays)."""

    train_loss: np.ndarray  # [n_epochs_run] mean minibatch loss during each epoch
    heldout_loss: np.ndarray  # [n_epochs_run] held-out loss after each epoch (NaN without a held-out split)
    initial_train_loss: float  # loss on the fitting prompts before the first step
    initial_heldout_loss: float  # held-out loss before the first step (NaN without a held-out split)
    best_epoch: int  # epoch whose parameters were kept (0: the initial ones)
    stopped_early: bool  # True when patience ran out before `epochs`


def _adamw(hyper: Hyper) -> optax.GradientTransformation:
    # Built inside the jitted functions from traced values; its state layout does not depend on them.
    return optax.adamw(hyper.learning_rate, weight_decay=hyper.weight_decay)


def as_key(seed: int | jax.Array, name: str = "seed") -> jax.Array:
    """A PRNG key from an int seed (>= 0) or an existing key; raises naming `name` otherwise."""
    if isinstance(seed, (int, np.integer)) and not isinstance(seed, bool):
        return jax.random.key(validation.positive_int(seed, name, minimum=0))
    if isinstance(seed, jax.Array):
        if jnp.issubdtype(seed.dtype, jax.dtypes.prng_key) and seed.shape == ():
            return seed
        if seed.dtype == jnp.uint32 and seed.shape == (2,):
            return jax.random.wrap_key_data(seed)
    raise TypeError(f"{name} must be an int >= 0 or a PRNG key, got {type(seed).__name__} {seed!r}")


HELDOUT_BUCKET = 32
"""Held-out rows are padded (label-masked) to a multiple of this, so nearby sizes share a compile."""


def pad_rows(n_rows: int, batch_size: int) -> int:
    """Rows after padding `n_rows` up to a whole number of minibatches (the shape bucket)."""
    return max(1, math.ceil(n_rows / batch_size)) * batch_size


def pad_to(arr: np.ndarray, n_rows: int, fill=0) -> np.ndarray:
    """`arr` with rows of `fill` appended up to `n_rows` rows."""
    pad = [(0, n_rows - arr.shape[0])] + [(0, 0)] * (arr.ndim - 1)
    return np.pad(arr, pad, constant_values=fill)


def _mean_loss(loss_fn, params, batch, aux):
    total, count = loss_fn(params, batch, aux)
    return total / jnp.maximum(count, 1.0), (total, count)


@functools.partial(jax.jit, static_argnames=("loss_fn", "batch_size"))
def train_epoch(params, opt_state, key: jax.Array, epoch: jax.Array, data, row_valid: jax.Array, aux,
                hyper: Hyper, *, loss_fn: Callable, batch_size: int):
    """One epoch of AdamW over shuffled minibatches, as a single `lax.scan`.

    Args:
      params: parameter pytree.
      opt_state: AdamW state for `params`.
      key: PRNG key of the run; the epoch's shuffle uses `fold_in(key, epoch)`.
      epoch: [] int32 epoch number.
      data: pytree of arrays with `n_pad` leading rows (a multiple of `batch_size`); padding rows
        carry an all-False label mask so they add nothing to the loss.
      row_valid: [n_pad] bool, False on padding rows.
      aux: pytree of arrays every minibatch sees whole (e.g. fixed `Psi`).
      hyper: `Hyper` learning rate and weight decay.
      loss_fn: `(params, batch, aux) -> (summed loss, number of labels)`; a module-level function so
        its identity, and hence the compile cache, is stable across calls (static).
      batch_size: rows per minibatch (static).

    Returns:
      `(params, opt_state, mean loss per label over the epoch)`.
    """
    n_pad = row_valid.shape[0]
    # Real rows in random order first, padding last: only the final minibatch holds padding.
    shuffle = jax.random.uniform(jax.random.fold_in(key, epoch), (n_pad,))
    sort_key = jnp.where(row_valid, shuffle, 2.0 + jnp.arange(n_pad))
    batches = jnp.argsort(sort_key).reshape(n_pad // batch_size, batch_size)
    opt = _adamw(hyper)
    grad_fn = jax.value_and_grad(functools.partial(_mean_loss, loss_fn), has_aux=True)

    def step(carry, idx):
        params, opt_state = carry
        batch = jax.tree.map(lambda a: a[idx], data)
        (_, (total, count)), grads = grad_fn(params, batch, aux)
        updates, opt_state = opt.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), (total, count)

    (params, opt_state), (totals, counts) = jax.lax.scan(step, (params, opt_state), batches)
    return params, opt_state, jnp.sum(totals) / jnp.maximum(jnp.sum(counts), 1.0)


@jax.jit
def _init_opt_state(params, hyper: Hyper):
    return _adamw(hyper).init(params)


@functools.partial(jax.jit, static_argnames=("loss_fn",))
def eval_loss(params, data, aux, *, loss_fn: Callable) -> jax.Array:
    """Mean loss per label of `params` on `data` (all rows at once)."""
    total, count = loss_fn(params, data, aux)
    return total / jnp.maximum(count, 1.0)


def _log(verbose: bool, msg: str) -> None:
    if verbose:
        print(f"[uniroute] {msg}", file=sys.stderr, flush=True)


def split_heldout(key: jax.Array, n_rows: int, fraction: float, name: str) -> tuple[np.ndarray, np.ndarray]:
    """Random `(fit rows, held-out rows)` index arrays; `fraction` of the rows (at least one) are held out."""
    # At least one held-out prompt whenever early stopping is asked for, so small sets still work.
    n_hold = max(1, int(round(fraction * n_rows))) if fraction > 0 else 0
    if n_hold >= n_rows:
        raise ValueError(f"holdout_fraction={fraction} leaves no prompt of the {n_rows} in {name} to train on")
    perm = host_rng(key).permutation(n_rows)
    return np.sort(perm[n_hold:]), np.sort(perm[:n_hold])


def host_rng(key: jax.Array) -> np.random.Generator:
    """A NumPy generator seeded from a PRNG key: host-side draws without compiling a device kernel."""
    return np.random.default_rng(np.asarray(jax.random.key_data(key)).ravel().tolist())


def train(
    loss_fn: Callable,
    params,
    key: jax.Array,
    fit_data,
    n_fit: int,
    heldout_data,
    aux,
    *,
    learning_rate: float,
    weight_decay: float,
    batch_size: int,
    epochs: int,
    patience: int,
    min_delta: float,
    verbose: bool = False,
    label: str = "training",
):
    """AdamW with jitted epochs and early stopping; returns `(best params, TrainHistory)`.

    Args:
      loss_fn: `(params, batch, aux) -> (summed loss, number of labels)` (module-level function).
      params: initial parameter pytree.
      key: PRNG key for the shuffles.
      fit_data: pytree of arrays with `pad_rows(n_fit, batch_size)` rows (padding label-masked).
      n_fit: number of real rows in `fit_data`.
      heldout_data: pytree of arrays for early stopping, or None (train all `epochs`).
      aux: pytree passed whole to `loss_fn`.
      learning_rate, weight_decay: AdamW settings.
      batch_size: rows per minibatch.
      epochs: maximum number of epochs (0 returns the initial parameters).
      patience: epochs without a held-out improvement of more than `min_delta` before stopping.
      min_delta: smallest decrease of the held-out loss that counts as an improvement.
      verbose: print one line per epoch to stderr.
      label: name used in the progress lines.
    """
    hyper = Hyper(jnp.asarray(learning_rate, jnp.float32), jnp.asarray(weight_decay, jnp.float32))
    opt_state = _init_opt_state(params, hyper)
    n_pad = jax.tree.leaves(fit_data)[0].shape[0]
    row_valid = jnp.asarray(np.arange(n_pad) < n_fit)
    initial_train = float(eval_loss(params, fit_data, aux, loss_fn=loss_fn))
    has_heldout = heldout_data is not None
    initial_heldout = float(eval_loss(params, heldout_data, aux, loss_fn=loss_fn)) if has_heldout else math.nan
    best_params, best_loss, best_epoch, waited = params, initial_heldout, 0, 0
    train_losses, heldout_losses = [], []
    _log(verbose, f"{label}: epoch 0/{epochs}: train {initial_train:.5f} held-out {initial_heldout:.5f}")
    stopped = False
    start = time.perf_counter()
    for epoch in range(1, epochs + 1):
        params, opt_state, train_loss = train_epoch(params, opt_state, key, np.int32(epoch), fit_data, row_valid,
                                                    aux, hyper, loss_fn=loss_fn, batch_size=batch_size)
        train_losses.append(float(train_loss))
        if has_heldout:
            heldout = float(eval_loss(params, heldout_data, aux, loss_fn=loss_fn))
            heldout_losses.append(heldout)
            if heldout < best_loss - min_delta:
                best_params, best_loss, best_epoch, waited = params, heldout, epoch, 0
            else:
                waited += 1
        else:
            heldout_losses.append(math.nan)
            best_params, best_epoch = params, epoch
        _log(verbose, f"{label}: epoch {epoch}/{epochs}: train {train_losses[-1]:.5f} "
                      f"held-out {heldout_losses[-1]:.5f} ({time.perf_counter() - start:.2f}s)")
        if has_heldout and waited >= patience:
            stopped = epoch < epochs
            break
    if stopped:
        _log(verbose, f"{label}: stopped at epoch {len(train_losses)}; kept epoch {best_epoch} "
                      f"(held-out {best_loss:.5f})")
    history = TrainHistory(np.asarray(train_losses, np.float64), np.asarray(heldout_losses, np.float64),
                           initial_train, initial_heldout, best_epoch, stopped)
    return best_params, history


def check_training_settings(config) -> None:
    """Validates the optimisation fields shared by the training configs."""
    validation.nonnegative_float(config.learning_rate, "learning_rate")
    if config.learning_rate <= 0:
        raise ValueError(f"learning_rate must be > 0, got {config.learning_rate}")
    validation.nonnegative_float(config.weight_decay, "weight_decay")
    validation.positive_int(config.batch_size, "batch_size")
    validation.positive_int(config.epochs, "epochs", minimum=0)
    validation.positive_int(config.patience, "patience")
    validation.nonnegative_float(config.min_delta, "min_delta")
    frac = validation.nonnegative_float(config.holdout_fraction, "holdout_fraction")
    if frac >= 1:
        raise ValueError(f"holdout_fraction must be in [0, 1), got {frac}")


def check_quality(quality, name: str, n_rows: int, label_mask, mask_name: str, n_models: int | None = None):
    """`(quality with 0 where unlabelled, bool mask)` after shape, NaN and [0, 1] checks."""
    q = validation.float_array(quality, name, ndim=2, allow_nan=True)
    if q.shape[0] != n_rows:
        raise ValueError(f"{name} has {q.shape[0]} rows but there are {n_rows} prompts")
    if n_models is not None and q.shape[1] != n_models:
        raise ValueError(f"{name} has {q.shape[1]} model columns but {n_models} were expected")
    if label_mask is None:
        mask = ~np.isnan(q)
    else:
        mask = validation.bool_array(label_mask, mask_name, shape=q.shape)
        if np.isnan(q[mask]).any():
            raise ValueError(f"{name} is NaN where {mask_name} is True")
    validation.unit_interval(q, name, where=mask)
    return np.where(mask, q, 0.0).astype(np.float32), mask


# ============================================================================ the learned map


@dataclasses.dataclass(frozen=True)
class LearnedMapConfig:
    """Training settings of the learned map. The paper gives none; these are ours.

    Attributes:
      learning_rate: AdamW step size, default 1e-2. Adam moves each weight by about the step size
        per update whatever the gradient scale, and the logits `theta . phi(x)` sum hundreds of
        input dimensions, so 1e-2 already shifts a logit by a few tenths per epoch: fast enough to
        converge in tens of epochs, small next to the initial logit gaps (set by `init_sharpness`).
      weight_decay: AdamW decoupled decay, default 1e-4 (optax's default). Early stopping is the
        main regulariser; a light decay only damps weights along directions that carry no signal.
        Decay shrinks `theta` toward 0, i.e. toward a softer map, never toward a wrong one.
      batch_size: prompts per minibatch, default 256: each step then sees 256 x n_models labels,
        enough for a low-variance gradient of a `dim x K` map, with about 8 steps per epoch for
        2,000 prompts. Also the padding bucket: fits whose prompt counts round up to the same
        multiple of it share one compile.
      epochs: at most 100 epochs; early stopping usually ends training well before.
      patience: 5 epochs without held-out improvement before stopping; the held-out curve of this
        small model is smooth, so a longer wait only spends time.
      min_delta: 1e-5, the held-out improvement (in nats per label) that counts; below it the
        change is noise.
      holdout_fraction: 0.1 of the training prompts (at least one) held out for early stopping:
        several hundred prompts x every training LLM at the paper's sizes, a stable loss estimate.
        0 turns early stopping off and trains all `epochs`.
      init_sharpness: 0.9, the mean softmax weight the initial map puts on each training prompt's
        own k-means cluster. Near 1 the map starts as UniRoute (K-Means) but the softmax saturates
        and gradients vanish for most prompts; 0.9 starts close to the hard assignment yet
        trainable.
      eps: 1e-4, predictions are clipped to `[eps, 1 - eps]` so a label against a confident
        estimate costs at most `-log(eps)` (about 9.2 nats).
    """

    learning_rate: float = 1e-2
    weight_decay: float = 1e-4
    batch_size: int = 256
    epochs: int = 100
    patience: int = 5
    min_delta: float = 1e-5
    holdout_fraction: float = 0.1
    init_sharpness: float = 0.9
    eps: float = 1e-4

    def __post_init__(self):
        check_training_settings(self)
        s = validation.nonnegative_float(self.init_sharpness, "init_sharpness")
        if not 0 < s < 1:
            raise ValueError(f"init_sharpness must be in (0, 1), got {s}")
        e = validation.nonnegative_float(self.eps, "eps")
        if not 0 < e < 0.5:
            raise ValueError(f"eps must be in (0, 0.5), got {e}")


class MapParams(NamedTuple):
    """Parameters of the soft prompt map."""

    theta: jax.Array  # [n_clusters, dim]
    bias: jax.Array  # [n_clusters]


class _MapBatch(NamedTuple):
    x: jax.Array  # [n, dim] preprocessed embeddings
    quality: jax.Array  # [n, n_models] quality, 0 where unlabelled
    mask: jax.Array  # [n, n_models] bool


class _MapAux(NamedTuple):
    psi: jax.Array  # [n_models, n_clusters] fixed Psi of the training LLMs (hard mode)
    val: _MapBatch  # validation prompts, for Psi recomputed from the soft map (soft mode)
    alpha: jax.Array  # [] shrinkage pseudo-count
    eps: jax.Array  # [] prediction clip


def _prepare(x: jax.Array, metric: str) -> jax.Array:
    if metric == "cosine":
        return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-12)
    return x


def _prepare_host(x: np.ndarray, metric: str) -> np.ndarray:
    # NumPy twin of `_prepare` for data that is prepared once on the host.
    if metric == "cosine":
        return (x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)).astype(np.float32)
    return x.astype(np.float32)


def _soft_map(params: MapParams, x: jax.Array) -> jax.Array:
    return jax.nn.softmax(x @ params.theta.T + params.bias, axis=-1)


@functools.partial(jax.jit, static_argnames=("metric",))
def features_kernel(params: MapParams, x: jax.Array, *, metric: str) -> jax.Array:
    """Unchecked `Phi(x) [n_prompts, n_clusters]` for raw embeddings `x [n_prompts, dim]`."""
    return _soft_map(params, _prepare(x, metric))


def _bce_sum(pred_error, quality, mask, eps):
    p = jnp.clip(pred_error, eps, 1.0 - eps)
    err = 1.0 - quality
    ll = err * jnp.log(p) + (1.0 - err) * jnp.log1p(-p)
    return -jnp.sum(jnp.where(mask, ll, 0.0)), jnp.sum(mask.astype(ll.dtype))


def _loss_hard(params: MapParams, batch: _MapBatch, aux: _MapAux):
    return _bce_sum(_soft_map(params, batch.x) @ aux.psi.T, batch.quality, batch.mask, aux.eps)


def _loss_soft(params: MapParams, batch: _MapBatch, aux: _MapAux):
    # Psi follows the map: gradients flow through the validation prompts' soft weights too.
    weights = _soft_map(params, aux.val.x)
    psi = error_vectors_kernel(weights, aux.val.quality, aux.val.mask, aux.alpha,
                               n_clusters=params.theta.shape[0]).psi
    return _bce_sum(_soft_map(params, batch.x) @ psi.T, batch.quality, batch.mask, aux.eps)


_LOSSES = {"hard": _loss_hard, "soft": _loss_soft}


def initial_map(centroids: np.ndarray, train_x: np.ndarray, metric: str, sharpness: float) -> MapParams:
    """The map equal to a tempered k-means assignment.

    Scores are `x . c_k - |c_k|^2 / 2` (Euclidean: `-|x - c_k|^2 / 2` up to a per-prompt constant)
    or `x . c_k` on unit vectors (cosine), so `softmax(scale * score)` tends to the hard k-means
    assignment as `scale` grows. `scale` is set by bisection so that the mean weight of each
    training prompt on its own cluster is `sharpness`.

    Args:
      centroids: [n_clusters, dim] k-means centroids (unit rows under cosine).
      train_x: [n_prompts, dim] preprocessed training embeddings.
      metric: "cosine" or "euclidean".
      sharpness: target mean weight on the nearest cluster, in (0, 1).

    Returns:
      `MapParams` with `theta = scale * centroids`.
    """
    c = np.asarray(centroids, np.float64)
    offset = np.zeros(c.shape[0]) if metric == "cosine" else -0.5 * np.sum(c * c, axis=1)
    # A strided subset keeps the bisection cheap and deterministic for large training sets.
    x = np.asarray(train_x, np.float64)[:: max(1, train_x.shape[0] // 4096)]
    scores = x @ c.T + offset
    gaps = scores.max(axis=1, keepdims=True) - scores
    scale = 1.0
    if c.shape[0] > 1:
        mean_top = lambda s: float(np.mean(1.0 / np.sum(np.exp(-s * gaps), axis=1)))
        lo, hi = 0.0, 1.0
        while mean_top(hi) < sharpness and hi < 1e12:
            lo, hi = hi, hi * 4.0
        for _ in range(60):
            mid = 0.5 * (lo + hi)
            lo, hi = (mid, hi) if mean_top(mid) < sharpness else (lo, mid)
        scale = hi
    return MapParams(jnp.asarray(scale * c, jnp.float32), jnp.asarray(scale * offset, jnp.float32))


@dataclasses.dataclass(frozen=True, eq=False)
class LearnedMapRouter:
    """UniRoute (LearnedMap): a soft prompt map `Phi(x) = softmax(theta x + b)` over k-means clusters.

    LLMs are represented as in UniRoute (K-Means): per-cluster validation error rates, with the
    clusters given by the hard k-means `centroids` (`psi_source="hard"`, the paper's recipe) or by
    the soft map itself (`psi_source="soft"`). Estimated error of LLM `h` on prompt `x`:
    `Phi(x) . Psi(h)`.

    Attributes:
      theta: [n_clusters, dim] map weights.
      bias: [n_clusters] map offsets.
      centroids: [n_clusters, dim] the k-means centroids the map started from; they define the
        hard clusters behind `Psi` when `psi_source == "hard"`.
      metric: "cosine" (embeddings L2-normalised before the map; default) or "euclidean".
      alpha: pseudo-count shrinking sparse clusters toward an LLM's overall validation error.
      psi_source: "hard" or "soft", how `represent` computes `Psi` (fixed at training time).
      info: fit diagnostics (losses per epoch, best epoch, seconds, settings).
    """

    theta: np.ndarray
    bias: np.ndarray
    centroids: np.ndarray
    metric: str = "cosine"
    alpha: float = DEFAULT_ALPHA
    psi_source: str = "hard"
    info: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        validation.choice(self.metric, "metric", METRICS)
        validation.choice(self.psi_source, "psi_source", PSI_SOURCES)
        theta = validation.float_array(self.theta, "theta", ndim=2)
        k, dim = theta.shape
        if k == 0 or dim == 0:
            raise ValueError(f"theta must have at least one cluster and one dimension, got shape {theta.shape}")
        bias = validation.float_array(self.bias, "bias", shape=(k,))
        centroids = validation.float_array(self.centroids, "centroids", shape=(k, dim))
        object.__setattr__(self, "theta", theta)
        object.__setattr__(self, "bias", bias)
        object.__setattr__(self, "centroids", centroids)
        object.__setattr__(self, "alpha", validation.nonnegative_float(self.alpha, "alpha"))

    @property
    def n_clusters(self) -> int:
        return self.theta.shape[0]

    @property
    def dim(self) -> int:
        return self.theta.shape[1]

    @property
    def params(self) -> MapParams:
        return MapParams(jnp.asarray(self.theta), jnp.asarray(self.bias))

    # ------------------------------------------------------------------------------ fitting

    @classmethod
    def fit(
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
    ) -> LearnedMapRouter:
        """Fits k-means on the training prompts, then trains the map from it (`from_kmeans`).

        Args:
          train_embeddings: [n_train, dim] training prompts.
          train_quality: [n_train, n_models] training LLMs' quality in [0, 1]; NaN where missing.
          val_embeddings: [n_val, dim] validation prompts.
          val_quality: [n_val, n_models] the same LLMs' validation quality; NaN where missing.
          n_clusters: K.
          seed: int seed or PRNG key; k-means and training use keys folded from it.
          metric: "cosine" or "euclidean", for k-means and the map.
          alpha: shrinkage pseudo-count of `Psi`.
          psi_source: "hard" (default, the paper's recipe) or "soft"; see `from_kmeans`.
          train_label_mask, val_label_mask: optional bool masks (default: not NaN).
          n_init, max_iter: k-means settings.
          config: training settings (default `LearnedMapConfig()`).
          verbose: progress lines on stderr.

        Returns:
          A trained `LearnedMapRouter`.
        """
        key = as_key(seed)
        k_kmeans, k_train = jax.random.split(key)
        kmeans_seed = int(host_rng(k_kmeans).integers(0, np.iinfo(np.int32).max))
        base = UniRouter.fit(train_embeddings, n_clusters, seed=kmeans_seed, n_init=n_init, max_iter=max_iter,
                             metric=metric, alpha=alpha, verbose=verbose)
        return cls.from_kmeans(base, train_embeddings, train_quality, val_embeddings, val_quality, seed=k_train,
                               psi_source=psi_source, train_label_mask=train_label_mask,
                               val_label_mask=val_label_mask, config=config, verbose=verbose)

    @classmethod
    def from_kmeans(
        cls,
        router: UniRouter,
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
    ) -> LearnedMapRouter:
        """Trains the soft map starting from a fitted UniRoute (K-Means) router.

        The training LLMs' `Psi` comes from the router's hard clusters on the validation prompts
        and is held fixed (`psi_source="hard"`, the paper's recipe). With `psi_source="soft"`,
        `Psi` is recomputed at every step from the current soft map's weights on the validation
        prompts (gradients flow through it), and `represent` later does the same for new LLMs:
        prompt and LLM sides then use one clustering.

        Args:
          router: a fitted `UniRouter`; its centroids, metric and alpha are kept.
          train_embeddings: [n_train, dim] training prompts; `holdout_fraction` of them are held
            out for early stopping.
          train_quality: [n_train, n_models] training LLMs' quality in [0, 1]; NaN where missing.
          val_embeddings: [n_val, dim] validation prompts.
          val_quality: [n_val, n_models] the same LLMs (same columns) on the validation prompts.
          seed: int seed or PRNG key for the held-out split and the shuffles; equal seeds give
            identical maps.
          psi_source: "hard" or "soft".
          train_label_mask: optional [n_train, n_models] bool (default: not NaN).
          val_label_mask: optional [n_val, n_models] bool (default: not NaN).
          config: training settings (default `LearnedMapConfig()`); `epochs=0` returns the
            initial, tempered k-means map.
          verbose: one progress line per epoch on stderr.

        Returns:
          A trained `LearnedMapRouter`; `info["history"]` holds the per-epoch losses.

        Raises:
          ValueError / TypeError naming the argument.

        Example:
          >>> rng = np.random.default_rng(0)
          >>> x, q = rng.normal(size=(200, 4)), rng.integers(0, 2, size=(200, 3)).astype(float)
          >>> base = UniRouter(x[:3], metric="euclidean")  # any fitted k-means router
          >>> lm = LearnedMapRouter.from_kmeans(base, x[:150], q[:150], x[150:], q[150:],
          ...                                   config=LearnedMapConfig(epochs=2))
          >>> pool = lm.represent(x[150:], q[150:], ["a", "b", "c"], costs=[1.0, 2.0, 4.0])
          >>> lm.estimates(x[:5], pool).shape
          (5, 3)
        """
        if not isinstance(router, UniRouter):
            raise TypeError(f"router must be a UniRouter, got {type(router).__name__}")
        validation.choice(psi_source, "psi_source", PSI_SOURCES)
        config = LearnedMapConfig() if config is None else config
        if not isinstance(config, LearnedMapConfig):
            raise TypeError(f"config must be a LearnedMapConfig, got {type(config).__name__}")
        key = as_key(seed)
        train_x = router._embeddings(train_embeddings, "train_embeddings")
        val_x = router._embeddings(val_embeddings, "val_embeddings")
        train_q, train_mask = check_quality(train_quality, "train_quality", train_x.shape[0], train_label_mask,
                                            "train_label_mask")
        n_models = train_q.shape[1]
        val_q, val_mask = check_quality(val_quality, "val_quality", val_x.shape[0], val_label_mask,
                                        "val_label_mask", n_models)
        if not train_mask.any():
            raise ValueError("train_quality has no label at all")
        start = time.perf_counter()
        metric = router.metric
        # Checks that every training LLM has a validation label, and gives the fixed hard Psi.
        psi = np.asarray(error_vectors(router.assign(val_x), val_q, n_clusters=router.n_clusters,
                                       label_mask=val_mask, alpha=router.alpha).psi)
        train_p, val_p = _prepare_host(train_x, metric), _prepare_host(val_x, metric)
        params = initial_map(router.centroids, train_p, metric, config.init_sharpness)

        k_split, k_train = jax.random.split(key)
        fit_rows, hold_rows = split_heldout(k_split, train_x.shape[0], config.holdout_fraction, "train_embeddings")
        n_pad = pad_rows(fit_rows.size, config.batch_size)
        fit_data = _MapBatch(jnp.asarray(pad_to(train_p[fit_rows], n_pad)),
                             jnp.asarray(pad_to(train_q[fit_rows], n_pad)),
                             jnp.asarray(pad_to(train_mask[fit_rows], n_pad, False)))
        n_hold = pad_rows(hold_rows.size, HELDOUT_BUCKET)
        hold_data = None if hold_rows.size == 0 else _MapBatch(
            jnp.asarray(pad_to(train_p[hold_rows], n_hold)), jnp.asarray(pad_to(train_q[hold_rows], n_hold)),
            jnp.asarray(pad_to(train_mask[hold_rows], n_hold, False)))
        aux = _MapAux(jnp.asarray(psi), _MapBatch(jnp.asarray(val_p), jnp.asarray(val_q), jnp.asarray(val_mask)),
                      jnp.asarray(router.alpha, jnp.float32), jnp.asarray(config.eps, jnp.float32))
        _log(verbose, f"learned map: {fit_rows.size} training prompts ({hold_rows.size} held out) x {n_models} "
                      f"LLMs, K={router.n_clusters}, psi_source={psi_source}")
        params, history = train(_LOSSES[psi_source], params, k_train, fit_data, fit_rows.size, hold_data, aux,
                                learning_rate=config.learning_rate, weight_decay=config.weight_decay,
                                batch_size=config.batch_size, epochs=config.epochs, patience=config.patience,
                                min_delta=config.min_delta, verbose=verbose, label="learned map")
        info = {
            "seconds": round(time.perf_counter() - start, 3),
            "n_fit": int(fit_rows.size),
            "n_heldout": int(hold_rows.size),
            "n_models": int(n_models),
            "epochs_run": int(history.train_loss.size),
            "best_epoch": int(history.best_epoch),
            "stopped_early": bool(history.stopped_early),
            "initial_train_loss": history.initial_train_loss,
            "initial_heldout_loss": _json_float(history.initial_heldout_loss),
            "train_loss": [float(v) for v in history.train_loss],
            "heldout_loss": [_json_float(v) for v in history.heldout_loss],
            "config": dataclasses.asdict(config),
            "kmeans": dict(router.info),
        }
        return cls(np.asarray(params.theta), np.asarray(params.bias), np.asarray(router.centroids), metric,
                   router.alpha, psi_source, info)

    # ------------------------------------------------------------------------------ using

    def _embeddings(self, embeddings: ArrayLike, name: str = "embeddings") -> np.ndarray:
        x = validation.float_array(embeddings, name, ndim=2)
        if x.shape[1] != self.dim:
            raise ValueError(f"{name} has shape {x.shape} but the router's map expects dimension {self.dim}")
        if x.shape[0] == 0:
            raise ValueError(f"{name} holds no prompt")
        return x

    def features(self, embeddings: ArrayLike) -> np.ndarray:
        """Soft cluster weights `Phi(x)`: `[n_prompts, n_clusters]`, rows summing to 1."""
        x = self._embeddings(embeddings)
        return np.asarray(features_kernel(self.params, jnp.asarray(x), metric=self.metric))

    def assign(self, embeddings: ArrayLike) -> np.ndarray:
        """Hard k-means cluster of each prompt (nearest centroid): `[n_prompts]` int32."""
        x = self._embeddings(embeddings)
        return UniRouter(self.centroids, self.metric, self.alpha).assign(x)

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

        `Psi` uses the hard k-means clusters of the validation prompts (`psi_source="hard"`) or the
        soft map's weights on them (`"soft"`), as at training time.

        Args:
          val_embeddings: [n_val, dim] validation prompts.
          val_quality: [n_val, n_models] quality in [0, 1]; NaN (or `label_mask` False) where an
            LLM was not run.
          names: [n_models] LLM names.
          costs: [n_models] cost per query.
          label_mask: optional [n_val, n_models] bool.

        Returns:
          A `Pool` over this router's `n_clusters`.
        """
        x = self._embeddings(val_embeddings, "val_embeddings")
        q = validation.float_array(val_quality, "val_quality", ndim=2, allow_nan=True)
        if q.shape[0] != x.shape[0]:
            raise ValueError(f"val_quality has {q.shape[0]} rows but val_embeddings has {x.shape[0]} prompts")
        names = (names,) if isinstance(names, str) else tuple(names)
        if len(names) != q.shape[1]:
            raise ValueError(f"names has {len(names)} entries but val_quality has {q.shape[1]} model columns")
        weights = self.assign(x) if self.psi_source == "hard" else self.features(x)
        ev = error_vectors(weights, q, n_clusters=self.n_clusters, label_mask=label_mask, alpha=self.alpha)
        costs = np.atleast_1d(costs) if np.isscalar(costs) else costs
        return Pool(names, costs, np.asarray(ev.psi), np.asarray(ev.counts), np.asarray(ev.error_sums))

    def _check_pool(self, pool: Pool) -> None:
        check_pool(pool, self.n_clusters)

    def estimates(self, embeddings: ArrayLike, pool: Pool) -> np.ndarray:
        """Estimated error `Phi(x) . Psi(h)`: `[n_prompts, n_models]`, for `routing.sweep` per prompt."""
        self._check_pool(pool)
        return self.features(embeddings) @ pool.psi.T

    def log_loss(self, embeddings: ArrayLike, quality: ArrayLike, pool: Pool, *,
                 label_mask: ArrayLike | None = None, eps: float | None = None) -> float:
        """Mean binary log-loss of the estimates against observed errors (the training objective).

        Args:
          embeddings: [n_prompts, dim].
          quality: [n_prompts, n_models] quality in [0, 1] of the pool's models (its column order);
            NaN where missing.
          pool: LLMs represented by this router.
          label_mask: optional [n_prompts, n_models] bool (default: not NaN).
          eps: prediction clip (default: the training `eps`, else 1e-4).

        Returns:
          Mean negative log-likelihood per label, in nats.
        """
        self._check_pool(pool)
        x = self._embeddings(embeddings)
        q, mask = check_quality(quality, "quality", x.shape[0], label_mask, "label_mask", len(pool))
        if not mask.any():
            raise ValueError("quality has no label at all")
        eps = self.info.get("config", {}).get("eps", 1e-4) if eps is None else validation.nonnegative_float(eps, "eps")
        p = np.clip(self.estimates(x, pool).astype(np.float64), eps, 1.0 - eps)
        err = 1.0 - q
        ll = err * np.log(p) + (1.0 - err) * np.log1p(-p)
        return float(-ll[mask].mean())

    def route(self, embeddings: ArrayLike, pool: Pool, lam: float, *, models: Sequence[str] | None = None) -> Routing:
        """Sends each prompt to `argmin_h Phi(x) . Psi(h) + lam * cost(h)` over the pool.

        Args:
          embeddings: [n_prompts, dim].
          pool: a `Pool` built by this router.
          lam: trade-off >= 0.
          models: optional subset of the pool's names to route among.

        Returns:
          `Routing(model, index, cluster)`, each `[n_prompts]`; `cluster` is the heaviest cluster of
          the soft map.
        """
        self._check_pool(pool)
        lam = validation.nonnegative_float(lam, "lam")
        mask = np.ones(len(pool), bool) if models is None else pool.masks([models])[0]
        phi = self.features(embeddings)
        res = route_kernel(jnp.asarray(phi), jnp.asarray(pool.psi), jnp.asarray(pool.costs), jnp.asarray(mask),
                           jnp.asarray(lam, jnp.float32))
        index = np.asarray(res.choice)
        return Routing(np.asarray(pool.names)[index], index, np.argmax(phi, axis=1).astype(np.int32))

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
        """Cost-quality curves over many budgets and sub-pools in one jitted call (per-prompt units).

        Same arguments and result as `UniRouter.sweep`.
        """
        self._check_pool(pool)
        est = self.estimates(embeddings, pool)
        n = est.shape[0]
        check_prompt_tables(n, pool, quality=quality, prompt_costs=prompt_costs)
        lams = lambda_grid(pool.costs, n_budgets) if lams is None else lams
        masks = np.ones((1, len(pool)), bool) if subsets is None else pool.masks(subsets)
        if quality is None and prompt_costs is None:
            prompt_costs = np.broadcast_to(pool.costs, (n, len(pool)))
        units = make_units(None, quality=quality, prompt_costs=prompt_costs, costs=pool.costs)
        result = sweep(est, units, pool.costs, lams, pool_masks=masks)
        return _to_curves(lams, result, masks, quality is not None)

    # ------------------------------------------------------------------------------ files

    def save(self, path) -> Path:
        """Writes the router to a versioned `.npz` file (kind "learned_map_router")."""
        arrays = {"theta": self.theta, "bias": self.bias, "centroids": self.centroids}
        meta = {"metric": self.metric, "alpha": self.alpha, "psi_source": self.psi_source, "info": self.info}
        return persistence.save_arrays(path, "learned_map_router", arrays, meta)

    @classmethod
    def load(cls, path) -> LearnedMapRouter:
        """Reads a router written by `save`."""
        arrays, meta = persistence.load_arrays(path, "learned_map_router")
        try:
            return cls(arrays["theta"], arrays["bias"], arrays["centroids"], meta["metric"], meta["alpha"],
                       meta["psi_source"], meta.get("info", {}))
        except KeyError as err:
            raise ValueError(f"{path} is missing the learned-map router field {err}") from None


def _json_float(v: float) -> float | None:
    # JSON has no NaN; `None` marks "no held-out split".
    return None if math.isnan(v) else float(v)
