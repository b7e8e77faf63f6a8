"""Content-Encoding (gzip, deflate) for request and response bodies."""

from __future__ import annotations

import zlib

from shipyard.protocol.errors import InvalidInput, PayloadTooLarge

#: zlib's wbits for each encoding (gzip wraps deflate in a gzip header).
_WBITS = {"gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}


def decompress(body: bytes, encoding: str, limit: int) -> bytes:
    """Undo a request's Content-Encoding, refusing output over ``limit`` bytes (zip bombs)."""
    encoding = encoding.strip().lower()
    if encoding in ("", "identity"):
        return body
    if encoding not in _WBITS:
        raise InvalidInput(f"Content-Encoding '{encoding}' is not supported; use gzip, deflate or identity")
    inflater = zlib.decompressobj(_WBITS[encoding])
    try:
        data = inflater.decompress(body, limit + 1)
    except zlib.error as exc:
        raise InvalidInput(f"body is not valid {encoding} data: {exc}") from None
    if len(data) > limit or inflater.unconsumed_tail:
        raise PayloadTooLarge(f"decompressed body is over this server's limit of {limit} bytes")
    return data


def pick_encoding(accept_encoding: str) -> str | None:
    """The response encoding to use for an Accept-Encoding header, or None for identity."""
    offered = {part.split(";")[0].strip().lower() for part in accept_encoding.split(",")}
    for encoding in ("gzip", "deflate"):
        if encoding in offered:
            return encoding
    return None


def compress(body: bytes, encoding: str) -> bytes:
    compressor = zlib.compressobj(6, zlib.DEFLATED, _WBITS[encoding])
    return compressor.compress(body) + compressor.flush()
