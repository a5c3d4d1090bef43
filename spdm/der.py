"""Tiny DER helpers: split concatenated certificates and encode the few structures we emit."""

from __future__ import annotations


def _read_len(data: bytes, pos: int) -> tuple[int, int]:
    if pos >= len(data):
        raise ValueError("truncated DER length")
    first = data[pos]
    pos += 1
    if first < 0x80:
        return first, pos
    n = first & 0x7F
    if n == 0 or n > 4 or pos + n > len(data):
        raise ValueError("unsupported DER length")
    return int.from_bytes(data[pos : pos + n], "big"), pos + n


def split_der_sequence(data: bytes) -> list[bytes]:
    """Split a concatenation of DER SEQUENCEs (as in an SPDM certificate chain)."""
    out: list[bytes] = []
    pos = 0
    while pos < len(data):
        if data[pos] != 0x30:
            raise ValueError("expected a DER SEQUENCE")
        length, body = _read_len(data, pos + 1)
        end = body + length
        if end > len(data):
            raise ValueError("truncated DER element")
        out.append(data[pos:end])
        pos = end
    return out


def encode_len(n: int) -> bytes:
    if n < 0x80:
        return bytes([n])
    b = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(b)]) + b


def tlv(tag: int, value: bytes) -> bytes:
    return bytes([tag]) + encode_len(len(value)) + value


def oid(dotted: str) -> bytes:
    parts = [int(p) for p in dotted.split(".")]
    body = bytearray([40 * parts[0] + parts[1]])
    for p in parts[2:]:
        chunk = [p & 0x7F]
        p >>= 7
        while p:
            chunk.append(0x80 | (p & 0x7F))
            p >>= 7
        body += bytes(reversed(chunk))
    return tlv(0x06, bytes(body))


def sequence(*items: bytes) -> bytes:
    return tlv(0x30, b"".join(items))


def utf8_string(s: str) -> bytes:
    return tlv(0x0C, s.encode())


def read_len(data: bytes, pos: int) -> tuple[int, int]:
    """(length, position of the content) of the DER length field at `pos`."""
    return _read_len(data, pos)


def sequence_body(data: bytes) -> bytes:
    """The content of the DER SEQUENCE that `data` is exactly."""
    if not data or data[0] != 0x30:
        raise ValueError("expected a DER SEQUENCE")
    length, body = _read_len(data, 1)
    if body + length != len(data):
        raise ValueError("DER SEQUENCE length does not match")
    return data[body:]


def decode_oid(body: bytes) -> str:
    """Dotted form of an OBJECT IDENTIFIER's content octets."""
    if not body or body[-1] & 0x80:
        raise ValueError("malformed OBJECT IDENTIFIER")
    parts: list[int] = []
    value = 0
    for byte in body:
        value = (value << 7) | (byte & 0x7F)
        if not byte & 0x80:
            parts.append(value)
            value = 0
    first = parts[0]
    head = [min(first // 40, 2), first - 40 * min(first // 40, 2)]
    return ".".join(str(p) for p in head + parts[1:])
