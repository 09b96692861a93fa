"""The catalog schema: registry entries and their ``theseus.*`` tags (see docs/catalog.md).

Three roles of model versions, told apart by ``theseus.role``:

* a base release: a version of its base line, the registered model named after the model (``llama-tiny``);
* a task vector (fine-tuned or transported): a delta file or a LoRA adapter for one base version;
* a transported model: base + task vector, logged with the transformers flavor, ready to serve: merged
  into a full copy (a full delta), or a PEFT adapter on its target base (a LoRA; ``theseus.format``).
"""

from __future__ import annotations

import re
from dataclasses import MISSING, asdict, dataclass, fields
from urllib.parse import urlparse

from theseus_ops.errors import InputError
from theseus_ops.evaluation.config import CUSTOM, GENERATION, check_evaluator_name, check_task_kind
from theseus_ops.service_errors import CatalogError

PREFIX = "theseus."
ROLE = "theseus.role"
ROLE_BASE = "base"
ROLE_TASK_VECTOR = "task_vector"
ROLE_TRANSPORTED_MODEL = "transported_model"
ROLES = (ROLE_BASE, ROLE_TASK_VECTOR, ROLE_TRANSPORTED_MODEL)
FORMATS = ("full", "lora")

# bookkeeping tags theseus-ops writes on every version it creates
IDEMPOTENCY_KEY = "theseus.idempotency_key"
OPTIONS_SHA256 = "theseus.options_sha256"
CONTENT_SHA256 = "theseus.content_sha256"  # digest of the artifact manifest's file list
MANIFEST_SHA256 = "theseus.manifest_sha256"  # sha256 of the manifest file itself
ARTIFACT_PATH = "theseus.artifact_path"
ARTIFACT_FILE = "theseus.artifact_file"  # set when the artifact is a single file

# workflow state kept on base releases (set by the reconciler, read by the watcher and the UI)
SOURCE_URI = "theseus.source_uri"  # where the release landed
PROCESSED_RUN = "theseus.processed_run"  # the summary run that finished the release
ANNOUNCED_AT = "theseus.announced_at"  # when the watcher last announced it (epoch seconds)

# tags on the workflow's MLflow runs (runs, not model versions): the keys that make rerunning a lookup
OUTCOME_KEY_TAG = "theseus.outcome_key"  # a ported vector's run: vector, target base and its hash, the options
SOURCE_VECTOR_TAG = "theseus.source_vector"  # name/version of the vector ported
SOURCE_BASE_TAG = "theseus.source_base"  # name/version of the base ported from
TARGET_BASE_TAG = "theseus.target_base"  # name/version of the base ported to
SELECTED_TAG = "theseus.selected"  # the method (or naive/none) an outcome selected
SUMMARY_TAG = "theseus.release_summary"  # a release's summary run: <base line>/<version>
SUMMARY_KEY_TAG = "theseus.release_summary_key"  # the summary's inputs, so an unchanged rerun reuses it
FAILURE_TAG = "theseus.failed_vector"  # a vector's failure run, per release

ALIAS_CANDIDATE = "candidate"
ALIAS_CHAMPION = "champion"

_TASK = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def check_task(task: str) -> str:
    if not isinstance(task, str) or not _TASK.match(task):
        raise InputError(f"task {task!r} is not a valid name (letters, digits, '.', '_', '-')")
    return task


def check_uri(uri: str, what: str) -> str:
    if not isinstance(uri, str) or not urlparse(uri).scheme or len(urlparse(uri).scheme) < 2:
        raise InputError(f"{what} {uri!r} is not a URI (e.g. s3://bucket/data/sst2?splits=train,validation,test)")
    return uri


@dataclass(frozen=True)
class VersionRef:
    """A registry model version: ``name/version``."""

    name: str
    version: str

    def __str__(self) -> str:
        return f"{self.name}/{self.version}"

    @classmethod
    def parse(cls, text: str) -> VersionRef:
        name, sep, version = str(text).rpartition("/")
        if not sep or not name or not version.isdigit():
            raise InputError(f"{text!r} is not a model version reference NAME/VERSION")
        return cls(name, version)


class _Tags:
    """Dataclass <-> ``theseus.<field>`` tag dict, with every field a string."""

    ROLE_VALUE = ""

    @classmethod
    def tag(cls, field: str) -> str:
        """The tag name of one field (``theseus.<field>``), checked, so no caller spells tag strings."""
        if field not in {f.name for f in fields(cls)}:
            raise ValueError(f"{cls.__name__} has no field {field!r}")
        return PREFIX + field

    @classmethod
    def read(cls, tags: dict[str, str] | None, field: str) -> str | None:
        """One field's tag value, or None: for lenient reads (dedupe, listings) where a full parse could fail."""
        return (tags or {}).get(cls.tag(field))

    @classmethod
    def search(cls, **values: object) -> dict[str, str]:
        """Search conditions (``Catalog.search_versions(tags=...)``) for this role with these field values."""
        return {ROLE: cls.ROLE_VALUE, **{cls.tag(k): str(v) for k, v in values.items()}}

    def to_tags(self) -> dict[str, str]:
        tags = {ROLE: self.ROLE_VALUE}
        for k, v in asdict(self).items():
            if v is not None:
                tags[PREFIX + k] = str(v)
        return tags

    @classmethod
    def from_tags(cls, tags: dict[str, str], where: str):
        if tags.get(ROLE) != cls.ROLE_VALUE:
            raise CatalogError(f"{where} is not a {cls.ROLE_VALUE} entry (theseus.role={tags.get(ROLE)!r})")
        values = {}
        for f in fields(cls):
            value = tags.get(PREFIX + f.name)
            if value is None and f.default is MISSING:
                raise CatalogError(f"{where} lacks tag {PREFIX + f.name}")
            values[f.name] = value if value is not None else f.default
        try:
            return cls(**values)
        except InputError as exc:
            raise CatalogError(f"{where}: invalid tags ({exc})") from exc


@dataclass(frozen=True)
class BaseReleaseTags(_Tags):
    ROLE_VALUE = ROLE_BASE
    release: str
    sha256: str


@dataclass(frozen=True)
class TaskVectorTags(_Tags):
    ROLE_VALUE = ROLE_TASK_VECTOR
    task: str
    base_model: str
    base_version: str
    format: str
    dataset: str
    metric: str
    # set on transported vectors only
    transported_from: str | None = None
    method: str | None = None
    alpha: str | None = None
    alignment: str | None = None
    # how the task is scored (docs/evaluation.md); absent tags mean a generation task, as before
    task_kind: str | None = None
    evaluator: str | None = None  # module:function or an entry point (kind custom)
    chat_template: str | None = None  # "true" | "false"
    max_new_tokens: str | None = None
    general_dataset: str | None = None  # URI of a second, untouched task (general capability)
    calibration: str | None = None  # a transported vector's calibration recipe and rows used (JSON)

    def __post_init__(self) -> None:
        check_task(self.task)
        if self.format not in FORMATS:
            raise InputError(f"task-vector format must be one of {', '.join(FORMATS)}, got {self.format!r}")
        check_uri(self.dataset, "dataset")
        if not self.metric:
            raise InputError("a task vector needs the name of its metric (e.g. accuracy)")
        transported = (self.transported_from, self.method, self.alpha, self.alignment)
        if any(v is not None for v in transported) and not all(v is not None for v in transported):
            raise InputError("a transported task vector needs transported_from, method, alpha and alignment")
        check_task_kind(self.resolved_task_kind)
        if self.evaluator is not None:
            check_evaluator_name(self.evaluator)
        if (self.resolved_task_kind == CUSTOM) != (self.evaluator is not None):
            raise InputError("a custom task kind and an evaluator go together (kind custom, evaluator "
                             "module:function or an entry-point name)")
        if self.chat_template not in (None, "true", "false"):
            raise InputError(f"chat_template must be true or false, got {self.chat_template!r}")
        if self.max_new_tokens is not None and (not self.max_new_tokens.isdigit() or int(self.max_new_tokens) < 1):
            raise InputError(f"max_new_tokens must be a positive integer, got {self.max_new_tokens!r}")
        if self.general_dataset is not None:
            check_uri(self.general_dataset, "general dataset")

    @property
    def base(self) -> VersionRef:
        return VersionRef(self.base_model, self.base_version)

    @property
    def resolved_task_kind(self) -> str:
        """The task kind; a vector cataloged without one (no ``task_kind`` tag) is a generation task."""
        return self.task_kind or GENERATION

    @property
    def uses_chat_template(self) -> bool:
        return self.chat_template == "true"

    @property
    def new_tokens(self) -> int | None:
        return None if self.max_new_tokens is None else int(self.max_new_tokens)

    def evaluation_fields(self) -> dict[str, str | None]:
        """The tags that say how the task is scored; a transported vector carries its source's."""
        return {name: getattr(self, name) for name in EVALUATION_FIELDS}


EVALUATION_FIELDS = ("task_kind", "evaluator", "chat_template", "max_new_tokens", "general_dataset")


def evaluation_tags(task_kind: str | None = None, evaluator: str | None = None, chat_template: bool | None = None,
                    max_new_tokens: int | None = None, general_dataset: str | None = None) -> dict[str, str | None]:
    """Typed evaluation settings as the string fields of :class:`TaskVectorTags` (None: tag left out)."""
    if chat_template is not None and not isinstance(chat_template, bool):
        raise InputError(f"chat_template must be true or false, got {chat_template!r}")
    if max_new_tokens is not None and (isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int)):
        raise InputError(f"max_new_tokens must be a positive integer, got {max_new_tokens!r}")
    return {"task_kind": task_kind, "evaluator": evaluator,
            "chat_template": None if chat_template is None else str(chat_template).lower(),
            "max_new_tokens": None if max_new_tokens is None else str(max_new_tokens),
            "general_dataset": general_dataset}


@dataclass(frozen=True)
class TransportedModelTags(_Tags):
    ROLE_VALUE = ROLE_TRANSPORTED_MODEL
    task: str
    base_model: str  # the target base (the model this one is built on)
    base_version: str
    source_base_model: str
    source_base_version: str
    transported_from: str  # the source task vector, name/version
    method: str
    alpha: str
    metric: str
    val_metric: str
    test_metric: str
    base_test_metric: str
    general_loss: str | None = None
    base_general_loss: str | None = None
    gate: str | None = None  # passed | failed: reason
    # full: a merged model; lora: a PEFT adapter on the target base (base_model/base_version). Absent: full
    format: str | None = None
    calibration: str | None = None  # the calibration recipe and rows used (JSON), for a calibrated method

    def __post_init__(self) -> None:
        if self.format not in (None, *FORMATS):
            raise InputError(f"transported-model format must be one of {', '.join(FORMATS)}, got {self.format!r}")

    @property
    def base(self) -> VersionRef:
        """The target base the model is built on."""
        return VersionRef(self.base_model, self.base_version)

    @property
    def is_adapter(self) -> bool:
        """Whether the artifact is a PEFT adapter that needs its base (``format`` lora) rather than a merged model."""
        return self.format == "lora"
