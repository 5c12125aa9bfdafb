"""Load figures for the HTTP layer: wrk on 127.0.0.1 against uvicorn with one worker, each
driftgate endpoint against the endpoint a user would write for the same answer without
driftgate, in one run; then the metrics scrape over HTTP against the same exposition rendered
in-process.

    python benchmarks/load.py [--seconds 5] [--rounds 7] [--output docs/benchmarks.md]
    python benchmarks/load.py --smoke    # every step once, a second per wrk run, no figures judged

Before measuring, one answer of each side is compared (status 200, same fields). A non-2xx
answer, a socket error or a timeout on either side stops the run: no ratio is reported for a
side that failed.
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import http.client
import json
import math
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from driftgate.exposition import render
from load_apps import POLICIES_ENV
from populated import populated_registry
from report import write_section

HERE = Path(__file__).resolve().parent
VERIFY_BODY = {"policy_id": "lksg.v1", "context": {"subject_id": "s-1", "_demo_drift": False}}
READYZ = "`GET /api/v1/readyz` (gate on)"
STATUS = "`GET /api/guardian/rollout/status`"
VERIFY = "`POST /verify` with `decide()`"
BASELINE, DRIFTGATE = "baseline (without driftgate)", "driftgate"


@dataclass(frozen=True)
class Comparison:
    """One row: a driftgate endpoint against one baseline endpoint."""

    name: str  # the driftgate endpoint, as the report calls it
    path: str
    body: dict[str, Any] | None  # the JSON body it is sent; None: a GET
    baseline: str  # what the baseline is, as the report calls it
    baseline_path: str
    target: float | None  # the least ratio of requests per second; None: for reference


COMPARISONS = [
    Comparison(
        READYZ,
        "/api/v1/readyz",
        None,
        "the `async def` endpoint a user writes, declared on the app (`@app.get`)",
        "/api/v1/readyz",
        0.9,
    ),
    Comparison(
        READYZ,
        "/api/v1/readyz",
        None,
        "the same `async def` in an included `APIRouter`, as driftgate's router is included",
        "/included/api/v1/readyz",
        0.97,
    ),
    Comparison(
        READYZ,
        "/api/v1/readyz",
        None,
        "the same as a plain `def`, which FastAPI runs in its thread pool",
        "/sync/api/v1/readyz",
        None,
    ),
    Comparison(
        STATUS,
        "/api/guardian/rollout/status",
        None,
        "an `async def` declared on the app answering the same document",
        "/api/guardian/rollout/status",
        0.85,
    ),
    Comparison(
        VERIFY, "/verify", VERIFY_BODY, "the same endpoint without driftgate", "/verify", 0.9
    ),
]
METRICS_TARGET = 1.3  # the most an HTTP scrape may cost over rendering the same exposition
GZIP_TARGET = 0.2  # the most a gzipped body may weigh against the plain one


class BenchmarkError(Exception):
    """The run cannot give a figure worth reporting (a side failed, or answers differently)."""


@dataclass(frozen=True)
class Profile:
    seconds: int
    rounds: int
    policies: int  # for the metrics scrape
    scrapes: int  # per side and round, the fastest counts
    smoke: bool


@dataclass
class Run:
    requests: int
    rps: float
    p50_ms: float
    p99_ms: float
    non_2xx: int
    socket_errors: int  # connect, read and write errors and timeouts

    @property
    def failures(self) -> int:
        return self.non_2xx + self.socket_errors


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serve(*factories: str, env: dict[str, str] | None = None) -> Iterator[list[str]]:
    """uvicorn with one worker per `module:factory` (looked up from benchmarks/ first), all
    started at once, with `env` added to their environment; yields their base URLs."""
    processes: list[subprocess.Popen[bytes]] = []
    urls: list[str] = []
    environment = {**os.environ, **(env or {})}
    try:
        for factory in factories:
            port = free_port()
            command = [
                *(sys.executable, "-m", "uvicorn", factory, "--factory"),
                *("--port", str(port), "--workers", "1"),
                *("--log-level", "warning", "--no-access-log"),
            ]
            processes.append(subprocess.Popen(command, cwd=HERE, env=environment))
            urls.append(f"http://127.0.0.1:{port}")
        for factory, process, url in zip(factories, processes, urls, strict=True):
            deadline = time.monotonic() + 60
            while True:
                try:
                    httpx.get(url + "/docs", timeout=1)
                    break
                except httpx.TransportError:
                    if process.poll() is not None:
                        raise BenchmarkError(
                            f"{factory} did not start (exit {process.returncode})"
                        ) from None
                    if time.monotonic() > deadline:
                        raise BenchmarkError(f"{factory} did not answer within 60 s") from None
                    time.sleep(0.05)
        yield urls
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            process.wait(10)


def shape(value: Any) -> Any:
    """A JSON value's fields and their types, without the values."""
    if isinstance(value, dict):
        return {key: shape(item) for key, item in sorted(value.items())}
    if isinstance(value, list):
        return [shape(item) for item in value]
    return type(value).__name__


def check_same_answers(base_url: str, demo_url: str) -> None:
    """One request of each row's endpoint to each side: both answer 200 with the same fields,
    so wrk measures the same work on both sides."""
    with httpx.Client(timeout=10) as client:
        for comparison in COMPARISONS:
            shapes = {}
            for side, url, path in (
                (BASELINE, base_url, comparison.baseline_path),
                (DRIFTGATE, demo_url, comparison.path),
            ):
                if comparison.body is None:
                    response = client.get(url + path)
                else:
                    response = client.post(url + path, json=comparison.body)
                if response.status_code != 200:
                    raise BenchmarkError(
                        f"{side} answered {comparison.name} at {path} with "
                        f"{response.status_code} before the run: {response.text[:200]}"
                    )
                shapes[side] = shape(response.json())
            if shapes[BASELINE] != shapes[DRIFTGATE]:
                raise BenchmarkError(
                    f"{comparison.name}: the baseline answers {shapes[BASELINE]}, driftgate "
                    f"answers {shapes[DRIFTGATE]}; the baseline must answer what driftgate answers"
                )


def _ms(value: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m)", value)
    if match is None:
        raise BenchmarkError(f"wrk printed a latency this script cannot read: {value!r}")
    number, unit = match.groups()
    return float(number) * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}[unit]


def parse_wrk(out: str) -> Run:
    """The figures and the failures in wrk's report (`--latency`)."""

    def find(pattern: str) -> re.Match[str]:
        match = re.search(pattern, out)
        if match is None:
            raise BenchmarkError(f"no {pattern!r} in wrk's report:\n{out}")
        return match

    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    return Run(
        requests=int(find(r"(\d+) requests in ").group(1)),
        rps=float(find(r"Requests/sec:\s+([\d.]+)").group(1)),
        p50_ms=_ms(find(r"\s50%\s+(\S+)").group(1)),
        p99_ms=_ms(find(r"\s99%\s+(\S+)").group(1)),
        non_2xx=int(non_2xx.group(1)) if non_2xx else 0,
        socket_errors=sum(int(g) for g in errors.groups()) if errors else 0,
    )


def wrk(url: str, seconds: int, body: dict[str, Any] | None, connections: int = 16) -> Run:
    args = ["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "--latency"]
    with tempfile.TemporaryDirectory() as folder:
        if body is not None:
            script = Path(folder) / "post.lua"
            script.write_text(
                'wrk.method = "POST"\n'
                'wrk.headers["Content-Type"] = "application/json"\n'
                f"wrk.body = {json.dumps(json.dumps(body))}\n"
            )
            args += ["-s", str(script)]
        result = subprocess.run([*args, url], capture_output=True, text=True)
    if result.returncode != 0:
        raise BenchmarkError(f"wrk {url} exited with {result.returncode}: {result.stderr}")
    return parse_wrk(result.stdout)


def measure(side: str, name: str, url: str, seconds: int, body: dict[str, Any] | None) -> Run:
    run = wrk(url, seconds, body)
    if run.failures:
        raise BenchmarkError(
            f"{side} failed {run.failures} requests on {name} ({run.non_2xx} non-2xx answers "
            f"of {run.requests}, {run.socket_errors} socket errors or timeouts); no ratio "
            "reported"
        )
    return run


@dataclass
class Scraped:
    seconds: float  # the fastest scrape, to its last byte
    body: bytes  # as sent
    headers: dict[str, str]


def scrape_http(url: str, accept_encoding: str, scrapes: int) -> Scraped:
    """The fastest of `scrapes` GETs of /api/v1/metrics on one kept-alive connection, timed to
    the body's last byte, which is read as sent (a gzipped one is not inflated: that is the
    scraper's work, not the service's)."""
    host, port = url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        best = math.inf
        body, headers = b"", {}
        for _ in range(scrapes):
            started = time.perf_counter()
            connection.request(
                "GET", "/api/v1/metrics", headers={"Accept-Encoding": accept_encoding}
            )
            response = connection.getresponse()
            body = response.read()
            best = min(best, time.perf_counter() - started)
            if response.status != 200:
                raise BenchmarkError(f"/api/v1/metrics answered {response.status}: {body[:200]!r}")
            headers = {k.lower(): v for k, v in response.getheaders()}
        return Scraped(best, body, headers)
    finally:
        connection.close()


def render_in_process(registry: Any, scrapes: int) -> float:
    best = math.inf
    for _ in range(scrapes):
        started = time.perf_counter()
        render(registry, None)
        best = min(best, time.perf_counter() - started)
    return best


def check_scrape(gzipped: Scraped, plain: Scraped, policies: int) -> None:
    """Both answers are the exposition of every policy, the gzipped one gzipped."""
    if gzipped.headers.get("content-encoding") != "gzip":
        raise BenchmarkError("/api/v1/metrics did not gzip for a scraper that accepts gzip")
    if "content-encoding" in plain.headers:
        raise BenchmarkError("/api/v1/metrics encoded its answer for a scraper that asked none")
    for answer in (gzip.decompress(gzipped.body), plain.body):
        if answer.count(b'policy_id="policy-') < policies:
            raise BenchmarkError(f"/api/v1/metrics is missing some of {policies} policies")


def measure_scrape(profile: Profile) -> tuple[list[str], bool]:
    """The scrape's rows: over HTTP, gzipped (as Prometheus asks for it) and plain, against
    the same exposition rendered in-process, round by round; and the bodies' sizes."""
    registry, _alive = populated_registry(profile.policies)
    with serve("load_apps:metrics", env={POLICIES_ENV: str(profile.policies)}) as (url,):
        first_gzip = scrape_http(url, "gzip", 1)
        first_plain = scrape_http(url, "identity", 1)
        check_scrape(first_gzip, first_plain, profile.policies)
        rounds = [
            (
                scrape_http(url, "gzip", profile.scrapes).seconds,
                scrape_http(url, "identity", profile.scrapes).seconds,
                render_in_process(registry, profile.scrapes),
            )
            for _ in range(profile.rounds)
        ]
    gzip_ratio = statistics.median(r[0] / r[2] for r in rounds)
    plain_ratio = statistics.median(r[1] / r[2] for r in rounds)
    best = [min(r[i] for r in rounds) * 1000 for i in range(3)]
    size_ratio = len(first_gzip.body) / len(first_plain.body)
    what = f"`GET /api/v1/metrics`, {profile.policies} policies"
    rows = [
        (
            f"{what}, gzipped (as Prometheus asks for it) / the same exposition rendered "
            f"in-process (`driftgate.exposition.render`; median of {len(rounds)} rounds)",
            f"ratio {gzip_ratio:.2f}x; best {best[0]:.2f} ms vs {best[2]:.2f} ms",
            f"<= {METRICS_TARGET}x",
            gzip_ratio <= METRICS_TARGET,
        ),
        (
            f"{what}, plain (`Accept-Encoding: identity`) / the same exposition rendered "
            f"in-process (median of {len(rounds)} rounds)",
            f"ratio {plain_ratio:.2f}x; best {best[1]:.2f} ms vs {best[2]:.2f} ms",
            f"<= {METRICS_TARGET}x",
            plain_ratio <= METRICS_TARGET,
        ),
        (
            f"{what}: the gzipped body / the plain one",
            f"{len(first_gzip.body) / 1024:.0f} KiB / {len(first_plain.body) / 1024:.0f} KiB "
            f"= {size_ratio:.3f}",
            f"<= {GZIP_TARGET}",
            size_ratio <= GZIP_TARGET,
        ),
    ]
    lines = [
        f"| {name} | {value} | {target} | {'yes' if met else 'NO'} |"
        for name, value, target, met in rows
    ]
    return lines, all(met for *_, met in rows)


def run(profile: Profile, baseline_app: str) -> tuple[list[str], bool]:
    """The report's table rows, and whether every target was met."""
    # Both servers up at once, and baseline and driftgate runs alternating row by row and
    # round by round: the host moves this VM's speed and other work comes and goes on it, so
    # the median of many short paired rounds is steadier than a few long ones.
    results: list[list[tuple[Run, Run]]] = [[] for _ in COMPARISONS]
    with serve(baseline_app, "load_apps:demo") as (bare, demo):
        check_same_answers(bare, demo)
        for _ in range(profile.rounds):
            for pairs, c in zip(results, COMPARISONS, strict=True):
                base = measure(BASELINE, c.name, bare + c.baseline_path, profile.seconds, c.body)
                candidate = measure(DRIFTGATE, c.name, demo + c.path, profile.seconds, c.body)
                pairs.append((candidate, base))

    lines = []
    ok = True
    for pairs, c in zip(results, COMPARISONS, strict=True):
        ratio = statistics.median(run.rps / base.rps for run, base in pairs)
        best = max((r for r, _ in pairs), key=lambda r: r.rps)
        best_base = max((b for _, b in pairs), key=lambda b: b.rps)
        answers = sum(r.requests + b.requests for r, b in pairs)
        met = c.target is None or ratio >= c.target
        ok &= met
        target = (
            "(for reference), none failed" if c.target is None else f">= {c.target}x, none failed"
        )
        lines.append(
            f"| {c.name} / {c.baseline} (median of {len(pairs)} rounds) | "
            f"ratio {ratio:.2f}x; best {best.rps:.0f} vs {best_base.rps:.0f} req/s; "
            f"p50 {best.p50_ms:.2f} ms, p99 {best.p99_ms:.2f} ms (baseline p50 "
            f"{best_base.p50_ms:.2f}, p99 {best_base.p99_ms:.2f}); all {answers} answers 2xx | "
            f"{target} | {'yes' if met else 'NO'} |"
        )
    scrape_lines, scrape_ok = measure_scrape(profile)
    return lines + scrape_lines, ok and scrape_ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=5, help="per wrk run")
    parser.add_argument(
        "--rounds",
        type=int,
        default=7,
        help="baseline and driftgate runs alternate this many times; the ratio is the median",
    )
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="every step once with 1 s wrk runs; fails on any error, judges no target",
    )
    parser.add_argument("--output", type=Path, help="write the report's section here")
    parser.add_argument(
        "--baseline-app",
        default="load_apps:bare",
        metavar="MODULE:FACTORY",
        help="the app without driftgate (default: %(default)s)",
    )
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        print("load.py: wrk is not installed (apt-get install wrk)", file=sys.stderr)
        return 2
    if args.smoke:
        profile = Profile(seconds=1, rounds=1, policies=8, scrapes=2, smoke=True)
    else:
        profile = Profile(args.seconds, args.rounds, policies=2048, scrapes=5, smoke=False)

    try:
        lines, ok = run(profile, args.baseline_app)
    except BenchmarkError as error:
        print(f"load.py: {error}", file=sys.stderr)
        return 1
    for line in lines:
        print(line)
    if args.output:
        command = "python benchmarks/load.py " + (
            "--smoke" if profile.smoke else f"--seconds {profile.seconds} --rounds {profile.rounds}"
        )
        write_section(
            args.output,
            "http",
            "## HTTP load\n\n"
            f"- Command: `{command} --output {args.output}`\n"
            f"- wrk -t2 -c16 -d{profile.seconds}s --latency on 127.0.0.1, uvicorn with one "
            f"worker, both on this {os.cpu_count()}-core machine (wrk takes CPU from the server, "
            "the same for the baseline)\n"
            "- Baselines (`benchmarks/load_apps.py`): the endpoints a user would write for the "
            "same answers without driftgate. The readiness probe's is there three ways: an "
            "`async def` declared on the app, the same in an included `APIRouter` (as "
            "driftgate's router is included), and a plain `def` for reference.\n"
            "- Before measuring, one answer of each endpoint on each side is compared: both 200, "
            "same fields. A non-2xx answer, socket error or timeout on either side stops the "
            "run without a ratio.\n"
            f"- The scrape: {profile.policies} policies (`benchmarks/populated.py`), the fastest "
            f"of {profile.scrapes} scrapes per round and side on one kept-alive connection, "
            "timed to the last byte of the body as sent; the in-process render is "
            "`driftgate.exposition.render` on a registry populated the same way.\n\n"
            "| what | measured | target | met |\n|---|---|---|---|\n" + "\n".join(lines) + "\n",
        )
    if profile.smoke:
        print("smoke run: every step ran and every answer was 2xx; targets not judged")
        return 0
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
