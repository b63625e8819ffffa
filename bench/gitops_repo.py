"""The generated GitOps repositories every bench writes to: commented Helm values files, a long history if asked.

    SHAPES                 name → (apps, history): 3 values files per app, `history` one-line bumps after the import
    generate_remote(...)   a bare remote made with `git fast-import` in a second or a few

`reference` is the documented reference repository (600 values files of ~70 lines, 2,001 commits); `small`, `wide`
and `deep` are the shapes of target 2 (51 files and 101 commits; 5,001 files; 20,001 commits).
"""

from __future__ import annotations

import random
import subprocess
from pathlib import Path

from floor import git

ENVS = ("dev", "staging", "prod")
SHAPES: dict[str, tuple[int, int]] = {
    "small": (17, 100),
    "reference": (200, 2000),
    "wide": (1667, 100),
    "deep": (17, 20000),
}


VALUES = """\
# Default values for {app}.
# This is a YAML-formatted file.
# Declare variables to be passed into your templates.

# -- Number of replicas ({env})
replicaCount: {replicas}

image:
  # -- Image repository
  repository: registry.example.com/platform/{app}
  # -- Image pull policy
  pullPolicy: IfNotPresent
  # -- Overrides the image tag whose default is the chart appVersion.
  tag: "{tag}"

imagePullSecrets: []
nameOverride: ""
fullnameOverride: ""

serviceAccount:
  # -- Specifies whether a service account should be created
  create: true
  annotations: {{}}
  name: ""

podAnnotations:
  prometheus.io/scrape: "true"
  prometheus.io/port: "9090"

securityContext:
  capabilities:
    drop:
      - ALL
  readOnlyRootFilesystem: true
  runAsNonRoot: true
  runAsUser: 1000

service:
  type: ClusterIP
  port: 80  # keep in sync with the ingress

ingress:
  enabled: {ingress}
  className: nginx
  hosts:
    - host: {app}.{env}.example.com
      paths:
        - path: /
          pathType: ImplementationSpecific

resources:
  limits:
    cpu: 500m
    memory: 256Mi
  requests:
    cpu: 100m
    memory: 128Mi

env:
  - name: LOG_LEVEL
    value: info
  - name: ENVIRONMENT
    value: {env}
"""


def apps(n: int) -> list[str]:
    return [f"app-{i:03d}" for i in range(n)]


def values(app: str, env: str, tag: str) -> str:
    return VALUES.format(app=app, env=env, tag=tag, replicas=3 if env == "prod" else 1,
                         ingress="true" if env != "dev" else "false")


def generate_remote(root: Path, n_apps: int = 200, history: int = 2000) -> Path:
    """A bare remote made with git fast-import: one commit with every file, then `history` one-line tag bumps."""
    remote = root / "gitops.git"
    git("init", "-q", "--bare", "--initial-branch=main", str(remote), cwd=root)
    rng = random.Random(1)
    chunks: list[bytes] = []
    ts = 1_700_000_000

    def data(text: str) -> bytes:
        raw = text.encode()
        return b"data %d\n" % len(raw) + raw + b"\n"

    def commit(mark: int, message: str, files: list[tuple[str, str]]) -> None:
        head = f"commit refs/heads/main\nmark :{mark}\ncommitter Dev <dev@example.com> {ts + mark * 60} +0000\n"
        chunks.append(head.encode() + data(message))
        if mark > 1:
            chunks.append(f"from :{mark - 1}\n".encode())
        for path, text in files:
            chunks.append(f"M 100644 inline {path}\n".encode() + data(text))
        chunks.append(b"\n")

    names = apps(n_apps)
    commit(1, "initial import", [(f"apps/{a}/{e}/values.yaml", values(a, e, "1.0.0")) for a in names for e in ENVS])
    for mark in range(2, history + 2):
        a, e = rng.choice(names), rng.choice(ENVS)
        commit(mark, f"ci: update {a} image tag to 0.{mark}.0 ({e})",
               [(f"apps/{a}/{e}/values.yaml", values(a, e, f"0.{mark}.0"))])
    subprocess.run(["git", "fast-import", "--quiet"], cwd=remote, input=b"".join(chunks), check=True)
    git("config", "core.logAllRefUpdates", "always", cwd=remote)
    return remote
