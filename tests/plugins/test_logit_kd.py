import copy

import torch
import torch.nn.functional as F

from autocompress.models import fit
from autocompress.plugin.testing import PluginContract, load_plugin, make_context, tiny_model


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
    ctx.report = lambda step, acc, final=False, last=None, whole=None: curve.append((step, final, last))
    student = tiny_model("test_resnet")
    before = _kl_to_teacher(copy.deepcopy(student), ctx.teacher, ctx.data.val)
    out = load_plugin("logit_kd").from_params({"epochs": 3, "lr": 1e-2, "alpha": 1.0}).apply(student, ctx)
    after = _kl_to_teacher(out, ctx.teacher, ctx.data.val)
    # the last epoch is marked (never stopped after it); each report names the stage's last step
    assert curve == [(1, False, 3), (2, False, 3), (3, True, 3)]
    assert after < 0.8 * before


class TestLogitKDFeatures(PluginContract):
    plugin_cls = load_plugin("logit_kd")
    params = {"epochs": 0.5, "lr": 1e-3, "feature_weight": 1.0, "feature_stage": -2}
    models = ("test_resnet", "mobilenetv3_small_050", "test_efficientnet", "test_convnext", "test_vit")


def _features(model, module, x):
    out = {}
    handle = dict(model.named_modules())[module].register_forward_hook(lambda m, a, o: out.update(f=o))
    with torch.no_grad():
        model.eval()(x)
    handle.remove()
    return out["f"]


def test_feature_distillation_moves_the_matched_stage_towards_the_teacher(tmp_path):
    ctx = make_context(tmp_path, None)
    ctx.teacher = fit(tiny_model("test_resnet"), ctx.data, epochs=3, lr=1e-2)
    student = tiny_model("test_resnet")
    x = ctx.data.val.example(64)
    distance = lambda: float(F.mse_loss(_features(student, "layer3", x), _features(ctx.teacher, "layer3", x)))
    before = distance()
    keys = set(student.state_dict())
    load_plugin("logit_kd").from_params({"epochs": 1, "lr": 3e-3, "alpha": 0.0, "feature_weight": 10.0,
                                         "feature_stage": 3}).apply(student, ctx)
    assert distance() < 0.7 * before
    assert set(student.state_dict()) == keys


def test_feature_distillation_trains_an_adapter_when_channels_differ_and_drops_it(tmp_path):
    ctx = make_context(tmp_path, None)
    ctx.teacher = tiny_model("resnet10t")  # layer3: 256 channels; test_resnet's: 192
    student = tiny_model("test_resnet")
    keys, n = set(student.state_dict()), sum(p.numel() for p in student.parameters())
    out = load_plugin("logit_kd").from_params({"epochs": 0.3, "feature_weight": 1.0, "feature_stage": 3}).apply(student, ctx)
    assert set(out.state_dict()) == keys and sum(p.numel() for p in out.parameters()) == n
    assert not any("adapter" in name for name, _ in out.named_modules())
