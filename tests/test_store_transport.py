"""The shared store over the Redis users run: TLS with the server's certificate verified (and
mutual TLS), ACL users limited to what docs/fleet.md grants, and Sentinel with a failover
under a running fleet. Real redis-server processes on 127.0.0.1; the certificates are made
here."""

from __future__ import annotations

import datetime
import ipaddress
import os
import re
import shlex
import subprocess
import sys
from contextlib import ExitStack
from pathlib import Path

import pytest
import redis
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from driftgate import RolloutConfig, RolloutManager, StateStoreError
from driftgate.settings import parse_settings
from driftgate.store import RedisStateStore
from fleet_servers import (
    URL_ENV,
    RedisServer,
    Replica,
    SentinelServer,
    until,
    values_yaml,
)

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[1]
PASSWORD = "s3cret-acl-password"


# -- certificates ----------------------------------------------------------------------------


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def _write(folder: Path, stem: str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey):
    (folder / f"{stem}.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (folder / f"{stem}.key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )


def make_certificates(folder: Path) -> Path:
    """ca.crt; server.crt for 127.0.0.1 and client.crt, both signed by it; other-ca.crt, an
    authority that signed neither; wrong-host.crt, signed by ca for another host."""
    folder.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc)

    def certificate(subject, issuer, public, signer, *, ca=False, names=()):
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(subject))
            .issuer_name(_name(issuer))
            .public_key(public)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if names:
            builder = builder.add_extension(x509.SubjectAlternativeName(list(names)), False)
        return builder.sign(signer, hashes.SHA256())

    authorities = {}
    for stem in ("ca", "other-ca"):
        key = ec.generate_private_key(ec.SECP256R1())
        authorities[stem] = key
        _write(folder, stem, certificate(stem, stem, key.public_key(), key, ca=True), key)
    signer = authorities["ca"]
    for stem, names in (
        ("server", [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
        ("client", [x509.DNSName("driftgate-replica")]),
        ("wrong-host", [x509.DNSName("redis.elsewhere.example")]),
    ):
        key = ec.generate_private_key(ec.SECP256R1())
        _write(folder, stem, certificate(stem, "ca", key.public_key(), signer, names=names), key)
    return folder


@pytest.fixture(scope="module")
def tls_redis(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tls")
    certificates = make_certificates(folder / "certs")
    server = RedisServer(folder / "redis", tls=certificates)
    server.start()
    yield server, certificates
    server.stop()


def _manager(store: RedisStateStore) -> RolloutManager:
    return RolloutManager(RolloutConfig.default(), store=store)


def _refusal(store: RedisStateStore) -> str:
    with pytest.raises(StateStoreError) as refused:
        store.check_access()
    store.close()
    return str(refused.value)


# -- TLS -------------------------------------------------------------------------------------


def test_tls_with_the_servers_ca_carries_the_rollout(tls_redis):
    server, certificates = tls_redis
    store = RedisStateStore(server.url, "tls:carried", tls_ca_file=certificates / "ca.crt")
    assert store.check_access() is True
    manager = _manager(store)
    try:
        manager.manual_advance("alice")
        stored = until(lambda: manager.version == 2, "the move stored", timeout=5)
        assert stored < 5
        with server.client() as client:
            assert int(client.hget("tls:carried", "version")) == 2
    finally:
        manager.close()


@pytest.mark.parametrize(
    "ca, why",
    [
        (None, "the system's CAs do not know the test's authority"),
        ("other-ca.crt", "another authority"),
    ],
)
def test_a_certificate_from_an_authority_not_given_is_refused(tls_redis, ca, why):
    server, certificates = tls_redis
    ca_file = None if ca is None else certificates / ca
    message = _refusal(RedisStateStore(server.url, "tls:refused", tls_ca_file=ca_file))
    assert "TLS certificate is not trusted" in message, why


def test_a_certificate_for_another_host_is_refused(tmp_path):
    certificates = make_certificates(tmp_path / "certs")
    for suffix in ("crt", "key"):
        (certificates / f"wrong-host.{suffix}").replace(certificates / f"server.{suffix}")
    server = RedisServer(tmp_path / "redis", tls=certificates)
    try:
        server.start()
        message = _refusal(
            RedisStateStore(server.url, "tls:host", tls_ca_file=certificates / "ca.crt")
        )
    finally:
        server.stop()
    assert "TLS certificate is not trusted" in message and "127.0.0.1" in message


def test_mutual_tls_presents_the_client_certificate(tls_redis):
    server, certificates = tls_redis
    with server.client() as client:
        client.config_set("tls-auth-clients", "yes")
    try:
        ca = certificates / "ca.crt"
        assert _refusal_or_down(RedisStateStore(server.url, "tls:mutual", tls_ca_file=ca))
        store = RedisStateStore(
            server.url,
            "tls:mutual",
            tls_ca_file=ca,
            tls_cert_file=certificates / "client.crt",
            tls_key_file=certificates / "client.key",
        )
        assert store.check_access() is True
        store.close()
    finally:
        with server.client() as client:
            client.config_set("tls-auth-clients", "optional")


def _refusal_or_down(store: RedisStateStore) -> bool:
    """True when the store could not use Redis: refused outright or never answered."""
    try:
        return store.check_access() is False
    except StateStoreError:
        return True
    finally:
        store.close()


@pytest.mark.parametrize(
    "arguments, named",
    [
        ({"tls_ca_file": "missing.crt"}, "tls_ca_file='missing.crt' cannot be read"),
        ({"tls_ca_file": "."}, "tls_ca_file='.' cannot be read"),
        ({"tls_ca_file": "not-pem.crt"}, "tls_ca_file='not-pem.crt' holds no usable PEM"),
        ({"tls_cert_file": "client.crt"}, "tls_cert_file and tls_key_file"),
        ({"tls_cert_file": "client.crt", "tls_key_file": "nope.key"}, "tls_key_file='nope.key'"),
        ({"sentinels": ["127.0.0.1:0"], "sentinel_service": "p"}, "sentinels: '127.0.0.1:0'"),
        ({"sentinels": "127.0.0.1:26379", "sentinel_service": "p"}, "sentinels='127.0.0.1"),
        ({"sentinels": ["127.0.0.1:26379"], "sentinel_service": "a b"}, "sentinel_service='a b'"),
        ({"sentinels": ["127.0.0.1:26379"]}, "sentinel_service=None"),
        ({"sentinel_service": "p"}, "sentinel_service and sentinel_password need sentinels"),
    ],
)
def test_store_arguments_that_cannot_work_are_refused_naming_them(
    tls_redis, tmp_path, monkeypatch, arguments, named
):
    server, certificates = tls_redis
    monkeypatch.chdir(tmp_path)
    for name in ("client.crt", "client.key"):
        (tmp_path / name).write_bytes((certificates / name).read_bytes())
    (tmp_path / "not-pem.crt").write_text("not a certificate\n")
    with pytest.raises(ValueError) as refused:
        RedisStateStore(server.url, "tls:bad", **arguments)
    assert named in str(refused.value)


def test_tls_files_next_to_a_plain_url_are_refused(tls_redis):
    _, certificates = tls_redis
    with pytest.raises(ValueError, match=r"tls_ca_file is given but the store URL is redis://"):
        RedisStateStore("redis://127.0.0.1:6379/0", tls_ca_file=certificates / "ca.crt")


def _serve(folder: Path, values: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """`driftgate serve` that is expected to stop at start."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "values.yaml").write_text(values)
    environment = {k: v for k, v in os.environ.items() if k != URL_ENV}
    environment.update(env)
    command = [sys.executable, "-m", "driftgate.cli", "serve", "--config"]
    command += [str(folder / "values.yaml"), "--state-dir", str(folder / "state"), "--port", "0"]
    return subprocess.run(command, env=environment, capture_output=True, text=True, timeout=60)


def _one_line(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert PASSWORD not in result.stderr + result.stdout
    return lines[0]


def test_serve_over_tls_moves_and_an_unreadable_ca_file_stops_it_naming_the_setting(
    tls_redis, tmp_path
):
    server, certificates = tls_redis
    values = values_yaml("tls:serve", store={"tls_ca_file": str(certificates / "ca.crt")})
    replica = Replica(tmp_path, values, server.url, "tls-replica").start()
    try:
        assert replica.move("advance").status_code == 200
        with server.client() as client:
            assert int(client.hget("tls:serve", "version")) == replica.version() == 2
    finally:
        replica.stop()
    values = values_yaml("tls:serve", store={"tls_ca_file": str(tmp_path / "gone.crt")})
    line = _one_line(_serve(tmp_path / "unreadable", values, {URL_ENV: server.url}))
    assert "rollout.store.tls_ca_file" in line and "gone.crt cannot be read" in line


# -- ACL users -------------------------------------------------------------------------------


def documented_acl(key: str = "driftgate:rollout") -> list[str]:
    """The ACL SETUSER line of docs/fleet.md as Redis arguments, for `key`."""
    text = (ROOT / "docs" / "fleet.md").read_text()
    (line,) = re.findall(r"^ACL SETUSER .*$", text, re.MULTILINE)
    line = line.replace("<password>", PASSWORD).replace("driftgate:rollout", key)
    return shlex.split(line)


@pytest.fixture
def acl_redis(tmp_path):
    server = RedisServer(tmp_path / "redis")
    server.start()
    yield server
    server.stop()


def _user_url(server: RedisServer, user: str) -> str:
    return f"redis://{user}:{PASSWORD}@127.0.0.1:{server.port}/0"


def test_a_fleet_under_the_documented_acl_user_moves_follows_and_is_never_refused(
    acl_redis, tmp_path
):
    key = "acl:fleet"
    with acl_redis.client() as admin:
        admin.execute_command(*documented_acl(key))
        admin.execute_command("ACL", "LOG", "RESET")
    url = _user_url(acl_redis, "driftgate")
    # the gate keeps the readiness budget's heartbeat running; check_interval 1 s makes the
    # lease holder check, share its evidence and hint the others
    values = values_yaml(key, gate={"enabled": True, "min_requests": 1000})
    replicas = [Replica(tmp_path, values, url, f"acl{i}") for i in (1, 2)]
    try:
        for replica in replicas:
            replica.launch()
        for replica in replicas:
            replica.start_wait()
        first, second = replicas
        assert first.move("advance").status_code == 200
        until(lambda: second.version() == 2, "the second replica follows", timeout=5)
        with acl_redis.client() as admin:
            until(lambda: admin.exists(f"{key}:lease", f"{key}:evidence") == 2, "a check", 10)
            until(lambda: admin.zcard(f"{key}:replicas") == 2, "both registered", 5)
            assert second.move("rollback").status_code == 200
            until(lambda: first.version() == 3, "the first replica follows", timeout=5)
            denied = admin.execute_command("ACL", "LOG")
        assert denied == [], denied
        for replica in replicas:
            assert "may not" not in replica.log(), replica.log()
    finally:
        for replica in replicas:
            replica.stop()


def test_a_lease_key_the_user_may_not_read_is_named_as_refused_not_as_foreign(acl_redis):
    """Redis checks a script's keys against the ACL before it runs it: the lease script never
    reads a key it may not, and the refusal is Redis's own."""
    key = "acl:lease"
    grants = documented_acl(key)
    grants[grants.index(f"~{key}*")] = f"~{key}"  # the state, not its lease or fence
    with acl_redis.client() as admin:
        admin.execute_command(*grants)
    store = RedisStateStore(_user_url(acl_redis, "driftgate"), key=key)
    try:
        with pytest.raises(StateStoreError) as refused:
            store.observe_lease()
        assert "NOPERM" in str(refused.value) or "permission" in str(refused.value).lower()
        assert "did not write" not in str(refused.value)
    finally:
        store.close()


@pytest.mark.parametrize("taken", ["+publish", "+zadd", "~acl:missing*"])
def test_a_user_missing_one_grant_stops_serve_with_one_line_naming_it(acl_redis, tmp_path, taken):
    key = "acl:missing"
    grants = documented_acl(key)
    grants.remove(taken)
    with acl_redis.client() as admin:
        admin.execute_command(*grants)
    url = _user_url(acl_redis, "driftgate")
    line = _one_line(_serve(tmp_path, values_yaml(key), {URL_ENV: url}))
    assert line.startswith("driftgate serve: ") and "rollout.store:" in line
    assert "the Redis user may not run" in line and "docs/fleet.md#redis-users-acl" in line
    refused = "'zadd acl:missing:replicas" if taken == "+zadd" else "'publish acl:missing:changed"
    if taken.startswith("~"):
        refused = "'type acl:missing'"
    assert refused in line


def test_a_wrong_password_stops_serve_with_one_line(acl_redis, tmp_path):
    with acl_redis.client() as admin:
        admin.execute_command(*documented_acl("acl:password"))
    url = f"redis://driftgate:not-{PASSWORD}@127.0.0.1:{acl_redis.port}/0"
    line = _one_line(_serve(tmp_path, values_yaml("acl:password"), {URL_ENV: url}))
    assert "refused the user name or password" in line and "not-" not in line


# -- Sentinel --------------------------------------------------------------------------------


def test_after_a_failover_the_fleet_follows_the_new_primary_and_moves_commit_there(tmp_path):
    with ExitStack() as stack:
        primary = RedisServer(tmp_path / "primary")
        stack.callback(primary.stop)
        primary.start()
        standby = RedisServer(
            tmp_path / "standby", args=["--replicaof", "127.0.0.1", str(primary.port)]
        )
        stack.callback(standby.stop)
        standby.start()
        sentinels = [SentinelServer(tmp_path / f"sentinel{i}", primary.port) for i in range(3)]
        for sentinel in sentinels:
            stack.callback(sentinel.stop)
            sentinel.start()

        def knows_everyone(sentinel: SentinelServer) -> bool:
            try:
                with redis.Redis(port=sentinel.port, socket_timeout=1) as client:
                    state = client.sentinel_master("primary")
                    return state["num-slaves"] == 1 and state["num-other-sentinels"] == 2
            except (redis.RedisError, OSError):
                return False

        until(lambda: all(knows_everyone(s) for s in sentinels), "the sentinels to meet", 20)

        key = "sentinel:fleet"
        values = values_yaml(
            key,
            store={
                "sentinels": [f"127.0.0.1:{s.port}" for s in sentinels],
                "sentinel_service": "primary",
            },
        )
        replicas = [Replica(tmp_path, values, "redis://primary/0", f"r{i}") for i in (1, 2)]
        for replica in replicas:
            stack.callback(replica.stop)
            replica.launch()
        for replica in replicas:
            replica.start_wait()
        first, second = replicas
        assert first.move("advance").status_code == 200
        until(lambda: second.version() == 2, "the second replica follows", timeout=5)
        with primary.client(socket_timeout=15) as client:  # a loaded machine syncs slowly
            assert client.execute_command("WAIT", 1, 10_000) == 1  # on the standby too

        primary.kill()
        took = until(
            lambda: all(s.primary() == standby.port for s in sentinels), "the failover", 30
        )

        def moved() -> bool:
            return second.move("advance", if_match=2).status_code == 200

        until(moved, "a move on the new primary", timeout=20)
        with standby.client() as client:
            assert int(client.hget(key, "version")) == 3
        until(lambda: first.version() == 3, "the first replica follows", timeout=5)
        assert first.enforced_percent() == second.enforced_percent()
        print(f"failover in {took:.1f} s")


# -- the values ------------------------------------------------------------------------------


def test_store_values_reach_the_store():
    settings = parse_settings(
        {
            "rollout": {
                "enabled": True,
                "store": {
                    "tls_ca_file": "ca.crt",
                    "tls_cert_file": "tls.crt",
                    "tls_key_file": "tls.key",
                    "sentinels": ["[::1]:26379", "sentinel-1.redis:26380"],
                    "sentinel_service": "mymaster",
                    "sentinel_password_env": "DRIFTGATE_SENTINEL_PASSWORD",
                },
            }
        }
    )
    store = settings.store
    assert store is not None
    assert (store.tls_ca_file, store.tls_cert_file, store.tls_key_file) == (
        "ca.crt",
        "tls.crt",
        "tls.key",
    )
    assert store.sentinels == ("[::1]:26379", "sentinel-1.redis:26380")
    assert (store.sentinel_service, store.sentinel_password_env) == (
        "mymaster",
        "DRIFTGATE_SENTINEL_PASSWORD",
    )
    sentinel = RedisStateStore(
        "rediss://u:hunter2@mymaster/0",
        sentinels=store.sentinels,
        sentinel_service="mymaster",
        sentinel_password="hunter3",
    )
    described = sentinel.describe() + repr(sentinel)
    assert "primary 'mymaster' (sentinels ::1:26379, sentinel-1.redis:26380)" in described
    assert "hunter" not in described
    sentinel.close()
