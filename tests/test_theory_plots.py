"""The one-command run of the theory package (`uniroute theory --quick`, `python -m theory.plots`)."""

import dataclasses
import json

import jax
import numpy as np
import pytest

from theory import bayes, bounds, plots
from uniroute_jax._src.cli import main as cli_main

FIGURES = ("frontier.png", "prop1_check.png", "prop2_vs_heterogeneity.png", "prop2_vs_k.png", "prop2_scatter.png",
           "prop2_vs_nval.png", "finite_sample_coverage.png", "pacing_regret.png", "online_regret.png")


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("theory")
    code = cli_main(["theory", "--quick", "--out", str(out)])
    return code, out, json.loads((out / "summary.json").read_text())


@pytest.mark.slow
def test_quick_run_writes_figures_and_its_numbers_back_the_theory(quick_run):
    code, out, s = quick_run
    for name in FIGURES + ("summary.json", "summary.md"):
        assert (out / name).stat().st_size > 0, name

    # Proposition 1: the lambda sweep lies on the exact LP frontier and nothing beats it.
    dyn = s["prop1"]["dynamic_pools"]
    assert dyn["max_abs_frontier_gap"] < 1e-6 and dyn["max_abs_dual_gap"] < 1e-6
    assert dyn["n_routers_beating_frontier"] == 0
    assert dyn["split_budget_min_extra_error"] >= -1e-12
    assert all(i["max_abs_frontier_gap"] < 1e-6 for i in s["prop1"]["instances"])

    # Proposition 2: the proven readings hold on every instance; excess is never negative.
    p2 = s["prop2"]
    for reading in ("one_sided", "range_bound", "corrected"):
        assert p2["all"][reading]["hold_rate"] == 1.0, reading
    assert p2["min_excess_over_lambda"] >= 0.0
    assert p2["zero_heterogeneity_true_clusters_max_excess"] <= 1e-5

    # Finite-sample bound: holds at least 1 - delta of the time, and the deterministic form always.
    for n_val, v in s["finite_sample"]["by_n_val"].items():
        for delta, cov in v["coverage"].items():
            assert cov >= 1 - float(delta), (n_val, delta)
        assert v["oracle_bound_holds"] == 1.0


@pytest.mark.slow
def test_quick_run_has_a_verdict_per_check_and_exits_zero_when_the_theorems_hold(quick_run):
    code, out, s = quick_run
    assert code == 0
    checks = {v["check"]: v for v in s["verdicts"]}
    assert len(checks) == len(s["verdicts"]) >= 12
    assert all(v["holds"] for v in s["verdicts"] if v["theorem"])
    # The paper's own readings are verdicts too, but not theorems.
    paper = [v for name, v in checks.items() if name.startswith("Proposition 2, paper")]
    assert len(paper) == 2 and not any(v["theorem"] for v in paper)
    md = (out / "summary.md").read_text()
    assert "## Verdicts" in md and "Every theorem check holds." in md


def _sign_flipped_bayes_choices():
    """A planted bug: the 'Bayes' router adds `-lambda * cost`, so it buys the dearer model as lambda grows."""
    return jax.jit(jax.vmap(lambda lam, p, c, m: bayes.bayes_choice(p, c, m, -lam), in_axes=(0, None, None, None)))


@pytest.mark.slow
def test_quick_run_exits_non_zero_on_a_planted_proposition1_violation(quick_run, tmp_path, monkeypatch, capsys):
    flipped = _sign_flipped_bayes_choices()
    monkeypatch.setattr(bayes, "bayes_choices", lambda p, c, m, lams: flipped(lams, p, c, m))
    code = cli_main(["theory", "--quick", "--out", str(tmp_path)])
    assert code == 1
    s = json.loads((tmp_path / "summary.json").read_text())
    failed = {v["check"] for v in plots.failed_theorems(s)}
    assert "Proposition 1: the lambda sweep lies on the exact LP frontier (dynamic pools)" in failed
    assert all(name.startswith("Proposition 1") for name in failed)
    assert "FAILS: Proposition 1" in capsys.readouterr().err
    assert "theorem check(s) fail" in (tmp_path / "summary.md").read_text()


def _summary_with(prop1_gap=0.0, paper_margin=0.1):
    """The smallest summary `verdicts` reads, every check holding unless told otherwise."""
    reading = {"hold_rate": 1.0, "min_margin": 0.1, "median_ratio": 2.0, "min_ratio": 1.5}
    readings = {r: dict(reading) for r in plots.READINGS}
    readings["paper_own"] = dict(reading, min_margin=paper_margin, hold_rate=1.0 if paper_margin >= 0 else 0.9)
    return {
        "prop1": {"instances": [{"heterogeneity": 0.0, "max_abs_frontier_gap": 1e-9, "max_abs_dual_gap": 1e-9}],
                  "dynamic_pools": {"max_abs_frontier_gap": prop1_gap, "max_abs_dual_gap": 1e-9,
                                    "random_routers_min_gap": 0.3, "perturbed_bayes_min_gap": 0.01,
                                    "n_routers_beating_frontier": 0, "split_budget_min_extra_error": 0.0}},
        "prop2": {"all": dict(readings, n_instances=10), "min_excess_over_lambda": 0.0,
                  "zero_heterogeneity_true_clusters_max_excess": 0.0},
        "finite_sample": {"oracle_bound_min_margin": 0.05, "min_coverage_minus_tolerance": 0.02,
                          "min_coverage_minus_nominal": 0.01},
    }


def test_verdicts_fail_a_theorem_only_when_its_margin_is_negative():
    ok = plots.verdicts(_summary_with())
    assert all(v["holds"] for v in ok)
    bad = plots.verdicts(_summary_with(prop1_gap=0.35))
    failed = plots.failed_theorems({"verdicts": bad})
    assert [v["check"] for v in failed] == ["Proposition 1: the lambda sweep lies on the exact LP frontier "
                                            "(dynamic pools)"]
    assert failed[0]["margin"] == pytest.approx(plots.PROP1_TOL - 0.35)
    # A failing paper reading is reported as failing, but is not a theorem.
    paper = plots.verdicts(_summary_with(paper_margin=-0.02))
    assert not plots.failed_theorems({"verdicts": paper})
    assert [v["holds"] for v in paper if v["check"].startswith("Proposition 2, paper, own")] == [False]


# Each theorem check, and a change to the smallest summary that violates just that check.
def _violate(path, value):
    def apply(s):
        *keys, last = path
        d = s
        for k in keys:
            d = d[k]
        d[last] = value
    return apply


THEOREM_VIOLATIONS = {
    "Proposition 1: the lambda sweep lies on the exact LP frontier (dynamic pools)":
        _violate(("prop1", "dynamic_pools", "max_abs_dual_gap"), 2e-6),
    "Proposition 1: the lambda sweep lies on the exact LP frontier (single pools)":
        _violate(("prop1", "instances", 0, "max_abs_frontier_gap"), 2e-6),
    "Proposition 1: no random or perturbed router beats the exact frontier":
        lambda s: s["prop1"]["dynamic_pools"].update(perturbed_bayes_min_gap=-1e-8, n_routers_beating_frontier=1),
    "Proposition 1: one shared lambda is no worse than splitting the budget per pool":
        _violate(("prop1", "dynamic_pools", "split_budget_min_extra_error"), -1e-6),
    "Proposition 2: the excess risk is never negative": _violate(("prop2", "min_excess_over_lambda"), -1e-3),
    "Proposition 2: no excess with zero heterogeneity and the true clusters":
        _violate(("prop2", "zero_heterogeneity_true_clusters_max_excess"), 1e-3),
    **{f"Proposition 2, {plots.READINGS[r]}": (lambda r: lambda s: s["prop2"]["all"][r].update(
        min_margin=-1e-3, hold_rate=0.99))(r) for r in ("one_sided", "range_bound", "corrected")},
    "Finite-sample bound, deterministic form: holds on every validation draw":
        _violate(("finite_sample", "oracle_bound_min_margin"), -1e-3),
    "Finite-sample bound: coverage >= 1 - delta (3 binomial standard errors)":
        lambda s: s["finite_sample"].update(min_coverage_minus_tolerance=-0.01, min_coverage_minus_nominal=-0.08),
}


def test_every_theorem_check_has_a_violation_below():
    theorems = [v["check"] for v in plots.verdicts(_summary_with()) if v["theorem"]]
    assert sorted(theorems) == sorted(THEOREM_VIOLATIONS)


@pytest.mark.parametrize("check", list(THEOREM_VIOLATIONS))
def test_each_violated_theorem_fails_its_verdict_and_the_run(check, tmp_path, monkeypatch, capsys):
    s = _summary_with()
    THEOREM_VIOLATIONS[check](s)
    s["verdicts"] = plots.verdicts(s)
    failed = plots.failed_theorems(s)
    assert [v["check"] for v in failed] == [check]  # that one, and no other
    assert failed[0]["margin"] < 0 and not failed[0]["holds"]
    # Both entry points exit 1 and name the failing check.
    monkeypatch.setattr(plots, "run_all", lambda out, **kw: s)
    assert plots.main(["--out", str(tmp_path), "--quick"]) == 1
    assert cli_main(["theory", "--quick", "--out", str(tmp_path)]) == 1
    assert capsys.readouterr().err.count(f"FAILS: {check}") == 2


# ------------------------------------------------------------- summaries of synthetic studies


def _finite_sample_study(rng, n_vals=(50, 200), n_inst=4, n_draws=25, deltas=(0.05, 0.1, 0.5)):
    """Arrays shaped as `run_finite_sample` returns them, the bound holding on every draw."""
    shape = (len(n_vals), n_inst, n_draws)
    excess = rng.uniform(0.0, 0.1, shape)
    bound = excess[..., None] + rng.uniform(0.01, 0.2, shape + (len(deltas),))
    return {"n_val": np.array(n_vals), "excess": excess, "excess_population": excess, "bound": bound,
            "bound_max": bound, "event": np.ones(bound.shape, bool), "oracle_bound": excess + 0.05}


def _coverage_margin_twin(fs, deltas):
    """Least over (N_val, delta) of coverage - (1 - delta) + 3 binomial standard errors, in NumPy."""
    out = np.inf
    for i in range(len(fs["n_val"])):
        for j, d in enumerate(deltas):
            held = fs["bound"][i, ..., j] >= fs["excess"][i] - bounds.HOLD_TOL
            out = min(out, held.mean() - (1 - d) + 3 * np.sqrt(d * (1 - d) / held.size))
    return out


def test_a_coverage_shortfall_in_the_finite_sample_study_fails_its_verdict():
    deltas = (0.05, 0.1, 0.5)
    run = dataclasses.replace(plots.QUICK, n_fs_instances=4, n_draws=25, n_vals=(50, 200), deltas=deltas)
    rng = np.random.default_rng(0)
    fs = _finite_sample_study(rng, deltas=deltas)
    s = _summary_with()
    s["finite_sample"] = plots.summarise_finite(fs, run)
    assert all(v["holds"] for v in plots.verdicts(s) if v["theorem"])
    # The bound misses the excess on 70 of the 100 draws at N_val = 200, delta = 0.5: coverage 0.3,
    # 0.2 below nominal and 0.05 below the three-standard-error tolerance.
    miss = rng.permutation(fs["excess"][1].size)[:70]
    b = fs["bound"][1, ..., 2].reshape(-1)
    b[miss] = fs["excess"][1].reshape(-1)[miss] - 1e-3
    fs["bound"][1, ..., 2] = b.reshape(fs["excess"][1].shape)
    s["finite_sample"] = plots.summarise_finite(fs, run)
    twin = _coverage_margin_twin(fs, deltas)
    assert twin == pytest.approx(0.3 - 0.5 + 3 * 0.05)
    assert s["finite_sample"]["min_coverage_minus_tolerance"] == pytest.approx(twin)
    failed = plots.failed_theorems({"verdicts": plots.verdicts(s)})
    assert [(v["check"], v["margin"]) for v in failed] == [
        ("Finite-sample bound: coverage >= 1 - delta (3 binomial standard errors)", pytest.approx(twin))]
    # The deterministic form, when its bound is below the excess on one draw.
    fs["oracle_bound"][0, 3, 7] = fs["excess"][0, 3, 7] - 1e-3
    failed = plots.failed_theorems({"verdicts": plots.verdicts(dict(s, finite_sample=plots.summarise_finite(fs, run)))})
    assert "Finite-sample bound, deterministic form: holds on every validation draw" in [v["check"] for v in failed]


def _prop2_records(rng):
    """Records shaped as `run_prop2` returns them, every reading's bound above the excess."""
    n = 4 * len(plots.HET_GRID)
    excess = rng.uniform(0.0, 0.05, n)
    rec = {"regime": np.array(["easy", "hard"] * (n // 2)), "clustering": np.array(["true", "kmeans8"] * (n // 2)),
           "n_clusters": np.full(n, 8), "heterogeneity": np.tile(plots.HET_GRID, 4),
           "cost_power": np.resize(plots.COST_POWERS, n), "pool_size": np.resize(plots.POOL_SIZES, n),
           "excess": excess, "min_excess": excess / 2}
    rec.update({r: excess + rng.uniform(0.001, 0.1, n) for r in plots.READINGS})
    # Zero heterogeneity with the true clusters: Proposition 2 leaves no excess.
    zero = (rec["heterogeneity"] == 0) & (rec["clustering"] == "true")
    rec["excess"][zero] = rec["min_excess"][zero] = 0.0
    return rec


@pytest.mark.parametrize("reading", ["one_sided", "range_bound", "corrected"])
def test_a_proven_reading_below_the_excess_on_one_instance_fails_its_verdict(reading):
    rec = _prop2_records(np.random.default_rng(1))
    s = _summary_with()
    s["prop2"] = plots.summarise_prop2(rec)
    assert all(v["holds"] for v in plots.verdicts(s) if v["theorem"])
    rec[reading][5] = rec["excess"][5] - 1e-3
    s["prop2"] = plots.summarise_prop2(rec)
    assert s["prop2"]["all"][reading]["min_margin"] == pytest.approx(-1e-3)
    assert s["prop2"]["all"][reading]["hold_rate"] == pytest.approx(1 - 1 / rec["excess"].size)
    failed = plots.failed_theorems({"verdicts": plots.verdicts(s)})
    assert [v["check"] for v in failed] == [f"Proposition 2, {plots.READINGS[reading]}"]
    assert failed[0]["margin"] == pytest.approx(-1e-3 + bounds.HOLD_TOL)
