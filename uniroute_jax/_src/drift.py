"""Has served traffic moved away from the validation set the pool was estimated on?

A pool's per-cluster estimates `Psi(h)[k]` hold for the traffic they were measured on. Two things
can move once a router serves: the cluster mix (more code, fewer facts), and the error of an LLM
within a cluster (a provider changed the model, the prompts of a cluster changed). The first
changes which estimates matter and how much the routing gains; the second makes the routing
decide on wrong numbers. `drift_report` measures both:

- **Cluster mix.** The population stability index
  `PSI = sum_k (s_k - v_k) ln(s_k / v_k)` of the served shares `s` against the validation shares
  `v` (each floored at `eps`, so an empty cluster gives a large finite term, not infinity), read
  as the size of the move (< 0.1 small, > 0.25 large, by the usual rule), and the chi-square test
  of homogeneity of the `2 x n_clusters` table of counts, read as whether the move is more than
  sampling noise. Both samples are finite, so the test treats the validation mix as a sample too,
  not as the truth. The mix is flagged as moved when it is both large (`PSI >= psi_threshold`)
  and significant (`p < alpha`): with 100,000 requests every tiny move is significant, with 50
  every PSI is noisy. A cluster is flagged when its adjusted residual
  `(O - E) / sqrt(E (1 - row share) (1 - column share))` lies beyond the normal quantile at
  `alpha / n_clusters` (Bonferroni over the clusters).
- **Calibration.** Per (LLM, cluster), the observed error rate on served outcomes (only the LLM
  that answered a request has an outcome) with its exact binomial (Clopper-Pearson) interval at
  `level`; a cell is flagged when the pool's estimate lies outside that interval.

Served and validation prompts are given as embeddings `[n, dim]` (assigned to clusters by the
router) or as cluster ids `[n]`. Everything here runs on the host: the inputs are a day of
traffic, and the two special functions come from `jax.scipy` so that SciPy is not needed.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import jax.numpy as jnp
import numpy as np
from jax.scipy.special import gammaincc, ndtri
from jax.typing import ArrayLike

from uniroute_jax._src import validation
from uniroute_jax._src.onboarding import _beta_quantile


class DriftReport(NamedTuple):
    """Served traffic against the validation set (see the module docstring)."""

    served_counts: np.ndarray  # [n_clusters] served requests per cluster
    validation_counts: np.ndarray  # [n_clusters] validation prompts per cluster
    served_mix: np.ndarray  # [n_clusters] shares of the served requests
    validation_mix: np.ndarray  # [n_clusters] shares of the validation prompts
    psi: float  # population stability index of the mix
    psi_terms: np.ndarray  # [n_clusters] each cluster's term of `psi`
    chi2: float  # chi-square statistic of homogeneity (2 x clusters seen)
    dof: int  # its degrees of freedom: clusters seen in either sample - 1
    p_value: float  # P(chi2_dof >= chi2)
    residuals: np.ndarray  # [n_clusters] adjusted residuals of the served counts (0 for unseen clusters)
    cluster_moved: np.ndarray  # [n_clusters] bool: |residual| beyond the Bonferroni normal quantile
    mix_moved: bool  # psi >= psi_threshold and p_value < alpha
    names: tuple[str, ...]  # [n_models] the pool's LLMs
    estimate: np.ndarray  # [n_models, n_clusters] the pool's error estimates Psi
    n_outcomes: np.ndarray  # [n_models, n_clusters] served outcomes behind each observed rate
    observed_error: np.ndarray  # [n_models, n_clusters] observed error rate (nan without outcomes)
    error_lower: np.ndarray  # [n_models, n_clusters] Clopper-Pearson interval (nan without outcomes)
    error_upper: np.ndarray  # [n_models, n_clusters]
    miscalibrated: np.ndarray  # [n_models, n_clusters] bool: estimate outside [error_lower, error_upper]
    psi_threshold: float
    alpha: float
    level: float

    def summary(self) -> str:
        """A few lines for a terminal: the mix, the flagged clusters and the flagged cells."""
        verdict = "moved" if self.mix_moved else "stable"
        lines = [f"cluster mix {verdict}: PSI {self.psi:.4f} (threshold {self.psi_threshold:g}), "
                 f"chi2 {self.chi2:.2f} on {self.dof} dof, p = {self.p_value:.3g} (alpha {self.alpha:g}); "
                 f"{int(self.served_counts.sum())} served, {int(self.validation_counts.sum())} validation prompts"]
        for k in np.flatnonzero(self.cluster_moved):
            lines.append(f"  cluster {k}: {self.validation_mix[k]:.3f} -> {self.served_mix[k]:.3f} of traffic "
                         f"(residual {self.residuals[k]:+.1f})")
        cells = np.argwhere(self.miscalibrated)
        n_seen = int((self.n_outcomes > 0).sum())
        if n_seen:
            lines.append(f"calibration: {len(cells)} of {n_seen} (LLM, cluster) cells with outcomes have their "
                         f"estimate outside the {100 * self.level:g}% interval of the observed error")
        for m, k in cells:
            lines.append(f"  {self.names[m]}, cluster {k}: estimate {self.estimate[m, k]:.3f}, observed "
                         f"{self.observed_error[m, k]:.3f} [{self.error_lower[m, k]:.3f}, {self.error_upper[m, k]:.3f}] "
                         f"on {self.n_outcomes[m, k]:g} outcomes")
        return "\n".join(lines)


def _clusters(x, name: str, router) -> np.ndarray:
    """Cluster ids `[n]` of prompts given as embeddings `[n, dim]` or as cluster ids `[n]`."""
    arr = np.asarray(x)
    if arr.ndim == 2 and arr.shape[1] == 1 and router.dim != 1:
        arr = arr[:, 0]  # a one-column file of ids
    if arr.ndim == 1:
        if arr.size == 0:
            raise ValueError(f"{name} is empty: give at least one prompt")
        # 1-D input is cluster ids: integers (or integral floats, as a CSV gives them) in range.
        return validation.int_array(arr, name, high=router.n_clusters).astype(np.int64)
    x = validation.float_array(arr, name, ndim=2)
    if x.shape[0] == 0:
        raise ValueError(f"{name} is empty: give at least one prompt")
    if x.shape[1] != router.dim:
        raise ValueError(f"{name} has shape {x.shape} but the router expects embeddings of dimension {router.dim}")
    if router.metric == "cosine":
        validation.embedding_rows(x, name)
    if router.feature_map.hard:
        return np.asarray(router.assign(x), np.int64)
    return np.asarray(np.argmax(router.features(x), axis=1), np.int64)  # a soft map's strongest cluster


def _outcomes(outcomes, pool, n_served: int) -> tuple[np.ndarray, np.ndarray]:
    """`(model rows [n], errors [n])` of the served outcomes; nan errors are requests without one."""
    if not isinstance(outcomes, (tuple, list)) or len(outcomes) != 2:
        raise TypeError("outcomes must be a pair (models, correct): the LLM that answered each served request "
                        "(a name or [n_served] names) and its quality in [0, 1] ([n_served], nan = no outcome)")
    models, correct = outcomes
    correct = validation.float_array(correct, "outcomes correct", ndim=1, allow_nan=True, dtype=np.float64)
    if correct.shape[0] != n_served:
        raise ValueError(f"outcomes correct has {correct.shape[0]} values but served has {n_served} requests")
    correct = validation.unit_interval(correct, "outcomes correct", where=~np.isnan(correct))
    names = [models] * n_served if isinstance(models, str) else list(models)
    if len(names) != n_served:
        raise ValueError(f"outcomes models has {len(names)} names but served has {n_served} requests")
    unknown = sorted({str(m) for m in names} - set(pool.names))
    if unknown:
        raise ValueError(f"outcomes models names {unknown[:5]} that are not in the pool {list(pool.names)}")
    index = {n: i for i, n in enumerate(pool.names)}
    return np.array([index[m] for m in names], np.int64), 1.0 - correct


def clopper_pearson(errors: np.ndarray, n: np.ndarray, level: float) -> tuple[np.ndarray, np.ndarray]:
    """Exact binomial interval of a rate with `errors` of `n` (float counts allowed; nan where n == 0)."""
    tail = (1.0 - level) / 2.0
    e, n = np.asarray(errors, np.float64), np.asarray(n, np.float64)
    seen = n > 0
    # Beta(e, n - e + 1) and Beta(e + 1, n - e) quantiles; the ends are exactly 0 and 1 when e = 0 or n.
    safe = lambda v: np.where(seen, np.maximum(v, 1e-12), 1.0)
    lo = np.asarray(_beta_quantile(jnp.asarray(safe(e), jnp.float32), jnp.asarray(safe(n - e + 1), jnp.float32),
                                   jnp.float32(tail)), np.float64)
    hi = np.asarray(_beta_quantile(jnp.asarray(safe(e + 1), jnp.float32), jnp.asarray(safe(n - e), jnp.float32),
                                   jnp.float32(1.0 - tail)), np.float64)
    lo = np.where(e <= 0, 0.0, lo)
    hi = np.where(e >= n, 1.0, hi)
    return np.where(seen, lo, np.nan), np.where(seen, hi, np.nan)


def drift_report(router, pool, served: ArrayLike, validation_prompts: ArrayLike, *,
                 outcomes: tuple[str | Sequence[str], ArrayLike] | None = None, psi_threshold: float = 0.2,
                 alpha: float = 0.05, level: float = 0.95, eps: float = 1e-4) -> DriftReport:
    """Served traffic against the validation set: cluster mix and per-(LLM, cluster) calibration.

    Args:
      router: a fitted `UniRouter`.
      pool: a `Pool` represented by `router` (its `psi` are the estimates checked).
      served: the served prompts: embeddings `[n_served, dim]` or cluster ids `[n_served]`.
      validation_prompts: the validation prompts the pool was estimated on, the same way
        (`[n_val, dim]` or `[n_val]`).
      outcomes: optional `(models, correct)`: the LLM that answered each served request (a pool
        name, or `[n_served]` names) and the quality of its answer in [0, 1] (`[n_served]`; nan for
        a request without an outcome).
      psi_threshold: PSI from which the mix counts as moved (0.2 by the usual rule).
      alpha: significance level of the chi-square test and of the per-cluster residuals.
      level: probability of the per-cell intervals of the observed error, in (0, 1).
      eps: floor of a share inside the PSI's logarithm, > 0.

    Returns:
      `DriftReport`.

    Raises:
      ValueError: a bad shape, a cluster id out of range, an unknown model, a value out of range.

    Example:
      >>> rep = drift_report(router, pool, served_x, val_x)      # doctest: +SKIP
      >>> rep.psi, rep.p_value, np.flatnonzero(rep.cluster_moved)  # doctest: +SKIP
    """
    router.check_pool(pool)
    psi_threshold = validation.nonnegative_float(psi_threshold, "psi_threshold")
    for value, name in ((alpha, "alpha"), (level, "level")):
        if not 0.0 < validation.nonnegative_float(value, name) < 1.0:
            raise ValueError(f"{name} must be in (0, 1), got {value}")
    if not validation.nonnegative_float(eps, "eps") > 0.0:
        raise ValueError(f"eps must be > 0, got {eps}")
    k = router.n_clusters
    s_cl = _clusters(served, "served", router)
    v_cl = _clusters(validation_prompts, "validation_prompts", router)
    s_n = np.bincount(s_cl, minlength=k).astype(np.float64)
    v_n = np.bincount(v_cl, minlength=k).astype(np.float64)
    s_mix, v_mix = s_n / s_n.sum(), v_n / v_n.sum()

    s_f, v_f = np.maximum(s_mix, eps), np.maximum(v_mix, eps)
    terms = (s_f - v_f) * np.log(s_f / v_f)

    # Homogeneity of the 2 x K table over the clusters seen in either sample.
    seen = (s_n + v_n) > 0
    table = np.stack([s_n[seen], v_n[seen]])  # [2, n_seen]
    total = table.sum()
    rows, cols = table.sum(1, keepdims=True), table.sum(0, keepdims=True)
    expected = rows * cols / total
    chi2 = float(((table - expected) ** 2 / expected).sum())
    dof = int(seen.sum()) - 1
    p_value = float(gammaincc(dof / 2.0, chi2 / 2.0)) if dof > 0 else 1.0
    residuals = np.zeros(k)
    scale = np.sqrt(expected[0] * (1 - rows[0, 0] / total) * (1 - cols[0] / total))
    residuals[seen] = np.where(scale > 0, (table[0] - expected[0]) / np.where(scale > 0, scale, 1.0), 0.0)
    z = float(ndtri(1.0 - alpha / (2.0 * k)))
    cluster_moved = np.abs(residuals) > z

    m = len(pool)
    n_out, err_sum = np.zeros((m, k)), np.zeros((m, k))
    if outcomes is not None:
        rows_m, errors = _outcomes(outcomes, pool, s_cl.shape[0])
        has = ~np.isnan(errors)
        np.add.at(n_out, (rows_m[has], s_cl[has]), 1.0)
        np.add.at(err_sum, (rows_m[has], s_cl[has]), errors[has])
    observed = np.where(n_out > 0, err_sum / np.maximum(n_out, 1.0), np.nan)
    lower, upper = clopper_pearson(err_sum, n_out, level)
    estimate = np.asarray(pool.psi, np.float64)
    with np.errstate(invalid="ignore"):
        miscalibrated = (n_out > 0) & ((estimate < lower) | (estimate > upper))
    return DriftReport(s_n, v_n, s_mix, v_mix, float(terms.sum()), terms, chi2, dof, p_value, residuals,
                       cluster_moved, bool(terms.sum() >= psi_threshold and p_value < alpha), tuple(pool.names),
                       estimate, n_out, observed, lower, upper, miscalibrated, psi_threshold, float(alpha),
                       float(level))


def plot_drift(report: DriftReport, path: str | Path) -> Path:
    """Writes one PNG: the cluster mix (validation vs served, moved clusters marked) and the calibration.

    Left: each cluster's share of the validation prompts and of the served requests, with the
    PSI and the test in the title. Right (when there are outcomes): each (LLM, cluster) cell's
    observed error with its interval against the pool's estimate; flagged cells in red.
    """
    from uniroute_jax._src.plots import _pyplot, save_figure

    plt = _pyplot()
    with_cal = bool((report.n_outcomes > 0).any())
    fig, axes = plt.subplots(1, 2 if with_cal else 1, figsize=(11 if with_cal else 6.5, 4.2), squeeze=False)
    ax = axes[0, 0]
    k = report.served_mix.shape[0]
    x = np.arange(k)
    ax.bar(x - 0.2, report.validation_mix, 0.4, color="tab:gray", label="validation")
    ax.bar(x + 0.2, report.served_mix, 0.4, color=np.where(report.cluster_moved, "tab:red", "tab:blue"),
           label="served (red: moved)")
    ax.set_xlabel("cluster")
    ax.set_ylabel("share of prompts")
    ax.set_xticks(x if k <= 30 else x[:: max(k // 15, 1)])
    ax.set_title(f"cluster mix: PSI {report.psi:.3f}, p = {report.p_value:.2g}" +
                 (" (moved)" if report.mix_moved else ""), fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, axis="y")
    if with_cal:
        ax = axes[0, 1]
        m_idx, k_idx = np.nonzero(report.n_outcomes > 0)
        est = report.estimate[m_idx, k_idx]
        obs = report.observed_error[m_idx, k_idx]
        err = np.stack([obs - report.error_lower[m_idx, k_idx], report.error_upper[m_idx, k_idx] - obs])
        bad = report.miscalibrated[m_idx, k_idx]
        for flag, colour, label in ((False, "tab:blue", "within interval"), (True, "tab:red", "flagged")):
            sel = bad == flag
            if sel.any():
                ax.errorbar(est[sel], obs[sel], yerr=err[:, sel], fmt="o", ms=3, color=colour, lw=0.8, label=label)
        ax.plot([0, 1], [0, 1], color="black", lw=0.8, ls="--")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_xlabel("pool's estimate of the error")
        ax.set_ylabel(f"observed error on served outcomes ({100 * report.level:g}% interval)")
        ax.set_title(f"calibration: {int(bad.sum())} of {bad.size} (LLM, cluster) cells flagged", fontsize=10)
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    return save_figure(fig, path)
