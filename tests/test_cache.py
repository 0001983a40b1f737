"""The one memo mechanism (content key, verified on read) and the caches built on it."""

import json
import os

import pytest
import torch

from autocompress.store import Memo, content_key
from autocompress.trial.memo import ArtefactCache, ModelCache, ProbeMemo


def _tiny():
    import timm

    return timm.create_model("test_resnet", num_classes=4).eval()


def _flip_a_byte(path):
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def test_keys_depend_on_every_part():
    assert content_key("a", {"x": 1}) == content_key("a", {"x": 1})
    assert content_key("a", {"x": 1}) != content_key("a", {"x": 2})


def test_an_entry_is_read_whole_and_verified(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.bin").write_bytes(b"\x01" * 100)
    memo = Memo(tmp_path / "m")
    assert memo.get("k") is None and memo.misses == 1
    memo.put("k", [src / "a.bin"], {"accuracy": 91.5})
    entry = memo.get("k")
    assert entry.meta == {"accuracy": 91.5} and entry.files["a.bin"].read_bytes() == b"\x01" * 100
    assert memo.hits == 1 and memo.keys() == ["k"]

    _flip_a_byte(entry.files["a.bin"])                 # other bytes: removed, never used
    assert memo.get("k") is None and memo.corrupt == 1
    assert not (tmp_path / "m" / "k").exists() and not (tmp_path / "m" / "k.json").exists()

    memo.put("k", (), {"trial": 3})                    # metadata alone
    (tmp_path / "m" / "k.json").write_text("{not json")
    assert memo.get("k") is None and memo.corrupt == 2 and memo.keys() == []


def test_a_failed_write_leaves_no_entry(tmp_path):
    memo = Memo(tmp_path)

    def write(folder):
        (folder / "half").write_bytes(b"x")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        memo.put_with("k", write)
    assert list(tmp_path.iterdir()) == []


def test_eviction_keeps_the_memo_under_its_cap_least_recently_used_first(tmp_path):
    blob = tmp_path / "model.onnx"
    blob.write_bytes(b"\x00" * 20_000)
    root = tmp_path / "artefacts"
    memo = Memo(root, max_bytes=45_000)
    for i, key in enumerate(("a", "b")):
        memo.put(key, [blob])
        os.utime(root / f"{key}.json", (1000 + i, 1000 + i))
    memo.get("a")                                       # read: recently used, so "b" goes first
    memo.put("c", [blob])
    assert memo.keys() == ["a", "c"]


def test_stop_when_full_writes_no_new_entry_and_evicts_nothing(tmp_path):
    blob = tmp_path / "x"
    blob.write_bytes(b"\x00" * 1000)
    memo = Memo(tmp_path / "m", max_bytes=1, when_full="stop")
    assert memo.put("a", [blob]) is not None and memo.put("b", [blob]) is None
    assert memo.keys() == ["a"]


def test_a_module_entry_rebuilds_an_equal_module_and_corruption_is_rebuilt_not_trusted(tmp_path):
    cache = ModelCache(tmp_path)
    model, example = _tiny(), torch.randn(1, 3, 32, 32)
    key = content_key("prune", {"ratio": 0.5})
    assert cache.get(key) is None
    assert cache.put(key, model, {"curve": [[1, 90.0]]}, example=example)
    loaded, meta = cache.get(key)
    assert meta == {"curve": [[1, 90.0]]} and type(loaded) is type(model)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), loaded.state_dict().values()))
    (weights,) = (tmp_path / key).glob("*.safetensors")
    _flip_a_byte(weights)
    assert cache.get(key) is None and cache.corrupt == 1 and not weights.exists()


def test_a_module_that_would_not_rebuild_is_not_cached(tmp_path):
    cache = ModelCache(tmp_path)
    plain = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU())  # no timm architecture to rebuild from
    assert cache.put("k", plain, example=torch.randn(1, 3, 32, 32)) is False
    assert list(tmp_path.iterdir()) == [] and cache.get("k") is None


def test_an_artefact_entry_survives_the_trial_losing_its_own_copy(tmp_path):
    trial = tmp_path / "trial"
    trial.mkdir()
    (trial / "model.xml").write_text("<net/>")
    (trial / "model.bin").write_bytes(b"\x01" * 1000)
    cache = ArtefactCache(tmp_path / "artefacts")
    cache.put("k", [trial / "model.xml", trial / "model.bin"], {"accuracy": 91.5})
    (trial / "model.bin").unlink()
    files, meta = cache.get("k")
    assert meta == {"accuracy": 91.5} and sorted(files) == ["model.bin", "model.xml"]
    files["model.bin"].unlink()                        # the entry's own copy goes: the entry goes
    assert cache.get("k") is None and cache.corrupt == 1


def test_a_probe_entry_needs_its_figures_and_trial(tmp_path):
    probes = ProbeMemo(tmp_path, "k")
    assert probes.get() is None
    probes.put({"metrics": {"size_mb": 1.0}}, trial=4)
    assert probes.get() == {"metrics": {"size_mb": 1.0}, "trial": 4}
    assert json.loads((tmp_path / "k.json").read_text())["meta"]["trial"] == 4
    Memo(tmp_path).put("k", (), {"metrics": {}})       # written by something else: not a probe
    assert probes.get() is None
