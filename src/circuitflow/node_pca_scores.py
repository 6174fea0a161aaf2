"""How well one node's output at one position separates the examples' classes: its PCA, a
linear classifier on the components, and the seed notebook's cluster verdict.

Every random choice (k-means starts, cross-validation folds) takes the caller's seed, so the
same activations give the same scores.

Cluster verdict (seed 002, QuantaTools' ``analyze_pca_clusters``, with two changes). k-means
(10 starts) partitions the PCA coordinates into 2 and into 3 clusters. For each k: the
silhouette s_k and the Calinski–Harabasz index c_k of the partition, and its agreement with the
true classes as the adjusted Rand index a_k. The verdict is "3" if s_3 > s_2, c_3 > c_2 and
a_3 > a_2; "2" if all three inequalities go the other way; otherwise "inconclusive", which is
also the verdict when either partition cannot be scored (fewer than k + 1 distinct points, or
k-means finding fewer than k clusters). The changes:
- QuantaTools standardizes each component to variance 1 first, which gives the sixth component
  as much weight as the first; the clusters one sees in a PC0-PC1 plot then drown in the small
  components' noise. Here the coordinates keep their variances (Euclidean distances in the
  top-component subspace of the node's output).
- QuantaTools measures agreement as the mean share of each cluster's majority class, which
  grows with the number of clusters whatever the data; the adjusted Rand index is corrected for
  chance, so a_3 > a_2 says something about the node.
The silhouette of the true classes is taken in the same coordinates.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
from sklearn.cluster import KMeans
from sklearn.decomposition import PCA
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import adjusted_rand_score, calinski_harabasz_score, silhouette_score
from sklearn.model_selection import StratifiedKFold, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

INCONCLUSIVE = "inconclusive"
CLUSTER_COUNTS = (2, 3)
KMEANS_STARTS = 10


@dataclass
class ClusterVerdict:
    verdict: str  # "2", "3" or "inconclusive"
    silhouette: dict[int, float]  # per k; NaN where the partition could not be scored
    calinski_harabasz: dict[int, float]
    adjusted_rand: dict[int, float]


@dataclass
class NodeScores:
    coords: np.ndarray  # [n_examples, n_components] PCA coordinates
    explained_variance_ratio: np.ndarray  # [n_components]
    separation_accuracy: float  # cross-validated logistic regression on the components
    chance_accuracy: float  # the majority class's share
    class_silhouette: float  # of the true classes, in the PCA coordinates
    clusters: ClusterVerdict


# Outputs that differ by less than this share of their size differ by float rounding only
# (e.g. one node at position 0 of prompts that all start alike, run in batches of other widths).
CONSTANT = 1e-5


def pca(outputs: np.ndarray, n_components: int) -> tuple[np.ndarray, np.ndarray]:
    """(coordinates [n, k], explained variance ratios [k]) with k = min(n_components, n, d);
    all zeros for outputs that do not vary."""
    n, d = outputs.shape
    k = min(n_components, n, d)
    if n < 2 or np.ptp(outputs, axis=0).max() <= CONSTANT * np.abs(outputs).max():
        return np.zeros((n, k)), np.zeros(k)
    # The exact SVD: deterministic, and what any other exact computation gets up to sign.
    fitted = PCA(n_components=k, svd_solver="full")
    coords = fitted.fit_transform(outputs.astype(np.float64))
    return coords, fitted.explained_variance_ratio_


def _labels(classes: np.ndarray) -> np.ndarray:
    return np.unique(np.asarray(classes).astype(str), return_inverse=True)[1]


def chance_accuracy(classes: np.ndarray) -> float:
    """The accuracy of always guessing the most common class."""
    if len(classes) == 0:
        return float("nan")
    return float(np.bincount(_labels(classes)).max() / len(classes))


def separation_accuracy(
    coords: np.ndarray, classes: np.ndarray, cv_folds: int, seed: int
) -> float:
    """Mean accuracy over stratified folds of a logistic regression on the standardized
    components; fewer folds when the smallest class has fewer examples; NaN when a class has
    only one example or there is only one class."""
    labels = _labels(classes)
    counts = np.bincount(labels)
    folds = min(cv_folds, int(counts.min()))
    if len(counts) < 2 or folds < 2:
        return float("nan")
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
    split = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    return float(cross_val_score(model, coords, labels, cv=split).mean())


def _silhouette(points: np.ndarray, labels: np.ndarray) -> float:
    if not 2 <= len(np.unique(labels)) <= len(points) - 1 or np.ptp(points, axis=0).max() == 0:
        return float("nan")
    return float(silhouette_score(points, labels))


def cluster_verdict(coords: np.ndarray, classes: np.ndarray, seed: int) -> ClusterVerdict:
    """The seed's verdict on the PCA coordinates (module docstring)."""
    labels = _labels(classes)
    n_distinct = len(np.unique(coords, axis=0)) if len(coords) else 0
    sil, ch, ari = {}, {}, {}
    for k in CLUSTER_COUNTS:
        sil[k] = ch[k] = ari[k] = float("nan")
        if n_distinct < k + 1:
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)  # duplicate points
            kmeans = KMeans(n_clusters=k, n_init=KMEANS_STARTS, random_state=seed)
            found = kmeans.fit_predict(coords)
        if len(np.unique(found)) < k:
            continue
        sil[k] = _silhouette(coords, found)
        ch[k] = float(calinski_harabasz_score(coords, found))
        ari[k] = float(adjusted_rand_score(labels, found))
    verdict = INCONCLUSIVE
    if all(d[2] < d[3] for d in (sil, ch, ari)):
        verdict = "3"
    elif all(d[2] > d[3] for d in (sil, ch, ari)):
        verdict = "2"
    return ClusterVerdict(verdict, sil, ch, ari)


def pca_tag(clusters: ClusterVerdict, min_ari: float) -> str | None:
    """``PCA:2`` or ``PCA:3`` for a verdict of that many clusters whose k-means partition also
    agrees with the classes at least ``min_ari`` (adjusted Rand index); else None. The verdict
    alone compares the two partitions only: on noise both agree with nothing, yet one wins."""
    if clusters.verdict in ("2", "3") and clusters.adjusted_rand[int(clusters.verdict)] >= min_ari:
        return f"PCA:{clusters.verdict}"
    return None


def score_node(
    outputs: np.ndarray, classes: np.ndarray, n_components: int, cv_folds: int, seed: int
) -> NodeScores:
    """Every score of one node's outputs [n_examples, d] against the examples' classes."""
    coords, evr = pca(outputs, n_components)
    return NodeScores(
        coords=coords,
        explained_variance_ratio=evr,
        separation_accuracy=separation_accuracy(coords, classes, cv_folds, seed),
        chance_accuracy=chance_accuracy(classes),
        class_silhouette=_silhouette(coords, _labels(classes)),
        clusters=cluster_verdict(coords, classes, seed),
    )
