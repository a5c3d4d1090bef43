"""Pre-shared keys: PSKHint -> PSK (DSP0274 PSK_EXCHANGE), and their text form.

DSP0274 leaves PSK provisioning to the implementation ("outside the scope of this
specification").  Ours is a table of hints and keys, written one entry per line (a PSK
file) or comma-separated (a profile value)::

    HINT=KEY

Either side is text (UTF-8, taken byte for byte: no terminating NUL is added) or
``hex:`` and hex digits.  An empty HINT is the PSK used when PSK_EXCHANGE carries no
PSKHint (P = 0).  DMTF's spdm-emu uses the C strings "TestPskHint" and "TestPskData"
with their terminating NUL, 12 bytes each; in a TOML profile that entry is written
``"TestPskHint\\u0000=TestPskData\\u0000"``.

Errors never quote a key: a PSK is a secret (it is only ever revealed through the
engines' opt-in secret sink, like a DHE secret).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from spdm.errors import PskFormatError

#: DSP0274 PSK_EXCHANGE: a PSK "should be at least 128 bits" (spdm-emu's test PSK is
#: 96): shorter keys are accepted, and front ends warn about them (`weak`).
RECOMMENDED_PSK_SIZE = 16
MAX_HINT_SIZE = 0xFFFF


def _value(text: str, what: str, where: str) -> bytes:
    if text.startswith("hex:"):
        digits = "".join(text[4:].split())
        try:
            return bytes.fromhex(digits)
        except ValueError:
            raise PskFormatError(f"{where}: the {what} after 'hex:' is not hex") from None
    return text.encode()


def parse_hint(text: str) -> bytes:
    """One hint in the entry syntax (text, or hex:...)."""
    return _value(text, "hint", "hint")


def parse_entries(entries: Iterable[str], where: str = "PSK") -> dict[bytes, bytes]:
    """Entries "HINT=KEY" -> {hint: psk}.  Blank entries and '#' comments are skipped."""
    out: dict[bytes, bytes] = {}
    for n, raw in enumerate(entries, 1):
        entry = raw.strip()
        if not entry or entry.startswith("#"):
            continue
        at = f"{where} entry {n}"
        hint_text, sep, key_text = entry.partition("=")
        if not sep:
            raise PskFormatError(f"{at}: expected HINT=KEY")
        hint = _value(hint_text, "hint", at)
        key = _value(key_text, "key", at)
        if len(hint) > MAX_HINT_SIZE:
            raise PskFormatError(f"{at}: hint longer than {MAX_HINT_SIZE} bytes")
        if not key:
            raise PskFormatError(f"{at}: empty key")
        if hint in out:
            raise PskFormatError(f"{at}: hint {describe_hint(hint)} given twice")
        out[hint] = key
    return out


def parse_file_text(text: str, where: str = "PSK file") -> dict[bytes, bytes]:
    return parse_entries(text.splitlines(), where)


def parse_list(text: str, where: str = "PSK list") -> dict[bytes, bytes]:
    return parse_entries(text.split(","), where)


def describe_hint(hint: bytes) -> str:
    """A hint as a log line may show it (hints are not secret)."""
    if not hint:
        return "(empty)"
    printable = hint.rstrip(b"\0")
    if printable and all(32 <= b < 127 for b in printable):
        return repr(printable.decode()) + ("+NUL" if len(printable) < len(hint) else "")
    return "hex:" + hint.hex()


def hints(table: Mapping[bytes, bytes]) -> list[str]:
    return [describe_hint(h) for h in sorted(table)]


def weak(table: Mapping[bytes, bytes]) -> list[str]:
    """Hints whose key is shorter than DSP0274's recommended 128 bits."""
    return [describe_hint(h) for h, k in sorted(table.items()) if len(k) < RECOMMENDED_PSK_SIZE]
