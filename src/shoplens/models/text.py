"""Text towers: the text half of a CLIP or SigLIP model, for searching a catalogue with words.

A CLIP or SigLIP model is trained so that a photo's image embedding and the
text embedding of its caption point the same way. A store indexed with such
a backbone holds image embeddings, so a text's embedding queries that index
directly: "red rain jacket" finds the photos nearest to it in the shared
space. :func:`create_text_model` builds the text tower that matches a
backbone name, loaded from the same files:

- ``hf-hub:…`` / ``local-dir:…`` in transformers format with model type
  ``clip`` (``CLIPTextModelWithProjection``: the projected end-of-text token)
  or ``siglip`` (``SiglipTextModel``: its pooled output, inputs padded to the
  length it was trained at);
- open_clip models (``open_clip:…`` or a folder with ``open_clip_config.json``):
  ``encode_text`` with the model's own tokenizer;
- a registered alias (``clip-vit-b32``, ``fashion-clip``, ``siglip-base``,
  ``marqo-fashionsiglip``…) through the name it stands for.

Any other backbone (EfficientNet-Lite, DINOv2, a vision-only checkpoint) has
no text tower: :class:`~shoplens.errors.NoTextModelError` says so.
"""

from __future__ import annotations

import abc
import logging
from collections.abc import Callable, Mapping, Sequence
from functools import lru_cache
from typing import Any

import numpy as np
import torch

from .._deps import import_optional
from ..errors import ConfigError, NoTextModelError, ShoplensError, UnknownModelError
from ..registry import Registry
from ._hf import fetch_file, from_pretrained, pretrained_ref, read_json, transformers_module
from ._registry import WeightsSource, get_entry, parse_model_name
from .openclip import OpenClipRef, open_clip_names

logger = logging.getLogger(__name__)

#: Longest text accepted, in characters; a tower reads at most its context length of tokens anyway.
MAX_TEXT_CHARS = 1000


class TextModel(abc.ABC):
    """Embeds texts into the image-embedding space of the backbone it belongs to."""

    #: The backbone name it was built for.
    name: str

    @abc.abstractmethod
    def encode_text(self, texts: Sequence[str]) -> np.ndarray:
        """(N, D) float32 text embeddings, not L2-normalised (as the image tower's embeddings)."""


class HfTextModel(TextModel):
    """A transformers text tower with its tokenizer."""

    def __init__(self, name: str, model: Any, tokenizer: Any, *, output: str, pad_to: int | None, use_mask: bool) -> None:
        self.name = name
        self.model = model
        self.tokenizer = tokenizer
        self.output = output
        #: SigLIP reads texts padded to the length it was trained at; CLIP reads them as long as they are.
        self.pad_to = pad_to
        self.use_mask = use_mask
        self.max_length = int(getattr(model.config, "max_position_embeddings", 77))

    def encode_text(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, 0), np.float32)
        batch = self.tokenizer(
            list(texts),
            padding="max_length" if self.pad_to else True,
            max_length=self.pad_to or self.max_length,
            truncation=True,
            return_tensors="pt",
        )
        inputs = {"input_ids": batch["input_ids"]}
        if self.use_mask and "attention_mask" in batch:
            inputs["attention_mask"] = batch["attention_mask"]
        with torch.inference_mode():
            out = self.model(**inputs)
        return np.ascontiguousarray(getattr(out, self.output).float().numpy())


class OpenClipTextModel(TextModel):
    """An open_clip model's ``encode_text`` with its tokenizer."""

    def __init__(self, name: str, model: Any, tokenizer: Callable[[list[str]], torch.Tensor]) -> None:
        self.name = name
        self.model = model
        self.tokenizer = tokenizer

    def encode_text(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, 0), np.float32)
        with torch.inference_mode():
            out = self.model.encode_text(self.tokenizer(list(texts)))
        return np.ascontiguousarray(out.float().numpy())


#: Text loaders of transformers checkpoints, by the model type in their config.json.
_HF_TEXT: Registry[Callable[[WeightsSource, Mapping[str, Any]], TextModel]] = Registry("text tower")


def _tokenizer(source: WeightsSource) -> Any:
    transformers = transformers_module(f"the text tower of {source}")
    try:
        return transformers.AutoTokenizer.from_pretrained(pretrained_ref(source), revision=source.revision)
    except (OSError, ValueError, KeyError, ImportError) as err:
        raise UnknownModelError(f"{source}: cannot load its tokenizer: {err}") from None


@_HF_TEXT.register("clip")
def _clip_text(source: WeightsSource, config: Mapping[str, Any]) -> TextModel:
    """CLIP: the projected end-of-text token (``text_embeds``)."""
    transformers = transformers_module("CLIP text search")
    text_config = transformers.CLIPTextConfig.from_pretrained(pretrained_ref(source), revision=source.revision)
    if "projection_dim" in config:  # a full CLIP checkpoint keeps it at the top level, not in text_config
        text_config.projection_dim = int(config["projection_dim"])
    model = from_pretrained(transformers.CLIPTextModelWithProjection, source, config=text_config)
    return HfTextModel(str(source), model, _tokenizer(source), output="text_embeds", pad_to=None, use_mask=True)


@_HF_TEXT.register("siglip")
def _siglip_text(source: WeightsSource, config: Mapping[str, Any]) -> TextModel:
    """SigLIP: the text tower's pooled output, texts padded to its trained length (64 tokens), no mask."""
    transformers = transformers_module("SigLIP text search")
    model = from_pretrained(transformers.SiglipTextModel, source)
    length = int(model.config.max_position_embeddings)
    return HfTextModel(str(source), model, _tokenizer(source), output="pooler_output", pad_to=length, use_mask=False)


def _open_clip_text(ref: OpenClipRef) -> TextModel:
    open_clip = import_optional("open_clip", "open_clip_torch", "clip", "open_clip text search")
    model_name, pretrained = open_clip_names(ref)
    try:
        model = open_clip.create_model(model_name, pretrained=pretrained, require_pretrained=True, device="cpu")
        tokenizer = open_clip.get_tokenizer(model_name)
    except (OSError, RuntimeError, ValueError, KeyError) as err:
        raise UnknownModelError(f"cannot load the text tower of {ref}: {err}") from None
    model.visual = torch.nn.Identity()  # the image tower is the backbone's; only encode_text is used here
    return OpenClipTextModel(str(ref), model.eval(), tokenizer)


def _from_source(source: WeightsSource) -> TextModel:
    config = read_json(source, "config.json", required=False)
    model_type = str(config.get("model_type", "")) if config else ""
    if config is not None and model_type in _HF_TEXT:
        logger.info("loading the text tower of %s (model type %s)", source, model_type)
        return _HF_TEXT.get(model_type)(source, config)
    if fetch_file(source, "open_clip_config.json", required=False) is not None:
        return _open_clip_text(OpenClipRef(source=source))
    kind = f"model type {model_type!r}" if model_type else "no transformers config"
    raise NoTextModelError(
        f"{source} ({kind}) has no text tower: text search needs a CLIP or SigLIP checkpoint with its text half "
        f"(model types {', '.join(_HF_TEXT.names())}, or an open_clip model)"
    )


def create_text_model(backbone: str) -> TextModel:
    """The text tower of the backbone named ``backbone``; :class:`NoTextModelError` if it has none."""
    parsed = parse_model_name(backbone)
    if not parsed.scheme:
        target = get_entry(backbone).target
        if target is None:
            raise NoTextModelError(
                f"the backbone {backbone} has no text tower: text search needs a CLIP or SigLIP backbone "
                "(e.g. clip-vit-b32, fashion-clip, siglip-base, marqo-fashionsiglip or a local-dir: copy of one; "
                "docs/models.md)"
            )
        model = create_text_model(target)
        model.name = backbone
        return model
    if parsed.scheme == "open_clip":
        return _open_clip_text(parsed.target)
    if parsed.scheme in ("hf-hub", "local-dir"):
        return _from_source(parsed.target)
    raise NoTextModelError(f"the backbone {backbone} has no text tower (no text loader for {parsed.scheme}: names)")


@lru_cache(maxsize=64)
def has_text_tower(backbone: str) -> bool:
    """Whether :func:`create_text_model` finds a text tower for ``backbone``, told from its name and config files (no weights loaded)."""
    try:
        parsed = parse_model_name(backbone)
        if not parsed.scheme:
            target = get_entry(backbone).target
            return target is not None and has_text_tower(target)
        if parsed.scheme == "open_clip":
            return True
        if parsed.scheme not in ("hf-hub", "local-dir"):
            return False
        config = read_json(parsed.target, "config.json", required=False)
        if config is not None and str(config.get("model_type", "")) in _HF_TEXT:
            return True
        return fetch_file(parsed.target, "open_clip_config.json", required=False) is not None
    except ShoplensError:  # an unknown name, a missing file or package: no text search with it
        return False


def list_text_loaders(pattern: str = "*") -> list[str]:
    """Model types of transformers checkpoints whose text tower :func:`create_text_model` loads."""
    return _HF_TEXT.names(pattern)


def check_text(text: object) -> str:
    """``text`` stripped, refused when empty, not a string or longer than :data:`MAX_TEXT_CHARS`."""
    if not isinstance(text, str) or not text.strip():
        raise ConfigError("a text query must be a non-empty string")
    if len(text) > MAX_TEXT_CHARS:
        raise ConfigError(f"a text query is at most {MAX_TEXT_CHARS} characters, got {len(text)}")
    return text.strip()
