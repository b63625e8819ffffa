"""bridge.events.parse_event: table tests over the published samples, real-delivery shapes and broken bodies."""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest

from bridge.events import BUILD_COMPLETE, RUN_STATE_CHANGED, BuildEvent, Ignored, InvalidEvent, parse_event

EVENTS = Path(__file__).resolve().parent / "data" / "azure-devops-events"  # copies of the reference samples
SHA = "6e12f614c0b5e4b33d4a8f0a9c3b2d1e0f9a8b7c"


def sample(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((EVENTS / name).read_text())
    return data


def changed(body: dict[str, Any], **paths: Any) -> dict[str, Any]:
    """`changed(body, resource__id=5)`; a value of `...` deletes the key."""
    body = copy.deepcopy(body)
    for dotted, value in paths.items():
        *parents, last = dotted.split("__")
        node = body
        for p in parents:
            node = node[p]
        if value is ...:
            node.pop(last, None)
        else:
            node[last] = value
    return body


FULL = sample("build.complete.2-full.json")
MINIMAL = sample("build.complete.1-minimal.json")
RUN = sample("ms.vss-pipelines.run-state-changed-event.json")


def test_full_sample_with_its_doc_defects() -> None:
    event = parse_event(FULL)
    assert isinstance(event, BuildEvent)
    assert event.event_type == BUILD_COMPLETE
    assert (event.build_id, event.result, event.source_branch) == (2727068, "succeeded", "refs/heads/main")
    assert event.source_version is None  # the doc's GUID placeholder is not a commit: look the build up
    assert event.needs_lookup
    assert event.project_id == "33dd33dd-ee44-ff55-aa66-77bb77bb77bb"  # resource.project wins over the container
    assert (event.definition_id, event.definition_name) == (4658, "MainRepo (1)")
    assert event.base_url == "https://dev.azure.com/FabrikamFiber/"
    assert event.collection_id == "b1b1b1b1-cccc-dddd-eeee-f2f2f2f2f2f2"
    assert event.repository is not None and event.repository.type == "TfsGit"
    assert event.build_key == "dev.azure.com/fabrikamfiber:33dd33dd-ee44-ff55-aa66-77bb77bb77bb:2727068"
    assert event.queue_time == "2024-12-02T12:18:45.7367977Z"  # where DORA's lead time for changes starts


def test_real_delivery_shape_has_the_commit() -> None:
    body = changed(FULL, publisherId="tfs", resource__sourceVersion=SHA.upper(),
                   resource__uri="vstfs:///Build/Build/2727068")
    event = parse_event(body)
    assert isinstance(event, BuildEvent)
    assert event.source_version == SHA and not event.needs_lookup


def test_minimal_sample_finds_the_organization_in_the_web_url() -> None:
    event = parse_event(MINIMAL)
    assert isinstance(event, BuildEvent)
    assert event.base_url == "https://dev.azure.com/FabrikamFiber/"
    assert event.source_branch is None and event.needs_lookup
    assert event.web_url == ("https://dev.azure.com/FabrikamFiber/11bb11bb-cc22-dd33-ee44-55ff55ff55ff"
                             "/_build/results?buildId=2727068")


def test_run_state_sample() -> None:
    event = parse_event(RUN)
    assert isinstance(event, BuildEvent)
    assert event.event_type == RUN_STATE_CHANGED
    assert (event.build_id, event.result, event.definition_id, event.definition_name) == (
        11, "succeeded", 1, "Pipeline-Name")
    assert event.project_id == "11bb11bb-cc22-dd33-ee44-55ff55ff55ff" and event.project_name is None
    assert event.base_url == "https://codedev.ms/org/"
    assert event.source_branch is None and event.needs_lookup
    assert event.queue_time == "2024-07-17T21:34:22.338Z"  # the run's createdDate; the look-up's queueTime wins


def test_both_event_types_share_the_build_key() -> None:
    build = parse_event(changed(FULL, resource__id=99))
    run = parse_event(changed(RUN, resource__run__url="https://dev.azure.com/FabrikamFiber/"
                              "33dd33dd-ee44-ff55-aa66-77bb77bb77bb/_apis/Pipelines/4658/runs/99",
                              resource__run___links={}))
    assert isinstance(build, BuildEvent) and isinstance(run, BuildEvent)
    assert build.build_key == run.build_key


def test_visualstudio_com_organizations() -> None:
    body = changed(MINIMAL, resource__url="https://fabrikam.visualstudio.com/Proj/_apis/build/Builds/5")
    event = parse_event(body)
    assert isinstance(event, BuildEvent) and event.base_url == "https://fabrikam.visualstudio.com/"


def test_json_round_trip() -> None:
    event = parse_event(FULL)
    assert isinstance(event, BuildEvent)
    data = json.loads(json.dumps(event.to_json()))
    assert BuildEvent.from_json(data) == event
    del data["queue_time"]  # a job queued before events carried the queue time
    assert BuildEvent.from_json(data) == dataclasses.replace(event, queue_time=None)


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (sample("git.push.json"), "event type 'git.push' is not handled"),
        (sample("ms.vss-pipelines.stage-state-changed-event.json"), "is not handled"),
        (changed(FULL, subscriptionId="00000000-0000-0000-0000-000000000000"), "test notification"),
        (changed(FULL, resource__result=..., resource__status="succeeded"), "legacy resourceVersion 1.0"),
        (changed(FULL, resource__result=..., resource__status="succeeded", resource__id=...), "legacy"),
        (changed(FULL, resource__status="inProgress"), "not completed"),
        (changed(FULL, resource=...), "no resource details"),
        (changed(RUN, resource__run__state="inProgress"), "run state 'inProgress' is not completed"),
    ],
)
def test_ignored(body: dict[str, Any], reason: str) -> None:
    result = parse_event(body)
    assert isinstance(result, Ignored)
    assert reason in result.reason


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ([], "must be a JSON object"),
        ("text", "must be a JSON object"),
        ({}, "missing field 'eventType'"),
        ({"eventType": 5}, "missing field 'eventType'"),
        (changed(FULL, resource="x"), "'resource' must be an object"),
        (changed(FULL, resource__id="abc"), "resource.id"),
        (changed(FULL, resource__id="²"), "resource.id"),          # isdigit() but not int()-able
        (changed(FULL, resource__id=-4), "resource.id"),
        (changed(FULL, resource__id=True), "resource.id"),
        (changed(FULL, resource__id="9" * 5000), "resource.id"),   # would exceed int()'s digit limit
        (changed(RUN, resource__run=[]), "resource.run"),
        (changed(RUN, resource__run__result=...), "resource.run.result"),
        (changed(RUN, resource__run__url=..., resource__run___links=...), "cannot find the run id"),
        (changed(RUN, resource__run__url="https://x/runs/٣", resource__run___links=...), "cannot find the run id"),
    ],
)
def test_invalid(body: Any, message: str) -> None:
    with pytest.raises(InvalidEvent, match=message):
        parse_event(body)


@pytest.mark.parametrize(("value", "expected"), [(7, 7), ("7", 7), (" 7", None), (7.0, None), (None, None)])
def test_build_id_forms(value: Any, expected: int | None) -> None:
    body = changed(FULL, resource__id=value)
    if expected is None:
        with pytest.raises(InvalidEvent):
            parse_event(body)
    else:
        event = parse_event(body)
        assert isinstance(event, BuildEvent) and event.build_id == expected
