"""The step-type contract and the registry that step types join.

A step type is a :class:`Step` subclass with a pydantic ``Config`` (the node's ``data``, validated when the
workflow is registered) and a ``run`` method: ``run(data, context) -> output``. Steps are plain synchronous
functions; the engine runs them in threads, so independent branches overlap while a step waits on I/O.

Errors a step raises decide what happens next: a :class:`~fabric.errors.TransientError` is retried by the
node's ``retry`` policy; anything else fails the step at once.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar, overload

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from config.settings import Settings
from fabric.errors import InvalidInput, PermanentError, TransientError
from workflows.model import format_validation_error


class StepFailed(PermanentError):
    """A step ran and failed in a way that retrying cannot fix (a 4xx answer, data that fails its schema)."""


class StepTimeout(TransientError):
    """A step attempt ran past its ``timeout_seconds``. Transient: the retry policy may try it again."""


class RetryPolicy(BaseModel):
    """How often a step is tried when it raises a TransientError, and how long to wait between tries."""

    model_config = ConfigDict(extra="forbid")

    max_attempts: int = Field(1, ge=1, le=20)
    #: seconds before the second attempt; each later pause is multiplied by ``factor``
    backoff: float = Field(0.5, ge=0, le=300)
    factor: float = Field(2.0, ge=1, le=10)
    max_backoff: float = Field(30.0, ge=0, le=3600)

    def delay_before(self, attempt: int) -> float:
        """Seconds to wait before try number ``attempt`` (2 for the first retry)."""
        return float(min(self.max_backoff, self.backoff * self.factor ** max(0, attempt - 2)))


class StepConfig(BaseModel):
    """Fields every node's ``data`` may hold. Step types extend it; unknown keys are refused."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    retry: RetryPolicy = Field(default_factory=RetryPolicy)
    timeout_seconds: float | None = Field(None, gt=0, le=24 * 3600)
    label: str | None = Field(None, description="A human name for the step (not used by the engine).")


@dataclass(frozen=True)
class StepContext:
    """What a running step may know about its execution besides its input data."""

    execution_id: str
    workflow_id: str
    node_id: str
    #: the execution's input_data (the ``input`` step reads it wherever it sits in the graph)
    execution_input: dict[str, Any]
    settings: Settings
    attempt: int = 1
    #: seconds this attempt may take; steps doing I/O pass it to their client so abandoned threads end too
    timeout: float = 60.0


@dataclass(frozen=True)
class StepResult:
    """A step's output and, for branching steps, the branch label it chose."""

    output: Any
    branch: str | None = None


class Step:
    """Base of every step type. Subclasses set ``Config`` and implement :meth:`run` (or :meth:`execute`)."""

    Config: ClassVar[type[StepConfig]] = StepConfig
    #: branch labels the outgoing edges of this step may carry; empty: edges must carry none
    branches: ClassVar[tuple[str, ...]] = ()
    #: the registered name, set by :func:`register_step_type`
    type_name: ClassVar[str] = ""

    def __init__(self, node_id: str, config: StepConfig) -> None:
        self.node_id = node_id
        self.config = config

    @classmethod
    def from_data(cls, node_id: str, data: dict[str, Any]) -> Step:
        """Validate ``data`` with ``Config`` and build the step.

        Raises InvalidInput naming the node and each bad field.
        """
        try:
            config = cls.Config.model_validate(data)
        except ValidationError as exc:
            raise InvalidInput(
                f"node {node_id!r} ({cls.type_name or cls.__name__}): bad configuration: "
                f"{format_validation_error(exc)}"
            ) from exc
        except InvalidInput as exc:
            raise InvalidInput(f"node {node_id!r} ({cls.type_name or cls.__name__}): {exc}") from exc
        return cls(node_id, config)

    def execute(self, data: Any, context: StepContext) -> StepResult:
        """Run the step. The engine calls this; branching steps override it to choose a branch."""
        return StepResult(self.run(data, context))

    def run(self, data: Any, context: StepContext) -> Any:
        """Take the step's input ``data`` and return its output (JSON-serialisable)."""
        raise NotImplementedError(f"step type {self.type_name!r} implements neither run nor execute")


class StepRegistry:
    """Step types by name. ``workflows.steps.default_registry`` holds the built-in ones."""

    def __init__(self) -> None:
        self._types: dict[str, type[Step]] = {}

    def register(self, name: str, cls: type[Step], *, replace: bool = False) -> type[Step]:
        """Add ``cls`` under ``name``. Raises InvalidInput if the name is taken (unless ``replace``)."""
        if not name or not name.replace("_", "").isalnum():
            raise InvalidInput(f"step type name {name!r} must be letters, digits and underscores")
        if not (isinstance(cls, type) and issubclass(cls, Step)):
            raise InvalidInput(f"step type {name!r}: {cls!r} is not a Step subclass")
        if name in self._types and not replace and self._types[name] is not cls:
            raise InvalidInput(f"step type {name!r} is already registered ({self._types[name].__name__})")
        cls.type_name = name
        self._types[name] = cls
        return cls

    def unregister(self, name: str) -> None:
        """Remove ``name`` (tests that add types of their own clean up with it)."""
        self._types.pop(name, None)

    def get(self, name: str) -> type[Step]:
        """The class registered as ``name``. Raises InvalidInput listing the known names."""
        try:
            return self._types[name]
        except KeyError:
            raise InvalidInput(
                f"unknown step type {name!r}; known: {', '.join(sorted(self._types))}"
            ) from None

    def __contains__(self, name: object) -> bool:
        return name in self._types

    def names(self) -> list[str]:
        """Registered names, sorted."""
        return sorted(self._types)


default_registry = StepRegistry()

StepT = TypeVar("StepT", bound=type[Step])


@overload
def register_step_type(
    name: str, cls: None = None, *, registry: StepRegistry | None = None, replace: bool = False
) -> Callable[[StepT], StepT]: ...


@overload
def register_step_type(
    name: str, cls: StepT, *, registry: StepRegistry | None = None, replace: bool = False
) -> StepT: ...


def register_step_type(
    name: str, cls: StepT | None = None, *, registry: StepRegistry | None = None, replace: bool = False
) -> StepT | Callable[[StepT], StepT]:
    """Register a step type: ``register_step_type("name", Cls)`` or ``@register_step_type("name")``.

    Registers in the default registry unless ``registry`` is given. Returns the class (or a decorator).
    Raises InvalidInput for a bad name or a name already taken (pass ``replace=True`` to override).
    """
    target = registry or default_registry
    if cls is not None:
        target.register(name, cls, replace=replace)
        return cls

    def decorator(klass: StepT) -> StepT:
        target.register(name, klass, replace=replace)
        return klass

    return decorator


def get_step_type(name: str) -> type[Step]:
    """The step class registered as ``name`` in the default registry. Raises InvalidInput if unknown."""
    return default_registry.get(name)
