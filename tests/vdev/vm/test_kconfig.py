"""Fragments and .config merging (Documentation/kbuild/kconfig.rst line forms)."""

from __future__ import annotations

import pytest

from vdev.vm.kconfig import KconfigError, Option, merged, parse_config, parse_fragment, unmet
from vdev.vm.kernel import FRAGMENT, project_fragment

FRAGMENT_TEXT = """\
# header comment, no tag: it describes nothing
# ---- a section rule ----

# [required]
# The first reason.
CONFIG_A=y
CONFIG_B=y

# [recommended]
# Nice to have.
# CONFIG_C is not set

CONFIG_D="a string"
"""


def test_fragment_tags_reasons_and_blocks() -> None:
    opts = parse_fragment(FRAGMENT_TEXT)
    assert opts == [
        Option("CONFIG_A", "y", True, "The first reason."),
        Option("CONFIG_B", "y", True, "The first reason."),
        Option("CONFIG_C", "n", False, "Nice to have."),
        # a blank line ends a block: untagged options are required, no reason
        Option("CONFIG_D", '"a string"', True, ""),
    ]


def test_fragment_rejects_garbage_with_line_number() -> None:
    with pytest.raises(KconfigError, match=r"frag:2: not a Kconfig line"):
        parse_fragment("CONFIG_A=y\nA=y\n", source="frag")


def test_parse_config_later_lines_win() -> None:
    cfg = parse_config("CONFIG_A=y\n# CONFIG_B is not set\nCONFIG_A=m\n# comment\n")
    assert cfg == {"CONFIG_A": "m", "CONFIG_B": "n"}


def test_merge_sets_overrides_and_leaves_an_unchanged_config_alone() -> None:
    base = "CONFIG_A=n\n# CONFIG_B is not set\nCONFIG_KEEP=y\nCONFIG_C=y\n"
    opts = [Option("CONFIG_A", "y"), Option("CONFIG_B", "y"), Option("CONFIG_C", "n"),
            Option("CONFIG_NEW", "y")]
    out = merged(base, opts)
    assert out is not None
    assert parse_config(out) == {"CONFIG_A": "y", "CONFIG_B": "y", "CONFIG_C": "n",
                                 "CONFIG_KEEP": "y", "CONFIG_NEW": "y"}
    # each symbol once: no stale line left for kconfig to trip over
    assert out.count("CONFIG_A") == 1 and out.count("CONFIG_B") == 1
    assert merged(out, opts) is None


def test_unmet_treats_absent_as_not_set() -> None:
    cfg = {"CONFIG_A": "y", "CONFIG_B": "m"}
    opts = [Option("CONFIG_A", "y"), Option("CONFIG_B", "y"), Option("CONFIG_C", "n"),
            Option("CONFIG_D", "y")]
    assert [o.name for o in unmet(cfg, opts)] == ["CONFIG_B", "CONFIG_D"]


def test_project_fragment_documents_every_option() -> None:
    opts = project_fragment()
    names = {o.name for o in opts}
    # what the device and the guest flow cannot do without
    for must in ("CONFIG_PCI_DOE", "CONFIG_PCI_TSM", "CONFIG_PCI_IDE", "CONFIG_PCI_MSI",
                 "CONFIG_PCI_MMCONFIG", "CONFIG_TSM", "CONFIG_MODULES", "CONFIG_BLK_DEV_INITRD",
                 "CONFIG_SERIAL_8250_CONSOLE", "CONFIG_64BIT"):
        assert must in names and next(o for o in opts if o.name == must).required, must
    assert all(o.why for o in opts), [o.name for o in opts if not o.why]
    assert len(names) == len(opts), "an option appears twice in " + str(FRAGMENT)
