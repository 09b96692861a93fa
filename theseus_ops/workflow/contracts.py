"""Typed contracts between the workflow's steps: releases, pairs, jobs, outcomes, summaries.

Inside the library every step takes and returns these frozen dataclasses, validated on
construction, so a malformed value fails where it is made rather than three tasks later as a
``KeyError``. An orchestrator passes values between tasks as JSON (Airflow's XCom), so each type
has ``to_json()`` and ``from_json()``; convert at that boundary only. The JSON shapes are the ones
the DAG always passed and the records (``outcome.json``, ``summary.json``) always held: the plugin,
the summary view and older records read them unchanged. A base line goes out as ``"family"``
(``BASE_LINE_KEY``), its name in every JSON the workflow ever wrote.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from theseus_ops.catalog.client import check_model_name
from theseus_ops.catalog.schema import VersionRef
from theseus_ops.errors import InputError
from theseus_ops.storage.releases import BASE_LINE_KEY

Json = dict[str, Any]
TASK_KIND_KEY = "kind"  # an outcome's task kind in its JSON (outcome.json, XCom, summary.json), as always


def _version(value: object, what: str) -> str:
    """A registry version number as the string the registry uses (``2``, never ``2.0``)."""
    text = str(value)
    if not text.isdigit():
        raise InputError(f"{what} must be a registry version number, got {value!r}")
    return text


def _mapping(value: object, what: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise InputError(f"{what} must be a JSON object, got {type(value).__name__}")
    return value


def _field(data: Mapping[str, Any], key: str, what: str) -> Any:
    try:
        return data[key]
    except KeyError:
        raise InputError(f"{what} lacks {key!r}") from None


# -- releases ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Release:
    """A base release to port to: ``base_line/version``, and the base version it supersedes (None: the one below)."""

    base_line: str
    version: str
    release: str | None = None  # the landing-zone release name; None when named by hand (Params)
    supersedes: str | None = None

    def __post_init__(self) -> None:
        check_model_name(self.base_line)
        object.__setattr__(self, "version", _version(self.version, "a release version"))
        if self.supersedes is not None:
            object.__setattr__(self, "supersedes", _version(self.supersedes, "the superseded version"))

    @property
    def key(self) -> tuple[str, str]:
        """Identity of the release: one event per key is enough, however often it was announced."""
        return self.base_line, self.version

    def to_json(self) -> Json:
        return {BASE_LINE_KEY: self.base_line, "version": self.version, "release": self.release,
                "supersedes": self.supersedes}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Release:
        data = _mapping(data, "a release")
        return cls(_field(data, BASE_LINE_KEY, "a release"), _field(data, "version", "a release"), data.get("release"),
                   data.get("supersedes"))


# -- pairs ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class BaseSide:
    """One base of a pair: its registry version, weights hash, and where it lies on this worker.

    ``dir`` is only valid on the worker that resolved it; ``version`` and ``sha256`` let any other
    worker fetch the identical weights again (``local_pair``).
    """

    version: str
    sha256: str
    dir: str = ""
    release: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "version", _version(self.version, "a base version"))
        if not isinstance(self.sha256, str):
            raise InputError(f"a base's sha256 must be a string, got {self.sha256!r}")

    def to_json(self) -> Json:
        return {"version": self.version, "release": self.release, "sha256": self.sha256, "dir": self.dir}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> BaseSide:
        data = _mapping(data, "a pair's base")
        return cls(_field(data, "version", "a pair's base"), _field(data, "sha256", "a pair's base"),
                   str(data.get("dir") or ""), data.get("release"))


@dataclass(frozen=True)
class Pair:
    """The (source, target) bases of one release step of ``base_line``: what every vector is ported across."""

    base_line: str
    source: BaseSide
    target: BaseSide

    def __post_init__(self) -> None:
        check_model_name(self.base_line)
        if self.source.version == self.target.version:
            raise InputError(f"source and target are the same base version {self.base_line}/{self.target.version}")

    @property
    def source_ref(self) -> VersionRef:
        return VersionRef(self.base_line, self.source.version)

    @property
    def target_ref(self) -> VersionRef:
        return VersionRef(self.base_line, self.target.version)

    def side(self, name: str) -> BaseSide:
        """``source`` or ``target`` by name (the steps that treat both bases alike loop over the names)."""
        if name not in ("source", "target"):
            raise InputError(f"a pair has a source and a target, not {name!r}")
        return self.source if name == "source" else self.target

    def to_json(self) -> Json:
        return {BASE_LINE_KEY: self.base_line, "source": self.source.to_json(), "target": self.target.to_json()}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Pair:
        data = _mapping(data, "a pair")
        try:
            return cls(data[BASE_LINE_KEY], BaseSide.from_json(data["source"]), BaseSide.from_json(data["target"]))
        except (KeyError, TypeError) as exc:
            raise InputError(f"not a pair from resolve_pair: missing {exc}") from exc


# -- jobs -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Job:
    """One unit of GPU work: port ``vector`` (``name/version``) across ``pair``; one mapped task each."""

    pair: Pair
    vector: str

    def __post_init__(self) -> None:
        VersionRef.parse(self.vector)

    @property
    def label(self) -> str:
        """What the UI shows for the mapped task (``map_index_template``)."""
        return f"{self.vector} -> {self.pair.target_ref}"

    def to_json(self) -> Json:
        return {"pair": self.pair.to_json(), "vector": self.vector, "label": self.label}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Job:
        data = _mapping(data, "a job")
        return cls(Pair.from_json(_field(data, "pair", "a job")), _field(data, "vector", "a job"))


# -- outcomes -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Registered:
    """What a vector's outcome registered: the transported vector and serving model (None: the base was kept)."""

    task_vector: str | None = None
    model: str | None = None
    gate: str | None = None
    candidate: bool = False
    champion: bool = False

    def __post_init__(self) -> None:
        if (self.task_vector is None) != (self.model is None):
            raise InputError("an outcome registers a transported vector and its model together, or neither")
        if (self.candidate or self.champion) and self.model is None:
            raise InputError("only a registered model can be a candidate or the champion")

    def to_json(self) -> Json:
        return {"task_vector": self.task_vector, "model": self.model, "gate": self.gate,
                "candidate": self.candidate, "champion": self.champion}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Registered:
        data = _mapping(data, "an outcome's registrations")
        return cls(data.get("task_vector"), data.get("model"), data.get("gate"), bool(data.get("candidate")),
                   bool(data.get("champion")))


def legacy_tie_metric(metric: str) -> str:
    """The tie-breaker of outcomes recorded before it was stored: generation's pair of metrics."""
    return "token_accuracy" if metric == "exact_match" else "exact_match"


@dataclass(frozen=True)
class Outcome:
    """One task vector ported to the pair's target: every method at its α on val/test, the choice, the registrations.

    ``base`` and ``methods`` are the evaluation's own records (``Candidate.as_dict`` /
    ``NotApplicable.as_dict``), kept as JSON because the plots and the summary table read them as
    recorded, old records included.
    """

    vector: str
    task: str
    dataset: str
    source_base: str
    target_base: str
    metric: str
    base: Json
    methods: dict[str, Json]
    selected: str
    selected_alpha: float
    selected_test: float
    base_test: float
    registered: Registered
    outcome_key: str
    tie_metric: str | None = None
    task_kind: str | None = None  # JSON key "kind" (TASK_KIND_KEY)
    general_metric: str | None = None
    general_loss_change: float | None = None
    reused: bool = False
    seconds: float = 0.0
    outcome_run: str | None = None

    def __post_init__(self) -> None:
        for ref in (self.vector, self.source_base, self.target_base):
            VersionRef.parse(ref)
        if self.selected != "base" and self.selected not in self.methods:
            raise InputError(f"outcome of {self.vector} selects {self.selected!r}, which it did not evaluate")
        if (self.selected == "base") != (self.registered.model is None):
            raise InputError(f"outcome of {self.vector}: a model is registered exactly when a method was selected")
        if not self.outcome_key:
            raise InputError(f"outcome of {self.vector} has no outcome key")

    @property
    def failed(self) -> bool:
        return False

    def to_json(self) -> Json:
        """The recorded shape (``outcome.json``, the ``port`` task's XCom), in its historical key order."""
        out: Json = {
            "vector": self.vector, "task": self.task, "dataset": self.dataset, "source_base": self.source_base,
            "target_base": self.target_base, "metric": self.metric, "tie_metric": self.tie_metric,
            TASK_KIND_KEY: self.task_kind,
            "general_metric": self.general_metric, "base": self.base, "methods": self.methods,
            "selected": self.selected, "selected_alpha": self.selected_alpha, "selected_test": self.selected_test,
            "base_test": self.base_test, "general_loss_change": self.general_loss_change,
            "registered": self.registered.to_json(), "outcome_key": self.outcome_key, "reused": self.reused,
            "seconds": self.seconds,
        }
        if self.outcome_run is not None:
            out["outcome_run"] = self.outcome_run
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Outcome:
        data = _mapping(data, "an outcome")
        what = f"the outcome of {data.get('vector', '?')}"
        metric = _field(data, "metric", what)
        return cls(
            vector=_field(data, "vector", what), task=_field(data, "task", what), dataset=_field(data, "dataset", what),
            source_base=_field(data, "source_base", what), target_base=_field(data, "target_base", what),
            metric=metric, base=dict(_field(data, "base", what)), methods=dict(_field(data, "methods", what)),
            selected=_field(data, "selected", what), selected_alpha=_field(data, "selected_alpha", what),
            selected_test=_field(data, "selected_test", what), base_test=_field(data, "base_test", what),
            registered=Registered.from_json(_field(data, "registered", what)),
            outcome_key=_field(data, "outcome_key", what),
            tie_metric=data["tie_metric"] if "tie_metric" in data else legacy_tie_metric(metric),
            task_kind=data.get(TASK_KIND_KEY), general_metric=data.get("general_metric"),
            general_loss_change=data.get("general_loss_change"), reused=bool(data.get("reused", False)),
            seconds=float(data.get("seconds") or 0.0), outcome_run=data.get("outcome_run"))


@dataclass(frozen=True)
class Failure:
    """A listed vector without an outcome, and why (the recorded error, or that its task never finished)."""

    vector: str
    error: str

    def __post_init__(self) -> None:
        if not self.error:
            raise InputError(f"a failure of {self.vector} needs its error message")

    @property
    def failed(self) -> bool:
        return True

    def to_json(self) -> Json:
        return {"vector": self.vector, "error": self.error}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Failure:
        data = _mapping(data, "a failure")
        return cls(str(_field(data, "vector", "a failure")), str(_field(data, "error", "a failure")))


Result = Outcome | Failure


def result_from_json(data: Mapping[str, Any]) -> Result:
    """An outcome, or a failure entry (``{"vector", "error"}``) as ``collect_outcomes`` writes them."""
    data = _mapping(data, "an outcome")
    if "error" in data or "methods" not in data:
        return Failure(str(data.get("vector", "?")), str(data.get("error") or "no outcome"))
    return Outcome.from_json(data)


# -- release summaries ----------------------------------------------------------------------------
@dataclass(frozen=True)
class ReleaseSummary:
    """What one release's run produced: its summary run, the failed vectors, the candidate models.

    ``results`` (every listed vector's outcome or failure) stays in the library: the XCom carries
    only the counts and ids, as it always did.
    """

    base_line: str
    version: str
    summary_run: str
    vectors: int
    failed: tuple[Failure, ...] = ()
    candidates: tuple[str, ...] = ()
    results: tuple[Result, ...] = field(default=(), compare=False)

    def __post_init__(self) -> None:
        check_model_name(self.base_line)
        object.__setattr__(self, "version", _version(self.version, "a release version"))
        if not self.summary_run:
            raise InputError(f"the summary of {self.base_line}/{self.version} needs its run id")
        if len(self.failed) > self.vectors:
            raise InputError(f"{self.base_line}/{self.version}: more failures than vectors")

    def to_json(self) -> Json:
        return {BASE_LINE_KEY: self.base_line, "version": self.version, "summary_run": self.summary_run,
                "vectors": self.vectors, "failed": [f.to_json() for f in self.failed],
                "candidates": list(self.candidates)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ReleaseSummary:
        """The XCom shape back (without ``results``, which the XCom does not carry)."""
        data = _mapping(data, "a release summary")
        what = "a release summary"
        return cls(_field(data, BASE_LINE_KEY, what), _field(data, "version", what), _field(data, "summary_run", what),
                   int(_field(data, "vectors", what)), tuple(Failure.from_json(f) for f in data.get("failed") or ()),
                   tuple(data.get("candidates") or ()))
