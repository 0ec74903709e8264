"""UniRoute as a vLLM Semantic Router `kmeans` selector: a router and pool frozen at one `lambda`.

vLLM Semantic Router (https://github.com/vllm-project/semantic-router) chooses among a
decision's `modelRefs` with learned selectors. Its `kmeans` selector reads a JSON file
(`<models_path>/kmeans_model.json`, or `kmeans.pretrained_path`) holding centroids and one model
name per cluster, and sends each request to the model of its nearest centroid: Euclidean
distance over the feature vector `[query embedding, one-hot of the request's category]`, the
category taking one of 14 slots ("math", ..., "other", "unknown"; an unknown one counts as
"other"; as read at semantic-router commit 3d48f8c9 in ml-binding/src/kmeans.rs and
src/semantic-router/pkg/modelselection/{selector,trainer}.go). UniRoute (K-Means) at a fixed
`lambda` is exactly such a table: every prompt of cluster `k` goes to
`argmin_h Psi(h)[k] + lambda * cost(h)`, so the export writes the router's centroids and that
decision per cluster (`UniRouter.decision_table`).

What the file keeps: the centroids, in the router's order, and each cluster's decision at the
exported `lambda` over the pool (or the `models` subset), ties already broken the router's way
(the cheaper model, then the lower pool row). The cost term is folded into that choice.

What it cannot keep:
  * `lambda` itself, `Psi` and the costs: the format has one model per cluster and no score, so
    another budget, pool or cost needs a new export (the selector's `efficiency_weight` is not
    read at request time; it is written as 0). `lambda`, the metric, the candidates' costs and
    the router's fingerprint are recorded under the key `"uniroute"`, which the selector ignores.
  * per-request costs (`request_costs`, token prices): only the pool's per-model costs.
  * a soft (learned) map: its decisions are made per prompt, not per cluster, and are refused;
    a learned map fitted with `psi_source="hard"` shares its pools with
    `UniRouter(router.centroids, router.metric, alpha=router.alpha)`, which exports.
  * the embedding model: the selector embeds requests with the model it is configured with
    (its registry offers Qwen3-Embedding-0.6B, embeddinggemma-300m, all-MiniLM-L12-v2 and
    mmBERT embedders, not uniroute's default all-MiniLM-L6-v2), so fit the router on
    embeddings from that same model and set `embedding_dim` to `router.dim`.

The metric carries over exactly. Under "euclidean" the centroids are written as they are and
the category's one-hot adds 1 to every squared distance. Under "cosine" the router ranks
centroids by `c_k . x`, while the selector ranks by `|x - c_k|^2 = |x|^2 - 2 c_k . x + |c_k|^2`;
the 14 category columns of centroid `k` all hold the same value `t_k`, which adds
`1 - 2 t_k + 14 t_k^2` to its squared distance whatever the category, and `t_k` is chosen so that
this makes up for the (rounding-sized) differences of `|c_k|^2`: the selector's ranking is then
`-c_k . x` plus a constant for every query, normalised or not. Decisions agree up to floating
point: the router compares in float32 and the selector in float64, so a prompt within rounding
of two centroids may go either way, as may an exact tie (the router takes the lower cluster).

    export_vllm_sr(router, pool, "models/kmeans_model.json", lam=0.5)

Router configuration (the names in `cluster_models` must be among the decision's `modelRefs`):

    global:
      router:
        model_selection:
          ml:
            models_path: models
            embedding_dim: <router.dim>
            kmeans: {num_clusters: <router.n_clusters>, pretrained_path: models/kmeans_model.json}
    routing:
      decisions:
        - name: ...
          algorithm: {type: kmeans}
          modelRefs: [{model: <name>}, ...]
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from uniroute_jax._src import persistence, validation
from uniroute_jax._src.pool import Pool
from uniroute_jax._src.router import UniRouter

FILE_NAME = "kmeans_model.json"  # the name the selector loads from `models_path`
CATEGORY_SLOTS = 14  # the selector's domain categories, one-hot after the embedding


def category_columns(centroids: np.ndarray, metric: str, slots: int = CATEGORY_SLOTS) -> np.ndarray:
    """The value `t_k` of centroid `k`'s category columns, `[n_clusters]` float64.

    A query's one-hot has a single 1 among `slots` columns, so columns all equal to `t` add
    `1 - 2 t + slots t^2` to the squared distance, whichever the category. Under "cosine", `t_k`
    adds `d_k = max_j |c_j|^2 - |c_k|^2` on top of the constant 1 (the smaller root of
    `slots t^2 - 2 t = d_k`, written so it does not cancel), which levels `|c_k|^2 + d_k` across
    clusters; under "euclidean" the norms are part of the distance and every `t_k` is 0.
    """
    c = np.asarray(centroids, np.float64)
    if metric != "cosine":
        return np.zeros(c.shape[0])
    sq = np.sum(c * c, axis=1)
    d = sq.max() - sq
    return -d / (1.0 + np.sqrt(1.0 + slots * d))


def kmeans_model(router: UniRouter, pool: Pool, *, lam: float, models: Sequence[str] | None = None,
                 category_slots: int = CATEGORY_SLOTS, embedding_model: str | None = None) -> dict[str, Any]:
    """The selector's model as a JSON-ready dict (what `export_vllm_sr` writes); arguments as there."""
    if not isinstance(router, UniRouter):
        raise TypeError(f"router must be a UniRouter, got {type(router).__name__}")
    if not router.feature_map.hard:
        raise ValueError("router has a soft (learned) map, whose decisions are per prompt; the kmeans selector "
                         "holds one model per nearest centroid: export UniRouter(router.centroids, router.metric, "
                         "alpha=router.alpha) with a pool it built")
    lam = validation.nonnegative_float(lam, "lam")
    slots = validation.positive_int(category_slots, "category_slots")
    if embedding_model is not None and (not isinstance(embedding_model, str) or not embedding_model.strip()):
        raise ValueError(f"embedding_model must be a non-empty string or None, got {embedding_model!r}")
    if isinstance(models, str):
        raise TypeError(f"models must be a list of model names, got the string {models!r}")
    table = router.decision_table(pool, lam, models=models)  # checks pool (router, clusters) and models
    rows = range(len(pool)) if models is None else np.flatnonzero(pool.masks([models])[0])
    c = np.asarray(router.centroids, np.float64)  # float32 values, exactly
    t = category_columns(c, router.metric, slots)
    features = np.concatenate([c, np.repeat(t[:, None], slots, axis=1)], axis=1)
    k = router.n_clusters
    return {
        # The selector's own fields (ml-binding KMeansModelData, plus what its trainer writes).
        "algorithm": "kmeans",
        "trained": True,
        "num_clusters": k,
        "n_clusters": k,
        "centroids": features.tolist(),  # float64 reprs: read back bit for bit
        "cluster_models": [pool.names[int(i)] for i in table],
        "model_names": [pool.names[i] for i in rows],
        "feature_dim": router.dim + slots,
        "efficiency_weight": 0.0,  # cost is already in cluster_models
        # Ignored by the selector: what the table was made from, to check a deployment against.
        "uniroute": {
            "lam": lam,
            "metric": router.metric,
            "embedding_dim": router.dim,
            "embedding_model": embedding_model,
            "category_slots": slots,
            "costs": {pool.names[i]: float(pool.costs[i]) for i in rows},
            "router_fingerprint": router.fingerprint,
        },
    }


def export_vllm_sr(router: UniRouter, pool: Pool, path: str | os.PathLike, *, lam: float,
                   models: Sequence[str] | None = None, category_slots: int = CATEGORY_SLOTS,
                   embedding_model: str | None = None) -> Path:
    """Writes `router` and `pool` at trade-off `lam` as a vLLM Semantic Router kmeans model file.

    Args:
      router: a k-means (`HardMap`) `UniRouter` over `[dim]` embeddings from the embedding model
        the semantic router is configured with.
      pool: a `Pool` built by `router`.
      path: the JSON file to write, or an existing folder (then `kmeans_model.json` in it, the
        name the selector loads from `models_path`). Written atomically.
      lam: trade-off >= 0, fixed into the per-cluster choice.
      models: optional subset of the pool's names to choose among.
      category_slots: size of the selector's category one-hot (14 as of semantic-router 3d48f8c9).
      embedding_model: optional name of the embedding model, recorded in the file.

    Returns:
      The path written. Its `centroids` are `[n_clusters, dim + category_slots]` and its
      `cluster_models` `[n_clusters]` model names.

    Raises:
      TypeError: `router` is not a `UniRouter`, or `pool` not a `Pool`.
      ValueError: a soft-map `router`, a `pool` of another router, `lam` < 0, unknown `models`,
        `category_slots` < 1.
      PermissionError: `path` is a read-only file.
    """
    data = kmeans_model(router, pool, lam=lam, models=models, category_slots=category_slots,
                        embedding_model=embedding_model)
    path = Path(path)
    if path.is_dir():
        path = path / FILE_NAME
    with persistence.write_atomic(path, "w", encoding="utf-8") as f:
        json.dump(data, f)
    return path
