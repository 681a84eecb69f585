"""The sweep on a simulated two-node Ray cluster whose nodes declare one GPU each: trials take
half a GPU, so the GPUs allow two trials per node - four at a time, on both nodes. The machine
has no CUDA: the trainer falls back to the CPU."""

from __future__ import annotations

import json

import pytest
import sweep_hooks
from sweep_checks import mlflow_runs, read_csv


@pytest.fixture(scope="module")
def two_node_cluster():
    import ray
    import ray.cloudpickle
    from ray.cluster_utils import Cluster

    ray.cloudpickle.register_pickle_by_value(sweep_hooks)
    # 3 CPUs per node: the GPU halves (2 per node), not the CPUs, limit the concurrency
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 3, "num_gpus": 1})
    cluster.add_node(num_cpus=3, num_gpus=1)
    ray.init(address=cluster.address, log_to_driver=False)
    cluster.wait_for_nodes()
    try:
        yield cluster
    finally:
        ray.shutdown()
        cluster.shutdown()


@pytest.mark.slow
def test_fractional_gpu_trials_spread_over_two_nodes(two_node_cluster, sweep_params, tmp_path):
    import ray

    from mitp.sweep.runner import run_sweep

    nodes = {n["NodeID"] for n in ray.nodes() if n["Alive"]}
    assert len(nodes) == 2
    params = sweep_params({"sweep.resources_per_trial": {"cpu": 1, "gpu": 0.5}, "sweep.max_concurrent_trials": None,
                           "sweep.train": {"epochs": 1}})
    markers = tmp_path / "markers"
    outcome = run_sweep(params, "synthetic", hooks=sweep_hooks.Barrier(str(markers), n=4),
                        outputs=(tmp_path / "sweep.csv", tmp_path / "best.json"))
    rows = read_csv(tmp_path / "sweep.csv")
    assert len(rows) == 4 and all(r["status"] == "COMPLETED" for r in rows) and not outcome.failed

    # all four ran at the same time: each waited at the barrier until four had started
    assert not list(markers.glob("timeout-*")), "trials did not run concurrently"
    assert len(list(markers.glob("passed-*"))) == 4
    starts = [json.loads(p.read_text()) for p in markers.glob("start-*.json")]
    assert len(starts) == 4
    # on both nodes, two per node, the two of a node sharing its one GPU
    per_node: dict[str, list] = {}
    for s in starts:
        per_node.setdefault(s["node_id"], []).append(s["gpu_ids"])
    assert set(per_node) == nodes
    for gpu_ids in per_node.values():
        assert len(gpu_ids) == 2 and all(len(g) == 1 for g in gpu_ids) and gpu_ids[0] == gpu_ids[1]
    assert {r["node_id"] for r in rows} == nodes

    # MLflow children record where they ran and their GPU share; trained on the CPU
    _, children = mlflow_runs(params)
    assert len(children) == 4
    assert {c.data.tags["ray.node_id"] for c in children} == nodes
    assert all(c.data.tags["ray.gpu_fraction"] == "0.5" for c in children)
    assert all(float(c.data.metrics["peak_memory_mb"]) > 0 for c in children)
