"""Reconciling the landing zone with the registry: which base releases exist and which still need work.

The reconciler is level-triggered: it looks at the state (landed releases, registered base
versions, the ``theseus.processed_run`` tag) rather than at events, so any step can be rerun and a
lost trigger is recovered on the next run.
"""

from __future__ import annotations

import itertools
import logging
import time

from theseus_ops.catalog import ROLE_BASE, Catalog, register_landed_release
from theseus_ops.catalog.client import check_model_name
from theseus_ops.catalog.schema import ANNOUNCED_AT, PROCESSED_RUN, ROLE, BaseReleaseTags, VersionRef
from theseus_ops.errors import InputError
from theseus_ops.storage import BASE_LINE_KEY, open_zone, scan_landed_releases
from theseus_ops.workflow.config import WorkflowConfig
from theseus_ops.workflow.contracts import Release

log = logging.getLogger("theseus_ops")
PROCESSED_TAG = PROCESSED_RUN  # the names the workflow always exported
ANNOUNCED_TAG = ANNOUNCED_AT


def catalog_of(cfg: WorkflowConfig) -> Catalog:
    return Catalog(cfg.catalog)


def base_versions(catalog: Catalog, base_line: str) -> list:
    """The base line's base-release versions, ordered by registry version number (release order).

    One per release: a duplicate left for a moment by a concurrent registration (which deletes
    itself, see ``Catalog._first_writer_wins``) is skipped in favour of the lowest version.
    """
    found = sorted(catalog.search_versions(check_model_name(base_line), BaseReleaseTags.search()),
                   key=lambda v: int(v.version))
    seen: set[str | None] = set()
    unique = []
    for v in found:
        release = BaseReleaseTags.read(v.tags, "release")
        if release not in seen:
            seen.add(release)
            unique.append(v)
    return unique


def register_landed_releases(cfg: WorkflowConfig) -> list[dict]:
    """Register every complete, not yet registered release in the landing zone as a base version.

    Releases are registered in the order the zone lists them (base line, then release name), which is
    the order their registry versions get; a rerun finds nothing new and returns an empty list.
    """
    catalog = catalog_of(cfg)
    zone = open_zone(cfg.storage)
    done = []
    for landed in scan_landed_releases(zone, catalog):
        reg = register_landed_release(catalog, zone, landed)
        done.append({BASE_LINE_KEY: landed.base_line, "release": landed.release, "version": str(reg.version.version),
                     "created": reg.created, "source_uri": landed.url})
    return done


def pending_releases(cfg: WorkflowConfig, base_line: str) -> list[dict]:
    """Base versions with a predecessor and no processed marker, oldest first.

    ``supersedes`` is the highest base version below it (the source its task vectors come from).
    """
    return [release for release, _mv in _pending(catalog_of(cfg), base_line)]


def _pending(catalog: Catalog, base_line: str) -> list[tuple[dict, object]]:
    """(release dict, its ModelVersion) for each pending base version of ``base_line``."""
    pending = []
    for previous, current in itertools.pairwise(base_versions(catalog, base_line)):
        if (current.tags or {}).get(PROCESSED_TAG):
            continue
        pending.append((Release(base_line, str(current.version), BaseReleaseTags.read(current.tags, "release"),
                                str(previous.version)).to_json(), current))
    return pending


def base_lines(cfg: WorkflowConfig) -> list[str]:
    """Every registered model that holds at least one base release (the base lines the watcher follows)."""
    return _base_lines(catalog_of(cfg))


def _base_lines(catalog: Catalog) -> list[str]:
    return sorted({v.name for v in catalog.search_versions(tags=BaseReleaseTags.search())})


def releases_to_announce(cfg: WorkflowConfig, reannounce_after_s: float = 3600.0,
                         now: float | None = None) -> list[dict]:
    """Pending releases of every base line that were never announced, or announced long enough ago.

    A release is announced once; if it is still not processed ``reannounce_after_s`` later (its
    transport run died, or was never started) it is announced again, so a lost trigger heals itself.
    """
    if reannounce_after_s < 0:
        raise InputError(f"the re-announce interval must be >= 0 seconds, got {reannounce_after_s}")
    now = time.time() if now is None else now
    catalog = catalog_of(cfg)
    due = []
    for base_line in _base_lines(catalog):
        for release, mv in _pending(catalog, base_line):
            announced = (mv.tags or {}).get(ANNOUNCED_TAG)
            try:
                stale = announced is None or now - float(announced) >= reannounce_after_s
            except ValueError:
                stale = True  # a hand-edited tag: announce again rather than never
            if stale:
                due.append(release)
    return due


def release_of_version(cfg: WorkflowConfig, base_line: str, version: str) -> dict | None:
    """The pending release a just-created model version starts, or None when it starts none.

    What the registry webhook announces: a version is a release when it is a base version with an
    earlier base (something to port from) and is not processed yet. Anything else (a task vector,
    a transported model, the first base, an unknown name) is None, not an error.
    """
    try:
        name = check_model_name(base_line)
    except InputError:
        return None
    return next((r for r in pending_releases(cfg, name) if r["version"] == str(version)), None)


def mark_announced(cfg: WorkflowConfig, base_line: str, version: str, now: float | None = None) -> None:
    """Record when the release's event went out (see :func:`releases_to_announce`)."""
    catalog = catalog_of(cfg)
    stamp = f"{time.time() if now is None else now:.3f}"
    catalog.call("set tag", catalog.client.set_model_version_tag, check_model_name(base_line), str(version),
                 ANNOUNCED_TAG, stamp)


def mark_processed(cfg: WorkflowConfig, base_line: str, version: str, summary_run_id: str) -> dict:
    """Tag the base version with the release-summary run, so the reconciler skips it from now on."""
    if not summary_run_id:
        raise InputError(f"marking {base_line}/{version} processed needs the id of its summary run")
    catalog = catalog_of(cfg)
    mv = catalog.get_version(VersionRef(check_model_name(base_line), str(version)), "base release")
    if (mv.tags or {}).get(ROLE) != ROLE_BASE:
        raise InputError(f"{base_line}/{version} is not a base release; only base versions are marked processed")
    catalog.call("set tag", catalog.client.set_model_version_tag, base_line, str(version), PROCESSED_TAG,
                 summary_run_id)
    return {BASE_LINE_KEY: base_line, "version": str(version), PROCESSED_TAG: summary_run_id}
