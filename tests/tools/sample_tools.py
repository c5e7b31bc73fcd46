"""Tools loaded by name in the registry tests (``ToolRegistry.load_module``)."""

from typing import Annotated

from pydantic import Field

from stagecast.tools import tool

NOT_A_TOOL = "ignored by load_module"


@tool
def shout(text: Annotated[str, Field(description="What to shout.")]) -> str:
    """Return the text in capitals."""
    return text.upper()


@tool(name="count_words", timeout=3.0)
async def words(text: str) -> int:
    """Count the words of a text."""
    return len(text.split())


def helper() -> None:
    """A plain function: not a tool."""
