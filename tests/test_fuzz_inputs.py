"""Fuzzed inputs for everything a user hands the command line: values files, decision files and
probe bodies. Each mutated input is either accepted and then usable, or refused with exit 2 (or
a SettingsError) and one line naming the file; never a traceback, never exit 1.

The mutations are drawn from seeded generators, so a failure names its case (`values/full#17`)
and reproduces on every run."""

import hashlib
import json
import os
import random
import re
import subprocess
import sysconfig
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from unittest import mock

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from driftgate.cli import main
from driftgate.demo import create_demo_app
from driftgate.fastapi.auth import approvers_from_settings
from driftgate.identity import TokenFile, TokenFileError, token_digest, token_file_line
from driftgate.readiness_budget import MAX_UNREADY_REPLICAS
from driftgate.rollout import RolloutManager
from driftgate.service import check_environment, required_environment
from driftgate.service.stores import build_store
from driftgate.settings import (
    MAX_CHECK_INTERVAL_SECONDS,
    MAX_STAGE_SECONDS,
    Settings,
    SettingsError,
    load_settings,
    parse_settings,
)
from servers import json_server

pytestmark = pytest.mark.slow

DRIFTGATE = Path(sysconfig.get_path("scripts")) / "driftgate"
EXAMPLES = Path(__file__).resolve().parents[1] / "examples"

Mutation = Callable[[random.Random, bytes], bytes]

# -- mutations shared by every format --------------------------------------------------------


def flip_bytes(rng: random.Random, data: bytes) -> bytes:
    out = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        if out:
            out[rng.randrange(len(out))] = rng.randrange(256)
    return bytes(out)


def truncate(rng: random.Random, data: bytes) -> bytes:
    return data[: rng.randrange(len(data) + 1)]


def _lines(data: bytes) -> list[bytes]:
    return data.splitlines(keepends=True) or [b""]


def duplicate_line(rng: random.Random, data: bytes) -> bytes:
    lines = _lines(data)
    i = rng.randrange(len(lines))
    lines.insert(rng.randrange(len(lines) + 1), lines[i])
    return b"".join(lines)


def delete_line(rng: random.Random, data: bytes) -> bytes:
    lines = _lines(data)
    del lines[rng.randrange(len(lines))]
    return b"".join(lines)


def swap_lines(rng: random.Random, data: bytes) -> bytes:
    lines = _lines(data)
    i, j = rng.randrange(len(lines)), rng.randrange(len(lines))
    lines[i], lines[j] = lines[j], lines[i]
    return b"".join(lines)


def insert_bytes(choices: list[bytes]) -> Mutation:
    def insert(rng: random.Random, data: bytes) -> bytes:
        at = rng.randrange(len(data) + 1)
        return data[:at] + rng.choice(choices) + data[at:]

    return insert


BAD_BYTES = [b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\x00", b"\x07", b"\r"]
# What every line-based input gets before its own mutations.
LINE_MUTATIONS: list[Mutation] = [flip_bytes, truncate, duplicate_line, delete_line, swap_lines]


def replace_value(pattern: bytes, values: list[bytes]) -> Mutation:
    """Replaces one value (the text after `pattern`, to the end of its token) by one of
    `values`: huge numbers, wrong types, deep nesting."""
    token = re.compile(pattern + rb"([^,}\]\n]*)")

    def mutate(rng: random.Random, data: bytes) -> bytes:
        spots = list(token.finditer(data))
        if not spots:
            return data
        spot = rng.choice(spots)
        return data[: spot.start(1)] + rng.choice(values) + data[spot.end(1) :]

    return mutate


def rename_key(pattern: bytes, names: list[bytes]) -> Mutation:
    key = re.compile(pattern)

    def mutate(rng: random.Random, data: bytes) -> bytes:
        spots = list(key.finditer(data))
        if not spots:
            return data
        spot = rng.choice(spots)
        return data[: spot.start(1)] + rng.choice(names) + data[spot.end(1) :]

    return mutate


def mutated(data: bytes, mutations: list[Mutation], rng: random.Random) -> bytes:
    for mutation in rng.choices(mutations, k=rng.randint(1, 3)):
        data = mutation(rng, data)
    return data


def corpus(
    seeds: dict[str, bytes], mutations: list[Mutation], per_seed: int, salt: str
) -> Iterator[tuple[str, str, bytes]]:
    """(seed name, case name, bytes): `per_seed` mutants of each seed, the same every run."""
    for name, data in seeds.items():
        rng = random.Random(f"{salt}/{name}")
        for i in range(per_seed):
            yield name, f"{salt}/{name}#{i}", mutated(data, mutations, rng)


def one_line(text: str) -> str:
    lines = text.splitlines()
    assert len(lines) == 1, text[:2000]
    assert "Traceback" not in text
    return lines[0]


# -- values files ----------------------------------------------------------------------------

VALUES_SEEDS = {
    "example": (EXAMPLES / "values.yaml").read_bytes(),
    "full": b"""\
enforce_enabled: true
enforce_rollout_percent: 25
drift_max_ratio: 0.005
enforce_readiness_gate:
  enabled: true
  window: "15m"
  min_requests: 20
  reopen_ratio: 0.004
  confidence: 0.95
  max_unready_replicas: 2
rollout:
  enabled: true
  state_path: state/rollout.json
  check_interval_seconds: 900
  min_requests: 50
  stages:
    - name: canary
      percentage: 10
      duration_seconds: 86400
      max_error_rate: 0.005
    - {name: half, percentage: 50, duration_seconds: 172800, max_error_rate: 0.003,
       requires_approval: true}
    - name: full
      percentage: 100
      max_error_rate: 0.002
  prometheus:
    url: http://127.0.0.1:9
    query: sum(rate(guardian_enforcement_failed_total[1h]))
    timeout_seconds: 5
admin:
  token_env: DRIFTGATE_ADMIN_TOKEN
""",
    "flow": b"{enforce_enabled: true, enforce_rollout_percent: 10, drift_max_ratio: 0.01, "
    b"enforce_readiness_gate: {enabled: false, window: 5m}, rollout: {enabled: true, "
    b"check_interval_seconds: 60, stages: [{name: a, percentage: 5, duration_seconds: 3600}, "
    b"{name: b, percentage: 100, duration_seconds: 0, max_error_rate: 0.5}]}}\n",
    "anchors": b"""\
rollout:
  enabled: true
  stages:
    - &stage {name: one, percentage: 10, max_error_rate: 0.01, duration_seconds: 60}
    - <<: *stage
      name: two
      percentage: 100
""",
}
YAML_VALUES = [
    b"9" * 400, b"-" + b"9" * 400, b"9" * 5000, b"1.0e+300", b"-1.0e+300", b"1e20", b"1.0e+20",
    b".nan", b".inf", b"-.inf", b"0", b"-1", b"1", b"20.0", b"20.5", b"0x10", b"0o17", b"1_000",
    b"315360000", b"315360001", b"86400", b"86401", b"0.5", b"1", b"true", b"no", b"on", b"null",
    b"~", b"''", b'"x"', b'"\\ud800"', b'"\\x00"', b"[1, 2]", b"{a: 1}", b"[" * 3000,
    b"- " * 2000, b"{a: " * 500, b"2001-12-14", b"!!binary aGVsbG8=", b"!!python/name:os.system",
    b"*undefined", b"&a [*a]", b"|\n  block", b"5m", b"60m", b"7m", b"http://p:9090",
    b"prometheus:9090", b"A B", b"x" * 5000,
]  # fmt: skip
YAML_KEYS = [
    b"enforce_enabeld", b"1", b"on", b"null", b"'\\ud800'", b"[a]", b"? a", b"window",
    b"stages", b"enabled", b"name", b"\xc3\xa9", b"<<",
]  # fmt: skip
VALUES_MUTATIONS: list[Mutation] = [
    *LINE_MUTATIONS,
    insert_bytes(BAD_BYTES),
    insert_bytes([b"- " * 2000, b"[" * 100_000, b"{" * 3000, b"\n  ", b"\t", b": ", b"---\n"]),
    replace_value(rb": ", YAML_VALUES),
    replace_value(rb": ", YAML_VALUES),
    replace_value(rb": ", YAML_VALUES),
    rename_key(rb"(?m)^\s*-?\s*([a-z_]+):", YAML_KEYS),
    rename_key(rb"[{,]\s*([a-z_]+):", YAML_KEYS),
]
VALUES_PER_SEED = 300
APPS_PER_SEED = 5  # building the demo app costs ~0.2 s: only for distinct accepted settings


def values_corpus() -> list[tuple[str, str, bytes]]:
    return list(corpus(VALUES_SEEDS, VALUES_MUTATIONS, VALUES_PER_SEED, "values"))


def signature(settings: Settings) -> tuple:
    """What a service built from `settings` differs by."""
    gate = settings.gate
    stages = settings.rollout.stages if settings.rollout is not None else None
    return (
        settings.enforce.enforce,
        settings.enforce.rollout_percent,
        settings.enforce.drift_max_ratio,
        (gate.enabled, gate.window, gate.min_requests, gate.reopen_ratio, gate.confidence),
        None
        if stages is None
        else tuple(
            (s.name, s.percentage, s.duration_seconds, s.max_error_rate, s.requires_approval)
            for s in stages
        ),
        settings.check_interval_seconds,
        settings.rollout_min_requests,
        repr(settings.error_rate_source),
        settings.admin_token_env,
    )


def assert_usable(settings: Settings, folder: Path) -> None:
    """The demo service built from `settings` starts (its monitor included) and answers its
    status and readiness without a server error."""
    # the state in its own folder; the error rate from this process, not from the network;
    # the variables the values name set, as serve needs them
    with mock.patch.dict(os.environ, SERVE_ENVIRONMENT):
        app = create_demo_app(
            replace(settings, state_path=folder / "rollout.json", error_rate_source=None)
        )
    with TestClient(app, raise_server_exceptions=False) as client:
        status = client.get("/api/guardian/rollout/status")
        assert status.status_code == (200 if settings.rollout is not None else 404), status.text
        ready = client.get("/api/v1/readyz")
        assert ready.status_code in (200, 503), ready.text


@pytest.mark.parametrize("seed", list(VALUES_SEEDS))
def test_mutated_values_files_are_usable_or_refused_in_one_line(seed, tmp_path):
    cases = [case for case in values_corpus() if case[0] == seed]
    base = signature(load_settings(_write(tmp_path / "base.yaml", VALUES_SEEDS[seed])))
    refused, distinct = 0, {}
    for i, (_, name, data) in enumerate(cases):
        path = _write(tmp_path / f"values-{i}.yaml", data)
        try:
            loaded = load_settings(path)
        except SettingsError as error:
            message = one_line(str(error))
            assert message.startswith(f"{path}"), (name, message)
            refused += 1
        except Exception as error:
            pytest.fail(f"{name}: {type(error).__name__}: {error}; input {data[:300]!r}")
        else:
            distinct.setdefault(signature(loaded), (name, loaded))
    # a fuzz that only ever refuses (or only accepts) tests nothing
    assert 0.2 * len(cases) < refused < 0.97 * len(cases), refused
    variants = [found for key, found in distinct.items() if key != base]
    assert len(variants) >= 3, len(variants)
    for name, loaded in [(seed, load_settings(tmp_path / "base.yaml")), *variants[:APPS_PER_SEED]]:
        try:
            assert_usable(loaded, tmp_path / "state" / name.replace("/", "_").replace("#", "_"))
        except AssertionError as error:
            raise AssertionError(f"{name}: {error}") from None


def test_settings_at_every_upper_bound_give_a_working_service(tmp_path):
    extreme = parse_settings(
        {
            "enforce_enabled": True,
            "enforce_rollout_percent": 100,
            "drift_max_ratio": 1,
            "enforce_readiness_gate": {
                "enabled": True,
                "min_requests": 10**9,
                "confidence": 0.999,
                "max_unready_replicas": MAX_UNREADY_REPLICAS,
            },
            "rollout": {
                "enabled": True,
                "check_interval_seconds": MAX_CHECK_INTERVAL_SECONDS,
                "min_requests": 10**9,
                "stages": [
                    {"name": "long", "percentage": 50, "duration_seconds": MAX_STAGE_SECONDS},
                    {"name": "full", "percentage": 100, "duration_seconds": MAX_STAGE_SECONDS},
                ],
            },
        }
    )
    app = create_demo_app(replace(extreme, state_path=tmp_path / "rollout.json"))
    with TestClient(app) as client:
        status = client.get("/api/guardian/rollout/status")
        assert status.status_code == 200
        assert status.json()["min_duration"] == str(timedelta(seconds=MAX_STAGE_SECONDS))
        assert client.get("/api/v1/readyz").status_code == 200


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


# What the base values files name (admin.token_env): set, so a valid file passes serve --check.
SERVE_ENVIRONMENT = {"DRIFTGATE_ADMIN_TOKEN": "a-token-of-at-least-32-characters-long!"}


def _run(*args: object) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DRIFTGATE_")}
    env.update(SERVE_ENVIRONMENT)
    return subprocess.run(
        [str(DRIFTGATE), *map(str, args)],
        capture_output=True, text=True, errors="backslashreplace", timeout=60, env=env,
    )  # fmt: skip


def _sample(cases: list, count: int, salt: str) -> list:
    return random.Random(salt).sample(cases, count)


def test_serve_check_on_a_sample_of_mutated_values_files(tmp_path):
    """The installed command, in a process of its own, agrees with the loader on each file:
    exit 0 for a valid file, exit 2 and the loader's message for a refused one."""
    expected: dict[str, tuple[Path, int, str]] = {}
    kinds = {0: 0, 2: 0}
    for i, (_, name, data) in enumerate(_sample(values_corpus(), 1200, "serve")):
        path = _write(tmp_path / f"values-{i}.yaml", data)
        try:
            settings = load_settings(path)
        except SettingsError as error:
            code, line = 2, f"driftgate serve: --config {error}"
        else:
            try:
                check_environment(settings, SERVE_ENVIRONMENT)
                code, line = 0, f"{path}: valid"
            except SettingsError as error:  # a mutated token_env naming another variable
                code, line = 2, f"driftgate serve: --config {path}: {error}"
        if kinds[code] < 10:  # ten of each
            kinds[code] += 1
            expected[name] = (path, code, line)
        if len(expected) == 20:
            break
    with ThreadPoolExecutor(4) as pool:
        results = dict(
            zip(
                expected,
                pool.map(lambda e: _run("serve", "--config", e[0], "--check"), expected.values()),
                strict=True,
            )
        )
    for name, (_, code, line) in expected.items():
        result = results[name]
        assert result.returncode == code, (name, result.stderr)
        shown = result.stdout if code == 0 else result.stderr
        assert one_line(shown) == line.encode("utf-8", "backslashreplace").decode(), name
        assert (result.stderr if code == 0 else result.stdout) == ""


# -- structured values: every key, every kind of value -------------------------------------

ANY_VALUE = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=10**18, max_value=10**400),
    st.floats(),
    st.floats(min_value=-1e6, max_value=1e10),
    st.sampled_from([0, 1, 5, 10, 25, 50, 60, 100, 900, 86400, 315360000, 0.5, 0.95, 0.005]),
    st.text(max_size=8),
    st.sampled_from(["5m", "15m", "60m", "a", "http://127.0.0.1:9", "up", "TOKEN", "\ud800"]),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)
STAGE = st.dictionaries(
    st.sampled_from(["name", "percentage", "duration_seconds", "max_error_rate",
                     "requires_approval", "extra"]),
    ANY_VALUE,
)  # fmt: skip


def _section(keys: list[str], extra: dict | None = None) -> st.SearchStrategy:
    values = {key: ANY_VALUE for key in keys}
    values.update(extra or {})
    return st.fixed_dictionaries({}, optional=values)


HOST_PORT = st.one_of(
    # names that resolve without DNS: an accepted store is built, and asks them at start
    st.sampled_from(["127.0.0.1:26379", "[::1]:26379", "localhost:1", "127.0.0.1:65535"]),
    st.sampled_from(["h:0", "h:65536", "h:x", "h", ":1", "[::1]", "a b:1", "h:1:2", "h:007",
                     "h:99999", "\ud800:1", "h:-1", "h: 1"]),
    st.text(max_size=12),
)  # fmt: skip


def _mostly(*good: object) -> st.SearchStrategy:
    """A value the key takes, or anything."""
    return st.one_of(st.sampled_from(good), st.sampled_from(good), ANY_VALUE)


_STORE_KEYS = {
    "tls_ca_file": _mostly("ca.crt", "/nonexistent/ca.crt"),
    "tls_cert_file": _mostly("tls.crt"),
    "tls_key_file": _mostly("tls.key"),
    "sentinels": st.one_of(st.lists(HOST_PORT, min_size=1, max_size=3), ANY_VALUE),
    "sentinel_service": _mostly("mymaster", "a b", "x" * 129),
    "sentinel_password_env": _mostly("DRIFTGATE_SENTINEL_PASSWORD"),
    "key": _mostly("driftgate:rollout"),
    "sync_interval_seconds": _mostly(0.5, 5),
    "min_replicas_acked": _mostly(0, 1, 100, 101, -1, 1.0, True, "1"),
    "replica_ack_timeout_seconds": _mostly(0.01, 1, 60, 0, 61, 0.001, float("nan"), "1"),
}
STORE = st.one_of(
    st.fixed_dictionaries({}, optional=_STORE_KEYS),
    st.fixed_dictionaries(
        {
            "sentinels": st.lists(HOST_PORT, min_size=1, max_size=3),
            "sentinel_service": _mostly("mymaster"),
        },
        optional={k: v for k, v in _STORE_KEYS.items() if not k.startswith("sentinel")},
    ),
    st.fixed_dictionaries(
        {},
        optional={
            **_STORE_KEYS,
            "url": st.just("redis://:hunter2@127.0.0.1:6379/0"),
            "password": st.just("hunter2"),
            "sentinel_password": st.just("hunter2"),
            "tls_verify": ANY_VALUE,
        },
    ),
)


VALUES = st.one_of(
    ANY_VALUE,
    _section(
        ["enforce_enabled", "enforce_rollout_percent", "drift_max_ratio", "typo"],
        {
            "enforce_readiness_gate": st.one_of(
                ANY_VALUE,
                _section(
                    [
                        "enabled",
                        "window",
                        "min_requests",
                        "reopen_ratio",
                        "confidence",
                        "max_unready_replicas",
                    ]
                ),
            ),
            "rollout": st.one_of(
                ANY_VALUE,
                _section(
                    ["enabled", "state_path", "check_interval_seconds", "min_requests"],
                    {
                        "stages": st.one_of(ANY_VALUE, st.lists(STAGE, max_size=4)),
                        "prometheus": _section(["url", "query", "timeout_seconds"]),
                        "store": st.one_of(ANY_VALUE, STORE),
                    },
                ),
            ),
            "admin": st.one_of(
                ANY_VALUE,
                _section(
                    ["token_env", "token_file", "protect_status"],
                    {
                        "oidc": _section(
                            ["issuer", "audience", "jwks_url", "actor_claim", "algorithms"],
                            {"issuer": st.sampled_from(["https://id.example", "http://x"])},
                        )
                    },
                ),
            ),
            1: ANY_VALUE,
        },
    ),
)


@settings(max_examples=250, deadline=None, suppress_health_check=list(HealthCheck))
@given(values=VALUES)
def test_any_parsed_values_are_usable_or_refused_in_one_line(values):
    try:
        loaded = parse_settings(values)
    except SettingsError as error:
        one_line(str(error))
        return
    # accepted: what the service does with it at start and on /status must work
    assert 1 <= loaded.check_interval_seconds <= MAX_CHECK_INTERVAL_SECONDS
    assert 1 <= loaded.max_unready_replicas <= MAX_UNREADY_REPLICAS
    assert type(loaded.max_unready_replicas) is int
    timedelta(seconds=loaded.check_interval_seconds)
    if loaded.rollout is not None:
        manager = RolloutManager(loaded.rollout, min_requests=loaded.rollout_min_requests)
        json.dumps(manager.get_status())
        assert all(s.duration_seconds <= MAX_STAGE_SECONDS for s in loaded.rollout.stages)
    # an accepted issuer builds its verifier (the token file is read, and fuzzed, below)
    approvers_from_settings(replace(loaded, admin_token_file=None), environ={})
    if loaded.store is not None:
        _assert_store_usable_or_refused(loaded)


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(store=STORE)
def test_any_store_values_are_usable_or_refused_in_one_line_naming_the_key(store):
    try:
        loaded = parse_settings({"rollout": {"enabled": True, "store": store}})
    except SettingsError as error:
        message = one_line(str(error))
        assert message.startswith("rollout.store"), message
        assert "hunter2" not in message
        return
    assert loaded.store is not None
    _assert_store_usable_or_refused(loaded)


def _assert_store_usable_or_refused(loaded: Settings) -> None:
    """Accepted store values build their store at start, or stop it with one line naming the
    setting (a TLS file that is not there); Redis itself is not there (port 1)."""
    environ = {name: "redis://127.0.0.1:1/0" for _, name in required_environment(loaded)}
    if loaded.store.tls_ca_file or loaded.store.tls_cert_file:
        environ[loaded.store.url_env] = "rediss://127.0.0.1:1/0"
    with mock.patch.dict(os.environ, environ):
        try:
            check_environment(loaded)
            store = build_store(loaded.store)
        except SettingsError as error:
            assert one_line(str(error)).startswith("rollout.store."), error
        else:
            store.close()


# -- decision files --------------------------------------------------------------------------

_ok = (EXAMPLES / "decisions_ok.jsonl").read_bytes().splitlines(keepends=True)[:20]
_drift = json.loads((EXAMPLES / "decisions_drift.json").read_text())[:20]
DECISION_SEEDS = {
    "jsonl": b"".join(_ok),
    "array": json.dumps(_drift, indent=2).encode(),
    "object": b'\n{\n  "key": "supplier-1",\n  "shadow": "ok",\n  "enforced": "fail",\n'
    b'  "time": 1767225600\n}\n',
    "timed": b"".join(
        json.dumps(
            {
                "key": f"k{i}",
                "shadow": "OK",
                "enforced": ["ok", "Warn", "FAIL"][i % 3],
                "time": 1767225600 + 60 * i,
            }
        ).encode()
        + b"\n"
        for i in range(15)
    ),
}
JSON_VALUES = [
    b"9" * 400, b"-" + b"9" * 400, b"9" * 5000, b"1e400", b"-1e400", b"1.5e308", b"NaN",
    b"Infinity", b"-Infinity", b"-1", b"0", b"253402300799", b"253402300800", b"1e20", b"0.5",
    b'"\\ud800"', b'"\\udfff"', b'"\\u0000"', b'"ok"', b'"OK"', b'"warn"', b'"fail "', b'""',
    b'"' + b"k" * 10_000 + b'"', b"null", b"true", b"false", b"[]", b"{}", b"[1]",
    b"[" * 5000 + b"]" * 5000, b"[" * 100_000, b'{"a": ' * 3000, b"1767225600",
]  # fmt: skip
VALID_JSON_VALUES = [
    b'"ok"', b'"WARN"', b'"Fail"', b"0", b"253402300799", b"1767225600.5", b'"k-\\u00e9"',
    b'"\\ud83d\\ude00"', b'"' + b"k" * 10_000 + b'"', b'"\xc3\xa9"', b"1767225600",
]  # fmt: skip
JSON_KEYS = [b'"kee"', b'"time"', b'"key"', b'"shadow"', b'"enforced"', b'"\\ud800"', b'""']
DECISION_MUTATIONS: list[Mutation] = [
    *LINE_MUTATIONS,
    insert_bytes([*BAD_BYTES, b"\xef\xbb\xbf", b"[" * 100_000, b"{", b"]", b",", b"\n"]),
    replace_value(rb'": ', JSON_VALUES),
    replace_value(rb'": ', JSON_VALUES),
    replace_value(rb'": ', VALID_JSON_VALUES),
    replace_value(rb'": ', VALID_JSON_VALUES),
    replace_value(rb'": ', VALID_JSON_VALUES),
    rename_key(rb'("[a-z]+"): ', JSON_KEYS),
    lambda rng, data: rng.choice([b"[" * 100_000, b"\xff\xfe", b"", b"  \n", b"[]", b"{}"]),
]
DECISIONS_PER_SEED = 130


def decision_corpus() -> list[tuple[str, str, bytes]]:
    return list(corpus(DECISION_SEEDS, DECISION_MUTATIONS, DECISIONS_PER_SEED, "decisions"))


def adapt_args(path: Path, i: int) -> list[str]:
    flags = ["--enforce", "--rollout", str(25 * (i % 5)), "--seed", str(i)]
    return ["adapt", "--policy", "fuzz.v1", "--context", str(path), *flags] + (
        ["--json"] if i % 2 else []
    )


def check_adapt(code: int, out: str, err: str, path: Path, i: int, name: str) -> None:
    if code in (0, 3):
        assert err == "", (name, err)
        if i % 2:
            report = json.loads(out)
            assert report["gate"] == ("pass" if code == 0 else "fail"), name
            assert report["requests"] >= 1
        else:
            assert "gate           " + ("PASS" if code == 0 else "FAIL") in out, (name, out)
    else:
        assert code == 2, (name, code, err)
        assert out == ""
        assert one_line(err).startswith(f"driftgate adapt: --context {path}"), (name, err)


def test_mutated_decision_files_exit_0_3_or_2_with_one_line(tmp_path, capsys):
    cases = decision_corpus()
    codes = []
    for i, (_, name, data) in enumerate(cases):
        path = _write(tmp_path / f"decisions-{i}.json", data)
        code = main(adapt_args(path, i))
        captured = capsys.readouterr()
        check_adapt(code, captured.out, captured.err, path, i, name)
        codes.append(code)
    assert len(cases) >= 500
    # both outcomes are well represented: the fuzz reaches the replay, not only the parser
    assert codes.count(2) > 0.5 * len(cases)
    assert codes.count(0) > 0.05 * len(cases) and codes.count(3) > 0.02 * len(cases)


def test_adapt_on_a_sample_of_mutated_decision_files(tmp_path, capsys):
    """The installed command agrees with main() on each file, exit code and message."""
    cases = _sample(list(enumerate(decision_corpus())), 20, "adapt")
    expected = {}
    for i, (_, name, data) in cases:
        path = _write(tmp_path / f"decisions-{i}.json", data)
        code = main(adapt_args(path, i))
        expected[name] = (path, i, code, capsys.readouterr())
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda e: _run(*adapt_args(e[0], e[1])), expected.values()))
    for (name, (path, i, code, captured)), result in zip(expected.items(), results, strict=True):
        assert result.returncode == code, (name, result.stderr)
        check_adapt(result.returncode, result.stdout, result.stderr, path, i, name)
        assert result.stderr == captured.err.encode("utf-8", "backslashreplace").decode(), name


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        (b"[" * 100_000, "d.json:1: not readable JSON (nested too deeply)"),
        (b'{"key": "\\ud800", "shadow": "ok", "enforced": "ok"}\n',
         "d.json:1: field 'key': not valid Unicode (an unpaired surrogate), got '\\ud800'"),
        (b'{"key": "a", "shadow": "ok", "enforced": "ok", "time": ' + b"9" * 400 + b"}\n",
         "d.json:1: field 'time': expected unix seconds in [0, 253402300799], got a 400-digit"),
        (b'{"key": "a", "shadow": "ok", "enforced": "ok", "time": ' + b"9" * 5000 + b"}\n",
         "d.json:1: not readable JSON (an integer of 5000 digits)"),
        (b'{"key": "a", "shadow": "ok", "enforced": "ok", "time": 1e300}\n',
         "d.json:1: field 'time': expected unix seconds in [0, 253402300799], got 1e+300"),
        (b'{"key": "a", "shadow": "ok", "enforced": "ok", "time": NaN}\n',
         "field 'time': expected unix seconds in [0, 253402300799], got nan"),
        (b'\n\n{"key": "a", "shadow": "ok", "enforced": "ok"}\n\xff\n',
         "d.json:4: not UTF-8 (byte 0xff at offset 49)"),
    ],
)  # fmt: skip
def test_adapt_refuses_what_the_fuzz_found_in_one_line(tmp_path, capsys, content, fragment):
    path = _write(tmp_path / "d.json", content)
    assert main(["adapt", "--policy", "p", "--context", str(path)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert fragment in one_line(captured.err)


# -- probe bodies ----------------------------------------------------------------------------

PROBE_SEEDS = {"request": (EXAMPLES / "probe_request.json").read_bytes()}
PROBE_MUTATIONS: list[Mutation] = [
    flip_bytes,
    truncate,
    insert_bytes(BAD_BYTES),
    replace_value(rb'": ', JSON_VALUES),
    replace_value(rb'": ', JSON_VALUES),
]


@pytest.fixture(scope="module")
def echo_signature():
    """An endpoint whose signature is the digest of the bytes it received."""

    def reply(method: str, path: str, body: bytes) -> tuple[int, dict]:
        return 200, {"solution_signature": hashlib.sha256(body).hexdigest()}

    with json_server(reply) as url:
        yield url


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (b"[" * 100_000 + b"]" * 100_000, "JSON nested too deeply to check"),
        (b'{"a": "\xff"}', "b.json:1: not UTF-8 (byte 0xff at offset 7)"),
        (b'{"a": NaN}', "not valid JSON (NaN is not JSON)"),
        (b'{"a": -Infinity}', "not valid JSON (-Infinity is not JSON)"),
        (b'{"a": 1', "b.json:1: not valid JSON"),
    ],
)
def test_probe_refuses_bodies_that_are_not_json_in_one_line(
    echo_signature, tmp_path, capsys, body, fragment
):
    path = _write(tmp_path / "b.json", body)
    assert main(["probe", "--url", echo_signature, "--body", str(path), "--count", "2"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert fragment in one_line(captured.err)


@pytest.mark.parametrize(
    "body",
    [
        b'{"n": ' + b"9" * 5000 + b"}",  # more digits than Python converts: still JSON
        b'{"n": 1e400, "m": -1e400}',
        b"[" * 500 + b"]" * 500,
        b'{"key": "\\ud800"}',
    ],
)
def test_probe_posts_unusual_but_valid_json_as_written(echo_signature, tmp_path, capsys, body):
    path = _write(tmp_path / "b.json", body)
    assert main(["probe", "--url", echo_signature, "--body", str(path), "--count", "2"]) == 0
    digest = hashlib.sha256(body).hexdigest()
    assert capsys.readouterr().out == f"stable: 2 of 2 answers gave solution_signature {digest}\n"


def test_mutated_probe_bodies_are_posted_as_written_or_refused(echo_signature, tmp_path, capsys):
    cases = list(corpus(PROBE_SEEDS, PROBE_MUTATIONS, 60, "probe"))
    outcomes = []
    for i, (_, name, data) in enumerate(cases):
        path = _write(tmp_path / f"body-{i}.json", data)
        code = main(["probe", "--url", echo_signature, "--body", str(path), "--count", "2"])
        captured = capsys.readouterr()
        if code == 0:
            digest = hashlib.sha256(data).hexdigest()
            assert captured.out.endswith(f"solution_signature {digest}\n"), name
        else:
            assert code == 2, (name, captured.err)
            assert one_line(captured.err).startswith(f"driftgate probe: --body {path}"), name
        outcomes.append(code)
    assert outcomes.count(0) > 5 and outcomes.count(2) > 5, outcomes


# -- token files -----------------------------------------------------------------------------

TOKENS = {name: f"{name}-" + name[0] * 40 for name in ("alice", "bob", "carol")}
TOKEN_FILE_SEED = (
    "# approvers of the verifier's rollout\n"
    + "".join(
        token_file_line(name, token, scopes) + "\n"
        for (name, token), scopes in zip(
            TOKENS.items(),
            (["rollout:advance", "rollout:rollback"], ["rollout:rollback"], ["rollout:read"]),
            strict=True,
        )
    )
    + "\n\t# the end\n"
).encode()
TOKEN_FILE_MUTATIONS: list[Mutation] = [
    *LINE_MUTATIONS,
    insert_bytes(BAD_BYTES),
    insert_bytes([b" ", b"\t", b",", b"#", b"sha256:", b"\n", b"\r\n", b"\xef\xbb\xbf", b"@"]),
    replace_value(rb"  ", [b"rollout:deploy", b"alice", b"", b"x" * 100, b"sha256:" + b"0" * 64]),
    rename_key(rb"(?m)^([a-z]+) ", [b"alice", b"bob", b"al ice", b"\xc3\xa9", b"1", b"x" * 65]),
]


def test_mutated_token_files_are_usable_or_refused_in_one_line(tmp_path):
    digests = [token_digest(token).removeprefix("sha256:") for token in TOKENS.values()]
    refused, accepted = 0, 0
    for _, name, data in corpus({"approvers": TOKEN_FILE_SEED}, TOKEN_FILE_MUTATIONS, 600, "tf"):
        path = _write(tmp_path / "approvers.tokens", data)
        try:
            loaded = TokenFile.load(path)
        except TokenFileError as error:
            message = one_line(str(error))
            assert message.startswith(f"{path}"), (name, message)
            # a digest field is never echoed (it may be a token pasted by mistake)
            assert not any(digest[:12] in message for digest in digests), (name, message)
            refused += 1
        except Exception as error:
            pytest.fail(f"{name}: {type(error).__name__}: {error}; input {data[:300]!r}")
        else:
            accepted += 1
            # a token names nobody, or the one approver whose line holds its digest
            for token in TOKENS.values():
                found = loaded.identify(token)
                if found is not None:
                    line = next(
                        line for line in data.splitlines() if token_digest(token).encode() in line
                    )
                    assert line.split()[0].decode() == found.name, name
            assert loaded.identify("not-a-token-" + "x" * 40) is None
    assert 0.2 * (refused + accepted) < refused < 0.97 * (refused + accepted), refused
