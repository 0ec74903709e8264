"""Online budget pacing in theory (`theory/pacing.py`): the exact optimum, the measurements against a
NumPy twin of the rule, and verdicts that hold for the rule and fail when its step is broken."""

import json

import numpy as np
import pytest
from scipy.optimize import linprog

import uniroute_jax as ur
from theory import pacing as tp
from theory import plots


def _lp(w, e, c, rate):
    """HiGHS on the mixture LP over `pi[k, m]`: (best expected quality, shadow price of the budget)."""
    k, m = e.shape
    res = linprog(-(w[:, None] * (1.0 - e)).ravel(), A_ub=(w[:, None] * c[None, :]).ravel()[None, :], b_ub=[rate],
                  A_eq=np.kron(np.eye(k), np.ones((1, m))), b_eq=np.ones(k), bounds=(0, None), method="highs")
    assert res.status == 0
    return -res.fun, -res.ineqlin.marginals[0]


@pytest.mark.parametrize("costs", tp.COST_LADDERS)
def test_optimal_policy_is_the_lp_optimum_and_its_shadow_price(costs):
    inst = tp.sample_instances(np.random.default_rng(3), 8, costs=costs)
    for w, e, c, r, lam_star in zip(inst.weights, inst.errors, inst.costs, inst.rate, inst.lam_star):
        opt, lam, policy = tp.optimal_policy(w, e, c, r)
        lp_opt, lp_lam = _lp(w, e, c, r)
        assert opt == pytest.approx(lp_opt, abs=1e-9)
        assert lam == pytest.approx(lp_lam, rel=1e-6) and lam == lam_star and lam > 0  # the budget binds
        # A feasible randomised rule that spends exactly rho and attains OPT.
        assert np.all(policy >= 0) and np.allclose(policy.sum(axis=1), 1.0)
        assert w @ (policy * c).sum(axis=1) == pytest.approx(r, rel=1e-9)
        assert w @ (policy * (1.0 - e)).sum(axis=1) == pytest.approx(opt, abs=1e-9)


def test_sample_instances_rejects_bad_arguments():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="costs must be one of"):
        tp.sample_instances(rng, 2, costs="flat")
    with pytest.raises(ValueError, match="n_models >= 2"):
        tp.sample_instances(rng, 2, n_models=1)
    inst = tp.sample_instances(rng, 1)
    with pytest.raises(ValueError, match="target must be one of"):
        tp.run_pacing_experiment(inst, [10], rng, n_seeds=1, target="daily")
    with pytest.raises(ValueError, match="horizons must be"):
        tp.run_pacing_experiment(inst, [0, 10], rng, n_seeds=1)
    with pytest.raises(ValueError, match="starts must be"):
        tp.run_pacing_experiment(inst, [10], rng, n_seeds=1, starts=("hot",))


# ------------------------------------------------------------------------ the NumPy twin


def _twin(e, c, z, rate_budget, span, lam1, *, target, step_mult, q_star):
    """The documented rule in float32 NumPy, one stream, and its measurements in float64.

    `step_mult` is the step multiplier the pacer actually uses (negative: the sign flipped). The
    running spend is a compensated (Kahan) float32 sum, as in the replay kernel.
    """
    f = np.float32
    T = z.size
    budget = f(rate_budget)
    rho = budget / f(T)
    span_n = f(span) * rho
    floor = f(1e-6) * span_n
    lam = np.clip(f(lam1) * rho, floor, span_n)  # lam kept normalised by rho
    spent, lost = f(0.0), f(0.0)
    picks, lams = [], []
    for t, k in enumerate(z):
        price = lam / rho
        scores = e[k].astype(f) + price * c.astype(f)
        best = np.flatnonzero(scores == scores.min())
        pick = int(best[np.lexsort((best, c[best]))][0])  # ties: the cheaper, then the lower index
        cost = f(c[pick])
        aim = rho if target == "fixed" else max(budget - spent, f(0.0)) / max(f(T) - f(t), f(1.0))
        lams.append(float(lam))
        lam = np.clip(lam * np.exp(f(step_mult) * ((cost - aim) / rho) / np.sqrt(f(T))), floor, span_n)
        y = cost - lost
        total = spent + y
        spent, lost = total, (total - spent) - y
        picks.append(pick)
    picks, lams = np.asarray(picks), np.asarray(lams)
    quality = np.sum(1.0 - e[z, picks])
    spend = np.sum(c[picks].astype(np.float64))
    rho64 = float(budget) / T
    step = 1.0 / np.sqrt(T)  # the documented step on log lam (multiplier 1)
    g = c[picks] / rho64 - 1.0  # the fixed target's subgradient, requests' worth of budget
    u, lam_1 = 1e-6 * span * rho64, lams[0]  # comparator: the bottom of lam's range
    bregman = u * np.log(u / lam_1) - u + lam_1
    phi = np.exp(step * g) - 1.0 - step * g
    return {"regret": np.sum(q_star[z]) - quality, "overspend": spend - float(budget),
            "regret_bound": -u * np.sum(g) + bregman / step + np.sum(lams * phi) / step,
            "overspend_bound": rho64 * np.log(span * rho64 / lam_1) / step}


@pytest.fixture(scope="module")
def small():
    inst = tp.sample_instances(np.random.default_rng(7), 2, n_clusters=3, n_models=3)
    rng = np.random.default_rng(8)
    instance = np.array([0, 1, 0, 1])
    clusters = np.stack([rng.choice(3, size=300, p=inst.weights[i]) for i in instance]).astype(np.int32)
    lam1 = np.array([0.0, 0.0, 1.3 * inst.lam_star[0], 0.7 * inst.lam_star[1]])
    return inst, instance, clusters, lam1


@pytest.mark.parametrize("target", tp.TARGETS)
@pytest.mark.parametrize("variant", [{}, {"constant_step": 0.5}, {"flip_sign": True}])
def test_measurements_match_a_numpy_twin_of_the_rule(small, target, variant):
    inst, instance, clusters, lam1 = small
    T = clusters.shape[1]
    out = tp.replay_streams(inst, instance, clusters, lam1, np.random.default_rng(0), target=target, **variant)
    q_star = tp.optimal_quality(inst)
    mult = np.sqrt(T) * variant["constant_step"] if "constant_step" in variant else 1.0
    mult = -mult if variant.get("flip_sign") else mult
    for s, i in enumerate(instance):
        twin = _twin(inst.errors[i], inst.costs[i], clusters[s], np.float32(inst.rate[i] * T), inst.span[i], lam1[s],
                     target=target, step_mult=mult, q_star=q_star[i])
        for key, value in twin.items():  # the bounds read lam_t back from float32 prices: a few ulps
            rel = 1e-5 if key.endswith("_bound") else 1e-9
            assert out[key][s] == pytest.approx(value, rel=rel, abs=1e-6), (key, s)
    # Regret against T * OPT differs from the paired estimate only by the stream's cluster counts.
    n_clus = np.stack([np.bincount(z, minlength=3) for z in clusters])
    opt = np.array([tp.optimal_policy(inst.weights[i], inst.errors[i], inst.costs[i], out["budget"][s] / T)[0]
                    for s, i in enumerate(instance)])
    paired_gap = T * opt - np.einsum("sk,sk->s", n_clus, q_star[instance])
    assert np.allclose(out["regret_vs_opt"] - out["regret"], paired_gap, atol=1e-6)


def test_the_kernel_path_is_replay_itself(small):
    inst, instance, clusters, lam1 = small
    errors = inst.errors.reshape(-1, 3)
    costs = np.repeat(inst.costs, 3, axis=0)
    orders = instance[:, None] * 3 + clusters
    budget = np.float32(inst.rate[instance] * clusters.shape[1])
    a = ur.replay(errors, costs, 1.0 - errors, orders, budget, etas=0.8, lam0=lam1, spans=inst.span[instance],
                      target="fixed")
    b = tp._kernel_replay(errors, costs, orders, budget, np.full(4, 0.8), lam1, inst.span[instance], target="fixed")
    np.testing.assert_array_equal(np.asarray(a.choice), np.asarray(b.choice))
    np.testing.assert_array_equal(np.asarray(a.lam), np.asarray(b.lam))


# ------------------------------------------------------------------------------ slope fits


def test_fit_slope_recovers_known_exponents_and_ignores_non_positive_means():
    rng = np.random.default_rng(1)
    t = np.geomspace(100, 1e5, 7)
    for a in (0.25, 0.5, 1.0):
        values = t[:, None] ** a * (1.0 + 0.05 * rng.standard_normal((7, 40)))
        fit = tp.fit_slope(t, values, rng, n_boot=200)
        assert fit.slope == pytest.approx(a, abs=0.02) and fit.low <= a <= fit.high and fit.n_points == 7
    assert tp.fit_slope(t, -np.ones((7, 3)), rng).slope is None
    some = np.sqrt(t)[:, None] * np.ones((7, 3))
    some[:2] = -1.0
    fit = tp.fit_slope(t, some, rng, n_boot=50)
    assert fit.n_points == 5 and fit.slope == pytest.approx(0.5)
    with pytest.raises(ValueError, match="values must have shape"):
        tp.fit_slope(t, np.ones(7), rng)


def _group(slope_low, regret_margin=0.5, over_margin=0.2):
    fit = {"slope": slope_low + 0.05, "low": slope_low, "high": slope_low + 0.1, "n_points": 5}
    return {"regret_slope": fit, "violation_slope": dict(fit), "lagrangian_slope": dict(fit),
            "regret_bound_margin": regret_margin,
            "overspend_bound_margin": over_margin, "n_reached_top": 0}


def test_slope_verdict_fails_only_when_the_whole_interval_is_above_the_limit():
    limit = 0.5 + tp.SLOPE_TOL
    ok = tp.check({"tiers/warm": _group(limit - 0.01)}, "remaining")
    bad = tp.check({"tiers/warm": _group(limit + 0.01)}, "remaining")
    assert all(v["holds"] for v in ok) and not any(v["holds"] for v in bad)
    assert bad[0]["margin"] == pytest.approx(-0.01)
    fixed = tp.check({"tiers/warm": _group(0.3), "tiers/cold": _group(0.3, regret_margin=-0.1)}, "fixed")
    assert [v["holds"] for v in fixed] == [True, True, True, False, True]


def test_plots_gate_the_exit_status_on_the_fixed_target_only(tmp_path, monkeypatch):
    runs = {"fixed": {"rule": {"tiers/warm": _group(0.3, over_margin=-0.5)}},
            "remaining": {"rule": {"tiers/warm": _group(0.9)}}}
    v = tp.verdicts({"runs": runs})
    assert [(x["theorem"], x["holds"]) for x in v] == [(True, True)] * 4 + [(True, False)] + [(False, False)] * 3
    # Merged into an existing summary: its other keys stay, verdicts and summary.md are renewed.
    (tmp_path / "summary.json").write_text(json.dumps({"prop1": {"kept": 1}, "verdicts": []}))
    monkeypatch.setattr(plots, "verdicts", lambda s: tp.verdicts(s["pacing"]))
    monkeypatch.setattr(plots, "summary_markdown", lambda s: f"{len(s['verdicts'])} verdicts\n")
    s = tp.merge_into(tmp_path, {"runs": runs})
    assert s["prop1"] == {"kept": 1} and len(s["verdicts"]) == 8
    assert json.loads((tmp_path / "summary.json").read_text())["pacing"] == {"runs": runs}
    assert (tmp_path / "summary.md").read_text() == "8 verdicts\n"
    assert [x["check"] for x in plots.failed_theorems(s)] == [
        "Pacing, target=fixed: spend - B <= rho log(span / lambda_1) / eta on every stream"]
    with pytest.raises(FileNotFoundError, match="run `python -m theory.plots"):
        tp.merge_into(tmp_path / "nowhere", {"runs": runs})


# --------------------------------------------------------------- verdicts of real and planted rules


@pytest.fixture(scope="module")
def study():
    """The tiers ladder, T up to 1e4: the rule and both planted bugs, for both targets."""
    rng = np.random.default_rng(11)
    inst = tp.sample_instances(rng, 6, costs="tiers")
    warm = tp.warm_lambdas(inst, rng, 500)
    family = np.full(6, "tiers")
    out = {}
    for target in tp.TARGETS:
        for name, kw in {"rule": {}, "constant_step": {"constant_step": 1.0}, "flip_sign": {"flip_sign": True}}.items():
            runs = tp.run_pacing_experiment(inst, (100, 464, 2154, 10000), rng, n_seeds=4, target=target, warm=warm,
                                            **kw)
            out[target, name] = tp.summarise_runs(runs, family, rng, n_boot=300)
    return out


@pytest.mark.slow
@pytest.mark.parametrize("target", tp.TARGETS)
def test_the_rule_holds_every_check(study, target):
    checks = tp.check(study[target, "rule"], target)
    assert len(checks) == (5 if target == "fixed" else 3)
    assert all(v["holds"] for v in checks), [v["detail"] for v in checks if not v["holds"]]
    g = study[target, "rule"]["tiers/warm"]
    # Warm started, the step on log lambda keeps lambda near lambda*: regret and Lagrangian regret stay
    # within 0.1 sqrt(T) (the slope fits of such small means are wide; the planted bugs reach 1 to 7).
    assert abs(g["regret_per_sqrt_t"][-1]) < 0.1 and abs(g["lagrangian_regret_per_sqrt_t"][-1]) < 0.1
    assert abs(g["spend_over_budget_minus_1"][-1]) < 0.01


@pytest.mark.slow
@pytest.mark.parametrize("target", tp.TARGETS)
@pytest.mark.parametrize("bug", list(tp.PLANTED))
def test_each_planted_step_rule_bug_fails_a_check(study, target, bug):
    checks = {v["check"].split(": ", 1)[1]: v for v in tp.check(study[target, bug], target)}
    # Regret + lambda* (spend - B) cannot be bought down by overspending: linear under either bug.
    assert not checks["Lagrangian regret grows like sqrt(T)"]["holds"]
    if bug == "constant_step":
        assert not checks["regret grows like sqrt(T)"]["holds"]
    if target == "fixed":  # the bounds' argument needs the documented step, taken the right way
        bound = {"constant_step": "expected regret within D(lam_min, lam_1)/eta + E sum lam_t phi(eta g_t)/eta "
                                  "at every T",
                 "flip_sign": "spend - B <= rho log(span / lambda_1) / eta on every stream"}[bug]
        assert not checks[bound]["holds"]


@pytest.mark.slow
def test_a_summary_from_an_older_run_keeps_its_text_and_gains_the_pacing_section(tmp_path, capsys):
    tiny = tp.PacingConfig(horizons=(50, 100, 200), n_instances=2, n_seeds=2, n_boot=20)
    p = tp.run_study(tiny, seed=3, log=lambda msg: None)
    assert p["settings"]["mode"] == "custom" and set(p["runs"]) == set(tp.TARGETS)
    # An older `theory.plots` wrote neither verdicts nor the fields the current checks read.
    (tmp_path / "summary.json").write_text(json.dumps({"prop1": {"dynamic_pools": {}}, "wall_seconds": 1.0}))
    (tmp_path / "summary.md").write_text("# Theory checks: summary\n\nolder numbers\n\nWall time: 1 s.\n")
    for _ in range(2):  # a second merge replaces the section, never duplicates it
        s = tp.merge_into(tmp_path, p)
    assert "predates the check" in capsys.readouterr().err
    md = (tmp_path / "summary.md").read_text()
    assert md.startswith("# Theory checks: summary\n\nolder numbers\n\nWall time: 1 s.\n")
    assert md.count("## Online budget pacing") == 1 and md.count("| Pacing, target=fixed: regret grows") == 1
    assert [v["check"] for v in s["verdicts"]] == [v["check"] for v in tp.verdicts(p)]
    assert json.loads((tmp_path / "summary.json").read_text())["prop1"] == {"dynamic_pools": {}}
    tp.plot(p, tmp_path / "pacing_regret.png")
    assert (tmp_path / "pacing_regret.png").stat().st_size > 0
