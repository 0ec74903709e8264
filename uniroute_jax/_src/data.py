"""Routing datasets: one type, a hand-writable folder format, and loaders for public data.

A `RoutingDataset` holds, for `n_prompts` prompts and `n_models` LLMs, a quality matrix in
[0, 1] (1 = correct / preferred), a mask of which entries are labelled, costs per model or per
(prompt, model), and optionally prompt texts, tasks, splits and embeddings.

Loaders:
  - `load_folder` / `save_folder`: the generic CSV folder format (see `load_folder`).
  - `load_routerbench_partial`, `load_alpacaeval`, `load_routerdc`: the folders staged under
    `shared/data` (`load_shared` finds them).
  - `load_embedllm`, `load_routerbench`: the published layouts of EmbedLLM and RouterBench,
    from a local copy (or a download through `huggingface_hub` when asked for and online).

Example:
  >>> ds = load_shared("routerbench_partial")
  >>> ds.n_prompts, ds.n_models, ds.costs.shape
  (3150, 11, (3150, 11))
  >>> train = ds.subset(prompts=ds.splits == "train")
"""

from __future__ import annotations

import ast
import contextlib
import csv
import dataclasses
import math
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np

from uniroute_jax._src import validation

PathLike = str | os.PathLike


# ------------------------------------------------------------------------------------------------
# The dataset type
# ------------------------------------------------------------------------------------------------


def _str_array(x, name: str, n: int | None) -> np.ndarray:
    if isinstance(x, (str, bytes)):
        raise TypeError(f"{name} must be a sequence of strings, got a single {type(x).__name__}")
    arr = np.asarray(list(x) if not isinstance(x, np.ndarray) else x)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    if arr.size and arr.dtype.kind not in "U":
        bad = [v for v in arr.tolist() if not isinstance(v, str)]
        if bad:
            raise TypeError(f"{name} must hold strings, got {type(bad[0]).__name__} {bad[0]!r}")
    arr = arr.astype(str) if arr.size else np.zeros((0,), dtype="U1")
    if n is not None and arr.shape[0] != n:
        raise ValueError(f"{name} must have {n} entries (one per prompt), got {arr.shape[0]}")
    return arr


def _unique(values: Sequence[str], name: str) -> None:
    seen: dict[str, int] = {}
    for i, v in enumerate(values):
        if v in seen:
            raise ValueError(f"{name} must be unique, but {v!r} appears at {seen[v]} and {i}")
        seen[v] = i


def _readonly(arr: np.ndarray) -> np.ndarray:
    arr.flags.writeable = False
    return arr


@dataclasses.dataclass(frozen=True, eq=False, repr=False)
class RoutingDataset:
    """Per-prompt quality of a set of LLMs, with costs and optional prompt data.

    Arrays are copied, checked and made read-only on construction; derive new datasets with
    `subset` and `with_embeddings` (or `dataclasses.replace`).

    Attributes:
      name: a short name.
      prompt_ids: str `[n_prompts]`, unique.
      quality: float32 `[n_prompts, n_models]` in [0, 1], higher is better (1 = correct); 0 where
        not labelled. NaN is accepted on input where `label_mask` is False.
      label_mask: bool `[n_prompts, n_models]`, True where `quality` is a real label.
      costs: float64 `[n_models]` (one price per model) or `[n_prompts, n_models]` (per prompt),
        finite and >= 0, in whatever unit the source uses (see the loader).
      model_names: `n_models` unique names.
      texts: `n_prompts` prompt texts, or None.
      tasks: str `[n_prompts]` (benchmark / category of each prompt), or None.
      splits: str `[n_prompts]` (the source's split, e.g. "train"/"test"), or None.
      embeddings: float32 `[n_prompts, dim]`, or None.
    """

    name: str
    prompt_ids: np.ndarray
    quality: np.ndarray
    label_mask: np.ndarray
    costs: np.ndarray
    model_names: tuple[str, ...]
    texts: tuple[str, ...] | None = None
    tasks: np.ndarray | None = None
    splits: np.ndarray | None = None
    embeddings: np.ndarray | None = None

    def __post_init__(self):
        set_ = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731 (frozen dataclass)
        if not isinstance(self.name, str):
            raise TypeError(f"name must be a str, got {type(self.name).__name__}")
        ids = _str_array(self.prompt_ids, "prompt_ids", None)
        _unique(ids.tolist(), "prompt_ids")
        n = ids.shape[0]
        names = tuple(self.model_names) if not isinstance(self.model_names, str) else None
        if names is None or not all(isinstance(m, str) for m in names):
            raise TypeError("model_names must be a sequence of str")
        _unique(names, "model_names")
        m = len(names)
        mask = validation.bool_array(self.label_mask, "label_mask", shape=(n, m))
        quality = validation.float_array(self.quality, "quality", shape=(n, m), allow_nan=True)
        nan = np.isnan(quality)
        if (nan & mask).any():
            i, j = np.argwhere(nan & mask)[0]
            raise ValueError(f"quality is NaN at labelled entry (prompt {i}, model {j}); "
                             "set label_mask False there or give a value")
        quality[~mask] = 0.0
        validation.unit_interval(quality, "quality", where=mask)
        costs = validation.float_array(self.costs, "costs", dtype=np.float64)
        if costs.shape not in ((m,), (n, m)):
            raise ValueError(f"costs must have shape ({m},) or ({n}, {m}) for {n} prompts and "
                             f"{m} models, got shape {costs.shape}")
        validation.nonnegative(costs, "costs")
        set_("prompt_ids", _readonly(ids))
        set_("model_names", names)
        set_("quality", _readonly(quality))
        set_("label_mask", _readonly(mask))
        set_("costs", _readonly(costs))
        if self.texts is not None:
            texts = tuple(self.texts) if not isinstance(self.texts, str) else None
            if texts is None or not all(isinstance(t, str) for t in texts):
                raise TypeError("texts must be a sequence of str")
            if len(texts) != n:
                raise ValueError(f"texts must have {n} entries (one per prompt), got {len(texts)}")
            set_("texts", texts)
        for field in ("tasks", "splits"):
            if getattr(self, field) is not None:
                set_(field, _readonly(_str_array(getattr(self, field), field, n)))
        if self.embeddings is not None:
            emb = validation.float_array(self.embeddings, "embeddings", shape=(n, None))
            set_("embeddings", _readonly(emb))

    def __repr__(self) -> str:
        cost = "per prompt" if self.costs.ndim == 2 else "per model"
        extras = [f for f in ("texts", "tasks", "splits", "embeddings")
                  if getattr(self, f) is not None]
        return (f"RoutingDataset(name={self.name!r}, n_prompts={self.n_prompts}, "
                f"n_models={self.n_models}, labelled={self.label_mask.mean():.1%}, "
                f"costs={cost}, with={extras})")

    @property
    def n_prompts(self) -> int:
        return int(self.prompt_ids.shape[0])

    @property
    def n_models(self) -> int:
        return len(self.model_names)

    @property
    def model_costs(self) -> np.ndarray:
        """float64 `[n_models]`: each model's cost, averaged over its labelled prompts when costs
        are per prompt (over all prompts for a model with no label)."""
        if self.costs.ndim == 1:
            return self.costs.copy()
        counts = self.label_mask.sum(axis=0)
        labelled = np.where(self.label_mask, self.costs, 0.0).sum(axis=0) / np.maximum(counts, 1)
        overall = self.costs.mean(axis=0) if self.n_prompts else np.zeros(self.n_models)
        return np.where(counts > 0, labelled, overall)

    @property
    def prompt_costs(self) -> np.ndarray:
        """float64 `[n_prompts, n_models]`: costs broadcast to one per (prompt, model)."""
        return np.broadcast_to(self.costs, (self.n_prompts, self.n_models)).copy()

    def with_embeddings(self, embeddings) -> RoutingDataset:
        """A copy with `embeddings` (float `[n_prompts, dim]`, in prompt order) attached."""
        return dataclasses.replace(self, embeddings=embeddings)

    def _index(self, sel, names: Sequence[str], what: str, arg: str) -> np.ndarray:
        if sel is None:
            return np.arange(len(names))
        arr = np.asarray(sel)
        if arr.size == 0 and arr.dtype != np.bool_:
            return np.zeros((0,), np.int64)
        if arr.dtype == np.bool_:
            if arr.shape != (len(names),):
                raise ValueError(f"{arg} as a mask must have shape ({len(names)},), "
                                 f"got {arr.shape}")
            return np.flatnonzero(arr)
        if arr.dtype.kind in "US":
            lookup = {v: i for i, v in enumerate(names)}
            missing = [v for v in arr.reshape(-1).tolist() if v not in lookup]
            if missing:
                raise ValueError(f"{arg} names unknown {what}: {missing[:5]}")
            return np.array([lookup[v] for v in arr.reshape(-1).tolist()], dtype=np.int64)
        idx = validation.int_array(arr.reshape(-1), arg, low=-len(names), high=len(names))
        return idx.astype(np.int64) % max(len(names), 1)

    def subset(self, prompts=None, models=None, *, name: str | None = None) -> RoutingDataset:
        """A dataset restricted to some prompts and/or models, in the order given.

        Args:
          prompts: None (all), a bool mask `[n_prompts]`, integer indices, or prompt ids.
          models: None (all), a bool mask `[n_models]`, integer indices, or model names.
          name: the new dataset's name (default: this one's).

        Returns:
          A new `RoutingDataset`.

        Raises:
          ValueError: a mask has the wrong length, an index is out of range, or a name is
            unknown.
        """
        p = self._index(prompts, self.prompt_ids.tolist(), "prompt ids", "prompts")
        m = self._index(models, self.model_names, "models", "models")
        costs = self.costs[m] if self.costs.ndim == 1 else self.costs[np.ix_(p, m)]
        pick = lambda a: None if a is None else a[p]  # noqa: E731
        return RoutingDataset(
            name=self.name if name is None else name,
            prompt_ids=self.prompt_ids[p],
            quality=self.quality[np.ix_(p, m)],
            label_mask=self.label_mask[np.ix_(p, m)],
            costs=costs,
            model_names=tuple(self.model_names[i] for i in m),
            texts=None if self.texts is None else tuple(self.texts[i] for i in p),
            tasks=pick(self.tasks),
            splits=pick(self.splits),
            embeddings=pick(self.embeddings),
        )


# ------------------------------------------------------------------------------------------------
# Text and CSV helpers
# ------------------------------------------------------------------------------------------------


def split_lines(text: str) -> list[str]:
    """The lines of `text`, split on "\\n" (a "\\r" before it dropped) and on nothing else.

    Not `str.splitlines`, which also breaks on form feed, U+0085, U+2028 and more: characters a
    prompt, or a JSON string, may hold, so one prompt would become two and every later row shift.
    A final line end adds no empty line.
    """
    lines = text.split("\n")
    last = lines.pop()
    lines = [line[:-1] if line.endswith("\r") else line for line in lines]
    return lines + [last] if last else lines


def utf8_error(path: PathLike) -> ValueError:
    """The error for a file that is not UTF-8, naming its line and offset of the first bad byte."""
    raw = Path(path).read_bytes()
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw.count(b"\n", 0, err.start) + 1
        return ValueError(f"{path}, line {line}: not UTF-8 text (byte 0x{raw[err.start]:02x} at offset "
                          f"{err.start}); save it as UTF-8")
    return ValueError(f"{path}: not UTF-8 text; save it as UTF-8")


def read_lines(path: PathLike) -> list[str]:
    """The lines (`split_lines`) of the UTF-8 text file `path`, a leading byte-order mark dropped.

    Raises:
      ValueError: the file is not UTF-8 (`utf8_error`).
    """
    try:
        text = Path(path).read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        raise utf8_error(path) from None
    return split_lines(text.removeprefix("\ufeff"))


@contextlib.contextmanager
def _large_csv_fields() -> Iterator[None]:
    # Benchmark prompts with few-shot prefixes can exceed csv's default 128 KiB field limit.
    old = csv.field_size_limit()
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
    try:
        yield
    finally:
        csv.field_size_limit(old)


def _read_csv(path: Path, required: Sequence[str]) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """Reads a CSV: (header, [(line number, cells)]), checking required columns and widths."""
    if not path.is_file():
        raise ValueError(f"{path}: file not found")
    try:
        return _read_csv_rows(path, required)
    except UnicodeDecodeError:  # its offsets count from the decoder's last chunk: find the byte again
        raise utf8_error(path) from None


def _read_csv_rows(path: Path, required: Sequence[str]) -> tuple[list[str], list[tuple[int, list[str]]]]:
    with _large_csv_fields(), open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f)
        try:
            header = [h.strip() for h in next(reader)]
        except StopIteration:
            raise ValueError(f"{path}: file is empty (expected a header row)") from None
        missing = [c for c in required if c not in header]
        if missing:
            raise ValueError(f"{path}: missing column(s) {missing}; found columns {header}")
        dup = sorted({h for h in header if header.count(h) > 1})
        if dup:
            raise ValueError(f"{path}: duplicate column(s) {dup}")
        rows = []
        while True:
            line = reader.line_num + 1
            try:
                cells = next(reader)
            except StopIteration:
                break
            except csv.Error as err:
                raise ValueError(f"{path}, line {line}: malformed CSV ({err})") from None
            if not cells:  # a blank line
                continue
            if len(cells) != len(header):
                raise ValueError(f"{path}, line {line}: expected {len(header)} cells as in the "
                                 f"header, got {len(cells)}")
            rows.append((line, cells))
    return header, rows


def _parse_float(cell: str, path: Path, line: int, column: str, what: str) -> float:
    try:
        return float(cell)
    except ValueError:
        raise ValueError(f"{path}, line {line}, column {column!r}: {what} {cell!r} is not a "
                         "number") from None


def _fmt(x: float, single: bool) -> str:
    # Shortest text that reads back to the same float (float32 for quality, float64 for cost).
    return str(np.float32(x)) if single else repr(float(x))


# ------------------------------------------------------------------------------------------------
# The generic folder format
# ------------------------------------------------------------------------------------------------


def load_folder(path: PathLike, *, name: str | None = None) -> RoutingDataset:
    """Loads a dataset from a folder of CSV files that can be written by hand.

    Files (UTF-8, comma-separated, header row first):
      - `prompts.csv`: `prompt_id` (unique), optional `text`, `task`, `split`. Row order is
        prompt order.
      - `quality.csv` (wide): `prompt_id`, then one column per model; each cell a number in
        [0, 1] or blank for "not labelled" (`nan` also reads as blank). Prompts absent from it are
        unlabelled for every model.
      - `models.csv`: `model`, `cost` (finite, >= 0). Its row order is model order; its models
        and quality.csv's model columns must be the same set.
      - `costs.csv` (optional, wide like quality.csv): per-prompt costs; a blank cell takes the
        model's cost from models.csv. When present, `costs` is `[n_prompts, n_models]`.
      - `embeddings.npy` (optional): float `[n_prompts, dim]` in prompts.csv order.

    Args:
      path: the folder.
      name: the dataset's name (default: the folder's name).

    Returns:
      The dataset.

    Raises:
      ValueError: a file or column is missing or malformed; the message names the file, line
        and column.
    """
    folder = Path(path)
    if not folder.is_dir():
        raise ValueError(f"{folder}: dataset folder not found")

    p_path = folder / "prompts.csv"
    header, rows = _read_csv(p_path, ["prompt_id"])
    col = {h: i for i, h in enumerate(header)}
    prompt_ids: list[str] = []
    first_line: dict[str, int] = {}
    for line, cells in rows:
        pid = cells[col["prompt_id"]]
        if pid == "":
            raise ValueError(f"{p_path}, line {line}, column 'prompt_id': empty prompt id")
        if pid in first_line:
            raise ValueError(f"{p_path}, line {line}, column 'prompt_id': duplicate prompt id "
                             f"{pid!r} (first at line {first_line[pid]})")
        first_line[pid] = line
        prompt_ids.append(pid)
    column = lambda c: [cells[col[c]] for _, cells in rows] if c in col else None  # noqa: E731
    texts, tasks, splits = column("text"), column("task"), column("split")
    index = {pid: i for i, pid in enumerate(prompt_ids)}

    m_path = folder / "models.csv"
    header, mrows = _read_csv(m_path, ["model", "cost"])
    mcol = {h: i for i, h in enumerate(header)}
    model_names: list[str] = []
    model_cost: list[float] = []
    for line, cells in mrows:
        model = cells[mcol["model"]].strip()
        if model == "":
            raise ValueError(f"{m_path}, line {line}, column 'model': empty model name")
        if model in model_names:
            raise ValueError(f"{m_path}, line {line}, column 'model': duplicate model {model!r}")
        cost = _parse_float(cells[mcol["cost"]], m_path, line, "cost", "cost")
        if not math.isfinite(cost) or cost < 0:
            raise ValueError(f"{m_path}, line {line}, column 'cost': cost must be finite and "
                             f">= 0, got {cells[mcol['cost']]!r}")
        model_names.append(model)
        model_cost.append(cost)

    def read_wide(w_path: Path, what: str) -> tuple[np.ndarray, np.ndarray]:
        header, wrows = _read_csv(w_path, ["prompt_id"])
        models = header[1:] if header[0] == "prompt_id" else None
        if models is None:
            raise ValueError(f"{w_path}: the first column must be 'prompt_id', got {header[0]!r}")
        extra = [mm for mm in models if mm not in model_names]
        if extra:
            raise ValueError(f"{w_path}: model column(s) {extra} are not listed in {m_path}")
        absent = [mm for mm in model_names if mm not in models]
        if absent:
            raise ValueError(f"{w_path}: model(s) {absent} listed in {m_path} have no column")
        order = [model_names.index(mm) for mm in models]
        values = np.zeros((len(prompt_ids), len(model_names)), np.float64)
        given = np.zeros(values.shape, bool)
        seen: dict[str, int] = {}
        for line, cells in wrows:
            pid = cells[0]
            if pid not in index:
                raise ValueError(f"{w_path}, line {line}, column 'prompt_id': prompt id {pid!r} "
                                 f"is not in {p_path}")
            if pid in seen:
                raise ValueError(f"{w_path}, line {line}, column 'prompt_id': duplicate prompt "
                                 f"id {pid!r} (first at line {seen[pid]})")
            seen[pid] = line
            i = index[pid]
            for j, mm, cell in zip(order, models, cells[1:]):
                cell = cell.strip()
                if cell == "" or cell.lower() == "nan":
                    continue
                v = _parse_float(cell, w_path, line, mm, what)
                if what == "quality" and not 0.0 <= v <= 1.0:
                    raise ValueError(f"{w_path}, line {line}, column {mm!r}: quality must be in "
                                     f"[0, 1], got {cell!r}")
                if what == "cost" and not (math.isfinite(v) and v >= 0):
                    raise ValueError(f"{w_path}, line {line}, column {mm!r}: cost must be finite "
                                     f"and >= 0, got {cell!r}")
                values[i, j] = v
                given[i, j] = True
        return values, given

    quality, mask = read_wide(folder / "quality.csv", "quality")
    costs: np.ndarray = np.array(model_cost, np.float64)
    if (folder / "costs.csv").is_file():
        per_prompt, given = read_wide(folder / "costs.csv", "cost")
        costs = np.where(given, per_prompt, costs[None, :])

    embeddings = None
    e_path = folder / "embeddings.npy"
    if e_path.is_file():
        embeddings = np.load(e_path, allow_pickle=False)
        if embeddings.ndim != 2 or embeddings.shape[0] != len(prompt_ids):
            raise ValueError(f"{e_path}: expected shape ({len(prompt_ids)}, dim) to match "
                             f"{p_path}, got {embeddings.shape}")
    return RoutingDataset(
        name=folder.name if name is None else name,
        prompt_ids=np.array(prompt_ids, dtype=str),
        quality=quality.astype(np.float32),
        label_mask=mask,
        costs=costs,
        model_names=tuple(model_names),
        texts=None if texts is None else tuple(texts),
        tasks=None if tasks is None else np.array(tasks, dtype=str),
        splits=None if splits is None else np.array(splits, dtype=str),
        embeddings=embeddings,
    )


def save_folder(dataset: RoutingDataset, path: PathLike, *, overwrite: bool = False) -> Path:
    """Writes `dataset` in the folder format of `load_folder` (an exact round trip).

    Per-prompt costs go to `costs.csv`, with models.csv holding `model_costs`.

    Args:
      dataset: what to write.
      path: the folder; created if needed.
      overwrite: replace existing dataset files.

    Returns:
      The folder.

    Raises:
      FileExistsError: a dataset file exists there and `overwrite` is False.
    """
    if not isinstance(dataset, RoutingDataset):
        raise TypeError(f"dataset must be a RoutingDataset, got {type(dataset).__name__}")
    folder = Path(path)
    names = ["prompts.csv", "quality.csv", "models.csv", "costs.csv", "embeddings.npy"]
    if not overwrite:
        existing = [n for n in names if (folder / n).exists()]
        if existing:
            raise FileExistsError(f"{folder} already holds {existing}; pass overwrite=True")
    folder.mkdir(parents=True, exist_ok=True)
    # Everything is written into a temporary folder inside the target first; only once every file
    # is complete do the old files go, by renames. A failed write leaves the old dataset whole.
    staging = Path(tempfile.mkdtemp(dir=folder, prefix=".save_folder."))
    try:
        _write_dataset_files(dataset, staging)
        written = {p.name for p in staging.iterdir()}
        for n in names:
            if n in written:
                os.replace(staging / n, folder / n)
            else:
                # A stale optional file (costs.csv, embeddings.npy) would change what loads back.
                (folder / n).unlink(missing_ok=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder


def _write_dataset_files(dataset: RoutingDataset, folder: Path) -> None:
    def write(name: str, header: list[str], rows) -> None:
        with open(folder / name, "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(header)
            writer.writerows(rows)
            f.flush()
            os.fsync(f.fileno())

    cols = ["prompt_id"]
    extras = [(c, v) for c, v in (("text", dataset.texts), ("task", dataset.tasks),
                                  ("split", dataset.splits)) if v is not None]
    write("prompts.csv", cols + [c for c, _ in extras],
          ([pid] + [v[i] for _, v in extras] for i, pid in enumerate(dataset.prompt_ids.tolist())))
    models = list(dataset.model_names)
    write("quality.csv", ["prompt_id"] + models,
          ([pid] + [_fmt(q, True) if ok else "" for q, ok in zip(qrow, mrow)]
           for pid, qrow, mrow in zip(dataset.prompt_ids.tolist(), dataset.quality,
                                      dataset.label_mask)))
    write("models.csv", ["model", "cost"],
          ([mm, _fmt(c, False)] for mm, c in zip(models, dataset.model_costs)))
    if dataset.costs.ndim == 2:
        write("costs.csv", ["prompt_id"] + models,
              ([pid] + [_fmt(c, False) for c in crow]
               for pid, crow in zip(dataset.prompt_ids.tolist(), dataset.costs)))
    if dataset.embeddings is not None:
        with open(folder / "embeddings.npy", "wb") as f:
            np.save(f, dataset.embeddings, allow_pickle=False)
            f.flush()
            os.fsync(f.fileno())


# ------------------------------------------------------------------------------------------------
# The shared folders
# ------------------------------------------------------------------------------------------------


SHARED_DATASETS = ("routerbench_partial", "alpacaeval", "routerdc_7llm")


def _dataset_folder(root: PathLike, name: str, marker: str) -> Path:
    # Accept the dataset's own folder or the folder above it (the shared data root).
    root = Path(root)
    for candidate in (root, root / name):
        if (candidate / marker).is_file():
            return candidate
    raise FileNotFoundError(f"{name}: {marker} not found in {root} or {root / name}")


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as f:
        return {k: f[k] for k in f.files}


def _read_text_column(path: Path, key: str, text: str, expected: Sequence[str] | None,
                      extra: Sequence[str] = ()) -> tuple[list[str], dict[str, list[str]]]:
    header, rows = _read_csv(path, [key, text, *extra])
    col = {h: i for i, h in enumerate(header)}
    keys = [cells[col[key]] for _, cells in rows]
    if expected is not None and keys != [str(e) for e in expected]:
        raise ValueError(f"{path}: column {key!r} does not match the arrays' order "
                         f"({len(keys)} rows vs {len(expected)} expected)")
    return [cells[col[text]] for _, cells in rows], {c: [cells[col[c]] for _, cells in rows]
                                                     for c in extra}


def load_routerbench_partial(root: PathLike) -> RoutingDataset:
    """Loads `routerbench_partial`: RouterBench (0-shot) ARC-Challenge, MBPP and Winogrande.

    3,150 prompts x 11 LLMs; quality is 0/1 correctness; costs are the USD each model actually
    spent on each prompt (RouterBench's `|total_cost`), so `costs` is `[n_prompts, n_models]`.
    `prompt_ids` are RouterBench sample ids, `tasks` the `eval_name`, `splits` RouterDC's
    train/test split.

    Args:
      root: the `routerbench_partial` folder (or the shared data folder holding it).

    Returns:
      The dataset (`name="routerbench_partial"`).
    """
    folder = _dataset_folder(root, "routerbench_partial", "routerbench_partial.npz")
    d = _read_npz(folder / "routerbench_partial.npz")
    texts, _ = _read_text_column(folder / "prompts.csv", "sample_id", "prompt", d["sample_id"])
    scores = d["scores"].astype(np.float32)
    mask = ~np.isnan(scores)
    costs = np.where(mask, np.nan_to_num(d["costs"].astype(np.float64)), 0.0)
    return RoutingDataset(
        name="routerbench_partial", prompt_ids=d["sample_id"], quality=scores, label_mask=mask,
        costs=costs, model_names=tuple(str(m) for m in d["models"]), texts=tuple(texts),
        tasks=d["eval_name"], splits=d["split"])


_ALPACA_PROBES = ("NullModel", "gpt4_gamed")


def load_alpacaeval(root: PathLike, *, version: int = 2) -> RoutingDataset:
    """Loads `alpacaeval`: per-instruction judge preferences on the 805 AlpacaEval instructions.

    Quality = `preference - 1`, the judge's probability that the model's answer beats the
    reference answer (continuous for AlpacaEval 2.0; {0, 0.5, 1} for 1.0). Missing records
    (NaN, and 0 in 1.0) are unlabelled. AlpacaEval's probe entries (`NullModel`, `gpt4_gamed`,
    `*_concise`, `*_verbose`) and the reference model itself are dropped: AlpacaEval 2.0 keeps
    48 of 58 LLMs.

    The source has no prices. Cost is a documented proxy: each model's mean answer length in
    characters over the 805 instructions (`output_lengths.npz`; about 4 characters per token),
    i.e. proportional to output tokens at one common price. `costs` is `[n_models]`.

    Args:
      root: the `alpacaeval` folder (or the shared data folder holding it).
      version: 2 (AlpacaEval 2.0, GPT-4-turbo judge, 58 files) or 1 (AlpacaEval 1.0).

    Returns:
      The dataset (`name="alpacaeval2"` or `"alpacaeval1"`); `tasks` = source sub-dataset.
    """
    if version not in (1, 2):
        raise ValueError(f"version must be 1 or 2, got {version!r}")
    folder = _dataset_folder(root, "alpacaeval", f"alpacaeval{version}_preference.npz")
    d = _read_npz(folder / f"alpacaeval{version}_preference.npz")
    models = [str(m) for m in d["models"]]
    reference = str(d["reference_model"])
    keep = [j for j, m in enumerate(models)
            if m not in _ALPACA_PROBES and m != reference
            and not m.endswith("_concise") and not m.endswith("_verbose")]
    pref = d["preference"][:, keep].astype(np.float32)
    missing = np.isnan(pref) | ((pref == 0) if version == 1 else False)
    quality = np.clip(np.where(missing, 0.0, pref - 1.0), 0.0, 1.0)
    names = [models[j] for j in keep]

    lengths = _read_npz(folder / "output_lengths.npz")
    length_models = [str(m) for m in lengths["models"]]
    absent = [m for m in names if m not in length_models]
    if absent:
        raise ValueError(f"{folder / 'output_lengths.npz'}: no output lengths for {absent}")
    chars = lengths["output_chars"][:, [length_models.index(m) for m in names]]
    costs = np.nanmean(chars.astype(np.float64), axis=0)

    texts, extra = _read_text_column(folder / "instructions.csv", "row", "instruction",
                                     [str(i) for i in range(pref.shape[0])], extra=["dataset"])
    return RoutingDataset(
        name=f"alpacaeval{version}",
        prompt_ids=np.array([f"alpacaeval.{i}" for i in range(pref.shape[0])]),
        quality=quality, label_mask=~missing, costs=costs, model_names=tuple(names),
        texts=tuple(texts), tasks=np.array(extra["dataset"], dtype=str))


ROUTERDC_MULTIPLE_CHOICE = ("mmlu", "cmmlu", "ceval", "arc_challenge", "arc_easy")


def load_routerdc(root: PathLike, *, binarize_multiple_choice: bool = True) -> RoutingDataset:
    """Loads `routerdc_7llm`: 20,600 queries on 10 benchmarks x 7 open 7-8B LLMs.

    RouterDC's score on multiple-choice tasks (MMLU, CMMLU, C-Eval, ARC) is the model's
    normalised probability of the correct option when its top choice is correct and 0
    otherwise, so by default those scores become 0/1 correctness (`score > 0`). Generation tasks
    (GSM8K, HumanEval, MBPP, MATH, JS) keep their score: the fraction of sampled generations that
    are correct. The models are all 7-8B, so cost is uniform 1.0 (`[n_models]`).

    Args:
      root: the `routerdc_7llm` folder (or the shared data folder holding it).
      binarize_multiple_choice: map multiple-choice scores to `score > 0`; False keeps the raw
        probability-if-correct.

    Returns:
      The dataset (`name="routerdc_7llm"`); `prompt_ids` are `<source file stem>.<index>`,
      `splits` are train / test / ood / extra_train / extra_test / extra_ood as in the README.
    """
    folder = _dataset_folder(root, "routerdc_7llm", "routerdc_7llm.npz")
    d = _read_npz(folder / "routerdc_7llm.npz")
    texts, extra = _read_text_column(folder / "prompts.csv", "row", "prompt",
                                     [str(i) for i in range(d["scores"].shape[0])],
                                     extra=["task", "source_file", "index_in_file"])
    if extra["task"] != [str(t) for t in d["task"]]:
        raise ValueError(f"{folder / 'prompts.csv'}: column 'task' disagrees with the npz")
    scores = d["scores"].astype(np.float32)
    mask = ~np.isnan(scores)
    scores = np.where(mask, scores, 0.0)
    if binarize_multiple_choice:
        mc = np.isin(d["task"], ROUTERDC_MULTIPLE_CHOICE)
        scores[mc] = (scores[mc] > 0).astype(np.float32)
    ids = [f"{Path(s).stem}.{i}" for s, i in zip(extra["source_file"], extra["index_in_file"])]
    n_models = scores.shape[1]
    return RoutingDataset(
        name="routerdc_7llm", prompt_ids=np.array(ids), quality=scores, label_mask=mask,
        costs=np.ones(n_models), model_names=tuple(str(m) for m in d["models"]),
        texts=tuple(texts), tasks=d["task"], splits=d["split"])


_SHARED_LOADERS = {
    "routerbench_partial": load_routerbench_partial,
    "alpacaeval": load_alpacaeval,
    "routerdc_7llm": load_routerdc,
}
_SHARED_ALIASES = {"routerdc": "routerdc_7llm", "alpacaeval2": "alpacaeval"}


def shared_data_candidates() -> list[Path]:
    """Where `load_shared` looks when no root is given, in order (`$UNIROUTE_DATA` first)."""
    out = []
    if os.environ.get("UNIROUTE_DATA"):
        out.append(Path(os.environ["UNIROUTE_DATA"]).expanduser())
    out.append(Path.cwd() / ".." / "shared" / "data")
    out.append(Path(__file__).resolve().parents[2] / ".." / "shared" / "data")
    # From the repository's root the last two are one folder: keep each folder once.
    seen: set[Path] = set()
    return [p for p in out if not (p.resolve() in seen or seen.add(p.resolve()))]


def load_shared(name: str, root: PathLike | None = None) -> RoutingDataset:
    """Loads one of the staged datasets by name.

    Args:
      name: "routerbench_partial", "alpacaeval" (AlpacaEval 2.0) or "routerdc_7llm" (alias
        "routerdc").
      root: the shared data folder. Default: `$UNIROUTE_DATA`, else `../shared/data` relative to
        the current directory, else `../shared/data` relative to this repository.

    Returns:
      The dataset, as its loader returns it.

    Raises:
      ValueError: unknown `name`.
      FileNotFoundError: no data folder found; the message lists where it looked.
    """
    key = _SHARED_ALIASES.get(name, name)
    validation.choice(key, "name", SHARED_DATASETS)
    if root is not None:
        return _SHARED_LOADERS[key](root)
    candidates = shared_data_candidates()
    for candidate in candidates:
        if (candidate / key).is_dir():
            return _SHARED_LOADERS[key](candidate / key)
    looked = "\n".join(f"  {c.resolve()}" for c in candidates)
    raise FileNotFoundError(
        f"shared dataset {key!r} not found; looked for a {key}/ folder in:\n{looked}\n"
        "Point at the data with root=<folder holding routerbench_partial/, alpacaeval/, "
        "routerdc_7llm/> or the environment variable UNIROUTE_DATA=<that folder>.")


# ------------------------------------------------------------------------------------------------
# EmbedLLM and RouterBench (published layouts)
# ------------------------------------------------------------------------------------------------


EMBEDLLM_REPO_ID = "RZ412/EmbedLLM"
ROUTERBENCH_REPO_ID = "withmartian/routerbench"
ROUTERBENCH_FILE = "routerbench_0shot.pkl"


def _hub_download(repo_id: str, dest: Path, patterns: list[str]) -> None:
    try:
        import huggingface_hub  # noqa: PLC0415 (optional dependency)
    except ImportError:
        raise ImportError(f"download=True needs huggingface_hub (pip install huggingface_hub) "
                          f"to fetch {repo_id}") from None
    huggingface_hub.snapshot_download(repo_id, repo_type="dataset", local_dir=str(dest),
                                      allow_patterns=patterns)


_SIZE = re.compile(r"(?<![\w.])(?:(\d+)\s*[x×]\s*)?(\d+(?:\.\d+)?)\s*([bm])(?![a-z])", re.I)


def parameter_count(model_name: str) -> float | None:
    """Parameter count in billions read from a model name ("Llama-2-13b" -> 13, "8x7B" -> 56,
    "350m" -> 0.35), or None when the name carries no size. A heuristic: check its output."""
    found = None
    for match in _SIZE.finditer(model_name):
        experts, size, unit = match.groups()
        value = float(size) * (int(experts) if experts else 1)
        found = value / 1000.0 if unit.lower() == "m" else value
    return found


def load_embedllm(root: PathLike, *, costs: str | Mapping[str, float] = "uniform",
                  download: bool = False) -> RoutingDataset:
    """Loads EmbedLLM (Hugging Face dataset `RZ412/EmbedLLM`) from a local folder.

    Expected files (only the split files are required):
      - `train.csv`, `val.csv`, `test.csv` (any present; at least one): long format, one row per
        (model, prompt) with columns `model_id`, `prompt_id`, `label` (0/1 correctness, or any
        value in [0, 1]); optional `model_name`, `category` (-> `tasks`) and `prompt` (-> `texts`).
        The file a prompt appears in becomes its split ("train"/"val"/"test"; a prompt found in
        several files gets them joined, e.g. "train+test"; one in none gets "").
      - `model_order.csv` (optional): `model_id`, `model_name`; fixes model order and names.
      - `question_order.csv` or `prompts.csv` (optional): `prompt_id` and the text in `prompt`
        (or `question`/`text`); optional `category`. Fixes prompt order when present.
    Ids are kept as strings; without an order file, ids sort numerically when all are integers.
    (model, prompt) pairs absent from every split file are unlabelled. A pair given on several
    rows (EmbedLLM's CSVs repeat some) gets the largest of its labels, the rule of the EmbedLLM
    authors' scripts (`algorithm/knn.py` groups by model_id, prompt_id, prompt and takes the max).

    Args:
      root: the folder.
      costs: "uniform" (1.0 each), "param_count" (billions of parameters read from each model
        name, as in the UniRoute paper's EmbedLLM setup; raises if a name carries no size), or a
        mapping model name -> cost.
      download: when the split files are missing, fetch them with `huggingface_hub` first.

    Returns:
      The dataset (`name="embedllm"`), `costs` `[n_models]`.

    Raises:
      ValueError: missing files or columns, bad labels, ids absent
        from an order file, or a model without a cost.
    """
    folder = Path(root)
    split_files = [(s, folder / f"{s}.csv") for s in ("train", "val", "test")]
    if download and not any(p.is_file() for _, p in split_files):
        _hub_download(EMBEDLLM_REPO_ID, folder, ["*.csv"])
    present = [(s, p) for s, p in split_files if p.is_file()]
    if not present:
        raise ValueError(f"{folder}: no EmbedLLM split file found (expected train.csv, val.csv "
                         f"or test.csv with columns model_id, prompt_id, label)")

    model_name: dict[str, str] = {}
    model_order: list[str] | None = None
    mo_path = folder / "model_order.csv"
    if mo_path.is_file():
        header, rows = _read_csv(mo_path, ["model_id", "model_name"])
        col = {h: i for i, h in enumerate(header)}
        model_order = [cells[col["model_id"]] for _, cells in rows]
        _unique(model_order, f"{mo_path} column 'model_id'")
        model_name = {cells[col["model_id"]]: cells[col["model_name"]] for _, cells in rows}

    prompt_text: dict[str, str] = {}
    prompt_task: dict[str, str] = {}
    prompt_order: list[str] | None = None
    for fname in ("question_order.csv", "prompts.csv"):
        q_path = folder / fname
        if not q_path.is_file():
            continue
        header, rows = _read_csv(q_path, ["prompt_id"])
        col = {h: i for i, h in enumerate(header)}
        text_col = next((c for c in ("prompt", "question", "text") if c in col), None)
        if text_col is None:
            raise ValueError(f"{q_path}: missing a text column ('prompt', 'question' or 'text'); "
                             f"found columns {header}")
        prompt_order = [cells[col["prompt_id"]] for _, cells in rows]
        _unique(prompt_order, f"{q_path} column 'prompt_id'")
        prompt_text = {cells[col["prompt_id"]]: cells[col[text_col]] for _, cells in rows}
        if "category" in col:
            prompt_task = {cells[col["prompt_id"]]: cells[col["category"]] for _, cells in rows}
        break

    labels: dict[tuple[str, str], tuple[float, str]] = {}
    splits_of: dict[str, dict[str, None]] = {}
    models_seen: dict[str, None] = {}
    prompts_seen: dict[str, None] = {}
    for split, path in present:
        header, rows = _read_csv(path, ["model_id", "prompt_id", "label"])
        col = {h: i for i, h in enumerate(header)}
        for line, cells in rows:
            mid, pid = cells[col["model_id"]], cells[col["prompt_id"]]
            value = _parse_float(cells[col["label"]], path, line, "label", "label")
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{path}, line {line}, column 'label': label must be in [0, 1], "
                                 f"got {cells[col['label']]!r}")
            where = f"{path.name} line {line}"
            # EmbedLLM's own files repeat (model_id, prompt_id) rows; its authors' scripts keep the
            # largest label of each pair, and so does this reader.
            if (mid, pid) not in labels or value > labels[(mid, pid)][0]:
                labels[(mid, pid)] = (value, where)
            splits_of.setdefault(pid, {})[split] = None
            models_seen.setdefault(mid)
            prompts_seen.setdefault(pid)
            if "model_name" in col:
                model_name.setdefault(mid, cells[col["model_name"]])
            if "category" in col:
                prompt_task.setdefault(pid, cells[col["category"]])
            if "prompt" in col and pid not in prompt_text:
                prompt_text[pid] = cells[col["prompt"]]

    def id_sort(ids):
        ids = list(ids)
        return sorted(ids, key=int) if all(re.fullmatch(r"-?\d+", i) for i in ids) else ids

    models = model_order if model_order is not None else id_sort(models_seen)
    unknown = [m for m in models_seen if m not in set(models)]
    if unknown:
        raise ValueError(f"{mo_path}: model_id(s) {unknown[:5]} appear in the split files but "
                         "not here")
    prompts = prompt_order if prompt_order is not None else id_sort(prompts_seen)
    unknown = [p for p in prompts_seen if p not in set(prompts)]
    if unknown:
        raise ValueError(f"prompt_id(s) {unknown[:5]} appear in the split files but not in the "
                         "prompt list (question_order.csv / prompts.csv)")
    m_index = {m: j for j, m in enumerate(models)}
    p_index = {p: i for i, p in enumerate(prompts)}
    quality = np.zeros((len(prompts), len(models)), np.float32)
    mask = np.zeros(quality.shape, bool)
    for (mid, pid), (value, _) in labels.items():
        quality[p_index[pid], m_index[mid]] = value
        mask[p_index[pid], m_index[mid]] = True
    names = [model_name.get(m, m) for m in models]
    _unique(names, "EmbedLLM model names")

    if isinstance(costs, str):
        validation.choice(costs, "costs", ("uniform", "param_count"))
        if costs == "uniform":
            cost_arr = np.ones(len(names))
        else:
            sizes = [parameter_count(n) for n in names]
            bad = [n for n, s in zip(names, sizes) if s is None]
            if bad:
                raise ValueError(f"costs='param_count' cannot read a size from model name(s) "
                                 f"{bad[:5]}; pass costs as a mapping name -> cost instead")
            cost_arr = np.array(sizes, np.float64)
    else:
        missing = [n for n in names if n not in costs]
        if missing:
            raise ValueError(f"costs has no entry for model(s) {missing[:5]}")
        cost_arr = np.array([float(costs[n]) for n in names], np.float64)

    texts = None
    if prompt_text:
        lacking = [p for p in prompts if p not in prompt_text]
        if lacking:
            raise ValueError(f"no text for prompt_id(s) {lacking[:5]}")
        texts = tuple(prompt_text[p] for p in prompts)
    tasks = np.array([prompt_task.get(p, "") for p in prompts]) if prompt_task else None
    splits = np.array(["+".join(splits_of.get(p, ())) for p in prompts])
    return RoutingDataset(name="embedllm", prompt_ids=np.array(prompts, dtype=str),
                          quality=quality, label_mask=mask, costs=cost_arr,
                          model_names=tuple(names), texts=texts, tasks=tasks, splits=splits)


def _prompt_text(value) -> str:
    # RouterBench stores some prompts as a one-element list, or as the text of a Python list
    # literal; literal_eval parses literals only and never runs code.
    if isinstance(value, (list, tuple)):
        return "\n".join(str(v) for v in value)
    text = "" if value is None else str(value)
    if text.startswith("[") and text.endswith("]"):
        try:
            parsed = ast.literal_eval(text)
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            return text
        if isinstance(parsed, list) and all(isinstance(v, str) for v in parsed):
            return "\n".join(parsed)
    return text


def routerbench_from_columns(columns: Mapping[str, Sequence], *,
                             name: str = "routerbench") -> RoutingDataset:
    """Builds a dataset from RouterBench's columns (a DataFrame's `to_dict("list")`).

    Expected columns: `sample_id`, `prompt`, `eval_name`, and for each model `<model>` (score in
    [0, 1]) with `<model>|total_cost` (USD). A model is any column with a `|total_cost` partner;
    other columns (`oracle_model_to_route_to`, `<model>|model_response`, ...) are ignored. NaN
    scores are unlabelled (cost 0 there). Repeated `sample_id`s keep one row, preferring one
    with every score present.

    Args:
      columns: column name -> values.
      name: the dataset's name.

    Returns:
      The dataset with `costs` `[n_prompts, n_models]` and `tasks` = `eval_name`.
    """
    missing = [c for c in ("sample_id", "prompt", "eval_name") if c not in columns]
    if missing:
        raise ValueError(f"RouterBench data lacks column(s) {missing}; "
                         f"found {list(columns)[:10]}...")
    models = [c for c in columns if "|" not in c and f"{c}|total_cost" in columns]
    if not models:
        raise ValueError("RouterBench data has no model columns (a '<model>' column with a "
                         "'<model>|total_cost' partner)")
    try:
        scores = np.array([columns[m] for m in models], np.float64).T
        costs = np.array([columns[f"{m}|total_cost"] for m in models], np.float64).T
    except (TypeError, ValueError) as err:
        raise ValueError(f"RouterBench score/cost columns must be numeric: {err}") from None
    ids = [str(s) for s in columns["sample_id"]]
    complete = ~np.isnan(scores).any(axis=1)
    order = np.argsort(~complete, kind="stable")  # complete rows first, else file order
    keep: dict[str, int] = {}
    for r in order.tolist():
        keep.setdefault(ids[r], r)
    rows = np.array(sorted(keep.values()), dtype=np.int64)
    scores, costs = scores[rows], costs[rows]
    mask = ~np.isnan(scores)
    bad_cost = mask & ~np.isfinite(costs)
    if bad_cost.any():
        i, j = np.argwhere(bad_cost)[0]
        raise ValueError(f"RouterBench cost of {models[j]!r} on {ids[rows[i]]!r} is not finite")
    return RoutingDataset(
        name=name, prompt_ids=np.array([ids[r] for r in rows], dtype=str),
        quality=np.where(mask, scores, 0.0).astype(np.float32), label_mask=mask,
        costs=np.where(mask, costs, 0.0), model_names=tuple(models),
        texts=tuple(_prompt_text(columns["prompt"][r]) for r in rows),
        tasks=np.array([str(columns["eval_name"][r]) for r in rows], dtype=str))


def load_routerbench(path: PathLike, *, allow_pickle: bool = False,
                     download: bool = False) -> RoutingDataset:
    """Loads RouterBench (`withmartian/routerbench`, `routerbench_0shot.pkl`) from a local copy.

    The file is a pickled pandas DataFrame, and unpickling can run arbitrary code, so it is read
    only when `allow_pickle=True` says the file is trusted; reading needs pandas. The columns
    are parsed as `routerbench_from_columns` describes.

    Args:
      path: the `.pkl` file, or a folder holding `routerbench_0shot.pkl`.
      allow_pickle: consent to unpickle the file.
      download: when the file is missing, fetch it with `huggingface_hub` first (needs
        `allow_pickle=True` too, since a downloaded file is then read).

    Returns:
      The dataset (`name="routerbench"`).

    Raises:
      ValueError: `allow_pickle` is False.
      FileNotFoundError: no file at `path`.
      ImportError: pandas (or, for a download, huggingface_hub) is not installed.
    """
    path = Path(path)
    file = path / ROUTERBENCH_FILE if path.is_dir() or not path.suffix else path
    if not allow_pickle:
        raise ValueError(
            f"{file} is a Python pickle, and loading a pickle can execute arbitrary code. "
            "Pass allow_pickle=True to load_routerbench only if you trust the file (e.g. you "
            f"downloaded it yourself from the Hugging Face dataset {ROUTERBENCH_REPO_ID}).")
    if not file.is_file() and download:
        _hub_download(ROUTERBENCH_REPO_ID, file.parent, [file.name])
    if not file.is_file():
        raise FileNotFoundError(f"{file}: RouterBench pickle not found (get {file.name} from the "
                                f"Hugging Face dataset {ROUTERBENCH_REPO_ID}, or pass "
                                "download=True with huggingface_hub installed and online)")
    try:
        import pandas as pd  # noqa: PLC0415 (optional dependency)
    except ImportError:
        raise ImportError("reading the RouterBench pickle needs pandas (pip install pandas)") \
            from None
    frame = pd.read_pickle(file)
    return routerbench_from_columns(frame.to_dict("list"))
