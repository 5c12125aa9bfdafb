"""Load figures for the HTTP layer: wrk on 127.0.0.1 against uvicorn with one worker, each
driftgate endpoint against the same endpoint without driftgate, in one run.

    python benchmarks/load.py [--seconds 5] [--rounds 7] [--output docs/benchmarks.md]
    python benchmarks/load.py --smoke    # every step once, a second per wrk run, no figures judged

Before measuring, one answer of each side is compared (status 200, same fields). A non-2xx
answer, a socket error or a timeout on either side stops the run: no ratio is reported for a
side that failed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
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

from report import write_section

HERE = Path(__file__).resolve().parent
VERIFY_BODY = {"policy_id": "lksg.v1", "context": {"subject_id": "s-1", "_demo_drift": False}}
# what each path is called in the report, and the JSON body it is sent (None: a GET)
ENDPOINTS: dict[str, tuple[str, dict[str, Any] | None]] = {
    "`GET /api/v1/readyz` (gate on)": ("/api/v1/readyz", None),
    "`POST /verify` with `decide()`": ("/verify", VERIFY_BODY),
}
# the least ratio to the baseline's requests per second each endpoint must reach
TARGETS = {"`GET /api/v1/readyz` (gate on)": 0.97, "`POST /verify` with `decide()`": 0.9}
BASELINE, DRIFTGATE = "baseline (without driftgate)", "driftgate"


class BenchmarkError(Exception):
    """The run cannot give a figure worth reporting (a side failed, or answers differently)."""


@dataclass(frozen=True)
class Profile:
    seconds: int
    rounds: int
    policies: int  # for the metrics scrape
    samples: int
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
def serve(*factories: str) -> Iterator[list[str]]:
    """uvicorn with one worker per `module:factory` (looked up from benchmarks/ first), all
    started at once; yields their base URLs."""
    processes: list[subprocess.Popen[bytes]] = []
    urls: list[str] = []
    try:
        for factory in factories:
            port = free_port()
            command = [
                *(sys.executable, "-m", "uvicorn", factory, "--factory"),
                *("--port", str(port), "--workers", "1"),
                *("--log-level", "warning", "--no-access-log"),
            ]
            processes.append(subprocess.Popen(command, cwd=HERE))
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
    """One request of each endpoint to each side: both answer 200 with the same fields, so wrk
    measures the same work on both sides."""
    with httpx.Client(timeout=10) as client:
        for name, (path, body) in ENDPOINTS.items():
            shapes = {}
            for side, url in ((BASELINE, base_url), (DRIFTGATE, demo_url)):
                if body is None:
                    response = client.get(url + path)
                else:
                    response = client.post(url + path, json=body)
                if response.status_code != 200:
                    raise BenchmarkError(
                        f"{side} answered {name} with {response.status_code} before the run: "
                        f"{response.text[:200]}"
                    )
                shapes[side] = shape(response.json())
            if shapes[BASELINE] != shapes[DRIFTGATE]:
                raise BenchmarkError(
                    f"{name}: the baseline answers {shapes[BASELINE]}, driftgate answers "
                    f"{shapes[DRIFTGATE]}; the baseline must answer what driftgate answers"
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


def metrics_median_ms(url: str, policies: int, samples: int) -> float:
    with httpx.Client(base_url=url, timeout=10) as client:
        for i in range(policies):
            response = client.post(
                "/verify", json={"policy_id": f"policy-{i:03d}", "context": {"subject_id": str(i)}}
            )
            if response.status_code != 200:
                raise BenchmarkError(f"/verify answered {response.status_code}: {response.text}")
        client.get("/api/v1/metrics")
        times = []
        for _ in range(samples):
            start = time.perf_counter()
            response = client.get("/api/v1/metrics")
            times.append(time.perf_counter() - start)
            if response.status_code != 200:
                raise BenchmarkError(f"/api/v1/metrics answered {response.status_code}")
            if response.text.count('policy_id="policy-') < policies:
                raise BenchmarkError(f"/api/v1/metrics is missing some of {policies} policies")
    return statistics.median(times) * 1000


def run(profile: Profile, baseline_app: str) -> tuple[list[str], bool]:
    """The report's table rows, and whether every target was met."""
    # Both servers up at once, and baseline and driftgate runs alternating round by round: the
    # host moves this VM's speed and other work comes and goes on it, so the median of many
    # short paired rounds is steadier than a few long ones, or one run against one.
    results: dict[str, list[tuple[Run, Run]]] = {name: [] for name in ENDPOINTS}
    with serve(baseline_app, "load_apps:demo") as (bare, demo):
        check_same_answers(bare, demo)
        for _ in range(profile.rounds):
            for name, (path, body) in ENDPOINTS.items():
                base = measure(BASELINE, name, bare + path, profile.seconds, body)
                candidate = measure(DRIFTGATE, name, demo + path, profile.seconds, body)
                results[name].append((candidate, base))
        metrics_ms = metrics_median_ms(demo, profile.policies, profile.samples)

    lines = []
    ok = True
    for name, pairs in results.items():
        ratio = statistics.median(run.rps / base.rps for run, base in pairs)
        best = max((r for r, _ in pairs), key=lambda r: r.rps)
        best_base = max((b for _, b in pairs), key=lambda b: b.rps)
        answers = sum(r.requests + b.requests for r, b in pairs)
        target = TARGETS[name]
        met = ratio >= target
        ok &= met
        lines.append(
            f"| {name} / the same endpoint without driftgate (median of {len(pairs)} rounds) | "
            f"ratio {ratio:.2f}x; best {best.rps:.0f} vs {best_base.rps:.0f} req/s; "
            f"p50 {best.p50_ms:.2f} ms, p99 {best.p99_ms:.2f} ms (baseline p50 "
            f"{best_base.p50_ms:.2f}, p99 {best_base.p99_ms:.2f}); all {answers} answers 2xx | "
            f">= {target}x, none failed | {'yes' if met else 'NO'} |"
        )
    metrics_met = metrics_ms <= 10
    ok &= metrics_met
    lines.append(
        f"| `GET /api/v1/metrics` with {profile.policies} policies, median of {profile.samples} "
        f"| {metrics_ms:.2f} ms | <= 10 ms | {'yes' if metrics_met else 'NO'} |"
    )
    return lines, ok


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
        profile = Profile(seconds=1, rounds=1, policies=8, samples=5, smoke=True)
    else:
        profile = Profile(args.seconds, args.rounds, policies=256, samples=200, smoke=False)

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
            "- Before measuring, one answer of each endpoint on each side is compared: both 200, "
            "same fields. A non-2xx answer, socket error or timeout on either side stops the "
            "run without a ratio.\n\n"
            "| what | measured | target | met |\n|---|---|---|---|\n" + "\n".join(lines) + "\n",
        )
    if profile.smoke:
        print("smoke run: every step ran and every answer was 2xx; targets not judged")
        return 0
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
