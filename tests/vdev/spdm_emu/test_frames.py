"""spdm-emu socket framing: exact bytes, partial reads, commands and connection handling."""

from __future__ import annotations

import socket
import time

import pytest

from tests.helpers.spdm_emu_server import EmuHandle
from vdev.spdm_emu.frame import (
    CLIENT_HELLO,
    SERVER_HELLO,
    Command,
    Frame,
    FrameDecoder,
    FrameError,
    TransportType,
)

# docs/protocols.md §9.2; the bytes are the traces quoted in spdm-emu issue #279.
TEST_FRAME = bytes.fromhex("0000dead 00000002 0000000e") + CLIENT_HELLO
SERVER_HELLO_FRAME = bytes.fromhex("0000dead 00000002 0000000e") + SERVER_HELLO
DISCOVERY_0 = bytes.fromhex("01000000 03000000 00000000")
DISCOVERY_0_REPLY = bytes.fromhex("01000000 03000000 01000001")


def raw_socket(emu: EmuHandle) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", emu.port), timeout=5)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def read_exactly(sock: socket.socket, n: int) -> bytes:
    out = b""
    while len(out) < n:
        chunk = sock.recv(n - len(out))
        if not chunk:
            raise ConnectionError(f"closed after {len(out)} of {n} bytes")
        out += chunk
    return out


def test_frame_codec_matches_the_reference_trace() -> None:
    assert Frame(Command.TEST, TransportType.PCI_DOE, CLIENT_HELLO).encode() == TEST_FRAME
    assert TEST_FRAME.startswith(bytes.fromhex("0000dead000000020000000e436c"))
    frames = FrameDecoder().feed(SERVER_HELLO_FRAME)
    assert frames == [Frame(Command.TEST, TransportType.PCI_DOE, SERVER_HELLO)]


def test_decoder_assembles_partial_reads_and_bounds_sizes() -> None:
    decoder = FrameDecoder()
    stream = TEST_FRAME + Frame(Command.SHUTDOWN, 2).encode()
    out: list[Frame] = []
    for i in range(len(stream)):
        out += decoder.feed(stream[i : i + 1])
    assert [f.command for f in out] == [Command.TEST, Command.SHUTDOWN]
    assert decoder.pending == 0
    with pytest.raises(FrameError):
        FrameDecoder(max_payload=16).feed(bytes.fromhex("00000001 00000002 00000011"))


def test_test_command_exact_reply(emu: EmuHandle) -> None:
    with raw_socket(emu) as sock:
        sock.sendall(TEST_FRAME)
        assert read_exactly(sock, len(SERVER_HELLO_FRAME)) == SERVER_HELLO_FRAME


def test_doe_discovery_exact_reply(emu: EmuHandle) -> None:
    with raw_socket(emu) as sock:
        sock.sendall(Frame(Command.NORMAL, TransportType.PCI_DOE, DISCOVERY_0).encode())
        reply = read_exactly(sock, 12 + 12)
    assert reply == bytes.fromhex("00000001 00000002 0000000c") + DISCOVERY_0_REPLY
    with emu.client() as client:
        assert client.discover() == [(1, 0), (1, 1), (1, 2)]


def test_frame_sent_byte_by_byte(emu: EmuHandle) -> None:
    with raw_socket(emu) as sock:
        for i in range(len(TEST_FRAME)):
            sock.sendall(TEST_FRAME[i : i + 1])
            time.sleep(0.001)
        assert read_exactly(sock, len(SERVER_HELLO_FRAME)) == SERVER_HELLO_FRAME


def test_wrong_transport_type_drops_the_connection(emu: EmuHandle) -> None:
    with raw_socket(emu) as sock:
        sock.sendall(Frame(Command.TEST, TransportType.MCTP, CLIENT_HELLO).encode())
        assert sock.recv(100) == b""
    with emu.client() as client:  # the server accepts the next connection
        client.hello()


@pytest.mark.parametrize("command", [0x1234, Command.OOB_ENCAP_KEY_UPDATE,
                                     Command.OOB_ENCAP_ENDPOINT_INFO])
def test_unknown_and_oob_commands_get_unknown(emu: EmuHandle, command: int) -> None:
    with emu.client() as client:
        reply = client.request(command, b"\x01\x00\x00\x00")
        assert (reply.command, reply.transport_type, reply.payload) == (
            Command.UNKNOWN, TransportType.PCI_DOE, b"")
        client.hello()  # still connected


def test_malformed_doe_object_gets_an_empty_reply(emu: EmuHandle) -> None:
    with emu.client() as client:
        # Length says 4 DW, 3 DW sent: §6.30.1 discard.
        assert client.message(bytes.fromhex("01000100 04000000 10840000")) == b""
        client.hello()


def test_continue_accepts_the_next_connection(emu: EmuHandle) -> None:
    first = emu.client()
    first.hello()
    first.continue_()
    second = emu.client()
    second.hello()
    second.close()
    assert emu.server.connections == 2
    assert not emu.server.shut_down


def test_shutdown_echoes_and_stops_the_server(emu: EmuHandle) -> None:
    client = emu.client()
    client.hello()
    client.shutdown()
    emu.thread.join(5)
    assert not emu.thread.is_alive()
    assert emu.server.shut_down
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", emu.port), timeout=1).close()


def test_second_client_waits_for_the_first(emu: EmuHandle) -> None:
    first = emu.client()
    first.hello()
    second = emu.client()
    second.send(Command.TEST, CLIENT_HELLO)
    second.sock.settimeout(0.2)
    with pytest.raises(TimeoutError):
        second.recv()
    first.continue_()
    second.sock.settimeout(5)
    assert second.recv().payload == SERVER_HELLO
    second.close()


def test_device_failure_drops_only_that_connection(
    emu: EmuHandle, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(obj: bytes) -> bytes | None:
        raise RuntimeError("device bug")

    with emu.client() as client:
        monkeypatch.setattr(emu.device, "doe_object", broken)
        client.send(Command.NORMAL, DISCOVERY_0)
        with pytest.raises(ConnectionError):
            client.recv()
    monkeypatch.undo()
    with emu.client() as client:
        assert client.discover() == [(1, 0), (1, 1), (1, 2)]


def test_qemu_like_client(emu: EmuHandle) -> None:
    """QEMU's spdm-socket: no TEST, whole DOE objects in NORMAL frames, SHUTDOWN at the end."""
    get_version = bytes.fromhex("01000100 03000000 10840000")  # docs/protocols.md §2 example
    with raw_socket(emu) as sock:
        sock.sendall(Frame(Command.NORMAL, TransportType.PCI_DOE, get_version).encode())
        header = read_exactly(sock, 12)
        size = int.from_bytes(header[8:], "big")
        assert header[:8] == bytes.fromhex("00000001 00000002") and size <= 0x1200
        obj = read_exactly(sock, size)
        assert obj[:4] == bytes.fromhex("01000100")  # vendor 1, type 1
        assert int.from_bytes(obj[4:8], "little") * 4 == size
        assert obj[8:10] == b"\x10\x04"  # VERSION
        sock.sendall(Frame(Command.SHUTDOWN, TransportType.PCI_DOE).encode())
        assert read_exactly(sock, 12) == bytes.fromhex("0000fffe 00000002 00000000")
    emu.thread.join(5)
    assert emu.server.shut_down
