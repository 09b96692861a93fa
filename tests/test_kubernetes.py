"""KubernetesExecutor: the GPU steps' pod_override builds a valid pod spec that requests GPUs.

Runs in a subprocess with its own AIRFLOW_HOME (the provider reads Airflow's configuration) and
skips where the cncf-kubernetes provider is not installed. The pod is built the way the executor
builds it (``PodGenerator.construct_pod`` merging the task's ``executor_config`` into the worker
template), serialised with the Kubernetes client and read back as a ``V1Pod``.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(importlib.util.find_spec("airflow.providers.cncf.kubernetes") is None,
                                reason="needs apache-airflow-providers-cncf-kubernetes (the k8s extra)")

PROBE = r"""
import json, sys
from kubernetes.client import ApiClient, models as k8s
from airflow.dag_processing.dagbag import DagBag
from airflow.providers.cncf.kubernetes.pod_generator import PodGenerator

bag = DagBag(dag_folder=sys.argv[1])
assert not bag.import_errors, bag.import_errors
config = bag.dags["theseus_transport_release"].get_task("port").executor_config
others = [t.executor_config for t in bag.dags["theseus_transport_release"].tasks if t.task_id != "port"]
out = {"config_keys": sorted(config), "others": others}
if config:
    template = k8s.V1Pod(metadata=k8s.V1ObjectMeta(namespace="airflow"), spec=k8s.V1PodSpec(
        containers=[k8s.V1Container(name="base", image="theseus-ops:latest")], restart_policy="Never"))
    pod = PodGenerator.construct_pod(
        dag_id="theseus_transport_release", task_id="port", pod_id="port-0", try_number=1,
        kube_image="theseus-ops:latest", date=None, args=["airflow", "tasks", "run", "..."],
        pod_override_object=PodGenerator.from_obj(config), base_worker_pod=template, namespace="airflow",
        scheduler_job_id="1", run_id="manual__1", map_index=0)
    spec = ApiClient().sanitize_for_serialization(pod)
    # the serialised spec deserialises into a V1Pod again: it is a valid pod for the API server
    class _Resp:
        data = json.dumps(spec)
    back = ApiClient().deserialize(_Resp(), "V1Pod")
    out.update(spec=spec, roundtrip=back.spec.containers[0].resources.limits)
print(json.dumps(out))
"""


def probe(tmp_path: Path, **env: str) -> dict:
    full = {**os.environ, "AIRFLOW_HOME": str(tmp_path / "airflow"), "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"), "AIRFLOW__CORE__PLUGINS_FOLDER": str(ROOT / "plugins"),
            "PYTHONPATH": str(ROOT), **env}
    proc = subprocess.run([sys.executable, "-c", PROBE, str(ROOT / "dags")], env=full, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_gpu_steps_get_a_pod_that_requests_gpus(tmp_path):
    out = probe(tmp_path, THESEUS_K8S_GPUS="2", THESEUS_K8S_GPU_NODE_SELECTOR="accelerator=h100")
    assert out["config_keys"] == ["pod_override"] and all(not c for c in out["others"])
    spec = out["spec"]
    [container] = spec["spec"]["containers"]
    assert container["name"] == "base" and container["image"] == "theseus-ops:latest"  # the template's image kept
    assert container["resources"]["limits"] == {"nvidia.com/gpu": "2"} == container["resources"]["requests"]
    assert container["args"][:3] == ["airflow", "tasks", "run"]
    assert {"name": "THESEUS_DEVICE", "value": "cuda"} in container["env"]
    assert spec["spec"]["nodeSelector"] == {"accelerator": "h100"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in spec["spec"]["tolerations"]
    assert spec["metadata"]["labels"]["task_id"] == "port" and spec["metadata"]["namespace"] == "airflow"
    assert out["roundtrip"] == {"nvidia.com/gpu": "2"}


def test_no_gpu_pod_unless_asked(tmp_path):
    assert probe(tmp_path)["config_keys"] == []


def test_bad_gpu_count_is_a_clear_error():
    sys.path.insert(0, str(ROOT / "plugins"))
    try:
        from theseus_airflow.kubernetes import gpu_pod_override
    finally:
        sys.path.remove(str(ROOT / "plugins"))
    with pytest.raises(ValueError, match="positive whole number of GPUs"):
        gpu_pod_override(0)
