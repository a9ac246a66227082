"""The catalogue store: metadata and raw descriptors (SQLite) + vector indexes.

:class:`EmbeddedStore` keeps everything in one folder (``--store DIR``):

```
DIR/shoplens.sqlite       products, images, raw descriptors, change log (source of truth)
DIR/index/<domain>.vidx   FAISS index per domain partition (derived; rebuilt when missing or damaged):
                          exact (flat) while small, approximate (IVF) when large or when configured
DIR/models/               heads and classifiers trained for this catalogue (artifacts.py names them)
DIR/config.json           the resolved configuration the index was built with
DIR/writer.lock           held (flock) by the one process that writes the store (see lock.py)
```

The store knows no model: turning raw descriptors into vectors is the job of
a :class:`Projector` the pipeline hands it.
"""

from .artifacts import Artifact, StoreArtifacts
from .base import CatalogueStore, Projector, WriteBatch
from .embedded import EmbeddedStore
from .engines import describe_stores, list_stores, open_catalogue_store
from .metadata import ImageRecord, ImageVersion, MetadataDB, Owner, ProductRecord, StoredImage
from .vectors import FaissIndex, VectorIndex

__all__ = [
    "Artifact",
    "CatalogueStore",
    "EmbeddedStore",
    "FaissIndex",
    "ImageRecord",
    "ImageVersion",
    "MetadataDB",
    "Owner",
    "ProductRecord",
    "Projector",
    "StoreArtifacts",
    "StoredImage",
    "VectorIndex",
    "WriteBatch",
    "describe_stores",
    "list_stores",
    "open_catalogue_store",
]
