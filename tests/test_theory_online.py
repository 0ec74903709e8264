"""Online learning of a new LLM in theory (`theory/online.py`): the regret against a NumPy twin, the
slope fit, and verdicts that hold for Thompson and fail for greedy and an overconfident posterior."""

import json

import numpy as np
import pytest

from theory import online as to


def _twin_regret(e, c, z, a, horizons):
    """Regret by a plain loop: the oracle is found per request by scanning every LLM."""
    out = np.zeros((len(horizons), z.shape[0]))
    for s in range(z.shape[0]):
        total, row = 0.0, []
        for t in range(z.shape[1]):
            k = z[s, t]
            best = None
            for h in range(e.shape[1]):  # the lowest error, then the lowest cost, then the lowest index
                if best is None or (e[k, h], c[h]) < (e[k, best], c[best]):
                    best = h
            total += e[k, a[s, t]] - e[k, best]
            row.append(total)
        out[:, s] = [row[T - 1] for T in horizons]
    return out


def test_cumulative_regret_matches_a_numpy_twin():
    rng = np.random.default_rng(1)
    e = np.round(rng.uniform(0.05, 0.6, (5, 4)), 1)  # coarse values: ties between LLMs
    c = np.array([0.5, 0.2, 0.2, 0.9])
    z = rng.integers(0, 5, (3, 60))
    a = rng.integers(0, 4, (3, 60))
    hs = [1, 7, 30, 60]
    got = to.cumulative_regret(e, c, z, a, hs)
    assert got.shape == (4, 3)
    np.testing.assert_allclose(got, _twin_regret(e, c, z, a, hs), atol=1e-12)
    assert np.all(np.diff(got, axis=0) >= -1e-12)  # each term is >= 0


def test_oracle_is_the_truly_best_llm_ties_to_the_cheaper():
    e = np.array([[0.3, 0.2, 0.2, 0.4], [0.1, 0.5, 0.1, 0.1]])
    c = np.array([0.1, 0.9, 0.3, 0.2])
    choice, best = to.oracle_errors(e, c)
    assert choice.tolist() == [2, 0] and best.tolist() == [0.2, 0.1]


def test_bad_arguments_are_named():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="family must be one of"):
        to.sample_instances(rng, 1, family="planted")
    with pytest.raises(ValueError, match="n_better"):
        to.sample_instances(rng, 1, family="stall", n_better=8)
    e, c = np.full((2, 3), 0.3), np.ones(3)
    with pytest.raises(ValueError, match="same"):
        to.cumulative_regret(e, c, np.zeros((2, 5), int), np.zeros((2, 4), int), [1])
    with pytest.raises(ValueError, match="horizons"):
        to.cumulative_regret(e, c, np.zeros((2, 5), int), np.zeros((2, 5), int), [1, 6])


def test_stall_instances_put_the_new_llm_ahead_only_where_planted():
    inst = to.sample_instances(np.random.default_rng(2), 5, family="stall", n_better=3, stall_gap=0.12)
    inc, new = inst.errors[:, :, :-1], inst.errors[:, :, -1]
    ahead = new < inc.min(axis=2)
    assert np.all(ahead.sum(axis=1) == 3)
    gap = np.minimum(0.12, inc.min(axis=2) - 0.01)  # never below an error of 0.01
    np.testing.assert_allclose(np.where(ahead, inc.min(axis=2) - new, gap), gap, atol=1e-6)
    worse = np.minimum(0.12, 0.99 - inc.max(axis=2))  # never above an error of 0.99
    np.testing.assert_allclose(np.where(ahead, worse, new - inc.max(axis=2)), worse, atol=1e-6)


@pytest.mark.parametrize("exponent", [0.3, 0.5, 1.0])
def test_fit_slope_recovers_a_known_power_law(exponent):
    rng = np.random.default_rng(4)
    hs = np.geomspace(100, 10000, 7)
    values = 2.0 * hs[:, None] ** exponent * rng.lognormal(0.0, 0.1, (7, 40))
    fit = to.fit_slope(hs, values, rng, 300)
    assert fit.slope == pytest.approx(exponent, abs=0.03)
    assert fit.low <= exponent <= fit.high and fit.high - fit.low < 0.1


def test_sublinear_verdict_fails_once_the_interval_reaches_the_limit():
    fit = lambda lo, hi: {"slope": (lo + hi) / 2, "low": lo, "high": hi, "n_points": 5}  # noqa: E731
    limit = 1 - to.SLOPE_TOL
    assert to._sublinear("c", True, fit(0.3, limit - 0.01))["holds"]
    assert not to._sublinear("c", True, fit(0.3, limit + 0.01))["holds"]  # only the high end below is enough
    assert not to._sublinear("c", True, fit(0.95, 1.05))["holds"]


# ----------------------------------------------------------------- replays (compile: slow)


@pytest.fixture(scope="module")
def stall_instance():
    inst = to.sample_instances(np.random.default_rng(5), 1, family="stall")
    w, e, c = (x[0] for x in inst)
    return w, e, c, to.fit_prior(e, 400)


@pytest.mark.slow
def test_replayed_regret_is_measured_against_the_true_errors(stall_instance):
    w, e, c, est = stall_instance
    hs = [10, 100, 300]
    res = to.replay_instance(e, c, w, est, ["greedy", "thompson"], np.random.default_rng(0), hs)
    np.testing.assert_allclose(res["regret"], _twin_regret(e, c, res["clusters"], res["choice"], hs), atol=1e-9)
    rate = w @ np.maximum(e[:, :-1].min(axis=1) - e[:, -1], 0.0)  # greedy, stalled, pays the gap per request
    assert res["new_share"][0] == 0 and res["regret"][-1, 0] > 0.5 * rate * 300 > 0


@pytest.mark.slow
def test_overconfident_copy_is_certain_of_the_population_prior(stall_instance):
    w, e, c, est = stall_instance
    zero = np.zeros((1, e.shape[0]))
    real, bad = est.estimate_full(zero, zero), to.overconfident(est, 1e4).estimate_full(zero, zero)
    assert np.all(np.asarray(real.a + real.b) < 50)
    assert np.all(np.asarray(bad.a + bad.b) > 100)
    # The fitted estimator is left as it was.
    np.testing.assert_array_equal(np.asarray(est.estimate_full(zero, zero).psi), np.asarray(real.psi))


@pytest.fixture(scope="module")
def study():
    return to.run_study(to.QUICK, log=lambda *_: None)


@pytest.mark.slow
def test_thompson_holds_and_greedy_stalls(study):
    vs = to.verdicts(study)
    assert len(vs) == 3 and all(v["holds"] for v in vs), vs
    g = study["families"]["stall"]["greedy"]
    assert g["new_share_max"] == 0 and g["streams_never_new"] == g["n_streams"]
    assert study["families"]["stall"]["thompson"]["streams_never_new"] == 0
    assert min(study["families"]["stall"]["prior_margin"]) > 0  # greedy cannot try the new LLM


@pytest.mark.slow
@pytest.mark.parametrize("variant", list(to.PLANTED))
def test_greedy_and_the_overconfident_posterior_fail_the_sublinear_check(study, variant):
    vs = to.planted_verdicts(study)[variant]
    stall = [v for v in vs if "stall" in v["check"]]
    assert stall and not stall[0]["holds"], vs


@pytest.mark.slow
def test_merge_into_adds_the_section_and_its_verdicts(study, tmp_path):
    (tmp_path / "summary.json").write_text(json.dumps({"older": 1}))
    (tmp_path / "summary.md").write_text("# Theory\n\n## Verdicts\n\nold\n")
    s = to.merge_into(tmp_path, study)
    assert s["online"]["settings"]["mode"] == "quick"
    assert [v["check"] for v in s["verdicts"]] == [v["check"] for v in to.verdicts(study)]
    md = (tmp_path / "summary.md").read_text()
    assert md.index("## Online learning of a new LLM") < md.index("## Verdicts")
    assert "regret sublinear in T, stall instances" in md
