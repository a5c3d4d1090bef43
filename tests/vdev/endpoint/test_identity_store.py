"""The device identity on disk never changes under the user's feet (issue 15): one
directory per profile identity, generated once, then only read; whatever does not fit
stops the server with a message saying how to regenerate on purpose."""

from __future__ import annotations

import dataclasses
import json
import os
import stat
from pathlib import Path

import pytest

from spdm.identity import generate_identity, save_identity
from tests.helpers.cli import one_line_error, vdev
from vdev.endpoint.identity_store import (
    IdentityError,
    IdentityLocation,
    identity_params,
    list_identities,
    load_or_generate,
    regenerate,
)
from vdev.endpoint.tee_device import TeeDevice
from vdev.profiles import DeviceProfile

P384 = DeviceProfile()
P256 = DeviceProfile(identity_key_type="ecdsa-p256")


def snapshot(directory: Path) -> dict[str, tuple[bytes, int]]:
    """Every file below `directory`: its bytes and its mtime (ns)."""
    return {str(p.relative_to(directory)): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in sorted(directory.rglob("*")) if p.is_file()}


def test_layout_is_state_identity_slot(tmp_path: Path) -> None:
    loaded = load_or_generate(P384, tmp_path)
    slot = tmp_path / "1ded-7e10-ecdsa-p384" / "slot0"
    assert loaded.created and loaded.slot_dir == slot
    assert loaded.trust_anchor == slot / "root.pem"
    assert sorted(p.name for p in slot.iterdir()) == [
        "chain.pem", "intermediate.key", "intermediate.pem", "leaf.key", "leaf.pem",
        "params.json", "root.key", "root.pem"]
    for key in slot.glob("*.key"):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert stat.S_IMODE(slot.stat().st_mode) == 0o700
    assert not [p for p in slot.parent.iterdir() if p.name.startswith(".")]  # no temp left
    assert list_identities(tmp_path) == [("1ded-7e10-ecdsa-p384", slot)]


def test_switching_key_type_and_back_never_touches_the_other_identity(tmp_path: Path) -> None:
    """The issue: a profile that only sets identity_key_type regenerated the root CA in
    the shared directory, and switching back regenerated it again."""
    first = load_or_generate(P384, tmp_path)
    before = snapshot(first.slot_dir)
    other = load_or_generate(P256, tmp_path)
    assert other.created and other.slot_dir == tmp_path / "1ded-7e10-ecdsa-p256" / "slot0"
    again = load_or_generate(P384, tmp_path)
    assert not again.created and again.slot_dir == first.slot_dir
    assert snapshot(first.slot_dir) == before  # content and mtime
    assert again.identity.root == first.identity.root


def test_a_slot_without_chain_is_refused_and_left_alone(tmp_path: Path) -> None:
    """The issue: in a --state-dir without chain.pem the existing root.pem and leaf.key
    were overwritten without a word."""
    slot = IdentityLocation.of(P384, tmp_path).slot_dir
    save_identity(generate_identity(identity_params(P384)), slot)
    (slot / "chain.pem").unlink()
    before = snapshot(tmp_path)
    with pytest.raises(IdentityError, match=r"slot0 is an incomplete identity \(has root.pem"
                       r".*; no chain.pem\); vdev does not overwrite it: `vdev identity "
                       r"regenerate --force --profile PROFILE --state-dir "):
        load_or_generate(P384, tmp_path)
    assert snapshot(tmp_path) == before


def test_a_corrupt_key_is_refused_with_how_to_regenerate(tmp_path: Path) -> None:
    slot = load_or_generate(P384, tmp_path).slot_dir
    (slot / "leaf.key").write_bytes(b"-----BEGIN PRIVATE KEY-----\ngarbage\n")
    before = snapshot(tmp_path)
    with pytest.raises(IdentityError, match="the identity does not load .*vdev does not "
                       "replace it by itself: `vdev identity regenerate --force"):
        load_or_generate(P384, tmp_path)
    assert snapshot(tmp_path) == before


def test_a_key_that_is_not_the_leafs_is_refused(tmp_path: Path) -> None:
    slot = load_or_generate(P384, tmp_path).slot_dir
    other = load_or_generate(P384, tmp_path / "other").slot_dir
    (slot / "leaf.key").write_bytes((other / "leaf.key").read_bytes())
    with pytest.raises(IdentityError, match="leaf.key is not the key of the leaf"):
        load_or_generate(P384, tmp_path)


def test_other_parameters_are_refused_and_leaf_only_regeneration_keeps_the_root(
        tmp_path: Path) -> None:
    first = load_or_generate(P384, tmp_path)
    rev2 = DeviceProfile(revision=0x02)
    before = snapshot(first.slot_dir)
    with pytest.raises(IdentityError, match=r"issued for other parameters: revision 0x1 "
                       r"\(the profile: 0x2\)\..*regenerate --force --leaf-only .* keeps the "
                       r"root \(the trust anchor\)"):
        load_or_generate(rev2, tmp_path)
    assert snapshot(first.slot_dir) == before
    made, kept = regenerate(IdentityLocation.of(rev2, tmp_path), identity_params(rev2),
                            leaf_only=True)
    assert kept is not None and kept.name.startswith("slot0.replaced-")
    assert snapshot(kept) == before  # the old slot, as it was
    assert made.identity.root == first.identity.root
    assert made.identity.leaf != first.identity.leaf
    assert load_or_generate(rev2, tmp_path).identity.leaf == made.identity.leaf


def test_two_devices_generating_at_once_end_with_one_identity(tmp_path: Path) -> None:
    loc = IdentityLocation.of(P384, tmp_path)
    from vdev.endpoint import identity_store

    early = identity_store.generate(loc, identity_params(P384))
    late = identity_store.generate(loc, identity_params(P384))  # lost the race: reads it
    assert not late.created and late.identity.leaf == early.identity.leaf


def test_earlier_layout_is_used_in_place_when_it_matches(tmp_path: Path) -> None:
    old = tmp_path / "1ded-7e10"
    # What earlier versions wrote: the chain and keys in slot0/, beside what they were
    # issued for.
    params = identity_params(P384)
    save_identity(generate_identity(params), old / "slot0")
    (old / "slot0" / "params.json").write_text(
        json.dumps(dataclasses.asdict(params), sort_keys=True))
    before = snapshot(old)
    loaded = load_or_generate(P384, tmp_path)
    assert loaded.slot_dir == old / "slot0" and not loaded.created
    assert snapshot(old) == before
    # A key type it was not made for gets its own identity; the old one stays.
    assert load_or_generate(P256, tmp_path).slot_dir.parent.name == "1ded-7e10-ecdsa-p256"
    assert snapshot(old) == before


def test_tee_device_names_its_identity_dir(tmp_path: Path) -> None:
    device = TeeDevice(P256, state_dir=tmp_path)
    assert device.identity_dir == tmp_path / "1ded-7e10-ecdsa-p256" / "slot0"


# ---- as the user meets it ----------------------------------------------------------------

def test_serve_with_a_corrupt_leaf_key_is_one_line(tmp_path: Path) -> None:
    slot = load_or_generate(P384, tmp_path).slot_dir
    (slot / "leaf.key").write_text("not a key\n")
    before = snapshot(tmp_path)
    out = vdev("serve", "--socket", tmp_path / "d.sock", "--state-dir", tmp_path)
    line = one_line_error(out, "vdev serve:")
    assert line.startswith(f"vdev serve: device identity: {slot}: the identity does not load")
    assert f"`vdev identity regenerate --force --profile PROFILE --state-dir {tmp_path}`" \
        in line
    assert snapshot(tmp_path) == before


def test_identity_commands(tmp_path: Path) -> None:
    state = tmp_path / "state"
    out = vdev("identity", "trust-anchor", "--state-dir", state)
    assert one_line_error(out, "vdev identity:") == (
        f"vdev identity: no identity 1ded-7e10-ecdsa-p384 yet in {state}: `vdev identity "
        f"generate --state-dir {state}` makes it")
    out = vdev("identity", "generate", "--state-dir", state)
    assert out.returncode == 0, out.stderr
    slot = state / "1ded-7e10-ecdsa-p384" / "slot0"
    assert out.stdout.splitlines() == [
        f"identity 1ded-7e10-ecdsa-p384 generated in {slot}", f"trust anchor {slot}/root.pem"]
    before = snapshot(state)
    assert vdev("identity", "trust-anchor", "--state-dir", state).stdout == \
        f"{slot}/root.pem\n"
    shown = vdev("identity", "show", "--state-dir", state).stdout
    assert f"trust anchor  {slot}/root.pem" in shown
    assert "root          CN=vdev 1ded:7e10 root CA" in shown
    again = vdev("identity", "generate", "--state-dir", state)
    assert again.stdout.startswith("identity 1ded-7e10-ecdsa-p384 exists, kept")
    refused = vdev("identity", "regenerate", "--state-dir", state)
    assert "Add --force to do it" in one_line_error(refused, "vdev identity:")
    assert snapshot(state) == before  # nothing above changed a byte or a time stamp
    forced = vdev("identity", "regenerate", "--force", "--state-dir", state)
    assert forced.returncode == 0 and "the old one is in" in forced.stdout
    assert (slot / "root.pem").read_bytes() != before["1ded-7e10-ecdsa-p384/slot0/root.pem"][0]
    kept = next((state / "1ded-7e10-ecdsa-p384").glob("slot0.replaced-*"))
    assert (kept / "root.pem").read_bytes() == before["1ded-7e10-ecdsa-p384/slot0/root.pem"][0]


def test_default_state_dir_is_under_home(tmp_path: Path) -> None:
    env = {**os.environ, "HOME": str(tmp_path)}
    out = vdev("identity", "generate", "--profile", "auth-only-spdm12", env=env)
    assert out.returncode == 0, out.stderr
    assert (tmp_path / ".local/state/vdev/identity/1ded-7e11-ecdsa-p384/slot0/root.pem"
            ).exists()


def test_an_interrupted_generation_leaves_nothing_behind(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from vdev.endpoint import identity_store

    def interrupted(params: object) -> object:
        raise KeyboardInterrupt

    monkeypatch.setattr(identity_store, "generate_identity", interrupted)
    with pytest.raises(KeyboardInterrupt):
        load_or_generate(P384, tmp_path)
    assert [p.name for p in (tmp_path / "1ded-7e10-ecdsa-p384").iterdir()] == []
    monkeypatch.undo()
    assert load_or_generate(P384, tmp_path).created  # the next start makes it
