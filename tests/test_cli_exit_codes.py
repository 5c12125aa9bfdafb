"""The exit codes of `driftgate status|advance|rollback`: one table in the code
(`driftgate.cli.EXIT_CODES`) and one in docs/cli.md, the same; and each row as the command
really exits against a local server that answers that way."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import pytest

from driftgate import ReasonCode
from driftgate.cli import EXIT_CODES, Unanswered, main
from servers import free_port, json_server

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "exit-code-test-token-" + "t" * 20
MOVED = {
    "success": True,
    "message": "Manually advanced to stage quarter",
    "new_stage": "quarter",
    "new_percentage": 25.0,
}


def documented_exit_codes() -> dict[str, int]:
    """The rows of docs/cli.md's answer table: `answer` | exit."""
    text = (ROOT / "docs" / "cli.md").read_text()
    section = text.split("## What each answer exits with", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| `([^`]+)` \| (\d+) \|", section, re.M)
    assert len(rows) == len({answer for answer, _ in rows}), "an answer documented twice"
    return {answer: int(code) for answer, code in rows}


DOCUMENTED = documented_exit_codes()


def test_the_documented_table_is_the_codes_table():
    assert {str(answer): code for answer, code in EXIT_CODES.items()} == DOCUMENTED


def test_every_answer_the_service_can_give_has_a_row():
    statuses = {"2xx", "400", "401", "403", "404", "409", "412", "413", "503", "4xx", "5xx"}
    reasons = {"STATE_UNKNOWN", "STATE_REGRESSED", "UNKNOWN_ROLLOUT", "MOVE_QUEUE_FULL"}
    assert statuses | reasons | {u.value for u in Unanswered} <= set(DOCUMENTED)
    assert reasons <= {code.value for code in ReasonCode}


def test_the_documented_codes_keep_their_meaning_and_the_new_ones_are_distinct():
    assert (DOCUMENTED["2xx"], DOCUMENTED["400"], DOCUMENTED["unreachable"]) == (0, 1, 2)
    new = {
        DOCUMENTED[answer] for answer in ("412", "STATE_STORE", "STATE_UNKNOWN", "STATE_REGRESSED")
    }
    assert new == {6, 7, 8, 9}  # none of 3, 4, 5, which adapt and status --check give


# -- each row, against a server that answers that way -----------------------------------------


def reply_for(answer: str) -> tuple[int, Any]:
    """The (status, body) a service gives for a documented answer."""
    if answer == "2xx":
        return 200, MOVED
    if answer in ("4xx", "5xx", "move 5xx"):
        return {"4xx": 418, "5xx": 500, "move 5xx": 502}[answer], {"detail": "Proxy says no"}
    if answer.isdigit():
        return int(answer), {"detail": "Refused for a reason"}
    reason = ReasonCode(answer)
    status = 404 if reason is ReasonCode.UNKNOWN_ROLLOUT else 503
    return status, {"detail": reason.value}


def run_against(answer: str, capsys) -> tuple[int, str, str]:
    """Runs the command that meets `answer`; returns its exit code, stdout and stderr."""
    token = ["--expected-version", "3"]
    if answer == Unanswered.UNREACHABLE:
        code = main(["status", "--url", f"http://127.0.0.1:{free_port()}"])
    else:
        move = answer not in ("5xx", "503", Unanswered.TIMEOUT)  # these rows are status reads

        def answer_request(method: str, path: str, body: bytes) -> tuple[int, Any]:
            if answer == Unanswered.TIMEOUT or (
                answer == Unanswered.MOVE_UNANSWERED and method == "POST"
            ):
                time.sleep(1.0)
                return 200, MOVED
            if method == "GET" and move:
                return 200, {"version": 3}
            return reply_for(answer)

        with json_server(answer_request) as base:
            command = ["advance", "--url", base, *token] if move else ["status", "--url", base]
            code = main([*command, "--timeout", "0.3"])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("answer", sorted(DOCUMENTED))
def test_each_answer_exits_with_its_documented_code(answer, capsys, monkeypatch):
    monkeypatch.setenv("DRIFTGATE_ADMIN_TOKEN", TOKEN)
    code, out, err = run_against(answer, capsys)
    assert code == DOCUMENTED[answer], err
    if code == 0:
        assert out.strip() == "Manually advanced to stage quarter: now quarter at 25%"
        return
    assert out == ""
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert TOKEN not in err


@pytest.mark.parametrize(
    ("answer", "said"),
    [
        ("STATE_UNKNOWN", "the move may have been applied: run the same command again with"),
        ("move unanswered", "the move may have been applied: run the same command again with"),
        ("412", "nothing was changed: check `driftgate status` and try again"),
        ("MOVE_QUEUE_FULL", "503 MOVE_QUEUE_FULL: nothing was changed: try again later"),
        ("STATE_REGRESSED", "moves stay refused until the rollout's state is repaired"),
    ],
)
def test_the_message_says_what_to_do(answer, said, capsys, monkeypatch):
    monkeypatch.setenv("DRIFTGATE_ADMIN_TOKEN", TOKEN)
    _, _, err = run_against(answer, capsys)
    assert said in err, err
    if "may have been applied" in said:  # with the key that learns what happened
        assert re.search(r"\(--idempotency-key [0-9a-f]{32}\)$", err.strip()), err


def test_a_move_answered_503_without_a_reason_may_have_been_applied(capsys, monkeypatch):
    """A proxy may answer 503 after it forwarded the move: only driftgate's own reason codes
    say that nothing was changed."""
    monkeypatch.setenv("DRIFTGATE_ADMIN_TOKEN", TOKEN)

    def answer_request(method: str, path: str, body: bytes) -> tuple[int, Any]:
        if method == "GET":
            return 200, {"version": 3}
        return 503, {"detail": "upstream connect error"}

    with json_server(answer_request) as base:
        code = main(["advance", "--url", base, "--expected-version", "3"])
    assert code == 8
    assert "the move may have been applied" in capsys.readouterr().err


# -- the service's URL ------------------------------------------------------------------------


def test_the_url_comes_from_driftgate_url_when_not_given(capsys, monkeypatch):
    with json_server(lambda method, path, body: (200, {"version": 3})) as base:
        monkeypatch.setenv("DRIFTGATE_URL", base)
        monkeypatch.setenv("DRIFTGATE_ADMIN_TOKEN", TOKEN)
        assert main(["advance", "--expected-version", "3"]) == 2  # reached: no transition
    assert "answered without a transition" in capsys.readouterr().err


@pytest.mark.parametrize("value", [None, ""])
def test_without_url_or_driftgate_url_the_error_names_both(value, capsys, monkeypatch):
    monkeypatch.delenv("DRIFTGATE_URL", raising=False)
    if value is not None:
        monkeypatch.setenv("DRIFTGATE_URL", value)
    assert main(["status"]) == 2
    assert capsys.readouterr().err == (
        "driftgate status: required: --url URL, or DRIFTGATE_URL set to the service's base URL\n"
    )


def test_a_malformed_driftgate_url_is_named(capsys, monkeypatch):
    monkeypatch.setenv("DRIFTGATE_URL", "localhost:8000")
    assert main(["status"]) == 2
    assert capsys.readouterr().err == (
        "driftgate status: DRIFTGATE_URL: 'localhost:8000': expected an http:// or https:// URL\n"
    )
