"""The pipeline gate's jobs: authorise the call, attach it to (or start) its deployment, post progress lines to the
task's log while it waits, and call back `TaskCompleted` exactly once per verdict.

    gate_deployment(gate_id)  the build belongs to the plan (PlanId) and to the route's project/definition/branch,
                              `after:` is satisfied (a gated environment) → one deployment per build identity
    watch_gate(gate_id)       every gate.poll_seconds: new progress lines (timeline feed; each Argo CD application's
                              sync and health), the output variable `gitopsCommitSha` once the commit exists
                              (timeline record variables), the deadline (timeoutMinutes minus gate.margin_seconds →
                              `timed-out`), the callback once a verdict exists; a callback failing 5xx/network is
                              retried until the job's own deadline
    settle_gates(record)      the gate sink of the final report: `done` only once every gate's callback landed
                              (or its deadline passed)

The callback is deduplicated with the report ledger (`record.delivered["gate:<gate>"]` = the verdict), written right
after Azure DevOps answered: a second `TaskCompleted` can only follow a crash between the two, with the same result.
The AuthToken lives in its own Redis key until the callback landed; it is added to the log scrubber while used.
A check (`/check`) has no deployment of its own: it answers with the verdict of the build in the `after:` environment.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import httpx
import orjson
from arq import Retry

from bridge import metrics
from bridge.errors import AuthError, BridgeError, NotFound, PermanentError, UpstreamUnavailable, retry_delay
from bridge.gate import Gate, deployment_gates_key, gate_key, token_key
from bridge.lifecycle import is_success
from bridge.logs import forget_secret, remember_secret
from bridge.organizations import Organization
from bridge.queue import WATCH_GATE, deployment_id, tick_job_id
from bridge.records import DeploymentRecord, now_iso
from bridge.routing import route_problem
from workers import faults
from workers.azure_devops import AzureDevOpsClient, build_event_from_api, org_base
from workers.context import Ctx, enqueue, keys, routing, settings, store
from workers.lock import locked

log = logging.getLogger("gitops_bridge.gate")

SYSTEM = "Azure Pipelines"
EVENTS_VERSION = "2.0-preview.1"
FEED_VERSION = "4.1"
CALLBACK_TIMEOUT_S = 10.0
MAX_LINE = 1000
OUTPUT_VARIABLE = "gitopsCommitSha"  # the task's output variable: the GitOps commit Argo CD deploys


class PlanClient:
    """The plan's REST API (events, timeline feed) at the configured organization's URL, with the plan's token."""

    def __init__(self, org: Organization, gate: Gate, token: str, transport: httpx.AsyncBaseTransport | None = None):
        self.base = f"{org_base(org.url)}{gate.project_id}/_apis/distributedtask/hubs/{gate.hub}/plans/{gate.plan_id}"
        self.gate = gate
        self._token = token
        self._transport = transport

    async def _post(self, operation: str, path: str, version: str, body: Any, method: str = "POST") -> None:
        headers = {"Authorization": f"Bearer {self._token}", "Content-Type": "application/json",
                   "Accept": "application/json", "User-Agent": "gitops-bridge"}
        try:
            async with httpx.AsyncClient(timeout=httpx.Timeout(CALLBACK_TIMEOUT_S, connect=5.0),
                                         transport=self._transport, follow_redirects=False) as http:
                response = await http.request(method, self.base + path, params={"api-version": version},
                                              content=orjson.dumps(body), headers=headers)
        except httpx.HTTPError as exc:
            raise UpstreamUnavailable(SYSTEM, f"{operation}: {type(exc).__name__}") from None
        status = response.status_code
        if status == 203 or status in (401, 403):
            raise AuthError(SYSTEM, f"{operation}: {status} (the job's access token was refused)")
        if status == 404:
            raise NotFound(SYSTEM, f"{operation}: plan {self.gate.plan_id}")
        if status in (408, 429) or status >= 500:
            raise UpstreamUnavailable(SYSTEM, f"{operation}: HTTP {status}", status=status)
        if status >= 300:
            raise PermanentError(f"{SYSTEM}: {operation} rejected ({status})")

    async def feed(self, lines: list[str]) -> None:
        if not lines or not self.gate.timeline_id:
            return
        lines = [line[:MAX_LINE] for line in lines]
        await self._post("feed", f"/timelines/{self.gate.timeline_id}/records/{self.gate.job_id}/feed",
                         FEED_VERSION, {"value": lines, "count": len(lines)})

    async def set_variables(self, variables: dict[str, str]) -> None:
        """Output variables of the task: the variables of its timeline record (the record's id is the task instance),
        as the agent sets them for `##vso[task.setvariable …;isOutput=true]`."""
        if not variables or not self.gate.timeline_id:
            return
        record = {"id": self.gate.task_id, "variables": {k: {"value": v} for k, v in variables.items()}}
        await self._post("output variables", f"/timelines/{self.gate.timeline_id}/records", FEED_VERSION,
                         {"value": [record], "count": 1}, method="PATCH")

    async def task_completed(self, result: str) -> None:
        await self._post("task_completed", "/events", EVENTS_VERSION,
                         {"name": "TaskCompleted", "taskId": self.gate.task_id, "jobId": self.gate.job_id,
                          "result": result})


# -- what the log says (pure) --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class AppView:
    """One Argo CD application of the deployment, as the watcher last saw it."""

    state: str = "waiting"  # waiting | succeeded | failed (an estate's member state)
    reason: str = ""
    snapshot: str = ""  # the watcher's last `sync Synced at <sha>; health Progressing; …` ("" once decided)


def progress_lines(gate: Gate, record: DeploymentRecord | None, after: str | None,
                   apps: Mapping[str, AppView] | None = None) -> list[tuple[str, str]]:
    """(key, line) for everything the task log should show by now; each key is posted once. `apps`: the deployment's
    Argo CD applications while it is verified (one, or each application of an estate)."""
    if record is None:
        waiting = f"waiting for {after} to succeed for build {gate.build_id}" if after else "waiting for the deployment"
        return [("waiting", f"gitops-bridge: {waiting} ({gate.route}/{gate.environment})")]
    lines = [("queued", f"gitops-bridge: deployment {record.id} queued (build {record.build_id} → "
                        f"{record.route}/{record.environment})")]
    if record.commit_sha:
        diff = ", ".join(f"{k}: {record.old_tags.get(k) or '(none)'} → {record.tag}" for k in record.keys)
        lines.append(("commit", f"committed {record.commit_sha[:10]} to {record.repository}:{record.file} ({diff})"))
    if record.pr_url:
        lines.append(("pr", f"pull request #{record.pr_number} opened: {record.pr_url} (waiting for review counts "
                            "against this stage's deadline)"))
    if record.argocd_app and record.state == "verifying":
        several = len(apps or {}) > 1 or ", " in record.argocd_app or "selector " in record.argocd_app
        lines.append(("argocd", f"Argo CD app{'s' if several else ''} {record.argocd_app}: waiting for sync and health "
                                f"at {(record.commit_sha or '')[:10]}"))
        lines += app_lines(apps or {})
    if record.verdict is not None:
        lines += [(f"app-final:{name}", f"  {line}") for name, line in final_app_lines(record)]
        text = {"pushed": "pushed (not verified: no Argo CD application)"}.get(record.verdict, record.verdict)
        lines.append(("verdict", f"verdict: {text}" + (f" — {record.reason}" if record.reason else "")))
        snapshot = (record.details.get("argocd") or {}).get("snapshot") if isinstance(record.details, dict) else None
        if snapshot:
            lines.append(("argocd-final", f"Argo CD: {snapshot}"))
    return lines


def app_lines(apps: Mapping[str, AppView]) -> list[tuple[str, str]]:
    """Each application's sync and health as they change, and its own verdict within an estate."""
    lines = []
    for name, view in sorted(apps.items()):
        if view.snapshot:
            status = "; ".join(view.snapshot.split("; ")[:2])  # sync and health; the rest is for the final report
            lines.append((f"argocd:{name}:{status}", f"Argo CD app {name}: {status}"))
        if view.state in ("succeeded", "failed"):
            lines.append((f"app:{name}:{view.state}", f"Argo CD app {name}: {view.state}"
                                                       + (f" — {view.reason}" if view.reason else "")))
    return lines


def final_app_lines(record: DeploymentRecord) -> list[tuple[str, str]]:
    """An estate's applications at the verdict (`details.argocd.apps`), the failed ones first."""
    argocd = record.details.get("argocd") if isinstance(record.details, dict) else None
    apps = argocd.get("apps") if isinstance(argocd, dict) else None
    if not isinstance(apps, dict) or not apps:
        return []
    order = {"failed": 0, "waiting": 1, "succeeded": 2}
    members = sorted(((str(n), m) for n, m in apps.items() if isinstance(m, dict)),
                     key=lambda item: (order.get(str(item[1].get("state")), 1), item[0]))
    return [(name, f"Argo CD app {name}: {m.get('state') or 'waiting'}" + (f" — {m['reason']}" if m.get("reason")
                                                                          else "")) for name, m in members]


def callback_result(verdict: str | None) -> str:
    return "succeeded" if is_success(verdict) else "failed"


# -- state -----------------------------------------------------------------------------------------------------------

def _state_key(ctx: Ctx, gate_id: str) -> str:
    return gate_key(keys(ctx), gate_id) + ":state"


async def load_gate(ctx: Ctx, gate_id: str) -> tuple[Gate | None, dict[str, str]]:
    raw = await ctx["redis"].get(gate_key(keys(ctx), gate_id))
    if raw is None:
        return None, {}
    state = await ctx["redis"].hgetall(_state_key(ctx, gate_id))
    decoded = {(k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
               for k, v in state.items()}
    return Gate.from_json(orjson.loads(raw)), decoded


async def _set_state(ctx: Ctx, gate: Gate, **fields: str) -> None:
    key = _state_key(ctx, gate.id)
    ttl = await ctx["redis"].ttl(gate_key(keys(ctx), gate.id))
    async with ctx["redis"].pipeline(transaction=True) as pipe:
        pipe.hset(key, mapping=fields)
        if ttl and ttl > 0:
            pipe.expire(key, ttl)
        await pipe.execute()


async def _finish_gate(ctx: Ctx, gate: Gate, **state: str) -> None:
    """The gate is over (its callback landed or cannot land): record how, and drop its token."""
    await _set_state(ctx, gate, **state)
    raw = await ctx["redis"].getdel(token_key(keys(ctx), gate.id))
    if raw is not None:
        forget_secret(raw.decode() if isinstance(raw, bytes) else str(raw))


def deployment_deadline(ctx: Ctx, gate: Gate) -> float:
    """The job's timeout minus the margin (half the timeout when the margin is longer), so the callback lands before
    Azure DevOps gives up on the job."""
    total = gate.timeout_minutes * 60
    margin = settings(ctx).gate.margin_seconds
    return gate.received + (total - margin if margin < total else total / 2)


# -- the jobs --------------------------------------------------------------------------------------------------------

async def gate_deployment(ctx: Ctx, gate_id: str) -> str:
    """arq job: authorise the gate call and attach it to its deployment (starting it when nothing else will)."""
    gate, state = await load_gate(ctx, gate_id)
    if gate is None:
        return "gone"
    if state.get("closed"):
        return "closed"
    if not _configured(ctx, gate):
        await _close_early(ctx, gate, f"{gate.route}/{gate.environment} is no longer in the routing file")
        return "refused"
    if not state.get("authorised"):
        problem = await _authorise_and_attach(ctx, gate)
        if problem is not None:
            await _close_early(ctx, gate, problem)
            return "refused"
        if gate.kind == "gate":  # the final report settles it (a check watches the `after:` deployment itself)
            index = deployment_gates_key(keys(ctx), gate.deployment)
            async with ctx["redis"].pipeline(transaction=True) as pipe:
                pipe.sadd(index, gate.id)
                pipe.expire(index, max(int(settings(ctx).retention_days * 86400), 3600))
                await pipe.execute()
        await _set_state(ctx, gate, authorised="1")
    return await watch_gate(ctx, gate_id)


def _configured(ctx: Ctx, gate: Gate) -> bool:
    try:
        routing(ctx).route(gate.route).environment(gate.environment)
    except KeyError:
        return False
    return True


async def _authorise_and_attach(ctx: Ctx, gate: Gate) -> str | None:
    """None when the gate is attached to its deployment; else why it fails (nothing was written)."""
    ado: AzureDevOpsClient | None = ctx.get("ado")
    org = ado.organization(gate.organization) if ado is not None else None
    if ado is None or org is None:
        return (f"cannot authorise the call: organization {gate.organization!r} has no token configured "
                f"(BRIDGE_AZURE_DEVOPS__TOKENS__{gate.organization.upper()}); nothing deployed")
    try:
        build = await ado.get_build(org, gate.project_id, gate.build_id)
    except NotFound:
        return f"build {gate.build_id} not found in project {gate.project_id}; nothing deployed"
    except AuthError as exc:
        return f"cannot read build {gate.build_id}: {exc}; nothing deployed"
    if gate.kind == "gate":
        plans = {str((build.get("orchestrationPlan") or {}).get("planId") or "").lower()}
        plans |= {str(p.get("planId") or "").lower() for p in build.get("plans") or [] if isinstance(p, dict)}
        if gate.plan_id not in plans:
            return (f"build {gate.build_id} does not belong to this pipeline run (plan {gate.plan_id}); "
                    "nothing deployed")
    event = build_event_from_api(org, build, source=f"pipeline-{gate.kind}")
    route = routing(ctx).route(gate.route)
    env = route.environment(gate.environment)
    problem = route_problem(route, env, organization=org.name, project_id=event.project_id,
                            project_name=event.project_name, definition_id=event.definition_id,
                            definition_name=event.definition_name, branch=event.source_branch)
    if problem is not None:
        return f"build {gate.build_id} may not deploy to {gate.route}/{gate.environment}: {problem}; nothing deployed"
    if gate.kind == "check":
        return None
    existing = await store(ctx).get(gate.deployment)
    if existing is not None:
        return None  # started by the build's event, `after:` or an earlier gate call: attach to it
    if env.trigger == "gate" and env.after is not None:
        prev = await store(ctx).get(deployment_id(gate.build_key, route.name, env.after))
        if prev is None or not is_success(prev.verdict):
            state = "not deployed" if prev is None else (prev.verdict or "still in flight")
            return f"{env.after} did not succeed for build {gate.build_id} ({state}); nothing deployed"
    elif env.after is not None:
        return None  # its `after:` starts it; the gate waits (bounded by its deadline)
    from workers.deploy import new_record, start_and_write

    record = new_record(event, route, env, now_iso())
    record.details = {**record.details, "gate": gate.kind}
    if not await store(ctx).create(record):
        record = await store(ctx).get(record.id) or record
    await start_and_write(ctx, record, route, env)
    return None


async def _close_early(ctx: Ctx, gate: Gate, reason: str) -> None:
    """A gate that ends without a deployment verdict (refused, or its deadline passed first): `failed`, once."""
    _, state = await load_gate(ctx, gate.id)
    if state.get("closed"):
        return
    outcome = await _callback(ctx, gate, "failed", [f"gitops-bridge: failed — {reason}"])
    if outcome == "retry" and time.time() < gate.job_deadline:
        await _set_state(ctx, gate, pending_failure=reason)
        raise Retry(defer=retry_delay(int(ctx.get("job_try") or 1), base=1.0, cap=30.0))
    await _finish_gate(ctx, gate, closed=outcome, result="failed", reason=reason)


async def watch_gate(ctx: Ctx, gate_id: str) -> str:
    """arq job (a deferred chain): progress lines, the deadline, the callback once the verdict exists."""
    gate, state = await load_gate(ctx, gate_id)
    if gate is None:
        return "gone"
    if state.get("closed"):
        return "closed"
    if state.get("pending_failure"):
        await _close_early(ctx, gate, state["pending_failure"])
        return "closed"
    if not _configured(ctx, gate):
        await _close_early(ctx, gate, f"{gate.route}/{gate.environment} is no longer in the routing file")
        return "closed"
    if gate.kind == "check":
        return await _watch_check(ctx, gate)
    route = routing(ctx).route(gate.route)
    after = route.environment(gate.environment).after
    record = await store(ctx).get(gate.deployment)
    await _progress(ctx, gate, state, record, after)
    if record is not None and record.verdict is not None:
        outcome = await settle_gate(ctx, gate, record)
        if outcome != "retry":
            return outcome
    elif time.time() >= deployment_deadline(ctx, gate):
        why = (f"the stage's deadline passed ({gate.timeout_minutes} min timeoutInMinutes minus "
               f"{settings(ctx).gate.margin_seconds:.0f}s margin)")
        if record is None:
            await _close_early(ctx, gate, f"no deployment to {gate.environment} before {why}")
            return "closed"
        from workers.outcome import finish_deployment

        await finish_deployment(ctx, record.id, "timed-out", why)
        return await watch_gate(ctx, gate_id)
    await _rearm(ctx, gate)
    return "waiting"


async def _watch_check(ctx: Ctx, gate: Gate) -> str:
    route = routing(ctx).route(gate.route)
    after = route.environment(gate.environment).after or ""
    source = await store(ctx).get(deployment_id(gate.build_key, route.name, after))
    if source is None:
        await _close_early(ctx, gate, f"build {gate.build_id} never ran in {after}")
        return "closed"
    if source.verdict is None and time.time() < deployment_deadline(ctx, gate):
        await _rearm(ctx, gate)
        return "waiting"
    if source.verdict is None:
        await _close_early(ctx, gate, f"build {gate.build_id} has no verdict in {after} before the check's deadline")
        return "closed"
    if not is_success(source.verdict):
        await _close_early(ctx, gate, f"build {gate.build_id} {source.verdict} in {after}: {source.reason or ''}")
        return "closed"
    outcome = await _callback(ctx, gate, "succeeded", [f"gitops-bridge: build {gate.build_id} {source.verdict} in "
                                                       f"{after}" + (" (not verified)" if source.verdict == "pushed"
                                                                     else "")])
    if outcome == "retry" and time.time() < gate.job_deadline:
        await _rearm(ctx, gate)
        return "retry"
    await _finish_gate(ctx, gate, closed=outcome, result="succeeded")
    return outcome


async def _rearm(ctx: Ctx, gate: Gate) -> None:
    poll = settings(ctx).gate.poll_seconds
    await enqueue(ctx, WATCH_GATE, gate.id, job_id=tick_job_id("gate", gate.id, poll), defer_by=poll)


def is_final(key: str) -> bool:
    """The lines that go with the callback (the verdict and what explains it), not with a progress tick."""
    return key in ("verdict", "argocd-final") or key.startswith("app-final:")


async def _progress(ctx: Ctx, gate: Gate, state: dict[str, str], record: DeploymentRecord | None,
                    after: str | None) -> None:
    """Post the lines not posted yet, and the output variable once the commit is known (best effort: a failed post
    is tried again next tick)."""
    posted = set(filter(None, state.get("posted", "").split("\n")))
    apps = await _argo_view(ctx, gate, record)
    lines = [(k, line) for k, line in progress_lines(gate, record, after, apps) if k not in posted and not is_final(k)]
    output = _output(record, state)
    if not lines and not output:
        return
    token = await _token(ctx, gate)
    org = _org(ctx, gate)
    if token is None or org is None:
        return
    client = PlanClient(org, gate, token)
    try:
        lines += [("", line) for line in await _set_output(client, gate, output)]
        await client.feed([line for _, line in lines])
    except BridgeError as exc:
        log.info("gate %s: progress lines not posted: %s", gate.id, exc)
        return
    update = {"posted": "\n".join(sorted(posted | {k for k, _ in lines if k}))}
    if output:
        update["output"] = output[OUTPUT_VARIABLE]
    await _set_state(ctx, gate, **update)


async def _set_output(client: PlanClient, gate: Gate, variables: dict[str, str]) -> list[str]:
    """Set the output variables; the lines that say so (or why not: a refusal is said once, not retried).
    UpstreamUnavailable (5xx, network) propagates: the caller retries."""
    if not variables:
        return []
    try:
        await client.set_variables(variables)
    except UpstreamUnavailable:
        raise
    except BridgeError as exc:
        log.info("gate %s: output variables not set: %s", gate.id, exc)
        return [f"output variable {k} not set: {exc}" for k in variables]
    return [f"output variable {k} = {v}" for k, v in variables.items()]


def _output(record: DeploymentRecord | None, state: dict[str, str]) -> dict[str, str]:
    """The output variables not set yet: the GitOps commit, once there is one."""
    if record is None or not record.commit_sha or state.get("output") == record.commit_sha:
        return {}
    return {OUTPUT_VARIABLE: record.commit_sha}


async def _argo_view(ctx: Ctx, gate: Gate, record: DeploymentRecord | None) -> dict[str, AppView]:
    """Each Argo CD application of the deployment as the watcher last saw it (read only; the watcher owns it): its
    last snapshot and, within an estate, its own state."""
    if record is None or record.state != "verifying":
        return {}
    argo = routing(ctx).route(gate.route).environment(gate.environment).argocd
    if argo is None:
        return {}
    from workers.verify import estate, last_snapshot

    members = (await estate(ctx, record.id))[0] if argo.is_estate else {}
    views = {}
    for name in sorted(set(members) | set(argo.names)):
        last = await last_snapshot(ctx, argo, record.id, name) or ""
        member = members.get(name)
        views[name] = AppView(member.state, member.reason, last) if member else AppView(snapshot=last)
    return views


async def _token(ctx: Ctx, gate: Gate) -> str | None:
    raw = await ctx["redis"].get(token_key(keys(ctx), gate.id))
    if raw is None:
        return None
    token = raw.decode() if isinstance(raw, bytes) else str(raw)
    remember_secret(token)
    return token


def _org(ctx: Ctx, gate: Gate) -> Organization | None:
    ado: AzureDevOpsClient | None = ctx.get("ado")
    # The callback goes to the configured organization's URL (never the PlanUrl as sent); the plan's token, not
    # the organization's, authorises it, so the organization needs no token of ours for this.
    from bridge.organizations import configured

    found = next((o for o in configured(settings(ctx).azure_devops) if o.name == gate.organization), None)
    return found or (ado.organization(gate.organization) if ado is not None else None)


async def _callback(ctx: Ctx, gate: Gate, result: str, lines: list[str],
                    variables: dict[str, str] | None = None) -> str:
    """Set the output variables not set yet, send the final lines and TaskCompleted: `landed`, `retry` (5xx/network),
    `refused` (401/403/203), `expired` (no token left: the job's deadline passed) or `error` (another 4xx)."""
    token = await _token(ctx, gate)
    org = _org(ctx, gate)
    if token is None or org is None:
        metrics.GATE_CALLBACKS.labels(result=result, outcome="expired").inc()
        return "expired"
    client = PlanClient(org, gate, token)
    try:
        lines = [*lines, *await _set_output(client, gate, variables or {})]
        try:
            await client.feed(lines)
        except UpstreamUnavailable:
            raise
        except BridgeError as exc:
            log.info("gate %s: final lines not posted: %s", gate.id, exc)
        await client.task_completed(result)
    except UpstreamUnavailable as exc:
        if time.time() < gate.job_deadline:
            log.info("gate %s: TaskCompleted will retry: %s", gate.id, exc)
            return "retry"
        metrics.GATE_CALLBACKS.labels(result=result, outcome="expired").inc()
        log.warning("gate %s: TaskCompleted given up at the job's deadline: %s", gate.id, exc)
        return "expired"
    except AuthError as exc:
        metrics.GATE_CALLBACKS.labels(result=result, outcome="refused").inc()
        log.warning("gate %s: TaskCompleted refused: %s", gate.id, exc)
        await _set_state(ctx, gate, refused=str(exc))
        return "refused"
    except BridgeError as exc:
        metrics.GATE_CALLBACKS.labels(result=result, outcome="error").inc()
        log.warning("gate %s: TaskCompleted failed: %s", gate.id, exc)
        return "error"
    faults.reached("after-gate-callback")
    metrics.GATE_CALLBACKS.labels(result=result, outcome="landed").inc()
    return "landed"


def ledger_sink(gate: Gate) -> str:
    return "gate:" + gate.id.rsplit(":", 1)[-1]


async def settle_gate(ctx: Ctx, gate: Gate, record: DeploymentRecord) -> str:
    """The gate sink: deliver the verdict to this gate once (ledger), under a lock so two callers do not both send."""
    async with locked(ctx["redis"], keys(ctx).lock(f"gate:{gate.id}"), lease_seconds=30.0, wait_seconds=15.0):
        _, state = await load_gate(ctx, gate.id)
        fresh = await store(ctx).get(record.id) or record
        sink = ledger_sink(gate)
        if state.get("closed") or fresh.delivered.get(sink) == fresh.verdict:
            return "landed"
        result = callback_result(fresh.verdict)
        lines = [line for key, line in progress_lines(gate, fresh, None) if is_final(key)]
        if fresh.verdict == "held":
            hold = await store(ctx).get_hold(fresh.route, fresh.environment)
            if hold:
                lines.append(f"held by {hold.get('by', 'unknown')}: {hold.get('reason', '')}")
        outcome = await _callback(ctx, gate, result, lines, _output(fresh, state))
        if outcome == "retry":
            return outcome
        if outcome == "landed":
            await store(ctx).delivered(fresh.id, sink, fresh.verdict or "")
        await _finish_gate(ctx, gate, closed=outcome, result=result)
        return outcome


async def settle_gates(ctx: Ctx, record: DeploymentRecord) -> None:
    """Called by the final report before `done`: every gate of this deployment gets its callback now; a callback
    that must be retried (5xx, before the job's deadline) retries the report step."""
    ids = await ctx["redis"].smembers(deployment_gates_key(keys(ctx), record.id))
    retry = False
    for raw in ids:
        gate, state = await load_gate(ctx, raw.decode() if isinstance(raw, bytes) else raw)
        if gate is None or state.get("closed"):
            continue
        retry |= await settle_gate(ctx, gate, record) == "retry"
    if retry:
        raise Retry(defer=retry_delay(int(ctx.get("job_try") or 1), base=1.0, cap=30.0))
