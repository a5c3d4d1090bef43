"""`vdev tsm provision`: certificate provisioning of a device over the spdm-emu socket,
inside an SPDM session the TSM model opens (no IDE stream is keyed).

  vdev tsm provision csr --spdm-emu H:P --trust-anchor ROOT [--subject DN]
                         [--key-pair N --cert-model M] [--out csr.pem]
  vdev tsm provision set-certificate --spdm-emu H:P --trust-anchor ROOT --slot-to-set N
                         --chain chain.pem [--key-pair N --cert-model M]
  vdev tsm provision erase --spdm-emu H:P --trust-anchor ROOT --slot-to-set N
  vdev tsm provision info --spdm-emu H:P --trust-anchor ROOT     key pairs, MEL, EP info
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, TextIO

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from spdm.codes import CertModel
from vdev.cli.tsm_connect import (
    ClientFactory,
    add_session_arguments,
    add_tail_arguments,
    execute,
    open_client,
    prepare,
)

DESCRIPTION = """\
Opens an SPDM session with the device (authenticated as `vdev tsm connect` does, with
the same options) and provisions it:

  csr              GET_CSR: the device's certificate signing request, PEM on stdout or
                   in --out.  --subject names the subject it asks for (RFC 4514, e.g.
                   "CN=my device,O=me"); on a multi-key connection (--multi-key)
                   --key-pair and --cert-model say for which key and model.
  set-certificate  SET_CERTIFICATE: install --chain (PEM, root first, the leaf for one
                   of the device's keys) in slot --slot-to-set; then DIGESTS shows it.
  erase            SET_CERTIFICATE with Erase (SPDM 1.3): empty slot --slot-to-set.
  info             key pair information, measurement extension log and endpoint
                   information (JSON).

Slots other than 0 are written inside the session, as DSP0274 asks; a vdev device keeps
what it replaced in its state directory (docs/protocols.md §3.6).
"""

MODELS = {m.name.lower().replace("_", "-"): int(m) for m in CertModel if m}


def add_provision_parser(tsm_subparsers: Any) -> None:
    p = tsm_subparsers.add_parser("provision", help="GET_CSR / SET_CERTIFICATE over the "
                                  "spdm-emu socket", description=DESCRIPTION,
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="provision_command", required=True)

    def common(q: argparse.ArgumentParser) -> None:
        add_session_arguments(q)
        add_tail_arguments(q)

    def key_args(q: argparse.ArgumentParser) -> None:
        q.add_argument("--key-pair", type=int, default=0, metavar="N",
                       help="KeyPairID (multi-key connections; 0 otherwise)")
        q.add_argument("--cert-model", default=None, choices=sorted(MODELS),
                       help="certificate model (multi-key connections)")

    c = sub.add_parser("csr", help="GET_CSR: the device's CSR")
    common(c)
    key_args(c)
    c.add_argument("--subject", metavar="DN", help="subject to ask for (RFC 4514)")
    c.add_argument("--out", metavar="FILE", help="write the CSR (PEM) here")
    c.set_defaults(func=cmd_csr)
    s = sub.add_parser("set-certificate", help="SET_CERTIFICATE: install a chain")
    common(s)
    key_args(s)
    s.add_argument("--slot-to-set", type=int, required=True, metavar="N",
                   help="the slot to write (0..7)")
    s.add_argument("--chain", required=True, metavar="FILE",
                   help="certificate chain, PEM, root first")
    s.set_defaults(func=cmd_set_certificate)
    e = sub.add_parser("erase", help="SET_CERTIFICATE Erase (SPDM 1.3)")
    common(e)
    key_args(e)
    e.add_argument("--slot-to-set", type=int, required=True, metavar="N")
    e.set_defaults(func=cmd_erase)
    i = sub.add_parser("info", help="key pairs, MEL and endpoint information (JSON)")
    common(i)
    i.set_defaults(func=cmd_info)


def _session(args: argparse.Namespace, prog: str, log: TextIO,
             client_factory: ClientFactory | None) -> tuple[Any, Any]:
    tsm, _device, host, port = prepare(args, prog, log)
    client = open_client(args, tsm, host, port, log, client_factory)
    return tsm, client


def _model(args: argparse.Namespace) -> int:
    return MODELS[args.cert_model] if args.cert_model else 0


def cmd_csr(args: argparse.Namespace, client_factory: ClientFactory | None = None) -> int:
    prog = "vdev tsm provision csr"
    log = sys.stderr
    info = b""
    if args.subject:
        from spdm.provisioning import requester_info

        try:
            info = requester_info(x509.Name.from_rfc4514_string(args.subject))
        except ValueError as exc:
            raise SystemExit(f"{prog}: --subject: {exc}") from None
    tsm, client = _session(args, prog, log, client_factory)
    if client is None:
        return 1
    failed, values = execute([
        ("connect", lambda: tsm.connect(ide=False)),
        ("csr", lambda: tsm.get_csr(key_pair_id=args.key_pair, cert_model=_model(args),
                                    requester_info=info)),
    ], tsm, client, log, shutdown=args.shutdown)
    if failed:
        return 1
    pem = x509.load_der_x509_csr(values["csr"]).public_bytes(serialization.Encoding.PEM)
    if args.out:
        Path(args.out).write_bytes(pem)
        print(f"vdev tsm: CSR written to {args.out}", file=log)
    else:
        sys.stdout.write(pem.decode())
    return 0


def _chain_der(prog: str, path: str) -> list[bytes]:
    try:
        certs = x509.load_pem_x509_certificates(Path(path).read_bytes())
    except (OSError, ValueError) as exc:
        raise SystemExit(f"{prog}: --chain {path}: {exc}") from None
    return [c.public_bytes(serialization.Encoding.DER) for c in certs]


def _set(args: argparse.Namespace, prog: str, chain: list[bytes], erase: bool,
         client_factory: ClientFactory | None) -> int:
    if not 0 <= args.slot_to_set <= 7:
        raise SystemExit(f"{prog}: --slot-to-set {args.slot_to_set}: a slot is 0..7")
    log = sys.stderr
    tsm, client = _session(args, prog, log, client_factory)
    if client is None:
        return 1
    failed, values = execute([
        ("connect", lambda: tsm.connect(ide=False)),
        ("set certificate", lambda: tsm.set_certificate(
            args.slot_to_set, chain, key_pair_id=args.key_pair, cert_model=_model(args),
            erase=erase)),
    ], tsm, client, log, shutdown=args.shutdown)
    if failed:
        return 1
    print(f"slots provisioned: {values['set certificate']}")
    return 0


def cmd_set_certificate(args: argparse.Namespace,
                        client_factory: ClientFactory | None = None) -> int:
    prog = "vdev tsm provision set-certificate"
    return _set(args, prog, _chain_der(prog, args.chain), False, client_factory)


def cmd_erase(args: argparse.Namespace, client_factory: ClientFactory | None = None) -> int:
    return _set(args, "vdev tsm provision erase", [], True, client_factory)


def cmd_info(args: argparse.Namespace, client_factory: ClientFactory | None = None) -> int:
    log = sys.stderr
    tsm, client = _session(args, "vdev tsm provision info", log, client_factory)
    if client is None:
        return 1
    failed, values = execute([("connect", lambda: tsm.connect(ide=False)),
                              ("info", tsm.device_info)], tsm, client, log,
                             shutdown=args.shutdown)
    if failed:
        return 1
    json.dump(values["info"], sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0
