"""The life of one deployment, in one place: its states, the transitions, the step (arq job) that owns each state,
and the rules for job ids and retries. Pure: no I/O. `bridge.records.DeploymentStore` applies a transition and its
hand-over atomically in Redis; the steps in `workers/` decide which transition to take.

    queued ──start──▶ writing ──pushed──▶ verifying ──verdict──▶ reporting ──final report──▶ done
      │                 │  └─PR opened─▶ awaiting-merge ─merged─▶ verifying        ▲
      │                 │                    │                                      │
      └──── held / failed ──── superseded / held / failed / rejected / timed-out ──┘

A build's new deployment that can start at once (not held, its tag renders) is created in `writing` directly: the
transaction that creates the record carries the hand-over (`queued → writing` without a second write).
Every arrow into `reporting` sets the verdict and queues the final report in the same Redis transaction (the
outbox), so a verdict can never exist without its report on the way. `done` is written only after the final report
landed (or reporting is off) and the `after:` followers were started.

| state          | owning step (job)                           | leaves when                                      |
| -------------- | ------------------------------------------- | ------------------------------------------------ |
| queued         | advance_deployment (also run inline by      | hold check and tag → writing; held, bad tag →    |
|                | process_build / promote_build)              | reporting                                        |
| writing        | flush_repository (push) or                  | commit recorded → verifying; PR opened →         |
|                | open_pull_request (pull request)            | awaiting-merge; superseded/held/failed →         |
|                |                                             | reporting                                        |
| awaiting-merge | check_pull_request (deferred chain)         | merged → verifying; closed, too old, superseded  |
|                |                                             | → reporting                                      |
| verifying      | verify_deployment + watch_application       | Argo CD verdict → reporting; no Argo CD block →  |
|                | (one watcher per application)               | `pushed` → reporting                             |
| reporting      | report_deployment(phase "final")            | tags, properties, commit status and every        |
|                |                                             | pipeline-gate callback (workers.gate) delivered, |
|                |                                             | or past the gate job's deadline → done           |
| done           | none                                        | terminal (a later rollback's final report adds   |
|                |                                             | `rolled-back-<env>` to the undone build)         |

Room for what comes next: Argo CD application discovery is a phase inside `verifying` (the waiter records it); a
pipeline-gate callback is one more delivery of `reporting`.

Rollbacks (`bridge.rollbacks`, `workers.rollback`): a deployment of kind `rollback` with its own id walks the same
states. It is created `queued` with its tag already chosen (the restored build's, from the environment's "last
succeeded" list, which every success verdict extends in its own transaction) and the environment already held;
`queued → writing` skips the hold check and the tag rendering; the writer lets it write an older tag and pass the
hold; its final report also marks the undone build. `on_failure: rollback` queues the rollback job in the
transaction of the failed verdict (the outbox). A rollback's own verdict never starts another rollback.

Job ids and retries:
* A step job's id names the deployment (`advance:<id>`, `report:<id>:final`, …) and keeps no result
  (`keep_result=0`), so arq refuses a second copy only while one is queued or running. Any worker, a restarted one
  or the sweeper can therefore hand a deployment to its owning step again at any time; the step sees the record's
  state and does only what is missing (every step is idempotent).
* Deferred chains (the Argo CD watcher, pull-request checks) take one id per subject and poll interval
  (`bridge.queue.tick_job_id`): however many callers re-arm a chain, it runs once per interval.
* A transient error (Redis, network, 5xx, 429, a rejected push, a busy lock) in any step is retried with bounded,
  jittered back-off (`bridge.errors.retry_delay`), without limit on the count: only the deployment's own deadline
  ends it. A permanent error ends the deployment with a verdict and a report.
* The sweeper (`sweep_deployments`, every few seconds) finds deployments whose next step is missing (a state older
  than its grace without its job, waiter or pending bump) and hands them to their owning step again.
"""

from __future__ import annotations

from typing import Literal, get_args

State = Literal["queued", "writing", "awaiting-merge", "verifying", "reporting", "done"]
STATES: tuple[State, ...] = get_args(State)
# States with work still to do (each has an index in Redis, scored by when the deployment entered it).
ACTIVE_STATES: tuple[State, ...] = ("queued", "writing", "awaiting-merge", "verifying", "reporting")
# States before the verdict: "in flight".
IN_FLIGHT_STATES: tuple[State, ...] = ("queued", "writing", "awaiting-merge", "verifying")

Verdict = Literal["succeeded", "pushed", "failed", "timed-out", "superseded", "held", "rejected"]
VERDICTS: tuple[Verdict, ...] = get_args(Verdict)
# Verdicts after which the build runs in that environment (`after:` followers start; gates and `wait` pass).
SUCCESS_VERDICTS: frozenset[str] = frozenset({"succeeded", "pushed"})

Kind = Literal["build", "rollback"]

TRANSITIONS: dict[State, frozenset[State]] = {
    "queued": frozenset({"writing", "reporting"}),
    "writing": frozenset({"verifying", "awaiting-merge", "reporting"}),
    "awaiting-merge": frozenset({"verifying", "reporting"}),
    "verifying": frozenset({"reporting"}),
    "reporting": frozenset({"done"}),
    "done": frozenset(),
}

# The job that owns each active state: the sweeper hands a stalled deployment to it.
OWNER: dict[State, str] = {
    "queued": "advance_deployment",
    "writing": "flush_repository | open_pull_request",
    "awaiting-merge": "check_pull_request",
    "verifying": "verify_deployment",
    "reporting": "report_deployment",
}

# How long a deployment may sit in a state before the sweeper checks that its next step exists. Short for steps that
# take seconds; the long waits (review, Argo CD) are checked by the presence of their chain, not by age.
SWEEP_GRACE_SECONDS: dict[State, float] = {
    "queued": 20.0,
    "writing": 20.0,
    "awaiting-merge": 20.0,
    "verifying": 20.0,
    "reporting": 20.0,
}


class InvalidTransition(ValueError):
    pass


def allowed(old: str, new: str) -> bool:
    """True when `old → new` is an arrow of the state machine (staying in a state is always allowed)."""
    if old == new:
        return True
    return new in TRANSITIONS.get(old, frozenset())  # type: ignore[call-overload]


def check(old: str, new: str) -> None:
    if not allowed(old, new):
        raise InvalidTransition(f"a deployment cannot go from {old} to {new}")


def is_success(verdict: str | None) -> bool:
    return verdict in SUCCESS_VERDICTS
