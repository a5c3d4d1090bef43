"""`vdev identity`: the device identities on disk (vdev.endpoint.identity_store).

  vdev identity show [--profile NAME|FILE] [--state-dir DIR] [--json]
  vdev identity trust-anchor [--profile ...] [--state-dir DIR]   the root.pem path only
  vdev identity list [--state-dir DIR]
  vdev identity generate [--profile ...] [--state-dir DIR]       make it now (else on first use)
  vdev identity regenerate --force [--leaf-only] [--profile ...] [--state-dir DIR]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import hashes

from vdev.endpoint.identity_store import (
    TRUST_ANCHOR,
    IdentityError,
    IdentityLocation,
    generate,
    identity_params,
    list_identities,
    load_slot,
    locate,
    regenerate,
)

DESCRIPTION = """\
A device's identity (root CA, intermediate CA, leaf certificate with the CMA SAN, and
their keys) is generated the first time a profile is served and then only read, never
changed by vdev on its own.  Each profile's identity lives in
  STATE/<vendor>-<device>-<key type>/slot0/
under the state directory (--state-dir, default ~/.local/state/vdev/identity), so
profiles with another key type or other IDs have their own; root.pem there is the trust
anchor to give a requester (vdev tsm connect --trust-anchor "$(vdev identity
trust-anchor)").  `regenerate --force` replaces one on purpose and keeps the old one
beside it (slot0.replaced-<time>); --leaf-only re-issues just the leaf under the same
root, e.g. after changing the profile's class code or revision.
"""


def add_identity_parser(sub: Any) -> None:
    p = sub.add_parser("identity", help="show, generate or regenerate a device identity",
                       description=DESCRIPTION,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    isub = p.add_subparsers(dest="identity_command", required=True)

    def common(q: argparse.ArgumentParser, profile: bool = True) -> None:
        if profile:
            q.add_argument("--profile", metavar="NAME|FILE", help="the profile whose identity "
                           "(shipped name or TOML file; default: the built-in endpoint)")
        q.add_argument("--state-dir", metavar="DIR", help="the state directory, as given to "
                       "vdev serve / spdm-emu (default ~/.local/state/vdev/identity)")

    s = isub.add_parser("show", help="where the identity is, its certificates, trust anchor")
    common(s)
    s.add_argument("--json", action="store_true", help="print JSON")
    s.set_defaults(func=cmd_show)
    t = isub.add_parser("trust-anchor", help="print the path of the trust anchor (root.pem)")
    common(t)
    t.set_defaults(func=cmd_trust_anchor)
    ls = isub.add_parser("list", help="every identity under the state directory")
    common(ls, profile=False)
    ls.set_defaults(func=cmd_list)
    g = isub.add_parser("generate", help="generate the identity now if there is none")
    common(g)
    g.set_defaults(func=cmd_generate)
    r = isub.add_parser("regenerate", help="replace the identity (needs --force)")
    common(r)
    r.add_argument("--force", action="store_true", help="yes, replace it: requesters that "
                   "trust the old root (or pinned the old leaf) stop accepting the device")
    r.add_argument("--leaf-only", action="store_true", help="a new leaf key and certificate "
                   "under the same intermediate: the trust anchor stays")
    r.set_defaults(func=cmd_regenerate)


def _where(args: argparse.Namespace) -> tuple[IdentityLocation, Any]:
    from vdev.cli import _load_profile

    profile = _load_profile(getattr(args, "profile", None))
    return IdentityLocation.of(profile, args.state_dir), identity_params(profile)


def _fail(text: str) -> int:
    print(f"vdev identity: {text}", file=sys.stderr)
    return 1


def _state_words(loc: IdentityLocation) -> str:
    from vdev.endpoint.identity_store import default_state_root

    return "" if loc.state_root == default_state_root() else f" --state-dir {loc.state_root}"


def describe(slot_dir: Path, ident: Any) -> dict[str, Any]:
    params_file = slot_dir / "params.json"
    return {
        "slot_dir": str(slot_dir),
        "trust_anchor": str(slot_dir / TRUST_ANCHOR),
        "params": json.loads(params_file.read_text()) if params_file.exists() else None,
        "certificates": [{
            "subject": c.subject.rfc4514_string(),
            "not_after": c.not_valid_after_utc.isoformat(),
            "sha256": c.fingerprint(hashes.SHA256()).hex(),
        } for c in ident.certs],
    }


def _existing(loc: IdentityLocation, params: Any) -> Path | None:
    """The identity's slot directory if there is one, checked to load (a damaged one
    raises IdentityError), else None."""
    found = locate(loc, params)
    if found is not None:
        load_slot(loc, params, found)
    return found


def cmd_show(args: argparse.Namespace) -> int:
    loc, params = _where(args)
    try:
        found = locate(loc, params)
        if found is None:
            return _fail(f"no identity {loc.name} yet in {loc.state_root} (made on the first "
                         f"`vdev serve`/`spdm-emu` with this profile, or now with `vdev "
                         f"identity generate`)")
        info = describe(found, load_slot(loc, params, found))
    except IdentityError as exc:
        return _fail(str(exc))
    if args.json:
        print(json.dumps({"identity": loc.name, **info}, indent=2))
        return 0
    print(f"identity      {loc.name} (slot {loc.slot})")
    print(f"directory     {info['slot_dir']}")
    print(f"trust anchor  {info['trust_anchor']}")
    for role, cert in zip(("root", "intermediate", "leaf"), info["certificates"], strict=False):
        print(f"{role:<13} {cert['subject']}")
        print(f"{'':<13} sha256 {cert['sha256']}, valid until {cert['not_after'][:10]}")
    return 0


def cmd_trust_anchor(args: argparse.Namespace) -> int:
    loc, params = _where(args)
    try:
        found = _existing(loc, params)
    except IdentityError as exc:
        return _fail(str(exc))
    if found is None:
        return _fail(f"no identity {loc.name} yet in {loc.state_root}: `vdev identity "
                     f"generate{_profile_words(args)}{_state_words(loc)}` makes it")
    print(found / TRUST_ANCHOR)
    return 0


def _profile_words(args: argparse.Namespace) -> str:
    return f" --profile {args.profile}" if getattr(args, "profile", None) else ""


def cmd_list(args: argparse.Namespace) -> int:
    found = list_identities(args.state_dir)
    if not found:
        root = args.state_dir or "~/.local/state/vdev/identity"
        print(f"no identities under {root}")
        return 0
    for name, slot_dir in found:
        print(f"{name:<28} {slot_dir / TRUST_ANCHOR}")
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    loc, params = _where(args)
    try:
        found = _existing(loc, params)
        if found is not None:
            print(f"identity {loc.name} exists, kept: {found} (`vdev identity regenerate "
                  "--force` replaces it)")
            return 0
        made = generate(loc, params)
    except IdentityError as exc:
        return _fail(str(exc))
    print(f"identity {loc.name} generated in {made.slot_dir}")
    print(f"trust anchor {made.trust_anchor}")
    return 0


def cmd_regenerate(args: argparse.Namespace) -> int:
    loc, params = _where(args)
    if not args.force:
        return _fail(f"regenerating replaces {loc.slot_dir}: every requester holding its "
                     "trust anchor stops accepting the device.  Add --force to do it "
                     "(--leaf-only keeps the root)")
    try:
        made, kept = regenerate(loc, params, leaf_only=args.leaf_only)
    except IdentityError as exc:
        return _fail(str(exc))
    what = "leaf re-issued" if args.leaf_only else "regenerated"
    print(f"identity {loc.name} {what} in {made.slot_dir}"
          + (f"; the old one is in {kept}" if kept else ""))
    print(f"trust anchor {made.trust_anchor}"
          + (" (unchanged)" if args.leaf_only else " (new: give it to requesters again)"))
    return 0
