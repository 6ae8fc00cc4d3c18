"""fmkit.losses against literal loop-by-loop references and pytorch-metric-learning (pml): values and gradients.

lightly's NTXentLoss would be a third reference, but lightly pulls in pytorch-lightning; pml covers NT-Xent,
triplet, N-pair and (as NCALoss) the soft nearest neighbour loss.
"""

from __future__ import annotations

import math

import pytest
import torch
from pytorch_metric_learning.distances import DotProductSimilarity, LpDistance
from pytorch_metric_learning.losses import NCALoss, NPairsLoss, NTXentLoss, TripletMarginLoss
from pytorch_metric_learning.miners import BatchHardMiner
from pytorch_metric_learning.reducers import MeanReducer

from fmkit.losses import (
    batch_hard_triplet_loss,
    info_nce_loss,
    n_pair_loss,
    nce_loss,
    nce_normalizer,
    nt_xent_loss,
    soft_nearest_neighbour_loss,
    triplet_margin_loss,
)

# pml normalises embeddings before Euclidean distances by default; the triplet and SNN losses use raw ones.
RAW_EUCLIDEAN = LpDistance(normalize_embeddings=False)
RAW_SQUARED_EUCLIDEAN = LpDistance(normalize_embeddings=False, power=2)


def features(*shape: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=generator, dtype=torch.float64).requires_grad_()


def value_and_grads(loss_fn, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
    loss = loss_fn(*inputs)
    return (loss.detach(), *torch.autograd.grad(loss, inputs))


def assert_same_loss(loss_fn, reference_fn, *inputs: torch.Tensor) -> None:
    """Same value and same gradient for every input (float64 default tolerances: rtol 1e-7, atol 1e-7)."""
    ours, theirs = value_and_grads(loss_fn, *inputs), value_and_grads(reference_fn, *inputs)
    torch.testing.assert_close(ours, theirs)


def cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a * b).sum() / (a.norm() * b.norm())


def nt_xent_reference(view1: torch.Tensor, view2: torch.Tensor, temperature: float) -> torch.Tensor:
    views = [*view1, *view2]
    n, total = len(view1), 0.0
    for a in range(2 * n):
        partner = (a + n) % (2 * n)
        others = sum(torch.exp(cosine(views[a], views[b]) / temperature) for b in range(2 * n) if b != a)
        total = total - torch.log(torch.exp(cosine(views[a], views[partner]) / temperature) / others)
    return total / (2 * n)


def info_nce_reference(queries, keys, temperature, offset, negatives, in_batch_negatives) -> torch.Tensor:
    total = 0.0
    for i, query in enumerate(queries):
        positive = keys[offset + i]
        candidates = [*keys] if in_batch_negatives else [positive]
        candidates += [] if negatives is None else [*negatives]
        denominator = sum(torch.exp(cosine(query, c) / temperature) for c in candidates)
        total = total - torch.log(torch.exp(cosine(query, positive) / temperature) / denominator)
    return total / len(queries)


def test_nt_xent_matches_loop_reference_and_pml():
    view1, view2 = features(5, 4, seed=1), features(5, 4, seed=2)
    assert_same_loss(lambda a, b: nt_xent_loss(a, b, 0.3), lambda a, b: nt_xent_reference(a, b, 0.3), view1, view2)
    # pml: one label per image, shared by its two views, so each view's one positive is its partner
    labels = torch.arange(5).repeat(2)
    pml = NTXentLoss(temperature=0.3)
    assert_same_loss(lambda a, b: nt_xent_loss(a, b, 0.3), lambda a, b: pml(torch.cat([a, b]), labels), view1, view2)


@pytest.mark.parametrize(
    ("offset", "with_queue", "in_batch_negatives"),
    [(0, False, True), (2, True, True), (1, True, False)],
    ids=["clip-direction", "gathered-keys-and-queue", "moco-v2-positive-and-queue"],
)
def test_info_nce_matches_loop_reference(offset, with_queue, in_batch_negatives):
    queries, keys = features(3, 4, seed=3), features(6, 4, seed=4)
    queue = features(5, 4, seed=5) if with_queue else None

    def ours(q, k):
        return info_nce_loss(q, k, 0.2, offset=offset, negatives=queue, in_batch_negatives=in_batch_negatives)

    def reference(q, k):
        return info_nce_reference(q, k, 0.2, offset, queue, in_batch_negatives)

    assert_same_loss(ours, reference, queries, keys)


def test_info_nce_matches_pml_with_reference_embeddings():
    """pml's NTXent with ref_emb: query i's positive is the key with its label; queue rows get labels of their own."""
    queries, keys, queue = features(3, 4, seed=6), features(6, 4, seed=7), features(5, 4, seed=8)
    offset, pml = 2, NTXentLoss(temperature=0.2)
    query_labels, reference_labels = torch.arange(offset, offset + 3), torch.arange(6 + 5)

    def ours(q, k, neg):
        return info_nce_loss(q, k, 0.2, offset=offset, negatives=neg)

    def theirs(q, k, neg):
        return pml(q, query_labels, ref_emb=torch.cat([k, neg]), ref_labels=reference_labels)

    assert_same_loss(ours, theirs, queries, keys, queue)


def test_local_rows_at_an_offset_give_the_full_batch_losses_and_gradients():
    """Two 'ranks' of 3 rows against the gathered 6 columns: their rows' losses are the full batch's, and the
    gradients of their summed losses add up to the full batch's (what a gather with gradients relies on)."""
    view1, view2 = features(6, 4, seed=9), features(6, 4, seed=10)
    full = nt_xent_loss(view1, view2, 0.5, reduction="none")
    full_grads = torch.autograd.grad(full.sum(), (view1, view2))
    rank_grads = []
    for rank in range(2):
        rows = slice(3 * rank, 3 * rank + 3)
        local = nt_xent_loss(
            view1[rows], view2[rows], 0.5, all_view1=view1, all_view2=view2, offset=3 * rank, reduction="none"
        )
        torch.testing.assert_close(local, torch.cat([full[:6][rows], full[6:][rows]]))
        rank_grads.append(torch.autograd.grad(local.sum(), (view1, view2)))
    torch.testing.assert_close(tuple(a + b for a, b in zip(*rank_grads, strict=True)), full_grads)

    queries, keys = features(6, 4, seed=11), features(6, 4, seed=12)
    full = info_nce_loss(queries, keys, 0.5, reduction="none")
    for rank in range(2):
        rows = slice(3 * rank, 3 * rank + 3)
        torch.testing.assert_close(
            info_nce_loss(queries[rows], keys, 0.5, offset=3 * rank, reduction="none"), full[rows]
        )


def test_nce_matches_ratio_form_with_uniform_noise():
    positive, noise = features(4, seed=13), features(4, 6, seed=14)
    temperature, normalizer, num_data = 0.1, 37.0, 50
    noise_probability = 1.0 / num_data

    def data_posterior(s):  # P(D=1|v) = exp(s/T) / (exp(s/T) + K * Pn * Z), K = 6
        return torch.exp(s / temperature) / (torch.exp(s / temperature) + 6 * noise_probability * normalizer)

    def reference(positive_scores, noise_scores):
        total = 0.0
        for b in range(4):
            total = total - torch.log(data_posterior(positive_scores[b]))
            for k in range(6):
                total = total - torch.log(1 - data_posterior(noise_scores[b, k]))
        return total / 4

    assert_same_loss(lambda p, n: nce_loss(p, n, temperature, normalizer, num_data), reference, positive, noise)
    assert_same_loss(lambda p, n: nce_loss(p, n, temperature, normalizer, num_data, reduction="sum"),
                     lambda p, n: reference(p, n) * 4, positive, noise)  # fmt: skip


def test_nce_normalizer_is_the_monte_carlo_estimate():
    scores = features(3, 5, seed=15)
    expected = 50 * sum(math.exp(s / 0.1) for s in scores.flatten().tolist()) / 15
    assert nce_normalizer(scores, 0.1, 50) == pytest.approx(expected, rel=1e-12)


def test_triplet_matches_loop_reference_and_pml():
    anchor, positive, negative = features(6, 3, seed=16), features(6, 3, seed=17), features(6, 3, seed=18)
    margin = 0.5

    def reference(a, p, n):
        terms = [torch.relu((a[i] - p[i]).norm() - (a[i] - n[i]).norm() + margin) for i in range(len(a))]
        return sum(terms) / len(terms)

    active = ((anchor - positive).norm(dim=1) - (anchor - negative).norm(dim=1) + margin > 0).sum()
    assert 0 < active < 6  # the data exercises both sides of the hinge
    ours = lambda a, p, n: triplet_margin_loss(a, p, n, margin)  # noqa: E731
    assert_same_loss(ours, reference, anchor, positive, negative)
    # pml reduces with AvgNonZeroReducer by default (mean over violated triplets only); the paper's mean is MeanReducer
    pml = TripletMarginLoss(margin=margin, distance=RAW_EUCLIDEAN, reducer=MeanReducer())
    rows = torch.arange(6)
    triplets = (rows, rows + 6, rows + 12)
    labels = torch.zeros(18, dtype=torch.long)  # ignored when the triplets are given
    assert_same_loss(ours, lambda a, p, n: pml(torch.cat([a, p, n]), labels, triplets), anchor, positive, negative)


def test_batch_hard_triplet_matches_loop_reference_and_pml():
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, 3])  # label 3 appears once: that anchor has no triplet
    centres = 3 * torch.eye(4, 3, dtype=torch.float64)  # clustered, so that some anchors already meet the margin
    embeddings = (centres[labels] + features(9, 3, seed=19)).detach().requires_grad_()
    margin = 0.5

    def reference(x):
        terms = []
        for a in range(len(x)):
            positives = [(x[a] - x[p]).norm() for p in range(len(x)) if p != a and labels[p] == labels[a]]
            negatives = [(x[a] - x[n]).norm() for n in range(len(x)) if labels[n] != labels[a]]
            if positives and negatives:
                terms.append(torch.relu(max(positives) - min(negatives) + margin))
        assert len(terms) == 8 and 0 < sum(t > 0 for t in terms) < 8  # both sides of the hinge
        return sum(terms) / len(terms)

    ours = lambda x: batch_hard_triplet_loss(x, labels, margin)  # noqa: E731
    assert_same_loss(ours, reference, embeddings)
    miner = BatchHardMiner(distance=RAW_EUCLIDEAN)
    pml = TripletMarginLoss(margin=margin, distance=RAW_EUCLIDEAN, reducer=MeanReducer())
    assert_same_loss(ours, lambda x: pml(x, labels, miner(x, labels)), embeddings)


def test_n_pair_matches_loop_reference_and_pml():
    anchors, positives = features(5, 4, seed=20), features(5, 4, seed=21)

    def reference(f, f_plus):
        total = 0.0
        for i in range(len(f)):
            total = total + torch.log(
                1 + sum(torch.exp(f[i] @ f_plus[j] - f[i] @ f_plus[i]) for j in range(5) if j != i)
            )
        return total / len(f)

    assert_same_loss(n_pair_loss, reference, anchors, positives)
    labels = torch.arange(5).repeat(2)  # pml takes the first pair of each label: anchor i with positive i
    pml = NPairsLoss(distance=DotProductSimilarity(normalize_embeddings=False))  # pml's default normalises
    assert_same_loss(n_pair_loss, lambda a, p: pml(torch.cat([a, p]), labels), anchors, positives)


def test_soft_nearest_neighbour_matches_loop_reference_and_pml_nca():
    points = features(8, 3, seed=22)
    labels = torch.tensor([0, 0, 1, 1, 1, 2, 2, 3])  # label 3 appears once: no same-label neighbour, left out
    temperature = 2.0

    def kernel(x, i, j):
        return torch.exp(-((x[i] - x[j]) ** 2).sum() / temperature)

    def reference(x):
        terms = []
        for i in range(len(x)):
            same = [kernel(x, i, j) for j in range(len(x)) if j != i and labels[j] == labels[i]]
            if same:
                terms.append(-torch.log(sum(same) / sum(kernel(x, i, k) for k in range(len(x)) if k != i)))
        return sum(terms) / len(terms)

    ours = lambda x: soft_nearest_neighbour_loss(x, labels, temperature)  # noqa: E731
    assert_same_loss(ours, reference, points)
    # NCA's loss is the same sum: softmax over negative squared distances (scaled by 1/T), summed over the class
    pml = NCALoss(softmax_scale=1 / temperature, distance=RAW_SQUARED_EUCLIDEAN)
    assert_same_loss(ours, lambda x: pml(x, labels), points)


def test_coincident_points_give_finite_gradients():
    """Two identical rows (a duplicated image) sit at distance 0, where the Euclidean norm has no derivative."""
    points = features(6, 3, seed=23).detach()
    points[1] = points[0]
    points.requires_grad_()
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    for loss in (
        triplet_margin_loss(points, points, points.roll(2, dims=0), 0.5),
        batch_hard_triplet_loss(points, labels, 0.5),
        soft_nearest_neighbour_loss(points, labels, 1.0),
    ):
        (grad,) = torch.autograd.grad(loss, points)
        assert torch.isfinite(grad).all()


X, Y = torch.zeros(4, 3), torch.zeros(5, 3)
LABELS = torch.tensor([0, 0, 1, 1])


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: nt_xent_loss(X, Y, 0.1), r"view1 and view2 must have the same shape, got \(4, 3\) and \(5, 3\)"),
        (lambda: nt_xent_loss(X, X, 0.0), r"temperature must be > 0, got 0.0"),
        (lambda: nt_xent_loss(X, X, 0.1, all_view1=Y, all_view2=Y, offset=2), r"4 rows of view1 at offset 2"),
        (lambda: info_nce_loss(X, torch.zeros(4, 2), 0.1), r"same feature dim, got shapes \(4, 3\) and \(4, 2\)"),
        (lambda: info_nce_loss(X, X, -1.0), r"temperature must be > 0, got -1.0"),
        (lambda: info_nce_loss(X, X, 0.1, negatives=torch.zeros(2, 5)), r"queries and negatives must have"),
        (lambda: nce_loss(torch.zeros(4), torch.zeros(3, 2), 0.1, 1.0, 10), r"got shapes \(4,\) and \(3, 2\)"),
        (lambda: nce_loss(torch.zeros(4), torch.zeros(4, 2), 0.0, 1.0, 10), r"temperature must be > 0"),
        (lambda: nce_loss(torch.zeros(4), torch.zeros(4, 2), 0.1, 0.0, 10), r"normalizer must be > 0"),
        (lambda: triplet_margin_loss(X, X, Y, 1.0), r"anchor and negative must have the same shape"),
        (lambda: triplet_margin_loss(X, X, X, -1.0), r"margin must be >= 0, got -1.0"),
        (lambda: batch_hard_triplet_loss(X, torch.arange(4), 1.0), r"needs an anchor with both"),
        (lambda: batch_hard_triplet_loss(X, torch.zeros(5), 1.0), r"labels must have shape \(4,\).*got \(5,\)"),
        (lambda: n_pair_loss(X, Y), r"anchors and positives must have the same shape, got \(4, 3\) and \(5, 3\)"),
        (lambda: soft_nearest_neighbour_loss(X, LABELS, 0.0), r"temperature must be > 0"),
        (lambda: soft_nearest_neighbour_loss(X, torch.arange(4), 1.0), r"some label to appear twice"),
        (lambda: soft_nearest_neighbour_loss(torch.zeros(4), LABELS, 1.0), r"features must be 2-D"),
    ],
)
def test_bad_input_is_a_one_line_value_error(call, message):
    with pytest.raises(ValueError, match=message) as error:
        call()
    assert "\n" not in str(error.value)
