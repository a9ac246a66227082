"""Orchestration: the steps of docs/method.md run over a store, in one package.

The stages (``embed/``, ``local/``, ``intent/``, ``detect/``, ``models/``) see
photos, encodings and descriptors; the store (``store/``) keeps products and
vectors. The modules here drive both, and neither imports them:

- :mod:`.search`: :class:`Pipeline`, the models of steps 1–2 and the search of
  one photo against a store (steps 3–6);
- :mod:`.text_search`: the search with words of a CLIP or SigLIP backbone;
- :mod:`.indexing`: :class:`Indexer`, a catalogue into the store (read, decode,
  embed, write, each stage timed);
- :mod:`.calibrate`: the rank filter's calibration fitted at index time;
- :mod:`.training`: ``train-embedder`` and ``train-intent`` on a store.

The faces (``api``, ``cli``, ``server``) use them through :class:`shoplens.Shoplens`.
"""

from .search import EncodingCache, Pipeline, Query, Timer

__all__ = ["EncodingCache", "Pipeline", "Query", "Timer"]
