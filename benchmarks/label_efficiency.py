"""Label efficiency: how well are unseen LLMs routed from n labelled prompts each, by us and by the peers?

`python benchmarks/label_efficiency.py [--trials N] [--trials-routerdc N] [--datasets a,b]`

The paper's protocol (`uniroute_jax.evaluate`: random 60/10/30 prompt splits, 1/3 of the LLMs
unseen, K chosen per trial with the training LLMs), except that each unseen LLM is labelled on only
`n` of the validation prompts, for n in {1, 5, 10, 20, 30, 50, 100, 200, all}. The prompts are
chosen by a selection strategy (random, stratified, informative; the same prompts for every unseen
LLM of a trial) and the unseen LLMs' error vectors by each estimator (mean, shrinkage,
hierarchical, prior), fitted on the training LLMs' validation counts (the prior's low-rank factors
also on their training-prompt labels, which the protocol gives the supervised routers). Each
estimator has its own K per trial, the one `evaluate(estimator=...)` picks; the prompts are chosen
on the default estimator's clusters, and every estimator, peer, ZeroRouter and K-NN get the same
labels. The peers (`uniroute_jax._src.peers`: HierShrink with its published and with tuned
pseudo-counts, difficulty-weighted probes, a tuned k-NN over the labelled prompts, an item-response
model) are fitted per trial on what `peer_view` lets them read: the training LLMs' labels on the
training and validation prompts, the unseen LLMs' on the selected validation prompts only. Scores
are test Area and QNC over the unseen LLMs; K-NN's k and the training LLMs' labels are as in
`evaluate`. Beside them, the unseen pool's best single LLM each budget affords and the random mix of
its cheapest and most accurate LLMs, which need no labels (`--rereference` recomputes these two for
saved results, `--rescore PEER` with it a peer's column on the same trials and labels, and both
rewrite the tables and plots).

Writes under `--out` (default benchmarks/results/label_efficiency/): `<dataset>.md` (tables: mean
Area, the default against every method paired with 95% bootstrap intervals, the labels each
method needs for 80% of plain means' all-label gain over ZeroRouter, QNC, shares of that gain),
`<dataset>.png` (Area against labels and the paired differences, 95% bands), `<dataset>.npz`
(every trial's Area and QNC) and `summary.json`. Progress is printed per tenth of the trials;
Ctrl-C keeps the datasets finished.
"""

from __future__ import annotations

import argparse
import functools
import json
import platform
import re
import shlex
import sys
import time
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from uniroute_jax._src import evaluation as ev
from uniroute_jax._src import metrics, plots
from uniroute_jax._src.estimators import METHODS as ESTIMATORS
from uniroute_jax._src.estimators import default_n_groups, estimate_kernel, fit_kernel
from uniroute_jax._src.kmeans import assign_kernel
from uniroute_jax._src.peers import PEERS, peer, peer_view
from uniroute_jax._src.selection import STRATEGIES, selection_kernel
from uniroute_jax._src.persistence import write_atomic
from uniroute_jax._src.sharding import trial_mesh, trial_vmap

sys.path.insert(0, str(Path(__file__).parent))
from common import write_text  # noqa: E402

DATASETS = ("alpacaeval", "routerbench_partial", "routerdc_7llm", "synthetic")
BUDGETS = (1, 5, 10, 20, 30, 50, 100, 200)
BASELINES = ("ZeroRouter", "K-NN")
COLUMNS = ESTIMATORS + PEERS + BASELINES  # the method axis of the score arrays
METRICS = ("area", "qnc")  # the last axis of the score arrays
REFERENCES = ("best single LLM at each budget", "random mix")  # Areas that need no labels, drawn on the same axes
COLOURS = {"mean": "#1f77b4", "shrinkage": "#9467bd", "hierarchical": "#2ca02c", "prior": "#d62728",
           "HierShrink": "#8c564b", "HierShrink (tuned)": "#e377c2", "difficulty-weighted": "#bcbd22",
           "k-NN (tuned)": "#17becf", "IRT": "#393b79", "ZeroRouter": "#7f7f7f", "K-NN": "#ff7f0e"}


def _log(msg: str) -> None:
    print(f"[label_efficiency] {msg}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------- one trial


def _counts(labels, errors, mask, n_clusters):
    """`[n_models, K]` label counts and error sums of hard-assigned prompts."""
    onehot = jax.nn.one_hot(labels, n_clusters, dtype=errors.dtype)
    m = mask.astype(errors.dtype)
    return (onehot.T @ m).T, (onehot.T @ (errors * m)).T


@functools.partial(jax.jit, static_argnames=("n_clusters", "n_groups", "n_max", "use_train", "select"))
def _prepare(key, centroids, emb, quality, label_mask, costs, train, val, seen, budgets, *, n_clusters, n_groups,
             n_max, use_train=False, select=True):
    """Cluster labels, the estimators fitted on the training LLMs and (when `select`) the selections
    of every strategy x budget, `[n_strategies, n_budgets, n_val]` (else None)."""
    assign = lambda idx: assign_kernel(emb[idx], centroids, metric="cosine")
    lab_tr, lab_va = assign(train), assign(val)
    masses = jnp.bincount(lab_tr, length=n_clusters).astype(jnp.float32) / train.shape[0]
    errors = 1.0 - quality[val]
    counts, sums = _counts(lab_va, errors, label_mask[val], n_clusters)
    k_fit, k_sel = jax.random.split(key)
    if use_train:
        # The training LLMs' labels on the training prompts are part of the protocol's data (the
        # supervised routers learn from them): six times the validation labels for the population fit.
        c_tr, s_tr = _counts(lab_tr, 1.0 - quality[train], label_mask[train], n_clusters)
        params = fit_kernel(k_fit, counts, sums, seen, centroids, masses, jnp.asarray(1.0), c_tr, s_tr,
                            n_groups=n_groups)
    else:
        params = fit_kernel(k_fit, counts, sums, seen, centroids, masses, jnp.asarray(1.0), n_groups=n_groups)
    if not select:
        return params, None
    # The represented LLMs' error vectors, the decisions a new LLM can flip (informative selection).
    ref_psi = estimate_kernel(params, counts, sums, method="shrinkage").psi
    valid = jnp.ones(val.shape[0], bool)
    # One key for every budget: the selections are nested, so curves over n differ by labels, not luck.
    keys = jnp.broadcast_to(k_sel, budgets.shape)
    masks = []
    for strategy in STRATEGIES:
        sel = functools.partial(selection_kernel, strategy=strategy, n_max=n_max)
        masks.append(jax.vmap(lambda k, n: sel(k, lab_va, valid, n, masses, params, ref_psi, seen))(keys, budgets))
    return params, jnp.stack(masks)


@functools.partial(jax.jit, static_argnames=("n_clusters",))
def _score_clusters(params, selected, centroids, emb, quality, label_mask, prompt_costs, costs, val, test, unseen, *,
                    n_clusters):
    """Test Area and QNC (`[n_estimators + 1, 2]`) of every estimator and of ZeroRouter, given
    labels on `selected [n_val]` for the unseen LLMs (the training LLMs keep all theirs; they are
    not scored)."""
    lab_va = assign_kernel(emb[val], centroids, metric="cosine")
    lab_te = assign_kernel(emb[test], centroids, metric="cosine")
    mask = label_mask[val] & (selected[:, None] | ~unseen[None, :])
    errors = 1.0 - quality[val]
    counts, sums = _counts(lab_va, errors, mask, n_clusters)
    te_units = ev._cluster_units(lab_te, quality[test], prompt_costs[test], n_clusters)
    model_cost, model_quality = prompt_costs[test].mean(0), quality[test].mean(0)
    score = lambda est, units: _area_qnc(ev._metrics_of(est, units, costs, unseen, model_cost, model_quality))
    out = [score(estimate_kernel(params, counts, sums, method=m).psi.T, te_units) for m in ESTIMATORS]
    overall = sums.sum(1) / jnp.maximum(counts.sum(1), 1.0)
    zero_units = ev._cluster_units(jnp.zeros_like(lab_te), quality[test], prompt_costs[test], 1)
    out.append(score(overall[None], zero_units))
    return jnp.stack(out)


def _area_qnc(m) -> jax.Array:
    """`[2]`: the Area and QNC of a `CurveMetrics`, in `METRICS` order."""
    return jnp.stack([m.area, m.qnc])


@functools.partial(jax.jit, static_argnames=("k_max",))
def _neighbours(emb, val, test, *, k_max):
    """The `k_max` nearest validation prompts of every test prompt (cosine), `[n_test, k_max]`."""
    unit = lambda x: x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-12)
    return jax.lax.top_k(unit(emb[test]) @ unit(emb[val]).T, k_max)[1]


def _score_knn(neighbours, k, selected, quality, label_mask, prompt_costs, costs, val, test, unseen):
    """Test Area and QNC `[2]` of K-NN (the library's rule, k fixed per trial) with the same labels."""
    mask = (label_mask[val] & (selected[:, None] | ~unseen[None, :])).astype(quality.dtype)
    errors = (1.0 - quality[val]) * mask
    use = (jnp.arange(neighbours.shape[1]) < k).astype(quality.dtype)[None, :, None]
    err = jnp.sum(errors[neighbours] * use, 1)
    cnt = jnp.sum(mask[neighbours] * use, 1)
    overall = errors.sum(0) / jnp.maximum(mask.sum(0), 1.0)
    est = jnp.where(cnt > 0, err / jnp.maximum(cnt, 1.0), overall[None, :])
    units = ev._prompt_units(quality[test], prompt_costs[test])
    return _area_qnc(ev._metrics_of(est, units, costs, unseen, prompt_costs[test].mean(0), quality[test].mean(0)))


@jax.jit
def _score_knn_all(neighbours, k, selections, quality, label_mask, prompt_costs, costs, val, test, unseen):
    """`_score_knn` for every selection `[n_sel, n_val]`, one at a time (bounded memory)."""
    return jax.lax.map(lambda s: _score_knn(neighbours, k, s, quality, label_mask, prompt_costs, costs, val, test,
                                            unseen), selections)


@functools.partial(jax.jit, static_argnames=("n_clusters",))
def _score_clusters_all(params, selections, centroids, emb, quality, label_mask, prompt_costs, costs, val, test,
                        unseen, *, n_clusters):
    """`_score_clusters` for every selection `[n_sel, n_val]`: `[n_sel, n_estimators + 1, 2]`."""
    return jax.vmap(lambda s: _score_clusters(params, s, centroids, emb, quality, label_mask, prompt_costs, costs,
                                              val, test, unseen, n_clusters=n_clusters))(selections)


def reference_areas(quality, prompt_costs, test, unseen) -> np.ndarray:
    """`[2]` test Areas of the unseen pool that need no labels, on the routers' axes: the best single
    LLM each budget affords (at normalised cost u, the most accurate LLM costing at most u, and below
    the cheapest LLM the cheapest, as every curve is extended) and the random mix of the cheapest
    and most accurate LLMs (their chord)."""
    cost = np.asarray(prompt_costs[test].mean(0), np.float64)
    acc = np.asarray(quality[test].mean(0), np.float64)
    pool = np.asarray(unseen)
    ref = metrics.pool_reference(cost, acc, pool)
    norm = float(ref.cost_norm)
    h = np.flatnonzero(pool)
    h = h[np.lexsort((-acc[h], cost[h]))]  # by cost, the more accurate first on ties
    edges = np.append(np.minimum(cost[h] / norm, 1.0), 1.0)
    best = np.maximum.accumulate(acc[h])  # affordable from edges[i] to edges[i + 1]
    single = float(acc[h[0]] * edges[0] + (best * np.diff(edges)).sum())
    w = np.linspace(0.0, 1.0, 65)
    chord_cost = float(ref.weak_cost) + w * (float(ref.strong_cost) - float(ref.weak_cost))
    chord_acc = float(ref.weak_quality) + w * (float(ref.strong_quality) - float(ref.weak_quality))
    mix = float(metrics.curve_metrics(chord_cost, chord_acc, np.ones(w.size, bool), ref).area)
    return np.asarray([single, mix], np.float32)


@functools.lru_cache(maxsize=None)
def _peer_fns(name: str):
    """A peer's jitted fit, and its test Area and QNC for every selection `[n_sel, n_val]`:
    `[n_sel, 2]` (one selection at a time: bounded memory)."""
    p = peer(name)

    @jax.jit
    def score(params, selections, emb, view_q, view_mask, quality, prompt_costs, costs, val, test, seen, unseen):
        units = ev._prompt_units(quality[test], prompt_costs[test])
        model_cost, model_quality = prompt_costs[test].mean(0), quality[test].mean(0)

        def one(selected):
            est = p.predict(params, emb, view_q, view_mask, val, test, seen, selected)
            return _area_qnc(ev._metrics_of(est, units, costs, unseen, model_cost, model_quality))

        return jax.lax.map(one, selections)

    return jax.jit(p.fit), score


# --------------------------------------------------------------------------------- dataset


def _dataset(name: str):
    if name == "synthetic":
        return ev.synthetic_dataset(0)
    from uniroute_jax._src.data import load_shared
    from uniroute_jax._src.embedding import TextEmbedder

    ds = load_shared(name)
    return ds.with_embeddings(TextEmbedder()(list(ds.texts)))


class Setup(NamedTuple):
    """One dataset under the study's protocol: its splits, arrays and per-trial keys."""
    ds: object
    cfg: ev.ProtocolConfig
    splits: dict  # field of `ev.Splits` -> array [trials, ...]
    budgets: np.ndarray  # [n_budgets] int32, the last one every validation prompt
    k_grid: tuple
    knn_grid: tuple
    emb: jax.Array
    common: tuple  # (quality, label_mask, prompt_costs, costs)
    alpha: jax.Array
    keys: jax.Array  # [trials]
    mesh: object
    batch: int  # trials per vmapped chunk


def setup(name: str, trials: int) -> Setup:
    ds = _dataset(name)
    cfg = ev.ProtocolConfig(n_trials=trials, seed=0)
    splits = ev.make_splits(ds.n_prompts, ds.n_models, cfg)
    n_tr, n_va = splits.train.shape[1], splits.val.shape[1]
    emb = jnp.asarray(ds.embeddings, jnp.float32)
    batch = max(1, min(trials, 32, (256 << 20) // max(1, 4 * n_tr * emb.shape[1])))
    return Setup(
        ds=ds, cfg=cfg, splits={f: jnp.asarray(getattr(splits, f)) for f in splits._fields},
        budgets=np.asarray([b for b in BUDGETS if b < n_va] + [n_va], np.int32),
        k_grid=tuple(k for k in cfg.k_grid if k <= n_tr), knn_grid=tuple(k for k in cfg.knn_grid if k <= n_va),
        emb=emb,
        common=(jnp.asarray(ev._filled_quality(ds)), jnp.asarray(ds.label_mask),
                jnp.asarray(ds.prompt_costs, jnp.float32), jnp.asarray(ds.model_costs, jnp.float32)),
        alpha=jnp.asarray(cfg.alpha, jnp.float32), keys=jax.random.split(jax.random.key(cfg.seed), trials),
        mesh=trial_mesh(), batch=-(-trials // -(-trials // batch)))


def kmeans_centroids(su: Setup, n_clusters: int):
    """`evaluate`'s k-means trial at `n_clusters` over every trial, in the study's chunks: its
    shrinkage selection score `[trials]`, metrics and centroids `[trials, K, dim]`."""
    sp, trials = su.splits, su.keys.shape[0]
    fn = ev._trial_fn("kmeans", su.mesh, n_clusters=n_clusters, n_init=su.cfg.n_init, metric=su.cfg.metric)
    for chunk in ev._chunks(trials, su.batch):
        s, m, _, c = fn(su.keys[chunk], su.emb, *su.common, sp["train"][chunk], sp["val"][chunk], sp["test"][chunk],
                        sp["seen"][chunk], sp["unseen"][chunk], su.alpha)
        yield chunk, s, m, c


def prepare_trial(su: Setup, t: int, centroids: jax.Array, *, select: bool):
    """`_prepare` for trial `t` on given centroids, as the study calls it."""
    sp, K = su.splits, centroids.shape[0]
    quality, label_mask, _, costs = su.common
    return _prepare(jax.random.fold_in(su.keys[t], 1), centroids, su.emb, quality, label_mask, costs, sp["train"][t],
                    sp["val"][t], sp["seen"][t], jnp.asarray(su.budgets), n_clusters=K, n_groups=default_n_groups(K),
                    n_max=int(su.budgets.max()), use_train=True, select=select)


def run(name: str, trials: int, default: str) -> dict:
    t0 = time.perf_counter()
    su = setup(name, trials)
    t_load = time.perf_counter() - t0
    ds, cfg, sp, budgets, k_grid, ks = su.ds, su.cfg, su.splits, su.budgets, su.k_grid, su.knn_grid
    emb, common, alpha, keys, mesh, batch = su.emb, su.common, su.alpha, su.keys, su.mesh, su.batch
    quality, label_mask, prompt_costs, costs = common
    n_tr, n_va = sp["train"].shape[1], sp["val"].shape[1]
    _log(f"{name}: {trials} trials, {n_tr}/{n_va}/{sp['test'].shape[1]} prompts, {int(sp['unseen'][0].sum())} "
         f"unseen of {ds.n_models} LLMs, budgets {budgets.tolist()}")

    # K per estimator exactly as `evaluate(estimator=...)` chooses it (same keys, splits, kernels and
    # centroids: the k-means key does not depend on the estimator), and K-NN's k as `evaluate` does.
    t1 = time.perf_counter()
    rank = max(1, min(2, int(sp["seen"][0].sum()) - 1))
    scores_at = lambda k: trial_vmap(functools.partial(ev._selection_scores, n_clusters=k, estimators=ESTIMATORS,
                                                       metric=cfg.metric, rank=rank),
                                     in_axes=(0, 0, None, None, None, None, None, 0, 0, 0, None), mesh=mesh)
    sel, cents, full_area = [], [], []
    for k in k_grid:
        scores = scores_at(k)
        s_k, c_k, a_k = [], [], []
        for chunk, s, m, c in kmeans_centroids(su, k):
            s_e = scores(keys[chunk], c, emb, *common, sp["train"][chunk], sp["val"][chunk], sp["seen"][chunk], alpha)
            np.testing.assert_allclose(np.asarray(s_e)[:, ESTIMATORS.index("shrinkage")], np.asarray(s), atol=1e-6)
            s_k.append(np.asarray(s_e))
            c_k.append(np.asarray(c))
            a_k.append(np.asarray(m.area))
        sel.append(np.concatenate(s_k))  # [trials, n_estimators]
        cents.append(np.concatenate(c_k))
        full_area.append(np.concatenate(a_k))
        _log(f"{name}: k-means K={k} ({time.perf_counter() - t1:.0f}s)")
    best = np.argmax(np.stack(sel), 0)  # [trials, n_estimators]
    chosen_k = np.asarray(k_grid)[best]
    best_shrink = best[:, ESTIMATORS.index("shrinkage")]
    kmeans_area = np.stack(full_area)[best_shrink, np.arange(trials)]  # `evaluate`'s UniRoute (K-Means) Area
    fn = ev._trial_fn("knn", mesh, k_max=max(ks), metric=cfg.metric)
    chosen_knn, knn_full = [], []
    for chunk in ev._chunks(trials, batch):
        kb, m, _ = fn(emb, *common, sp["train"][chunk], sp["val"][chunk], sp["test"][chunk], sp["seen"][chunk],
                      sp["unseen"][chunk], jnp.asarray(ks))
        chosen_knn.append(np.asarray(kb))
        knn_full.append(np.asarray(m.area))
    chosen_knn, knn_full = np.concatenate(chosen_knn), np.concatenate(knn_full)
    t_choose = time.perf_counter() - t1

    # Every strategy x budget x estimator on every trial. The prompts to label are chosen on the
    # default estimator's clusters (the router a user would deploy), and every estimator and
    # baseline gets those labels; each estimator is then scored with its own K.
    t2 = time.perf_counter()
    scores = np.zeros((trials, len(STRATEGIES), len(budgets), len(COLUMNS), len(METRICS)), np.float32)
    references = np.zeros((trials, len(REFERENCES)), np.float32)
    budgets_j = jnp.asarray(budgets)
    n_sb = len(STRATEGIES) * len(budgets)
    d = ESTIMATORS.index(default)
    for t in range(trials):
        home = best[t, d]
        for i in [home] + sorted(set(best[t].tolist()) - {home}):  # the default's K first: it picks the prompts
            K, c = k_grid[i], jnp.asarray(cents[i][t])
            params, masks = prepare_trial(su, t, c, select=i == home)
            if i == home:
                flat = masks.reshape(n_sb, -1)
            a = np.asarray(_score_clusters_all(params, flat, c, emb, *common, sp["val"][t], sp["test"][t],
                                               sp["unseen"][t], n_clusters=K)).reshape(len(STRATEGIES), len(budgets),
                                                                                       -1, len(METRICS))
            for e in np.flatnonzero(best[t] == i):
                scores[t, ..., e, :] = a[..., e, :]
            if i == home:  # the baselines and peers need no K of ours: scored once, on the same labels
                scores[t, ..., COLUMNS.index("ZeroRouter"), :] = a[..., -1, :]
                nb = _neighbours(emb, sp["val"][t], sp["test"][t], k_max=max(ks))
                knn = _score_knn_all(nb, chosen_knn[t], flat, *common, sp["val"][t], sp["test"][t], sp["unseen"][t])
                scores[t, ..., COLUMNS.index("K-NN"), :] = np.asarray(knn).reshape(len(STRATEGIES), len(budgets), -1)
                # Peers fit on the training LLMs, on the default's clusters where they use ours.
                view = peer_view(quality, label_mask, sp["train"][t], sp["val"][t], sp["unseen"][t])
                for peer_name in PEERS:
                    fit, score = _peer_fns(peer_name)
                    p_params = fit(jax.random.fold_in(keys[t], 2), emb, *view, sp["train"][t], sp["val"][t],
                                   sp["seen"][t], c, budgets_j)
                    res = score(p_params, flat, emb, *view, quality, prompt_costs, costs, sp["val"][t],
                                sp["test"][t], sp["seen"][t], sp["unseen"][t])
                    scores[t, ..., COLUMNS.index(peer_name), :] = np.asarray(res).reshape(len(STRATEGIES), len(budgets), -1)
                references[t] = reference_areas(quality, prompt_costs, sp["test"][t], sp["unseen"][t])
        if (t + 1) % max(1, trials // 10) == 0:
            _log(f"{name}: {t + 1}/{trials} trials ({time.perf_counter() - t2:.0f}s)")
            # XLA maps memory regions per compiled executable and a process may hold only
            # vm.max_map_count of them: a 100-trial run after another dataset died in LLVM with
            # "Cannot allocate memory". Dropping the compiled kernels costs a recompile per tenth.
            jax.clear_caches()
    t_study = time.perf_counter() - t2
    seconds = {"load": t_load, "choose K and k": t_choose, "study": t_study}
    return {"name": name, "dataset": ds, "budgets": budgets, "areas": scores[..., 0], "qnc": scores[..., 1],
            "references": references, "chosen_k": chosen_k,
            "chosen_knn": chosen_knn, "kmeans_area": kmeans_area, "knn_full_area": knn_full, "seconds": seconds,
            "n_val": n_va, "trials": trials}


# ---------------------------------------------------------------------------------- output


def _paired(a: np.ndarray, b: np.ndarray) -> tuple[float, float, int, int]:
    d = a - b
    se = float(d.std(ddof=1) / np.sqrt(d.size)) if d.size > 1 else float("nan")
    return float(d.mean()), se, int((d > 0).sum()), int((d < 0).sum())


def _bootstrap(d: np.ndarray, rng: np.random.Generator, n_boot: int = 2000) -> tuple:
    """Mean of the paired differences `d [trials]`, its 95% bootstrap interval over trials, wins
    and losses."""
    means = d[rng.integers(0, d.size, (n_boot, d.size))].mean(1)
    lo, hi = np.quantile(means, [0.025, 0.975])
    return float(d.mean()), float(lo), float(hi), int((d > 0).sum()), int((d < 0).sum())


def _crossing(shares: np.ndarray, budgets: np.ndarray, level: float) -> float:
    """The label count where a share-of-gain curve `[n_budgets]` first reaches `level`,
    interpolated on log(n) between budgets; `budgets[0]` if it starts there, inf if never."""
    above = np.flatnonzero(shares >= level)
    if above.size == 0:
        return float("inf")
    j = int(above[0])
    if j == 0:
        return float(budgets[0])
    lo, hi = np.log(budgets[j - 1]), np.log(budgets[j])
    frac = (level - shares[j - 1]) / (shares[j] - shares[j - 1])
    return float(np.exp(lo + frac * (hi - lo)))


def labels_to_share(curves: np.ndarray, zero_all: np.ndarray, mean_all: np.ndarray, budgets: np.ndarray,
                    rng: np.random.Generator, level: float = 0.8, n_boot: int = 1000) -> tuple[float, float, float]:
    """Labels at which a method's mean Area `curves [trials, n_budgets]` first reaches `level` of
    plain means' all-label gain over ZeroRouter (`mean_all`, `zero_all`: `[trials]` Areas with all
    labels), with a 95% bootstrap interval over trials (the same trials resampled for all three)."""
    def at(idx):
        z = zero_all[idx].mean()
        return _crossing((curves[idx].mean(0) - z) / (mean_all[idx].mean() - z), budgets, level)

    t = curves.shape[0]
    boot = np.asarray([at(rng.integers(0, t, t)) for _ in range(n_boot)])
    lo, hi = np.quantile(boot, [0.025, 0.975], method="inverted_cdf")
    return at(np.arange(t)), float(lo), float(hi)


def _budget_names(r: dict) -> list[str]:
    return [str(b) for b in r["budgets"][:-1]] + [f"all ({r['n_val']})"]


def summarise(r: dict, default: str) -> dict:
    """The numbers the issue asks for, from the per-trial Areas."""
    A, budgets = r["areas"], r["budgets"]
    col = {c: i for i, c in enumerate(COLUMNS)}
    strat = {s: i for i, s in enumerate(STRATEGIES)}
    all_b = len(budgets) - 1
    out: dict = {"n_val": int(r["n_val"]), "trials": int(r["trials"]), "budgets": budgets.tolist(),
                 "mean_area": {}, "vs_zero": {}, "vs_knn": {}, "vs_mean": {}, "selected_vs_random": {}}
    for s in STRATEGIES:
        for c in COLUMNS:
            out["mean_area"][f"{c}/{s}"] = A[:, strat[s], :, col[c]].mean(0).round(5).tolist()
        for e in ESTIMATORS:
            key = f"{e}/{s}"
            x = A[:, strat[s], :, col[e]]
            out["vs_zero"][key] = [_paired(x[:, j], A[:, strat[s], j, col["ZeroRouter"]]) for j in range(len(budgets))]
            out["vs_knn"][key] = [_paired(x[:, j], A[:, strat[s], j, col["K-NN"]]) for j in range(len(budgets))]
            out["vs_mean"][key] = [_paired(x[:, j], A[:, strat[s], j, col["mean"]]) for j in range(len(budgets))]
    for e in ESTIMATORS:
        for s in ("stratified", "informative"):
            out["selected_vs_random"][f"{e}/{s}"] = [
                _paired(A[:, strat[s], j, col[e]], A[:, strat["random"], j, col[e]]) for j in range(len(budgets))]
    # Share of plain means' all-labels gain over ZeroRouter (all labels) kept by each estimator.
    zero_all = A[:, 0, all_b, col["ZeroRouter"]].mean()
    gain_mean_all = A[:, 0, all_b, col["mean"]].mean() - zero_all
    out["gain_kept"] = {f"{e}/{s}": ((A[:, strat[s], :, col[e]].mean(0) - zero_all) / gain_mean_all).round(4).tolist()
                        for e in COLUMNS for s in STRATEGIES}
    # Every method against the default, paired over trials on the same labels (bootstrap intervals),
    # and the labels each method needs to reach 80% of plain means' all-label gain.
    rng = np.random.default_rng(0)
    out["default_vs"] = {f"{c}/{s}": [_bootstrap(A[:, strat[s], j, col[default]] - A[:, strat[s], j, col[c]], rng)
                                      for j in range(len(budgets))]
                         for s in STRATEGIES for c in COLUMNS if c != default}
    n_axis = budgets.astype(np.float64)
    z_all, m_all = A[:, 0, all_b, col["ZeroRouter"]], A[:, 0, all_b, col["mean"]]
    out["labels_to_80"] = {f"{c}/{s}": labels_to_share(A[:, strat[s], :, col[c]], z_all, m_all, n_axis, rng)
                           for s in STRATEGIES for c in COLUMNS}
    # QNC is inf where a trial's router never reaches the most accurate LLM: the median, and how often.
    out["median_qnc"] = {f"{c}/{s}": [float(np.round(v, 5)) for v in np.median(r["qnc"][:, strat[s], :, col[c]], 0)]
                         for s in STRATEGIES for c in COLUMNS}
    out["qnc_reached"] = {f"{c}/{s}": np.isfinite(r["qnc"][:, strat[s], :, col[c]]).mean(0).round(3).tolist()
                          for s in STRATEGIES for c in COLUMNS}
    out["references"] = dict(zip(REFERENCES, r["references"].mean(0).round(5).tolist()))
    out["kmeans_area_evaluate"] = float(r["kmeans_area"].mean())
    out["knn_area_evaluate"] = float(r["knn_full_area"].mean())
    return out


def _tally(values: np.ndarray) -> dict:
    return dict(zip(*[a.tolist() for a in np.unique(values, return_counts=True)]))


def _fmt_boot(p) -> str:
    d, lo, hi, w, l = p
    return f"{d:+.4f} [{lo:+.4f}, {hi:+.4f}] ({w}/{l})"


def _fmt_labels(p) -> str:
    point, lo, hi = p
    one = lambda x: "inf" if not np.isfinite(x) else f"{x:.0f}" if x >= 10 else f"{x:.1f}"
    return f"{one(point)} [{one(lo)}, {one(hi)}]"


def _fmt_pair(p) -> str:
    d, se, w, l = p
    return f"{d:+.4f} ± {se:.4f} ({w}/{l})"


def write_markdown(r: dict, s: dict, out: Path, command: str, default: str) -> Path:
    names = _budget_names(r)
    T = r["trials"]
    A = r["areas"]
    lines = [f"# Label efficiency on {r['name']}", "",
             f"{r['dataset'].n_prompts} prompts, {r['dataset'].n_models} LLMs, {T} trials of the paper's protocol "
             f"({r['n_val']} validation prompts per trial). Each unseen LLM is labelled on n of the validation "
             "prompts, the same n prompts for every unseen LLM of a trial, chosen by the strategy; the training "
             "LLMs keep all their validation labels and the estimators are fitted on them. ZeroRouter and K-NN use "
             "the same labels, chosen on the default estimator's clusters. Each estimator's K is chosen per trial as "
             "`evaluate(estimator=...)` chooses it, and K-NN's k as `evaluate` does (K: "
             + "; ".join(f"{e} {_tally(r['chosen_k'][:, i])}" for i, e in enumerate(ESTIMATORS))
             + f"; k: {_tally(r['chosen_knn'])}).", "",
             f"Check against `evaluate` (all labels): UniRoute (K-Means) Area {s['kmeans_area_evaluate']:.4f} there, "
             f"shrinkage with all labels here {A[:, 0, -1, COLUMNS.index('shrinkage')].mean():.4f}; K-NN "
             f"{s['knn_area_evaluate']:.4f} there, {A[:, 0, -1, COLUMNS.index('K-NN')].mean():.4f} here.", "",
             "## Mean test Area (unseen LLMs)", "",
             "| method | strategy | " + " | ".join(f"n={b}" for b in names) + " |",
             "|---|---|" + "---|" * len(names)]
    for st in STRATEGIES:
        for c in COLUMNS:
            vals = s["mean_area"][f"{c}/{st}"]
            mark = " (default)" if c == default else ""
            lines.append(f"| {c}{mark} | {st} | " + " | ".join(f"{v:.4f}" for v in vals) + " |")
    lines += ["", "Areas that need no labels (unseen pool, mean over trials): "
              + ", ".join(f"{k} {v:.4f}" for k, v in s["references"].items()) + ".", "",
              f"## {default} (default) against every method, paired on the same labels", "",
              f"Area({default}) - Area(method), mean over the {T} trials with its 95% bootstrap interval over trials "
              "(wins/losses of the default).", "",
              "| method | strategy | " + " | ".join(f"n={b}" for b in names) + " |",
              "|---|---|" + "---|" * len(names)]
    for st in STRATEGIES:
        for c in COLUMNS:
            if c != default:
                lines.append(f"| {c} | {st} | " + " | ".join(_fmt_boot(p) for p in s["default_vs"][f"{c}/{st}"]) + " |")
    lines += ["", "## Labels to 80% of plain means' all-label gain over ZeroRouter", "",
              "The label count where the mean Area first reaches Area(ZeroRouter, all) + 0.8 (Area(mean, all) - "
              "Area(ZeroRouter, all)), interpolated on log(n) between budgets, with a 95% bootstrap interval over "
              "trials; `inf`: not within all labels; `<= 1`: already at one label.", "",
              "| method | " + " | ".join(STRATEGIES) + " |", "|---|" + "---|" * len(STRATEGIES)]
    for c in COLUMNS:
        lines.append(f"| {c} | " + " | ".join(_fmt_labels(s["labels_to_80"][f"{c}/{st}"]) for st in STRATEGIES) + " |")
    lines += ["", "## Median test QNC (unseen LLMs)", "",
              "Normalised cost at which the router first reaches the most accurate unseen LLM's accuracy (lower is "
              "better), median over trials, and in brackets the share of trials where it is reached at all (QNC is "
              "inf where not).", "",
              "| method | strategy | " + " | ".join(f"n={b}" for b in names) + " |",
              "|---|---|" + "---|" * len(names)]
    for st in STRATEGIES:
        for c in COLUMNS:
            lines.append(f"| {c} | {st} | " + " | ".join(
                f"{v:.3f} ({w:.2f})" for v, w in zip(s["median_qnc"][f"{c}/{st}"], s["qnc_reached"][f"{c}/{st}"])) + " |")
    for key, title in (("vs_zero", "Paired difference of Area against ZeroRouter given the same labels"),
                       ("vs_knn", "Paired difference of Area against K-NN given the same labels"),
                       ("vs_mean", "Paired difference of Area against plain means given the same labels")):
        lines += ["", f"## {title}", "",
                  f"Mean difference ± its standard error over the {T} trials (wins/losses).", "",
                  "| estimator | strategy | " + " | ".join(f"n={b}" for b in names) + " |",
                  "|---|---|" + "---|" * len(names)]
        for st in STRATEGIES:
            for e in ESTIMATORS:
                if key == "vs_mean" and e == "mean":
                    continue
                lines.append(f"| {e} | {st} | " + " | ".join(_fmt_pair(p) for p in s[key][f"{e}/{st}"]) + " |")
    lines += ["", "## Selected prompts against random prompts (same estimator)", "",
              "| estimator | strategy | " + " | ".join(f"n={b}" for b in names) + " |",
              "|---|---|" + "---|" * len(names)]
    for key, pairs in s["selected_vs_random"].items():
        e, st = key.split("/")
        lines.append(f"| {e} | {st} | " + " | ".join(_fmt_pair(p) for p in pairs) + " |")
    lines += ["", "## Share of plain means' all-label gain over ZeroRouter", "",
              "(Area(method, n) - Area(ZeroRouter, all)) / (Area(mean, all) - Area(ZeroRouter, all)).", "",
              "| method | strategy | " + " | ".join(f"n={b}" for b in names) + " |",
              "|---|---|" + "---|" * len(names)]
    for key, vals in s["gain_kept"].items():
        e, st = key.split("/")
        lines.append(f"| {e} | {st} | " + " | ".join(f"{v:.2f}" for v in vals) + " |")
    sec = r["seconds"]
    lines += ["", f"Command: `{command}`",
              f"Machine: {platform.machine()}, {jax.device_count()} {jax.default_backend()} device(s), jax "
              f"{jax.__version__}; " + ", ".join(f"{k} {v:.0f}s" for k, v in sec.items()) + "."]
    path = out / f"{r['name']}.md"
    write_text(path, "\n".join(lines) + "\n")
    return path


def plot(r: dict, out: Path, default: str = "prior") -> Path:
    """Top: mean Area against labels, one line per method, 95% bands over trials, the label-free
    references dashed grey. Bottom: Area(default) - Area(method) paired on the same labels, with
    95% bootstrap bands over trials (above 0: the default is better)."""
    plt = plots._pyplot()
    A, budgets, T = r["areas"], r["budgets"], r["trials"]
    columns = list(r.get("columns", COLUMNS))
    rng = np.random.default_rng(0)
    fig, axes = plt.subplots(2, len(STRATEGIES), figsize=(14, 8), sharex=True, sharey="row")
    for si, st in enumerate(STRATEGIES):
        top, bottom = axes[0, si], axes[1, si]
        for ci, c in enumerate(columns):
            x = A[:, si, :, ci]
            mean, half = x.mean(0), 1.96 * x.std(0, ddof=1) / np.sqrt(T)
            style = "--" if c in BASELINES else "-"
            top.plot(budgets, mean, style, marker="o", ms=3, color=COLOURS.get(c), label=c, lw=1.3)
            top.fill_between(budgets, mean - half, mean + half, color=COLOURS.get(c), alpha=0.12, lw=0)
            if c != default and default in columns:
                pairs = [_bootstrap(A[:, si, j, columns.index(default)] - x[:, j], rng, 1000) for j in range(len(budgets))]
                d, lo, hi = (np.asarray([p[i] for p in pairs]) for i in range(3))
                bottom.plot(budgets, d, style, marker="o", ms=3, color=COLOURS.get(c), label=c, lw=1.3)
                bottom.fill_between(budgets, lo, hi, color=COLOURS.get(c), alpha=0.12, lw=0)
        for ref, ls in zip(REFERENCES, (":", "-.")):
            if "references" in r:
                top.axhline(float(r["references"][:, REFERENCES.index(ref)].mean()), color="0.4", ls=ls, lw=1, label=ref)
        bottom.axhline(0.0, color="k", lw=0.8)
        for ax in (top, bottom):
            ax.set_xscale("log")
            ax.set_xticks(budgets, [str(b) for b in budgets[:-1]] + [f"all\n({budgets[-1]})"], fontsize=8)
            ax.minorticks_off()
            ax.grid(alpha=0.3)
        top.set_title(f"{st} prompts", fontsize=10)
        bottom.set_xlabel("labelled validation prompts per unseen LLM")
    axes[0, 0].set_ylabel("test Area (unseen LLMs)")
    axes[1, 0].set_ylabel(f"Area({default}) - Area(method), paired")
    axes[0, -1].legend(fontsize=7, loc="lower right", ncol=2)
    fig.suptitle(f"{r['name']}: Area against labels ({T} trials; bands: 95% intervals over trials)", fontsize=11)
    return plots.save_figure(fig, out / f"{r['name']}.png")


def study_trials(su: Setup, chosen_k: np.ndarray, saved_default: np.ndarray, default: str, check_trials: int = 3):
    """The study's trials again, at the default's K: yields `(t, K, centroids, params, selections)`
    with the selections `[n_strategies * n_budgets, n_val]` it labelled (centroids and prompts
    recomputed: `setup` is seeded). Checks that they reproduce the saved default's Areas
    `saved_default [trials, strategies, budgets]` on the first `check_trials` trials and the first of each K."""
    sp, d = su.splits, ESTIMATORS.index(default)
    for K in sorted(set(chosen_k[:, d].tolist())):
        first = True
        for chunk, _, _, cents in kmeans_centroids(su, K):
            for t, c in zip(range(chunk.start, chunk.stop), cents):
                if chosen_k[t, d] != K:
                    continue
                params, masks = prepare_trial(su, t, c, select=True)
                flat = masks.reshape(-1, masks.shape[-1])
                if first or t < check_trials:
                    mine = np.asarray(_score_clusters_all(params, flat, c, su.emb, *su.common, sp["val"][t], sp["test"][t],
                                                          sp["unseen"][t], n_clusters=K))[:, d, 0]  # Area
                    np.testing.assert_allclose(mine, saved_default[t].reshape(-1), atol=1e-6)
                    first = False
                yield t, K, c, params, flat


def rescore_peer(su: Setup, peer_name: str, chosen_k: np.ndarray, saved_default: np.ndarray, default: str) -> np.ndarray:
    """One peer's `[trials, strategies, budgets, metrics]` on the saved trials, on the labels the
    study gave it (`study_trials`)."""
    sp, quality, label_mask, prompt_costs, costs = su.splits, *su.common
    out = np.zeros((su.keys.shape[0], len(STRATEGIES), len(su.budgets), len(METRICS)), np.float32)
    fit, score = _peer_fns(peer_name)
    for t, _, c, _, flat in study_trials(su, chosen_k, saved_default, default):
        view = peer_view(quality, label_mask, sp["train"][t], sp["val"][t], sp["unseen"][t])
        p_params = fit(jax.random.fold_in(su.keys[t], 2), su.emb, *view, sp["train"][t], sp["val"][t],
                       sp["seen"][t], c, jnp.asarray(su.budgets))
        res = score(p_params, flat, su.emb, *view, quality, prompt_costs, costs, sp["val"][t], sp["test"][t],
                    sp["seen"][t], sp["unseen"][t])
        out[t] = np.asarray(res).reshape(out.shape[1:])
    _log(f"{peer_name} rescored")
    return out


def rewrite_saved(out: Path, default: str, rescore: tuple[str, ...] = (), datasets: tuple[str, ...] = DATASETS) -> int:
    """Recomputes the no-label references (and the columns of the peers in `rescore`) of the saved
    results on their own trials (`setup` is seeded), and rewrites their .npz, summary, tables and plots."""
    summary_path = out / "summary.json"
    summary = json.loads(summary_path.read_text())
    for path in sorted(out.glob("*.npz")):
        name = path.stem
        if name not in summary or name not in datasets:
            continue
        with np.load(path, allow_pickle=False) as z:
            saved = {k: z[k] for k in z.files}
        trials = saved["areas"].shape[0]
        su = setup(name, trials)
        quality, _, prompt_costs, _ = su.common
        saved["references"] = np.stack([reference_areas(quality, prompt_costs, su.splits["test"][t],
                                                        su.splits["unseen"][t]) for t in range(trials)])
        for peer_name in rescore:
            col = COLUMNS.index(peer_name)
            res = rescore_peer(su, peer_name, saved["chosen_k"], saved["areas"][..., ESTIMATORS.index(default)], default)
            saved["areas"][..., col], saved["qnc"][..., col] = res[..., 0], res[..., 1]
        old = (out / f"{name}.md").read_text()  # the run's own command and timings, as its table recorded them
        r = {"name": name, "dataset": su.ds, "budgets": saved["budgets"], "areas": saved["areas"], "qnc": saved["qnc"],
             "references": saved["references"], "chosen_k": saved["chosen_k"], "chosen_knn": saved["chosen_knn"],
             "n_val": int(su.splits["val"].shape[1]), "trials": trials,
             "kmeans_area": np.asarray([summary[name]["kmeans_area_evaluate"]]),
             "knn_full_area": np.asarray([summary[name]["knn_area_evaluate"]]),
             "seconds": {k: float(v) for k, v in re.findall(r"(load|choose K and k|study) (\d+)s", old)}}
        summary[name] = s = summarise(r, default)
        command = re.search(r"^Command: `(.*)`$", old, re.M).group(1).split(" (then")[0]
        tail = " --rereference" + (f" --rescore {','.join(rescore)}" if rescore else "")
        write_markdown(r, s, out, f"{command} (then{tail})", default)
        plot(r, out, default)
        with write_atomic(path, "wb") as f:
            np.savez(f, **saved)
        write_text(summary_path, json.dumps(summary, indent=1))
        _log(f"{name} rewritten ({', '.join(f'{k} {v:.4f}' for k, v in s['references'].items())})")
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", default=",".join(DATASETS))
    ap.add_argument("--trials", type=int, default=100)
    ap.add_argument("--trials-routerdc", type=int, default=30, help="trials on routerdc_7llm (default 30)")
    ap.add_argument("--default", default="prior", choices=ESTIMATORS, help="estimator marked as the default")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "label_efficiency"))
    ap.add_argument("--replot", action="store_true", help="redraw the PNGs from the saved .npz files and exit")
    ap.add_argument("--rereference", action="store_true",
                    help="recompute the no-label reference Areas of the saved results (same trials), rewrite their "
                         ".npz, summary, tables and plots, and exit")
    ap.add_argument("--rescore", default="", help="with --rereference: peers (comma-separated) whose columns of the "
                                                  "saved results are recomputed on the same trials and labels")
    args = ap.parse_args(argv)
    if args.rereference:
        rescore = tuple(p for p in args.rescore.split(",") if p)
        unknown = [p for p in rescore if p not in PEERS]
        if unknown:
            ap.error(f"--rescore: unknown peer(s) {unknown}; choose from {list(PEERS)}")
        return rewrite_saved(Path(args.out), args.default, rescore, tuple(args.datasets.split(",")))
    if args.replot:
        for path in sorted(Path(args.out).glob("*.npz")):
            with np.load(path, allow_pickle=False) as z:
                r = {"name": path.stem, "areas": z["areas"], "budgets": z["budgets"], "trials": z["areas"].shape[0],
                     "columns": [str(c) for c in z["columns"]]}
                if "references" in z:
                    r["references"] = z["references"]
            _log(f"redrawn {plot(r, Path(args.out), args.default)}")
        return 0
    command = "python benchmarks/label_efficiency.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    summary_path = out / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    try:
        for name in args.datasets.split(","):
            trials = min(args.trials, args.trials_routerdc) if name == "routerdc_7llm" else args.trials
            r = run(name, trials, args.default)
            s = summarise(r, args.default)
            write_markdown(r, s, out, command, args.default)
            plot(r, out, args.default)
            with write_atomic(out / f"{name}.npz", "wb") as f:
                np.savez(f, areas=r["areas"], qnc=r["qnc"], references=r["references"], budgets=r["budgets"],
                         chosen_k=r["chosen_k"],
                         chosen_knn=r["chosen_knn"], columns=np.asarray(COLUMNS), strategies=np.asarray(STRATEGIES))
            summary[name] = s
            write_text(summary_path, json.dumps(summary, indent=1))
            _log(f"{name} written ({sum(r['seconds'].values()):.0f}s)")
            jax.clear_caches()  # the next dataset compiles its own shapes (see `run`)
    except KeyboardInterrupt:
        _log("interrupted; datasets finished so far are written")
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
