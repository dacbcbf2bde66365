"""The request bodies: OpenAI's completions and chat requests, with charlstm's own
controls beside OpenAI's fields (``charlstm generate``'s options, with underscores).

:class:`Sampling` holds what both requests share; :class:`CompletionBody` and
:class:`ChatBody` add their own. A character is a token here. Every field of OpenAI's
schemas is accepted with OpenAI's meaning, except those a character model cannot honour,
which are refused with one message (``suffix``, ``tools``...); ``user`` is accepted and
ignored. A field of neither schema is ignored and logged once per name
(:meth:`~charlstm.serve.state.ServerState.ignore`). ``null`` is the default of any
OpenAI field.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from charlstm.generation.settings import DEFAULT_PENALTY_WINDOW

#: ``max_tokens`` when a request gives none (OpenAI's is 16; charlstm's generate writes 100).
DEFAULT_MAX_TOKENS = 100


class StreamOptions(BaseModel):
    include_usage: bool | None = None


class Sampling(BaseModel):
    """The fields both requests share: OpenAI's, then charlstm's."""

    model_config = ConfigDict(extra="allow")

    model: str | None = None
    max_tokens: int | None = None
    temperature: float | None = Field(None, description="0: the likeliest character (greedy)")
    top_p: float | None = None
    seed: int | None = None
    stop: str | list[str] | None = None
    n: int | None = None
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    logit_bias: dict[str, float] | None = None
    user: str | None = None  # accepted and ignored
    # charlstm's own controls
    top_k: int | None = None
    greedy: bool = False
    repetition_penalty: float = 1.0
    penalty_window: int = DEFAULT_PENALTY_WINDOW
    stop_at: str | None = None
    lines: int | None = None
    cache: bool = False
    cache_window: int | None = None
    cache_flatness: float | None = None
    cache_mix: float | None = None
    dynamic: bool = False
    dynamic_lr: float | None = None
    dynamic_segment: int | None = None
    # a poem in a form (charlstm generate --form ...): the prompt is its title, may be ""
    form: str | None = None
    line_lengths: list[int] | None = None
    acrostic: str | None = None
    rhyme: str | None = None
    first_line_rhyme: bool | None = None
    tone: bool | None = None
    candidates: int | None = None
    copy_filter: bool | None = None

    def unknown(self) -> list[str]:
        """The fields of the body that no schema here knows."""
        return list(self.model_extra or {})

    @property
    def streaming(self) -> bool:
        return bool(self.stream)

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class CompletionBody(Sampling):
    """``POST /v1/completions``: a ``prompt`` (a string, a list of them, or characters'
    vocabulary indices as OpenAI's token arrays), ``echo``, ``logprobs`` (0-5),
    ``best_of``, ``suffix`` (refused when not empty)."""

    prompt: str | list[str] | list[int] | list[list[int]]
    echo: bool | None = None
    logprobs: int | None = None
    best_of: int | None = None
    suffix: str | None = None


class ChatMessage(BaseModel):
    """One message; the content a string or OpenAI's list of parts (text parts only)."""

    model_config = ConfigDict(extra="allow")

    role: str
    content: str | list[dict[str, Any]] | None = None

    def text(self) -> str:
        if self.content is None or isinstance(self.content, str):
            return self.content or ""
        return "".join(part.get("text", "") for part in self.content if part.get("type") == "text")


class ChatBody(Sampling):
    """``POST /v1/chat/completions``: ``messages`` (the last user message is the prefix),
    ``logprobs`` (bool) with ``top_logprobs`` (0-20), ``max_completion_tokens`` (OpenAI's
    newer name of ``max_tokens``), and the fields of OpenAI's chat schema that a
    character model cannot honour: ``tools``, ``functions``, ``response_format`` other
    than text, ``audio`` (refused)."""

    messages: list[ChatMessage]
    logprobs: bool | None = None
    top_logprobs: int | None = None
    max_completion_tokens: int | None = None
    tools: list[Any] | None = None
    tool_choice: Any = None
    functions: list[Any] | None = None
    function_call: Any = None
    response_format: dict[str, Any] | None = None
    audio: Any = None
    modalities: list[str] | None = None
    parallel_tool_calls: bool | None = None  # accepted and ignored (no tools)
    store: bool | None = None  # accepted and ignored: nothing is stored
    metadata: dict[str, Any] | None = None  # accepted and ignored
    service_tier: str | None = None  # accepted and ignored


#: The fields of both bodies, for ``/v1/models``'s ``options``.
OPTIONS = sorted(
    (set(CompletionBody.model_fields) | set(ChatBody.model_fields))
    - {"model", "prompt", "messages"}
)
