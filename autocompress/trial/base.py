"""The base model of a run: loaded or trained once, cached in the run folder, measured first."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Callable

import torch
from safetensors.torch import save_file

from autocompress.config import RunConfig
from autocompress.data import load_data
from autocompress.errors import UserError
from autocompress.measure import module_predictor, top1
from autocompress.models import create_model, fit
from autocompress.store import atomic_write, sha256_file, verify_files


def base_key(config: RunConfig) -> str:
    """Hash of what determines the base weights (model, data, seed)."""
    device = train_device(config)
    blob = json.dumps([config.model.model_dump(mode="json"), config.data.model_dump(mode="json"),
                       config.search.seed, *([device] if device != "cpu" and config.model.base_epochs() else [])],
                      sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


WEIGHTS = "weights.safetensors"


def train_device(config: RunConfig, cuda: bool | None = None) -> str:
    """Where training runs (the base's and the trials'): ``train.device``, ``auto`` = CUDA when this
    process sees it (``cuda``: whether it does; ``None`` = ask torch)."""
    cuda = torch.cuda.is_available() if cuda is None else cuda
    return "cuda" if config.train.device == "cuda" or (config.train.device == "auto" and cuda) else "cpu"


def prepare_base(config: RunConfig, run_dir: Path, log: Callable[[str], None] = print) -> Path:
    """Writes ``base/weights.safetensors`` (trained in-process if asked), reusing one with the same key.

    Returns:
        The weights file.

    Raises:
        UserError: The run folder's base weights do not match the hash recorded beside them, or the
            run was written by a version that kept them as a pickle.
    """
    folder = Path(run_dir) / "base"
    folder.mkdir(parents=True, exist_ok=True)
    weights, key_file = folder / WEIGHTS, folder / "key.json"
    key = base_key(config)
    if (folder / "weights.pt").exists() and not weights.exists():
        raise UserError(f"{folder / 'weights.pt'}: this run keeps its base weights as a pickle (an older autocompress); "
                        "they are not loaded; start a new run")
    if weights.exists() and key_file.exists() and json.loads(key_file.read_text()).get("key") == key:
        load_base_weights(run_dir)  # verified before it is reused
        log("base: reusing cached weights")
        return weights
    torch.set_num_threads(config.device.threads)
    data = load_data(config.data, config.model.img_size)
    model = create_model(config.model, config.model.num_classes or data.num_classes)
    info = {"key": key, "trained_epochs": 0}
    epochs = config.model.base_epochs()
    if epochs > 0:
        t0 = time.time()
        device = train_device(config)
        log(f"base: training {config.model.name} for {epochs} epochs on {len(data.train)} images ({device})")
        fit(model, data, epochs=epochs, lr=config.model.train_lr, seed=config.search.seed,
            batch_size=config.data.batch_size, device=device,
            on_epoch=lambda e, m: log(f"base: epoch {e + 1}/{epochs} "
                                      f"val top-1 {top1(module_predictor(m, device), data.val):.2f}%"))
        model.cpu()
        info.update(trained_epochs=epochs, train_seconds=round(time.time() - t0, 1), train_device=device)
    save_file({k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}, str(weights))
    info["sha256"] = sha256_file(weights)
    atomic_write(key_file, json.dumps(info))
    return weights


def load_base_weights(run_dir: Path | str) -> dict[str, torch.Tensor]:
    """The base's ``state_dict`` from ``base/weights.safetensors``, checked against ``base/key.json``.

    Raises:
        UserError: Missing, or its bytes differ from the recorded hash.
    """
    from safetensors.torch import load_file

    folder = Path(run_dir) / "base"
    try:
        expected = json.loads((folder / "key.json").read_text()).get("sha256")
    except (OSError, ValueError):
        expected = None
    verify_files({WEIGHTS: expected} if expected else None, folder, "the base model")
    try:
        return load_file(str(folder / WEIGHTS))
    except Exception as err:  # noqa: BLE001 - foreign bytes under the recorded hash
        raise UserError(f"{folder / WEIGHTS}: not a safetensors file ({type(err).__name__}: {err})") from None
