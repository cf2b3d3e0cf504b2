"""An asyncio service that holds a supervision tree for its lifetime: the awaitable calls.

Run it: ``python examples/asyncio_service.py``. A small TCP service (plain asyncio, the shape
a FastAPI or aiohttp app has: start things on startup, stop them on shutdown) computes each
request in a `ProcessPool` under a `Supervisor`: ``await pool.acall(...)`` never blocks the
event loop, so the loop keeps serving every other client while workers compute. Twenty
clients connect at once; one of them gives up on a slow request, which kills the worker
computing it (the pool replaces it) instead of leaving it busy for nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

from dspex_actors import DspexActorsError, ProcessPool, Supervisor, whereis


def compute(request: dict[str, Any]) -> dict[str, Any]:
    """The worker's code: ``{"n": 7}`` → its square; ``{"n": 7, "slow": s}`` takes s seconds."""
    import os
    import time

    if request.get("slow"):
        time.sleep(request["slow"])  # sleep-ok: a long computation, in the worker process
    return {"n": request["n"], "square": request["n"] ** 2, "pid": os.getpid()}


@contextlib.asynccontextmanager
async def lifespan() -> AsyncIterator[ProcessPool]:
    """What a web framework's startup/shutdown hooks do: start the tree, stop it after."""
    sup = await asyncio.to_thread(
        Supervisor.start,
        [ProcessPool.child_spec(target=compute, pool_size=2, name="compute", id="compute")],
    )
    try:
        ref = whereis("compute")
        assert ref is not None
        pool = ProcessPool.from_ref(ref)
        while (await pool.astatus()).idle < 2:  # ready: its workers answered their ping
            await asyncio.sleep(0.005)  # sleep-ok: polling the pool's status
        yield pool
    finally:
        await sup.astop()


async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """One client: a line with a number (and ``slow`` to ask for a slow one) per request."""
    ref = whereis("compute")
    assert ref is not None
    pool = ProcessPool.from_ref(ref)  # the current incarnation, after any restart
    try:
        while line := await reader.readline():
            n, _, slow = line.decode().partition(" ")
            request: dict[str, Any] = {"n": int(n)}
            if slow.strip():
                request["slow"] = float(slow)
            # The client waits for each answer before it sends more: anything it sends
            # meanwhile can only be its hanging up, which cancels the call (and so kills the
            # worker computing it: nobody wants that answer any more).
            call = asyncio.ensure_future(pool.acall(request, timeout=30))
            hung_up = asyncio.ensure_future(reader.read(1))
            await asyncio.wait({call, hung_up}, return_when=asyncio.FIRST_COMPLETED)
            if not call.done():
                call.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await call
                return
            hung_up.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await hung_up  # the next readline must be the only reader
            reply = call.result()
            writer.write(f"{reply['square']}\n".encode())
            await writer.drain()
    except DspexActorsError as exc:  # e.g. the service stopping under a request
        print(f"request failed: {exc}")
    finally:
        writer.close()


async def client(port: int, numbers: list[int]) -> list[int]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    answers = []
    for n in numbers:
        writer.write(f"{n}\n".encode())
        await writer.drain()
        answers.append(int(await reader.readline()))
    writer.close()
    await writer.wait_closed()
    return answers


async def impatient_client(port: int) -> str:
    """Asks for a 60 s computation and gives up after 0.2 s."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"9 60\n")
    await writer.drain()
    try:
        async with asyncio.timeout(0.2):
            await reader.readline()
        return "answered"
    except TimeoutError:
        return "gave up"
    finally:
        writer.close()


async def serve() -> int:
    async with lifespan() as pool:
        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        async with server:
            impatient = asyncio.create_task(impatient_client(port))
            while (await pool.astatus()).busy < 1:  # its slow request is with a worker
                await asyncio.sleep(0.005)  # sleep-ok: polling the pool's status
            started = time.perf_counter()
            results = await asyncio.gather(*(client(port, [c, c + 1, c + 2]) for c in range(20)))
            took = time.perf_counter() - started
            ok = all(r == [c * c, (c + 1) ** 2, (c + 2) ** 2] for c, r in enumerate(results))
            print(f"20 clients x 3 requests: {'all correct' if ok else 'WRONG'} in {took:.2f}s")
            print(f"the impatient client {await impatient}")
            # Its hanging up cancelled the handler's `acall`: the worker was killed, replaced.
            for _ in range(500):
                status = await pool.astatus()
                if status.workers_removed >= 1 and status.idle == 2:
                    break
                await asyncio.sleep(0.01)  # sleep-ok: polling the pool's status
            print(
                f"pool: {status.workers_started} workers started, {status.workers_removed} "
                f"removed (the slow request's), {status.idle} idle"
            )
            server.close()
        return 0 if ok else 1


def main() -> int:
    return asyncio.run(serve())


if __name__ == "__main__":
    raise SystemExit(main())
