"""Workflow definitions, execution records and artifacts in the object store, the system of record.

Layout (the guide's):

* bucket ``workflows``: ``workflows/{workflow_id}.json`` - the definition;
* bucket ``workflow-artifacts``: ``executions/{execution_id}/result.json`` - the execution record, and
  ``executions/{execution_id}/{name}`` - output files.

One object per execution record: storing an execution is one write (two, with its running record). To list
one workflow's executions at scale, ask the search index (``search_executions(workflow_id=...)``, ``GET
/search/executions?workflow_id=``), which the follow-up of every execution fills; ``list_executions`` reads
every record. Earlier versions also wrote an empty marker per execution, ``by-workflow/{workflow_id}/
{execution_id}``, an object created and fsynced on every execution for a listing no request used; markers
left by them are removed with their execution.

Every write is keyed by a stable id, so saving the same thing twice changes nothing (redelivered tasks).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from pydantic import ValidationError

from fabric.errors import InvalidInput, NotFound
from workflows.model import ID_PATTERN, ExecutionRecord, Workflow, format_validation_error, parse_workflow
from workflows.steps import StepRegistry
from workflows.validation import validate_workflow

if TYPE_CHECKING:
    from services.storage import StorageService

WORKFLOWS_BUCKET = "workflows"
ARTIFACTS_BUCKET = "workflow-artifacts"
RESULT_NAME = "result.json"

_ID_RE = re.compile(ID_PATTERN)
_ARTIFACT_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,199}$")


def _check_id(kind: str, value: str) -> str:
    if not isinstance(value, str) or not _ID_RE.match(value):
        raise InvalidInput(f"{kind} {value!r} must be 1-128 letters, digits, '_', '.', '-' (starting alnum)")
    return value


def workflow_object(workflow_id: str) -> str:
    """Object name of a definition in the ``workflows`` bucket."""
    return f"workflows/{_check_id('workflow id', workflow_id)}.json"


def execution_prefix(execution_id: str) -> str:
    """Prefix of everything stored for one execution in the ``workflow-artifacts`` bucket."""
    return f"executions/{_check_id('execution id', execution_id)}/"


def result_object(execution_id: str) -> str:
    """Object name of an execution record: ``executions/{id}/result.json``."""
    return execution_prefix(execution_id) + RESULT_NAME


def _marker(workflow_id: str, execution_id: str) -> str:
    """The listing marker earlier versions wrote for each execution (none is written now)."""
    return f"by-workflow/{_check_id('workflow id', workflow_id)}/{_check_id('execution id', execution_id)}"


class WorkflowRepository:
    """Definitions, records and artifacts over a :class:`~services.storage.StorageService`."""

    def __init__(self, storage: StorageService | None = None, registry: StepRegistry | None = None) -> None:
        """``storage``: default ``services.storage.get_storage_service()``, fetched on first use (never at
        import). ``registry``: the step types definitions are validated against (default: built-in)."""
        self._storage = storage
        self.registry = registry

    @property
    def storage(self) -> StorageService:
        if self._storage is None:
            from services.storage import get_storage_service

            self._storage = get_storage_service()
        return self._storage

    # --- definitions ------------------------------------------------------------------------------------

    def save_workflow(self, workflow: Workflow | dict[str, object]) -> Workflow:
        """Validate and store a definition (replacing one with the same id). Returns the stored Workflow.

        Raises InvalidInput naming the bad node; nothing is stored then. Storage errors propagate
        (BackendUnavailable is transient).
        """
        model = workflow if isinstance(workflow, Workflow) else parse_workflow(workflow)
        validate_workflow(model, self.registry)
        self.storage.upload_file(
            WORKFLOWS_BUCKET,
            workflow_object(model.id),
            model.model_dump_json(indent=2).encode("utf-8"),
            "application/json",
        )
        return model

    def get_workflow(self, workflow_id: str) -> Workflow:
        """The stored definition. Raises NotFound naming the id, InvalidInput for corrupt JSON."""
        try:
            raw = self.storage.download_file(WORKFLOWS_BUCKET, workflow_object(workflow_id))
        except NotFound:
            raise NotFound(f"workflow {workflow_id!r} not found") from None
        return parse_workflow(raw)

    def workflow_exists(self, workflow_id: str) -> bool:
        """Whether a definition with this id is stored."""
        return self.storage.exists(WORKFLOWS_BUCKET, workflow_object(workflow_id))

    def list_workflows(self) -> list[Workflow]:
        """Every stored definition, ordered by id."""
        workflows = []
        for name in self.storage.list_files(WORKFLOWS_BUCKET, "workflows/"):
            if not name.endswith(".json"):
                continue
            try:
                raw = self.storage.download_file(WORKFLOWS_BUCKET, name)
            except NotFound:
                continue  # deleted between listing and reading
            workflows.append(parse_workflow(raw))
        return sorted(workflows, key=lambda w: w.id)

    def list_workflow_ids(self) -> list[str]:
        """The ids of every stored definition, sorted (reads no definition)."""
        names = self.storage.list_files(WORKFLOWS_BUCKET, "workflows/")
        return sorted(name[len("workflows/") : -len(".json")] for name in names if name.endswith(".json"))

    def delete_workflow(self, workflow_id: str) -> bool:
        """Remove a definition (its executions stay). Returns whether it existed."""
        name = workflow_object(workflow_id)
        existed = self.storage.exists(WORKFLOWS_BUCKET, name)
        self.storage.delete_file(WORKFLOWS_BUCKET, name)
        return existed

    # --- execution records ------------------------------------------------------------------------------

    def save_execution(self, record: ExecutionRecord) -> str:
        """Store ``record`` as ``executions/{id}/result.json`` (replacing an earlier version). Returns the
        object name."""
        name = result_object(record.execution_id)
        self.storage.upload_file(
            ARTIFACTS_BUCKET, name, record.model_dump_json(indent=2).encode("utf-8"), "application/json"
        )
        return name

    def get_execution(self, execution_id: str) -> ExecutionRecord | None:
        """The stored record, or None when there is none (a task uses this to skip a finished execution).

        Raises InvalidInput if the stored JSON is not a valid record.
        """
        try:
            raw = self.storage.download_file(ARTIFACTS_BUCKET, result_object(execution_id))
        except NotFound:
            return None
        try:
            return ExecutionRecord.model_validate_json(raw)
        except ValidationError as exc:
            raise InvalidInput(
                f"stored record of execution {execution_id!r} is invalid: {format_validation_error(exc)}"
            ) from exc

    def list_execution_ids(self) -> list[str]:
        """The ids of every stored execution record, sorted (reads no record)."""
        return sorted(
            name.split("/")[1]
            for name in self.storage.list_files(ARTIFACTS_BUCKET, "executions/")
            if name.endswith("/" + RESULT_NAME) and name.count("/") == 2
        )

    def list_executions(self, workflow_id: str | None = None) -> list[ExecutionRecord]:
        """Stored records (of one workflow if ``workflow_id`` is given), oldest start first. Reads every
        record; the search index lists one workflow's executions without that."""
        if workflow_id is not None:
            _check_id("workflow id", workflow_id)
        records = []
        for execution_id in self.list_execution_ids():
            record = self.get_execution(execution_id)
            if record is not None and (workflow_id is None or record.workflow_id == workflow_id):
                records.append(record)
        return sorted(records, key=lambda r: (r.started_at is None, r.started_at, r.execution_id))

    def delete_execution(self, execution_id: str) -> bool:
        """Remove a record, its artifacts and its marker (expiry by policy). Returns whether it existed."""
        record = self.get_execution(execution_id)
        names = self.storage.list_files(ARTIFACTS_BUCKET, execution_prefix(execution_id))
        # the record goes last among the execution's objects: while it exists the execution is listed
        for name in sorted(names, key=lambda n: n.endswith("/" + RESULT_NAME)):
            self.storage.delete_file(ARTIFACTS_BUCKET, name)
        if record is not None:  # the listing marker an earlier version may have written
            self.storage.delete_file(ARTIFACTS_BUCKET, _marker(record.workflow_id, execution_id))
        return record is not None

    # --- artifacts --------------------------------------------------------------------------------------

    def save_artifact(
        self,
        execution_id: str,
        name: str,
        data: bytes | str,
        content_type: str = "application/octet-stream",
    ) -> str:
        """Store an output file as ``executions/{execution_id}/{name}``. Returns the object name.

        ``name`` is one path segment (letters, digits, ``_.-``) and not ``result.json``; text is stored as
        UTF-8. Raises InvalidInput for a bad name.
        """
        if not _ARTIFACT_RE.match(name) or name in (RESULT_NAME, ".", ".."):
            raise InvalidInput(
                f"artifact name {name!r} must be one segment of letters, digits, '_', '.', '-' "
                f"and not {RESULT_NAME!r}"
            )
        object_name = execution_prefix(execution_id) + name
        payload = data.encode("utf-8") if isinstance(data, str) else data
        self.storage.upload_file(ARTIFACTS_BUCKET, object_name, payload, content_type)
        return object_name

    def get_artifact(self, execution_id: str, name: str) -> bytes:
        """An output file's bytes. Raises NotFound naming it."""
        return self.storage.download_file(ARTIFACTS_BUCKET, execution_prefix(execution_id) + name)

    def list_artifacts(self, execution_id: str) -> list[str]:
        """Names (without the prefix) of an execution's output files, the record excluded."""
        prefix = execution_prefix(execution_id)
        return [
            name[len(prefix) :]
            for name in self.storage.list_files(ARTIFACTS_BUCKET, prefix)
            if name != prefix + RESULT_NAME
        ]
