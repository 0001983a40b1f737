"""A plugin's search ranges: checked against its ``Config``, described in words."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from autocompress.errors import UserError, describe_validation_error
from autocompress.plugin.contract import Plugin


def normalise_spec(spec: Any) -> Any:
    """A list means choices; everything else is kept."""
    if isinstance(spec, list):
        return {"choices": spec}
    return spec


def check_plugin_space(cls: type[Plugin], space: dict[str, Any], where: str) -> dict[str, Any]:
    """Checks ranges against what the plugin's Config accepts.

    Returns:
        The space with lists turned into ``{"choices": [...]}``.

    Raises:
        UserError: An unknown parameter, a malformed range, or a value the Config rejects.
    """
    if not isinstance(space, dict):
        raise UserError(f"{where}: expected a mapping of parameter ranges, got {type(space).__name__}")
    fields = cls.Config.model_fields
    out = {}
    for param, raw in space.items():
        if param not in fields:
            raise UserError(f"{where}.{param}: unknown parameter of {cls.name}; allowed: {', '.join(fields) or 'none'}")
        spec = normalise_spec(raw)
        key = f"{where}.{param}"
        if isinstance(spec, dict):
            keys = set(spec)
            if "choices" in keys:
                if keys != {"choices"} or not spec["choices"]:
                    raise UserError(f"{key}: choices must be a non-empty list and alone")
                values = list(spec["choices"])
            elif {"low", "high"} <= keys and keys <= {"low", "high", "step", "log", "size"}:
                if not all(isinstance(spec[k], (int, float)) and not isinstance(spec[k], bool) for k in ("low", "high")):
                    raise UserError(f"{key}: low and high must be numbers")
                if spec["low"] > spec["high"]:
                    raise UserError(f"{key}: low ({spec['low']}) is above high ({spec['high']})")
                if spec.get("log") and spec["low"] <= 0:
                    raise UserError(f"{key}: a log range needs low > 0")
                values = [spec["low"], spec["high"]]
                if "size" in spec:  # one value per element: a list of that many, each in the range
                    size = spec["size"]
                    if not (size == "stages" or (isinstance(size, int) and not isinstance(size, bool) and size >= 1)):
                        raise UserError(f"{key}.size: {size!r}; allowed: a count >= 1, or 'stages' (one per stage "
                                        "of the model)")
                    values = [[spec["low"]], [spec["high"]]]
            else:
                raise UserError(f"{key}: a range is {{low, high[, step, log, size]}}, choices are a list; got keys "
                                f"{sorted(keys)}")
        else:
            values = [spec]
        for value in values:
            try:
                cls.Config.model_validate({param: value})
            except ValidationError as err:
                detail = describe_validation_error(err, cls.Config).split(": ", 1)[-1]
                raise UserError(f"{key}: {value!r} is outside what {cls.name} accepts: {detail}") from None
        out[param] = spec
    return out


def describe_spec(spec: Any) -> str:
    """A range, choices or fixed value in words: ``0.3 to 0.8 in steps of 0.1``, ``one of l2, l1``, ``only 8``."""
    if isinstance(spec, dict) and "low" in spec:
        text = f"{spec['low']} to {spec['high']}"
        if spec.get("step"):
            text += f" in steps of {spec['step']}"
        text += " (log scale)" if spec.get("log") else ""
        if "size" in spec:
            count = "one per stage" if spec["size"] == "stages" else f"{spec['size']}"
            text = f"a list of values ({count}), each {text}"
        return text
    if isinstance(spec, dict) and "choices" in spec:
        return "one of " + ", ".join(map(str, spec["choices"]))
    return f"only {spec!r}"
