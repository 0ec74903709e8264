"""The unchecked, jittable kernels behind the public API, for code that vmaps or shards them itself.

Each is written for one instance (one pool, one trial, one restart) and takes arrays already
checked by the caller: shapes, finiteness and masks are the caller's job. The checked entry points
in `uniroute_jax` validate first and then call these.
"""

from uniroute_jax._src.curves import calibrate_kernel, curve_at_kernel, envelope_steps_kernel, exact_curve_kernel
from uniroute_jax._src.error_vectors import error_vectors_kernel
from uniroute_jax._src.estimators import estimate_kernel, fit_kernel
from uniroute_jax._src.feature_maps import features_kernel
from uniroute_jax._src.kmeans import assign_kernel, kmeans_kernel
from uniroute_jax._src.knn import knn_kernel
from uniroute_jax._src.online import online_replay_kernel
from uniroute_jax._src.pacing import replay_kernel
from uniroute_jax._src.router import route_embeddings_kernel
from uniroute_jax._src.routing import route_kernel, sweep_kernel
from uniroute_jax._src.selection import selection_kernel

__all__ = [
    "assign_kernel",
    "calibrate_kernel",
    "curve_at_kernel",
    "envelope_steps_kernel",
    "error_vectors_kernel",
    "estimate_kernel",
    "exact_curve_kernel",
    "features_kernel",
    "fit_kernel",
    "kmeans_kernel",
    "knn_kernel",
    "online_replay_kernel",
    "replay_kernel",
    "route_embeddings_kernel",
    "route_kernel",
    "selection_kernel",
    "sweep_kernel",
]
