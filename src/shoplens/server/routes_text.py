"""``POST /search/text``: the catalogue searched with words, where a domain's backbone has a text tower.

The text goes through :meth:`shoplens.Shoplens.search_text` inside a search
slot, as a photo search does (the text tower and the index search share the
CPU with them), and each hit carries the ``image_url`` of the photo that
matched. A store with no CLIP or SigLIP domain answers 400 ``no_text_model``.
"""

# No `from __future__ import annotations`: FastAPI reads the handlers' annotations, which name local settings.

from typing import Annotated

from fastapi import FastAPI
from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from ..models.text import MAX_TEXT_CHARS
from ..results import TextSearchResult
from .errors import READ_ERRORS
from .models import SearchDomain, Text
from .routes_search import check_top_k, set_image_urls
from .state import ServerState


class TextSearch(BaseModel):
    """``POST /search/text``: what to search for, in words."""

    model_config = ConfigDict(extra="forbid")

    text: Annotated[Text, StringConstraints(min_length=1, max_length=MAX_TEXT_CHARS)] = Field(
        description="what to look for, e.g. `red rain jacket`")
    top_k: int | None = Field(None, ge=1, description="cap of each result list (default: the store's search.top_k)")
    filters: list[Annotated[Text, StringConstraints(max_length=1024)]] = Field(
        default_factory=list, max_length=64, description="metadata filters FIELD OP VALUE, as for POST /search")
    domain: SearchDomain | None = Field(None, description=(
        "search this product domain only; default: every domain holding products whose backbone has a text tower"))


def register(app: FastAPI, state: ServerState) -> None:
    """Add ``POST /search/text`` to ``app``."""

    @app.post(
        "/search/text",
        response_model=TextSearchResult,
        tags=["search"],
        summary="Search the catalogue with words (CLIP and SigLIP backbones)",
        dependencies=state.keys.reader,
        responses=READ_ERRORS,
        description=(
            "JSON body `{\"text\", \"top_k\", \"filters\", \"domain\"}`. The text tower of the backbone a domain was indexed "
            "with embeds the text, which queries that domain's photo index (docs/method.md, \"Search with words\"). The "
            "answer holds one result list per domain searched, nearest products first (steps 4–6 do not apply to "
            "words). A store whose backbones have no text tower (the default EfficientNet-Lite) answers 400 "
            "`no_text_model`, naming the backbone."
        ),
    )
    def search_text(body: TextSearch) -> TextSearchResult:
        check_top_k(state, body.top_k)
        with state.search_slots:
            [result] = state.lens.search_text(body.text, top_k=body.top_k, filters=body.filters, domain=body.domain)
        set_image_urls(state, result.regions)
        return result
