"""The ``ai`` step: one chat completion through the ``openai`` client and the configured provider.

Configuration comes from settings (``OPENAI_BASE_URL``, ``OPENAI_API_KEY``, ``CHAT_MODEL``). With neither
a key nor a base URL the step fails with ConfigurationError when it runs; importing or registering never
needs them.
The client is built lazily once per process and configuration (:func:`get_chat_client`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pydantic import Field, field_validator

from config.settings import Settings
from fabric.errors import BackendUnavailable, ConfigurationError
from fabric.registry import PerProcess
from workflows.steps.base import Step, StepConfig, StepContext, StepFailed, register_step_type
from workflows.steps.templating import check_template, render

if TYPE_CHECKING:
    from openai import OpenAI

#: a provider that needs no key (a local server) still gets one, because the openai client insists on it
_NO_KEY = "not-needed"


def get_chat_client(settings: Settings) -> OpenAI:
    """The process's OpenAI client for ``settings``. Raises ConfigurationError with no provider configured."""
    key = settings.openai_api_key.get_secret_value() if settings.openai_api_key else None
    base_url = settings.openai_base_url
    if not key and not base_url:
        raise ConfigurationError(
            "the ai step needs a chat provider: set OPENAI_API_KEY (api.openai.com) or OPENAI_BASE_URL "
            "(an OpenAI-compatible server)"
        )
    return _clients.get(base_url, key)


def _connect(base_url: str | None, key: str | None) -> OpenAI:
    from openai import OpenAI

    # retries are the workflow's business (the node's retry policy), not the client's
    return OpenAI(api_key=key or _NO_KEY, base_url=base_url, max_retries=0)


_clients: PerProcess[OpenAI] = PerProcess("chat clients", _connect)


def reset_chat_clients() -> None:
    """Close and forget the process's clients (tests that change the provider settings)."""
    _clients.reset()


class AiConfig(StepConfig):
    prompt: str = Field(min_length=1, description="User message; a template over the input ({field}).")
    system: str | None = Field(None, description="System message; a template too.")
    model: str | None = Field(None, description="Default: CHAT_MODEL.")
    temperature: float | None = Field(None, ge=0, le=2)
    max_tokens: int | None = Field(None, ge=1, le=100_000)

    @field_validator("prompt", "system")
    @classmethod
    def _template(cls, value: str | None) -> str | None:
        if value is not None:
            check_template(value)
        return value


@register_step_type("ai")
class AiStep(Step):
    """Ask the chat model; output ``{content, model, finish_reason, usage}``."""

    Config = AiConfig

    def run(self, data: Any, context: StepContext) -> Any:
        import openai

        cfg = self.config
        assert isinstance(cfg, AiConfig)
        client = get_chat_client(context.settings)
        messages: list[Any] = []
        if cfg.system is not None:
            messages.append({"role": "system", "content": render(cfg.system, data)})
        messages.append({"role": "user", "content": render(cfg.prompt, data)})
        model = cfg.model or context.settings.chat_model
        options: dict[str, Any] = {}
        if cfg.temperature is not None:
            options["temperature"] = cfg.temperature
        if cfg.max_tokens is not None:
            options["max_tokens"] = cfg.max_tokens
        try:
            response = client.chat.completions.create(
                model=model, messages=messages, timeout=context.timeout, **options
            )
        except (openai.APIConnectionError, openai.RateLimitError, openai.InternalServerError) as exc:
            raise BackendUnavailable(f"chat provider: {type(exc).__name__}: {exc}") from exc
        except (openai.AuthenticationError, openai.PermissionDeniedError) as exc:
            raise ConfigurationError(
                f"chat provider refused the credentials (OPENAI_API_KEY): {exc}"
            ) from exc
        except openai.APIStatusError as exc:
            if exc.status_code >= 500:
                raise BackendUnavailable(f"chat provider answered {exc.status_code}: {exc}") from exc
            raise StepFailed(f"chat provider answered {exc.status_code}: {exc}") from exc
        if not response.choices:
            raise StepFailed(f"chat provider returned no choices for model {model!r}")
        choice = response.choices[0]
        content = choice.message.content
        if content is None:
            raise StepFailed(f"chat provider returned no content (finish_reason {choice.finish_reason})")
        return {
            "content": content,
            "model": response.model,
            "finish_reason": choice.finish_reason,
            "usage": response.usage.model_dump() if response.usage else None,
        }
