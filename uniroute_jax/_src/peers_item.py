"""Per-prompt peers: a tuned k-NN over the labelled prompts, and an item-response model.

Both estimate a new LLM's error probability on every test prompt from its labels on the selected
validation prompts, in the interface of `peers.py`:

    params = fit_knn_tuned(key, emb, quality, label_mask, train, val, seen, centroids, budgets)
    est = predict_knn_tuned(params, emb, quality, label_mask, val, test, seen, selected)  # [n_test, n_models]
    params = fit_irt(key, emb, quality, label_mask, train, val, seen, centroids, budgets)
    est = predict_irt(params, emb, quality, label_mask, val, test, seen, selected)

**Tuned k-NN** (the strong k-NN baseline of the routing literature). For each test prompt, the
`k` most cosine-similar *selected* validation prompts (all of them when fewer than `k` are
selected) vote with weights `exp(beta * cos)`: `beta = 0` is the uniform average, larger `beta`
favours the closest. This differs from `knn.py` (and the study's `K-NN`) in one way only: there the
neighbours are ranked among all validation prompts and unlabelled ones are skipped, so a test
prompt whose nearest prompts are unselected gets fewer than `k` votes; here the ranking is over the
selected prompts, so there are always `min(k, n_selected)` votes. A vote whose label is missing
(`label_mask`) is dropped; an LLM with no labelled vote gets its mean error over its labelled
selected prompts, and 0.5 when it has none.

`k` (grid `KNN_KS`, clipped to the label count: `k` is allowed when the grid value below it is
smaller than the count, so "every selected prompt" is always one choice) and `beta` (`KNN_BETAS`,
temperatures inf, 0.1, 0.033, 0.01) are chosen per label count of `budgets` on the training LLMs:
`KNN_REPS` times per count, `n` validation prompts are drawn at random (one draw for every training
LLM, as the study labels the same prompts for every new LLM), each training LLM is "onboarded" from
its labels there, and its errors are predicted on up to `KNN_ROWS` random training prompts. The
setting with the lowest mean Brier loss (squared error to the observed error) wins, the smaller
`k` and `beta` on ties. Brier, not log-loss: it is a proper score for the error probabilities a
router ranks by, and it stays finite for the 0/1 estimates of `k = 1` or a single label, where
log-loss would be infinite and would rule those settings out for the wrong reason. `predict` uses
the setting of the budget nearest the number of selected prompts.

**Item-response model** (the multidimensional IRT of IRT-Router, Song et al., ACL 2025,
arXiv 2506.01048): `P(error | x, h) = sigmoid(b_x - a_x . theta_h)`, discrimination
`a_x in R^dim`, difficulty `b_x`, ability `theta_h`.

- Fit: `(a_x, b_x)` of every training and validation prompt and `theta_h` of every training LLM,
  jointly, by MAP on the training LLMs' labels (binary cross-entropy, soft labels allowed) with
  priors `a ~ N(0, I)`, `b ~ N(0, 3^2)`, `theta ~ N(0, I)`; the objective is divided by the number
  of labels. `IRT_STEPS = 400` full-batch Adam steps at learning rate `IRT_LR = 0.05`, from
  `a, theta ~ N(0, 0.1^2)` drawn from `key` and `b` the logit of the prompt's mean error (so
  the result is a deterministic function of `key`). `dim = 2` by default.
- Test prompts get items from their embeddings: ridge regression from the unit-normalised
  embedding to `(a, b)` (centred, intercept not penalised), fitted on the training prompts' items;
  the ridge strength is chosen from `IRT_RIDGES` by the squared error of the validation prompts'
  predicted items against their fitted ones.
- A new LLM's ability: MAP from its labels on the selected validation prompts (their fitted items)
  under `N(mu, Sigma)`, the mean and covariance of the training LLMs' abilities plus `0.05 I`
  (so a handful of training LLMs still give an invertible prior); `IRT_NEWTON = 20` Newton steps
  from `mu`, each the best of a few step sizes (the objective is strictly convex, but where labels
  are mostly errors a full step overshoots far). Training LLMs keep their fitted abilities.

What the published description leaves open, and we chose: IRT-Router maps query embeddings to
`(a, b)` with learned layers and gives every LLM a fixed ability learned with the queries; it does
not onboard a new LLM from a few labels (our Newton MAP under a prior fitted to the training LLMs),
and fixes neither the priors nor the optimiser for our setting. A linear (ridge) item map replaces
its network so the fit stays a few seconds on a CPU; its semantic "warm-up" of new queries is not
used (its role is played by the item map). `budgets` and `centroids` are not used by the IRT.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from uniroute_jax._src.small_linalg import spd_inv, spd_solve

KNN_KS = (1, 2, 3, 5, 8, 13, 21, 34, 55, 89)
KNN_BETAS = (0.0, 10.0, 30.0, 100.0)
KNN_REPS = 4
KNN_ROWS = 256

IRT_STEPS = 400
IRT_LR = 0.05
IRT_NEWTON = 20
IRT_STEP_SCALES = (1.0, 0.5, 0.25, 0.125, 0.0625, 0.03125, 0.015625, 0.0)
IRT_RIDGES = (0.01, 0.1, 1.0, 10.0, 100.0)
_SIGMA_A, _SIGMA_B, _SIGMA_THETA, _PRIOR_FLOOR = 1.0, 3.0, 1.0, 0.05


class KnnParams(NamedTuple):
    budgets: jax.Array  # [n_budgets] int32 label counts tuned for
    k: jax.Array  # [n_budgets] int32 neighbours per label count
    beta: jax.Array  # [n_budgets] float32 similarity weight (0: uniform)
    losses: jax.Array  # [n_budgets, n_betas, n_ks] mean Brier loss of every setting (inf: k not allowed)


class IrtParams(NamedTuple):
    a_val: jax.Array  # [n_val, dim] discrimination of the validation prompts
    b_val: jax.Array  # [n_val] difficulty of the validation prompts
    theta: jax.Array  # [n_models, dim] abilities of the training LLMs (prior mean for the others)
    prior_mean: jax.Array  # [dim]
    prior_precision: jax.Array  # [dim, dim]
    x_mean: jax.Array  # [emb_dim] mean unit embedding of the training prompts
    y_mean: jax.Array  # [dim + 1] mean (a, b) of the training prompts
    weights: jax.Array  # [emb_dim, dim + 1] ridge map from centred embedding to (a, b)
    ridge: jax.Array  # [] the chosen ridge strength
    objective: jax.Array  # [IRT_STEPS] MAP objective before each Adam step


def _unit(x: jax.Array) -> jax.Array:
    return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def _check(emb, quality, label_mask, seen, val=None, selected=None) -> None:
    """Shape checks (static, so they also run under `jit`)."""
    if jnp.ndim(emb) != 2:
        raise ValueError(f"emb must be [n_prompts, dim], got shape {jnp.shape(emb)}")
    if jnp.shape(quality) != jnp.shape(label_mask) or jnp.ndim(quality) != 2:
        raise ValueError(f"quality {jnp.shape(quality)} and label_mask {jnp.shape(label_mask)} must both be "
                         "[n_prompts, n_models]")
    if jnp.shape(quality)[0] != jnp.shape(emb)[0]:
        raise ValueError(f"quality has {jnp.shape(quality)[0]} prompts but emb has {jnp.shape(emb)[0]}")
    if jnp.shape(seen) != (jnp.shape(quality)[1],):
        raise ValueError(f"seen has shape {jnp.shape(seen)} but quality has {jnp.shape(quality)[1]} models")
    if selected is not None and jnp.shape(selected) != jnp.shape(val):
        raise ValueError(f"selected has shape {jnp.shape(selected)} but val has shape {jnp.shape(val)}")


# --------------------------------------------------------------------------------- tuned k-NN


def _knn_votes(sims: jax.Array, selected: jax.Array, k_max: int):
    """Ranked selected neighbours of each row of `sims [n_rows, n_val]`: indices, similarities
    and a validity mask, each `[n_rows, k_max]` (a rank past the number selected is invalid)."""
    sim, idx = jax.lax.top_k(jnp.where(selected[None, :], sims, -jnp.inf), k_max)
    ok = selected[idx]
    return idx, jnp.where(ok, sim, 0.0), ok


def _knn_fallback(errors: jax.Array, labelled: jax.Array) -> jax.Array:
    """`[n_models]` mean error over the labelled selected prompts, 0.5 where there is none."""
    cnt = labelled.sum(0)
    return jnp.where(cnt > 0, (errors * labelled).sum(0) / jnp.maximum(cnt, 1.0), 0.5)


def _knn_tuning(key, emb, quality, label_mask, train, val, seen, budgets, *, k_max: int, n_rows: int,
                n_reps: int):
    """Mean Brier loss `[n_budgets, n_betas, n_ks]` of every setting, with the draws it used:
    selections `[n_budgets, n_reps, n_val]` and scored training prompts `[n_rows]`."""
    k_rows, k_sel = jax.random.split(key)
    rows = jax.random.permutation(k_rows, train)[:n_rows]
    u = _unit(emb)
    sims = u[rows] @ u[val].T  # [n_rows, n_val]
    errors = 1.0 - quality[val]
    lab_val = (label_mask[val] & seen[None, :]).astype(quality.dtype)
    target = 1.0 - quality[rows]
    lab_rows = (label_mask[rows] & seen[None, :]).astype(quality.dtype)
    ks = jnp.asarray(KNN_KS, jnp.int32)
    prev = jnp.concatenate([jnp.zeros(1, jnp.int32), ks[:-1]])
    n_val = val.shape[0]
    keys = jax.random.split(k_sel, (budgets.shape[0], n_reps))  # typed or raw keys alike
    ranks = jax.vmap(jax.vmap(lambda kk: jnp.argsort(jax.random.permutation(kk, n_val))))(keys)
    sel = ranks < budgets[:, None, None]  # [n_budgets, n_reps, n_val]
    ks_c = jnp.minimum(ks, k_max)

    def one(s):
        idx, sim, ok = _knn_votes(sims, s, k_max)
        lab = lab_val[idx] * ok[..., None]  # [n_rows, k_max, n_models]
        e = errors[idx]
        fb = _knn_fallback(errors, lab_val * s[:, None])

        def per_beta(beta):
            w = jnp.exp(beta * (sim - sim[:, :1]))[..., None] * lab
            num = jnp.cumsum(w * e, axis=1)[:, ks_c - 1]  # [n_rows, n_ks, n_models]
            den = jnp.cumsum(w, axis=1)[:, ks_c - 1]
            est = jnp.where(den > 0, num / jnp.where(den > 0, den, 1.0), fb[None, None, :])
            sq = ((est - target[:, None, :]) ** 2 * lab_rows[:, None, :]).sum((0, 2))
            return sq / jnp.maximum(lab_rows.sum(), 1.0)  # [n_ks]

        return jax.vmap(per_beta)(jnp.asarray(KNN_BETAS, quality.dtype))  # [n_betas, n_ks]

    flat = jax.lax.map(one, sel.reshape(-1, n_val)).reshape(budgets.shape[0], n_reps, len(KNN_BETAS), len(KNN_KS))
    allowed = prev[None, :] < budgets[:, None]  # [n_budgets, n_ks]
    losses = jnp.where(allowed[:, None, :], flat.mean(1), jnp.inf)
    return losses, sel, rows


def fit_knn_tuned(key, emb, quality, label_mask, train, val, seen, centroids, budgets) -> KnnParams:
    """Tune `k` and the similarity weighting per label count on the training LLMs.

    Args:
      key: PRNG key for the simulated onboarding draws.
      emb: [n_prompts, dim] prompt embeddings (cosine geometry).
      quality: [n_prompts, n_models] in [0, 1]; error is `1 - quality`.
      label_mask: [n_prompts, n_models] bool, True where a label is real.
      train, val: int32 prompt indices of the trial.
      seen: [n_models] bool, the training LLMs.
      centroids: unused (interface of `peers.py`).
      budgets: [n_budgets] int32 label counts to tune for.

    Returns:
      `KnnParams` with one `(k, beta)` per budget (the `(beta, k)` pair of least loss).
    """
    del centroids
    _check(emb, quality, label_mask, seen)
    emb, quality, label_mask, train, val, seen = map(jnp.asarray, (emb, quality, label_mask, train, val, seen))
    budgets = jnp.asarray(budgets, jnp.int32)
    k_max = min(KNN_KS[-1], val.shape[0])
    losses, _, _ = _knn_tuning(key, emb, quality, label_mask, train, val, seen, budgets, k_max=k_max,
                               n_rows=min(KNN_ROWS, train.shape[0]), n_reps=KNN_REPS)
    # Row-major argmin over (beta, k): ties go to the smaller beta, then the smaller k.
    best = jnp.argmin(losses.reshape(budgets.shape[0], -1), axis=1)
    b_i, k_i = jnp.divmod(best, len(KNN_KS))
    return KnnParams(budgets=budgets, k=jnp.asarray(KNN_KS, jnp.int32)[k_i],
                     beta=jnp.asarray(KNN_BETAS, jnp.float32)[b_i], losses=losses)


def _nearest_budget(budgets: jax.Array, selected: jax.Array) -> jax.Array:
    return jnp.argmin(jnp.abs(budgets - selected.sum().astype(budgets.dtype)))


def predict_knn_tuned(params: KnnParams, emb, quality, label_mask, val, test, seen, selected) -> jax.Array:
    """Estimated error `[n_test, n_models]` from the selected validation prompts' labels.

    Every column uses the same rule and only the selected prompts (the study scores the new LLMs'
    columns). The `(k, beta)` are those of the budget nearest `selected.sum()`.
    """
    _check(emb, quality, label_mask, seen, val, selected)
    emb, quality, label_mask, val, test, seen, selected = map(
        jnp.asarray, (emb, quality, label_mask, val, test, seen, selected))
    j = _nearest_budget(params.budgets, selected)
    k, beta = params.k[j], params.beta[j]
    u = _unit(emb)
    k_max = min(KNN_KS[-1], val.shape[0])
    idx, sim, ok = _knn_votes(u[test] @ u[val].T, selected, k_max)
    errors = 1.0 - quality[val]
    lab_val = label_mask[val].astype(quality.dtype)
    use = ok & (jnp.arange(k_max) < k)[None, :]
    w = jnp.exp(beta * (sim - sim[:, :1]))[..., None] * lab_val[idx] * use[..., None]
    num, den = (w * errors[idx]).sum(1), w.sum(1)
    fb = _knn_fallback(errors, lab_val * selected[:, None])
    return jnp.where(den > 0, num / jnp.where(den > 0, den, 1.0), fb[None, :])


# --------------------------------------------------------------------------------- IRT


def _irt_objective(p, y, lab, seen, b0):
    """MAP objective per label: cross-entropy of the labels plus the Gaussian priors."""
    a, b, theta = p
    z = b[:, None] - a @ theta.T
    n = jnp.maximum(lab.sum(), 1.0)
    nll = (optax.sigmoid_binary_cross_entropy(z, y) * lab).sum()
    prior = (0.5 * (a ** 2).sum() / _SIGMA_A ** 2 + 0.5 * ((b - b0) ** 2).sum() / _SIGMA_B ** 2
             + 0.5 * ((theta ** 2).sum(1) * seen).sum() / _SIGMA_THETA ** 2)
    return (nll + prior) / n


def _irt_map(key, y, lab, seen, *, dim: int):
    """Joint MAP of the items `(a [n_items, dim], b [n_items])` and abilities `theta
    [n_models, dim]` by Adam; also the objective before each step `[IRT_STEPS]`."""
    n_items, n_models = y.shape
    ka, kt = jax.random.split(key)
    rate = ((y * lab).sum(1) + 0.5) / (lab.sum(1) + 1.0)
    b_init = jnp.log(rate) - jnp.log1p(-rate)
    p0 = (0.1 * jax.random.normal(ka, (n_items, dim), y.dtype), b_init,
          0.1 * jax.random.normal(kt, (n_models, dim), y.dtype) * seen[:, None])
    # The prior on b is centred at 0, not at its initial value: b_init only speeds the start.
    b0 = jnp.zeros(n_items, y.dtype)
    opt = optax.adam(IRT_LR)
    loss_grad = jax.value_and_grad(lambda p: _irt_objective(p, y, lab, seen, b0))

    def step(carry, _):
        p, s = carry
        val, g = loss_grad(p)
        upd, s = opt.update(g, s, p)
        return (optax.apply_updates(p, upd), s), val

    (p, _), trace = jax.lax.scan(step, (p0, opt.init(p0)), None, length=IRT_STEPS)
    return p, trace


def _ridge(x_tr, y_tr, x_va, y_va):
    """Ridge map from embeddings to items, strength chosen on the validation items."""
    x_mean, y_mean = x_tr.mean(0), y_tr.mean(0)
    xc, yc = x_tr - x_mean, y_tr - y_mean
    evals, evecs = jnp.linalg.eigh(xc.T @ xc)
    proj = evecs.T @ (xc.T @ yc)  # [emb_dim, dim + 1]

    def weights(lam):
        return evecs @ (proj / (evals + lam)[:, None])

    lams = jnp.asarray(IRT_RIDGES, x_tr.dtype)
    ws = jax.vmap(weights)(lams)
    err = jax.vmap(lambda w: (((x_va - x_mean) @ w + y_mean - y_va) ** 2).sum())(ws)
    best = jnp.argmin(err)
    return x_mean, y_mean, ws[best], lams[best]


def fit_irt(key, emb, quality, label_mask, train, val, seen, centroids, budgets, *, dim: int = 2) -> IrtParams:
    """Fit the item-response model on the training LLMs' labels (MAP), and the item map.

    Args:
      key: PRNG key of the initialisation (the fit is deterministic given it).
      emb: [n_prompts, emb_dim] prompt embeddings.
      quality: [n_prompts, n_models] in [0, 1]; error is `1 - quality`.
      label_mask: [n_prompts, n_models] bool, True where a label is real.
      train, val: int32 prompt indices of the trial.
      seen: [n_models] bool, the training LLMs.
      centroids, budgets: unused (interface of `peers.py`).
      dim: ability dimension (static).

    Returns:
      `IrtParams`.
    """
    del centroids, budgets
    _check(emb, quality, label_mask, seen)
    if not isinstance(dim, int) or dim < 1:
        raise ValueError(f"dim must be a positive int, got {dim!r}")
    emb, quality, label_mask, train, val, seen = map(jnp.asarray, (emb, quality, label_mask, train, val, seen))
    items = jnp.concatenate([train, val])
    y = 1.0 - quality[items]
    lab = (label_mask[items] & seen[None, :]).astype(quality.dtype)
    seen_f = seen.astype(quality.dtype)
    (a, b, theta), trace = _irt_map(key, y, lab, seen_f, dim=dim)
    n_tr = train.shape[0]
    u = _unit(emb)
    ab = jnp.concatenate([a, b[:, None]], axis=1)
    x_mean, y_mean, w, lam = _ridge(u[train], ab[:n_tr], u[val], ab[n_tr:])
    n_seen = jnp.maximum(seen_f.sum(), 1.0)
    mu = (theta * seen_f[:, None]).sum(0) / n_seen
    dev = (theta - mu) * seen_f[:, None]
    cov = dev.T @ dev / n_seen + _PRIOR_FLOOR * jnp.eye(dim, dtype=theta.dtype)
    return IrtParams(a_val=a[n_tr:], b_val=b[n_tr:], theta=theta, prior_mean=mu,
                     prior_precision=spd_inv(cov), x_mean=x_mean, y_mean=y_mean, weights=w, ridge=lam,
                     objective=trace)


def _irt_theta_objective(theta, a, b, y, lab, mu, prec):
    """Negative log-posterior of one LLM's ability `theta [dim]` (labels `y`, weights `lab`)."""
    d = theta - mu
    return (optax.sigmoid_binary_cross_entropy(b - a @ theta, y) * lab).sum() + 0.5 * d @ prec @ d


def _irt_theta(a, b, y, lab, mu, prec):
    """MAP ability `[dim]` of one LLM from labels `y [n]` (weights `lab [n]`) on items `(a, b)`.

    Newton steps with a step-size search over `IRT_STEP_SCALES` (the best of them, 0 included, so
    the objective never rises): where most labels are errors the probabilities saturate, the
    curvature is mostly the prior's and a full Newton step overshoots by tens of logits."""
    scales = jnp.asarray(IRT_STEP_SCALES, a.dtype)

    def newton(theta, _):
        p = jax.nn.sigmoid(b - a @ theta)
        grad = -a.T @ ((p - y) * lab) + prec @ (theta - mu)
        hess = (a * (p * (1.0 - p) * lab)[:, None]).T @ a + prec
        cand = theta[None, :] - scales[:, None] * spd_solve(hess, grad)[None, :]
        value = jax.vmap(lambda c: _irt_theta_objective(c, a, b, y, lab, mu, prec))(cand)
        return cand[jnp.argmin(value)], None

    return jax.lax.scan(newton, mu, None, length=IRT_NEWTON)[0]


def predict_irt(params: IrtParams, emb, quality, label_mask, val, test, seen, selected) -> jax.Array:
    """Estimated error `[n_test, n_models]`: `sigmoid(b_x - a_x . theta_h)` with test items from the
    item map, new LLMs' abilities by MAP on their selected labels, training LLMs' as fitted."""
    _check(emb, quality, label_mask, seen, val, selected)
    emb, quality, label_mask, val, test, seen, selected = map(
        jnp.asarray, (emb, quality, label_mask, val, test, seen, selected))
    lab = (label_mask[val] & selected[:, None]).astype(quality.dtype)
    y = 1.0 - quality[val]
    new = jax.vmap(lambda yy, ll: _irt_theta(params.a_val, params.b_val, yy, ll, params.prior_mean,
                                             params.prior_precision), in_axes=(1, 1))(y, lab)
    theta = jnp.where(seen[:, None], params.theta, new)
    ab = (_unit(emb[test]) - params.x_mean) @ params.weights + params.y_mean
    return jax.nn.sigmoid(ab[:, -1:] - ab[:, :-1] @ theta.T)
