"""A pool built one LLM at a time through `uniroute add-model`: does its default estimator route as
well as plain means, and as well as the all-at-once protocol?

`nice -n 5 python benchmarks/pool_one_at_a_time.py [--trials N] [--datasets a,b] [--clusters K]`

Per trial, the paper's splits (`evaluate`'s `make_splits`: 60/10/30 prompts, 1/3 of the LLMs
unseen). The router is `uniroute fit -k K` on the training prompts. For each label count `n`, every
LLM of the dataset is added with `uniroute add-model` (the command line, in this process, with its
default estimator), one at a time in a random order of the trial, each with its labels on the
trial's first `n` validation prompts (a random order of the validation split; "all" is every one).
The finished pool routes the unseen LLMs' test prompts (the protocol's test pool); its Area is
compared with

* plain means: the per-cluster means of the same labels (`add-model --estimator mean` gives the
  same rows: checked through the command line on the first trial);
* ZeroRouter on the same labels;
* all at once, as `evaluate(estimator="prior")` works: the default estimator fitted on the
  training LLMs with every validation label (its factors also on their training-prompt labels),
  the unseen LLMs estimated from their `n` labels.

On every trial the pool at `--order-check` labels is built again in the reverse order: the largest
difference between the two pools' rows is reported (0 when insertion order changes nothing).

Writes `--out`/pool_one_at_a_time.md (tables, mean ± standard error over trials) and .npz (every
trial's Area).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import platform
import shlex
import sys
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from uniroute_jax._src import evaluation as ev
from uniroute_jax._src.cli import main as cli
from uniroute_jax._src.estimators import DEFAULT_METHOD, add_to_pool, fit_estimator, labels_to_counts
from uniroute_jax._src.persistence import write_atomic
from uniroute_jax._src.pool import Pool
from uniroute_jax._src.router import UniRouter

sys.path.insert(0, str(Path(__file__).parent))
from common import write_text  # noqa: E402

DATASETS = ("synthetic", "routerbench_partial", "routerdc_7llm", "alpacaeval")
BUDGETS = (10, 20, 50, 100)
COLUMNS = ("ZeroRouter", "plain means", "default, one at a time", "default, all at once")


def _log(msg: str) -> None:
    print(f"[pool_one_at_a_time] {msg}", file=sys.stderr, flush=True)


def _dataset(name: str):
    if name == "synthetic":
        return ev.synthetic_dataset(0)
    from uniroute_jax._src.data import load_shared
    from uniroute_jax._src.embedding import TextEmbedder

    ds = load_shared(name)
    return ds.with_embeddings(TextEmbedder(progress=False)(list(ds.texts)))


def _cli(*argv) -> str:
    """Runs `uniroute ...` in this process; its stdout (stderr is dropped)."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
        code = cli([str(a) for a in argv])
    if code != 0:
        raise RuntimeError(f"uniroute {' '.join(map(str, argv))} exited {code}")
    return out.getvalue()


def _build(folder: Path, tag: str, names, costs, order, estimator: str | None = None) -> tuple[Pool, str]:
    """A pool made by `add-model` once per LLM in `order`; the pool and the last report."""
    pool = folder / f"pool_{tag}.npz"
    pool.unlink(missing_ok=True)
    extra = ("--estimator", estimator) if estimator else ()
    report = ""
    for h in order:
        report = _cli("add-model", "-r", folder / "router.npz", "-p", pool, "--val-embeddings", folder / "val.npy",
                      "--correctness", folder / f"q{h}.npy", "--name", names[h], "--cost", repr(float(costs[h])),
                      *extra)
    return Pool.load(pool).select(list(names)), report


def _derive_once(names, costs, counts, sums, order) -> tuple[Pool, str]:
    """The pool `_build` ends with, derived once: `add_to_pool` (what `add-model` calls) adding the
    last LLM of `order` to the others. A pool is a function of its LLMs' labels, not of the order
    they came in (the reverse-order check), so this is the same pool at one call instead of one
    per LLM."""
    def part(rows):
        return Pool(tuple(names[h] for h in rows), costs[rows], np.full((len(rows), counts.shape[1]), 0.5, np.float32),
                    counts[rows], sums[rows])
    pool, lines = add_to_pool(part(order[:-1]), part(order[-1:]))
    return pool.select(list(names)), "\n".join(lines)


def run(name: str, trials: int, n_clusters: int, order_check: int, derive_once: bool = False) -> dict:
    t0 = time.perf_counter()
    ds = _dataset(name)
    cfg = ev.ProtocolConfig(n_trials=trials, seed=0)
    sp = ev.make_splits(ds.n_prompts, ds.n_models, cfg)
    quality, mask = ev._filled_quality(ds), ds.label_mask
    prompt_costs, costs = ds.prompt_costs.astype(np.float32), ds.model_costs.astype(np.float32)
    names = tuple(f"m{h:02d}" for h in range(ds.n_models))  # file-safe stand-ins for the dataset's names
    n_val = sp.val.shape[1]
    budgets = [b for b in BUDGETS if b < n_val] + [n_val]
    areas = np.zeros((trials, len(budgets), len(COLUMNS)))
    fell_back = np.zeros((trials, len(budgets)), bool)  # the default used the shrinkage rule
    unresolved = np.zeros((trials, len(budgets)), bool)  # add-model: cannot be told from ZeroRouter
    order_gap, mean_gap = [], []
    _log(f"{name}: {trials} trials, {ds.n_models} LLMs ({int(sp.unseen[0].sum())} unseen), K={n_clusters}, "
         f"labels {budgets}")
    for t in range(trials):
        tr, va, te, seen, unseen = sp.train[t], sp.val[t], sp.test[t], sp.seen[t], sp.unseen[t]
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp)
            np.save(folder / "train.npy", ds.embeddings[tr])
            np.save(folder / "val.npy", ds.embeddings[va])
            _cli("fit", folder / "train.npy", "-k", n_clusters, "-o", folder / "router.npz")
            router = UniRouter.load(folder / "router.npz")
            lab_va, lab_tr, lab_te = router.assign(ds.embeddings[va]), router.assign(ds.embeddings[tr]), \
                router.assign(ds.embeddings[te])
            units = ev._cluster_units(jnp.asarray(lab_te), jnp.asarray(quality[te]), jnp.asarray(prompt_costs[te]),
                                      n_clusters)
            test_cost, test_quality = jnp.asarray(prompt_costs[te].mean(0)), jnp.asarray(quality[te].mean(0))

            def area(psi):  # test Area of the unseen LLMs routed on `psi [n_models, K]`
                return float(ev._metrics_of(jnp.asarray(psi.T, jnp.float32), units, jnp.asarray(costs),
                                            jnp.asarray(unseen), test_cost, test_quality).area)

            rng = np.random.default_rng(10_000 + t)
            label_order, add_order = rng.permutation(n_val), rng.permutation(ds.n_models)
            q_val = np.where(mask[va], quality[va], np.nan)
            full_n, full_e = labels_to_counts(lab_va, q_val, n_clusters=n_clusters)
            tr_n, tr_e = labels_to_counts(lab_tr, np.where(mask[tr], quality[tr], np.nan), n_clusters=n_clusters)
            for j, n in enumerate(budgets):
                q = np.full_like(q_val, np.nan)
                q[label_order[:n]] = q_val[label_order[:n]]
                for h in range(ds.n_models):
                    np.save(folder / f"q{h}.npy", q[:, h])
                counts, sums = labels_to_counts(lab_va, q, n_clusters=n_clusters)
                if derive_once:
                    pool, report = _derive_once(names, costs, counts, sums, add_order)
                else:
                    pool, report = _build(folder, "default", names, costs, add_order)
                overall = sums.sum(1, keepdims=True) / np.maximum(counts.sum(1, keepdims=True), 1)
                plain = np.where(counts > 0, sums / np.maximum(counts, 1), overall)
                if t == 0 and not derive_once:  # plain means are what `add-model --estimator mean` gives
                    mean_pool, _ = _build(folder, "mean", names, costs, add_order, "mean")
                    mean_gap.append(float(np.abs(mean_pool.psi - plain).max()))
                if n == order_check and not derive_once:
                    again, _ = _build(folder, "reversed", names, costs, add_order[::-1])
                    order_gap.append(float(np.abs(again.psi - pool.psi).max()))
                aao = fit_estimator(DEFAULT_METHOD, np.where(seen[:, None], full_n, counts)[seen],
                                    np.where(seen[:, None], full_e, sums)[seen], extra_counts=tr_n[seen],
                                    extra_error_sums=tr_e[seen])
                rows = np.where(seen[:, None], 0.0, aao.estimate(np.where(seen[:, None], full_n, counts),
                                                                  np.where(seen[:, None], full_e, sums)))
                areas[t, j] = [area(np.repeat(overall, n_clusters, 1)), area(plain), area(pool.psi), area(rows)]
                fell_back[t, j] = f"estimator '{DEFAULT_METHOD}'" not in report
                unresolved[t, j] = "cannot be told from ZeroRouter" in report
        _log(f"{name}: trial {t + 1}/{trials} ({time.perf_counter() - t0:.0f}s)")
    return {"name": name, "derive_once": derive_once, "areas": areas, "budgets": np.asarray(budgets), "fell_back": fell_back,
            "unresolved": unresolved, "order_gap": order_gap, "mean_gap": mean_gap, "n_models": ds.n_models,
            "n_unseen": int(sp.unseen[0].sum()), "seconds": time.perf_counter() - t0}


def _ms(x: np.ndarray) -> str:
    return f"{x.mean():.4f} ± {x.std(ddof=1) / np.sqrt(len(x)):.4f}"


def markdown(results: list[dict], command: str, n_clusters: int, order_check: int) -> str:
    lines = ["# A pool built one LLM at a time (`uniroute add-model`, default estimator)", "",
             f"Test Area of the unseen LLMs, mean ± standard error over trials; K = {n_clusters}; every LLM of a "
             "dataset labelled on the same first n validation prompts of its trial (see the script's docstring). "
             "'default - plain' is the paired difference. 'fell back': share of trials where the default "
             "estimator used the shrinkage rule; 'not told apart': share where add-model reported that the "
             "pool's estimates cannot be told from ZeroRouter's.", ""]
    for r in results:
        A, T = r["areas"], r["areas"].shape[0]
        lines += [f"## {r['name']} ({r['n_models']} LLMs, {r['n_unseen']} unseen per trial, {T} trials)", "",
                  "| labels per LLM | " + " | ".join(COLUMNS) + " | default - plain, one at a time | "
                  "default - plain, all at once | fell back | not told apart |",
                  "|---|" + "---|" * (len(COLUMNS) + 4)]
        for j, n in enumerate(r["budgets"]):
            label = f"all ({n})" if j == len(r["budgets"]) - 1 else str(n)
            cells = [_ms(A[:, j, c]) for c in range(len(COLUMNS))]
            cells += [_ms(A[:, j, 2] - A[:, j, 1]), _ms(A[:, j, 3] - A[:, j, 1]),
                      f"{r['fell_back'][:, j].mean():.0%}", f"{r['unresolved'][:, j].mean():.0%}"]
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
        if r.get("derive_once"):
            lines += ["", "The one-at-a-time pool derived in one call (`--derive-once`: `add_to_pool` adding the last "
                      f"LLM to the other {r['n_models'] - 1}, what the last `add-model` does; the reverse-order "
                      f"check is skipped). Run time {r['seconds']:.0f} s.", ""]
            continue
        lines += ["", f"Insertion order: pools at {order_check} labels built in reverse order differ from the "
                  f"trial's order by at most {max(r['order_gap'], default=float('nan')):.2g} in any row "
                  f"({len(r['order_gap'])} trials). `--estimator mean` through the command line vs plain means: "
                  f"{max(r['mean_gap'], default=float('nan')):.2g}. Run time {r['seconds']:.0f} s.", ""]
    lines += [f"Command: `{command}`",
              f"Machine: {platform.machine()}, {jax.device_count()} {jax.default_backend()} device(s), jax "
              f"{jax.__version__}."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", default=",".join(DATASETS))
    ap.add_argument("--trials", type=int, default=10)
    ap.add_argument("--clusters", type=int, default=10, help="K of `uniroute fit` (default 10)")
    ap.add_argument("--order-check", type=int, default=20, help="labels at which the reverse order is built")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results"))
    ap.add_argument("--derive-once", default="", help="comma-separated datasets whose one-at-a-time pool is "
                    "derived in one call (`add_to_pool` adding the last LLM to the others) instead of one "
                    "`add-model` per LLM: the same pool, for datasets with many LLMs")
    args = ap.parse_args(argv)
    once = set(filter(None, args.derive_once.split(",")))
    command = "python benchmarks/pool_one_at_a_time.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = []
    for name in args.datasets.split(","):
        results.append(run(name, args.trials, args.clusters, args.order_check, derive_once=name in once))
        write_text(out / "pool_one_at_a_time.md", markdown(results, command, args.clusters, args.order_check))
        with write_atomic(out / "pool_one_at_a_time.npz", "wb") as f:
            np.savez(f, **{f"{r['name']}_areas": r["areas"] for r in results},
                     **{f"{r['name']}_budgets": r["budgets"] for r in results}, columns=np.asarray(COLUMNS))
        _log(f"{name} written")
    return 0


if __name__ == "__main__":
    sys.exit(main())
