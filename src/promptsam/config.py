"""Typed configs from YAML presets: dataclasses filled from nested dicts, unknown keys rejected by name."""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from promptsam.errors import PromptSAMError

T = TypeVar("T")
PRESETS = Path(__file__).resolve().parent / "presets"


def from_dict(cls: type[T], data: dict[str, Any] | None, *, where: str = "config") -> T:
    """Build dataclass `cls` from `data`, recursing into nested dataclass fields; unknown keys are an error."""
    data = dict(data or {})
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise PromptSAMError(f"{where}: unknown setting(s) {', '.join(unknown)}; known: {', '.join(sorted(names))}")
    kwargs = {}
    for key, value in data.items():
        hint = hints[key]
        if dataclasses.is_dataclass(hint) and isinstance(value, dict):
            kwargs[key] = from_dict(hint, value, where=f"{where}.{key}")
        else:
            kwargs[key] = _coerce(hint, value, where=f"{where}.{key}")
    return cls(**kwargs)


def _coerce(hint: Any, value: Any, *, where: str) -> Any:
    """`value` for a field typed `hint`: lists as tuples, numbers written as strings or ints as floats where a float
    is meant; a one-line error when its type does not fit (None, bool, int, float, str and tuples of them)."""
    if isinstance(value, list):
        value = tuple(value)
    elif isinstance(value, (str, int)) and not isinstance(value, bool) and float in typing.get_args(hint) + (hint,):
        try:  # YAML 1.1 reads "3e-4" (no dot) as a string; an int where a float is meant is fine too
            value = float(value)
        except ValueError:
            raise PromptSAMError(f"{where}: expected a number, got {value!r}") from None
    if not _fits(hint, value):
        name = hint.__name__ if isinstance(hint, type) else str(hint)
        raise PromptSAMError(f"{where}: expected {name}, got {value!r}")
    return value


def _fits(hint: Any, value: Any) -> bool:
    """Whether `value` is of the scalar or tuple type `hint` (a union of them); other kinds of hints are not checked."""
    allowed = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    for option in allowed:
        origin = typing.get_origin(option) or option
        if origin not in _CHECKED:
            return True
        if value is None and option is type(None):
            return True
        if isinstance(value, bool):
            if origin is bool:
                return True
        elif isinstance(value, int) and origin in (int, float) or isinstance(value, float) and origin is float:
            return True
        elif isinstance(value, str) and origin is str:
            return True
        elif isinstance(value, tuple) and origin is tuple:
            items = [a for a in typing.get_args(option) if a is not Ellipsis]
            if not items or all(_fits(items[i % len(items)], v) for i, v in enumerate(value)):
                return True
    return False


_CHECKED = (type(None), bool, int, float, str, tuple)


def to_dict(config: Any) -> dict[str, Any]:
    """Plain nested dict of a dataclass config (tuples as lists), ready for YAML or a checkpoint."""
    def plain(v: Any) -> Any:
        if isinstance(v, tuple | list):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v

    return plain(dataclasses.asdict(config))


def preset_path(name: str | os.PathLike) -> Path:
    """Path of a preset given by name (`promptnucseg_cpu`) or as a YAML file path."""
    path = Path(name)
    if path.suffix in (".yaml", ".yml"):
        if not path.is_file():
            raise PromptSAMError(f"{path}: no such preset file")
        return path
    candidate = PRESETS / f"{name}.yaml"
    if not candidate.is_file():
        known = ", ".join(sorted(p.stem for p in PRESETS.glob("*.yaml")))
        raise PromptSAMError(f"unknown preset {name!r}; known presets: {known}")
    return candidate


def load_yaml(path: str | os.PathLike) -> dict[str, Any]:
    """Read a YAML mapping with a one-line error naming the file."""
    try:
        data = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as err:
        raise PromptSAMError(f"{path}: cannot read YAML ({str(err).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise PromptSAMError(f"{path}: a preset must be a YAML mapping")
    return data


def load_preset(cls: type[T], preset: str | os.PathLike, overrides: dict[str, Any] | None = None) -> T:
    """A `cls` config from a preset name or YAML file, with dotted overrides ({"segmentor.lr": 1e-4})."""
    path = preset_path(preset)
    return from_dict(cls, apply_overrides(load_yaml(path), overrides), where=str(path))


def parse_settings(items: list[str]) -> dict[str, Any]:
    """`--set KEY=VALUE` strings as dotted overrides, each value read as YAML ("3e-4" -> 0.0003, "[1, 2]" -> list)."""
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise PromptSAMError(f"--set {item!r}: expected KEY=VALUE")
        key, value = item.split("=", 1)
        out[key] = yaml.safe_load(value)
    return out


def check_setting(cls: type, dotted: str, *, where: str = "--set") -> None:
    """Raise a one-line PromptSAMError unless `dotted` names a field of dataclass `cls` (nested by dots); the value's
    type is checked when the config is built (`from_dict`)."""
    *parents, leaf = dotted.split(".")
    for name in parents:
        hint = typing.get_type_hints(cls).get(name) if dataclasses.is_dataclass(cls) else None
        if hint is None or not dataclasses.is_dataclass(hint):
            raise PromptSAMError(f"{where} {dotted}: no such setting")
        cls = hint
    if leaf not in typing.get_type_hints(cls):
        known = ", ".join(f.name for f in dataclasses.fields(cls))
        raise PromptSAMError(f"{where} {dotted}: no such setting; known: {known}")


def apply_overrides(data: dict[str, Any], overrides: dict[str, Any] | None) -> dict[str, Any]:
    """Set dotted keys ({"segmentor.lr": 1e-4}) in a nested config dict, in place; returns it."""
    for dotted, value in (overrides or {}).items():
        node = data
        *parents, leaf = dotted.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return data
