"""Result objects, serialised exactly as SPEC.md's JSON schemas.

They are pydantic models so the HTTP API documents them in its OpenAPI
schema and the CLI prints them with the same field names.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class ProductHit(BaseModel):
    """One product in a result list; catalogue metadata columns ride along."""

    model_config = ConfigDict(extra="allow")

    product_id: str
    rank: float
    distance: float
    category: str | None = None
    title: str | None = None
    precision: float | None = Field(None, description="calibrated share of relevant hits at this rank (why it was kept); null: not calibrated")


class RegionResult(BaseModel):
    box: list[float] | None = Field(None, description="[x0, y0, x1, y1] in pixels of the input image; null = whole photo")
    label: str | None = Field(None, description="garment label, null for the whole photo")
    score: float | None = Field(None, description="detector confidence of the box")
    results: list[ProductHit] = Field(default_factory=list)
    steps: dict[str, Any] = Field(default_factory=dict, description="per-step counts for this region's list")


class SearchResult(BaseModel):
    image: str
    intent: str
    intent_scores: dict[str, float]
    regions: list[RegionResult] = Field(default_factory=list)
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
