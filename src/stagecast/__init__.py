"""stagecast: a streaming gateway for LLM stages."""

__version__ = "0.1.0"
