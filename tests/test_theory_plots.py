"""The one-command run of the theory package (`uniroute theory --quick`, `python -m theory.plots`)."""

import json

import jax
import pytest

from theory import bayes, plots
from uniroute_jax._src.cli import main as cli_main

FIGURES = ("frontier.png", "prop1_check.png", "prop2_vs_heterogeneity.png", "prop2_vs_k.png", "prop2_scatter.png",
           "prop2_vs_nval.png", "finite_sample_coverage.png")


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
