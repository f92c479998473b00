"""Engine cache: hits, key sensitivity, corruption detection, atomicity."""
import json

import pytest

from ppdeploy.core.cache import SIDECAR, EngineCache, key_of


def _builder(calls, payload=b"engine-bytes"):
    def build(out):
        calls.append(out)
        (out / "engine.bin").write_bytes(payload)
    return build


def test_second_lookup_is_a_hit(tmp_path):
    cache, calls = EngineCache(tmp_path), []
    first = cache.get_or_build("engine", {"a": 1}, _builder(calls))
    second = cache.get_or_build("engine", {"a": 1}, _builder(calls))
    assert not first.hit and second.hit and len(calls) == 1
    assert (second.path / "engine.bin").read_bytes() == b"engine-bytes"


@pytest.mark.parametrize("change", [{"a": 2}, {"a": 1, "b": None}, {"a": "1"}])
def test_every_key_part_changes_the_key(change):
    assert key_of({"a": 1}) != key_of(change)


def test_key_ignores_dict_order():
    assert key_of({"a": 1, "b": [1, 2]}) == key_of({"b": [1, 2], "a": 1})


@pytest.mark.parametrize("damage", ["truncate", "flip", "delete_file", "sidecar_garbage", "sidecar_missing", "parts"])
def test_damaged_entry_is_rebuilt_not_loaded(tmp_path, damage, caplog):
    cache, calls = EngineCache(tmp_path), []
    entry = cache.get_or_build("engine", {"a": 1}, _builder(calls)).path
    engine, sidecar = entry / "engine.bin", entry / SIDECAR
    if damage == "truncate":
        engine.write_bytes(b"engine")
    elif damage == "flip":
        engine.write_bytes(b"ENGINE-bytes")  # same size, other content
    elif damage == "delete_file":
        engine.unlink()
    elif damage == "sidecar_garbage":
        sidecar.write_text("{not json")
    elif damage == "sidecar_missing":
        sidecar.unlink()
    elif damage == "parts":
        meta = json.loads(sidecar.read_text())
        meta["parts"] = {"a": 999}
        sidecar.write_text(json.dumps(meta))
    assert cache.check(entry, {"a": 1}) is not None
    result = cache.get_or_build("engine", {"a": 1}, _builder(calls))
    assert not result.hit and len(calls) == 2
    assert (result.path / "engine.bin").read_bytes() == b"engine-bytes"
    assert "unusable" in caplog.text


def test_failed_build_leaves_nothing_behind(tmp_path):
    cache = EngineCache(tmp_path)

    def broken(out):
        (out / "half.bin").write_bytes(b"x")
        raise RuntimeError("builder crashed")

    with pytest.raises(RuntimeError):
        cache.get_or_build("engine", {"a": 1}, broken)
    assert list((tmp_path / "engine").iterdir()) == []
    assert cache.entries() == []


def test_ls_and_clear(tmp_path):
    cache, calls = EngineCache(tmp_path), []
    cache.get_or_build("onnx", {"m": 1}, _builder(calls), label="model one")
    cache.get_or_build("engine", {"m": 1}, _builder(calls))
    entries = cache.entries()
    assert {e.kind for e in entries} == {"onnx", "engine"} and all(e.valid for e in entries)
    assert any(e.label == "model one" for e in entries)
    assert cache.clear("onnx") == 1
    assert [e.kind for e in cache.entries()] == ["engine"]
    assert cache.clear() == 1 and cache.entries() == []
