"""``POST /tokenize`` and ``POST /detokenize``, in llama.cpp's server's shapes: a
character is a token, its id its index in the model's vocabulary.

- ``{"content": "分开"}`` -> ``{"tokens": [12, 40]}`` (a character the model does not know:
  400 with the CLI's message);
- ``{"tokens": [12, 40]}`` -> ``{"content": "分开"}`` (an index outside the vocabulary: 400).

Both take ``model`` (default: the first) and need the API key when the server has one.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends
from pydantic import BaseModel

from charlstm.data.corpus import show_chars
from charlstm.serve.errors import APIError
from charlstm.serve.state import ServerState, require_key, server_state

router = APIRouter(dependencies=[Depends(require_key)])


class TokenizeBody(BaseModel):
    content: str
    model: str | None = None


class DetokenizeBody(BaseModel):
    tokens: list[int]
    model: str | None = None


@router.post("/tokenize")
async def tokenize(
    body: TokenizeBody, state: ServerState = Depends(server_state)
) -> dict[str, list[int]]:
    vocab = state.model(body.model).vocab
    missing = vocab.missing(body.content)
    if missing:
        raise APIError(
            400,
            f"content has characters not in the model's vocabulary: {show_chars(missing)}",
            param="content",
        )
    return {"tokens": [vocab.char_to_idx[ch] for ch in body.content]}


@router.post("/detokenize")
async def detokenize(
    body: DetokenizeBody, state: ServerState = Depends(server_state)
) -> dict[str, str]:
    chars = state.model(body.model).vocab.idx_to_char
    outside = [i for i in body.tokens if not 0 <= i < len(chars)]
    if outside:
        raise APIError(
            400,
            f"tokens has index {outside[0]}, outside the vocabulary (0 to {len(chars) - 1})",
            param="tokens",
        )
    return {"content": "".join(chars[i] for i in body.tokens)}
