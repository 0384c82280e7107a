"""The ``http`` step: one request with httpx, a timeout, and no way into private networks by default.

Private, loopback, link-local, multicast, reserved and unspecified addresses are refused unless
``settings.http_allow_private`` is true: at registration for a literal IP or ``localhost`` in the URL, and at
run time after DNS resolution. The request then goes to the address that was checked (the URL's host is
replaced by it; ``Host`` and TLS SNI keep the name), so a second DNS answer cannot redirect it. Redirects are
not followed, for the same reason.

Errors: connection failures, timeouts, 429 and 5xx are BackendUnavailable (transient, retried by the node's
policy); other 4xx answers and refused destinations fail the step for good.
"""

from __future__ import annotations

import ipaddress
import json
import socket
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

import httpx
from pydantic import Field, field_validator

from config import get_settings
from fabric.errors import BackendUnavailable, InvalidInput
from workflows.steps.base import Step, StepConfig, StepContext, StepFailed, register_step_type

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class DestinationRefused(StepFailed, InvalidInput):
    """The URL points at an address the configuration does not let http steps reach."""


def address_forbidden(address: IPAddress) -> bool:
    """True for an address an http step must not reach unless private destinations are allowed."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return (
        not address.is_global
        or address.is_private
        or address.is_loopback
        or address.is_link_local
        or address.is_multicast
        or address.is_reserved
        or address.is_unspecified
    )


def _literal_ip(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def check_url(url: str, *, allow_private: bool) -> str:
    """Check ``url`` without resolving it: http(s), a host, and not a literal private address or localhost.

    Returns the host. Raises InvalidInput (DestinationRefused for a forbidden destination).
    """
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise InvalidInput(f"url {url!r}: scheme must be http or https")
    host = parts.hostname
    if not host:
        raise InvalidInput(f"url {url!r} has no host")
    if parts.username or parts.password:
        raise InvalidInput(f"url {url!r}: credentials in the URL are not allowed; use headers")
    if allow_private:
        return host
    literal = _literal_ip(host)
    if literal is not None and address_forbidden(literal):
        raise DestinationRefused(
            f"url {url!r}: {host} is a private/loopback/reserved address "
            "(set HTTP_ALLOW_PRIVATE=true to allow)"
        )
    bare = host.rstrip(".")
    if bare == "localhost" or bare.endswith(".localhost"):
        raise DestinationRefused(f"url {url!r}: {host} is loopback (set HTTP_ALLOW_PRIVATE=true to allow)")
    return host


def resolve_destination(host: str, port: int, *, allow_private: bool) -> str:
    """Resolve ``host`` and return one address it may be reached at.

    Raises DestinationRefused if any resolved address is forbidden (a name with one private answer among
    public ones is refused as a whole), BackendUnavailable if resolution fails.
    """
    literal = _literal_ip(host)
    if literal is not None:
        addresses: list[IPAddress] = [literal]
    else:
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except socket.gaierror as exc:
            raise BackendUnavailable(f"cannot resolve {host!r}: {exc}") from exc
        addresses = []
        for info in infos:
            address = ipaddress.ip_address(str(info[4][0]).split("%", 1)[0])
            if address not in addresses:
                addresses.append(address)
        if not addresses:
            raise BackendUnavailable(f"{host!r} resolved to no address")
    if not allow_private:
        bad = [str(a) for a in addresses if address_forbidden(a)]
        if bad:
            raise DestinationRefused(
                f"{host} resolves to a private/loopback/reserved address ({', '.join(bad)}); "
                "set HTTP_ALLOW_PRIVATE=true to allow"
            )
    return str(addresses[0])


class HttpConfig(StepConfig):
    url: str = Field(min_length=1)
    method: Literal["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD"] = "GET"
    headers: dict[str, str] = Field(default_factory=dict)
    params: dict[str, str] = Field(default_factory=dict, description="Query parameters.")
    json_body: Any = Field(None, description="A JSON body to send (exclusive with send_input).")
    send_input: bool = Field(False, description="Send the step's input as the JSON body.")

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        check_url(value, allow_private=get_settings().http_allow_private)
        return value

    @field_validator("method", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value


@register_step_type("http")
class HttpStep(Step):
    """Send one request; output ``{status_code, headers, json}`` (or ``text`` when the body is not JSON)."""

    Config = HttpConfig

    def run(self, data: Any, context: StepContext) -> Any:
        cfg = self.config
        assert isinstance(cfg, HttpConfig)
        settings = context.settings
        allow_private = settings.http_allow_private
        host = check_url(cfg.url, allow_private=allow_private)
        parts = urlsplit(cfg.url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
        address = resolve_destination(host, port, allow_private=allow_private)
        netloc = f"[{address}]" if ":" in address else address
        if parts.port:
            netloc += f":{parts.port}"
        pinned_url = urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
        headers = {"Host": parts.netloc.rsplit("@", 1)[-1], **cfg.headers}
        extensions = {"sni_hostname": host} if parts.scheme == "https" else {}
        body = data if cfg.send_input else cfg.json_body
        limit = settings.workflow_http_max_response_bytes
        try:
            with (
                httpx.Client(timeout=context.timeout, follow_redirects=False) as client,
                client.stream(
                    cfg.method,
                    pinned_url,
                    headers=headers,
                    params=cfg.params or None,
                    json=body,
                    extensions=extensions,
                ) as response,
            ):
                content = bytearray()
                for chunk in response.iter_bytes():
                    content.extend(chunk)
                    if len(content) > limit:
                        raise StepFailed(f"{cfg.method} {cfg.url}: response body larger than {limit} bytes")
        except httpx.TimeoutException as exc:
            raise BackendUnavailable(f"{cfg.method} {cfg.url}: timed out after {context.timeout}s") from exc
        except httpx.TransportError as exc:
            raise BackendUnavailable(f"{cfg.method} {cfg.url}: {type(exc).__name__}: {exc}") from exc
        status = response.status_code
        text = content.decode(response.encoding or "utf-8", errors="replace")
        if status == 429 or status >= 500:
            raise BackendUnavailable(f"{cfg.method} {cfg.url} answered {status}: {text[:200]}")
        if status >= 400:
            raise StepFailed(f"{cfg.method} {cfg.url} answered {status}: {text[:200]}")
        result: dict[str, Any] = {"status_code": status, "headers": dict(response.headers)}
        try:
            result["json"] = json.loads(text) if text else None
        except ValueError:
            result["text"] = text
        return result
