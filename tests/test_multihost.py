"""Several JAX processes on 127.0.0.1 (one CPU device each, gloo collectives) give one process's numbers."""

from __future__ import annotations

import pytest

from uniroute_jax._src import multihost


@pytest.fixture(scope="module")
def reference():
    return multihost.compute(sharded=False)


@pytest.mark.slow  # fresh interpreters joined by jax.distributed: about a minute on two cores
@pytest.mark.parametrize("n_processes", [2, 4])
def test_processes_reproduce_one_process(reference, n_processes):
    results = multihost.run_processes(n_processes, timeout=400)
    assert sorted(r["process"] for r in results) == list(range(n_processes))
    for r in results:
        assert r["devices"] == n_processes  # every process sees the global device list
        assert r["chosen_k"] == reference["chosen_k"]
        assert multihost.largest_gap({k: r[k] for k in reference}, reference) <= 1e-5


def test_largest_gap_sees_differences():
    assert multihost.largest_gap({"a": [1.0, float("nan")]}, {"a": [1.0, float("nan")]}) == 0.0
    assert multihost.largest_gap({"a": [1.0, 2.0]}, {"a": [1.0, 2.5]}) == 0.5
    assert multihost.largest_gap({"a": [1.0]}, {"a": [1.0, 2.0]}) == float("inf")
    assert multihost.largest_gap({"a": [1.0]}, {"b": [1.0]}) == float("inf")


def test_bad_process_count_is_refused():
    with pytest.raises(ValueError, match="n_processes must be an int >= 1"):
        multihost.run_processes(0)
