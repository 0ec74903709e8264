"""Property-based checks over the CLI's inputs and the file formats.

For every generated input the outcome is either the correct answer (compared with the Python API
on the same numbers) or exit status 2 with one line on stderr naming the argument; never a
traceback, never a changed input file.
"""

import hashlib
import json

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from uniroute_jax._src import cli
from uniroute_jax._src.router import Pool, UniRouter

DIM = 4
FUZZ = settings(suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

SPECIAL = [0.0, -0.0, 1.0, np.nan, np.inf, -np.inf, 1e39, -1e39, 1e20, 1e-30, 1e-45, 3.4e38, 0.5]
values = st.one_of(st.sampled_from(SPECIAL), st.floats(-10, 10, allow_nan=False, width=32))
ENCODINGS = ["utf-8", "utf-8-sig", "utf-16", "latin-1", "cp1252"]
NEWLINES = ["\n", "\r\n", "\r"]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    d = tmp_path_factory.mktemp("fuzz")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, DIM)).astype(np.float32)
    router = UniRouter.fit(x, 3, n_init=1)
    router.save(d / "router.npz")
    q = (rng.random((20, 2)) < [0.4, 0.8]).astype(np.float32)
    pool = router.represent(x[:20], q, ["cheap", "strong"], [1.0, 3.0])
    pool.save(d / "pool.npz")
    np.save(d / "val.npy", x[:20])
    return {"dir": d, "router": router, "pool": pool, "x": x}


def _digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _run(argv, capsys):
    code = cli.main([str(a) for a in argv])  # an exception escaping here is a traceback: the test fails
    out, err = capsys.readouterr()
    if code != 0:
        assert code == 2
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("uniroute: error: "), err
        assert "Traceback" not in err
    return code, out, err


def _csv_text(arr: np.ndarray, newline: str, header: str | None) -> str:
    rows = [",".join("" if np.isnan(v) else repr(float(v)) for v in np.atleast_1d(row)) for row in arr]
    return newline.join(([header] if header else []) + rows) + newline


@st.composite
def matrices(draw):
    ndim = draw(st.sampled_from([1, 2, 2, 2, 3]))
    shape = tuple(draw(st.integers(0 if ndim != 2 else 1, 4)) for _ in range(ndim))
    if ndim == 2 and draw(st.booleans()):
        shape = (shape[0], DIM)  # mostly the right width, so some inputs are valid
    flat = draw(st.lists(values, min_size=int(np.prod(shape)), max_size=int(np.prod(shape))))
    return np.asarray(flat, np.float64).reshape(shape)


@FUZZ
@given(arr=matrices(), kind=st.sampled_from(["npy", "csv"]), enc=st.sampled_from(ENCODINGS),
       nl=st.sampled_from(NEWLINES), header=st.sampled_from([None, "a,b,c,d", "é,b,c,d"]))
def test_route_embeddings_correct_or_one_clear_error(world, tmp_path_factory, capsys, arr, kind, enc, nl, header):
    d = world["dir"]
    f = tmp_path_factory.mktemp("in") / f"emb.{kind}"
    if kind == "npy":
        np.save(f, arr)
    else:
        if arr.ndim != 2:
            arr = arr.reshape(arr.shape[0] if arr.ndim else 1, -1) if arr.size else arr.reshape(0, DIM)
        f.write_bytes(_csv_text(arr, nl, header).encode(enc, errors="replace"))
    inputs = {p: _digest(p) for p in (f, d / "router.npz", d / "pool.npz")}
    code, out, err = _run(["route", "-r", d / "router.npz", "-p", d / "pool.npz", "-e", f, "--lam", 0.1], capsys)
    assert {p: _digest(p) for p in inputs} == inputs
    event(f"exit {code}")
    if code == 2:
        assert "embeddings" in err
        return
    x = cli.read_matrix(str(f), "embeddings")
    assert x.ndim == 2 and x.shape[1] == DIM and np.isfinite(x).all() and np.any(x != 0, axis=1).all()
    want = world["router"].route(x.astype(np.float32), world["pool"], 0.1)
    got = [line.split(",")[1] for line in out.splitlines()[1:]]
    assert got == [str(m) for m in want.model]


@st.composite
def correctness(draw):
    """Cells of a one-column correctness CSV: mostly valid (blank = not run), sometimes one bad cell."""
    n = draw(st.sampled_from([20, 20, 20, 20, 19, 21, 0]))
    valid = st.one_of(st.sampled_from(["", "nan", "0", "1", "0.5", " 1 "]), st.floats(0, 1).map(repr))
    cells = draw(st.lists(valid, min_size=n, max_size=n))
    if cells and draw(st.integers(0, 3)) == 0:
        i = draw(st.integers(0, n - 1))
        cells[i] = draw(st.sampled_from(["1.5", "-1", "inf", "x", "1;0"]))
    return cells


@FUZZ
@given(cells=correctness(), enc=st.sampled_from(ENCODINGS[:2] * 3 + ENCODINGS[2:]), nl=st.sampled_from(NEWLINES),
       header=st.sampled_from([None, "correct", "corrèct"]),
       name=st.sampled_from(["new", "new", "a,b", " ", "cheap"]))
def test_add_model_correct_or_one_clear_error(world, tmp_path_factory, capsys, cells, enc, nl, header, name):
    d = world["dir"]
    tmp = tmp_path_factory.mktemp("add")
    f = tmp / "q.csv"
    f.write_bytes((nl.join(([header] if header else []) + cells) + nl).encode(enc, errors="replace"))
    pool_path = tmp / "pool.npz"
    world["pool"].save(pool_path)
    inputs = {p: _digest(p) for p in (f, d / "router.npz", d / "val.npy", pool_path)}
    code, out, err = _run(["add-model", "-r", d / "router.npz", "-p", pool_path, "--val-embeddings",
                           d / "val.npy", "--correctness", f, "--name", name, "--cost", 2, "--estimator", "shrinkage"],
                          capsys)
    changed = {p for p in inputs if _digest(p) != inputs[p]}
    event(f"exit {code}")
    if code == 2:
        assert changed == set()
        assert any(arg in err for arg in ("correctness", "--name", "already in")), err
        return
    assert changed == {pool_path}
    parsed = []
    if header is None and cells and cells[0].strip() and cells[0].strip() not in ("nan", "inf"):
        try:
            float(cells[0])
        except ValueError:
            cells = cells[1:]  # a first cell of text is a header, as in any one-column CSV
    for c in cells:
        c = c.strip()
        parsed.append(np.nan if c in ("", "nan") else float(c))
    q = np.asarray(parsed, np.float32)[:, None]
    want = world["router"].represent(np.load(d / "val.npy"), q, [name], [2.0], estimator="shrinkage",
                                     reference=world["pool"])
    got = Pool.load(pool_path)
    assert got.names == world["pool"].names + (name,)
    np.testing.assert_array_equal(got.psi[-1], want.psi[0])
    np.testing.assert_array_equal(got.counts[-1], want.counts[0])


@st.composite
def damage(draw):
    kind = draw(st.sampled_from(["flip", "flip", "truncate", "append", "zero"]))
    return kind, draw(st.lists(st.integers(0, 10**6), min_size=1, max_size=4)), draw(st.integers(1, 255))


def _damaged(blob: bytes, how) -> bytes:
    kind, positions, byte = how
    b = bytearray(blob)
    if kind == "truncate":
        return bytes(b[: positions[0] % len(b)])
    if kind == "append":
        return bytes(b) + bytes([byte]) * (1 + positions[0] % 64)
    for p in positions:
        i = p % len(b)
        b[i] = (b[i] ^ byte) if kind == "flip" else 0
    return bytes(b)


def _same_pool(a: Pool, b: Pool) -> bool:
    return a.names == b.names and all(np.array_equal(getattr(a, f), getattr(b, f))
                                      for f in ("costs", "psi", "counts", "error_sums"))


@FUZZ
@given(how=damage(), target=st.sampled_from(["pool", "router"]))
def test_damaged_files_load_exactly_or_fail_loudly(world, tmp_path_factory, capsys, how, target):
    d = world["dir"]
    tmp = tmp_path_factory.mktemp("dmg")
    src = d / f"{target}.npz"
    bad = tmp / f"{target}.npz"
    bad.write_bytes(_damaged(src.read_bytes(), how))
    digest = _digest(bad)
    try:
        loaded = Pool.load(bad) if target == "pool" else UniRouter.load(bad)
    except ValueError:
        loaded = None
    if loaded is not None:  # damage only where the format has slack: the contents are intact
        if target == "pool":
            assert _same_pool(loaded, world["pool"])
        else:
            np.testing.assert_array_equal(loaded.centroids, world["router"].centroids)
            assert (loaded.metric, loaded.alpha) == (world["router"].metric, world["router"].alpha)
    paths = {"pool": d / "pool.npz", "router": d / "router.npz", target: bad}
    code, out, err = _run(["route", "-r", paths["router"], "-p", paths["pool"], "-e", d / "val.npy", "--lam", 0],
                          capsys)
    assert (code == 0) == (loaded is not None)
    event("loaded intact" if loaded is not None else "refused")
    assert _digest(bad) == digest


@FUZZ
@given(meta=st.recursive(st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=5)),
                         lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner,
                                                                                    max_size=3), max_leaves=6))
def test_foreign_metadata_is_refused_with_one_error(world, tmp_path_factory, meta):
    f = tmp_path_factory.mktemp("meta") / "pool.npz"
    with np.load(world["dir"] / "pool.npz") as z:
        arrays = {k: z[k] for k in z.files}
    arrays["__meta__"] = np.frombuffer(json.dumps(meta).encode(), np.uint8)
    np.savez(f, **arrays)
    with pytest.raises(ValueError):
        Pool.load(f)


@FUZZ
@given(arr=matrices(), enc=st.sampled_from(ENCODINGS), nl=st.sampled_from(NEWLINES),
       header=st.sampled_from([None, "a,b,c,d", "ä,b,c,d"]))
def test_csv_reader_exact_or_names_the_file(tmp_path_factory, arr, enc, nl, header):
    if arr.ndim != 2 or arr.size == 0:
        arr = np.atleast_2d(np.asarray(arr).reshape(-1))
        if arr.size == 0:
            arr = np.zeros((1, 2))
    f = tmp_path_factory.mktemp("csv") / "m.csv"
    text = _csv_text(arr, nl, header)
    try:
        f.write_bytes(text.encode(enc))
    except UnicodeEncodeError:
        return
    try:
        got = cli.read_matrix(str(f), "quality", allow_nan=True)
    except cli.CLIError as err:
        event("refused")
        assert str(err).startswith("quality: ") and str(f) in str(err)
        # Only a file that is not UTF-8 text, or one whose widths differ, is refused.
        assert enc == "utf-16" or (header and header[0] != "a" and enc in ("latin-1", "cp1252")), str(err)
        return
    event("read")
    want = arr.astype(np.float64)
    assert got.shape == want.shape
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    np.testing.assert_array_equal(got[~np.isnan(got)], want[~np.isnan(want)])
