"""Finding plugins: the ``autocompress.plugins`` entry-point group, the shipped plugins and a plugins folder.

Folder plugins are loaded by path (never as a top-level ``plugins`` package). A ``--plugins-dir``
adds to the shipped plugins; a name taken twice is an error. Every plugin is validated when it
registers, so a broken plugin stops the run before any trial.
"""

from __future__ import annotations

import difflib
import importlib.metadata
import importlib.util
import inspect
import re
import sys
from pathlib import Path
from typing import Iterable

from pydantic import BaseModel, ValidationError

from autocompress.config import PROJECT_ROOT
from autocompress.errors import UserError, describe_validation_error
from autocompress.plugin.contract import DIRECTIONS, NONE, Plugin, PluginConfig, Stage

ENTRY_POINT_GROUP = "autocompress.plugins"
_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


class Registry:
    """Plugins by name, each validated when it registers."""

    def __init__(self) -> None:
        self._plugins: dict[str, type[Plugin]] = {}
        self._origin: dict[str, str] = {}

    def register(self, cls: type[Plugin], origin: str = "") -> type[Plugin]:
        """Validates and adds a plugin class.

        Raises:
            UserError: The class breaks the contract or its name is taken.
        """
        where = origin or cls.__module__
        problem = contract_problem(cls)
        if problem:
            raise UserError(f"plugin {where}: {problem}")
        if cls.name in self._plugins and self._plugins[cls.name] is not cls:
            raise UserError(f"plugin {where}: name {cls.name!r} is already registered by {self._origin[cls.name]}")
        self._plugins[cls.name] = cls
        self._origin[cls.name] = where
        return cls

    def get(self, name: str) -> type[Plugin]:
        """The plugin class called ``name``.

        Raises:
            UserError: No such plugin; the message lists the known ones.
        """
        if name not in self._plugins:
            hint = difflib.get_close_matches(name, self._plugins, n=1)
            extra = f" (did you mean {hint[0]!r}?)" if hint else ""
            raise UserError(f"unknown plugin {name!r}{extra}; known: {', '.join(sorted(self._plugins)) or 'none'}")
        return self._plugins[name]

    def names(self, stage: Stage | None = None) -> list[str]:
        return sorted(n for n, c in self._plugins.items() if stage is None or c.stage == stage)

    def origin(self, name: str) -> str:
        return self._origin[name]

    def files(self) -> list[str]:
        """Paths of the folder plugins, for workers that must load them too."""
        return sorted({o for o in self._origin.values() if o.endswith(".py")})

    def __iter__(self):
        return iter(sorted(self._plugins.values(), key=lambda c: (list(Stage).index(c.stage), c.name)))

    def __contains__(self, name: str) -> bool:
        return name in self._plugins


def contract_problem(cls: type) -> str | None:
    """What is wrong with a plugin class, or ``None``."""
    if not (inspect.isclass(cls) and issubclass(cls, Plugin)):
        return f"{cls!r} is not a subclass of autocompress.Plugin"
    if inspect.isabstract(cls):
        return f"{cls.__name__} does not implement apply()"
    name = getattr(cls, "name", None)
    if not isinstance(name, str) or not _NAME.match(name) or name == NONE:
        return f"{cls.__name__}.name must be a lower_snake_case string other than 'none' (got {name!r})"
    if not isinstance(getattr(cls, "stage", None), Stage):
        return f"{name}: stage must be one of {', '.join(s.value for s in Stage)}"
    config = getattr(cls, "Config", None)
    if not (inspect.isclass(config) and issubclass(config, BaseModel)):
        return f"{name}: Config must be a pydantic model"
    if config.model_config.get("extra") != "forbid":
        return f"{name}: Config must forbid extra fields (subclass autocompress.PluginConfig)"
    required = [f for f, info in config.model_fields.items() if info.is_required()]
    if required:
        return f"{name}: Config fields need defaults: {', '.join(required)}"
    try:
        config.model_validate(config().model_dump())
    except ValidationError as err:
        return describe_validation_error(err, config, prefix=f"{name}: Config default").replace(
            "\n", " ") + " (a default must meet its own field's bounds)"
    unknown = set(getattr(cls, "probe_ignores", ())) - set(config.model_fields)
    if unknown:
        return f"{name}: probe_ignores names fields its Config lacks: {', '.join(sorted(unknown))}"
    for attr in ("fidelity", "lineage"):
        value = getattr(cls, attr, None)
        if value is not None and value not in config.model_fields:
            return f"{name}: {attr} must be None or a field of its Config (got {value!r})"
    stronger = getattr(cls, "stronger", None)
    if not isinstance(stronger, dict):
        return f"{name}: stronger must be a mapping of Config fields to 'high', 'low', 'any' or a list of values"
    unknown = set(stronger) - set(config.model_fields)
    if unknown:
        return f"{name}: stronger names fields its Config lacks: {', '.join(sorted(unknown))}"
    for field_name, direction in stronger.items():
        if not (direction in DIRECTIONS or (isinstance(direction, (list, tuple)) and direction)):
            return (f"{name}: stronger.{field_name} is {direction!r}; allowed: 'high', 'low', 'any' or a list "
                    "of values, most compressing first")
    runtimes = getattr(cls, "runtimes", None)
    if runtimes is not None:
        from autocompress.measure import RUNTIMES

        if not isinstance(runtimes, frozenset) or not runtimes or not runtimes <= set(RUNTIMES):
            return (f"{name}: runtimes must be None or a non-empty frozenset of {', '.join(RUNTIMES)} "
                    f"(got {runtimes!r})")
    for flag in ("changes_structure", "fine_tunes"):
        if not isinstance(getattr(cls, flag, None), bool):
            return f"{name}: {flag} must be True or False (got {getattr(cls, flag, None)!r})"
    from autocompress.plugin.space import check_plugin_space

    try:
        check_plugin_space(cls, cls.search_space, where=f"{name}.search_space")
    except UserError as err:
        return str(err)
    return None


def _load_file(path: Path) -> list[type[Plugin]]:
    module_name = f"autocompress_plugins_{path.stem}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise UserError(f"plugins_dir: cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as err:  # a plugin file's own bug must name the file, not crash the CLI
        del sys.modules[module_name]
        raise UserError(f"plugin {path}: failed to import: {type(err).__name__}: {err}") from None
    found = [
        obj for obj in vars(module).values()
        if inspect.isclass(obj) and issubclass(obj, Plugin) and obj.__module__ == module_name
        and not inspect.isabstract(obj)
    ]
    if len(found) != 1:
        raise UserError(f"plugin {path}: a plugin file defines exactly one Plugin class (found {len(found)})")
    return found


def shipped_plugins_dir() -> Path:
    """The project's ``plugins/``: the plugins every run has."""
    return PROJECT_ROOT / "plugins"


def plugin_files(folder: Path) -> list[Path]:
    """The plugin files of a folder: ``*.py`` less ``_*.py``, ``test_*.py`` and ``conftest.py`` (a
    plugin's test may sit beside it)."""
    return [p for p in sorted(folder.glob("*.py"))
            if not p.name.startswith(("_", "test_")) and p.name != "conftest.py"]


def discover(plugins_dir: Path | str | None = None, *, entry_points: bool = True,
             files: Iterable[str] | None = None) -> Registry:
    """Builds a registry from entry points, the shipped plugins and a plugins folder (or explicit files).

    Args:
        plugins_dir: A folder of ``*.py`` plugin files added to the shipped ones
            (:func:`shipped_plugins_dir`); see :func:`plugin_files` for what is skipped. A file there
            with the name of a shipped file must be a byte-identical copy (it then stands in for it).
        entry_points: Also load the ``autocompress.plugins`` entry-point group.
        files: Exactly these plugin files instead of the shipped ones and a folder (used by workers).

    Raises:
        UserError: The folder is missing, or a plugin is broken or clashes with another (a shipped
            plugin, an entry point, or another file of the folder).
    """
    registry = Registry()
    if entry_points:
        for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
            try:
                cls = ep.load()
            except Exception as err:
                raise UserError(f"plugin entry point {ep.name} ({ep.value}): failed to load: {err}") from None
            registry.register(cls, origin=f"entry point {ep.value}")
    if files is None:
        files = [str(p) for p in _folder_files(plugins_dir)]
    for file in files:
        for cls in _load_file(Path(file)):
            registry.register(cls, origin=str(Path(file).resolve()))
    return registry


def _folder_files(plugins_dir: Path | str | None) -> list[Path]:
    """The shipped plugin files, with those of ``plugins_dir`` added."""
    shipped_dir = shipped_plugins_dir()
    shipped = {p.name: p for p in plugin_files(shipped_dir)} if shipped_dir.is_dir() else {}
    if plugins_dir is None:
        return list(shipped.values())
    folder = Path(plugins_dir)
    if not folder.is_dir():
        raise UserError(f"plugins_dir: folder not found: {folder}")
    if shipped_dir.is_dir() and folder.resolve() == shipped_dir.resolve():
        return list(shipped.values())
    added = plugin_files(folder)
    for path in added:
        twin = shipped.get(path.name)
        if twin is None:
            continue
        if twin.read_bytes() != path.read_bytes():
            raise UserError(f"plugins_dir: {path} has the file name of the shipped plugin {twin}; rename the file "
                            "(a plugins folder adds to the shipped plugins)")
        del shipped[path.name]  # the same file: the folder's copy stands in for it
    return [*shipped.values(), *added]


def check_config(cls: type[Plugin], params: dict, where: str) -> PluginConfig:
    """Validates parameters against a plugin's Config, as one clear line on failure."""
    try:
        return cls.Config.model_validate(params)
    except ValidationError as err:
        raise UserError(describe_validation_error(err, cls.Config, prefix=where)) from None
