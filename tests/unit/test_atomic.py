import os

import pytest

from mitp.atomic import atomic_dir, write_text


def test_atomic_file_replaces_only_on_success(tmp_path):
    target = tmp_path / "a.txt"
    write_text(target, "old")
    with pytest.raises(RuntimeError):
        from mitp.atomic import atomic_path

        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]  # no temp file left behind
    write_text(target, "new")
    assert target.read_text() == "new"
    mask = os.umask(0)
    os.umask(mask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~mask


def test_atomic_dir(tmp_path):
    target = tmp_path / "d"
    with atomic_dir(target) as tmp:
        (tmp / "x").write_text("1")
    with pytest.raises(RuntimeError):
        with atomic_dir(target) as tmp:
            (tmp / "y").write_text("2")
            raise RuntimeError
    assert sorted(p.name for p in target.iterdir()) == ["x"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]
    mask = os.umask(0)
    os.umask(mask)
    assert target.stat().st_mode & 0o777 == 0o777 & ~mask


# --------------------------------------------------------------------------------------------
# Attacks (issue 21): concurrent writers, a reader during replacement, trees deeper than the
# recursion limit and PATH_MAX. Each is written as the attack; the plain use above is the twin.
# --------------------------------------------------------------------------------------------

import multiprocessing  # noqa: E402
import threading  # noqa: E402

from mitp.atomic import remove_tree  # noqa: E402


def _writer(target: str, tag: str, rounds: int, errors) -> None:
    try:
        for i in range(rounds):
            with atomic_dir(target) as tmp:
                token = f"{tag}-{i}"
                for name in ("a", "b", "c"):
                    (tmp / name).write_text(token)
    except BaseException as exc:  # noqa: BLE001 - reported to the parent
        errors.put(f"{tag}: {type(exc).__name__}: {exc}")


def test_concurrent_writers_of_one_folder_never_crash_and_a_reader_never_finds_it_missing(tmp_path):
    target = tmp_path / "shared"
    with atomic_dir(target) as tmp:
        for name in ("a", "b", "c"):
            (tmp / name).write_text("start")
    ctx = multiprocessing.get_context("fork")
    errors = ctx.Queue()
    stop = threading.Event()
    seen: list[str] = []

    def read() -> None:
        while not stop.is_set():
            try:
                tokens = {(target / n).read_text() for n in ("a", "b", "c")}
            except FileNotFoundError as exc:
                seen.append(f"missing: {exc.filename}")
                continue
            if len(tokens) != 1:  # files of two versions: a mixed folder
                seen.append(f"mixed: {tokens}")

    reader = threading.Thread(target=read)
    reader.start()
    procs = [ctx.Process(target=_writer, args=(str(target), f"w{k}", 60, errors)) for k in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    stop.set()
    reader.join()
    problems = []
    while not errors.empty():
        problems.append(errors.get())
    assert problems == [] and all(p.exitcode == 0 for p in procs), problems
    # a reader opens the three files one by one, so it may see two complete versions across its
    # reads; what it must never see is the folder missing
    assert not [s for s in seen if s.startswith("missing")], seen[:5]
    tokens = {(target / n).read_text() for n in ("a", "b", "c")}
    assert len(tokens) == 1 and tokens.pop().endswith("-59")  # the last complete write won
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shared"]  # no temp or old folder left


def test_without_rename_exchange_writers_take_turns(tmp_path, monkeypatch):
    """Where renameat2 is missing (another OS, a filesystem without RENAME_EXCHANGE) concurrent
    writers still never crash: a lock file serialises the swap."""
    import errno

    import mitp.atomic as atomic

    def no_exchange(*args):
        raise OSError(errno.EINVAL, "RENAME_EXCHANGE not supported")

    monkeypatch.setattr(atomic, "_rename2", no_exchange)
    target = tmp_path / "shared"
    ctx = multiprocessing.get_context("fork")
    errors = ctx.Queue()
    procs = [ctx.Process(target=_writer, args=(str(target), f"w{k}", 30, errors)) for k in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    problems = []
    while not errors.empty():
        problems.append(errors.get())
    assert problems == [] and all(p.exitcode == 0 for p in procs), problems
    tokens = {(target / n).read_text() for n in ("a", "b", "c")}
    assert len(tokens) == 1 and tokens.pop().endswith("-29")
    assert sorted(p.name for p in tmp_path.iterdir()) == [".shared.swap.lock", "shared"]


def _deep_tree(top, levels: int) -> None:
    """``top/d/d/.../d/f`` ``levels`` deep, made through folder descriptors (the path is longer
    than PATH_MAX, so no path-based call could make or remove it)."""
    os.mkdir(top)
    fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for _ in range(levels):
            os.mkdir("d", dir_fd=fd)
            new = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = new
        os.close(os.open("f", os.O_WRONLY | os.O_CREAT, dir_fd=fd))
    finally:
        os.close(fd)


def test_remove_tree_removes_a_tree_deeper_than_the_recursion_limit_and_path_max(tmp_path):
    _deep_tree(tmp_path / "deep", 2100)  # 2 bytes a level: 4,200 characters, past PATH_MAX
    remove_tree(tmp_path / "deep")
    assert list(tmp_path.iterdir()) == []


def test_a_failed_atomic_dir_holding_a_deep_tree_leaves_nothing(tmp_path):
    target = tmp_path / "out"
    with pytest.raises(RuntimeError, match="stop"):
        with atomic_dir(target) as tmp:
            os.rmdir(tmp)
            _deep_tree(tmp, 2100)
            raise RuntimeError("stop")
    assert list(tmp_path.iterdir()) == []


def test_remove_tree_does_not_follow_links(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_text("keep")
    tree = tmp_path / "tree" / "sub"
    tree.mkdir(parents=True)
    (tree / "link").symlink_to(outside, target_is_directory=True)
    (tree / "file").write_text("x")
    remove_tree(tmp_path / "tree")
    assert not (tmp_path / "tree").exists() and (outside / "keep.txt").read_text() == "keep"
    remove_tree(tmp_path / "missing")  # nothing there: nothing to do

