"""Distillation shared by the plugins that fine-tune towards the base model: the loss, and the
teacher's outputs kept per batch so a run computes them once."""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from pathlib import Path
from typing import Callable, ClassVar

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from autocompress.store import Memo

LossFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
Teacher = Callable[[torch.Tensor], torch.Tensor]


def kd_loss(teacher: Teacher | None, *, temperature: float, alpha: float,
            extra: Callable[[], torch.Tensor] | None = None) -> LossFn:
    """``loss_fn(logits, labels, inputs)`` for :func:`autocompress.models.fit`.

    ``alpha * T² * KL(teacher_T || student_T) + (1 - alpha) * cross-entropy`` (Hinton et al.),
    plus ``extra()`` when given (e.g. a feature-matching term). Without a teacher, or with
    ``alpha == 0``, plain cross-entropy (the teacher still runs when given, for ``extra``).

    Args:
        teacher: The frozen base model (eval mode, on the training device) or a function of a
            batch giving its outputs (:class:`TeacherOutputs`), or ``None``.
        temperature: Softmax temperature ``T``.
        alpha: Weight of the distillation term.
        extra: A further loss term, called once per step after the forward pass.
    """
    def loss_fn(logits: torch.Tensor, labels: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
        loss = F.cross_entropy(logits, labels)
        if teacher is not None:  # run even with alpha 0: the teacher's forward hooks may feed ``extra``
            with torch.no_grad():
                soft = teacher(inputs)
        if teacher is not None and alpha > 0:
            kd = F.kl_div(F.log_softmax(logits / temperature, 1), F.log_softmax(soft / temperature, 1),
                          reduction="batchmean", log_target=True) * temperature * temperature
            loss = alpha * kd + (1 - alpha) * loss
        if extra is not None:
            loss = loss + extra()
        return loss

    return loss_fn


class TeacherOutputs:
    """A frozen teacher whose outputs are kept by the bytes of the batch that produced them.

    Every trial of a run fine-tunes on the same batches (the data order and augmentation follow
    the run's seed), so the base model's outputs on a batch are the same for all of them: the
    first trial computes them, later ones read them. The outputs are those of the same module on
    the same bytes, so a fine-tune trains exactly as it would with the teacher running.

    Outputs are kept in this process (least recently used first out beyond ``MEMORY_BYTES``) and
    under ``folder`` for other workers and resumed runs, one :class:`~autocompress.store.Memo`
    entry per batch: an entry that does not match its digest is removed and the teacher runs
    again. Entries stop being added once ``folder`` holds ``max_bytes``.

    Args:
        teacher: The frozen model (eval mode, on the device the batches come on).
        folder: Where outputs are kept; one folder per teacher and device.
        max_bytes: Disk cap of ``folder`` (``None`` = none).
    """

    MEMORY_BYTES: ClassVar[float] = 256e6
    _memory: ClassVar[OrderedDict[tuple[str, str], torch.Tensor]] = OrderedDict()
    _memory_bytes: ClassVar[int] = 0

    def __init__(self, teacher: torch.nn.Module, folder: Path | str, *, max_bytes: float | None = None) -> None:
        self.teacher, self.folder, self.max_bytes = teacher, Path(folder), max_bytes
        self.reused = self.computed = self.corrupt = 0
        self.compute_s = 0.0  # the teacher's own time on the batches it ran
        self.memo = Memo(self.folder, max_bytes=max_bytes, when_full="stop")

    @classmethod
    def forget(cls) -> None:
        """Drops the outputs kept in this process; the files stay."""
        cls._memory.clear()
        cls._memory_bytes = 0

    def __call__(self, inputs: torch.Tensor) -> torch.Tensor:
        key = _batch_key(inputs)
        out = self._recall(key)
        if out is None:
            t0 = time.perf_counter()
            with torch.no_grad():
                out = self.teacher(inputs)
            self.compute_s += time.perf_counter() - t0
            self.computed += 1
            self._remember(key, out.detach().cpu())
            return out
        self.reused += 1
        return out.to(inputs.device)

    def _recall(self, key: str) -> torch.Tensor | None:
        slot = (str(self.folder), key)
        if slot in self._memory:
            self._memory.move_to_end(slot)
            return self._memory[slot]
        corrupt = self.memo.corrupt
        entry = self.memo.get(key)
        self.corrupt += self.memo.corrupt - corrupt
        if entry is None:
            return None
        try:
            out = load_file(str(entry.files[_OUTPUTS]))["outputs"]
        except Exception:  # noqa: BLE001 - bytes as written, yet not outputs: rebuilt, never trusted
            self.corrupt += 1
            self.memo.remove(key)
            return None
        self._keep(slot, out)
        return out

    def _remember(self, key: str, out: torch.Tensor) -> None:
        self._keep((str(self.folder), key), out)
        self.memo.put_with(key, lambda folder: [_save_outputs(out, folder / _OUTPUTS)])

    @classmethod
    def _keep(cls, slot: tuple[str, str], out: torch.Tensor) -> None:
        if slot not in cls._memory:
            cls._memory_bytes += out.numel() * out.element_size()
        cls._memory[slot] = out
        cls._memory.move_to_end(slot)
        while cls._memory_bytes > cls.MEMORY_BYTES and len(cls._memory) > 1:
            _, old = cls._memory.popitem(last=False)
            cls._memory_bytes -= old.numel() * old.element_size()


_OUTPUTS = "outputs.safetensors"


def _batch_key(inputs: torch.Tensor) -> str:
    digest = hashlib.blake2b(digest_size=16)
    digest.update(f"{tuple(inputs.shape)}{inputs.dtype}".encode())
    digest.update(_bytes(inputs.detach().cpu()))
    return digest.hexdigest()


def _save_outputs(out: torch.Tensor, path: Path) -> Path:
    save_file({"outputs": out.contiguous()}, str(path))
    return path


def _bytes(values: torch.Tensor) -> bytes:
    return values.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()  # any dtype, bfloat16 too
