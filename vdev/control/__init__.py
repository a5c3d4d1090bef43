"""The control socket: inspect and poke a running `vdev` server (JSON over a UNIX socket).

Enabled with ``--control PATH`` on `vdev serve`, `vdev spdm-emu` and `vdev tsm serve`;
`vdev ctl --socket PATH COMMAND` is the command-line front end.

Wire format: one JSON object per line each way (UTF-8, ``\\n``-terminated, at most
`server.MAX_LINE` bytes).  A client may send several requests on one connection;
each gets exactly one response, in order.

Request::

    {"cmd": "status", "args": {...}, "id": <anything>}     args and id optional

Response::

    {"ok": true,  "id": <echoed>, "result": {...}}
    {"ok": false, "id": <echoed>, "error": "reason"}

A malformed line, an unknown command, bad arguments or a failing command all get
``"ok": false`` with a reason; the server never drops the device because of a
control request.  No command ever returns key material (SPDM secrets, IDE keys,
TDISP nonces, private keys).

Commands of the device (`vdev serve`, `vdev spdm-emu`; see `vdev.control.endpoint`):
``help``, ``status``, ``identity``, ``reset``, ``faults``, ``doe``, ``sessions``,
``tdi``, ``ide``.  `vdev serve` serves one device per ``--socket`` and one control
socket for all of them (`vdev.control.device_set`): a request names its device with a
top-level ``"device"`` field (index or socket path; required when there are several),
the response carries ``"device"`` too, and ``devices`` lists them all.
Of the TSM mailbox (`vdev tsm serve`, `vdev.control.tsm`):
``help``, ``status``, ``evidence``, ``mailbox``, ``reset``.

Layers: `core.ControlCore` is sans-IO (``handle(request dict) -> response dict``,
``handle_line(bytes) -> bytes``); `server.ControlServer` is the asyncio adapter,
run on the device's own event loop so every command sees (and changes) the device
between two vfio-user messages, never in the middle of one; `client` is a small
blocking client.
"""
