"""Label efficiency: how well are unseen LLMs routed from n labelled prompts each?

`python benchmarks/label_efficiency.py [--trials N] [--trials-routerdc N] [--datasets a,b]`

The paper's protocol (`uniroute_jax.evaluate`: random 60/10/30 prompt splits, 1/3 of the LLMs
unseen, K chosen per trial with the training LLMs), except that each unseen LLM is labelled on only
`n` of the validation prompts, for n in {5, 10, 20, 50, 100, 200, all}. The prompts are chosen by a
selection strategy (random, stratified, informative; the same prompts for every unseen LLM of a
trial) and the unseen LLMs' error vectors by each estimator (mean, shrinkage, hierarchical, prior),
fitted on the training LLMs' validation counts (the prior's low-rank factors also on their
training-prompt labels, which the protocol gives the supervised routers). Each estimator has its own
K per trial, the one `evaluate(estimator=...)` picks; the prompts are chosen on the default
estimator's clusters, and every estimator, ZeroRouter and K-NN get the same labels. Scores are test
Areas over the unseen LLMs; K-NN's k and the training LLMs' labels are as in `evaluate`.

Writes under `--out` (default benchmarks/results/label_efficiency/): `<dataset>.md` (tables),
`<dataset>.png` (Area against labels, one line per estimator, bands of one standard error over
trials), `<dataset>.npz` (every trial's Area) and `summary.json`.
"""

from __future__ import annotations

import argparse
import functools
import json
import platform
import shlex
import sys
import time
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from uniroute_jax._src import evaluation as ev
from uniroute_jax._src import plots
from uniroute_jax._src.estimators import METHODS as ESTIMATORS
from uniroute_jax._src.estimators import default_n_groups, estimate_kernel, fit_kernel
from uniroute_jax._src.kmeans import assign_kernel
from uniroute_jax._src.selection import STRATEGIES, selection_kernel
from uniroute_jax._src.persistence import write_atomic
from uniroute_jax._src.sharding import trial_mesh, trial_vmap

sys.path.insert(0, str(Path(__file__).parent))
from common import write_text  # noqa: E402

DATASETS = ("alpacaeval", "routerbench_partial", "routerdc_7llm", "synthetic")
BUDGETS = (5, 10, 20, 50, 100, 200)
BASELINES = ("ZeroRouter", "K-NN")
COLUMNS = ESTIMATORS + BASELINES  # last axis of the Area array
COLOURS = {"mean": "#1f77b4", "shrinkage": "#9467bd", "hierarchical": "#2ca02c", "prior": "#d62728",
           "ZeroRouter": "#7f7f7f", "K-NN": "#ff7f0e"}


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
    """Test Area of every estimator and of ZeroRouter, given labels on `selected [n_val]` for the
    unseen LLMs (the training LLMs keep all theirs; they are not scored)."""
    lab_va = assign_kernel(emb[val], centroids, metric="cosine")
    lab_te = assign_kernel(emb[test], centroids, metric="cosine")
    mask = label_mask[val] & (selected[:, None] | ~unseen[None, :])
    errors = 1.0 - quality[val]
    counts, sums = _counts(lab_va, errors, mask, n_clusters)
    te_units = ev._cluster_units(lab_te, quality[test], prompt_costs[test], n_clusters)
    model_cost, model_quality = prompt_costs[test].mean(0), quality[test].mean(0)
    area = lambda est: ev._metrics_of(est, te_units, costs, unseen, model_cost, model_quality).area
    out = [area(estimate_kernel(params, counts, sums, method=m).psi.T) for m in ESTIMATORS]
    overall = sums.sum(1) / jnp.maximum(counts.sum(1), 1.0)
    zero_units = ev._cluster_units(jnp.zeros_like(lab_te), quality[test], prompt_costs[test], 1)
    out.append(ev._metrics_of(overall[None], zero_units, costs, unseen, model_cost, model_quality).area)
    return jnp.stack(out)


@functools.partial(jax.jit, static_argnames=("k_max",))
def _neighbours(emb, val, test, *, k_max):
    """The `k_max` nearest validation prompts of every test prompt (cosine), `[n_test, k_max]`."""
    unit = lambda x: x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-12)
    return jax.lax.top_k(unit(emb[test]) @ unit(emb[val]).T, k_max)[1]


def _score_knn(neighbours, k, selected, quality, label_mask, prompt_costs, costs, val, test, unseen):
    """Test Area of K-NN (the library's rule, k fixed per trial) with the same labels."""
    mask = (label_mask[val] & (selected[:, None] | ~unseen[None, :])).astype(quality.dtype)
    errors = (1.0 - quality[val]) * mask
    use = (jnp.arange(neighbours.shape[1]) < k).astype(quality.dtype)[None, :, None]
    err = jnp.sum(errors[neighbours] * use, 1)
    cnt = jnp.sum(mask[neighbours] * use, 1)
    overall = errors.sum(0) / jnp.maximum(mask.sum(0), 1.0)
    est = jnp.where(cnt > 0, err / jnp.maximum(cnt, 1.0), overall[None, :])
    units = ev._prompt_units(quality[test], prompt_costs[test])
    return ev._metrics_of(est, units, costs, unseen, prompt_costs[test].mean(0), quality[test].mean(0)).area


@jax.jit
def _score_knn_all(neighbours, k, selections, quality, label_mask, prompt_costs, costs, val, test, unseen):
    """`_score_knn` for every selection `[n_sel, n_val]`, one at a time (bounded memory)."""
    return jax.lax.map(lambda s: _score_knn(neighbours, k, s, quality, label_mask, prompt_costs, costs, val, test,
                                            unseen), selections)


@functools.partial(jax.jit, static_argnames=("n_clusters",))
def _score_clusters_all(params, selections, centroids, emb, quality, label_mask, prompt_costs, costs, val, test,
                        unseen, *, n_clusters):
    """`_score_clusters` for every selection `[n_sel, n_val]`: `[n_sel, n_estimators + 1]`."""
    return jax.vmap(lambda s: _score_clusters(params, s, centroids, emb, quality, label_mask, prompt_costs, costs,
                                              val, test, unseen, n_clusters=n_clusters))(selections)


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
    areas = np.zeros((trials, len(STRATEGIES), len(budgets), len(COLUMNS)), np.float32)
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
                                               sp["unseen"][t], n_clusters=K)).reshape(len(STRATEGIES), len(budgets), -1)
            for e in np.flatnonzero(best[t] == i):
                areas[t, ..., e] = a[..., e]
            if i == home:  # the baselines need no K: scored once, on the same labels
                areas[t, ..., len(ESTIMATORS)] = a[..., -1]  # ZeroRouter
                nb = _neighbours(emb, sp["val"][t], sp["test"][t], k_max=max(ks))
                knn = _score_knn_all(nb, chosen_knn[t], flat, *common, sp["val"][t], sp["test"][t], sp["unseen"][t])
                areas[t, ..., -1] = np.asarray(knn).reshape(len(STRATEGIES), len(budgets))
        if (t + 1) % max(1, trials // 10) == 0:
            _log(f"{name}: {t + 1}/{trials} trials ({time.perf_counter() - t2:.0f}s)")
    t_study = time.perf_counter() - t2
    seconds = {"load": t_load, "choose K and k": t_choose, "study": t_study}
    return {"name": name, "dataset": ds, "budgets": budgets, "areas": areas, "chosen_k": chosen_k,
            "chosen_knn": chosen_knn, "kmeans_area": kmeans_area, "knn_full_area": knn_full, "seconds": seconds,
            "n_val": n_va, "trials": trials}


# ---------------------------------------------------------------------------------- output


def _paired(a: np.ndarray, b: np.ndarray) -> tuple[float, float, int, int]:
    d = a - b
    se = float(d.std(ddof=1) / np.sqrt(d.size)) if d.size > 1 else float("nan")
    return float(d.mean()), se, int((d > 0).sum()), int((d < 0).sum())


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
                        for e in ESTIMATORS for s in STRATEGIES}
    out["kmeans_area_evaluate"] = float(r["kmeans_area"].mean())
    out["knn_area_evaluate"] = float(r["knn_full_area"].mean())
    return out


def _tally(values: np.ndarray) -> dict:
    return dict(zip(*[a.tolist() for a in np.unique(values, return_counts=True)]))


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
              "(Area(estimator, n) - Area(ZeroRouter, all)) / (Area(mean, all) - Area(ZeroRouter, all)).", "",
              "| estimator | strategy | " + " | ".join(f"n={b}" for b in names) + " |",
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


def plot(r: dict, out: Path) -> Path:
    plt = plots._pyplot()
    A, budgets, T = r["areas"], r["budgets"], r["trials"]
    fig, axes = plt.subplots(1, len(STRATEGIES), figsize=(13, 4.2), sharey=True)
    for ax, (si, st) in zip(axes, enumerate(STRATEGIES)):
        for ci, c in enumerate(COLUMNS):
            x = A[:, si, :, ci]
            mean, se = x.mean(0), x.std(0, ddof=1) / np.sqrt(T)
            style = "--" if c in BASELINES else "-"
            ax.plot(budgets, mean, style, marker="o", ms=3, color=COLOURS[c], label=c, lw=1.5)
            ax.fill_between(budgets, mean - se, mean + se, color=COLOURS[c], alpha=0.15, lw=0)
        ax.set_xscale("log")
        ax.set_xticks(budgets, [str(b) for b in budgets[:-1]] + [f"all\n({budgets[-1]})"], fontsize=8)
        ax.minorticks_off()
        ax.set_xlabel("labelled validation prompts per unseen LLM")
        ax.set_title(f"{st} prompts", fontsize=10)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("test Area (unseen LLMs)")
    axes[-1].legend(fontsize=8, loc="lower right")
    fig.suptitle(f"{r['name']}: Area against labels ({T} trials, bands ± 1 s.e. of the mean)", fontsize=11)
    return plots.save_figure(fig, out / f"{r['name']}.png")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", default=",".join(DATASETS))
    ap.add_argument("--trials", type=int, default=100)
    ap.add_argument("--trials-routerdc", type=int, default=30, help="trials on routerdc_7llm (default 30)")
    ap.add_argument("--default", default="prior", choices=ESTIMATORS, help="estimator marked as the default")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "label_efficiency"))
    ap.add_argument("--replot", action="store_true", help="redraw the PNGs from the saved .npz files and exit")
    args = ap.parse_args(argv)
    if args.replot:
        for path in sorted(Path(args.out).glob("*.npz")):
            with np.load(path, allow_pickle=False) as z:
                r = {"name": path.stem, "areas": z["areas"], "budgets": z["budgets"], "trials": z["areas"].shape[0]}
            _log(f"redrawn {plot(r, Path(args.out))}")
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
            plot(r, out)
            with write_atomic(out / f"{name}.npz", "wb") as f:
                np.savez(f, areas=r["areas"], budgets=r["budgets"], chosen_k=r["chosen_k"],
                         chosen_knn=r["chosen_knn"], columns=np.asarray(COLUMNS), strategies=np.asarray(STRATEGIES))
            summary[name] = s
            write_text(summary_path, json.dumps(summary, indent=1))
            _log(f"{name} written ({sum(r['seconds'].values()):.0f}s)")
    except KeyboardInterrupt:
        _log("interrupted; datasets finished so far are written")
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
