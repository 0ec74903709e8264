"""The first-index argmin that replaces `jnp.argmin` on CPU: same answers as NumPy's, on both paths."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from uniroute_jax._src import reductions


def _awkward(rng, shape):
    """Small integers (many exact ties) with NaN, +inf and -inf sprinkled in."""
    v = rng.integers(-2, 3, size=shape).astype(np.float32)
    u = rng.random(shape)
    v[u < 0.08] = np.nan
    v[(u >= 0.08) & (u < 0.16)] = np.inf
    v[(u >= 0.16) & (u < 0.2)] = -np.inf
    return v


@pytest.mark.parametrize("path", [reductions._running_min, reductions._reduce_min])
def test_both_paths_match_numpy_first_index_rule(path):
    rng = np.random.default_rng(0)
    for _ in range(100):
        k, n = rng.integers(1, 12), rng.integers(1, 30)
        v = _awkward(rng, (k, n))
        value, index = jax.jit(path)(jnp.asarray(v))
        want = np.argmin(v, axis=0)  # NumPy: first index of the minimum, the first NaN if any
        np.testing.assert_array_equal(np.asarray(index), want)
        np.testing.assert_array_equal(np.asarray(value), v[want, np.arange(n)])


def test_any_axis_moved_first_under_jit_and_vmap():
    rng = np.random.default_rng(1)
    v = _awkward(rng, (5, 7, 9))
    for axis in (0, 1, 2, -1):
        got = jax.jit(lambda a, axis=axis: reductions.argmin_leading(jnp.moveaxis(a, axis, 0))[1])(jnp.asarray(v))
        np.testing.assert_array_equal(np.asarray(got), np.argmin(v, axis=axis))
    batched = jax.vmap(lambda a: reductions.argmin_leading(a)[1])(jnp.asarray(v))
    np.testing.assert_array_equal(np.asarray(batched), np.argmin(v, axis=1))
    assert got.dtype == jnp.int32


def test_small_and_large_calls_agree():
    rng = np.random.default_rng(2)
    for n in (1, reductions.SMALL - 1, reductions.SMALL, 300):  # both sides of the small-call shortcut
        v = _awkward(rng, (17, n))
        np.testing.assert_array_equal(np.asarray(jax.jit(reductions.argmin_leading)(jnp.asarray(v))[1]),
                                      np.argmin(v, axis=0))


def test_empty_axis_is_refused():
    with pytest.raises(ValueError, match="at least one row"):
        reductions.argmin_leading(jnp.zeros((0, 3)))
