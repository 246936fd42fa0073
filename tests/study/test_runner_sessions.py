"""How a study gets its Ray: an embedded local instance by default, or a cluster it joins.

Each test owns its Ray processes (none is shared with other modules), so these run
after any module-scoped session has shut down.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import ray
import ray.cloudpickle
from ray.cluster_utils import Cluster

from study.results import Study
from study.runner import dashboard_available, run_study
from study.spec import load_spec, parse_spec
from tests.study import toy_loop
from tests.study.test_runner import TOY


@pytest.mark.slow
def test_a_study_starts_an_embedded_ray_with_the_dashboard_on_localhost(tmp_path: Path) -> None:
    assert not ray.is_initialized()
    ray.cloudpickle.register_pickle_by_value(toy_loop)
    spec = parse_spec({**TOY, "sweep": {"grid": {"lr": [3e-3, 1e-5]}}})
    outcome = run_study(
        spec, str(tmp_path / "study"), train_fn=toy_loop.train, dashboard=dashboard_available()
    )
    assert not ray.is_initialized()  # the runner shuts down the Ray it started
    assert outcome.status.runs == {"escaped": 1, "censored": 1}
    if dashboard_available():
        assert outcome.dashboard_url is not None
        assert outcome.dashboard_url.startswith("127.0.0.1:")


@pytest.mark.slow
def test_a_study_joining_a_two_node_cluster_runs_trials_on_both_nodes(tmp_path: Path) -> None:
    cluster = Cluster(
        initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False}
    )
    try:
        cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        nodes = {node.node_id for node in cluster.list_all_nodes()}
        assert len(nodes) == 2
        # smoke runs two trials at once and each needs a CPU: one per node
        outcome = run_study(
            load_spec("smoke"), str(tmp_path / "study"), address=cluster.address, dashboard=False
        )
        trials = Study.open(outcome.path).trials()
        assert set(trials["node_id"]) == nodes
        assert set(trials["status"]) == {"escaped", "censored", "diverged"}
    finally:
        if ray.is_initialized():
            ray.shutdown()
        cluster.shutdown()
