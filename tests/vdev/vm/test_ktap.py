"""KTAP rendering, checked line by line against Documentation/dev-tools/ktap.rst."""

from __future__ import annotations

from vdev.vm.ktap import KtapTest, embedded, render, script_test


def test_nested_groups_skip_error_and_totals() -> None:
    doc = render([
        KtapTest("foundation", subtests=[
            KtapTest("guest booted", diagnostics=["kernel 7.3.4, 3.1 s"]),
            KtapTest("IDs match # profile", ok=False, diagnostics=["guest 1234:5678"]),
        ]),
        KtapTest("connect", subtests=[
            KtapTest("tsm/connect", ok=False, error="QEMU exited: no PVH note"),
            KtapTest("TDISP LOCK", skip="not reached"),
        ]),
        KtapTest("servers healthy"),
    ])
    assert doc.splitlines() == [
        "KTAP version 1",
        "1..3",
        "  KTAP version 1",
        "  # Subtest: foundation",
        "  1..2",
        "  # kernel 7.3.4, 3.1 s",
        "  ok 1 guest booted",
        "  # guest 1234:5678",
        "  not ok 2 IDs match no. profile",   # '#' may not appear in a description
        "  # foundation: pass:1 fail:1 skip:0 total:2",
        "not ok 1 foundation",
        "  KTAP version 1",
        "  # Subtest: connect",
        "  1..2",
        "  not ok 1 tsm/connect # ERROR QEMU exited: no PVH note",
        "  ok 2 TDISP LOCK # SKIP not reached",
        "  # connect: pass:0 fail:1 skip:1 total:2",
        "not ok 2 connect",
        "ok 3 servers healthy",
        "# Totals: pass:2 fail:2 skip:1 total:5",
    ]


def test_script_output_nested_verbatim() -> None:
    console = ["random boot noise", "  TAP version 13", "  1..2", "  ok 1 a",
               "  not ok 2 b # rc=1", "  # trailing"]
    assert embedded(console) == ["TAP version 13", "1..2", "ok 1 a", "not ok 2 b # rc=1",
                                 "# trailing"]
    t = script_test("90-mine.sh", 0, console)
    assert not t.passed  # its own results failed even though it exited 0
    doc = render([KtapTest("scripts", subtests=[t, script_test("91-quiet.sh", 3, ["hi"]),
                                                script_test("92-cut.sh", None, [])])])
    lines = doc.splitlines()
    assert lines[lines.index("  # Subtest: scripts") + 2:] == [
        "    TAP version 13", "    1..2", "    ok 1 a", "    not ok 2 b # rc=1", "    # trailing",
        "  not ok 1 90-mine.sh",
        "  # exit status 3",
        "  not ok 2 91-quiet.sh",
        "  not ok 3 92-cut.sh # ERROR did not finish (the guest stopped first)",
        "  # scripts: pass:0 fail:3 skip:0 total:3",
        "not ok 1 scripts",
        "# Totals: pass:0 fail:3 skip:0 total:3",
    ]
    assert embedded(["no", "ktap", "here"]) == []
