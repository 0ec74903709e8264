"""Online learning of a new LLM (`uniroute_jax.replay_online`): Thompson's regret is sublinear, greedy's can stall.

Setting. An instance is a table known exactly: requests fall i.i.d. into `n_clusters` clusters with
mixture weights `w`, and LLM `h` errs on a request of cluster `k` with probability `e[k, h]` (its
outcome is Bernoulli: `replay_online` draws it from `quality = 1 - e`). The first `n_established`
LLMs are represented with many labels: the `prior` estimator is fitted on `n_labels` labels per
cluster each (`error_sums = round(n_labels e)`), and their pool rows are their true errors, so the
regret below measures the learning of the new LLM alone. The last LLM is new, with zero labels:
its estimate and Beta posterior come from the estimator's per-LLM kernel applied to the outcomes
it is served.

Regret is measured against the oracle that knows every true error, with `lam = 0` (the replay's
`lams`): the oracle serves `argmin_h e[k, h]` on cluster `k`, ties to the cheaper LLM (the same
tie-break as the policies'). The (pseudo-)regret after `T` requests is

    regret(T) = sum_{t <= T} e[k_t, a_t] - e[k_t, o(k_t)]     (>= 0 term by term)

with the expected error of the served LLM `a_t`, not its Bernoulli outcome: the outcomes are the
learner's information, not the quantity compared. The policies do not depend on the horizon, so
one stream of `T_max` requests gives the regret at every `T` of the grid (its prefix sums).

Instances. `"generic"`: `logit P(correct | k, h) = skill_h - difficulty_k + noise_kh`, with
`skill ~ N(0.9, 0.5^2)`, `difficulty ~ N(0, 1)`, `noise ~ N(0, 0.7^2)`, the new LLM drawn like the
others, costs log-uniform in [0.1, 1] and `w ~ Dirichlet(2)`. `"stall"` (planted): the same, then
the new LLM's row is set to `best incumbent - stall_gap` (at least 0.01) on `n_better` clusters
and to `worst incumbent + stall_gap` (at most 0.99) elsewhere. With zero labels the estimator's mean for the new LLM is
the population's (about the established LLMs' average), which is above the best incumbent on
every cluster, so greedy, deciding on that mean, never serves the new LLM, never sees an outcome,
and pays `stall_gap` on every request of the `n_better` clusters: linear regret. The study
records that margin (`prior_margin`: min over clusters of the prior mean less the best
incumbent's error) per instance. Instances whose `prior` fit falls back to the `shrinkage` rule
(`Estimator.used`) are skipped and counted (`n_skipped`): the study is about the population prior.

Checks (slopes of `log(mean regret over streams)` against `log T` with a 95% bootstrap interval
over streams, `pacing.fit_slope`):
* Thompson's regret is sublinear on the generic and on the stall instances: the whole interval
  lies below `1 - SLOPE_TOL` (theorems: they gate the exit status);
* greedy stalls on the stall instances: it serves the new LLM on no request and the interval of
  its slope lies above `1 - SLOPE_TOL` (a finding, reported).
Planted, each must fail the sublinear check: greedy itself, and Thompson with an **overconfident
posterior**: a copy of the fitted estimator whose parameters claim a near-certain population
prior (`overconfident`: the LLM's factor precision and the support cap multiplied by
`overconfidence`, the clusters' factor covariance zeroed, all prior mass on `tau = 0`). Its Beta
posterior at zero labels sits within about 0.01 of the population mean, with thousands of
pseudo-labels, so Thompson's draws rarely cross the best incumbent and the few outcomes it gets
cannot move the posterior: it stalls like greedy.

    python -m theory.online --out theory/results [--quick]   # this study only, merged into summary.*
"""

from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path
from typing import Any, NamedTuple

import jax.numpy as jnp
import numpy as np

import uniroute_jax as ur
from theory.summary_merge import merge_study, study_main
from theory.pacing import fit_slope
from uniroute_jax._src.estimators import TAU_GRID, Estimator

SLOPE_TOL = 0.1
"""The sublinear check holds when the whole 95% bootstrap interval of the slope lies below
`1 - SLOPE_TOL`. A margin below 1 because a stalled policy is linear only after its last early
try of the new LLM: over a finite grid its fitted slope sits a little under 1 (0.95-1.0), while
Thompson's regret, logarithmic in `T` after an early linear phase, fits slopes near 0.4."""

FAMILIES = ("generic", "stall")
VARIANTS = ("thompson", "greedy", "overconfident")
PLANTED = {"greedy": "greedy (no exploration)", "overconfident": "Thompson, overconfident posterior"}


@dataclasses.dataclass(frozen=True)
class OnlineConfig:
    """Sizes of one study."""

    horizons: tuple[int, ...]  # T on a log grid; streams have max(horizons) requests
    n_instances: int  # tables per family
    n_seeds: int  # streams per (instance, variant)
    n_clusters: int = 8
    n_established: int = 6
    n_labels: int = 400  # labels per cluster of each established LLM
    n_better: int = 3  # stall instances: clusters where the new LLM is truly best
    stall_gap: float = 0.12  # stall instances: its advantage there (and its handicap elsewhere)
    overconfidence: float = 1e4  # planted: factor on the prior's precision and support
    n_boot: int = 1000  # bootstrap resamples of the slope intervals


FULL = OnlineConfig(horizons=tuple(int(t) for t in np.round(np.geomspace(1e2, 1e4, 9))), n_instances=6, n_seeds=6)
QUICK = OnlineConfig(horizons=(30, 100, 300, 1000), n_instances=2, n_seeds=3, n_boot=300)


# ------------------------------------------------------------------------------ instances


class OnlineInstances(NamedTuple):
    """Tables with known errors; the last LLM is the new one. float64 copies of the float32 values
    the replay sees."""

    weights: np.ndarray  # [n_instances, n_clusters] mixture weights of the request clusters
    errors: np.ndarray  # [n_instances, n_clusters, n_models] P(error | cluster, model)
    costs: np.ndarray  # [n_instances, n_models]


def _f32(x) -> np.ndarray:
    return np.asarray(x, np.float32).astype(np.float64)


def sample_instances(rng: np.random.Generator, n_instances: int, *, family: str = "generic", n_clusters: int = 8,
                     n_established: int = 6, n_better: int = 3, stall_gap: float = 0.12) -> OnlineInstances:
    """Draws tables (the module docstring gives the generator); `family` is "generic" or "stall"."""
    if family not in FAMILIES:
        raise ValueError(f"family must be one of {FAMILIES}, got {family!r}")
    if n_instances < 1 or n_clusters < 1 or n_established < 2:
        raise ValueError(f"need n_instances >= 1, n_clusters >= 1, n_established >= 2; got {n_instances}, "
                         f"{n_clusters}, {n_established}")
    if family == "stall" and not 1 <= n_better < n_clusters:
        raise ValueError(f"n_better must be in [1, n_clusters), got {n_better}")
    m = n_established + 1
    w = _f32(rng.dirichlet(np.full(n_clusters, 2.0), size=n_instances))
    w /= w.sum(axis=1, keepdims=True)
    logit = (rng.normal(0.9, 0.5, (n_instances, 1, m)) - rng.normal(0.0, 1.0, (n_instances, n_clusters, 1))
             + rng.normal(0.0, 0.7, (n_instances, n_clusters, m)))
    e = 1.0 / (1.0 + np.exp(logit))
    if family == "stall":
        inc = e[:, :, :n_established]
        better = np.argsort(rng.random((n_instances, n_clusters)), axis=1) < n_better
        e[:, :, -1] = np.where(better, np.maximum(inc.min(axis=2) - stall_gap, 0.01),
                               np.minimum(inc.max(axis=2) + stall_gap, 0.99))
    c = _f32(np.exp(rng.uniform(np.log(0.1), 0.0, (n_instances, m))))
    return OnlineInstances(w, _f32(e), c)


def oracle_errors(errors: np.ndarray, costs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`(choice [..., K], error [..., K])` of the oracle: the truly best LLM per cluster (`lam = 0`),
    ties to the cheaper, then the lower index.

    Args:
      errors: [..., K, M] true errors; costs: [..., M].
    """
    e = np.asarray(errors, np.float64)
    c = np.broadcast_to(np.asarray(costs, np.float64)[..., None, :], e.shape)
    # Among the minimisers the cheapest; argmin's first hit is the lower index among equal costs.
    choice = np.argmin(np.where(e == e.min(axis=-1, keepdims=True), c, np.inf), axis=-1)
    return choice, np.take_along_axis(e, choice[..., None], axis=-1)[..., 0]


def cumulative_regret(errors: np.ndarray, costs: np.ndarray, clusters: np.ndarray, choices: np.ndarray,
                      horizons) -> np.ndarray:
    """`[n_horizons, n_streams]` regret of each stream after each `T`: the prefix sums of
    `e[k_t, a_t] - e[k_t, o(k_t)]` (module docstring).

    Args:
      errors: [K, M] true errors of one instance; costs: [M].
      clusters: [n_streams, T_max] each request's cluster; choices: same shape, the LLM served.
      horizons: T values, each <= T_max.
    """
    e = np.asarray(errors, np.float64)
    z, a = np.asarray(clusters), np.asarray(choices)
    if z.shape != a.shape or z.ndim != 2:
        raise ValueError(f"clusters and choices must have the same [n_streams, T] shape, got {z.shape}, {a.shape}")
    hs = np.asarray(horizons, np.int64)
    if hs.ndim != 1 or hs.size == 0 or hs.min() < 1 or hs.max() > z.shape[1]:
        raise ValueError(f"horizons must be in [1, {z.shape[1]}], got {hs.tolist()}")
    _, best = oracle_errors(e, costs)
    gap = e[z, a] - best[z]
    return np.cumsum(gap, axis=1)[:, hs - 1].T


# ------------------------------------------------------------------------------ estimators


def fit_prior(errors: np.ndarray, n_labels: int) -> Estimator:
    """The `prior` estimator fitted on the established LLMs (every column but the last), with
    `n_labels` labels per cluster each and their true error rates among them."""
    e = np.asarray(errors, np.float64)[:, :-1].T  # [n_established, K]
    counts = np.full(e.shape, float(n_labels))
    return ur.fit_estimator("prior", counts, np.round(counts * e))


def overconfident(estimator: Estimator, factor: float) -> Estimator:
    """A copy whose posterior is overconfident in the population prior (planted; the module
    docstring): with zero labels its Beta has about `min(3000, factor x support)` pseudo-labels."""
    p = estimator.params
    spike = jnp.where(jnp.arange(TAU_GRID.size) == 0, 0.0, -1e9).astype(p.tau_weights.dtype)
    return Estimator(estimator.method, p._replace(v_precision=p.v_precision * factor, factor_cov=p.factor_cov * 0.0,
                                                  support=p.support * factor, tau_weights=spike))


# ------------------------------------------------------------------------------ experiment


def replay_instance(errors: np.ndarray, costs: np.ndarray, weights: np.ndarray, estimator: Estimator,
                    policies, rng: np.random.Generator, horizons) -> dict[str, np.ndarray]:
    """Replays one stream per entry of `policies` (one jitted call) and measures each.

    Returns `regret [n_horizons, n_settings]`, `new_share [n_settings]` (share of the `T_max`
    requests served by the new LLM), and the streams' `clusters` and `choice` (`[n_settings, T_max]`).
    """
    k, m = errors.shape
    t_max = int(max(horizons))
    n = len(policies)
    z = rng.choice(k, size=(n, t_max), p=weights)
    new = np.zeros((n, m), bool)
    new[:, -1] = True
    out = ur.replay_online(estimator, errors.T, costs, 1.0 - errors, np.arange(k), z, new,
                           seeds=rng.integers(0, 2**31 - 1, n), policies=list(policies), lams=0.0)
    choice = np.asarray(out.choice)
    return {"regret": cumulative_regret(errors, costs, z, choice, horizons),
            "new_share": (choice == m - 1).mean(axis=1), "clusters": z, "choice": choice}


def run_family(inst: OnlineInstances, config: OnlineConfig, rng: np.random.Generator, log=print,
               label: str = "") -> dict[str, Any]:
    """Every variant on the first `config.n_instances` instances whose `prior` estimator uses the
    population prior (its fit falls back to `shrinkage` when the prior does not predict held-out
    LLMs better; those are skipped and counted): `{variant: {"regret": [n_h, n_streams],
    "new_share": [n_streams], "instance": [n_streams]}, "prior_margin": [n_used], "n_skipped": int}`.

    Two replay calls per instance of `2 n_seeds` settings each (one compile serves them all): the
    fitted estimator with Thompson and greedy, the overconfident copy with Thompson.
    """
    out: dict[str, Any] = {v: {"regret": [], "new_share": [], "instance": []} for v in VARIANTS}
    margins = []
    s = config.n_seeds
    t0 = time.time()
    skipped = 0
    for i, (w, e, c) in enumerate(zip(*inst)):
        if len(margins) == config.n_instances:
            break
        est = fit_prior(e, config.n_labels)
        if est.used != "prior":
            skipped += 1
            continue
        zero = np.zeros((1, e.shape[0]))
        margins.append(float(np.min(est.estimate(zero, zero)[0] - e[:, :-1].min(axis=1))))
        real = replay_instance(e, c, w, est, ["thompson"] * s + ["greedy"] * s, rng, config.horizons)
        bad = replay_instance(e, c, w, overconfident(est, config.overconfidence), ["thompson"] * (2 * s), rng,
                              config.horizons)
        parts = {"thompson": (real, slice(0, s)), "greedy": (real, slice(s, 2 * s)),
                 "overconfident": (bad, slice(0, s))}
        for v, (res, sl) in parts.items():
            out[v]["regret"].append(res["regret"][:, sl])
            out[v]["new_share"].append(res["new_share"][sl])
            out[v]["instance"].append(np.full(s, i))
        log(f"online {label} instance {len(margins)}/{config.n_instances} done ({time.time() - t0:.0f} s)")
    if len(margins) < config.n_instances:
        raise RuntimeError(f"only {len(margins)} of {len(inst.weights)} instances kept the population prior")
    for v in VARIANTS:
        out[v] = {"regret": np.concatenate(out[v]["regret"], axis=1), "new_share": np.concatenate(out[v]["new_share"]),
                  "instance": np.concatenate(out[v]["instance"])}
    out["prior_margin"] = np.asarray(margins)
    out["n_skipped"] = skipped
    return out


def summarise(runs: dict[str, Any], horizons, rng: np.random.Generator, n_boot: int) -> dict[str, Any]:
    """JSON-ready: per variant, mean regret per T, its standard error, the slope fit and the new
    LLM's traffic."""
    out = {"prior_margin": [float(x) for x in runs["prior_margin"]], "n_skipped": int(runs["n_skipped"])}
    for v in VARIANTS:
        reg = runs[v]["regret"]
        n = reg.shape[1]
        out[v] = {"n_streams": n,
                  "mean_regret": [float(x) for x in reg.mean(axis=1)],
                  "se_regret": [float(x) for x in reg.std(axis=1, ddof=min(1, n - 1)) / np.sqrt(n)],
                  "regret_slope": fit_slope(horizons, reg, rng, n_boot)._asdict(),
                  "new_share_mean": float(runs[v]["new_share"].mean()),
                  "new_share_max": float(runs[v]["new_share"].max()),
                  "streams_never_new": int(np.sum(runs[v]["new_share"] == 0))}
    return out


def run_study(config: OnlineConfig, seed: int = 0, log=print) -> dict[str, Any]:
    """Both families, every variant. Returns the JSON-ready summary: `settings` and
    `families` (`family -> summarise entry`)."""
    t0 = time.time()
    rng = np.random.default_rng((seed, 33))
    fams = {}
    for fam in FAMILIES:
        inst = sample_instances(rng, 3 * config.n_instances, family=fam, n_clusters=config.n_clusters,
                                n_established=config.n_established, n_better=config.n_better,
                                stall_gap=config.stall_gap)
        fams[fam] = summarise(run_family(inst, config, rng, log, fam), config.horizons, rng, config.n_boot)
    return {"settings": {**dataclasses.asdict(config), "seed": seed, "slope_tol": SLOPE_TOL,
                         "mode": {QUICK: "quick", FULL: "full"}.get(config, "custom"), "lam": 0.0},
            "families": fams, "wall_seconds": time.time() - t0}


# ------------------------------------------------------------------------------ verdicts


def _sublinear(check: str, theorem: bool, fit: dict[str, Any]) -> dict[str, Any]:
    """Holds when the whole 95% interval of the slope lies below `1 - SLOPE_TOL` (margin: the
    limit minus the interval's high end)."""
    limit = 1.0 - SLOPE_TOL
    if fit["slope"] is None:
        return {"check": check, "theorem": theorem, "holds": True, "margin": limit,
                "detail": f"mean regret positive at only {fit['n_points']} horizons (nothing grows)"}
    margin = limit - fit["high"]
    return {"check": check, "theorem": theorem, "holds": bool(margin >= 0), "margin": float(margin),
            "detail": f"log mean regret vs log T: slope {fit['slope']:.3f} [95% {fit['low']:.3f}, "
                      f"{fit['high']:.3f}], limit {limit:g}"}


def check(p: dict[str, Any], variant: str, *, theorem: bool = True, label: str = "") -> list[dict[str, Any]]:
    """The sublinear-regret verdicts of one variant on both families (holds when margin >= 0)."""
    return [_sublinear(f"Online learning{label}: regret sublinear in T, {fam} instances", theorem,
                       p["families"][fam][variant]["regret_slope"]) for fam in FAMILIES if fam in p["families"]]


def stall_verdict(p: dict[str, Any]) -> dict[str, Any]:
    """Greedy stalls on the planted stall instances: no request served by the new LLM and the whole
    interval of its regret slope at or above `1 - SLOPE_TOL` (margin: the smaller of the interval's
    low end less the limit and, when the new LLM was served, minus its share)."""
    g = p["families"]["stall"]["greedy"]
    fit = g["regret_slope"]
    limit = 1.0 - SLOPE_TOL
    low = -np.inf if fit["slope"] is None else fit["low"]
    margin = min(low - limit, 0.0 - g["new_share_max"])
    return {"check": "Online learning: greedy never serves the new LLM on the stall instances and its regret "
                     "is linear", "theorem": False, "holds": bool(margin >= 0), "margin": float(margin),
            "detail": f"largest share served by the new LLM {g['new_share_max']:.3g}; slope "
                      + ("n/a" if fit["slope"] is None else f"{fit['slope']:.3f} [95% {fit['low']:.3f}, "
                         f"{fit['high']:.3f}]") + f", limit {limit:g}"}


def verdicts(p: dict[str, Any]) -> list[dict[str, Any]]:
    """Thompson's verdicts (theorems: they gate the exit status) and greedy's stall (reported)."""
    return check(p, "thompson") + [stall_verdict(p)]


def planted_verdicts(p: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """`variant -> verdicts` of greedy and the overconfident posterior (each should fail one)."""
    return {v: check(p, v, label=f" [{PLANTED[v]}]") for v in PLANTED}


# ------------------------------------------------------------------------------ report


def _fit(fit):
    return "n/a" if fit["slope"] is None else f"{fit['slope']:.2f} [{fit['low']:.2f}, {fit['high']:.2f}]"


def summary_lines(p: dict[str, Any]) -> list[str]:
    """The study's section of `summary.md`."""
    st = p["settings"]
    hs = st["horizons"]
    lines = ["## Online learning of a new LLM (`theory/online.py`)", "",
             f"T in {list(hs)} (prefixes of one stream of {hs[-1]} requests); {st['n_instances']} instances per "
             f"family x {st['n_seeds']} streams per variant; {st['n_clusters']} clusters, {st['n_established']} "
             f"established LLMs ({st['n_labels']} labels per cluster each) and one new LLM with none; `prior` "
             f"estimator; lam = 0 (cost breaks ties). Regret against the oracle that knows the true errors; slope "
             f"limit 1 - {st['slope_tol']:g}; intervals: 95% bootstrap over streams. Stall instances: the new LLM "
             f"is {st['stall_gap']:g} better than the best incumbent on {st['n_better']} clusters, "
             f"{st['stall_gap']:g} worse than the worst elsewhere. Planted overconfident posterior: prior precision "
             f"and support x {st['overconfidence']:g}.", "",
             "| instances | policy | regret slope | mean regret at T = "
             f"{hs[0]} / {hs[-1]} | share served by the new LLM | streams never serving it |",
             "|---|---|---|---|---|---|"]
    names = {"thompson": "Thompson", **PLANTED}
    for fam, f in p["families"].items():
        for v in VARIANTS:
            g = f[v]
            lines.append(f"| {fam} | {names[v]} | {_fit(g['regret_slope'])} | {g['mean_regret'][0]:.2f} / "
                         f"{g['mean_regret'][-1]:.1f} | {g['new_share_mean']:.3f} | "
                         f"{g['streams_never_new']} / {g['n_streams']} |")
    margins = {fam: min(f["prior_margin"]) for fam, f in p["families"].items()}
    lines += ["", "Smallest (prior mean of the new LLM - best incumbent's error) over clusters and instances "
              "(> 0: greedy cannot try it): " + "; ".join(f"{k} {v:+.3f}" for k, v in margins.items()) + ". "
              "Instances skipped because the `prior` fit fell back to `shrinkage`: "
              + "; ".join(f"{k} {f.get('n_skipped', 0)}" for k, f in p["families"].items()) + ".", "",
              "Planted (the sublinear check must fail on each):", "",
              "| variant | failing checks |", "|---|---|"]
    for v, vs in planted_verdicts(p).items():
        failed = [x["check"].split(": ", 1)[1] for x in vs if not x["holds"]]
        lines.append(f"| {PLANTED[v]} | {'; '.join(failed) if failed else 'NONE (the checks missed it)'} |")
    lines += ["", f"Online learning study: {st.get('mode', '?')} run, seed {st['seed']}, "
              f"{p.get('wall_seconds', float('nan')):.0f} s.", ""]
    return lines


def plot(p: dict[str, Any], path: str | Path) -> None:
    """Log-log mean regret against T per policy, one panel per family, with `c T` and `c sqrt(T)` lines."""
    import matplotlib  # noqa: PLC0415  (only the figure needs it)

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    t = np.asarray(p["settings"]["horizons"], np.float64)
    style = {"thompson": ("Thompson", dict(color="tab:blue", lw=2)),
             "greedy": ("greedy", dict(color="tab:red", ls="-.")),
             "overconfident": ("planted: Thompson, overconfident posterior", dict(color="tab:orange", ls="--"))}
    fams = list(p["families"])
    fig, axes = plt.subplots(1, len(fams), figsize=(6.2 * len(fams), 5), squeeze=False)
    for ax, fam in zip(axes[0], fams):
        f = p["families"][fam]
        for v, (label, kw) in style.items():
            y = np.asarray(f[v]["mean_regret"])
            ax.plot(t, np.where(y > 0, y, np.nan), marker="o", ms=3,
                    label=f"{label} (slope {_fit(f[v]['regret_slope'])})", **kw)
        top = max(max(f[v]["mean_regret"]) for v in VARIANTS)
        ax.plot(t, top * t / t[-1], color="black", lw=1, label="c T")
        ax.plot(t, top * np.sqrt(t / t[-1]), color="0.5", lw=1, ls=":", label="c sqrt(T)")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("T (requests)")
        ax.set_title(f"{fam} instances\nmean regret over streams; points <= 0 not drawn")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    axes[0][0].set_ylabel("regret against the oracle (log scale)")
    fig.suptitle("Online learning of a new LLM with zero labels (prior estimator, lam = 0)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ------------------------------------------------------------------------------ command


def merge_into(out_dir: str | Path, p: dict[str, Any]) -> dict[str, Any]:
    """Puts the study into `out_dir/summary.json` (written by `theory.plots`) and `summary.md`
    (`summary_merge.merge_study`; a summary from an older `theory.plots` gets only this study's
    verdicts and section renewed)."""
    return merge_study(out_dir, "online", p, verdicts=verdicts, summary_lines=summary_lines, check_prefix="Online learning",
                       name="online")


def main(argv=None) -> int:
    return study_main(argv,
                      description="Regret of online learning of a new LLM against T.",
                      quick_help="T up to 1e3, fewer instances and streams",
                      run=lambda quick, seed: run_study(QUICK if quick else FULL, seed), plot=plot,
                      figure="online_regret.png", merge_into=merge_into, summary_lines=summary_lines)


if __name__ == "__main__":
    sys.exit(main())
