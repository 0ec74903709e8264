"""Other routers' onboarding methods, in the protocol's terms: one registry for the studies.

Each peer estimates a new LLM's error on every test prompt from its labels on a few validation
prompts, written from the peer's public description (the modules say what and where we had to
choose). They share one interface, so the label-efficiency study scores them beside our
estimators on the same trials, labels and test prompts:

    params = fit(key, emb, quality, label_mask, train, val, seen, centroids, budgets)   # per trial
    errors = predict(params, emb, quality, label_mask, val, test, seen, selected)        # [n_test, n_models]

`seen [n_models]` marks the training LLMs (labels on every training and validation prompt);
the others are new, labelled on the validation prompts where `selected [n_val]` is True.
`centroids [K, dim]` are the trial's UniRoute clusters and `budgets [n_budgets]` the label counts a
fit may tune for. `predict` is vmappable over `selected`.

| name | method | module |
|---|---|---|
| `HierShrink` | two-level cluster table, m-estimate fine -> coarse -> global, 24 pseudo-counts per level | `peers_cluster` |
| `HierShrink (tuned)` | the same, pseudo-counts chosen on the training LLMs per label count | `peers_cluster` |
| `difficulty-weighted` | cluster estimates from probes weighted by their predicted difficulty | `peers_cluster` |
| `k-NN (tuned)` | neighbours among the labelled prompts, k and weighting chosen on the training LLMs | `peers_item` |
| `IRT` | item-response model: prompt difficulty and discrimination, an ability per LLM | `peers_item` |
"""

from __future__ import annotations

import functools
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

PEERS = ("HierShrink", "HierShrink (tuned)", "difficulty-weighted", "k-NN (tuned)", "IRT")


class Peer(NamedTuple):
    fit: Callable  # (key, emb, quality, label_mask, train, val, seen, centroids, budgets) -> params
    predict: Callable  # (params, emb, quality, label_mask, val, test, seen, selected) -> [n_test, n_models]


def peer(name: str) -> Peer:
    """The `fit` and `predict` of one of `PEERS`."""
    if name not in PEERS:
        raise ValueError(f"peer must be one of {', '.join(PEERS)}, got {name!r}")
    from uniroute_jax._src import peers_cluster, peers_item

    table = {
        "HierShrink": Peer(functools.partial(peers_cluster.fit_hiershrink, tuned=False),
                           peers_cluster.predict_hiershrink),
        "HierShrink (tuned)": Peer(functools.partial(peers_cluster.fit_hiershrink, tuned=True),
                                   peers_cluster.predict_hiershrink),
        "difficulty-weighted": Peer(peers_cluster.fit_difficulty, peers_cluster.predict_difficulty),
        "k-NN (tuned)": Peer(peers_item.fit_knn_tuned, peers_item.predict_knn_tuned),
        "IRT": Peer(peers_item.fit_irt, peers_item.predict_irt),
    }
    return table[name]


@jax.jit
def peer_view(quality: jax.Array, label_mask: jax.Array, train: jax.Array, val: jax.Array, unseen: jax.Array):
    """`(quality, label_mask)` as a peer may read them on one trial, `[n_prompts, n_models]` each:
    the training LLMs' labels on the training and validation prompts, the unseen LLMs' on the
    validation prompts only (which of those a peer sees is `selected`'s business), nothing on the
    test prompts. What is hidden reads as quality 0 and unmasked."""
    rows = jnp.zeros(quality.shape[0], bool)
    seen_rows, val_rows = rows.at[train].set(True).at[val].set(True), rows.at[val].set(True)
    keep = label_mask & jnp.where(unseen[None, :], val_rows[:, None], seen_rows[:, None])
    return jnp.where(keep, quality, 0.0), keep
