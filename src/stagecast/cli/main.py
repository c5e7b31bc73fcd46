"""Typer app behind the ``stagecast`` command."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Annotated

import typer

from stagecast.config import load_settings
from stagecast.errors import ConfigError

app = typer.Typer(
    name="stagecast",
    help="A streaming gateway for LLM stages.",
    no_args_is_help=True,
    add_completion=False,
)

ConfigOpt = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="stagecast.toml (default: $STAGECAST_CONFIG)"),
]
ServerOpt = Annotated[
    str | None,
    typer.Option("--server", "-s", help="Gateway URL (default: $STAGECAST_URL or :8000)"),
]


@app.command()
def serve(
    config: ConfigOpt = None,
    host: Annotated[str | None, typer.Option(help="Bind address")] = None,
    port: Annotated[int | None, typer.Option(help="Port")] = None,
) -> None:
    """Serve the gateway (the embedded model when nothing is configured)."""
    from stagecast.server import run_server

    overrides: dict[str, object] = {}
    if host is not None:
        overrides["host"] = host
    if port is not None:
        overrides["port"] = port
    try:
        settings = load_settings(config, **overrides)
    except ConfigError as exc:
        typer.echo(f"stagecast: {exc.message}", err=True)
        raise typer.Exit(2) from exc
    run_server(settings)


@app.command()
def chat(
    prompt: Annotated[str, typer.Argument(help="What to ask")],
    model: Annotated[str | None, typer.Option("--model", "-m", help="Role to use")] = None,
    system: Annotated[str | None, typer.Option(help="System prompt")] = None,
    max_tokens: Annotated[int | None, typer.Option(help="Token limit of the answer")] = None,
    server: ServerOpt = None,
) -> None:
    """Ask one question and print the answer as it streams."""
    from stagecast.cli.chat import run_chat

    code = asyncio.run(
        run_chat(prompt, model=model, system=system, max_tokens=max_tokens, server=server)
    )
    raise typer.Exit(code)


def main() -> None:
    """Entry point of the ``stagecast`` script."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    app(prog_name="stagecast")


if __name__ == "__main__":
    main()
