"""Search-space files: for each stage, the plugins the search may choose and their ranges.

```yaml
prune:
  none: {}                                   # the stage may be skipped
  channel_prune:
    ratio: {low: 0.2, high: 0.7, step: 0.1}  # a range (int or float, from the plugin's Config)
    importance: [l1, l2]                     # choices
    round_to: 8                              # one fixed value
quantize:
  int8_static: {}                            # the plugin's own default ranges
warm_start:                                  # tried first, in order (unset params are sampled)
  - {quantize: int8_static}
  - {prune: {channel_prune: {ratio: 0.5}}, distill: logit_kd, quantize: int8_static}
```
A parameter left out takes the plugin's default range, then its ``Config`` default.

When ``device.runtime`` lists several runtimes, the runtime is searched too (Optuna parameter
``runtime``); a stage whose choices differ by runtime (quantizers that produce artefacts for one
runtime) is then asked as ``<stage>@<runtime>`` so each Optuna distribution stays fixed. A
warm-start entry may name ``runtime: openvino``; without it, the first runtime its choices run on.

With the fidelity ladder on (``search.rungs``), a plugin's :attr:`~autocompress.plugin.Plugin.fidelity`
field (``logit_kd``'s ``epochs``) is not searched unless the file names it: the scheduler sets it
(``SearchSpace.scheduled``). When the base is already trained (a checkpoint, pretrained weights), a
plugin's ``pretrained_search_space`` replaces its default ranges (lower learning rates).

Pruning a trained base with no recovery stage is not proposed when the space offers a fine-tuning
distillation: after a prune choice that does not train itself, the distill stage is asked as
``distill|pruned`` without ``none``. A space whose distill stage is only ``none`` still gets it.

A plugin that runs on none of the target runtimes is refused, except in the project's own
``search_spaces/default.yaml``, which the user did not write: there it is left out (and warm
starts naming it are dropped), each with a note in ``SearchSpace.notes`` that the run logs.
Warm-start values are checked against the plugin's ``Config`` and the space's own ranges.
"""

from __future__ import annotations

import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import optuna
import yaml
from pydantic import ValidationError

from autocompress.errors import UserError
from autocompress.plugin import NONE, STAGE_ORDER, Plugin, Stage, check_plugin_space, describe_spec, normalise_spec

Choice = tuple[str, dict[str, Any]]
DEFAULT_SPACE = Path(__file__).resolve().parents[2] / "search_spaces" / "default.yaml"


@dataclass
class SearchSpace:
    """A validated search space.

    Attributes:
        stages: ``{stage: {plugin name or "none": {param: spec}}}`` with defaults merged in.
        warm_start: Optuna parameter dicts to enqueue first.
        source: The file it came from.
        runtimes: The target runtimes (several: the runtime is searched); empty = any.
        notes: What was left out of the file and why (plugins and warm starts for another runtime).
        dropped: ``{stage: [plugin names]}`` left out because they run on none of ``runtimes``.
        scheduled: ``{stage: {plugin name: field}}``: the fields the fidelity ladder sets (not searched).
    """

    stages: dict[Stage, dict[str, dict[str, Any]]]
    warm_start: list[dict[str, Any]] = field(default_factory=list)
    source: str = ""
    runtimes: list[str] = field(default_factory=list)
    registry: Any = None
    notes: list[str] = field(default_factory=list)
    dropped: dict[Stage, list[str]] = field(default_factory=dict)
    scheduled: dict[Stage, dict[str, str]] = field(default_factory=dict)

    def options(self, stage: Stage, runtime: str | None = None, pruned: bool = False) -> list[str]:
        """The plugin names (and ``none``) the search may pick for ``stage`` on ``runtime``;
        ``pruned``: after a prune choice that does not train (no ``none`` for distill when it has a
        fine-tuning choice)."""
        names = list(self.stages.get(stage, {}) or {NONE: {}})
        if runtime is not None and self.registry is not None:
            names = [n for n in names if n == NONE or self.registry.get(n).runtimes is None
                     or runtime in self.registry.get(n).runtimes]
        if pruned and stage == Stage.DISTILL and self.registry is not None and any(
                n != NONE and self.registry.get(n).fine_tunes for n in names):
            names = [n for n in names if n != NONE]
        return names

    def stage_param(self, stage: Stage, runtime: str | None, pruned: bool = False) -> str:
        """The Optuna parameter name of a stage's choice (``quantize@openvino`` where it depends on the
        runtime; ``distill|pruned`` after a prune choice that needs a recovery fine-tune)."""
        name = stage.value
        if len(self.runtimes) > 1 and len({tuple(self.options(stage, r)) for r in self.runtimes}) > 1:
            name = f"{stage.value}@{runtime}"
        if pruned and self.options(stage, runtime, pruned=True) != self.options(stage, runtime):
            name += "|pruned"
        return name

    def needs_recovery(self, name: str, params: dict[str, Any]) -> bool:
        """Whether a prune choice leaves the model to be fine-tuned by a later stage (it does not train itself)."""
        return name != NONE and self.registry is not None and not self.registry.get(name).trains(params)

    def suggest(self, trial: optuna.Trial, registry) -> dict[str, Choice]:
        """Asks Optuna for one configuration: ``{stage: (plugin name, params)}``, plus
        ``runtime: (name, {})`` when the runtime is searched."""
        chosen: dict[str, Choice] = {}
        runtime = self.runtimes[0] if self.runtimes else None
        if len(self.runtimes) > 1:
            runtime = trial.suggest_categorical("runtime", list(self.runtimes))
        pruned = False
        for stage in STAGE_ORDER:
            options = self.options(stage, runtime, pruned)
            key = self.stage_param(stage, runtime, pruned)
            name = trial.suggest_categorical(key, options) if len(options) > 1 else options[0]
            params: dict[str, Any] = {}
            if name != NONE:
                cls = registry.get(name)
                for param, spec in self.stages[stage][name].items():
                    params[param] = _suggest_one(trial, f"{stage.value}.{name}.{param}", spec, _kind(cls, param))
            if stage == Stage.PRUNE:
                pruned = self.needs_recovery(name, params)
            chosen[stage.value] = (name, params)
        if len(self.runtimes) > 1:
            chosen["runtime"] = (runtime, {})
        return chosen

    def strongest(self, registry, runtime: str | None = None) -> dict[str, Choice]:
        """The most compressing structural configuration on ``runtime``: for the budget check before a search."""
        chosen: dict[str, Choice] = {}
        for stage in STAGE_ORDER:
            best = (NONE, {})
            for name, space in self.stages.get(stage, {}).items():
                if name == NONE or name not in self.options(stage, runtime):
                    continue
                cls = registry.get(name)
                if cls.changes_structure:
                    best = (name, cls.strongest(space))
                    break
            chosen[stage.value] = best
        if len(self.runtimes) > 1 and runtime is not None:
            chosen["runtime"] = (runtime, {})
        return chosen


def _kind(cls: type[Plugin], param: str) -> type:
    annotation = cls.Config.model_fields[param].annotation
    args = typing.get_args(annotation) or (annotation,)
    if int in args and float not in args and bool not in args:
        return int
    return float


def _suggest_one(trial: optuna.Trial, key: str, spec: Any, kind: type) -> Any:
    if isinstance(spec, dict) and "size" in spec:  # one Optuna parameter per element: KEY.0, KEY.1, ...
        one = {k: v for k, v in spec.items() if k != "size"}
        return [_suggest_one(trial, f"{key}.{i}", one, float) for i in range(spec["size"])]
    if isinstance(spec, dict) and "low" in spec:
        if kind is int:
            return trial.suggest_int(key, int(spec["low"]), int(spec["high"]), step=int(spec.get("step") or 1),
                                     log=bool(spec.get("log", False)))
        value = trial.suggest_float(key, float(spec["low"]), float(spec["high"]), step=spec.get("step"),
                                    log=bool(spec.get("log", False)))
        return round(value, 10) if spec.get("step") else value
    if isinstance(spec, dict) and "choices" in spec:
        return trial.suggest_categorical(key, list(spec["choices"]))
    return spec


def load_search_space(path: Path | str, registry, runtime: str | list[str] | None = None, *,
                      rungs: list[float] | None = None, pretrained: bool = False,
                      count_stages: Callable[[], int] | None = None) -> SearchSpace:
    """Reads and validates a search-space file against the registered plugins.

    Args:
        path: The YAML file.
        registry: The plugin registry.
        runtime: The target runtime, or several to search over; a plugin that can produce none
            of them is rejected.
        rungs: The fidelity ladder (``search.rungs``): plugins' fidelity fields are then scheduled.
        pretrained: The base is already trained: plugins' ``pretrained_search_space`` applies.
        count_stages: Gives the model's stage count, for a range with ``size: stages`` (called only then).

    Raises:
        UserError: The file is missing or malformed, or names an unknown plugin or a bad range.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"search_space: file not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError:
        raise UserError(f"search_space: {path} is not valid YAML") from None
    try:
        is_default = path.resolve() == DEFAULT_SPACE
    except OSError:
        is_default = False
    return parse_search_space(raw, registry, runtime, source=str(path), drop_other_runtimes=is_default,
                              rungs=rungs, pretrained=pretrained, count_stages=count_stages)


def parse_search_space(raw: dict, registry, runtime: str | list[str] | None = None, source: str = "", *,
                       drop_other_runtimes: bool = False, rungs: list[float] | None = None,
                       pretrained: bool = False, count_stages: Callable[[], int] | None = None) -> SearchSpace:
    """Validates a search space given as a mapping (see :func:`load_search_space`).

    Args:
        drop_other_runtimes: Leave out (with a note) a plugin that runs on none of the runtimes,
            and drop warm starts naming it, instead of refusing the space; a stage left with no
            choice is still refused. Used for the project's default space.
    """
    runtimes = [runtime] if isinstance(runtime, str) else list(runtime or [])
    allowed = [s.value for s in STAGE_ORDER] + ["warm_start"]
    if not isinstance(raw, dict):
        raise UserError(f"search_space: expected a mapping with keys {', '.join(allowed)}")
    for key in raw:
        if key not in allowed:
            raise UserError(f"search_space.{key}: unknown key; allowed: {', '.join(allowed)}")
    stages: dict[Stage, dict[str, dict[str, Any]]] = {}
    notes: list[str] = []
    dropped: dict[Stage, list[str]] = {}
    scheduled: dict[Stage, dict[str, str]] = {}
    for stage in STAGE_ORDER:
        entry = raw.get(stage.value)
        if entry is None:
            continue
        if isinstance(entry, list):
            entry = {name: {} for name in entry}
        if not isinstance(entry, dict) or not entry:
            raise UserError(f"search_space.{stage.value}: list the plugins to choose from (and 'none' to allow skipping)")
        stages[stage] = {}
        for name, space in entry.items():
            where = f"search_space.{stage.value}.{name}"
            if name == NONE:
                stages[stage][NONE] = {}
                continue
            if name not in registry:
                known = registry.names(stage)
                raise UserError(f"{where}: unknown plugin {name!r}; known {stage.value} plugins: {', '.join(known) or 'none'}")
            cls = registry.get(name)
            if cls.stage != stage:
                raise UserError(f"{where}: {name} is a {cls.stage.value} plugin, not {stage.value}")
            if runtimes and cls.runtimes is not None and not set(runtimes) & set(cls.runtimes):
                refusal = (f"{where}: {name} produces artefacts for {', '.join(sorted(cls.runtimes))}, "
                           f"not device.runtime={'/'.join(runtimes)}")
                if not drop_other_runtimes:
                    raise UserError(refusal)
                dropped.setdefault(stage, []).append(name)
                others = [n for n in registry.names(stage) if registry.get(n).runtimes is None
                          or set(runtimes) & set(registry.get(n).runtimes)]
                notes.append(f"{refusal}: left out" + (f" ({stage.value} plugins for {'/'.join(runtimes)}: "
                                                       f"{', '.join(others)})" if others else ""))
                continue
            defaults = dict(cls.search_space)
            if pretrained and cls.pretrained_search_space:
                defaults.update(cls.pretrained_search_space)
                changed = {k: v for k, v in cls.pretrained_search_space.items() if k not in (space or {})}
                if changed:
                    notes.append(f"{where}: the base is trained: default " + ", ".join(
                        f"{k} {describe_spec(normalise_spec(v))}" for k, v in changed.items()))
            merged = {k: normalise_spec(v) for k, v in defaults.items()}
            if rungs and cls.fidelity:
                if cls.fidelity in (space or {}):
                    notes.append(f"{where}.{cls.fidelity}: named in the space, so searched; the fidelity ladder "
                                 f"(search.rungs) sets it where it is left out")
                else:
                    merged.pop(cls.fidelity, None)
                    scheduled.setdefault(stage, {})[name] = cls.fidelity
            merged.update(check_plugin_space(cls, space or {}, where))
            for param, spec in merged.items():
                if isinstance(spec, dict) and spec.get("size") == "stages":
                    if count_stages is None:
                        raise UserError(f"{where}.{param}: size 'stages' needs the model, to count its stages")
                    merged[param] = {**spec, "size": count_stages()}
            stages[stage][name] = merged
        if not stages[stage]:  # every choice was left out for the runtime: nothing to search
            raise UserError(f"search_space.{stage.value}: no choice runs on device.runtime={'/'.join(runtimes)} "
                            f"({', '.join(dropped[stage])} left out); add 'none' or a {stage.value} plugin for it")
    space = SearchSpace(stages=stages, source=source, runtimes=runtimes, registry=registry, notes=notes,
                        dropped=dropped, scheduled=scheduled)
    for stage in stages:
        for rt in runtimes:
            if not space.options(stage, rt):
                raise UserError(f"search_space.{stage.value}: no choice runs on runtime {rt}; "
                                f"add 'none' or a {stage.value} plugin for {rt}")
    warm = [_warm_params(i, item, space) for i, item in enumerate(raw.get("warm_start") or [])]
    space.warm_start = [params for params in warm if params is not None]
    return space


def _warm_params(index: int, item: Any, space: SearchSpace) -> dict[str, Any] | None:
    """The Optuna parameters of one warm start; ``None`` (with a note) when it names a plugin left out
    for the runtime.

    Raises:
        UserError: An unknown stage, plugin or parameter, or a value the plugin or the space does not allow.
    """
    where = f"search_space.warm_start[{index}]"
    if not isinstance(item, dict):
        raise UserError(f"{where}: expected {{stage: plugin}} or {{stage: {{plugin: {{param: value}}}}}}")
    for key in item:
        if key not in {s.value for s in STAGE_ORDER} | {"runtime"}:
            raise UserError(f"{where}.{key}: unknown stage; allowed: prune, distill, quantize, runtime")
    named = {stage: (next(iter(v.items())) if isinstance(v, dict) and len(v) == 1 else (v, {}))
             for stage in STAGE_ORDER for v in [item.get(stage.value, NONE)]}
    for stage, (name, _) in named.items():
        if isinstance(name, str) and name in space.dropped.get(stage, []):
            space.notes.append(f"{where}: dropped: {stage.value} {name} does not run on "
                               f"device.runtime={'/'.join(space.runtimes)}")
            return None
    runtimes = space.runtimes or [None]
    runtime = item.get("runtime")
    if runtime is not None and runtime not in runtimes:
        raise UserError(f"{where}.runtime: {runtime!r} is not among device.runtime: {', '.join(map(str, runtimes))}")
    if runtime is None:  # the first runtime every named plugin runs on
        runtime = next((rt for rt in runtimes if all(n in space.options(st, rt) for st, (n, _) in named.items()
                                                     if isinstance(n, str))), runtimes[0])
    params: dict[str, Any] = {}
    if len(space.runtimes) > 1:
        params["runtime"] = runtime
    pruned = False
    for stage in STAGE_ORDER:
        options = space.options(stage, runtime, pruned)
        name, fixed = named[stage]
        if stage.value not in item and len(options) == 1:  # a stage left out takes its only choice
            name = options[0]
        if not isinstance(name, str) or name not in options:
            on = f" on runtime {runtime}" if len(space.runtimes) > 1 else ""
            why = (" (pruning is followed by a recovery fine-tune when the space offers one)"
                   if pruned and name == NONE else "")
            raise UserError(f"{where}.{stage.value}: {name!r} is not among the search space's choices{on}{why}: "
                            f"{', '.join(options) or 'none'}")
        if len(options) > 1:
            params[space.stage_param(stage, runtime, pruned)] = name
        if fixed is not None and not isinstance(fixed, dict):
            raise UserError(f"{where}.{stage.value}.{name}: expected {{param: value}}, got {fixed!r}")
        for param, val in (fixed or {}).items():
            if param == space.scheduled.get(stage, {}).get(name):
                raise UserError(f"{where}.{stage.value}.{name}.{param}: set by the fidelity ladder (search.rungs), "
                                f"not searched; leave it out, or name it in search_space.{stage.value}.{name} to search it")
            if param not in space.stages[stage][name]:
                raise UserError(f"{where}.{stage.value}.{name}.{param}: not a searched parameter of {name}")
            problem = _warm_value_problem(space.registry.get(name), param, space.stages[stage][name][param], val)
            if problem:
                raise UserError(f"{where}.{stage.value}.{name}.{param}: {val!r} {problem}")
            spec = space.stages[stage][name][param]
            if isinstance(spec, dict) and "size" in spec:  # Optuna holds one parameter per element
                params.update({f"{stage.value}.{name}.{param}.{i}": v for i, v in enumerate(val)})
            else:
                params[f"{stage.value}.{name}.{param}"] = val
        if stage == Stage.PRUNE:
            pruned = space.needs_recovery(name, fixed or {})
    return params


def _warm_value_problem(cls: type[Plugin], param: str, spec: Any, value: Any) -> str | None:
    """Why a warm-start value is not allowed (by the plugin's Config or the space's own range); ``None`` if it is."""
    allowed = f"the search space allows {describe_spec(spec)}"
    try:
        cls.Config.model_validate({param: value})
    except ValidationError as err:
        return f"is outside what {cls.name} accepts ({err.errors()[0]['msg']}); {allowed}"
    if isinstance(spec, dict) and "size" in spec:
        if not isinstance(value, list) or len(value) != spec["size"]:
            return f"is not a list of {spec['size']} values; {allowed}"
        one = {k: v for k, v in spec.items() if k != "size"}
        return next((f"(element {i}) {p}" for i, v in enumerate(value)
                     for p in [_element_problem(one, v, allowed)] if p), None)
    return _element_problem(spec, value, allowed)


def _element_problem(spec: Any, value: Any, allowed: str) -> str | None:
    if isinstance(spec, dict) and "low" in spec:
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            return f"is not a number; {allowed}"
        if not spec["low"] <= value <= spec["high"]:
            return f"is outside the search space's range; {allowed}"
        step = spec.get("step")
        if step and abs((value - spec["low"]) / step - round((value - spec["low"]) / step)) > 1e-8:
            return f"is not on the search space's steps; {allowed}"
    elif isinstance(spec, dict) and "choices" in spec:
        if not any(_same(value, choice) for choice in spec["choices"]):
            return f"is not among the search space's choices; {allowed}"
    elif not _same(value, spec):
        return f"differs from the search space's fixed value; {allowed}"
    return None


def _same(a: Any, b: Any) -> bool:
    """Equal, without ``True == 1`` (a bool matches only a bool; an int matches an equal float)."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    return a == b

