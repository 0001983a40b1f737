"""Code-free model files: what a run folder holds is data, never code.

A run folder may come from somebody else, so nothing in it is unpickled:

* A float ``nn.Module`` (a front trial's, a cached fine-tune's) is written as **safetensors
  weights plus a JSON structure**: the timm architecture it was built from, the keyword
  arguments that build it, and every plain attribute (channel counts, head counts, ...) that
  differs from a freshly built model. Loading builds the timm model from random weights,
  applies the attributes, gives each tensor its saved shape and loads the weights strictly.
  A module that does not rebuild to the same outputs (a custom layer, a forward hook) is
  refused when it is saved (:class:`NotRebuildable`), so what is on disk always rebuilds.
* A ``torch.export`` program (``.pt2``) is loaded with every ``torch.load`` inside forced to
  ``weights_only`` and archives holding pickled custom objects refused (:func:`load_exported`).
* Every kept file is recorded with its SHA-256 (:func:`file_hashes`) and checked before use
  (:func:`verify_files`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import threading
import zipfile
from pathlib import Path
from typing import Any, Iterable

import torch

from autocompress.errors import UserError

MODULE_FORMAT = "autocompress.module/1"
TRIAL_MODULE = "model.module"
"""Stem of a float trial's module in its folder (``model.module.safetensors`` + ``model.module.json``)."""
MODULE_WEIGHTS = ".safetensors"
MODULE_STRUCTURE = ".json"
_PLAIN = (bool, int, float, str, type(None))
_env_lock = threading.Lock()


class NotRebuildable(Exception):
    """A module cannot be written in the code-free form (it would not rebuild to the same model)."""


class TamperedFile(UserError):
    """A file of a run folder does not match the hash recorded for it."""


def sha256_file(path: Path | str) -> str:
    """The SHA-256 of a file's bytes (hex)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_hashes(paths: Iterable[Path | str], root: Path | str) -> dict[str, str]:
    """``{path relative to root: sha256}`` of existing files."""
    root = Path(root).resolve()
    return {str(Path(p).resolve().relative_to(root)): sha256_file(p) for p in paths if Path(p).is_file()}


def verify_files(hashes: dict[str, str] | None, root: Path | str, what: str) -> None:
    """Checks recorded files against their hashes.

    Args:
        hashes: ``{relative path: sha256}`` as recorded; ``None`` = recorded before hashes existed.
        root: The folder the paths are relative to.
        what: Names the owner in the message (e.g. ``"trial 7"``).

    Raises:
        TamperedFile: A file is missing, outside ``root``, or its bytes differ; or nothing was recorded.
    """
    root = Path(root).resolve()
    if not hashes:
        raise TamperedFile(f"{what}: its record holds no file hashes (written by an older autocompress), "
                           f"so its files in {root} cannot be verified; re-run the search to use them")
    for name, expected in hashes.items():
        path = (root / name).resolve()
        if root not in path.parents:
            raise TamperedFile(f"{what}: recorded file {name!r} lies outside {root}")
        if not path.is_file():
            raise TamperedFile(f"{what}: {path} is missing")
        if sha256_file(path) != expected:
            raise TamperedFile(f"{what}: {path} does not match the SHA-256 in its record "
                               "(changed or corrupted after the search wrote it); not loaded")


# -- torch.export programs ------------------------------------------------------------------


@contextlib.contextmanager
def _weights_only_loads():
    """Every ``torch.load`` in this block is weights-only, whatever its caller asked for."""
    names = ("TORCH_FORCE_WEIGHTS_ONLY_LOAD", "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD")
    with _env_lock:
        old = {name: os.environ.get(name) for name in names}
        os.environ.pop("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", None)  # torch refuses both set
        os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = "1"
        try:
            yield
        finally:
            for name, value in old.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value


def load_exported(path: Path | str) -> torch.export.ExportedProgram:
    """``torch.export.load`` without running code from the file.

    Raises:
        UserError: The archive holds pickled objects (custom or opaque constants) or a pickle that
            is not plain tensors.
    """
    path = Path(path)
    try:
        with zipfile.ZipFile(path) as archive:
            pickled = [n for n in archive.namelist()
                       if "/constants/" in n and Path(n).name.startswith(("custom_obj", "opaque_obj"))]
    except zipfile.BadZipFile:
        raise UserError(f"{path}: not a torch.export archive") from None
    if pickled:
        raise UserError(f"{path}: holds pickled objects ({pickled[0]}); refusing to load it")
    with contextlib.suppress(ImportError):  # registers the quantize/dequantize ops an int8 (PT2E) program calls
        import torchao.quantization.pt2e  # noqa: F401
    try:
        with _weights_only_loads():
            return torch.export.load(str(path))
    except UserError:
        raise
    except Exception as err:
        if "weights_only" in str(err) or "Unpickl" in type(err).__name__:
            raise UserError(f"{path}: holds a pickle that is not plain tensors; refusing to load it") from None
        raise


# -- float modules ----------------------------------------------------------------------------


def module_files(stem: Path | str) -> list[Path]:
    """The two files of a saved module: weights and structure."""
    stem = Path(stem)
    return [stem.with_name(stem.name + MODULE_WEIGHTS), stem.with_name(stem.name + MODULE_STRUCTURE)]


def save_module(module: torch.nn.Module, stem: Path | str, example: torch.Tensor, *,
                kwargs: dict | None = None, architecture: str | None = None,
                training_hooks: bool = True) -> list[Path]:
    """Writes a timm-built module as ``<stem>.safetensors`` + ``<stem>.json`` and checks it rebuilds.

    Args:
        module: A timm model, possibly pruned (channel counts, head counts changed in place).
        stem: Path without suffix, e.g. ``trials/0007/model.module``.
        example: An input batch; the rebuilt module must give the same outputs on it.
        kwargs: ``timm.create_model`` keyword arguments it was built with (tried first).
        architecture: The timm name; default the module's ``pretrained_cfg["architecture"]``.
        training_hooks: Refuse a module with hooks (they matter to further training, and are lost).
            ``False`` for a module only used for inference: forward hooks are still caught by the
            rebuild check.

    Returns:
        The written files.

    Raises:
        NotRebuildable: The module is not a timm model, its module tree or tensors differ from
            what the architecture builds, or the rebuilt module computes something else.
    """
    from safetensors.torch import save_file

    from autocompress.store.run_folder import atomic_write

    weights, structure = module_files(stem)
    arch = architecture or (getattr(module, "pretrained_cfg", None) or {}).get("architecture")
    if not arch:
        raise NotRebuildable(f"{type(module).__name__} is not a timm model (no pretrained_cfg architecture)")
    if training_hooks and _has_hooks(module):
        raise NotRebuildable("the module has hooks, which a weights-and-structure file cannot hold")
    module = module.eval()
    with torch.no_grad():
        expected = module(example).float()
    num_classes = getattr(module, "num_classes", None) or int(expected.shape[-1])
    state = {k: v.detach().cpu().contiguous().clone() for k, v in module.state_dict().items()}
    last: Exception | None = None
    for create in _kwarg_variants(kwargs or {}, int(example.shape[-1])):
        try:
            fresh = _create(arch, num_classes, create)
        except Exception as err:  # noqa: BLE001 - a kwarg this architecture does not take: try the next
            last = err
            continue
        problem = _tree_difference(module, fresh)
        if problem:
            last = NotRebuildable(problem)
            continue
        info = {"format": MODULE_FORMAT, "architecture": arch, "num_classes": num_classes, "create": create,
                "attributes": _attribute_changes(module, fresh)}
        weights.parent.mkdir(parents=True, exist_ok=True)
        save_file(state, str(weights), metadata={"format": MODULE_FORMAT})
        atomic_write(structure, json.dumps(info, indent=1))
        try:
            rebuilt = load_module(stem)
            with torch.no_grad():
                got = rebuilt(example).float()
            if got.shape != expected.shape or not torch.allclose(got, expected, rtol=1e-4, atol=1e-4):
                raise NotRebuildable("the rebuilt module computes other outputs")
        except Exception as err:
            for f in (weights, structure):
                f.unlink(missing_ok=True)
            raise err if isinstance(err, NotRebuildable) else NotRebuildable(f"does not rebuild: {err}") from None
        return [weights, structure]
    raise NotRebuildable(f"{arch}: {last}")


def load_module(stem: Path | str) -> torch.nn.Module:
    """Rebuilds a module written by :func:`save_module` (no pickle is read).

    Raises:
        UserError: The files are missing or not such a module.
    """
    import timm
    from safetensors import safe_open

    weights, structure = module_files(stem)
    if not (weights.is_file() and structure.is_file()):
        raise UserError(f"{weights.parent}: no saved module {Path(stem).name} (needs {weights.name} and {structure.name})")
    try:
        info = json.loads(structure.read_text())
        if info.get("format") != MODULE_FORMAT:
            raise ValueError(f"format {info.get('format')!r}, expected {MODULE_FORMAT!r}")
        arch = info["architecture"]
        if not (isinstance(arch, str) and timm.is_model(arch)):
            raise ValueError(f"unknown timm architecture {arch!r}")
        model = _create(arch, int(info["num_classes"]), dict(info.get("create") or {}))
        modules = dict(model.named_modules())
        for name, attrs in (info.get("attributes") or {}).items():
            target = modules[name]
            for attr, value in attrs.items():
                if attr.startswith("_") or not hasattr(target, attr) or callable(getattr(target, attr)):
                    raise ValueError(f"attribute {name}.{attr} is not a plain attribute of the model")
                setattr(target, attr, _decode(value))
        with safe_open(str(weights), framework="pt") as fh:
            state = {key: fh.get_tensor(key) for key in fh.keys()}
    except UserError:
        raise
    except Exception as err:
        raise UserError(f"{structure}: not a module this version can rebuild ({type(err).__name__}: {err})") from None
    own = model.state_dict(keep_vars=True)
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    if missing or unexpected:
        raise UserError(f"{weights}: does not fit {arch}: missing {missing[:3]}, unexpected {unexpected[:3]}")
    for key, tensor in state.items():
        if own[key].shape != tensor.shape or own[key].dtype != tensor.dtype:
            _reshape(model, key, tensor)
    model.load_state_dict(state, strict=True)
    return model.eval()


def _create(arch: str, num_classes: int, kwargs: dict) -> torch.nn.Module:
    import timm

    return timm.create_model(arch, pretrained=False, num_classes=num_classes, **kwargs)


def _kwarg_variants(kwargs: dict, img_size: int) -> list[dict]:
    """``create_model`` keyword sets to try: with the input size first (ViTs need it), then without."""
    variants = [dict(kwargs, img_size=img_size), dict(kwargs), {"img_size": img_size}, {}]
    out = []
    for v in variants:
        if v not in out:
            out.append(v)
    return out


def _has_hooks(module: torch.nn.Module) -> bool:
    for m in module.modules():
        if m._forward_hooks or m._forward_pre_hooks or m._backward_hooks or getattr(m, "_backward_pre_hooks", None):
            return True
    return any(getattr(p, "_backward_hooks", None) for p in module.parameters())


def _tree_difference(module: torch.nn.Module, fresh: torch.nn.Module) -> str | None:
    ours = {n: type(m) for n, m in module.named_modules()}
    theirs = {n: type(m) for n, m in fresh.named_modules()}
    for name in sorted(set(ours) | set(theirs)):
        if ours.get(name) is not theirs.get(name):
            return (f"module {name or '<root>'} is {getattr(ours.get(name), '__name__', 'absent')} here, "
                    f"{getattr(theirs.get(name), '__name__', 'absent')} in a fresh {type(fresh).__name__}")
    ours_state, theirs_state = set(module.state_dict()), set(fresh.state_dict())
    if ours_state != theirs_state:
        return f"tensors differ from a fresh model: {sorted(ours_state ^ theirs_state)[:3]}"
    return None


def _attribute_changes(module: torch.nn.Module, fresh: torch.nn.Module) -> dict[str, dict[str, Any]]:
    fresh_modules = dict(fresh.named_modules())
    out: dict[str, dict[str, Any]] = {}
    for name, m in module.named_modules():
        before = vars(fresh_modules[name])
        changed = {k: _encode(v) for k, v in vars(m).items()
                   if not k.startswith("_") and k != "training" and _plain(v) and before.get(k, _MISSING) != v}
        if changed:
            out[name] = changed
    return out


_MISSING = object()


def _plain(value: Any) -> bool:
    if isinstance(value, _PLAIN):
        return True
    return isinstance(value, (tuple, list)) and all(isinstance(v, _PLAIN) for v in value)


def _encode(value: Any) -> Any:
    return {"tuple": list(value)} if isinstance(value, tuple) else value


def _decode(value: Any) -> Any:
    if isinstance(value, dict):
        if set(value) != {"tuple"} or not isinstance(value["tuple"], list):
            raise ValueError(f"not a plain value: {value!r}")
        return tuple(value["tuple"])
    if not _plain(value):
        raise ValueError(f"not a plain value: {value!r}")
    return value


def _reshape(model: torch.nn.Module, key: str, tensor: torch.Tensor) -> None:
    """Gives parameter or buffer ``key`` of ``model`` the shape and dtype of ``tensor`` (values follow)."""
    owner_name, _, leaf = key.rpartition(".")
    owner = model.get_submodule(owner_name)
    empty = torch.empty(tensor.shape, dtype=tensor.dtype)
    if leaf in owner._parameters:
        owner._parameters[leaf] = torch.nn.Parameter(empty, requires_grad=owner._parameters[leaf].requires_grad)
    elif leaf in owner._buffers:
        owner._buffers[leaf] = empty
    else:
        raise UserError(f"tensor {key} is neither a parameter nor a buffer of the model")
