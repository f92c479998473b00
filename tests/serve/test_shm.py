"""The system shared-memory registry (protocol-neutral) on real POSIX shared memory made by tritonclient's utilities."""
from __future__ import annotations

import threading
import uuid

import numpy as np
import pytest
import tritonclient.utils.shared_memory as tshm
from tritonclient.utils import deserialize_bytes_tensor, serialize_byte_tensor

from ppdeploy.core.errors import InputError
from ppdeploy.serve import kserve, shm

ME, OTHER = shm.owner_of("key-a"), shm.owner_of("key-b")


@pytest.fixture()
def region():
    """A 4 KiB shared-memory object; yields its key."""
    key = f"/ppdeploy_t_{uuid.uuid4().hex[:12]}"
    handle = tshm.create_shared_memory_region("t", key, 4096)
    yield key, handle
    tshm.destroy_shared_memory_region(handle)


@pytest.fixture()
def registry():
    r = shm.SharedMemoryRegistry()
    yield r
    r.close()


def test_register_status_unregister(registry, region):
    key, _ = region
    registry.register(ME, "a", key, 0, 1024)
    registry.register(ME, "b", key, 1024, 3072)
    assert registry.status(ME) == [{"name": "a", "key": key, "offset": 0, "byte_size": 1024},
                                   {"name": "b", "key": key, "offset": 1024, "byte_size": 3072}]
    assert registry.status(ME, "b")[0]["offset"] == 1024
    with pytest.raises(shm.RegionExists):
        registry.register(ME, "a", key, 0, 8)
    registry.unregister(ME, "a")
    registry.unregister(ME, "never-registered")  # Triton's: no error
    assert [r["name"] for r in registry.status(ME)] == ["b"]
    registry.unregister(ME)
    assert registry.status(ME) == []
    with pytest.raises(shm.RegionNotFound):
        registry.status(ME, "b")


@pytest.mark.parametrize("key, offset, size, text", [
    (None, 0, 4097, "exceeds the 4096 bytes"),
    (None, 4000, 100, "exceeds the 4096 bytes"),
    (None, -1, 8, "non-negative integer"),
    (None, 0, 0, "must be positive"),
    ("/ppdeploy_no_such_region", 0, 8, "unable to open"),
    ("../../etc/passwd", 0, 8, "not a POSIX shared-memory name"),
    ("/a/b", 0, 8, "not a POSIX shared-memory name"),
    ("", 0, 8, "needs a key"),
])
def test_register_checks_the_real_object(registry, region, key, offset, size, text):
    with pytest.raises(shm.SharedMemoryError, match=text) as info:
        registry.register(ME, "r", region[0] if key is None else key, offset, size)
    assert isinstance(info.value, InputError)  # HTTP 400 / gRPC INVALID_ARGUMENT
    assert registry.status(ME) == []


def test_owners_do_not_see_each_others_regions(registry, region):
    key, handle = region
    registry.register(ME, "in", key, 0, 16)
    assert registry.status(OTHER) == []
    with pytest.raises(shm.RegionNotFound):
        registry.status(OTHER, "in")
    with pytest.raises(shm.SharedMemoryError, match="unable to find shared memory region 'in'"):
        shm.read_input(registry, OTHER, {"shared_memory_region": "in", "shared_memory_byte_size": 16}, "FP32",
                       (4,), "input 'x'")
    registry.unregister(OTHER)  # unregistering all of OTHER leaves ME's alone
    registry.register(OTHER, "in", key, 16, 16)  # the same name in another namespace
    assert registry.status(ME)[0]["offset"] == 0 and registry.status(OTHER)[0]["offset"] == 16
    # the owner string: a digest of the key (never the key itself), and the client tag
    assert "key-a" not in ME and shm.owner_of("key-a", "t1") != shm.owner_of("key-a", "t2") != ME
    assert shm.owner_of(None) == shm.owner_of(b"") == "-/"


def test_inputs_are_read_in_place_and_outputs_written(registry, region):
    key, handle = region
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    tshm.set_shared_memory_region(handle, [x], offset=128)
    registry.register(ME, "in", key, 64, 1024)  # the input sits 64 bytes into the region
    params = {"shared_memory_region": "in", "shared_memory_byte_size": x.nbytes, "shared_memory_offset": 64}
    got = shm.read_input(registry, ME, params, "FP32", (3, 4), "input 'x'")
    np.testing.assert_array_equal(got, x)
    assert not got.flags.owndata  # a view of the mapping, no copy
    with pytest.raises(InputError, match="needs 48 bytes, the data has 44"):
        shm.read_input(registry, ME, {**params, "shared_memory_byte_size": 44}, "FP32", (3, 4), "input 'x'")
    with pytest.raises(shm.SharedMemoryError, match="exceeds the 1024 bytes"):
        shm.read_input(registry, ME, {**params, "shared_memory_offset": 1000}, "FP32", (3, 4), "input 'x'")
    with pytest.raises(shm.SharedMemoryError, match="needs shared_memory_byte_size"):
        shm.read_input(registry, ME, {"shared_memory_region": "in"}, "FP32", (3, 4), "input 'x'")

    registry.register(ME, "out", key, 2048, 64)
    target = shm.output_target(registry, ME, {"shared_memory_region": "out", "shared_memory_byte_size": 64}, "o")
    y = np.linspace(0, 1, 16, dtype=np.float32)
    assert target.write(y, "FP32", "output 'y'") == 64
    np.testing.assert_array_equal(tshm.get_contents_as_numpy(handle, np.float32, [16], offset=2048), y)
    with pytest.raises(shm.SharedMemoryError, match="too small"):
        target.write(np.zeros(17, np.float32), "FP32", "output 'y'")
    assert target.parameters() == {"shared_memory_region": "out", "shared_memory_byte_size": 64,
                                   "shared_memory_offset": 0}

    # unregistering while an input array still views the region: the mapping stays until the array goes
    registry.unregister(ME)
    np.testing.assert_array_equal(got, x)


def test_bytes_tensors_use_tritons_layout():
    values = np.array([b"a", b"", "héllo".encode(), b"\x00\xff"], dtype=object).reshape(2, 2)
    raw = kserve.to_raw(values, "BYTES")
    assert raw == serialize_byte_tensor(values).item()
    back = kserve.from_raw(raw, "BYTES", (2, 2), "input 's'")
    assert back.tolist() == values.tolist() == deserialize_bytes_tensor(raw).reshape(2, 2).tolist()
    with pytest.raises(InputError, match="needs 6 elements"):
        kserve.from_raw(raw, "BYTES", (2, 3), "input 's'")
    with pytest.raises(InputError, match="runs past the data"):
        kserve.from_raw(raw[:-1], "BYTES", (2, 2), "input 's'")
    odd = kserve.from_raw(memoryview(b"\0" + np.arange(3, dtype="<f4").tobytes())[1:], "FP32", (3,), "x")
    assert odd.flags.aligned and odd.tolist() == [0.0, 1.0, 2.0]


def test_concurrent_register_and_unregister(registry, region):
    key, _ = region
    errors = []

    def churn(owner: str) -> None:
        try:
            for i in range(200):
                registry.register(owner, f"r{i % 5}", key, i % 64, 64)
                registry.status(owner)
                registry.unregister(owner, f"r{i % 5}")
        except Exception as exc:  # noqa: BLE001 - collected for the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=churn, args=(shm.owner_of(f"k{t}"),)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert all(registry.status(shm.owner_of(f"k{t}")) == [] for t in range(4))
