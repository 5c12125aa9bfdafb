"""`driftgate status --check`: the exit code says whether the rollout needs a person, from the
status a real manager reports; and `driftgate token-hash`, which never shows the token."""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import Iterator
from typing import Any

import pytest

import driftgate
from driftgate import RolloutConfig, RolloutManager, RolloutStage
from driftgate.cli import main
from driftgate.identity import TokenFile, token_digest
from servers import json_server

EXIT_OK, EXIT_AWAITING_APPROVAL, EXIT_NEEDS_ATTENTION = 0, 4, 5


def stages() -> RolloutConfig:
    return RolloutConfig(
        [
            RolloutStage("canary", 10, 3600, 0.01, False),
            RolloutStage("quarter", 25, 3600, 0.01, True),
            RolloutStage("full", 100, 0, 0.01, False),
        ]
    )


@pytest.fixture
def manager(enforcer, rollout_clock) -> RolloutManager:
    return RolloutManager(stages(), enforcer, clock=rollout_clock)


@pytest.fixture
def service(manager: RolloutManager) -> Iterator[str]:
    """A status endpoint on 127.0.0.1 answering the manager's status; yields its URL."""

    def answer(method: str, path: str, body: bytes) -> tuple[int, Any]:
        return status_of(path, manager)

    with json_server(answer) as base:
        yield base


def check(url: str, capsys, *flags: str) -> tuple[int, str]:
    code = main(["status", "--url", url, "--check", *flags])
    out, err = capsys.readouterr()
    assert err == ""
    return code, out


def test_a_fresh_rollout_needs_nobody(service, capsys, monkeypatch):
    monkeypatch.delenv("GITHUB_ACTIONS", raising=False)
    code, out = check(service, capsys)
    assert code == EXIT_OK
    assert (
        "check      nothing needs a person: stage canary (10%), active, waiting for duration"
        in (out)
    )
    assert "::" not in out


def test_a_stage_done_before_one_that_needs_approval_exits_4(
    service, manager, rollout_clock, capsys, monkeypatch
):
    monkeypatch.setenv("GITHUB_ACTIONS", "true")
    rollout_clock.advance(3599)
    assert check(service, capsys)[0] == EXIT_OK  # a second before its minimum time
    rollout_clock.advance(1)
    assert manager.evaluate(0.001).message.startswith("Ready but requires approval")
    code, out = check(service, capsys)
    assert code == EXIT_AWAITING_APPROVAL
    assert out.splitlines()[-1] == (
        "::warning title=driftgate rollout::stage canary (10%25) is done and waits for approval "
        "to enter quarter (25%25): `driftgate advance` (needs rollout:advance)"
    )
    status = manager.get_status()
    assert status["awaiting_approval"] is True
    assert status["next_stage"]["name"] == "quarter"


def test_an_error_rate_over_the_limit_is_not_waiting_for_approval(
    manager, rollout_clock, service, capsys
):
    rollout_clock.advance(3600)
    manager.evaluate(0.001)
    assert manager.get_status()["awaiting_approval"] is True
    # the stage's last rate above its maximum: a rollback is due, not an approval
    manager_without_rollback = RolloutManager(
        RolloutConfig(list(stages().stages), rollback_on_error=False),
        clock=rollout_clock,
    )
    rollout_clock.advance(3600)
    manager_without_rollback.evaluate(0.5)
    assert manager_without_rollback.get_status()["awaiting_approval"] is False


def test_an_aborted_rollout_exits_5_with_an_error_annotation(service, manager, capsys, monkeypatch):
    monkeypatch.setenv("GITHUB_ACTIONS", "true")
    manager.manual_rollback("alice", "drift")
    code, out = check(service, capsys)
    assert code == EXIT_NEEDS_ATTENTION
    assert out.splitlines()[-1].startswith(
        "::error title=driftgate rollout::the rollout is aborted"
    )


def test_a_failed_last_check_exits_5(service, manager, capsys, monkeypatch):
    monkeypatch.delenv("GITHUB_ACTIONS", raising=False)

    def broken() -> float:
        raise TimeoutError("prometheus did not answer")

    manager.error_rate_source = broken
    decision = asyncio.run(manager.check_and_advance())
    assert decision.action == driftgate.DecisionAction.ANALYSIS_FAILED
    last = manager.get_status()["last_check"]
    assert last is not None and last["failed"] is True and last["action"] == "analysis_failed"
    code, out = check(service, capsys)
    assert code == EXIT_NEEDS_ATTENTION
    assert "failed at stage canary (10%): Holding: error-rate source failed (TimeoutError)" in out
    # the next good check clears it
    manager.error_rate_source = lambda: 0.0
    asyncio.run(manager.check_and_advance())
    assert manager.get_status()["last_check"]["failed"] is False
    assert check(service, capsys)[0] == EXIT_OK


def test_check_with_json_prints_the_status_and_exits_by_it(service, manager, capsys, monkeypatch):
    monkeypatch.delenv("GITHUB_ACTIONS", raising=False)
    manager.manual_rollback("alice", "drift")
    code, out = check(service, capsys, "--json")
    assert code == EXIT_NEEDS_ATTENTION
    assert json.loads(out)["state"] == "aborted"


def test_without_check_the_exit_is_0_whatever_the_state(service, manager, capsys):
    manager.manual_rollback("alice", "drift")
    assert main(["status", "--url", service]) == EXIT_OK


def status_of(path: str, manager: RolloutManager) -> tuple[int, Any]:
    """What a service of one rollout answers: its status, and 404 for the list of several."""
    if path == "/api/guardian/rollouts":
        return 404, {"detail": "Not Found"}
    return 200, manager.get_status()


def test_the_status_sends_the_token_when_one_is_set(monkeypatch, manager):
    def answer(method: str, path: str, body: bytes) -> tuple[int, Any]:
        return status_of(path, manager)

    with json_server(answer) as base:
        monkeypatch.setenv("DRIFTGATE_ADMIN_TOKEN", "reader-" + "r" * 40)
        import driftgate.cli

        sent: list[dict[str, str]] = []
        real = driftgate.cli.exchange

        def spy(method: str, url: str, **kwargs: Any) -> Any:
            sent.append(dict(kwargs.get("headers") or {}))
            return real(method, url, **kwargs)

        monkeypatch.setattr(driftgate.cli, "exchange", spy)
        assert main(["status", "--url", base]) == EXIT_OK
    assert sent[0]["Authorization"] == "Bearer reader-" + "r" * 40


# -- token-hash ------------------------------------------------------------------------------


class Stdin(io.StringIO):
    def isatty(self) -> bool:
        return False


TOKEN = "tok-" + "k" * 40


def test_token_hash_prints_a_line_the_token_file_reads(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr("sys.stdin", Stdin(TOKEN + "\n"))
    code = main(["token-hash", "--name", "alice", "--scopes", "rollout:advance,rollout:rollback"])
    out, err = capsys.readouterr()
    assert code == 0 and err == ""
    assert TOKEN not in out
    assert out == f"alice  {token_digest(TOKEN)}  rollout:advance,rollout:rollback\n"
    (tmp_path / "approvers.tokens").write_text(out)
    found = TokenFile.load(tmp_path / "approvers.tokens").identify(TOKEN)
    assert found is not None and found.name == "alice"


@pytest.mark.parametrize(
    ("stdin", "flags", "message"),
    [
        ("short\n", ["--scopes", "rollout:read"], "the token has 5 characters"),
        (TOKEN + "\n" + TOKEN + "\n", ["--scopes", "rollout:read"], "more than one line"),
        (TOKEN, ["--scopes", "rollout:deploy"], "unknown scope 'rollout:deploy'"),
        (TOKEN, ["--scopes", ""], "unknown scope ''"),
        (TOKEN[:10] + " " + TOKEN, ["--scopes", "rollout:read"], "contains whitespace"),
    ],
)
def test_token_hash_refuses_bad_input_without_showing_the_token(
    monkeypatch, capsys, stdin, flags, message
):
    monkeypatch.setattr("sys.stdin", Stdin(stdin))
    code = main(["token-hash", "--name", "alice", *flags])
    out, err = capsys.readouterr()
    assert code == 2 and out == ""
    assert message in err and len(err.splitlines()) == 1
    assert TOKEN not in err and "'short'" not in err


def test_token_hash_refuses_a_bad_name(monkeypatch, capsys):
    monkeypatch.setattr("sys.stdin", Stdin(TOKEN))
    assert main(["token-hash", "--name", "alice smith", "--scopes", "rollout:read"]) == 2
    assert "name 'alice smith'" in capsys.readouterr().err


def test_a_move_refused_for_a_scope_names_it(monkeypatch, capsys):
    def answer(method: str, path: str, body: bytes) -> tuple[int, Any]:
        if method == "GET":
            return 200, {"version": 3}
        return 403, {"detail": "MISSING_SCOPE: rollout:rollback"}

    monkeypatch.setenv("DRIFTGATE_ADMIN_TOKEN", TOKEN)
    with json_server(answer) as base:
        assert main(["rollback", "--url", base]) == 2
    err = capsys.readouterr().err
    assert err == (
        "driftgate rollback: the service answered 403 MISSING_SCOPE: rollout:rollback (the "
        "approver of DRIFTGATE_ADMIN_TOKEN does not hold that scope)\n"
    )
    assert TOKEN not in err


# -- One exit code for the status each kind of decision leaves behind ------------------------

HOUR = 3600.0


def four_eyes_stages() -> RolloutConfig:
    """a (1 h) -> b (1 h, entered automatically) -> c (two people must approve entering it)."""
    return RolloutConfig(
        [
            RolloutStage("a", 10, HOUR, 0.01, False),
            RolloutStage("b", 50, HOUR, 0.01, False),
            RolloutStage("c", 100, 0, 0.01, True, approvals_required=2),
        ]
    )


def broken_source() -> float:
    raise ConnectionError("the error-rate source is down")


def drive(manager: RolloutManager, clock: driftgate.ManualClock, action: str) -> Any:
    """Leads `manager` to a decision of kind `action` and returns that decision. The holds are
    made where the next stage needs approval, so a status that took them for a wait for
    approval would exit 4."""
    if action == "ANALYSIS_FAILED":
        manager.error_rate_source = broken_source
        return asyncio.run(manager.check_and_advance())
    if action == "ABORTED":
        return manager.evaluate(0.5)
    if action in ("RESUMED", "ALREADY_ABORTED"):
        manager.manual_rollback("ops")
        if action == "RESUMED":
            return manager.manual_advance("ops")
        return manager.manual_rollback("ops")
    if action == "CONFLICT":
        return manager.manual_advance("ops", expected_version=99)
    clock.advance(HOUR)
    if action == "ADVANCED":
        return manager.evaluate(0.0)
    manager.manual_advance("ops")  # b, whose next stage needs approval
    clock.advance(HOUR)
    if action == "ROLLED_BACK":
        return manager.evaluate(0.5)
    if action == "HELD":
        return manager.evaluate_counts(1, 100)  # 1 %: at the limit, its upper bound above it
    if action == "INSUFFICIENT_DATA":
        manager.min_requests = 100
        return manager.evaluate_counts(0, 99)
    waiting = manager.evaluate(0.0)
    if action == "WAITING_FOR_APPROVAL":
        return waiting
    first = manager.manual_advance("alice")
    if action == "APPROVAL_RECORDED":
        return first
    if action == "ALREADY_APPROVED":
        return manager.manual_advance("alice")
    manager.manual_advance("bob")  # c: completed
    return manager.evaluate(0.0)  # AT_FINAL_STAGE


# A person is needed only to approve (4), or to look at an aborted or failing rollout (5).
EXPECTED_EXIT = {
    "ADVANCED": EXIT_OK,
    "RESUMED": EXIT_OK,
    "ROLLED_BACK": EXIT_OK,
    "ABORTED": EXIT_NEEDS_ATTENTION,
    "HELD": EXIT_OK,
    "WAITING_FOR_APPROVAL": EXIT_AWAITING_APPROVAL,
    "INSUFFICIENT_DATA": EXIT_OK,
    "AT_FINAL_STAGE": EXIT_OK,
    "ALREADY_ABORTED": EXIT_NEEDS_ATTENTION,
    "ANALYSIS_FAILED": EXIT_NEEDS_ATTENTION,
    "CONFLICT": EXIT_OK,
    "APPROVAL_RECORDED": EXIT_AWAITING_APPROVAL,
    "ALREADY_APPROVED": EXIT_AWAITING_APPROVAL,
}


def test_every_decision_action_has_an_expected_exit():
    assert set(EXPECTED_EXIT) == {action.name for action in driftgate.DecisionAction}


@pytest.mark.parametrize("action", sorted(EXPECTED_EXIT))
def test_status_check_exits_by_what_the_last_decision_left(
    action, enforcer, rollout_clock, capsys, monkeypatch
):
    monkeypatch.delenv("GITHUB_ACTIONS", raising=False)
    manager = RolloutManager(four_eyes_stages(), enforcer, clock=rollout_clock, confidence=0.95)
    decision = drive(manager, rollout_clock, action)
    assert decision.action.name == action

    def answer(method: str, path: str, body: bytes) -> tuple[int, Any]:
        return status_of(path, manager)

    with json_server(answer) as url:
        code, _ = check(url, capsys)
    assert code == EXPECTED_EXIT[action]
