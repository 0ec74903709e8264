"""Training UniRoute's learned prompt map: a softmax over the k-means clusters, fitted on the
training LLMs' correctness.

The prompt side is a linear map followed by a softmax over `K` clusters (`feature_maps.SoftMap`),

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

    router = UniRouter.fit(train_x, n_clusters=25)
    learned = router.learn_map(train_x, train_quality, val_x, val_quality)   # a UniRouter with a SoftMap
    pool = learned.represent(val_x, new_quality, names=[...], costs=[...])    # any LLMs, no retraining

The optimisation loop is `training.train`, shared with the fixed-pool baselines.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from uniroute_jax._src import validation
from uniroute_jax._src.error_vectors import error_vectors, error_vectors_kernel
from uniroute_jax._src.feature_maps import PSI_SOURCES, HardMap, MapParams, SoftMap, prepare_host, soft_map
from uniroute_jax._src.training import (
    TrainingConfig,
    check_quality,
    history_info,
    padded_batches,
    split_heldout,
    train,
)


@dataclasses.dataclass(frozen=True)
class LearnedMapConfig(TrainingConfig):
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

    init_sharpness: float = 0.9
    eps: float = 1e-4

    def __post_init__(self):
        super().__post_init__()
        s = validation.nonnegative_float(self.init_sharpness, "init_sharpness")
        if not 0 < s < 1:
            raise ValueError(f"init_sharpness must be in (0, 1), got {s}")
        e = validation.nonnegative_float(self.eps, "eps")
        if not 0 < e < 0.5:
            raise ValueError(f"eps must be in (0, 0.5), got {e}")


class _MapBatch(NamedTuple):
    x: jax.Array  # [n, dim] preprocessed embeddings
    quality: jax.Array  # [n, n_models] quality, 0 where unlabelled
    mask: jax.Array  # [n, n_models] bool


class _MapAux(NamedTuple):
    psi: jax.Array  # [n_models, n_clusters] fixed Psi of the training LLMs (hard mode)
    val: _MapBatch  # validation prompts, for Psi recomputed from the soft map (soft mode)
    alpha: jax.Array  # [] shrinkage pseudo-count
    eps: jax.Array  # [] prediction clip


def _bce_sum(pred_error, quality, mask, eps):
    p = jnp.clip(pred_error, eps, 1.0 - eps)
    err = 1.0 - quality
    ll = err * jnp.log(p) + (1.0 - err) * jnp.log1p(-p)
    return -jnp.sum(jnp.where(mask, ll, 0.0)), jnp.sum(mask.astype(ll.dtype))


def _loss_hard(params: MapParams, batch: _MapBatch, aux: _MapAux):
    return _bce_sum(soft_map(params, batch.x) @ aux.psi.T, batch.quality, batch.mask, aux.eps)


def _loss_soft(params: MapParams, batch: _MapBatch, aux: _MapAux):
    # Psi follows the map: gradients flow through the validation prompts' soft weights too.
    weights = soft_map(params, aux.val.x)
    psi = error_vectors_kernel(weights, aux.val.quality, aux.val.mask, aux.alpha,
                               n_clusters=params.theta.shape[0]).psi
    return _bce_sum(soft_map(params, batch.x) @ psi.T, batch.quality, batch.mask, aux.eps)


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


def train_soft_map(
    hard: HardMap,
    alpha: float,
    train_x: np.ndarray,
    train_quality,
    val_x: np.ndarray,
    val_quality,
    *,
    key: jax.Array,
    psi_source: str = "hard",
    train_label_mask=None,
    val_label_mask=None,
    config: LearnedMapConfig | None = None,
    verbose: bool = False,
) -> tuple[SoftMap, dict[str, Any]]:
    """Trains the soft map starting from the hard map `hard`; see `UniRouter.learn_map`.

    Args:
      hard: the k-means map the soft map starts from (its centroids and metric are kept).
      alpha: the router's shrinkage pseudo-count for `Psi`.
      train_x: [n_train, dim] checked training embeddings; `holdout_fraction` of them are held
        out for early stopping.
      train_quality: [n_train, n_models] training LLMs' quality in [0, 1]; NaN where missing.
      val_x: [n_val, dim] checked validation embeddings.
      val_quality: [n_val, n_models] the same LLMs on the validation prompts.
      key: PRNG key for the held-out split and the shuffles.
      psi_source: "hard" (fixed `Psi` on the hard clusters) or "soft" (`Psi` recomputed from the
        soft weights at every step, gradients flowing through it).
      train_label_mask, val_label_mask: optional bool masks (default: not NaN).
      config: training settings (default `LearnedMapConfig()`).
      verbose: one progress line per epoch on stderr.

    Returns:
      `(SoftMap, info)`; `info` holds the per-epoch losses and the settings.
    """
    validation.choice(psi_source, "psi_source", PSI_SOURCES)
    config = LearnedMapConfig() if config is None else config
    if not isinstance(config, LearnedMapConfig):
        raise TypeError(f"config must be a LearnedMapConfig, got {type(config).__name__}")
    train_q, train_mask = check_quality(train_quality, "train_quality", train_x.shape[0], train_label_mask,
                                        "train_label_mask")
    n_models = train_q.shape[1]
    val_q, val_mask = check_quality(val_quality, "val_quality", val_x.shape[0], val_label_mask,
                                    "val_label_mask", n_models)
    if not train_mask.any():
        raise ValueError("train_quality has no label at all")
    start = time.perf_counter()
    metric, n_clusters = hard.metric, hard.n_clusters
    # Checks that every training LLM has a validation label, and gives the fixed hard Psi.
    psi = np.asarray(error_vectors(hard.assign(val_x), val_q, n_clusters=n_clusters, label_mask=val_mask,
                                   alpha=alpha).psi)
    train_p, val_p = prepare_host(train_x, metric), prepare_host(val_x, metric)
    params = initial_map(hard.centroids, train_p, metric, config.init_sharpness)

    k_split, k_train = jax.random.split(key)
    fit_rows, hold_rows = split_heldout(k_split, train_x.shape[0], config.holdout_fraction, "train_embeddings")
    fit_data, hold_data = padded_batches(_MapBatch, (train_p, train_q, train_mask), fit_rows, hold_rows,
                                         config.batch_size)
    aux = _MapAux(jnp.asarray(psi), _MapBatch(jnp.asarray(val_p), jnp.asarray(val_q), jnp.asarray(val_mask)),
                  jnp.asarray(alpha, jnp.float32), jnp.asarray(config.eps, jnp.float32))
    if verbose:
        print(f"[uniroute] learned map: {fit_rows.size} training prompts ({hold_rows.size} held out) x {n_models} "
              f"LLMs, K={n_clusters}, psi_source={psi_source}", file=sys.stderr, flush=True)
    params, history = train(_LOSSES[psi_source], params, k_train, fit_data, fit_rows.size, hold_data, aux,
                            config=config, verbose=verbose, label="learned map")
    info = {**history_info(history, fit_rows.size, hold_rows.size, config, time.perf_counter() - start),
            "n_models": int(n_models)}
    soft = SoftMap(np.asarray(params.theta), np.asarray(params.bias), hard.centroids.copy(), metric, psi_source)
    return soft, info
