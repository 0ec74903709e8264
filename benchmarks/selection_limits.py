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

    python benchmarks/selection_limits.py [--datasets ...] [--trials 20]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from common import write_text  # noqa: E402
from label_efficiency import _dataset  # noqa: E402

from uniroute_jax._src import evaluation as ev  # noqa: E402
from uniroute_jax._src.kmeans import assign_clusters, kmeans  # noqa: E402

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
    ds = _dataset(name)
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
              "divides by a negative gain and means nothing.", "", f"Command: `{command}`", ""]
    path = OUT / "selection_limits.md"
    write_text(path, "\n".join(lines))
    return path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--datasets", default="alpacaeval,routerbench_partial,routerdc_7llm,synthetic")
    ap.add_argument("--trials", type=int, default=20)
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
        print(f"{name}: {rows[-1]} ({time.perf_counter() - t0:.0f}s)", file=sys.stderr)
    write_text(OUT / "selection_limits.json", json.dumps(rows, indent=1))
    print(write_markdown(rows, " ".join(["python", "benchmarks/selection_limits.py", *(argv or sys.argv[1:])])))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
