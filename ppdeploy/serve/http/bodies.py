"""Request and response bodies: reading with a limit, content encodings (gzip/deflate) both ways, disconnects."""
from __future__ import annotations

import gzip
import zlib

from starlette.requests import Request

from ppdeploy.core.errors import InputError
from ppdeploy.serve.batcher import (
    ClientGone,
)
from ppdeploy.serve.errors import BodyTooLarge


async def read_body(request: Request, limit: int) -> bytes:
    return decode_body(await request.body(), request.headers.get("content-encoding", ""), limit)


async def receive_body(receive) -> bytes:
    """The whole request body from ASGI `receive` (one message is the common case: no join, no copy)."""
    chunks = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone("client disconnected while sending the request")
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def decode_body(body: bytes, content_encoding: str, limit: int) -> bytes:
    encoding = content_encoding.strip().lower()
    if encoding in ("", "identity"):
        return body
    if encoding not in ("gzip", "deflate"):
        raise InputError(f"unsupported Content-Encoding '{encoding}' (gzip, deflate or none)")
    # Decompress with a ceiling: a few KB of gzip can expand to gigabytes.
    d = zlib.decompressobj(wbits=31 if encoding == "gzip" else 15)
    try:
        out = d.decompress(body, limit + 1)
    except zlib.error as exc:
        raise InputError(f"request body is not valid {encoding} data: {exc}") from None
    if len(out) > limit or d.unconsumed_tail:
        raise BodyTooLarge(f"decompressed request body exceeds the {limit}-byte limit of this server")
    return out


async def until_disconnect(receive) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return


def accepted_encoding(accept: str | None) -> str | None:
    """gzip or deflate when the client's Accept-Encoding offers it (not with q=0), else None."""
    if not accept:
        return None
    offered = [p.split(";")[0].strip().lower() for p in accept.split(",") if "q=0" not in p.replace(" ", "")]
    return "gzip" if "gzip" in offered else "deflate" if "deflate" in offered else None


def compress(body: bytes, encoding: str) -> bytes:
    if encoding == "gzip":
        return gzip.compress(body, 1)
    return zlib.compress(body, 1)
