"""The store is shared by the event loop and the runtime's worker threads: concurrent
writers must never interleave transactions or lose a write."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from pilothouse.store.sqlite import Store

pytestmark = pytest.mark.integration


def test_threads_and_main_writer_do_not_interleave(tmp_path: Path) -> None:
    store = Store(tmp_path / "state.db")
    store.apply([{"kind": "Queue", "metadata": {"name": "q"}, "spec": {}}])
    errors: list[BaseException] = []

    def processes(worker: int) -> None:
        try:
            for i in range(200):
                pid = worker * 1000 + i
                store.put_process(
                    {"id": f"p{pid}", "ownerKind": "K", "ownerName": "n", "role": "r", "pid": pid}
                )
                store.delete_process(f"p{pid}")
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=processes, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    for i in range(300):
        store.set_status("Queue", "q", {"n": i})
        store.record_event("Queue", "q", "Normal", "Tick", f"tick {i}")
    for t in threads:
        t.join(timeout=60)
    assert not errors, errors[:3]
    assert store.processes() == []
    assert store.get("Queue", "q")["status"] == {"n": 299}
    assert len(store.events("Queue", "q")) == Store.MAX_EVENTS_PER_OBJECT
    store.close()
