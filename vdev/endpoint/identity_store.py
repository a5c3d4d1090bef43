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
            if any(m in chain.parent.name for m in (".new-", ".replaced-", ".erased-")):
                continue
            name = chain.parent.parent.name if chain.parent.parent != root else "."
            found.append((name, chain.parent))
    return found


# ---- several slots, key pairs, SET_CERTIFICATE -------------------------------------------
#
#   <identity>/slot<N>/        N = 1..identity_slots-1: generated like slot 0's leaf, with a
#                              key of its own, under slot 0's intermediate CA (one trust
#                              anchor for every slot); params.json says "slot": N.
#                              Or installed by SET_CERTIFICATE: chain.pem, leaf.key (the
#                              key pair's key) and params.json {"installed": ...}.
#   <identity>/keys/<K>.key    key pair K (DSP0274 1.3 KeyPairID), 0600: a slot's key is
#                              the key pair whose public key its leaf carries, so a key
#                              pair outlives the slots that use it (SET_CERTIFICATE can
#                              install a new chain for it, erase can empty its slot).
#   slot<N>.replaced-<time>/   what SET_CERTIFICATE replaced; slot<N>.erased-<time>/ what
#                              it erased: nothing a user had is deleted.

KEYS_DIR = "keys"


@dataclass
class DeviceSlots:
    """Every certificate slot of one identity and the key pairs behind them."""

    slots: dict[int, DeviceIdentity]
    models: dict[int, int]
    key_pairs: list[Any]  # private keys; index = KeyPairID - 1
    slot_dirs: dict[int, Path]
    generated: list[int] = dataclasses.field(default_factory=list)


def _stamp() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%S.%fZ")


def _spki(key: Any) -> bytes:
    from spdm.provisioning import spki

    return spki(key)


def _load_key_pairs(keys_dir: Path) -> list[Any]:
    from spdm.identity import load_private_key

    found: dict[int, Any] = {}
    if keys_dir.is_dir():
        for path in keys_dir.glob("*.key"):
            if path.stem.isdigit():
                try:
                    found[int(path.stem)] = load_private_key(path.read_bytes())
                except (OSError, ValueError, TypeError) as exc:
                    raise IdentityError(f"{path}: the key does not load ({exc})") from None
    ids = sorted(found)
    if ids != list(range(1, len(ids) + 1)):
        raise IdentityError(f"{keys_dir}: key pairs {ids} are not numbered 1..N; vdev does "
                            "not renumber them: restore the missing ones or move the "
                            "directory away")
    return [found[i] for i in ids]


def _add_key_pair(keys_dir: Path, key_pairs: list[Any], key: Any) -> int:
    """Record `key` as the next key pair (a new file, never over an existing one)."""
    from spdm.identity import write_private_key

    keys_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = keys_dir / f"{len(key_pairs) + 1}.key"
    if path.exists():
        raise IdentityError(f"{path} exists but is not a loaded key pair")
    write_private_key(path, key)
    key_pairs.append(key)
    return len(key_pairs)


def _key_pair_id(key_pairs: list[Any], key: Any) -> int | None:
    wanted = _spki(key)
    return next((i + 1 for i, k in enumerate(key_pairs) if _spki(k) == wanted), None)


def _generate_slot(loc: IdentityLocation, params: IdentityParams, primary: DeviceIdentity,
                   slot: int) -> DeviceIdentity:
    """Slot `slot`: a new key and a leaf for it under slot 0's intermediate CA."""
    if len(primary.certs) != 3 or len(primary.ca_keys) != 2:
        raise IdentityError(f"{loc.slot_dir}: generating slot {slot} needs slot 0's "
                            "generated three-certificate chain with intermediate.key")
    now = datetime.datetime.now(datetime.UTC)
    key = generate_key(params.key_type)
    leaf = build_leaf(dataclasses.replace(params, common_name=f"{params.common_name} slot "
                                          f"{slot}"),
                      key, primary.certs[1], primary.ca_keys[1],
                      now - datetime.timedelta(days=1),
                      now + datetime.timedelta(days=params.validity_days))
    return DeviceIdentity([*primary.certs[:2], leaf], key)


def _write_slot(slot_dir: Path, ident: DeviceIdentity, meta: dict[str, Any]) -> None:
    """A complete slot directory, built beside `slot_dir` and renamed into place."""
    from cryptography.hazmat.primitives import serialization as ser

    from spdm.identity import write_private_key

    slot_dir.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{slot_dir.name}.new-", dir=slot_dir.parent))
    try:
        (tmp / "chain.pem").write_bytes(
            b"".join(c.public_bytes(ser.Encoding.PEM) for c in ident.certs))
        (tmp / "root.pem").write_bytes(ident.certs[0].public_bytes(ser.Encoding.PEM))
        (tmp / "leaf.pem").write_bytes(ident.certs[-1].public_bytes(ser.Encoding.PEM))
        write_private_key(tmp / "leaf.key", ident.key)
        (tmp / PARAMS_FILE).write_text(json.dumps(meta, sort_keys=True, indent=1) + "\n")
        os.rename(tmp, slot_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def load_device_slots(profile: DeviceProfile, state_root: Path | str | None,
                      primary: Loaded, *, key_pairs: bool) -> DeviceSlots:
    """Slot 0 (`primary`), the profile's further generated slots (identity_slots), and
    every slot SET_CERTIFICATE installed.  With `key_pairs`, the key pairs are kept
    under keys/ (created from the slots' keys the first time)."""
    loc = IdentityLocation.of(profile, state_root)
    params = identity_params(profile)
    slots = {0: primary.identity}
    dirs = {0: primary.slot_dir}
    models: dict[int, int] = {}
    generated: list[int] = []
    for n in range(1, 8):
        sloc = IdentityLocation.of(profile, state_root, n)
        if sloc.slot_dir.exists() and present_files(sloc.slot_dir):
            stored = _stored_params(sloc.slot_dir) or {}
            installed = "installed" in stored
            ident = load_slot(sloc, params, check_params=not installed)
            if not installed and ident.certs[0] != primary.identity.certs[0]:
                raise IdentityError(
                    f"{sloc.slot_dir} was issued under another root than slot 0's "
                    f"({primary.slot_dir}): move it away to have it generated again under "
                    "the current root")
            slots[n], dirs[n] = ident, sloc.slot_dir
            if "cert_model" in stored:
                models[n] = int(stored["cert_model"])
        elif n < profile.identity_slots:
            ident = _generate_slot(loc, params, primary.identity, n)
            meta = {**dataclasses.asdict(params), "slot": n}
            _write_slot(sloc.slot_dir, ident, meta)
            slots[n], dirs[n] = ident, sloc.slot_dir
            generated.append(n)
    pairs: list[Any] = []
    if key_pairs:
        keys_dir = loc.identity_dir / KEYS_DIR
        pairs = _load_key_pairs(keys_dir)
        for n in sorted(slots):
            if _key_pair_id(pairs, slots[n].key) is None:
                _add_key_pair(keys_dir, pairs, slots[n].key)
    return DeviceSlots(slots, models, pairs, dirs, generated)


class FileCertificateStore:
    """spdm.provisioning.CertificateStore over the identity directory: SET_CERTIFICATE
    writes slot<N>/ anew and keeps what was there as slot<N>.replaced-<time>/ (erase:
    slot<N>.erased-<time>/).  Slot 0 of a legacy location is left where it is and the
    new one written in the current layout (which `locate` then prefers)."""

    def __init__(self, profile: DeviceProfile, state_root: Path | str | None) -> None:
        self.profile = profile
        self.state_root = state_root

    def _move_away(self, slot: int, why: str) -> Path | None:
        slot_dir = IdentityLocation.of(self.profile, self.state_root, slot).slot_dir
        if not slot_dir.exists():
            return None
        kept = slot_dir.with_name(f"{slot_dir.name}.{why}-{_stamp()}")
        os.rename(slot_dir, kept)
        return kept

    def install(self, slot: int, certs: Any, key_pair: Any, model: int) -> DeviceIdentity:
        ident = DeviceIdentity(list(certs), key_pair.key)
        slot_dir = IdentityLocation.of(self.profile, self.state_root, slot).slot_dir
        meta = {"installed": _stamp(), "key_pair_id": key_pair.key_pair_id,
                "cert_model": model}
        tmp_name = slot_dir.with_name(f".{slot_dir.name}.install-{_stamp()}")
        _write_slot(tmp_name, ident, meta)
        try:
            self._move_away(slot, "replaced")
            os.rename(tmp_name, slot_dir)
        except BaseException:
            shutil.rmtree(tmp_name, ignore_errors=True)
            raise
        return ident

    def erase(self, slot: int) -> None:
        self._move_away(slot, "erased")
