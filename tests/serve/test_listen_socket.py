"""The listening socket ppdeploy serve binds itself (ppdeploy.serve.runtime.bind_socket)."""
import asyncio
import socket

from ppdeploy.serve.runtime import bind_socket


def test_accepted_connections_get_tcp_nodelay_on_the_stdlib_event_loop():
    """asyncio's own loop sets TCP_NODELAY only on sockets created with proto IPPROTO_TCP; without it every response
    sent as headers + body waited for the client's delayed ACK (44 ms per request when uvloop is missing)."""
    sock = bind_socket("127.0.0.1", 0)
    sock.listen()

    async def main() -> int:
        got: asyncio.Future = asyncio.get_running_loop().create_future()

        async def handle(reader, writer):
            got.set_result(writer.get_extra_info("socket").getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
            writer.close()

        server = await asyncio.start_server(handle, sock=sock)
        _, w = await asyncio.open_connection(*sock.getsockname()[:2])
        value = await asyncio.wait_for(got, 10)
        w.close()
        server.close()
        return value

    loop = asyncio.SelectorEventLoop()  # the stdlib loop, whatever event-loop policy is installed
    try:
        assert loop.run_until_complete(main()) != 0
    finally:
        loop.close()
        sock.close()
