"""``make demo-real``'s seeding on the real fixtures: two base lines, four task vectors, the right tags.

Marked ``real`` and skipped without the `real` extra, as tests/test_real_models.py (the fixtures are
built once and cached under .theseus/real). Only the seeding runs here (landing, registering,
cataloging: seconds); the DAGs on these vectors are ``make demo-real`` itself.
"""

from __future__ import annotations

import json

from tests.real_support import REAL_MARKS

pytestmark = REAL_MARKS


def test_seed_real_catalogs_both_lines_once(tmp_path):
    from theseus_ops.catalog import Catalog, CatalogConfig
    from theseus_ops.catalog.schema import TaskVectorTags
    from theseus_ops.demo.real import build_real
    from theseus_ops.demo.real.seed import GENERAL_TASK, seed_real
    from theseus_ops.storage import StorageConfig, open_zone, read_landed
    from theseus_ops.workflow import WorkflowConfig
    from theseus_ops.workflow.release import parse_ref

    fx = build_real(progress=print)
    cfg = WorkflowConfig(catalog=CatalogConfig(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}",
                                               artifact_location=str(tmp_path / "artifacts")),
                         storage=StorageConfig(url=str(tmp_path / "landing")), work_dir=tmp_path / "work")
    first = seed_real(cfg, fx, tmp_path / "datasets", rows=8)
    assert [s["family"] for s in first] == ["real-smollm2", "real-minilm"]
    catalog = Catalog(cfg.catalog)
    kinds = {"real-smollm2": ("generation", "exact_match"), "real-minilm": ("classification", "accuracy")}
    for seeded in first:
        assert read_landed(open_zone(cfg.storage), seeded["family"], "v2-wide") is not None  # for the watcher
        assert set(seeded["vectors"]) == {f"{seeded['family']}-topic", f"{seeded['family']}-topic-lora"}
        for name, ref in seeded["vectors"].items():
            tags = TaskVectorTags.from_tags(catalog.get_version(parse_ref(ref)).tags, ref)
            assert (tags.resolved_task_kind, tags.metric) == kinds[seeded["family"]], ref
            assert tags.format == ("lora" if name.endswith("-lora") else "full")
            assert tags.base_model == seeded["family"] and tags.base_version == seeded["source_version"]
            data = tags.dataset.removeprefix("file://")
            assert len((tmp_path / "datasets" / data.rsplit("/", 1)[1] / "test.jsonl").read_text().splitlines()) == 8
            if seeded["family"] == "real-smollm2":
                assert tags.uses_chat_template and tags.new_tokens == 4
                assert json.loads((fx.task("bbc-headline") / "task.json").read_text())["kind"] == "generation"
            else:
                assert tags.general_dataset.endswith(f"/{GENERAL_TASK}-8")
    assert seed_real(cfg, fx, tmp_path / "datasets", rows=8) == first  # idempotent: nothing new registered
