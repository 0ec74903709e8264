"""What would UniRoute have changed? The report of a gateway that ran it in shadow mode.

In shadow mode the LiteLLM plugin (`integrations.litellm.UniRoutePlugin(shadow=True)`) decides
every request as usual but does not enforce the decision: the model group's own strategy picks
the deployment. After the call, one JSON record per request is logged (and appended to a JSONL
file when one is set) with UniRoute's choice and its candidates' estimated errors and costs
(`"model"`, `"cluster"`, `"candidates"`), and the LLM that actually answered (`"served"`,
`"deployment"`), with the call's `"request_id"`. This module reads such a log and answers the
question to ask before switching enforcement on:

- **agreement**: the share of requests where UniRoute chose the LLM that answered, with an exact
  binomial (Clopper-Pearson) interval;
- **cost saving**: mean cost per request of what answered minus that of UniRoute's choice
  (positive: UniRoute is cheaper), from the pool's costs or, without a pool, the per-request
  costs the plugin logged;
- **quality change** (estimated): mean estimated error of what answered minus that of UniRoute's
  choice, from the pool's per-cluster estimates `Psi(h)[cluster]` (positive: UniRoute is better);
- **quality change** (observed), where outcomes were logged: only the answering LLM's outcome is
  seen, so on a request where UniRoute agreed the change is 0, and where it did not it is
  `(1 - Psi(UniRoute's choice)[cluster]) - outcome`: the served side is what happened, the
  counterfactual side is the estimate. It replaces half of the guess by an observation, and
  shows whether the served LLMs do better than the pool believes.

Cost and quality intervals are bootstrap percentiles over requests (seeded), per cluster and
overall. Records without a decision (a fallback) or whose answering deployment has no pool row
cannot be compared and are counted in `n_skipped`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple

import numpy as np

from uniroute_jax._src import validation
from uniroute_jax._src.data import read_lines
from uniroute_jax._src.drift import clopper_pearson

MARKER = "uniroute shadow: "
"""What precedes each record in a log line (`logging` output); a JSONL file holds the bare records."""


class Interval(NamedTuple):
    """A statistic and its interval: floats overall, `[n_clusters_seen]` arrays per cluster."""

    value: Any
    lower: Any
    upper: Any


class ShadowReport(NamedTuple):
    """UniRoute's decisions against what answered, over the requests of a shadow log."""

    n_requests: int  # records compared
    n_skipped: int  # records without a decision or without a served LLM of the pool
    n_outcomes: int  # compared records with an outcome of the served answer
    served_cost: float  # mean cost per request of what answered
    agreement: Interval  # share of requests where UniRoute chose what answered
    cost_saving: Interval  # mean cost per request: served - UniRoute's choice
    quality_change: Interval  # mean estimated quality (1 - error): UniRoute's choice - served
    observed_quality_change: Interval  # the same with the served side observed (nan without outcomes)
    clusters: np.ndarray  # [n_clusters_seen] cluster ids with records
    cluster_requests: np.ndarray  # [n_clusters_seen]
    cluster_agreement: Interval  # each [n_clusters_seen]
    cluster_cost_saving: Interval
    cluster_quality_change: Interval
    cluster_observed_quality_change: Interval  # nan where a cluster has no outcome
    cost_source: str  # "pool" or "log"
    level: float

    def summary(self) -> str:
        """A table for a terminal: overall, then one row per cluster."""
        pct = lambda v: f"{100 * v:6.1f}%"

        def cell(iv: Interval, i=None, fmt=lambda v: f"{v:+.4g}") -> str:
            v, lo, hi = (iv.value, iv.lower, iv.upper) if i is None else (iv.value[i], iv.lower[i], iv.upper[i])
            return "n/a" if not np.isfinite(v) else f"{fmt(v)} [{fmt(lo)}, {fmt(hi)}]"

        lines = [f"{self.n_requests} requests compared ({self.n_skipped} skipped: fallback or served LLM not in the "
                 f"pool), {self.n_outcomes} with an outcome; costs from the {self.cost_source}; "
                 f"{100 * self.level:g}% intervals",
                 f"agreement: {cell(self.agreement, fmt=pct)}",
                 f"cost saving per request: {cell(self.cost_saving)} (served mean {self.served_cost:.4g})",
                 f"quality change (pool estimates): {cell(self.quality_change)}",
                 f"quality change (observed outcomes): {cell(self.observed_quality_change)}",
                 "cluster  requests  agreement                    cost saving                  quality (est.)"
                 "               quality (obs.)"]
        for i, k in enumerate(self.clusters):
            lines.append(f"{int(k):>7}  {int(self.cluster_requests[i]):>8}  "
                         f"{cell(self.cluster_agreement, i, pct):<27}  {cell(self.cluster_cost_saving, i):<27}  "
                         f"{cell(self.cluster_quality_change, i):<27}  {cell(self.cluster_observed_quality_change, i)}")
        return "\n".join(lines)


def read_shadow_log(path: str | os.PathLike) -> list[dict]:
    """The shadow records of a log: a JSONL file of records, or log lines holding `MARKER` + JSON.

    Lines that are neither (other log output) are skipped; a line that holds the marker but no
    JSON object is an error naming the line.
    """
    records = []
    for i, line in enumerate(read_lines(path), 1):
        text = line.strip()
        if MARKER in text:
            text = text.split(MARKER, 1)[1]
        elif not text.startswith("{"):
            continue
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path} line {i} is not a JSON shadow record: {err}") from None
        if isinstance(obj, dict) and obj.get("shadow"):
            records.append(obj)
    return records


def _bootstrap(values: np.ndarray, level: float, n_boot: int, rng: np.random.Generator) -> tuple[float, float, float]:
    """Mean of `values [n]` and its percentile bootstrap interval; nan when empty."""
    if values.size == 0:
        return np.nan, np.nan, np.nan
    means = values[rng.integers(0, values.size, (n_boot, values.size))].mean(axis=1)
    tail = 100 * (1 - level) / 2
    lo, hi = np.percentile(means, [tail, 100 - tail])
    return float(values.mean()), float(lo), float(hi)


def shadow_report(records: Iterable[Mapping] | str | os.PathLike, *, pool=None,
                  outcomes: Mapping[str, float] | None = None, level: float = 0.95, n_boot: int = 2000,
                  seed: int = 0) -> ShadowReport:
    """Agreement, cost saving and quality change of UniRoute's shadow decisions, per cluster and overall.

    Args:
      records: the records of a shadow log (`read_shadow_log`), or the log's path.
      pool: optional `Pool`: costs and per-cluster error estimates from it (the current pool);
        None uses those the plugin logged with each decision.
      outcomes: optional request id -> quality in [0, 1] of the answer that was served (a judge,
        a user's thumbs); a record's own `"correct"` field counts too, the mapping wins.
      level: interval probability in (0, 1).
      n_boot: bootstrap resamples.
      seed: seed of the bootstrap.

    Returns:
      `ShadowReport`.

    Raises:
      ValueError: no record can be compared, a record lacks a field, an outcome is out of [0, 1],
        or a record names a model or cluster the pool does not have.
    """
    if isinstance(records, (str, os.PathLike)):
        records = read_shadow_log(records)
    if not 0.0 < validation.nonnegative_float(level, "level") < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    n_boot = validation.positive_int(n_boot, "n_boot")
    outcomes = dict(outcomes or {})
    for rid, value in outcomes.items():
        v = float(value)
        if not 0.0 <= v <= 1.0:
            raise ValueError(f"outcomes: request {rid!r} has quality {value!r}, expected a value in [0, 1]")

    rows = []  # (cluster, agree, cost served, cost UniRoute, error served, error UniRoute, outcome)
    skipped = 0
    for j, rec in enumerate(records):
        if not isinstance(rec, Mapping):
            raise TypeError(f"records[{j}] must be a dict (a shadow record), got {type(rec).__name__}")
        if rec.get("fallback") or rec.get("model") is None or rec.get("served") is None:
            skipped += 1
            continue
        missing = [f for f in ("cluster", "candidates") if f not in rec]
        if missing:
            raise ValueError(f"records[{j}] has no field {missing[0]!r}: not a shadow record of a decision")
        chosen, served, k = str(rec["model"]), str(rec["served"]), int(rec["cluster"])
        if pool is not None:
            for name in (chosen, served):
                if name not in pool:
                    raise ValueError(f"records[{j}] names model {name!r}, which is not in the pool {list(pool.names)}")
            if not 0 <= k < pool.n_clusters:
                raise ValueError(f"records[{j}] has cluster {k}, but the pool has {pool.n_clusters} clusters")
            (u, s) = pool.index([chosen, served])
            cost_u, cost_s = float(pool.costs[u]), float(pool.costs[s])
            err_u, err_s = float(pool.psi[u, k]), float(pool.psi[s, k])
        else:
            cand = {c["name"]: c for c in rec["candidates"]}
            if chosen not in cand or served not in cand:
                skipped += 1  # the answering LLM was not among UniRoute's candidates: nothing logged to compare
                continue
            cost_u, cost_s = float(cand[chosen]["cost"]), float(cand[served]["cost"])
            err_u, err_s = float(cand[chosen]["error"]), float(cand[served]["error"])
        outcome = outcomes.get(str(rec.get("request_id")), rec.get("correct"))
        if outcome is not None:
            outcome = float(outcome)
            if not 0.0 <= outcome <= 1.0:
                raise ValueError(f"records[{j}] has outcome {outcome:g}, expected a value in [0, 1]")
        rows.append((k, chosen == served, cost_s, cost_u, err_s, err_u, np.nan if outcome is None else outcome))
    if not rows:
        raise ValueError(f"records: none of the {skipped} shadow records can be compared (each is a fallback, or "
                         "its answering deployment has no pool row)")
    table = np.asarray(rows, np.float64)  # [n, 7]
    cluster, agree = table[:, 0].astype(np.int64), table[:, 1]
    saving = table[:, 2] - table[:, 3]
    quality = table[:, 4] - table[:, 5]  # (1 - err_u) - (1 - err_s)
    outcome = table[:, 6]
    has = ~np.isnan(outcome)
    observed = np.where(agree > 0, 0.0, (1.0 - table[:, 5]) - outcome)

    rng = np.random.default_rng(seed)

    def agreement(sel: np.ndarray) -> tuple[float, float, float]:
        n, a = float(sel.sum()), float(agree[sel].sum())
        lo, hi = clopper_pearson(np.array([n - a]), np.array([n]), level)  # of the disagreements
        return a / n, 1.0 - float(hi[0]), 1.0 - float(lo[0])

    def stats(sel: np.ndarray) -> list[tuple[float, float, float]]:
        return [agreement(sel), _bootstrap(saving[sel], level, n_boot, rng),
                _bootstrap(quality[sel], level, n_boot, rng), _bootstrap(observed[sel & has], level, n_boot, rng)]

    overall = stats(np.ones(cluster.shape[0], bool))
    clusters = np.unique(cluster)
    per = [stats(cluster == k) for k in clusters]  # [n_clusters_seen][4][3]
    arr = np.asarray(per, np.float64).reshape(len(clusters), 4, 3)
    per_cluster = [Interval(arr[:, i, 0], arr[:, i, 1], arr[:, i, 2]) for i in range(4)]
    return ShadowReport(int(cluster.shape[0]), skipped, int(has.sum()), float(table[:, 2].mean()),
                        *(Interval(*s) for s in overall), clusters,
                        np.bincount(cluster)[clusters], *per_cluster, "log" if pool is None else "pool",
                        float(level))
