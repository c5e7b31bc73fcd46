"""Typer app behind the ``stagecast`` command: ``serve``, ``chat`` and ``cases run``."""

from __future__ import annotations

import asyncio
import logging
import sys
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from stagecast.cli.render import ChatRenderer

app = typer.Typer(
    name="stagecast",
    help="A streaming gateway for LLM stages.",
    no_args_is_help=True,
    add_completion=False,
)
cases_app = typer.Typer(
    name="cases",
    help="A test bench: run TOML cases against a gateway and check what they expect.",
    no_args_is_help=True,
)
app.add_typer(cases_app)

ConfigOpt = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="stagecast.toml (default: $STAGECAST_CONFIG)"),
]
ServerOpt = Annotated[
    str | None,
    typer.Option(
        "--server",
        "-s",
        envvar="STAGECAST_URL",
        show_envvar=False,
        help="Gateway URL (default: $STAGECAST_URL or http://127.0.0.1:8000)",
    ),
]
ApiKeyOpt = Annotated[
    str | None,
    typer.Option(
        "--api-key",
        envvar="STAGECAST_API_KEY",
        show_envvar=False,
        help="API key sent as a bearer token (default: $STAGECAST_API_KEY)",
    ),
]


class Mode(StrEnum):
    """Which kind of stage to run."""

    chat = "chat"
    tools = "tools"
    tools_synthesis = "tools+synthesis"


@app.command()
def serve(
    config: ConfigOpt = None,
    host: Annotated[str | None, typer.Option(help="Bind address")] = None,
    port: Annotated[int | None, typer.Option(help="Port")] = None,
    insecure_no_auth: Annotated[
        bool,
        typer.Option(
            "--insecure-no-auth",
            help="Serve a non-loopback address without API keys (trusted networks only)",
        ),
    ] = False,
) -> None:
    """Serve the gateway (the embedded model when nothing is configured)."""
    # Imported here: the client commands must not pay for loading the server.
    from stagecast.config import load_settings
    from stagecast.errors import ConfigError
    from stagecast.server import run_server

    overrides: dict[str, object] = {}
    if host is not None:
        overrides["host"] = host
    if port is not None:
        overrides["port"] = port
    if insecure_no_auth:
        overrides["insecure_no_auth"] = True
    try:
        settings = load_settings(config, **overrides)
        run_server(settings)
    except ConfigError as exc:
        typer.echo(f"stagecast: {exc.message}", err=True)
        raise typer.Exit(2) from exc


@app.command()
def chat(
    prompt: Annotated[str, typer.Argument(help="What to ask")],
    model: Annotated[str | None, typer.Option("--model", "-m", help="Role to use")] = None,
    system: Annotated[str | None, typer.Option(help="System prompt")] = None,
    max_tokens: Annotated[int | None, typer.Option(min=1, help="Token limit per phase")] = None,
    temperature: Annotated[float | None, typer.Option(min=0, max=2)] = None,
    mode: Annotated[
        Mode | None,
        typer.Option(help="chat, tools (tool results only) or tools+synthesis"),
    ] = None,
    tools_mode: Annotated[
        bool, typer.Option("--tools", help="Call tools and show their results (mode tools)")
    ] = False,
    synthesis: Annotated[
        bool,
        typer.Option("--synthesis", help="Call tools, then answer from their results"),
    ] = False,
    tool: Annotated[
        list[str] | None,
        typer.Option(
            "--tool", "-t", help="Offer this tool (repeatable); implies --synthesis by default"
        ),
    ] = None,
    tool_choice: Annotated[
        str | None, typer.Option(help="auto, none, required or a tool name to force")
    ] = None,
    max_tool_rounds: Annotated[int | None, typer.Option(min=1, max=16)] = None,
    show_reasoning: Annotated[
        bool, typer.Option("--show-reasoning", help="Show a reasoning model's thinking, dimmed")
    ] = False,
    json_lines: Annotated[
        bool, typer.Option("--json", help='Print every event as a JSON line {"id","event","data"}')
    ] = False,
    plain: Annotated[
        bool, typer.Option("--plain", help="Only the answer text, even on a terminal")
    ] = False,
    stage_id: Annotated[str | None, typer.Option(help="Stage id (default: a new one)")] = None,
    server: ServerOpt = None,
    api_key: ApiKeyOpt = None,
) -> None:
    """Ask one question and show the answer as it streams; Ctrl-C cancels the stage."""
    from stagecast.cli.chat import ChatRequest, StageMode, run_chat

    _client_logging()
    chosen: StageMode
    if mode is not None:
        chosen = mode.value
    elif synthesis:
        chosen = "tools+synthesis"
    elif tools_mode:
        chosen = "tools"
    elif tool or tool_choice or max_tool_rounds:
        chosen = "tools+synthesis"
    else:
        chosen = "chat"
    request = ChatRequest(
        prompt=prompt,
        mode=chosen,
        model=model,
        system=system,
        max_tokens=max_tokens,
        temperature=temperature,
        tools=tuple(tool or ()),
        tool_choice=tool_choice,
        max_tool_rounds=max_tool_rounds,
        stage_id=stage_id,
    )
    renderer = _chat_renderer(json_lines=json_lines, plain=plain, show_reasoning=show_reasoning)
    code = asyncio.run(run_chat(request, renderer, server=server, api_key=api_key))
    raise typer.Exit(code)


def _chat_renderer(*, json_lines: bool, plain: bool, show_reasoning: bool) -> ChatRenderer:
    from stagecast.cli.render import JsonRenderer, PlainRenderer, RichRenderer

    if json_lines:
        return JsonRenderer()
    if plain or not sys.stdout.isatty():
        return PlainRenderer()
    from rich.console import Console

    return RichRenderer(
        Console(highlight=False),
        Console(stderr=True, highlight=False),
        show_reasoning=show_reasoning,
    )


@cases_app.command("run")
def cases_run(
    file: Annotated[Path, typer.Argument(help="TOML file of \\[\\[cases]] tables", dir_okay=False)],
    server: ServerOpt = None,
    api_key: ApiKeyOpt = None,
    concurrency: Annotated[int, typer.Option(min=1, help="Cases run at once")] = 4,
    filter_: Annotated[
        str | None,
        typer.Option("--filter", "-k", help="Only cases whose name contains this (any case)"),
    ] = None,
    junit: Annotated[
        Path | None, typer.Option("--junit", help="Write JUnit XML results here", dir_okay=False)
    ] = None,
    timeout: Annotated[
        float, typer.Option(min=0.1, help="Seconds a case may take without its own within_s")
    ] = 600.0,
) -> None:
    """Run the cases of FILE; exit 1 if any fails, 2 if the file is invalid."""
    from stagecast.cli.bench import run_cases_command

    _client_logging()
    code = run_cases_command(
        file,
        server=server,
        api_key=api_key,
        concurrency=concurrency,
        name_filter=filter_,
        junit=junit,
        timeout=timeout,
    )
    raise typer.Exit(code)


def _client_logging() -> None:
    # The client commands own the terminal: per-request INFO lines (httpx) would garble it.
    logging.getLogger().setLevel(logging.WARNING)


def main() -> None:
    """Entry point of the ``stagecast`` script."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    app(prog_name="stagecast")


if __name__ == "__main__":
    main()
