"""The base model of a run: loaded or trained once, cached in the run folder, measured first."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Callable

import torch

from autocompress.config import RunConfig
from autocompress.data import load_data
from autocompress.measure import module_predictor, top1
from autocompress.models import create_model, fit


def base_key(config: RunConfig) -> str:
    """Hash of what determines the base weights (model, data, seed)."""
    blob = json.dumps([config.model.model_dump(mode="json"), config.data.model_dump(mode="json"),
                       config.search.seed], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def prepare_base(config: RunConfig, run_dir: Path, log: Callable[[str], None] = print) -> Path:
    """Writes ``base/weights.pt`` (trained in-process if asked), reusing a cached one with the same key.

    Returns:
        The weights file.
    """
    folder = Path(run_dir) / "base"
    folder.mkdir(parents=True, exist_ok=True)
    weights, key_file = folder / "weights.pt", folder / "key.json"
    key = base_key(config)
    if weights.exists() and key_file.exists() and json.loads(key_file.read_text()).get("key") == key:
        log("base: reusing cached weights")
        return weights
    torch.set_num_threads(config.device.threads)
    data = load_data(config.data, config.model.img_size)
    model = create_model(config.model, config.model.num_classes or data.num_classes)
    info = {"key": key, "trained_epochs": 0}
    if config.model.train_epochs > 0:
        t0 = time.time()
        log(f"base: training {config.model.name} for {config.model.train_epochs} epochs on {len(data.train)} images")
        fit(model, data, epochs=config.model.train_epochs, lr=config.model.train_lr, seed=config.search.seed,
            batch_size=config.data.batch_size,
            on_epoch=lambda e, m: log(f"base: epoch {e + 1}/{config.model.train_epochs} "
                                      f"val top-1 {top1(module_predictor(m), data.val):.2f}%"))
        info.update(trained_epochs=config.model.train_epochs, train_seconds=round(time.time() - t0, 1))
    torch.save(model.state_dict(), weights)
    key_file.write_text(json.dumps(info))
    return weights
