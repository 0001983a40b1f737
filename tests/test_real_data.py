"""A user's own checkpoint and data: normalisation from a sidecar, validation from the test folder,
augmentation drawn per image."""

from __future__ import annotations

import json

import numpy as np
import pytest
import timm
import torch
from PIL import Image

from autocompress.config.schema import RunConfig
from autocompress.search.controller import Search
from autocompress.data import _crop_flip, load_data, normalisation
from autocompress.errors import UserError


def _folder(root, split: str, per_class: int, classes=("a", "b", "c")) -> None:
    rng = np.random.default_rng(len(split))
    for c, name in enumerate(classes):
        (root / split / name).mkdir(parents=True)
        for i in range(per_class):
            pixels = np.full((8, 8, 3), 40 * c, dtype=np.uint8) + rng.integers(0, 30, (8, 8, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / split / name / f"{i}.png")


def test_val_from_test_halves_the_test_folder_by_class_and_trains_on_all_of_train(tmp_path):
    _folder(tmp_path, "train", 6)
    _folder(tmp_path, "test", 8)  # listed class by class, as an ImageFolder is
    config = RunConfig.model_validate({"data": {"source": "imagefolder", "path": str(tmp_path), "val_from": "test"}})
    data = load_data(config.data, 8)
    assert len(data.train) == 18
    assert len(data.val) == len(data.test) == 12
    assert data.val.labels.bincount().tolist() == data.test.labels.bincount().tolist() == [4, 4, 4]
    val = {tuple(x.flatten().tolist()) for x in data.val.images}
    assert not val & {tuple(x.flatten().tolist()) for x in data.test.images}
    assert any("val_from test" in note for note in data.notes)
    plain = load_data(config.data.model_copy(update={"val_from": "train"}), 8)
    assert len(plain.train) < 18 and len(plain.test) == 24  # a share of train held out, the whole test folder tests


def test_val_from_test_without_a_test_folder_is_one_line(tmp_path):
    _folder(tmp_path, "train", 4)
    config = RunConfig.model_validate({"data": {"source": "imagefolder", "path": str(tmp_path), "val_from": "test"}})
    with pytest.raises(UserError, match="^data.val_from: test needs a test/ folder"):
        load_data(config.data, 8)


def test_normalisation_comes_from_the_checkpoints_sidecar_and_is_said(tmp_path):
    checkpoint = tmp_path / "base.pth"
    torch.save(timm.create_model("test_resnet", num_classes=10).state_dict(), checkpoint)
    checkpoint.with_suffix(".json").write_text(json.dumps({"mean": [0.49, 0.48, 0.45], "std": [0.25, 0.24, 0.26]}))
    raw = {"model": {"name": "test_resnet", "checkpoint": str(checkpoint), "train_epochs": 0},
           "data": {"source": "digits", "max_samples": 100}}
    config = RunConfig.model_validate(raw)
    mean, std, source = normalisation(config.model, config.data)
    assert mean == (0.49, 0.48, 0.45) and std == (0.25, 0.24, 0.26) and str(checkpoint.with_suffix(".json")) in source
    search = Search(config=RunConfig.model_validate(raw), run_dir=tmp_path / "run")
    search.validate()
    assert search.config.data.mean == (0.49, 0.48, 0.45)
    assert search.normalisation_note.startswith(f"normalisation: the checkpoint's sidecar {checkpoint.with_suffix('.json')}")
    assert load_data(search.config.data, 32).train.mean == (0.49, 0.48, 0.45)
    # the config's own values win over the sidecar, and a broken sidecar is one line
    own = config.data.model_copy(update={"mean": (0.5, 0.5, 0.5), "std": (0.2, 0.2, 0.2)})
    assert normalisation(config.model, own)[2] == "the config (data.mean, data.std)"
    checkpoint.with_suffix(".json").write_text(json.dumps({"mean": [0.5, 0.5], "std": [0.2, 0.2, 0.2]}))
    with pytest.raises(UserError, match="sidecar .* has no usable mean/std"):
        normalisation(config.model, config.data)


def test_normalisation_defaults_are_named():
    config = RunConfig()
    assert normalisation(config.model, config.data) == (None, None, "the dataset default (the training split's own statistics)")


def test_augmentation_draws_a_crop_and_flip_per_image():
    image = torch.arange(3 * 16 * 16, dtype=torch.int64).remainder(251).to(torch.uint8).view(1, 3, 16, 16)
    batch = image.repeat(64, 1, 1, 1)
    out = _crop_flip(batch, torch.Generator().manual_seed(0))
    distinct = {tuple(x.flatten().tolist()) for x in out}
    assert len(distinct) > 10  # one offset for the whole batch gave at most 2 (flipped or not)
    padded = torch.nn.functional.pad(image.float(), (4, 4, 4, 4), mode="reflect").to(torch.uint8)[0]
    crops = {tuple(padded[:, dy:dy + 16, dx:dx + 16].flatten().tolist()) for dy in range(9) for dx in range(9)}
    crops |= {tuple(padded[:, dy:dy + 16, dx:dx + 16].flip(-1).flatten().tolist()) for dy in range(9) for dx in range(9)}
    assert distinct <= crops


def test_the_curve_sample_holds_every_class_in_proportion_of_a_class_ordered_split(tmp_path):
    _folder(tmp_path, "train", 4)
    _folder(tmp_path, "val", 40)  # listed class by class: the first 40 images are all class a
    data = load_data(RunConfig.model_validate({"data": {"source": "imagefolder", "path": str(tmp_path)}}).data, 8)
    assert data.val.labels[:40].unique().tolist() == [0]
    sample = data.val.sample(30, seed=0)
    assert sample.labels.bincount().tolist() == [10, 10, 10]
    assert data.val.sample(30, seed=0) is sample  # fixed for the run
    assert data.val.sample(500) is data.val


def test_the_curve_sample_size_follows_the_accuracy_budget():
    from autocompress.plugin.contract import VAL_SLICE, curve_sample_size

    assert curve_sample_size(1.0, 5000) == 5000           # 1 pp cannot be judged on fewer: the whole split
    assert curve_sample_size(5.0, 5000) == 1600           # 2 sd at 50 % within 2.5 pp
    assert curve_sample_size(None, 5000) == VAL_SLICE
    assert curve_sample_size(20.0, 300) == 300
    assert curve_sample_size(0.0, 5000) == 5000          # no drop allowed: nothing but the whole split


def test_a_finished_fine_tune_is_judged_on_the_whole_split_not_the_sample(tmp_path):
    from autocompress.trial.early_stop import StopRule, StopTrial
    from autocompress.plugin.testing import make_context, tiny_model

    # on a 100-image sample 70 % is at best ~78 %: under the 80 % floor, so the sample alone would stop it
    rule = StopRule(mode="budget", floor=80.0, history=[], slice_size=100)
    with pytest.raises(StopTrial):
        rule.check(3, 70.0, last=3, final=True)
    rule.check(3, 81.0, last=3, final=True, whole=True)  # measured on the whole split: over the floor, kept
    with pytest.raises(StopTrial, match="whole validation split"):
        rule.check(3, 79.9, last=3, final=True, whole=True)

    model = tiny_model("test_resnet").eval()
    ctx = make_context(tmp_path, model)
    ctx.curve_images = 20
    calls = []
    ctx.report = lambda step, acc, final=False, last=None, whole=None: calls.append((step, final, whole))
    reporter = ctx.epoch_reporter(2)
    reporter(0, model)
    reporter(1, model)
    assert calls[0] == (1, False, None)
    assert calls[1][:2] == (2, True) and calls[1][2] == pytest.approx(ctx.whole_top1(model))
