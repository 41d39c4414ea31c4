"""Scriptable stand-ins for model APIs, for capturing real agent CLI output and for end-to-end
tests: the Anthropic Messages API (`anthropic.AnthropicStub`), the OpenAI Responses API
(`openai.OpenAIResponsesStub`) and Gemini's Generative Language API (`gemini.GeminiStub`), all
streaming (SSE) with their usage fields.

Standard library only, so they also run with the agent image's own ``python3``:
``python3 -m modelstubs anthropic --port 8788 --script turns.json`` (see ``__main__``).
A script is a list of turns; each request that offers tools takes the next one.
"""

from .script import Depends, ErrorTurn, ModelScript, TextTurn, ToolTurn, Turn

__all__ = ["Depends", "ErrorTurn", "ModelScript", "TextTurn", "ToolTurn", "Turn"]
