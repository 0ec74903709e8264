"""Why choosing which prompts to label barely matters at 20 labels: how LLMs differ per cluster.

Which prompts a new LLM is labelled on can only matter through the per-cluster part of its errors:
its overall error is pinned equally well by any n labels. This script measures, on the trials of
the label-efficiency study (same splits, K fixed per dataset at the study's most chosen value), how
the training LLMs' per-cluster errors split into

* an LLM effect: each LLM's overall error, mass-weighted over the clusters (`row`);
* an LLM x cluster interaction: what is left after the LLM and cluster effects (`interaction`),
  the only part a selection strategy can target, with its binomial sampling noise subtracted;

both from every label the training LLMs have (training and validation prompts), and sets them
against the standard error of one cluster's mean from 20 labels placed by mass (stratified) or all
in that cluster (the most any strategy can give one cluster).

Two views of what 50 labels can keep of the all-label gain over ZeroRouter: a Gaussian model of
the same numbers (`kept_share_model`), and a level oracle replayed on the study's own trials
(`level_oracle`: the exact per-cluster pattern, the overall error from the n labels).

    python benchmarks/selection_limits.py [--datasets ...] [--trials 20] [--no-oracle]
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
import label_efficiency as le  # noqa: E402
from common import write_text  # noqa: E402

from uniroute_jax._src import evaluation as ev  # noqa: E402
from uniroute_jax._src.estimators import estimate_kernel  # noqa: E402
from uniroute_jax._src.kmeans import assign_clusters, assign_kernel, kmeans  # noqa: E402

OUT = Path(__file__).parent / "results" / "label_efficiency"
# The K the study's protocol chose most often on each dataset (its tables' "K: {...}" line).
MODAL_K = {"alpacaeval": 5, "routerbench_partial": 5, "routerdc_7llm": 5, "synthetic": 10}
LABELS = 20


def decompose(errors: np.ndarray, labelled: np.ndarray, clusters: np.ndarray, n_clusters: int,
              n_val: int) -> dict:
    """Variance parts of the per-cluster error means of LLMs.

    Args:
      errors: [n_prompts, n_models] 0/1 (or graded) errors; labelled: same shape, bool.
      clusters: [n_prompts] cluster of each prompt.
      n_val: validation prompts of a trial (the "all labels" budget).
    """
    onehot = np.eye(n_clusters)[clusters]  # [n, K]
    n = onehot.T @ labelled  # [K, M]
    e = onehot.T @ (errors * labelled)
    mass = onehot.mean(0)
    psi = e / np.maximum(n, 1)
    row = mass @ psi  # [M] overall error of each LLM
    col = psi.mean(1)  # [K]
    inter = psi - row[None, :] - col[:, None] + (mass @ col)
    noise = psi * (1 - psi) / np.maximum(n - 1, 1)  # unbiased variance of each cell mean
    var_inter = float(mass @ (inter ** 2).mean(1) - mass @ noise.mean(1))
    p = float(row.mean())
    return {
        "row_sd": float(row.std()),
        "interaction_sd": float(np.sqrt(max(var_inter, 0.0))),
        "interaction_sd_raw": float(np.sqrt(mass @ (inter ** 2).mean(1))),
        "overall_se_20": float(np.sqrt(p * (1 - p) / LABELS)),
        "cluster_se_20_stratified": float(mass @ np.sqrt(p * (1 - p) / np.maximum(LABELS * mass, 1))),
        "cluster_se_20_all_in_one": float(np.sqrt(p * (1 - p) / LABELS)),
        "min_cluster_labels": int(n.min()),
        # Mass-weighted SE of a cluster mean from n labels placed by mass, at 50 and at all labels.
        "cluster_se_50_stratified": float(mass @ np.sqrt(p * (1 - p) / np.maximum(50 * mass, 1))),
        "cluster_se_all_stratified": float(mass @ np.sqrt(p * (1 - p) / np.maximum(n_val * mass, 1))),
        "n_val": n_val,
    }


def run(name: str, trials: int) -> dict:
    ds = le._dataset(name)
    cfg = ev.ProtocolConfig(n_trials=trials, seed=0)
    splits = ev.make_splits(ds.n_prompts, ds.n_models, cfg)
    K = MODAL_K[name]
    errors = 1.0 - np.nan_to_num(np.asarray(ds.quality, np.float64))
    mask = np.asarray(ds.label_mask)
    out = []
    for t in range(trials):
        tr, va, seen = splits.train[t], splits.val[t], np.flatnonzero(splits.seen[t])
        km = kmeans(ds.embeddings[tr], K, key=t, n_init=cfg.n_init, metric=cfg.metric)
        rows = np.concatenate([tr, va])
        clusters = np.asarray(assign_clusters(ds.embeddings[rows], km.centroids, metric=cfg.metric))
        out.append(decompose(errors[rows][:, seen], mask[rows][:, seen], clusters, K, len(va)))
    keys = out[0].keys()
    return {"dataset": name, "K": K, "trials": trials, "n_models_seen": int(splits.seen[0].sum()),
            **{k: float(np.mean([o[k] for o in out])) for k in keys}}


def kept_share_model(r: dict) -> dict:
    """What share of the all-label gain over ZeroRouter n labels can keep, in a Gaussian model.

    A new LLM's per-cluster deviations are N(0, tau^2) (tau: the interaction SD above) and a
    cluster mean from n labels adds noise of SD SE_n. The best estimate of a deviation (the
    posterior mean) correlates with the truth by rho_n = tau / sqrt(tau^2 + SE_n^2), and what a
    router gains by acting on it scales with its spread, rho_n * tau; so n labels keep about
    rho_n / rho_all of what all the validation labels give, whatever the estimator, and 80% needs
    rho_n >= 0.8 rho_all. A model, not a bound on every estimator: a population prior can also
    predict part of the deviations from the LLM's overall error.
    """
    tau2 = r["interaction_sd"] ** 2
    rho = lambda se: np.sqrt(tau2 / (tau2 + se ** 2)) if tau2 > 0 else 0.0
    rho_all = rho(r["cluster_se_all_stratified"])
    share_50 = float(rho(r["cluster_se_50_stratified"]) / rho_all) if rho_all > 0 else float("nan")
    # SE_n^2 = c / n by mass; solve rho_n = 0.8 rho_all for n.
    c = r["cluster_se_50_stratified"] ** 2 * 50
    need = c / ((tau2 + c / r["n_val"]) / 0.64 - tau2) if tau2 > 0 else float("inf")
    return {"share_50_model": share_50, "labels_for_80pct_model": float(need)}


@functools.partial(jax.jit, static_argnames=("n_clusters",))
def _level_oracle_areas(params, selections, centroids, emb, quality, label_mask, prompt_costs, costs, val, test,
                        unseen, *, n_clusters):
    """Test Area `[n_sel]` of an oracle given labels on `selections [n_sel, n_val]`.

    It knows each unseen LLM's per-cluster errors from all its validation labels (plain means, the
    reference of the study's share) and takes only the LLM's overall error from the selected
    labels: each unseen row is shifted by (overall error on the selected prompts - on all).
    """
    lab_va = assign_kernel(emb[val], centroids, metric="cosine")
    lab_te = assign_kernel(emb[test], centroids, metric="cosine")
    errors = 1.0 - quality[val]
    counts, sums = le._counts(lab_va, errors, label_mask[val], n_clusters)
    psi_all = estimate_kernel(params, counts, sums, method="mean").psi  # [n_models, K]
    level = lambda c, e: e.sum(1) / jnp.maximum(c.sum(1), 1.0)
    te_units = ev._cluster_units(lab_te, quality[test], prompt_costs[test], n_clusters)
    model_cost, model_quality = prompt_costs[test].mean(0), quality[test].mean(0)

    def one(selected):
        c_n, s_n = le._counts(lab_va, errors, label_mask[val] & (selected[:, None] | ~unseen[None, :]), n_clusters)
        shift = jnp.where(unseen, level(c_n, s_n) - level(counts, sums), 0.0)
        psi = jnp.clip(psi_all + shift[:, None], 0.0, 1.0)
        return ev._metrics_of(psi.T, te_units, costs, unseen, model_cost, model_quality).area

    return jax.lax.map(one, selections)


def level_oracle(name: str, default: str = "prior", check_trials: int = 3) -> dict:
    """The study's default estimator beside the level oracle, on the study's trials, K and prompts.

    Reads `<name>.npz` of the label-efficiency study; recomputes each trial's centroids at the
    default's chosen K and the prompts it selected, and checks on the first `check_trials` trials
    that the default's Areas come out as the study's.
    """
    z = np.load(OUT / f"{name}.npz", allow_pickle=False)
    A, chosen_k = z["areas"], z["chosen_k"]
    trials, d = A.shape[0], le.ESTIMATORS.index(default)
    su = le.setup(name, trials)
    sp, (quality, label_mask, prompt_costs, costs) = su.splits, su.common
    oracle = np.zeros(A.shape[:3], np.float32)  # [trials, strategies, budgets]
    for t, K, c, params, flat in le.study_trials(su, chosen_k, A[..., d], default, check_trials):
        args = (c, su.emb, quality, label_mask, prompt_costs, costs, sp["val"][t], sp["test"][t], sp["unseen"][t])
        oracle[t] = np.asarray(_level_oracle_areas(params, flat, *args, n_clusters=K)).reshape(oracle.shape[1:])
    col = {c: i for i, c in enumerate(le.COLUMNS)}
    zero_all = A[:, 0, -1, col["ZeroRouter"]].mean()
    gain = A[:, 0, -1, col["mean"]].mean() - zero_all
    at = list(z["budgets"]).index(50) if 50 in z["budgets"] else None
    share = lambda x: ((x.mean(0) - zero_all) / gain).round(4).tolist()  # x: [trials, budgets]
    return {"budgets": z["budgets"].tolist(), "at_50": at, "trials": trials,
            "oracle_area": {s: oracle[:, i].mean(0).round(5).tolist() for i, s in enumerate(le.STRATEGIES)},
            "oracle_kept": {s: share(oracle[:, i]) for i, s in enumerate(le.STRATEGIES)},
            "default_kept": {s: share(A[:, i, :, d]) for i, s in enumerate(le.STRATEGIES)},
            # The same gain read against ZeroRouter given the same labels (paired), not all of them.
            "default_kept_paired": {s: ((A[:, i, :, d] - A[:, i, :, col["ZeroRouter"]]).mean(0) / gain).round(4).tolist()
                                    for i, s in enumerate(le.STRATEGIES)}}


def write_markdown(rows: list[dict], command: str) -> Path:
    lines = ["# Why prompt selection barely matters at 20 labels", "",
             "Per-cluster errors of the training LLMs, from all their labels (training and validation "
             "prompts), split into the LLM effect (each LLM's overall error) and the LLM x cluster "
             "interaction (sampling noise subtracted), means over the trials. A selection strategy can "
             "only act on the interaction; 20 labels estimate one cluster's mean to the standard errors "
             "on the right.", "",
             "| dataset | K | training LLMs | SD of LLM effect | SD of interaction (noise included) | SE of a "
             "cluster mean, 20 labels by mass | SE, all 20 in that cluster |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['dataset']} | {r['K']} | {r['n_models_seen']} | {r['row_sd']:.3f} | "
                     f"{r['interaction_sd']:.3f} ({r['interaction_sd_raw']:.3f}) | {r['cluster_se_20_stratified']:.3f} | "
                     f"{r['cluster_se_20_all_in_one']:.3f} |")
    lines += ["", "Standard errors use the Bernoulli variance p(1 - p) at the LLMs' mean error p (an upper "
              "bound for graded labels). Where the interaction is well below both standard errors, no "
              "choice of 20 prompts can tell an LLM's per-cluster deviations from noise, and every "
              "choice pins its overall error equally well.", "",
              "## What 50 labels can keep", "",
              "In a Gaussian model of the same numbers (`kept_share_model`: the best estimate of an LLM's "
              "per-cluster deviation from n labels correlates with the truth by rho_n = tau / sqrt(tau^2 + "
              "SE_n^2), and a router's gain from it scales with rho_n), n labels keep about rho_n / rho_all of "
              "the gain over ZeroRouter that all validation labels give. Measured: the default estimator's "
              "share at 50 labels in the label-efficiency study (random / stratified / informative prompts; "
              "its gain is measured against plain means with all labels, whose own gain is noisy).", "",
              "| dataset | validation prompts | SE of a cluster mean, 50 / all labels by mass | share kept at 50 "
              "labels, model | measured (study) | labels for 80%, model |",
              "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['dataset']} | {int(r['n_val'])} | {r['cluster_se_50_stratified']:.3f} / "
                     f"{r['cluster_se_all_stratified']:.3f} | {r['share_50_model']:.2f} | {r['share_50_measured']} | "
                     f"{r['labels_for_80pct_model']:.0f} |")
    lines += ["", "Where plain means with all labels fall below ZeroRouter (alpacaeval), the measured share "
              "divides by a negative gain and means nothing.", "",
              "## What the overall error alone costs", "",
              "A level oracle, on the study's own trials, K (the default's) and selected prompts "
              "(`level_oracle`): it knows each unseen LLM's per-cluster errors from all its validation labels "
              "(plain means) and takes only the LLM's overall error from the n labels. What it loses between "
              "all labels and n is what estimating the overall error from n labels costs any cluster router "
              "that knows the per-cluster pattern exactly. Shares of plain means' all-label gain over ZeroRouter "
              "(all labels), as in the study, at 50 labels, random / stratified / informative prompts; "
              "`paired` reads the default's gain against ZeroRouter given the same 50 labels instead.", "",
              "| dataset | trials | default (study) | default, paired | level oracle, 50 labels | level oracle, "
              "all labels | lost to the overall error alone |",
              "|---|---|---|---|---|---|---|"]
    for r in rows:
        o = r.get("oracle")
        if not o or o["at_50"] is None:
            continue
        at, strategies = o["at_50"], ("random", "stratified", "informative")
        cell = lambda key, j: " / ".join(f"{o[key][s][j]:.2f}" for s in strategies)
        lost = " / ".join(f"{o['oracle_kept'][s][-1] - o['oracle_kept'][s][at]:.2f}" for s in strategies)
        lines.append(f"| {r['dataset']} | {o['trials']} | {cell('default_kept', at)} | "
                     f"{cell('default_kept_paired', at)} | {cell('oracle_kept', at)} | "
                     f"{cell('oracle_kept', -1)} | {lost} |")
    lines += ["", f"Command: `{command}`", ""]
    path = OUT / "selection_limits.md"
    write_text(path, "\n".join(lines))
    return path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--datasets", default="alpacaeval,routerbench_partial,routerdc_7llm,synthetic")
    ap.add_argument("--trials", type=int, default=20)
    ap.add_argument("--no-oracle", action="store_true", help="skip the level oracle (it replays the study's trials)")
    args = ap.parse_args(argv)
    rows = []
    summary = OUT / "summary.json"  # the label-efficiency study's results, for the measured shares
    study = json.loads(summary.read_text()) if summary.exists() else {}
    for name in args.datasets.split(","):
        t0 = time.perf_counter()
        rows.append(run(name, args.trials))
        rows[-1].update(kept_share_model(rows[-1]))
        measured = study.get(name, {})
        at = measured.get("budgets", []).index(50) if 50 in measured.get("budgets", []) else None
        rows[-1]["share_50_measured"] = "-" if at is None else " / ".join(
            f"{measured['gain_kept'][f'prior/{s}'][at]:.2f}" for s in ("random", "stratified", "informative"))
        if (OUT / f"{name}.npz").exists() and not args.no_oracle:
            rows[-1]["oracle"] = level_oracle(name)
        print(f"{name}: {rows[-1]} ({time.perf_counter() - t0:.0f}s)", file=sys.stderr)
    write_text(OUT / "selection_limits.json", json.dumps(rows, indent=1))
    print(write_markdown(rows, " ".join(["python", "benchmarks/selection_limits.py", *(argv or sys.argv[1:])])))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
