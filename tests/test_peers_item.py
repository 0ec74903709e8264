"""Tuned k-NN and IRT peers against plain NumPy twins, on tiny problems."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from uniroute_jax._src import peers_item as pi

N_PROMPTS, N_MODELS, DIM = 48, 5, 6


def _problem(seed=0, *, binary=True):
    rng = np.random.default_rng(seed)
    emb = rng.normal(size=(N_PROMPTS, DIM)).astype(np.float32)
    q = rng.integers(0, 2, size=(N_PROMPTS, N_MODELS)) if binary else rng.uniform(size=(N_PROMPTS, N_MODELS))
    q = q.astype(np.float32)
    mask = rng.uniform(size=q.shape) > 0.15
    q = np.where(mask, q, 0.0).astype(np.float32)
    perm = rng.permutation(N_PROMPTS)
    train, val, test = perm[:24], perm[24:36], perm[36:]
    seen = np.array([True, True, True, False, False])
    return emb, q, mask, train.astype(np.int32), val.astype(np.int32), test.astype(np.int32), seen


def _unit(x):
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


# --------------------------------------------------------------------------------- k-NN


def _knn_twin(k, beta, emb, q, mask, val, test, selected):
    """Plain loops: the k most similar selected validation prompts vote with weight exp(beta * cos)."""
    u = _unit(emb.astype(np.float64))
    out = np.zeros((len(test), q.shape[1]))
    chosen = [j for j in range(len(val)) if selected[j]]
    for i, t in enumerate(test):
        sims = {j: float(u[t] @ u[val[j]]) for j in chosen}
        ranked = sorted(chosen, key=lambda j: (-sims[j], j))[:k]
        for h in range(q.shape[1]):
            num = den = 0.0
            for j in ranked:
                if mask[val[j], h]:
                    w = np.exp(beta * (sims[j] - sims[ranked[0]]))
                    num += w * (1.0 - q[val[j], h])
                    den += w
            if den > 0:
                out[i, h] = num / den
            else:
                labs = [1.0 - q[val[j], h] for j in chosen if mask[val[j], h]]
                out[i, h] = np.mean(labs) if labs else 0.5
    return out


_PARAMS = pi.KnnParams(budgets=jnp.asarray([1, 3, 6, 12], jnp.int32), k=jnp.asarray([1, 2, 3, 5], jnp.int32),
                       beta=jnp.asarray([0.0, 10.0, 0.0, 30.0], jnp.float32), losses=jnp.zeros((4, 4, 10)))
_predict_knn = jax.jit(pi.predict_knn_tuned)


@pytest.mark.parametrize("n_sel", [0, 1, 3, 4, 6, 12])
def test_knn_matches_numpy_twin(n_sel):
    emb, q, mask, _, val, test, seen = _problem()
    selected = np.zeros(len(val), bool)
    selected[np.random.default_rng(n_sel).permutation(len(val))[:n_sel]] = True
    got = np.asarray(_predict_knn(_PARAMS, emb, q, mask, val, test, seen, selected))
    j = int(np.argmin(np.abs(np.asarray(_PARAMS.budgets) - n_sel)))
    want = _knn_twin(int(_PARAMS.k[j]), float(_PARAMS.beta[j]), emb, q, mask, val, test, selected)
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_knn_ignores_unselected_labels_and_vmaps():
    emb, q, mask, _, val, test, seen = _problem(1)
    rng = np.random.default_rng(3)
    sels = np.stack([rng.permutation(len(val)) < n for n in (2, 3, 6)])
    base = np.asarray(jax.vmap(lambda s: pi.predict_knn_tuned(_PARAMS, emb, q, mask, val, test, seen, s))(sels))
    for s, b in zip(sels, base):
        np.testing.assert_allclose(np.asarray(_predict_knn(_PARAMS, emb, q, mask, val, test, seen, s)), b, atol=1e-6)
        # Flip every label outside the selection: the estimates must not move.
        q2 = q.copy()
        q2[val[~s]] = 1.0 - q2[val[~s]]
        np.testing.assert_allclose(np.asarray(_predict_knn(_PARAMS, emb, q2, mask, val, test, seen, s)), b, atol=1e-6)


def _brier_brute(emb, q, mask, train_rows, val, seen, sel):
    """Brier loss `[n_betas, n_ks]` of every setting for one selection, by plain loops."""
    errs = 1.0 - q
    out = np.zeros((len(pi.KNN_BETAS), len(pi.KNN_KS)))
    cols = [h for h in range(q.shape[1]) if seen[h]]
    sel_mask = mask.copy()
    sel_mask[:, ~seen] = False
    for bi, beta in enumerate(pi.KNN_BETAS):
        for ki, k in enumerate(pi.KNN_KS):
            est = _knn_twin(k, beta, emb, q, sel_mask, val, train_rows, sel)
            sq, cnt = 0.0, 0
            for i, r in enumerate(train_rows):
                for h in cols:
                    if mask[r, h]:
                        sq += (est[i, h] - errs[r, h]) ** 2
                        cnt += 1
            out[bi, ki] = sq / max(cnt, 1)
    return out


@pytest.mark.slow
def test_tuning_matches_brute_force(monkeypatch):
    monkeypatch.setattr(pi, "KNN_ROWS", 6)
    monkeypatch.setattr(pi, "KNN_REPS", 2)
    emb, q, mask, train, val, _, seen = _problem(2)
    # Missing training-prompt labels of a training LLM must not count in the loss.
    mask[train[::2], 1] = False
    q[~mask] = 0.0
    budgets = jnp.asarray([1, 3, 6, 12], jnp.int32)
    key = jax.random.PRNGKey(5)
    k_max = min(pi.KNN_KS[-1], len(val))
    losses, sel, rows = jax.jit(functools.partial(pi._knn_tuning, k_max=k_max, n_rows=6, n_reps=2))(
        key, emb, q, mask, train, val, seen, budgets)
    sel, rows = np.asarray(sel), np.asarray(rows)
    assert sel.sum(-1).tolist() == [[1, 1], [3, 3], [6, 6], [12, 12]]
    want = np.zeros((len(budgets), len(pi.KNN_BETAS), len(pi.KNN_KS)))
    for b in range(len(budgets)):
        want[b] = np.mean([_brier_brute(emb, q, mask, rows, val, seen, sel[b, r]) for r in range(2)], axis=0)
        prev = np.concatenate([[0], pi.KNN_KS[:-1]])
        want[b][:, prev >= int(budgets[b])] = np.inf
    np.testing.assert_allclose(np.asarray(losses), want, atol=1e-5)
    # The fitted setting is the brute-force argmin (first in (beta, k) order on ties).
    params = pi.fit_knn_tuned(key, emb, q, mask, train, val, seen, None, budgets)
    for b in range(len(budgets)):
        bi, ki = np.unravel_index(np.argmin(want[b]), want[b].shape)
        assert (int(params.k[b]), float(params.beta[b])) == (pi.KNN_KS[ki], pi.KNN_BETAS[bi])
    # Only k up to the first grid value that covers every selected prompt may be picked.
    assert int(params.k[0]) == 1 and int(params.k[1]) <= 3


# --------------------------------------------------------------------------------- IRT


def _theta_objective(th, a, b, y, mu, prec):
    z = b - a @ th
    return float((np.logaddexp(0.0, z) - y * z).sum() + 0.5 * (th - mu) @ prec @ (th - mu))


def _theta_twin(a, b, y, mu, prec):
    """Plain NumPy: Newton steps on one LLM's ability, each the best of the step sizes."""
    th = mu.copy()
    for _ in range(pi.IRT_NEWTON):
        pr = 1.0 / (1.0 + np.exp(-(b - a @ th)))
        g = prec @ (th - mu) - a.T @ (pr - y)
        hess = prec + (a * (pr * (1.0 - pr))[:, None]).T @ a
        step = np.linalg.solve(hess, g)
        th = min((th - c * step for c in pi.IRT_STEP_SCALES), key=lambda t: _theta_objective(t, a, b, y, mu, prec))
    return th


def _irt_twin(params, emb, q, mask, val, test, seen, selected):
    """Plain NumPy: Newton MAP of each new LLM's ability, then sigmoid(b - a . theta)."""
    p = jax.tree.map(lambda x: np.asarray(x, np.float64), params)
    a, b, mu, prec = p.a_val, p.b_val, p.prior_mean, p.prior_precision
    dim = a.shape[1]
    thetas = []
    for h in range(q.shape[1]):
        if seen[h]:
            thetas.append(p.theta[h])
            continue
        rows = [j for j in range(len(val)) if selected[j] and mask[val[j], h]]
        thetas.append(_theta_twin(a[rows], b[rows], 1.0 - q[val[rows], h].astype(np.float64), mu, prec))
    u = _unit(emb.astype(np.float64))
    out = np.zeros((len(test), q.shape[1]))
    for i, t in enumerate(test):
        ab = (u[t] - p.x_mean) @ p.weights + p.y_mean
        for h in range(q.shape[1]):
            out[i, h] = 1.0 / (1.0 + np.exp(-(ab[dim] - ab[:dim] @ thetas[h])))
    return out


@functools.lru_cache(maxsize=None)
def _irt_fit(seed):
    emb, q, mask, train, val, _, seen = _problem(seed, binary=False)
    return jax.jit(pi.fit_irt)(jax.random.PRNGKey(seed), emb, q, mask, train, val, seen, None,
                               jnp.asarray([1, 12], jnp.int32))


def test_irt_predict_matches_numpy_twin_and_objective_decreases():
    emb, q, mask, _, val, test, seen = _problem(0, binary=False)
    params = _irt_fit(0)
    tr = np.asarray(params.objective)
    assert np.all(np.isfinite(tr)) and tr[-1] < tr[0] - 1e-3 and tr[-1] <= tr[len(tr) // 2] + 1e-6
    sels = np.stack([np.random.default_rng(n).permutation(len(val)) < n for n in (0, 2, 12)])
    batched = np.asarray(jax.jit(jax.vmap(lambda s: pi.predict_irt(params, emb, q, mask, val, test, seen, s)))(sels))
    for selected, got in zip(sels, batched):
        np.testing.assert_allclose(got, _irt_twin(params, emb, q, mask, val, test, seen, selected), atol=1e-5)
    predict = jax.jit(pi.predict_irt)
    # No labels: a new LLM sits at the prior mean.
    none = np.asarray(predict(params, emb, q, mask, val, test, seen, np.zeros(len(val), bool)))
    np.testing.assert_allclose(none[:, 3], none[:, 4], atol=1e-6)


def test_irt_fit_is_deterministic_from_key():
    emb, q, mask, train, val, _, seen = _problem(0, binary=False)
    again = jax.jit(pi.fit_irt)(jax.random.PRNGKey(0), emb, q, mask, train, val, seen, None,
                                jnp.asarray([1, 12], jnp.int32))
    np.testing.assert_array_equal(np.asarray(again.theta), np.asarray(_irt_fit(0).theta))


def test_irt_ability_is_the_map_of_a_strong_new_llm():
    """Items and prior as fitted on alpacaeval (discriminations near -0.5, the training LLMs wrong on
    most prompts) and a new LLM right on two thirds: at its prior mean the probabilities saturate
    and a full Newton step overshoots by tens of logits. The ability must be the posterior's
    minimum, found here by an independent quasi-Newton search."""
    from scipy.optimize import minimize

    rng = np.random.default_rng(3)
    n = 80
    a, b = rng.normal(-0.48, 0.29, (n, 2)), rng.normal(1.8, 1.46, n)
    mu, prec = np.array([1.4, 1.7]), np.linalg.inv(np.array([[3.75, 1.19], [1.19, 3.27]]))
    y = (rng.uniform(size=n) < 0.33).astype(np.float64)  # errors
    for n_lab in (5, 20, 80):
        lab = (np.arange(n) < n_lab).astype(np.float64)
        f = lambda th: _theta_objective(th, a[:n_lab], b[:n_lab], y[:n_lab], mu, prec)
        want = minimize(f, mu, method="BFGS", options={"gtol": 1e-8}).x
        got = np.asarray(jax.jit(pi._irt_theta)(*(jnp.asarray(v, jnp.float32) for v in (a, b, y, lab, mu, prec))))
        np.testing.assert_allclose(got, want, atol=0.02)
        np.testing.assert_allclose(_theta_twin(a[:n_lab], b[:n_lab], y[:n_lab], mu, prec), want, atol=1e-3)


@pytest.mark.slow
def test_irt_recovers_planted_abilities():
    """Labels drawn from a known 2-d IRT model whose items are linear in the embedding: the new
    LLMs' estimated error ranks them as their true abilities do, and more labels help."""
    rng = np.random.default_rng(0)
    n, m, d = 400, 16, 8
    emb = _unit(rng.normal(size=(n, d)))
    a_true = emb @ rng.normal(size=(d, 2)) * 1.5
    b_true = emb @ rng.normal(size=d)
    theta = rng.normal(size=(m, 2))
    p_err = 1.0 / (1.0 + np.exp(-(b_true[:, None] - a_true @ theta.T)))
    q = (rng.uniform(size=p_err.shape) > p_err).astype(np.float32)
    mask = np.ones_like(q, bool)
    perm = rng.permutation(n)
    train, val, test = perm[:200].astype(np.int32), perm[200:300].astype(np.int32), perm[300:].astype(np.int32)
    seen = np.arange(m) < 11
    params = jax.jit(pi.fit_irt)(jax.random.PRNGKey(1), emb.astype(np.float32), q, mask, train, val, seen, None,
                                 jnp.asarray([5, 100], jnp.int32))
    predict = jax.jit(pi.predict_irt)
    maes = {}
    for n_sel in (5, 100):
        errs = []
        for r in range(5):
            sel = np.random.default_rng(r).permutation(len(val)) < n_sel
            est = np.asarray(predict(params, emb.astype(np.float32), q, mask, val, test, seen, sel))
            errs.append(np.abs(est[:, ~seen] - p_err[test][:, ~seen]).mean())
            if n_sel == 100:
                rank_est = np.argsort(np.argsort(est[:, ~seen].mean(0)))
                rank_true = np.argsort(np.argsort(p_err[test][:, ~seen].mean(0)))
                assert np.corrcoef(rank_est, rank_true)[0, 1] >= 0.9
        maes[n_sel] = float(np.mean(errs))
    print(maes)
    assert maes[100] < 0.8 * maes[5]


def test_bad_shapes_raise():
    emb, q, mask, train, val, test, seen = _problem()
    with pytest.raises(ValueError, match="selected"):
        pi.predict_knn_tuned(_PARAMS, emb, q, mask, val, test, seen, np.ones(3, bool))
    with pytest.raises(ValueError, match="seen"):
        pi.fit_irt(jax.random.PRNGKey(0), emb, q, mask, train, val, seen[:2], None, jnp.asarray([1]))
    with pytest.raises(ValueError, match="dim"):
        pi.fit_irt(jax.random.PRNGKey(0), emb, q, mask, train, val, seen, None, jnp.asarray([1]), dim=0)
