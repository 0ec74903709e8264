import zipfile

import numpy as np
import pytest

import uniroute_jax as ur
from uniroute_jax._src.router import Pool, UniRouter

N_MODELS = 6


@pytest.fixture(scope="module")
def world():
    w = ur.synthetic_world(3, n_prompts=1500, n_models=N_MODELS)
    e, q, c = np.asarray(w.prompts.embeddings), np.asarray(w.quality), np.asarray(w.llms.costs)
    return dict(train=e[:900], val=e[900:1100], test=e[1100:], q_val=q[900:1100], q_test=q[1100:], costs=c)


@pytest.fixture(scope="module")
def fitted(world):
    router = UniRouter.fit(world["train"], 6, seed=0)
    names = [f"m{i}" for i in range(N_MODELS)]
    return router, router.represent(world["val"], world["q_val"], names, world["costs"])


def test_new_llm_is_one_more_row_without_refit(world, fitted):
    router, pool = fitted
    small = router.represent(world["val"], world["q_val"][:, :4], [f"m{i}" for i in range(4)], world["costs"][:4])
    grown = small
    for i in (4, 5):
        grown = grown + router.represent(world["val"], world["q_val"][:, i], [f"m{i}"], world["costs"][i])
    np.testing.assert_array_equal(grown.psi, pool.psi)
    np.testing.assert_array_equal(grown.costs, pool.costs)
    assert grown.remove("m5", "m4").names == small.names


def test_route_matches_kernel_per_prompt(world, fitted):
    router, pool = fitted
    out = router.route(world["test"], pool, lam=0.2)
    labels = router.assign(world["test"])
    phi = np.eye(router.n_clusters, dtype=np.float32)[labels]
    ref = np.asarray(ur.route(phi, pool.psi, pool.costs, 0.2).choice)
    np.testing.assert_array_equal(out.index, ref)
    assert list(out.model[:3]) == [pool.names[i] for i in ref[:3]]


def test_route_subset_only_uses_subset(world, fitted):
    router, pool = fitted
    out = router.route(world["test"], pool, lam=0.0, models=["m1", "m3"])
    assert set(out.model) <= {"m1", "m3"}


def test_sweep_many_pools_matches_single_pool_sweeps(world, fitted):
    router, pool = fitted
    subsets = [["m0", "m1"], ["m2", "m3", "m4", "m5"], list(pool.names)]
    lams = ur.lambda_grid(pool.costs, 32)
    many = router.sweep(world["test"], pool, lams, quality=world["q_test"], subsets=subsets)
    for p, subset in enumerate(subsets):
        sub = pool.select(subset)
        one = router.sweep(world["test"], sub, lams, quality=world["q_test"][:, pool.index(subset)])
        np.testing.assert_allclose(many.mean_cost[p], one.mean_cost[0], rtol=1e-5)
        np.testing.assert_allclose(many.mean_quality[p], one.mean_quality[0], atol=1e-6)
    assert np.all(np.diff(many.mean_cost, axis=1) <= 1e-6)


def test_save_load_round_trip_exact(tmp_path, fitted):
    router, pool = fitted
    r2 = UniRouter.load(router.save(tmp_path / "router"))
    p2 = Pool.load(pool.save(tmp_path / "pool.npz"))
    np.testing.assert_array_equal(r2.centroids, router.centroids)
    assert (r2.metric, r2.alpha, r2.info) == (router.metric, router.alpha, router.info)
    assert p2.names == pool.names
    for f in ("costs", "psi", "counts", "error_sums"):
        np.testing.assert_array_equal(getattr(p2, f), getattr(pool, f))


def test_truncated_corrupt_foreign_and_tampered_files(tmp_path, fitted):
    router, pool = fitted
    path = router.save(tmp_path / "r.npz")
    raw = path.read_bytes()
    (tmp_path / "cut.npz").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ValueError, match="truncated or corrupt"):
        UniRouter.load(tmp_path / "cut.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip at all")
    with pytest.raises(ValueError, match="truncated or corrupt"):
        UniRouter.load(tmp_path / "junk.npz")
    np.savez(tmp_path / "foreign.npz", centroids=np.zeros((2, 2)))
    with pytest.raises(ValueError, match="not a uniroute-jax file"):
        UniRouter.load(tmp_path / "foreign.npz")
    with pytest.raises(ValueError, match="holds a 'router', not a 'pool'"):
        Pool.load(path)
    # Same layout, different numbers: the checksum catches it.
    with zipfile.ZipFile(path) as z:
        members = {n: z.read(n) for n in z.namelist()}
    np.save(tmp_path / "c.npy", router.centroids + 1)
    members["centroids.npy"] = (tmp_path / "c.npy").read_bytes()
    with zipfile.ZipFile(tmp_path / "tampered.npz", "w") as z:
        for n, b in members.items():
            z.writestr(n, b)
    with pytest.raises(ValueError, match="fails its checksum"):
        UniRouter.load(tmp_path / "tampered.npz")
    with pytest.raises(FileNotFoundError, match="no router file"):
        UniRouter.load(tmp_path / "missing.npz")


@pytest.mark.parametrize("call, exc, match", [
    (lambda r, p, w: r.route(w["test"][:, :3], p, 0.1), ValueError, "expect dimension"),
    (lambda r, p, w: r.route(w["test"], p, -1), ValueError, "lam must be"),
    (lambda r, p, w: r.route(w["test"], p, 0.1, models=["nope"]), ValueError, r"\['nope'\] are not in the pool"),
    (lambda r, p, w: r.route(w["test"], Pool.empty(r.n_clusters), 0.1), ValueError, "pool is empty"),
    (lambda r, p, w: r.route(w["test"], Pool.empty(3) , 0.1), ValueError, "clusters"),
    (lambda r, p, w: r.represent(w["val"], w["q_val"], ["a"] * 6, w["costs"]), ValueError, "duplicates"),
    (lambda r, p, w: r.represent(w["val"], w["q_val"], list("abcdef"), -w["costs"]), ValueError, "costs must be >= 0"),
    (lambda r, p, w: r.represent(w["val"], w["q_val"][:5], list("abcdef"), w["costs"]), ValueError, "val_quality has 5"),
    (lambda r, p, w: r.represent(w["val"], w["q_val"], list("abcde"), w["costs"]), ValueError, "names has 5"),
    (lambda r, p, w: r.sweep(w["test"], p, quality=w["q_test"][:, :2]), ValueError, "quality must have shape"),
    (lambda r, p, w: r.sweep(w["test"], p, subsets=[[]]), ValueError, "subsets\\[0\\] is empty"),
    (lambda r, p, w: UniRouter.fit(w["train"][:5], 6), ValueError, "n_clusters must be <="),
    (lambda r, p, w: p + Pool.empty(2), ValueError, "cannot add"),
])
def test_bad_input_raises(world, fitted, call, exc, match):
    router, pool = fitted
    with pytest.raises(exc, match=match):
        call(router, pool, world)


def test_exact_curve_holds_every_grid_point(world, fitted):
    router, pool = fitted
    exact = router.exact_curve(world["test"], pool, quality=world["q_test"], subsets=[["m0", "m2", "m4"]])
    grid = router.sweep(world["test"], pool, quality=world["q_test"], subsets=[["m0", "m2", "m4"]], n_budgets=64)
    pts = set(zip(np.round(np.asarray(exact.mean_cost[0])[np.asarray(exact.valid[0])], 5),
                  np.round(np.asarray(exact.mean_quality[0])[np.asarray(exact.valid[0])], 5)))
    for c, q in zip(np.round(grid.mean_cost[0], 5), np.round(grid.mean_quality[0], 5)):
        assert (c, q) in pts


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_routing_table_numpy_and_jax_paths_agree_with_route(world, metric):
    router = UniRouter.fit(world["train"], 6, seed=1, metric=metric)
    pool = router.represent(world["val"], world["q_val"], [f"m{i}" for i in range(N_MODELS)], world["costs"])
    expected = router.route(world["test"], pool, 0.3).model
    host = router.routing_table(pool, 0.3, jax_from=10**9)
    device = router.routing_table(pool, 0.3, jax_from=1)
    np.testing.assert_array_equal(host(world["test"]), expected)
    np.testing.assert_array_equal(device(world["test"]), expected)
    with pytest.raises(ValueError, match="embeddings must have shape"):
        host(world["test"][:, :2])
