"""Base models: creating a timm model, loading checkpoints, training in-process, fine-tuning."""

from __future__ import annotations

import copy
import difflib
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import timm
import torch
import torch.nn.functional as F

from autocompress.config import ModelConfig
from autocompress.data import DataBundle
from autocompress.errors import UserError
from autocompress.store import Memo


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


def model_stages(model: torch.nn.Module) -> list[tuple[str, list[str]]]:
    """The model's stages, from timm's ``feature_info``: per stage, its name (the feature module) and the
    names of its Conv/Linear layers, classifier excluded.

    A stage holds every layer registered after the previous stage's last layer, up to the end of its
    feature module (so ResNet's stem belongs to the stage named ``act1``, MobileNetV3's ``blocks.2`` to
    ``blocks.3``); layers after the last feature module (a head convolution) join the last stage.
    Stages without such layers are left out; a model without ``feature_info`` has none.
    """
    info = getattr(model, "feature_info", None)
    ends = [entry["module"] for entry in info] if info else []
    if not ends:
        return []
    head = model.get_classifier() if hasattr(model, "get_classifier") else None
    skip = {id(m) for m in head.modules()} if isinstance(head, torch.nn.Module) else set()
    names = [name for name, _ in model.named_modules()]
    last = [max((i for i, n in enumerate(names) if n == end or n.startswith(end + ".")), default=-1) for end in ends]
    stages: list[tuple[str, list[str]]] = [(end, []) for end in ends]
    index = 0
    for i, (name, module) in enumerate(model.named_modules()):
        while index < len(ends) - 1 and i > last[index]:
            index += 1
        if isinstance(module, (torch.nn.Conv2d, torch.nn.Linear)) and id(module) not in skip:
            stages[index][1].append(name)
    return [(end, layers) for end, layers in stages if layers]


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


class TimeUp(BaseException):
    """Raised by :func:`fit` between two batches once its ``deadline`` has passed, after its state was saved.

    A ``BaseException``, like :class:`autocompress.trial.StepTimeout`, so that a plugin's ``except
    Exception`` cannot swallow it and go on with a half-trained model.

    Attributes:
        epoch / step: Where the fit stopped (its epoch, and optimizer steps taken).
        saved: Whether its state was saved for a continuation.
    """

    def __init__(self, epoch: int, step: int, saved: bool) -> None:
        super().__init__(f"stopped at the time limit in epoch {epoch}, after step {step}"
                         + ("" if saved else " (its state could not be saved)"))
        self.epoch, self.step, self.saved = epoch, step, saved


class NotCheckpointable(ValueError):
    """A fit state holds something that is neither a tensor nor plain JSON data."""


@dataclass
class FitState:
    """Where a :func:`fit` stopped, and all it needs to go on exactly as if it had not.

    Attributes:
        epoch: The epoch it was in.
        in_epoch: Batches of that epoch already trained on.
        step: Optimizer steps taken.
        total_steps: Steps of the whole fit (a state of another schedule is not continued).
        model: The model's ``state_dict``.
        optimizer / scheduler: Their ``state_dict``.
        rng: Torch's CPU random state (and ``cuda``'s on a GPU), for dropout and the like.
    """

    epoch: int
    in_epoch: int
    step: int
    total_steps: int
    model: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    scheduler: dict[str, Any]
    rng: dict[str, torch.Tensor]

    TENSORS = "state.safetensors"
    PLAIN = "state.json"

    def write(self, folder: Path) -> list[Path]:
        """Writes the state as safetensors (every tensor) and JSON (the rest); no pickle.

        Raises:
            NotCheckpointable: A value is neither a tensor nor JSON data.
        """
        from safetensors.torch import save_file

        tensors: dict[str, torch.Tensor] = {}
        plain = {"epoch": self.epoch, "in_epoch": self.in_epoch, "step": self.step, "total_steps": self.total_steps,
                 **{part: _flatten(getattr(self, part), part, tensors)
                    for part in ("model", "optimizer", "scheduler", "rng")}}
        folder = Path(folder)
        save_file({k: v.detach().cpu().contiguous().clone() for k, v in tensors.items()}, str(folder / self.TENSORS))
        (folder / self.PLAIN).write_text(json.dumps(plain))
        return [folder / self.TENSORS, folder / self.PLAIN]

    @classmethod
    def read(cls, folder: Path) -> "FitState":
        """Reads what :meth:`write` wrote.

        Raises:
            ValueError: The files do not hold a fit state.
        """
        from safetensors.torch import load_file

        folder = Path(folder)
        try:
            tensors = load_file(str(folder / cls.TENSORS), device="cpu")
            plain = json.loads((folder / cls.PLAIN).read_text())
            return cls(epoch=int(plain["epoch"]), in_epoch=int(plain["in_epoch"]), step=int(plain["step"]),
                       total_steps=int(plain["total_steps"]),
                       **{part: _unflatten(plain[part], tensors) for part in ("model", "optimizer", "scheduler", "rng")})
        except (OSError, KeyError, TypeError, ValueError) as err:
            raise ValueError(f"not a fit state: {_first_line(err)}") from None


def _flatten(value: Any, path: str, tensors: dict[str, torch.Tensor]) -> Any:
    """``value`` as JSON data, each tensor moved to ``tensors`` under its path; dict keys keep their type
    (an optimizer's state is keyed by parameter index) and tuples stay tuples."""
    if isinstance(value, torch.Tensor):
        tensors[path] = value
        return {"tensor": path}
    if isinstance(value, dict):
        return {"dict": [[key, _flatten(v, f"{path}.{key}", tensors)] for key, v in value.items()]}
    if isinstance(value, tuple):
        return {"tuple": [_flatten(v, f"{path}.{i}", tensors) for i, v in enumerate(value)]}
    if isinstance(value, list):
        return [_flatten(v, f"{path}.{i}", tensors) for i, v in enumerate(value)]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise NotCheckpointable(f"{path} is a {type(value).__name__}")


def _unflatten(value: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(value, list):
        return [_unflatten(v, tensors) for v in value]
    if isinstance(value, dict):
        (kind, inner), = value.items()
        if kind == "tensor":
            return tensors[inner]
        if kind == "tuple":
            return tuple(_unflatten(v, tensors) for v in inner)
        if kind == "dict":
            return {key: _unflatten(v, tensors) for key, v in inner}
        raise ValueError(f"unknown entry {kind!r}")
    return value


class FitCheckpoint:
    """Where one :func:`fit` saves its state at its deadline, and finds it again: an entry of a
    :class:`~autocompress.store.Memo` (verified against its digests on read).

    Args:
        memo: The entries' store.
        key: The entry: the same training (model, data, schedule) must get the same key.
        ordinal: Which fit of those that share ``key`` this is (a plugin may fit more than once).
    """

    def __init__(self, memo: Memo, key: str, ordinal: int = 0) -> None:
        self.memo, self.key, self.ordinal = memo, key, ordinal
        self._found = False

    def load(self) -> tuple[FitState, dict] | None:
        """The saved state and its entry's metadata; ``None`` when there is none for this fit
        (an unreadable one is removed)."""
        entry = self.memo.get(self.key)
        if entry is None or entry.meta.get("ordinal") != self.ordinal:
            return None
        self._found = True
        try:
            return FitState.read(entry.folder), entry.meta
        except ValueError:
            self.memo.remove(self.key)
            return None

    def save(self, state: FitState) -> bool:
        """Stores ``state`` (replacing an earlier one); ``False`` when it cannot be written without pickle."""
        try:
            self.memo.put_with(self.key, state.write, {**self.meta(), "ordinal": self.ordinal, "epoch": state.epoch,
                                                       "step": state.step})
        except NotCheckpointable:
            return False
        return True

    def meta(self) -> dict:
        """What the entry keeps besides the state (JSON); a subclass adds what its caller needs to continue."""
        return {}

    def resumed(self, state: FitState, meta: dict) -> None:
        """Called when :func:`fit` continues from ``state``."""

    def done(self) -> None:
        """The fit ended (finished, failed or stopped early): the entry it continued from is no longer needed."""
        if self._found:
            self.memo.remove(self.key)


def fit(
    model: torch.nn.Module, data: DataBundle, *, epochs: float, lr: float, seed: int = 0,
    batch_size: int = 64, device: torch.device | str = "cpu", weight_decay: float = 0.05,
    loss_fn: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    on_epoch: Callable[[int, torch.nn.Module], None] | None = None,
    label_smoothing: float = 0.1, deadline: float | None = None, checkpoint: FitCheckpoint | None = None,
    rung: Rung | None = None,
) -> torch.nn.Module:
    """Trains a model on the train split with AdamW and a one-cycle schedule (or, at a rung of the
    search's fidelity ladder, warmup-stable-decay).

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
        deadline: Epoch seconds (``time.time()``); checked before each batch: past it, the state is
            saved to ``checkpoint`` and :class:`TimeUp` raised.
        checkpoint: Where the state is saved at the deadline and continued from: a fit that finds a
            state of the same schedule (and model shapes) there starts where it stopped, on the same
            batches, and ends with the weights an uninterrupted fit would have.
        rung: Train for ``rung.epochs`` (``epochs`` is then ignored) on a warmup-stable-decay
            schedule; start from ``rung.start`` (the previous rung's state where its decay began:
            the same trajectory, so a promoted fit continues instead of starting over) and hand
            ``rung.keep`` the state where this rung's decay begins.

    Raises:
        TimeUp: The deadline passed.
    """
    device = torch.device(device)
    model.to(device).train()
    torch.manual_seed(seed)
    steps_per_epoch = math.ceil(len(data.train) / batch_size)
    if rung is not None:
        epochs = rung.epochs
    whole = max(1, math.ceil(epochs))
    total_steps = max(1, int(round(epochs * steps_per_epoch)))
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    if rung is not None:
        schedule: Any = _WarmupStableDecay(optimizer, lr, warmup=int(round(rung.warmup * steps_per_epoch)),
                                           decay_start=rung.decay_start(steps_per_epoch), total=total_steps)
    else:
        schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=total_steps, pct_start=0.25)
    loss_fn = loss_fn or (lambda logits, labels, inputs: F.cross_entropy(logits, labels, label_smoothing=label_smoothing))
    step, first_epoch, skip = 0, 0, 0
    saved = checkpoint.load() if checkpoint is not None else None
    start = None
    if saved is not None and _continues(saved[0], model, total_steps):
        start = saved[0]
        checkpoint.resumed(start, saved[1])
    elif rung is not None and rung.start is not None and _continues(rung.start, model, None) \
            and rung.start.step <= schedule.decay_start:
        start = rung.start
        rung.continued = True
    if start is not None:
        model.load_state_dict(start.model)
        optimizer.load_state_dict(start.optimizer)
        schedule.load_state_dict(start.scheduler)
        torch.set_rng_state(start.rng["cpu"])
        if "cuda" in start.rng and device.type == "cuda":
            torch.cuda.set_rng_state(start.rng["cuda"], device)
        step, first_epoch, skip = start.step, start.epoch, start.in_epoch
    try:
        for epoch in range(first_epoch, whole):
            batches = data.train.batches(batch_size, shuffle=True, seed=seed * 1000 + epoch, train=True)
            for in_epoch, (inputs, labels) in enumerate(batches):
                if step >= total_steps:
                    break
                if in_epoch < skip:  # trained on before the stop: drawn, so the augmentation's generator goes on alike
                    continue
                if rung is not None and rung.keep is not None and step == schedule.decay_start:
                    rung.keep(copy.deepcopy(_state(model, optimizer, schedule, epoch=epoch, in_epoch=in_epoch,
                                                   step=step, total_steps=total_steps, device=device)))
                if deadline is not None and time.time() >= deadline:
                    _stop(model, optimizer, schedule, checkpoint, epoch=epoch, in_epoch=in_epoch, step=step,
                          total_steps=total_steps, device=device)
                inputs, labels = inputs.to(device), labels.to(device)
                loss = loss_fn(model(inputs), labels, inputs)
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"training loss became {loss.item()} at step {step}")
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                schedule.step()
                step += 1
            skip = 0
            if on_epoch is not None:
                on_epoch(epoch, model)
                model.train()
    except TimeUp:
        raise
    except BaseException:  # failed or stopped early (a StopTrial from on_epoch): nothing to continue
        if checkpoint is not None:
            checkpoint.done()
        raise
    if checkpoint is not None:
        checkpoint.done()
    return model.eval()


def _continues(state: FitState, model: torch.nn.Module, total_steps: int | None) -> bool:
    """Whether ``state`` is one of this fit: the same schedule (``None``: any) and the model's keys and shapes."""
    own = model.state_dict()
    return (total_steps is None or state.total_steps == total_steps) and state.model.keys() == own.keys() and all(
        tuple(state.model[k].shape) == tuple(v.shape) for k, v in own.items())


def _state(model, optimizer, schedule, *, epoch: int, in_epoch: int, step: int, total_steps: int,
           device: torch.device) -> FitState:
    rng = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        rng["cuda"] = torch.cuda.get_rng_state(device)
    return FitState(epoch=epoch, in_epoch=in_epoch, step=step, total_steps=total_steps, model=model.state_dict(),
                    optimizer=optimizer.state_dict(), scheduler=schedule.state_dict(), rng=rng)


def _stop(model, optimizer, schedule, checkpoint: FitCheckpoint | None, *, epoch: int, in_epoch: int, step: int,
          total_steps: int, device: torch.device) -> None:
    """Saves where the fit is (when it has a checkpoint) and raises :class:`TimeUp`."""
    saved = False
    if checkpoint is not None:
        saved = checkpoint.save(_state(model, optimizer, schedule, epoch=epoch, in_epoch=in_epoch, step=step,
                                       total_steps=total_steps, device=device))
    raise TimeUp(epoch, step, saved)


@dataclass
class Rung:
    """One rung of the search's fidelity ladder, for :func:`fit`.

    Attributes:
        epochs: This rung's length, counted from the start of training.
        warmup: Epochs of linear warmup (the same at every rung, so every rung follows one trajectory).
        decay: Share of ``epochs`` at the end spent decaying the learning rate linearly to zero.
        start: The state where the previous rung's decay began (its stable phase), to continue from;
            ``None`` = from the start.
        keep: Called with the state where this rung's decay begins (for the next rung to continue from).
        continued: Set by :func:`fit` when it continued from ``start``.
    """

    epochs: float
    warmup: float = 0.1
    decay: float = 0.2
    start: FitState | None = None
    keep: Callable[[FitState], None] | None = None
    continued: bool = False

    def decay_start(self, steps_per_epoch: int) -> int:
        total = max(1, int(round(self.epochs * steps_per_epoch)))
        return max(0, min(total - 1, int(round((1.0 - self.decay) * total))))


class _WarmupStableDecay:
    """The learning rate of a rung: linear warmup to ``lr``, constant, then linear decay to zero over
    ``[decay_start, total)``. Stateless but for the step, so a continued fit only sets the step."""

    def __init__(self, optimizer: torch.optim.Optimizer, lr: float, *, warmup: int, decay_start: int,
                 total: int) -> None:
        self.optimizer, self.lr = optimizer, lr
        self.warmup, self.decay_start, self.total = max(0, min(warmup, decay_start)), decay_start, total
        self.step_count = 0
        self._apply()

    def factor(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / (self.warmup + 1)
        if step < self.decay_start:
            return 1.0
        return max(0.0, (self.total - step) / max(1, self.total - self.decay_start))

    def _apply(self) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr * self.factor(self.step_count)

    def step(self) -> None:
        self.step_count += 1
        self._apply()

    def state_dict(self) -> dict[str, Any]:
        return {"step": self.step_count}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step_count = int(state.get("step", 0))
        self._apply()
