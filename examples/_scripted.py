"""A scripted stand-in for a tool-calling chat model, so the agent examples run offline (no network, no weights).

``ScriptedChatModel(reply=fn)`` answers each turn with ``fn(messages)``: an ``AIMessage`` that calls a tool or
replies. With a real model (ChatOpenAI, ChatOllama, ...) pass that to ``create_agent`` instead; nothing else changes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatResult


class ScriptedChatModel(BaseChatModel):
    """A chat model whose next message is ``reply(messages)``; it accepts any tools (the script knows them)."""

    reply: Callable[[list[BaseMessage]], AIMessage]

    @property
    def _llm_type(self) -> str:
        return "scripted-tool-calling"

    def bind_tools(self, tools: Sequence[Any], **kwargs: Any) -> ScriptedChatModel:
        return self

    def _generate(
        self, messages: list[BaseMessage], stop: Any = None, run_manager: Any = None, **kw: Any
    ) -> ChatResult:
        return ChatResult(generations=[ChatGeneration(message=self.reply(messages))])
