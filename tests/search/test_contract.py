"""The search contract, run against every backend: SQLite FTS5 and Elasticsearch (osmem-server)."""

from __future__ import annotations

import pytest

from fabric.errors import InvalidInput
from services.search.base import SearchService


def _workflow(
    name: str, description: str = "", tags: list[str] | None = None, **extra: object
) -> dict[str, object]:
    return {"name": name, "description": description, "tags": tags or [], **extra}


def _log(ts: str, message: str, level: str = "INFO", **extra: object) -> dict[str, object]:
    return {"timestamp": ts, "level": level, "message": message, "service": "engine", **extra}


# --- workflows ---------------------------------------------------------------------------------------


def test_indexed_workflow_is_searchable_at_once(search: SearchService) -> None:
    assert search.index_workflow("wf-1", _workflow("Invoice mailer", "sends invoices", ["billing"])) == "wf-1"

    results = search.search_workflows("invoice")

    assert [r["id"] for r in results] == ["wf-1"]
    assert results[0]["name"] == "Invoice mailer"
    assert results[0]["tags"] == ["billing"]
    assert results[0]["score"] > 0


def test_workflow_upsert_is_idempotent_and_replaces(search: SearchService) -> None:
    data = _workflow("Nightly backup", "copies the database", ["ops"])
    search.index_workflow("wf-1", data)
    search.index_workflow("wf-1", data)

    assert search.count("workflows") == 1
    assert len(search.search_workflows("backup")) == 1

    search.index_workflow("wf-1", _workflow("Nightly export", "copies the database", ["ops"]))

    assert search.count("workflows") == 1
    assert search.search_workflows("backup") == []
    assert [r["name"] for r in search.search_workflows("export")] == ["Nightly export"]


def test_name_is_weighted_over_description(search: SearchService) -> None:
    search.index_workflow("in-desc", _workflow("Weekly digest", "collects every slack message"))
    search.index_workflow("in-name", _workflow("Slack notifier", "posts a short weekly message"))
    search.index_workflow("neither", _workflow("Weekly report", "builds a pdf"))

    results = search.search_workflows("slack")

    assert [r["id"] for r in results] == ["in-name", "in-desc"]
    assert results[0]["score"] > results[1]["score"]


def test_every_query_word_must_match(search: SearchService) -> None:
    search.index_workflow("a", _workflow("Invoice mailer", "sends invoices by email"))
    search.index_workflow("b", _workflow("Invoice archive", "stores invoices in s3"))

    assert [r["id"] for r in search.search_workflows("invoice email")] == ["a"]
    assert {r["id"] for r in search.search_workflows("invoice")} == {"a", "b"}


def test_tag_filter_requires_all_tags(search: SearchService) -> None:
    search.index_workflow("a", _workflow("Sync contacts", tags=["crm", "nightly"]))
    search.index_workflow("b", _workflow("Sync orders", tags=["crm"]))
    search.index_workflow("c", _workflow("Sync files", tags=["nightly"]))

    assert {r["id"] for r in search.search_workflows("sync", tags=["crm"])} == {"a", "b"}
    assert [r["id"] for r in search.search_workflows("sync", tags=["crm", "nightly"])] == ["a"]
    assert search.search_workflows("sync", tags=["crm", "missing"]) == []
    # An empty query lists by name, still filtered by tags.
    assert [r["id"] for r in search.search_workflows("", tags=["nightly"])] == ["a", "c"]


def test_limit_is_respected(search: SearchService) -> None:
    search.bulk_index_workflows([{"id": f"wf-{i}", **_workflow(f"Report {i}")} for i in range(15)])

    assert len(search.search_workflows("report")) == 10
    assert len(search.search_workflows("report", limit=3)) == 3


@pytest.mark.parametrize(
    "query",
    [
        'invoice OR "',
        "invoice AND",
        "name:invoice",
        "invoice*",
        "(invoice",
        "NEAR(invoice mailer)",
        "-invoice",
        "invoice^2 ~ {x}",
        '""invoice""',
        "invoice \\",
        "invoice\x00mailer",
    ],
)
def test_query_syntax_in_user_input_is_just_text(search: SearchService, query: str) -> None:
    search.index_workflow("a", _workflow("Invoice mailer", "sends invoices"))

    results = search.search_workflows(query)

    assert all(r["id"] == "a" for r in results)


def test_query_without_words_matches_nothing(search: SearchService) -> None:
    search.index_workflow("a", _workflow("Invoice mailer"))

    assert search.search_workflows("*** ???") == []
    assert search.search_logs(query="!!!") == []


def test_fields_other_than_name_and_description_are_not_searched(search: SearchService) -> None:
    search.index_workflow("a", _workflow("Mailer", steps=[{"type": "http", "url": "zebracorn.example"}]))
    search.index_workflow("b", _workflow("Other", steps={"conflicting": "shape"}, owner=42))

    assert search.search_workflows("zebracorn") == []
    stored = search.search_workflows("mailer")[0]
    assert stored["steps"] == [{"type": "http", "url": "zebracorn.example"}]


def test_delete_workflow(search: SearchService) -> None:
    search.index_workflow("a", _workflow("Invoice mailer", tags=["billing"]))

    assert search.delete_workflow("a") is True
    assert search.delete_workflow("a") is False
    assert search.search_workflows("invoice") == []
    assert search.count("workflows") == 0


# --- executions --------------------------------------------------------------------------------------


def _execution(workflow_id: str, status: str, started_at: str | None, **extra: object) -> dict[str, object]:
    return {"workflow_id": workflow_id, "status": status, "started_at": started_at, **extra}


def test_executions_filters_and_newest_first(search: SearchService) -> None:
    search.index_execution("e1", _execution("wf-a", "completed", "2024-01-01T10:00:00Z"))
    search.index_execution("e2", _execution("wf-a", "failed", "2024-01-02T10:00:00Z"))
    search.index_execution("e3", _execution("wf-b", "completed", "2024-01-03T10:00:00Z"))
    # 2024-01-02T11:30:00+02:00 is 09:30 UTC: older than e2 although its local clock reads later.
    search.index_execution("e4", _execution("wf-a", "completed", "2024-01-02T11:30:00+02:00"))

    assert [r["id"] for r in search.search_executions()] == ["e3", "e2", "e4", "e1"]
    assert [r["id"] for r in search.search_executions(workflow_id="wf-a")] == ["e2", "e4", "e1"]
    assert [r["id"] for r in search.search_executions(status="completed")] == ["e3", "e4", "e1"]
    assert [r["id"] for r in search.search_executions(workflow_id="wf-a", status="completed")] == ["e4", "e1"]
    assert [r["id"] for r in search.search_executions(limit=2)] == ["e3", "e2"]


def test_executions_date_range_is_inclusive(search: SearchService) -> None:
    for day in range(1, 6):
        search.index_execution(f"e{day}", _execution("wf", "completed", f"2024-03-0{day}T00:00:00Z"))

    found = search.search_executions(
        date_range={"from": "2024-03-02T00:00:00Z", "to": "2024-03-04T00:00:00Z"}
    )
    assert [r["id"] for r in found] == ["e4", "e3", "e2"]
    assert [r["id"] for r in search.search_executions(date_range={"from": "2024-03-04T00:00:00Z"})] == [
        "e5",
        "e4",
    ]
    assert [r["id"] for r in search.search_executions(date_range={"to": "2024-03-01T12:00:00+00:00"})] == [
        "e1"
    ]


def test_execution_payloads_of_any_shape_are_stored(search: SearchService) -> None:
    search.index_execution(
        "e1", _execution("wf", "completed", "2024-01-01T00:00:00Z", input_data={"x": {"y": 1}})
    )
    search.index_execution(
        "e2", _execution("wf", "completed", "2024-01-02T00:00:00Z", input_data={"x": "text"})
    )
    search.index_execution(
        "e3", _execution("wf", "failed", "2024-01-03T00:00:00Z", input_data=[1, "a"], output_data=7)
    )

    by_id = {r["id"]: r for r in search.search_executions(workflow_id="wf")}
    assert by_id["e1"]["input_data"] == {"x": {"y": 1}}
    assert by_id["e2"]["input_data"] == {"x": "text"}
    assert by_id["e3"]["input_data"] == [1, "a"]
    assert by_id["e3"]["output_data"] == 7


def test_execution_upsert_and_delete(search: SearchService) -> None:
    search.index_execution("e1", _execution("wf", "running", "2024-01-01T00:00:00Z"))
    search.index_execution(
        "e1", _execution("wf", "completed", "2024-01-01T00:00:00Z", completed_at="2024-01-01T00:01:00Z")
    )

    assert search.count("executions") == 1
    assert search.search_executions(status="running") == []
    assert [r["status"] for r in search.search_executions(workflow_id="wf")] == ["completed"]
    assert search.delete_execution("e1") is True
    assert search.delete_execution("e1") is False
    assert search.search_executions(workflow_id="wf") == []


def test_execution_without_start_sorts_last(search: SearchService) -> None:
    search.index_execution("queued", _execution("wf", "queued", None))
    search.index_execution("done", _execution("wf", "completed", "2024-01-01T00:00:00Z"))

    assert [r["id"] for r in search.search_executions(workflow_id="wf")] == ["done", "queued"]


# --- logs --------------------------------------------------------------------------------------------


def test_guide_log_round_trip(search: SearchService) -> None:
    indexed = search.index_log(
        {
            "timestamp": "2024-01-01T00:00:00Z",
            "level": "INFO",
            "message": "Test file uploaded",
            "service": "test",
            "file_path": "test-bucket/test-file.txt",
        }
    )

    results = search.search_logs(query="Test file uploaded")

    assert indexed
    assert len(results) == 1
    assert results[0]["id"] == indexed
    assert results[0]["file_path"] == "test-bucket/test-file.txt"


def test_redelivered_log_without_id_is_stored_once(search: SearchService) -> None:
    entry = _log("2024-01-01T00:00:00Z", "worker started", execution_id="ex-1")

    first = search.index_log(entry)
    second = search.index_log(dict(entry))
    search.bulk_index_logs([entry, entry])

    assert first == second
    assert search.count("logs") == 1
    assert len(search.search_logs(query="worker started")) == 1


def test_log_with_id_is_upserted(search: SearchService) -> None:
    search.index_log({"id": "log-1", **_log("2024-01-01T00:00:00Z", "connection refused")})
    search.index_log({"id": "log-1", **_log("2024-01-01T00:00:05Z", "connection restored")})

    assert search.count("logs") == 1
    assert search.search_logs(query="refused") == []
    [found] = search.search_logs(query="connection")
    assert found["id"] == "log-1"
    assert found["message"] == "connection restored"


def test_log_filters_and_newest_first(search: SearchService) -> None:
    search.bulk_index_logs(
        [
            _log("2024-01-01T00:00:01Z", "request timeout upstream", "ERROR", execution_id="ex-1"),
            _log("2024-01-01T00:00:02Z", "request served", "info", execution_id="ex-1"),
            {
                **_log("2024-01-01T00:00:03Z", "request timeout db", "ERROR", execution_id="ex-2"),
                "service": "api",
            },
            _log("2024-01-01T00:00:04Z", "retrying after timeout", "WARNING", execution_id="ex-2"),
        ]
    )

    def ids(**kwargs: object) -> list[str]:
        return [r["message"] for r in search.search_logs(**kwargs)]  # type: ignore[arg-type]

    assert ids() == [
        "retrying after timeout",
        "request timeout db",
        "request served",
        "request timeout upstream",
    ]
    assert ids(query="timeout") == [
        "retrying after timeout",
        "request timeout db",
        "request timeout upstream",
    ]
    assert ids(query="request timeout") == ["request timeout db", "request timeout upstream"]
    assert ids(level="error") == ["request timeout db", "request timeout upstream"]
    assert ids(level="INFO") == ["request served"]
    assert ids(service="api") == ["request timeout db"]
    assert ids(execution_id="ex-1") == ["request served", "request timeout upstream"]
    assert ids(query="timeout", execution_id="ex-2", level="WARNING") == ["retrying after timeout"]
    assert ids(time_range={"from": "2024-01-01T00:00:02Z", "to": "2024-01-01T00:00:03Z"}) == [
        "request timeout db",
        "request served",
    ]
    assert ids(query="timeout", time_range={"to": "2024-01-01T00:00:03.5Z"}) == [
        "request timeout db",
        "request timeout upstream",
    ]
    assert ids(limit=1) == ["retrying after timeout"]
    assert search.search_logs(level="DEBUG") == []


def test_log_level_is_stored_upper_case(search: SearchService) -> None:
    search.index_log(_log("2024-01-01T00:00:00Z", "hello", "warning"))

    assert search.search_logs(query="hello")[0]["level"] == "WARNING"


# --- bulk --------------------------------------------------------------------------------------------


def test_bulk_forms_write_everything_once(search: SearchService) -> None:
    workflows = [{"id": f"wf-{i}", **_workflow(f"Pipeline {i}", "moves data", ["etl"])} for i in range(40)]
    executions = [
        {"id": f"ex-{i}", **_execution(f"wf-{i % 4}", "completed", f"2024-01-01T00:00:{i:02d}Z")}
        for i in range(40)
    ]
    logs = [
        _log(f"2024-01-01T00:{i // 60:02d}:{i % 60:02d}Z", f"step {i} done", execution_id="ex-1")
        for i in range(300)
    ]

    assert search.bulk_index_workflows(workflows) == 40
    assert search.bulk_index_executions(executions) == 40
    assert search.bulk_index_logs(logs) == 300
    # Repeating a bulk write changes nothing.
    search.bulk_index_workflows(workflows)
    search.bulk_index_executions(executions)
    search.bulk_index_logs(logs)

    assert (search.count("workflows"), search.count("executions"), search.count("logs")) == (40, 40, 300)
    assert len(search.search_workflows("pipeline", tags=["etl"], limit=100)) == 40
    assert len(search.search_executions(workflow_id="wf-1")) == 10
    assert len(search.search_logs(query="done", limit=1000)) == 300
    assert search.search_logs(query="step 299")[0]["message"] == "step 299 done"
    assert search.bulk_index_logs([]) == 0


def test_bulk_with_an_invalid_document_writes_nothing(search: SearchService) -> None:
    good = [_log("2024-01-01T00:00:00Z", "fine"), _log("2024-01-01T00:00:01Z", "also fine")]

    with pytest.raises(InvalidInput, match="timestamp"):
        search.bulk_index_logs([*good, _log("yesterday", "bad")])
    with pytest.raises(InvalidInput, match="id"):
        search.bulk_index_workflows([_workflow("no id")])
    with pytest.raises(InvalidInput, match="status"):
        search.bulk_index_executions([{"id": "e", "workflow_id": "wf"}])

    assert search.count("logs") == 0
    assert search.count("workflows") == 0


# --- errors ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda s: s.index_workflow("", _workflow("x")), "workflow_id"),
        (lambda s: s.index_workflow("a", {"description": "no name"}), "name"),
        (lambda s: s.index_workflow("a", _workflow("x", tags="crm")), "tags"),
        (lambda s: s.index_workflow("a", _workflow("x", blob={1, 2})), "JSON"),
        (lambda s: s.index_execution("e", _execution("wf", "done", "not a date")), "started_at"),
        (lambda s: s.index_execution("e", {"status": "done"}), "workflow_id"),
        (lambda s: s.index_log({"level": "INFO", "message": "no time"}), "timestamp"),
        (lambda s: s.index_log({"timestamp": "2024-01-01T00:00:00Z", "level": "INFO"}), "message"),
        (lambda s: s.search_workflows("x", limit=0), "limit"),
        (lambda s: s.search_workflows("x", tags="crm"), "tags"),
        (lambda s: s.search_executions(date_range={"from": "soon"}), "date_range"),
        (lambda s: s.search_executions(date_range={"start": "2024-01-01"}), "date_range"),
        (
            lambda s: s.search_executions(
                date_range={"from": "2024-02-01T00:00:00Z", "to": "2024-01-01T00:00:00Z"}
            ),
            "after",
        ),
        (lambda s: s.search_logs(time_range={"to": 12}), "time_range"),
        (lambda s: s.count("users"), "index"),
    ],
)
def test_bad_input_raises_invalid_input(search: SearchService, call: object, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        call(search)  # type: ignore[operator]


def test_health_check(search: SearchService) -> None:
    health = search.health_check()

    assert health["status"] == "healthy"
    assert health["backend"] == search.backend
