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
            value = from_dict(hint, value, where=f"{where}.{key}")
        elif isinstance(value, list):
            value = tuple(value)
        elif isinstance(value, (str, int)) and not isinstance(value, bool) and float in typing.get_args(hint) + (hint,):
            try:  # YAML 1.1 reads "3e-4" (no dot) as a string; an int where a float is meant is fine too
                value = float(value)
            except ValueError:
                raise PromptSAMError(f"{where}.{key}: expected a number, got {value!r}") from None
        kwargs[key] = value
    return cls(**kwargs)


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


def check_setting(cls: type, dotted: str, value: Any, *, where: str = "--set") -> None:
    """Raise a one-line PromptSAMError unless `dotted` names a field of dataclass `cls` (nested by dots) whose type
    admits `value` (None, bool, int, float, str, or a list of numbers for a tuple)."""
    *parents, leaf = dotted.split(".")
    for name in parents:
        hint = typing.get_type_hints(cls).get(name) if dataclasses.is_dataclass(cls) else None
        if hint is None or not dataclasses.is_dataclass(hint):
            raise PromptSAMError(f"{where} {dotted}: no such setting")
        cls = hint
    hint = typing.get_type_hints(cls).get(leaf)
    if hint is None:
        known = ", ".join(f.name for f in dataclasses.fields(cls))
        raise PromptSAMError(f"{where} {dotted}: no such setting; known: {known}")
    allowed = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    origins = {typing.get_origin(a) or a for a in allowed}
    numbers = (int, float)
    if value is None:
        ok = type(None) in origins
    elif isinstance(value, bool):
        ok = bool in origins
    elif isinstance(value, numbers):
        ok = float in origins or (int in origins and isinstance(value, int))
    elif isinstance(value, str):
        ok = str in origins
    elif isinstance(value, list):
        ok = tuple in origins and all(isinstance(v, numbers) and not isinstance(v, bool) for v in value)
    else:
        ok = False
    if not ok:
        raise PromptSAMError(f"{where} {dotted}={value!r}: expected {typing.get_args(hint) and hint or hint.__name__}")


def apply_overrides(data: dict[str, Any], overrides: dict[str, Any] | None) -> dict[str, Any]:
    """Set dotted keys ({"segmentor.lr": 1e-4}) in a nested config dict, in place; returns it."""
    for dotted, value in (overrides or {}).items():
        node = data
        *parents, leaf = dotted.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return data
