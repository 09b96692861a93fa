"""KubernetesExecutor support: the ``executor_config`` that gives each GPU step a pod with GPUs.

Under KubernetesExecutor every task runs in its own pod built from the worker pod template; the
``pod_override`` below is merged into it for the ``port`` tasks only, requesting
``nvidia.com/gpu`` (and tolerating the usual GPU-node taint) so those pods land on GPU nodes.
Enabled by ``THESEUS_K8S_GPUS`` > 0; with Celery or the local executors the config is empty and
the GPU steps use ``queue="gpu"`` and ``pool="gpu"`` instead.
"""

from __future__ import annotations

import os

GPU_RESOURCE = "nvidia.com/gpu"


def gpu_pod_override(gpus: int, node_selector: dict[str, str] | None = None, image: str | None = None):
    """A V1Pod to merge into the worker template: ``gpus`` GPUs on the ``base`` container."""
    from kubernetes.client import models as k8s

    if isinstance(gpus, bool) or not isinstance(gpus, int) or gpus < 1:
        raise ValueError(f"a GPU pod needs a positive whole number of GPUs, got {gpus!r}")
    amount = {GPU_RESOURCE: str(gpus)}
    container = k8s.V1Container(
        name="base",  # the container KubernetesExecutor runs the task in; the override merges by name
        image=image,
        resources=k8s.V1ResourceRequirements(requests=amount, limits=amount),
        env=[k8s.V1EnvVar(name="THESEUS_DEVICE", value="cuda")],
    )
    return k8s.V1Pod(spec=k8s.V1PodSpec(
        containers=[container],
        node_selector=node_selector or None,
        tolerations=[k8s.V1Toleration(key=GPU_RESOURCE, operator="Exists", effect="NoSchedule")],
    ))


def gpu_executor_config() -> dict:
    """``executor_config`` of the GPU steps from the environment; {} when no GPU pod is asked for.

    ``THESEUS_K8S_GPUS`` (default 0: off), ``THESEUS_K8S_GPU_NODE_SELECTOR`` (``key=value,...``) and
    ``THESEUS_K8S_GPU_IMAGE`` (default: the template's image, e.g. a CUDA build of the project image).
    """
    raw = os.environ.get("THESEUS_K8S_GPUS", "0").strip() or "0"
    try:
        gpus = int(raw)
    except ValueError as exc:
        raise ValueError(f"THESEUS_K8S_GPUS must be a whole number, got {raw!r}") from exc
    if gpus == 0:
        return {}
    selector = dict(item.split("=", 1) for item in os.environ.get("THESEUS_K8S_GPU_NODE_SELECTOR", "").split(",")
                    if "=" in item)
    return {"pod_override": gpu_pod_override(gpus, selector, os.environ.get("THESEUS_K8S_GPU_IMAGE") or None)}
