"""``GET …/log?tail=N`` reads only the end of each log (backwards, in blocks) and takes
what the current file lacks from its rotated copy ``X.log.1``."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette

from pilothouse.api.server import create_app, read_log, read_new, tail_lines
from pilothouse.store.sqlite import Store

TOKEN = "t" * 40
LOG = "/apis/pilothouse.dev/v1alpha1/queues/q/log"


def _bytes_read() -> int:
    """Bytes this process has read through read(2) and friends (Linux /proc/self/io)."""
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    raise AssertionError("no rchar in /proc/self/io")


@pytest.fixture
def logs(tmp_path: Path) -> dict[str, list[Path]]:
    return {"q": []}


class Api:
    """The real control API app, called in-process over ASGI (no sockets)."""

    def __init__(self, app: Starlette) -> None:
        self.app = app

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        async def call() -> httpx.Response:
            transport = httpx.ASGITransport(app=self.app)
            async with httpx.AsyncClient(
                transport=transport,
                base_url="http://api",
                headers={"Authorization": f"Bearer {TOKEN}"},
            ) as client:
                return await client.get(path, **kwargs)

        return asyncio.run(call())


@pytest.fixture
def api(tmp_path: Path, logs: dict[str, list[Path]]) -> Iterator[Api]:
    store = Store(tmp_path / "state.db")
    store.apply(
        [
            {
                "apiVersion": "pilothouse.dev/v1alpha1",
                "kind": "Queue",
                "metadata": {"name": "q", "labels": {}, "annotations": {}},
                "spec": {},
            }
        ]
    )
    app = create_app(
        store,
        token=TOKEN,
        on_change=lambda kind, name: None,
        log_files=lambda kind, name: list(logs.get(name, [])),
        info=dict,
    )
    yield Api(app)
    store.close()


def numbered(first: int, last: int, tag: str = "line") -> bytes:
    return b"".join(f"{tag} {i}\n".encode() for i in range(first, last + 1))


def test_tail_of_a_1gib_log_reads_only_its_end(
    tmp_path: Path, api: Api, logs: dict[str, list[Path]]
) -> None:
    path = tmp_path / "replica-0.log"
    with path.open("wb") as handle:
        handle.truncate(2**30)  # sparse: 1 GiB of zero bytes, then the last lines
        handle.seek(2**30)
        handle.write(numbered(1, 50))
    logs["q"] = [path]
    before = _bytes_read()
    started = time.monotonic()
    response = api.get(LOG, params={"tail": "10"})
    elapsed = time.monotonic() - started
    read = _bytes_read() - before
    assert response.status_code == 200
    assert response.text.splitlines() == [f"line {i}" for i in range(41, 51)]
    assert elapsed < 2.0, f"tail=10 of a 1 GiB log took {elapsed:.2f}s"
    assert read < 4 * 2**20, f"read {read} bytes of a 1 GiB file for tail=10"


def test_tail_takes_the_rest_from_the_rotated_copy(
    tmp_path: Path, api: Api, logs: dict[str, list[Path]]
) -> None:
    path = tmp_path / "worker-0.log"
    Path(f"{path}.1").write_bytes(numbered(1, 20))
    path.write_bytes(numbered(21, 23))
    logs["q"] = [path]
    assert api.get(LOG, params={"tail": "5"}).text.splitlines() == [
        f"line {i}" for i in range(19, 24)
    ]
    assert api.get(LOG, params={"tail": "2"}).text.splitlines() == ["line 22", "line 23"]
    assert api.get(LOG, params={"tail": "0"}).text == ""
    # more than both hold: everything, oldest first
    assert api.get(LOG, params={"tail": "100"}).text.splitlines() == [
        f"line {i}" for i in range(1, 24)
    ]
    # without tail: the rotated copy, then the current file
    assert api.get(LOG).text == (numbered(1, 20) + numbered(21, 23)).decode()


def test_several_files_are_prefixed_line_by_line(
    tmp_path: Path, api: Api, logs: dict[str, list[Path]]
) -> None:
    first, second = tmp_path / "worker-0.log", tmp_path / "worker-1.log"
    Path(f"{first}.1").write_bytes(b"old 0\n")
    first.write_bytes(b"new 0\nnew 1\n")
    second.write_bytes(numbered(1, 3, "w1"))
    logs["q"] = [first, second]
    assert api.get(LOG).text.splitlines() == [
        "[worker-0] old 0",
        "[worker-0] new 0",
        "[worker-0] new 1",
        "[worker-1] w1 1",
        "[worker-1] w1 2",
        "[worker-1] w1 3",
    ]
    assert (
        api.get(LOG, params={"tail": "2"}).text.splitlines()
        == [
            "[worker-0] old 0",
            "[worker-0] new 0",
            "[worker-0] new 1",
            "[worker-1] w1 2",
            "[worker-1] w1 3",
        ][1:]
    )


def test_tail_lines_reads_backwards_in_blocks(tmp_path: Path) -> None:
    path = tmp_path / "x.log"
    data = b"".join(f"{i:06d} {'x' * (i % 300)}\n".encode() for i in range(20_000))
    path.write_bytes(data)
    expected = data.split(b"\n")[:-1]
    with path.open("rb") as handle:
        for count in (1, 7, 1000, 19_999, 20_000, 25_000):
            got = tail_lines(handle, len(data), count)
            assert [line.rstrip(b"\n") for line in got] == expected[-count:]
    # no trailing newline, and a carriage return inside a line
    path.write_bytes(b"a\rb\nc\nd")
    with path.open("rb") as handle:
        assert tail_lines(handle, 7, 2) == [b"c\n", b"d"]
        assert tail_lines(handle, 7, 5) == [b"a\rb\n", b"c\n", b"d"]


def test_read_log_without_files_and_with_a_missing_current_file(tmp_path: Path) -> None:
    lines, stream, cursor = read_log(tmp_path / "gone.log", 10)
    assert (lines, list(stream), cursor.offset) == ([], [], 0)


def collapse(path: Path, cut: int, keep: int) -> None:
    """Rotate as the runtime does on Linux: the older part (at most ``keep`` bytes before
    ``cut``, from a line start) replaces X.log.1 atomically; X.log loses its first ``cut``
    bytes in place (same inode), so it may begin mid-line."""
    data = path.read_bytes()
    older = data[max(0, cut - keep) : cut]
    if cut - keep > 0:
        older = older[older.index(b"\n") + 1 :]
    tmp = Path(f"{path}.1.tmp")
    tmp.write_bytes(older)
    os.replace(tmp, f"{path}.1")
    with path.open("r+b") as handle:
        handle.write(data[cut:])
        handle.truncate(len(data) - cut)


def test_tail_joins_a_line_cut_by_an_in_place_rotation(
    tmp_path: Path, api: Api, logs: dict[str, list[Path]]
) -> None:
    path = tmp_path / "replica-0.log"
    Path(f"{path}.1").write_bytes(numbered(1, 9) + b"lin")
    path.write_bytes(b"e 10\nline 11\n")
    logs["q"] = [path]
    assert api.get(LOG, params={"tail": "3"}).text.splitlines() == ["line 9", "line 10", "line 11"]
    assert api.get(LOG, params={"tail": "2"}).text.splitlines() == ["line 10", "line 11"]
    assert api.get(LOG).text == numbered(1, 11).decode()
    logs["q"] = [path, tmp_path / "other.log"]
    (tmp_path / "other.log").write_bytes(b"x\n")
    assert api.get(LOG).text.splitlines()[8:11] == [
        "[replica-0] line 9",
        "[replica-0] line 10",
        "[replica-0] line 11",
    ]


def _block(path: Path) -> int:
    return os.stat(path).st_blksize or 4096


@pytest.mark.parametrize("lagging", [False, True], ids=["caught-up", "lagging"])
def test_following_goes_on_across_an_in_place_rotation(tmp_path: Path, lagging: bool) -> None:
    path = tmp_path / "replica-0.log"
    path.write_bytes(numbered(1, 600))
    block = _block(path)
    if lagging:  # the reader saw only the first 100 lines before the rotation
        path.write_bytes(numbered(1, 100))
    _, _, cursor = read_log(path, 0)
    if lagging:
        path.write_bytes(numbered(1, 600))
    sent_before = path.read_bytes()[: cursor.offset]
    size = path.stat().st_size
    cut = (size - 1) // block * block
    assert cut > 0
    collapse(path, cut, keep=cut)
    with path.open("ab") as handle:
        handle.write(numbered(601, 650))
    new = read_new(path, cursor)
    assert sent_before + new == numbered(1, 650), "nothing lost or repeated"
    with path.open("ab") as handle:
        handle.write(b"line 651\n")
    assert read_new(path, cursor) == b"line 651\n"
    assert read_new(path, cursor) == b""


def test_following_goes_on_across_copy_then_truncate_and_rename(tmp_path: Path) -> None:
    path = tmp_path / "worker-0.log"
    path.write_bytes(numbered(1, 50))
    _, _, cursor = read_log(path, 5)
    with path.open("ab") as handle:
        handle.write(numbered(51, 60))
    # copy-then-truncate: X.log.1 gets everything, X.log starts again empty
    Path(f"{path}.1").write_bytes(path.read_bytes())
    with path.open("r+b") as handle:
        handle.truncate(0)
    with path.open("ab") as handle:
        handle.write(numbered(61, 62))
    assert read_new(path, cursor) == numbered(51, 62)
    # rename-style: X.log -> X.log.1, a new X.log
    with path.open("ab") as handle:
        handle.write(b"line 63\n")
    os.replace(path, f"{path}.1")
    path.write_bytes(b"line 64\n")
    assert read_new(path, cursor) == b"line 63\nline 64\n"


def test_after_two_rotations_unseen_it_goes_on_at_a_whole_line(tmp_path: Path) -> None:
    path = tmp_path / "replica-0.log"
    path.write_bytes(numbered(1, 10))
    _, _, cursor = read_log(path, 0)
    # two rotations while nobody read: lines 11..200 went, 201..300 are in X.log.1
    Path(f"{path}.1").write_bytes(numbered(201, 300))
    path.write_bytes(numbered(301, 305))
    assert read_new(path, cursor) == numbered(201, 305)
