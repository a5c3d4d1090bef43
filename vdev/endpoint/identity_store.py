"""The device identity on disk: where it lives, how it is made, and that it never changes
behind the user's back.

Layout, under a state directory (`--state-dir DIR`, default ``~/.local/state/vdev/identity``)::

  <state>/<vendor>-<device>-<key type>/    one identity, e.g. 1ded-7e10-ecdsa-p384
      slot0/                                SPDM certificate slot 0 (DSP0274 GET_DIGESTS,
                                            GET_CERTIFICATE SlotID 0)
          chain.pem                         root CA, intermediate CA, leaf (root first)
          root.pem intermediate.pem leaf.pem
          root.key intermediate.key leaf.key   private keys, mode 0600 (directory 0700)
          params.json                       what the chain was issued for (key type,
                                            Vendor/Device ID, class, revision, ...)
      slot1/ ...                            further slots: each its own chain and key

The directory name holds what decides the chain's root (the profile's Vendor/Device ID
and `identity_key_type`), so profiles that differ there never share, and never replace,
each other's identity; `slot<N>/` leaves room for a device that provisions several
slots, each with its own key type.  `root.pem` of a slot is the trust anchor a requester
is given.

Rules: an identity is generated once, into a fresh directory renamed into place (a
half-written one is never seen, two servers starting together end up with the same one).
After that it is only read: files that do not load (a corrupt key, a key that does not
match the leaf, an incomplete slot) or that were made for other parameters (say another
class code, which the leaf's CMA SAN carries) stop the server with a message saying how
to regenerate on purpose (`vdev identity regenerate --force`, which keeps the old slot
beside the new one as ``slot0.replaced-<time>``).

An identity written by earlier vdev versions straight into ``<state>/slot0/`` or
``<state>/<vendor>-<device>/slot0/`` is used where it is when it was made for the same
parameters, so a trust anchor handed out before keeps working.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from spdm.identity import (
    DeviceIdentity,
    IdentityParams,
    build_leaf,
    generate_identity,
    generate_key,
    load_identity,
    save_identity,
)
from vdev.profiles import DeviceProfile

DEFAULT_STATE_ROOT = Path("~/.local/state/vdev/identity")
PARAMS_FILE = "params.json"
TRUST_ANCHOR = "root.pem"
# The files an identity slot is made of (spdm.identity.save_identity writes them).
SLOT_FILES = ("chain.pem", "root.pem", "intermediate.pem", "leaf.pem", "root.key",
              "intermediate.key", "leaf.key", PARAMS_FILE)
REQUIRED_FILES = ("chain.pem", "leaf.key")


class IdentityError(Exception):
    """An identity on disk cannot be used as it is; the message says why and what to do."""


def default_state_root() -> Path:
    return DEFAULT_STATE_ROOT.expanduser()


def identity_params(profile: DeviceProfile) -> IdentityParams:
    """What the profile's chain is issued for (the leaf's CMA SAN carries the IDs)."""
    return IdentityParams(
        key_type=profile.identity_key_type,
        vendor_id=profile.vendor_id,
        device_id=profile.device_id,
        class_code=profile.class_code,
        revision=profile.revision,
        common_name=f"vdev {profile.vendor_id:04x}:{profile.device_id:04x}",
    )


def identity_name(profile: DeviceProfile) -> str:
    return f"{_vendor_device(profile)}-{profile.identity_key_type}"


def _vendor_device(profile: DeviceProfile) -> str:
    return f"{profile.vendor_id:04x}-{profile.device_id:04x}"


@dataclass(frozen=True)
class IdentityLocation:
    """Where one slot of a profile's identity lives under a state directory."""

    state_root: Path
    vendor_device: str  # "1ded-7e10"
    key_type: str
    slot: int = 0

    @classmethod
    def of(cls, profile: DeviceProfile, state_root: Path | str | None = None,
           slot: int = 0) -> IdentityLocation:
        root = Path(state_root).expanduser() if state_root is not None else default_state_root()
        return cls(root, _vendor_device(profile), profile.identity_key_type, slot)

    @property
    def name(self) -> str:
        return f"{self.vendor_device}-{self.key_type}"

    @property
    def identity_dir(self) -> Path:
        return self.state_root / self.name

    @property
    def slot_dir(self) -> Path:
        return self.identity_dir / f"slot{self.slot}"

    def legacy_slot_dirs(self) -> list[Path]:
        """Where earlier versions kept this slot (see the module docstring)."""
        slot = f"slot{self.slot}"
        return [self.state_root / slot, self.state_root / self.vendor_device / slot]


def _regenerate_hint(loc: IdentityLocation, leaf_only: bool = False) -> str:
    where = "" if loc.state_root == default_state_root() else f" --state-dir {loc.state_root}"
    how = "--force --leaf-only" if leaf_only else "--force"
    return (f"`vdev identity regenerate {how} --profile PROFILE{where}` replaces it on "
            "purpose (the old one is kept beside it)")


def _stored_params(slot_dir: Path) -> dict[str, Any] | None:
    path = slot_dir / PARAMS_FILE
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise IdentityError(f"{path}: unreadable ({exc})") from None
    if not isinstance(data, dict):
        raise IdentityError(f"{path}: not a JSON object")
    return data


def _shown(value: Any) -> str:
    return f"{value:#x}" if isinstance(value, int) and not isinstance(value, bool) \
        else repr(value)


def _differences(stored: dict[str, Any], wanted: IdentityParams) -> list[str]:
    out = []
    for key, value in dataclasses.asdict(wanted).items():
        if stored.get(key) != value:
            have = stored.get(key)
            out.append(f"{key} {_shown(have) if have is not None else 'unset'} (the profile: "
                       f"{_shown(value)})")
    return out


def present_files(slot_dir: Path) -> list[str]:
    return [n for n in SLOT_FILES if (slot_dir / n).exists()]


def load_slot(loc: IdentityLocation, params: IdentityParams, slot_dir: Path | None = None,
              *, check_params: bool = True) -> DeviceIdentity:
    """The identity in `slot_dir` (default `loc.slot_dir`), checked: every file loads, the
    key is the leaf's, and it was made for `params` (when it says what it was made for:
    a chain provisioned by hand has no params.json)."""
    slot_dir = slot_dir or loc.slot_dir
    missing = [n for n in REQUIRED_FILES if not (slot_dir / n).exists()]
    if missing:
        raise IdentityError(
            f"{slot_dir} is an incomplete identity (has {', '.join(present_files(slot_dir))}; "
            f"no {', '.join(missing)}); vdev does not overwrite it: "
            f"{_regenerate_hint(loc)}, or give another --state-dir")
    try:
        ident = load_identity(slot_dir)
    except (OSError, ValueError, TypeError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise IdentityError(f"{slot_dir}: the identity does not load ({reason}); vdev does "
                            f"not replace it by itself: {_regenerate_hint(loc)}") from None
    if not ident.certs:
        raise IdentityError(f"{slot_dir}/chain.pem holds no certificate; "
                            f"{_regenerate_hint(loc)}")
    if not _same_public_key(ident):
        raise IdentityError(f"{slot_dir}/leaf.key is not the key of the leaf certificate in "
                            f"chain.pem; {_regenerate_hint(loc)}")
    stored = _stored_params(slot_dir)
    if check_params and stored is not None:
        diff = _differences(stored, params)
        if diff:
            same_root = stored.get("key_type") == params.key_type
            raise IdentityError(
                f"the identity in {slot_dir} was issued for other parameters: "
                f"{'; '.join(diff)}.  vdev does not change an identity by itself: "
                f"{_regenerate_hint(loc, leaf_only=same_root)}"
                + (" and keeps the root (the trust anchor)" if same_root else "")
                + ", or give another --state-dir")
    return ident


def _same_public_key(ident: DeviceIdentity) -> bool:
    from cryptography.hazmat.primitives import serialization

    def spki(key: Any) -> bytes:
        out: bytes = key.public_bytes(serialization.Encoding.DER,
                                      serialization.PublicFormat.SubjectPublicKeyInfo)
        return out

    return spki(ident.key.public_key()) == spki(ident.leaf.public_key())


def _write_params(slot_dir: Path, params: IdentityParams) -> None:
    (slot_dir / PARAMS_FILE).write_text(
        json.dumps(dataclasses.asdict(params), sort_keys=True, indent=1) + "\n")


def _fresh_slot(loc: IdentityLocation) -> Path:
    """An empty private directory beside the slot, renamed into place when complete."""
    loc.identity_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".slot{loc.slot}.new-", dir=loc.identity_dir))


def _install(tmp: Path, slot_dir: Path) -> bool:
    """Rename a complete `tmp` to `slot_dir`; False when another process got there first
    (rename never replaces a non-empty directory)."""
    try:
        os.rename(tmp, slot_dir)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if (slot_dir / "chain.pem").exists():
            return False
        raise
    return True


@dataclass(frozen=True)
class Loaded:
    identity: DeviceIdentity
    slot_dir: Path
    created: bool = False

    @property
    def trust_anchor(self) -> Path:
        return self.slot_dir / TRUST_ANCHOR


def locate(loc: IdentityLocation, params: IdentityParams) -> Path | None:
    """The slot directory holding this identity now, or None when there is none yet.
    IdentityError for files in the way (an earlier layout's incomplete slot)."""
    if loc.slot_dir.exists() and present_files(loc.slot_dir):
        return loc.slot_dir
    for legacy in loc.legacy_slot_dirs():
        files = present_files(legacy) if legacy.is_dir() else []
        if not files:
            continue
        stored = _stored_params(legacy)
        if stored is None or any(n not in files for n in REQUIRED_FILES):
            # Not ours to interpret, and not to be overwritten either.
            raise IdentityError(
                f"{legacy} holds identity files ({', '.join(files)}) in the layout of "
                f"earlier versions, without what they were made for; vdev now keeps this "
                f"profile's identity in {loc.slot_dir}: move a complete chain there "
                f"(chain.pem, leaf.key) to use it, or move {legacy} away")
        if not _differences(stored, params):
            return legacy
    return None


def load_or_generate(profile: DeviceProfile, state_root: Path | str | None = None,
                     slot: int = 0) -> Loaded:
    """The profile's identity: the existing one (checked), else a new one."""
    loc = IdentityLocation.of(profile, state_root, slot)
    params = identity_params(profile)
    found = locate(loc, params)
    if found is not None:
        return Loaded(load_slot(loc, params, found), found)
    return generate(loc, params)


def generate(loc: IdentityLocation, params: IdentityParams) -> Loaded:
    tmp = _fresh_slot(loc)
    try:
        ident = generate_identity(params)
        save_identity(ident, tmp)
        _write_params(tmp, params)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if not _install(tmp, loc.slot_dir):
        return Loaded(load_slot(loc, params), loc.slot_dir)
    return Loaded(ident, loc.slot_dir, created=True)


def regenerate(loc: IdentityLocation, params: IdentityParams, *,
               leaf_only: bool = False) -> tuple[Loaded, Path | None]:
    """Replace the slot on purpose; the old one is renamed to ``slot<N>.replaced-<time>``
    (returned).  `leaf_only`: a new leaf key and certificate under the stored
    intermediate CA, so the root (the trust anchor) stays."""
    old = loc.slot_dir if loc.slot_dir.exists() else None
    tmp = _fresh_slot(loc)
    try:
        if leaf_only:
            if old is None:
                raise IdentityError(f"{loc.slot_dir}: no identity to re-issue the leaf of")
            ident = _reissue_leaf(loc, params)
        else:
            ident = generate_identity(params)
        save_identity(ident, tmp)
        _write_params(tmp, params)
        kept = None
        if old is not None:
            stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
            kept = old.with_name(f"{old.name}.replaced-{stamp}")
            os.rename(old, kept)
        os.rename(tmp, loc.slot_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return Loaded(ident, loc.slot_dir, created=True), kept


def _reissue_leaf(loc: IdentityLocation, params: IdentityParams) -> DeviceIdentity:
    current = load_slot(loc, params, check_params=False)
    if len(current.certs) != 3 or len(current.ca_keys) != 2:
        raise IdentityError(f"{loc.slot_dir}: re-issuing the leaf needs the generated "
                            "three-certificate chain with intermediate.key")
    stored = _stored_params(loc.slot_dir) or {}
    if stored.get("key_type", params.key_type) != params.key_type:
        raise IdentityError(f"{loc.slot_dir}: a {stored.get('key_type')} chain cannot issue "
                            f"a {params.key_type} leaf; regenerate without --leaf-only")
    now = datetime.datetime.now(datetime.UTC)
    leaf_key = generate_key(params.key_type)
    leaf = build_leaf(params, leaf_key, current.certs[1], current.ca_keys[1],
                      now - datetime.timedelta(days=1),
                      now + datetime.timedelta(days=params.validity_days))
    return DeviceIdentity([*current.certs[:2], leaf], leaf_key, current.ca_keys)


def list_identities(state_root: Path | str | None = None) -> list[tuple[str, Path]]:
    """Every slot with a chain under the state directory: (identity name, slot dir)."""
    root = Path(state_root).expanduser() if state_root is not None else default_state_root()
    found = []
    with contextlib.suppress(OSError):
        for chain in sorted(root.glob("*/slot*/chain.pem")) + sorted(root.glob("slot*/chain.pem")):
            if ".new-" in chain.parent.name or ".replaced-" in chain.parent.name:
                continue
            name = chain.parent.parent.name if chain.parent.parent != root else "."
            found.append((name, chain.parent))
    return found
