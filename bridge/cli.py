"""The `gitops-bridge` command: runs the bridge's processes and talks to a running bridge's operator API.

Run the processes:
    web            the HTTP intake (uvicorn)
    worker         the arq worker
    serve          both in one process (an embedded Redis when BRIDGE_REDIS_URL is unset)
    demo           the whole flow on this machine, with fakes of Argo CD, Azure DevOps and GitHub
    check-config   validate settings and the routing file, print the resolved routes
    subscribe      create or update the Azure DevOps service-hook subscriptions

Talk to a running bridge (BRIDGE_API__*_TOKENS or --token; --url, default http://127.0.0.1:BRIDGE_PORT):
    deployments    list deployments             deployment ID   one deployment with its timeline
    holds          list holds                   hold/release    stop or resume bumps of a route's environment
    promote        deploy a build to the next environment
    wait           block until a build's environments have a verdict (exit code by verdict)

    version        print the version            completion      shell completion for bash, zsh or fish
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from bridge import output
from bridge.errors import ConfigError
from bridge.lifecycle import VERDICTS

if TYPE_CHECKING:
    from bridge.routing import RoutingConfig
    from bridge.settings import Settings

EXIT_CONFIG, EXIT_USAGE, EXIT_PIPE = 2, 2, 141  # 141 = 128 + SIGPIPE, what a shell reports for `... | head`


def version() -> str:
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as dist_version

    try:
        return dist_version("gitops-bridge")
    except PackageNotFoundError:  # pragma: no cover - running from a source tree without an install
        return "unknown"


def _warn_unknown_variables() -> None:
    from bridge.settings import unknown_variables

    for name, close in unknown_variables():
        hint = f" (did you mean {close}?)" if close else ""
        print(f"warning: {name} is not a gitops-bridge setting and is ignored{hint}", file=sys.stderr)


def _settings(**overrides: Any) -> Settings:
    """load_settings, with invalid values reported as a ConfigError that names the setting (never its value)."""
    from pydantic import ValidationError
    from pydantic_settings import SettingsError

    from bridge.settings import load_settings

    _warn_unknown_variables()
    try:
        return load_settings(**overrides)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            loc = [str(part) for part in err["loc"]]
            msg = "unknown setting" if err["type"] == "extra_forbidden" else err["msg"].removeprefix("Value error, ")
            problems.append(f"settings: {'.'.join(loc)}: {msg} (BRIDGE_{'__'.join(loc).upper()})")
        raise ConfigError(problems) from None
    except SettingsError as exc:
        raise ConfigError(f"settings: {exc}") from None


def _load(args: argparse.Namespace) -> tuple[Settings, RoutingConfig]:
    from bridge.routing import load_routing

    overrides: dict[str, Any] = {}
    if getattr(args, "config", None):
        overrides["config"] = args.config
    settings = _settings(**overrides)
    routing = load_routing(settings.config)
    from bridge.logs import configure_logging

    configure_logging(settings)
    return settings, routing


SERVING_COMMANDS = ("web", "worker", "serve")


def _serving() -> None:
    """Start-up is over. The collector was off while it ran (`main`): imports, settings and the routing model make
    tens of thousands of objects that live as long as the process and almost no garbage, and the full collections
    they triggered were a sixth of the web's start-up. `gc.freeze` keeps later collections from scanning them again."""
    gc.freeze()
    gc.enable()


def _fail(exc: ConfigError) -> int:
    print("configuration invalid:", file=sys.stderr)
    for problem in exc.problems:
        print(f"  {problem}", file=sys.stderr)
    return EXIT_CONFIG


def check_config(args: argparse.Namespace) -> int:
    return cmd_check_routing(args) if args.routing_only else cmd_check_config(args)


def cmd_check_routing(args: argparse.Namespace) -> int:
    """The routing file alone: no secrets needed (a GitOps repository's CI can run it on every change)."""
    from pathlib import Path

    from bridge.routing import load_routing

    path = Path(args.config) if args.config else _settings().config
    routing = load_routing(path)
    print(f"{path}: OK — {len(routing.repositories)} repositories, {len(routing.routes)} routes "
          "(routing file only: settings and secrets not checked)")
    for route in routing.routes:
        print(f"  route {route.name}: {', '.join(e.name for e in route.environments)}")
    return 0


def cmd_check_config(args: argparse.Namespace) -> int:
    from bridge.config_check import findings
    from bridge.routing import load_routing

    settings = _settings(**({"config": args.config} if args.config else {}))
    routing = load_routing(settings.config)
    found = findings(settings, routing)
    if found.problems:
        raise ConfigError(found.problems)
    print(f"{settings.config}: OK — {len(routing.repositories)} repositories, {len(routing.routes)} routes")
    for name, repo in routing.repositories.items():
        print(f"  repository {name}: {repo.url} @ {repo.branch}" + (f" (github {repo.github})" if repo.github else ""))
    for route in routing.routes:
        m = route.match
        print(f"  route {route.name}: project={m.project} definition={m.definition} branches={','.join(m.branches)} "
              f"results={','.join(m.results)} tag={route.tag} ordering={route.ordering}")
        for env in route.environments:
            extra = []
            if env.after:
                extra.append(f"after {env.after}")
            if env.branches:
                extra.append(f"branches {','.join(env.branches)}")
            if env.argocd:
                extra.append(f"argocd {env.argocd.describe()}")
            print(f"    {env.name:<10} {env.promotion:<12} {env.repository}:{env.file} keys={','.join(env.keys)}"
                  + (f" ({'; '.join(extra)})" if extra else ""))
    for warning in found.warnings:
        print(f"warning: {warning}")
    return 0


def _redis_url(settings: Settings) -> tuple[str | None, Any]:
    """The Redis to use: the configured one (None: the settings' URL or Sentinels), else an embedded one."""
    if settings.has_redis:
        return None, None
    from bridge.embedded_redis import EmbeddedRedis

    embedded = EmbeddedRedis(settings.redis_data_dir).start()
    print(f"embedded Redis on {embedded.url} (data in {settings.redis_data_dir})", file=sys.stderr)
    return embedded.url, embedded


def cmd_web(args: argparse.Namespace) -> int:
    import uvicorn

    from bridge.app import create_app
    from bridge.webhook import tune_collector

    settings, routing = _load(args)
    if not settings.has_redis:
        raise ConfigError("settings: redis_url: `web` needs BRIDGE_REDIS_URL or BRIDGE_REDIS_SENTINELS "
                          "(use `serve` for an embedded Redis)")
    app = create_app(settings, routing)
    tune_collector()  # the web's `_serving`
    uvicorn.run(app, host=args.host or settings.host, port=args.port or settings.port, log_level="warning",
                access_log=False, proxy_headers=True)
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    from bridge.serve import until_signalled
    from workers.main import run_worker

    settings, routing = _load(args)
    if not settings.has_redis:
        raise ConfigError("settings: redis_url: `worker` needs BRIDGE_REDIS_URL or BRIDGE_REDIS_SENTINELS "
                          "(use `serve` for an embedded Redis)")
    _serving()
    asyncio.run(until_signalled(run_worker(settings, routing)))
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from bridge.serve import serve

    settings, routing = _load(args)
    url, embedded = _redis_url(settings)
    host, port = args.host or settings.host, args.port or settings.port
    print(f"gitops-bridge serving on http://{host}:{port} (webhook: /webhooks/azure-devops)", file=sys.stderr)
    _serving()
    try:
        asyncio.run(serve(settings, routing, url, host=host, port=port))
    except KeyboardInterrupt:
        pass
    finally:
        if embedded is not None:
            embedded.stop()
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from workers.demo import run_demo

    return run_demo(keep_running=args.keep_running, port=args.port)


def cmd_subscribe(args: argparse.Namespace) -> int:
    from workers.subscribe import subscribe

    settings, routing = _load(args)
    code: int = asyncio.run(subscribe(settings, routing, public_url=args.url or settings.public_url,
                                      dry_run=args.dry_run, check=args.check, out=sys.stdout))
    return code


def cmd_version(args: argparse.Namespace) -> int:
    info = {"version": version(), "python": sys.version.split()[0]}
    if args.output in ("json", "yaml"):
        print(output.dump(info, args.output))
    else:
        print(f"gitops-bridge {info['version']} (python {info['python']})")
    return 0


def cmd_completion(args: argparse.Namespace) -> int:
    from bridge.completion import script

    print(script(parser(), args.shell))
    return 0


# -- commands that talk to a running bridge ------------------------------------------------------------------------

class ApiError(Exception):
    """One line for the user; the command exits 1. `status`: the HTTP status (None: the bridge was not reached)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


def base_url(url: str | None, settings: Settings) -> str:
    """`--url` as typed: `127.0.0.1:18491` and `host:port` mean http://; the default is this host's BRIDGE_PORT."""
    if not url:
        return f"http://127.0.0.1:{settings.port}"
    url = url.strip().rstrip("/")
    return url if "://" in url else f"http://{url}"


def _api(args: argparse.Namespace, method: str, path: str, *, write: bool = False, **kwargs: Any) -> Any:
    import httpx

    settings = _settings()
    token = args.token
    if not token:
        tokens = settings.api.named(write=write)
        token = tokens[0][1].get_secret_value() if tokens else ""
    if not token:  # an empty bearer token is not even a valid header: say what is missing instead
        kind = "BRIDGE_API__WRITE_TOKENS" if write else "BRIDGE_API__READ_TOKENS"
        raise ApiError(f"no API token: pass --token or set {kind}")
    base = base_url(args.url, settings)
    try:
        response = httpx.request(method, base + path, headers={"Authorization": f"Bearer {token}"}, timeout=15,
                                 **kwargs)
    except httpx.InvalidURL as exc:
        raise ApiError(f"invalid --url {base!r}: {exc}") from None
    except httpx.HTTPError as exc:
        raise ApiError(f"cannot reach the bridge at {base}: {type(exc).__name__}") from None
    try:
        body = response.json()
    except ValueError:
        body = {"error": response.text[:200]}
    if response.status_code >= 400:
        detail = body.get("error", body) if isinstance(body, dict) else body
        raise ApiError(f"{method} {path}: HTTP {response.status_code}: {detail}", response.status_code)
    return body


def _print_listing(body: dict[str, Any], fmt: str, rows: list[dict[str, Any]], columns: Sequence[str]) -> None:
    print(output.dump(body, fmt) if fmt in ("json", "yaml") else output.format_table(rows, columns))


def cmd_deployments(args: argparse.Namespace) -> int:
    params: dict[str, Any] = {k: v for k, v in {"build_id": args.build_id, "route": args.route,
                                                "environment": args.env, "verdict": args.verdict}.items()
                              if v is not None}
    want = args.limit or None  # 0: every record (page by page)
    items: list[dict[str, Any]] = []
    offset: int | None = 0
    while offset is not None and (want is None or len(items) < want):
        page = min(500, want - len(items)) if want is not None else 500
        body = _api(args, "GET", "/api/deployments", params={**params, "limit": page, "offset": offset})
        items += body["items"]
        offset = body.get("next_offset")
    fmt = args.output
    columns = output.DEPLOYMENT_WIDE if fmt == "wide" else output.DEPLOYMENT_COLUMNS
    _print_listing({"items": items, "next_offset": offset}, fmt, output.deployment_rows(items), columns)
    return 0


def cmd_deployment(args: argparse.Namespace) -> int:
    from urllib.parse import quote

    body = _api(args, "GET", f"/api/deployments/{quote(args.id, safe='')}")
    if args.output in ("json", "yaml"):
        print(output.dump(body, args.output))
    else:
        print(output.deployment_detail(body, wide=args.output == "wide"))
    return 0


def cmd_holds(args: argparse.Namespace) -> int:
    body = _api(args, "GET", "/api/holds")
    columns = output.HOLD_WIDE if args.output == "wide" else output.HOLD_COLUMNS
    _print_listing(body, args.output, output.hold_rows(body["items"]), columns)
    return 0


def cmd_promote(args: argparse.Namespace) -> int:
    payload: dict[str, Any] = {"build_id": args.build, "to": args.to, "force": args.force}
    if args.by:
        payload["by"] = args.by
    if args.route:
        payload["route"] = args.route
    body = _api(args, "POST", "/api/promotions", write=True, json=payload)
    print(f"queued: deployment {body['deployment']} (from {body['from']})")
    return 0


def cmd_hold(args: argparse.Namespace) -> int:
    payload = {"reason": args.reason, **({"by": args.by} if args.by else {})}
    body = _api(args, "PUT", f"/api/holds/{args.route}/{args.env}", write=True, json=payload)
    print(f"held {body['route']}/{body['environment']} by {body['by']}: {body['reason']}")
    return 0


def cmd_release(args: argparse.Namespace) -> int:
    if getattr(args, "deploy_latest", False):
        body = _api(args, "POST", "/api/releases", write=True,
                    json={"route": args.route, "environment": args.env, "deploy_latest": True})
    else:
        body = _api(args, "DELETE", f"/api/holds/{args.route}/{args.env}", write=True)
    print(f"released {args.route}/{args.env}" if body["released"] else f"{args.route}/{args.env} was not held")
    if body.get("deployment"):
        print(f"queued: deployment {body['deployment']}")
    elif getattr(args, "deploy_latest", False):
        print("no held build to deploy")
    return 0


def cmd_rollback(args: argparse.Namespace) -> int:
    payload: dict[str, Any] = {"route": args.route, "environment": args.env, "force": args.force}
    if args.to is not None:
        payload["to_build"] = args.to
    if args.reason:
        payload["reason"] = args.reason
    body = _api(args, "POST", "/api/rollbacks", write=True, json=payload)
    of = (body.get("details") or {}).get("rollback_of") or {}
    undone = f" (from build {of['build_id']})" if of.get("build_id") is not None else ""
    print(f"queued: rollback {body['id']} of {args.route}/{args.env} to build {body['build_id']}, tag {body['tag']}"
          f"{undone}; the environment is held until `gitops-bridge release {args.route} {args.env}`")
    return 0


def cmd_wait(args: argparse.Namespace) -> int:
    """Poll GET /api/builds/{id} until every environment waited for has a verdict; exit by bridge.waiting's table."""
    import time

    from bridge import waiting

    try:
        timeout = waiting.parse_duration(args.timeout)
    except ValueError as exc:
        print(f"error: --timeout: {exc}", file=sys.stderr)
        return waiting.EXIT_USAGE
    progress = sys.stderr if args.output in ("json", "yaml") else sys.stdout
    deadline = time.monotonic() + timeout
    params = {"route": args.route} if args.route else {}
    seen: dict[str, str] = {}
    failures = 0
    found: list[waiting.EnvStatus] = []
    route_name: str | None = None
    while True:
        try:
            body = _api(args, "GET", f"/api/builds/{args.build}", params=params)
            failures = 0
        except ApiError as exc:
            if exc.status == 404:  # an unknown --route
                print(f"error: {exc}", file=sys.stderr)
                return waiting.EXIT_USAGE
            if exc.status is not None and exc.status >= 500 and time.monotonic() < deadline and failures < 5:
                failures += 1  # a restarting bridge: try again, a few times
                time.sleep(args.interval)
                continue
            print(f"error: {exc}", file=sys.stderr)
            return waiting.EXIT_API
        try:
            route = waiting.choose_route(body, args.route, args.env or [])
            if route is not None:
                route_name = route["name"]
                names = waiting.targets(route, args.env or [], body)
                every = waiting.statuses(route, body)
                found = [every[name] for name in names]
        except waiting.UsageError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return waiting.EXIT_USAGE
        for status in found:
            line = status.line()
            if seen.get(status.environment) != line:
                seen[status.environment] = line
                print(f"build {args.build} {route_name}/{line}", file=progress, flush=True)
        done = route_name is not None and all(s.final for s in found)
        timed_out = not done and time.monotonic() >= deadline
        if done or timed_out:
            break
        time.sleep(min(args.interval, max(0.0, deadline - time.monotonic())))
    code = waiting.exit_code(found, timed_out=timed_out)
    if timed_out:
        what = ("no deployment appeared" if not any(s.state != "waiting" for s in found)
                else "not every environment has a verdict")
        print(f"error: build {args.build}: {what} within {args.timeout}", file=sys.stderr)
    if args.output in ("json", "yaml"):
        print(output.dump({"build_id": args.build, "route": route_name, "exit_code": code, "timed_out": timed_out,
                           "environments": [s.as_json() for s in found]}, args.output))
    return code


# -- the parser ----------------------------------------------------------------------------------------------------

VERDICT_FILTERS = (*VERDICTS, "in-flight")


def _non_negative(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid int value: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError("must be 0 (all) or more")
    return value


def parser() -> argparse.ArgumentParser:
    doc = __doc__ or ""
    p = argparse.ArgumentParser(
        prog="gitops-bridge", description=doc.split("\n\n", 1)[0],
        epilog="Run `gitops-bridge COMMAND --help` for a command's flags and an example.",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=f"gitops-bridge {version()}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, fn: Any, help_: str, example: str) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help_, description=help_[0].upper() + help_[1:] + ".",
                            epilog="example:\n  " + example, formatter_class=argparse.RawDescriptionHelpFormatter)
        sp.set_defaults(fn=fn)
        return sp

    def with_config(sp: argparse.ArgumentParser) -> argparse.ArgumentParser:
        sp.add_argument("--config", metavar="FILE", help="routing file (default: $BRIDGE_CONFIG, else bridge.yaml)")
        return sp

    def with_listen(sp: argparse.ArgumentParser) -> argparse.ArgumentParser:
        sp.add_argument("--host", help="address to listen on (default: $BRIDGE_HOST, else 127.0.0.1; "
                                       "0.0.0.0 for every interface)")
        sp.add_argument("--port", type=int, help="port to listen on (default: $BRIDGE_PORT, else 8080)")
        return sp

    def with_api(sp: argparse.ArgumentParser) -> argparse.ArgumentParser:
        sp.add_argument("--url", help="the bridge's base URL; http:// is assumed without a scheme "
                                      "(default: http://127.0.0.1:$BRIDGE_PORT)")
        sp.add_argument("--token", help="API bearer token (default: the first of $BRIDGE_API__WRITE_TOKENS for "
                                        "changes, of $BRIDGE_API__READ_TOKENS/WRITE_TOKENS for reads)")
        return sp

    def with_output(sp: argparse.ArgumentParser) -> argparse.ArgumentParser:
        sp.add_argument("-o", "--output", choices=output.FORMATS, default="table",
                        help="output format: table (default), wide (more columns), json or yaml (the API's answer)")
        sp.add_argument("--json", dest="output", action="store_const", const="json", help="same as -o json")
        return sp

    with_listen(with_config(command("web", cmd_web, "run the HTTP intake (needs BRIDGE_REDIS_URL)",
                                    "BRIDGE_REDIS_URL=redis://localhost:6379/0 gitops-bridge web --host 0.0.0.0")))
    with_config(command("worker", cmd_worker, "run the arq worker (needs BRIDGE_REDIS_URL)",
                        "BRIDGE_REDIS_URL=redis://localhost:6379/0 gitops-bridge worker --config bridge.yaml"))
    with_listen(with_config(command("serve", cmd_serve, "run web and worker in one process, with an embedded "
                                    "Redis when BRIDGE_REDIS_URL is unset",
                                    "BRIDGE_WEBHOOK__TOKENS=$(openssl rand -hex 16) gitops-bridge serve "
                                    "--config examples/bridge.yaml")))

    sp = with_config(command("check-config", check_config, "validate the settings and the routing file",
                             "gitops-bridge check-config --routing-only --config gitops/bridge.yaml"))
    sp.add_argument("--routing-only", action="store_true",
                    help="check the routing file alone: no settings or secrets needed (for a GitOps repo's CI)")

    sp = command("demo", cmd_demo, "run the whole flow locally, with fakes of Argo CD, Azure DevOps and GitHub",
                 "gitops-bridge demo --keep-running")
    sp.add_argument("--keep-running", action="store_true",
                    help="leave the bridge and the fakes up afterwards, and print commands to explore them")
    sp.add_argument("--port", type=int, default=0, help="port for the bridge (default: a free one)")

    sp = with_config(command("subscribe", cmd_subscribe, "create or update the Azure DevOps service hooks",
                             "gitops-bridge subscribe --url https://gitops-bridge.example.com --dry-run"))
    sp.add_argument("--url", help="public HTTPS base URL of the bridge (default: $BRIDGE_PUBLIC_URL)")
    sp.add_argument("--dry-run", action="store_true", help="print the request bodies, change nothing")
    sp.add_argument("--check", action="store_true", help="list the existing subscriptions and their status")

    sp = with_output(with_api(command("deployments", cmd_deployments, "list deployments, newest first",
                                      "gitops-bridge deployments --verdict failed --env prod -o wide")))
    sp.add_argument("--build-id", type=int, metavar="ID", help="only this Azure DevOps build id")
    sp.add_argument("--route", help="only this route (a name from the routing file)")
    sp.add_argument("--env", help="only this environment (e.g. dev, staging, prod)")
    sp.add_argument("--verdict", choices=VERDICT_FILTERS,
                    help=f"only this verdict: {', '.join(VERDICT_FILTERS)} (in-flight: no verdict yet)")
    sp.add_argument("--limit", type=_non_negative, default=50, metavar="N",
                    help="at most N deployments (default 50; 0 for all)")

    sp = with_output(with_api(command("deployment", cmd_deployment, "show one deployment with its timeline",
                                      "gitops-bridge deployment dep-0123abcd -o yaml")))
    sp.add_argument("id", help="deployment id (the ID column of `deployments -o wide`)")

    with_output(with_api(command("holds", cmd_holds, "list the held route environments",
                                 "gitops-bridge holds -o wide")))

    sp = with_api(command("promote", cmd_promote, "deploy a build to another environment of its route",
                          "gitops-bridge promote 4711 --to prod --by 'change CAB-1234'"))
    sp.add_argument("build", type=int, help="the Azure DevOps build id")
    sp.add_argument("--to", required=True, metavar="ENV", help="target environment (e.g. staging, prod)")
    sp.add_argument("--route", help="route name, when the build deployed through several")
    sp.add_argument("--force", action="store_true",
                    help="even if the previous environment did not succeed or the branch is not accepted")
    sp.add_argument("--by", metavar="NOTE", help="a free-text note (ticket, reason); who did it is the token's name")

    sp = with_api(command("wait", cmd_wait, "wait until a build's environments have a verdict; exit 0 succeeded or "
                          "pushed, 3 failed/rejected, 4 timed-out, 5 superseded/held, 6 timeout, 7 API unreachable",
                          "gitops-bridge wait $(Build.BuildId) --env dev --env staging --timeout 20m"))
    sp.add_argument("build", type=int, help="the Azure DevOps build id")
    sp.add_argument("--env", action="append", metavar="ENV",
                    help="an environment to wait for (repeatable; default: every one the build's route deploys "
                         "without a gate)")
    sp.add_argument("--route", help="route name, when several routes could deploy the build")
    sp.add_argument("--timeout", default="20m", help="give up (exit 6) after this long: 90s, 20m, 1h (default 20m)")
    sp.add_argument("--interval", type=float, default=2.0, metavar="SECONDS",
                    help="seconds between two looks at the bridge (default 2)")
    sp.add_argument("-o", "--output", choices=("table", "json", "yaml"), default="table",
                    help="table: progress lines only (default); json or yaml: each environment's verdict and reason "
                         "at the end (progress lines then go to stderr)")

    sp = with_api(command("hold", cmd_hold, "stop bumps of one environment of a route",
                          "gitops-bridge hold shop prod --reason 'release freeze until Monday'"))
    sp.add_argument("route", help="route name (from the routing file)")
    sp.add_argument("env", help="environment name in that route")
    sp.add_argument("--reason", required=True, help="why; shown in `holds` and on held deployments")
    sp.add_argument("--by", metavar="NOTE", help="a free-text note (ticket, reason); who did it is the token's name")

    sp = with_api(command("release", cmd_release, "release a hold", "gitops-bridge release shop prod"))
    sp.add_argument("route", help="route name (from the routing file)")
    sp.add_argument("env", help="environment name in that route")
    sp.add_argument("--deploy-latest", action="store_true",
                    help="also deploy the newest build the hold stopped (a rollback's hold, for instance)")

    sp = with_api(command("rollback", cmd_rollback, "put an environment back on a build that succeeded there",
                          "gitops-bridge rollback shop prod --reason 'checkout errors since 4711'"))
    sp.add_argument("route", help="route name (from the routing file)")
    sp.add_argument("env", help="environment name in that route")
    sp.add_argument("--to", type=int, metavar="BUILD_ID",
                    help="the build to restore (default: the last one that succeeded there before what runs now)")
    sp.add_argument("--reason", help="why; kept on the rollback and its hold")
    sp.add_argument("--force", action="store_true", help="even while a newer deployment is in flight")

    sp = command("version", cmd_version, "print the version", "gitops-bridge version -o json")
    sp.add_argument("-o", "--output", choices=("text", "json", "yaml"), default="text",
                    help="output format: text (default), json or yaml")

    sp = command("completion", cmd_completion, "print a shell completion script",
                 "source <(gitops-bridge completion bash)   # or: gitops-bridge completion fish | source")
    sp.add_argument("shell", choices=("bash", "zsh", "fish"), help="the shell: bash, zsh or fish")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    gc.disable()  # until the process serves (`_serving`); the other commands collect as usual
    try:
        return _main(argv)
    finally:
        gc.enable()


def _main(argv: Sequence[str] | None) -> int:
    args = parser().parse_args(argv)
    if args.command not in SERVING_COMMANDS:
        gc.enable()
    try:
        code: int = args.fn(args)
        sys.stdout.flush()
    except ConfigError as exc:
        return _fail(exc)
    except ApiError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 7 if args.command == "wait" else 1
    except BrokenPipeError:  # `gitops-bridge deployments -o json | head`: the reader left, nothing to say
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_PIPE
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
