"""Stages that need several people: approvals_required, over the API, HTTP and values file."""

import pytest
from fastapi import FastAPI, Header
from fastapi.testclient import TestClient

import driftgate
from driftgate import DecisionAction, ManualClock, RolloutConfig, RolloutStage
from driftgate.fastapi import create_router
from driftgate.settings import SettingsError, parse_settings

STAGES = [
    RolloutStage("canary", 10, 0, 0.1),
    RolloutStage("half", 50, 0, 0.1, True, approvals_required=2),
    RolloutStage("full", 100, 0, 0.1, True),
]


@pytest.fixture
def manager(tmp_path):
    return driftgate.RolloutManager(
        RolloutConfig(STAGES), clock=ManualClock(1_700_000_000.0), state_path=tmp_path / "s.json"
    )


@pytest.fixture
def client(manager):
    def who(x_actor: str = Header()) -> str:  # each request names its person
        return x_actor

    app = FastAPI()
    app.include_router(create_router(tracker=driftgate.DriftTracker(), manager=manager, admin=who))
    return TestClient(app)


def advance(client, actor):
    return client.post("/api/guardian/rollout/advance", headers={"X-Actor": actor})


def test_the_stage_is_entered_by_the_second_distinct_person(client, manager):
    first = advance(client, "alice")
    assert first.status_code == 200
    assert first.json()["action"] == "approval_recorded"
    assert first.json()["new_stage"] == "canary"
    assert first.json()["version"] == 2
    status = client.get("/api/guardian/rollout/status").json()
    assert status["approvals"] == {"stage": "half", "required": 2, "approved_by": ["alice"]}
    assert status["enforced_percentage"] == 10
    twice = advance(client, "alice")
    assert twice.status_code == 400
    assert "alice already approved entering half" in twice.json()["detail"]
    assert manager.version == 2
    entered = advance(client, "bob")
    assert entered.json()["action"] == "advanced"
    assert entered.json()["new_percentage"] == 50
    status = client.get("/api/guardian/rollout/status").json()
    assert status["approvals"] is None  # full needs one person: nothing to gather
    history = [(t["actor"], t["from"], t["to"], t["reason"]) for t in status["transitions"]]
    assert history[-2:] == [
        ("alice", "canary", "canary", "approval 1 of 2 to enter half"),
        ("bob", "canary", "half", "manual advance"),
    ]


def test_a_rollback_forgets_the_approvals(client, manager):
    assert advance(client, "alice").json()["action"] == "approval_recorded"
    rolled = client.post("/api/guardian/rollout/rollback", headers={"X-Actor": "carol"})
    assert rolled.json()["action"] == "aborted"
    assert advance(client, "carol").json()["action"] == "resumed"
    assert client.get("/api/guardian/rollout/status").json()["approvals"]["approved_by"] == []
    assert advance(client, "alice").json()["action"] == "approval_recorded"


def test_approvals_through_the_python_api(manager):
    decision = manager.manual_advance("alice")
    assert (decision.success, decision.action) == (True, DecisionAction.APPROVAL_RECORDED)
    assert manager.manual_advance("alice").action == DecisionAction.ALREADY_APPROVED
    assert manager.manual_advance("bob").to_stage == "half"


def test_a_stage_reads_and_prints_its_approvals():
    stage = STAGES[1]
    assert stage.approvals_required == 2
    assert repr(stage).endswith("True, approvals_required=2)")
    assert stage == RolloutStage("half", 50, 0, 0.1, True, approvals_required=2)
    assert stage != RolloutStage("half", 50, 0, 0.1, True)
    with pytest.raises(ValueError, match="needs requires_approval"):
        RolloutStage("x", 10, 0, 0.1, approvals_required=2)
    with pytest.raises(ValueError, match="expected 1 to 10"):
        RolloutStage("x", 10, 0, 0.1, True, approvals_required=11)


def test_the_values_file_declares_four_eyes():
    stage = {"name": "half", "percentage": 50, "requires_approval": True, "approvals_required": 2}
    settings = parse_settings({"rollout": {"enabled": True, "stages": [stage]}})
    assert settings.rollout is not None
    assert settings.rollout.stages[0].approvals_required == 2
    for bad, fragment in (
        ({**stage, "approvals_required": 0}, "rollout.stages[0].approvals_required"),
        ({**stage, "approvals_required": "2"}, "rollout.stages[0].approvals_required"),
        ({**stage, "requires_approval": False}, "needs requires_approval"),
    ):
        with pytest.raises(SettingsError, match=fragment.replace("[", r"\[").replace("]", r"\]")):
            parse_settings({"rollout": {"enabled": True, "stages": [bad]}})
