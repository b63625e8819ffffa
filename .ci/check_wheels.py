"""Prove the image builds for linux/amd64 and linux/arm64 from wheels only: `pip download --only-binary=:all:` of
every runtime dependency (pyproject's [project].dependencies, no extras) for each platform and Python the image may
use. Needs the package index, so CI runs it before the tests; the tests themselves stay offline.

    python .ci/check_wheels.py            # exit 0: every dependency has a wheel everywhere; 1: names what has not
"""

from __future__ import annotations

import re
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PLATFORMS = ("manylinux2014_x86_64", "manylinux2014_aarch64")


def python_versions() -> list[str]:
    """The Dockerfile's default Python, and 3.13 (the next one the image should be able to move to)."""
    found = re.search(r"^ARG PYTHON_VERSION=(\d+\.\d+)", (ROOT / "Dockerfile").read_text(), re.M)
    return sorted({found.group(1) if found else "3.11", "3.13"})


def main() -> int:
    dependencies = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    failed = []
    with tempfile.TemporaryDirectory(prefix="check-wheels-") as dest:
        for version in python_versions():
            abi = "cp" + version.replace(".", "")
            for platform in PLATFORMS:
                command = [sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check",
                           "--only-binary=:all:", "--platform", platform, "--python-version", version,
                           "--implementation", "cp", "--abi", abi, "--abi", "abi3", "--abi", "none",
                           "--dest", dest, *dependencies]
                proc = subprocess.run(command, capture_output=True, text=True)
                status = "ok" if proc.returncode == 0 else "MISSING WHEELS"
                print(f"check-wheels: python {version} {platform}: {status}")
                if proc.returncode != 0:
                    failed.append(f"{version}/{platform}")
                    print("\n".join(line for line in proc.stderr.splitlines() if "ERROR" in line), file=sys.stderr)
    if failed:
        print(f"check-wheels: no wheel for some runtime dependency on {', '.join(failed)}", file=sys.stderr)
        return 1
    print(f"check-wheels: {len(dependencies)} runtime dependencies have wheels for every platform")
    return 0


if __name__ == "__main__":
    sys.exit(main())
