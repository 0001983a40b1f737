"""Base models: creating a timm model, loading checkpoints, training in-process, fine-tuning."""

from __future__ import annotations

import difflib
import math
from typing import Callable

import timm
import torch
import torch.nn.functional as F

from autocompress.config import ModelConfig
from autocompress.data import DataBundle
from autocompress.errors import UserError


def create_model(config: ModelConfig, num_classes: int) -> torch.nn.Module:
    """Builds the timm model a config names, with pretrained weights or a checkpoint if asked.

    Raises:
        UserError: Unknown model name, unreadable checkpoint, or one that does not fit the model.
    """
    if not timm.is_model(config.name):
        hint = difflib.get_close_matches(config.name, timm.list_models(), n=3)
        extra = f"; did you mean {', '.join(hint)}?" if hint else "; see timm.list_models()"
        raise UserError(f"model.name: unknown timm model {config.name!r}{extra}")
    kwargs = dict(config.kwargs)
    try:
        model = timm.create_model(config.name, pretrained=config.pretrained, num_classes=num_classes,
                                  img_size=config.img_size, **kwargs)
    except TypeError:
        model = timm.create_model(config.name, pretrained=config.pretrained, num_classes=num_classes, **kwargs)
    except Exception as err:
        if config.pretrained:
            raise UserError(f"model.pretrained: could not fetch pretrained weights for {config.name}: {str(err).splitlines()[0][:160]}") from None
        raise
    if config.checkpoint is not None:
        load_checkpoint(model, config.checkpoint)
    return model


def load_checkpoint(model: torch.nn.Module, path) -> None:
    """Loads a ``state_dict`` (or ``{"state_dict"|"model"|"model_state_dict": ...}``) into ``model``.

    A ``.safetensors`` file is read with ``safetensors.torch.load_file``; anything else with
    ``torch.load(weights_only=True)``. Keys saved from ``DataParallel`` (``module.`` prefix) are accepted.

    Raises:
        UserError: The file is missing or unreadable, holds no state_dict, or does not fit the model
            (the first missing, unexpected and mismatching keys are named).
    """
    from pathlib import Path

    path = Path(path)
    if not path.is_file():
        raise UserError(f"model.checkpoint: file not found: {path}")
    if path.suffix.lower() == ".safetensors":
        try:
            from safetensors.torch import load_file

            state = load_file(str(path), device="cpu")
        except Exception as err:
            raise UserError(f"model.checkpoint: {path} is not a readable safetensors file: {_first_line(err)}") from None
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:
            raise UserError(f"model.checkpoint: {path} is not a weights-only torch checkpoint: {_first_line(err)}") from None
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"model.checkpoint: {path} holds no state_dict (a mapping of parameter names to tensors)")
    own = model.state_dict()
    if all(k.startswith("module.") for k in state) and not any(k.startswith("module.") for k in own):
        state = {k[len("module."):]: v for k, v in state.items()}  # saved from DataParallel / DDP
    problem = _misfit(own, state)
    if problem:
        arch = (getattr(model, "pretrained_cfg", None) or {}).get("architecture") or type(model).__name__
        classes = getattr(model, "num_classes", None)
        arch += f" ({classes} classes)" if isinstance(classes, int) else ""
        raise UserError(f"model.checkpoint: {path} does not fit {arch}: {problem}")
    model.load_state_dict(state, strict=True)


def _first_line(err: Exception) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0][:160]


def _misfit(own: dict, state: dict, show: int = 3) -> str:
    """What keeps ``state`` from loading into a model with state ``own``; empty when it fits."""
    def names(keys: list[str]) -> str:
        return ", ".join(keys[:show]) + (", ..." if len(keys) > show else "")

    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    mismatched = [k for k in own if k in state and tuple(own[k].shape) != tuple(state[k].shape)]
    parts = []
    if missing:
        parts.append(f"missing {len(missing)} key{'s' * (len(missing) != 1)} ({names(missing)})")
    if unexpected:
        parts.append(f"unexpected {len(unexpected)} key{'s' * (len(unexpected) != 1)} ({names(unexpected)})")
    if mismatched:
        shapes = ", ".join(f"{k} {list(state[k].shape)} vs {list(own[k].shape)}" for k in mismatched[:show])
        parts.append(f"{len(mismatched)} size mismatch{'es' * (len(mismatched) != 1)}, checkpoint vs model "
                     f"({shapes}{', ...' if len(mismatched) > show else ''})")
    return "; ".join(parts)


def fit(
    model: torch.nn.Module, data: DataBundle, *, epochs: float, lr: float, seed: int = 0,
    batch_size: int = 64, device: torch.device | str = "cpu", weight_decay: float = 0.05,
    loss_fn: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    on_epoch: Callable[[int, torch.nn.Module], None] | None = None,
    label_smoothing: float = 0.1,
) -> torch.nn.Module:
    """Trains a model on the train split with AdamW and a one-cycle schedule.

    Args:
        model: Trained in place (and returned).
        data: The dataset.
        epochs: Epochs; a fraction trains on that share of one epoch.
        lr: Peak learning rate.
        seed: Seed of the shuffling and augmentation.
        batch_size: Batch size.
        device: Training device.
        weight_decay: AdamW weight decay.
        loss_fn: ``loss_fn(logits, labels, inputs)``; default cross-entropy.
        on_epoch: Called after each epoch with its index and the model (e.g. to report accuracy).
        label_smoothing: Of the default cross-entropy.
    """
    device = torch.device(device)
    model.to(device).train()
    torch.manual_seed(seed)
    steps_per_epoch = math.ceil(len(data.train) / batch_size)
    whole = max(1, math.ceil(epochs))
    total_steps = max(1, int(round(epochs * steps_per_epoch)))
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=total_steps, pct_start=0.25)
    loss_fn = loss_fn or (lambda logits, labels, inputs: F.cross_entropy(logits, labels, label_smoothing=label_smoothing))
    step = 0
    for epoch in range(whole):
        for inputs, labels in data.train.batches(batch_size, shuffle=True, seed=seed * 1000 + epoch, train=True):
            if step >= total_steps:
                break
            inputs, labels = inputs.to(device), labels.to(device)
            loss = loss_fn(model(inputs), labels, inputs)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"training loss became {loss.item()} at step {step}")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            step += 1
        if on_epoch is not None:
            on_epoch(epoch, model)
            model.train()
    return model.eval()
