"""The vLLM Semantic Router export, replayed by a reader written from that router's own semantics.

`SemanticRouterKMeans` below is a NumPy reading of the selector's request path at
vllm-project/semantic-router 3d48f8c9 (ml-binding/src/kmeans.rs `KMeansSelector::from_json` and
`select`; src/semantic-router/pkg/modelselection/selector.go `KMeansSelector.Select`;
trainer.go `CombineEmbeddingWithCategory` and `VSRCategories`): the file's fields as its serde
struct requires them, the feature vector `[embedding, one-hot category]` (unknown categories count
as "other"), the nearest centroid by Euclidean distance in float64, the cluster's model, and the
lookup of that name among the decision's candidates. It shares no code with the export.
"""

import json
import os
import stat

import numpy as np
import pytest

import uniroute_jax as ur
from uniroute_jax._src.feature_maps import SoftMap
from uniroute_jax._src.pool import Pool
from uniroute_jax._src.router import UniRouter
from uniroute_jax.integrations.vllm_sr import CATEGORY_SLOTS, FILE_NAME, export_vllm_sr

VSR_CATEGORIES = ("math", "physics", "chemistry", "biology", "computer science", "history", "economics",
                  "business", "law", "health", "psychology", "philosophy", "other", "unknown")
N_MODELS = 5
N_REPLAY = 10_000


class SemanticRouterKMeans:
    """The kmeans selector as the semantic router loads and runs it."""

    def __init__(self, path):
        data = json.loads(open(path, encoding="utf-8").read())
        # serde: these five fields are required, with these types; other keys are ignored.
        assert isinstance(data["algorithm"], str) and isinstance(data["trained"], bool)
        assert isinstance(data["num_clusters"], int) and data["num_clusters"] >= 0
        assert all(isinstance(m, str) for m in data["cluster_models"])
        rows = data["centroids"]
        assert rows, "an empty centroid list loads as an untrained selector"
        assert len({len(r) for r in rows}) == 1, "Array2::from_shape_vec needs equal rows"
        self.centroids = np.array(rows, np.float64)
        self.cluster_models = list(data["cluster_models"])
        self.trained = data["trained"]

    @staticmethod
    def features(embeddings, categories):
        onehot = np.zeros((len(categories), len(VSR_CATEGORIES)))
        index = {c: i for i, c in enumerate(VSR_CATEGORIES)}
        onehot[np.arange(len(categories)), [index.get(c, index["other"]) for c in categories]] = 1.0
        return np.concatenate([np.asarray(embeddings, np.float64), onehot], axis=1)

    def select(self, embeddings, categories, candidates):
        """Chosen candidate per request: `[n]` names, as `KMeansSelector.Select` returns them."""
        if len(candidates) == 1:
            return np.array([candidates[0]] * len(categories))
        assert self.trained, "KMeans: model not trained"
        q = self.features(embeddings, categories)
        assert q.shape[1] == self.centroids.shape[1], "query and centroids differ in dimension"
        # linfa's L2Dist, squared (the square root keeps the order).
        dist = np.sum((q[:, None, :] - self.centroids[None, :, :]) ** 2, axis=-1)
        chosen = [self.cluster_models[k] for k in np.argmin(dist, axis=1)]  # IndexError: no model for the cluster
        missing = set(chosen) - set(candidates)
        assert not missing, f"selected models {missing} not found in available refs"
        return np.array(chosen)


def table_twin(psi, costs, lam, rows):
    """Per-cluster choice `argmin psi + lam cost` over pool `rows`, ties to the cheaper then lower row."""
    out = []
    for k in range(psi.shape[1]):
        score = psi[rows, k].astype(np.float64) + lam * costs[rows].astype(np.float64)
        out.append(rows[np.lexsort((rows, costs[rows], score))[0]])
    return np.array(out)


@pytest.fixture(scope="module")
def world():
    """Six Gaussian prompt topics in 16 dims; each model's accuracy differs by topic, and the
    accurate models cost more, so the table changes with the budget."""
    rng = np.random.default_rng(5)
    means = rng.normal(scale=3.0, size=(6, 16))
    topic = rng.integers(0, 6, 900)
    e = (means[topic] + rng.normal(size=(900, 16))).astype(np.float32)
    acc = rng.uniform(0.3, 0.95, size=(6, N_MODELS))
    q = (rng.random((900, N_MODELS)) < acc[topic]).astype(np.float32)
    costs = np.array([0.01, 0.1, 0.3, 1.0, 0.2], np.float32)
    return dict(train=e[:500], val=e[500:], q_val=q[500:], costs=costs)


@pytest.fixture(scope="module")
def fitted(world):
    router = UniRouter.fit(world["train"], 6, seed=0, n_init=1)
    names = [f"m{i}" for i in range(N_MODELS)]
    return router, router.represent(world["val"], world["q_val"], names, world["costs"])


@pytest.fixture(scope="module")
def replay(world):
    """10,000 requests: jittered data prompts and wide Gaussian ones, norms from 1e-3 to 100 times
    the data's (the cosine router ignores a prompt's norm; the selector must too), and categories
    from the selector's list plus ones it does not know."""
    rng = np.random.default_rng(0)
    e = world["val"]
    near = e[rng.integers(0, len(e), N_REPLAY // 2)] + rng.normal(size=(N_REPLAY // 2, e.shape[1]))
    wide = rng.normal(size=(N_REPLAY - N_REPLAY // 2, e.shape[1])) * e.std(axis=0) * 2 + e.mean(axis=0)
    x = np.concatenate([near, wide]) * 10.0 ** rng.uniform(-3, 2, size=(N_REPLAY, 1))
    cats = np.array(VSR_CATEGORIES + ("poetry", ""))[rng.integers(0, len(VSR_CATEGORIES) + 2, N_REPLAY)]
    return x.astype(np.float32), list(cats)


def _lams(router, pool):
    """0, the budget where the cost term changes most of the table while still mixing models, and
    one that sends every cluster to the cheapest model."""
    acc = router.decision_table(pool, 0.0)
    best, lam_mid = 0, None
    for lam in ur.lambda_grid(pool.costs, 64):
        t = router.decision_table(pool, float(lam))
        if len(set(t.tolist())) >= 2 and (t != acc).sum() > best:
            best, lam_mid = int((t != acc).sum()), float(lam)
    assert lam_mid is not None, "no budget mixes models: the fixture cannot tell a dropped cost term"
    return [0.0, lam_mid, 50.0]


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_replayed_decisions_equal_the_router(tmp_path, fitted, world, replay, metric):
    router, pool = fitted
    if metric == "euclidean":
        # Centroids of unequal norms: under this metric they are part of the distance.
        router = UniRouter(router.centroids * np.linspace(1.0, 4.0, router.n_clusters)[:, None], "euclidean")
        pool = router.represent(world["val"], world["q_val"], list(pool.names), world["costs"])
    x, cats = replay
    for lam in _lams(router, pool):
        path = export_vllm_sr(router, pool, tmp_path / f"{metric}-{lam}.json", lam=lam)
        sr = SemanticRouterKMeans(path)
        ours = router.route(x, pool, lam)
        np.testing.assert_array_equal(sr.select(x, cats, list(pool.names)), ours.model)
        # The table itself against a NumPy twin of the per-cluster argmin.
        twin = table_twin(pool.psi, pool.costs, lam, np.arange(len(pool)))
        assert sr.cluster_models == [pool.names[i] for i in twin]


def test_subset_of_models(tmp_path, fitted, replay):
    router, pool = fitted
    x, cats = replay
    subset = ["m3", "m1", "m4"]
    for lam in _lams(router, pool.select(subset)):
        path = export_vllm_sr(router, pool, tmp_path / "sub.json", lam=lam, models=subset)
        sr = SemanticRouterKMeans(path)
        np.testing.assert_array_equal(sr.select(x, cats, subset), router.route(x, pool, lam, models=subset).model)
        twin = table_twin(pool.psi, pool.costs, lam, pool.index(sorted(subset)))
        assert sr.cluster_models == [pool.names[i] for i in twin]
        assert json.loads(path.read_text())["model_names"] == ["m1", "m3", "m4"]


def test_cosine_centroids_off_unit_norm(tmp_path, world, replay):
    """Centroids a hand-built router may hold (norms within the 1e-3 the cosine map accepts):
    the router ranks by `c . x`, so the file must cancel the norms' differences."""
    rng = np.random.default_rng(1)
    c = rng.normal(size=(6, world["train"].shape[1]))
    c = c / np.linalg.norm(c, axis=1, keepdims=True) * (1.0 + np.linspace(-9e-4, 9e-4, 6))[:, None]
    router = UniRouter(c.astype(np.float32), "cosine")
    pool = router.represent(world["val"], world["q_val"], [f"m{i}" for i in range(N_MODELS)], world["costs"])
    x, cats = replay
    path = export_vllm_sr(router, pool, tmp_path, lam=0.0)
    assert path == tmp_path / FILE_NAME
    sr = SemanticRouterKMeans(path)
    assert len(set(sr.cluster_models)) >= 2
    np.testing.assert_array_equal(sr.select(x, cats, list(pool.names)), router.route(x, pool, 0.0).model)


def test_file_fields(tmp_path, fitted):
    router, pool = fitted
    path = export_vllm_sr(router, pool, tmp_path / "k.json", lam=0.25, embedding_model="all-MiniLM-L12-v2")
    data = json.loads(path.read_text())
    k, dim = router.n_clusters, router.dim
    assert data["algorithm"] == "kmeans" and data["trained"] is True
    assert data["num_clusters"] == data["n_clusters"] == k and data["feature_dim"] == dim + CATEGORY_SLOTS
    c = np.array(data["centroids"])
    assert c.shape == (k, dim + CATEGORY_SLOTS)
    np.testing.assert_array_equal(c[:, :dim], router.centroids.astype(np.float64))  # bit for bit, in order
    assert (c[:, dim:] == c[:, dim:dim + 1]).all()  # every category alike: the category never decides
    assert data["efficiency_weight"] == 0.0 and data["model_names"] == list(pool.names)
    meta = data["uniroute"]
    assert meta["lam"] == 0.25 and meta["metric"] == "cosine" and meta["embedding_dim"] == dim
    assert meta["embedding_model"] == "all-MiniLM-L12-v2" and meta["router_fingerprint"] == router.fingerprint
    assert meta["costs"] == {n: float(v) for n, v in zip(pool.names, pool.costs)}
    assert sorted(os.listdir(tmp_path)) == ["k.json"]  # no temporary file left behind


def test_read_only_file_is_kept(tmp_path, fitted):
    router, pool = fitted
    path = tmp_path / "k.json"
    path.write_text("{}")
    os.chmod(path, stat.S_IRUSR)
    with pytest.raises(PermissionError, match="read-only"):
        export_vllm_sr(router, pool, path, lam=0.0)
    assert path.read_text() == "{}"


def test_bad_input(tmp_path, fitted, world):
    router, pool = fitted
    out = tmp_path / "k.json"
    with pytest.raises(TypeError, match="router must be a UniRouter"):
        export_vllm_sr("router.npz", pool, out, lam=0.0)
    soft = UniRouter(SoftMap(router.centroids, np.zeros(router.n_clusters), router.centroids, "cosine"))
    with pytest.raises(ValueError, match="router has a soft"):
        export_vllm_sr(soft, pool, out, lam=0.0)
    with pytest.raises(TypeError, match="pool must be a Pool"):
        export_vllm_sr(router, {"m0": 1.0}, out, lam=0.0)
    other = Pool(("a",), [1.0], np.full((1, 3), 0.5), np.ones((1, 3)), np.full((1, 3), 0.5))
    with pytest.raises(ValueError, match="pool has 3 clusters"):
        export_vllm_sr(router, other, out, lam=0.0)
    foreign = UniRouter(router.centroids[::-1].copy(), "cosine")
    with pytest.raises(ValueError, match="pool was built with another router"):
        export_vllm_sr(foreign, pool, out, lam=0.0)
    with pytest.raises(ValueError, match="lam must be a finite number >= 0"):
        export_vllm_sr(router, pool, out, lam=-0.1)
    with pytest.raises(TypeError, match="lam must be a number"):
        export_vllm_sr(router, pool, out, lam="cheap")
    with pytest.raises(ValueError, match=r"models \['m9'\] are not in the pool"):
        export_vllm_sr(router, pool, out, lam=0.0, models=["m9"])
    with pytest.raises(TypeError, match="models must be a list of model names"):
        export_vllm_sr(router, pool, out, lam=0.0, models="m1")
    with pytest.raises(ValueError, match="category_slots must be >= 1"):
        export_vllm_sr(router, pool, out, lam=0.0, category_slots=0)
    with pytest.raises(TypeError, match="category_slots must be an int"):
        export_vllm_sr(router, pool, out, lam=0.0, category_slots=14.0)
    with pytest.raises(ValueError, match="embedding_model must be a non-empty string"):
        export_vllm_sr(router, pool, out, lam=0.0, embedding_model=" ")
    assert not out.exists()
