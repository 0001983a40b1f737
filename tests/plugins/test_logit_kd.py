import copy

import torch
import torch.nn.functional as F

from autocompress.models import fit
from autocompress.testing import PluginContract, load_plugin, make_context, tiny_model


class TestLogitKD(PluginContract):
    plugin_cls = load_plugin("logit_kd")
    params = {"epochs": 1, "lr": 1e-3}


def _kl_to_teacher(student, teacher, split):
    x = split.example(len(split))
    with torch.no_grad():
        return float(F.kl_div(F.log_softmax(student.eval()(x), 1), F.log_softmax(teacher.eval()(x), 1),
                              reduction="batchmean", log_target=True))


def test_kd_moves_student_towards_teacher_and_reports_a_curve(tmp_path):
    ctx = make_context(tmp_path, None)
    ctx.teacher = fit(tiny_model("test_resnet"), ctx.data, epochs=8, lr=1e-2)
    curve = []
    ctx.report = lambda step, acc: curve.append((step, acc))
    student = tiny_model("test_resnet")
    before = _kl_to_teacher(copy.deepcopy(student), ctx.teacher, ctx.data.val)
    out = load_plugin("logit_kd").from_params({"epochs": 3, "lr": 1e-2, "alpha": 1.0}).apply(student, ctx)
    after = _kl_to_teacher(out, ctx.teacher, ctx.data.val)
    assert [s for s, _ in curve] == [1, 2, 3]
    assert after < 0.8 * before
