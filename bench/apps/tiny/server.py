"""A tiny HTTP/1.1 keep-alive server for edgeshot's data-path benchmarks (asyncio, stdlib).

    GET /            -> 200 "ok"
    GET /sleep/<ms>  -> 200 "ok" after <ms> milliseconds (a request that takes time)
    GET /healthz     -> 200 "ok"
"""

import asyncio
import os
import signal

OK = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nok"


class Http(asyncio.Protocol):
    def connection_made(self, transport):
        self.t = transport
        self.buf = b""

    def data_received(self, data):
        self.buf += data
        while b"\r\n\r\n" in self.buf:
            head, self.buf = self.buf.split(b"\r\n\r\n", 1)
            path = head.split(b" ", 2)[1] if head.count(b" ") >= 2 else b"/"
            if path.startswith(b"/sleep/"):
                try:
                    ms = int(path[7:].split(b"?")[0])
                except ValueError:
                    ms = 0
                asyncio.get_running_loop().call_later(ms / 1000, self._send)
            else:
                self.t.write(OK)

    def _send(self):
        if not self.t.is_closing():
            self.t.write(OK)


async def main():
    loop = asyncio.get_running_loop()
    stop = loop.create_future()
    for s in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(s, lambda: stop.done() or stop.set_result(None))
    server = await loop.create_server(Http, "0.0.0.0", int(os.environ.get("PORT", "8000")),
                                      backlog=1024)
    async with server:
        await stop


asyncio.run(main())
