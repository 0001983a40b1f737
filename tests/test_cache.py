import torch

from autocompress.trial.memo import ModelCache, content_key


def _tiny():
    import timm

    return timm.create_model("test_resnet", num_classes=4).eval()


def test_hit_returns_an_equal_module_and_corruption_is_rebuilt_not_trusted(tmp_path):
    cache = ModelCache(tmp_path)
    model = _tiny()
    example = torch.randn(1, 3, 32, 32)
    key = content_key("prune", {"ratio": 0.5})
    assert cache.get(key) is None and cache.misses == 1
    assert cache.put(key, model, {"curve": [[1, 90.0]]}, example=example)
    loaded, meta = cache.get(key)
    assert cache.hits == 1 and meta == {"curve": [[1, 90.0]]}
    assert type(loaded) is type(model)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), loaded.state_dict().values()))
    blob = tmp_path / f"{key}.safetensors"
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0xFF
    blob.write_bytes(bytes(data))
    assert cache.get(key) is None and cache.corrupt == 1
    assert not blob.exists()


def test_a_module_that_would_not_rebuild_is_not_cached(tmp_path):
    cache = ModelCache(tmp_path)
    plain = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU())  # no timm architecture to rebuild from
    assert cache.put("k", plain, example=torch.randn(1, 3, 32, 32)) is False
    assert list(tmp_path.iterdir()) == [] and cache.get("k") is None


def test_keys_depend_on_every_part():
    assert content_key("a", {"x": 1}) == content_key("a", {"x": 1})
    assert content_key("a", {"x": 1}) != content_key("a", {"x": 2})


def test_eviction_keeps_the_cache_under_its_cap_oldest_first(tmp_path):
    import os

    model, example = _tiny(), torch.randn(1, 3, 32, 32)
    size = ModelCache(tmp_path / "probe").put("x", model, example=example) and \
        sum(f.stat().st_size for f in (tmp_path / "probe").iterdir())
    cache = ModelCache(tmp_path / "c", max_bytes=2.5 * size)
    for i, key in enumerate(("a", "b")):
        cache.put(key, model, example=example)
        os.utime(tmp_path / "c" / f"{key}.entry.json", (1000 + i, 1000 + i))
    cache.put("c", model, example=example)
    kept = {k for k in "abc" if (tmp_path / "c" / f"{k}.safetensors").exists()}
    assert kept == {"b", "c"}


def test_an_artefact_entry_is_whole_verified_and_removed_when_a_file_is_missing_or_changed(tmp_path):
    from autocompress.trial.memo import ArtefactCache

    trial = tmp_path / "trial"
    trial.mkdir()
    (trial / "model.xml").write_text("<net/>")
    (trial / "model.bin").write_bytes(b"\x01" * 1000)
    cache = ArtefactCache(tmp_path / "artefacts")
    assert cache.get("k") is None
    cache.put("k", [trial / "model.xml", trial / "model.bin"], {"accuracy": 91.5})
    files, meta = cache.get("k")
    assert meta == {"accuracy": 91.5} and sorted(files) == ["model.bin", "model.xml"]
    assert files["model.bin"].read_bytes() == b"\x01" * 1000
    (trial / "model.bin").unlink()                    # the trial's own copy goes: the entry stays whole
    assert cache.get("k") is not None
    files["model.bin"].unlink()
    files["model.bin"].write_bytes(b"\x02" * 1000)    # same size, other bytes
    assert cache.get("k") is None and cache.corrupt == 1
    assert not (tmp_path / "artefacts" / "k").exists() and not (tmp_path / "artefacts" / "k.json").exists()
    cache.put("k", [trial / "model.xml"], {})
    files["model.xml"].unlink()
    assert cache.get("k") is None and cache.corrupt == 2


def test_artefact_eviction_keeps_the_cache_under_its_cap_oldest_first(tmp_path):
    import os

    from autocompress.trial.memo import ArtefactCache

    blob = tmp_path / "model.onnx"
    blob.write_bytes(b"\x00" * 20_000)
    root = tmp_path / "artefacts"
    cache = ArtefactCache(root, max_bytes=45_000)
    for i, key in enumerate(("a", "b")):
        cache.put(key, [blob])
        os.utime(root / f"{key}.json", (1000 + i, 1000 + i))
    cache.put("c", [blob])
    assert cache.get("a") is None and cache.get("b") is not None and cache.get("c") is not None
