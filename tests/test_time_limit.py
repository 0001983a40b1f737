"""The night ends on time: a fine-tune running at the search's time limit stops between two
batches, saves where it is (safetensors + JSON in the run's memo), and ``--resume`` continues it to
the weights an uninterrupted fine-tune ends with. Real tiny models on digits."""

import json
import time

import pytest
import timm
import torch

from autocompress.config import DataConfig
from autocompress.data import load_data
from autocompress.models import FitCheckpoint, FitState, TimeUp, fit
from autocompress.store import Memo


@pytest.fixture(scope="module")
def digits():
    return load_data(DataConfig(source="digits", max_samples=300, batch_size=32), 32)


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return timm.create_model("test_resnet", num_classes=10)


class _SlowAt:
    """A loss that, at its ``at``-th call, waits until the deadline has passed: the fit then
    stops before its next batch, after exactly ``at`` steps."""

    def __init__(self, at: int, deadline: float) -> None:
        self.at, self.deadline, self.calls = at, deadline, 0

    def __call__(self, logits, labels, inputs):
        self.calls += 1
        if self.calls == self.at:
            time.sleep(max(0.0, self.deadline - time.time()) + 0.01)
        return torch.nn.functional.cross_entropy(logits, labels, label_smoothing=0.1)


def test_a_stopped_fit_continues_to_the_weights_of_an_uninterrupted_one(tmp_path, digits):
    torch.set_num_threads(1)
    kw = {"epochs": 2.5, "lr": 0.003, "seed": 3, "batch_size": 32}
    per_epoch = -(-len(digits.train) // 32)
    epochs_whole: list[int] = []
    whole = fit(_model(), digits, **kw, on_epoch=lambda e, m: epochs_whole.append(e))

    memo = Memo(tmp_path / "resume")
    at = per_epoch + 2  # in the second epoch, after two of its batches
    loss = _SlowAt(at, deadline=time.time() + 8.0)
    epochs_before: list[int] = []
    with pytest.raises(TimeUp) as stop:
        fit(_model(), digits, **kw, loss_fn=loss, deadline=loss.deadline, checkpoint=FitCheckpoint(memo, "k"),
            on_epoch=lambda e, m: epochs_before.append(e))
    assert stop.value.saved and 0 < stop.value.step <= at < int(2.5 * per_epoch)
    entry = memo.get("k")
    assert sorted(entry.files) == ["state.json", "state.safetensors"]  # no pickle
    assert entry.meta["step"] == stop.value.step and entry.meta["epoch"] == stop.value.epoch
    json.loads(entry.files["state.json"].read_text())  # the optimizer's state is JSON besides its tensors

    resumed: list[tuple[int, int]] = []

    class Seen(FitCheckpoint):
        def resumed(self, state, meta):
            resumed.append((state.epoch, state.step))

    epochs_after: list[int] = []
    fresh = _model()  # same structure, initial weights: all comes from the checkpoint
    continued = fit(fresh, digits, **kw, checkpoint=Seen(memo, "k"), on_epoch=lambda e, m: epochs_after.append(e))
    assert resumed == [(stop.value.epoch, stop.value.step)]
    assert epochs_before + epochs_after == epochs_whole == [0, 1, 2]
    for name, tensor in whole.state_dict().items():
        assert torch.allclose(tensor, continued.state_dict()[name], rtol=0, atol=1e-6), name
    assert memo.get("k") is None  # a finished fit leaves no checkpoint behind


def test_a_checkpoint_of_another_schedule_or_a_tampered_one_is_not_continued(tmp_path, digits):
    memo = Memo(tmp_path / "resume")
    with pytest.raises(TimeUp):
        fit(_model(), digits, epochs=1, lr=0.003, batch_size=32, deadline=0.0, checkpoint=FitCheckpoint(memo, "k"))
    state = FitState.read(memo.get("k").folder)
    assert (state.epoch, state.in_epoch, state.step) == (0, 0, 0)

    seen = []

    class Seen(FitCheckpoint):
        def resumed(self, state, meta):
            seen.append(state.step)

    fit(_model(), digits, epochs=2, lr=0.003, batch_size=32, checkpoint=Seen(memo, "k"))  # another schedule
    assert seen == []
    with pytest.raises(TimeUp):
        fit(_model(), digits, epochs=1, lr=0.003, batch_size=32, deadline=0.0, checkpoint=FitCheckpoint(memo, "k"))
    blob = memo.get("k").files["state.safetensors"]
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0xFF
    blob.write_bytes(bytes(data))
    fit(_model(), digits, epochs=1, lr=0.003, batch_size=32, checkpoint=Seen(memo, "k"))
    assert seen == [] and memo.corrupt == 1


def test_a_search_ends_on_time_mid_fine_tune_and_resume_continues_it(tmp_path, tiny_config_dict):
    """Uninterrupted, this trial's fine-tune (200 epochs) runs ~60 s on one core: without the deadline the
    search would end about a minute after its 6 s limit. It must end within the limit plus 30 s."""
    import optuna
    from conftest import write_yaml

    from autocompress.config.schema import load_config
    from autocompress.search.controller import Search
    from autocompress.trial import read_trials

    space = {"prune": {"none": {}}, "distill": {"logit_kd": {"epochs": 200, "lr": 0.001}}, "quantize": {"none": {}}}
    cfg = {**tiny_config_dict, "search_space": str(write_yaml(tmp_path / "space.yaml", space)),
           "search": {**tiny_config_dict["search"], "trials": 1, "timeout": 6}}
    config = load_config(write_yaml(tmp_path / "run.yaml", cfg))
    run = tmp_path / "out"
    search = Search(config=config, run_dir=run)
    search.validate()
    search.prepare()  # the base is trained here, outside the timed search

    search = Search(config=config, run_dir=run)
    t0 = time.time()
    search.search()
    elapsed = time.time() - t0
    assert elapsed < 6 + 30, f"the search ran {elapsed:.0f} s past its 6 s limit"
    (stopped,) = read_trials(run)
    assert stopped.interrupted and stopped.state == "fail" and stopped.feasible is False
    assert stopped.reason == "stopped at the time limit; continues on --resume"
    study = optuna.load_study(study_name=config.search.study_name, storage=f"sqlite:///{run / 'study.db'}")
    waiting = study.get_trials(states=(optuna.trial.TrialState.WAITING,))
    assert [t.user_attrs["requeued"] for t in waiting] == [study.trials[0].params]
    (saved,) = Memo(run / "cache" / "resume").keys()
    meta = Memo(run / "cache" / "resume").get(saved).meta
    assert meta["trial"] == 0 and 0 < meta["step"] and len(meta["curve"]) == meta["epoch"]

    config.search.timeout = None  # as `--resume --timeout` would
    Search(config=config, run_dir=run).search()
    _, continued = read_trials(run)
    assert continued.state == "complete" and continued.choices == stopped.choices
    assert continued.continued_from.model_dump() == {"trial": 0, "epoch": meta["epoch"], "step": meta["step"]}
    assert continued.curve[:meta["epoch"]] == meta["curve"] and [p[0] for p in continued.curve] == list(range(1, 201))
    assert any(line.startswith("continued the fine-tune trial 0") for line in continued.plugin_log)
    assert Memo(run / "cache" / "resume").keys() == []  # finished: the checkpoint is gone
