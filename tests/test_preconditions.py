"""Moves that say which version they were decided on: ETag and If-None-Match on the status,
If-Match or expected_version on advance and rollback, and the CLI sending the version it read.
The same contract holds with the local state file as with a shared store."""

import http.client
import json
import threading
import urllib.parse
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

import driftgate
from driftgate import DriftTracker, EnforceOptions, Enforcer, ManualClock, RolloutConfig
from driftgate._http import Answer
from driftgate.cli import EXIT_CHANGED, main
from driftgate.fastapi import create_router

TOKEN = "s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
STATUS = "/api/guardian/rollout/status"
ADVANCE = "/api/guardian/rollout/advance"
ROLLBACK = "/api/guardian/rollout/rollback"


@pytest.fixture
def manager(tmp_path):
    clock = ManualClock(1_700_000_000.0)
    tracker = DriftTracker(clock=clock, registry=driftgate.MetricsRegistry())
    return driftgate.RolloutManager(
        RolloutConfig.default(),
        enforcer=Enforcer(EnforceOptions(enforce=True), tracker),
        clock=clock,
        state_path=tmp_path / "rollout.json",
    )


def tag(manager) -> str:
    """The ETag of the manager's state: its incarnation and version, quoted."""
    status = manager.get_status()
    return f'"{status["incarnation"]}.{status["version"]}"'


@pytest.fixture
def client(manager, monkeypatch):
    monkeypatch.setenv("DRIFTGATE_ADMIN_TOKEN", TOKEN)
    app = FastAPI()
    app.include_router(create_router(tracker=manager.enforcer.tracker, manager=manager))
    return TestClient(app)


def test_status_answers_its_incarnation_and_version_as_etag_and_304_when_unchanged(client, manager):
    first = client.get(STATUS)
    assert first.status_code == 200
    incarnation = first.json()["incarnation"]
    assert len(incarnation) == 16
    etag = f'"{incarnation}.1"'
    assert first.headers["etag"] == etag == first.json()["etag"] == tag(manager)
    same = client.get(STATUS, headers={"If-None-Match": etag})
    assert same.status_code == 304
    assert same.headers["etag"] == etag
    assert same.content == b""
    assert client.get(STATUS, headers={"If-None-Match": f'W/{etag}, "7"'}).status_code == 304
    assert client.get(STATUS, headers={"If-None-Match": '"1"'}).status_code == 200
    client.post(ADVANCE, headers=AUTH)
    moved = client.get(STATUS, headers={"If-None-Match": etag})
    assert moved.status_code == 200
    assert moved.headers["etag"] == f'"{incarnation}.2"'


def test_if_match_moves_once_then_412_with_the_current_etag(client, manager):
    first = tag(manager)
    assert client.post(ADVANCE, headers={**AUTH, "If-Match": first}).status_code == 200
    stale = client.post(ADVANCE, headers={**AUTH, "If-Match": first})
    assert stale.status_code == 412
    assert stale.json() == {"detail": "VERSION_MISMATCH"}
    assert stale.headers["etag"] == tag(manager) == first.replace(".1", ".2")
    assert manager.version == 2
    assert client.get(STATUS).json()["current_stage"]["name"] == "quarter"
    rolled = client.post(ROLLBACK, headers={**AUTH, "If-Match": tag(manager)}, json={"reason": "x"})
    assert rolled.status_code == 200
    assert rolled.json()["version"] == 3


def test_if_match_of_another_incarnation_never_holds_but_a_bare_version_still_does(client, manager):
    # A tag from before the store lost its state names another incarnation: 412, even at the
    # same version. A bare version (clients from before incarnations) cannot tell them apart.
    other = client.post(ADVANCE, headers={**AUTH, "If-Match": '"0123456789abcdef.1"'})
    assert other.status_code == 412
    assert other.headers["etag"] == tag(manager)
    assert manager.version == 1
    assert client.post(ADVANCE, headers={**AUTH, "If-Match": '"1"'}).status_code == 200
    assert manager.version == 2


def test_a_retry_with_the_same_idempotency_key_gets_the_first_outcome(client, manager):
    first = client.post(ADVANCE, headers={**AUTH, "Idempotency-Key": "deploy-42"})
    assert first.status_code == 200
    assert first.json()["operation"] == "deploy-42" and first.json()["replayed"] is False
    again = client.post(
        ADVANCE, headers={**AUTH, "Idempotency-Key": "deploy-42", "If-Match": '"1"'}
    )
    assert again.status_code == 200
    body = again.json()
    assert body["replayed"] is True and body["version"] == 2 and body["new_stage"] == "quarter"
    assert manager.version == 2
    status = client.get(STATUS).json()
    assert status["transitions"][-1]["operation"] == "deploy-42"
    # Without a key, each move gets an id of its own.
    other = client.post(ADVANCE, headers=AUTH).json()
    assert len(other["operation"]) == 16 and other["version"] == 3
    # The same key for another kind of move: refused, nothing moves.
    reused = client.post(ROLLBACK, headers={**AUTH, "Idempotency-Key": "deploy-42"})
    assert reused.status_code == 422
    assert reused.json()["detail"] == (
        "operation deploy-42 already advanced the rollout at version 2: it is not a rollback; "
        "nothing was changed (use another Idempotency-Key for another move)"
    )
    assert manager.version == 3
    for bad in ("", "has space", "x" * 65, "semi;colon"):
        refused = client.post(ADVANCE, headers={**AUTH, "Idempotency-Key": bad})
        assert refused.status_code == 400
        assert refused.json() == {"detail": "BAD_IDEMPOTENCY_KEY"}
    assert manager.version == 3


def test_expected_version_in_the_body_works_like_if_match(client, manager):
    stale = client.post(ROLLBACK, headers=AUTH, json={"expected_version": 0})
    assert stale.status_code == 412
    assert manager.version == 1
    ok = client.post(ADVANCE, headers=AUTH, json={"expected_version": 1})
    assert ok.status_code == 200
    assert ok.json()["version"] == 2


@pytest.mark.parametrize(
    ("headers", "body", "code", "detail"),
    [
        ({"If-Match": "1"}, None, 400, "BAD_PRECONDITION"),  # unquoted
        ({"If-Match": '" 1"'}, None, 400, "BAD_PRECONDITION"),  # a space is no tag character
        ({"If-Match": '"1'}, None, 400, "BAD_PRECONDITION"),
        ({"If-Match": '"1" "2"'}, None, 400, "BAD_PRECONDITION"),  # a list needs its commas
        ({"If-Match": 'w/"1"'}, None, 400, "BAD_PRECONDITION"),
        ({"If-Match": '"1", *'}, None, 400, "BAD_PRECONDITION"),
        ({"If-Match": '"1"'}, {"expected_version": 2}, 400, "BAD_PRECONDITION"),
        ({"If-Match": '"01"'}, {"expected_version": 1}, 400, "BAD_PRECONDITION"),
        ({}, {"expected_version": -1}, 422, None),
        ({}, {"expected_version": "1"}, 422, None),
        ({}, {"expected_version": 1.5}, 422, None),
        ({}, {"expected_version": True}, 422, None),
        ({}, {"expected_version": 2**53}, 422, None),
    ],
)
def test_bad_preconditions_are_refused_before_anything_moves(
    client, manager, headers, body, code, detail
):
    answer = client.post(ADVANCE, headers={**AUTH, **headers}, json=body)
    assert answer.status_code == code, answer.text
    if detail is not None:
        assert answer.json() == {"detail": detail}
    assert manager.version == 1


@pytest.mark.parametrize(
    "header",
    ['"01"', 'W/"1"', '"+1"', '"1.0"', '"one"', '"-1"', '"99999999999999999"', '"1,"', '""'],
)
def test_if_match_compares_entity_tags_strongly(client, manager, header):
    # Only the ETag itself, character for character, matches "1": never a weak tag, never
    # another spelling of the number.
    answer = client.post(ADVANCE, headers={**AUTH, "If-Match": header})
    assert answer.status_code == 412, answer.text
    assert answer.json() == {"detail": "VERSION_MISMATCH"}
    assert answer.headers["etag"] == tag(manager)
    assert manager.version == 1


def test_boundary_if_match_names_versions_up_to_the_last_a_state_holds(client, manager):
    # 2^53 - 1, sixteen digits, is a version a tag may name (the body's expected_version stops
    # there too): it names no state here, so the move is refused as stale (412), not as a
    # header that names nothing the body asks for (400)
    last = 2**53 - 1
    header = {"If-Match": f'"{manager.get_status()["incarnation"]}.{last}"'}
    answer = client.post(ADVANCE, headers={**AUTH, **header}, json={"expected_version": last})
    assert answer.status_code == 412, answer.text
    assert answer.json() == {"detail": "VERSION_MISMATCH"}
    assert manager.version == 1


@pytest.mark.parametrize("header", ['"7", "1"', '"1", "2"', ' W/"1" , "1" ', ', "1",,'])
def test_if_match_list_moves_when_one_member_is_the_etag(client, manager, header):
    answer = client.post(ADVANCE, headers={**AUTH, "If-Match": header})
    assert answer.status_code == 200, answer.text
    assert manager.version == 2


@pytest.mark.parametrize("order", ["bare first", "bare last", "among others"])
def test_if_match_may_name_a_version_both_bare_and_with_its_incarnation(client, manager, order):
    # Two tags of one version, one from a client older than incarnations: both name it.
    tags = {
        "bare first": ['"1"', tag(manager)],
        "bare last": [tag(manager), '"1"'],
        "among others": ['"7"', '"1"', tag(manager), '"0"'],
    }[order]
    answer = client.post(ADVANCE, headers={**AUTH, "If-Match": ", ".join(tags)})
    assert answer.status_code == 200, answer.text
    assert manager.version == 2


def test_if_match_list_without_the_etag_is_412(client, manager):
    assert client.post(ADVANCE, headers=AUTH).status_code == 200
    answer = client.post(ADVANCE, headers={**AUTH, "If-Match": '"1", W/"2", "02", "3"'})
    assert answer.status_code == 412
    assert answer.headers["etag"] == tag(manager)
    assert manager.version == 2


def test_if_match_star_means_any_version(client, manager):
    assert client.post(ADVANCE, headers={**AUTH, "If-Match": "*"}).status_code == 200
    assert manager.version == 2


def test_the_same_if_match_from_many_threads_moves_once(client, manager):
    answers: list[int] = []
    lock = threading.Lock()

    def press() -> None:
        code = client.post(ADVANCE, headers={**AUTH, "If-Match": '"1"'}).status_code
        with lock:
            answers.append(code)

    threads = [threading.Thread(target=press) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(answers) == [200] + [412] * 7
    assert manager.version == 2


def test_openapi_documents_304_409_and_412(client):
    paths = client.get("/openapi.json").json()["paths"]
    assert "304" in paths[STATUS]["get"]["responses"]
    for path in (ADVANCE, ROLLBACK):
        responses = paths[path]["post"]["responses"]
        assert {"409", "412", "503"} <= set(responses)


def test_cli_moves_send_the_version_the_status_answered(client, manager, monkeypatch, capsys):
    import driftgate.cli

    seen: list[tuple[str, str, dict[str, str]]] = []

    def exchange(method: str, url: str, *, timeout: float, body=None, headers=None) -> Answer:
        path = urllib.parse.urlsplit(url).path
        seen.append((method, path, dict(headers or {})))
        answer = client.request(method, path, headers=headers, content=body)
        return _answer(url, answer.status_code, dict(answer.headers), answer.content)

    monkeypatch.setattr(driftgate.cli, "exchange", exchange)
    monkeypatch.setenv("DRIFTGATE_ADMIN_TOKEN", TOKEN)
    assert main(["advance", "--url", "http://service"]) == 0
    assert seen[0][:2] == ("GET", STATUS)
    assert seen[1][2]["If-Match"] == tag(manager).replace(".2", ".1")
    assert len(seen[1][2]["Idempotency-Key"]) == 32
    assert manager.version == 2
    # Someone else moves between this command's read and its move: it is told, nothing moves.
    assert main(["advance", "--url", "http://service", "--expected-version", "1"]) == EXIT_CHANGED
    assert "changed since version 1 was read; nothing was changed" in capsys.readouterr().err
    assert manager.version == 2
    assert main(["rollback", "--url", "http://service", "--expected-version", "2", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["version"] == 3


def _answer(url: str, status: int, headers: dict[str, str], body: bytes) -> Answer:
    message = http.client.HTTPMessage()
    for name, value in headers.items():
        message[name] = value
    return Answer(url, status, message, body)


@pytest.mark.parametrize("value", ["-1", "x", "1.0", "", "99999999999999999"])
def test_cli_refuses_a_bad_expected_version(value, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["advance", "--url", "http://service", "--expected-version", value])
    assert exit_.value.code == 2
    assert "expected a rollout version" in capsys.readouterr().err


def test_the_file_store_is_a_store_argument_and_state_path_its_shorthand(tmp_path):
    path = tmp_path / "rollout.json"
    manager = driftgate.RolloutManager(
        RolloutConfig.default(), store=driftgate.FileStateStore(path), name="checkout"
    )
    assert manager.state_path == str(path) and manager.store is None
    assert manager.manual_advance("alice").version == 2
    del manager
    again = driftgate.RolloutManager(RolloutConfig.default(), state_path=path)
    assert again.version == 2
    with pytest.raises(ValueError, match="a state_path or a store, not both"):
        driftgate.RolloutManager(
            RolloutConfig.default(), state_path=path, store=driftgate.FileStateStore(path)
        )


def test_the_cli_sends_the_etag_it_read_as_it_came():
    from driftgate.cli import _precondition_of

    def status(etag: str | None) -> Answer:
        headers = {} if etag is None else {"ETag": etag}
        return _answer("http://service" + STATUS, 200, headers, b'{"version": 7}')

    # Compared strongly by the service, so never rebuilt from the number it stands for.
    assert _precondition_of(status('"a1b2.7"')) == (7, '"a1b2.7"')
    assert _precondition_of(status('"7"')) == (7, '"7"')
    assert _precondition_of(status(None)) == (7, '"7"')
    assert _precondition_of(status('W/"7"')) == (7, '"7"')  # a weak tag can never match


def test_the_state_endpoint_answers_the_whole_document_with_its_etag(client, manager):
    assert client.post(ADVANCE, headers=AUTH).status_code == 200
    answer = client.get("/api/guardian/rollout/state")
    assert answer.status_code == 200
    assert answer.headers["content-type"] == "application/json"
    document = answer.json()
    assert answer.headers["etag"] == tag(manager) == f'"{document["incarnation"]}.2"'
    assert document["version"] == 2 and document["stage_name"] == "quarter"
    assert [t["to"] for t in document["transitions"]] == ["canary", "quarter"]
    assert document == json.loads(Path(manager.state_path).read_text())


# -- A replica behind the store ----------------------------------------------------------------


class MemoryStore(driftgate.SharedStateStore):
    """One rollout document in memory, committed by compare-and-set on its version: what the
    replicas of a fleet share, without Redis. Nobody hints a commit: a replica learns of
    another's only when it reads the store."""

    def __init__(self) -> None:
        super().__init__()
        self.document: str | None = None

    def describe(self) -> str:
        return "memory"

    def load(self) -> str | None:
        return self.document

    def commit(self, version: int, document: str, automatic: bool) -> tuple[str, str | None]:
        held = 0 if self.document is None else json.loads(self.document)["version"]
        if held != version - 1:
            return ("conflict", self.document)
        self.document = document
        return ("committed", None)


@pytest.fixture
def fleet(monkeypatch):
    """(store, the replica answering HTTP, its client, another replica)."""
    monkeypatch.setenv("DRIFTGATE_ADMIN_TOKEN", TOKEN)
    store = MemoryStore()

    def replica() -> driftgate.RolloutManager:
        clock = ManualClock(1_700_000_000.0)
        tracker = DriftTracker(clock=clock, registry=driftgate.MetricsRegistry())
        return driftgate.RolloutManager(
            RolloutConfig.default(),
            enforcer=Enforcer(EnforceOptions(enforce=True), tracker),
            clock=clock,
            store=store,
        )

    behind, other = replica(), replica()
    app = FastAPI()
    app.include_router(create_router(tracker=behind.enforcer.tracker, manager=behind))
    return store, behind, TestClient(app), other


def test_a_replica_behind_the_store_answers_a_412_with_the_stored_etag(fleet):
    store, behind, client, other = fleet
    assert other.manual_advance("ops").version == 2  # the replica answering has not heard
    assert behind.version == 1
    # A header naming no state at all: the 412 names the state the store holds, not the one
    # this replica last saw.
    answer = client.post(ADVANCE, headers={**AUTH, "If-Match": f"W/{tag(other)}"})
    assert answer.status_code == 412
    assert answer.headers["etag"] == tag(other)
    assert json.loads(store.document)["version"] == 2


def test_a_replica_behind_the_store_moves_on_a_list_naming_the_stored_state(fleet):
    store, behind, client, other = fleet
    stale = tag(behind)
    other.manual_advance("ops")
    assert behind.version == 1
    # The list names this replica's old state and the stored one: the stored one holds.
    answer = client.post(ADVANCE, headers={**AUTH, "If-Match": f"{stale}, {tag(other)}"})
    assert answer.status_code == 200, answer.text
    assert answer.json()["version"] == 3
    assert json.loads(store.document)["version"] == 3


def test_a_move_a_shared_store_cannot_hold_is_503_state_store(fleet):
    store, behind, client, _ = fleet
    # A state at the last version a state holds: one more move cannot be written anywhere.
    held = json.loads(store.document)
    held["version"] = 2**53 - 1
    store.document = json.dumps(held)
    behind.refresh()
    answer = client.post(ADVANCE, headers=AUTH)
    assert answer.status_code == 503
    assert answer.json() == {"detail": "STATE_STORE"}
    assert json.loads(store.document)["version"] == 2**53 - 1


class ContestedStore(MemoryStore):
    """A store on which every commit after the first loses to another replica's."""

    def commit(self, version: int, document: str, automatic: bool) -> tuple[str, str | None]:
        if self.document is None:
            return super().commit(version, document, automatic)
        return ("conflict", self.document)


def test_a_move_that_keeps_losing_to_other_replicas_is_409_or_412_when_conditional(monkeypatch):
    monkeypatch.setenv("DRIFTGATE_ADMIN_TOKEN", TOKEN)
    clock = ManualClock(1_700_000_000.0)
    manager = driftgate.RolloutManager(
        RolloutConfig.default(),
        clock=clock,
        registry=driftgate.MetricsRegistry(),
        store=ContestedStore(),
    )
    app = FastAPI()
    app.include_router(create_router(tracker=DriftTracker(clock=clock), manager=manager))
    client = TestClient(app)
    # Without a precondition the move is tried again and again, then given up as a conflict...
    unconditional = client.post(ADVANCE, headers=AUTH)
    assert unconditional.status_code == 409
    assert unconditional.json() == {"detail": "STATE_CONFLICT"}
    # ...with one, the state it names is gone as soon as another replica commits
    conditional = client.post(ADVANCE, headers={**AUTH, "If-Match": tag(manager)})
    assert conditional.status_code == 412
    assert conditional.json() == {"detail": "VERSION_MISMATCH"}
    assert manager.version == 1
