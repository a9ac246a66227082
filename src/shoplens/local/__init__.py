"""Local features for packaged goods and printed labels.

The global embedding tells a carton of juice from a banana but confuses two
juice cartons of one brand. Local features (SIFT keypoints) see the print
itself. This stage gives the pipeline:

- :class:`LocalIndex`: catalogue images indexed by visual words (ASMK*
  scores, :mod:`~shoplens.local.invfile`), with incremental ``add``/``remove``, atomic
  ``save``/``load``, ``query`` for a shortlist and ``verify`` for RANSAC inlier
  counts;
- :func:`fuse`: one shortlist from the global and the local candidates;
- :func:`rerank_verified`: the shortlist re-ordered by verification;
- :meth:`LocalIndex.search`: all three for one query, with their timings.

It knows image ids only, no store, CLI or pipeline.
"""

from .features import FeatureExtractor, LocalFeatures, rootsift
from .fusion import FUSION_METHODS, fuse, rerank_verified
from .index import LocalConfig, LocalIndex, LocalSearch
from .verify import VerifyParams
from .vocabulary import Vocabulary

__all__ = [
    "FUSION_METHODS",
    "FeatureExtractor",
    "LocalConfig",
    "LocalFeatures",
    "LocalIndex",
    "LocalSearch",
    "VerifyParams",
    "Vocabulary",
    "fuse",
    "rerank_verified",
    "rootsift",
]
