import json

import numpy as np
import pytest

import uniroute_jax as ur
from uniroute_jax._src.cli import main
from uniroute_jax._src.explain import choose, decide, explain


@pytest.fixture(scope="module")
def fitted():
    w = ur.synthetic_world(5, n_prompts=700, n_models=4)
    x, q = np.asarray(w.prompts.embeddings), np.asarray(w.quality)
    router = ur.UniRouter.fit(x[:300], 5, seed=0, n_init=1)
    pool = router.represent(x[300:450], q[300:450], ["w", "x", "y", "z"], [0.1, 0.3, 0.6, 1.0])
    return router, pool, x[450:]


@pytest.mark.parametrize("lam", [0.0, 0.2, 0.7, 3.0])
def test_explain_decides_like_the_router(fitted, lam):
    router, pool, x = fitted
    decisions = explain(router, pool, x, lam)
    expected = router.route(x, pool, lam)
    assert [d.model for d in decisions] == list(expected.model)
    assert [d.cluster for d in decisions] == list(expected.cluster)
    d = decisions[0]
    np.testing.assert_allclose(d.error, pool.psi[:, d.cluster])
    np.testing.assert_allclose(d.score, pool.psi[:, d.cluster] + lam * pool.costs, rtol=1e-6)


def test_explain_with_per_request_costs_matches_a_numpy_twin(fitted):
    router, pool, x = fitted
    rng = np.random.default_rng(0)
    costs = rng.uniform(0, 1, (x.shape[0], len(pool)))
    decisions = explain(router, pool, x, 0.4, costs=costs, models=["x", "z", "w"])
    clusters = router.assign(x)
    rows = pool.index(["x", "z", "w"])
    for j, d in enumerate(decisions):
        score = pool.psi[rows, clusters[j]] + 0.4 * costs[j, rows]
        assert d.model == ["x", "z", "w"][int(np.argmin(score))]
    with pytest.raises(ValueError, match="costs must have shape"):
        explain(router, pool, x, 0.4, costs=costs[:, :2])


def test_ties_go_to_the_cheaper_then_lower_index():
    assert choose(np.array([0.5, 0.5, 0.5], np.float32), np.array([1.0, 0.2, 0.2], np.float32)) == 1
    assert choose(np.array([0.5, 0.4, 0.5], np.float32), np.array([1.0, 0.2, 0.2], np.float32)) == 1
    d = decide(3, ["a", "b"], np.array([0.2, 0.3]), np.array([1.0, 0.0]), 0.1)
    assert d.model == "b" and d.as_dict()["candidates"][0]["score"] == pytest.approx(0.3)


def test_explain_command_prints_the_table(fitted, tmp_path, capsys):
    router, pool, x = fitted
    router.save(tmp_path / "r.npz")
    pool.save(tmp_path / "p.npz")
    np.save(tmp_path / "e.npy", x[:3])
    assert main(["explain", "-r", str(tmp_path / "r.npz"), "-p", str(tmp_path / "p.npz"),
                 "-e", str(tmp_path / "e.npy"), "--lam", "0.5", "--json"]) == 0
    rows = [json.loads(l) for l in capsys.readouterr().out.splitlines()]
    assert [r["model"] for r in rows] == list(router.route(x[:3], pool, 0.5).model)
    assert {c["name"] for c in rows[0]["candidates"]} == set(pool.names)
    assert main(["explain", "-r", str(tmp_path / "r.npz"), "-p", str(tmp_path / "p.npz"),
                 "-e", str(tmp_path / "e.npy")]) == 0
    out = capsys.readouterr().out
    assert out.count("<-") == 3 and "est. error" in out
