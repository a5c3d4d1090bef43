"""The TSM's inputs on the command line (`vdev tsm serve`, `vdev tsm connect`): the trust
anchor and the measurement policy, read and checked before anything starts, each failure
one line naming the option and the file."""

from __future__ import annotations

from pathlib import Path

from cryptography import x509

from tsm.mailbox_backend import load_trust_anchors
from tsm.reference_values import PolicyError, ReferenceValues


def trust_anchors(prog: str, path: str) -> list[x509.Certificate]:
    """--trust-anchor FILE: one or more PEM certificates, or one DER certificate."""
    try:
        anchors = load_trust_anchors(path)
    except OSError as exc:
        raise SystemExit(f"{prog}: --trust-anchor {path}: {exc.strerror or exc}") from None
    except ValueError as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise SystemExit(f"{prog}: --trust-anchor {path}: not a certificate (PEM, or one "
                         f"DER certificate): {reason}") from None
    if not anchors:
        raise SystemExit(f"{prog}: --trust-anchor {path}: no certificate in it")
    return anchors


def reference_values(prog: str, path: str) -> ReferenceValues:
    """--policy FILE: measurement reference values (TOML, or JSON for a .json file)."""
    try:
        return ReferenceValues.load(path)
    except OSError as exc:
        raise SystemExit(f"{prog}: --policy {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise SystemExit(f"{prog}: --policy {path}: not a text file (TOML, or JSON "
                         "named *.json)") from None
    except (PolicyError, ValueError, TypeError) as exc:
        text = str(exc).removeprefix(f"{Path(path)}: ")
        raise SystemExit(f"{prog}: --policy {path}: {text}") from None
