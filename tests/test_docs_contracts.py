"""The documents against the code: every DecisionAction, stage key and scope is documented,
the JWT claims as identity.py reads them (the documented decoding runs as written), where a
relative state_path lands, DRIFTGATE_URL and the verdict a handler acts on."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import driftgate
from driftgate import cli
from driftgate.identity import Scope, _claimed_scopes
from driftgate.settings import SettingsError, load_settings, parse_settings

ROOT = Path(__file__).resolve().parents[1]
RUNBOOK = (ROOT / "docs" / "runbook_rollout.md").read_text()


def table_row(text: str, first_cell: str) -> str:
    (row,) = [line for line in text.splitlines() if line.startswith(f"| {first_cell} |")]
    return row


def quoted(text: str) -> set[str]:
    return set(re.findall(r"`([^`]+)`", text))


def test_every_decision_action_is_documented():
    row = table_row((ROOT / "docs" / "rollout.md").read_text(), "`action`")
    documented = {name for name in quoted(row) if name.isupper()}
    assert documented == set(driftgate.DecisionAction.__members__)


def stage_keys_the_parser_accepts() -> set[str]:
    stage = {"name": "canary", "percentage": 10, "no_such_key": 1}
    with pytest.raises(SettingsError) as refused:
        parse_settings({"rollout": {"stages": [stage]}})
    known = re.search(r"\(known: ([^)]*)\)", str(refused.value))
    assert known is not None, refused.value
    return set(known.group(1).split(", "))


def test_every_stage_key_is_documented():
    keys = stage_keys_the_parser_accepts()
    assert "approvals_required" in keys
    assert keys <= quoted(table_row(RUNBOOK, "`rollout.stages`"))


def test_every_scope_is_documented():
    (paragraph,) = [p for p in RUNBOOK.split("\n\n") if p.startswith("Each approver holds scopes")]
    assert {scope.value for scope in Scope} <= quoted(paragraph)


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
    read = sorted(scope.value for scope in _claimed_scopes(claims)[0])
    assert read == ["rollout:advance", "rollout:read"]
    assert capsys.readouterr().out == f"actor: alice\nscopes driftgate uses: {read}\n"
    assert namespace["driftgate_scopes"] == {scope.value for scope in Scope}


def test_the_jwt_claims_table_names_the_claims_identity_reads():
    section = RUNBOOK.split("### What driftgate reads from a JWT", 1)[1].split("\n## ", 1)[0]
    cells = {line.split(" | ")[0].removeprefix("| ") for line in section.splitlines()}
    assert {"`scope`", "`scp`", "`preferred_username`"} <= cells
    assert "`sub`" in table_row(section, "`preferred_username`")


def test_a_relative_state_path_resolves_against_the_working_directory(tmp_path, monkeypatch):
    from driftgate.demo import create_demo_app

    values_folder, working = tmp_path / "config", tmp_path / "cwd"
    values_folder.mkdir()
    working.mkdir()
    (values_folder / "values.yaml").write_text(
        "rollout: {enabled: true, state_path: state/rollout.json}\n"
    )
    monkeypatch.chdir(working)
    create_demo_app(load_settings(values_folder / "values.yaml"))
    assert (working / "state" / "rollout.json").is_file()
    assert not (values_folder / "state").exists()
    row = table_row(RUNBOOK, "`rollout.state_path`")
    assert "resolved against the service's working directory, not the values file's" in row


def test_driftgate_url_is_documented_as_the_cli_default():
    assert cli.URL_ENV == "DRIFTGATE_URL"
    which = (ROOT / "docs" / "cli.md").read_text().split("## Which service", 1)[1]
    said = " ".join(which.split("\n## ", 1)[0].split())
    assert "without `--url`, the URL in the environment variable `DRIFTGATE_URL`" in said


def test_the_readme_says_a_handler_acts_on_pair_enforced():
    assert "A handler acts on `pair.enforced`" in (ROOT / "README.md").read_text()
