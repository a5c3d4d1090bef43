"""The sans-IO spdm-emu responder, without sockets."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from vdev.spdm_emu import mctp
from vdev.spdm_emu.connection import CONTROL_COMMANDS, Action, SpdmEmuResponder
from vdev.spdm_emu.frame import SERVER_HELLO, Command, Frame, TransportType


@dataclass
class EchoDevice:
    """Answers type 1 with the message reversed and type 2 with a type-1 'error'."""

    seen: list[tuple[int, bytes]] = field(default_factory=list)

    def spdm_message(self, doe_type: int, payload: bytes) -> tuple[int, bytes]:
        self.seen.append((doe_type, payload))
        return (1, b"err") if doe_type == 2 else (1, payload[::-1])

    def doe_object(self, obj: bytes) -> bytes | None:
        self.seen.append((0, obj))
        return None if obj == b"bad" else obj


def test_control_command_table() -> None:
    rsp = SpdmEmuResponder(EchoDevice(), TransportType.PCI_DOE)
    for command, (reply, payload, action) in CONTROL_COMMANDS.items():
        out = rsp.handle(Frame(command, 2))
        assert out.action is action
        assert out.reply == Frame(reply, 2, payload)
    assert CONTROL_COMMANDS[Command.TEST][1] == SERVER_HELLO


@pytest.mark.parametrize("command", [0, 2, 3, 4, 0x8001, 0x8002, 0xFFFF, 0x12345678])
def test_everything_else_is_unknown(command: int) -> None:
    out = SpdmEmuResponder(EchoDevice(), TransportType.PCI_DOE).handle(Frame(command, 2, b"x"))
    assert out == SpdmEmuResponder(EchoDevice(), TransportType.PCI_DOE).handle(
        Frame(0xFFFF, 2))
    assert out.reply is not None and out.reply.command == Command.UNKNOWN
    assert out.action is Action.KEEP


def test_transport_mismatch_drops_without_reply() -> None:
    rsp = SpdmEmuResponder(EchoDevice(), TransportType.MCTP)
    assert rsp.handle(Frame(Command.TEST, TransportType.PCI_DOE)).action is Action.DROP
    assert rsp.handle(Frame(Command.SHUTDOWN, TransportType.NONE)).reply is None


def test_pci_doe_objects_go_to_the_device_whole() -> None:
    dev = EchoDevice()
    rsp = SpdmEmuResponder(dev, TransportType.PCI_DOE)
    assert rsp.handle(Frame(1, 2, b"obj")).reply == Frame(1, 2, b"obj")
    assert rsp.handle(Frame(1, 2, b"bad")).reply == Frame(1, 2, b"")
    assert dev.seen == [(0, b"obj"), (0, b"bad")]


def test_mctp_message_types() -> None:
    dev = EchoDevice()
    rsp = SpdmEmuResponder(dev, TransportType.MCTP)
    assert rsp.handle(Frame(1, 1, b"\x05abc")).reply == Frame(1, 1, b"\x05cba")
    # A secured request answered in the clear (e.g. DecryptError) goes back as type 0x05.
    assert rsp.handle(Frame(1, 1, b"\x06rec")).reply == Frame(1, 1, mctp.encode(5, b"err"))
    assert rsp.handle(Frame(1, 1, b"\x7fzz")).reply == Frame(1, 1, b"")
    assert rsp.handle(Frame(1, 1, b"")).reply == Frame(1, 1, b"")
    assert dev.seen == [(1, b"abc"), (2, b"rec")]


def test_none_transport_is_plain_spdm() -> None:
    dev = EchoDevice()
    rsp = SpdmEmuResponder(dev, TransportType.NONE)
    assert rsp.handle(Frame(1, 0, b"\x10\x84")).reply == Frame(1, 0, b"\x84\x10")
