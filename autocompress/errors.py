"""User-facing errors: one clear line, exit code 2, never a traceback."""

from __future__ import annotations

import typing

from pydantic import BaseModel, ValidationError


class UserError(Exception):
    """Bad input from the user: the message is one line naming the field and what is allowed."""

    exit_code = 2


def describe_validation_error(
    err: ValidationError, model_cls: type[BaseModel] | None = None, prefix: str = ""
) -> str:
    """Turns a pydantic error into one line naming the first bad field and what is allowed.

    Args:
        err: The validation error.
        model_cls: The model that was validated, to list allowed names for unknown fields.
        prefix: Dotted path of that model inside the whole config (e.g. ``"budget"``).

    Returns:
        A single line such as ``model.nme: unknown field; allowed: name, num_classes, ...``.
    """
    first = err.errors()[0]
    parts = ([prefix] if prefix else []) + [str(p) for p in first["loc"]]
    loc = ".".join(parts) or "<root>"
    if first["type"] == "extra_forbidden":
        msg = "unknown field"
        owner = _model_at(model_cls, list(first["loc"])[:-1]) if model_cls else None
        if owner is not None:
            msg += f"; allowed: {', '.join(owner.model_fields)}"
    else:
        msg = first["msg"]
        value = first.get("input")
        if value is not None and not isinstance(value, (dict, list)):
            msg += f" (got {value!r})"
    more = len(err.errors()) - 1
    return f"{loc}: {msg}" + (f" [+{more} more]" if more > 0 else "")


def _model_at(cls: type[BaseModel], loc: list) -> type[BaseModel] | None:
    for part in loc:
        field = cls.model_fields.get(str(part)) if isinstance(part, str) else None
        if field is None:
            return None
        nested = _first_model(field.annotation)
        if nested is None:
            return None
        cls = nested
    return cls


def _first_model(annotation) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _first_model(arg)
        if found is not None:
            return found
    return None
