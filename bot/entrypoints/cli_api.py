"""The HTTP side of the ``bosun`` commands that talk to a (possibly remote) Bosun over its REST
API: connection options, one client, and the mapping of every failure to a message and an exit
code (docs/cli.md).

Answers are parsed into the read models of ``bot.control.views`` at this edge; problems (RFC
9457) become :class:`CliError` with the exit code their status stands for.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from typing import Any, Concatenate, ParamSpec, TypeVar
from urllib.parse import urlsplit

import click
import httpx
from pydantic import BaseModel, ValidationError

OK, FAILURE, USAGE, NOT_FOUND, REFUSED, INTERRUPTED = 0, 1, 2, 3, 4, 130
DEFAULT_URL = "http://127.0.0.1:8000"
CREATE_HINT = (
    "create one on the Bosun host with `bosun token create --name NAME --scope read` "
    "and pass it with --token or BOSUN_TOKEN"
)

P = ParamSpec("P")
R = TypeVar("R")
M = TypeVar("M", bound=BaseModel)


class CliError(click.ClickException):
    """A failure the user should read: printed as ``Error: …`` on stderr, exits 1."""

    exit_code = FAILURE


class Invalid(CliError):
    """The request is not valid (exit 2, like a usage error)."""

    exit_code = USAGE


class NotFound(CliError):
    """No such run (or other resource), or not visible to the token (exit 3)."""

    exit_code = NOT_FOUND


class Refused(CliError):
    """Bosun refused: the token (401), its scope (403) or the run's state (409) (exit 4)."""

    exit_code = REFUSED


class Problem(BaseModel):
    """An RFC 9457 problem as the API sends it."""

    type: str = "about:blank"
    title: str = ""
    status: int = 0
    detail: str = ""
    errors: list[dict[str, Any]] = []

    @property
    def slug(self) -> str:
        return self.type.rsplit("/", 1)[-1]


class Api:
    """A client of one Bosun's ``/api/v1``, authenticated with a bearer token."""

    def __init__(
        self,
        url: str,
        token: str,
        *,
        timeout: float = 30.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self._client = httpx.Client(
            base_url=self.url,
            headers={
                "Authorization": f"Bearer {token}",
                "Accept": "application/json",
                "X-Bosun-Client": "cli",  # audit rows of actions record the source `cli`
            },
            timeout=httpx.Timeout(timeout, connect=min(timeout, 10.0)),
            transport=transport,
        )

    def close(self) -> None:
        self._client.close()

    def request(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, Any] | None = None,
        body: dict[str, Any] | None = None,
    ) -> httpx.Response:
        """Send one request; any answer but a 2xx raises :class:`CliError`."""
        try:
            response = self._client.request(method, path, params=params, json=body)
        except httpx.ConnectError as exc:
            raise CliError(
                f"cannot connect to Bosun at {self.url}: {_reason(exc)}. Is it running there? "
                "Set the address with --url or BOSUN_URL."
            ) from exc
        except httpx.TimeoutException as exc:
            raise CliError(
                f"Bosun at {self.url} did not answer {method} {path} in time ({_reason(exc)}); "
                "retry, or raise --timeout."
            ) from exc
        except httpx.HTTPError as exc:
            raise CliError(f"request to Bosun at {self.url} failed: {_reason(exc)}") from exc
        if response.is_success:
            return response
        raise self._failure(response)

    def get(self, path: str, model: type[M], **params: Any) -> M:
        return self.parse(self.request("GET", path, params=_params(params)), model)

    def post(self, path: str, body: dict[str, Any], model: type[M]) -> M:
        return self.parse(self.request("POST", path, body=body), model)

    def parse(self, response: httpx.Response, model: type[M]) -> M:
        try:
            return model.model_validate(self._json(response))
        except ValidationError as exc:
            raise CliError(
                f"{response.request.url} answered with a {model.__name__} this bosun does not "
                f"understand (a different Bosun version?): {exc.error_count()} error(s), "
                f"first: {exc.errors()[0]['msg']}"
            ) from exc

    def _json(self, response: httpx.Response) -> Any:
        try:
            return response.json()
        except ValueError as exc:
            raise CliError(
                f"{response.request.url} did not answer with JSON: is {self.url} a Bosun? "
                "Check --url or BOSUN_URL."
            ) from exc

    def _failure(self, response: httpx.Response) -> CliError:
        status, where = response.status_code, response.request.url
        try:
            problem = Problem.model_validate(response.json())
        except ValueError:
            problem = None
        if problem is None or not problem.type.startswith("/api/v1/problems/"):
            return CliError(
                f"{where} answered {status} {response.reason_phrase} and is not Bosun's API: "
                f"check --url or BOSUN_URL ({self.url})."
            )
        detail = problem.detail or problem.title
        if status == 401:
            return Refused(f"Bosun at {self.url} refused the token: {detail}; {CREATE_HINT}.")
        if status == 403:
            return Refused(f"not allowed: {detail}")
        if status == 404:
            return NotFound(f"not found: {detail}")
        if status == 409:
            return Refused(f"refused: {detail}")
        if status == 405:
            return CliError(
                f"Bosun at {self.url} does not offer {response.request.method} "
                f"{response.request.url.path} (an older version?): {detail}"
            )
        if status in (400, 422):
            fields = "; ".join(
                f"{e.get('field') or '?'}: {e.get('message', '')}" for e in problem.errors
            )
            return Invalid(f"invalid request: {detail}" + (f" ({fields})" if fields else ""))
        return CliError(f"Bosun at {self.url} failed ({status}): {detail}")


def _reason(exc: Exception) -> str:
    text = str(exc).strip()
    if "Connection refused" in text or "Errno 111" in text:
        return "connection refused"
    return text or type(exc).__name__


def _params(params: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in params.items() if value not in (None, [], ())}


def _check_url(_ctx: click.Context, _param: click.Parameter, value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise click.BadParameter(f"{value!r} is not an http(s) URL like {DEFAULT_URL}")
    return value


API_OPTIONS = (
    click.option(
        "--url",
        envvar="BOSUN_URL",
        default=DEFAULT_URL,
        show_default=True,
        show_envvar=True,
        callback=_check_url,
        help="Bosun's address.",
    ),
    click.option(
        "--token",
        envvar="BOSUN_TOKEN",
        show_envvar=True,
        help="API token (`bosun token create` on the Bosun host).",
    ),
    click.option(
        "--timeout",
        type=click.FloatRange(0.1, 3600),
        default=30.0,
        show_default=True,
        envvar="BOSUN_TIMEOUT",
        show_envvar=True,
        help="Seconds to wait for each answer.",
    ),
    click.option(
        "--format",
        "fmt",
        type=click.Choice(["table", "json"]),
        default="table",
        show_default=True,
        help="Human-readable text, or JSON (docs/cli.md has its shape).",
    ),
)


def api_command(func: Callable[Concatenate[Api, str, P], R]) -> Callable[..., R]:
    """Give a command ``--url``, ``--token``, ``--timeout`` and ``--format`` (listed after its
    own options), and call it with an :class:`Api` and the format (``table`` or ``json``);
    Ctrl-C exits 130."""

    @functools.wraps(func)
    def wrapper(
        url: str, token: str | None, timeout: float, fmt: str, *args: P.args, **kwargs: P.kwargs
    ) -> R:
        if not token:
            from bot.entrypoints.localtoken import read_local_token

            token = read_local_token()  # on the Bosun host: the token `bosun up` wrote
        if not token:
            raise click.UsageError(f"no API token: {CREATE_HINT}.")
        api = Api(url, token, timeout=timeout)
        try:
            return func(api, fmt, *args, **kwargs)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            raise click.exceptions.Exit(INTERRUPTED) from None
        finally:
            api.close()

    own = list(vars(func).get("__click_params__", []))
    vars(wrapper)["__click_params__"] = []  # click keeps a command's parameters here
    for option in reversed(API_OPTIONS):  # and lists them in reverse
        option(wrapper)
    vars(wrapper)["__click_params__"].extend(own)
    return wrapper


def emit_json(data: Any) -> None:
    """Print one JSON document (models as the API sends them)."""
    if isinstance(data, BaseModel):
        data = data.model_dump(mode="json")
    elif isinstance(data, list):
        data = [d.model_dump(mode="json") if isinstance(d, BaseModel) else d for d in data]
    click.echo(json.dumps(data, indent=2, default=str))
