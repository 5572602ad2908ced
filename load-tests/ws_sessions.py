#!/usr/bin/env python3
"""WebSocket sessions for load-tests/rolling.sh, both ends.

  ws_sessions.py echo PORT
      An echo server on 127.0.0.1:PORT (the upstream behind the agent).
  ws_sessions.py clients URL ADDR N SECONDS
      N sessions to URL (its host is the Host the gateway routes on), connecting to ADDR
      (HOST:PORT) whatever the URL's name resolves to, for SECONDS: each sends a numbered message every 200 ms
      and expects its echo; a session that is cut (any close or error) reconnects by itself,
      as JupyterLab's kernel sockets do. Prints one JSON line: sessions, open at the end,
      echoes, reconnects, close codes seen, and wrong echoes (which must be 0).
"""
import asyncio
import json
import sys
import time

import websockets


async def echo(port):
    async def handler(ws):
        async for m in ws:
            await ws.send(m)

    async with websockets.serve(handler, "127.0.0.1", port, max_size=None):
        await asyncio.Future()


async def clients(url, addr, n, seconds):
    host, port = addr.rsplit(":", 1)
    stats = {"sessions": n, "open_at_end": 0, "echoes": 0, "reconnects": 0, "wrong": 0,
             "close_codes": {}}
    deadline = time.monotonic() + seconds
    open_now = set()

    async def session(i):
        first = True
        while time.monotonic() < deadline:
            if not first:
                stats["reconnects"] += 1
                await asyncio.sleep(0.2)
            first = False
            try:
                async with websockets.connect(url, host=host, port=int(port),
                                              open_timeout=5, max_size=None) as ws:
                    open_now.add(i)
                    k = 0
                    while time.monotonic() < deadline:
                        k += 1
                        msg = f"{i}:{k}"
                        await ws.send(msg)
                        got = await asyncio.wait_for(ws.recv(), 10)
                        if got != msg:
                            stats["wrong"] += 1
                        stats["echoes"] += 1
                        await asyncio.sleep(0.2)
                    return
            except Exception as e:  # noqa: BLE001 — any cut counts; the session reconnects
                code = getattr(getattr(e, "rcvd", None), "code", None) or type(e).__name__
                stats["close_codes"][str(code)] = stats["close_codes"].get(str(code), 0) + 1
            finally:
                open_now.discard(i)

    async def watch():
        # Sessions open just before the end (each ends its loop at the deadline).
        while time.monotonic() < deadline - 0.5:
            await asyncio.sleep(0.1)
        stats["open_at_end"] = len(open_now)

    await asyncio.gather(watch(), *(session(i) for i in range(n)))
    print(json.dumps(stats))


if __name__ == "__main__":
    if sys.argv[1] == "echo":
        asyncio.run(echo(int(sys.argv[2])))
    else:
        asyncio.run(clients(sys.argv[2], sys.argv[3], int(sys.argv[4]), float(sys.argv[5])))
