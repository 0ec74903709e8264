"""Two peer onboarding estimators on cluster tables: HierShrink and difficulty-weighted probes.

Both estimate, for an LLM labelled on only a few validation prompts (the same `selected` prompts for
every new LLM), its error probability on every test prompt, so they can be scored beside the
project's own estimators. `fit_*` runs once per trial; `predict_*` is cheap, jittable and
vmappable over `selected`.

HierShrink (vLLM Semantic Router's published onboarding rule: a two-level m-estimate, coarse 20 /
fine 100 clusters, 24 pseudo-counts per level, shrinking fine -> coarse -> global). Choices where
the description is silent:

- The coarse and fine clusterings are two separate cosine k-means runs on the trial's training
  prompts (not nested); a prompt is shrunk from its own fine cluster toward its own coarse
  cluster. `n_fine` and `n_coarse` are clipped to the number of training prompts.
- The global level is the LLM's own mean validation error, shrunk toward the training LLMs' mean
  validation error with the global pseudo-count:
  `g = (S + m_g * prior) / (n + m_g)`, `c_k = (S_k + m_c * g) / (n_k + m_c)`,
  `f_j = (S_j + m_f * c_k) / (n_j + m_f)`, where `S`, `n` are error sums and label counts.
- `tuned=True`: pseudo-counts per level and per budget from a log-spaced grid, chosen by leaving
  each training LLM out, giving it `b` labels on random validation prompts, and minimising the
  Brier score of its estimates against its training-prompt labels (summed over training LLMs).
- At predict time the budget row is the one nearest `selected.sum()` (ties: the smaller budget).

Difficulty-weighted probes. A validation prompt's difficulty `d_i` is the training LLMs' mean
error on it. A new LLM's offset on the logit scale is a one-step Rasch estimate: residuals
`e_i - d_i` weighted by the informativeness `w_i = d_i (1 - d_i)` (the logit-scale residual
`(e_i - d_i) / w_i` weighted by `w_i`). Overall offset `t0 = sum(e - d) / (sum(w) + s0)` (shrunk
toward 0, the training LLMs' mean); per cluster `t_k = (sum_k(e - d) + s t0) / (sum_k w + s)`.
Estimate on a test prompt of cluster `k`: `sigmoid(logit(base_k) + t_k)`, with `base_k` the training
LLMs' mean error on the training prompts of cluster `k` (the overall mean when it has none;
clipped to [0.01, 0.99]). `(s0, s)` per budget from a grid, tuned as for HierShrink.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

from uniroute_jax._src.kmeans import assign_kernel, kmeans_kernel

PSEUDO_COUNT = 24.0
GRID = tuple(float(v) for v in jnp.geomspace(0.5, 200.0, 7))
_CLIP = 0.01


class HierShrinkParams(NamedTuple):
    coarse: jax.Array  # [n_coarse, dim] unit centroids
    fine: jax.Array  # [n_fine, dim] unit centroids
    budgets: jax.Array  # [n_budgets] int32
    m: jax.Array  # [n_budgets, 3] pseudo-counts (fine, coarse, global)
    prior: jax.Array  # [] training LLMs' mean validation error


class DifficultyParams(NamedTuple):
    budgets: jax.Array  # [n_budgets] int32
    s: jax.Array  # [n_budgets, 2] strengths (overall s0, cluster s)
    difficulty: jax.Array  # [n_val] training LLMs' mean error per validation prompt
    base: jax.Array  # [n_clusters] training LLMs' mean error per cluster (train prompts)
    centroids: jax.Array  # [n_clusters, dim] the trial's UniRoute centroids


def _row(budgets, n):
    """Index of the budget nearest `n` (first, i.e. smaller, on ties)."""
    return jnp.argmin(jnp.abs(budgets - n))


def _seen_mean(values, mask, seen):
    """Mean over seen models' labelled entries per row; [n_rows]."""
    w = (mask & seen[None, :]).astype(jnp.float32)
    return jnp.sum(values * w, 1) / jnp.maximum(jnp.sum(w, 1), 1.0)


def _sums(onehot, err, mask):
    """Per-cluster error sums and counts: onehot [n, K], err/mask [n, M] -> [K, M] each."""
    w = mask.astype(jnp.float32)
    return onehot.T @ (err * w), onehot.T @ w


def _hier(m, prior, err_v, mask_v, fv, cv, ft, ct, n_fine, n_coarse):
    """HierShrink estimates [n_out, M] from val labels; fv/cv/ft/ct cluster labels; m (fine, coarse, global)."""
    w = mask_v.astype(jnp.float32)
    g = (jnp.sum(err_v * w, 0) + m[2] * prior) / (jnp.sum(w, 0) + m[2])
    sc, nc = _sums(jax.nn.one_hot(cv, n_coarse), err_v, mask_v)
    c = (sc + m[1] * g[None]) / (nc + m[1])
    sf, nf = _sums(jax.nn.one_hot(fv, n_fine), err_v, mask_v)
    c_out = c[ct]
    return (sf[ft] + m[0] * c_out) / (nf[ft] + m[0])


def _simulate_masks(key, budgets, n_val, n_models):
    """[n_budgets, n_val, n_models] masks of `b` random validation prompts per model."""
    ranks = jnp.argsort(jax.random.uniform(key, (n_models, n_val)), axis=1).argsort(axis=1).T
    return ranks[None] < jnp.minimum(budgets, n_val)[:, None, None]


def _loo_prior(val_err, val_mask, seen):
    """Per model: mean validation error of the other seen models (their overall means, averaged)."""
    w = val_mask.astype(jnp.float32)
    own = jnp.sum(val_err * w, 0) / jnp.maximum(jnp.sum(w, 0), 1.0)
    s = seen.astype(jnp.float32)
    tot, cnt = jnp.sum(own * s), jnp.sum(s)
    return (tot - own * s) / jnp.maximum(cnt - s, 1.0)


def _brier(pred, err, mask, seen):
    w = (mask & seen[None, :]).astype(jnp.float32)
    return jnp.sum((pred - err) ** 2 * w)


@functools.partial(jax.jit, static_argnames=("tuned", "n_coarse", "n_fine"))
def fit_hiershrink(key, emb, quality, label_mask, train, val, seen, centroids, budgets, *, tuned: bool,
                   n_coarse: int = 20, n_fine: int = 100) -> HierShrinkParams:
    """Fit HierShrink's two clusterings and pseudo-counts (see the module docstring).

    Args:
      key: PRNG key. emb: [n_prompts, dim]. quality, label_mask: [n_prompts, n_models].
      train, val: int32 prompt indices. seen: [n_models] bool. centroids: unused (HierShrink has its
      own clusterings; kept for a common signature). budgets: [n_budgets] int32.
      tuned: choose pseudo-counts per level and budget on the training LLMs; else 24 everywhere.
    Returns:
      `HierShrinkParams`.
    """
    del centroids
    n_train = train.shape[0]
    n_coarse, n_fine = min(n_coarse, n_train), min(n_fine, n_train)
    k_c, k_f, k_s = jax.random.split(key, 3)
    x = emb[train]
    ones, tol = jnp.ones((n_train,), jnp.float32), jnp.float32(1e-6)
    coarse = kmeans_kernel(k_c, x, ones, tol, n_clusters=n_coarse, n_init=1, max_iter=50, metric="cosine").centroids
    fine = kmeans_kernel(k_f, x, ones, tol, n_clusters=n_fine, n_init=1, max_iter=50, metric="cosine").centroids
    err = 1.0 - quality
    val_err, val_mask = err[val], label_mask[val]
    vw = (val_mask & seen[None, :]).astype(jnp.float32)
    own = jnp.sum(val_err * vw, 0) / jnp.maximum(jnp.sum(vw, 0), 1.0)
    prior = jnp.sum(own * seen) / jnp.maximum(jnp.sum(seen), 1)
    budgets = jnp.asarray(budgets, jnp.int32)
    if not tuned:
        m = jnp.full((budgets.shape[0], 3), PSEUDO_COUNT, jnp.float32)
        return HierShrinkParams(coarse, fine, budgets, m, prior)
    fv, cv = assign_kernel(emb[val], fine, metric="cosine"), assign_kernel(emb[val], coarse, metric="cosine")
    ft, ct = assign_kernel(x, fine, metric="cosine"), assign_kernel(x, coarse, metric="cosine")
    masks = _simulate_masks(k_s, budgets, val.shape[0], quality.shape[1]) & val_mask[None]
    loo = _loo_prior(val_err, val_mask, seen)
    grid = jnp.asarray(GRID, jnp.float32)
    combos = jnp.stack(jnp.meshgrid(grid, grid, grid, indexing="ij"), -1).reshape(-1, 3)

    def loss(m, mask_v):
        pred = _hier(m, loo, val_err, mask_v, fv, cv, ft, ct, n_fine, n_coarse)
        return _brier(pred, err[train], label_mask[train], seen)

    losses = jax.lax.map(lambda mask_v: jax.vmap(loss, (0, None))(combos, mask_v), masks)  # [n_budgets, n_combos]
    return HierShrinkParams(coarse, fine, budgets, combos[jnp.argmin(losses, 1)], prior)


def _new_mask(label_mask_v, seen, selected):
    return label_mask_v & (seen[None, :] | selected[:, None])


@jax.jit
def predict_hiershrink(params: HierShrinkParams, emb, quality, label_mask, val, test, seen, selected) -> jax.Array:
    """HierShrink error estimates [n_test, n_models]; new LLMs use only the `selected` validation labels."""
    mask_v = _new_mask(label_mask[val], seen, selected)
    m = params.m[_row(params.budgets, jnp.sum(selected))]
    fv = assign_kernel(emb[val], params.fine, metric="cosine")
    cv = assign_kernel(emb[val], params.coarse, metric="cosine")
    ft = assign_kernel(emb[test], params.fine, metric="cosine")
    ct = assign_kernel(emb[test], params.coarse, metric="cosine")
    return _hier(m, params.prior, 1.0 - quality[val], mask_v, fv, cv, ft, ct,
                 params.fine.shape[0], params.coarse.shape[0])


def _logit(p):
    p = jnp.clip(p, _CLIP, 1.0 - _CLIP)
    return jnp.log(p) - jnp.log1p(-p)


def _difficulty_pred(s, d, base, err_v, mask_v, kv, kt, n_clusters):
    """Estimates [n_out, M]; d [n_val, M] per-model difficulty, base [K, M] per-model cluster base."""
    w = mask_v.astype(jnp.float32)
    r, info = (err_v - d) * w, d * (1.0 - d) * w
    t0 = jnp.sum(r, 0) / (jnp.sum(info, 0) + s[0])
    oh = jax.nn.one_hot(kv, n_clusters)
    tk = (oh.T @ r + s[1] * t0[None]) / (oh.T @ info + s[1])
    return jax.nn.sigmoid(_logit(base)[kt] + tk[kt])


@jax.jit
def fit_difficulty(key, emb, quality, label_mask, train, val, seen, centroids, budgets) -> DifficultyParams:
    """Fit difficulty-weighted probes: difficulties, cluster bases and strengths (module docstring)."""
    n_clusters = centroids.shape[0]
    err = 1.0 - quality
    sf = seen.astype(jnp.float32)
    kv = assign_kernel(emb[val], centroids, metric="cosine")
    kt_train = assign_kernel(emb[train], centroids, metric="cosine")

    def stats(e, msk):
        w = msk.astype(jnp.float32) * sf[None]
        return e * w, w  # per-entry error and count of seen models

    ev, wv = stats(err[val], label_mask[val])
    et, wt = stats(err[train], label_mask[train])
    overall = jnp.sum(et) / jnp.maximum(jnp.sum(wt), 1.0)
    difficulty = jnp.where(jnp.sum(wv, 1) > 0, jnp.sum(ev, 1) / jnp.maximum(jnp.sum(wv, 1), 1.0), overall)
    oh_t = jax.nn.one_hot(kt_train, n_clusters)
    cs, cn = oh_t.T @ jnp.sum(et, 1), oh_t.T @ jnp.sum(wt, 1)
    base = jnp.where(cn > 0, cs / jnp.maximum(cn, 1.0), overall)
    budgets = jnp.asarray(budgets, jnp.int32)
    # Leave-one-out difficulty and base per model: subtract the model's own contribution.
    d_loo = jnp.where(jnp.sum(wv, 1, keepdims=True) - wv > 0,
                      (jnp.sum(ev, 1, keepdims=True) - ev) / jnp.maximum(jnp.sum(wv, 1, keepdims=True) - wv, 1.0),
                      overall)
    cs_m, cn_m = oh_t.T @ et, oh_t.T @ wt
    b_loo = jnp.where(cn[:, None] - cn_m > 0, (cs[:, None] - cs_m) / jnp.maximum(cn[:, None] - cn_m, 1.0), overall)
    masks = _simulate_masks(key, budgets, val.shape[0], quality.shape[1]) & label_mask[val][None]
    grid = jnp.asarray(GRID, jnp.float32)
    combos = jnp.stack(jnp.meshgrid(grid, grid, indexing="ij"), -1).reshape(-1, 2)
    d_c = jnp.clip(d_loo, _CLIP, 1.0 - _CLIP)

    def loss(s, mask_v):
        pred = _difficulty_pred(s, d_c, b_loo, err[val], mask_v, kv, kt_train, n_clusters)
        return _brier(pred, err[train], label_mask[train], seen)

    losses = jax.lax.map(lambda mask_v: jax.vmap(loss, (0, None))(combos, mask_v), masks)
    return DifficultyParams(budgets, combos[jnp.argmin(losses, 1)], difficulty, base, centroids)


@jax.jit
def predict_difficulty(params: DifficultyParams, emb, quality, label_mask, val, test, seen, selected) -> jax.Array:
    """Difficulty-weighted probe estimates [n_test, n_models] (seen columns: same rule, all their labels)."""
    n_clusters = params.centroids.shape[0]
    mask_v = _new_mask(label_mask[val], seen, selected)
    s = params.s[_row(params.budgets, jnp.sum(selected))]
    kv = assign_kernel(emb[val], params.centroids, metric="cosine")
    kt = assign_kernel(emb[test], params.centroids, metric="cosine")
    d = jnp.clip(params.difficulty, _CLIP, 1.0 - _CLIP)[:, None]
    return _difficulty_pred(s, d, params.base[:, None], 1.0 - quality[val], mask_v, kv, kt, n_clusters)
