"""Load figures for the HTTP layer: wrk on 127.0.0.1 against uvicorn with one worker, each
driftgate endpoint against the same endpoint without driftgate, in one run.

    python benchmarks/load.py [--seconds 10] [--output docs/benchmarks-http.md]
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
from dataclasses import dataclass
from pathlib import Path

import httpx

from report import write_section

HERE = Path(__file__).resolve().parent
VERIFY_BODY = {"policy_id": "lksg.v1", "context": {"subject_id": "s-1", "_demo_drift": False}}


@dataclass
class Run:
    rps: float
    p50_ms: float
    p99_ms: float
    failures: int


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serve(factory: str):
    """uvicorn with one worker running benchmarks/load_apps.py:`factory`."""
    port = free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            f"load_apps:{factory}",
            "--factory",
            "--port",
            str(port),
            "--workers",
            "1",
            "--log-level",
            "warning",
            "--no-access-log",
        ],
        cwd=HERE,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            httpx.get(url + "/docs", timeout=1)
            break
        except httpx.TransportError:
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{factory} did not start") from None
            time.sleep(0.05)
    try:
        yield url
    finally:
        process.terminate()
        process.wait(10)


def _ms(value: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)(us|ms|s)", value).groups()
    return float(number) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def wrk(url: str, seconds: int, connections: int = 16, body: dict | None = None) -> Run:
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
        out = subprocess.run([*args, url], capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    p50 = _ms(re.search(r"\s50%\s+(\S+)", out).group(1))
    p99 = _ms(re.search(r"\s99%\s+(\S+)", out).group(1))
    failures = 0
    if m := re.search(r"Non-2xx or 3xx responses: (\d+)", out):
        failures += int(m.group(1))
    if m := re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out):
        failures += sum(int(g) for g in m.groups())
    return Run(rps, p50, p99, failures)


def metrics_median_ms(url: str, policies: int, samples: int = 200) -> float:
    with httpx.Client(base_url=url, timeout=10) as client:
        for i in range(policies):
            client.post(
                "/verify", json={"policy_id": f"policy-{i:03d}", "context": {"subject_id": str(i)}}
            )
        client.get("/api/v1/metrics")
        times = []
        for _ in range(samples):
            start = time.perf_counter()
            response = client.get("/api/v1/metrics")
            times.append(time.perf_counter() - start)
            assert response.status_code == 200
            assert response.text.count('policy_id="policy-') >= policies
    return statistics.median(times) * 1000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=10, help="per wrk run")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--output", type=Path)
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        print("wrk is not installed (apt-get install wrk)", file=sys.stderr)
        return 2

    # Both servers up at once, and baseline and driftgate runs alternating round by round: the
    # host moves this VM's speed, so per-round ratios are steadier than one run against one.
    endpoints = {
        "`GET /api/v1/readyz` (gate on)": ("/api/v1/readyz", None),
        "`POST /verify` with `decide()`": ("/verify", VERIFY_BODY),
    }
    results: dict[str, list[tuple[Run, Run]]] = {name: [] for name in endpoints}
    with serve("bare") as bare, serve("demo") as demo:
        for _ in range(args.rounds):
            for name, (path, body) in endpoints.items():
                base = wrk(bare + path, args.seconds, body=body)
                run = wrk(demo + path, args.seconds, body=body)
                results[name].append((run, base))
        metrics_ms = metrics_median_ms(demo, 256)

    lines = []
    ok = True
    for name, pairs in results.items():
        ratio = statistics.median(run.rps / base.rps for run, base in pairs)
        run = max((r for r, _ in pairs), key=lambda r: r.rps)
        base = max((b for _, b in pairs), key=lambda b: b.rps)
        failures = sum(r.failures for r, _ in pairs)
        met = ratio >= 0.9 and failures == 0
        ok &= met
        lines.append(
            f"| {name} / the same endpoint without driftgate (median of {len(pairs)} rounds) | "
            f"ratio {ratio:.2f}x; best {run.rps:.0f} vs {base.rps:.0f} req/s; "
            f"p50 {run.p50_ms:.2f} ms, p99 {run.p99_ms:.2f} ms (baseline p50 "
            f"{base.p50_ms:.2f}, p99 {base.p99_ms:.2f}); failed {failures} | "
            f">= 0.9x, none failed | {'yes' if met else 'NO'} |"
        )
    metrics_met = metrics_ms <= 10
    ok &= metrics_met
    lines.append(
        f"| `GET /api/v1/metrics` with 256 policies, median of 200 | {metrics_ms:.2f} ms | "
        f"<= 10 ms | {'yes' if metrics_met else 'NO'} |"
    )
    for line in lines:
        print(line)
    if args.output:
        write_section(
            args.output,
            "http",
            "## HTTP load\n\n"
            f"- Command: `python benchmarks/load.py --seconds {args.seconds} --rounds "
            f"{args.rounds} --output {args.output}`\n"
            f"- wrk -t2 -c16 -d{args.seconds}s --latency on 127.0.0.1, uvicorn with one worker, "
            f"both on this {os.cpu_count()}-core machine (wrk takes CPU from the server, the same "
            "for the baseline)\n\n"
            "| what | measured | target | met |\n|---|---|---|---|\n" + "\n".join(lines) + "\n",
        )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
