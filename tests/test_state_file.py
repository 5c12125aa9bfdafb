"""The rollout state file as an attacker would try it: every refusal a StateError naming the
file (fuzzed and hand-picked), every file that loads a state the machine can reach, every
failed step of a write reported, and temp files and links handled."""

import json
import logging
import os
import random
import shutil
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

import driftgate
from driftgate import ManualClock, RolloutConfig, RolloutManager, StateError
from driftgate.demo import create_demo_app
from driftgate.fastapi import create_router
from driftgate.settings import parse_settings

START = 1_700_000_000.0


def valid_state(path: Path) -> dict:
    """A real state file: a rollout that moved a few times."""
    manager = RolloutManager(RolloutConfig.default(), state_path=path, clock=ManualClock(START))
    manager.manual_advance("ops")
    manager.manual_advance("alice")
    manager.manual_rollback("ops", "error spike")
    del manager
    return json.loads(path.read_text())


def load(path: Path) -> RolloutManager:
    return RolloutManager(RolloutConfig.default(), state_path=path, clock=ManualClock(START))


def assert_refused(path: Path, match: str) -> None:
    before = path.read_bytes()
    with pytest.raises(StateError, match=match) as caught:
        load(path)
    message = str(caught.value)
    assert str(path) in message
    assert message.isprintable() and message.isascii()
    assert path.read_bytes() == before  # never overwritten


# -- hand-picked: each of these once loaded, crashed, or loaded into an impossible state ------


def mutate(original: dict, **changes) -> str:
    return json.dumps({**original, **changes})


CASES = {
    "invalid UTF-8": (lambda s: json.dumps(s).encode().replace(b"ops", b"o\xffs"), "JSON"),
    "400-digit fraction": (
        lambda s: mutate(s, started_at="2023-11-14T22:13:20." + "1" * 400 + "Z"),
        "started_at",
    ),
    "year 0": (lambda s: mutate(s, started_at="0000-01-01T00:00:00Z"), "started_at"),
    "second 60": (lambda s: mutate(s, started_at="2023-11-14T22:13:60Z"), "started_at"),
    "30 February": (lambda s: mutate(s, started_at="2024-02-30T00:00:00Z"), "started_at"),
    "year 10000": (lambda s: mutate(s, started_at="10000-01-01T00:00:00Z"), "started_at"),
    "completed mid-way": (lambda s: mutate(s, **{"state": "completed"}), "no rollout reaches"),
    "aborted later": (
        lambda s: mutate(s, **{"state": "aborted", "stage_index": 2, "stage_name": "half"}),
        "no rollout reaches",
    ),
    "schema 1.9": (lambda s: mutate(s, schema_version=1.9), "schema_version"),
    "schema true": (lambda s: mutate(s, schema_version=True), "schema_version"),
    "schema 2^32+1": (lambda s: mutate(s, schema_version=2**32 + 1), "schema_version"),
    "stage_index 1.7": (lambda s: mutate(s, stage_index=1.7), "stage_index"),
    "version -1": (lambda s: mutate(s, version=-1), "version"),
    "version 2^64-1": (lambda s: mutate(s, version=2**64 - 1), "version"),
    "transitions null": (lambda s: mutate(s, transitions=None), "transitions"),
    "transitions object": (lambda s: mutate(s, transitions={}), "transitions"),
    "unknown stage in history": (
        lambda s: mutate(s, transitions=[{**s["transitions"][0], "from": "ghost"}]),
        "does not have",
    ),
    "history ends elsewhere": (
        lambda s: mutate(s, transitions=s["transitions"][:3]),
        "ends its history",
    ),
    "transition time year 0": (
        lambda s: mutate(
            s, transitions=[{**t, "time": "0000-01-01T00:00:00Z"} for t in s["transitions"]]
        ),
        "time in a transition",
    ),
    "unknown field": (lambda s: mutate(s, owner="mallory"), "unknown field"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_bad_state_file_is_a_state_error_and_kept(tmp_path, case):
    path = tmp_path / "rollout.json"
    state = valid_state(path)
    make, match = CASES[case]
    text = make(state)
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    assert_refused(path, match)


def test_a_symlinked_state_path_is_refused_and_left_alone(tmp_path):
    target = tmp_path / "real.json"
    valid_state(target)
    before = target.read_bytes()
    link = tmp_path / "rollout.json"
    link.symlink_to(target)
    with pytest.raises(StateError, match="symbolic link"):
        load(link)
    assert link.is_symlink() and target.read_bytes() == before


def test_a_path_with_nul_is_refused():
    with pytest.raises(ValueError, match="NUL"):
        RolloutManager(RolloutConfig.default(), state_path="state\0.json")


def test_an_operators_file_mode_survives_transitions(tmp_path):
    path = tmp_path / "rollout.json"
    valid_state(path)
    path.chmod(0o600)
    manager = load(path)
    manager.manual_advance("ops")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_stale_temp_files_of_dead_writers_are_removed_at_start(tmp_path):
    path = tmp_path / "rollout.json"
    valid_state(path)
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    # A killed writer's file, and one of a predecessor with this process's pid (a restarted
    # container's pid 1).
    stale = [
        tmp_path / f"rollout.json.tmp.{dead}.0",
        tmp_path / f"rollout.json.tmp.{os.getpid()}.7",
    ]
    for file in stale:
        file.write_text("{half written")
    alive = tmp_path / "rollout.json.tmp.1.0"  # pid 1 lives: maybe between create and lock
    alive.write_text("{")
    other = tmp_path / "other.json.tmp.1.0"
    other.write_text("not ours")
    manager = load(path)
    assert not any(file.exists() for file in stale)
    assert other.exists() and alive.exists()
    manager.manual_advance("ops")  # and writes go on
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "other.json.tmp.1.0",
        "rollout.json",
        "rollout.json.tmp.1.0",
    ]


@pytest.mark.integration
def test_a_temp_file_a_live_writer_holds_is_kept(tmp_path):
    path = tmp_path / "rollout.json"
    valid_state(path)
    held = tmp_path / "rollout.json.tmp.99.abc"
    held.write_text("{being written")
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(f"""
            import fcntl, sys
            f = open({str(held)!r}); fcntl.flock(f, fcntl.LOCK_EX)
            print("locked", flush=True); sys.stdin.read()
        """),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline() == "locked\n"
        load(path)
        assert held.exists()
    finally:
        holder.stdin.close()
        holder.wait(10)
        holder.stdout.close()


def test_a_refused_state_file_serves_shadow_only(tmp_path):
    path = tmp_path / "rollout.json"
    valid_state(path)
    path.write_bytes(b'{"schema_version": 1, "started_at": "\xff\xfe"}')
    settings = parse_settings(
        {
            "enforce_enabled": True,
            "rollout": {"enabled": True, "state_path": str(path)},
        }
    )
    with TestClient(create_demo_app(settings)) as client:
        ready = client.get("/api/v1/readyz")
        assert (ready.status_code, ready.json()["reason"]) == (503, "STATE_FILE")
        assert client.get("/api/guardian/rollout/status").status_code == 404
        metrics = client.get("/api/v1/metrics").text
        assert 'adapt_enforce_rollout_percent{rollout=""} 0' in metrics  # no rollout sets it


# -- fuzzed: 2,000 mutations of real files ------------------------------------------------------

VALUES = [
    None,
    True,
    False,
    0,
    1,
    -1,
    1.5,
    2**53,
    2**64,
    "",
    "x",
    "aborted",
    "canary",
    "2023-11-14T22:13:20Z",
    [],
    {},
    [1],
    {"a": 1},
    "\u0000",
    "é" * 300,
]


def mutations(rng: random.Random, state: dict):
    text = json.dumps(state, indent=2).encode()
    kind = rng.randrange(8)
    if kind == 0:  # byte flips
        data = bytearray(text)
        for _ in range(rng.randint(1, 4)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        return bytes(data)
    if kind == 1:  # truncation
        return text[: rng.randrange(len(text))]
    if kind in (2, 3):  # a field takes a value of another type
        copy = json.loads(text)
        target = copy if kind == 2 or not copy["transitions"] else rng.choice(copy["transitions"])
        target[rng.choice(sorted(target))] = rng.choice(VALUES)
        return json.dumps(copy).encode()
    if kind == 4:  # two fields swap values
        copy = json.loads(text)
        a, b = rng.sample(sorted(copy), 2)
        copy[a], copy[b] = copy[b], copy[a]
        return json.dumps(copy).encode()
    if kind == 5:  # a field goes missing
        copy = json.loads(text)
        del copy[rng.choice(sorted(copy))]
        return json.dumps(copy).encode()
    if kind == 6:  # a consistent-looking position that may not be reachable
        copy = json.loads(text)
        index = rng.randrange(5)
        copy["stage_index"] = index
        copy["stage_name"] = RolloutConfig.default().stages[index].name
        copy["state"] = rng.choice(["active", "aborted", "completed"])
        if copy["transitions"]:
            copy["transitions"][-1]["to"] = rng.choice([copy["stage_name"], "aborted"])
        return json.dumps(copy).encode()
    nested = "[" * rng.randint(1, 200_000)  # deep nesting
    return nested.encode()


@pytest.mark.slow
def test_two_thousand_mutated_state_files_load_or_are_refused(tmp_path):
    rng = random.Random(20261123)
    original = tmp_path / "original.json"
    state = valid_state(original)
    path = tmp_path / "rollout.json"
    loaded = refused = 0
    for _ in range(2000):
        data = mutations(rng, state)
        path.write_bytes(data)
        try:
            manager = load(path)
        except StateError as error:
            assert str(path) in str(error) and str(error).isprintable()
            assert path.read_bytes() == data
            refused += 1
            continue
        loaded += 1
        # Whatever loaded is a state the machine can run from.
        status = manager.get_status()
        assert status["state"] in ("active", "aborted", "completed")
        manager.manual_rollback("ops")
        manager.manual_advance("ops")
        del manager
        load(path).get_status()
    assert refused > 1500 and loaded > 20, (loaded, refused)


# -- faults injected into the write ---------------------------------------------------------

WRITER = textwrap.dedent("""
    import sys
    import driftgate
    from driftgate import ManualClock, RolloutConfig, RolloutManager, StateError
    manager = RolloutManager(RolloutConfig.default(), state_path=sys.argv[1],
                             clock=ManualClock(1_700_000_000))
    try:
        manager.manual_advance("ops")
    except StateError as error:
        print("StateError:", error)
    print("stage:", manager.get_status()["current_stage"]["name"])
""")

# The test command installs strace; elsewhere these skip.
needs_strace = pytest.mark.skipif(shutil.which("strace") is None, reason="needs strace")


def write_under_fault(tmp_path: Path, *strace_args: str) -> tuple[str, dict, int]:
    """What the writer printed, the state before the write and the inode of its file."""
    path = tmp_path / "rollout.json"
    valid_state(path)
    inode = path.stat().st_ino
    state = json.loads(path.read_text())
    # The manager's start writes nothing (the file exists); its advance is the write faulted.
    out = subprocess.run(
        ["strace", "-f", "-o", os.devnull, *strace_args, sys.executable, "-c", WRITER, str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    return out, state, inode


@pytest.mark.integration
@needs_strace
def test_a_failed_file_fsync_is_reported_and_keeps_the_old_state(tmp_path):
    out, before, _ = write_under_fault(tmp_path, "-e", "inject=fsync:error=EIO:when=1")
    assert "(fsync: Input/output error); the previous state is kept" in out
    assert f"stage: {before['stage_name']}" in out  # the advance was not applied
    assert json.loads((tmp_path / "rollout.json").read_text()) == before


@pytest.mark.integration
@needs_strace
def test_a_failed_folder_fsync_is_reported_not_ignored(tmp_path):
    out, before, _ = write_under_fault(tmp_path, "-e", "inject=fsync:error=EIO:when=2")
    assert "(fsync folder: Input/output error)" in out
    assert f"stage: {before['stage_name']}" in out  # the advance was not applied
    # ... and the acknowledged state was written back over the unacknowledged one.
    after = json.loads((tmp_path / "rollout.json").read_text())
    assert (after["stage_name"], after["version"]) == (before["stage_name"], before["version"])


@pytest.mark.integration
@needs_strace
def test_a_folder_that_cannot_be_opened_for_fsync_fails_the_write(tmp_path):
    out, before, _ = write_under_fault(
        tmp_path, "-P", str(tmp_path), "-e", "inject=openat:error=EACCES:when=2"
    )
    assert "(open folder for fsync: Permission denied)" in out
    assert f"stage: {before['stage_name']}" in out


@pytest.mark.integration
@needs_strace
def test_a_failed_write_and_rename_keep_the_old_file(tmp_path):
    for fault, step in (("write", "write"), ("rename", "rename")):
        out, before, inode = write_under_fault(
            tmp_path, "-e", f"inject={fault}:error=ENOSPC:when=1"
        )
        assert f"({step}: No space left on device); the previous state is kept" in out
        assert json.loads((tmp_path / "rollout.json").read_text()) == before
        # Untouched, not written again: the same file, not a copy renamed over it.
        assert (tmp_path / "rollout.json").stat().st_ino == inode
        assert sorted(p.name for p in tmp_path.iterdir()) == ["rollout.json"]


# -- the writer writes only what the reader accepts back --------------------------------------

LAST_VERSION = 2**53 - 1
LAST_INSTANT = "9999-12-31T23:59:59.9999999Z"  # read as a double, it is 10000-01-01


def _at_the_limit(original: dict, limit: str) -> str:
    if limit == "version":
        return mutate(original, version=LAST_VERSION)
    transitions = [{**t, "time": LAST_INSTANT} for t in original["transitions"]]
    return mutate(original, started_at=LAST_INSTANT, transitions=transitions)


@pytest.mark.parametrize("limit", ["version", "time"])
@pytest.mark.parametrize("move", ["advance", "rollback"])
def test_a_move_past_what_a_state_file_holds_is_503_and_nothing_is_written(
    tmp_path, monkeypatch, caplog, limit, move
):
    path = tmp_path / "rollout.json"
    path.write_text(_at_the_limit(valid_state(path), limit))
    before = path.read_bytes()
    manager = load(path)  # the state itself loads
    version = manager.version
    status = manager.get_status()
    monkeypatch.setenv("DRIFTGATE_ADMIN_TOKEN", "t0ken")
    app = FastAPI()
    app.include_router(create_router(tracker=driftgate.DriftTracker(), manager=manager))
    client = TestClient(app)
    caplog.set_level(logging.WARNING, logger="driftgate.http")
    answer = client.post(f"/api/guardian/rollout/{move}", headers={"Authorization": "Bearer t0ken"})
    assert answer.status_code == 503
    assert answer.json() == {"detail": "STATE_FILE"}
    named = "9007199254740992" if limit == "version" else "253402300800"
    assert [r.getMessage() for r in caplog.records if named in r.getMessage()]
    assert path.read_bytes() == before
    assert manager.version == version
    assert manager.get_status()["current_stage"] == status["current_stage"]
    with pytest.raises(StateError, match=named):
        getattr(manager, f"manual_{move}")("ops")
    assert load(path).version == version  # the next start still takes the file


def test_driftgate_package_exports_the_state_error():
    assert driftgate.StateError is StateError
