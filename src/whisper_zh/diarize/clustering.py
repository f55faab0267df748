"""Group speech-window embeddings into speakers: average-linkage agglomerative clustering on cosine distance.

As in pyannote.audio's pipeline, the number of speakers is where merging stops at a distance threshold, unless
it is given, and clusters too small to be a speaker (a cough, a window straddling two voices) do not count. Those
small clusters must not take a speaker's place either: cutting the tree into exactly N clusters would give an
outlier window a cluster of its own and merge two real voices instead (on a 10-minute three-speaker conversation
that gave 30 % speaker error). So the tree is cut finer until N clusters of a speaker's size appear, and those
are the speakers; every window then goes to the nearest of their centroids (two rounds of k-means from there).

SciPy's hierarchy builds the tree once and cuts it at any threshold or count (scikit-learn's
AgglomerativeClustering runs the same linkage but would rebuild it for each cut).
"""

from __future__ import annotations

import numpy as np
from scipy.cluster.hierarchy import fcluster, linkage

from whisper_zh.diarize.options import DiarizeOptions

MIN_CLUSTER_WINDOWS = 3  # windows (0.8 s apart: about 3 s of speech) a cluster needs to count as a speaker
REFINE_ROUNDS = 2


def speaker_centroids(embeddings: np.ndarray, options: DiarizeOptions) -> np.ndarray:
    """Unit-length centroids, one per speaker found in ``embeddings`` (n x d, unit rows); (0, d) if n is 0."""
    n = len(embeddings)
    if n == 0:
        return np.zeros((0, embeddings.shape[1] if embeddings.ndim == 2 else 0), np.float32)
    low, high = options.bounds
    if n == 1 or high == 1:
        return _normalised(embeddings.mean(axis=0, keepdims=True))
    tree = linkage(embeddings.astype(np.float64), method="average", metric="cosine")
    min_size = min(MIN_CLUSTER_WINDOWS, n)
    if options.speakers:
        count = options.speakers
    else:
        count = len(_big_clusters(fcluster(tree, t=options.threshold, criterion="distance"), min_size))
    count = max(1, min(max(count, low), high, n))
    if count == 1:
        return _normalised(embeddings.mean(axis=0, keepdims=True))
    for clusters in range(count, n + 1):  # cut finer until `count` clusters of a speaker's size appear
        labels = fcluster(tree, t=clusters, criterion="maxclust")
        big = _big_clusters(labels, min_size)
        if len(big) >= count:
            break
    else:
        big = _big_clusters(labels, 1)
    centroids = _normalised(np.stack([embeddings[labels == k].mean(axis=0) for k in big[:count]]))
    for _ in range(REFINE_ROUNDS):
        nearest = np.argmax(embeddings @ centroids.T, axis=1)
        kept = [k for k in range(len(centroids)) if np.any(nearest == k)]
        centroids = _normalised(np.stack([embeddings[nearest == k].mean(axis=0) for k in kept]))
    return centroids


def _big_clusters(labels: np.ndarray, min_size: int) -> list[int]:
    """Cluster labels with at least ``min_size`` members, largest first."""
    sizes = np.bincount(labels)
    return sorted((k for k in range(len(sizes)) if sizes[k] >= min_size), key=lambda k: -sizes[k])


def _normalised(vectors: np.ndarray) -> np.ndarray:
    return (vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-9)).astype(np.float32)
