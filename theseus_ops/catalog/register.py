"""Registering base releases, task vectors and transported models, with lineage tags.

Every function validates against the registry before uploading anything: the base a task vector
names must be a registered base release whose weights hash matches the vector's, and a
transported entry must name a registered source vector and target base. Registration is
idempotent: a re-run returns the version it created the first time.

Concurrent registrations of one entry have one winner (``Catalog.register_entry``): the others
get the winner's version with ``created=False`` when their content is the winner's, and a base
release registered at once with other weights gets :class:`ConflictError` naming the weights'
hash that is registered. Task vectors are keyed by their content, transported entries by their
idempotency key, so for them a concurrent duplicate is always ``created=False``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from theseus_ops.catalog.client import Catalog, check_model_name
from theseus_ops.catalog.config import Evaluation, GateConfig, GateDecision, decide
from theseus_ops.catalog.schema import (
    ALIAS_CANDIDATE,
    ALIAS_CHAMPION,
    CONTENT_SHA256,
    EVALUATION_FIELDS,
    IDEMPOTENCY_KEY,
    OPTIONS_SHA256,
    ROLE,
    ROLE_TASK_VECTOR,
    SOURCE_URI,
    BaseReleaseTags,
    TaskVectorTags,
    TransportedModelTags,
    VersionRef,
    check_task,
    check_uri,
)
from theseus_ops.errors import InputError
from theseus_ops.evaluation.config import GENERATION
from theseus_ops.io.loading_lock import MODEL_BUILDING
from theseus_ops.service_errors import CatalogError, ConflictError
from theseus_ops.storage.manifest import build_manifest
from theseus_ops.storage.releases import LandedRelease, check_name, download_release
from theseus_ops.storage.zones import LandingZone

log = logging.getLogger("theseus_ops")
Progress = Callable[[str], None]


@dataclass(frozen=True)
class Registration:
    """A registry version theseus-ops wrote (or found, when ``created`` is False)."""

    version: object  # mlflow.entities.model_registry.ModelVersion
    created: bool
    decision: GateDecision | None = None

    @property
    def ref(self) -> VersionRef:
        return VersionRef(self.version.name, str(self.version.version))


def options_sha256(options: dict) -> str:
    """Canonical hash of transport options (JSON with sorted keys)."""
    try:
        text = json.dumps(options, sort_keys=True, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise InputError(f"transport options must be plain JSON values ({exc})") from exc
    return hashlib.sha256(text.encode()).hexdigest()


def calibration_tag(options: dict) -> str | None:
    """The ``calibration`` option (recipe and rows used) as a tag value; None for an uncalibrated method."""
    value = options.get("calibration")
    return None if value is None else json.dumps(value, sort_keys=True, separators=(",", ":"))


def idempotency_key(source_vector: VersionRef, target_base: VersionRef, method: str, options: dict) -> str:
    """The identity of a transport: (source vector version, target base version, method, options hash)."""
    payload = json.dumps({"source_vector": str(source_vector), "target_base": str(target_base), "method": method,
                          "options_sha256": options_sha256(options)}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()


# -- lookups -------------------------------------------------------------------------------------
def get_base(catalog: Catalog, ref: VersionRef) -> BaseReleaseTags:
    mv = catalog.get_version(ref, "base release")
    return BaseReleaseTags.from_tags(mv.tags or {}, f"base release {ref}")


def get_task_vector(catalog: Catalog, ref: VersionRef) -> TaskVectorTags:
    mv = catalog.get_version(ref, "task vector")
    return TaskVectorTags.from_tags(mv.tags or {}, f"task vector {ref}")


def find_base_release(catalog: Catalog, base_line: str, release: str):
    """The version registering ``release`` of ``base_line``, or None.

    The lowest one: it is the one that survives when two processes registered the release at once.
    """
    found = catalog.search_versions(base_line, BaseReleaseTags.search(release=release))
    return found[0] if found else None


def find_task_vectors(catalog: Catalog, task: str, base: VersionRef | None = None) -> list:
    """Every task-vector version for ``task`` (on ``base`` if given); CatalogError for a task the catalog lacks."""
    check_task(task)
    on_base = {} if base is None else {"base_model": base.name, "base_version": base.version}
    found = catalog.search_versions(tags=TaskVectorTags.search(task=task, **on_base))
    if not found:
        every = catalog.search_versions(tags=TaskVectorTags.search())
        known = sorted({TaskVectorTags.read(v.tags, "task") for v in every} - {None})
        where = f" on base {base}" if base else ""
        raise CatalogError(f"unknown task {task!r}{where}: no task vector in the catalog "
                           f"(known tasks: {', '.join(known) or 'none'})")
    return found


def _vector_format(path: Path) -> str:
    from theseus_ops.io.task_vectors import ADAPTER_CONFIG

    if path.is_dir():
        if not (path / ADAPTER_CONFIG).is_file():
            raise InputError(f"{path} is a directory without {ADAPTER_CONFIG}: not a LoRA adapter")
        return "lora"
    if path.is_file():
        return "full"
    raise InputError(f"{path} does not exist")


def _check_vector_against_base(path: Path, base: BaseReleaseTags, base_ref: VersionRef) -> str:
    """Read and validate the vector; its recorded base hash (if any) must be the base's. Returns its format."""
    from theseus_ops.io.finite import require_finite, task_vector_tensors
    from theseus_ops.io.task_vectors import META_BASE_SHA, read_task_vector

    fmt = _vector_format(path)
    tv = read_task_vector(path)
    require_finite(task_vector_tensors(tv), f"task vector {path}")
    recorded = (tv.metadata or {}).get(META_BASE_SHA)
    if recorded and recorded != base.sha256:
        raise CatalogError(f"task vector {path} was made for base weights {recorded[:12]}…, but base {base_ref} "
                           f"(release {base.release}) has {base.sha256[:12]}…")
    return fmt


def _existing(catalog: Catalog, name: str, tags: dict[str, str]):
    found = catalog.search_versions(name, tags)
    return found[0] if found else None


# -- base releases -------------------------------------------------------------------------------
def register_base(catalog: Catalog, base_line: str, release: str, model_dir: str | Path,
                  description: str | None = None, source_uri: str | None = None,
                  progress: Progress | None = None) -> Registration:
    """Register a Hugging Face model directory as ``release`` of the base line ``base_line`` (a registered model)."""
    from theseus_ops.io.models import inspect_model_dir

    check_model_name(base_line)
    check_name(release, "release")
    info = inspect_model_dir(model_dir)
    sha256 = info.sha256()
    tags = BaseReleaseTags(release=release, sha256=sha256).to_tags()
    if source_uri:
        tags[SOURCE_URI] = source_uri
    existing = find_base_release(catalog, base_line, release)
    if existing is not None:
        _check_same_weights(existing, base_line, release, sha256)
        return Registration(existing, False)
    mv, created = catalog.register_entry(base_line, model_dir, tags, "model",
                                         description or f"{base_line} release {release}", progress=progress,
                                         unique=BaseReleaseTags.search(release=release))
    if not created:  # another writer registered the release at the same moment
        _check_same_weights(mv, base_line, release, sha256)
    return Registration(mv, created)


def _check_same_weights(existing, base_line: str, release: str, sha256: str) -> None:
    """ConflictError unless the registered version of the release holds these weights (releases are immutable)."""
    registered = BaseReleaseTags.read(existing.tags, "sha256")
    if registered != sha256:
        raise ConflictError(f"release {release} of {base_line} is already registered as version {existing.version} "
                            f"with other weights (sha256 {registered}, these are {sha256}); releases are immutable, "
                            f"register them under a new release name")


def register_landed_release(catalog: Catalog, zone: LandingZone, landed: LandedRelease,
                            progress: Progress | None = None) -> Registration:
    """Download a landed release (verifying every checksum) and register it as a base release."""
    with tempfile.TemporaryDirectory(prefix="theseus-landed-") as tmp:
        local = download_release(zone, landed.base_line, landed.release, Path(tmp) / "model")
        return register_base(catalog, landed.base_line, landed.release, local, source_uri=landed.url, progress=progress)


# -- task vectors --------------------------------------------------------------------------------
def register_task_vector(catalog: Catalog, name: str, path: str | Path, *, task: str, base_model: str,
                         base_version: str, dataset: str, metric: str, fmt: str | None = None,
                         description: str | None = None, progress: Progress | None = None,
                         evaluation: dict[str, str | None] | None = None) -> Registration:
    """Register a fine-tuned task vector (delta file or LoRA adapter dir) for a registered base version.

    ``evaluation``: how its task is scored, from :func:`~theseus_ops.catalog.schema.evaluation_tags`
    (task kind, evaluator, chat template, generation budget, general-capability dataset); none
    means a generation task (docs/evaluation.md).
    """
    check_model_name(name)
    path = Path(path)
    base_ref = VersionRef(check_model_name(base_model), str(base_version))
    check_task(task)
    check_uri(dataset, "dataset")
    base = get_base(catalog, base_ref)
    detected = _check_vector_against_base(path, base, base_ref)
    if fmt is not None and fmt != detected:
        raise InputError(f"{path} is a {detected} task vector, not {fmt}")
    unknown = sorted(set(evaluation or {}) - set(EVALUATION_FIELDS))
    if unknown:
        raise InputError(f"unknown evaluation tag(s) {', '.join(unknown)}; known: {', '.join(EVALUATION_FIELDS)}")
    tags = TaskVectorTags(task=task, base_model=base_ref.name, base_version=base_ref.version, format=detected,
                          dataset=dataset, metric=metric, **(evaluation or {})).to_tags()
    content = build_manifest(path).digest()
    identity = {**TaskVectorTags.search(base_version=base_ref.version, base_model=base_ref.name),
                CONTENT_SHA256: content}
    existing = _existing(catalog, name, identity)
    if existing is not None:
        return Registration(existing, False)
    mv, created = catalog.register_entry(name, path, tags, "task_vector", description, progress=progress,
                                         unique=identity)
    return Registration(mv, created)


def _transport_context(catalog: Catalog, source_vector: VersionRef, target_base: VersionRef
                       ) -> tuple[TaskVectorTags, BaseReleaseTags]:
    source = get_task_vector(catalog, source_vector)
    target = get_base(catalog, target_base)
    get_base(catalog, source.base)  # the source's own base must still be registered
    if source.base_model != target_base.name:
        raise CatalogError(f"task vector {source_vector} belongs to base line {source.base_model}, "
                           f"target base {target_base} to {target_base.name}")
    if source.base_version == target_base.version:
        raise InputError(f"task vector {source_vector} is already on base {target_base}")
    return source, target


def register_transported_vector(catalog: Catalog, source_vector: VersionRef, target_base: VersionRef,
                                path: str | Path, *, method: str, alpha: float, alignment: str,
                                options: dict | None = None, name: str | None = None,
                                progress: Progress | None = None) -> Registration:
    """Register a transported task vector as a catalog entry of the target base (default: same model name).

    Idempotent on (source vector, target base, method, options incl. alpha).
    """
    options = {**(options or {}), "alpha": float(alpha)}
    source, target = _transport_context(catalog, source_vector, target_base)
    check_uri(alignment, "alignment")
    name = check_model_name(name or source_vector.name)
    key = idempotency_key(source_vector, target_base, method, options)
    existing = _existing(catalog, name, {ROLE: ROLE_TASK_VECTOR, IDEMPOTENCY_KEY: key})
    if existing is not None:
        log.info("%s is already registered as %s/%s", key[:12], name, existing.version)
        return Registration(existing, False)
    path = Path(path)
    fmt = _check_vector_against_base(path, target, target_base)
    tags = TaskVectorTags(task=source.task, base_model=target_base.name, base_version=target_base.version,
                          format=fmt, dataset=source.dataset, metric=source.metric,
                          transported_from=str(source_vector), method=method, alpha=repr(float(alpha)),
                          alignment=alignment, calibration=calibration_tag(options),
                          **source.evaluation_fields()).to_tags()
    tags.update({IDEMPOTENCY_KEY: key, OPTIONS_SHA256: options_sha256(options)})
    mv, created = catalog.register_entry(name, path, tags, "task_vector",
                                         f"{source.task} task vector ported from {source_vector} by {method}",
                                         progress=progress, unique={ROLE: ROLE_TASK_VECTOR, IDEMPOTENCY_KEY: key})
    return Registration(mv, created)


# -- transported models --------------------------------------------------------------------------
def stop_on(pipe, stop: str | None) -> None:
    """Make generation end where the task's answers end, so a consumer's pipeline stops at the answer.

    A stop text that is one token of the model's tokenizer (the demo tasks' ``"\\n"`` on a byte-level
    tokenizer) joins ``generation_config.eos_token_id``, which every ``generate`` honours; a longer
    one goes to ``stop_strings``. The model's own end-of-sequence token stays an end too.
    """
    if not stop:
        return
    config = pipe.model.generation_config
    ids = pipe.tokenizer.encode(stop, add_special_tokens=False)
    if len(ids) == 1 and pipe.tokenizer.decode(ids) == stop:
        eos = config.eos_token_id
        eos = [] if eos is None else [eos] if isinstance(eos, int) else list(eos)
        config.eos_token_id = eos + [i for i in ids if i not in eos]
        if config.pad_token_id is None:  # else generate() warns that it pads with the first eos id
            pad = pipe.tokenizer.pad_token_id
            config.pad_token_id = pad if pad is not None else (eos or ids)[0]
    else:
        config.stop_strings = [stop]


def _model_card(model_dir: Path):
    from huggingface_hub import ModelCard

    readme = model_dir / "README.md"
    # an explicit card: otherwise MLflow looks one up on the Hugging Face Hub by the directory's name
    return ModelCard(readme.read_text() if readme.is_file() else f"# {model_dir.name}\n\nWritten by theseus-ops.\n")


def _requirements() -> list[str]:
    import torch
    import transformers

    return [f"transformers=={transformers.__version__}", f"torch=={torch.__version__.split('+')[0]}"]


def _save_transformers_model(model_dir: Path, out: Path, stop: str | None = "\n",
                             task_kind: str = GENERATION) -> None:
    """``model_dir`` as an MLflow model with the transformers (and pyfunc) flavor of its task kind's pipeline.

    Generation and perplexity tasks are logged as ``text-generation``, classifiers as
    ``text-classification`` / ``image-classification``, a bare encoder as ``feature-extraction``
    (:mod:`theseus_ops.catalog.flavors`); the non-generation ones with a signature and an input example.
    """
    import mlflow

    from theseus_ops.catalog.flavors import TEXT_GENERATION, build_pipeline, pipeline_task, signature_and_example
    from theseus_ops.io.finite import require_finite

    task = pipeline_task(task_kind, model_dir)
    if task != TEXT_GENERATION:
        pipe = build_pipeline(task, model_dir)
        require_finite(pipe.model.state_dict(), f"model {model_dir}")  # never register a broken model
        signature, example = signature_and_example(pipe, task)
        mlflow.transformers.save_model(transformers_model=pipe, path=str(out), task=task, signature=signature,
                                       input_example=example, pip_requirements=_requirements(),
                                       model_card=_model_card(model_dir))
        return
    import transformers

    try:
        with MODEL_BUILDING:
            pipe = transformers.pipeline("text-generation", model=str(model_dir), tokenizer=str(model_dir))
    except (OSError, ValueError, KeyError) as exc:
        raise InputError(f"{model_dir}: cannot build a text-generation pipeline (model and tokenizer are "
                         f"needed in the directory): {str(exc).splitlines()[0] if str(exc) else exc}") from exc
    require_finite(pipe.model.state_dict(), f"model {model_dir}")  # never register a broken model
    stop_on(pipe, stop)
    mlflow.transformers.save_model(transformers_model=pipe, path=str(out), task="text-generation",
                                   pip_requirements=_requirements(), model_card=_model_card(model_dir))


_STOP_KEYS = ("eos_token_id", "pad_token_id", "stop_strings")


def stop_config(pipe, stop: str | None) -> dict:
    """What :func:`stop_on` sets on the pipeline's generation config, as generation keyword arguments.

    An adapter's registered model has no generation config of its own (that is the base's), so the
    stop ships in MLflow's ``model_config`` instead: pyfunc passes it to every generation call and
    :func:`~theseus_ops.catalog.serving.load_registered` sets it on the loaded pipeline.
    """
    config = pipe.model.generation_config
    before = {k: getattr(config, k, None) for k in _STOP_KEYS}
    stop_on(pipe, stop)
    return {k: getattr(config, k) for k in _STOP_KEYS if getattr(config, k, None) != before[k]}


def _save_transformers_adapter(base_dir: Path, adapter_dir: Path, alpha: float, out: Path,
                               stop: str | None = "\n", kind: str = GENERATION) -> None:
    """A PEFT adapter on ``base_dir`` as an MLflow model: adapter weights and tokenizer, no base weights.

    MLflow's transformers flavor saves a PEFT model's adapter under ``peft/`` and, with
    ``base_model_path``, records the base by a local path instead of saving it (or of looking it up on
    the Hugging Face Hub); the path is the registering worker's, so consumers pass their own copy of
    the base at load time (:func:`~theseus_ops.catalog.serving.load_registered`). The adapter is
    saved with its LoRA factors scaled by ``alpha``: it adds what a merge at ``alpha`` would.
    """
    import mlflow

    from theseus_ops.catalog.flavors import (
        TEXT_GENERATION,
        build_adapter_pipeline,
        pipeline_task,
        signature_and_example,
    )
    from theseus_ops.io.finite import require_finite

    task = pipeline_task(kind, base_dir)
    pipe = build_adapter_pipeline(task, base_dir, adapter_dir, alpha)
    adapter_weights = {k: v for k, v in pipe.model.state_dict().items() if "lora_" in k}
    require_finite(adapter_weights, f"adapter {adapter_dir} at alpha {alpha}")  # never register a broken model
    extra: dict = {}
    if task == TEXT_GENERATION:
        extra["model_config"] = stop_config(pipe, stop) or None
    else:
        extra["signature"], extra["input_example"] = signature_and_example(pipe, task)
    mlflow.transformers.save_model(transformers_model=pipe, path=str(out), task=task, base_model_path=str(base_dir),
                                   pip_requirements=_adapter_requirements(), model_card=_model_card(adapter_dir),
                                   **extra)


def _adapter_requirements() -> list[str]:
    import peft

    return [*_requirements(), f"peft=={peft.__version__}"]


def model_metrics(metric: str, alpha: float, evaluation: Evaluation) -> dict[str, float]:
    """What a transported model's run carries as MLflow metrics, so the registry and run views show them.

    Named by split and task metric (``val_exact_match``, ``test_exact_match``, ``base_test_exact_match``)
    beside the generic ``val_metric``/``test_metric`` every model has whatever its task measures.
    """
    out = {"val_metric": evaluation.val_metric, "test_metric": evaluation.test_metric,
           "base_test_metric": evaluation.base_test_metric, f"val_{metric}": evaluation.val_metric,
           f"test_{metric}": evaluation.test_metric, f"base_test_{metric}": evaluation.base_test_metric,
           "alpha": alpha}
    if evaluation.general_loss is not None:
        out["general_loss"] = evaluation.general_loss
    if evaluation.base_general_loss is not None:
        out["base_general_loss"] = evaluation.base_general_loss
    if evaluation.general_loss is not None and evaluation.base_general_loss is not None:
        out["general_loss_change"] = evaluation.general_loss - evaluation.base_general_loss
    return out


def _log_model_params(catalog: Catalog, run_id: str | None, params: dict[str, object]) -> None:
    """The model run's configuration as MLflow params (after registration: the run is the version's)."""
    from mlflow.entities import Param

    if run_id:
        batch = [Param(k, (v if isinstance(v, str) else json.dumps(v, default=str))[:6000]) for k, v in params.items()]
        catalog.call("log params", catalog.client.log_batch, run_id, params=batch)


def register_transported_model(catalog: Catalog, name: str, model_dir: str | Path, *, source_vector: VersionRef,
                               target_base: VersionRef, method: str, alpha: float, evaluation: Evaluation,
                               gate: GateConfig, options: dict | None = None,
                               progress: Progress | None = None, stop: str | None = "\n") -> Registration:
    """Log a ready-to-serve model (target base + ported vector) and gate its ``candidate`` alias.

    ``model_dir`` is the merged model (``theseus.format=full``); a transported LoRA is registered as
    an adapter instead (:func:`register_transported_adapter`).

    ``stop`` is the text that ends an answer (the workflow's tasks end theirs at a newline); it ships
    in the model's generation config, so a consumer's generation stops there (``None``: no stop).

    The model is logged as the MLflow transformers pipeline of the source vector's task kind
    (``theseus.task_kind``; :mod:`theseus_ops.catalog.flavors`), so a classifier comes back as a
    classifier; ``stop`` matters to generation only.

    Idempotent on (source vector, target base, method, options incl. alpha): a re-run returns the
    existing version and moves no alias.
    """
    def save(source, out: Path) -> None:
        _save_transformers_model(Path(model_dir), out, stop, source.resolved_task_kind)

    return _register_transported(catalog, name, "full", save,
                                 source_vector=source_vector, target_base=target_base, method=method, alpha=alpha,
                                 evaluation=evaluation, gate=gate, options=options, progress=progress)


def register_transported_adapter(catalog: Catalog, name: str, adapter_dir: str | Path, *, base_dir: str | Path,
                                 source_vector: VersionRef, target_base: VersionRef, method: str, alpha: float,
                                 evaluation: Evaluation, gate: GateConfig, options: dict | None = None,
                                 progress: Progress | None = None, stop: str | None = "\n") -> Registration:
    """Log a transported LoRA as a PEFT adapter on its target base (``theseus.format=lora``) and gate ``candidate``.

    ``adapter_dir`` is the transported PEFT adapter (unscaled, as :func:`register_transported_vector`
    takes it); it is saved with its LoRA factors scaled by ``alpha``. ``base_dir`` is a local copy of
    ``target_base``, checked against its registered weights hash: it builds the pipeline (tokenizer,
    signature), but its weights are not uploaded. The registered artifact holds the adapter and the
    tokenizer or image processor; the version's ``theseus.base_model``/``theseus.base_version`` name
    the base, which :func:`~theseus_ops.catalog.serving.load_registered` fetches to load it. For
    generation, the stop ships in MLflow's ``model_config`` (the generation config is the base's).

    Same identity, gate and aliases as :func:`register_transported_model`: idempotent on (source
    vector, target base, method, options incl. alpha).
    """
    from theseus_ops.io.models import inspect_model_dir

    adapter_dir, base_dir = Path(adapter_dir), Path(base_dir)

    def save(source: TaskVectorTags, out: Path) -> None:
        target = get_base(catalog, target_base)
        if _vector_format(adapter_dir) != "lora":
            raise InputError(f"{adapter_dir} is not a LoRA adapter")
        _check_vector_against_base(adapter_dir, target, target_base)
        if inspect_model_dir(base_dir).sha256() != target.sha256:
            raise InputError(f"{base_dir} does not hold the weights of base {target_base} (release {target.release})")
        _save_transformers_adapter(base_dir, adapter_dir, float(alpha), out, stop, source.resolved_task_kind)

    return _register_transported(catalog, name, "lora", save, source_vector=source_vector, target_base=target_base,
                                 method=method, alpha=alpha, evaluation=evaluation, gate=gate, options=options,
                                 progress=progress)


def _register_transported(catalog: Catalog, name: str, fmt: str, save: Callable[[TaskVectorTags, Path], None], *,
                          source_vector: VersionRef, target_base: VersionRef, method: str, alpha: float,
                          evaluation: Evaluation, gate: GateConfig, options: dict | None,
                          progress: Progress | None) -> Registration:
    """The registration both kinds of transported model share: identity, tags, metrics, params, gate, aliases.

    ``save(source_tags, out)`` writes the MLflow model into ``out``; it runs only when no version
    with the same idempotency key exists.
    """
    check_model_name(name)
    options = {**(options or {}), "alpha": float(alpha)}
    source, _target = _transport_context(catalog, source_vector, target_base)
    key = idempotency_key(source_vector, target_base, method, options)
    existing = _existing(catalog, name, {ROLE: TransportedModelTags.ROLE_VALUE, IDEMPOTENCY_KEY: key})
    if existing is not None:
        log.info("%s is already registered as %s/%s", key[:12], name, existing.version)
        return Registration(existing, False)
    decision = decide(evaluation, gate)
    tags = TransportedModelTags(
        task=source.task, base_model=target_base.name, base_version=target_base.version,
        source_base_model=source.base_model, source_base_version=source.base_version,
        transported_from=str(source_vector), method=method, alpha=repr(float(alpha)), metric=source.metric,
        val_metric=repr(evaluation.val_metric), test_metric=repr(evaluation.test_metric),
        base_test_metric=repr(evaluation.base_test_metric),
        general_loss=None if evaluation.general_loss is None else repr(evaluation.general_loss),
        base_general_loss=None if evaluation.base_general_loss is None else repr(evaluation.base_general_loss),
        gate=decision.tag, format=fmt, calibration=calibration_tag(options),
    ).to_tags()
    tags.update({IDEMPOTENCY_KEY: key, OPTIONS_SHA256: options_sha256(options)})
    metrics = model_metrics(source.metric, float(alpha), evaluation)
    with tempfile.TemporaryDirectory(prefix="theseus-mlflow-model-") as tmp:
        saved = Path(tmp) / "model"
        save(source, saved)
        what = "PEFT adapter" if fmt == "lora" else "task vector"
        mv, created = catalog.register_entry(
            name, saved, tags, "model",
            f"{source.task}: {target_base} + {what} ported from {source_vector} by {method}",
            metrics=metrics, progress=progress, unique={ROLE: TransportedModelTags.ROLE_VALUE, IDEMPOTENCY_KEY: key})
    if not created:  # registered at the same moment by another writer, which moves the aliases
        return Registration(mv, False)
    _log_model_params(catalog, mv.run_id, {
        "method": method, "alpha": repr(float(alpha)), "source_vector": str(source_vector),
        "target_base": str(target_base), "source_base": f"{source.base_model}/{source.base_version}",
        "task": source.task, "metric": source.metric, "format": fmt, "gate_margin": repr(gate.margin),
        "gate_max_general_loss_increase": repr(gate.max_general_loss_increase),
        **{f"option.{k}": v for k, v in sorted(options.items()) if k != "alpha" and v is not None}})
    if decision.candidate:
        catalog.set_alias(name, ALIAS_CANDIDATE, mv.version)
        log.info("%s/%s is now %s (%s)", name, mv.version, ALIAS_CANDIDATE, decision.reason)
    else:
        log.info("%s/%s did not pass the gate: %s", name, mv.version, decision.reason)
    if decision.champion:
        catalog.set_alias(name, ALIAS_CHAMPION, mv.version)
    return Registration(mv, True, decision)
