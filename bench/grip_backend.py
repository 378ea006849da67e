"""The tiny GRIP backend behind Pushpin for the fan-out benchmark.

``GET /sub/{channel}`` answers with ``Grip-Hold: stream`` and
``Grip-Channel: {channel}``: Pushpin keeps the client's response open and
subscribes it to the channel; everything published to the channel is then
written to the client by Pushpin. The backend sees one request per viewer and
nothing after that.

    python -m bench.grip_backend --port 18090
"""

from __future__ import annotations

import argparse
import asyncio

from aiohttp import web

HEADERS = {"Grip-Hold": "stream", "Content-Type": "text/event-stream", "Cache-Control": "no-cache"}


async def subscribe(request: web.Request) -> web.Response:
    channel = request.match_info["channel"]
    return web.Response(body=b": hi\n\n", headers={**HEADERS, "Grip-Channel": channel})


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    app = web.Application()
    app.router.add_get("/sub/{channel}", subscribe)
    import uvloop

    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    web.run_app(app, host=args.host, port=args.port, print=None, access_log=None)


if __name__ == "__main__":
    main()
