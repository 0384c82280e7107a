"""The ``process`` step: a named operation from a registry of safe pure functions.

Node data: ``operation`` (a registered name), ``params`` (checked by the operation's own model), and
optionally ``field`` (apply the operation to ``data[field]`` instead of the whole input) with ``target``
(where the result goes; default: back into ``field``). With ``field`` the step outputs a copy of the input
dict with the result set; without it the step outputs the operation's result.

New operations join with :func:`register_operation`.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from fabric.errors import InvalidInput
from workflows.model import format_validation_error
from workflows.steps.base import Step, StepConfig, StepContext, register_step_type
from workflows.steps.templating import check_template, render


class NoParams(BaseModel):
    model_config = ConfigDict(extra="forbid")


@dataclass(frozen=True)
class Operation:
    """A pure function ``fn(value, params) -> result`` and the model its params must satisfy."""

    name: str
    fn: Callable[[Any, Any], Any]
    params: type[BaseModel]
    doc: str


_operations: dict[str, Operation] = {}


def register_operation(
    name: str, params: type[BaseModel] = NoParams, doc: str = ""
) -> Callable[[Callable[[Any, Any], Any]], Callable[[Any, Any], Any]]:
    """Decorator adding ``fn(value, params)`` as operation ``name``. Raises InvalidInput if taken."""

    def decorator(fn: Callable[[Any, Any], Any]) -> Callable[[Any, Any], Any]:
        if name in _operations:
            raise InvalidInput(f"process operation {name!r} is already registered")
        _operations[name] = Operation(name, fn, params, doc or (fn.__doc__ or "").strip())
        return fn

    return decorator


def get_operation(name: str) -> Operation:
    """The operation ``name``. Raises InvalidInput listing the known names."""
    try:
        return _operations[name]
    except KeyError:
        raise InvalidInput(f"unknown operation {name!r}; known: {', '.join(sorted(_operations))}") from None


def operation_names() -> list[str]:
    return sorted(_operations)


# --- helpers -----------------------------------------------------------------------------------------------


def _text(value: Any, op: str) -> str:
    if not isinstance(value, str):
        raise InvalidInput(f"{op} needs a string, got {type(value).__name__}")
    return value


def _items(value: Any, op: str) -> list[Any]:
    if isinstance(value, list):
        return value
    if isinstance(value, Mapping):
        return list(value.values())
    raise InvalidInput(f"{op} needs a list (or an object, whose values are used), got {type(value).__name__}")


def _numbers(value: Any, op: str) -> list[float | int]:
    items = _items(value, op)
    for item in items:
        if isinstance(item, bool) or not isinstance(item, int | float):
            raise InvalidInput(f"{op} needs numbers, got {item!r}")
    return items


def _dict(value: Any, op: str) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise InvalidInput(f"{op} needs an object, got {type(value).__name__}")
    return dict(value)


# --- text ------------------------------------------------------------------------------------------------


@register_operation("uppercase")
def _uppercase(value: Any, params: NoParams) -> Any:
    """A string in upper case (or every string of a list)."""
    if isinstance(value, list):
        return [_text(v, "uppercase").upper() for v in value]
    return _text(value, "uppercase").upper()


@register_operation("lowercase")
def _lowercase(value: Any, params: NoParams) -> Any:
    """A string in lower case (or every string of a list)."""
    if isinstance(value, list):
        return [_text(v, "lowercase").lower() for v in value]
    return _text(value, "lowercase").lower()


class StripParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    chars: str | None = None


@register_operation("strip", StripParams)
def _strip(value: Any, params: StripParams) -> Any:
    """A string without leading and trailing whitespace (or ``chars``); every string of a list."""
    if isinstance(value, list):
        return [_text(v, "strip").strip(params.chars) for v in value]
    return _text(value, "strip").strip(params.chars)


class SplitParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    separator: str | None = None


@register_operation("split", SplitParams)
def _split(value: Any, params: SplitParams) -> Any:
    """A string split on ``separator`` (default: whitespace)."""
    return _text(value, "split").split(params.separator)


class JoinParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    separator: str = " "


@register_operation("join", JoinParams)
def _join(value: Any, params: JoinParams) -> Any:
    """A list of values joined into one string."""
    return params.separator.join(str(v) for v in _items(value, "join"))


class TemplateParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    template: str

    @model_validator(mode="after")
    def _parse(self) -> TemplateParams:
        check_template(self.template)
        return self


@register_operation("template", TemplateParams)
def _template(value: Any, params: TemplateParams) -> Any:
    """``template`` formatted over the data's keys (``{name}``, ``{order[id]}``); no attribute access."""
    return render(params.template, value)


# --- numbers and lists -----------------------------------------------------------------------------------


@register_operation("sum")
def _sum(value: Any, params: NoParams) -> Any:
    """The sum of a list of numbers."""
    return sum(_numbers(value, "sum"))


@register_operation("min")
def _min(value: Any, params: NoParams) -> Any:
    """The smallest of a non-empty list of numbers."""
    numbers = _numbers(value, "min")
    if not numbers:
        raise InvalidInput("min of an empty list")
    return min(numbers)


@register_operation("max")
def _max(value: Any, params: NoParams) -> Any:
    """The largest of a non-empty list of numbers."""
    numbers = _numbers(value, "max")
    if not numbers:
        raise InvalidInput("max of an empty list")
    return max(numbers)


@register_operation("mean")
def _mean(value: Any, params: NoParams) -> Any:
    """The arithmetic mean of a non-empty list of numbers."""
    numbers = _numbers(value, "mean")
    if not numbers:
        raise InvalidInput("mean of an empty list")
    return statistics.fmean(numbers)


@register_operation("count")
def _count(value: Any, params: NoParams) -> Any:
    """The number of items of a list, keys of an object, or characters of a string."""
    if isinstance(value, list | str | Mapping):
        return len(value)
    raise InvalidInput(f"count needs a list, object or string, got {type(value).__name__}")


class SortParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    key: str | None = Field(None, description="Sort a list of objects by this key.")
    reverse: bool = False


@register_operation("sort", SortParams)
def _sort(value: Any, params: SortParams) -> Any:
    """A list sorted (objects by ``key``), ascending unless ``reverse``."""
    items = _items(value, "sort")
    try:
        if params.key is None:
            return sorted(items, reverse=params.reverse)
        key = params.key
        return sorted(items, key=lambda item: _dict(item, "sort by key")[key], reverse=params.reverse)
    except KeyError as exc:
        raise InvalidInput(f"sort: an item has no key {exc}") from exc
    except TypeError as exc:
        raise InvalidInput(f"sort: items cannot be compared: {exc}") from exc


@register_operation("unique")
def _unique(value: Any, params: NoParams) -> Any:
    """A list without duplicates, first occurrences kept in order."""
    seen: list[Any] = []
    for item in _items(value, "unique"):
        if item not in seen:
            seen.append(item)
    return seen


@register_operation("reverse")
def _reverse(value: Any, params: NoParams) -> Any:
    """A list (or string) in reverse order."""
    if isinstance(value, str):
        return value[::-1]
    return list(reversed(_items(value, "reverse")))


@register_operation("flatten")
def _flatten(value: Any, params: NoParams) -> Any:
    """A list of lists made one list (one level)."""
    out: list[Any] = []
    for item in _items(value, "flatten"):
        out.extend(item if isinstance(item, list) else [item])
    return out


# --- objects ---------------------------------------------------------------------------------------------


@register_operation("merge")
def _merge(value: Any, params: NoParams) -> Any:
    """Objects merged into one, later keys winning: a list of objects, or the values of an object.

    The input of a step with several predecessors is ``{predecessor_id: output}``; ``merge`` folds it.
    """
    merged: dict[str, Any] = {}
    for item in _items(value, "merge"):
        merged.update(_dict(item, "merge"))
    return merged


class SetFieldParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1)
    value: Any = None


@register_operation("set_field", SetFieldParams)
def _set_field(value: Any, params: SetFieldParams) -> Any:
    """A copy of the object with ``name`` set to ``value``."""
    out = _dict(value, "set_field")
    out[params.name] = params.value
    return out


class DelayParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    seconds: float = Field(ge=0, le=300)


@register_operation("delay", DelayParams)
def _delay(value: Any, params: DelayParams) -> Any:
    """The data unchanged, ``seconds`` later (a wait step; bounded by the step timeout)."""
    time.sleep(params.seconds)
    return value


class FieldsParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    fields: list[str] = Field(min_length=1)


@register_operation("pick", FieldsParams)
def _pick(value: Any, params: FieldsParams) -> Any:
    """A copy of the object with only ``fields`` (those present)."""
    data = _dict(value, "pick")
    return {k: data[k] for k in params.fields if k in data}


@register_operation("omit", FieldsParams)
def _omit(value: Any, params: FieldsParams) -> Any:
    """A copy of the object without ``fields``."""
    return {k: v for k, v in _dict(value, "omit").items() if k not in params.fields}


# --- the step --------------------------------------------------------------------------------------------


class ProcessConfig(StepConfig):
    operation: str
    params: dict[str, Any] = Field(default_factory=dict)
    field: str | None = None
    target: str | None = None

    @model_validator(mode="after")
    def _check_operation(self) -> ProcessConfig:
        operation = get_operation(self.operation)
        try:
            operation.params.model_validate(self.params)
        except ValidationError as exc:
            raise InvalidInput(
                f"operation {self.operation!r}: bad params: {format_validation_error(exc)}"
            ) from exc
        if self.target is not None and self.field is None:
            raise InvalidInput("target needs field (the operation reads field and writes target)")
        return self


@register_step_type("process")
class ProcessStep(Step):
    """Apply a named operation to the input (or to one field of it)."""

    Config = ProcessConfig

    def __init__(self, node_id: str, config: StepConfig) -> None:
        super().__init__(node_id, config)
        assert isinstance(config, ProcessConfig)
        self.cfg = config
        self.operation = get_operation(config.operation)
        self.params = self.operation.params.model_validate(config.params)

    def run(self, data: Any, context: StepContext) -> Any:
        if self.cfg.field is None:
            return self.operation.fn(data, self.params)
        record = _dict(data, f"{self.cfg.operation} on field {self.cfg.field!r}")
        if self.cfg.field not in record:
            raise InvalidInput(
                f"field {self.cfg.field!r} is not in the input (keys: {', '.join(sorted(record))})"
            )
        record[self.cfg.target or self.cfg.field] = self.operation.fn(record[self.cfg.field], self.params)
        return record
