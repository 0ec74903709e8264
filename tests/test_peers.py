"""The peers' registry: what a peer may read on a trial, and the protocol running every peer."""

from __future__ import annotations

import numpy as np
import pytest

import uniroute_jax as ur
from uniroute_jax._src import evaluation as ev
from uniroute_jax._src.peers import PEERS, peer, peer_view


def test_peer_view_hides_test_rows_and_the_unseen_llms_training_labels():
    rng = np.random.default_rng(0)
    n, m = 12, 4
    quality = rng.random((n, m)).astype(np.float32)
    mask = rng.random((n, m)) > 0.2
    train, val, test = np.arange(0, 6), np.arange(6, 9), np.arange(9, 12)
    unseen = np.array([False, True, False, True])
    q, keep = (np.asarray(a) for a in peer_view(quality, mask, train, val, unseen))
    for i in range(n):
        for h in range(m):
            readable = (i in val) or (i in train and not unseen[h])
            assert keep[i, h] == (mask[i, h] and readable), (i, h)
            assert q[i, h] == (quality[i, h] if keep[i, h] else 0.0), (i, h)


def test_unknown_peer_is_refused_by_name():
    with pytest.raises(ValueError, match="peer must be one of"):
        peer("HierShrunk")


@pytest.mark.slow
def test_evaluate_runs_every_peer_on_the_protocols_trials():
    ds = ur.synthetic_dataset(0, n_prompts=300, n_models=6)
    res = ur.evaluate(ds, (ev.ZERO, ev.KMEANS) + PEERS, n_trials=2,
                      config=ur.ProtocolConfig(k_grid=(5,), n_trials=2), progress=False)
    zero = res.metrics[ev.ZERO].area
    for name in PEERS:
        area = np.asarray(res.metrics[name].area)
        assert area.shape == (2,) and np.all(np.isfinite(area)), name
        # With every validation label, each peer routes unseen LLMs at least as well as the best fixed mix
        # would on most data; here it only has to be a real router: not the same curve as ZeroRouter.
        assert not np.allclose(area, zero), name
