"""Why a prompt goes where it goes: the decision of one request, with every candidate's score.

A decision is `argmin_h Phi(x) . Psi(h) + lam * cost(h)` over the candidates (`Psi(h)[cluster]`
under a k-means map). `Decision` keeps the cluster, each candidate's estimated error, cost and score, `lam` and the chosen model, so a
served request can carry its reason (see `integrations.litellm`) and `uniroute explain` can print
the same table for any text:

    uniroute explain -r router.npz -p pool.npz --lam 0.5 --text "What is 12 + 30?"

Costs are per model (`pool.costs`) or per request (`costs.request_costs`); the choice follows the
core's rule: lowest score, ties to the cheaper model, then to the lower index.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
from jax.typing import ArrayLike

from uniroute_jax._src import validation


class Decision(NamedTuple):
    """One routed request."""

    model: str  # the chosen candidate
    cluster: int  # the prompt's cluster
    lam: float  # trade-off used
    names: tuple[str, ...]  # [n_candidates]
    error: np.ndarray  # [n_candidates] estimated error Phi(x) . Psi(h)
    cost: np.ndarray  # [n_candidates] cost of this request on each candidate
    score: np.ndarray  # [n_candidates] error + lam * cost

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready trace: `{"model", "cluster", "lam", "candidates": [{name, error, cost, score}]}`."""
        # One rounding pass over the three columns: this runs on every served request.
        error, cost, score = _significant(np.stack([self.error, self.cost, self.score]))
        rows = [{"name": n, "error": e, "cost": c, "score": s} for n, e, c, s in zip(self.names, error, cost, score)]
        return {"model": self.model, "cluster": int(self.cluster), "lam": float(self.lam), "candidates": rows}

    def table(self) -> str:
        """Plain-text table of the candidates, best score first, the chosen one marked."""
        order = np.lexsort((np.arange(len(self.names)), self.cost, self.score))
        width = max(len("model"), *(len(n) for n in self.names))
        lines = [f"cluster {self.cluster}, lambda {self.lam:g}: {self.model}",
                 f"  {'model':<{width}}  {'est. error':>10}  {'cost':>12}  {'score':>12}"]
        for i in order:
            mark = " <-" if self.names[i] == self.model else ""
            lines.append(f"  {self.names[i]:<{width}}  {self.error[i]:>10.4f}  {self.cost[i]:>12.6g}  "
                         f"{self.score[i]:>12.6g}{mark}")
        return "\n".join(lines)


def _significant(values: np.ndarray, digits: int = 7) -> list[float]:
    """float32 values as Python floats cut to `digits` significant digits (what float32 holds)."""
    v = np.asarray(values, np.float64)
    magnitude = np.floor(np.log10(np.where(v != 0, np.abs(v), 1.0)))
    scale = 10.0 ** (digits - 1 - magnitude)
    return (np.round(v * scale) / scale).tolist()


def choose(score: np.ndarray, cost: np.ndarray) -> int:
    """Index of the lowest score; ties go to the cheaper candidate, then to the lower index."""
    return int(np.lexsort((np.arange(score.shape[0]), cost, score))[0])


def decide(cluster: int, names: Sequence[str], error: np.ndarray, cost: np.ndarray, lam: float) -> Decision:
    """The `Decision` among candidates `names` with errors and costs `[n_candidates]` (float32 scores).

    Unchecked: callers pass validated, equally long arrays (the serving path calls this per request).
    """
    error = np.asarray(error, np.float32)
    cost = np.asarray(cost, np.float32)
    # float32 like the core's kernels, so a decision here matches `UniRouter.route` bit for bit.
    score = error + np.float32(lam) * cost
    i = choose(score, cost)
    return Decision(names[i], int(cluster), float(lam), tuple(names), error, cost, score)


def explain(router, pool, embeddings: ArrayLike, lam: float, *, costs: ArrayLike | None = None,
            models: Sequence[str] | None = None) -> list[Decision]:
    """The decision of each prompt, with every candidate's error, cost and score.

    Args:
      router: a fitted `UniRouter`.
      pool: a `Pool` represented by `router`.
      embeddings: [n_prompts, dim] prompt embeddings.
      lam: trade-off >= 0.
      costs: optional per-request costs `[n_prompts, n_models]` (columns in `pool.names` order);
        default `pool.costs` for every prompt.
      models: optional subset of the pool to choose among.

    Returns:
      `n_prompts` `Decision`s.
    """
    router.check_pool(pool)
    lam = validation.nonnegative_float(lam, "lam")
    errors = router.estimates(embeddings, pool)  # Phi(x) . Psi(h): Psi[cluster] under a hard map
    clusters = router.assign(embeddings) if router.feature_map.hard else np.argmax(router.features(embeddings), axis=1)
    n = clusters.shape[0]
    if costs is None:
        table = np.broadcast_to(pool.costs, (n, len(pool)))
    else:
        table = validation.nonnegative(validation.float_array(costs, "costs", shape=(n, len(pool))), "costs")
    rows = np.arange(len(pool)) if models is None else pool.index(list(models))
    if rows.size == 0:
        raise ValueError("models is empty: give at least one model of the pool")
    names = [pool.names[i] for i in rows]
    return [decide(int(k), names, errors[j, rows], table[j, rows], lam) for j, k in enumerate(clusters)]
