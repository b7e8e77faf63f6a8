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
    if not inflater.eof:
        raise InvalidInput(f"{encoding} body is truncated (the compressed stream does not end)")
    if inflater.unused_data:
        raise InvalidInput(f"{encoding} body has {len(inflater.unused_data)} bytes after the compressed stream")
    return data


def _quality(parameters: list[str]) -> float:
    for parameter in parameters:
        key, _, value = parameter.partition("=")
        if key.strip().lower() == "q":
            try:
                return float(value)
            except ValueError:
                return 0.0
    return 1.0


def pick_encoding(accept_encoding: str) -> str | None:
    """The response encoding for an Accept-Encoding header (q-values honoured), or None for identity."""
    weights: dict[str, float] = {}
    for part in accept_encoding.split(","):
        coding, *parameters = part.split(";")
        if coding.strip():
            weights[coding.strip().lower()] = _quality(parameters)
    best = max(("gzip", "deflate"), key=lambda coding: weights.get(coding, weights.get("*", 0.0)))
    return best if weights.get(best, weights.get("*", 0.0)) > 0 else None


def compress(body: bytes, encoding: str) -> bytes:
    compressor = zlib.compressobj(6, zlib.DEFLATED, _WBITS[encoding])
    return compressor.compress(body) + compressor.flush()
