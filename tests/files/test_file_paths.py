"""ppcp.control.paths without a network: wire-path checks and descriptor-based resolution."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ppcp.control import paths
from ppcp.core.errors import RemotePathError


@pytest.mark.parametrize(
    ("wire", "parts"),
    [
        ("", ()),
        (".", ()),
        ("./", ()),
        ("a", ("a",)),
        ("a//b/./c/", ("a", "b", "c")),
        ("with space/ünïcödé", ("with space", "ünïcödé")),
        ("...", ("...",)),
        (".hidden", (".hidden",)),
    ],
)
def test_wire_paths_that_parse(wire: str, parts: tuple[str, ...]) -> None:
    assert paths.parse_wire_path(wire) == parts


@pytest.mark.parametrize(
    "wire",
    [
        "/abs",
        "..",
        "a/..",
        "a/../b",
        "a\x00b",
        "tab\there",
        "\x1b[31m",
        "del\x7f",
        "c1\x85",
        "rlo\u202e",
        "\u2066isolate",
        "x" * 256,
        "a/" * 2049,
        "lone\udcffsurrogate",
    ],
)
def test_wire_paths_that_are_refused(wire: str) -> None:
    with pytest.raises(RemotePathError) as info:
        paths.parse_wire_path(wire)
    assert all(c.isprintable() for c in info.value.message)


def test_non_strings_are_refused() -> None:
    for value in (None, 1, b"bytes", ["a"]):
        with pytest.raises(RemotePathError):
            paths.parse_wire_path(value)


@given(st.text(max_size=300))
def test_parsed_components_are_always_safe(text: str) -> None:
    """The fuzzing invariant for wire paths: parse to safe names, or RemotePathError."""
    try:
        parts = paths.parse_wire_path(text)
    except RemotePathError:
        return
    for part in parts:
        assert part not in ("", ".", "..") and "/" not in part
        assert paths.check_name(part) == part
    assert len("/".join(parts).encode()) <= paths.MAX_PATH_BYTES


def test_display_escapes_and_bounds() -> None:
    assert paths.display("a\x1b[2Jb") == "a\\x1b[2Jb"
    assert paths.display("\u202e") == "\\u202e"
    assert paths.display("") == "."
    long = paths.display("x" * 1000)
    assert len(long) <= paths.DISPLAY_MAX and "..." in long


def test_part_names() -> None:
    assert paths.part_name("f.txt") == ".f.txt.ppcp-part"
    long = paths.part_name("é" * 127)  # 254 bytes: the decorated name would not fit
    assert long.startswith(".") and long.endswith(".ppcp-part") and len(long.encode()) <= 255
    assert paths.is_part_name(long) and paths.is_part_name(".f.txt.ppcp-part")
    assert not paths.is_part_name("f.ppcp-part")
    # A new directory's part name carries its source's identifier (RFC 16.7).
    assert paths.part_name("d", "0123456789abcdef") == ".d.0123456789abcdef.ppcp-part"
    hashed = paths.part_name("é" * 120, "0123456789abcdef")
    assert paths.is_part_name(hashed) and len(hashed.encode()) <= 255
    assert hashed not in (long, paths.part_name("é" * 120), paths.part_name("é" * 120, "1" * 16))
    assert paths.source_id("host", b"/a") != paths.source_id("host", b"/b")
    assert paths.source_id("ab", "c") != paths.source_id("a", "bc")
    assert re.fullmatch("[0-9a-f]{16}", paths.source_id("host", b"/\xff"))


@pytest.fixture
def tree(tmp_path: Path) -> paths.Tree:
    root = tmp_path / "root"
    (root / "a" / "b").mkdir(parents=True)
    (root / "a" / "b" / "f").write_text("f")
    (tmp_path / "outside").mkdir()
    os.symlink("a/b", root / "to-b")
    os.symlink("to-b/f", root / "chain")
    os.symlink("../../a", root / "a" / "b" / "up")  # stays inside
    os.symlink("../../..", root / "a" / "b" / "out")  # leaves the root
    os.symlink(str(root / "a"), root / "abs-in")
    os.symlink(str(tmp_path / "outside"), root / "abs-out")
    os.symlink("loop2", root / "loop1")
    os.symlink("loop1", root / "loop2")
    os.symlink(".", root / "a" / "self")
    return paths.Tree(root)


@pytest.mark.parametrize(
    ("wire", "canonical", "kind"),
    [
        ("", "", "dir"),
        ("a/b/f", "a/b/f", "file"),
        ("to-b", "a/b", "dir"),
        ("chain", "a/b/f", "file"),
        ("a/b/up/b/f", "a/b/f", "file"),
        ("abs-in/b", "a/b", "dir"),
        ("a/self/self/b", "a/b", "dir"),
        ("a/self", "a", "dir"),
        ("a/new", "a/new", None),
        ("to-b/new", "a/b/new", None),
    ],
)
def test_resolution_inside(tree: paths.Tree, wire: str, canonical: str, kind: str | None) -> None:
    with tree.resolve(paths.parse_wire_path(wire)) as t:
        assert t.path == canonical
        if kind == "dir":
            assert t.is_dir
        elif kind == "file":
            assert t.is_file
        else:
            assert t.st is None


@pytest.mark.parametrize(
    ("wire", "words"),
    [
        ("a/b/out", "outside the root"),
        ("a/b/out/x", "outside the root"),
        ("abs-out/x", "outside the root"),
        ("loop1", "too many levels"),
        ("a/missing/x", "does not exist"),
        ("a/b/f/x", "not a directory"),
    ],
)
def test_resolution_refused(tree: paths.Tree, wire: str, words: str) -> None:
    with pytest.raises(RemotePathError, match=words):
        tree.resolve(paths.parse_wire_path(wire))


def test_no_descriptor_leaks(tree: paths.Tree) -> None:
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(50):
        with tree.resolve(("a", "b", "up", "b", "f")):
            pass
        with pytest.raises(RemotePathError):
            tree.resolve(("a", "b", "out", "x"))
    assert len(os.listdir("/proc/self/fd")) == before


def test_open_regular_refuses_what_is_not_a_file(tree: paths.Tree) -> None:
    os.mkfifo(Path(tree.root) / "fifo")
    with tree.resolve(("fifo",)) as t, pytest.raises(RemotePathError, match="FIFO"):
        paths.open_regular(t)
    with tree.resolve(("a",)) as t, pytest.raises(RemotePathError, match="directory"):
        paths.open_regular(t)
    with tree.resolve(("chain",)) as t:
        fd = paths.open_regular(t)
        assert os.read(fd, 10) == b"f"
        os.close(fd)
