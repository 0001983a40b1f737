"""ImageFolder decoding: unreadable files are skipped and counted, odd image modes become RGB."""

import numpy as np
import pytest
from PIL import Image

from autocompress.config.schema import DataConfig
from autocompress.data import load_data
from autocompress.errors import UserError


def _folder(root, per_class=4):
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for name in ("cat", "dog"):
            (root / split / name).mkdir(parents=True)
            for i in range(per_class):
                Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(root / split / name / f"{i}.png")
    return root


def test_unreadable_images_are_skipped_and_counted_in_the_notes(tmp_path):
    root = _folder(tmp_path / "imgs")
    (root / "train" / "cat" / "garbage.png").write_bytes(b"\x89PNG not really")
    whole = (root / "train" / "dog" / "0.png").read_bytes()
    (root / "train" / "dog" / "truncated.png").write_bytes(whole[: len(whole) // 2])
    (root / "train" / "dog" / "empty.jpg").write_bytes(b"")
    (root / "train" / "dog" / "folder.png").mkdir()            # a folder with an image's name is not an image
    data = load_data(DataConfig(source="imagefolder", path=root, seed=1), 8)
    assert (len(data.train), len(data.val)) == (8, 8)
    notes = data.summary()["notes"]
    skipped = [n for n in notes if n.startswith("train/:")]
    assert len(skipped) == 1, notes
    assert skipped[0].startswith("train/: 3 of 11 images unreadable and skipped (train/cat/garbage.png, "
                                 "train/dog/empty.jpg, train/dog/truncated.png; first: "), skipped[0]


def test_a_class_folder_with_no_readable_image_is_one_user_error(tmp_path):
    root = _folder(tmp_path / "imgs")
    for png in (root / "train" / "dog").iterdir():
        png.write_bytes(b"nope")
    with pytest.raises(UserError) as err:
        load_data(DataConfig(source="imagefolder", path=root, seed=2), 8)
    assert str(err.value).startswith(f"data.path: none of the 4 images in {root / 'train' / 'dog'} could be read "
                                     "(first: 0.png: cannot identify image file")
    assert "\n" not in str(err.value)


def test_grey_rgba_palette_and_16_bit_images_become_rgb(tmp_path):
    root = _folder(tmp_path / "imgs", per_class=2)
    folder = root / "val" / "cat"
    ramp16 = (np.arange(64, dtype=np.uint16).reshape(8, 8) * 1024)          # 0 .. 64512 in 16 bits
    Image.fromarray(ramp16).save(folder / "grey16.png")
    Image.fromarray(np.full((8, 8), 100, np.uint8)).save(folder / "grey8.png")
    Image.fromarray(np.dstack([np.full((8, 8, 3), 50, np.uint8), np.full((8, 8), 128, np.uint8)])).save(folder / "rgba.png")
    Image.fromarray(np.full((8, 8, 3), 200, np.uint8)).convert("P", palette=Image.ADAPTIVE).save(folder / "palette.png")
    Image.fromarray(np.full((8, 8), 0.5, np.float32)).save(folder / "float.tif")
    data = load_data(DataConfig(source="imagefolder", path=root, seed=3), 8)
    assert not [n for n in data.notes if "unreadable and skipped" in n]
    files = ["0.png", "1.png", "float.tif", "grey16.png", "grey8.png", "palette.png", "rgba.png"]  # sorted order
    images = {name: data.val.images[i] for i, name in enumerate(files)}
    grey16 = images["grey16.png"][0].numpy()
    assert grey16.min() == 0 and 240 <= grey16.max() <= 255 and len(np.unique(grey16)) > 32  # scaled, not clipped
    assert (images["grey8.png"] == 100).all() and (images["rgba.png"] == 50).all()
    assert (images["palette.png"] == 200).all() and (images["float.tif"] == 128).all()
