"""The data steps: ``input``, ``transform`` (JMESPath), ``data_validation`` (JSON Schema), ``condition``
(JMESPath truthiness choosing a branch) and ``output``. None of them evaluates Python: expressions are
JMESPath, compiled when the workflow is registered.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping
from typing import Any

import jmespath
import jmespath.exceptions
import jmespath.parser
import jsonschema
import jsonschema.exceptions
from pydantic import Field, field_validator, model_validator

from fabric.errors import InvalidInput
from workflows.steps.base import Step, StepConfig, StepContext, StepFailed, StepResult, register_step_type


def compile_expression(expression: str) -> jmespath.parser.ParsedResult:
    """Compile a JMESPath expression. Raises InvalidInput with the parser's message."""
    try:
        return jmespath.compile(expression)
    except jmespath.exceptions.JMESPathError as exc:
        raise InvalidInput(f"JMESPath expression {expression!r}: {exc}") from exc


def search(parsed: jmespath.parser.ParsedResult, data: Any) -> Any:
    """Evaluate a compiled expression over ``data``. Raises InvalidInput on a type error at run time."""
    try:
        return parsed.search(data)
    except jmespath.exceptions.JMESPathError as exc:
        raise InvalidInput(f"JMESPath expression {parsed.expression!r} failed: {exc}") from exc


def jmespath_truthy(value: Any) -> bool:
    """JMESPath's truth: null, false, "", [] and {} are false; everything else (0 included) is true."""
    if value is None or value is False:
        return False
    if isinstance(value, str | list | dict):
        return len(value) > 0
    return True


class _ExpressionConfig(StepConfig):
    expression: str = Field(min_length=1)

    @field_validator("expression")
    @classmethod
    def _compiles(cls, value: str) -> str:
        compile_expression(value)
        return value


# --- input -----------------------------------------------------------------------------------------------


class InputConfig(StepConfig):
    fields: list[str] | None = Field(None, description="Keep only these keys of the execution input.")
    required: list[str] = Field(default_factory=list, description="Keys the execution input must hold.")
    defaults: dict[str, Any] = Field(default_factory=dict, description="Values for keys the input lacks.")


@register_step_type("input")
class InputStep(Step):
    """Output the execution's input_data (wherever the node sits), with defaults, checks and a selection."""

    Config = InputConfig

    def run(self, data: Any, context: StepContext) -> Any:
        assert isinstance(self.config, InputConfig)
        values = {**self.config.defaults, **context.execution_input}
        missing = [key for key in self.config.required if key not in values]
        if missing:
            raise InvalidInput(f"the execution input lacks required key(s): {', '.join(missing)}")
        if self.config.fields is not None:
            values = {key: values[key] for key in self.config.fields if key in values}
        return values


# --- transform -------------------------------------------------------------------------------------------


class TransformConfig(_ExpressionConfig):
    pass


@register_step_type("transform")
class TransformStep(Step):
    """Output the JMESPath ``expression`` evaluated over the input."""

    Config = TransformConfig

    def __init__(self, node_id: str, config: StepConfig) -> None:
        super().__init__(node_id, config)
        assert isinstance(config, TransformConfig)
        self.parsed = compile_expression(config.expression)

    def run(self, data: Any, context: StepContext) -> Any:
        return search(self.parsed, data)


# --- data_validation -------------------------------------------------------------------------------------


class DataValidationConfig(StepConfig):
    json_schema: dict[str, Any] = Field(alias="schema")
    max_errors: int = Field(10, ge=1, le=1000)

    @field_validator("json_schema")
    @classmethod
    def _valid_schema(cls, value: dict[str, Any]) -> dict[str, Any]:
        try:
            key = json.dumps(value, sort_keys=True)
        except (TypeError, ValueError) as exc:
            raise InvalidInput(f"schema is not JSON: {exc}") from exc
        problem = _schema_problem(key)
        if problem is not None:
            raise InvalidInput(f"schema is not a valid JSON Schema: {problem}")
        return value


@functools.lru_cache(maxsize=256)
def _schema_problem(schema_json: str) -> str | None:
    """Why a schema (as canonical JSON) is invalid, or None. Cached: checking against the meta-schema costs
    ~20 ms, and the same definitions are validated again and again (each registration, each execution)."""
    schema = json.loads(schema_json)
    try:
        jsonschema.validators.validator_for(schema).check_schema(schema)
    except jsonschema.exceptions.SchemaError as exc:
        return str(exc.message)
    return None


def _json_path(path: Any) -> str:
    out = "$"
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else f".{part}"
    return out


@register_step_type("data_validation")
class DataValidationStep(Step):
    """Pass the input through if it matches the JSON Schema; otherwise fail naming each path and error."""

    Config = DataValidationConfig

    def __init__(self, node_id: str, config: StepConfig) -> None:
        super().__init__(node_id, config)
        assert isinstance(config, DataValidationConfig)
        self.max_errors = config.max_errors
        cls = jsonschema.validators.validator_for(config.json_schema)
        self.validator = cls(config.json_schema, format_checker=cls.FORMAT_CHECKER)

    def run(self, data: Any, context: StepContext) -> Any:
        errors = sorted(self.validator.iter_errors(data), key=lambda e: list(map(str, e.absolute_path)))
        if errors:
            shown = "; ".join(
                f"{_json_path(e.absolute_path)}: {e.message}" for e in errors[: self.max_errors]
            )
            more = f" (and {len(errors) - self.max_errors} more)" if len(errors) > self.max_errors else ""
            raise StepFailed(f"input does not match the schema: {shown}{more}")
        return data


# --- condition -------------------------------------------------------------------------------------------


class ConditionConfig(_ExpressionConfig):
    pass


@register_step_type("condition")
class ConditionStep(Step):
    """Evaluate ``expression`` over the input; the ``"true"`` or ``"false"`` outgoing edges run.

    The output is the input, unchanged, so the branch taken works on the same data.
    """

    Config = ConditionConfig
    branches = ("true", "false")

    def __init__(self, node_id: str, config: StepConfig) -> None:
        super().__init__(node_id, config)
        assert isinstance(config, ConditionConfig)
        self.parsed = compile_expression(config.expression)

    def execute(self, data: Any, context: StepContext) -> StepResult:
        return StepResult(data, "true" if jmespath_truthy(search(self.parsed, data)) else "false")


# --- output ----------------------------------------------------------------------------------------------


class OutputConfig(StepConfig):
    expression: str | None = Field(None, description="JMESPath selecting the output from the input.")
    fields: list[str] | None = Field(None, description="Keep only these keys of the input object.")

    @model_validator(mode="after")
    def _one_selector(self) -> OutputConfig:
        if self.expression is not None and self.fields is not None:
            raise InvalidInput("give expression or fields, not both")
        if self.expression is not None:
            compile_expression(self.expression)
        return self


@register_step_type("output")
class OutputStep(Step):
    """Select what becomes the execution's output_data (the whole input when nothing is selected)."""

    Config = OutputConfig

    def __init__(self, node_id: str, config: StepConfig) -> None:
        super().__init__(node_id, config)
        assert isinstance(config, OutputConfig)
        self.cfg = config
        self.parsed = compile_expression(config.expression) if config.expression else None

    def run(self, data: Any, context: StepContext) -> Any:
        if self.parsed is not None:
            return search(self.parsed, data)
        if self.cfg.fields is not None:
            if not isinstance(data, Mapping):
                raise InvalidInput(f"output fields need an object input, got {type(data).__name__}")
            return {key: data[key] for key in self.cfg.fields if key in data}
        return data
