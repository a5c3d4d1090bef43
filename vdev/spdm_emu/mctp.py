"""Payloads of the spdm-emu MCTP transport (DSP0275 / DSP0276 message types).

The socket payload is one MCTP message body: a 1-byte message type (integrity-check bit
7 clear) followed by the message: 0x05 an SPDM message, 0x06 a DSP0277 secured record
(SessionID, a 2-byte sequence number, Length, cipher text with 1..32 random padding
bytes, MAC; spdm.secured_message.MCTP_TRANSPORT describes that binding).
"""

from __future__ import annotations

import enum

from construct import GreedyBytes, Int8ul, Struct

MctpMessage = Struct(
    "message_type" / Int8ul,
    "body" / GreedyBytes,
)


class MctpMessageType(enum.IntEnum):
    SPDM = 0x05
    SECURED_SPDM = 0x06


def encode(message_type: int, body: bytes) -> bytes:
    return bytes(MctpMessage.build({"message_type": message_type, "body": body}))


def decode(payload: bytes) -> tuple[int, bytes]:
    """Returns (message type, body); ValueError for an empty payload."""
    if not payload:
        raise ValueError("empty MCTP message")
    msg = MctpMessage.parse(payload)
    return int(msg.message_type), bytes(msg.body)
