"""What every service command shares: the --url/--token/--json options, exit codes, output, error handling."""

from __future__ import annotations

import contextlib
import enum
import functools
import inspect
import json
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from pydantic import BaseModel
from rich.console import Console

from diet_client.client import DietClient
from diet_client.errors import ApiError, ChecksumMismatch, DietError, ServiceUnreachable

DEFAULT_URL = "http://127.0.0.1:8000"
DEFAULT_RETRIES = 4  # 0.5 + 1 + 2 + 4 s of waiting before giving up


class ExitCode(enum.IntEnum):
    OK = 0
    REFUSED = 1  # the service said no (4xx): the problem's title and detail are printed
    USAGE = 2  # bad command line (click's own code)
    UNAVAILABLE = 3  # no answer, a 5xx after the retries, or a download that failed verification
    JOB_UNSUCCESSFUL = 4  # a waited-for job failed, was cancelled, or was still running at --timeout


EXIT_CODES_HELP = (
    "Exit codes: 0 ok; 1 the service refused the request (4xx; its problem title and detail are printed); "
    "2 usage error; 3 the service cannot be reached or failed (5xx) after retries, or a download failed "
    "its sha256 check; 4 a job waited for (--wait, jobs wait) failed, was cancelled or outlived --timeout. "
    "Service commands read the URL and token from --url/--token or DIET_URL/DIET_TOKEN, and retry "
    "unanswered requests and 429/502/503/504 answers DIET_RETRIES times (default 4) with growing delays."
)

UrlOption = Annotated[
    str, typer.Option("--url", envvar="DIET_URL", help="base URL of the DIET service", rich_help_panel="Service")
]
TokenOption = Annotated[
    str | None,
    typer.Option("--token", envvar="DIET_TOKEN", help="API token", show_default=False, rich_help_panel="Service"),
]
JsonOption = Annotated[bool, typer.Option("--json", help="print the answer as JSON on stdout, for scripts")]
LimitOption = Annotated[int, typer.Option(min=1, max=500)]
OffsetOption = Annotated[int, typer.Option(min=0)]

Answer = TypeVar("Answer")


def stdout() -> Console:
    # Off a terminal rich would wrap tables at 80 columns; logs and pipes have room for more.
    return Console(width=None if sys.stdout.isatty() else 160, highlight=False)


def stderr() -> Console:
    return Console(stderr=True, highlight=False)


def show_progress(as_json: bool) -> bool:
    """Progress goes to stderr: always on a terminal, and off one unless the output is JSON for a script."""
    return sys.stderr.isatty() or not as_json


def emit_json(answer: BaseModel | list[BaseModel] | dict[str, Any]) -> None:
    if isinstance(answer, BaseModel):
        data: Any = answer.model_dump(mode="json", by_alias=True)
    elif isinstance(answer, list):
        data = [a.model_dump(mode="json", by_alias=True) for a in answer]
    else:
        data = answer
    typer.echo(json.dumps(data, indent=2))


def fail(message: str, code: ExitCode, as_json: bool, document: dict[str, Any] | None = None) -> typer.Exit:
    """Say what went wrong on stderr (a JSON object with --json) and return the Exit to raise."""
    if as_json:
        typer.echo(json.dumps(document or {"detail": message}), err=True)
    else:
        stderr().print(f"[red]error:[/red] {message}", markup=True, soft_wrap=True)
    return typer.Exit(int(code))


@contextmanager
def connect(url: str, token: str | None, as_json: bool) -> Iterator[DietClient]:
    """A client of the service; the client's errors become messages and exit codes."""
    client = DietClient(url, token, retries=_retries(as_json))
    try:
        yield client
    except ApiError as exc:
        message = f"{exc.title}: {exc.detail}"
        if exc.status == 401 and not token:
            message += " (pass --token or set DIET_TOKEN)"
        document = exc.problem or {"status": exc.status, "title": exc.title, "detail": exc.detail}
        code = ExitCode.REFUSED if exc.is_client_error else ExitCode.UNAVAILABLE
        raise fail(message, code, as_json, document) from exc
    except ServiceUnreachable as exc:
        raise fail(f"cannot reach the DIET service at {url}: {exc}", ExitCode.UNAVAILABLE, as_json) from exc
    except ChecksumMismatch as exc:
        raise fail(str(exc), ExitCode.UNAVAILABLE, as_json) from exc
    except DietError as exc:  # any other client error is the service's or the network's
        raise fail(str(exc), ExitCode.UNAVAILABLE, as_json) from exc
    finally:
        client.close()


def _retries(as_json: bool) -> int:
    value = os.environ.get("DIET_RETRIES", str(DEFAULT_RETRIES))
    if not value.isdigit():
        raise fail(f"DIET_RETRIES must be a whole number, not {value!r}", ExitCode.USAGE, as_json)
    return int(value)


def human_bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "kB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    raise AssertionError("unreachable")


def parse_json_or_file(value: str | None, option: str) -> dict[str, Any] | None:
    """An option given as inline JSON (`{...}`) or as the path of a JSON file."""
    if value is None:
        return None
    try:
        text = value if value.lstrip().startswith("{") else Path(value).read_text()
        parsed = json.loads(text)
    except (OSError, json.JSONDecodeError) as exc:
        raise typer.BadParameter(f"neither a JSON object nor a readable JSON file: {exc}", param_hint=option) from exc
    if not isinstance(parsed, dict):
        raise typer.BadParameter("must be a JSON object", param_hint=option)
    return parsed


@dataclass(frozen=True)
class Service:
    """Where a command's service is and how its answer is printed: what --url, --token and --json said."""

    url: str
    token: str | None
    as_json: bool

    def connect(self) -> contextlib.AbstractContextManager[DietClient]:
        return connect(self.url, self.token, self.as_json)

    def print(self, answer: Answer, render: Callable[[Answer], None]) -> None:
        """The answer as JSON with --json, else as `render` shows it to a person."""
        if self.as_json:
            emit_json(answer)  # type: ignore[arg-type]
        else:
            render(answer)

    def fetch(self, call: Callable[[DietClient], Answer], render: Callable[[Answer], None]) -> None:
        """Fetch-then-print: ask the service (its errors become exit codes), then print the answer."""
        with self.connect() as diet:
            answer = call(diet)
        self.print(answer, render)


_CONNECTION = [
    inspect.Parameter("url", inspect.Parameter.KEYWORD_ONLY, default=DEFAULT_URL, annotation=UrlOption),
    inspect.Parameter("token", inspect.Parameter.KEYWORD_ONLY, default=None, annotation=TokenOption),
]
_AS_JSON = inspect.Parameter("as_json", inspect.Parameter.KEYWORD_ONLY, default=False, annotation=JsonOption)


def service_command(command: Callable[..., None] | None = None, *, token: bool = True) -> Any:
    """Give a command the --url, --token (unless token=False) and --json options, and pass them as `service`.

    The command declares only its own arguments and a keyword `service: Service`; typer sees the
    options added to its signature, so every command's help lists them the same way, last.
    """

    def wrap(command: Callable[..., None]) -> Callable[..., None]:
        own = [p for p in inspect.signature(command, eval_str=True).parameters.values() if p.name != "service"]
        added = [*(_CONNECTION if token else _CONNECTION[:1]), _AS_JSON]

        @functools.wraps(command)
        def run(*args: Any, url: str, token: str | None = None, as_json: bool, **kwargs: Any) -> None:
            command(*args, service=Service(url, token, as_json), **kwargs)

        run.__signature__ = inspect.Signature([*own, *added])  # type: ignore[attr-defined]
        run.__annotations__ = {p.name: p.annotation for p in [*own, *added]}
        del run.__wrapped__  # typer must read the signature above, not the command's own
        return run

    return wrap(command) if command is not None else wrap
