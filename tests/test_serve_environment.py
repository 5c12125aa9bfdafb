"""`driftgate serve` and the environment: every variable the values name (the store's URL, the
admin token's, a webhook's URL and secret) must be set and not empty, or `--check` and the
start both refuse with exit 2 and one line naming it, never a value."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from driftgate.cli import main

SECRET = "never-printed-" + "s" * 30

CASES = {
    "store URL": (
        "rollout: {enabled: true, store: {url_env: DG_TEST_REDIS_URL}}\n",
        "rollout.store.url_env",
        "DG_TEST_REDIS_URL",
        {},
    ),
    "admin token": (
        "admin: {token_env: DG_TEST_ADMIN_TOKEN}\n",
        "admin.token_env",
        "DG_TEST_ADMIN_TOKEN",
        {},
    ),
    "webhook URL": (
        "notifications: [{kind: webhook, url_env: DG_TEST_HOOK_URL, "
        "secret_env: DG_TEST_HOOK_SECRET}]\n",
        "notifications[0].url_env",
        "DG_TEST_HOOK_URL",
        {"DG_TEST_HOOK_SECRET": SECRET},
    ),
    "webhook secret": (
        "notifications: [{kind: webhook, url_env: DG_TEST_HOOK_URL, "
        "secret_env: DG_TEST_HOOK_SECRET}]\n",
        "notifications[0].secret_env",
        "DG_TEST_HOOK_SECRET",
        {"DG_TEST_HOOK_URL": "https://hooks.example.com/" + SECRET},
    ),
}


@pytest.fixture
def serving(monkeypatch) -> Iterator[list[object]]:
    """uvicorn.run replaced: a start that gets past the checks is recorded, not served; the
    logging serve sets up is undone afterwards."""
    import uvicorn

    started: list[object] = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kwargs: started.append(app))
    logger = logging.getLogger("driftgate")
    before = (logger.handlers[:], logger.level, logger.propagate)
    yield started
    logger.handlers[:], logger.level, logger.propagate = before


@pytest.mark.parametrize("value", [None, ""], ids=["unset", "empty"])
@pytest.mark.parametrize("check", [True, False], ids=["check", "start"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_serve_refuses_a_variable_the_values_name_that_is_unset_or_empty(
    case, check, value, tmp_path: Path, monkeypatch, capsys, serving
):
    values, key, variable, others = CASES[case]
    for name in (
        "DG_TEST_REDIS_URL",
        "DG_TEST_ADMIN_TOKEN",
        "DG_TEST_HOOK_URL",
        "DG_TEST_HOOK_SECRET",
    ):
        monkeypatch.delenv(name, raising=False)
    for name, other in others.items():
        monkeypatch.setenv(name, other)
    if value is not None:
        monkeypatch.setenv(variable, value)
    path = tmp_path / "values.yaml"
    path.write_text(values)
    flags = ["--check"] if check else ["--state-dir", str(tmp_path / "state")]
    assert main(["serve", "--config", str(path), *flags]) == 2
    out, err = capsys.readouterr()
    state = "empty" if value == "" else "not set"
    assert out == ""
    said = f"{key} names {variable}, which is {state}: export it"
    assert err == f"driftgate serve: --config {path}: {said}\n"
    assert SECRET not in err
    assert serving == []
    assert not (tmp_path / "state").exists()


def test_serve_check_passes_once_every_named_variable_is_set(tmp_path, monkeypatch, capsys):
    path = tmp_path / "values.yaml"
    path.write_text(
        "admin: {token_env: DG_TEST_ADMIN_TOKEN}\n"
        "notifications: [{kind: webhook, url_env: DG_TEST_HOOK_URL, "
        "secret_env: DG_TEST_HOOK_SECRET}]\n"
    )
    monkeypatch.setenv("DG_TEST_ADMIN_TOKEN", SECRET)
    monkeypatch.setenv("DG_TEST_HOOK_URL", "https://hooks.example.com/x")
    monkeypatch.setenv("DG_TEST_HOOK_SECRET", SECRET)
    assert main(["serve", "--config", str(path), "--check"]) == 0
    assert capsys.readouterr() == (f"{path}: valid\n", "")


def test_an_admin_token_the_values_do_not_name_stays_optional_and_closed(
    tmp_path, monkeypatch, capsys, serving
):
    from fastapi.testclient import TestClient

    monkeypatch.delenv("DRIFTGATE_ADMIN_TOKEN", raising=False)
    path = tmp_path / "values.yaml"
    path.write_text("rollout: {enabled: true}\nadmin: {protect_status: false}\n")
    assert main(["serve", "--config", str(path), "--check"]) == 0
    assert main(["serve", "--config", str(path), "--state-dir", str(tmp_path / "state")]) == 0
    (app,) = serving
    refused = TestClient(app).post(
        "/api/guardian/rollout/advance", headers={"Authorization": "Bearer anything"}
    )
    assert (refused.status_code, refused.json()) == (403, {"detail": "ADMIN_DISABLED"})
