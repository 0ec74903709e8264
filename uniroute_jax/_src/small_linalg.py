"""Solves and inverses of small symmetric positive-definite matrices, in elementwise operations.

The estimators' Newton steps and Laplace covariances are `(r + 1) x (r + 1)` with `r` the prior's
rank (2 by default), vmapped over cells, LLMs and trials. `jnp.linalg.solve` / `inv` lower these
to batched LAPACK calls, and on the CPU jaxlib runs a batch of triangular solves on its own thread
pool: we saw that wait forever (every worker idle, the batch's counter never reaching zero) when
another process loaded the machine. An unrolled Cholesky factorisation uses only elementwise
arithmetic, which XLA fuses and vectorises over the batch; for these sizes it is no slower, and it
is the same code on CPU, GPU and TPU. Larger matrices (above `UNROLL_MAX`) keep `jnp.linalg`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

UNROLL_MAX = 8  # the unrolled factorisation has O(d^3) operations in the program


def spd_solve(a: jax.Array, b: jax.Array) -> jax.Array:
    """`x` with `a @ x = b` for symmetric positive-definite `a`.

    Args:
      a: `[..., d, d]` symmetric positive definite.
      b: `[..., d]` or `[..., d, n]` (the batch shape of `a`, then one or `n` right-hand sides).

    Returns:
      `x`, shaped as `b`.
    """
    d = a.shape[-1]
    if d > UNROLL_MAX:
        return jnp.linalg.solve(a, b) if b.ndim == a.ndim else jnp.linalg.solve(a, b[..., None])[..., 0]
    vector = b.ndim == a.ndim - 1
    rhs = b[..., None] if vector else b  # [..., d, n]
    low = [[None] * d for _ in range(d)]  # Cholesky factor: a = low @ low.T
    for j in range(d):
        low[j][j] = jnp.sqrt(a[..., j, j] - sum((low[j][k] ** 2 for k in range(j)), jnp.zeros_like(a[..., j, j])))
        for i in range(j + 1, d):
            dot = sum((low[i][k] * low[j][k] for k in range(j)), jnp.zeros_like(a[..., i, j]))
            low[i][j] = (a[..., i, j] - dot) / low[j][j]
    y = []  # low @ y = rhs
    for i in range(d):
        acc = rhs[..., i, :] - sum((low[i][k][..., None] * y[k] for k in range(i)), jnp.zeros_like(rhs[..., i, :]))
        y.append(acc / low[i][i][..., None])
    x = [None] * d  # low.T @ x = y
    for i in reversed(range(d)):
        acc = y[i] - sum((low[k][i][..., None] * x[k] for k in range(i + 1, d)), jnp.zeros_like(y[i]))
        x[i] = acc / low[i][i][..., None]
    out = jnp.stack(x, axis=-2)
    return out[..., 0] if vector else out


def spd_inv(a: jax.Array) -> jax.Array:
    """Inverse `[..., d, d]` of symmetric positive-definite `a [..., d, d]`."""
    eye = jnp.broadcast_to(jnp.eye(a.shape[-1], dtype=a.dtype), a.shape)
    return spd_solve(a, eye)
