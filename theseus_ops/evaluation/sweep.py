"""The one sweep-and-select routine: α on val per method, test at that α, the target base as a candidate.

Protocol: the target base is scored on val and test (and its general capability). For each method
its transported delta is obtained once, α is swept on val, the best α is taken (ties: the task
metric's tie-breaker, then the smaller α), and test and general capability are scored at that α.
The method best on val is selected, the untouched base included; on a tie the base wins, then the
method listed first. Nothing is ever chosen on test, and a model worse than the base on val is
never selected.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import torch

from theseus_ops.evaluation.config import Metric
from theseus_ops.evaluation.delta import DeltaApplier
from theseus_ops.evaluation.protocol import Evaluator
from theseus_ops.evaluation.registry import metric_of, tie_metric_of
from theseus_ops.evaluation.results import Candidate, NotApplicable, Scores, Selection, SweepPoint

Delta = dict[str, torch.Tensor]
DeltaOf = Callable[[str], "Delta | NotApplicable"]
Report = Callable[[str], None]


def rank_key(scores: Scores, metric: Metric, tie: Metric | None) -> tuple[float, ...]:
    """Larger is better: the task metric, then its tie-breaker, each signed by its direction."""
    key = [scores[metric.name] if metric.higher_is_better else -scores[metric.name]]
    if tie is not None and tie.name in scores:
        key.append(scores[tie.name] if tie.higher_is_better else -scores[tie.name])
    return tuple(key)


def best_alpha(sweep: Sequence[SweepPoint], metric: Metric, tie: Metric | None) -> SweepPoint:
    """The sweep point best on val; ties go to the smaller α (the smaller change to the base)."""
    return max(sweep, key=lambda p: (*rank_key(p.scores, metric, tie), -p.alpha))


def select(candidates: dict[str, Candidate], metric: Metric, tie: Metric | None) -> str:
    """The candidate best on val; the base wins ties, then the candidate listed first."""
    return max(candidates, key=lambda m: (*rank_key(candidates[m].val, metric, tie), m == "base"))


def sweep_and_select(evaluator: Evaluator, model: torch.nn.Module, methods: Sequence[str], alphas: Sequence[float],
                     delta_of: DeltaOf, *, metric: str | None = None, report: Report | None = None,
                     base: Candidate | None = None) -> Selection:
    """Score the base and every method's delta on ``model`` (loaded once by ``evaluator.load``), and select.

    ``delta_of(method)`` transports and returns the method's dense delta (checkpoint key ->
    tensor), or a :class:`NotApplicable`. ``base`` reuses a base already scored on this model
    (the bench scores it once for several task vectors). The model holds the base weights again
    when this returns.
    """
    say = report or (lambda _m: None)
    primary = metric_of(evaluator, metric or evaluator.config.metric)
    tie = tie_metric_of(evaluator, primary.name)
    applier = DeltaApplier(model)
    applier.restore()
    if base is None:
        t0 = time.perf_counter()
        base = Candidate("base", 0.0, evaluator.score(model, "val"), evaluator.score(model, "test"),
                         evaluator.general(model), eval_seconds=round(time.perf_counter() - t0, 3))
    say(f"base: val {primary.name} {base.val[primary.name]:.3f}")
    results: dict[str, Candidate | NotApplicable] = {}
    try:
        for k, method in enumerate(methods, 1):
            t0 = time.perf_counter()
            say(f"method {k}/{len(methods)} {method}: transporting")
            delta = delta_of(method)
            if isinstance(delta, NotApplicable):
                results[method] = delta
                say(f"method {k}/{len(methods)} {method}: not applicable: {delta.reason}")
                continue
            transport_s = time.perf_counter() - t0
            bound = applier.bind(delta)
            sweep = []
            for j, alpha in enumerate(alphas, 1):
                applier.set(bound, alpha)
                sweep.append(SweepPoint(float(alpha), evaluator.score(model, "val")))
                say(f"method {k}/{len(methods)} {method}: alpha {j}/{len(alphas)} = {alpha:g}: val {primary.name} "
                    f"{sweep[-1].scores[primary.name]:.3f}")
            best = best_alpha(sweep, primary, tie)
            applier.set(bound, best.alpha)
            test, general = evaluator.score(model, "test"), evaluator.general(model)
            applier.restore()
            results[method] = Candidate(method, best.alpha, best.scores, test, general, tuple(sweep),
                                        round(transport_s, 3), round(time.perf_counter() - t0 - transport_s, 3))
            say(f"method {k}/{len(methods)} {method}: alpha {best.alpha:g} chosen on val ({primary.name} "
                f"{best.scores[primary.name]:.3f}), test {test[primary.name]:.3f}")
    finally:
        applier.restore()
    candidates = {"base": base, **{m: r for m, r in results.items() if isinstance(r, Candidate)}}
    chosen = select(candidates, primary, tie)
    say(f"selected {chosen} on val ({primary.name} {candidates[chosen].val[primary.name]:.3f})")
    return Selection(primary.name, None if tie is None else tie.name, base, results, chosen, primary.higher_is_better)


def score_at(evaluator: Evaluator, model: torch.nn.Module, delta: Delta | None, alpha: float,
             splits: Sequence[str], general: bool = False) -> tuple[dict[str, Scores], object]:
    """(scores per split, general score or None) of base + α·δ; the model holds the base again afterwards.

    For scores outside a sweep: a source model with its own fine-tune, an upper-bound reference.
    """
    applier = DeltaApplier(model)
    try:
        applier.set(None if delta is None else applier.bind(delta), alpha)
        scores = {split: evaluator.score(model, split) for split in splits}
        return scores, (evaluator.general(model) if general else None)
    finally:
        applier.restore()
