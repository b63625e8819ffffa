"""How long `make demo` takes for a new user: on a fresh clone with an empty pip cache (cold), and again (warm).

    .venv/bin/python bench/make_demo.py [--runs 3]

Each cold run: `git clone` of this checkout's HEAD into a new temporary directory, `PIP_CACHE_DIR` pointed at a new
empty directory, then `time make demo` (venv, runtime install, the demo). Each warm run: `make demo` again in that
clone (nothing to install). The anchor, measured in the same runs: the demo alone (`.venv/bin/gitops-bridge demo` in
the clone), so the ratio shows what installing adds. Uses uv when it is on PATH, else pip, like the Makefile.
Prints the median of the runs, the spread (min-max), the load average and the ratios; it does not pass or fail.

`--against REV`: each run also times the demo alone at revision REV (a clone of it, run with the same venv), right
after the demo alone at HEAD, so the ratio HEAD / REV shows what a change costs the demo on a noisy machine.
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


def one_run(against: str | None) -> tuple[float, float, float, float]:
    with tempfile.TemporaryDirectory(prefix="bench-make-demo-") as tmp:
        clone, cache = Path(tmp) / "clone", Path(tmp) / "pip-cache"
        subprocess.run(["git", "clone", "--quiet", str(ROOT), str(clone)], check=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("BRIDGE_", "VIRTUAL_ENV"))}
        env.update(PIP_CACHE_DIR=str(cache), UV_CACHE_DIR=str(cache))
        cold = timed(["make", "demo"], clone, env)
        warm = timed(["make", "demo"], clone, env)
        alone = timed([str(clone / ".venv" / "bin" / "gitops-bridge"), "demo"], clone, env)
        base = 0.0
        if against:
            other = Path(tmp) / "against"
            subprocess.run(["git", "clone", "--quiet", "--no-checkout", str(ROOT), str(other)], check=True)
            subprocess.run(["git", "-C", str(other), "checkout", "--quiet", against], check=True)
            base = timed([str(clone / ".venv" / "bin" / "python"), "-m", "bridge.cli", "demo"], other,
                         {**env, "PYTHONPATH": str(other)})
        return cold, warm, alone, base


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--against", metavar="REV", help="also time the demo alone at this revision in each run")
    args = parser.parse_args()
    if args.against:
        rev = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", args.against], check=True,
                             capture_output=True, text=True).stdout.strip()
        head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], check=True,
                              capture_output=True, text=True).stdout.strip()
        print(f"HEAD {head}, against {rev}")
    load = os.getloadavg()
    print(f"load average before: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; {os.cpu_count()} cores")
    runs = []
    for n in range(args.runs):
        cold, warm, alone, base = one_run(args.against)
        runs.append((cold, warm, alone, base))
        print(f"run {n + 1}: cold {cold:.1f} s, warm {warm:.1f} s, the demo alone {alone:.1f} s"
              + (f", the demo alone at {args.against} {base:.1f} s" if args.against else ""), flush=True)
    for i, name in enumerate(("make demo, cold (fresh clone, empty cache)", "make demo, warm", "demo alone (anchor)")):
        values = [r[i] for r in runs]
        print(f"  {name:<44} median {statistics.median(values):6.1f} s   spread {min(values):.1f}-{max(values):.1f}")
    anchor = statistics.median(r[2] for r in runs)
    print(f"  ratio to the demo alone: cold {statistics.median(r[0] for r in runs) / anchor:.2f}x, "
          f"warm {statistics.median(r[1] for r in runs) / anchor:.2f}x")
    if args.against:
        ratios = [r[2] / r[3] for r in runs]
        print(f"  demo alone at {args.against:<31} median {statistics.median(r[3] for r in runs):6.1f} s   spread "
              f"{min(r[3] for r in runs):.1f}-{max(r[3] for r in runs):.1f}")
        print(f"  HEAD / {args.against}, per run: median {statistics.median(ratios):.2f}x   spread "
              f"{min(ratios):.2f}-{max(ratios):.2f}")
    load = os.getloadavg()
    print(f"load average after: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")


if __name__ == "__main__":
    main()
