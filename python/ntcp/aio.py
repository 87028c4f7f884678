"""aio.py: ntcp for asyncio. The library's calls block (on its own runtime
thread's work), so they run in the loop's default executor; the connected
socket they return is handed to asyncio's streams."""

import asyncio

# How long one accept() in the executor waits before it looks whether the
# server was closed: the most a close() waits for that thread.
_ACCEPT_SLICE = 0.25


async def open_connection(ctx, peer, timeout=30.0, **kwargs):
    """Connects to `peer` through ctx (ntcp.Context): (StreamReader,
    StreamWriter); writer.ntcp_info is the ConnInfo. kwargs
    go to asyncio.open_connection (limit=...)."""
    loop = asyncio.get_running_loop()
    sock, info = await loop.run_in_executor(None, ctx.connect, peer, timeout)
    sock.setblocking(False)
    reader, writer = await asyncio.open_connection(sock=sock, **kwargs)
    writer.ntcp_info = info
    return reader, writer


class Server:
    """What start_server() returns: accepts until close(); an async context
    manager like asyncio.Server."""

    def __init__(self, ctx, cb, kwargs):
        self._ctx, self._cb, self._kwargs = ctx, cb, kwargs
        self._closing = False
        self._task = None
        self._handlers = set()

    async def _serve(self):
        from . import TimeoutError as NtcpTimeout, ClosedError
        loop = asyncio.get_running_loop()
        while not self._closing:
            try:
                sock, info = await loop.run_in_executor(None, self._ctx.accept, _ACCEPT_SLICE)
            except NtcpTimeout:
                continue
            except ClosedError:
                break
            if self._closing or info.transport != "tcp":
                # A UDP path (the peer called udp_punch) is not a stream.
                sock.close()
                continue
            sock.setblocking(False)
            reader, writer = await asyncio.open_connection(sock=sock, **self._kwargs)
            writer.ntcp_info = info
            res = self._cb(reader, writer)
            if asyncio.iscoroutine(res):
                t = asyncio.ensure_future(res)
                self._handlers.add(t)
                t.add_done_callback(self._handlers.discard)

    def is_serving(self):
        return self._task is not None and not self._task.done()

    def close(self):
        """Stops accepting (within a quarter of a second); connections
        already handed over go on."""
        self._closing = True

    async def wait_closed(self):
        if self._task is not None:
            await asyncio.shield(self._task)

    async def serve_forever(self):
        await self._task

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc):
        self.close()
        await self.wait_closed()


async def start_server(ctx, name, client_connected_cb, timeout=30.0, **kwargs):
    """Registers `name` with the broker (ctx.listen) and calls
    client_connected_cb(reader, writer) (a function or a coroutine) for
    each verified incoming TCP connection, as asyncio.start_server does
    (writer.ntcp_info is the ConnInfo). Returns a Server."""
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, ctx.listen, name, timeout)
    srv = Server(ctx, client_connected_cb, kwargs)
    srv._task = asyncio.ensure_future(srv._serve())
    return srv
