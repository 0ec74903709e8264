"""The optax training loop shared by the learned prompt map and the fixed-pool routers.

AdamW with whole epochs jitted as one `lax.scan` over shuffled minibatches, early stopping on a
held-out split, a divergence stop when the loss stops being finite, and shapes padded to a
multiple of the batch size so repeated fits of the same size reuse one compile. Runs are
deterministic: the same key gives the same parameters.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import sys
import time
import warnings
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from uniroute_jax._src import validation


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
    diverged: bool  # True when a loss became NaN or infinite; the last finite parameters were kept


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
    config,
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
      config: the settings (checked by `check_training_settings`): `learning_rate` and
        `weight_decay` (AdamW), `batch_size` (rows per minibatch), `epochs` (at most; 0 returns
        the initial parameters), `patience` (epochs without a held-out improvement of more than
        `min_delta` before stopping).
      verbose: print one line per epoch to stderr.
      label: name used in the progress lines.
    """
    learning_rate, weight_decay, batch_size = config.learning_rate, config.weight_decay, config.batch_size
    epochs, patience, min_delta = config.epochs, config.patience, config.min_delta
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
    stopped = diverged = False
    recent = [(0, params)]  # without a held-out split: fallbacks should the loss become non-finite
    start = time.perf_counter()
    for epoch in range(1, epochs + 1):
        params, opt_state, train_loss = train_epoch(params, opt_state, key, np.int32(epoch), fit_data, row_valid,
                                                    aux, hyper, loss_fn=loss_fn, batch_size=batch_size)
        train_losses.append(float(train_loss))
        heldout = float(eval_loss(params, heldout_data, aux, loss_fn=loss_fn)) if has_heldout else math.nan
        if not math.isfinite(train_losses[-1]) or (has_heldout and not math.isfinite(heldout)):
            # Past a non-finite loss every later step is garbage. With a held-out split the kept
            # parameters had a finite held-out loss; without one, an epoch's mean loss is measured
            # along its steps, so the previous epoch's parameters may already be broken: walk back
            # to the newest ones whose loss on the fitting rows is finite.
            heldout_losses.append(heldout)
            diverged = True
            if not has_heldout:
                for back_epoch, back_params in reversed(recent):
                    if math.isfinite(float(eval_loss(back_params, fit_data, aux, loss_fn=loss_fn))):
                        best_params, best_epoch = back_params, back_epoch
                        break
            warnings.warn(f"{label}: the loss became non-finite at epoch {epoch} (train {train_losses[-1]}, "
                          f"held-out {heldout}); stopped and kept epoch {best_epoch}", RuntimeWarning, stacklevel=2)
            break
        if has_heldout:
            heldout_losses.append(heldout)
            if heldout < best_loss - min_delta:
                best_params, best_loss, best_epoch, waited = params, heldout, epoch, 0
            else:
                waited += 1
        else:
            heldout_losses.append(math.nan)
            best_params, best_epoch = params, epoch
            recent = [recent[0], *recent[1:][-1:], (epoch, params)]  # the initial and the last two
        _log(verbose, f"{label}: epoch {epoch}/{epochs}: train {train_losses[-1]:.5f} "
                      f"held-out {heldout_losses[-1]:.5f} ({time.perf_counter() - start:.2f}s)")
        if has_heldout and waited >= patience:
            stopped = epoch < epochs
            break
    if stopped:
        _log(verbose, f"{label}: stopped at epoch {len(train_losses)}; kept epoch {best_epoch} "
                      f"(held-out {best_loss:.5f})")
    history = TrainHistory(np.asarray(train_losses, np.float64), np.asarray(heldout_losses, np.float64),
                           initial_train, initial_heldout, best_epoch, stopped, diverged)
    return best_params, history


@dataclasses.dataclass(frozen=True)
class TrainingConfig:
    """Optimisation settings every trained router has; each router's config sets its own defaults.

    Attributes:
      learning_rate: AdamW step size (> 0).
      weight_decay: AdamW decoupled decay (>= 0).
      batch_size: prompts per minibatch; also the padding bucket of the compile cache.
      epochs: at most this many epochs (0 keeps the initial parameters).
      patience: epochs without a held-out improvement of more than `min_delta` before stopping.
      min_delta: the held-out improvement, in nats per label, that counts.
      holdout_fraction: share of the fitting prompts (at least one) held out for early stopping,
        in [0, 1); 0 turns early stopping off and trains all `epochs`.
    """

    learning_rate: float = 1e-2
    weight_decay: float = 1e-4
    batch_size: int = 256
    epochs: int = 100
    patience: int = 5
    min_delta: float = 1e-5
    holdout_fraction: float = 0.1

    def __post_init__(self):
        check_training_settings(self)


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


def padded_batches(batch_type, arrays, fit_rows: np.ndarray, hold_rows: np.ndarray, batch_size: int):
    """`(fit_data, heldout_data)` for `train`: `batch_type(*arrays)` over the fitting and held-out rows.

    Fitting rows are padded to a whole number of minibatches, held-out rows to a multiple of
    `HELDOUT_BUCKET` (padding is zeros, i.e. False in the label masks, so it adds no loss);
    `heldout_data` is None when no row is held out.
    """
    def padded(rows, n_rows):
        return batch_type(*(jnp.asarray(pad_to(a[rows], n_rows)) for a in arrays))

    fit_data = padded(fit_rows, pad_rows(fit_rows.size, batch_size))
    hold_data = None if hold_rows.size == 0 else padded(hold_rows, pad_rows(hold_rows.size, HELDOUT_BUCKET))
    return fit_data, hold_data


def _json_float(v: float) -> float | None:
    # JSON has no NaN; `None` marks "no held-out split".
    return None if math.isnan(v) else float(v)


def history_info(history: TrainHistory, n_fit: int, n_heldout: int, config, seconds: float) -> dict:
    """The JSON-ready summary of one training run that routers keep in their `info`."""
    return {
        "seconds": round(seconds, 3),
        "n_fit": int(n_fit),
        "n_heldout": int(n_heldout),
        "epochs_run": int(history.train_loss.size),
        "best_epoch": int(history.best_epoch),
        "stopped_early": bool(history.stopped_early),
        "diverged": bool(history.diverged),
        "initial_train_loss": _json_float(history.initial_train_loss),
        "initial_heldout_loss": _json_float(history.initial_heldout_loss),
        "train_loss": [_json_float(v) for v in history.train_loss],
        "heldout_loss": [_json_float(v) for v in history.heldout_loss],
        "config": dataclasses.asdict(config),
    }
