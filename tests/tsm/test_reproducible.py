"""Randomness and time are injected: two runs from the same seed reproduce a whole
session byte for byte.

The device (SPDM responder, IDE_KM and TDISP responders) and the TSM model (SPDM
requester, IDE_KM/TDISP requesters) each draw from their own seeded source; every DOE
exchange of connect (VERSION .. KEY_EXCHANGE / FINISH, IDE_KM key programming in the
secured session), LOCK, REPORT, START and disconnect is recorded.  Nothing on the wire
may come from anywhere else: not from os.urandom, not from the clock, not from
OpenSSL's own nonces (ECDSA signs with RFC 6979 nonces).
"""

from __future__ import annotations

import random
from collections.abc import Callable

import pytest

from spdm.algorithms import Kem
from spdm.identity import DeviceIdentity
from spdm.responder import AlgorithmPriorities
from spdm.secured_message import DOE_TRANSPORT, MCTP_TRANSPORT, TransportParams
from tests.helpers.spdm_harness import identity_for
from tests.helpers.tsm_rig import Clock, make_device, make_tsm, ok

Exchange = tuple[int, bytes, bytes]


def seeded(seed: int) -> Callable[[int], bytes]:
    rng = random.Random(seed)
    return rng.randbytes


def run_session(seed: int, transport: TransportParams, ident: DeviceIdentity | None = None,
                algorithms: AlgorithmPriorities | None = None) -> list[Exchange]:
    extra = {"algorithms": algorithms} if algorithms is not None else {}
    device = make_device(ident, random=seeded(2 * seed), transport=transport, **extra)
    tsm = make_tsm(ident, random=seeded(2 * seed + 1), clock=Clock(), transport=transport)
    wire: list[Exchange] = []
    exchange = device.doe_exchange

    def recorded(doe_type: int, payload: bytes) -> bytes:
        reply = exchange(doe_type, payload)
        wire.append((doe_type, payload, reply))
        return reply

    device.doe_exchange = recorded  # type: ignore[method-assign]
    ok(tsm.connect(), device)
    ok(tsm.lock(0), device)
    ok(tsm.report(0), device)
    ok(tsm.start(0), device)
    assert device.tdi_state == "RUN"
    ok(tsm.disconnect(), device)
    return wire


@pytest.mark.parametrize("transport", [DOE_TRANSPORT, MCTP_TRANSPORT], ids=["doe", "mctp"])
def test_same_seed_same_bytes(transport: TransportParams) -> None:
    first = run_session(7, transport)
    second = run_session(7, transport)
    secured = [e for e in first if e[0] == 2]
    assert len(secured) > 10  # FINISH, IDE_KM key programming and TDISP went secured
    assert first == second


def test_another_seed_other_bytes() -> None:
    """The sources are really used: the nonces, DHE shares and keys change with them."""
    first, other = run_session(7, DOE_TRANSPORT), run_session(8, DOE_TRANSPORT)
    assert [e[:1] for e in first] == [e[:1] for e in other]
    assert first != other
    key_exchange = next(i for i, e in enumerate(first) if e[1][1] == 0xE4)
    assert first[key_exchange][1] != other[key_exchange][1]  # random + DHE share


def test_pqc_suite_reproduces_what_can_be_injected() -> None:
    """`cryptography` takes no injected randomness for ML-DSA signing (hedged) or ML-KEM
    encapsulation (docs/protocols.md §12.3).  With ML-DSA-44 + ML-KEM-768 everything the
    TSM sends up to KEY_EXCHANGE -- its ML-KEM encapsulation key, derived from a seed it
    draws from its source, included -- still reproduces; the device's signed MEASUREMENTS
    and KEY_EXCHANGE_RSP (signature, ciphertext) do not."""
    ident = identity_for("mldsa-44")
    prio = AlgorithmPriorities(kem=(Kem.ML_KEM_768,), pqc_first=True)
    first = run_session(7, DOE_TRANSPORT, ident, prio)
    second = run_session(7, DOE_TRANSPORT, ident, prio)
    key_exchange = next(i for i, e in enumerate(first) if e[1][1] == 0xE4)
    assert [e[:2] for e in first[: key_exchange + 1]] == \
        [e[:2] for e in second[: key_exchange + 1]]
    assert len(first[key_exchange][1]) > 40 + 1184  # the encapsulation key went out
    assert first[key_exchange][2] != second[key_exchange][2]  # hedged signature, new ct
    measurements = next(i for i, e in enumerate(first) if e[1][1] == 0xE0)
    assert first[measurements][2] != second[measurements][2]
