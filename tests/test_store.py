import numpy as np
import pytest

from pvcli.errors import PVError
from pvcli.store import Store, validate_name
from pvcli.video import read_frames, read_metadata, write_mp4


@pytest.mark.parametrize("bad", ["", "../x", "a/b", ".hidden", "x" * 65, "a b", "name.tmp"])
def test_bad_names_are_refused(bad):
    with pytest.raises(PVError, match="invalid identity name"):
        validate_name(bad)


def _write(store, name, marker, force=False):
    with store.writer(name, force) as folder:
        (folder / "identity.json").write_text(f'{{"name": "{name}", "marker": "{marker}"}}')


def test_writes_are_atomic_and_force_replaces(tmp_path):
    store = Store(tmp_path)
    _write(store, "a", "one")
    with pytest.raises(RuntimeError):
        with store.writer("b", False) as folder:
            (folder / "identity.json").write_text("{}")
            raise RuntimeError("crash mid-write")
    assert store.names() == ["a"] and not (store.root / "b").exists()
    with pytest.raises(PVError, match="already exists"):
        _write(store, "a", "two")
    with pytest.raises(RuntimeError):  # a failed --force run keeps the old identity
        with store.writer("a", True):
            raise RuntimeError("crash")
    assert store.load_info("a")["marker"] == "one"
    _write(store, "a", "two", force=True)
    assert store.load_info("a")["marker"] == "two"
    assert [p.name for p in store.root.iterdir()] == ["a"]


def test_mp4_round_trip(tmp_path):
    frames = (np.random.default_rng(0).random((5, 32, 48, 3)) * 255).astype(np.uint8)
    path = write_mp4(frames, tmp_path / "out" / "v.mp4", 8, {"prompt": "a=b; #c", "seed": 1})
    assert read_frames(path).shape == (5, 32, 48, 3)
    assert read_metadata(path) == {"prompt": "a=b; #c", "seed": 1}
    assert [p.name for p in path.parent.iterdir()] == ["v.mp4"]
