"""How long `make demo` takes for a new user: on a fresh clone with an empty pip cache (cold), and again (warm).

    .venv/bin/python bench/make_demo.py [--runs 3]

Each cold run: `git clone` of this checkout's HEAD into a new temporary directory, `PIP_CACHE_DIR` pointed at a new
empty directory, then `time make demo` (venv, runtime install, the demo). Each warm run: `make demo` again in that
clone (nothing to install). The anchor, measured in the same runs: the demo alone (`.venv/bin/gitops-bridge demo` in
the clone), so the ratio shows what installing adds. Uses uv when it is on PATH, else pip, like the Makefile.
Prints the median of the runs, the spread (min-max), the load average and the ratios; it does not pass or fail.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def timed(command: list[str], cwd: Path, env: dict[str, str]) -> float:
    started = time.monotonic()
    result = subprocess.run(command, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed ({result.returncode}):\n{result.stderr[-2000:]}")
    return time.monotonic() - started


def one_run() -> tuple[float, float, float]:
    with tempfile.TemporaryDirectory(prefix="bench-make-demo-") as tmp:
        clone, cache = Path(tmp) / "clone", Path(tmp) / "pip-cache"
        subprocess.run(["git", "clone", "--quiet", str(ROOT), str(clone)], check=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("BRIDGE_", "VIRTUAL_ENV"))}
        env.update(PIP_CACHE_DIR=str(cache), UV_CACHE_DIR=str(cache))
        cold = timed(["make", "demo"], clone, env)
        warm = timed(["make", "demo"], clone, env)
        alone = timed([str(clone / ".venv" / "bin" / "gitops-bridge"), "demo"], clone, env)
        return cold, warm, alone


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    load = os.getloadavg()
    print(f"load average before: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; {os.cpu_count()} cores")
    runs = []
    for n in range(args.runs):
        cold, warm, alone = one_run()
        runs.append((cold, warm, alone))
        print(f"run {n + 1}: cold {cold:.1f} s, warm {warm:.1f} s, the demo alone {alone:.1f} s")
    for i, name in enumerate(("make demo, cold (fresh clone, empty cache)", "make demo, warm", "demo alone (anchor)")):
        values = [r[i] for r in runs]
        print(f"  {name:<44} median {statistics.median(values):6.1f} s   spread {min(values):.1f}-{max(values):.1f}")
    anchor = statistics.median(r[2] for r in runs)
    print(f"  ratio to the demo alone: cold {statistics.median(r[0] for r in runs) / anchor:.2f}x, "
          f"warm {statistics.median(r[1] for r in runs) / anchor:.2f}x")
    load = os.getloadavg()
    print(f"load average after: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")


if __name__ == "__main__":
    main()
