"""The teacher's outputs are kept per batch: read back exactly, verified, rebuilt when corrupt."""

import torch

from autocompress.plugin.teacher import TeacherOutputs


class Counting(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 5))
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return self.net(x)


def _batch(seed):
    return torch.randn(4, 3, 2, 2, generator=torch.Generator().manual_seed(seed))


def test_a_batch_seen_before_is_read_back_exactly_and_the_teacher_does_not_run(tmp_path):
    TeacherOutputs.forget()
    teacher = Counting().eval()
    store = TeacherOutputs(teacher, tmp_path)
    first = store(_batch(1))
    assert teacher.calls == 1 and store.computed == 1
    assert torch.equal(store(_batch(1)), first) and teacher.calls == 1 and store.reused == 1
    store(_batch(2))                                       # other bytes, other outputs
    assert teacher.calls == 2 and len(list(tmp_path.glob("*/outputs.safetensors"))) == 2

    TeacherOutputs.forget()                                # another process: from the files
    again = TeacherOutputs(teacher, tmp_path)
    assert torch.equal(again(_batch(1)), first) and teacher.calls == 2 and again.reused == 1


def test_a_corrupt_file_is_removed_and_the_teacher_runs_again(tmp_path):
    TeacherOutputs.forget()
    teacher = Counting().eval()
    expected = TeacherOutputs(teacher, tmp_path)(_batch(3))
    (entry,) = tmp_path.glob("*/outputs.safetensors")
    data = bytearray(entry.read_bytes())
    data[data.index(expected.numpy().tobytes()) + 1] ^= 0xFF   # a byte of the stored values
    entry.write_bytes(bytes(data))
    TeacherOutputs.forget()
    store = TeacherOutputs(teacher, tmp_path)
    out = store(_batch(3))
    assert store.corrupt == 1 and store.computed == 1 and teacher.calls == 2
    assert torch.equal(out, expected)
    TeacherOutputs.forget()
    assert torch.equal(TeacherOutputs(teacher, tmp_path)(_batch(3)), expected) and teacher.calls == 2


def test_files_stop_being_added_at_the_cap_and_memory_stays_bounded(tmp_path, monkeypatch):
    TeacherOutputs.forget()
    teacher = Counting().eval()
    store = TeacherOutputs(teacher, tmp_path, max_bytes=1)
    store(_batch(4))
    store(_batch(5))
    assert len(list(tmp_path.glob("*/outputs.safetensors"))) == 1   # the first entry reaches the cap
    monkeypatch.setattr(TeacherOutputs, "MEMORY_BYTES", 4 * 5 * 4 * 2)   # two outputs
    for seed in range(6, 10):
        store(_batch(seed))
    assert len(TeacherOutputs._memory) == 2
    TeacherOutputs.forget()
