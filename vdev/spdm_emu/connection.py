"""The responder side of the spdm-emu socket protocol, sans-IO.

`SpdmEmuResponder(device, transport).handle(frame) -> Outcome` decides, for one frame
received on a connection, the reply frame and what happens to the connection (spdm-emu
spdm_responder_emu's platform loop; docs/protocols.md §9.2):

  transport type != ours   DROP: close without a reply (spdm-emu drops the connection)
  TEST                     reply TEST "Server Hello!\\0", keep the connection
  NORMAL                   the payload goes to the device, reply NORMAL with its answer
                           (an empty payload when the device produced none, e.g. a DOE
                           object whose Length disagrees with its size: §6.30.1 says
                           discard, and an empty reply keeps a blocking peer from hanging)
  CONTINUE                 echo CONTINUE, close this connection, accept the next one
  SHUTDOWN                 echo SHUTDOWN, close, and stop serving (the process exits)
  anything else            reply UNKNOWN (0xFFFF) with an empty payload, keep going;
                           this includes the OOB_ENCAP_* commands, which drive
                           libspdm's responder-initiated encapsulated flows we do not run

Payloads by transport:
  PCI_DOE  a whole DOE object (header included); discovery 0/1/2 is answered by the
           device like its mailbox does.  `device.doe_object`.
  MCTP     message type 0x05 (SPDM) or 0x06 (secured record with a 2-byte sequence
           number and random padding: the device must be built with
           spdm.secured_message.MCTP_TRANSPORT).
  NONE     a bare SPDM message; there is no way to mark a secured record, so NONE
           carries plaintext SPDM only.
"""

from __future__ import annotations

import enum
import logging
from dataclasses import dataclass
from typing import Protocol

from vdev.doe.mailbox import DoeRejected
from vdev.spdm_emu import mctp
from vdev.spdm_emu.frame import SERVER_HELLO, Command, Frame, TransportType
from vdev.spdm_emu.mctp import MctpMessageType

log = logging.getLogger(__name__)


class SpdmDevice(Protocol):
    def spdm_message(self, doe_type: int, payload: bytes) -> tuple[int, bytes]: ...

    def doe_object(self, obj: bytes) -> bytes | None: ...


class Action(enum.Enum):
    KEEP = "keep"  # send the reply (if any), read the next frame
    DROP = "drop"  # close the connection, no reply
    CONTINUE = "continue"  # send the reply, close, accept the next connection
    SHUTDOWN = "shutdown"  # send the reply, close, stop serving


@dataclass(frozen=True)
class Outcome:
    action: Action
    reply: Frame | None = None


# Every command but NORMAL: (reply command, reply payload, what happens to the connection).
# Anything not listed is answered with UNKNOWN and the connection stays open.
CONTROL_COMMANDS: dict[int, tuple[Command, bytes, Action]] = {
    Command.TEST: (Command.TEST, SERVER_HELLO, Action.KEEP),
    Command.CONTINUE: (Command.CONTINUE, b"", Action.CONTINUE),
    Command.SHUTDOWN: (Command.SHUTDOWN, b"", Action.SHUTDOWN),
}
UNKNOWN_COMMAND = (Command.UNKNOWN, b"", Action.KEEP)


class SpdmEmuResponder:
    def __init__(self, device: SpdmDevice, transport: TransportType) -> None:
        self.device = device
        self.transport = transport

    def _reply(self, command: int, payload: bytes = b"") -> Frame:
        return Frame(command, int(self.transport), payload)

    def handle(self, frame: Frame) -> Outcome:
        if frame.transport_type != self.transport:
            log.warning("frame with transport type %d on a %s server: dropping the connection",
                        frame.transport_type, self.transport.name)
            return Outcome(Action.DROP)
        if frame.command == Command.NORMAL:
            return Outcome(Action.KEEP, self._reply(Command.NORMAL, self.message(frame.payload)))
        entry = CONTROL_COMMANDS.get(frame.command)
        if entry is None:
            log.info("unsupported spdm-emu command %#x: answering UNKNOWN", frame.command)
            entry = UNKNOWN_COMMAND
        reply, payload, action = entry
        return Outcome(action, self._reply(reply, payload))

    def take_reply_delay(self) -> float:
        """Seconds to wait before sending the reply just built: a delay fault armed on
        the device (vdev.faults) for this socket path, which has no DOE mailbox."""
        delay = float(getattr(self.device, "socket_reply_delay", 0.0) or 0.0)
        if delay:
            self.device.socket_reply_delay = 0.0  # type: ignore[attr-defined]
        return delay

    def message(self, payload: bytes) -> bytes:
        """One transport message in, the transport message to send back (b"" for none)."""
        try:
            return self._message(payload)
        except DoeRejected as exc:
            # The device refused to answer (drop / doe_error fault): the socket has no
            # DOE ERROR bit, so the requester gets an empty message.
            log.warning("no response: %s", exc)
            return b""

    def _message(self, payload: bytes) -> bytes:
        if self.transport == TransportType.PCI_DOE:
            reply = self.device.doe_object(payload)
            if reply is None:
                log.warning("DOE object of %d bytes discarded", len(payload))
                return b""
            return reply
        if self.transport == TransportType.MCTP:
            try:
                message_type, body = mctp.decode(payload)
            except ValueError:
                return b""
            if message_type == MctpMessageType.SPDM:
                return mctp.encode(MctpMessageType.SPDM, self.device.spdm_message(1, body)[1])
            if message_type == MctpMessageType.SECURED_SPDM:
                kind, reply = self.device.spdm_message(2, body)
                out_type = MctpMessageType.SECURED_SPDM if kind == 2 else MctpMessageType.SPDM
                return mctp.encode(out_type, reply)
            log.warning("MCTP message type %#x not supported", message_type)
            return b""
        if not payload:
            return b""
        return self.device.spdm_message(1, payload)[1]
