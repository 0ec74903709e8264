import dataclasses

import numpy as np
import pytest

from uniroute_jax._src import evaluation as ev


@pytest.fixture(scope="module")
def small():
    ds = ev.synthetic_dataset(2, n_prompts=600, n_models=9)
    cfg = ev.ProtocolConfig(n_trials=3, k_grid=(4, 8), knn_grid=(3, 10), n_init=1, seed=5)
    return ds, cfg


@pytest.fixture(scope="module")
def result(small):
    ds, cfg = small
    return ev.evaluate(ds, methods=(ev.ZERO, ev.KNN, ev.KMEANS, ev.ORACLE), config=cfg, progress=False)


def test_splits_are_disjoint_and_sized(small):
    ds, cfg = small
    sp = ev.make_splits(ds.n_prompts, ds.n_models, cfg)
    assert sp.train.shape == (3, 360) and sp.val.shape == (3, 60) and sp.test.shape == (3, 180)
    for t in range(3):
        all_idx = np.concatenate([sp.train[t], sp.val[t], sp.test[t]])
        assert len(np.unique(all_idx)) == ds.n_prompts
        assert sp.unseen[t].sum() == 3 and not (sp.unseen[t] & sp.seen[t]).any()


def test_reproducible_for_a_seed(small, result):
    ds, cfg = small
    again = ev.evaluate(ds, methods=(ev.ZERO, ev.KMEANS), config=cfg, progress=False)
    np.testing.assert_array_equal(again.metrics[ev.KMEANS].area, result.metrics[ev.KMEANS].area)
    np.testing.assert_array_equal(again.chosen_k, result.chosen_k)


def test_oracle_bounds_every_router_and_k_from_grid(result):
    oracle = result.metrics[ev.ORACLE].area
    for name in (ev.ZERO, ev.KNN, ev.KMEANS):
        assert np.all(result.metrics[name].area <= oracle + 1e-5)
    assert set(result.chosen_k) <= {4, 8} and set(result.chosen_knn_k) <= {3, 10}


def test_zero_router_area_equals_hull_of_test_models(small, result):
    """ZeroRouter's curve is the hull, on test data, of the models its validation hull picks."""
    ds, _ = small
    sp = result.splits
    for t in range(3):
        te, va, pool = sp.test[t], sp.val[t], np.flatnonzero(sp.unseen[t])
        val_acc = ds.quality[va][:, pool].mean(0)
        cost = ds.model_costs[pool]
        hull = np.asarray(ev.metrics.upper_hull_mask(cost, val_acc, np.ones(len(pool), bool)))
        test_cost = ds.model_costs[pool]
        test_acc = ds.quality[te][:, pool].mean(0)
        # The sweep visits the validation hull's vertices; the curve joins their test points.
        expected = float(ev.metrics.area(test_cost[hull], test_acc[hull], np.ones(hull.sum(), bool),
                                         cost_norm=test_cost.max()))
        assert result.metrics[ev.ZERO].area[t] == pytest.approx(expected, abs=1e-5)


def test_table_and_plot(result, tmp_path):
    table = result.table()
    assert "| UniRoute (K-Means) |" in table and "sign test" in table
    assert result.table("csv").splitlines()[0].startswith("method,Area")
    assert result.plot(tmp_path / "c.png").stat().st_size > 1000
    st = result.sign_test(ev.ORACLE, ev.ZERO)
    assert st.n_wins_a + st.n_wins_b + st.n_ties == 3


@pytest.mark.slow
def test_trained_methods_run(small):
    ds, cfg = small
    import dataclasses
    res = ev.evaluate(ds, methods=(ev.LEARNED, ev.MLP, ev.ORACLE), config=dataclasses.replace(cfg, n_trials=2),
                      progress=False)
    for name in (ev.LEARNED, ev.MLP):
        assert np.all(res.metrics[name].area <= res.metrics[ev.ORACLE].area + 1e-5)
        assert np.all(res.metrics[name].area > 0.3)


@pytest.mark.parametrize("kwargs, match", [
    (dict(methods=("Magic",)), "methods must be a non-empty subset"),
    (dict(n_trials=0), "n_trials must be >= 1"),
])
def test_bad_input(small, kwargs, match):
    ds, cfg = small
    with pytest.raises(ValueError, match=match):
        ev.evaluate(ds, config=cfg, progress=False, **kwargs)


def test_dataset_without_embeddings_is_refused(small):
    import dataclasses

    ds, cfg = small
    with pytest.raises(ValueError, match="has no embeddings"):
        ev.evaluate(dataclasses.replace(ds, embeddings=None), config=cfg, progress=False)


def test_estimator_option(small, result):
    ds, cfg = small
    kmeans_area = lambda res: np.asarray(res.metrics[ev.KMEANS].area)  # noqa: E731
    run = lambda **kw: ev.evaluate(ds, methods=(ev.KMEANS,), config=dataclasses.replace(cfg, **kw),  # noqa: E731
                                   progress=False)
    mean, no_pseudo_count = run(estimator="mean"), run(alpha=0.0)
    # "mean" is the per-cluster mean: the pseudo-count rule with alpha = 0, whatever alpha says ...
    np.testing.assert_array_equal(kmeans_area(mean), kmeans_area(no_pseudo_count))
    # ... and alpha = 1 (the default rule) routes differently on these data.
    assert np.any(kmeans_area(mean) != kmeans_area(result))
    prior = run(estimator="prior")
    assert np.all(np.isfinite(kmeans_area(prior))) and np.any(kmeans_area(prior) != kmeans_area(result))
    assert set(prior.chosen_k.tolist()) <= set(cfg.k_grid)


def test_config_validation():
    with pytest.raises(ValueError, match="estimator"):
        ev.ProtocolConfig(estimator="median")
    with pytest.raises(ValueError, match="fractions"):
        ev.ProtocolConfig(fractions=(0.5, 0.5, 0.5))
    with pytest.raises(ValueError, match="k_grid"):
        ev.ProtocolConfig(k_grid=())
