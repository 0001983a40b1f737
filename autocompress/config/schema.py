"""The run configuration: one YAML file validated by pydantic, every field optional.

``RunConfig()`` with no arguments is the embedded default: scikit-learn's digits,
a timm ``resnet18`` trained in-process, ``search_spaces/default.yaml``, and a
search that fits in ten minutes on two cores.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from autocompress.device import canonical_url
from autocompress.errors import UserError, describe_validation_error

# objective names a config may list, and the record's metric each one reads
OBJECTIVE_KEYS = {"accuracy": "accuracy", "latency": "latency_ms", "size": "size_mb", "params": "params",
                  "macs": "macs", "memory": "memory_mb", "energy": "energy_mj"}


def missing_runtime_package(name: str) -> str | None:
    """One line naming what to install when runtime ``name`` needs a package that is absent."""
    if name != "openvino":
        return None
    try:
        import openvino  # noqa: F401
        return None
    except ImportError:
        pass
    # no square brackets: the CLI prints through rich, which would eat ".[openvino]" as markup
    return ("device.runtime: 'openvino' needs the OpenVINO package, which is not installed; "
            "install it with: pip install openvino nncf  (the project's 'openvino' extra)")


PROJECT_ROOT = Path(__file__).resolve().parents[2]


RuntimeName = Literal["onnxruntime", "torch", "openvino"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelConfig(_Strict):
    """The base model.

    Attributes:
        name: Any timm model name (``timm.list_models()``).
        num_classes: Classifier width; ``null`` takes it from the dataset.
        img_size: Square input side in pixels.
        pretrained: Load timm's pretrained weights (needs the hub or its cache).
        checkpoint: Local ``state_dict`` file: ``.safetensors``, or ``torch.load`` with ``weights_only=True``.
        train_epochs: Epochs to train the base in-process (on ``train.device``); ``null`` (default)
            = 6 for a model with random weights, 0 for a checkpoint or pretrained weights (a trained
            model is compressed as it is); a number trains (or fine-tunes) that many; 0 = as is.
        train_lr: Peak learning rate of that training (AdamW, one-cycle).
        kwargs: Extra keyword arguments for ``timm.create_model``.
    """

    name: str = "resnet18"
    num_classes: int | None = Field(default=None, ge=2)
    img_size: int = Field(default=32, ge=8, le=1024)
    pretrained: bool = False
    checkpoint: Path | None = None
    train_epochs: int | None = Field(default=None, ge=0, le=1000)
    train_lr: float = Field(default=3e-3, gt=0, le=10)
    kwargs: dict[str, Any] = Field(default_factory=dict)

    @property
    def starts_trained(self) -> bool:
        """Whether the base comes with trained weights (a checkpoint, or timm's pretrained ones)."""
        return self.checkpoint is not None or self.pretrained

    def base_epochs(self) -> int:
        """Epochs the base is trained in-process: ``train_epochs``, or its default (see above)."""
        if self.train_epochs is not None:
            return self.train_epochs
        return 0 if self.starts_trained else 6


class DataConfig(_Strict):
    """The dataset.

    Attributes:
        source: ``digits`` (embedded), ``imagefolder`` (``path`` with ``train/`` and
            ``val/`` or ``test/`` folders) or ``timm`` (``name`` for ``timm.data.create_dataset``).
        path: ImageFolder root, or the root for a timm dataset.
        name: timm dataset name, e.g. ``torch/cifar10``.
        max_samples: Cap on images per split (``null`` = all).
        batch_size: Batch size for training, calibration and evaluation.
        val_fraction: Share of train held out as validation when the data has no val split.
        val_from: ``train`` (default: a ``val/`` folder, else ``val_fraction`` of train) or
            ``test``: a fixed, stratified half of the test split is the validation split and the
            other half the held-out test split, and all of train trains. Use ``test`` when the
            base model was trained on the whole train folder: a validation split carved from it
            is memorised and reads several points high.
        seed: Seed of the split and of the sample cap.
        mean: Normalisation mean (``null``: the dataset's own default).
        std: Normalisation std.
    """

    source: Literal["digits", "imagefolder", "timm"] = "digits"
    path: Path | None = None
    name: str | None = None
    max_samples: int | None = Field(default=None, ge=10)
    batch_size: int = Field(default=64, ge=1, le=4096)
    val_fraction: float = Field(default=0.2, gt=0, lt=1)
    val_from: Literal["train", "test"] = "train"
    seed: int = 0
    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None

    @model_validator(mode="after")
    def _needs(self) -> "DataConfig":
        if self.source == "imagefolder" and self.path is None:
            raise ValueError("source 'imagefolder' needs data.path (a folder with train/ and val/ or test/)")
        if self.source == "timm" and not self.name:
            raise ValueError("source 'timm' needs data.name (a timm dataset name such as torch/cifar10)")
        return self


class BudgetConfig(_Strict):
    """The device budget; a trial outside it is infeasible. ``null`` = no limit.

    Attributes:
        max_latency_ms: Batch-1 latency on the target device and runtime.
        max_latency_vs_base: Batch-1 latency as a fraction of the base model's on the same
            runtime, the two timed in interleaved rounds in the same window (``0.75``: at least
            1.33x faster). Unlike milliseconds, the ratio holds when the machine's speed drifts
            during a night (shared or throttled CPUs: 10-20 % between minutes here).
        max_size_mb: Size on disk of the saved artefact (MB = 10**6 bytes).
        max_accuracy_drop: Allowed drop of top-1 (percentage points) below the base.
        max_params: Parameters of the deployed structure.
        max_macs: Multiply-accumulates of one call at the configured input (``device.batch_size``
            x 3 x ``model.img_size``^2), as torch's ``FlopCounterMode`` counts them (FLOPs / 2).
        max_memory_mb: Peak resident-set growth of loading the artefact and running one inference
            on the target runtime, in a fresh process (MB = 10**6 bytes).
        max_energy_mj: Energy per call in millijoules over the latency rounds, from the machine's
            counter (RAPL on CPUs, NVML on NVIDIA GPUs); refused where the machine has none.
    """

    max_latency_ms: float | None = Field(default=0.6, gt=0)
    max_latency_vs_base: float | None = Field(default=None, gt=0, le=100)
    max_size_mb: float | None = Field(default=6.0, gt=0)
    max_accuracy_drop: float | None = Field(default=1.5, ge=0, le=100)
    max_params: int | None = Field(default=None, ge=1)
    max_macs: float | None = Field(default=None, gt=0)
    max_memory_mb: float | None = Field(default=None, gt=0)
    max_energy_mj: float | None = Field(default=None, gt=0)


class DeviceConfig(_Strict):
    """The target device and how latency is measured on it.

    Attributes:
        type: ``cpu`` or ``cuda``.
        threads: Intra-op threads, fixed for every measurement.
        batch_size: Batch of the latency measurement.
        runtime: Runtime the artefact is saved for and measured on: ``onnxruntime``, ``torch``
            or ``openvino`` (needs the ``openvino`` extra: ``pip install -e ".[openvino]"``). A list
            makes the runtime a searched choice: each trial is saved for and measured on the
            runtime the search picks, and each quantize plugin is offered only with runtimes it
            produces artefacts for.
        warmup: Calls before timing.
        repeats: Timed calls per round.
        rounds: Rounds, interleaved with the base model's, whose spread is kept.
        agent: ``http://HOST:PORT`` of an ``autocompress agent`` on the target device, or a list of
            them (one measurement at a time each): every latency measurement, the base's included,
            is then made there; size and accuracy stay local. ``null`` = time on this machine.
            ONNX Runtime and OpenVINO artefacts only, on the agent's CPU.
        agent_token_file: File holding the agents' token; ``null`` = ``$AUTOCOMPRESS_AGENT_TOKEN``.
        agent_timeout: Seconds (or ``90s``, ``10m``) to wait for an agent at each step of a
            measurement (connect, upload, queue behind other clients, timing); past it the
            trial fails with the reason and the search goes on.
    """

    type: Literal["cpu", "cuda"] = "cpu"
    threads: int = Field(default=2, ge=1, le=512)
    batch_size: int = Field(default=1, ge=1, le=1024)
    runtime: str | list[str] = "onnxruntime"
    warmup: int = Field(default=20, ge=0)
    repeats: int = Field(default=50, ge=1)
    rounds: int = Field(default=5, ge=1)
    agent: str | list[str] | None = None
    agent_token_file: Path | None = None
    agent_timeout: float = Field(default=300.0, gt=0)

    @field_validator("runtime", mode="before")
    @classmethod
    def _runtime_installed(cls, value: Any) -> str | list[str]:
        from pydantic_core import PydanticCustomError

        allowed = ", ".join(get_args(RuntimeName))
        names = [value] if isinstance(value, str) else value
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise PydanticCustomError("runtime_type", f"a runtime ({allowed}) or a list of them")
        for name in names:
            if name not in get_args(RuntimeName):
                raise PydanticCustomError("runtime_unknown", f"unknown runtime {name!r}; allowed: {allowed}, or a list of them")
        if not names:
            raise PydanticCustomError("runtime_empty", "list at least one runtime: onnxruntime, torch, openvino")
        if len(set(names)) != len(names):
            raise PydanticCustomError("runtime_repeated", "each runtime may be listed once")
        for name in names:
            problem = missing_runtime_package(name)
            if problem:  # e.g. openvino chosen but not installed: one line naming what to install
                raise PydanticCustomError("runtime_missing", problem.removeprefix("device.runtime: "))
        return value[0] if isinstance(value, list) and len(value) == 1 else value

    @property
    def runtimes(self) -> list[str]:
        """The target runtimes: one, or several for the search to choose from."""
        return [self.runtime] if isinstance(self.runtime, str) else list(self.runtime)

    @field_validator("agent_timeout", mode="before")
    @classmethod
    def _agent_timeout(cls, value: Any) -> Any:
        return parse_duration(value) if isinstance(value, str) else value

    @field_validator("agent", mode="before")
    @classmethod
    def _agent_urls(cls, value: Any, info: ValidationInfo) -> Any:
        from pydantic_core import PydanticCustomError

        if value is None:
            return None
        urls = [value] if isinstance(value, str) else value
        if not isinstance(urls, list) or not urls or not all(isinstance(u, str) for u in urls):
            raise PydanticCustomError("agent_type", "an agent URL http://HOST:PORT or a non-empty list of them")
        try:
            canonical = [canonical_url(u) for u in urls]
        except ValueError as err:
            raise PydanticCustomError("agent_url", str(err).replace("{", "(").replace("}", ")")) from None
        if len(set(canonical)) != len(canonical):
            raise PydanticCustomError("agent_repeated", "each agent URL may be listed once")
        if "torch" in [info.data.get("runtime")] + list(info.data.get("runtime") or []):
            raise PydanticCustomError("agent_torch", "the torch runtime (.pt2) cannot be measured by an agent: its "
                                      "programs would run as code there; use device.runtime onnxruntime or openvino")
        if info.data.get("type") == "cuda":
            raise PydanticCustomError("agent_cuda", "an agent times on its CPU; use device.type cpu with device.agent")
        return canonical[0] if isinstance(value, str) else canonical

    @property
    def agents(self) -> list[str]:
        """The agents' URLs (``[]`` = latency is measured on this machine)."""
        return [] if self.agent is None else [self.agent] if isinstance(self.agent, str) else list(self.agent)


class TrainConfig(_Strict):
    """Where the trials' training runs: each plugin's fine-tune, distillation and its teacher.

    Export, latency, size, memory, energy and accuracy evaluation of each artefact stay on the target
    (``device.type`` and ``device.runtime``): a model fine-tuned on a GPU is measured on the CPU it
    ships to. The base model's own training (``model.train_epochs``) runs here too.

    Attributes:
        device: ``auto`` (CUDA when the worker running the trial sees a CUDA device, else its CPU),
            ``cpu`` or ``cuda``. With ``cuda``, a trial whose worker sees no CUDA device fails with
            the reason, and a search whose trials run in this process, or on Ray with no
            ``search.gpus_per_trial``, is refused before it starts. On Ray the trial trains on the
            GPU Ray assigns it (``search.gpus_per_trial``).
    """

    device: Literal["auto", "cpu", "cuda"] = "auto"


class SearchConfig(_Strict):
    """The search controller.

    Attributes:
        sampler: ``tpe``, ``nsga2`` or ``random``.
        trials: Trials to run (finished, pruned or failed) in this run.
        timeout: Wall-clock budget of the search, e.g. ``30m``, ``8h``, ``90s``; ``null`` = none.
        step_timeout: Time limit of each step of a trial (each plugin's ``apply``, the export and
            measurement of its artefact), of the base's and of the budget check's probe, e.g. ``20m``;
            ``null`` = none. A step past it fails its trial (reason ``step timeout: prune
            channel_prune ran past 20m (search.step_timeout)``) and the search goes on; a budget
            probe past it is dropped from the check. In the main thread a ``SIGALRM`` timer
            interrupts the step, so a hang inside one native call stops only when that call
            returns to Python; on Ray a step still running 30 s after the limit has its worker
            killed. Every minute a running step logs what it is doing.
        seed: Seed of the sampler and of every trial's randomness.
        storage: Optuna storage URL; ``null`` = SQLite ``study.db`` in the run folder.
        study_name: Optuna study name; ``null`` = the run folder's name.
        executor: ``inprocess`` (trials run in this process) or ``ray``.
        workers: Trials in flight at once with ``ray`` (``inprocess`` runs one).
        cpus_per_trial: CPUs Ray reserves per trial; ``null`` = ``device.threads``.
        gpus_per_trial: GPUs Ray reserves per trial (fractions share a GPU), for its training
            (``train.device``) and, with ``device.type: cuda``, its measurement. Ray hides the GPUs
            from a trial that reserves none.
        ray_address: ``null`` starts a local Ray; ``auto`` joins the running cluster;
            ``ray://host:10001`` connects a remote one.
        warm_start: Enqueue the search space's known-good configurations first.
        structure_first: Before a trial fine-tunes, build its structure alone (pruned, quantized,
            untrained), measure latency and size, and stop it there when it breaks the size
            budget or the latency budget by more than ``latency_margin``: recorded infeasible with
            those figures, in seconds instead of minutes.
        latency_margin: How far (fraction) over ``budget.max_latency_ms`` a structural probe
            must measure before it is stopped (latency noise is ~20 % on small VMs).
        proxy_gate: Which structures earn a fine-tune: a new structure (a trial at the ladder's
            first rung) whose proxy (top-1 after BatchNorm recalibration, probed beside its latency
            and size) is more than this many points below that of another structure probed in
            this run that meets the budget and is no larger and no slower (within
            ``latency_margin``) is stopped before training (``stopped.stage: proxy``). ``null``
            fine-tunes every structure that meets the budget.
        early_stop: Multi-fidelity stopping on the fine-tune's per-epoch accuracy: ``none``;
            ``budget`` stops a trial that cannot reach the accuracy floor (base minus the
            allowed drop) given the largest gain finished trials on the same schedule made
            after the same epoch and the validation slice's noise;
            ``front`` (default) also stops one that, at best, a feasible finished trial already
            beats in accuracy, latency and size (its structure was measured before training);
            ``halving`` also stops one below the median of finished trials at the same epoch.
            Except with ``none``, a fine-tune that ended out of reach of the floor or the front is
            not quantized and measured.
        cache: Reuse across trials, under ``RUN/cache`` (content-addressed, hash-verified): a
            pruned and fine-tuned float model for trials that differ only in later stages,
            the figures of a probed structure, a repeated configuration's whole artefact (then
            only timed again), and (trials training on the CPU) the base model's outputs on each fine-tuning
            batch, which every trial distilling from it would compute again.
        cache_mb: Disk cap of the model cache and, apart, of the artefact cache (the least
            recently used entries go first), and of the stored teacher outputs (which stop
            growing there).
        rungs: Fine-tune lengths (epochs, increasing) the scheduler owns: a distillation plugin's
            length (its ``fidelity`` field, ``epochs``) is not searched; a trial fine-tunes for the
            first rung, and the best of its peers are promoted to the next, continuing from their
            saved state (a warmup-stable-decay learning rate whose stable phase is kept at each
            rung and whose decay is the rung's last ``decay`` share). ``null`` = off: the length is
            a searched parameter. A search space that names ``epochs`` for a plugin keeps it
            searched for that plugin.
        eta: Promotion keeps the top ``1/eta`` of a rung: a finished trial moves up when its
            accuracy ranks there among the finished trials of its rung that are at least as
            compressed (no slower, no larger), and its structure meets the latency and size budget.
        decay: Share of each rung's epochs spent decaying the learning rate to zero.
        first_structures: Without warm starts in the space, probe the pruning ratios first
            (untrained, seconds each) and fine-tune first the least compressing structures that
            meet the latency and size budget, one per quantizer: the least compressing of them
            first, carried up the ladder (the most accurate at any rung) until a model meets the
            whole budget, then the others.
        lineage: A new trial whose pruning plugin can prune further (``channel_prune``) starts from the
            fine-tuned model of a finished trial with the same pruning parameters but a lower ratio
            (the highest such ratio, then the most accurate), pruned further to its own ratio, instead
            of from the base; its record names the parent. Needs ``cache`` (the parent's model is
            read from the model cache).
        sweep: When a fine-tune finishes at the ladder's top rung (or without a ladder) within twice the
            allowed drop of the base, or at a lower rung over the accuracy floor, its fine-tuned model
            (from the model cache) is quantized and measured with every other quantizer option on every
            target runtime, at the parameters the first-structure probes use: seconds each, no training.
            Needs ``cache``.
        iterate: Iterative pruning: when a fine-tune finishes over the accuracy floor (at any rung of
            the ladder, or without one), the next value of its pruning ratio's searched grid, with
            the rest of its configuration, is queued at the first rung (after the sweep's variants,
            before promotions) and starts from the closest less pruned fine-tuned model
            (``lineage``). Needs ``lineage``.
    """

    sampler: Literal["tpe", "nsga2", "random"] = "tpe"
    trials: int = Field(default=30, ge=1)
    timeout: float | None = Field(default=540.0, gt=0)
    step_timeout: float | None = Field(default=10800.0, gt=0)
    seed: int = 0
    storage: str | None = None
    study_name: str | None = None
    executor: Literal["inprocess", "ray"] = "inprocess"
    workers: int = Field(default=1, ge=1, le=4096)
    cpus_per_trial: float | None = Field(default=None, gt=0)
    gpus_per_trial: float = Field(default=0.0, ge=0)
    ray_address: str | None = None
    warm_start: bool = True
    structure_first: bool = True
    latency_margin: float = Field(default=0.1, ge=0.0, le=10.0)
    proxy_gate: float | None = Field(default=5.0, ge=0.0, le=100.0)
    early_stop: Literal["none", "budget", "front", "halving"] = "front"
    cache: bool = True
    cache_mb: float = Field(default=2000.0, ge=0.0)
    rungs: list[float] | None = Field(default_factory=lambda: [1.0, 3.0, 9.0])
    eta: float = Field(default=3.0, gt=1.0, le=100.0)
    decay: float = Field(default=0.2, gt=0.0, lt=1.0)
    first_structures: bool = True
    lineage: bool = True
    sweep: bool = True
    iterate: bool = True

    @field_validator("rungs")
    @classmethod
    def _rungs(cls, value: list[float] | None) -> list[float] | None:
        if value is None:
            return None
        if not value or len(value) > 8 or any(not 0 < v <= 1000 for v in value) or any(
                b <= a for a, b in zip(value, value[1:])):
            raise ValueError("list 1 to 8 increasing epoch counts in (0, 1000], e.g. [1, 3, 9], or null for none")
        return [float(v) for v in value]

    @field_validator("timeout", "step_timeout", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> Any:
        return parse_duration(value) if isinstance(value, str) else value

    @field_validator("ray_address")
    @classmethod
    def _ray_address(cls, value: str | None) -> str | None:
        if value is None or value in {"auto", "local"} or value.startswith("ray://") or re.match(r"^[\w.-]+:\d+$", value):
            return value
        raise ValueError(f"not a Ray address: {value!r}; use auto, ray://host:10001 or host:6379")


class RunConfig(_Strict):
    """A whole run. Every field optional; the defaults are the embedded digits demo.

    Attributes:
        objectives: 2 to 4 of ``accuracy``, ``latency``, ``size``, ``params``, ``macs``, ``memory``,
            ``energy``, in the order Optuna is told them; accuracy is maximised, the others
            minimised. A resumed run keeps the objectives it started with.
    """

    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    budget: BudgetConfig = Field(default_factory=BudgetConfig)
    device: DeviceConfig = Field(default_factory=DeviceConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    search: SearchConfig = Field(default_factory=SearchConfig)
    search_space: Path = Path("search_spaces/default.yaml")
    plugins_dir: Path | None = None
    objectives: list[str] = Field(default_factory=lambda: ["accuracy", "latency", "size"])

    @field_validator("objectives", mode="before")
    @classmethod
    def _objectives(cls, value: Any) -> list[str]:
        from pydantic_core import PydanticCustomError

        allowed = ", ".join(OBJECTIVE_KEYS)
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
            raise PydanticCustomError("objectives_type", f"a list of 2 to 4 of {allowed}")
        for name in value:
            if name not in OBJECTIVE_KEYS:
                raise PydanticCustomError("objectives_unknown", f"unknown objective {name!r}; allowed: {allowed}")
        if len(set(value)) != len(value):
            raise PydanticCustomError("objectives_repeated", "each objective may be listed once")
        if not 2 <= len(value) <= 4:
            raise PydanticCustomError("objectives_count", f"list 2 to 4 objectives (got {len(value)}); allowed: {allowed}")
        return list(value)


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|sec|m|min|h|d)?\s*$")
_UNIT = {None: 1, "s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> float:
    """Parses ``90``, ``90s``, ``30m``, ``8h`` or ``1d`` into seconds.

    Raises:
        ValueError: The text is not a duration.
    """
    if text.strip().lower() in {"none", "null", ""}:
        return None  # type: ignore[return-value]
    match = _DURATION.match(text.lower())
    if not match:
        raise ValueError(f"not a duration: {text!r}; use e.g. 90s, 30m, 8h")
    return float(match.group(1)) * _UNIT[match.group(2)]


def resolve_path(path: Path | str, *, base: Path | None = None) -> Path:
    """Finds a relative path in ``base`` (the config's folder), the cwd, then the project root."""
    path = Path(path).expanduser()
    if path.is_absolute():
        return path
    for root in [base, Path.cwd(), PROJECT_ROOT]:
        if root is not None and (root / path).exists():
            return (root / path).resolve()
    return (Path.cwd() / path).resolve()


def load_config(path: Path | str | None = None, overrides: dict[str, Any] | None = None) -> RunConfig:
    """Reads and validates a run config, then applies dotted overrides such as ``search.trials``.

    Args:
        path: YAML file; ``None`` = the embedded default.
        overrides: ``{"search.trials": 10}``-style values from the command line.

    Raises:
        UserError: The file is missing or malformed, or a field is invalid.
    """
    raw: dict[str, Any] = {}
    base = None
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise UserError(f"config: file not found: {path}")
        try:
            raw = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            where = f" at line {mark.line + 1}" if mark else ""
            raise UserError(f"config: {path} is not valid YAML{where}") from None
        if not isinstance(raw, dict):
            raise UserError(f"config: {path} must hold a mapping of sections (model, data, budget, ...)")
        base = path.resolve().parent
    for dotted, value in (overrides or {}).items():
        node = raw
        *parents, leaf = dotted.split(".")
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    try:
        config = RunConfig.model_validate(raw)
    except ValidationError as err:
        raise UserError(describe_validation_error(err, RunConfig)) from None
    config.search_space = resolve_path(config.search_space, base=base)
    if config.model.checkpoint is not None:
        config.model.checkpoint = resolve_path(config.model.checkpoint, base=base)
    if config.data.path is not None:
        config.data.path = resolve_path(config.data.path, base=base)
    if config.plugins_dir is not None:
        config.plugins_dir = resolve_path(config.plugins_dir, base=base)
    if config.device.agent_token_file is not None:
        config.device.agent_token_file = resolve_path(config.device.agent_token_file, base=base)
    return config


def dump_config(config: RunConfig) -> str:
    """The resolved config as YAML, as written to the run folder."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
