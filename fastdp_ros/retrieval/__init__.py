"""Retrieval: a faiss index of embeddings -> dataset rows (episode, frame), kept in a model dir.

- `EmbeddingIndex` (index.py): build (flat / IVF / HNSW; L2, inner product or cosine), search,
  save into and load from `<model>/index/`, refusing an index built from other weights.
- demos.py: one row per demonstration frame, its observation window and action chunk;
  the check that a dataset matches a model.
- ood.py: quantile-calibrated OOD thresholds, AUROC, image perturbations for evaluation.

This layer sits below policies/: it knows embeddings, rows and datasets, not networks.
"""

from fastdp_ros.retrieval.demos import (
    ActionChunks,
    check_dataset,
    embed_demonstrations,
    episode_observations,
    observation_windows,
    window_batches,
)
from fastdp_ros.retrieval.index import (
    INDEX_DIR,
    INDEX_KINDS,
    METRICS,
    EmbeddingIndex,
    IndexConfig,
    SearchResult,
    file_hash,
    import_faiss,
)
from fastdp_ros.retrieval.ood import PERTURBATIONS, auroc, calibrate_threshold, ood_evaluation, perturb_images

__all__ = [
    "ActionChunks", "EmbeddingIndex", "INDEX_DIR", "INDEX_KINDS", "IndexConfig", "METRICS", "PERTURBATIONS",
    "SearchResult", "auroc", "calibrate_threshold", "check_dataset", "embed_demonstrations", "episode_observations",
    "file_hash", "import_faiss", "observation_windows", "ood_evaluation", "perturb_images", "window_batches",
]
