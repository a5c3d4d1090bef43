"""DSP0277 secured-message records, as carried in DOE type-2 objects.

Record layout (DSP0277 1.x 'Secured Message format'; libspdm spdm_secured_message.h and
libspdm_secmes_encode_decode.c):

    encrypt+authenticate:
        SessionID u32 || SeqNum (transport-defined; 0 bytes for PCI DOE) || Length u16 ||
        AEAD( ApplicationDataLength u16 || application data || random padding ) || MAC
    authenticate only:
        SessionID u32 || SeqNum || Length u16 || application data || MAC

Length counts everything after it (cipher text or application data, plus the MAC). AAD is
the record header from SessionID through Length (plus the clear application data for
MAC-only sessions). For PCI DOE the SeqNum field and the random padding are both absent
(PCIe 6.x CMA/SPDM secured messages / libspdm_doe_common.c: sequence number size 0, max
random count 0), and the application data is the SPDM message itself with no inner
transport header (MCTP would carry a 0x05 message-type byte here).

Per-message nonce: IV XOR the 64-bit sequence number laid out little-endian over IV bytes
0..7 (DSP0277 1.2 'AEAD' nonce rule; libspdm generate_iv, LIBSPDM_DATA_SESSION_SEQ_NUM_ENC_LITTLE).
The optional big-endian layout (right-aligned, as in TLS 1.3) exists for DSP0277 1.0/1.1
interop only.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from construct import ConstructError, Struct, this

from spdm import crypto
from spdm.algorithms import AEAD_TAG_SIZE
from spdm.compiled import Bytes, GreedyBytes, Int16ul, Int32ul, compiled
from spdm.errors import ForeignPayload, RecordError

#: The record header, which is also the AAD (DSP0277 "Secured Message format"); the
#: SeqNum field is as long as the transport binding says (0 bytes for PCI DOE).
RecordHeader = Struct(
    "session_id" / Int32ul,
    "seq" / Bytes(this._params.seq_num_size),
    "length" / Int16ul,
)
#: Every record starts with its SessionID: enough to find the session's keys.
RecordSessionId = Struct("session_id" / Int32ul)
#: What the AEAD encrypts: ApplicationDataLength u16, the application data, then random
#: padding (none for PCI DOE; up to the binding's maximum for MCTP).
CipherText = Struct(
    "length" / Int16ul,
    "data" / Bytes(this.length),
    "padding" / GreedyBytes,
)

Random = Callable[[int], bytes]


@dataclass
class TransportParams:
    """Transport binding of DSP0277: PCI DOE by default."""

    seq_num_size: int = 0
    max_random: int = 0
    seq_little_endian: bool = True
    # Bytes that precede the SPDM message inside the protected application data.
    # DSP0275 (SPDM over MCTP): the secured payload is itself an MCTP message, so it
    # starts with the MCTP message type 0x05 (SPDM); libspdm's MCTP transport does the
    # same.  DOE (DSP0277 PCI binding) carries the bare SPDM message.
    inner_header: bytes = b""


DOE_TRANSPORT = TransportParams()
MCTP_TRANSPORT = TransportParams(seq_num_size=2, max_random=32, inner_header=b"\x05")

MAX_SEQUENCE_NUMBER = 0xFFFF_FFFF_FFFF_FFFF


@dataclass(repr=False)
class RecordProtection:
    """Owns the key, IV and the sequence-number nonce rule for one direction."""

    aead: int
    key: bytes
    iv: bytes
    seq: int = 0
    little_endian: bool = True
    # Set on decrypt/encrypt failures so callers can inspect; never holds secrets.
    failures: int = field(default=0)

    def __repr__(self) -> str:
        return f"RecordProtection(aead=0x{self.aead:x}, seq={self.seq})"

    def nonce(self, seq: int) -> bytes:
        iv = bytearray(self.iv)
        if self.little_endian:
            for i, b in enumerate(seq.to_bytes(8, "little")):
                iv[i] ^= b
        else:
            for i, b in enumerate(seq.to_bytes(8, "big")):
                iv[len(iv) - 8 + i] ^= b
        return bytes(iv)

    def next_seq(self) -> int:
        if self.seq >= MAX_SEQUENCE_NUMBER:
            # DSP0277: the session must be terminated (or keys updated) before wrap.
            raise RecordError("sequence number exhausted")
        seq = self.seq
        self.seq += 1
        return seq

    def rekey(self, key: bytes, iv: bytes) -> None:
        """New keys restart the sequence number at 0 (DSP0274 KEY_UPDATE)."""
        self.key = key
        self.iv = iv
        self.seq = 0


def encode_record(
    prot: RecordProtection,
    session_id: int,
    message: bytes,
    *,
    encrypt: bool = True,
    transport: TransportParams = DOE_TRANSPORT,
    random: Random | None = None,
) -> bytes:
    """`random` draws the padding where the binding pads (MCTP): the codec has no
    randomness of its own, so a seeded engine reproduces its records byte for byte."""
    if encrypt and transport.max_random and random is None:
        raise ValueError("this transport binding pads records with random bytes: pass random")
    seq = prot.next_seq()
    seq_bytes = seq.to_bytes(8, "little")[: transport.seq_num_size]
    message = transport.inner_header + message
    header = compiled(RecordHeader)
    params = {"seq_num_size": transport.seq_num_size}
    if encrypt:
        pad = b""
        if transport.max_random:
            assert random is not None
            pad = random(1 + random(1)[0] % transport.max_random)
        plaintext: bytes = compiled(CipherText).build(
            {"length": len(message), "data": message, "padding": pad})
        hdr: bytes = header.build({"session_id": session_id, "seq": seq_bytes,
                                   "length": len(plaintext) + AEAD_TAG_SIZE}, **params)
        return hdr + crypto.aead_encrypt(prot.aead, prot.key, prot.nonce(seq), plaintext, hdr)
    hdr = header.build({"session_id": session_id, "seq": seq_bytes,
                        "length": len(message) + AEAD_TAG_SIZE}, **params)
    tag = crypto.aead_encrypt(prot.aead, prot.key, prot.nonce(seq), b"", hdr + message)
    return hdr + message + tag


def peek_session_id(record: bytes) -> int:
    if len(record) < RecordSessionId.sizeof():
        raise RecordError("record shorter than its SessionID")
    sid: int = compiled(RecordSessionId).parse(record[: RecordSessionId.sizeof()]).session_id
    return sid


def decode_record(
    prot: RecordProtection,
    session_id: int,
    record: bytes,
    *,
    encrypt: bool = True,
    transport: TransportParams = DOE_TRANSPORT,
) -> bytes:
    """Authenticate and decrypt; advances the sequence number only on success.

    A replayed or reordered record is decrypted with the next expected sequence number and
    therefore fails authentication (DOE carries no explicit sequence number).
    """
    hsize = 4 + transport.seq_num_size + 2
    if len(record) < hsize + AEAD_TAG_SIZE:
        raise RecordError("record too short")
    hdr = compiled(RecordHeader).parse(record[:hsize], seq_num_size=transport.seq_num_size)
    if hdr.session_id != session_id:
        raise RecordError("wrong session id")
    body = record[hsize:]
    # DOE objects are DWORD padded, so trailing zero bytes beyond Length are tolerated.
    if hdr.length > len(body) or hdr.length < AEAD_TAG_SIZE:
        raise RecordError("record length field mismatch")
    extra = body[hdr.length :]
    if any(extra) or len(extra) > 3:
        raise RecordError("record length field mismatch")
    body = body[: hdr.length]
    seq = prot.seq
    if transport.seq_num_size and hdr.seq != seq.to_bytes(8, "little")[: transport.seq_num_size]:
        raise RecordError("unexpected sequence number")
    aad = record[:hsize]
    try:
        if encrypt:
            plaintext = crypto.aead_decrypt(prot.aead, prot.key, prot.nonce(seq), body, aad)
        else:
            msg, tag = body[:-AEAD_TAG_SIZE], body[-AEAD_TAG_SIZE:]
            crypto.aead_decrypt(prot.aead, prot.key, prot.nonce(seq), tag, aad + msg)
            plaintext = msg
    except crypto.CryptoError as exc:
        prot.failures += 1
        raise RecordError("record authentication failed") from exc
    prot.next_seq()
    if encrypt:
        if len(plaintext) < 2:
            raise RecordError("missing ApplicationDataLength")
        try:
            plaintext = compiled(CipherText).parse(plaintext).data
        except ConstructError:
            raise RecordError("ApplicationDataLength exceeds record") from None
    inner = transport.inner_header
    if inner:
        if not plaintext.startswith(inner):
            # Authenticated (the sequence number is consumed) but another protocol.
            raise ForeignPayload(plaintext[0] if plaintext else None)
        plaintext = plaintext[len(inner) :]
    return plaintext
