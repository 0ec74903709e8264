"""One test per reliability defect: user data is never lost, odd input never gives a silent wrong answer.

Names added by the fixes are imported inside the tests, so each test fails on its own against code
that lacks its fix.
"""

import hashlib
import io
import json
import os
from pathlib import Path

import numpy as np
import pytest

from uniroute_jax._src import cli, data, persistence
from uniroute_jax._src import evaluation as ev
from uniroute_jax._src.kmeans import kmeans
from uniroute_jax._src.router import Pool, UniRouter

DIM = 6


def run(argv, capsys):
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A router over 6-d embeddings, validation embeddings and three models' correctness."""
    d = tmp_path_factory.mktemp("setup")
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(3, DIM)) * 3
    x = (centers[rng.integers(0, 3, 90)] + rng.normal(size=(90, DIM))).astype(np.float32)
    router = UniRouter.fit(x[:60], 3, n_init=1)
    router.save(d / "router.npz")
    np.save(d / "val.npy", x[60:])
    q = (rng.random((30, 3)) < [0.3, 0.6, 0.9]).astype(float)
    for j in range(3):
        np.savetxt(d / f"q{j}.csv", q[:, j], fmt="%g")
    np.save(d / "test.npy", x[:20])
    return {"dir": d, "router": router, "x": x, "q": q}


def _pool(setup, tmp_path, capsys, names=("a", "b", "c")):
    d, path = setup["dir"], tmp_path / "pool.npz"
    for j, name in enumerate(names):
        code, _, err = run(["add-model", "-r", d / "router.npz", "-p", path, "--val-embeddings", d / "val.npy",
                            "--correctness", d / f"q{j}.csv", "--name", name, "--cost", j + 1,
                            "--estimator", "shrinkage"], capsys)  # rows that do not depend on the pool
        assert code == 0, err
    return path


def _rewrite_meta(path: Path, change) -> None:
    """Rewrites the JSON metadata of a saved file without touching its checksum (a hand edit)."""
    with np.load(path) as f:
        arrays = {k: f[k] for k in f.files}
    meta = json.loads(arrays["__meta__"].tobytes())
    meta = change(meta)
    arrays["__meta__"] = np.frombuffer(json.dumps(meta).encode(), np.uint8)
    np.savez(path, **arrays)


# ------------------------------------------------------------------ 2. pool path without .npz


def test_pool_path_without_suffix_keeps_earlier_models(setup, tmp_path, capsys):
    d = setup["dir"]
    for j, name in enumerate(["a", "b"]):
        code, _, err = run(["add-model", "-r", d / "router.npz", "-p", tmp_path / "poolx", "--val-embeddings",
                            d / "val.npy", "--correctness", d / f"q{j}.csv", "--name", name, "--cost", 1], capsys)
        assert code == 0, err
    assert Pool.load(tmp_path / "poolx.npz").names == ("a", "b")
    assert Pool.load(tmp_path / "poolx").names == ("a", "b")  # the name the user gave finds the file


# ------------------------------------------------------------------ 3. CSV with a byte-order mark


def test_bom_csv_keeps_its_first_row(setup, tmp_path, capsys):
    x = setup["x"][:3]
    plain, bom = tmp_path / "plain.csv", tmp_path / "bom.csv"
    text = "\n".join(",".join(repr(float(v)) for v in row) for row in x) + "\n"
    plain.write_text(text, encoding="utf-8")
    bom.write_text(text, encoding="utf-8-sig")
    np.testing.assert_array_equal(cli.read_matrix(str(bom), "embeddings"), x.astype(np.float64))
    pool = _pool(setup, tmp_path, capsys)
    outs = []
    for f in (plain, bom):
        code, out, err = run(["route", "-r", setup["dir"] / "router.npz", "-p", pool, "-e", f, "--lam", 0], capsys)
        assert code == 0, err
        outs.append(out)
    assert outs[0] == outs[1] and len(outs[1].splitlines()) == 4  # header + 3 prompts


def test_a_first_row_that_fails_to_parse_is_an_error_not_a_header(tmp_path):
    f = tmp_path / "m.csv"
    f.write_text("1,abc\n2,3\n")
    with pytest.raises(cli.CLIError, match=r"row 1 column 2 is not a number: 'abc'"):
        cli.read_matrix(str(f), "embeddings")
    f.write_text("a,b\n2,3\n")  # a header of names only is still a header
    np.testing.assert_array_equal(cli.read_matrix(str(f), "embeddings"), [[2.0, 3.0]])


# ------------------------------------------------------------------ 13. blank trailing labels


def test_blank_last_labels_read_as_missing(setup, tmp_path, capsys):
    d = setup["dir"]
    q = setup["q"][:, 0].copy()
    q[-3:] = np.nan
    f = tmp_path / "q.csv"
    f.write_text("".join("\n" if np.isnan(v) else f"{v:g}\n" for v in q))
    got = cli.read_matrix(str(f), "correctness", allow_nan=True)
    np.testing.assert_array_equal(np.isnan(got[:, 0]), np.isnan(q))
    code, _, err = run(["add-model", "-r", d / "router.npz", "-p", tmp_path / "p.npz", "--val-embeddings",
                        d / "val.npy", "--correctness", f, "--name", "a", "--cost", 1], capsys)
    assert code == 0, err
    pool = Pool.load(tmp_path / "p.npz")
    assert pool.counts.sum() == 27
    expected = setup["router"].represent(np.load(d / "val.npy"), q[:, None], ["a"], [1.0])
    np.testing.assert_array_equal(pool.psi, expected.psi)


# ------------------------------------------------------------------ 4. metadata inside the checksum


def test_permuted_pool_names_fail_the_checksum(tmp_path):
    path = tmp_path / "pool.npz"
    Pool(("a", "b"), [1.0, 2.0], [[0.1, 0.2], [0.8, 0.9]], np.ones((2, 2)), [[0.1, 0.2], [0.8, 0.9]]).save(path)
    _rewrite_meta(path, lambda m: m)
    assert Pool.load(path).names == ("a", "b")  # rewriting alone changes nothing
    _rewrite_meta(path, lambda m: {**m, "names": ["b", "a"]})
    with pytest.raises(ValueError, match="fails its checksum"):
        Pool.load(path)


@pytest.mark.parametrize("field, value", [("alpha", 7.0), ("metric", "euclidean")])
def test_edited_router_metadata_fails_the_checksum(setup, tmp_path, field, value):
    path = tmp_path / "r.npz"
    setup["router"].save(path)
    _rewrite_meta(path, lambda m: m)
    assert UniRouter.load(path).alpha == setup["router"].alpha
    _rewrite_meta(path, lambda m: {**m, field: value})
    with pytest.raises(ValueError, match="fails its checksum"):
        UniRouter.load(path)


def _write_v1(path, arrays, meta):
    """A file as version 1 wrote it: checksum over the arrays only (written out here, not imported)."""
    h = hashlib.sha256()
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        h.update(f"{name}|{a.dtype.str}|{a.shape}|".encode())
        h.update(a.tobytes())
    header = {"format": "uniroute-jax", "kind": "pool", "version": 1, "checksum": h.hexdigest(), **meta}
    np.savez(path, **arrays, __meta__=np.frombuffer(json.dumps(header).encode(), np.uint8))


def test_version_1_files_still_load_and_are_still_checked(tmp_path):
    arrays = {"costs": np.array([1.0, 2.0], np.float32), "psi": np.array([[0.1, 0.2], [0.3, 0.4]], np.float32),
              "counts": np.ones((2, 2), np.float32), "error_sums": np.array([[0.1, 0.2], [0.3, 0.4]], np.float32)}
    _write_v1(tmp_path / "old.npz", arrays, {"names": ["a", "b"]})
    pool = Pool.load(tmp_path / "old.npz")
    assert pool.names == ("a", "b")
    np.testing.assert_array_equal(pool.psi, arrays["psi"])
    damaged = {**arrays, "costs": np.array([1.0, 3.0], np.float32)}
    np.savez(tmp_path / "bad.npz", **damaged, __meta__=np.load(tmp_path / "old.npz")["__meta__"])
    with pytest.raises(ValueError, match="fails its checksum"):
        Pool.load(tmp_path / "bad.npz")
    with np.load(tmp_path / "old.npz") as f:
        meta = json.loads(f["__meta__"].tobytes())
    Pool.load(tmp_path / "old.npz").save(tmp_path / "new.npz")  # loading and saving converts it
    with np.load(tmp_path / "new.npz") as f:
        assert json.loads(f["__meta__"].tobytes())["version"] == persistence.VERSION != meta["version"]


# ------------------------------------------------------------------ 5. a pool tied to its router


def test_fingerprint_changes_with_any_array_byte_or_metadata():
    c = np.arange(6, dtype=np.float32).reshape(2, 3)
    base = persistence.fingerprint({"centroids": c}, {"metric": "cosine", "alpha": 1.0})
    assert base == persistence.fingerprint({"centroids": c.copy()}, {"alpha": 1.0, "metric": "cosine"})
    c2 = c.copy()
    c2.reshape(-1).view(np.uint8)[5] ^= 1
    assert persistence.fingerprint({"centroids": c2}, {"metric": "cosine", "alpha": 1.0}) != base
    assert persistence.fingerprint({"centroids": c}, {"metric": "cosine", "alpha": 2.0}) != base
    assert persistence.fingerprint({"centroids": c.astype(np.float64)}, {"metric": "cosine", "alpha": 1.0}) != base
    persistence.check_fingerprint(base, base, what="pool.npz", other="router.npz")
    persistence.check_fingerprint(None, base, what="pool.npz", other="router.npz")  # older pools pass
    with pytest.raises(ValueError, match="pool.npz was built with another router than router.npz"):
        persistence.check_fingerprint("0" * 64, base, what="pool.npz", other="router.npz")


def test_pool_from_another_router_of_the_same_k_is_refused(setup, tmp_path):
    x = setup["x"]
    other = UniRouter.fit(x[::-1].copy(), 3, n_init=1, seed=5)
    pool = setup["router"].represent(x[60:], setup["q"], ["a", "b", "c"], [1, 2, 3])
    pool.save(tmp_path / "pool.npz")
    with pytest.raises(ValueError, match="another router"):
        other.route(x[:5], Pool.load(tmp_path / "pool.npz"), 0.0)


# ------------------------------------------------------------------ 6. all-zero embedding rows


def test_embedding_rows_flags_zero_and_non_finite_rows():
    from uniroute_jax._src.validation import embedding_rows

    x = np.ones((5, 3))
    x[1] = 0
    x[3, 2] = np.nan
    np.testing.assert_array_equal(embedding_rows(x, "e", flag=True), [True, False, True, False, True])
    with pytest.raises(ValueError, match=r"e has 2 rows .* \(first: row 1, all-zero\)"):
        embedding_rows(x, "e")
    tiny = np.full((2, 3), 1e-30, np.float32)  # tiny is not zero
    assert embedding_rows(tiny, "e").all()


def test_cli_refuses_all_zero_rows(setup, tmp_path, capsys):
    d = setup["dir"]
    pool = _pool(setup, tmp_path, capsys)
    x = np.load(d / "test.npy")
    x[2] = 0
    np.save(tmp_path / "z.npy", x)
    code, out, err = run(["route", "-r", d / "router.npz", "-p", pool, "-e", tmp_path / "z.npy", "--lam", 0], capsys)
    assert code == 2 and "row 2" in err and "embeddings" in err and out == ""
    before = pool.read_bytes()
    v = np.load(d / "val.npy")
    v[0] = 0
    np.save(tmp_path / "zv.npy", v)
    code, _, err = run(["add-model", "-r", d / "router.npz", "-p", pool, "--val-embeddings", tmp_path / "zv.npy",
                        "--correctness", d / "q0.csv", "--name", "z", "--cost", 1], capsys)
    assert code == 2 and "val-embeddings" in err and "row 0" in err
    assert pool.read_bytes() == before


def _tiny_dataset(n=120, m=6, seed=0):
    rng = np.random.default_rng(seed)
    return data.RoutingDataset(name="tiny", prompt_ids=np.array([f"p{i}" for i in range(n)]),
                               quality=(rng.random((n, m)) < 0.6).astype(np.float32),
                               label_mask=np.ones((n, m), bool), costs=np.arange(1.0, m + 1),
                               model_names=tuple(f"m{j}" for j in range(m)),
                               embeddings=rng.normal(size=(n, 5)).astype(np.float32))


def test_evaluate_refuses_all_zero_rows():
    ds = _tiny_dataset()
    emb = ds.embeddings.copy()
    emb[7] = 0
    with pytest.raises(ValueError, match=r"dataset.embeddings .*row 7"):
        ev.evaluate(ds.with_embeddings(emb), [ev.ZERO], config=ev.ProtocolConfig(n_trials=2, k_grid=(2,)),
                    progress=False)


def test_router_refuses_all_zero_rows(setup):
    router = setup["router"]
    pool = router.represent(setup["x"][60:], setup["q"], ["a", "b", "c"], [1, 2, 3])
    x = setup["x"][:4].copy()
    x[1] = 0
    with pytest.raises(ValueError, match="row 1"):
        router.route(x, pool, 0.0)
    with pytest.raises(ValueError, match="row 1"):
        router.routing_table(pool, 0.0)(x)


# ------------------------------------------------------------------ 7. serving table values


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_routing_table_refuses_non_finite_rows(setup, bad):
    router = setup["router"]
    table = router.routing_table(router.represent(setup["x"][60:], setup["q"], ["a", "b", "c"], [1, 2, 3]), 0.0)
    x = setup["x"][:3].copy()
    x[2, 0] = bad
    with pytest.raises(ValueError, match=r"row 2|index \(2, 0\)"):
        table(x)


# ------------------------------------------------------------------ 8. huge and tiny embeddings


@pytest.mark.parametrize("scale", [1e20, 1e30, 1e-30])
def test_fit_is_scale_free_under_cosine(setup, scale):
    x = setup["x"][:60].astype(np.float64)
    ref = UniRouter.fit(x, 3, n_init=1)
    got = UniRouter.fit(x * scale, 3, n_init=1)
    np.testing.assert_allclose(got.centroids, ref.centroids, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(got.centroids, axis=1), 1.0, atol=1e-6)


def test_euclidean_kmeans_on_huge_values_scales_back(setup):
    x = setup["x"][:60]
    ref = kmeans(x, 3, key=0, n_init=1)
    got = kmeans(x.astype(np.float64) * 2e20, 3, key=0, n_init=1)
    np.testing.assert_array_equal(got.labels, ref.labels)
    np.testing.assert_allclose(np.asarray(got.centroids) / 2e20, ref.centroids, rtol=1e-5)


# ------------------------------------------------------------------ 9. a model without validation labels


def test_evaluate_refuses_a_model_without_validation_labels():
    ds = _tiny_dataset()
    config = ev.ProtocolConfig(n_trials=2, k_grid=(2,))
    splits = ev.make_splits(ds.n_prompts, ds.n_models, config)
    mask = ds.label_mask.copy()
    mask[splits.val[1], 2] = False  # model m2 unlabelled on trial 1's validation prompts only
    ds = data.RoutingDataset(name="tiny", prompt_ids=ds.prompt_ids, quality=ds.quality, label_mask=mask,
                             costs=ds.costs, model_names=ds.model_names, embeddings=ds.embeddings)
    with pytest.raises(ValueError, match=r"model 'm2' has no label among the \d+ validation prompts of trial 1"):
        ev.evaluate(ds, [ev.ZERO, ev.KMEANS], config=config, progress=False)


# ------------------------------------------------------------------ 10. save_folder overwrite


def test_failed_save_folder_overwrite_keeps_the_old_dataset(tmp_path, monkeypatch):
    old, new = _tiny_dataset(seed=0), _tiny_dataset(seed=1)
    data.save_folder(old, tmp_path / "ds")
    before = {p.name: p.read_bytes() for p in (tmp_path / "ds").iterdir()}

    def broken_save(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(np, "save", broken_save)  # embeddings.npy is the last file written
    with pytest.raises(OSError, match="No space left"):
        data.save_folder(new, tmp_path / "ds", overwrite=True)
    assert {p.name: p.read_bytes() for p in (tmp_path / "ds").iterdir()} == before
    monkeypatch.undo()
    data.save_folder(new, tmp_path / "ds", overwrite=True)
    back = data.load_folder(tmp_path / "ds")
    np.testing.assert_array_equal(back.quality, new.quality)
    np.testing.assert_array_equal(back.embeddings, new.embeddings)
    assert sorted(p.name for p in (tmp_path / "ds").iterdir()) == sorted(before)


# ------------------------------------------------------------------ 11. lower


def test_add_model_refuses_a_read_only_pool(setup, tmp_path, capsys):
    pool = _pool(setup, tmp_path, capsys, names=("a",))
    os.chmod(pool, 0o444)
    before = pool.read_bytes()
    d = setup["dir"]
    code, _, err = run(["add-model", "-r", d / "router.npz", "-p", pool, "--val-embeddings", d / "val.npy",
                        "--correctness", d / "q1.csv", "--name", "b", "--cost", 1], capsys)
    assert code == 2 and "read-only" in err
    assert pool.read_bytes() == before and (pool.stat().st_mode & 0o777) == 0o444


def test_non_object_metadata_is_one_clear_error(setup, tmp_path, capsys):
    path = tmp_path / "r.npz"
    setup["router"].save(path)
    _rewrite_meta(path, lambda m: [m])
    with pytest.raises(ValueError, match="not an object"):
        UniRouter.load(path)
    code, _, err = run(["route", "-r", path, "-p", path, "-e", setup["dir"] / "test.npy", "--lam", 0], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_route_output_may_not_name_an_input(setup, tmp_path, capsys):
    pool = _pool(setup, tmp_path, capsys)
    before = pool.read_bytes()
    for given, out in ((pool, pool), (tmp_path / "pool", pool)):  # also the .npz that `-p pool` finds
        code, _, err = run(["route", "-r", setup["dir"] / "router.npz", "-p", given, "-e", setup["dir"] / "test.npy",
                            "--lam", 0, "-o", out], capsys)
        assert code == 2 and "is the input --pool" in err
    assert pool.read_bytes() == before


def test_evaluate_checks_its_output_folder_first(tmp_path, capsys, monkeypatch):
    (tmp_path / "afile").write_text("keep")

    def must_not_run(*a, **k):
        raise AssertionError("the evaluation ran before the output was checked")

    monkeypatch.setattr(ev, "evaluate", must_not_run)
    monkeypatch.setattr(ev, "synthetic_dataset", must_not_run)
    code, _, err = run(["evaluate", "--trials", 1, "--out", tmp_path / "afile"], capsys)
    assert code == 2 and "--out" in err and (tmp_path / "afile").read_text() == "keep"


def test_outputs_are_never_left_half_written(tmp_path):
    out = tmp_path / "out.csv"
    out.write_text("old\n")

    def rows():
        yield [1, "a", 0]
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        cli.write_table(str(out), ["prompt", "model", "cluster"], rows())
    assert out.read_text() == "old\n" and sorted(p.name for p in tmp_path.iterdir()) == ["out.csv"]


def test_a_model_name_with_a_comma_can_be_selected_and_blank_names_are_refused(setup, tmp_path, capsys):
    pool = _pool(setup, tmp_path, capsys, names=("a,b", "c"))
    code, out, err = run(["route", "-r", setup["dir"] / "router.npz", "-p", pool, "-e", setup["dir"] / "test.npy",
                          "--lam", 0, "--model", "a,b"], capsys)
    assert code == 0, err
    assert {line.split(",", 1)[1].rsplit(",", 1)[0] for line in out.splitlines()[1:]} == {'"a,b"'}
    for name in (" ", "", " x"):
        code, _, err = run(["add-model", "-r", setup["dir"] / "router.npz", "-p", pool, "--val-embeddings",
                            setup["dir"] / "val.npy", "--correctness", setup["dir"] / "q0.csv", "--name", name,
                            "--cost", 1], capsys)
        assert code == 2 and "--name" in err
    assert Pool.load(pool).names == ("a,b", "c")


def test_replace_keeps_the_models_place(setup, tmp_path, capsys):
    pool = _pool(setup, tmp_path, capsys)
    d = setup["dir"]
    code, _, err = run(["add-model", "-r", d / "router.npz", "-p", pool, "--val-embeddings", d / "val.npy",
                        "--correctness", d / "q2.csv", "--name", "a", "--cost", 9, "--replace", "--estimator",
                        "shrinkage"], capsys)
    assert code == 0, err
    got = Pool.load(pool)
    assert got.names == ("a", "b", "c")
    np.testing.assert_array_equal(got.costs, [9, 2, 3])
    np.testing.assert_array_equal(got.psi[0], got.psi[2])  # a now carries q2's labels


def test_router_refuses_non_unit_centroids_under_cosine():
    with pytest.raises(ValueError, match="unit rows"):
        UniRouter(np.array([[2.0, 0.0], [0.0, 1.0]]), metric="cosine")


def test_unit_rows_check():
    from uniroute_jax._src.validation import unit_rows

    unit_rows(np.eye(3), "centroids")
    with pytest.raises(ValueError, match=r"centroids must have unit rows .* row 1 has norm 2"):
        unit_rows(np.array([[1.0, 0.0], [0.0, 2.0]]), "centroids")


def test_ctrl_c_stops_kmeans_between_chunks(monkeypatch):
    import _thread

    from uniroute_jax._src import kmeans as km

    x = np.random.default_rng(0).normal(size=(400, 4)).astype(np.float32)
    full = int(km.kmeans(x, 8, key=0, n_init=2, tol=0.0, max_iter=300).n_iter)
    done = []  # iterations reached by the restarts after each chunk
    real = km._lloyd_chunk

    def chunk(*a, **k):
        states, running = real(*a, **k)
        done.append(int(np.max(states.n_iter)))
        if len(done) == 1:
            _thread.interrupt_main()  # what Ctrl-C does: a KeyboardInterrupt in the main thread
        return states, running

    monkeypatch.setattr(km, "CHUNK_ITERS", 1)
    monkeypatch.setattr(km, "_lloyd_chunk", chunk)
    with pytest.raises(KeyboardInterrupt):
        km.kmeans(x, 8, key=0, n_init=2, tol=0.0, max_iter=300)
    assert full > 3 and done and max(done) <= 2  # stopped after a chunk, long before the fit's end


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_chunked_kmeans_matches_the_single_kernel(metric, monkeypatch):
    import jax
    import jax.numpy as jnp

    from uniroute_jax._src import kmeans as km

    monkeypatch.setattr(km, "CHUNK_ITERS", 3)
    x = np.random.default_rng(1).normal(size=(300, 8)).astype(np.float32)
    got = km.kmeans(x, 6, key=2, n_init=3, metric=metric)
    xv = x / np.linalg.norm(x, axis=1, keepdims=True) if metric == "cosine" else x
    tol = jnp.asarray(np.float32(1e-4 * np.mean(np.var(xv, axis=0))))
    want = km.kmeans_kernel(jax.random.key(2), jnp.asarray(x), jnp.ones(300), tol, n_clusters=6, n_init=3,
                            max_iter=300, metric=metric)
    assert int(got.n_iter) == int(want.n_iter) > 3  # more than one chunk ran
    np.testing.assert_array_equal(got.labels, want.labels)
    np.testing.assert_array_equal(got.centroids, want.centroids)


# ------------------------------------------------------------------ 12. messages


def test_messages_name_the_real_problem(setup, tmp_path, capsys):
    d = setup["dir"]
    pool = _pool(setup, tmp_path, capsys, names=("a",))
    (tmp_path / "notes.txt").write_text("hello\n")
    np.save(tmp_path / "arr.npy", np.zeros(3))
    for router, want in ((tmp_path / "notes.txt", "not an .npz archive"), (tmp_path / "arr.npy", "bare NumPy array")):
        code, _, err = run(["route", "-r", router, "-p", pool, "-e", d / "test.npy", "--lam", 0], capsys)
        assert code == 2 and want in err and "allow_pickle" not in err and "context manager" not in err
    (tmp_path / "latin.csv").write_bytes("caf\xe9,1\n1,2\n".encode("latin-1"))
    code, _, err = run(["fit", tmp_path / "latin.csv", "-k", 2, "-o", tmp_path / "r.npz"], capsys)
    assert code == 2 and "latin.csv" in err and "UTF-8" in err
    code, _, err = run(["evaluate", "--k-grid", "abc", "--out", tmp_path / "ev"], capsys)
    assert code == 2 and "--k-grid" in err
    np.save(tmp_path / "big.npy", np.full((4, DIM), 1e39))
    code, _, err = run(["fit", tmp_path / "big.npy", "-k", 2, "-o", tmp_path / "r.npz"], capsys)
    assert code == 2 and "too large for float32" in err and "NaN" not in err


# ------------------------------------------------------------------ also seen


def test_route_uses_prompt_ids_and_embed_writes_an_npy(setup, tmp_path, capsys, monkeypatch):
    x = np.load(setup["dir"] / "test.npy")[:3]
    monkeypatch.setattr(cli, "_embed_texts", lambda texts, args: x[[int(t[-1]) for t in texts]])
    (tmp_path / "p.jsonl").write_text("".join(json.dumps({"prompt_id": f"id{i}", "text": f"t{i}"}) + "\n"
                                              for i in (2, 0, 1)))
    pool = _pool(setup, tmp_path, capsys)
    code, out, err = run(["route", "-r", setup["dir"] / "router.npz", "-p", pool, "-t", tmp_path / "p.jsonl",
                          "--lam", 0], capsys)
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == "prompt_id,model,cluster" and [line.split(",")[0] for line in lines[1:]] == ["id2", "id0", "id1"]
    clusters = setup["router"].assign(x[[2, 0, 1]])
    assert [int(line.split(",")[2]) for line in lines[1:]] == clusters.tolist()
    code, _, err = run(["embed", tmp_path / "p.jsonl", "-o", tmp_path / "emb.npy"], capsys)
    assert code == 0, err
    np.testing.assert_array_equal(np.load(tmp_path / "emb.npy"), x[[2, 0, 1]])


def test_sweep_prints_area_and_qnc(setup, tmp_path, capsys):
    pool = _pool(setup, tmp_path, capsys)
    q = (np.random.default_rng(3).random((20, 3)) < [0.3, 0.6, 0.9]).astype(float)
    np.save(tmp_path / "q.npy", q)
    code, out, err = run(["sweep", "-r", setup["dir"] / "router.npz", "-p", pool, "-e", setup["dir"] / "test.npy",
                          "-q", tmp_path / "q.npy", "--n-budgets", 32], capsys)
    assert code == 0, err
    table = np.loadtxt(io.StringIO(out), delimiter=",", skiprows=1)
    cost, quality = table[:, 1] / 3.0, table[:, 2]  # normalised by the priciest model (cost 3)
    # Independent Area: the Pareto front (points better than every cheaper one), linear between
    # its points and flat outside them, integrated over normalised cost [0, 1].
    order = np.lexsort((-quality, cost))
    front_c, front_q = [], []
    for ci, qi in zip(cost[order], quality[order]):
        if not front_q or qi > front_q[-1]:
            front_c.append(ci)
            front_q.append(qi)
    grid = np.linspace(0, 1, 200001)
    vals = np.interp(grid, front_c, front_q)
    area = float(np.sum((vals[1:] + vals[:-1]) / 2 * np.diff(grid)))
    printed = float(err.split("Area ")[1].split(";")[0])
    assert printed == pytest.approx(area, abs=2e-3)
    assert "QNC" in err


def test_evaluate_passes_its_estimator_options(tmp_path, capsys, monkeypatch):
    seen = {}

    def fake(ds, methods, config):
        seen["config"] = config
        raise ValueError("stop here")

    monkeypatch.setattr(ev, "synthetic_dataset", lambda seed: _tiny_dataset())
    monkeypatch.setattr(ev, "evaluate", fake)
    code, _, err = run(["evaluate", "--alpha", 0.5, "--metric", "euclidean", "--n-init", 2, "--k-grid", "2,3",
                        "--estimator", "hierarchical", "--out", tmp_path / "o"], capsys)
    assert code == 2 and "stop here" in err
    c = seen["config"]
    assert (c.alpha, c.metric, c.n_init, c.k_grid, c.estimator) == (0.5, "euclidean", 2, (2, 3), "hierarchical")


def test_table_has_a_sign_test_against_zero_router():
    from uniroute_jax._src import metrics

    T = 6
    fields = {f: np.zeros(T) for f in metrics.CurveMetrics._fields}
    mk = lambda area: metrics.CurveMetrics(**{**fields, "area": np.asarray(area, float)})
    res = ev.EvaluationResult("d", (ev.ZERO, ev.KMEANS), {ev.ZERO: mk([0.5] * T), ev.KMEANS: mk([0.6] * 5 + [0.4])},
                              {}, np.full(T, 5), np.zeros(T, int), None, ev.ProtocolConfig(), {})
    table = res.table()
    assert f"Area vs {ev.ZERO}" in table
    row = next(line for line in table.splitlines() if line.startswith(f"| {ev.KMEANS} |"))
    assert "5/1" in row  # K-Means beat ZeroRouter in 5 of 6 trials


def test_load_embedllm_takes_the_max_of_repeated_labels(tmp_path):
    (tmp_path / "model_order.csv").write_text("model_id,model_name\n0,m-7B\n1,m-13B\n")
    (tmp_path / "question_order.csv").write_text("prompt_id,prompt\n0,q0\n1,q1\n")
    # (0, 0) repeats with labels 0 and 1 (max 1); (1, 1) repeats with 0 twice; (1, 0) once.
    (tmp_path / "train.csv").write_text("model_id,prompt_id,prompt,label\n0,0,q0,0\n0,0,q0,1\n1,1,q1,0\n"
                                        "1,1,q1,0\n1,0,q0,1\n")
    (tmp_path / "test.csv").write_text("model_id,prompt_id,prompt,label\n0,1,q1,1\n0,1,q1,0\n")
    ds = data.load_embedllm(tmp_path)
    np.testing.assert_array_equal(ds.quality, [[1, 1], [1, 0]])
    np.testing.assert_array_equal(ds.label_mask, np.ones((2, 2), bool))
    assert ds.model_names == ("m-7B", "m-13B") and ds.texts == ("q0", "q1")


def test_all_blank_correctness_is_one_clear_error(setup, tmp_path, capsys):
    d = setup["dir"]
    n = np.load(d / "val.npy").shape[0]
    blank = tmp_path / "blank.csv"
    blank.write_text("nan\n" * n)
    code, _, err = run(["add-model", "-r", d / "router.npz", "-p", tmp_path / "pool.npz", "--val-embeddings",
                        d / "val.npy", "--correctness", blank, "--name", "x", "--cost", 1], capsys)
    assert code == 2 and "correctness holds no label" in err and not (tmp_path / "pool.npz").exists()
