"""`vdev ctl --socket PATH COMMAND`: the control socket from the command line.

  vdev ctl --socket PATH status | identity | reset | doe | sessions | tdi | ide | help
  vdev ctl --socket PATH devices                         every device of a `vdev serve`
  vdev ctl --socket PATH --device N status ...           device N (index or socket path) of
                                                         a `vdev serve` with several --socket
  vdev ctl --socket PATH faults list
  vdev ctl --socket PATH faults arm --fault '{"kind": "corrupt", "match": "GET_MEASUREMENTS"}'
  vdev ctl --socket PATH faults clear                    every armed fault
  vdev ctl --socket PATH faults clear --fault '{"kind": "corrupt"}'   only these (a "match"
                                                         narrows it further)
  vdev ctl --socket PATH evidence | mailbox              (vdev tsm serve)
  vdev ctl --socket PATH raw '{"cmd": "status"}'          any request, as sent

Prints the result as JSON on stdout (exit 0), or the error on stderr (exit 1; 2 when
the socket cannot be reached).  --compact, --timeout and --device may also follow the
command (`vdev ctl --socket PATH status --compact`).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from vdev.control.client import ControlClient

SIMPLE = ("status", "identity", "reset", "doe", "sessions", "tdi", "ide", "help",
          "evidence", "mailbox", "devices")


def add_ctl_parser(sub: Any) -> None:
    c = sub.add_parser("ctl", help="query or poke a running server over its control socket",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    c.add_argument("--socket", required=True, help="the server's --control PATH")
    c.add_argument("--timeout", type=float, default=10.0, help="seconds (default 10)")
    c.add_argument("--compact", action="store_true", help="one-line JSON")
    c.add_argument("--device", metavar="N|SOCKET",
                   help="which device of a `vdev serve` with several --socket: its index "
                   "(0, 1, ... in --socket order) or its socket path")
    csub = c.add_subparsers(dest="ctl_command", required=True)
    for name in SIMPLE:
        csub.add_parser(name)
    f = csub.add_parser(
        "faults", help="list, arm or clear injected faults",
        description="list: the armed faults and how often each matched (seen) and acted "
        "(fired).  arm --fault RULE: add a rule.  clear: remove every armed fault; clear "
        "--fault '{\"kind\": KIND[, \"match\": NAME]}': only those.",
        epilog="e.g. faults arm --fault '{\"kind\": \"error\", \"match\": \"KEY_EXCHANGE\", "
        "\"code\": \"Busy\"}'; faults clear --fault '{\"kind\": \"error\"}'; the rule "
        "kinds and their fields: README 'Making the device fail on purpose'")
    f.add_argument("action", choices=["list", "arm", "clear"])
    f.add_argument("--fault", metavar="JSON", help="arm: the rule, a JSON object with a "
                   "\"kind\" (as a --fault-plan [[fault]] table); clear: which rules "
                   "(kind, optionally match); without it clear removes every fault")
    r = csub.add_parser("raw", help="send one request object as given")
    r.add_argument("request", help="JSON request object")
    c.set_defaults(func=cmd_ctl)
    from vdev.cli import accept_after_subcommands

    accept_after_subcommands(c, "--compact", action="store_true", help="one-line JSON")
    accept_after_subcommands(c, "--timeout", type=float, help="seconds (default 10)")
    accept_after_subcommands(c, "--device", metavar="N|SOCKET", help="as before the command")


def build_request(args: argparse.Namespace) -> bytes:
    device = getattr(args, "device", None)
    if args.ctl_command == "raw":
        if device is not None:
            raise SystemExit("vdev ctl: --device does not apply to raw: put \"device\" "
                             "into the request")
        return str(args.request).encode() + b"\n"
    request: dict[str, Any] = {"cmd": args.ctl_command}
    if device is not None:
        request["device"] = int(device) if device.isdigit() else device
    if args.ctl_command == "faults":
        fargs: dict[str, Any] = {"action": args.action}
        if args.fault:
            try:
                fargs["fault"] = json.loads(args.fault)
            except ValueError as exc:
                raise SystemExit(f"vdev ctl: --fault is not JSON: {exc}") from None
        request["args"] = fargs
    return json.dumps(request).encode() + b"\n"


def cmd_ctl(args: argparse.Namespace) -> int:
    line = build_request(args)
    try:
        with ControlClient(args.socket, args.timeout) as client:
            response = client.raw(line)
    except (OSError, ValueError) as exc:
        print(f"vdev ctl: {args.socket}: {exc}", file=sys.stderr)
        return 2
    if not response.get("ok"):
        print(f"vdev ctl: {response.get('error', response)}", file=sys.stderr)
        return 1
    result = response.get("result")
    print(json.dumps(result, indent=None if args.compact else 2))
    return 0
