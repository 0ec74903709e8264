"""Unrolled solves of small symmetric positive-definite matrices against NumPy's LAPACK."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from uniroute_jax._src.small_linalg import UNROLL_MAX, spd_inv, spd_solve


def _spd(rng, batch, d):
    m = rng.normal(size=batch + (d, d))
    return m @ np.swapaxes(m, -1, -2) + 0.3 * np.eye(d)


@pytest.mark.parametrize("d", [1, 2, 3, 5, UNROLL_MAX, UNROLL_MAX + 2])
def test_solve_and_inverse_match_numpy(d):
    rng = np.random.default_rng(d)
    a = _spd(rng, (4, 3), d)
    b, rhs = rng.normal(size=(4, 3, d)), rng.normal(size=(4, 3, d, 2))
    want = np.linalg.solve(a, b[..., None])[..., 0]
    got = np.asarray(jax.jit(spd_solve)(jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32)))
    scale = np.abs(want).max()
    np.testing.assert_allclose(got, want, atol=2e-4 * scale)
    np.testing.assert_allclose(np.asarray(spd_solve(jnp.asarray(a, jnp.float32), jnp.asarray(rhs, jnp.float32))),
                               np.linalg.solve(a, rhs), atol=2e-4 * np.abs(np.linalg.solve(a, rhs)).max())
    inv = np.linalg.inv(a)
    np.testing.assert_allclose(np.asarray(spd_inv(jnp.asarray(a, jnp.float32))), inv, atol=2e-4 * np.abs(inv).max())


def test_vmapped_solve_is_the_per_matrix_solve():
    rng = np.random.default_rng(0)
    a, b = jnp.asarray(_spd(rng, (6,), 3), jnp.float32), jnp.asarray(rng.normal(size=(6, 3)), jnp.float32)
    batched = jax.vmap(spd_solve)(a, b)
    for i in range(6):
        np.testing.assert_allclose(np.asarray(batched[i]), np.asarray(spd_solve(a[i], b[i])), rtol=1e-6, atol=1e-6)
