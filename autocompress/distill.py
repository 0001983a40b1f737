"""The distillation loss shared by the plugins that fine-tune towards the base model."""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

LossFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def kd_loss(teacher: torch.nn.Module | None, *, temperature: float, alpha: float,
            extra: Callable[[], torch.Tensor] | None = None) -> LossFn:
    """``loss_fn(logits, labels, inputs)`` for :func:`autocompress.models.fit`.

    ``alpha * T² * KL(teacher_T || student_T) + (1 - alpha) * cross-entropy`` (Hinton et al.),
    plus ``extra()`` when given (e.g. a feature-matching term). Without a teacher, or with
    ``alpha == 0``, plain cross-entropy (the teacher still runs when given, for ``extra``).

    Args:
        teacher: The frozen base model (eval mode, on the training device), or ``None``.
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
