"""Request and response bodies of the HTTP API (pydantic, documented in the OpenAPI schema).

The search response is :class:`shoplens.results.SearchResult`: exactly
the search object documented in docs/method.md, as ``shoplens search --json`` prints it.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints, field_validator

from ..catalog import KNOWN_COLUMNS, MAX_ID_LENGTH


def _clean_text(value: str) -> str:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("text must be valid Unicode (no lone surrogates)") from None
    if "\x00" in value:
        raise ValueError("text must not contain NUL characters")
    return value


Text = Annotated[str, AfterValidator(_clean_text)]
ProductId = Annotated[
    str,
    StringConstraints(min_length=1, max_length=MAX_ID_LENGTH, pattern=r"^[^\x00-\x1f\x7f]+$"),
    AfterValidator(_clean_text),
    Field(description="the product's id in the shop (1-512 characters, no control characters)", examples=["sku-123"]),
]
MetaKey = Annotated[str, StringConstraints(min_length=1, max_length=128, pattern=r'^[^\x00-\x1f\x7f"]+$'), AfterValidator(_clean_text)]
MetaValue = bool | int | Annotated[float, Field(allow_inf_nan=False)] | Annotated[Text, StringConstraints(max_length=4096)]
#: Keys a metadata mapping may not use: they are fields of every product or result.
RESERVED_KEYS = frozenset(KNOWN_COLUMNS) | {"rank", "distance", "category_source", "domain_source", "images"}


def _check_keys(meta: dict[str, Any] | None) -> dict[str, Any] | None:
    if meta:
        bad = sorted(k for k in meta if k in RESERVED_KEYS)
        if bad:
            raise ValueError(f"metadata keys {', '.join(bad)} are reserved (use the product's own fields)")
    return meta


class ErrorBody(BaseModel):
    """Every error: a message a person can act on, and a stable code."""

    error: str = Field(description="what went wrong, for people")
    code: str = Field(description="stable machine-readable code, e.g. bad_image, too_large, unauthorized, not_found")
    details: list[dict[str, Any]] | None = Field(None, description="per-field problems of a request that failed validation")


class ProductFields(BaseModel):
    """A product to add: the JSON part ``product`` of ``POST /products``."""

    model_config = ConfigDict(extra="forbid")

    product_id: ProductId
    title: Annotated[Text, StringConstraints(max_length=1024)] | None = None
    category: Annotated[Text, StringConstraints(max_length=256)] | None = Field(
        None, description="the shop's category; when absent, shoplens predicts one (category_source 'predicted')"
    )
    domain: Literal["apparel", "other_product"] | None = Field(None, description="index partition; inferred from the photos when absent")
    metadata: dict[MetaKey, MetaValue] = Field(
        default_factory=dict, max_length=256, description="any other catalogue columns (price, brand …): returned with results, usable in filters"
    )

    @field_validator("metadata")
    @classmethod
    def _reserved(cls, value: Any) -> Any:
        return _check_keys(value)


class BatchProduct(ProductFields):
    """One product of ``POST /products/batch``: ``photos`` names its uploaded files."""

    photos: list[Annotated[str, StringConstraints(min_length=1, max_length=1024)]] = Field(
        min_length=1, description="file names of the uploaded 'photos' parts that belong to this product"
    )


class ProductPatch(BaseModel):
    """``PATCH /products/{id}``: fields given replace; metadata is merged key by key."""

    model_config = ConfigDict(extra="forbid")

    title: Annotated[Text, StringConstraints(max_length=1024)] | None = None
    category: Annotated[Text, StringConstraints(max_length=256)] | None = None
    metadata: dict[MetaKey, MetaValue | None] | None = Field(
        None, max_length=256, description="keys to set; a null value removes the key"
    )
    replace_metadata: bool = Field(False, description="replace the whole metadata mapping instead of merging")

    @field_validator("metadata")
    @classmethod
    def _reserved(cls, value: Any) -> Any:
        return _check_keys(value)


class ProductImage(BaseModel):
    image_id: int
    domain: str
    url: str = Field(description="where to GET the photo")


class Product(BaseModel):
    product_id: str
    title: str | None
    category: str | None
    category_source: Literal["catalogue", "predicted"] | str
    domain: str
    domain_source: str
    metadata: dict[str, Any]
    images: list[ProductImage]


class ProductPage(BaseModel):
    total: int = Field(description="products in the catalogue")
    offset: int
    limit: int
    items: list[Product]


class WriteReport(BaseModel):
    """What a write did (the indexing report)."""

    products: list[str] = Field(description="ids of the products written")
    images_added: int = 0
    images_replaced: int = 0
    images_unchanged: int = 0
    images_removed: int = 0
    categories_predicted: int = 0
    domains_inferred: int = 0
    timings_s: dict[str, float] = Field(default_factory=dict)


class ProductWritten(BaseModel):
    product: Product
    report: WriteReport


class BatchWritten(BaseModel):
    products: list[Product]
    report: WriteReport


class DeleteRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    product_ids: list[ProductId] = Field(min_length=1, max_length=10000)


class DeleteResult(BaseModel):
    deleted: list[str]
    missing: list[str] = Field(description="ids that were not in the catalogue")


#: A search's domain override ("search anyway").
SearchDomain = Literal["apparel", "other_product"]
DOMAIN_HELP = ("search the photo in this product domain whatever the intent gate says (a photo it stops as non_product "
               "too); the answer keeps the classifier's `predicted_intent`. Default: the gate decides")


BOX_HELP = ("search only this region of the photo: x0,y0,x1,y1 in pixels of the photo as given (after EXIF orientation; "
            "x1, y1 exclusive), e.g. 10,20,300,400. The region is cut out after decoding and searched as a whole photo, "
            "intent gate included; the answer's steps.crop says which box was searched and its regions' boxes are in the "
            "photo's pixels. Malformed, empty or outside the photo: 400 bad_box")
BoxField = Annotated[
    list[float | Annotated[str, StringConstraints(max_length=64)]] | Annotated[str, StringConstraints(max_length=200)] | None,
    Field(description=BOX_HELP, examples=[[10, 20, 300, 400], "10,20,300,400"]),
]


class UrlSearch(BaseModel):
    """``POST /search/url``: search with a photo the server fetches (allow-listed prefixes only)."""

    model_config = ConfigDict(extra="forbid")

    url: Annotated[Text, StringConstraints(min_length=1, max_length=4096)]
    top_k: int | None = Field(None, ge=1, description="cap of each result list")
    filters: list[Annotated[Text, StringConstraints(max_length=1024)]] = Field(default_factory=list, max_length=64)
    domain: SearchDomain | None = Field(None, description=DOMAIN_HELP)
    box: BoxField = None


class BatchError(BaseModel):
    """One photo of ``POST /search/batch`` that could not be searched, in its place in the answer."""

    image: str = Field(description="the photo's upload file name")
    error: str = Field(description="what went wrong, for people")
    code: str = Field(description="stable code, as POST /search would answer for this photo alone: bad_image, too_large")


class Health(BaseModel):
    status: Literal["ok"]


class Ready(BaseModel):
    status: Literal["ready", "starting", "unavailable"]
    detail: str | None = None
    products: int | None = None
    images: dict[str, int] | None = None
    writes_enabled: bool
    #: Whether search and reads need a key (the server has a read key); the counts are then given only with one.
    reads_need_key: bool = False
    #: The domains ``POST /search/text`` searches (indexed with a CLIP or SigLIP backbone); empty: no text search.
    text_search: list[str] = Field(default_factory=list)
