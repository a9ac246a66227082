"""Result objects, serialised exactly as the JSON schemas of docs/method.md.

They are pydantic models so the HTTP API documents them in its OpenAPI
schema and the CLI prints them with the same field names.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr


def _document_image_url(schema: dict[str, Any]) -> None:
    # Not a field: the CLI has no URL to give, and a catalogue column of that name rides along there as before.
    schema.setdefault("properties", {})["image_url"] = {
        "anyOf": [{"type": "string"}, {"type": "null"}],
        "title": "Image Url",
        "description": (
            "HTTP answers only: the matched photo's thumbnail, relative to the server root "
            "(GET /images/{image_id}/thumbnail?size=256&v=…; the URL changes when the photo does). "
            "Absent from `shoplens search --json`."
        ),
    }


class ProductHit(BaseModel):
    """One product in a result list; catalogue metadata columns ride along."""

    model_config = ConfigDict(extra="allow", json_schema_extra=_document_image_url)

    product_id: str
    rank: float
    distance: float
    category: str | None = None
    title: str | None = None
    precision: float | None = Field(None, description="calibrated share of relevant hits at this rank (why it was kept); null: not calibrated")
    #: The catalogue image that matched (not serialised: a metadata column may have any name,
    #: ``image_id`` included). The HTTP server makes the hit's ``image_url`` from it.
    _image_id: int | None = PrivateAttr(None)

    @property
    def matched_image_id(self) -> int | None:
        """The id of the product's image that matched the query (None: not known)."""
        return self._image_id


class Reason(BaseModel):
    """Why a list is empty (or nothing was searched), and what would change it."""

    step: str = Field(description="the step that left nothing: intent, store, filters, similar_set, rank_filter, entropy_filter")
    message: str = Field(description="what happened, with the step's figures, e.g. '50 candidates, 0 at or above min_rank 1.08'")
    hint: str | None = Field(None, description="the option that would change it")


class RegionResult(BaseModel):
    box: list[float] | None = Field(None, description="[x0, y0, x1, y1] in pixels of the input image; null = whole photo")
    label: str | None = Field(None, description="garment label, null for the whole photo")
    score: float | None = Field(None, description="detector confidence of the box")
    results: list[ProductHit] = Field(default_factory=list)
    steps: dict[str, Any] = Field(default_factory=dict, description="per-step counts for this region's list")
    reason: Reason | None = Field(None, description="why `results` is empty; null when it is not")
    domain: str | None = Field(None, description="the index partition searched (apparel / other_product)")


class SearchResult(BaseModel):
    image: str
    intent: str = Field(description=(
        "how the search treated the photo: non_product (stopped, nothing searched) or the product domain searched"))
    intent_scores: dict[str, float]
    predicted_intent: str | None = Field(None, description=(
        "the intent classifier's most likely class, whatever was searched (an override, a domain the store lacks, an unsure gate)"))
    domain: str | None = Field(None, description="the product domain searched (its index partition); null when nothing was")
    regions: list[RegionResult] = Field(default_factory=list)
    timings_ms: dict[str, float] = Field(default_factory=dict)
    steps: dict[str, Any] = Field(default_factory=dict)
    reason: Reason | None = Field(None, description="why nothing was searched (the gate stopped the photo); null otherwise")


class TextSearchResult(BaseModel):
    """A search with words: the products whose photos lie nearest the text in a CLIP or SigLIP backbone's space."""

    text: str = Field(description="the text searched, as given (stripped)")
    domains: list[str] = Field(default_factory=list, description="the product domains searched: those whose backbone has a text tower")
    regions: list[RegionResult] = Field(default_factory=list, description=(
        "one list per domain searched (`box` null), the list holding the best hit first; hits are ranked by "
        "`rank` = 2 − distance (the L2 distance between the text's and the photo's unit vectors, "
        "√(2 − 2 cos)), `precision` null"))
    timings_ms: dict[str, float] = Field(default_factory=dict)
    steps: dict[str, Any] = Field(default_factory=dict)


class IntentResult(BaseModel):
    image: str
    intent: str
    intent_scores: dict[str, float]


class GarmentResult(BaseModel):
    box: list[float]
    label: str
    score: float


class DetectResult(BaseModel):
    image: str
    garments: list[GarmentResult] = Field(default_factory=list)


class ErrorResult(BaseModel):
    image: str
    error: str


def to_json_dict(result: BaseModel) -> dict[str, Any]:
    return result.model_dump(mode="json")
