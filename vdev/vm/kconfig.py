"""Kconfig fragments and .config files: parse, merge, compare.

A `.config` line is `CONFIG_NAME=value` or `# CONFIG_NAME is not set`
(Documentation/kbuild/kconfig.rst); a fragment is a `.config` excerpt.  The
project's own fragment (guest/kernel.config) also tags each option
`[required]` or `[recommended]` in the comment block above it, and that
block says why the option is there; `make kernel` and the KDIR checks use
both to name a missing option and its reason in one line.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

_SET = re.compile(r"^(CONFIG_[A-Za-z0-9_]+)=(.*)$")
_UNSET = re.compile(r"^# (CONFIG_[A-Za-z0-9_]+) is not set$")
_TAG = re.compile(r"^#\s*\[(required|recommended)\]\s*$")


class KconfigError(ValueError):
    """A fragment line that is neither an option, a comment nor blank."""


@dataclass(frozen=True)
class Option:
    """One option a fragment asks for.  `value` is "n" for `is not set`."""

    name: str
    value: str
    required: bool = True
    why: str = ""

    def line(self) -> str:
        return f"# {self.name} is not set" if self.value == "n" else f"{self.name}={self.value}"

    def holds_in(self, config: dict[str, str]) -> bool:
        return config.get(self.name, "n") == self.value


def parse_config(text: str) -> dict[str, str]:
    """Symbol -> value of a .config ("n" for `is not set`); later lines win."""
    out: dict[str, str] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if m := _SET.match(line):
            out[m[1]] = m[2]
        elif m := _UNSET.match(line):
            out[m[1]] = "n"
    return out


def parse_fragment(text: str, source: str = "fragment") -> list[Option]:
    """The options of a fragment, in order.  Untagged options are required
    (a user's KCONFIG= fragment says what it wants, not what it would like);
    the reason is the comment text between the tag and the option."""
    options: list[Option] = []
    required, why = True, list[str]()
    for n, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line:
            # A blank line ends a block: its tag and reason apply no further.
            required, why = True, []
        elif m := _TAG.match(line):
            required, why = m[1] == "required", []
        elif m := _UNSET.match(line) or _SET.match(line):
            value = "n" if line.startswith("#") else m[2]
            options.append(Option(m[1], value, required, " ".join(why)))
        elif line.startswith("#"):
            comment = line.lstrip("#").strip()
            if comment and not comment.startswith("----"):
                why.append(comment)
        else:
            raise KconfigError(f"{source}:{n}: not a Kconfig line: {raw!r}")
    return options


def read_fragment(path: Path) -> list[Option]:
    return parse_fragment(path.read_text(), source=str(path))


def merged(config_text: str, options: list[Option]) -> str | None:
    """`config_text` with every option set as asked, or None when it already
    says so (so an unchanged .config is never rewritten: kbuild would
    reconfigure and rebuild for nothing)."""
    config = parse_config(config_text)
    todo = [o for o in options if config.get(o.name, "n") != o.value]
    if not todo:
        return None
    names = {o.name for o in todo}
    kept = []
    for raw in config_text.splitlines():
        line = raw.strip()
        m = _SET.match(line) or _UNSET.match(line)
        if m and m[1] in names:
            continue
        kept.append(raw)
    return "\n".join([*kept, *(o.line() for o in todo)]) + "\n"


def unmet(config: dict[str, str], options: list[Option]) -> list[Option]:
    """The options the configured tree does not have as asked."""
    return [o for o in options if not o.holds_in(config)]
