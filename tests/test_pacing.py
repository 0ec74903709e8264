"""Budget pacing: the replay kernel against a plain-Python twin of the documented rule, the serving
`Pacer` against the kernel, vmap / padding / recompiles, the hard cap, several budgets, files."""

from __future__ import annotations

import math

import hypothesis.strategies as st
import jax
import numpy as np
import pytest
from hypothesis import given, settings

import uniroute_jax as ur
from uniroute_jax._src import pacing


def _twin(errors, costs, quality, order, budget, *, eta, lam0, span, taper=1.0, hard_cap=False,
          target="remaining", update_every=1):
    """The module docstring's rule for one budget, written out with Python floats and loops."""
    T = len(order)
    rho = budget / T
    span_n = span * rho
    floor = 1e-6 * span_n
    lam, spent, seen, cheap_sum, pending = min(max(lam0 * rho, floor), span_n), 0.0, 0, 0.0, 0.0
    picks, lams = [], []
    for t, i in enumerate(order):
        e = [float(v) for v in errors[i]]
        c = [float(v) for v in (costs[i] if np.ndim(costs) == 2 else costs)]
        lam_eff = lam
        if taper < 1.0:
            u = min(max((spent / budget - taper) / (1.0 - taper), 0.0), 1.0)
            lam_eff = lam + u * u * (span_n - lam)
        price = lam_eff / rho
        lams.append(price)
        ranked = sorted(range(len(e)), key=lambda h: (e[h] + price * c[h], c[h], h))
        pick = ranked[0]
        if hard_cap:
            cmin = min(c)
            reserve = max(T - seen - 1, 0) * (cheap_sum + cmin) / (seen + 1)
            ok = [h for h in ranked if spent + c[h] + reserve <= budget + 1e-6 * budget]
            pick = ok[0] if ok else sorted(range(len(e)), key=lambda h: (c[h], h))[0]
        cost = c[pick]
        aim = rho if target == "fixed" else max(budget - spent, 0.0) / max(T - seen, 1)
        pending += (cost - aim) / rho
        spent += cost
        seen += 1
        cheap_sum += min(c)
        if (t + 1) % update_every == 0:
            lam = min(max(lam * math.exp(eta * pending / math.sqrt(T)), floor), span_n)
            pending = 0.0
        picks.append(pick)
    return np.array(picks), np.array(lams), spent


def _problem(seed=0, n=40, m=4, per_request=False):
    rng = np.random.default_rng(seed)
    errors = rng.uniform(0, 1, (n, m)).astype(np.float32)
    costs = np.geomspace(0.01, 1.0, m).astype(np.float32)[rng.permutation(m)]
    if per_request:
        costs = (costs[None, :] * rng.uniform(0.5, 2.0, (n, 1))).astype(np.float32)
    quality = (rng.random((n, m)) > errors).astype(np.float32)
    return errors, costs, quality


@pytest.mark.parametrize("per_request,hard_cap,taper,target,every", [
    (False, False, 1.0, "remaining", 1),
    (False, True, 1.0, "remaining", 1),
    (True, True, 0.7, "fixed", 1),
    (True, False, 1.0, "fixed", 5),
    (False, True, 0.8, "remaining", 3),
])
def test_replay_matches_the_plain_python_twin(per_request, hard_cap, taper, target, every):
    errors, costs, quality = _problem(1, per_request=per_request)
    rng = np.random.default_rng(2)
    order = rng.integers(0, errors.shape[0], 120)
    budget = 0.12 * 120
    span = ur.lambda_span(errors, costs)
    r = ur.replay(errors, costs, quality, order[None], budget, etas=1.5, lam0=0.3 * span, spans=span, tapers=taper,
                  hard_cap=hard_cap, target=target, update_every=every)
    picks, lams, spent = _twin(errors, costs, quality, order, budget, eta=1.5, lam0=0.3 * span, span=span,
                               taper=taper, hard_cap=hard_cap, target=target, update_every=every)
    np.testing.assert_array_equal(np.asarray(r.choice[0]), picks)
    np.testing.assert_allclose(np.asarray(r.lam[0]), lams, rtol=2e-4, atol=1e-6)
    np.testing.assert_allclose(float(np.asarray(r.cost[0]).sum()), spent, rtol=1e-5)
    c = costs[order] if costs.ndim == 2 else np.broadcast_to(costs, (order.size, costs.size))
    np.testing.assert_allclose(np.asarray(r.cost[0]), c[np.arange(order.size), picks], rtol=1e-6)
    np.testing.assert_array_equal(np.asarray(r.quality[0]), quality[order, picks])
    assert len(set(picks.tolist())) > 1  # the stream exercises more than one decision


def test_serving_pacer_makes_the_replay_decisions():
    errors, costs, quality = _problem(3, per_request=True)
    order = np.random.default_rng(4).integers(0, errors.shape[0], 150)
    budget, span = 0.15 * 150, ur.lambda_span(errors, costs)
    r = ur.replay(errors, costs, quality, order[None], budget, etas=2.0, lam0=0.2 * span, spans=span, tapers=0.9,
                  hard_cap=True)
    pacer = ur.Pacer(ur.Budget(budget, 150), span=span, lam0=0.2 * span, eta=2.0, taper=0.9, hard_cap=True)
    picks, lams = [], []
    for i in order:
        pick, lam, _ = pacer.choose(errors[i], costs[i])
        pacer.charge(float(costs[i][pick]), float(costs[i].min()))
        picks.append(pick)
        lams.append(lam)
    np.testing.assert_array_equal(np.asarray(r.choice[0]), picks)
    np.testing.assert_allclose(np.asarray(r.lam[0]), lams, rtol=2e-4, atol=1e-6)


def test_vmapped_settings_equal_each_alone_and_padding_changes_nothing():
    errors, costs, quality = _problem(5, m=3)
    rng = np.random.default_rng(6)
    orders = rng.integers(0, errors.shape[0], (3, 60))
    budgets, etas = np.array([3.0, 6.0, 9.0]), np.array([0.5, 1.0, 4.0])
    span = ur.lambda_span(errors, costs)
    both = ur.replay(errors, costs, quality, orders, budgets, etas=etas, lam0=span / 4, spans=span, hard_cap=True)
    for s in range(3):
        one = ur.replay(errors, costs, quality, orders[s:s + 1], budgets[s], etas=etas[s], lam0=span / 4, spans=span,
                        hard_cap=True)
        np.testing.assert_array_equal(np.asarray(both.choice[s]), np.asarray(one.choice[0]))
        np.testing.assert_allclose(np.asarray(both.lam[s]), np.asarray(one.lam[0]), rtol=1e-5)  # float32 fusion order
    # A padded model table: a fourth, free and perfect model that the masks leave out.
    pad_e = np.concatenate([errors, np.zeros((errors.shape[0], 1), np.float32)], 1)
    pad_c = np.concatenate([costs, [0.0]]).astype(np.float32)
    pad_q = np.concatenate([quality, np.ones((quality.shape[0], 1), np.float32)], 1)
    masks = np.array([[True, True, True, False]] * 3)
    padded = ur.replay(pad_e, pad_c, pad_q, orders, budgets, model_masks=masks, etas=etas, lam0=span / 4, spans=span,
                       hard_cap=True)
    np.testing.assert_array_equal(np.asarray(padded.choice), np.asarray(both.choice))


def test_second_call_with_new_values_does_not_recompile():
    errors, costs, quality = _problem(7)
    orders = np.random.default_rng(8).integers(0, errors.shape[0], (2, 30))
    ur.replay(errors, costs, quality, orders, 2.0, spans=5.0)
    before = pacing.replay_kernel._cache_size()
    ur.replay(errors * 0.5, costs * 2, quality, orders[::-1], 3.0, etas=2.0, lam0=1.0, spans=7.0)
    assert pacing.replay_kernel._cache_size() == before


@settings(max_examples=30, deadline=None, derandomize=True, database=None)
@given(seed=st.integers(0, 10_000), slack=st.floats(1.0, 3.0), lam_frac=st.floats(0.0, 1.0))
def test_hard_cap_never_spends_past_a_budget_that_covers_the_cheapest(seed, slack, lam_frac):
    errors, costs, quality = _problem(seed, n=20, m=4)
    order = np.random.default_rng(seed).integers(0, 20, 80)
    budget = float(costs.min()) * 80 * slack  # enough for the cheapest model on every request
    span = ur.lambda_span(errors, costs)
    r = ur.replay(errors, costs, quality, order[None], budget, etas=3.0, lam0=lam_frac * span, spans=span,
                  hard_cap=True)
    assert float(np.cumsum(np.asarray(r.cost[0], np.float64))[-1]) <= budget * (1 + 1e-5)
    free = ur.replay(errors, costs, quality, order[None], budget, etas=3.0, lam0=0.0, spans=span)
    if float(np.asarray(free.cost[0]).sum()) > budget * 1.01:  # the cap mattered: it must have acted
        assert bool(np.asarray(ur.replay(errors, costs, quality, order[None], budget, etas=3.0, lam0=0.0, spans=span,
                                         hard_cap=True).capped).any())


def test_pacer_tracks_the_budget_where_a_fixed_lambda_misses_it():
    # The mix shifts: the first half of the stream holds prompts where the expensive model wins.
    rng = np.random.default_rng(9)
    n = 200
    errors = np.zeros((n, 2), np.float32)
    errors[:100] = [0.1, 0.6]  # expensive model far better
    errors[100:] = [0.3, 0.35]  # nearly equal
    costs = np.array([1.0, 0.1], np.float32)
    quality = (rng.random((n, 2)) > errors).astype(np.float32)
    order = np.concatenate([rng.integers(0, 100, 1000), rng.integers(100, 200, 1000)])
    budget = 0.4 * order.size
    sample = np.concatenate([errors[:50], errors[100:150]])  # a balanced sample calibrates the fixed lambda
    lam0, span = ur.warm_start(sample, costs, 0.4), ur.lambda_span(errors, costs)
    fixed = ur.replay(errors, costs, quality, order[None], budget, etas=0.0, lam0=lam0, spans=span)
    paced = ur.replay(errors, costs, quality, order[None], budget, etas=1.0, lam0=lam0, spans=span)
    fixed_ratio = float(np.asarray(fixed.cost).sum()) / budget
    paced_ratio = float(np.asarray(paced.cost).sum()) / budget
    assert abs(fixed_ratio - 1) > 0.15
    assert abs(paced_ratio - 1) < 0.02


def test_several_budgets_price_and_charge_their_members_only():
    pacer = ur.Pacer({"team": ur.Budget(10.0, 100), "all": ur.Budget(50.0, 1000)}, span=20.0,
                     lam0={"team": 2.0, "all": 1.0})
    assert pacer.price("team") == pytest.approx(2.0)
    assert pacer.price(["team", "all"]) == pytest.approx(3.0)
    pacer.charge(0.5, 0.01, "all")
    st_ = pacer.status()
    assert st_["all"]["spent"] == 0.5 and st_["team"]["spent"] == 0.0
    assert st_["team"]["lambda"] == pytest.approx(2.0) and st_["all"]["lambda"] != pytest.approx(1.0)
    # Affordability: the team's budget binds for a request charged to both.
    capped = ur.Pacer({"team": ur.Budget(1.0, 2), "all": ur.Budget(100.0, 2)}, span=1.0, hard_cap=True)
    pick, _, was_capped = capped.choose([0.1, 0.9], [0.995, 0.01], ["team", "all"])
    assert pick == 1 and was_capped  # 0.995 + reserve 0.01 > 1.0 for the team
    pick, _, was_capped = capped.choose([0.1, 0.9], [0.995, 0.01], "all")
    assert pick == 0 and not was_capped


def test_windowed_budget_renews_and_keeps_lambda():
    now = [0.0]
    pacer = ur.Pacer(ur.Budget(1.0, 10, window=60.0), span=10.0, lam0=1.0, clock=lambda: now[0])
    for _ in range(5):
        pacer.charge(0.5)
    lam_before = pacer.status()["budget"]["lambda"]
    assert pacer.status()["budget"]["spent"] == pytest.approx(2.5) and lam_before > 1.0
    now[0] = 61.0
    s = pacer.status()["budget"]
    assert s["spent"] == 0.0 and s["requests"] == 0.0 and s["lambda"] == pytest.approx(lam_before)


def test_pacer_file_round_trips_exactly(tmp_path):
    pacer = ur.Pacer({"a": ur.Budget(3.0, 30), "b": ur.Budget(1.0, 5, window=3600.0)}, span=4.0, lam0=0.5,
                     hard_cap=True, taper=0.8, target="fixed", update_every=2)
    for k in range(7):
        pacer.charge(0.1 * k, 0.01, ["a", "b"][: 1 + k % 2])
    path = pacer.save(tmp_path / "pacer.npz")
    back = ur.Pacer.load(path)
    for f in pacing.PacerState._fields:
        np.testing.assert_array_equal(np.asarray(getattr(back.state, f)), np.asarray(getattr(pacer.state, f)))
    assert back.budgets == pacer.budgets and back._options() == pacer._options()
    np.testing.assert_array_equal(back.window_start, pacer.window_start)
    with pytest.raises(ValueError, match="pool"):
        ur.Pool.load(path)


@pytest.mark.parametrize("kwargs,match", [
    ({"budgets": ur.Budget(-1.0, 10)}, "amount"),
    ({"budgets": ur.Budget(float("nan"), 10)}, "amount"),
    ({"budgets": ur.Budget(1.0, 0)}, "horizon > 0"),
    ({"budgets": {"": ur.Budget(1.0, 1)}}, "non-empty strings"),
    ({"budgets": {3: ur.Budget(1.0, 1)}}, "non-empty strings"),
    ({"budgets": ur.Budget(1.0, 1), "span": 0.0}, "span"),
    ({"budgets": ur.Budget(1.0, 1), "taper": 1.5}, "taper"),
    ({"budgets": ur.Budget(1.0, 1), "target": "soon"}, "target"),
    ({"budgets": ur.Budget(1.0, 1, window=0.0)}, "window"),
])
def test_bad_pacer_settings_are_refused_at_construction(kwargs, match):
    kwargs = {"span": 1.0, **kwargs}
    with pytest.raises((ValueError, TypeError), match=match):
        ur.Pacer(**kwargs)


def test_unknown_budget_key_is_named():
    pacer = ur.Pacer({"a": ur.Budget(1.0, 1)}, span=1.0)
    with pytest.raises(ValueError, match="'zz'"):
        pacer.price("zz")
    with pytest.raises(TypeError, match="strings"):
        pacer.charge(0.1, keys=[7])


@pytest.mark.parametrize("kwargs,match", [
    ({"budgets": 0.0}, "budgets must be > 0"),
    ({"orders": np.array([[0, 99]])}, "prompt index 99"),
    ({"model_masks": np.zeros((1, 4), bool)}, "selects no model"),
    ({"tapers": 2.0}, "tapers"),
    ({"target": "x"}, "target"),
    ({"update_every": 0}, "update_every"),
])
def test_replay_input_errors_name_the_argument(kwargs, match):
    errors, costs, quality = _problem(0)
    args = {"orders": np.zeros((1, 5), int), "budgets": 1.0, **kwargs}
    with pytest.raises((ValueError, TypeError), match=match):
        ur.replay(errors, costs, quality, args.pop("orders"), args.pop("budgets"), **args)


def test_lambda_span_sends_every_prompt_to_its_cheapest_model():
    errors, costs, _ = _problem(11, per_request=True)
    span = ur.lambda_span(errors, costs)
    def picks(lam):
        return np.lexsort((np.broadcast_to(np.arange(4), errors.shape), costs, errors + lam * costs), axis=1)[:, 0]
    cheapest = np.argmin(costs, axis=1)
    np.testing.assert_array_equal(picks(span), cheapest)
    assert (picks(span * 0.99) != cheapest).any()


def test_warm_start_meets_the_target_on_its_sample():
    errors, costs, _ = _problem(12, n=300)
    lam = ur.warm_start(errors, costs, 0.2)
    cal = ur.calibrate(ur.exact_curve(errors, ur.make_units(None, prompt_costs=np.broadcast_to(costs, errors.shape)),
                                      costs), cost=0.2)
    assert float(cal.lam_high_cost[0]) <= lam <= float(cal.lam_low_cost[0])
    pick = lambda l: np.lexsort((np.broadcast_to(np.arange(4), errors.shape), np.broadcast_to(costs, errors.shape),
                                 errors + l * costs), axis=1)[:, 0]
    assert costs[pick(cal.lam_low_cost[0])].mean() <= 0.2 <= costs[pick(cal.lam_high_cost[0])].mean()


# --------------------------------------------------------------------------- streams


def test_streams_are_reproducible_and_shaped_as_named():
    tasks = np.repeat(np.array(["a", "b", "c", "d"]), 50)
    for kind in ur.streams.KINDS:
        one = ur.streams.make_stream(kind, tasks, 2000, np.random.default_rng(1))
        two = ur.streams.make_stream(kind, tasks, 2000, np.random.default_rng(1))
        np.testing.assert_array_equal(one, two)
        assert one.shape == (2000,) and one.min() >= 0 and one.max() < 200
    drift = tasks[ur.streams.drifting(tasks, 4000, np.random.default_rng(2))]
    first, last = drift[:400], drift[-400:]
    top_first = max(set(first), key=list(first).count)
    assert (first == top_first).mean() > 0.6 and (last == top_first).mean() < 0.05
    block = tasks[ur.streams.abrupt(tasks, 1000, np.random.default_rng(3), start=0.5, length=0.2)]
    assert len(set(block[500:700])) == 1 and len(set(block[:500])) == 4
    stat = tasks[ur.streams.stationary(200, 4000, np.random.default_rng(4))]
    assert all(abs((stat == t).mean() - 0.25) < 0.04 for t in "abcd")
    burst = tasks[ur.streams.bursts(tasks, 1000, np.random.default_rng(5), n_bursts=3, length=0.05)]
    runs = sum(len(set(burst[s:s + 50])) == 1 for s in range(0, 1000, 50))
    assert runs >= 3


def test_stream_errors_name_the_argument():
    with pytest.raises(ValueError, match="start \\+ length"):
        ur.streams.abrupt(np.zeros(5), 10, np.random.default_rng(0), start=0.9, length=0.2)
    with pytest.raises(TypeError, match="rng"):
        ur.streams.stationary(5, 10, 0)
    with pytest.raises(ValueError, match="kind"):
        ur.streams.make_stream("weekly", np.zeros(5), 10, np.random.default_rng(0))


def test_long_streams_keep_exact_running_sums():
    # 100k requests in float32: a plain running sum drifts by ~1e-3 of the budget, past the hard cap.
    rng = np.random.default_rng(4)
    errors = rng.uniform(0, 1, (500, 3)).astype(np.float32)
    costs = np.array([0.00137, 0.0191, 0.000271], np.float32)
    quality = (rng.random((500, 3)) > errors).astype(np.float32)
    order = rng.integers(0, 500, 100_000)
    budget = 0.004 * order.size
    span = ur.lambda_span(errors, costs)
    r = ur.replay(errors, costs, quality, order[None], budget, etas=1.0, lam0=span / 100, spans=span, hard_cap=True)
    total = float(np.sum(np.asarray(r.cost[0], np.float64)))
    assert total <= budget * (1 + 1e-6)
    assert abs(float(r.state.spent[0, 0]) - total) <= 1e-6 * budget
