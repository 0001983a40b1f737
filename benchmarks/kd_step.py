"""What the run's store of teacher outputs saves a distillation fine-tune (issue: Spend the night).

Every trial of a run fine-tunes on the same batches, so the base model's outputs on them are
computed once per run (``autocompress.plugin.teacher.TeacherOutputs``). Measured here on the shared
CIFAR-10 ResNet-18 base (or, without ``../shared``, a timm resnet18 on the embedded digits at
32x32): for students pruned 0 %, 50 % and 75 % (torch-pruning, channels rounded to 8),

* the teacher's share of one distillation step (its forward pass vs the student's forward,
  backward and AdamW step), batch 64, timed in interleaved rounds;
* one logit-KD epoch with the teacher running vs reading its outputs from a warm store
  (the same batches, the same weights at the end: checked).

    python benchmarks/kd_step.py              # ~3 min on 2 cores
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from proof import BASE_WEIGHTS, CIFAR, ROOT  # noqa: E402

from autocompress.config.schema import DataConfig, ModelConfig  # noqa: E402
from autocompress.data import load_data  # noqa: E402
from autocompress.plugin.teacher import TeacherOutputs, kd_loss  # noqa: E402
from autocompress.device.machine import describe  # noqa: E402
from autocompress.models import create_model, fit  # noqa: E402
from autocompress.plugin.testing import load_plugin, make_context  # noqa: E402


def _base_and_data(samples: int):
    if BASE_WEIGHTS.is_file() and (CIFAR / "train").is_dir():
        data = load_data(DataConfig(source="imagefolder", path=str(CIFAR), max_samples=samples), 32)
        model = create_model(ModelConfig(name="resnet18", img_size=32, checkpoint=str(BASE_WEIGHTS), train_epochs=0), 10)
        return model.eval(), data, "shared CIFAR-10 ResNet-18"
    data = load_data(DataConfig(source="digits"), 32)
    return create_model(ModelConfig(name="resnet18", img_size=32, train_epochs=0), 10).eval(), data, "digits, untrained resnet18"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=3000, help="CIFAR-10 images per split cap")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "kd_step")
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    teacher, data, source = _base_and_data(args.samples)
    ctx = make_context(Path(tempfile.mkdtemp()), teacher)
    batch = data.train.example(64)
    rows = []
    for ratio in (0.0, 0.5, 0.75):
        student = copy.deepcopy(teacher)
        if ratio:
            ctx.data = data
            student = load_plugin("channel_prune").from_params({"ratio": ratio}).apply(student, ctx)
        rows.append(_step_share(teacher, student, batch, args.rounds) | {"pruned": ratio}
                    | _epoch(teacher, student, data, Path(tempfile.mkdtemp())))
    args.out.mkdir(parents=True, exist_ok=True)
    report = {"machine": describe(2), "source": source, "train_images": len(data.train), "rows": rows}
    (args.out / "kd_step.json").write_text(json.dumps(report, indent=1))
    lines = [f"Machine: {report['machine'].get('cpu', '?')}; {source}, {len(data.train)} training images, "
             f"batch 64, 2 threads; `python benchmarks/kd_step.py`.", "",
             "| student pruned | teacher forward ms | student step ms | teacher share of a step | KD epoch, teacher runs (s) "
             "| KD epoch, warm store (s) | saved | same weights |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['pruned']:.0%} | {r['teacher_ms']:.1f} | {r['student_ms']:.1f} | {r['share']:.0%} | "
                     f"{r['epoch_teacher_s']:.2f} | {r['epoch_store_s']:.2f} | {1 - r['epoch_store_s'] / r['epoch_teacher_s']:.0%} "
                     f"| {r['same_weights']} |")
    (args.out / "kd_step.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


def _step_share(teacher, student, batch, rounds: int) -> dict:
    labels = torch.zeros(len(batch), dtype=torch.long)
    student = copy.deepcopy(student).train()
    opt = torch.optim.AdamW(student.parameters())
    t_teacher, t_student = [], []
    for _ in range(rounds):  # interleaved, medians kept
        t0 = time.perf_counter()
        for _ in range(10):
            with torch.no_grad():
                teacher(batch)
        t_teacher.append((time.perf_counter() - t0) / 10)
        t0 = time.perf_counter()
        for _ in range(10):
            loss = torch.nn.functional.cross_entropy(student(batch), labels)
            opt.zero_grad()
            loss.backward()
            opt.step()
        t_student.append((time.perf_counter() - t0) / 10)
    tt, ts = statistics.median(t_teacher[1:]), statistics.median(t_student[1:])
    return {"teacher_ms": tt * 1e3, "student_ms": ts * 1e3, "share": tt / (tt + ts)}


def _epoch(teacher, student, data, folder: Path) -> dict:
    TeacherOutputs.forget()
    store = TeacherOutputs(teacher, folder)
    times, weights = {}, {}
    for name, source in (("fill", store), ("teacher", teacher), ("store", store)):
        model = copy.deepcopy(student)
        t0 = time.perf_counter()
        fit(model, data, epochs=1, lr=1e-3, seed=0, batch_size=64,
            loss_fn=kd_loss(source, temperature=4.0, alpha=0.7))
        times[name] = time.perf_counter() - t0
        weights[name] = model.state_dict()
    same = all(torch.equal(a, b) for a, b in zip(weights["teacher"].values(), weights["store"].values()))
    return {"epoch_teacher_s": times["teacher"], "epoch_store_s": times["store"], "same_weights": same}


if __name__ == "__main__":
    sys.exit(main())
