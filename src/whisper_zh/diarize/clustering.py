"""Group speech-window embeddings into speakers: agglomerative clustering (scikit-learn) on cosine distance.

As in pyannote.audio's pipeline, the number of speakers is where average-linkage merging stops at a distance
threshold, unless it is given; clusters too small to be a speaker (a cough, a window straddling two voices) are
not counted. Each speaker is then the centroid of its windows, refined by moving every window to its nearest
centroid (two rounds of k-means from the clustering's answer).
"""

from __future__ import annotations

import numpy as np
from sklearn.cluster import AgglomerativeClustering

from whisper_zh.diarize.options import DiarizeOptions

MIN_CLUSTER_WINDOWS = 3  # windows (0.8 s apart: about 3 s of speech) a cluster needs to count as a speaker
REFINE_ROUNDS = 2


def speaker_centroids(embeddings: np.ndarray, options: DiarizeOptions) -> np.ndarray:
    """Unit-length centroids, one per speaker found in ``embeddings`` (n x d, unit rows); (0, d) if n is 0."""
    n = len(embeddings)
    if n == 0:
        return np.zeros((0, embeddings.shape[1] if embeddings.ndim == 2 else 0), np.float32)
    low, high = options.bounds
    count = options.speakers or _count_speakers(embeddings, options.threshold)
    count = max(1, min(max(count, low), high, n))
    if count == 1:
        return _normalised(embeddings.mean(axis=0, keepdims=True))
    labels = AgglomerativeClustering(n_clusters=count, metric="cosine", linkage="average").fit_predict(embeddings)
    centroids = _normalised(np.stack([embeddings[labels == k].mean(axis=0) for k in range(count)]))
    for _ in range(REFINE_ROUNDS):
        labels = np.argmax(embeddings @ centroids.T, axis=1)
        kept = [k for k in range(count) if np.any(labels == k)]
        centroids = _normalised(np.stack([embeddings[labels == k].mean(axis=0) for k in kept]))
    return centroids


def _count_speakers(embeddings: np.ndarray, threshold: float) -> int:
    if len(embeddings) < 2:
        return 1
    model = AgglomerativeClustering(n_clusters=None, distance_threshold=threshold, metric="cosine",
                                    linkage="average").fit(embeddings)
    sizes = np.bincount(model.labels_)
    return max(1, int(np.sum(sizes >= min(MIN_CLUSTER_WINDOWS, len(embeddings)))))


def _normalised(vectors: np.ndarray) -> np.ndarray:
    return (vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-9)).astype(np.float32)
