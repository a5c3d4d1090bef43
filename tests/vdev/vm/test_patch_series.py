"""vdev.vm.patch_series: a series applied so that only changed files are rewritten."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from vdev.vm.patch_series import Series, SeriesError, applied_digest, apply_series, touched_paths

PRISTINE = {
    "hw/a.c": "int a;\nint a2;\n",
    "hw/b.c": "int b;\n",
    "hw/untouched.c": "int u;\n",
}

A_PATCH = """From 1 Mon Sep 17 00:00:00 2001
Subject: [PATCH 1/2] change a, add new

---
diff --git a/hw/a.c b/hw/a.c
index 1..2 100644
--- a/hw/a.c
+++ b/hw/a.c
@@ -1,2 +1,2 @@
 int a;
-int a2;
+int a3;
diff --git a/hw/new.c b/hw/new.c
new file mode 100644
--- /dev/null
+++ b/hw/new.c
@@ -0,0 +1 @@
+int n;
--
2.39.5
"""

B_PATCH = """Subject: [PATCH] change b
---
--- a/hw/b.c
+++ b/hw/b.c
@@ -1 +1 @@
-int b;
+int b2;
"""


def make_tree(root: Path) -> Path:
    for rel, text in PRISTINE.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    old = 1_000_000_000
    for rel in PRISTINE:
        os.utime(root / rel, (old, old))
    return root


def series(directory: Path, *patches: str) -> Series:
    directory.mkdir(parents=True)
    for i, text in enumerate(patches, start=1):
        (directory / f"{i:04d}-p.patch").write_text(text)
    return Series.from_dir(directory)


def test_touched_paths_from_diff_headers() -> None:
    assert touched_paths(A_PATCH.splitlines()) == ["hw/a.c", "hw/new.c"]
    with pytest.raises(SeriesError, match="unexpected path"):
        touched_paths(["--- a/../etc/passwd", "+++ b/../etc/passwd"])
    with pytest.raises(SeriesError, match="unexpected path"):
        touched_paths(["--- hw/a.c", "+++ hw/a.c"])


def test_digest_follows_content_and_settings(tmp_path: Path) -> None:
    s1 = series(tmp_path / "s1", A_PATCH)
    s2 = series(tmp_path / "s2", A_PATCH.replace("int a3", "int a4"))
    assert s1.digest("x") == s1.digest("x") != s1.digest("y")
    assert s1.digest("x") != s2.digest("x")


def test_series_changes_rewrite_only_what_changes(tmp_path: Path) -> None:
    tree = make_tree(tmp_path / "tree")
    originals = tmp_path / "originals"

    s1 = series(tmp_path / "s1", A_PATCH)
    assert sorted(apply_series(tree, s1, originals, "d1")) == ["hw/a.c", "hw/new.c"]
    assert (tree / "hw/a.c").read_text() == "int a;\nint a3;\n"
    assert (tree / "hw/new.c").read_text() == "int n;\n"
    assert applied_digest(tree) == "d1"
    untouched = (tree / "hw/untouched.c").stat().st_mtime

    # The next series drops the first patch: a.c goes back to pristine, new.c away.
    s2 = series(tmp_path / "s2", B_PATCH)
    assert sorted(apply_series(tree, s2, originals, "d2")) == ["hw/a.c", "hw/b.c", "hw/new.c"]
    assert (tree / "hw/a.c").read_text() == PRISTINE["hw/a.c"]
    assert not (tree / "hw/new.c").exists()
    assert (tree / "hw/b.c").read_text() == "int b2;\n"

    # Same result for b.c in the next series: b.c is not rewritten.
    b_mtime = (tree / "hw/b.c").stat().st_mtime_ns
    os.utime(tree / "hw/b.c", ns=(b_mtime - 10**9, b_mtime - 10**9))
    s3 = series(tmp_path / "s3", B_PATCH, A_PATCH)
    assert sorted(apply_series(tree, s3, originals, "d3")) == ["hw/a.c", "hw/new.c"]
    assert (tree / "hw/b.c").stat().st_mtime_ns == b_mtime - 10**9
    assert (tree / "hw/untouched.c").stat().st_mtime == untouched
    assert applied_digest(tree) == "d3"


def test_a_patch_that_does_not_apply_names_itself_and_changes_nothing(tmp_path: Path) -> None:
    tree = make_tree(tmp_path / "tree")
    bad = B_PATCH.replace("-int b;", "-int c;")
    s = series(tmp_path / "s", A_PATCH, bad)
    with pytest.raises(SeriesError, match="0002-p.patch does not apply"):
        apply_series(tree, s, tmp_path / "originals", "d")
    assert {rel: (tree / rel).read_text() for rel in PRISTINE} == PRISTINE
    assert not (tree / "hw/new.c").exists()
    assert applied_digest(tree) is None


def test_empty_series_directory_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(SeriesError, match="no \\*.patch files"):
        Series.from_dir(tmp_path)
