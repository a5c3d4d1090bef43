"""Transcript bookkeeping (DSP0274 1.2 'Transcript and transcript hash calculation').

VCA   = GET_VERSION || VERSION || GET_CAPABILITIES || CAPABILITIES || NEGOTIATE_ALGORITHMS ||
        ALGORITHMS                                        (message A)
B     = GET_DIGESTS/DIGESTS and GET_CERTIFICATE/CERTIFICATE exchanges
C     = CHALLENGE || CHALLENGE_AUTH without the signature
M1/M2 = VCA || B || C                                     (CHALLENGE_AUTH signature)
L1/L2 = [VCA if 1.2+] || GET_MEASUREMENTS/MEASUREMENTS ... (last one without signature)
K     = KEY_EXCHANGE || KEY_EXCHANGE_RSP ...
D     = the last DIGESTS response outside a session, on a 1.3 multi-key connection
TH    = VCA || [D] || Hash(CertChain) || K [|| Hash(ReqCertChain)] || F
        (D in TH of KEY_EXCHANGE sessions when MULTI_KEY_CONN_RSP: DSP0274 1.3)
"""

from __future__ import annotations

from dataclasses import dataclass, field

from spdm.codes import Req


@dataclass
class ConnectionTranscript:
    vca: bytearray = field(default_factory=bytearray)
    b: bytearray = field(default_factory=bytearray)
    c: bytearray = field(default_factory=bytearray)
    # L1/L2 outside a session; sessions keep their own.
    m: bytearray = field(default_factory=bytearray)
    # The last DIGESTS response of a multi-key connection (message D).
    d: bytearray = field(default_factory=bytearray)

    def reset(self) -> None:
        """GET_VERSION restarts the connection (DSP0274 GET_VERSION)."""
        self.vca.clear()
        self.reset_auth()
        self.m.clear()
        self.d.clear()

    def th_prefix(self, multi_key: bool) -> bytes:
        """What a KEY_EXCHANGE session's TH starts with: VCA, and D on a multi-key
        connection."""
        return bytes(self.vca + self.d) if multi_key else bytes(self.vca)

    def reset_auth(self) -> None:
        self.b.clear()
        self.c.clear()

    def m1m2(self) -> bytes:
        return bytes(self.vca + self.b + self.c)

    def l1l2(self, version: int, session_m: bytearray | None = None) -> bytes:
        m = self.m if session_m is None else session_m
        if version >= 0x12:
            return bytes(self.vca + m)
        return bytes(m)


@dataclass
class SessionTranscript:
    """TH for one session: VCA || H(Ct) || message_k || [H(ReqCt)] || message_f."""

    vca: bytes
    cert_chain_hash: bytes  # empty for PSK sessions
    k: bytearray = field(default_factory=bytearray)
    req_cert_chain_hash: bytes = b""
    f: bytearray = field(default_factory=bytearray)
    m: bytearray = field(default_factory=bytearray)  # per-session L1/L2

    def th(self) -> bytes:
        return bytes(self.vca + self.cert_chain_hash + self.k + self.req_cert_chain_hash + self.f)

    def th_k(self) -> bytes:
        return bytes(self.vca + self.cert_chain_hash + self.k)


# Requests that, before a CHALLENGE has completed, discard a pending B/C (M1/M2) run, as
# libspdm_reset_message_buffer_via_request_code does ("If the Requester issued ... and
# skipped CHALLENGE completion, M1 and M2 are reset to null").
_RESETS_M1M2 = frozenset(
    {
        Req.KEY_EXCHANGE,
        Req.GET_MEASUREMENTS,
        Req.FINISH,
        Req.PSK_EXCHANGE,
        Req.PSK_FINISH,
        Req.KEY_UPDATE,
        Req.HEARTBEAT,
        Req.GET_ENCAPSULATED_REQUEST,
        Req.DELIVER_ENCAPSULATED_RESPONSE,
        Req.END_SESSION,
        Req.GET_CSR,
        Req.SET_CERTIFICATE,
        Req.GET_KEY_PAIR_INFO,
        Req.GET_MEASUREMENT_EXTENSION_LOG,
        Req.GET_ENDPOINT_INFO,
    }
)
# Transport helpers that never end a run.
_NEUTRAL = frozenset({Req.CHUNK_SEND, Req.CHUNK_GET, Req.RESPOND_IF_READY})


def reset_for_request(
    conn: ConnectionTranscript, session_m: bytearray | None, code: int, authenticated: bool
) -> None:
    """Apply the transcript resets a request implies, identically on both sides.

    Any request other than GET_MEASUREMENTS ends an L1/L2 run (of its session, or of the
    connection outside sessions); GET_DIGESTS starts a new B; the requests above drop B and
    C unless a CHALLENGE already completed.
    """
    if code in _NEUTRAL:
        return
    if code != Req.GET_MEASUREMENTS:
        (session_m if session_m is not None else conn.m).clear()
    if code == Req.GET_DIGESTS:
        conn.b.clear()
    elif code in _RESETS_M1M2 and not authenticated:
        conn.reset_auth()
