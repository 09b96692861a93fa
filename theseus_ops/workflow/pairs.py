"""The two bases of a release step as local, verified directories, and the task vectors to port across them.

A :class:`Pair` names versions and weight hashes, not just paths, so a step that runs on another
worker than the one that resolved it can fetch identical bases again (``local_pair``).
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from theseus_ops.catalog import Catalog, VersionRef
from theseus_ops.catalog.client import check_model_name
from theseus_ops.catalog.schema import BaseReleaseTags, TaskVectorTags
from theseus_ops.errors import InputError, TheseusError
from theseus_ops.io.models import inspect_model_dir
from theseus_ops.workflow.config import WorkflowConfig
from theseus_ops.workflow.contracts import BaseSide, Pair
from theseus_ops.workflow.reconcile import base_versions, catalog_of

log = logging.getLogger("theseus_ops")


def parse_ref(ref: str) -> VersionRef:
    """``name/version`` (what DAG steps pass around) to a VersionRef."""
    name, sep, version = str(ref).rpartition("/")
    if not sep or not name or not version.isdigit():
        raise InputError(f"{ref!r} is not a registry reference of the form name/version")
    return VersionRef(check_model_name(name), version)


def _local_base(catalog: Catalog, cfg: WorkflowConfig, mv) -> BaseSide:
    """Download a base version into the work dir once; reuse a copy whose weights hash still matches."""
    tags = BaseReleaseTags.from_tags(mv.tags or {}, f"base release {mv.name}/{mv.version}")
    dest = cfg.work_dir / "bases" / mv.name / f"{mv.version}-{tags.sha256[:16]}"
    side = BaseSide(str(mv.version), tags.sha256, str(dest.resolve()), tags.release)
    if (dest / "config.json").is_file():
        try:
            if inspect_model_dir(dest).sha256() == tags.sha256:
                return side
        except TheseusError:
            pass
        log.warning("local copy %s does not match %s/%s; downloading again", dest, mv.name, mv.version)
    if dest.exists():
        shutil.rmtree(dest)
    catalog.download(VersionRef(mv.name, str(mv.version)), dest)
    return side


def resolve_pair(cfg: WorkflowConfig, base_line: str, target_version: str, source_version: str | None = None) -> Pair:
    """Both bases of a release step, downloaded and verified.

    The source defaults to the highest base version below the target (the release it supersedes).
    """
    catalog = catalog_of(cfg)
    versions = {str(v.version): v for v in base_versions(catalog, base_line)}
    target_version = str(target_version)
    if target_version not in versions:
        raise InputError(f"{base_line}/{target_version} is not a registered base release")
    if source_version is None:
        lower = [v for v in versions if int(v) < int(target_version)]
        if not lower:
            raise InputError(f"{base_line}/{target_version} has no earlier base release to port task vectors from")
        source_version = max(lower, key=int)
    source_version = str(source_version)
    if source_version not in versions:
        raise InputError(f"{base_line}/{source_version} is not a registered base release")
    if source_version == target_version:
        raise InputError(f"source and target are the same base version {base_line}/{target_version}")
    return Pair(base_line, _local_base(catalog, cfg, versions[source_version]),
                _local_base(catalog, cfg, versions[target_version]))


def local_pair(cfg: WorkflowConfig, pair: Pair) -> Pair:
    """``pair`` if both base directories exist on this machine, else the same pair resolved here.

    ``resolve_pair`` may run on another worker than the step using its result (Celery queues); the
    pair names versions and hashes, so any worker can fetch the identical bases again.
    """
    if all(side.dir and Path(side.dir, "config.json").is_file() for side in (pair.source, pair.target)):
        return pair
    local = resolve_pair(cfg, pair.base_line, pair.target.version, pair.source.version)
    for name in ("source", "target"):
        if local.side(name).sha256 != pair.side(name).sha256:
            raise InputError(f"{pair.base_line}/{local.side(name).version} changed since the pair was resolved")
    return local


def list_task_vectors(cfg: WorkflowConfig, pair: Pair, tasks: list[str] | None = None) -> list[str]:
    """``name/version`` of every task vector registered on the source base (only ``tasks`` if given)."""
    source = pair.source_ref
    found = catalog_of(cfg).search_versions(tags=TaskVectorTags.search(base_model=source.name,
                                                                       base_version=source.version))
    wanted = set(tasks) if tasks else None
    # registration order (the order the tasks were cataloged in), so the DAG's mapped tasks and the summary agree
    found = sorted(found, key=lambda v: (int(v.creation_timestamp or 0), v.name, int(v.version)))
    return [f"{v.name}/{v.version}" for v in found
            if wanted is None or TaskVectorTags.read(v.tags, "task") in wanted]
