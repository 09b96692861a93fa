"""A thin wrapper around ``mlflow.MlflowClient``: retries, clear errors, atomic uploads, verified downloads.

Only MLflow's public client API is used. A registry version is created only after every file
of its artifact and then the artifact's manifest have been uploaded to the backing run, so a
version that is visible is complete; downloads are checked against that manifest, whose own
sha256 is pinned in the version's tags.
"""

from __future__ import annotations

import logging
import os
import re
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from urllib.parse import urlparse

from theseus_ops.catalog.config import CatalogConfig
from theseus_ops.catalog.schema import (
    ARTIFACT_FILE,
    ARTIFACT_PATH,
    CONTENT_SHA256,
    MANIFEST_SHA256,
    ROLE,
    BaseReleaseTags,
    VersionRef,
)
from theseus_ops.errors import InputError
from theseus_ops.io.atomic import promote, staging_directory
from theseus_ops.retry import call_with_retry
from theseus_ops.service_errors import CatalogError, IntegrityError
from theseus_ops.storage.manifest import (
    MANIFEST_NAME,
    Manifest,
    build_manifest,
    file_sha256,
    local_files,
    verify_local,
)

log = logging.getLogger("theseus_ops")
_MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,255}$")
_TAG_VALUE_MAX = 5000


def check_model_name(name: str) -> str:
    if not isinstance(name, str) or not _MODEL_NAME.match(name):
        raise InputError(f"registered model name {name!r} is not valid (letters, digits, '.', '_', '+', '-')")
    return name


def _quote(value: str) -> str:
    if "'" in value or "`" in value:
        raise InputError(f"catalog values may not contain quotes: {value!r}")
    return f"'{value}'"


def _error_code(exc: BaseException) -> str | None:
    return getattr(exc, "error_code", None)


def missing_local_store(uri: str) -> str | None:
    """The path of the local store (SQLite file, ``mlruns`` folder) that ``uri`` names, if it does not exist."""
    parsed = urlparse(uri)
    if parsed.scheme == "sqlite":
        path = uri.split("://", 1)[1].split("?", 1)[0]
        path = path[1:] if path.startswith("/") else path  # sqlite:///rel.db, sqlite:////abs.db
        if path in ("", ":memory:"):
            return None
    elif parsed.scheme == "file":
        path = parsed.path
    elif not parsed.scheme or len(parsed.scheme) == 1:  # a plain path (or a drive letter)
        path = uri
    else:
        return None
    return None if Path(path).exists() else path


class Catalog:
    """The task-vector catalog and model registry of record, on an MLflow server (or store URI)."""

    def __init__(self, config: CatalogConfig | None = None, *, read_only: bool = False) -> None:
        """``read_only``: refuse a local store that does not exist yet, instead of letting MLflow create
        one (MLflow's default is ``./mlflow.db``): listing creates no state."""
        import mlflow
        from mlflow import MlflowClient

        self.config = config or CatalogConfig.from_env()
        # MLflow retries each HTTP request up to 7 times with exponential backoff by default (minutes when a
        # server is down); theseus-ops's bounded policy is the one retry loop unless the user set these.
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", str(int(self.config.http_timeout)))
        self.tracking_uri = self.config.tracking_uri or mlflow.get_tracking_uri()
        self.registry_uri = self.config.registry_uri or self.tracking_uri
        if read_only:
            for uri in dict.fromkeys((self.tracking_uri, self.registry_uri)):
                if (missing := missing_local_store(uri)) is not None:
                    where = "MLflow's default store" if self.config.tracking_uri is None else "the store"
                    raise CatalogError(f"no MLflow registry: {where} {uri} does not exist ({missing}); pass "
                                       f"--tracking-uri or set THESEUS_MLFLOW_TRACKING_URI (reading creates none)")
        self.client = MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.registry_uri)
        self._experiment_id: str | None = None

    def __repr__(self) -> str:
        return f"Catalog({self.tracking_uri!r})"

    # -- plumbing --------------------------------------------------------------------------------
    def call(self, what: str, fn: Callable, *args, **kwargs):
        """``fn(*args, **kwargs)`` with the bounded retry policy for transient MLflow errors."""
        return call_with_retry(lambda: fn(*args, **kwargs), f"MLflow {what} at {self.registry_uri}",
                               self.config.retry)

    def ping(self) -> None:
        """Raise ServiceUnavailableError if the server does not answer."""
        self.call("ping", self.client.search_experiments, max_results=1)

    def experiment_id(self) -> str:
        if self._experiment_id is None:
            name = self.config.experiment
            exp = self.call("get experiment", self.client.get_experiment_by_name, name)
            if exp is None:
                try:
                    self._experiment_id = self.call("create experiment", self.client.create_experiment, name,
                                                    artifact_location=self.config.artifact_location)
                except Exception as exc:  # created concurrently by someone else
                    if _error_code(exc) != "RESOURCE_ALREADY_EXISTS":
                        raise
                    self._experiment_id = self.call("get experiment", self.client.get_experiment_by_name,
                                                    name).experiment_id
            else:
                self._experiment_id = exp.experiment_id
        return self._experiment_id

    def ensure_registered_model(self, name: str, description: str | None = None) -> None:
        check_model_name(name)
        try:
            self.call("get registered model", self.client.get_registered_model, name)
            return
        except Exception as exc:
            if _error_code(exc) != "RESOURCE_DOES_NOT_EXIST":
                raise
        try:
            self.call("create registered model", self.client.create_registered_model, name, description=description)
        except Exception as exc:
            if _error_code(exc) != "RESOURCE_ALREADY_EXISTS":
                raise

    # -- queries ---------------------------------------------------------------------------------
    def search_versions(self, name: str | None = None, tags: dict[str, str] | None = None,
                        run_id: str | None = None) -> list:
        """Model versions matching every given condition, oldest first."""
        clauses = []
        if name is not None:
            clauses.append(f"name = {_quote(check_model_name(name))}")
        if run_id is not None:
            clauses.append(f"run_id = {_quote(run_id)}")
        for key, value in (tags or {}).items():
            clauses.append(f"tags.`{key}` = {_quote(str(value))}")
        filter_string = " and ".join(clauses) or None
        found, token = [], None
        while True:
            page = self.call("search model versions", self.client.search_model_versions,
                             filter_string=filter_string, max_results=1000, page_token=token)
            found.extend(page)
            token = getattr(page, "token", None)
            if not token:
                break
        return sorted(found, key=lambda v: (v.name, int(v.version)))

    def registered_models(self) -> list:
        found, token = [], None
        while True:
            page = self.call("search registered models", self.client.search_registered_models,
                             max_results=1000, page_token=token)
            found.extend(page)
            token = getattr(page, "token", None)
            if not token:
                break
        return sorted(found, key=lambda m: m.name)

    def get_version(self, ref: VersionRef, what: str = "model version"):
        """The version, or CatalogError naming what is missing."""
        check_model_name(ref.name)
        try:
            return self.call("get model version", self.client.get_model_version, ref.name, str(ref.version))
        except Exception as exc:
            if _error_code(exc) in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
                raise CatalogError(f"{what} {ref} is not in the registry at {self.registry_uri}") from exc
            raise

    def get_alias(self, name: str, alias: str):
        """The version an alias points at, or None."""
        check_model_name(name)
        try:
            return self.call("get alias", self.client.get_model_version_by_alias, name, alias)
        except Exception as exc:
            if _error_code(exc) in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
                return None
            raise

    def resolve(self, name: str, version: str):
        """``version`` is a number or ``@alias``."""
        if str(version).startswith("@"):
            found = self.get_alias(name, version[1:])
            if found is None:
                raise CatalogError(f"{name} has no alias {version[1:]!r}")
            return found
        return self.get_version(VersionRef(name, str(version)))

    def set_alias(self, name: str, alias: str, version: str) -> None:
        self.call("set alias", self.client.set_registered_model_alias, name, alias, str(version))

    def base_release_registered(self, base_line: str, release: str) -> bool:
        return bool(self.search_versions(base_line, BaseReleaseTags.search(release=release)))

    # -- writes ----------------------------------------------------------------------------------
    def upload_and_register(self, name: str, local: str | Path, tags: dict[str, str], artifact_path: str = "artifact",
                            description: str | None = None, metrics: dict[str, float] | None = None,
                            progress: Callable[[str], None] | None = None,
                            files: Iterable[tuple[str, Path]] | None = None,
                            unique: dict[str, str] | None = None):
        """:meth:`register_entry`, returning only the version (the new one, or the concurrent winner)."""
        return self.register_entry(name, local, tags, artifact_path, description, metrics, progress, files, unique)[0]

    def register_entry(self, name: str, local: str | Path, tags: dict[str, str], artifact_path: str = "artifact",
                       description: str | None = None, metrics: dict[str, float] | None = None,
                       progress: Callable[[str], None] | None = None,
                       files: Iterable[tuple[str, Path]] | None = None,
                       unique: dict[str, str] | None = None) -> tuple[object, bool]:
        """Upload ``local`` (a file or directory) to a new run, the manifest last, then create the version.

        Returns ``(version, created)``. If anything fails (or the process is interrupted) before the
        version is created, the run is marked FAILED and no version exists. ``unique`` names the
        tags that identify the entry: when another process registered the same entry concurrently,
        the lowest version wins, this one is deleted, and the winner is returned with ``created``
        False (see :meth:`_first_writer_wins`); the caller compares its content with the winner's.
        """
        check_model_name(name)
        local = Path(local)
        listing = list(files) if files is not None else local_files(local)
        manifest = build_manifest(local, artifact_path=artifact_path)
        manifest_text = manifest.to_json()
        for key, value in tags.items():
            if len(str(value)) > _TAG_VALUE_MAX:
                raise InputError(f"tag {key} is longer than {_TAG_VALUE_MAX} characters")
        self.ensure_registered_model(name)
        run = self.call("create run", self.client.create_run, self.experiment_id(),
                        run_name=f"{name}-{tags.get(ROLE, 'entry')}", tags={ROLE: tags.get(ROLE, "")})
        run_id = run.info.run_id
        try:
            for rel, path in listing:
                parent = "/".join([artifact_path, *rel.split("/")[:-1]])
                self.call(f"upload of {rel}", self.client.log_artifact, run_id, str(path), parent)
                if progress:
                    progress(rel)
            with tempfile.TemporaryDirectory() as tmp:
                mpath = Path(tmp) / MANIFEST_NAME
                mpath.write_text(manifest_text)
                self.call("upload of the manifest", self.client.log_artifact, run_id, str(mpath))

                manifest_sha = file_sha256(mpath)
            for key, value in (metrics or {}).items():
                self.call("log metric", self.client.log_metric, run_id, key, float(value))
            self.call("finish run", self.client.set_terminated, run_id, "FINISHED")
            all_tags = {**tags, CONTENT_SHA256: manifest.digest(), MANIFEST_SHA256: manifest_sha,
                        ARTIFACT_PATH: artifact_path}
            if local.is_file():
                all_tags[ARTIFACT_FILE] = local.name
            source = f"runs:/{run_id}/{artifact_path}"

            def create():
                # a retried create may follow one that succeeded on the server: look before creating again
                existing = self.search_versions(name, run_id=run_id)
                if existing:
                    return existing[0]
                return self.client.create_model_version(name, source, run_id=run_id, tags=all_tags,
                                                        description=description)

            version = self.call("create model version", create)
            created = True
            if unique:
                version, created = self._first_writer_wins(name, unique, version)
        except BaseException:
            try:
                self.client.set_terminated(run_id, "FAILED")
            except Exception:  # best effort: the server may be the thing that failed
                log.warning("could not mark run %s as failed", run_id)
            raise
        if created:
            log.info("registered %s version %s (%d files, %d bytes)", name, version.version, len(manifest.files),
                     manifest.total_bytes)
        return version, created

    def _first_writer_wins(self, name: str, unique: dict[str, str], mine) -> tuple[object, bool]:
        """Converge concurrent registrations of one entry on its lowest version.

        The registry has no unique constraint on tags, so two processes (a watcher and a seeding
        script, two retried workers) can both pass the "already registered?" check and both create
        a version. Each then looks again: whoever finds a lower version of the same entry deletes
        its own, so exactly one survives and every caller returns it; only its writer gets
        ``created`` True. Version numbers grow with creation, so every loser sees the winner, and the
        lowest version is never deleted.
        """
        same = self.search_versions(name, unique)
        first = min(same, key=lambda v: int(v.version), default=mine)
        if int(first.version) < int(mine.version):
            log.warning("%s version %s duplicates version %s (registered concurrently); deleting it", name,
                        mine.version, first.version)
            self.call("delete of a duplicate version", self.client.delete_model_version, name, str(mine.version))
            return first, False
        return mine, True

    def download(self, ref: VersionRef, dest: str | Path) -> Path:
        """Download a version's artifact into ``dest`` and verify it; returns the file or directory to use."""
        mv = self.get_version(ref)
        tags = mv.tags or {}
        if not mv.run_id or MANIFEST_SHA256 not in tags or ARTIFACT_PATH not in tags:
            raise CatalogError(f"{ref} was not registered by theseus-ops (no manifest checksum in its tags)")
        dest = Path(dest)
        with staging_directory(dest) as tmp:
            mpath = Path(self.call("download of the manifest", self.client.download_artifacts, mv.run_id,
                                   MANIFEST_NAME, str(tmp)))
            if file_sha256(mpath) != tags[MANIFEST_SHA256]:
                raise IntegrityError(f"{ref}: checksum mismatch for its manifest (it was changed after registration)")
            manifest = Manifest.from_json(mpath.read_text(), f"{ref} manifest")
            mpath.unlink()
            artifact = tags[ARTIFACT_PATH]
            self.call("download of the artifacts", self.client.download_artifacts, mv.run_id, artifact, str(tmp))
            verify_local(tmp / artifact, manifest, str(ref), exact=True)
            promote(tmp / artifact, dest)
        return dest / tags[ARTIFACT_FILE] if ARTIFACT_FILE in tags else dest
