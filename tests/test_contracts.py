"""The workflow's typed contracts: validated on construction, and JSON in the shapes XCom and the records always had.

No servers: what these check is that a malformed value fails where it is made, that ``to_json``
and ``from_json`` round-trip, that the JSON keeps the historical keys (the plugin, the summary
view and old ``outcome.json`` records read them), and the DAG's release selection.
"""

from __future__ import annotations

import pytest

from theseus_ops.catalog.schema import ROLE, BaseReleaseTags, TaskVectorTags
from theseus_ops.errors import InputError
from theseus_ops.workflow import WorkflowConfig
from theseus_ops.workflow.contracts import (
    BaseSide,
    Failure,
    Job,
    Outcome,
    Pair,
    Registered,
    Release,
    ReleaseSummary,
    result_from_json,
)
from theseus_ops.workflow.steps import failure_message, select_releases

PAIR = {"family": "fam", "source": {"version": "1", "release": "v1", "sha256": "a" * 64, "dir": "/w/bases/fam/1"},
        "target": {"version": "2", "release": "v2", "sha256": "b" * 64, "dir": "/w/bases/fam/2"}}
OUTCOME_KEYS = ["vector", "task", "dataset", "source_base", "target_base", "metric", "tie_metric", "kind",
                "general_metric", "base", "methods", "selected", "selected_alpha", "selected_test", "base_test",
                "general_loss_change", "registered", "outcome_key", "reused", "seconds"]


def outcome_json(**changes) -> dict:
    scores = {"exact_match": 0.5, "token_accuracy": 0.75}
    out = {"vector": "fam-upper/3", "task": "upper", "dataset": "file:///data/upper", "source_base": "fam/1",
           "target_base": "fam/2", "metric": "exact_match", "tie_metric": "token_accuracy", "kind": "generation",
           "general_metric": "loss", "base": {"alpha": 0.0, "val": scores, "test": scores, "general_loss": 2.0},
           "methods": {"pad": {"alpha": 3.0, "val": scores, "test": scores, "general_loss": 2.1, "sweep": [],
                               "seconds": 1.0},
                       "naive": {"not_applicable": "naive needs identical shapes"}},
           "selected": "pad", "selected_alpha": 3.0, "selected_test": 0.5, "base_test": 0.5,
           "general_loss_change": 0.1,
           "registered": {"task_vector": "fam-upper/4", "model": "fam-upper-serving/1", "gate": "passed",
                          "candidate": True, "champion": False},
           "outcome_key": "k" * 64, "reused": False, "seconds": 12.5}
    out.update(changes)
    return out


def test_pair_round_trips_and_keeps_its_xcom_shape():
    pair = Pair.from_json(PAIR)
    assert pair.to_json() == PAIR and Pair.from_json(pair.to_json()) == pair
    assert (str(pair.source_ref), str(pair.target_ref)) == ("fam/1", "fam/2") and pair.side("target").release == "v2"
    legacy = {"family": "fam", "source": {"version": 1, "sha256": "a"}, "target": {"version": "2", "sha256": "b"}}
    assert Pair.from_json(legacy).source == BaseSide("1", "a")  # no release, no dir: resolved elsewhere
    with pytest.raises(InputError, match="not a pair from resolve_pair"):
        Pair.from_json({"family": "fam", "source": PAIR["source"]})
    with pytest.raises(InputError, match="same base version"):
        Pair.from_json({**PAIR, "target": PAIR["source"]})
    with pytest.raises(InputError, match="version number"):
        BaseSide("two", "b")


def test_job_carries_its_label_and_refuses_a_bad_vector():
    job = Job(Pair.from_json(PAIR), "fam-upper/3")
    assert job.to_json() == {"pair": PAIR, "vector": "fam-upper/3", "label": "fam-upper/3 -> fam/2"}
    assert Job.from_json(job.to_json()) == job
    with pytest.raises(InputError, match="NAME/VERSION"):
        Job(Pair.from_json(PAIR), "fam-upper")


def test_outcome_round_trips_in_the_recorded_key_order():
    data = outcome_json()
    outcome = Outcome.from_json(data)
    assert outcome.to_json() == data and list(outcome.to_json()) == OUTCOME_KEYS
    assert outcome.registered.candidate and not outcome.failed
    ran = Outcome.from_json({**data, "reused": True, "outcome_run": "run123"})
    assert ran.to_json()["outcome_run"] == "run123" and list(ran.to_json()) == [*OUTCOME_KEYS, "outcome_run"]
    old = {k: v for k, v in data.items() if k not in ("tie_metric", "kind", "general_metric")}
    assert Outcome.from_json(old).tie_metric == "token_accuracy"  # records from before it was stored


def test_outcome_refuses_what_cannot_have_happened():
    with pytest.raises(InputError, match="did not evaluate"):
        Outcome.from_json(outcome_json(selected="theseus"))
    kept = {"task_vector": None, "model": None, "gate": None, "candidate": False, "champion": False}
    with pytest.raises(InputError, match="exactly when a method was selected"):
        Outcome.from_json(outcome_json(registered=kept))
    assert Outcome.from_json(outcome_json(selected="base", registered=kept)).registered == Registered()
    with pytest.raises(InputError, match="together"):
        Registered(task_vector="fam-upper/4")
    with pytest.raises(InputError, match="lacks 'registered'"):
        Outcome.from_json({k: v for k, v in outcome_json().items() if k != "registered"})


def test_failures_and_summaries():
    assert result_from_json({"vector": "fam-x/1", "error": "boom"}) == Failure("fam-x/1", "boom")
    assert isinstance(result_from_json(outcome_json()), Outcome)
    summary = ReleaseSummary("fam", "2", "run1", 3, failed=(Failure("fam-x/1", "boom"),),
                             candidates=("fam-upper-serving/1",))
    assert summary.to_json() == {"family": "fam", "version": "2", "summary_run": "run1", "vectors": 3,
                                 "failed": [{"vector": "fam-x/1", "error": "boom"}],
                                 "candidates": ["fam-upper-serving/1"]}
    assert ReleaseSummary.from_json(summary.to_json()) == summary
    assert failure_message([summary]) == "1 task vector(s) failed: fam-x/1: boom"
    assert failure_message([ReleaseSummary("fam", "2", "run1", 3)]) is None
    with pytest.raises(InputError, match="run id"):
        ReleaseSummary("fam", "2", "", 1)


def test_release_selection_without_the_registry(tmp_path):
    cfg = WorkflowConfig(work_dir=tmp_path)
    assert [r.to_json() for r in select_releases(cfg, "fam", "3", "1")] == [
        {"family": "fam", "version": "3", "release": None, "supersedes": "1"}]
    with pytest.raises(InputError, match="source_version needs target_version"):
        select_releases(cfg, source_version="1")
    events = [{"family": "fam", "version": "2", "supersedes": "1", "release": "v2"},
              {"family": "fam", "version": "2", "supersedes": "1", "release": "v2"},  # announced twice
              {"family": "other", "version": "5", "supersedes": "4", "release": "r5"}, {"unrelated": True}]
    assert [r.key for r in select_releases(cfg, announced=events)] == [("fam", "2"), ("other", "5")]
    assert Release.from_json(events[0]).to_json() == events[0]


def test_the_base_line_goes_out_as_family():
    """In Python it is the base line; in every JSON it keeps its historical key, from one constant."""
    from theseus_ops.storage import BASE_LINE_KEY, LandedRelease
    from theseus_ops.storage.manifest import Manifest

    assert BASE_LINE_KEY == "family"
    release, pair = Release("fam", "2", "v2", "1"), Pair.from_json(PAIR)
    assert (release.base_line, pair.base_line) == ("fam", "fam")
    assert release.to_json()[BASE_LINE_KEY] == pair.to_json()[BASE_LINE_KEY] == "fam"
    assert ReleaseSummary("fam", "2", "run1", 0).to_json()[BASE_LINE_KEY] == "fam"
    landed = LandedRelease("fam", "r1", Manifest((), {}), "file:///zone/fam/r1")
    assert landed.as_dict()[BASE_LINE_KEY] == "fam" and landed.file_key("a.bin") == "fam/r1/a.bin"


def test_tag_names_come_from_the_schema():
    assert BaseReleaseTags.tag("sha256") == "theseus.sha256"
    assert TaskVectorTags.search(base_model="fam", base_version=1) == {
        ROLE: "task_vector", "theseus.base_model": "fam", "theseus.base_version": "1"}
    assert TaskVectorTags.read({"theseus.task": "upper"}, "task") == "upper"
    assert TaskVectorTags.read(None, "task") is None
    with pytest.raises(ValueError, match="no field 'nope'"):
        BaseReleaseTags.tag("nope")
