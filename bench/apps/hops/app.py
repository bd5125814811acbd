"""A minimal HTTP server for the network benchmarks (asyncio, stdlib): the instance behind
both the plain HAProxy and the two edgeshot hops, so that the proxies, not the app, are
what is measured.

    GET <any path>  -> 200 "ok"  (HTTP/1.1 keep-alive; HTTP/1.0 or "Connection: close"
                                  get the answer and the connection closed)
"""

import asyncio
import os
import signal

BODY = b"ok"
KEEP = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nok"
CLOSE = (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n"
         b"Connection: close\r\n\r\nok")


class Http(asyncio.Protocol):
    def connection_made(self, transport):
        self.t = transport
        self.buf = b""

    def data_received(self, data):
        self.buf += data
        while b"\r\n\r\n" in self.buf:
            head, self.buf = self.buf.split(b"\r\n\r\n", 1)
            low = head.lower()
            if head.split(b"\r\n", 1)[0].endswith(b"HTTP/1.0") or b"connection: close" in low:
                self.t.write(CLOSE)
                self.t.close()
                return
            self.t.write(KEEP)


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
