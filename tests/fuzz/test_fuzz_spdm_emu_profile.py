"""spdm-emu frames and device profiles.

Frames: the decoder yields the same frames however the byte stream is split, raises
only FrameError, and the responder answers any frame (for each transport) with an
Outcome, never an exception; a correct GET_VERSION frame then still gets VERSION.

Profiles: a random TOML mapping (known keys with values of any TOML type, unknown
keys) or random TOML text either builds a DeviceProfile that a device can be built
from, or raises ProfileError, nothing else.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from tests.fuzz.budget import examples
from tests.helpers.spdm_emu_server import EmuHandle, start_server
from vdev.doe.data_object import DoeProtocolId, build_object
from vdev.endpoint.function import TeeIoEndpoint
from vdev.endpoint.tee_device import TeeDevice
from vdev.profiles import SECTIONS, DeviceProfile, ProfileError
from vdev.spdm_emu import mctp
from vdev.spdm_emu.connection import Action, SpdmEmuResponder
from vdev.spdm_emu.frame import (
    HEADER_SIZE,
    SERVER_HELLO,
    Command,
    Frame,
    FrameDecoder,
    FrameError,
    TransportType,
)

GET_VERSION = bytes([0x10, 0x84, 0, 0])

_frame = st.builds(
    Frame,
    st.one_of(st.sampled_from([int(c) for c in Command]), st.integers(0, 0xFFFF_FFFF)),
    st.one_of(st.sampled_from([int(t) for t in TransportType]), st.integers(0, 0xFFFF_FFFF)),
    st.binary(max_size=64),
)


@examples(200)
@given(st.lists(_frame, max_size=5), st.binary(max_size=HEADER_SIZE - 1), st.data())
def test_frame_decoder_split_anywhere(frames: list[Frame], tail: bytes,
                                      data: st.DataObject) -> None:
    stream = b"".join(f.encode() for f in frames) + tail
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=6)))
    dec = FrameDecoder()
    out: list[Frame] = []
    start = 0
    for cut in [*cuts, len(stream)]:
        out += dec.feed(stream[start:cut])
        start = cut
    assert out[: len(frames)] == frames
    assert dec.pending == len(stream) - sum(HEADER_SIZE + len(f.payload) for f in out)


@examples(200)
@given(st.binary(max_size=64), st.integers(HEADER_SIZE, 64))
def test_frame_decoder_raises_only_frame_error(raw: bytes, max_payload: int) -> None:
    with contextlib.suppress(FrameError):
        FrameDecoder(max_payload).feed(raw)


@pytest.fixture(scope="module")
def device(tmp_path_factory: pytest.TempPathFactory) -> TeeDevice:
    return TeeDevice(state_dir=Path(tmp_path_factory.mktemp("fuzz-emu")))


def _correct(transport: TransportType) -> Frame:
    if transport == TransportType.PCI_DOE:
        payload = build_object(DoeProtocolId(1, 1), GET_VERSION)
    elif transport == TransportType.MCTP:
        payload = mctp.encode(mctp.MctpMessageType.SPDM, GET_VERSION)
    else:
        payload = GET_VERSION
    return Frame(Command.NORMAL, int(transport), payload)


_payload = st.one_of(
    st.binary(max_size=80),
    st.binary(max_size=40).map(lambda b: build_object(DoeProtocolId(1, 1), GET_VERSION + b)),
    st.binary(max_size=40).map(lambda b: build_object(DoeProtocolId(1, 2), b)),
    st.tuples(st.integers(0, 255), st.binary(max_size=40)).map(lambda t: bytes([t[0]]) + t[1]),
)


@examples(150)
@given(st.sampled_from([TransportType.PCI_DOE, TransportType.MCTP, TransportType.NONE]),
       st.lists(st.tuples(st.sampled_from([int(Command.NORMAL)] * 3 + [int(c) for c in Command]
                                          + [0, 7]), _payload, st.booleans()), max_size=5))
def test_responder_answers_any_frame(device: TeeDevice, transport: TransportType,
                                     frames: list[tuple[int, bytes, bool]]) -> None:
    rsp = SpdmEmuResponder(device, transport)
    for command, payload, wrong_transport in frames:
        tt = int(transport) ^ 1 if wrong_transport else int(transport)
        outcome = rsp.handle(Frame(command, tt, payload))
        if wrong_transport:
            assert outcome.action == Action.DROP
        elif outcome.reply is not None:
            assert outcome.reply.transport_type == transport
    reply = rsp.handle(_correct(transport)).reply
    assert reply is not None and GET_VERSION[0:1] + b"\x04" in reply.payload


# ---- device profiles -----------------------------------------------------------------

_FIELDS = {f: v for f, v in vars(DeviceProfile()).items()}
_toml_scalar = st.one_of(
    st.integers(-(1 << 63), (1 << 63) - 1), st.sampled_from([0, 1, 3, 0x4000, 0x10000, 1 << 32]),
    st.booleans(), st.text(max_size=12),
    st.sampled_from(["1.2", "1.3,1.2", "ecdsa-p256", "ab" * 32]),
    st.floats(allow_nan=True),
)
_toml_value = st.one_of(_toml_scalar, st.lists(_toml_scalar, max_size=3),
                        st.dictionaries(st.text(max_size=4), _toml_scalar, max_size=2))


@st.composite
def _mapping(draw: st.DrawFn) -> dict[str, Any]:
    keys = draw(st.lists(st.sampled_from(sorted(_FIELDS)), max_size=6, unique=True))
    out: dict[str, Any] = {}
    for k in keys:
        out[k] = draw(st.one_of(_toml_value, st.just(_FIELDS[k])))
    if draw(st.integers(0, 9)) == 0:
        out[draw(st.text(min_size=1, max_size=8))] = draw(_toml_scalar)
    if draw(st.booleans()):  # group keys into their (or a wrong) [section]
        for k in list(out):
            section = draw(st.sampled_from(sorted(SECTIONS)))
            if k in SECTIONS[section] or draw(st.integers(0, 4)) == 0:
                out.setdefault(section, {})[k] = out.pop(k)
    return out


def _built_or_profile_error(build: Any) -> DeviceProfile | None:
    try:
        profile = build()
    except ProfileError:
        return None
    assert isinstance(profile, DeviceProfile)
    TeeIoEndpoint(profile)  # a profile that validates also builds a device
    return profile


@examples(300)
@given(_mapping())
def test_profile_from_mapping(mapping: dict[str, Any]) -> None:
    _built_or_profile_error(lambda: DeviceProfile.from_mapping(mapping))


def _as_toml(m: dict[str, Any]) -> str:
    """Rough TOML (Python reprs: some lines are not TOML, which is the point)."""
    top = [f"{k} = {v!r}" for k, v in m.items() if not isinstance(v, dict)]
    sections = [f"[{k}]\n" + "\n".join(f"{ik} = {iv!r}" for ik, iv in v.items())
                for k, v in m.items() if isinstance(v, dict)]
    return "\n".join(top + sections).replace("True", "true").replace("False", "false")


@examples(200)
@given(st.one_of(
    st.text(max_size=60),
    _mapping().map(_as_toml),
    st.sampled_from(["vendor_id = 0x1234\n", "bar0_size = 0x4000\nmsix_vectors = 2048\n",
                     "[x]\n", "vendor_id = \n", "tee_io = 1\n", "vendor_id = 0x1234\n" * 2]),
))
def test_profile_from_toml_text(text: str) -> None:
    _built_or_profile_error(lambda: DeviceProfile.from_toml_string(text))


def test_toml_syntax_error_is_a_profile_error() -> None:
    """Regression: from_toml_string let tomllib.TOMLDecodeError escape (from_toml did not)."""
    with pytest.raises(ProfileError):
        DeviceProfile.from_toml_string("vendor_id = ")
    assert not issubclass(ProfileError, tomllib.TOMLDecodeError)


# ---- a live spdm-emu server ------------------------------------------------------------


@pytest.fixture(scope="module")
def emu(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[EmuHandle, list[str]]]:
    errors: list[str] = []

    class Errors(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if record.levelno >= logging.ERROR and "exceeds QEMU" not in record.getMessage():
                errors.append(record.getMessage())

    handler = Errors()
    logging.getLogger("vdev").addHandler(handler)
    handle, shutdown = start_server(tmp_path_factory.mktemp("emu-fuzz"), TransportType.PCI_DOE)
    try:
        yield handle, errors
    finally:
        shutdown()
        logging.getLogger("vdev").removeHandler(handler)


def _stops_the_server(stream: bytes) -> bool:
    try:
        frames = FrameDecoder().feed(stream)
    except FrameError:
        return False
    return any(f.command == Command.SHUTDOWN and f.transport_type == TransportType.PCI_DOE
               for f in frames)


@examples(100)
@given(st.one_of(
    st.binary(max_size=200),
    st.lists(st.builds(Frame, st.sampled_from([int(c) for c in Command if c != Command.SHUTDOWN]
                                               + [0, 2]),
                       st.sampled_from([int(TransportType.PCI_DOE)] * 4 + [0, 1, 3]),
                       _payload), max_size=4).map(lambda fs: b"".join(f.encode() for f in fs)),
))
def test_live_server_survives_any_stream(emu: tuple[EmuHandle, list[str]], stream: bytes) -> None:
    handle, errors = emu
    assume(not _stops_the_server(stream))
    errors.clear()
    with socket.create_connection(("127.0.0.1", handle.port), timeout=2) as s:
        s.sendall(stream)
        s.shutdown(socket.SHUT_WR)
        s.settimeout(2)
        with contextlib.suppress(OSError):
            while s.recv(65536):
                pass
    assert handle.thread.is_alive()
    with handle.client() as c:
        assert c.hello() == SERVER_HELLO
        assert c.doe_exchange(1, GET_VERSION)[:2] == bytes([0x10, 0x04])
    assert not errors, errors
