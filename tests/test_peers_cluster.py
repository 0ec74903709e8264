"""HierShrink and difficulty-weighted probes: NumPy twins, m-estimate limits, tuning, label efficiency."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from uniroute_jax._src import peers_cluster as pc

N, M, DIM, K = 60, 5, 4, 3
BUDGETS = jnp.array([1, 3, 6], jnp.int32)


def _world(seed=0):
    rng = np.random.default_rng(seed)
    emb = rng.normal(size=(N, DIM)).astype(np.float32)
    quality = (rng.uniform(size=(N, M)) < 0.6).astype(np.float32)
    mask = rng.uniform(size=(N, M)) < 0.9
    perm = rng.permutation(N).astype(np.int32)
    train, val, test = perm[:36], perm[36:42], perm[42:]
    seen = np.array([True, True, True, False, False])
    cent = emb[train[:K]] / np.linalg.norm(emb[train[:K]], axis=1, keepdims=True)
    return emb, quality, mask, train, val, test, seen, cent


def _args(w):
    emb, quality, mask, train, val, test, seen, cent = w
    return tuple(jnp.asarray(a) for a in (emb, quality, mask, train, val, seen, cent))


def _nearest(x, c):
    return np.array([int(np.argmax([np.dot(xi, cj) for cj in c])) for xi in x])


def _hier_twin(params, w, selected, m=None, prior=None):
    """Plain-loop HierShrink from the module docstring."""
    emb, quality, mask, _, val, test, seen, _ = w
    coarse, fine = np.asarray(params.coarse), np.asarray(params.fine)
    if m is None:
        b = np.asarray(params.budgets)
        m = np.asarray(params.m)[int(np.argmin(np.abs(b - selected.sum())))]
    prior = float(params.prior) if prior is None else prior
    fv, cv, ft, ct = _nearest(emb[val], fine), _nearest(emb[val], coarse), _nearest(emb[test], fine), _nearest(emb[test], coarse)
    out = np.zeros((len(test), M))
    for h in range(M):
        lab = [i for i in range(len(val)) if mask[val[i], h] and (seen[h] or selected[i])]
        e = {i: 1.0 - quality[val[i], h] for i in lab}
        g = (sum(e.values()) + m[2] * prior) / (len(lab) + m[2])
        for t in range(len(test)):
            ci = [i for i in lab if cv[i] == ct[t]]
            c = (sum(e[i] for i in ci) + m[1] * g) / (len(ci) + m[1])
            fi = [i for i in lab if fv[i] == ft[t]]
            out[t, h] = (sum(e[i] for i in fi) + m[0] * c) / (len(fi) + m[0])
    return out


def _diff_twin(params, w, selected, s=None):
    emb, quality, mask, _, val, test, seen, _ = w
    b = np.asarray(params.budgets)
    s = np.asarray(params.s)[int(np.argmin(np.abs(b - selected.sum())))] if s is None else s
    cent = np.asarray(params.centroids)
    kv, kt = _nearest(emb[val], cent), _nearest(emb[test], cent)
    d = np.clip(np.asarray(params.difficulty), 0.01, 0.99)
    base = np.clip(np.asarray(params.base), 0.01, 0.99)
    out = np.zeros((len(test), M))
    for h in range(M):
        lab = [i for i in range(len(val)) if mask[val[i], h] and (seen[h] or selected[i])]
        r = {i: (1.0 - quality[val[i], h]) - d[i] for i in lab}
        info = {i: d[i] * (1 - d[i]) for i in lab}
        t0 = sum(r.values()) / (sum(info.values()) + s[0])
        for t in range(len(test)):
            ki = [i for i in lab if kv[i] == kt[t]]
            tk = (sum(r[i] for i in ki) + s[1] * t0) / (sum(info[i] for i in ki) + s[1])
            z = np.log(base[kt[t]] / (1 - base[kt[t]])) + tk
            out[t, h] = 1 / (1 + np.exp(-z))
    return out


@pytest.fixture(scope="module")
def world():
    return _world()


@pytest.fixture(scope="module")
def fitted(world):
    emb, q, lm, tr, va, seen, cent = _args(world)
    h = pc.fit_hiershrink(jax.random.key(0), emb, q, lm, tr, va, seen, cent, BUDGETS, tuned=False, n_coarse=3, n_fine=8)
    d = pc.fit_difficulty(jax.random.key(0), emb, q, lm, tr, va, seen, cent, BUDGETS)
    return h, d


def _predict(fn, params, world, selected):
    emb, quality, mask, _, val, test, seen, _ = world
    return np.asarray(fn(params, jnp.asarray(emb), jnp.asarray(quality), jnp.asarray(mask), jnp.asarray(val),
                         jnp.asarray(test), jnp.asarray(seen), jnp.asarray(selected)))


SELECTIONS = [np.array([1, 0, 1, 0, 0, 1], bool), np.zeros(6, bool), np.ones(6, bool)]


@pytest.mark.parametrize("sel", range(3))
def test_hiershrink_matches_twin(world, fitted, sel):
    got = _predict(pc.predict_hiershrink, fitted[0], world, SELECTIONS[sel])
    np.testing.assert_allclose(got, _hier_twin(fitted[0], world, SELECTIONS[sel]), atol=1e-5)


@pytest.mark.parametrize("sel", range(3))
def test_difficulty_matches_twin(world, fitted, sel):
    got = _predict(pc.predict_difficulty, fitted[1], world, SELECTIONS[sel])
    np.testing.assert_allclose(got, _diff_twin(fitted[1], world, SELECTIONS[sel]), atol=1e-5)


def test_difficulty_fit_statistics(world, fitted):
    emb, quality, mask, train, val, test, seen, cent = world
    err = 1 - quality
    for i, v in enumerate(val):
        lab = [h for h in range(M) if seen[h] and mask[v, h]]
        if lab:
            np.testing.assert_allclose(float(fitted[1].difficulty[i]), np.mean([err[v, h] for h in lab]), atol=1e-6)
    kt = _nearest(emb[train], cent)
    for k in range(K):
        vals = [err[p, h] for j, p in enumerate(train) if kt[j] == k for h in range(M) if seen[h] and mask[p, h]]
        if vals:
            np.testing.assert_allclose(float(fitted[1].base[k]), np.mean(vals), atol=1e-6)


def test_predict_vmaps_over_selected(world, fitted):
    sels = np.stack(SELECTIONS)
    emb, quality, mask, _, val, test, seen, _ = (jnp.asarray(a) for a in world)
    for fn, p in [(pc.predict_hiershrink, fitted[0]), (pc.predict_difficulty, fitted[1])]:
        batched = jax.vmap(fn, (None,) * 7 + (0,))(p, emb, quality, mask, val, test, seen, jnp.asarray(sels))
        for i in range(3):
            np.testing.assert_allclose(np.asarray(batched[i]), _predict(fn, p, world, sels[i]), atol=1e-6)


def test_unselected_labels_do_not_leak(world, fitted):
    """A new LLM's estimate ignores labels on unselected validation prompts."""
    emb, quality, mask, tr, val, test, seen, cent = world
    sel = SELECTIONS[0]
    q2 = quality.copy()
    q2[val[~sel][:, None], np.flatnonzero(~seen)[None]] = 1 - q2[val[~sel][:, None], np.flatnonzero(~seen)[None]]
    w2 = (emb, q2, mask, tr, val, test, seen, cent)
    for fn, p in [(pc.predict_hiershrink, fitted[0]), (pc.predict_difficulty, fitted[1])]:
        a, b = _predict(fn, p, world, sel), _predict(fn, p, w2, sel)
        np.testing.assert_allclose(a[:, ~seen], b[:, ~seen], atol=1e-6)


def test_m_estimate_limits(world, fitted):
    emb, quality, mask, _, val, test, seen, _ = world
    p = fitted[0]
    # 0 labels: a new LLM's estimate is the global prior everywhere (coarse and fine have no data).
    none = _predict(pc.predict_hiershrink, p, world, np.zeros(6, bool))
    np.testing.assert_allclose(none[:, ~seen], float(p.prior), atol=1e-6)
    # Huge fine pseudo-count: the coarse level; huge counts everywhere but fine ~0: the fine cluster's own mean.
    sel = np.ones(6, bool)
    big_fine = p._replace(m=jnp.tile(jnp.array([[1e9, 1e-9, 1e-9]]), (3, 1)))
    tiny_fine = p._replace(m=jnp.tile(jnp.array([[1e-9, 1e9, 1e9]]), (3, 1)))
    fv, cv = _nearest(emb[val], np.asarray(p.fine)), _nearest(emb[val], np.asarray(p.coarse))
    ft, ct = _nearest(emb[test], np.asarray(p.fine)), _nearest(emb[test], np.asarray(p.coarse))
    a, b = _predict(pc.predict_hiershrink, big_fine, world, sel), _predict(pc.predict_hiershrink, tiny_fine, world, sel)
    checked = 0
    for h in np.flatnonzero(~seen):
        for t in range(len(test)):
            cl = [i for i in range(6) if mask[val[i], h] and cv[i] == ct[t]]
            fl = [i for i in range(6) if mask[val[i], h] and fv[i] == ft[t]]
            if cl:
                np.testing.assert_allclose(a[t, h], np.mean([1 - quality[val[i], h] for i in cl]), atol=1e-5)
            if fl:
                np.testing.assert_allclose(b[t, h], np.mean([1 - quality[val[i], h] for i in fl]), atol=1e-5)
                checked += 1
    assert checked > 0


def _brute_hier(world, params, grid):
    emb, quality, mask, train, val, _, seen, cent = world
    err = 1 - quality
    own = [np.mean([err[v, h] for v in val if mask[v, h]]) for h in range(M)]
    best, arg = np.inf, None
    for mf in grid:
        for mc in grid:
            for mg in grid:
                loss = 0.0
                for h in np.flatnonzero(seen):
                    prior = np.mean([own[g] for g in np.flatnonzero(seen) if g != h])
                    sub = np.zeros(M, bool); sub[h] = False
                    w = (emb, quality, mask, train, val, train, sub, cent)
                    pred = _hier_twin(params, w, np.ones(len(val), bool), m=(mf, mc, mg), prior=prior)[:, h]
                    loss += sum((pred[j] - err[p, h]) ** 2 for j, p in enumerate(train) if mask[p, h])
                if loss < best - 1e-9:
                    best, arg = loss, (mf, mc, mg)
    return np.array(arg)


@pytest.mark.slow
def test_tuning_matches_brute_force(world):
    """With one budget covering every validation prompt the simulated masks are deterministic."""
    emb, q, lm, tr, va, seen, cent = _args(world)
    budgets = jnp.array([6], jnp.int32)
    p = pc.fit_hiershrink(jax.random.key(0), emb, q, lm, tr, va, seen, cent, budgets, tuned=True, n_coarse=3, n_fine=8)
    grid = np.asarray(jnp.asarray(pc.GRID, jnp.float32))
    np.testing.assert_allclose(np.asarray(p.m[0]), _brute_hier(world, p, grid), rtol=1e-5)


def test_fine_clusters_clipped_to_training_prompts(world):
    emb, q, lm, tr, va, seen, cent = _args(world)
    p = pc.fit_hiershrink(jax.random.key(0), emb, q, lm, tr[:5], va, seen, cent, BUDGETS, tuned=False, n_coarse=3, n_fine=8)
    assert p.fine.shape[0] == 5 and p.coarse.shape[0] == 3


@pytest.mark.slow
def test_more_labels_closer_to_truth():
    from uniroute_jax._src.synthetic import WorldConfig, synthetic_world

    w = synthetic_world(0, n_prompts=400, n_models=8, config=WorldConfig(n_components=6))
    rng = np.random.default_rng(0)
    perm = rng.permutation(400).astype(np.int32)
    tr, va, te = perm[:240], perm[240:320], perm[320:]
    seen = np.arange(8) < 5
    emb, q = jnp.asarray(w.prompts.embeddings, jnp.float32), jnp.asarray(w.quality)
    lm = jnp.ones(q.shape, bool)
    cent = jnp.asarray(pc.fit_hiershrink(jax.random.key(1), emb, q, lm, jnp.asarray(tr), jnp.asarray(va), jnp.asarray(seen),
                                         None, BUDGETS, tuned=False, n_coarse=6, n_fine=6).coarse)
    budgets = jnp.array([2, 80], jnp.int32)
    truth = np.asarray(w.p_error)[te][:, ~seen]
    fits = [(pc.predict_hiershrink, pc.fit_hiershrink(jax.random.key(2), emb, q, lm, jnp.asarray(tr), jnp.asarray(va),
                                                      jnp.asarray(seen), cent, budgets, tuned=True, n_coarse=4, n_fine=12)),
            (pc.predict_difficulty, pc.fit_difficulty(jax.random.key(2), emb, q, lm, jnp.asarray(tr), jnp.asarray(va),
                                                      jnp.asarray(seen), cent, budgets))]
    for fn, p in fits:
        mae = {}
        for b in (2, 80):
            errs = []
            for r in range(5):
                sel = np.zeros(80, bool); sel[np.random.default_rng(r).permutation(80)[:b]] = True
                est = np.asarray(fn(p, emb, q, lm, jnp.asarray(va), jnp.asarray(te), jnp.asarray(seen), jnp.asarray(sel)))
                errs.append(np.abs(est[:, ~seen] - truth).mean())
            mae[b] = np.mean(errs)
        assert mae[80] < mae[2] - 0.01, mae
