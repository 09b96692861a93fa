"""Loading a transported model by its registry URI, whether it is merged or a PEFT adapter on its base.

A merged model (``theseus.format=full``, and every version registered before the tag existed)
holds all its weights and loads with MLflow alone. A transported LoRA is registered as a PEFT
adapter (``theseus.format=lora``): MLflow's transformers flavor saved the adapter and the
tokenizer, and recorded its base by the registering worker's local path, which a consumer does
not have. :func:`load_registered` fetches that base from the registry instead (the version's
``theseus.base_model``/``theseus.base_version``), verified, into a local cache, and gives MLflow
that copy, so nothing is looked up on the Hugging Face Hub:

    from theseus_ops.catalog.serving import load_registered

    pipe = load_registered("models:/theseus-tiny-upper-lora-serving@candidate")    # a transformers pipeline
    model = load_registered("models:/theseus-tiny-upper-lora-serving@candidate", flavor="pyfunc")
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path
from urllib.parse import urlparse

from theseus_ops.catalog.client import Catalog, check_model_name
from theseus_ops.catalog.config import CatalogConfig
from theseus_ops.catalog.schema import CONTENT_SHA256, ROLE, ROLE_TRANSPORTED_MODEL, TransportedModelTags, VersionRef
from theseus_ops.errors import InputError
from theseus_ops.service_errors import CatalogError

log = logging.getLogger("theseus_ops")
FLAVORS = ("transformers", "pyfunc")
_GENERATION_KEYS = ("eos_token_id", "pad_token_id", "stop_strings")


def default_cache_dir() -> Path:
    """Where downloaded models and bases are kept: ``THESEUS_CACHE_DIR``, else ``~/.cache/theseus-ops``."""
    return Path(os.environ.get("THESEUS_CACHE_DIR") or Path.home() / ".cache" / "theseus-ops")


def resolve_uri(catalog: Catalog, uri: str):
    """The model version ``models:/NAME/VERSION`` or ``models:/NAME@ALIAS`` names (CatalogError if none)."""
    parsed = urlparse(str(uri))
    path = (parsed.netloc + parsed.path).strip("/")
    if parsed.scheme != "models" or not path:
        raise InputError(f"{uri!r} is not a registry URI (models:/NAME/VERSION or models:/NAME@ALIAS)")
    name, at, alias = path.partition("@")
    if at:
        mv = catalog.get_alias(check_model_name(name), alias)
        if mv is None:
            raise CatalogError(f"{name} has no version with alias {alias!r} in the registry at {catalog.registry_uri}")
        return mv
    ref = VersionRef.parse(path)
    return catalog.get_version(ref)


def _cached(catalog: Catalog, mv, root: Path) -> Path:
    """A verified local copy of a version's artifact under ``root``, downloaded once.

    The copy is named by the version and its content digest, and reused only while its files still
    have that digest (a changed or partial copy is downloaded again).
    """
    from theseus_ops.storage.manifest import build_manifest

    ref = VersionRef(mv.name, str(mv.version))
    content = (mv.tags or {}).get(CONTENT_SHA256)
    if not content:
        raise CatalogError(f"{ref} was not registered by theseus-ops (no content digest in its tags)")
    dest = root / mv.name / f"{mv.version}-{content[:16]}"
    if dest.is_dir() and any(dest.iterdir()):
        if build_manifest(dest).digest() == content:
            return dest
        log.warning("local copy %s does not match %s; downloading again", dest, ref)
        shutil.rmtree(dest)
    return catalog.download(ref, dest)


def load_registered(uri: str, catalog: Catalog | None = None, *, flavor: str = "transformers",
                    cache_dir: str | Path | None = None, **kwargs):
    """The transported model a registry URI names, loaded offline: a transformers pipeline, or a pyfunc model.

    ``flavor="transformers"`` returns what ``mlflow.transformers.load_model`` does (``kwargs`` go
    to it), ``"pyfunc"`` what ``mlflow.pyfunc.load_model`` does. The version's artifact, and for an
    adapter its target base, are downloaded through ``catalog`` (default: from the environment,
    ``THESEUS_MLFLOW_TRACKING_URI`` / ``MLFLOW_TRACKING_URI``), each checked against its manifest,
    into ``cache_dir`` (default :func:`default_cache_dir`), and reused from there while unchanged.

    An adapter comes back as a ``peft.PeftModel`` on its base inside the pipeline; a generation
    adapter gets the stop it was registered with on its generation config, as a merged model has it.
    """
    import mlflow

    if flavor not in FLAVORS:
        raise InputError(f"flavor must be one of {', '.join(FLAVORS)}, got {flavor!r}")
    catalog = catalog or Catalog(CatalogConfig.from_env(), read_only=True)
    mv = resolve_uri(catalog, uri)
    where = f"{mv.name}/{mv.version}"
    if (mv.tags or {}).get(ROLE) != ROLE_TRANSPORTED_MODEL:
        raise CatalogError(f"{uri} is {where}, which is not a transported model (theseus.role="
                           f"{(mv.tags or {}).get(ROLE)!r})")
    tags = TransportedModelTags.from_tags(mv.tags or {}, where)
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    local = _cached(catalog, mv, root / "models")
    if not tags.is_adapter:
        if flavor == "pyfunc":
            return mlflow.pyfunc.load_model(str(local))
        return mlflow.transformers.load_model(str(local), **kwargs)
    base = _cached(catalog, catalog.get_version(tags.base, "base release"), root / "bases")
    if flavor == "pyfunc":  # loaded whole into memory, so the pointed copy is removed afterwards
        with tempfile.TemporaryDirectory(prefix=".pyfunc-", dir=local.parent) as tmp:
            return mlflow.pyfunc.load_model(str(_with_base(local, base, Path(tmp) / "model")))
    pipe = mlflow.transformers.load_model(str(local), base_model_path=str(base), **kwargs)
    _apply_stop(pipe, local)
    return pipe


def _with_base(local: Path, base: Path, out: Path) -> Path:
    """A copy of the adapter's MLflow model in ``out`` whose recorded base path is ``base``, for pyfunc.

    ``mlflow.pyfunc.load_model`` takes no base path (``mlflow.transformers.load_model`` does); it
    reads the transformers flavor's ``local_base_model_path``, which is the registering worker's.
    The copy (adapter, tokenizer, MLmodel: small) gets this machine's path instead.
    """
    from mlflow.models import Model

    shutil.copytree(local, out)
    model = Model.load(str(out / "MLmodel"))
    flavor = model.flavors.get("transformers") or {}
    if "local_base_model_path" not in flavor:
        raise CatalogError(f"{local}: the adapter's MLflow model records no local base path")
    flavor["local_base_model_path"] = str(base.resolve())
    model.save(str(out / "MLmodel"))
    return out


def _apply_stop(pipe, local: Path) -> None:
    """Set the stop a generation adapter was registered with (its pyfunc ``model_config``) on the pipeline."""
    from mlflow.models import Model
    from mlflow.models.model import MODEL_CONFIG  # where the pyfunc flavor keeps save_model's model_config

    config = (Model.load(str(local / "MLmodel")).flavors.get("python_function") or {}).get(MODEL_CONFIG) or {}
    generation = getattr(pipe.model, "generation_config", None)
    if generation is None:
        return
    for key in _GENERATION_KEYS:
        if key in config:
            setattr(generation, key, config[key])
