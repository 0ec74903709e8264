"""Sweeps, exact curves and evaluation trials sharded over devices with `jax.sharding`.

Pools are independent: each one's curve needs the shared `estimates`, `units`, `costs` (and
`lams`) and its own mask row. So the pool axis is split over a 1-D mesh of devices and the rest
is replicated; every device runs the ordinary jitted kernel (`routing.sweep_kernel`,
`curves.exact_curve_kernel`) on its own block of pools, with no communication until the results
are read. Trials of the evaluation protocol are independent in the same way and shard the same
way (`trial_vmap`).

One code path serves every case: a mesh of one device is the trivial split, so the same call runs
on a laptop CPU, on every GPU of a host or on a TPU slice (the default mesh spans
`jax.devices()`), and gives the same numbers (each pool's arithmetic does not depend on which
device, or next to which other pools, it runs).

Why `shard_map` rather than letting GSPMD partition the jitted kernel: the kernels map over pools
with `lax.map` (a sequential loop, which GSPMD does not split) and the exact curve runs a
`while_loop` whose stopping test is shared by the pools of a batch, which GSPMD would turn into
an all-reduce per step. Under `jax.shard_map` each device runs the kernel on its block alone.

Uneven splits: a JAX array is split over devices in equal blocks, so `n_pools` (or `n_trials`) is
padded to a multiple of the device count by repeating the first pool (trial), and the padded rows
are cut off the results. The cut is a slice of a sharded array, which JAX gathers onto every
device (a replicated result); pass a multiple of the device count to keep the results sharded,
one block per device, and skip that gather (worth it for large exact curves).

Many hosts. The same code runs on several processes (one per host, each driving its local
devices) once every process has called `jax.distributed.initialize()` (arguments, or the
cluster's environment, name the coordinator, the process count and this process's id) before any
other JAX call. `jax.devices()` then lists every device of every process, so `pool_mesh()` builds
the same global mesh on each of them. Every process calls the same function with the same full
inputs (same files, same seeds); they are placed with `jax.make_array_from_process_local_data`,
which takes from each process only the blocks its own devices hold. Results are global arrays:
read a replicated one (the cut-back case) with `np.asarray` on any process, and a sharded one with
`jax.experimental.multihost_utils.process_allgather(x, tiled=True)`.

Example:
  >>> import numpy as np
  >>> import uniroute_jax as ur
  >>> est = np.array([[0.1, 0.3, 0.6], [0.2, 0.25, 0.4]], np.float32)  # [n_units, max_models]
  >>> costs = np.array([1.0, 0.5, 0.1], np.float32)
  >>> units = ur.make_units([0, 1], n_units=2, costs=costs)
  >>> masks = np.array([[1, 1, 1], [1, 0, 1], [0, 1, 1]], bool)  # [n_pools, max_models]
  >>> res = sharded_sweep(est, units, costs, [0.0, 0.5, 10.0], pool_masks=masks)
  >>> np.round(np.asarray(res.mean_cost, np.float64), 3).tolist()
  [[1.0, 0.3, 0.1], [1.0, 0.55, 0.1], [0.5, 0.3, 0.1]]
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from jax.typing import ArrayLike

from uniroute_jax._src import curves, routing
from uniroute_jax._src.curves import ExactCurve
from uniroute_jax._src.routing import RoutingUnits, SweepResult

POOL_AXIS = "pools"
TRIAL_AXIS = "trials"


# ------------------------------------------------------------------------------------ meshes


def _mesh(devices, axis_name: str) -> Mesh:
    if devices is None:
        devices = jax.devices()
    if isinstance(devices, (str, bytes)) or not isinstance(devices, (Sequence, np.ndarray)):
        raise TypeError(f"devices must be a sequence of jax devices (e.g. jax.devices()), got "
                        f"{type(devices).__name__}")
    devices = list(np.asarray(devices, dtype=object).reshape(-1))
    if not devices:
        raise ValueError("devices must hold at least one device, got an empty sequence")
    bad = [type(d).__name__ for d in devices if not isinstance(d, jax.Device)]
    if bad:
        raise TypeError(f"devices must hold jax devices (e.g. jax.devices()), got {bad[0]}")
    if len(set(devices)) != len(devices):
        raise ValueError(f"devices must be distinct, got {len(devices)} entries for {len(set(devices))} devices")
    return Mesh(np.asarray(devices, dtype=object), (axis_name,))


def pool_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A 1-D mesh over `devices` whose axis `"pools"` splits the pools of a sweep or exact curve.

    Args:
      devices: the devices to use (default: `jax.devices()`, every device of every process, so
        on several hosts each process builds the same global mesh).

    Returns:
      `jax.sharding.Mesh` of shape `{"pools": len(devices)}`.

    Raises:
      TypeError: `devices` is not a sequence of `jax.Device`.
      ValueError: `devices` is empty or repeats a device.
    """
    return _mesh(devices, POOL_AXIS)


def trial_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A 1-D mesh over `devices` whose axis `"trials"` splits the trials of the evaluation protocol.

    Args:
      devices: the devices to use (default: `jax.devices()`).

    Returns:
      `jax.sharding.Mesh` of shape `{"trials": len(devices)}`.

    Raises:
      TypeError / ValueError as `pool_mesh`.
    """
    return _mesh(devices, TRIAL_AXIS)


def _check_mesh(mesh, default: Callable[[], Mesh]) -> Mesh:
    if mesh is None:
        return default()
    if not isinstance(mesh, Mesh):
        raise TypeError(f"mesh must be a jax.sharding.Mesh (see pool_mesh and trial_mesh), got {type(mesh).__name__}")
    if len(mesh.axis_names) != 1:
        raise ValueError(f"mesh must be 1-D (one axis to split over), got axes {mesh.axis_names} of shape "
                         f"{tuple(mesh.devices.shape)}")
    return mesh


# ------------------------------------------------------------------------------- placement


def _put(x, mesh: Mesh, spec: P) -> jax.Array:
    """`x`, the same full value on every process, placed on `mesh` as `spec` says.

    `make_array_from_process_local_data` with the global shape equal to `x`'s takes from `x` only
    the blocks this process's devices hold: `jax.device_put` on one process, and the multi-host
    placement on several, in one call.
    """
    return jax.make_array_from_process_local_data(NamedSharding(mesh, spec), x, np.shape(x))


def _pad_leading(x, multiple: int):
    """Pads axis 0 of `x` to a multiple of `multiple` by repeating its first row."""
    n = x.shape[0]
    pad = -n % multiple
    if pad == 0:
        return x
    xp = jnp if isinstance(x, jax.Array) else np  # jnp keeps typed PRNG keys intact
    return xp.concatenate([x, xp.repeat(x[:1], pad, axis=0)], axis=0)


def _addressable(tree):
    """`tree` as arrays every process can read: with several processes, blocks held by other
    hosts' devices are gathered (host NumPy arrays, the same on every process); one process keeps
    its device arrays."""
    if jax.process_count() == 1:
        return tree
    return multihost_utils.process_allgather(tree, tiled=True)


def _cut(tree, n: int):
    return jax.tree.map(lambda x: x if x.shape[0] == n else x[:n], tree)


# --------------------------------------------------------------------- pools over devices


@jax.jit(static_argnames=("mesh", "pool_batch"))
def _sweep_sharded(estimates, units, costs, pool_masks, lams, *, mesh: Mesh, pool_batch: int) -> SweepResult:
    axis = mesh.axis_names[0]

    def block(masks, est, u, c, lam):
        return routing.sweep_kernel(est, u, c, masks, lam, pool_batch=pool_batch)

    # Only the masks vary across devices; every output is split over pools.
    return jax.shard_map(block, mesh=mesh, in_specs=(P(axis), P(), P(), P(), P()), out_specs=P(axis))(pool_masks, estimates, units, costs, lams)


@jax.jit(static_argnames=("mesh", "pool_batch", "max_steps"))
def _exact_sharded(estimates, units, costs, pool_masks, *, mesh: Mesh, pool_batch: int, max_steps: int) -> ExactCurve:
    axis = mesh.axis_names[0]

    def block(masks, est, u, c):
        return curves.exact_curve_kernel(est, u, c, masks, pool_batch=pool_batch, max_steps=max_steps)

    # The envelope walk's while_loop starts from constant (replicated) carries that become
    # per-device values, which the varying-axes check rejects; every output is split over pools,
    # so there is no replication claim for the check to guard.
    return jax.shard_map(block, mesh=mesh, in_specs=(P(axis), P(), P(), P()), out_specs=P(axis),
                         check_vma=False)(pool_masks, estimates, units, costs)


def _place_pools(masks: np.ndarray, mesh: Mesh) -> jax.Array:
    if masks.shape[0] == 0:
        raise ValueError("pool_masks must hold at least one pool, got shape (0, max_models)")
    return _put(_pad_leading(masks, mesh.size), mesh, P(mesh.axis_names[0]))


def _replicate(tree, mesh: Mesh):
    return jax.tree.map(lambda x: _put(x if isinstance(x, jax.Array) else np.asarray(x), mesh, P()), tree)


def _sharded_sweep_padded(estimates, units, costs, lams, pool_masks, mesh) -> tuple[SweepResult, int]:
    """Checked inputs to a pool-sharded `SweepResult` over the padded pools, and `n_pools`."""
    mesh = _check_mesh(mesh, pool_mesh)
    units = curves._check_units(units)
    est, costs, lams, masks = routing.check_sweep(estimates, units, costs, lams, pool_masks)
    n_pools, (n_units, max_models) = masks.shape[0], est.shape
    placed = _place_pools(masks, mesh)
    batch = routing.sweep_pool_batch(lams.size, n_units, max_models, placed.shape[0] // mesh.size)
    est, units, costs, lams = _replicate((est, units, costs, lams), mesh)
    return _sweep_sharded(est, units, costs, placed, lams, mesh=mesh, pool_batch=batch), n_pools


def sharded_sweep(
    estimates: ArrayLike,
    units: RoutingUnits,
    costs: ArrayLike,
    lams: ArrayLike,
    *,
    pool_masks: ArrayLike | None = None,
    mesh: Mesh | None = None,
) -> SweepResult:
    """`sweeps.sweep` with the pools split over the devices of `mesh`.

    Each device sweeps its block of pools with the same kernel as `sweep`; `estimates`, `units`,
    `costs` and `lams` are copied to every device. `n_pools` is padded to a multiple of the device
    count by repeating the first pool, and the padded rows are cut off.

    On several processes (after `jax.distributed.initialize()`), every process calls this with the
    same full inputs; see the module docstring.

    Args:
      estimates: [n_units, max_models] estimated error of each model on each unit.
      units: from `make_units`.
      costs: [max_models] per-query costs the router decides with, or [n_units, max_models]; >= 0.
      lams: [n_budgets] trade-offs >= 0.
      pool_masks: optional [n_pools, max_models] bool (default: one pool of every model).
      mesh: a 1-D `jax.sharding.Mesh` (default: `pool_mesh()`, every device).

    Returns:
      `SweepResult` with `[n_pools, n_budgets]` arrays, equal to `sweep` on the same inputs. Split
      over the mesh (one block of pools per device) when `n_pools` is a multiple of the device
      count, else replicated on every device (the cut-back gathers them).

    Raises:
      ValueError / TypeError naming the argument.
    """
    out, n_pools = _sharded_sweep_padded(estimates, units, costs, lams, pool_masks, mesh)
    return _cut(out, n_pools)


def _sharded_exact_curve_padded(estimates, units, costs, pool_masks, mesh) -> tuple[ExactCurve, int]:
    """Checked inputs to a pool-sharded `ExactCurve` over the padded pools, and `n_pools`."""
    mesh = _check_mesh(mesh, pool_mesh)
    units = curves._check_units(units)
    est, costs, masks = curves._check_table(estimates, units, costs, pool_masks)
    masks = np.asarray(masks)
    n_pools, (n_units, max_models) = masks.shape[0], est.shape
    placed = _place_pools(masks, mesh)
    batch = curves._pool_batch(n_units, max_models, placed.shape[0] // mesh.size)
    dtype = est.dtype
    max_steps = curves._steps_bound(est, costs, jnp.asarray(masks), batch)  # as `exact_curve` sizes its events
    est, units, costs = _replicate((np.asarray(est), RoutingUnits(*(np.asarray(x, dtype) for x in units)),
                                    np.asarray(costs)), mesh)
    return _exact_sharded(est, units, costs, placed, mesh=mesh, pool_batch=batch, max_steps=max_steps), n_pools


def sharded_exact_curve(
    estimates: ArrayLike,
    units: RoutingUnits,
    costs: ArrayLike,
    *,
    pool_masks: ArrayLike | None = None,
    mesh: Mesh | None = None,
) -> ExactCurve:
    """`curves.exact_curve` with the pools split over the devices of `mesh`.

    Each device computes the exact curves of its block of pools with the same kernel as
    `exact_curve`; `estimates`, `units` and `costs` are copied to every device. `n_pools` is padded
    to a multiple of the device count by repeating the first pool, and the padded rows are cut off.

    Args:
      estimates: [n_units, max_models] estimated error of each model on each unit.
      units: from `make_units`.
      costs: [max_models] per-query costs the router decides with, or [n_units, max_models]; >= 0.
      pool_masks: optional [n_pools, max_models] bool (default: one pool of every model).
      mesh: a 1-D `jax.sharding.Mesh` (default: `pool_mesh()`, every device).

    Returns:
      `ExactCurve` with `[n_pools, n_points]` arrays, equal to `exact_curve` on the same inputs
      (float64 when x64 is enabled). Split over the mesh when `n_pools` is a multiple of the
      device count, else replicated on every device.

    Raises:
      ValueError / TypeError naming the argument.
    """
    out, n_pools = _sharded_exact_curve_padded(estimates, units, costs, pool_masks, mesh)
    return _cut(out, n_pools)


# -------------------------------------------------------------------- trials over devices


def shard_trials(arrays: Any, mesh: Mesh | None = None) -> Any:
    """Places per-trial arrays with their leading (trial) axis split over the devices of `mesh`.

    The trial axis is padded to a multiple of the device count by repeating the first trial, so
    results computed from the placed arrays have `ceil(n_trials / n_devices) * n_devices` rows:
    cut them back with `[:n_trials]` (`trial_vmap` does all of this).

    Args:
      arrays: a pytree of arrays (NumPy, JAX, or typed PRNG keys), each `[n_trials, ...]` with the
        same `n_trials`: e.g. the split index arrays and the per-trial keys.
      mesh: a 1-D `jax.sharding.Mesh` (default: `trial_mesh()`, every device).

    Returns:
      The same pytree, each leaf `[n_padded, ...]` and split over the mesh's axis.

    Raises:
      ValueError: the leaves are scalars or disagree on `n_trials`; `mesh` is not 1-D.
      TypeError: `mesh` is not a `Mesh`.
    """
    mesh = _check_mesh(mesh, trial_mesh)
    leaves = jax.tree.leaves(arrays)
    sizes = {np.shape(x)[0] if np.ndim(x) else None for x in leaves}
    if None in sizes:
        raise ValueError("arrays must all have a leading trial axis, got a scalar leaf")
    if len(sizes) > 1:
        raise ValueError(f"arrays must share their leading (trial) size, got sizes {sorted(sizes)}")
    if 0 in sizes:
        raise ValueError("arrays must hold at least one trial, got a leading size of 0")
    spec = P(mesh.axis_names[0])

    def place(x):
        x = x if isinstance(x, jax.Array) else np.asarray(x)
        return _put(_pad_leading(x, mesh.size), mesh, spec)

    return jax.tree.map(place, arrays)


def trial_vmap(fn: Callable, in_axes: int | None | Sequence[int | None] = 0, *,
               mesh: Mesh | None = None) -> Callable:
    """`jax.vmap(fn, in_axes)` with the mapped (trial) axis split over the devices of `mesh`.

    Each device runs the vmapped `fn` on its block of trials. Build the wrapped function once and
    call it on every chunk of trials: it is jitted, and recompiles only for a new chunk size.

    Args:
      fn: the per-trial function (typically jitted); every output gains a leading trial axis.
      in_axes: 0 (every positional argument is per-trial), or one entry per positional argument:
        0 for a per-trial argument `[n_trials, ...]` (split over devices), None for a shared one
        (copied to every device). Only axis 0 can be mapped.
      mesh: a 1-D `jax.sharding.Mesh` (default: `trial_mesh()`, every device).

    Returns:
      A function with `fn`'s positional arguments whose outputs are `[n_trials, ...]`, equal to
      `jax.vmap(fn, in_axes)`'s; replicated on every device unless `n_trials` is a multiple of the
      device count (then split over the mesh). With several processes the outputs are gathered
      to host arrays that every process holds in full.

    Raises:
      ValueError / TypeError for a bad `in_axes` or `mesh` (at once) or arguments that disagree
      with `in_axes` (when called).

    Example (the change in `evaluation.evaluate`):
      >>> fn = trial_vmap(_zero_trial, in_axes=(None,) * 4 + (0, 0, 0))  # doctest: +SKIP
      >>> m, g = fn(*common, sp["val"], sp["test"], sp["unseen"])  # doctest: +SKIP
    """
    if not callable(fn):
        raise TypeError(f"fn must be callable, got {type(fn).__name__}")
    mesh = _check_mesh(mesh, trial_mesh)
    if isinstance(in_axes, (list, tuple)):
        axes = tuple(in_axes)
        bad = [a for a in axes if not (a is None or (isinstance(a, int) and not isinstance(a, bool) and a == 0))]
    else:
        axes = in_axes
        bad = [] if in_axes is None or (isinstance(in_axes, int) and not isinstance(in_axes, bool) and in_axes == 0) \
            else [in_axes]
    if bad:
        raise ValueError(f"in_axes entries must be 0 (per trial) or None (shared), got {bad[0]!r}")
    if axes is None:
        raise ValueError("in_axes must map at least one argument over trials, got None")
    axis = mesh.axis_names[0]

    @jax.jit
    def run(*args):
        specs = tuple(P() if a is None else P(axis) for a in (axes if isinstance(axes, tuple) else (axes,) * len(args)))
        # check_vma=False: per-trial loops (k-means, envelope walks) start from constant carries
        # that become per-device values; every output is split over trials, nothing is claimed
        # replicated.
        return jax.shard_map(jax.vmap(fn, in_axes=axes), mesh=mesh, in_specs=specs, out_specs=P(axis),
                             check_vma=False)(*args)

    def wrapped(*args):
        arg_axes = axes if isinstance(axes, tuple) else (axes,) * len(args)
        if len(arg_axes) != len(args):
            raise ValueError(f"in_axes has {len(arg_axes)} entries but the function got {len(args)} arguments")
        mapped = tuple(a for a, ax in zip(args, arg_axes) if ax == 0)
        if not mapped:
            raise ValueError("in_axes must map at least one argument over trials, got all None")
        sizes = {np.shape(x)[0] if np.ndim(x) else None for x in jax.tree.leaves(mapped)}
        if None in sizes or len(sizes) != 1:
            raise ValueError("per-trial arguments (in_axes 0) must share a leading trial size, got sizes "
                             f"{sorted(sizes, key=str)}")
        (n_trials,) = sizes
        placed = iter(shard_trials(mapped, mesh))
        full = tuple(next(placed) if ax == 0 else _replicate(a, mesh) for a, ax in zip(args, arg_axes))
        return _cut(_addressable(run(*full)), n_trials)

    return wrapped
