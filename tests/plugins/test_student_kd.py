import pytest
from pydantic import ValidationError

from autocompress.measure.accuracy import count_params, module_predictor, top1
from autocompress.models import fit
from autocompress.plugin.testing import PluginContract, load_plugin, make_context, tiny_model


class TestStudentKD(PluginContract):
    plugin_cls = load_plugin("student_kd")
    params = {"student": "test_efficientnet", "epochs": 0.2}
    models = ("test_resnet", "mobilenetv3_small_050", "test_efficientnet", "test_convnext", "test_vit")


def test_student_is_smaller_learns_from_the_teacher_and_reports_a_curve(tmp_path):
    ctx = make_context(tmp_path, None)
    ctx.teacher = fit(tiny_model("test_resnet"), ctx.data, epochs=6, lr=1e-2)
    curve, lines = [], []
    ctx.report = lambda step, acc, final=False, last=None, whole=None: curve.append((step, acc))
    ctx.log = lines.append
    incoming = tiny_model("test_resnet")
    student = load_plugin("student_kd").from_params(
        {"student": "test_efficientnet", "epochs": 4, "lr": 1e-2, "alpha": 0.5}).apply(incoming, ctx)
    assert type(student).__name__ == "EfficientNet"
    assert count_params(student) < count_params(ctx.teacher) / 2
    assert [s for s, _ in curve] == [1, 2, 3, 4]
    assert top1(module_predictor(student), ctx.data.val) > 20  # ten classes: chance is 10 %
    assert not lines  # the incoming model was the unchanged base


def test_unknown_student_is_rejected():
    with pytest.raises(ValidationError):
        load_plugin("student_kd").from_params({"student": "no_such_net"})


def test_default_students_build_at_32px_and_are_smaller_than_resnet18():
    cls = load_plugin("student_kd")
    teacher = count_params(tiny_model("resnet18"))
    for name in cls.search_space["student"]:
        assert count_params(tiny_model(name)) < teacher / 2, name
