"""The persisted capture position: atomic, never torn, never rolled back by a late save."""

from __future__ import annotations

import json
import threading
from pathlib import Path

from replication.capture.position import CapturePosition, PositionStore

REPLID = "ef4e14814e460ddb982af5592da8e9f781f00d8f"


def test_a_saved_position_loads_back_as_saved(tmp_path: Path) -> None:
    store = PositionStore(tmp_path / "state" / "capture.position.json")
    assert store.load() is None
    assert store.load_problem is None
    store.save(CapturePosition(REPLID, 12345, db=3), seq=1)
    assert PositionStore(store.path).load() == CapturePosition(REPLID, 12345, db=3)
    assert json.loads(store.path.read_text())["offset"] == 12345


def test_saving_leaves_no_temporary_files(tmp_path: Path) -> None:
    store = PositionStore(tmp_path / "p.json")
    for seq in range(5):
        store.save(CapturePosition(REPLID, seq), seq=seq)
    assert [path.name for path in tmp_path.iterdir()] == ["p.json"]


def test_a_save_overtaken_by_a_later_one_is_not_written(tmp_path: Path) -> None:
    # Saves run in threads: one that lost the race must not roll the position back.
    store = PositionStore(tmp_path / "p.json")
    assert store.save(CapturePosition(REPLID, 200), seq=2)
    assert not store.save(CapturePosition(REPLID, 100), seq=1)
    assert store.load() == CapturePosition(REPLID, 200)


def test_concurrent_saves_keep_the_file_whole(tmp_path: Path) -> None:
    store = PositionStore(tmp_path / "p.json")

    def writer(base: int) -> None:
        for i in range(20):
            store.save(CapturePosition(REPLID, base + i), seq=base + i)

    threads = [threading.Thread(target=writer, args=(base,)) for base in (0, 1000, 2000)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    loaded = store.load()
    assert loaded is not None
    assert loaded.offset == 2019


def test_an_unreadable_file_means_no_position_and_says_why(tmp_path: Path) -> None:
    store = PositionStore(tmp_path / "p.json")
    store.path.write_text("{not json")
    assert store.load() is None
    assert store.load_problem is not None
    assert "corrupt" in store.load_problem
    store.path.write_text(json.dumps({"replid": "short", "offset": 5}))
    assert store.load() is None
    assert "invalid" in (store.load_problem or "")
