"""Typed results of scoring and of the sweep-and-select routine, with their JSON forms.

The JSON forms are the workflow's recorded outcome entries (``alpha``, ``val``, ``test``,
``general_loss``, ``sweep``, ``seconds``), so stored outcomes, summaries and plots read them as
before.
"""

from __future__ import annotations

from dataclasses import dataclass, field

Scores = dict[str, float]


@dataclass(frozen=True)
class GeneralScore:
    """A general-capability measure: ``value`` as named, ``loss`` the lower-is-better number the gate compares.

    LMs: held-out LM loss (``value == loss``). Classifiers: accuracy on a second, untouched task,
    whose ``loss`` is the error rate ``1 - accuracy``.
    """

    name: str
    value: float
    loss: float


@dataclass(frozen=True)
class SweepPoint:
    alpha: float
    scores: Scores

    def as_dict(self) -> dict:
        return {"alpha": self.alpha, **self.scores}


@dataclass(frozen=True)
class Candidate:
    """The target base (``method="base"``, α 0) or one method's transported delta at its chosen α."""

    method: str
    alpha: float
    val: Scores
    test: Scores
    general: GeneralScore | None = None
    sweep: tuple[SweepPoint, ...] = ()
    transport_seconds: float = 0.0
    eval_seconds: float = 0.0

    @property
    def general_loss(self) -> float | None:
        return None if self.general is None else self.general.loss

    @property
    def seconds(self) -> float:
        return round(self.transport_seconds + self.eval_seconds, 3)

    def as_dict(self) -> dict:
        out: dict = {"alpha": self.alpha, "val": dict(self.val), "test": dict(self.test),
                     "general_loss": self.general_loss}
        if self.method != "base":
            out.update({"sweep": [p.as_dict() for p in self.sweep], "seconds": self.seconds,
                        "transport_seconds": self.transport_seconds})
        out["eval_seconds"] = self.eval_seconds  # where a port's time goes: transporting, or scoring
        return out


@dataclass(frozen=True)
class NotApplicable:
    """A method that does not apply to the pair (a shape rule, no LoRA support...): recorded, not an error."""

    method: str
    reason: str

    def as_dict(self) -> dict:
        return {"not_applicable": self.reason}


@dataclass(frozen=True)
class Selection:
    """Every candidate of one task vector, and the one chosen on val (``"base"`` keeps the target base).

    ``metric`` ranks the candidates (``higher_is_better`` its direction); ``tie_metric`` breaks its ties.
    """

    metric: str
    tie_metric: str | None
    base: Candidate
    methods: dict[str, Candidate | NotApplicable] = field(default_factory=dict)
    selected: str = "base"
    higher_is_better: bool = True

    @property
    def chosen(self) -> Candidate:
        chosen = self.base if self.selected == "base" else self.methods[self.selected]
        assert isinstance(chosen, Candidate)
        return chosen

    def candidates(self) -> dict[str, Candidate]:
        return {"base": self.base, **{m: r for m, r in self.methods.items() if isinstance(r, Candidate)}}
