"""Fixed-pool baselines: routers with one learned output per LLM, and a random router.

A fixed-pool router predicts `P(correct | x, h)` for a fixed list of LLMs; adding an LLM means
retraining. Two architectures, both trained with the binary log-loss on a label mask:

- `kind="mlp"`: prompt embedding -> one hidden ReLU layer (128 units) -> one sigmoid output per
  LLM.
- `kind="mf"` (matrix factorisation, as in RouterBench / EmbedLLM): prompt embedding -> linear
  projection to a `d`-dim latent `z(x)`; each LLM has a learned `d`-dim vector `v_h` and offset
  `b_h`; `P(correct) = sigmoid(<z(x), v_h> + b_h)`.

In the paper's protocol they are run in two ways, which differ only in the data passed to `fit`:

- **clairvoyant** (an upper bound, not a deployable router): fit on the *training* prompts with the
  *test* LLMs' labels, labels that a dynamic-pool router never sees.
- **retrained**: fit on the small validation set only (the labels a new LLM comes with), i.e. what
  a fixed-pool router can do when the pool changes.

Either way `estimates(embeddings) = 1 - P(correct)` is a `[n_prompts, n_models]` table for
`sweeps.sweep` over per-prompt units (`make_units(None, ...)`).

Training reuses the learned map's loop (AdamW, jitted epochs, early stopping on held-out prompts).
Inputs are standardised with the fitting prompts' per-feature mean and spread, so the same step
size suits unit-norm sentence embeddings and raw synthetic features alike. Shapes are padded to a
multiple of the batch size, so repeated fits of the same size (trials) reuse one compile.

    mlp = FixedPoolRouter.fit(train_x, train_quality_of_test_llms, kind="mlp", seed=0)   # clairvoyant
    mf = FixedPoolRouter.fit(val_x, val_quality_of_test_llms, kind="mf", seed=0)         # retrained
    curves = sweeps.sweep(mlp.estimates(test_x), make_units(None, quality=test_quality, costs=c), c, lams)
"""

from __future__ import annotations

import dataclasses
import functools
import time
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.typing import ArrayLike

from uniroute_jax._src import persistence, validation
from uniroute_jax._src.training import (
    TrainingConfig,
    as_key,
    check_quality,
    history_info,
    _log,
    padded_batches,
    split_heldout,
    train,
)

KINDS = ("mlp", "mf")


@dataclasses.dataclass(frozen=True)
class FixedPoolConfig(TrainingConfig):
    """Architecture and training settings of the fixed-pool routers.

    Attributes:
      hidden: 128 ReLU units in the MLP's hidden layer: enough to carve a few hundred input
        dimensions into the handful of regions where LLMs differ, small enough to train in about
        a second on two CPU cores.
      latent_dim: 32, the matrix factorisation's latent size: more than the number of LLMs of most
        pools, so the LLM vectors are not rank-limited, and a small projection to fit.
      learning_rate: 1e-3, Adam's customary step; inputs are standardised, so it suits any
        embedding scale.
      weight_decay: 1e-4 (optax's AdamW default): a light pull toward zero; early stopping is the
        main regulariser.
      batch_size: 128 prompts: about 14 steps per epoch for 2,000 prompts, and 2-3 steps on a
        validation set of a few hundred. Also the padding bucket of the compile cache.
      epochs: at most 200; early stopping usually ends training far sooner.
      patience: 10 epochs without held-out improvement. The held-out loss of a small split is
        noisy from epoch to epoch, so a longer wait than the learned map's avoids stopping on a
        blip.
      min_delta: 1e-5 nats per label, the improvement that counts.
      holdout_fraction: 0.1 of the fitting prompts (at least one) held out for early stopping; 0
        turns early stopping off and trains all `epochs`.
    """

    learning_rate: float = 1e-3
    batch_size: int = 128
    epochs: int = 200
    patience: int = 10
    hidden: int = 128
    latent_dim: int = 32

    def __post_init__(self):
        validation.positive_int(self.hidden, "hidden")
        validation.positive_int(self.latent_dim, "latent_dim")
        super().__post_init__()


class MLPParams(NamedTuple):
    """One-hidden-layer MLP, one logit per LLM."""

    w1: jax.Array  # [dim, hidden]
    b1: jax.Array  # [hidden]
    w2: jax.Array  # [hidden, n_models]
    b2: jax.Array  # [n_models]


class MFParams(NamedTuple):
    """Matrix factorisation: a prompt projection and one latent vector per LLM."""

    proj: jax.Array  # [dim, latent_dim]
    proj_bias: jax.Array  # [latent_dim]
    llm: jax.Array  # [n_models, latent_dim]
    llm_bias: jax.Array  # [n_models]


_PARAMS = {"mlp": MLPParams, "mf": MFParams}


class _Batch(NamedTuple):
    x: jax.Array  # [n, dim] standardised embeddings
    quality: jax.Array  # [n, n_models] in [0, 1], 0 where unlabelled
    mask: jax.Array  # [n, n_models] bool


def _logits_mlp(params: MLPParams, x: jax.Array) -> jax.Array:
    return jax.nn.relu(x @ params.w1 + params.b1) @ params.w2 + params.b2


def _logits_mf(params: MFParams, x: jax.Array) -> jax.Array:
    return (x @ params.proj + params.proj_bias) @ params.llm.T + params.llm_bias


_LOGITS = {"mlp": _logits_mlp, "mf": _logits_mf}


def _masked_bce(logits, batch: _Batch):
    ll = optax.sigmoid_binary_cross_entropy(logits, batch.quality)
    return jnp.sum(jnp.where(batch.mask, ll, 0.0)), jnp.sum(batch.mask.astype(ll.dtype))


def _loss_mlp(params: MLPParams, batch: _Batch, aux):
    del aux
    return _masked_bce(_logits_mlp(params, batch.x), batch)


def _loss_mf(params: MFParams, batch: _Batch, aux):
    del aux
    return _masked_bce(_logits_mf(params, batch.x), batch)


_LOSSES = {"mlp": _loss_mlp, "mf": _loss_mf}


def predict_correct_kernel(params, x: jax.Array, mean: jax.Array, scale: jax.Array, *, kind: str) -> jax.Array:
    """Unchecked `P(correct) [n_prompts, n_models]` from raw embeddings `x [n_prompts, dim]`."""
    return jax.nn.sigmoid(_LOGITS[kind](params, (x - mean) / scale))


_predict_jit = jax.jit(predict_correct_kernel, static_argnames=("kind",))


@functools.partial(jax.jit, static_argnames=("kind", "dim", "n_models", "config"))
def _init_params(key: jax.Array, base_logit: jax.Array, *, kind: str, dim: int, n_models: int,
                 config: FixedPoolConfig):
    # Output offsets start at each LLM's mean log-odds: the initial router is the constant
    # predictor, and training only has to learn the prompt-dependent part.
    k1, k2 = jax.random.split(key)
    b = base_logit.astype(jnp.float32)
    if kind == "mlp":
        h = config.hidden
        return MLPParams(jax.random.normal(k1, (dim, h)) * np.sqrt(2.0 / dim), jnp.zeros(h),
                         jax.random.normal(k2, (h, n_models)) * np.sqrt(1.0 / h), b)
    d = config.latent_dim
    return MFParams(jax.random.normal(k1, (dim, d)) * np.sqrt(1.0 / dim), jnp.zeros(d),
                    jax.random.normal(k2, (n_models, d)) * np.sqrt(1.0 / d), b)


@dataclasses.dataclass(frozen=True, eq=False)
class FixedPoolRouter:
    """A fixed-pool router: `P(correct | x, h)` for a fixed list of LLMs (MLP or matrix factorisation).

    Attributes:
      kind: "mlp" or "mf".
      params: `MLPParams` or `MFParams` (NumPy arrays).
      mean: [dim] per-feature mean of the fitting prompts (input standardisation).
      scale: [dim] per-feature spread of the fitting prompts (input standardisation).
      info: fit diagnostics (losses per epoch, best epoch, seconds, settings).
    """

    kind: str
    params: Any
    mean: np.ndarray
    scale: np.ndarray
    info: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        validation.choice(self.kind, "kind", KINDS)
        cls = _PARAMS[self.kind]
        if not isinstance(self.params, cls):
            raise TypeError(f"params must be {cls.__name__} for kind={self.kind!r}, got {type(self.params).__name__}")
        arrays = cls(*(validation.float_array(v, f"params.{f}") for f, v in zip(cls._fields, self.params)))
        mean = validation.float_array(self.mean, "mean", ndim=1)
        scale = validation.float_array(self.scale, "scale", shape=mean.shape)
        if np.any(scale <= 0):
            raise ValueError("scale must be > 0 everywhere")
        dim_in = arrays[0].shape[0]
        if dim_in != mean.shape[0]:
            raise ValueError(f"params expect dimension {dim_in} but mean has shape {mean.shape}")
        object.__setattr__(self, "params", arrays)
        object.__setattr__(self, "mean", mean)
        object.__setattr__(self, "scale", scale)

    @property
    def dim(self) -> int:
        return self.mean.shape[0]

    @property
    def n_models(self) -> int:
        return self.params[3].shape[0]

    @classmethod
    def fit(
        cls,
        embeddings: ArrayLike,
        quality: ArrayLike,
        *,
        kind: str = "mlp",
        label_mask: ArrayLike | None = None,
        seed: int | jax.Array = 0,
        config: FixedPoolConfig | None = None,
        verbose: bool = False,
    ) -> FixedPoolRouter:
        """Trains a fixed-pool router on labelled prompts.

        Pass the training prompts with the test LLMs' labels for the *clairvoyant* upper bound, or
        the validation prompts for the *retrained* router (see the module docstring).

        Args:
          embeddings: [n_prompts, dim] prompt embeddings.
          quality: [n_prompts, n_models] quality in [0, 1] (1 = correct); NaN where unlabelled.
          kind: "mlp" (default) or "mf".
          label_mask: optional [n_prompts, n_models] bool (default: not NaN).
          seed: int seed or PRNG key (held-out split, initialisation, shuffles); equal seeds give
            identical routers.
          config: `FixedPoolConfig` (default settings if None).
          verbose: one progress line per epoch on stderr.

        Returns:
          A trained `FixedPoolRouter`; `info` holds the per-epoch losses.

        Raises:
          ValueError / TypeError naming the argument (shapes, NaN, quality outside [0, 1], a model
          with no label, a single prompt with a held-out split asked for).

        Example:
          >>> rng = np.random.default_rng(0)
          >>> x, q = rng.normal(size=(60, 4)), rng.integers(0, 2, size=(60, 3)).astype(float)
          >>> cfg = FixedPoolConfig(hidden=8, epochs=2)
          >>> FixedPoolRouter.fit(x, q, kind="mlp", config=cfg).estimates(x[:5]).shape
          (5, 3)
        """
        validation.choice(kind, "kind", KINDS)
        config = FixedPoolConfig() if config is None else config
        if not isinstance(config, FixedPoolConfig):
            raise TypeError(f"config must be a FixedPoolConfig, got {type(config).__name__}")
        key = as_key(seed)
        x = validation.float_array(embeddings, "embeddings", ndim=2)
        n, dim = x.shape
        if n == 0 or dim == 0:
            raise ValueError(f"embeddings must hold at least one prompt and one dimension, got shape {x.shape}")
        q, mask = check_quality(quality, "quality", n, label_mask, "label_mask")
        unlabelled = np.flatnonzero(~mask.any(axis=0))
        if unlabelled.size:
            raise ValueError(f"quality has no label at all for model column(s) {unlabelled.tolist()}")
        n_models = q.shape[1]
        start = time.perf_counter()
        k_split, k_init, k_train = jax.random.split(key, 3)
        fit_rows, hold_rows = split_heldout(k_split, n, config.holdout_fraction, "embeddings")
        mean = x[fit_rows].mean(axis=0)
        spread = x[fit_rows].std(axis=0)
        # A constant feature keeps unit scale instead of dividing by ~0.
        scale = np.where(spread > 1e-6 * max(float(spread.max()), 1e-30), spread, 1.0).astype(np.float32)
        xs = ((x - mean) / scale).astype(np.float32)
        fit_mask = mask[fit_rows]
        rate = (q[fit_rows] * fit_mask).sum(0) / np.maximum(fit_mask.sum(0), 1)
        rate = np.where(fit_mask.sum(0) > 0, rate, 0.5)
        base_logit = np.log(np.clip(rate, 1e-3, 1 - 1e-3)) - np.log1p(-np.clip(rate, 1e-3, 1 - 1e-3))
        params = _init_params(k_init, jnp.asarray(base_logit, jnp.float32), kind=kind, dim=dim, n_models=n_models,
                              config=config)
        fit_data, hold_data = padded_batches(_Batch, (xs, q, mask), fit_rows, hold_rows, config.batch_size)
        _log(verbose, f"fixed-pool {kind}: {fit_rows.size} prompts ({hold_rows.size} held out) x {n_models} LLMs")
        params, history = train(_LOSSES[kind], params, k_train, fit_data, fit_rows.size, hold_data, None,
                                config=config, verbose=verbose, label=f"fixed-pool {kind}")
        info = history_info(history, fit_rows.size, hold_rows.size, config, time.perf_counter() - start)
        params = type(params)(*(np.asarray(p) for p in params))
        return cls(kind, params, mean.astype(np.float32), scale, info)

    def _embeddings(self, embeddings: ArrayLike) -> np.ndarray:
        x = validation.float_array(embeddings, "embeddings", ndim=2)
        if x.shape[1] != self.dim:
            raise ValueError(f"embeddings has shape {x.shape} but the router expects dimension {self.dim}")
        if x.shape[0] == 0:
            raise ValueError("embeddings holds no prompt")
        return x

    def predict_correct(self, embeddings: ArrayLike) -> np.ndarray:
        """Predicted `P(correct)`: `[n_prompts, n_models]` from embeddings `[n_prompts, dim]`."""
        x = self._embeddings(embeddings)
        params = type(self.params)(*(jnp.asarray(p) for p in self.params))
        return np.asarray(_predict_jit(params, jnp.asarray(x), jnp.asarray(self.mean), jnp.asarray(self.scale),
                                       kind=self.kind))

    def estimates(self, embeddings: ArrayLike) -> np.ndarray:
        """Estimated error `1 - P(correct)`: `[n_prompts, n_models]`, for `sweeps.sweep` per prompt."""
        return 1.0 - self.predict_correct(embeddings)

    def log_loss(self, embeddings: ArrayLike, quality: ArrayLike, *, label_mask: ArrayLike | None = None) -> float:
        """Mean binary log-loss (nats per label) of the predictions against `quality [n_prompts, n_models]`."""
        x = self._embeddings(embeddings)
        q, mask = check_quality(quality, "quality", x.shape[0], label_mask, "label_mask", self.n_models)
        if not mask.any():
            raise ValueError("quality has no label at all")
        p = np.clip(self.predict_correct(x).astype(np.float64), 1e-7, 1 - 1e-7)
        ll = q * np.log(p) + (1 - q) * np.log1p(-p)
        return float(-ll[mask].mean())

    def save(self, path) -> Path:
        """Writes the router to a versioned `.npz` file (kind "fixed_pool_router")."""
        arrays = {f"params.{f}": v for f, v in zip(self.params._fields, self.params)}
        arrays.update(mean=self.mean, scale=self.scale)
        return persistence.save_arrays(path, "fixed_pool_router", arrays, {"model": self.kind, "info": self.info})

    @classmethod
    def load(cls, path) -> FixedPoolRouter:
        """Reads a router written by `save`."""
        arrays, meta = persistence.load_arrays(path, "fixed_pool_router")
        try:
            kind = meta["model"]
            validation.choice(kind, "model", KINDS)
            params = _PARAMS[kind](*(arrays[f"params.{f}"] for f in _PARAMS[kind]._fields))
            return cls(kind, params, arrays["mean"], arrays["scale"], meta.get("info", {}))
        except KeyError as err:
            raise ValueError(f"{path} is missing the fixed-pool router field {err}") from None


# ============================================================================ random router


def random_router_estimates(key: jax.Array | int, n_prompts: int, n_models: int) -> jax.Array:
    """A prompt-blind random router, written as error estimates drawn i.i.d. uniform on [0, 1).

    Routing at `lambda` picks `argmin_m U[x, m] + lambda * cost[m]` with fresh uniforms per prompt:
    at `lambda = 0` every prompt goes to a model drawn uniformly from the pool (mean cost and
    quality are the pool's averages); as `lambda` grows the draw tilts toward cheaper models, and
    beyond `1 / (smallest cost gap)` every prompt goes to the cheapest. Its curve is a floor that
    any router using the prompt or the LLMs' accuracy should clear. (The best prompt-blind router
    is the ZeroRouter, `baselines.zero_router_estimates`.)

    Args:
      key: PRNG key or int seed.
      n_prompts: number of prompts (routing units).
      n_models: number of models (`max_models` of the table).

    Returns:
      [n_prompts, n_models] float32 estimates in [0, 1).
    """
    key = as_key(key, "key")
    n_prompts = validation.positive_int(n_prompts, "n_prompts")
    n_models = validation.positive_int(n_models, "n_models")
    return jax.random.uniform(key, (n_prompts, n_models), jnp.float32)
