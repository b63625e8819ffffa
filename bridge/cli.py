"""The `gitops-bridge` command.

    web            the HTTP intake (uvicorn)
    worker         the arq worker
    serve          both in one process (embedded Redis when BRIDGE_REDIS_URL is unset)
    check-config   validate settings and the routing file, print the resolved routes
    demo           the whole flow on this machine, with fakes of Argo CD, Azure DevOps and GitHub
    subscribe      create or update the Azure DevOps service-hook subscriptions
    deployments    list deployment records (from a running bridge's API)
    promote        deploy a build to the next environment
    hold/release   stop or resume bumps of one environment of a route
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
from collections.abc import Coroutine, Sequence
from typing import Any

from bridge.errors import ConfigError
from bridge.routing import RoutingConfig, load_routing
from bridge.settings import Settings, load_settings


def _settings(**overrides: Any) -> Settings:
    """load_settings, with invalid values reported as a ConfigError that names the setting (never its value)."""
    from pydantic import ValidationError
    from pydantic_settings import SettingsError

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
    overrides: dict[str, Any] = {}
    if getattr(args, "config", None):
        overrides["config"] = args.config
    settings = _settings(**overrides)
    routing = load_routing(settings.config)
    from bridge.logs import configure_logging

    configure_logging(settings)
    return settings, routing


def _fail(exc: ConfigError) -> int:
    print("configuration invalid:", file=sys.stderr)
    for problem in exc.problems:
        print(f"  {problem}", file=sys.stderr)
    return 2


def cmd_check_config(args: argparse.Namespace) -> int:
    from bridge.config_check import findings

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
                extra.append(f"argocd {env.argocd.project}/{env.argocd.app}")
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

    settings, routing = _load(args)
    if not settings.has_redis:
        raise ConfigError("settings: redis_url: `web` needs BRIDGE_REDIS_URL or BRIDGE_REDIS_SENTINELS "
                          "(use `serve` for an embedded Redis)")
    app = create_app(settings, routing)
    uvicorn.run(app, host=args.host or settings.host, port=args.port or settings.port, log_level="warning",
                access_log=False, proxy_headers=True)
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    from workers.main import run_worker

    settings, routing = _load(args)
    if not settings.has_redis:
        raise ConfigError("settings: redis_url: `worker` needs BRIDGE_REDIS_URL or BRIDGE_REDIS_SENTINELS "
                          "(use `serve` for an embedded Redis)")
    asyncio.run(_until_signalled(run_worker(settings, routing)))
    return 0


async def _until_signalled(main: Coroutine[Any, Any, None]) -> None:
    """Run `main` until it ends or SIGTERM/SIGINT arrives; then cancel it so it closes cleanly.

    Jobs cut short are re-run by arq later (every job is idempotent).
    """
    task = asyncio.ensure_future(main)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, task.cancel)
    try:
        await task
    except asyncio.CancelledError:
        pass


async def serve(settings: Settings, routing: RoutingConfig, redis_url: str | None, *, host: str, port: int) -> None:
    """Web and worker in one event loop, on one Redis."""
    import uvicorn

    from bridge.app import create_app
    from workers.main import run_worker

    if redis_url is not None:  # an embedded Redis
        settings = settings.model_copy(update={"redis_url": _secret(redis_url), "redis_sentinels": []})
    app = create_app(settings, routing)
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False))
    web = asyncio.ensure_future(server.serve())
    worker = asyncio.ensure_future(run_worker(settings, routing, redis_url=redis_url, serve_health=False))
    # SIGTERM stops both cleanly, so the caller can stop the embedded Redis. (uvicorn re-raises the SIGTERM it
    # captured once it has stopped; with the default handler that killed the process and orphaned redis-server.)
    loop = asyncio.get_running_loop()
    try:
        loop.add_signal_handler(signal.SIGTERM, server.handle_exit, signal.SIGTERM, None)
        handling_sigterm = True
    except (RuntimeError, ValueError, NotImplementedError):  # not the main thread (the demo), or Windows
        handling_sigterm = False
    try:
        done, _ = await asyncio.wait([web, worker], return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            task.result()
    finally:
        server.should_exit = True
        worker.cancel()
        await asyncio.gather(web, worker, return_exceptions=True)
        if handling_sigterm:
            loop.remove_signal_handler(signal.SIGTERM)


def _secret(value: str) -> Any:
    from pydantic import SecretStr

    return SecretStr(value)


def cmd_serve(args: argparse.Namespace) -> int:
    settings, routing = _load(args)
    url, embedded = _redis_url(settings)
    host, port = args.host or settings.host, args.port or settings.port
    print(f"gitops-bridge serving on http://{host}:{port} (webhook: /webhooks/azure-devops)", file=sys.stderr)
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


# -- commands that talk to a running bridge ------------------------------------------------------------------------

def _api(args: argparse.Namespace, method: str, path: str, *, write: bool = False, **kwargs: Any) -> Any:
    import httpx

    settings = _settings()
    token = args.token
    if not token:
        tokens = settings.api.write_tokens if write else [*settings.api.read_tokens, *settings.api.write_tokens]
        token = tokens[0].get_secret_value() if tokens else ""
    if not token:  # an empty bearer token is not even a valid header: say what is missing instead
        kind = "BRIDGE_API__WRITE_TOKENS" if write else "BRIDGE_API__READ_TOKENS"
        raise SystemExit(f"no API token: pass --token or set {kind}")
    base = (args.url or f"http://127.0.0.1:{settings.port}").rstrip("/")
    try:
        response = httpx.request(method, base + path, headers={"Authorization": f"Bearer {token}"}, timeout=15,
                                 **kwargs)
    except httpx.HTTPError as exc:
        raise SystemExit(f"cannot reach the bridge at {base}: {type(exc).__name__}") from None
    try:
        body = response.json()
    except ValueError:
        body = {"error": response.text[:200]}
    if response.status_code >= 400:
        detail = body.get("error", body) if isinstance(body, dict) else body
        raise SystemExit(f"{method} {path}: HTTP {response.status_code}: {detail}")
    return body


def format_table(rows: list[dict[str, Any]], columns: Sequence[str]) -> str:
    cells = [[str(row.get(c) if row.get(c) is not None else "-") for c in columns] for row in rows]
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(columns)]
    lines = ["  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)) for r in cells]
    return "\n".join(lines)


DEPLOYMENT_COLUMNS = ("id", "build_id", "route", "environment", "tag", "state", "verdict", "commit", "reason")


def deployment_rows(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for item in items:
        reason = item.get("reason") or ""
        rows.append({**item, "commit": (item.get("commit_sha") or "")[:10] or None,
                     "reason": reason if len(reason) <= 60 else reason[:57] + "..."})
    return rows


def cmd_deployments(args: argparse.Namespace) -> int:
    params = {k: v for k, v in {"build_id": args.build_id, "route": args.route, "environment": args.env,
                                 "verdict": args.verdict, "limit": args.limit}.items() if v is not None}
    body = _api(args, "GET", "/api/deployments", params=params)
    if args.json:
        print(json.dumps(body, indent=2))
    else:
        print(format_table(deployment_rows(body["items"]), DEPLOYMENT_COLUMNS))
    return 0


def cmd_promote(args: argparse.Namespace) -> int:
    payload: dict[str, Any] = {"build_id": args.build, "to": args.to, "force": args.force, "by": "cli"}
    if args.route:
        payload["route"] = args.route
    body = _api(args, "POST", "/api/promotions", write=True, json=payload)
    print(f"queued: deployment {body['deployment']} (from {body['from']})")
    return 0


def cmd_hold(args: argparse.Namespace) -> int:
    body = _api(args, "PUT", f"/api/holds/{args.route}/{args.env}", write=True,
                json={"reason": args.reason, "by": "cli"})
    print(f"held {body['route']}/{body['environment']}: {body['reason']}")
    return 0


def cmd_release(args: argparse.Namespace) -> int:
    body = _api(args, "DELETE", f"/api/holds/{args.route}/{args.env}", write=True)
    print(f"released {args.route}/{args.env}" if body["released"] else f"{args.route}/{args.env} was not held")
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gitops-bridge", description=__doc__.split("\n\n")[0] if __doc__ else None,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)

    def with_config(sp: argparse.ArgumentParser) -> argparse.ArgumentParser:
        sp.add_argument("--config", help="routing file (default: BRIDGE_CONFIG or bridge.yaml)")
        return sp

    def with_api(sp: argparse.ArgumentParser) -> argparse.ArgumentParser:
        sp.add_argument("--url", help="the bridge's base URL (default http://127.0.0.1:BRIDGE_PORT)")
        sp.add_argument("--token", help="API token (default: the first of BRIDGE_API__*_TOKENS)")
        return sp

    for name, fn, help_ in (("web", cmd_web, "run the HTTP intake"), ("serve", cmd_serve, "web + worker")):
        sp = with_config(sub.add_parser(name, help=help_))
        sp.add_argument("--host")
        sp.add_argument("--port", type=int)
        sp.set_defaults(fn=fn)
    with_config(sub.add_parser("worker", help="run the arq worker")).set_defaults(fn=cmd_worker)
    with_config(sub.add_parser("check-config", help="validate the configuration")).set_defaults(fn=cmd_check_config)

    sp = sub.add_parser("demo", help="run the whole flow locally with fakes")
    sp.add_argument("--keep-running", action="store_true", help="leave the services up to explore")
    sp.add_argument("--port", type=int, default=0, help="port for the bridge (default: a free one)")
    sp.set_defaults(fn=cmd_demo)

    sp = with_config(sub.add_parser("subscribe", help="create/update Azure DevOps service hooks"))
    sp.add_argument("--url", help="public HTTPS base URL of the bridge (default BRIDGE_PUBLIC_URL)")
    sp.add_argument("--dry-run", action="store_true", help="print the request bodies, change nothing")
    sp.add_argument("--check", action="store_true", help="list existing subscriptions and their status")
    sp.set_defaults(fn=cmd_subscribe)

    sp = with_api(sub.add_parser("deployments", help="list deployments"))
    sp.add_argument("--build-id", type=int)
    sp.add_argument("--route")
    sp.add_argument("--env")
    sp.add_argument("--verdict")
    sp.add_argument("--limit", type=int, default=50)
    sp.add_argument("--json", action="store_true")
    sp.set_defaults(fn=cmd_deployments)

    sp = with_api(sub.add_parser("promote", help="deploy a build to another environment"))
    sp.add_argument("build", type=int, help="build id")
    sp.add_argument("--to", required=True, help="target environment")
    sp.add_argument("--route", help="route name, when the build deployed through several")
    sp.add_argument("--force", action="store_true", help="even if the previous environment did not succeed")
    sp.set_defaults(fn=cmd_promote)

    sp = with_api(sub.add_parser("hold", help="hold an environment of a route"))
    sp.add_argument("route")
    sp.add_argument("env")
    sp.add_argument("--reason", required=True)
    sp.set_defaults(fn=cmd_hold)

    sp = with_api(sub.add_parser("release", help="release a hold"))
    sp.add_argument("route")
    sp.add_argument("env")
    sp.set_defaults(fn=cmd_release)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        code: int = args.fn(args)
    except ConfigError as exc:
        return _fail(exc)
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
