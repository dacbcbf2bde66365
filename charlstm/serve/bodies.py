"""The request bodies: OpenAI's completions and chat requests, with charlstm's own
controls beside OpenAI's fields (``charlstm generate``'s options, with underscores).

:class:`Sampling` holds what both requests share; :class:`CompletionBody` and
:class:`ChatBody` add their own. charlstm's controls are not written here: they are
generated from the same setting fields as ``charlstm generate``'s options
(:data:`OWN_SETTINGS`, as :mod:`charlstm.cli.options` builds the command line), each under
its key with underscores (:func:`body_name`). A character is a token here. Every field of OpenAI's
schemas is accepted with OpenAI's meaning, except those a character model cannot honour,
which are refused with one message (``suffix``, ``tools``...); ``user`` is accepted and
ignored. A field of neither schema is ignored and logged once per name
(:meth:`~charlstm.serve.state.ServerState.ignore`). ``null`` is the default of any
OpenAI field.
"""

from __future__ import annotations

import typing
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, create_model

from charlstm.fields import keyed_settings
from charlstm.generation.settings import (
    Adaptation,
    CacheConfig,
    DynamicConfig,
    GenerateRequest,
    SamplingConfig,
)
from charlstm.generation.verse.forms import VerseSettings

#: ``max_tokens`` when a request gives none (OpenAI's is 16; charlstm's generate writes 100).
DEFAULT_MAX_TOKENS = 100


class StreamOptions(BaseModel):
    include_usage: bool | None = None


#: How the library's setting names read in a request body (OpenAI's names where OpenAI has
#: the setting).
BODY_NAMES = {"prefixes": "prompt", "length": "max_tokens", "num_samples": "n"}


def body_name(key: str) -> str:
    """The body field of a library setting: ``length`` -> ``max_tokens``, ``cache.mix`` ->
    ``cache_mix``."""
    return BODY_NAMES.get(key, key.replace(".", "_"))


#: charlstm's own controls: ``charlstm generate``'s settings that a body gives beside
#: OpenAI's fields (which hold the rest: ``temperature``, ``top_p``, ``seed``, ``max_tokens``,
#: ``n``, ``stop``). Each: the class, the settings taken (None: every option it offers), and
#: whether a field left out is the setting's default (``True``: the value is used as it is)
#: or null, "not given" (``False``: the class is built from what was given, and a setting
#: given without its switch or form is refused).
OWN_SETTINGS: tuple[tuple[type, tuple[str, ...] | None, bool], ...] = (
    (SamplingConfig, ("top_k", "greedy", "repetition_penalty", "penalty_window"), True),
    (GenerateRequest, ("stop_at", "lines"), True),
    (Adaptation, None, True),
    (CacheConfig, None, False),
    (DynamicConfig, None, False),
    (VerseSettings, None, False),  # a poem in a form: the prompt is its title, may be ""
)


def _own_fields() -> dict[str, tuple[Any, Any]]:
    """The body fields of :data:`OWN_SETTINGS`: name -> (type, default)."""
    fields: dict[str, tuple[Any, Any]] = {}
    for cls, only, defaults in OWN_SETTINGS:
        hints = typing.get_type_hints(cls)
        for key, f, meta in keyed_settings(cls):
            if meta.cli and (only is None or f.name in only):
                hint = hints[f.name]
                fields[body_name(key)] = (hint, f.default) if defaults else (hint | None, None)
    return fields


#: Body field -> setting key of charlstm's own controls.
OWN_KEYS = {
    body_name(key): key
    for cls, only, _ in OWN_SETTINGS
    for key, f, meta in keyed_settings(cls)
    if meta.cli and (only is None or f.name in only)
}


class OpenAISampling(BaseModel):
    """The fields of OpenAI's that both requests share (:class:`Sampling` adds charlstm's)."""

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

    def settings(self) -> dict[str, Any]:
        """charlstm's own controls that this body gives, by setting key (``cache.mix``),
        as ``charlstm generate``'s ``given``: a field left null is not given."""
        values = {key: getattr(self, name) for name, key in OWN_KEYS.items()}
        return {key: value for key, value in values.items() if value is not None}

    def unknown(self) -> list[str]:
        """The fields of the body that no schema here knows."""
        return list(self.model_extra or {})

    @property
    def streaming(self) -> bool:
        return bool(self.stream)

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


#: The fields both requests share: OpenAI's, then charlstm's (:data:`OWN_SETTINGS`).
Sampling = create_model(  # type: ignore[call-overload]
    "Sampling",
    __base__=OpenAISampling,
    __module__=__name__,
    **_own_fields(),
)


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
