"""The documents against the code: the JWT claims as identity.py reads them, and the
documented decoding of a token runs as written."""

from __future__ import annotations

from pathlib import Path

from driftgate.identity import Scope, _claimed_scopes

ROOT = Path(__file__).resolve().parents[1]
RUNBOOK = (ROOT / "docs" / "runbook_rollout.md").read_text()


def table_row(text: str, first_cell: str) -> str:
    (row,) = [line for line in text.splitlines() if line.startswith(f"| {first_cell} |")]
    return row


def jwt_block() -> str:
    (block,) = [
        b.split("```", 1)[0]
        for b in RUNBOOK.split("```python\n")[1:]
        if "jwt.decode(token" in b.split("```", 1)[0]
    ]
    return block


def test_the_documented_jwt_decoding_reads_what_driftgate_reads(capsys):
    namespace: dict[str, object] = {"__name__": "__main__"}
    exec(compile(jwt_block(), "runbook_rollout.md", "exec"), namespace)
    claims = namespace["claims"]
    assert isinstance(claims, dict)
    # The example exercises both scope claims and the actor claim.
    assert isinstance(claims["scope"], str) and isinstance(claims["scp"], list)
    assert "preferred_username" in claims and "sub" in claims
    read = sorted(scope.value for scope in _claimed_scopes(claims))
    assert read == ["rollout:advance", "rollout:read"]
    assert capsys.readouterr().out == f"actor: alice\nscopes driftgate uses: {read}\n"
    assert namespace["driftgate_scopes"] == {scope.value for scope in Scope}


def test_the_jwt_claims_table_names_the_claims_identity_reads():
    section = RUNBOOK.split("### What driftgate reads from a JWT", 1)[1].split("\n## ", 1)[0]
    cells = {line.split(" | ")[0].removeprefix("| ") for line in section.splitlines()}
    assert {"`scope`", "`scp`", "`preferred_username`"} <= cells
    assert "`sub`" in table_row(section, "`preferred_username`")
