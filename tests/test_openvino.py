"""The OpenVINO runtime: IR saved, reloaded and measured; a missing package gives one clear line."""

import os
import subprocess
import sys
import textwrap

import pytest
import torch

from autocompress.measure.accuracy import measure_latency, module_predictor, top1
from autocompress.plugin.contract import Artefact
from autocompress.plugin.testing import make_context, tiny_model

pytest.importorskip("openvino")

from autocompress.measure.runtimes import get_runtime  # noqa: E402


@pytest.mark.parametrize("name", ["test_resnet", "test_efficientnet", "test_convnext"])
def test_ir_saved_reloaded_and_measured(tmp_path, name):
    runtime = get_runtime("openvino")
    model = tiny_model(name)
    ctx = make_context(tmp_path, None, runtime="openvino")
    art = runtime.save(model, ctx.example_input, tmp_path / "model.xml")
    xml, bin_ = tmp_path / "model.xml", tmp_path / "model.bin"
    assert art.runtime == "openvino" and art.path == xml and art.extra_files == [bin_]
    assert xml.is_file() and bin_.is_file()
    assert art.size_bytes() == xml.stat().st_size + bin_.stat().st_size
    # fp32 weights on disk (compress_to_fp16=False): about 4 bytes per parameter (BatchNorm is folded)
    assert bin_.stat().st_size > 3.5 * sum(p.numel() for p in model.parameters())

    predict = runtime.load(art, threads=1)
    x = ctx.data.test.example(5)
    with torch.no_grad():
        expected = model(x)
    assert torch.allclose(predict(x), expected, atol=1e-4, rtol=1e-4)
    # accuracy in batches of 32 with a remainder: several input shapes through one predictor
    assert top1(predict, ctx.data.test, batch_size=32) == pytest.approx(top1(module_predictor(model), ctx.data.test, 32))
    lat = measure_latency({"openvino": predict}, ctx.data.test.example(1), warmup=2, repeats=5, rounds=2, threads=1)
    assert lat["openvino"].median_ms > 0 and lat["openvino"].calls == 10
    # an artefact rebuilt from the .xml alone (as for the base model) finds the .bin beside it
    alone = runtime.load(Artefact(xml, "openvino"), threads=1)
    assert torch.equal(alone(x), predict(x))


def test_config_names_openvino_alone_or_beside_another_runtime():
    from autocompress.config.schema import RunConfig, load_config
    from autocompress.errors import UserError

    assert RunConfig.model_validate({"device": {"runtime": "openvino"}}).device.runtimes == ["openvino"]
    both = RunConfig.model_validate({"device": {"runtime": ["onnxruntime", "openvino"]}}).device
    assert both.runtimes == ["onnxruntime", "openvino"]
    assert get_runtime(both.runtimes[1]).suffix == ".xml"
    with pytest.raises(UserError, match=r"device\.runtime.*'openvinoo'.*allowed: onnxruntime, torch, openvino"):
        load_config(overrides={"device.runtime": "openvinoo"})


_BLOCKED = textwrap.dedent("""
    import sys
    sys.modules["openvino"] = None          # the package is absent: `import openvino` fails
    from autocompress.errors import UserError
    from autocompress.measure.runtimes import get_runtime
    from autocompress.config.schema import load_config
    for check in (lambda: get_runtime("openvino"), lambda: load_config(overrides={"device.runtime": "openvino"})):
        try:
            check()
        except UserError as err:
            print("USERERROR", err)
        else:
            print("NO ERROR")
    get_runtime("onnxruntime")               # other runtimes still work
    print("OK")
""")


def test_missing_openvino_gives_one_clear_line(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-c", _BLOCKED], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert lines[-1] == "OK"
    errors = [line for line in lines if line.startswith("USERERROR")]
    assert len(errors) == 2, out.stdout
    for line in errors:
        assert "device.runtime" in line and "pip install openvino" in line
        assert "\n" not in line

    # the CLI: one line, exit code 2, no traceback
    cfg = tmp_path / "ov.yaml"
    cfg.write_text("device:\n  runtime: openvino\n")
    cli = ("import sys; sys.modules['openvino'] = None; from autocompress.cli import main; "
           f"sys.argv = ['autocompress', 'search', {str(cfg)!r}, '--out', {str(tmp_path / 'run')!r}]; main()")
    out = subprocess.run([sys.executable, "-c", cli], capture_output=True, text=True, env=env, timeout=120)
    text = (out.stdout + out.stderr).strip()
    assert out.returncode == 2, text
    assert "Traceback" not in text and "pip install openvino" in text
    assert len(text.splitlines()) == 1, text
