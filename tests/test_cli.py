"""The installed `driftgate` command, run as a subprocess: adapt's report checked against an
independent computation of the cohort hash, every bad input exiting 2 with one line, the admin
commands against the demo service under uvicorn, and the probe against stable and unstable
endpoints."""

import itertools
import json
import os
import random
import subprocess
import sysconfig
import time
from pathlib import Path

import mmh3
import pytest

from servers import demo_service, free_port, json_server

pytestmark = [pytest.mark.slow, pytest.mark.integration]

DRIFTGATE = Path(sysconfig.get_path("scripts")) / "driftgate"
EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
TOKEN = "cli-test-token"


def run(*args, env: dict[str, str] | None = None, cwd: Path | None = None):
    base = {k: v for k, v in os.environ.items() if not k.startswith("DRIFTGATE_")}
    return subprocess.run(
        [str(DRIFTGATE), *map(str, args)],
        capture_output=True, text=True, timeout=60, env={**base, **(env or {})}, cwd=cwd,
    )  # fmt: skip


def assert_usage_error(result, *fragments: str) -> None:
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


# -- adapt: an independent model of the report ------------------------------------------------


def in_cohort(key: str, seed: int, enforce: bool, percent: float) -> bool:
    """docs/sampling.md: bucket = floor(murmur3_x86_32(key, seed) * 10000 / 2^32)."""
    bucket = (mmh3.hash(key.encode(), seed, signed=False) * 10_000) >> 32
    return enforce and bucket < round(percent * 100)


def expected_report(records, enforce: bool, percent: float, seed: int) -> dict:
    def differ(record) -> bool:
        return record["shadow"].lower() != record["enforced"].lower()

    cohort = [r for r in records if in_cohort(r["key"], seed, enforce, percent)]
    drift = sum(map(differ, cohort))
    return {
        "requests": len(records),
        "cohort_size": len(cohort),
        "drift_events": drift,
        "drift_ratio": drift / len(records),
        "disagreements": sum(map(differ, records)),
    }


def random_records(count: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    verdicts = ["ok", "OK", "warn", "fail", "Fail"]
    return [
        {"key": f"k-{rng.getrandbits(40)}", "shadow": rng.choice(verdicts),
         "enforced": rng.choice(verdicts)}
        for _ in range(count)
    ]  # fmt: skip


def write_jsonl(path: Path, records) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


@pytest.mark.parametrize(
    ("enforce", "rollout", "seed"),
    [(False, 50, 0), (True, 0, 0), (True, 10, 0), (True, 25, 7), (True, 33.33, 42), (True, 100, 1)],
)
def test_adapt_report_matches_an_independent_computation(tmp_path, enforce, rollout, seed):
    records = random_records(500, seed=rollout)
    context = write_jsonl(tmp_path / "decisions.jsonl", records)
    flags = ["--enforce"] if enforce else []
    result = run(
        "adapt", "--policy", "lksg.v1", "--context", context, *flags,
        "--rollout", rollout, "--seed", seed, "--drift-max", 0.1, "--json",
    )  # fmt: skip
    report = json.loads(result.stdout)
    expected = expected_report(records, enforce, rollout, seed)
    assert {k: report[k] for k in expected} == expected
    assert report["options"] == {
        "enforce": enforce,
        "rollout_percent": rollout,
        "drift_max_ratio": 0.1,
        "seed": seed,
    }
    assert report["policy_id"] == "lksg.v1"
    passed = expected["drift_ratio"] <= 0.1
    assert report["gate"] == ("pass" if passed else "fail")
    assert result.returncode == (0 if passed else 3)
    if enforce and rollout == 100:
        assert result.returncode == 3  # half the random verdicts disagree


def test_adapt_defaults_are_shadow_only(tmp_path):
    records = [{"key": f"k{i}", "shadow": "ok", "enforced": "fail"} for i in range(50)]
    result = run("adapt", "--policy", "p", "--context", write_jsonl(tmp_path / "d.jsonl", records))
    assert result.returncode == 0
    assert "enforce off, rollout 0%, drift-max 0.500%, seed 0" in result.stdout
    assert "cohort size    0 (0.000%)" in result.stdout
    assert "drift events   0" in result.stdout
    assert "disagreements  50" in result.stdout
    assert "gate           PASS" in result.stdout


def test_adapt_gate_passes_at_the_limit_and_fails_above(tmp_path):
    # 2 of 200 drift at 100 %: ratio 1 %
    records = [
        {"key": f"k{i}", "shadow": "ok", "enforced": "fail" if i < 2 else "ok"} for i in range(200)
    ]
    context = write_jsonl(tmp_path / "d.jsonl", records)
    common = ["adapt", "--policy", "p", "--context", context, "--enforce", "--rollout", 100]
    at_limit = run(*common, "--drift-max", 0.01)
    assert at_limit.returncode == 0
    assert "gate           PASS: drift 1.000% <= 1.000%" in at_limit.stdout
    above = run(*common, "--drift-max", 0.009)
    assert above.returncode == 3
    assert "gate           FAIL: drift 1.000% > 0.900%" in above.stdout


def test_adapt_json_array_and_json_lines_agree(tmp_path):
    records = random_records(100, seed=3)
    lines = write_jsonl(tmp_path / "d.jsonl", records)
    array = tmp_path / "d.json"
    array.write_text(json.dumps(records, indent=2))
    args = ["adapt", "--policy", "p", "--enforce", "--rollout", 40, "--json", "--context"]
    assert json.loads(run(*args, lines).stdout) == json.loads(run(*args, array).stdout)


def test_adapt_time_places_records_in_the_windows(tmp_path):
    # one record a minute for an hour, each drifting at 100 %: 5m holds 5, 15m 15, 60m 60
    records = [
        {"key": f"k{i}", "shadow": "ok", "enforced": "warn" if i % 2 else "ok", "time": 60 * i}
        for i in range(60)
    ]
    context = write_jsonl(tmp_path / "d.jsonl", records)
    result = run("adapt", "--policy", "p", "--context", context, "--enforce", "--rollout", 100,
                 "--json")  # fmt: skip
    windows = json.loads(result.stdout)["windows"]
    for name, minutes in (("5m", 5), ("15m", 15), ("60m", 60)):
        last = records[-minutes:]
        drift = sum(r["shadow"] != r["enforced"] for r in last)
        assert windows[name] == {"requests": minutes, "drift_events": drift,
                                 "ratio": drift / minutes}, name  # fmt: skip


def test_adapt_writes_the_report_with_o(tmp_path):
    context = write_jsonl(tmp_path / "d.jsonl", random_records(30, seed=1))
    report = tmp_path / "out" / "plan.json"
    report.parent.mkdir()
    result = run("adapt", "--policy", "p", "--context", context, "--enforce", "--rollout", 25,
                 "--drift-max", 1, "-o", report)  # fmt: skip
    assert result.returncode == 0
    assert f"report         written to {report}" in result.stdout
    as_json = run("adapt", "--policy", "p", "--context", context, "--enforce", "--rollout", 25,
                  "--drift-max", 1, "--json")  # fmt: skip
    assert json.loads(report.read_text()) == json.loads(as_json.stdout)
    assert [p.name for p in report.parent.iterdir()] == ["plan.json"]  # no temp file left


def test_adapt_dry_run_writes_nothing(tmp_path):
    context = write_jsonl(tmp_path / "d.jsonl", random_records(30, seed=1))
    report = tmp_path / "plan.json"
    result = run("adapt", "--policy", "p", "--context", context, "--dry-run", "-o", report)
    assert result.returncode == 0
    assert f"not written to {report} (--dry-run)" in result.stdout
    assert not report.exists()
    report.write_text("previous")
    run("adapt", "--policy", "p", "--context", context, "--dry-run", "-o", report)
    assert report.read_text() == "previous"


def test_adapt_the_example_files(tmp_path):
    passing = run("adapt", "--policy", "lksg.v1", "--context", EXAMPLES / "decisions_ok.jsonl",
                  "--enforce", "--rollout", 25)  # fmt: skip
    assert passing.returncode == 0
    failing = run("adapt", "--policy", "lksg.v1", "--context", EXAMPLES / "decisions_drift.json",
                  "--enforce", "--rollout", 25, "--json")  # fmt: skip
    assert failing.returncode == 3
    records = json.loads((EXAMPLES / "decisions_drift.json").read_text())
    expected = expected_report(records, True, 25, 0)
    assert {k: json.loads(failing.stdout)[k] for k in expected} == expected


@pytest.mark.parametrize(
    ("content", "fragments"),
    [
        ('{"key": "a", "shadow": "ok", "enforced": "ok"}\n{"key": "b", "shadow": ',
         ["d.jsonl:2: not valid JSON"]),
        ('{"key": "a", "shadow": "maybe", "enforced": "ok"}\n',
         ["d.jsonl:1: field 'shadow': unknown verdict 'maybe' (expected ok, warn or fail)"]),
        ('{"key": "a", "shadow": "ok", "enforced": 2}\n', ["field 'enforced': unknown verdict 2"]),
        ('\n\n{"key": "a", "shadow": "ok"}\n', ["d.jsonl:3: missing field 'enforced'"]),
        ('{"key": "", "shadow": "ok", "enforced": "ok"}\n', ["field 'key': expected a non-empty"]),
        ('{"key": "a", "shadow": "ok", "enforced": "ok", "time": "noon"}\n',
         ["field 'time': expected unix seconds"]),
        ('["a", "b"]\n', ["d.jsonl: record 1: expected an object"]),
        ('[{"key": "a", "shadow": "ok", "enforced": "ok"},\n {"key": "b"]\n',
         ["d.jsonl:2: not valid JSON"]),
        ("", ["d.jsonl: no decision records"]),
        ("\xff\xfe", ["d.jsonl:1: not UTF-8 (byte 0xff at offset 0)"]),
    ],
)  # fmt: skip
def test_adapt_bad_input_exits_2_naming_the_line_or_field(tmp_path, content, fragments):
    context = tmp_path / "d.jsonl"
    if content == "\xff\xfe":
        context.write_bytes(b"\xff\xfe\x00")
    else:
        context.write_text(content)
    report = tmp_path / "plan.json"
    result = run("adapt", "--policy", "p", "--context", context, "-o", report)
    assert_usage_error(result, "driftgate adapt: --context", *fragments)
    assert not report.exists()


@pytest.mark.parametrize(
    ("flags", "fragments"),
    [
        (["--rollout", "101"], ["--rollout: rollout_percent=101: expected a number in [0, 100]"]),
        (["--rollout", "-1"], ["--rollout: rollout_percent=-1"]),
        (["--rollout", "nan"], ["--rollout: rollout_percent=nan"]),
        (["--rollout", "12.345"], ["expected a multiple of 0.01"]),
        (["--rollout", "x"], ["argument --rollout: invalid float value: 'x'"]),
        (["--drift-max", "1.5"], ["--drift-max: drift_max_ratio=1.5: expected a number in [0, 1]"]),
        (["--drift-max", "-0.1"], ["--drift-max: drift_max_ratio=-0.1"]),
        (["--seed", "-1"], ["--seed -1: expected an integer in [0, 2^32)"]),
        (["--seed", "4294967296"], ["--seed 4294967296"]),
        (["--policy", "bad id!"], ["--policy: invalid policy_id 'bad id!'"]),
        (["--ir", "policy.ir"], ["--ir needs a policy engine"]),
        (["--selector", "weighted"], ["--selector needs a policy engine"]),
        (["--weights", "w.yaml"], ["--weights needs a policy engine"]),
        (["--surprise"], ["unrecognized arguments: --surprise"]),
    ],
)
def test_adapt_bad_flags_exit_2_naming_the_flag(tmp_path, flags, fragments):
    context = write_jsonl(tmp_path / "d.jsonl", random_records(5, seed=0))
    report = tmp_path / "plan.json"
    result = run("adapt", "--policy", "p", "--context", context, "-o", report, *flags)
    assert_usage_error(result, *fragments)
    assert not report.exists()


def test_adapt_missing_flags_and_files(tmp_path):
    assert_usage_error(run("adapt", "--context", "x"), "required: --policy")
    assert_usage_error(
        run("adapt", "--policy", "p", "--context", tmp_path / "missing.jsonl"),
        f"--context {tmp_path / 'missing.jsonl'}: no such file",
    )
    context = write_jsonl(tmp_path / "d.jsonl", random_records(5, seed=0))
    assert_usage_error(
        run("adapt", "--policy", "p", "--context", context, "-o", tmp_path / "no" / "r.json"),
        f"-o {tmp_path / 'no' / 'r.json'}: cannot write",
    )


# -- status, advance, rollback against the demo service ---------------------------------------


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    values = "enforce_enabled: true\nrollout: {enabled: true, check_interval_seconds: 3600}\n"
    with demo_service(tmp_path_factory.mktemp("cli-service"), values, TOKEN) as base:
        yield base


def test_status_human_and_json(service):
    human = run("status", "--url", service)
    assert human.returncode == 0, human.stderr
    assert "stage      canary (1 of 5), active" in human.stdout
    assert "enforced   10%" in human.stdout
    assert "-> canary  by system: rollout started" in human.stdout
    as_json = run("status", "--url", service, "--json")
    status = json.loads(as_json.stdout)
    assert status["current_stage"]["name"] == "canary"
    assert status["total_stages"] == 5
    from_env = run("status", "--json", env={"DRIFTGATE_URL": service})
    assert json.loads(from_env.stdout)["current_stage"]["name"] == "canary"


def test_advance_and_rollback_need_the_token(service):
    assert_usage_error(run("advance", "--url", service), "DRIFTGATE_ADMIN_TOKEN is not set")
    wrong = run("advance", "--url", service, env={"DRIFTGATE_ADMIN_TOKEN": "wrong"})
    assert_usage_error(wrong, "the service answered 403 INVALID_CREDENTIALS")
    status = json.loads(run("status", "--url", service, "--json").stdout)
    assert status["current_stage"]["name"] == "canary"  # nothing moved


def test_advance_rollback_and_the_final_stage(service):
    token = {"DRIFTGATE_ADMIN_TOKEN": TOKEN}
    advanced = run("advance", "--url", service, "--reason", "canary clean for 2 days", env=token)
    assert advanced.returncode == 0, advanced.stderr
    assert advanced.stdout.strip() == "Manually advanced to stage quarter: now quarter at 25%"
    status = json.loads(run("status", "--url", service, "--json").stdout)
    assert status["transitions"][-1]["reason"] == "canary clean for 2 days"
    back = run("rollback", "--url", service, "--reason", "drift-2x", "--json", env=token)
    assert back.returncode == 0, back.stderr
    answer = json.loads(back.stdout)
    assert len(answer.pop("operation")) == 32  # the CLI's Idempotency-Key
    assert answer == {
        "success": True,
        "message": "Rolled back from quarter to canary",
        "new_stage": "canary",
        "new_percentage": 10.0,
        "action": "rolled_back",
        "previous_stage": "quarter",
        "version": 3,
        "replayed": False,
    }
    status = json.loads(run("status", "--url", service, "--json").stdout)
    last = status["transitions"][-1]
    assert (last["actor"], last["from"], last["to"], last["reason"]) == (
        "admin-token", "quarter", "canary", "drift-2x",
    )  # fmt: skip
    for _ in range(4):
        assert run("advance", "--url", service, env=token).returncode == 0
    final = run("advance", "--url", service, env=token)
    assert final.returncode == 1
    assert (
        final.stderr.strip() == "driftgate advance: the service answered 400 Already at final stage"
    )
    assert "stage      full (5 of 5), completed" in run("status", "--url", service).stdout


def test_state_export_from_a_service_saves_the_document_it_holds(service, tmp_path):
    export = tmp_path / "export.json"
    saved = run("state", "export", "--url", service, "-o", export)
    assert saved.returncode == 0, saved.stderr
    status = json.loads(run("status", "--url", service, "--json").stdout)
    document = json.loads(export.read_text())
    assert document["version"] == status["version"]
    assert f'"{document["incarnation"]}.{document["version"]}"' == status["etag"]
    assert saved.stderr.strip().endswith(f"at ETag {status['etag']} to {export}")
    assert [t["to"] for t in document["transitions"]][-1] == status["current_stage"]["name"]
    printed = run("state", "export", "--url", service)  # to standard output
    assert json.loads(printed.stdout)["version"] == document["version"]
    assert_usage_error(run("state", "export"), "required: --url")


def test_state_restore_refuses_what_is_not_an_export(tmp_path):
    values = tmp_path / "values.yaml"
    values.write_text("rollout: {enabled: true}\n")
    state_dir = tmp_path / "state"
    for text, said in (("{}", "has no field"), ("not json", "is not valid JSON")):
        export = tmp_path / "export.json"
        export.write_text(text)
        refused = run("state", "restore", export, "--config", values, "--state-dir", state_dir)
        assert refused.returncode == 1 and said in refused.stderr, refused.stderr
        assert "Traceback" not in refused.stderr
    assert not (state_dir / "rollout.json").exists()
    missing = run("state", "restore", tmp_path / "nope.json", "--config", values)
    assert missing.returncode == 2 and "no such file" in missing.stderr


def test_service_commands_with_bad_urls(free_url):
    assert_usage_error(run("status", "--url", "localhost:8000"), "expected an http:// or https://")
    assert_usage_error(run("status", "--url", free_url), f"cannot reach {free_url}")
    assert_usage_error(
        run("advance", "--url", free_url, env={"DRIFTGATE_ADMIN_TOKEN": TOKEN}), "cannot reach"
    )
    assert_usage_error(run("status"), "required: --url")


EXTRAS = ("httpx", "fastapi", "starlette", "pydantic", "yaml", "uvicorn", "watchfiles", "jwt")


def without_extras(folder: Path) -> dict[str, str]:
    """An environment where none of the extras' packages can be imported, as after a plain
    `pip install driftgate`."""
    for name in EXTRAS:
        (folder / f"{name}.py").write_text(f"raise ImportError('{name} is not installed')\n")
    return {"PYTHONPATH": str(folder)}


def test_the_service_commands_need_no_extra(tmp_path, service):
    env = without_extras(tmp_path)
    status = run("status", "--url", service, "--json", env=env)
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["current_stage"]["name"]
    admin = {**env, "DRIFTGATE_ADMIN_TOKEN": TOKEN}
    # the module's service may stand at any stage: a rollback always has somewhere to go (an
    # abort at the first stage), and an advance after it too
    for command in ("rollback", "advance"):
        moved = run(command, "--url", service, env=admin)
        assert moved.returncode == 0, moved.stderr
        assert "now " in moved.stdout
    hashed = subprocess.run(
        [str(DRIFTGATE), "token-hash", "--name", "alice", "--scopes", "rollout:advance"],
        input="x" * 40, capture_output=True, text=True, timeout=60, env={**os.environ, **env},
    )  # fmt: skip
    assert hashed.returncode == 0, hashed.stderr
    assert hashed.stdout.startswith("alice  sha256:")


def test_a_url_without_the_routers_prefix_is_told_about_the_prefix(service):
    result = run("status", "--url", f"{service}/elsewhere")
    assert result.returncode == 2
    assert "the service answered 404" in result.stderr
    assert "is its router under a prefix? give it in --url" in result.stderr


def test_serve_without_the_fastapi_extra_says_which_to_install(tmp_path):
    result = run("serve", "--check", env=without_extras(tmp_path))
    assert_usage_error(result, "pip install 'driftgate[fastapi]'")


@pytest.fixture
def free_url() -> str:
    return f"http://127.0.0.1:{free_port()}"


# -- probe -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def endpoints():
    """POST /stable answers the same signature every time, /unstable a new one each time,
    /nested a signature under result, /nothing none, anything else 500."""
    calls = itertools.count(1)

    def reply(method: str, path: str, body: bytes) -> tuple[int, dict]:
        seed = json.loads(body)["seed"]
        answers = {
            "/stable": {"solution_signature": f"sig-{seed}"},
            "/unstable": {"solution_signature": f"sig-{next(calls)}"},
            "/nested": {"result": {"solution_signature": "deep"}},
            "/nothing": {"status": "done"},
        }
        return (200, answers[path]) if path in answers else (500, {})

    with json_server(reply) as url:
        yield url


@pytest.fixture
def body(tmp_path) -> Path:
    path = tmp_path / "canary.json"
    path.write_text('{"tours": [1, 2, 3], "seed": 42, "time_limit_seconds": 30}')
    return path


def test_probe_stable_endpoint_exits_0(endpoints, body):
    result = run("probe", "--url", f"{endpoints}/stable", "--body", body, "--count", 4)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "stable: 4 of 4 answers gave solution_signature sig-42"


def test_probe_unstable_endpoint_exits_3(endpoints, body):
    result = run("probe", "--url", f"{endpoints}/unstable", "--body", body, "--json")
    assert result.returncode == 3
    report = json.loads(result.stdout)
    assert report["stable"] is False
    assert report["count"] == 3
    assert sorted(report["signatures"].values()) == [1, 1, 1]


def test_probe_dotted_field_and_interval(endpoints, body):
    field = ["--field", "result.solution_signature"]
    result = run("probe", "--url", f"{endpoints}/nested", "--body", body, *field,
                 "--count", 2, "--interval", 0.01)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "gave result.solution_signature deep" in result.stdout


@pytest.mark.parametrize(
    ("path", "flags", "fragments"),
    [
        ("/nothing", [], ["answer 1 has no field 'solution_signature'"]),
        ("/broken", [], ["answer 1: the service answered 500"]),
        ("/stable", ["--count", "1"], ["--count 1: expected at least 2"]),
        ("/stable", ["--interval", "-1"], ["--interval -1.0: expected seconds >= 0"]),
    ],
)
def test_probe_errors_exit_2(endpoints, body, path, flags, fragments):
    assert_usage_error(
        run("probe", "--url", f"{endpoints}{path}", "--body", body, *flags), *fragments
    )


def test_a_slow_service_hits_the_timeout(body):
    def slow(method: str, path: str, _: bytes) -> tuple[int, dict]:
        time.sleep(1.0)
        return 200, {"solution_signature": "late"}

    with json_server(slow) as url:
        for command in (["status", "--url", url], ["probe", "--url", url, "--body", body]):
            result = run(*command, "--timeout", 0.2)
            assert_usage_error(result, "no answer within 0.2 s (--timeout)")
    assert_usage_error(run("status", "--url", url, "--timeout", 0), "--timeout: '0': expected")


def test_probe_bad_body_files(endpoints, tmp_path):
    url = f"{endpoints}/stable"
    assert_usage_error(run("probe", "--url", url, "--body", tmp_path / "none.json"), "no such file")
    broken = tmp_path / "broken.json"
    broken.write_text('{\n  "seed": \n')
    assert_usage_error(
        run("probe", "--url", url, "--body", broken), "broken.json:3: not valid JSON"
    )


def test_probe_the_demo_service(service, tmp_path):
    url = f"{service}/verify"
    field = ["--field", "result.solution_signature"]
    stable = run("probe", "--url", url, "--body", EXAMPLES / "probe_request.json", *field)
    assert stable.returncode == 0, stable.stderr
    unstable = tmp_path / "unstable.json"
    request = json.loads((EXAMPLES / "probe_request.json").read_text())
    request["context"]["_demo_unstable"] = True
    unstable.write_text(json.dumps(request))
    assert run("probe", "--url", url, "--body", unstable, *field).returncode == 3


# -- what no command may do: a traceback ------------------------------------------------------


def test_serve_check_validates_the_values_file_without_serving(tmp_path, capsys):
    from driftgate.cli import main

    assert main(["serve", "--config", str(EXAMPLES / "values.yaml"), "--check"]) == 0
    assert capsys.readouterr().out == f"{EXAMPLES / 'values.yaml'}: valid\n"
    bad = tmp_path / "values.yaml"
    bad.write_text("rollout:\n  check_interval_seconds: 1.0e+300\n")
    assert main(["serve", "--config", str(bad), "--check"]) == 2
    assert capsys.readouterr().err == (
        f"driftgate serve: --config {bad}: rollout.check_interval_seconds: expected a number in "
        "[1, 86400], got 1e+300\n"
    )
    assert not (tmp_path / "driftgate-state").exists()


def test_serve_refuses_a_state_folder_it_cannot_make_before_serving(tmp_path, capsys):
    from driftgate.cli import main

    values = tmp_path / "values.yaml"
    values.write_text("rollout: {enabled: true}\n")
    blocker = tmp_path / "file"
    blocker.write_text("")
    code = main(["serve", "--config", str(values), "--state-dir", str(blocker / "state")])
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("driftgate serve: rollout.state_path: cannot use ")
    assert err.endswith("(Not a directory)\n")


def test_serve_port_out_of_range_is_a_usage_error():
    assert_usage_error(run("serve", "--port", "70000"), "--port: '70000': expected a port")


def test_an_unexpected_failure_is_one_line_and_exit_1(tmp_path, capsys, monkeypatch):
    import driftgate.adapt
    from driftgate.cli import main

    def broken(*args, **kwargs):
        raise RuntimeError("replay broke\nsecond line")

    monkeypatch.setattr(driftgate.adapt, "replay", broken)
    context = write_jsonl(tmp_path / "d.jsonl", random_records(5, seed=0))
    assert main(["adapt", "--policy", "p", "--context", str(context)]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == "driftgate adapt: internal error: RuntimeError: replay broke\n"


def test_status_and_advance_against_a_service_that_is_not_driftgate():
    def reply(method: str, path: str, body: bytes) -> tuple[int, object]:
        return 200, {"unrelated": [1, 2]}

    with json_server(reply) as url:
        # the list of a service's rollouts, asked for first, is not there
        assert_usage_error(run("status", "--url", url), "answered without a list of rollouts")
        assert_usage_error(
            run("status", "--url", url, "--rollout", "default"),
            "answered without a rollout status",
        )
        # An advance reads the rollout's version first, and finds none.
        assert_usage_error(
            run("advance", "--url", url, env={"DRIFTGATE_ADMIN_TOKEN": TOKEN}),
            "answered without a rollout version",
        )
        assert_usage_error(
            run(
                "advance",
                "--url",
                url,
                "--expected-version",
                "1",
                env={"DRIFTGATE_ADMIN_TOKEN": TOKEN},
            ),
            "answered without a transition",
        )


@pytest.mark.parametrize(
    ("reason", "message"),
    [
        ("x" * 201, "expected a reason of 1 to 200 characters, got 201"),
        ("   ", "expected a reason of 1 to 200 characters, got none"),
    ],
    ids=["too-long", "blank"],
)
@pytest.mark.parametrize("command", ["advance", "rollback"])
def test_a_bad_reason_is_refused_before_anything_is_sent(service, command, reason, message):
    token = {"DRIFTGATE_ADMIN_TOKEN": TOKEN}
    before = json.loads(run("status", "--url", service, "--json").stdout)
    refused = run(command, "--url", service, "--reason", reason, env=token)
    assert refused.returncode == 2
    assert message in refused.stderr
    assert "x" * 50 not in refused.stderr  # the text is not echoed back
    after = json.loads(run("status", "--url", service, "--json").stdout)
    assert after["version"] == before["version"]  # nothing was sent


def test_the_status_text_says_when_enforcement_is_off():
    from driftgate.cli import _status_text

    status = {
        "current_stage": {"name": "canary", "max_error_rate": 0.005},
        "stage_index": 0,
        "total_stages": 5,
        "state": "active",
        "enforced_percentage": 10,
        "started_at": "2026-12-07T00:00:00Z",
        "elapsed_time": "0:00:01",
        "min_duration": "1 day, 0:00:00",
    }
    assert "enforced   10%\n" in _status_text({**status, "enforcing": True})
    assert "enforced   10% (enforce_enabled is off: shadow only)" in _status_text(
        {**status, "enforcing": False}
    )
