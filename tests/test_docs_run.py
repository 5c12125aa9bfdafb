"""Every fenced code block in README.md and docs/*.md runs as written.

Python blocks are executed (a FastAPI app is also served by uvicorn and asked one request);
shell blocks run their `driftgate` and `curl` commands against a fresh demo service; YAML and
JSON blocks are parsed; PromQL goes through `promtool`; the rollout diagram names the real
stages. A block or a shell command this module does not know fails the test, so a new example
cannot escape it: handle it here, or list it below with the reason it is skipped.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import yaml

import driftgate
from servers import demo_service, free_port, require_tool, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.integration]

ROOT = Path(__file__).resolve().parent.parent
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

# Blocks that do not run, each with its reason, keyed by (document, first line of the block).
SKIPPED_BLOCKS = {
    (
        "docs/sampling.md",
        "h      = MurmurHash3_x86_32(key_bytes, seed)          # unsigned 32-bit",
    ): ("pseudo-code of the bucket rule; tests/test_sampling.py checks the rule itself"),
    (
        "docs/sampling.md",
        'cohort_seed = seed                                        # rollout "default", or '
        'cohort="shared"',
    ): "pseudo-code of a rollout's cohort; tests/test_sampling.py checks it against mmh3",
    (
        "docs/runbook_rollout.md",
        "driftgate probe --url http://127.0.0.1:8000/api/v1/schedule --body canary.json --count 3",
    ): "a solver service's endpoint and request file, which the demo service does not have",
    (
        "docs/fleet.md",
        "ACL SETUSER driftgate on ><password> resetkeys ~driftgate:rollout* resetchannels "
        "&driftgate:rollout:changed -@all +evalsha +script|load +type +hmget +hget +hset +get "
        "+set +incr +pexpire +pttl +del +time +zadd +zrem +zremrangebyscore +zcard +zrange "
        "+zscore +exists +publish +subscribe +unsubscribe +multi +exec +ping +wait",
    ): "tests/test_store_transport.py runs it on a real redis-server and a fleet under that user",
}

# Shell commands that set up a machine rather than show the product; tests of their own cover
# them (the fresh-Debian script, the wheel test), and running them here would install packages.
SETUP_COMMANDS = {
    ("bash", "scripts/demo.sh"): "starts the demo service the test starts itself",
    ("bash", "scripts/fleet_demo.sh"): "the test runs it itself (without installing) for the "
    "blocks that call the fleet's replicas",
    ("bash", "scripts/test.sh"): "the test command this module is part of",
    ("bash", "scripts/build_wheel.sh"): "tests/test_wheel.py builds and installs the wheel",
    ("pip", "install"): "installs the package this test runs from",
}

# Placeholders in the documents and what the test puts in their place.
ADMIN_TOKEN = "change-me"
HOSTS = ("http://127.0.0.1:8000", "https://verifier.internal", "localhost:8000")
# The fleet's replicas as scripts/fleet_demo.sh starts them by default.
FLEET_HOSTS = ("http://127.0.0.1:8001", "http://127.0.0.1:8002", "http://127.0.0.1:8003")


@dataclass(frozen=True)
class Block:
    document: str
    line: int
    language: str
    code: str

    @property
    def first_line(self) -> str:
        return self.code.splitlines()[0].strip() if self.code.strip() else ""

    @property
    def id(self) -> str:
        return f"{self.document}:{self.line}:{self.language or 'plain'}"


def fenced_blocks(path: Path) -> list[Block]:
    """The fenced blocks of a Markdown file, indented ones (inside list items) included."""
    blocks: list[Block] = []
    lines = path.read_text(encoding="utf-8").splitlines()
    opening = re.compile(r"^(\s*)```(\S*)\s*$")
    i = 0
    while i < len(lines):
        match = opening.match(lines[i])
        if match is None:
            i += 1
            continue
        indent, language = match.groups()
        start = i
        i += 1
        body: list[str] = []
        while i < len(lines) and lines[i].strip() != "```":
            body.append(lines[i])
            i += 1
        assert i < len(lines), f"{path.name}:{start + 1}: unclosed code block"
        code = textwrap.dedent("\n".join(body)) + "\n"
        assert len(indent) <= 4, f"{path.name}:{start + 1}: fence indented by {len(indent)}"
        blocks.append(Block(str(path.relative_to(ROOT)), start + 1, language, code))
        i += 1
    return blocks


BLOCKS = [block for path in DOCUMENTS for block in fenced_blocks(path)]


# A block whose first line names a file (`# app.py`, `# values.yaml`, `# tests/test_app.py`) is
# that file of a project the document builds: its blocks run beside all of its files, and a
# `tests/` file runs under pytest, the way its reader runs it.
FILE_NAME = re.compile(r"^# ((?:tests/)?[a-z_]+\.(?:py|yaml))$")


def file_name(block: Block) -> str | None:
    match = FILE_NAME.match(block.first_line)
    return match.group(1) if match else None


def project_files(document: str) -> dict[str, str]:
    """The files the document's named blocks make up."""
    return {
        name: block.code
        for block in BLOCKS
        if block.document == document and (name := file_name(block)) is not None
    }


def write_project(document: str, folder: Path) -> None:
    for name, code in project_files(document).items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(code)


def blocks_of(language: str) -> list[Block]:
    return [
        b
        for b in BLOCKS
        if b.language == language and (b.document, b.first_line) not in SKIPPED_BLOCKS
    ]


def params(language: str) -> list[object]:
    return [pytest.param(b, id=b.id) for b in blocks_of(language)]


HANDLED_LANGUAGES = {"python", "bash", "yaml", "json", "promql", "mermaid"}


def test_every_block_is_run_or_skipped_with_a_reason() -> None:
    assert len(BLOCKS) >= 20, "the documents lost their examples, or the parser broke"
    unknown = [
        b.id
        for b in BLOCKS
        if b.language not in HANDLED_LANGUAGES and (b.document, b.first_line) not in SKIPPED_BLOCKS
    ]
    assert not unknown, f"code blocks no test runs (handle them or list them skipped): {unknown}"
    present = {(b.document, b.first_line) for b in BLOCKS}
    stale = [key for key in SKIPPED_BLOCKS if key not in present]
    assert not stale, f"skipped blocks that no longer exist: {stale}"


# --- Python ---------------------------------------------------------------------------------


def is_fastapi_app(code: str) -> bool:
    return re.search(r"^app = FastAPI\(", code, re.MULTILINE) is not None or is_app_factory(code)


def is_app_factory(code: str) -> bool:
    """A module with `def create_app(...)`, served with `uvicorn --factory`."""
    return re.search(r"^def create_app\(", code, re.MULTILINE) is not None


@pytest.fixture
def restored_logging() -> Iterator[None]:
    """A block may set up logging as a service would; the tests after it see it as it was."""
    root, driftgate_logger = logging.getLogger(), logging.getLogger("driftgate")
    before = (root.handlers[:], root.level, driftgate_logger.level)
    yield
    root.handlers[:], _, _ = before
    root.setLevel(before[1])
    driftgate_logger.setLevel(before[2])


@pytest.mark.parametrize("block", params("python"))
def test_python_block_runs(
    block: Block,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    restored_logging: None,
) -> None:
    monkeypatch.chdir(tmp_path)
    write_project(block.document, tmp_path)
    name = file_name(block)
    if name is not None and name.startswith("tests/"):
        result = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", name],
            cwd=tmp_path,
            env={**os.environ, "PYTHONPATH": str(tmp_path)},
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-3000:]
        assert " passed" in result.stdout and "failed" not in result.stdout, result.stdout
        return
    monkeypatch.syspath_prepend(str(tmp_path))
    namespace: dict[str, object] = {"__name__": "__main__"}
    if "RedisStateStore" in block.code:
        with redis_server(tmp_path / "redis") as url:
            monkeypatch.setenv("DRIFTGATE_REDIS_URL", url)
            exec(compile(block.code, block.id, "exec"), namespace)
    else:
        exec(compile(block.code, block.id, "exec"), namespace)
    if is_app_factory(block.code):
        namespace["app"] = namespace["create_app"]()  # type: ignore[operator]
    if is_fastapi_app(block.code):
        assert type(namespace["app"]).__name__ == "FastAPI"


@pytest.mark.parametrize(
    "block", [pytest.param(b, id=b.id) for b in blocks_of("python") if is_fastapi_app(b.code)]
)
def test_fastapi_block_serves_under_uvicorn(block: Block, tmp_path: Path) -> None:
    write_project(block.document, tmp_path)
    (tmp_path / "documented_app.py").write_text(block.code)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "uvicorn"]
    command += ["--factory", "documented_app:create_app"] if is_app_factory(block.code) else []
    command += [] if is_app_factory(block.code) else ["documented_app:app"]
    command += ["--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"]
    process = subprocess.Popen(command, cwd=tmp_path)
    try:

        def schema() -> dict[str, object] | None:
            if process.poll() is not None:
                raise AssertionError(f"uvicorn exited with {process.returncode}")
            try:
                return httpx.get(f"{base}/openapi.json", timeout=1).json()  # type: ignore[no-any-return]
            except httpx.TransportError:
                return None

        paths = wait_for(schema, "the documented app")["paths"]
        assert isinstance(paths, dict)
        healthz = [p for p in paths if p.endswith("/healthz")]
        assert len(healthz) == 1, f"expected one healthz route, the app mounts {sorted(paths)}"
        response = httpx.get(base + healthz[0], timeout=5)
        assert response.status_code == 200, response.text
    finally:
        process.terminate()
        process.wait(10)


def test_readme_programs_pass_mypy_strict(tmp_path: Path) -> None:
    write_project("README.md", tmp_path)
    files = [name for name in project_files("README.md") if name.endswith(".py")]
    for n, block in enumerate(b for b in blocks_of("python") if b.document == "README.md"):
        if file_name(block) is None:
            file = tmp_path / f"readme_block_{n}.py"
            file.write_text(block.code)
            files.append(str(file))
    assert files
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-incremental", *files],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout + result.stderr


# --- shell ----------------------------------------------------------------------------------


def commands(code: str) -> list[str]:
    """The block's commands: continuation lines joined, comment lines and blank lines dropped."""
    joined = code.replace("\\\n", " ")
    return [
        line.strip()
        for line in joined.splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]


def program(command: str) -> tuple[str, list[str]]:
    """The command's program and arguments, environment assignments in front skipped."""
    words = shlex.split(command, comments=True)
    while words and re.match(r"^[A-Z_][A-Z0-9_]*=", words[0]):
        words.pop(0)
    return (words[0], words[1:]) if words else ("", [])


def expected_exit(command: str) -> int:
    """0, or the exit code the command's own comment documents (`# exit 3: ...`)."""
    match = re.search(r"#\s*exit (\d+)", command)
    return int(match.group(1)) if match else 0


def setup_reason(command: str) -> str | None:
    name, args = program(command)
    for (setup_program, first_arg), reason in SETUP_COMMANDS.items():
        if name == setup_program and args[:1] == [first_arg]:
            return reason
    return None


def needs_service(block: Block) -> bool:
    return any(host in block.code for host in HOSTS)


def shell_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "DRIFTGATE_ADMIN_TOKEN"}
    # the documents run `driftgate` from the environment the package is installed in
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["HOME"] = str(tmp_path)
    return env


def with_service_url(command: str, base: str) -> str:
    for host in HOSTS:
        target = base if host.startswith("http") else base.removeprefix("http://")
        command = command.replace(host, target)
    return command


def run_shell_block(
    block: Block, tmp_path: Path, base: str | None, fleet: dict[str, str] | None = None
) -> list[str]:
    """Runs the block's commands in order in a folder holding the checkout's examples; returns
    what ran. Each command must exit 0 or with the code its comment documents. `base` replaces
    the documented service URLs, `fleet` maps the documented replica URLs to the real ones."""
    work = tmp_path / "cwd"
    work.mkdir()
    for folder in ("examples", "prometheus"):
        shutil.copytree(ROOT / folder, work / folder)
    env = shell_env(tmp_path)
    ran: list[str] = []
    for command in commands(block.code):
        if setup_reason(command) is not None:
            continue
        name, args = program(command)
        if name == "export":
            variable, _, value = args[0].partition("=")
            env[variable] = ADMIN_TOKEN if value == "..." else value
            continue
        if name == "cd" and "promtool" in command:
            require_tool("promtool")
        elif name not in ("driftgate", "curl", "python3"):
            raise AssertionError(f"{block.id}: no rule for the command {command!r}")
        if base is not None:
            command = with_service_url(command, base)
        for documented, real in (fleet or {}).items():
            command = command.replace(documented, real)
        result = subprocess.run(
            ["bash", "-o", "pipefail", "-c", command],
            cwd=work,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == expected_exit(command), (
            f"{block.id}: {command!r} exited {result.returncode}, "
            f"expected {expected_exit(command)}\n{result.stdout}{result.stderr}"
        )
        assert "Traceback" not in result.stderr, result.stderr
        ran.append(command)
    return ran


def require_redis() -> str:
    """The path of redis-server: skips on a developer's machine without it, fails where
    DRIFTGATE_REQUIRE_PROMETHEUS=1 (scripts/test.sh, which installs it)."""
    path = shutil.which("redis-server")
    if path is None:
        message = "redis-server not found (Debian package: redis-server)"
        if os.environ.get("DRIFTGATE_REQUIRE_PROMETHEUS") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return path


@contextmanager
def redis_server(folder: Path) -> Iterator[str]:
    """A redis-server on 127.0.0.1 (appendonly, fsync always); yields its URL."""
    binary = require_redis()
    folder.mkdir(parents=True)
    port = free_port()
    command = [binary, "--bind", "127.0.0.1", "--port", str(port), "--dir", str(folder)]
    command += ["--appendonly", "yes", "--appendfsync", "always", "--save", ""]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL)
    try:
        import redis

        client = redis.Redis(host="127.0.0.1", port=port, socket_timeout=1)

        def pong() -> bool | None:
            if process.poll() is not None:
                raise AssertionError(f"redis-server exited with {process.returncode}")
            try:
                return client.ping() or None
            except redis.ConnectionError:
                return None

        wait_for(pong, "redis-server")
        client.close()
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        process.terminate()
        process.wait(10)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@contextmanager
def fleet_demo(folder: Path) -> Iterator[dict[str, str]]:
    """scripts/fleet_demo.sh on free ports, with this environment's driftgate instead of an
    install into .venv; yields the documented replica URLs mapped to the real ones. On exit
    it is interrupted as Ctrl-C would, and every process it printed must be gone."""
    require_redis()
    ports = [str(free_port()) for _ in FLEET_HOSTS]
    env = {k: v for k, v in os.environ.items() if k != "DRIFTGATE_ADMIN_TOKEN"}
    env |= {
        "DRIFTGATE_ADMIN_TOKEN": ADMIN_TOKEN,
        "DRIFTGATE_BIN": str(Path(sys.executable).parent / "driftgate"),
        "FLEET_DIR": str(folder),
        "REDIS_PORT": str(free_port()),
        "REPLICA_PORTS": " ".join(ports),
    }
    script = subprocess.Popen(
        ["bash", str(ROOT / "scripts" / "fleet_demo.sh")],
        env=env,
        stdout=subprocess.PIPE,
        text=True,
        # SIGINT as a terminal's foreground job has it: a test run started in the background
        # inherits it ignored, and a shell cannot trap a signal ignored when it started
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    assert script.stdout is not None
    printed: list[str] = []
    pids: list[int] = []
    try:
        for line in script.stdout:  # ends when the script is up (or has exited)
            printed.append(line)
            if line.startswith("Stop:"):
                break
        output = "".join(printed)
        assert "Stop: Ctrl-C" in output, f"the fleet did not come up:\n{output}"
        pids = [int(pid) for pid in re.findall(r"\bpid (\d+)", output)]
        urls = [f"http://127.0.0.1:{port}" for port in ports]
        assert len(pids) == 4 and all(url in output for url in urls), output
        yield dict(zip(FLEET_HOSTS, urls, strict=True))
    finally:
        script.send_signal(signal.SIGINT)
        try:
            printed.append(script.communicate(timeout=60)[0])  # reads the rest, closes the pipe
        finally:
            script.kill()
    survivors = [pid for pid in pids if alive(pid)]
    for pid in survivors:  # so that a broken script fails the test without leaking servers
        os.kill(pid, signal.SIGKILL)
    assert not survivors, f"the fleet script left {survivors} running"
    assert script.returncode == 130, script.returncode
    assert "==> fleet stopped" in printed[-1], "".join(printed)


@pytest.mark.parametrize("block", params("bash"))
def test_shell_block_runs(block: Block, tmp_path: Path) -> None:
    if all(setup_reason(c) is not None for c in commands(block.code)):
        pytest.skip(f"set-up only: {[setup_reason(c) for c in commands(block.code)]}")
    if any(host in block.code for host in FLEET_HOSTS):
        with fleet_demo(tmp_path / "fleet") as replicas:
            ran = run_shell_block(block, tmp_path, None, replicas)

            # the move on one replica is what every replica now enforces
            def agreed() -> set[tuple[str, int]] | None:
                statuses = [
                    httpx.get(f"{url}/api/guardian/rollout/status", timeout=5).json()
                    for url in replicas.values()
                ]
                seen = {(s["current_stage"]["name"], s["version"]) for s in statuses}
                return seen if len(seen) == 1 else None

            ((stage, _),) = wait_for(agreed, "the replicas to agree", timeout=10)
            assert stage == "quarter"
        assert ran
        return
    if needs_service(block):
        values = (ROOT / "examples" / "values.yaml").read_text()
        with demo_service(tmp_path / "service", values, token=ADMIN_TOKEN) as base:
            ran = run_shell_block(block, tmp_path, base)
    else:
        ran = run_shell_block(block, tmp_path, None)
    assert ran


def test_expected_exit_reads_the_documented_code() -> None:
    adapt = [c for b in blocks_of("bash") for c in commands(b.code) if "--drift-max" in c]
    assert adapt and all(expected_exit(c) == 3 for c in adapt)


# --- data and diagrams ----------------------------------------------------------------------


@pytest.mark.parametrize("block", params("yaml"))
def test_yaml_block_parses(block: Block) -> None:
    document = yaml.safe_load(block.code)
    assert isinstance(document, dict) and document, block.code
    for rule_file in document.get("rule_files", []):
        assert (ROOT / rule_file).is_file(), f"{block.id}: {rule_file} does not exist"


@pytest.mark.parametrize("block", params("json"))
def test_json_block_parses(block: Block) -> None:
    document = json.loads(block.code)
    assert isinstance(document, dict) and document


@pytest.mark.parametrize("block", params("promql"))
def test_promql_block_parses(block: Block, tmp_path: Path) -> None:
    promtool = require_tool("promtool")
    expressions = [
        re.sub(r"\s+#.*$", "", line).strip()
        for line in block.code.splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    rules = [{"record": f"docs:expression_{i}", "expr": e} for i, e in enumerate(expressions)]
    (tmp_path / "docs.rules.yml").write_text(
        yaml.safe_dump({"groups": [{"name": "docs", "rules": rules}]})
    )
    result = subprocess.run(
        [promtool, "check", "rules", str(tmp_path / "docs.rules.yml")],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("block", params("mermaid"))
def test_state_diagram_names_the_real_stages(block: Block) -> None:
    lines = block.code.strip().splitlines()
    assert lines[0] == "stateDiagram-v2"
    transition = re.compile(r"^\s*(\S+)\s*-->\s*([^:\s]+)\s*(?::.*)?$")
    states: set[str] = set()
    for line in lines[1:]:
        match = transition.match(line)
        assert match, f"{block.id}: not a transition: {line!r}"
        states.update(match.groups())
    stages = {stage.name for stage in driftgate.RolloutConfig.default().stages}
    assert states - {"[*]"} == stages | {"aborted"}
