"""Template strings formatted with ``str.format_map`` over step data, without attribute access.

``"Hello {name}, order {order[id]}"`` works; ``"{name.__class__}"`` is refused, because attribute access in
format strings reaches interpreter internals. Width and precision are capped so a template cannot ask for a
gigabyte of padding.
"""

from __future__ import annotations

import _string  # type: ignore[import-not-found]  # CPython's parser of format field names, as string.Formatter uses
import re
import string
from collections.abc import Mapping, Sequence
from typing import Any

from fabric.errors import InvalidInput

_MAX_WIDTH = 10_000
_WIDTH_IN_SPEC = re.compile(r"(\d+)")


def check_template(template: str) -> list[str]:
    """Parse ``template`` and return its top-level field names.

    Raises InvalidInput for a syntax error, a positional field (``{}`` / ``{0}``), attribute access, or a
    width over 10,000.
    """
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise InvalidInput(f"template {template!r}: {exc}") from exc
    names = []
    for _literal, field, spec, _conversion in parsed:
        if field is None:
            continue
        first, rest = _split_field(template, field)
        names.append(first)
        for is_attr, key in rest:
            if is_attr:
                raise InvalidInput(f"template {template!r}: attribute access ({field!r}) is not allowed")
            del key
        if spec:
            if "{" in spec:
                raise InvalidInput(f"template {template!r}: nested fields in format specs are not allowed")
            if any(int(number) > _MAX_WIDTH for number in _WIDTH_IN_SPEC.findall(spec)):
                raise InvalidInput(f"template {template!r}: width or precision over {_MAX_WIDTH}")
    return names


def _split_field(template: str, field: str) -> tuple[str, list[tuple[bool, Any]]]:
    try:
        first, rest = _string.formatter_field_name_split(field)
        items = list(rest)
    except ValueError as exc:
        raise InvalidInput(f"template {template!r}: field {field!r}: {exc}") from exc
    if not isinstance(first, str) or not first:
        raise InvalidInput(f"template {template!r}: fields must be named (got {{{field}}})")
    return first, items


class _SafeFormatter(string.Formatter):
    def get_field(self, field_name: str, args: Sequence[Any], kwargs: Mapping[str, Any]) -> tuple[Any, str]:
        first, rest = _split_field(field_name, field_name)
        value = self.get_value(first, args, kwargs)
        for is_attr, key in rest:
            if is_attr:
                raise InvalidInput(f"template field {field_name!r}: attribute access is not allowed")
            try:
                value = value[key]
            except (KeyError, IndexError, TypeError) as exc:
                raise InvalidInput(f"template field {field_name!r}: no item {key!r} in the data") from exc
        return value, first

    def get_value(self, key: int | str, args: Sequence[Any], kwargs: Mapping[str, Any]) -> Any:
        if isinstance(key, int) or key not in kwargs:
            raise InvalidInput(
                f"template field {key!r} is not in the data (keys: {', '.join(sorted(kwargs))})"
            )
        return kwargs[key]


def render(template: str, data: Any) -> str:
    """Format ``template`` with the keys of ``data`` (a dict; other values are available as ``{value}``).

    Raises InvalidInput when a field is missing or the template is not allowed (see :func:`check_template`).
    """
    check_template(template)
    mapping = data if isinstance(data, Mapping) else {"value": data}
    try:
        return _SafeFormatter().vformat(template, (), mapping)
    except (ValueError, TypeError) as exc:
        raise InvalidInput(f"template {template!r}: {exc}") from exc
