import torch

from autocompress.cache import ModelCache, content_key


def test_hit_returns_an_equal_module_and_corruption_is_rebuilt_not_trusted(tmp_path):
    cache = ModelCache(tmp_path)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU())
    key = content_key("prune", {"ratio": 0.5})
    assert cache.get(key) is None and cache.misses == 1
    cache.put(key, model, {"curve": [[1, 90.0]]})
    loaded, meta = cache.get(key)
    assert cache.hits == 1 and meta == {"curve": [[1, 90.0]]}
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), loaded.state_dict().values()))
    blob = tmp_path / f"{key}.pt"
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0xFF
    blob.write_bytes(bytes(data))
    assert cache.get(key) is None and cache.corrupt == 1
    assert not blob.exists()


def test_keys_depend_on_every_part():
    assert content_key("a", {"x": 1}) == content_key("a", {"x": 1})
    assert content_key("a", {"x": 1}) != content_key("a", {"x": 2})


def test_eviction_keeps_the_cache_under_its_cap_oldest_first(tmp_path):
    import os

    model = torch.nn.Linear(64, 64)  # ~17 kB pickled
    cache = ModelCache(tmp_path, max_bytes=40_000)
    for i, key in enumerate(("a", "b")):
        cache.put(key, model)
        os.utime(tmp_path / f"{key}.json", (1000 + i, 1000 + i))
    cache.put("c", model)
    assert not (tmp_path / "a.pt").exists() and (tmp_path / "b.pt").exists() and (tmp_path / "c.pt").exists()
