"""How every component reads its settings: defaults, then a YAML file, then the environment.

A component describes its settings as a pydantic model and names its variable prefix: the
operator ``VMSANDBOX_OPERATOR_``, the node agent ``VMSANDBOX_AGENT_``, the runtime's drivers plain
``VMSANDBOX_`` (which the node agent reads too). The file's keys are the options' camelCase names
(snake_case is accepted too); option ``someOption`` is also read from ``<PREFIX>SOME_OPTION``,
which wins over the file. A list in a variable is comma-separated: each item is stripped and
empty items are dropped. Every bad option is reported at once, named as in the file, with the
variable when one set it.

This module sits beside :mod:`vmsandbox.errors` at the bottom of the package, so that each layer,
the hypervisor drivers included, may import it.
"""

from __future__ import annotations

import os
import types
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar, Union, get_args, get_origin

from pydantic import BaseModel, ValidationError
from pydantic.alias_generators import to_camel
from pydantic_core import ErrorDetails

from vmsandbox.errors import VMSandboxError

Model = TypeVar("Model", bound=BaseModel)


class ConfigError(VMSandboxError):
    """The configuration cannot be used; names every offending option."""

    step = "configuration"


def _option_name(model: type[BaseModel], field: str) -> str:
    """The name an option has in a config file and in messages: the field's alias, else camelCase."""
    return model.model_fields[field].alias or to_camel(field)


def _variable(prefix: str, field: str) -> str:
    return prefix + field.upper()


def load_settings(
    model: type[Model],
    prefix: str,
    path: Path | None = None,
    environ: Mapping[str, str] | None = None,
    *,
    also: Mapping[str, str] | None = None,
    error: type[ConfigError] = ConfigError,
) -> Model:
    """Read ``path`` (if given), then ``environ`` (default: the process's), and validate.

    ``also`` maps further variables to fields, read before the prefixed ones (e.g. the downward
    API's ``NODE_NAME``). Raises ``error`` naming each bad option.
    """
    env = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    set_by: dict[str, str] = {}
    if path is not None:
        values.update(_from_file(model, path, error))
    for name, field in (also or {}).items():
        if name in env:
            values[field], set_by[field] = env[name], name
    for field, info in model.model_fields.items():
        raw = env.get(_variable(prefix, field))
        if raw is not None:
            values[field] = split_list(raw) if _is_list(info.annotation) else raw
            set_by[field] = _variable(prefix, field)
    try:
        return model.model_validate(values)
    except ValidationError as exc:
        named = [_problem(model, prefix, also or {}, set_by, e) for e in exc.errors()]
        raise error("; ".join(named)) from None


def split_list(raw: str) -> list[str]:
    """The one list syntax of variables: ``a, b,c`` is ``[a, b, c]``; empty items are dropped."""
    return [item.strip() for item in raw.split(",") if item.strip()]


def _from_file(model: type[BaseModel], path: Path, error: type[ConfigError]) -> dict[str, Any]:
    import yaml  # only with a settings file: every runtime CLI call and agent start loads this module

    try:
        loaded = yaml.safe_load(path.read_text()) or {}
    except OSError as exc:
        raise error(f"cannot read {path}: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise error(f"{path} is not valid YAML: {exc}") from None
    if not isinstance(loaded, dict):
        raise error(f"{path} must hold a mapping of options")
    fields = {_option_name(model, f): f for f in model.model_fields} | {f: f for f in model.model_fields}
    # An unknown key stays as written, so that validation names it.
    return {fields.get(str(key), str(key)): value for key, value in loaded.items()}


def _is_list(annotation: Any) -> bool:
    origin = get_origin(annotation)
    if origin in (Union, types.UnionType):
        return any(get_origin(arg) is list for arg in get_args(annotation))
    return origin is list


def _problem(
    model: type[BaseModel], prefix: str, also: Mapping[str, str], set_by: Mapping[str, str], err: ErrorDetails
) -> str:
    message = err["msg"].removeprefix("Value error, ")
    if not err["loc"]:
        return message
    head, *rest = err["loc"]
    field = _field_of(model, str(head))
    if field is None:
        return f"{head}: not an option" if err["type"] == "extra_forbidden" else f"{head}: {message}"
    where = ".".join([_option_name(model, field), *(str(part) for part in rest)])
    if err["type"] == "missing":
        names = [n for n, f in also.items() if f == field] + [_variable(prefix, field)]
        return f"{where}: required (set {', '.join(names)} or {where} in the config file)"
    source = f" (set by {set_by[field]})" if field in set_by else ""
    return f"{where}: {message}{source}"


def _field_of(model: type[BaseModel], name: str) -> str | None:
    if name in model.model_fields:
        return name
    return next((f for f in model.model_fields if _option_name(model, f) == name), None)
