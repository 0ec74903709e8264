"""The `uniroute` command line. Every failure is one line on stderr and exit status 2; Ctrl-C stops a
command within about a second, with one line and exit status 130."""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import os
import signal
import socket
import sys
import threading
import time
from pathlib import Path

import numpy as np

from uniroute_jax._src import persistence, validation
from uniroute_jax._src.filelock import locked


class CLIError(Exception):
    """A user-facing error: printed as one line, no traceback."""


# ------------------------------------------------------------------------------ file formats


def read_matrix(path: str, name: str, *, key: str | None = None, allow_nan: bool = False) -> np.ndarray:
    """Reads a numeric array from `.npy`, `.npz` (entry `key`, or its only entry) or `.csv`.

    CSV: comma-separated numbers, one row per prompt; a first row that is not numeric is taken as
    a header and skipped; an empty cell is NaN (a missing label).
    """
    p = Path(path)
    if not p.is_file():
        raise CLIError(f"{name}: no such file {path}")
    try:
        if p.suffix == ".npy":
            return np.load(p, allow_pickle=False)
        if p.suffix == ".npz":
            with np.load(p, allow_pickle=False) as data:
                files = list(data.files)
                pick = key if key in files else (files[0] if len(files) == 1 else None)
                if pick is None:
                    raise CLIError(f"{name}: {path} holds {files}; expected an entry named {key!r}")
                return data[pick]
        if p.suffix in (".csv", ".txt"):
            return _read_csv_numbers(p, name, allow_nan)
    except CLIError:
        raise
    except (ValueError, OSError) as err:
        raise CLIError(f"{name}: cannot read {path}: {err}") from None
    raise CLIError(f"{name}: unsupported file type {p.suffix!r} for {path} (use .npy, .npz or .csv)")


def _read_csv_numbers(p: Path, name: str, allow_nan: bool) -> np.ndarray:
    try:
        # utf-8-sig: a byte-order mark (Excel's "CSV UTF-8") must not glue itself to the first cell.
        with open(p, newline="", encoding="utf-8-sig") as f:
            rows = [r if r else [""] for r in csv.reader(f)]
    except UnicodeDecodeError as err:
        raise CLIError(f"{name}: {p} is not UTF-8 text ({err.reason} at byte {err.start}); "
                       "save it as UTF-8") from None
    if not rows or all(r == [""] for r in rows):
        raise CLIError(f"{name}: {p} is empty")

    def parse(cell: str, r: int, c: int) -> float:
        cell = cell.strip()
        if cell == "" or cell.lower() == "nan":
            if allow_nan:
                return np.nan
            raise CLIError(f"{name}: {p} row {r + 1} column {c + 1} is empty")
        try:
            return float(cell)
        except ValueError:
            raise CLIError(f"{name}: {p} row {r + 1} column {c + 1} is not a number: {cell!r}") from None

    def is_number(cell: str) -> bool:
        try:
            float(cell)
            return True
        except ValueError:
            return False

    # A header is a first row of names only; a row mixing numbers and text is an error, not a header.
    first = [c.strip() for c in rows[0] if c.strip()]
    start = 1 if first and not any(is_number(c) for c in first) else 0
    body = list(enumerate(rows[start:], start))
    if max((len(r) for _, r in body), default=0) > 1:
        # Blank lines between rows of a table are layout; a blank line in a one-column file is a
        # missing value wherever it is, the end included.
        body = [(r, row) for r, row in body if row != [""]]
    out = [[parse(c, r, j) for j, c in enumerate(row)] for r, row in body]
    if not out:
        raise CLIError(f"{name}: {p} holds a header and no rows")
    widths = {len(r) for r in out}
    if len(widths) > 1:
        raise CLIError(f"{name}: {p} rows have different numbers of columns {sorted(widths)}")
    return np.asarray(out, np.float64)


def write_table(path: str | None, header: list[str], rows: list[list], fmt: str | None = None) -> None:
    """Writes rows as CSV (default) or JSONL (by `fmt` or a `.jsonl` suffix); stdout when path is None.

    A file is written whole or not at all (temporary file, then rename).
    """
    fmt = fmt or ("jsonl" if path and path.endswith(".jsonl") else "csv")

    def emit(out) -> None:
        if fmt == "jsonl":
            for row in rows:
                out.write(json.dumps(dict(zip(header, row))) + "\n")
        else:
            w = csv.writer(out)
            w.writerow(header)
            w.writerows(rows)

    if path is None:
        emit(sys.stdout)
        return
    with persistence.write_atomic(path, "w", newline="", encoding="utf-8") as out:
        emit(out)


def check_output(path: str | None, option: str, inputs: dict[str, str | None]) -> None:
    """Raises unless `path` (given as `option`) is none of the `inputs` and its folder can be written."""
    if path is None:
        return
    out = Path(path)
    for opt, given in inputs.items():
        if given and os.path.realpath(out) in {os.path.realpath(given),
                                               os.path.realpath(persistence.npz_path(given))}:
            raise CLIError(f"{option} {path} is the input {opt}: choose another output file")
    if out.is_dir():
        raise CLIError(f"{option} {path} is a folder; give a file name")
    folder = out.parent if str(out.parent) else Path(".")
    if folder.exists() and not os.access(folder, os.W_OK):
        raise CLIError(f"{option} {path}: cannot write to the folder {folder}")


def parse_names(value: str | None, extra: list[str] | None, option: str = "--models") -> list[str] | None:
    """Model names from a comma-separated `--models` and repeated `--model` (names holding commas)."""
    names = [m.strip() for m in value.split(",")] if value else []
    if value and any(not m for m in names):
        raise CLIError(f"{option} {value!r} holds an empty name")
    names += list(extra or [])
    return names or None


# ---------------------------------------------------------------------------------- commands


def _cmd_demo(args) -> int:
    from uniroute_jax._src.demo import main as demo_main

    return demo_main(args.seed, args.out)


def _cmd_fit(args) -> int:
    from uniroute_jax._src.router import UniRouter

    check_output(args.out, "--out", {"embeddings": args.embeddings})
    x = read_matrix(args.embeddings, "embeddings", key="embeddings")
    if args.metric == "cosine":  # name the file and the row, before k-means sees them
        validation.embedding_rows(validation.float_array(x, "embeddings", ndim=2), f"embeddings {args.embeddings}")
    router = UniRouter.fit(x, args.clusters, seed=args.seed, n_init=args.n_init, metric=args.metric,
                           alpha=args.alpha, init_sample=args.init_sample, verbose=True)
    path = router.save(args.out)
    print(f"router with {router.n_clusters} clusters over {router.dim}-d embeddings written to {path}")
    return 0


def _load_router_pool(args, need_pool: bool = True):
    from uniroute_jax._src.router import Pool, UniRouter

    router = UniRouter.load(args.router)
    if not need_pool:
        return router, None
    # upgrade: a pool file of the format before pools derived their rows is re-derived on reading.
    return router, router.check_pool(Pool.load(args.pool, upgrade=True), what=f"pool {args.pool}",
                                     other=f"router {args.router}")


def _embeddings(x: np.ndarray, name: str, router) -> np.ndarray:
    """Refuses rows the router cannot place (all zero under cosine, or not finite)."""
    x = validation.float_array(x, name, ndim=2)
    if router.metric == "cosine":
        validation.embedding_rows(x, name)
    return x


def _cmd_add_model(args) -> int:
    from uniroute_jax._src.router import Pool

    name = validation.model_name(args.name, "--name")
    pool_path = persistence.npz_path(args.pool)
    persistence.check_writable(pool_path)  # early, before the work; the save checks it again
    router, _ = _load_router_pool(args, need_pool=False)
    x = _embeddings(read_matrix(args.val_embeddings, "val-embeddings", key="embeddings"), "val-embeddings", router)
    q = read_matrix(args.correctness, "correctness", key="correctness", allow_nan=True)
    q = q.reshape(-1, 1) if q.ndim == 1 or (q.ndim == 2 and 1 in q.shape) else q
    if q.ndim != 2 or q.shape[1] != 1:
        raise CLIError(f"correctness must hold one value per validation prompt, got shape {q.shape}")
    q = validation.unit_interval(validation.float_array(q, "correctness", allow_nan=True), "correctness")
    if q.shape[0] != x.shape[0]:
        raise CLIError(f"correctness has {q.shape[0]} values but val-embeddings has {x.shape[0]} prompts")
    if np.isnan(q).all():
        raise CLIError("correctness holds no label: every value is blank or nan (the model was run on no prompt)")
    cost = validation.nonnegative_float(args.cost, "cost")
    new = router.represent(x, q, [name], [cost])
    from uniroute_jax._src.estimators import add_to_pool
    # Read, change and write the pool under its lock: concurrent add-model runs queue here
    # instead of each writing back the pool it read and losing the others' models.
    with locked(pool_path, timeout=args.lock_timeout):
        pool = Pool.load(pool_path) if pool_path.exists() else Pool.empty(router.n_clusters)
        router.check_pool(pool, what=f"pool {pool_path}", other=f"router {args.router}", allow_empty=True)
        order = list(pool.names)
        if name in pool:
            if not args.replace:
                raise CLIError(f"model {name!r} is already in {pool_path}; pass --replace to overwrite it")
            pool = pool.select([n for n in pool.names if n != name])  # derived once, below
        else:
            order.append(name)
        # Every row is re-derived from the whole pool (read under the lock), with the estimator
        # learnt from every LLM's labels: the pool does not depend on the order of additions.
        pool, report = add_to_pool(pool, new, args.estimator)
        pool = pool.select(order)  # a replaced model keeps its place
        path = pool.save(pool_path)
    print("\n".join(report))
    n = int(new.counts.sum())
    print(f"added {name!r} (cost {cost:g}, {n} validation label{'' if n == 1 else 's'}, "
          f"error {new.error_sums.sum() / max(n, 1):.3f}) to {path}: {len(pool)} models")
    return 0


def _cmd_select_prompts(args) -> int:
    from uniroute_jax._src.estimators import fit_estimator
    from uniroute_jax._src.selection import select_prompts

    router, _ = _load_router_pool(args, need_pool=False)
    x = read_matrix(args.candidates, "candidates", key="embeddings")
    clusters = router.assign(x)
    est, ref = None, None
    if args.strategy == "informative":
        from uniroute_jax._src.pool import Pool

        pool = Pool.load(args.pool) if args.pool and Path(args.pool).exists() else None
        if pool is not None:
            router.check_pool(pool, what=f"pool {args.pool}", other=f"router {args.router}", allow_empty=True)
        if pool is None or len(pool) < 2:
            raise CLIError("select-prompts: --strategy informative needs --pool with at least two represented LLMs")
        est = fit_estimator("prior", pool.counts, pool.error_sums, seed=args.seed)
        ref = pool.psi
    idx = select_prompts(clusters, args.n, strategy=args.strategy, n_clusters=router.n_clusters, estimator=est,
                         reference_psi=ref, seed=args.seed)
    write_table(args.out, ["prompt", "cluster"], [[int(i), int(clusters[i])] for i in idx])
    return 0


def read_prompts(path: str) -> tuple[list[str] | None, list[str]]:
    """`(prompt ids or None, texts)` from `.jsonl` (a "text" or "prompt" field per line, optional
    "prompt_id"), `.csv` (a "text" or "prompt" column, optional "prompt_id") or `.txt` (one prompt
    per line, no ids)."""
    from uniroute_jax._src.data import read_lines, utf8_error

    p = Path(path)
    if not p.is_file():
        raise CLIError(f"texts: no such file {path}")
    try:
        if p.suffix == ".jsonl":
            ids, out = [], []
            for i, line in enumerate(read_lines(p), 1):  # "\n" ends a line; U+2028 may sit in a JSON string
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as err:
                    raise CLIError(f"texts: {path} line {i} is not JSON: {err}") from None
                field = next((k for k in ("text", "prompt") if k in obj), "text") if isinstance(obj, dict) else None
                text = obj.get(field) if field else obj
                if not isinstance(text, str):
                    raise CLIError(f"texts: {path} line {i} has no string field 'text' or 'prompt'")
                try:
                    text.encode("utf-8")
                except UnicodeEncodeError as err:  # a "\ud83d" escape without its other half
                    where = f"field {field!r}" if field else "string"
                    raise CLIError(f"texts: {path} line {i} {where} holds a lone surrogate {text[err.start]!r} at "
                                   f"character {err.start}, which is not text: fix or drop the prompt") from None
                out.append(text)
                ids.append(obj.get("prompt_id") if isinstance(obj, dict) else None)
            has_ids = any(i is not None for i in ids)
            if has_ids and any(i is None for i in ids):
                raise CLIError(f"texts: {path} gives 'prompt_id' on some lines only")
            return ([str(i) for i in ids] if has_ids else None), out
        if p.suffix == ".csv":
            with open(p, newline="", encoding="utf-8-sig") as f:
                reader = csv.DictReader(f)
                field = next((c for c in ("text", "prompt") if c in (reader.fieldnames or [])), None)
                if field is None:
                    raise CLIError(f"texts: {path} has no 'text' or 'prompt' column (columns: {reader.fieldnames})")
                rows = list(reader)
            ids = [r["prompt_id"] for r in rows] if "prompt_id" in (reader.fieldnames or []) else None
            return ids, [r[field] for r in rows]
        if p.suffix == ".txt":
            return None, [line for line in read_lines(p) if line.strip()]
    except UnicodeDecodeError:  # the CSV reader's
        raise CLIError(f"texts: {utf8_error(p)}") from None
    except ValueError as err:  # read_lines's
        raise CLIError(f"texts: {err}") from None
    raise CLIError(f"texts: unsupported file type {p.suffix!r} for {path} (use .jsonl, .csv or .txt)")


def read_texts(path: str) -> list[str]:
    """Prompt texts of a file read by `read_prompts`."""
    return read_prompts(path)[1]


def _embed_texts(texts: list[str], args) -> np.ndarray:
    if not texts:
        raise CLIError("texts: the file holds no prompt")
    from uniroute_jax._src.embedding import TextEmbedder

    kw = {"truncation": args.truncation} if getattr(args, "truncation", None) else {}
    return TextEmbedder(getattr(args, "model_dir", None), **kw)(texts)


def _cmd_route(args) -> int:
    if (args.embeddings is None) == (args.texts is None):
        raise CLIError("give exactly one of --embeddings and --texts")
    check_output(args.out, "--out", {"--router": args.router, "--pool": args.pool,
                                     "--embeddings": args.embeddings, "--texts": args.texts})
    router, pool = _load_router_pool(args)
    ids = None
    if args.texts:
        ids, texts = read_prompts(args.texts)
        x = _embed_texts(texts, args)
    else:
        x = read_matrix(args.embeddings, "embeddings", key="embeddings")
    x = _embeddings(x, "embeddings", router)
    models = parse_names(args.models, args.model)
    if args.target_cost is not None:
        cal = _calibrate(router, x, pool, args.target_cost, models)
        decision = router.route_calibrated(x, pool, cal, seed=args.seed, models=models)
    else:
        decision = router.route(x, pool, args.lam, models=models)
    # Rows carry the prompts' own ids when the file gives them, else their position.
    first = "prompt_id" if ids is not None else "prompt"
    ids = ids if ids is not None else list(range(len(decision.model)))
    rows = [[i, str(m), int(c)] for i, m, c in zip(ids, decision.model, decision.cluster)]
    write_table(args.out, [first, "model", "cluster"], rows, args.format)
    return 0


def _calibrate(router, x: np.ndarray, pool, target_cost: float, models, quality=None):
    """The exact calibration to a target mean cost on these prompts (`UniRouter.calibrate`); says it on stderr."""
    target = validation.nonnegative_float(target_cost, "target_cost")
    cal = router.calibrate(x, pool, cost=target, models=models, labels=quality)
    lam_hi, lam_lo, p = float(cal.lam_high_cost[0]), float(cal.lam_low_cost[0]), float(cal.p_high[0])
    mix = f"lambda {lam_hi:.6g}" if p == 1.0 else (
        f"lambda {lam_lo:.6g}" if p == 0.0 else f"lambda {lam_hi:.6g} with probability {p:.4f}, else {lam_lo:.6g}")
    msg = (f"target mean cost {target:g} on {x.shape[0]} prompts: {mix}; expected mean cost "
           f"{float(cal.achieved_cost[0]):.6g}")
    if quality is not None:
        msg += f", mean quality {float(cal.achieved_quality[0]):.4f}"
    if not bool(cal.feasible[0]):
        msg += " (the target is below the cheapest decisions' cost: routing at the cheapest)"
    print(msg, file=sys.stderr)
    return cal


def _cmd_embed(args) -> int:
    check_output(args.out, "--out", {"texts": args.texts})
    if not args.out.endswith(".npy"):
        raise CLIError(f"--out {args.out} must end in .npy")
    ids, texts = read_prompts(args.texts)
    x = np.asarray(_embed_texts(texts, args), np.float32)
    with persistence.write_atomic(args.out) as f:
        np.save(f, x, allow_pickle=False)
    print(f"{x.shape[0]} prompts embedded ({x.shape[1]} dims) into {args.out}"
          + (" in the file's prompt order" if ids is None else " in the order of their prompt_id rows"),
          file=sys.stderr)
    return 0


def _cmd_sweep(args) -> int:
    from uniroute_jax._src import metrics
    from uniroute_jax._src.plots import plot_curves

    inputs = {"--router": args.router, "--pool": args.pool, "--embeddings": args.embeddings,
              "--quality": args.quality}
    check_output(args.out, "--out", inputs)
    check_output(args.plot, "--plot", inputs)
    router, pool = _load_router_pool(args)
    x = _embeddings(read_matrix(args.embeddings, "embeddings", key="embeddings"), "embeddings", router)
    quality = None
    if args.quality:
        quality = read_matrix(args.quality, "quality", key="quality")
    models = parse_names(args.models, args.model)
    curves = router.sweep(x, pool, quality=quality, subsets=[models] if models else None, n_budgets=args.n_budgets)
    rows = [[float(l), float(c), float(q), float(e)] for l, c, q, e in
            zip(curves.lams, curves.mean_cost[0], curves.mean_quality[0], curves.mean_error_estimate[0])]
    write_table(args.out, ["lam", "mean_cost", "mean_quality", "mean_error_estimate"], rows)
    used = np.flatnonzero(curves.masks[0])
    if quality is not None:
        # The paper's summary: cost normalised by the priciest model of the pool, QNC's target the
        # test accuracy of the most accurate one.
        cost, q = curves.mean_cost[0], curves.mean_quality[0]
        valid = np.ones(cost.shape, bool)
        norm = float(pool.costs[used].max())
        target = float(np.asarray(quality, np.float64).mean(0)[used].max())
        if norm > 0:
            a = float(metrics.area(cost, q, valid, norm))
            t = metrics.qnc(cost, q, valid, target, norm)
            qnc_s = f"{float(t.value):.3f}" if bool(t.reached) else "not reached"
            print(f"Area {a:.4f}; QNC {qnc_s} (target accuracy {target:.4f}; cost normalised by "
                  f"{norm:g}, the priciest model's)", file=sys.stderr)
    if args.target_cost is not None:
        _calibrate(router, x, pool, args.target_cost, models, quality)
    if args.plot:
        plot_curves({"UniRoute": (curves.mean_cost[0], curves.mean_quality[0] if quality is not None
                                  else 1 - curves.mean_error_estimate[0])},
                    args.plot, points=(pool.costs[used], quality.mean(0)[used] if quality is not None else
                                       1 - (pool.error_sums.sum(1) / np.maximum(pool.counts.sum(1), 1))[used]),
                    point_names=[pool.names[i] for i in used],
                    ylabel="test accuracy" if quality is not None else "estimated accuracy")
        print(f"plot written to {args.plot}", file=sys.stderr)
    return 0


def _int_list(value: str, option: str) -> tuple[int, ...]:
    try:
        out = tuple(int(k) for k in value.split(","))
    except ValueError:
        raise CLIError(f"{option} must be comma-separated integers, got {value!r}") from None
    if not out or min(out) < 1:
        raise CLIError(f"{option} values must be >= 1, got {value!r}")
    return out


def _cmd_evaluate(args) -> int:
    from uniroute_jax._src import evaluation as ev

    if args.data and args.shared:
        raise CLIError("give --data or --shared, not both")
    methods = [m.strip() for m in args.methods.split(",")] if args.methods else list(ev.DEFAULT_METHODS)
    aliases = {m.lower(): m for m in ev.METHODS}
    aliases.update({"zero": ev.ZERO, "knn": ev.KNN, "kmeans": ev.KMEANS, "learnedmap": ev.LEARNED, "mlp": ev.MLP,
                    "mlp-retrained": ev.MLP_RETRAINED, "oracle": ev.ORACLE, "hiershrink": "HierShrink",
                    "hiershrink-tuned": "HierShrink (tuned)", "difficulty": "difficulty-weighted",
                    "knn-tuned": "k-NN (tuned)", "irt": "IRT"})
    unknown = [m for m in methods if m.lower() not in aliases]
    if unknown:
        raise CLIError(f"unknown methods {unknown}; choose from {sorted(aliases)}")
    kw = {"alpha": args.alpha, "metric": args.metric, "n_init": args.n_init, "estimator": args.estimator}
    if args.k_grid:
        kw["k_grid"] = _int_list(args.k_grid, "--k-grid")
    config = ev.ProtocolConfig(n_trials=args.trials, seed=args.seed, **kw)
    # Check the output folder before the run, not after it.
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise CLIError(f"--out {out} is a file; give a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise CLIError(f"--out {out}: cannot create the folder ({err.strerror})") from None
    if not os.access(out, os.W_OK):
        raise CLIError(f"--out {out}: cannot write to the folder")
    if args.data:
        from uniroute_jax._src.data import load_folder

        ds = load_folder(args.data)
    elif args.shared:
        from uniroute_jax._src.data import load_shared

        ds = load_shared(args.shared)
    else:
        ds = ev.synthetic_dataset(args.seed)
    if ds.embeddings is None:
        ds = _embed_dataset(ds, args)
    res = ev.evaluate(ds, [aliases[m.lower()] for m in methods], config=config)
    with persistence.write_atomic(out / "table.md", "w", encoding="utf-8") as f:
        f.write(res.table() + "\n")
    with persistence.write_atomic(out / "table.csv", "w", encoding="utf-8", newline="") as f:
        f.write(res.table("csv"))
    rows = [[name, t, int(res.chosen_k[t]), int(res.chosen_knn_k[t]),
             *(float(getattr(res.metrics[name], f)[t]) for f in res.metrics[name]._fields)]
            for name in res.methods for t in range(config.n_trials)]
    write_table(str(out / "trials.csv"), ["method", "trial", "chosen_K", "chosen_knn_k",
                                          *ev.metrics.CurveMetrics._fields], rows)
    res.plot(out / "curves.png")
    print(res.table())
    print(f"\nK chosen per trial: {res.chosen_k.tolist()}")
    if ev.KNN in res.methods:
        print(f"k (K-NN) chosen per trial: {res.chosen_knn_k.tolist()}")
    print(f"written: {out / 'table.md'}, {out / 'table.csv'}, {out / 'trials.csv'}, {out / 'curves.png'}")
    return 0


def _cmd_theory(args) -> int:
    try:
        from theory.plots import main as theory_main
    except ImportError:
        raise CLIError("the theory package is not importable: install uniroute-jax from its source tree") from None
    # 1 when a check that theory/README.md states as a theorem fails (see theory.plots.verdicts).
    return theory_main(["--out", args.out, "--seed", str(args.seed)] + (["--quick"] if args.quick else []))


def _embed_dataset(ds, args):
    """Embeds the dataset's texts with the local MiniLM model (cached on disk)."""
    if ds.texts is None:
        raise CLIError(f"dataset {ds.name!r} has neither embeddings nor texts to embed")
    return ds.with_embeddings(_embed_texts(list(ds.texts), args))


# ------------------------------------------------------------------------------------ parser


def _add_explain_parser(sub) -> None:
    """Registers `uniroute explain` on an argparse sub-parser collection."""
    x = sub.add_parser("explain", help="show why each prompt goes where: every candidate's error, cost and score")
    x.add_argument("--router", "-r", required=True)
    x.add_argument("--pool", "-p", required=True)
    src = x.add_mutually_exclusive_group(required=True)
    src.add_argument("--text", action="append", help="a prompt (repeat for several), embedded with all-MiniLM-L6-v2")
    src.add_argument("--embeddings", "-e", help="[n_prompts, dim] prompt embeddings instead of texts")
    x.add_argument("--lam", type=float, default=0.0, help="trade-off >= 0 (default 0 = most accurate)")
    x.add_argument("--models", help="comma-separated subset of the pool to choose among")
    x.add_argument("--model-dir", help="embedding model folder for --text (default: installed package)")
    x.add_argument("--truncation", choices=["head", "tail", "head_tail"], help="how long prompts are cut")
    x.add_argument("--json", action="store_true", help="one JSON trace per prompt instead of tables")
    x.set_defaults(func=_cmd_explain)


def _cmd_explain(args) -> int:
    """`uniroute explain`: prints each prompt's decision table (or JSON traces with --json)."""
    from uniroute_jax._src.explain import explain as explain_decisions
    router, pool = _load_router_pool(args)
    if args.text is not None:
        x = _embed_texts(list(args.text), args)
    else:
        x = read_matrix(args.embeddings, "embeddings", key="embeddings")
    models = [m.strip() for m in args.models.split(",")] if args.models else None
    decisions = explain_decisions(router, pool, x, args.lam, models=models)
    for i, d in enumerate(decisions):
        if args.json:
            print(json.dumps({"prompt": i, **d.as_dict()}))
        else:
            print(("\n" if i else "") + f"prompt {i}: " + d.table())
    return 0


def _add_observe_parser(sub) -> None:
    """Registers `uniroute observe` on an argparse sub-parser collection."""
    o = sub.add_parser("observe", help="fold served prompts' correctness into a pool file (locked, atomic)")
    o.add_argument("--router", "-r", required=True)
    o.add_argument("--pool", "-p", required=True, help="pool file to update in place")
    src = o.add_mutually_exclusive_group(required=True)
    src.add_argument("--text", action="append", help="a served prompt (repeat for several)")
    src.add_argument("--embeddings", "-e", help="[n_obs, dim] embeddings of the served prompts")
    o.add_argument("--model", required=True, help="the pool model that answered")
    o.add_argument("--correct", required=True,
                   help="comma-separated quality in [0, 1], one per prompt (or a .npy/.csv file)")
    o.add_argument("--model-dir", help="embedding model folder for --text (default: installed package)")
    o.add_argument("--truncation", choices=["head", "tail", "head_tail"], help="how long prompts are cut")
    o.add_argument("--lock-timeout", type=_seconds, metavar="SECONDS", help=LOCK_TIMEOUT_HELP)
    o.set_defaults(func=_cmd_observe)


def _cmd_observe(args) -> int:
    """`uniroute observe`: adds the labels to the pool file and prints the model's new totals."""
    from uniroute_jax._src.feedback import observe_file
    router, _ = _load_router_pool(args, need_pool=False)
    x = (_embed_texts(list(args.text), args) if args.text is not None
         else read_matrix(args.embeddings, "embeddings", key="embeddings"))
    if Path(args.correct).suffix in (".npy", ".npz", ".csv"):
        correct = read_matrix(args.correct, "correct", key="correct").reshape(-1)
    else:
        try:
            correct = [float(v) for v in args.correct.split(",")]
        except ValueError:
            raise CLIError(f"correct: expected comma-separated numbers or a file, got {args.correct!r}") from None
    pool = observe_file(args.pool, router, x, args.model, correct, lock_timeout=args.lock_timeout)
    i = pool.names.index(args.model)
    n, s = float(pool.counts[i].sum()), float(pool.error_sums[i].sum())
    print(f"{args.model}: {len(correct)} observation(s) added to {args.pool}; "
          f"{n:g} label{'' if n == 1 else 's'}, overall error {s / max(n, 1e-12):.3f}")
    return 0


def _seconds(value: str) -> float:
    """The argparse type of `--lock-timeout`: a finite number of seconds >= 0."""
    try:
        return validation.nonnegative_float(float(value), "seconds")
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds >= 0, got {value!r}") from None


def read_rows(path: str, name: str) -> list[dict]:
    """Rows of a `.csv` (with a header) or `.jsonl` (one object a line) file, as dicts."""
    from uniroute_jax._src.data import read_lines, utf8_error

    p = Path(path)
    if not p.is_file():
        raise CLIError(f"{name}: no such file {path}")
    try:
        if p.suffix == ".jsonl":
            rows = []
            for i, line in enumerate(read_lines(p), 1):
                if line.strip():
                    try:
                        obj = json.loads(line)
                    except json.JSONDecodeError as err:
                        raise CLIError(f"{name}: {path} line {i} is not JSON: {err}") from None
                    if not isinstance(obj, dict):
                        raise CLIError(f"{name}: {path} line {i} is not a JSON object")
                    rows.append(obj)
            return rows
        if p.suffix == ".csv":
            with open(p, newline="", encoding="utf-8-sig") as f:
                return list(csv.DictReader(f))
    except UnicodeDecodeError:
        raise CLIError(f"{name}: {utf8_error(p)}") from None
    except ValueError as err:  # read_lines's
        raise CLIError(f"{name}: {err}") from None
    raise CLIError(f"{name}: unsupported file type {p.suffix!r} for {path} (use .csv or .jsonl)")


def _quality(value, name: str, where: str) -> float:
    """A quality cell: a number in [0, 1], or nan for a blank cell (no outcome)."""
    if value is None or (isinstance(value, str) and value.strip() in ("", "nan", "NaN")):
        return float("nan")
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise CLIError(f"{name}: {where} 'correct' is not a number: {value!r}") from None
    if not 0.0 <= v <= 1.0:
        raise CLIError(f"{name}: {where} 'correct' is {v:g}, expected a value in [0, 1]")
    return v


def _prompts_or_clusters(path: str, name: str, args, router) -> np.ndarray:
    """Prompts of `uniroute drift`: texts (.jsonl/.txt, embedded), embeddings [n, dim] or cluster ids [n]."""
    if Path(path).suffix in (".jsonl", ".txt"):
        return _embed_texts(read_texts(path), args)
    return read_matrix(path, name, key="embeddings")


def _drift_outcomes(path: str, n_served: int, pool) -> tuple[list[str], np.ndarray]:
    """`(models, correct)` of `--outcomes`: rows with `model` and `correct`, in the order of the served
    prompts, or each naming its served prompt's row in a `prompt` column (the others get none)."""
    rows = read_rows(path, "outcomes")
    if not rows:
        raise CLIError(f"outcomes: {path} holds no row")
    missing = [c for c in ("model", "correct") if c not in rows[0]]
    if missing:
        raise CLIError(f"outcomes: {path} has no {missing[0]!r} field (give 'model' and 'correct', "
                       "optionally 'prompt')")
    models, correct = [pool.names[0]] * n_served, np.full(n_served, np.nan)
    if "prompt" in rows[0]:
        for j, r in enumerate(rows, 1):
            try:
                i = int(r["prompt"])
            except (TypeError, ValueError):
                raise CLIError(f"outcomes: row {j} 'prompt' is not a row number: {r['prompt']!r}") from None
            if not 0 <= i < n_served:
                raise CLIError(f"outcomes: row {j} 'prompt' is {i}, but --served has {n_served} prompts")
            if not np.isnan(correct[i]):
                raise CLIError(f"outcomes: served prompt {i} has more than one outcome")
            models[i], correct[i] = str(r["model"]), _quality(r["correct"], "outcomes", f"row {j}")
    else:
        if len(rows) != n_served:
            raise CLIError(f"outcomes: {path} has {len(rows)} rows but --served has {n_served} prompts "
                           "(or give a 'prompt' column naming each row's prompt)")
        models = [str(r["model"]) for r in rows]
        correct = np.array([_quality(r["correct"], "outcomes", f"row {j}") for j, r in enumerate(rows, 1)])
    return models, correct


def _add_drift_parser(sub) -> None:
    """Registers `uniroute drift` on an argparse sub-parser collection."""
    d = sub.add_parser("drift", help="compare served traffic with the validation set: cluster mix and calibration")
    d.add_argument("--router", "-r", required=True)
    d.add_argument("--pool", "-p", required=True)
    d.add_argument("--served", required=True,
                   help="served prompts: embeddings [n, dim] (.npy/.npz/.csv), cluster ids [n], or texts (.jsonl/.txt)")
    d.add_argument("--validation", required=True, help="the validation prompts the pool was estimated on, the same way")
    d.add_argument("--outcomes", help="served outcomes (.csv/.jsonl): 'model' and 'correct' per served prompt "
                                      "(in order, or with a 'prompt' row column); blank correct = none")
    d.add_argument("--plot", help="PNG to write: cluster mix and calibration")
    d.add_argument("--psi-threshold", type=float, default=0.2, help="PSI from which the mix has moved (default 0.2)")
    d.add_argument("--alpha", type=float, default=0.05, help="significance level of the tests (default 0.05)")
    d.add_argument("--level", type=float, default=0.95, help="level of the observed-error intervals (default 0.95)")
    d.add_argument("--fail-on-drift", action="store_true",
                   help="exit with status 1 when the mix moved or a cell is miscalibrated (for a scheduled check)")
    d.add_argument("--model-dir", help="embedding model folder for texts (default: installed package)")
    d.add_argument("--truncation", choices=["head", "tail", "head_tail"], help="how long prompts are cut")
    d.set_defaults(func=_cmd_drift)


def _cmd_drift(args) -> int:
    """`uniroute drift`: prints the drift report (and writes its plot)."""
    from uniroute_jax._src.drift import drift_report, plot_drift

    check_output(args.plot, "--plot", {"--router": args.router, "--pool": args.pool, "--served": args.served,
                                       "--validation": args.validation, "--outcomes": args.outcomes})
    router, pool = _load_router_pool(args)
    served = _prompts_or_clusters(args.served, "served", args, router)
    val = _prompts_or_clusters(args.validation, "validation", args, router)
    outcomes = None if args.outcomes is None else _drift_outcomes(args.outcomes, served.shape[0], pool)
    report = drift_report(router, pool, served, val, outcomes=outcomes, psi_threshold=args.psi_threshold,
                          alpha=args.alpha, level=args.level)
    print(report.summary())
    if args.plot:
        print(f"plot written to {plot_drift(report, args.plot)}")
    return 1 if args.fail_on_drift and (report.mix_moved or report.miscalibrated.any()) else 0


def _add_shadow_report_parser(sub) -> None:
    """Registers `uniroute shadow-report` on an argparse sub-parser collection."""
    s = sub.add_parser("shadow-report", help="what UniRoute would have changed: agreement, cost and quality of a "
                                             "shadow-mode log")
    s.add_argument("log", help="the shadow log: the plugin's JSONL file, or log lines holding 'uniroute shadow: {...}'")
    s.add_argument("--pool", "-p", help="pool file for costs and error estimates (default: those logged)")
    s.add_argument("--outcomes", help="outcomes of the served answers (.csv/.jsonl): 'request_id' and 'correct'")
    s.add_argument("--level", type=float, default=0.95, help="interval probability (default 0.95)")
    s.add_argument("--seed", type=int, default=0, help="seed of the bootstrap (default 0)")
    s.set_defaults(func=_cmd_shadow_report)


def _cmd_shadow_report(args) -> int:
    """`uniroute shadow-report`: prints the report of a shadow log."""
    from uniroute_jax._src.pool import Pool
    from uniroute_jax._src.shadow import read_shadow_log, shadow_report

    if not Path(args.log).is_file():
        raise CLIError(f"log: no such file {args.log}")
    records = read_shadow_log(args.log)
    pool = None if args.pool is None else Pool.load(args.pool, upgrade=True)
    outcomes = None
    if args.outcomes is not None:
        rows = read_rows(args.outcomes, "outcomes")
        if rows and any(c not in rows[0] for c in ("request_id", "correct")):
            raise CLIError(f"outcomes: {args.outcomes} needs the fields 'request_id' and 'correct'")
        outcomes = {}
        for j, r in enumerate(rows, 1):
            v = _quality(r["correct"], "outcomes", f"row {j}")
            if not np.isnan(v):
                outcomes[str(r["request_id"])] = v
    print(shadow_report(records, pool=pool, outcomes=outcomes, level=args.level, seed=args.seed).summary())
    return 0


LOCK_TIMEOUT_HELP = ("seconds to wait while another process holds the pool's lock, then give up (exit 2); "
                     "default: wait, naming the holder after a second")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="uniroute", description="Dynamic LLM routing (UniRoute) with a JAX core.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    d = sub.add_parser("demo", help="route among unseen LLMs of a synthetic world; print a table, write a PNG")
    d.add_argument("--seed", type=int, default=0, help="seed of the world, splits and pools (default 0)")
    d.add_argument("--out", default="uniroute_demo", help="folder for curves.png (default ./uniroute_demo)")
    d.set_defaults(func=_cmd_demo)

    f = sub.add_parser("fit", help="fit k-means on training-prompt embeddings; write a router file")
    f.add_argument("embeddings", help="[n_prompts, dim] .npy/.npz/.csv")
    f.add_argument("--clusters", "-k", type=int, required=True, help="number of clusters K")
    f.add_argument("--out", "-o", required=True, help="router file to write (.npz)")
    f.add_argument("--metric", choices=["cosine", "euclidean"], default="cosine")
    f.add_argument("--seed", type=int, default=0)
    f.add_argument("--n-init", type=int, default=3, help="k-means restarts (default 3)")
    f.add_argument("--init-sample", type=int, default=None,
                   help="seed k-means++ on this many random prompts (default: all); speeds up fits on 100,000s")
    f.add_argument("--alpha", type=float, default=1.0, help="shrinkage pseudo-count for sparse clusters (default 1)")
    f.set_defaults(func=_cmd_fit)

    a = sub.add_parser("add-model", help="represent one LLM from its validation correctness; add it to a pool file")
    a.add_argument("--router", "-r", required=True, help="router file from `uniroute fit`")
    a.add_argument("--pool", "-p", required=True, help="pool file to update (created if missing)")
    a.add_argument("--val-embeddings", required=True, help="[n_val, dim] validation-prompt embeddings")
    a.add_argument("--correctness", required=True, help="[n_val] quality in [0, 1]; empty/NaN = not run")
    a.add_argument("--name", required=True, help="model name")
    a.add_argument("--cost", required=True, type=float, help="cost per query")
    a.add_argument("--replace", action="store_true", help="overwrite a model of the same name")
    a.add_argument("--estimator", choices=["mean", "shrinkage", "hierarchical", "prior"], default=None,
                   help="estimator every row of the pool is derived with (default: the pool's own; prior for a "
                        "new pool, learnt from the pool's LLMs, the shrinkage rule where that predicts no better)")
    a.add_argument("--lock-timeout", type=_seconds, metavar="SECONDS", help=LOCK_TIMEOUT_HELP)
    a.set_defaults(func=_cmd_add_model)

    m = sub.add_parser("embed", help="embed prompt texts with all-MiniLM-L6-v2; write an embeddings .npy")
    m.add_argument("texts", help="prompt texts (.jsonl/.csv/.txt)")
    m.add_argument("--out", "-o", required=True, help=".npy file to write, one row per prompt")
    m.add_argument("--model-dir", help="embedding model folder (default: installed package)")
    m.add_argument("--truncation", choices=["head", "tail", "head_tail"], help="how long prompts are cut")
    m.set_defaults(func=_cmd_embed)

    sp = sub.add_parser("select-prompts", help="the N candidate prompts to label for a new LLM")
    sp.add_argument("--router", "-r", required=True, help="router file from `uniroute fit`")
    sp.add_argument("--candidates", required=True, help="[n_cand, dim] embeddings of the candidate prompts")
    sp.add_argument("-n", type=int, required=True, help="prompts to choose")
    sp.add_argument("--strategy", choices=["random", "stratified", "informative"], default="stratified")
    sp.add_argument("--pool", "-p", help="pool file of represented LLMs (needed by --strategy informative)")
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument("--out", "-o", help="CSV/JSONL of the chosen row indices (default stdout)")
    sp.set_defaults(func=_cmd_select_prompts)

    r = sub.add_parser("route", help="choose a model for each prompt at a trade-off --lam")
    r.add_argument("--router", "-r", required=True)
    r.add_argument("--pool", "-p", required=True)
    r.add_argument("--embeddings", "-e", help="[n_prompts, dim] prompt embeddings")
    r.add_argument("--texts", "-t", help="prompt texts (.jsonl/.csv/.txt), embedded with all-MiniLM-L6-v2")
    r.add_argument("--model-dir", help="embedding model folder for --texts (default: installed package)")
    r.add_argument("--truncation", choices=["head", "tail", "head_tail"], help="how long prompts are cut")
    budget = r.add_mutually_exclusive_group(required=True)
    budget.add_argument("--lam", type=float, help="trade-off >= 0 (0 = most accurate)")
    budget.add_argument("--target-cost", type=float,
                        help="mean cost per prompt to meet on these prompts (lambda calibrated exactly)")
    r.add_argument("--seed", type=int, default=0, help="seed of --target-cost's mix of two trade-offs (default 0)")
    r.add_argument("--models", help="comma-separated subset of the pool to route among")
    r.add_argument("--model", action="append", help="one model of the subset (repeatable; for names with commas)")
    r.add_argument("--out", "-o", help="output .csv or .jsonl (default: CSV on stdout)")
    r.add_argument("--format", choices=["csv", "jsonl"], help="output format (default from --out suffix)")
    r.set_defaults(func=_cmd_route)

    s = sub.add_parser("sweep", help="cost-quality curve over a grid of trade-offs (CSV, optional PNG)")
    s.add_argument("--router", "-r", required=True)
    s.add_argument("--pool", "-p", required=True)
    s.add_argument("--embeddings", "-e", required=True, help="[n_prompts, dim] test-prompt embeddings")
    s.add_argument("--quality", "-q", help="[n_prompts, n_models] test quality, columns in pool order")
    s.add_argument("--models", help="comma-separated subset of the pool")
    s.add_argument("--model", action="append", help="one model of the subset (repeatable; for names with commas)")
    s.add_argument("--n-budgets", type=int, default=256)
    s.add_argument("--target-cost", type=float,
                   help="also print the lambda that meets this mean cost per prompt here (exact calibration)")
    s.add_argument("--out", "-o", help="CSV to write (default stdout)")
    s.add_argument("--plot", help="PNG to write")
    s.set_defaults(func=_cmd_sweep)

    e = sub.add_parser("evaluate", help="the paper's protocol: every method on random splits; table, CSVs, PNG")
    src = e.add_mutually_exclusive_group()
    src.add_argument("--data", help="a dataset folder (prompts.csv, quality.csv, models.csv[, embeddings.npy])")
    src.add_argument("--shared", help="a staged dataset: routerbench_partial, alpacaeval, routerdc_7llm")
    e.add_argument("--trials", type=int, default=20, help="random splits (default 20)")
    e.add_argument("--methods", help="comma-separated: zero,knn,kmeans,learnedmap,mlp,mlp-retrained,oracle; the peers' "
                   "onboarding methods hiershrink,hiershrink-tuned,difficulty,knn-tuned,irt")
    e.add_argument("--k-grid", help="comma-separated candidate K (default 5,10,25,50,100)")
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--metric", choices=["cosine", "euclidean"], default="cosine")
    e.add_argument("--n-init", type=int, default=3, help="k-means restarts (default 3)")
    e.add_argument("--alpha", type=float, default=1.0, help="shrinkage pseudo-count for sparse clusters (default 1)")
    e.add_argument("--estimator", choices=["mean", "shrinkage", "hierarchical", "prior"], default="shrinkage",
                   help="UniRoute (K-Means)'s error vectors of every LLM (default shrinkage, the paper's)")
    e.add_argument("--model-dir", help="all-MiniLM-L6-v2 folder for embedding texts (default: installed package)")
    e.add_argument("--truncation", choices=["head", "tail", "head_tail"], help="how long prompts are cut")
    e.add_argument("--out", "-o", default="uniroute_eval", help="output folder (default ./uniroute_eval)")
    e.set_defaults(func=_cmd_evaluate)

    t = sub.add_parser("theory", help="check Propositions 1 and 2 on synthetic meta-distributions; write plots")
    t.add_argument("--out", "-o", default="uniroute_theory", help="output folder (default ./uniroute_theory)")
    t.add_argument("--quick", action="store_true", help="a small run (about a minute)")
    t.add_argument("--seed", type=int, default=0)
    t.set_defaults(func=_cmd_theory)

    _add_explain_parser(sub)
    _add_observe_parser(sub)
    _add_drift_parser(sub)
    _add_shadow_report_parser(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)  # `--help` ends here, before JAX is imported
    from uniroute_jax._src import compile_cache

    compile_cache.enable()  # a command's compiled kernels are loaded, not compiled, by the next one
    if argv is None:  # this process's own command line: Ctrl-C must end it wherever it waits
        _end_on_ctrl_c(args.command)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        if argv is None:
            _stop(args.command)
        print(_STOPPED.format(args.command), file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into `head` and closed early
        return 0
    except (CLIError, ValueError, TypeError, FileNotFoundError, OSError) as err:
        msg = str(err).splitlines()[0] if str(err) else type(err).__name__
        print(f"uniroute: error: {msg}", file=sys.stderr)
        return 2


_STOPPED = "uniroute: interrupted: {} stopped (Ctrl-C); no file is left half-written"
_STOPPING = threading.Lock()
_WAKEUP: tuple = ()


def _stop(command: str) -> None:
    """Says that `command` stopped on Ctrl-C and ends the process at once, with status 130 (128 + SIGINT).

    At once, not by returning: a computation JAX started may still be running, and the
    interpreter's exit would wait for it. No file is left half-written: each is replaced whole by
    a rename, and a temporary file left behind is removed by the next save of that file.
    """
    with _STOPPING:  # the main thread or the watcher, whichever comes first; the other waits here
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            print(_STOPPED.format(command), file=sys.stderr, flush=True)
        os._exit(130)


def _end_on_ctrl_c(command: str, grace: float = 1.0) -> None:
    """Makes Ctrl-C end this process within about `grace` seconds, wherever its main thread is.

    Python raises KeyboardInterrupt only when the main thread runs Python code: not during an XLA
    compile, nor in a wait inside native code. The C-level handler writes the signal's number to
    the wakeup socket at once, though: a thread reading it gives the main thread `grace` seconds
    to stop by itself (removing its temporary files), then ends the process (`_stop`).
    """
    global _WAKEUP
    try:
        reader, writer = socket.socketpair()
        writer.setblocking(False)
        signal.set_wakeup_fd(writer.fileno(), warn_on_full_buffer=False)
    except (OSError, ValueError):  # not possible here: Ctrl-C stays Python's KeyboardInterrupt
        return
    _WAKEUP = (reader, writer)  # kept open for the process's life
    report = sys.unraisablehook

    def unraisable(info) -> None:
        # A Ctrl-C that lands in a callback (JAX's garbage-collector hook) is dropped there with a
        # traceback instead of stopping the command: the watcher below stops it, with one line.
        if not issubclass(info.exc_type, KeyboardInterrupt):
            report(info)

    sys.unraisablehook = unraisable

    def watch() -> None:
        while (got := reader.recv(64)) and signal.SIGINT not in got:
            pass
        if got:
            time.sleep(grace)
            _stop(command)

    threading.Thread(target=watch, name="uniroute-ctrl-c", daemon=True).start()


if __name__ == "__main__":
    sys.exit(main())
