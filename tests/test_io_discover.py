"""Input discovery: directories, globs, list files, fsspec URLs; streaming and ordering."""

from __future__ import annotations

import inspect
import os
from pathlib import Path

import pytest

from facefleet.io.discover import is_url, iter_inputs
from facefleet.io.read import read_source


def _touch(root: Path, *names: str) -> None:
    for n in names:
        p = root / n
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"\xff\xd8\xff" + n.encode())


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "photos"
    _touch(
        root,
        "b.jpg",
        "a.PNG",
        "c.txt",
        "notes.md",
        "z/last.webp",
        "m/sub/deep.TIFF",
        "m/one.jpeg",
        "m/two.bmp",
        ".hidden/secret.jpg",
        "._a.jpg",
        "m/x.tif",
    )
    return root


def test_directory_recursive_sorted_filtered(tree: Path) -> None:
    got = [os.path.relpath(p, tree) for p in iter_inputs(tree)]
    assert got == ["a.PNG", "b.jpg", "m/one.jpeg", "m/sub/deep.TIFF", "m/two.bmp", "m/x.tif", "z/last.webp"]
    assert all(isinstance(p, str) for p in iter_inputs(str(tree)))
    only_jpg = [os.path.basename(p) for p in iter_inputs(tree, extensions=["JPG", ".jpeg"])]
    assert only_jpg == ["b.jpg", "one.jpeg"]
    hidden = {os.path.basename(p) for p in iter_inputs(tree, include_hidden=True)}
    assert {"secret.jpg", "._a.jpg"} <= hidden


def test_is_a_generator_and_streams(tree: Path) -> None:
    assert inspect.isgenerator(iter_inputs(tree))
    it = iter_inputs(tree)
    first = next(it)
    assert first.endswith("a.PNG")
    # files created after the walk started, in a directory not yet listed, are still seen
    _touch(tree, "z/late.jpg")
    rest = list(it)
    assert rest[-2:] == [str(tree / "z" / "last.webp"), str(tree / "z" / "late.jpg")]


def test_glob_patterns(tree: Path) -> None:
    got = [os.path.relpath(p, tree) for p in iter_inputs(str(tree / "m" / "*"))]
    assert got == ["m/one.jpeg", "m/sub/deep.TIFF", "m/two.bmp", "m/x.tif"]  # matched dir is walked
    deep = [os.path.relpath(p, tree) for p in iter_inputs(str(tree / "**" / "*.jpg"))]
    assert deep == ["b.jpg"]
    tifs = [os.path.relpath(p, tree) for p in iter_inputs(str(tree / "**" / "*.t[i]f"))]
    assert tifs == ["m/x.tif"]
    with pytest.raises(FileNotFoundError, match="no files match"):
        list(iter_inputs(str(tree / "*.gif")))


def test_relative_glob(tree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tree)
    assert list(iter_inputs("*.jpg")) == ["b.jpg"]
    assert list(iter_inputs("m/*.bmp")) == [os.path.join("m", "two.bmp")]


def test_list_file(tree: Path, tmp_path: Path) -> None:
    lst = tree / "inputs.lst"
    absolute = tree / "z" / "last.webp"
    lst.write_text(f"# my images\n\nb.jpg\n  m/one.jpeg  \n{absolute}\ns3://bucket/k.jpg\nmissing.png\n")
    got = list(iter_inputs(lst))
    assert got == [
        str(tree / "b.jpg"),
        str(tree / "m" / "one.jpeg"),
        str(tree / "z" / "last.webp"),
        "s3://bucket/k.jpg",
        str(tree / "missing.png"),  # not checked: becomes a per-file error downstream
    ]
    # detected by content when the extension says nothing
    noext = tmp_path / "todo"
    noext.write_text("photos/b.jpg\n")
    assert list(iter_inputs(noext)) == [str(tmp_path / "photos" / "b.jpg")]


def test_single_file_and_mixed_list(tree: Path) -> None:
    assert list(iter_inputs(tree / "b.jpg")) == [str(tree / "b.jpg")]
    assert list(iter_inputs(tree / "notes.md")) != []  # explicit text file = list file
    got = list(iter_inputs([tree / "b.jpg", str(tree / "z")]))
    assert got == [str(tree / "b.jpg"), str(tree / "z" / "last.webp")]
    assert list(iter_inputs(p for p in [tree / "b.jpg"])) == [str(tree / "b.jpg")]  # any iterable
    with pytest.raises(TypeError):
        list(iter_inputs(42))  # type: ignore[arg-type]
    url = (tree / "b.jpg").as_uri()
    assert list(iter_inputs(url)) == [str(tree / "b.jpg")]
    assert read_source(url) == (tree / "b.jpg").read_bytes()


def test_missing_input_is_one_clear_line(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError) as info:
        list(iter_inputs(tmp_path / "does-not-exist"))
    msg = str(info.value)
    assert msg == f"input not found: {tmp_path / 'does-not-exist'}"


def test_is_url() -> None:
    assert is_url("s3://b/k") and is_url("memory://x") and is_url("file:///tmp/x")
    assert not is_url("/tmp/x") and not is_url("C:\\x\\y.jpg") and not is_url("rel/a.jpg")


def test_fsspec_memory_filesystem() -> None:
    fsspec = pytest.importorskip("fsspec")
    fs = fsspec.filesystem("memory")
    root = "/ffdiscover"
    if fs.exists(root):
        fs.rm(root, recursive=True)
    for name in ["b.jpg", "a.png", "skip.txt", "sub/c.webp", ".hid/d.jpg"]:
        fs.pipe(f"{root}/{name}", b"\xff\xd8\xff" + name.encode())
    fs.pipe(f"{root}/list.txt", b"# c\nb.jpg\nsub/c.webp\n")
    try:
        got = list(iter_inputs(f"memory://{root}"))
        assert got == [f"memory://{root}/a.png", f"memory://{root}/b.jpg", f"memory://{root}/sub/c.webp"]
        assert read_source(got[1]) == b"\xff\xd8\xffb.jpg"
        assert list(iter_inputs(f"memory://{root}/list.txt")) == [
            f"memory://{root}/b.jpg",
            f"memory://{root}/sub/c.webp",
        ]
        assert list(iter_inputs(f"memory://{root}/*.jpg")) == [f"memory://{root}/b.jpg"]
        with pytest.raises(FileNotFoundError, match="input not found"):
            list(iter_inputs(f"memory://{root}/nope"))
        with pytest.raises(FileNotFoundError):
            read_source(f"memory://{root}/nope.jpg")
    finally:
        fs.rm(root, recursive=True)


def test_walk_yields_regular_files_and_reports_the_rest(tmp_path: Path) -> None:
    """FIFOs, sockets, dangling symlinks and symlink loops are never yielded (a FIFO would block its
    reader forever): each is reported through ``on_skip``; a .gif is an image; a non-UTF-8 name
    comes through as its surrogate-escaped str."""
    import socket

    root = tmp_path / "in"
    _touch(root, "a.jpg", "b.gif", "sub/c.png")
    os.mkfifo(root / "pipe.jpg")
    os.symlink(root, root / "sub" / "loop")  # a loop back to the top
    os.symlink(root / "gone.jpg", root / "dangling.jpg")
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(root / "s.png"))
    raw = os.fsencode(root) + b"/caf\xe9.jpg"
    with open(raw, "wb") as fh:
        fh.write(b"\xff\xd8\xff")
    skipped: list[tuple[str, str]] = []
    try:
        listed = iter_inputs(root, on_skip=lambda p, r: skipped.append((p, r)))
        got = [os.path.relpath(p, root) for p in listed]
    finally:
        sock.close()
    assert got == ["a.jpg", "b.gif", os.fsdecode(b"caf\xe9.jpg"), "sub/c.png"]
    assert os.fsencode(got[2]) == b"caf\xe9.jpg"
    why = {os.path.relpath(p, root): r for p, r in skipped}
    assert "not a regular file" in why["pipe.jpg"] and "not a regular file" in why["s.png"]
    assert why["dangling.jpg"] == "dangling symlink"
    assert "loop" in why["sub/loop"] or "repeated" in why["sub/loop"]


def test_excluded_folder_is_never_walked(tmp_path: Path) -> None:
    root = tmp_path / "in"
    _touch(root, "a.jpg", "out/files/a.jpg_overlay.png", "out2/b.jpg")
    got = [os.path.relpath(p, root) for p in iter_inputs(root, exclude=[root / "out"])]
    assert got == ["a.jpg", "out2/b.jpg"]
    # the same folder reached through a symlink is excluded too
    os.symlink(root / "out", root / "link")
    assert [os.path.relpath(p, root) for p in iter_inputs(root, exclude=[str(root / "out")])] == got


def test_list_file_keeps_non_utf8_names(tmp_path: Path) -> None:
    name = os.fsencode(tmp_path) + b"/caf\xe9.jpg"
    lst = tmp_path / "list.txt"
    lst.write_bytes(b"caf\xe9.jpg\n")
    assert [os.fsencode(p) for p in iter_inputs(lst)] == [name]
