"""The task-vector catalog and model registry of record, on MLflow (see docs/catalog.md).

    from theseus_ops.catalog import Catalog, CatalogConfig, register_base, register_task_vector

    catalog = Catalog(CatalogConfig(tracking_uri="http://mlflow:5000"))
    base = register_base(catalog, "llama-tiny", "2025.06", "models/llama-tiny-2025.06")
    register_task_vector(catalog, "llama-tiny-sst2", "sst2.safetensors", task="sst2",
                         base_model="llama-tiny", base_version=base.ref.version,
                         dataset="s3://data/sst2?splits=train,validation,test", metric="accuracy")
"""

from theseus_ops.catalog.client import Catalog
from theseus_ops.catalog.config import CatalogConfig, Evaluation, GateConfig, GateDecision, decide
from theseus_ops.catalog.register import (
    Registration,
    find_base_release,
    find_task_vectors,
    get_base,
    get_task_vector,
    idempotency_key,
    options_sha256,
    register_base,
    register_landed_release,
    register_task_vector,
    register_transported_adapter,
    register_transported_model,
    register_transported_vector,
)
from theseus_ops.catalog.schema import (
    ALIAS_CANDIDATE,
    ALIAS_CHAMPION,
    ROLE_BASE,
    ROLE_TASK_VECTOR,
    ROLE_TRANSPORTED_MODEL,
    BaseReleaseTags,
    TaskVectorTags,
    TransportedModelTags,
    VersionRef,
)
from theseus_ops.catalog.serving import load_registered

__all__ = [
    "ALIAS_CANDIDATE",
    "ALIAS_CHAMPION",
    "ROLE_BASE",
    "ROLE_TASK_VECTOR",
    "ROLE_TRANSPORTED_MODEL",
    "BaseReleaseTags",
    "Catalog",
    "CatalogConfig",
    "Evaluation",
    "GateConfig",
    "GateDecision",
    "Registration",
    "TaskVectorTags",
    "TransportedModelTags",
    "VersionRef",
    "decide",
    "find_base_release",
    "find_task_vectors",
    "get_base",
    "get_task_vector",
    "idempotency_key",
    "load_registered",
    "options_sha256",
    "register_base",
    "register_landed_release",
    "register_task_vector",
    "register_transported_adapter",
    "register_transported_model",
    "register_transported_vector",
]
