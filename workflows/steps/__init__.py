"""Step types and their registry. Importing this package registers the built-in types:
``input``, ``process``, ``transform``, ``data_validation``, ``condition``, ``http``, ``ai``, ``output``.

Add a type with ``@register_step_type("name")`` on a :class:`Step` subclass.
"""

from workflows.steps import ai, basic, http, process
from workflows.steps.base import (
    RetryPolicy,
    Step,
    StepConfig,
    StepContext,
    StepFailed,
    StepRegistry,
    StepResult,
    StepTimeout,
    default_registry,
    get_step_type,
    register_step_type,
)
from workflows.steps.process import register_operation

__all__ = [
    "RetryPolicy",
    "Step",
    "StepConfig",
    "StepContext",
    "StepFailed",
    "StepRegistry",
    "StepResult",
    "StepTimeout",
    "ai",
    "basic",
    "default_registry",
    "get_step_type",
    "http",
    "process",
    "register_operation",
    "register_step_type",
]
