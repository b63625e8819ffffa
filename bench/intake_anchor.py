"""The anchor of `bench/intake.py`: the minimal durable webhook endpoint (issue 12, target 4).

Read the body, parse it with orjson, check the token in constant time, then one Lua call that does `SET NX` of a
per-build key and `LPUSH` of the body (only when the key was new), and answer 202. Nothing else: no routing, no log
line, no metrics, no job format. It is served exactly like the bridge (`python -m uvicorn --factory
intake_anchor:anchor_app`, one process, same options) and talks to Redis with the same client library (redis-py's
asyncio client, one pool), so the ratio measures what the bridge adds on top of the floor any durable intake pays.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from typing import Any

import orjson
import redis.asyncio as aioredis
from redis.exceptions import NoScriptError, RedisError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

ENQUEUE_LUA = """
if redis.call('set', KEYS[1], '1', 'NX', 'EX', 86400) then
  redis.call('lpush', KEYS[2], ARGV[1])
  return 1
end
return 0
"""
ENQUEUE_SHA = hashlib.sha1(ENQUEUE_LUA.encode()).hexdigest()


def anchor_app() -> Starlette:
    token = hashlib.sha256(os.environ["BRIDGE_WEBHOOK__TOKENS"].encode()).digest()
    queue = os.environ.get("BRIDGE_QUEUE_NAME", "anchor") + ":anchor"
    client = aioredis.Redis.from_url(os.environ["BRIDGE_REDIS_URL"])

    async def accept(request: Request) -> Response:
        presented = request.headers.get("x-bridge-token", "").encode()
        if not hmac.compare_digest(hashlib.sha256(presented).digest(), token):
            return Response(b'{"status":"rejected"}', status_code=401, media_type="application/json")
        raw = await request.body()
        try:
            body: Any = orjson.loads(raw)
            build = str(body["resource"]["id"])
        except (orjson.JSONDecodeError, KeyError, TypeError):
            return Response(b'{"status":"rejected"}', status_code=400, media_type="application/json")
        keys_and_args = (f"anchor:seen:{build}", queue, raw)
        try:
            try:
                created = await client.evalsha(ENQUEUE_SHA, 2, *keys_and_args)
            except NoScriptError:
                created = await client.eval(ENQUEUE_LUA, 2, *keys_and_args)
        except (RedisError, OSError):
            return Response(b'{"status":"unavailable"}', status_code=503, media_type="application/json")
        status = b"queued" if created == 1 else b"duplicate"
        return Response(b'{"status":"' + status + b'"}', status_code=202, media_type="application/json")

    return Starlette(routes=[Route("/webhooks/azure-devops", accept, methods=["POST"])])
