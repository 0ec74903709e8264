"""The drift report against SciPy and a hand-written PSI, on a replayed drifting stream."""

import numpy as np
import pytest
from scipy import stats

import uniroute_jax as ur
from uniroute_jax._src.cli import main

K, NAMES, COSTS = 5, ("small", "mid", "large"), (0.1, 0.4, 1.0)


@pytest.fixture(scope="module")
def world():
    """A router and pool on a synthetic world, and a drifting stream over its test prompts' tasks."""
    w = ur.synthetic_world(3, n_prompts=900, n_models=3, config=ur.WorldConfig(n_components=K))
    x, q, tasks = np.asarray(w.prompts.embeddings), np.asarray(w.quality), np.asarray(w.prompts.components)
    tr, va, te = np.arange(300), np.arange(300, 600), np.arange(600, 900)
    router = ur.UniRouter.fit(x[tr], K, seed=0, n_init=1)
    pool = router.represent(x[va], q[va], list(NAMES), list(COSTS))
    stream = te[ur.streams.make_stream("drifting", tasks[te], 1500, np.random.default_rng(0))]
    return dict(x=x, q=q, va=va, te=te, router=router, pool=pool, stream=stream)


def numpy_mix(served, val, k, alpha, eps=1e-4):
    """Twin: shares, PSI, chi-square (scipy.stats.chisquare on the 2 x k table) and adjusted residuals."""
    s, v = np.bincount(served, minlength=k).astype(float), np.bincount(val, minlength=k).astype(float)
    ps, pv = np.maximum(s / s.sum(), eps), np.maximum(v / v.sum(), eps)
    psi = sum((a - b) * np.log(a / b) for a, b in zip(ps, pv))
    seen = (s + v) > 0
    obs = np.stack([s[seen], v[seen]])
    exp = obs.sum(1, keepdims=True) * obs.sum(0, keepdims=True) / obs.sum()
    # 2m cells; the expected counts fix m + 1 margins, so ddof = m leaves m - 1 degrees of freedom.
    chi = stats.chisquare(obs.ravel(), exp.ravel(), ddof=int(seen.sum()))
    n, rows, cols = obs.sum(), obs.sum(1), obs.sum(0)
    resid = np.zeros(k)
    resid[seen] = (obs[0] - exp[0]) / np.sqrt(exp[0] * (1 - rows[0] / n) * (1 - cols / n))
    flags = np.abs(resid) > stats.norm.ppf(1 - alpha / (2 * k))
    return s, v, psi, chi.statistic, chi.pvalue, resid, flags


def test_mix_matches_scipy_and_a_numpy_psi_on_a_drifting_stream(world):
    router, pool, x, stream, va = world["router"], world["pool"], world["x"], world["stream"], world["va"]
    val = router.assign(x[va])
    for lo, hi in ((0, 250), (600, 900), (1250, 1500)):
        served = router.assign(x[stream[lo:hi]])
        rep = ur.drift_report(router, pool, x[stream[lo:hi]], x[va])
        s, v, psi, chi2, p, resid, flags = numpy_mix(served, val, K, 0.05)
        np.testing.assert_array_equal(rep.served_counts, s)
        np.testing.assert_array_equal(rep.validation_counts, v)
        assert rep.psi == pytest.approx(psi, rel=1e-9)
        assert rep.chi2 == pytest.approx(chi2, rel=1e-9)
        assert rep.p_value == pytest.approx(p, rel=1e-3, abs=1e-12)
        np.testing.assert_allclose(rep.residuals, resid, rtol=1e-9)
        np.testing.assert_array_equal(rep.cluster_moved, flags)
        assert rep.mix_moved == (psi >= 0.2 and p < 0.05)
        # A cluster with more of the served traffic than of the validation set moved up, not down.
        np.testing.assert_array_equal(np.sign(rep.residuals), np.sign(s / s.sum() - v / v.sum()))
        # Cluster ids give the same report as the embeddings they stand for.
        assert ur.drift_report(router, pool, served, val).psi == rep.psi
    # The drifting stream's ends have moved from the validation mix; a stationary replay has not.
    stationary = world["te"][ur.streams.make_stream("stationary", np.zeros(300), 1500, np.random.default_rng(1))]
    rep = ur.drift_report(router, pool, x[stationary], x[va])
    p = numpy_mix(router.assign(x[stationary]), val, K, 0.05)[4]
    assert 1e-3 < p < 0.999 and rep.p_value == pytest.approx(p, rel=1e-3)  # a p-value away from 0 and 1
    assert not rep.mix_moved and rep.psi < 0.1 and not rep.cluster_moved.any()
    assert ur.drift_report(router, pool, x[stream[:250]], x[va]).mix_moved


def test_an_empty_cluster_gives_a_finite_psi(world):
    router, pool, x, va = world["router"], world["pool"], world["x"], world["va"]
    val = router.assign(x[va])
    served = np.concatenate([val[val != 0], val[val == 1]])  # cluster 0 vanished, cluster 1 doubled
    rep = ur.drift_report(router, pool, served, val)
    assert rep.served_counts[0] == 0 and np.isfinite(rep.psi)
    assert rep.psi == pytest.approx(numpy_mix(served, val, K, 0.05)[2], rel=1e-9)
    assert rep.psi_terms[0] == pytest.approx(max(rep.psi_terms))
    assert rep.cluster_moved[0] and rep.residuals[0] < 0 < rep.residuals[1]


def test_calibration_follows_clopper_pearson_and_flags_a_broken_llm(world):
    router, pool, x, q, stream = world["router"], world["pool"], world["x"], world["q"], world["stream"]
    served = stream[:900]
    idx = np.arange(served.size) % 3  # the group's own strategy spreads the traffic over the LLMs
    chosen = np.asarray(NAMES)[idx]
    correct = q[served, idx].astype(float)
    correct[::7] = np.nan  # requests without an outcome
    # The served traffic's "large" broke after validation: every answer it gives is wrong.
    broken = chosen == "large"
    assert broken.sum() >= 20
    correct[broken & ~np.isnan(correct)] = 0.0
    rep = ur.drift_report(router, pool, x[served], x[world["va"]], outcomes=(list(chosen), correct), level=0.9)
    clusters = router.assign(x[served])
    for m in range(3):
        for k in range(K):
            sel = (idx == m) & (clusters == k) & ~np.isnan(correct)
            n, e = sel.sum(), (1 - correct[sel]).sum()
            assert rep.n_outcomes[m, k] == n
            if n == 0:
                assert np.isnan(rep.observed_error[m, k]) and not rep.miscalibrated[m, k]
                continue
            lo = 0.0 if e == 0 else stats.beta.ppf(0.05, e, n - e + 1)
            hi = 1.0 if e == n else stats.beta.ppf(0.95, e + 1, n - e)
            assert rep.observed_error[m, k] == pytest.approx(e / n)
            assert (rep.error_lower[m, k], rep.error_upper[m, k]) == pytest.approx((lo, hi), abs=2e-4)
            est = pool.psi[m, k]
            assert rep.miscalibrated[m, k] == (est < lo or est > hi), (m, k, est, lo, hi)
    large = NAMES.index("large")
    cells = rep.n_outcomes[large] >= 5
    assert cells.any() and rep.miscalibrated[large, cells].all()
    others = rep.n_outcomes[:large] > 0  # the LLMs that did not break: mostly within their intervals
    assert rep.miscalibrated[:large][others].mean() <= 0.5
    assert "large, cluster" in rep.summary()


def test_bad_inputs_name_the_argument(world):
    router, pool, x, va = world["router"], world["pool"], world["x"], world["va"]
    served = x[:10]
    with pytest.raises(ValueError, match="served has shape .* dimension"):
        ur.drift_report(router, pool, served[:, :3], x[va])
    with pytest.raises(ValueError, match="validation_prompts values must be in"):
        ur.drift_report(router, pool, served, np.array([0, 1, K]))
    with pytest.raises(ValueError, match="served is empty"):
        ur.drift_report(router, pool, np.zeros(0, int), x[va])
    with pytest.raises(ValueError, match="outcomes correct has 3 values but served has 10"):
        ur.drift_report(router, pool, served, x[va], outcomes=("small", [1, 0, 1]))
    with pytest.raises(ValueError, match=r"outcomes models names \['nope'\]"):
        ur.drift_report(router, pool, served, x[va], outcomes=(["nope"] * 10, np.ones(10)))
    with pytest.raises(ValueError, match=r"outcomes correct must lie in \[0, 1\]"):
        ur.drift_report(router, pool, served, x[va], outcomes=("small", np.full(10, 1.5)))
    with pytest.raises(TypeError, match="outcomes must be a pair"):
        ur.drift_report(router, pool, served, x[va], outcomes=np.ones(10))
    with pytest.raises(ValueError, match="alpha must be in"):
        ur.drift_report(router, pool, served, x[va], alpha=0.0)


def test_cli_prints_the_report_and_writes_the_plot(world, tmp_path, capsys):
    router, pool, x, q, stream, va = (world[k] for k in ("router", "pool", "x", "q", "stream", "va"))
    router.save(tmp_path / "router.npz")
    pool.save(tmp_path / "pool.npz")
    served = stream[:300]
    np.save(tmp_path / "served.npy", x[served])
    np.save(tmp_path / "val.npy", x[va])
    chosen = np.asarray(router.route(x[served], pool, 0.3).model)
    correct = q[served, [NAMES.index(m) for m in chosen]]
    with open(tmp_path / "outcomes.csv", "w") as f:
        f.write("model,correct\n" + "".join(f"{m},{'' if i % 5 == 0 else c}\n"
                                            for i, (m, c) in enumerate(zip(chosen, correct))))
    argv = ["drift", "-r", tmp_path / "router.npz", "-p", tmp_path / "pool.npz", "--served", tmp_path / "served.npy",
            "--validation", tmp_path / "val.npy", "--outcomes", tmp_path / "outcomes.csv", "--plot", tmp_path / "d.png"]
    code = main([str(a) for a in argv])
    out = capsys.readouterr().out
    lib_correct = correct.astype(float)
    lib_correct[::5] = np.nan
    rep = ur.drift_report(router, pool, x[served], x[va], outcomes=(list(chosen), lib_correct))
    assert code == 0 and out.startswith(rep.summary())
    assert f"PSI {rep.psi:.4f}" in out and rep.mix_moved
    assert (tmp_path / "d.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main([str(a) for a in argv[:-2]] + ["--fail-on-drift"]) == 1
    capsys.readouterr()
    (tmp_path / "bad.csv").write_text("model,correct\nsmall,2\n")
    code = main([str(a) for a in argv[:9]] + ["--outcomes", str(tmp_path / "bad.csv")])
    err = capsys.readouterr().err
    assert code == 2 and "outcomes:" in err and "300 prompts" in err
    code = main([str(a) for a in argv[:-1]] + [str(tmp_path / "pool.npz")])
    assert code == 2 and "--plot" in capsys.readouterr().err
