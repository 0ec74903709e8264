"""The one-command run of the theory package (`python -m theory.plots --quick`)."""

import json

import pytest

from theory import plots

FIGURES = ("frontier.png", "prop1_check.png", "prop2_vs_heterogeneity.png", "prop2_vs_k.png", "prop2_scatter.png",
           "prop2_vs_nval.png", "finite_sample_coverage.png")


@pytest.mark.slow
def test_quick_run_writes_figures_and_its_numbers_back_the_theory(tmp_path):
    plots.main(["--out", str(tmp_path), "--quick"])
    for name in FIGURES + ("summary.json", "summary.md"):
        assert (tmp_path / name).stat().st_size > 0, name
    s = json.loads((tmp_path / "summary.json").read_text())

    # Proposition 1: the lambda sweep lies on the exact LP frontier and nothing beats it.
    dyn = s["prop1"]["dynamic_pools"]
    assert dyn["max_abs_frontier_gap"] < 1e-6 and dyn["max_abs_dual_gap"] < 1e-6
    assert dyn["n_routers_beating_frontier"] == 0
    assert dyn["split_budget_max_extra_error"] >= -1e-12
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
