"""Representation-quality evaluation (linear probe, weighted kNN, few-shot) and PSNR, on synthetic features and
images."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from skimage.metrics import peak_signal_noise_ratio

from fmkit.eval.image_quality import psnr
from fmkit.eval.probe import few_shot_accuracy, knn_accuracy, linear_probe_accuracy

CLASSES, DIM = 10, 32


def clustered(rng: np.random.Generator, samples: int, noise: float) -> tuple[np.ndarray, np.ndarray]:
    """float32 features around one far-apart mean per class (fixed by a seed shared by every split)."""
    means = np.random.default_rng(123).normal(scale=5.0, size=(CLASSES, DIM))
    labels = rng.integers(CLASSES, size=samples)
    features = means[labels] + rng.normal(scale=noise, size=(samples, DIM))
    return features.astype(np.float32), labels


def random_split(rng: np.random.Generator, samples: int) -> tuple[np.ndarray, np.ndarray]:
    return rng.normal(size=(samples, DIM)).astype(np.float32), rng.integers(CLASSES, size=samples)


def on_circle(*cosines: float) -> np.ndarray:
    """2-D unit vectors whose cosine similarity to (1, 0) is each of `cosines`."""
    return np.array([[c, math.sqrt(1 - c * c)] for c in cosines], dtype=np.float32)


PROBES = [linear_probe_accuracy, knn_accuracy, few_shot_accuracy]


@pytest.mark.parametrize("evaluate", PROBES)
def test_separable_features_are_classified(evaluate):
    rng = np.random.default_rng(0)
    assert evaluate(*clustered(rng, 1000, 1.0), *clustered(rng, 500, 1.0)) > 0.95


@pytest.mark.parametrize("evaluate", PROBES)
def test_random_labels_score_near_chance(evaluate):
    rng = np.random.default_rng(1)
    assert evaluate(*random_split(rng, 1000), *random_split(rng, 2000)) < 0.3


def test_linear_probe_is_deterministic():
    """Overlapping classes (accuracy well below 1) so that any run-to-run difference would show."""
    rng = np.random.default_rng(2)
    train, test = clustered(rng, 1000, 8.0), clustered(rng, 1000, 8.0)
    first = linear_probe_accuracy(*train, *test)
    assert 0.3 < first < 0.95
    assert linear_probe_accuracy(*train, *test) == first


def test_linear_probe_ignores_constant_columns():
    rng = np.random.default_rng(3)
    (train, train_labels), (test, test_labels) = clustered(rng, 500, 1.0), clustered(rng, 300, 1.0)
    train[:, :4], test[:, :4] = 0.0, 0.0
    train[:, 4], test[:, 4] = 5.0, -5.0
    assert linear_probe_accuracy(train, train_labels, test, test_labels) > 0.95


def test_knn_defaults_are_200_neighbours_weighted_at_temperature_0_1():
    """One class-0 neighbour at cosine 0.9 against 200 class-1 ones at 0.45, of which the 199 nearest vote.

    Weights relative to the best neighbour are exp((cos - 0.9) / T): class 0 gets 1, class 1 gets 199 x e^-4.5 =
    2.21 at T=0.1 and k=200 (class 1 wins), 199 x e^-6.43 = 0.32 at T=0.07, 19 x e^-4.5 = 0.21 at k=20.
    """
    train = on_circle(0.9, *[0.45] * 200)
    labels = np.array([0] + [1] * 200)
    query = np.array([[1.0, 0.0]], dtype=np.float32)
    assert knn_accuracy(train, labels, query, np.array([1])) == 1.0
    assert knn_accuracy(train, labels, query, np.array([1]), k=200, temperature=0.1) == 1.0
    assert knn_accuracy(train, labels, query, np.array([0]), k=200, temperature=0.07) == 1.0
    assert knn_accuracy(train, labels, query, np.array([0]), k=20, temperature=0.1) == 1.0


def test_few_shot_fits_on_few_labels_per_class():
    """Overlapping classes: ten labels per class fit a worse probe than a thousand, the same one every time."""
    rng = np.random.default_rng(7)
    train, test = clustered(rng, 1000, 8.0), clustered(rng, 1000, 8.0)
    few = few_shot_accuracy(*train, *test)
    assert 0.1 < few < linear_probe_accuracy(*train, *test) - 0.05
    assert few_shot_accuracy(*train, *test) == few
    assert few_shot_accuracy(*train, *test, shots=40) > few


def test_few_shot_with_every_label_is_the_linear_probe():
    """Asking for more shots than a class has uses all of it, in every draw: the full linear probe."""
    rng = np.random.default_rng(8)
    train, test = clustered(rng, 200, 8.0), clustered(rng, 300, 8.0)
    assert few_shot_accuracy(*train, *test, shots=1000, draws=2) == linear_probe_accuracy(*train, *test)


def test_few_shot_rejects_zero_shots():
    rng = np.random.default_rng(9)
    with pytest.raises(ValueError, match="expected shots >= 1 and draws >= 1, got shots=0"):
        few_shot_accuracy(*random_split(rng, 20), *random_split(rng, 10), shots=0)


def test_knn_with_k_beyond_the_train_set_uses_all_of_it():
    """Two near neighbours of class 0 outweigh four far ones of class 1 only if all six vote."""
    train = on_circle(0.99, 0.98, 0.1, 0.1, 0.1, 0.1)
    labels = np.array([0, 0, 1, 1, 1, 1])
    query = np.array([[1.0, 0.0]], dtype=np.float32)
    assert knn_accuracy(train, labels, query, np.array([0]), k=100) == 1.0
    assert knn_accuracy(train, labels, query, np.array([1]), k=100, temperature=1e4) == 1.0


def test_knn_weights_close_neighbours_over_a_majority():
    """One very close class-0 neighbour against three less close class-1 ones: a plain vote says 1."""
    train = on_circle(0.99, 0.8, 0.8, 0.8)
    labels = np.array([0, 1, 1, 1])
    query = np.array([[1.0, 0.0]], dtype=np.float32)
    assert knn_accuracy(train, labels, query, np.array([0]), k=4, temperature=0.07) == 1.0
    # A huge temperature makes every weight ~1, which is the plain majority vote.
    assert knn_accuracy(train, labels, query, np.array([1]), k=4, temperature=1e4) == 1.0


def test_knn_compares_directions_not_lengths():
    """A short vector pointing the query's way beats a long one at 45 degrees.

    All-zero rows are similarity 0 to everything rather than NaN: the zero query ties and takes train row 0.
    """
    train = np.array([[10.0, 10.0], [0.1, 0.0], [0.0, 0.0]], dtype=np.float32)
    query = np.array([[3.0, 0.0], [0.0, 0.0]], dtype=np.float32)
    assert knn_accuracy(train, np.array([1, 0, 2]), query, np.array([0, 1]), k=1) == 1.0


def test_knn_ties_go_to_the_lower_train_index_and_the_smaller_label():
    query = np.array([[1.0, 0.0]], dtype=np.float32)
    equally_far = on_circle(0.5, 0.5)
    assert knn_accuracy(equally_far, np.array([7, 3]), query, np.array([7]), k=1) == 1.0
    assert knn_accuracy(equally_far, np.array([3, 7]), query, np.array([3]), k=1) == 1.0
    assert knn_accuracy(equally_far, np.array([7, 3]), query, np.array([3]), k=2) == 1.0


def test_knn_matches_a_plain_reference_across_chunks_and_ties():
    """Entries ±0.5 on 4 of 8 dims: unit norm and exact dot products, so similarities tie often and exactly.

    20,000 train rows make the test side run in several chunks.
    """
    rng = np.random.default_rng(4)

    def split(samples: int) -> tuple[np.ndarray, np.ndarray]:
        signs = rng.choice([-0.5, 0.5], size=(samples, 8))
        signs[np.arange(samples)[:, None], rng.permuted(np.tile(np.arange(8), (samples, 1)), axis=1)[:, :4]] = 0.0
        return signs.astype(np.float32), rng.integers(5, size=samples)

    (train, train_labels), (test, test_labels) = split(20_000), split(500)
    k, temperature = 20, 0.07
    similarity = test.astype(np.float64) @ train.T.astype(np.float64)
    expected = []
    for row in similarity:
        nearest = np.lexsort((np.arange(len(row)), -row))[:k]
        votes = np.zeros(5)
        np.add.at(votes, train_labels[nearest], np.exp((row[nearest] - row[nearest].max()) / temperature))
        expected.append(votes.argmax())
    reference = float(np.mean(np.array(expected) == test_labels))
    assert knn_accuracy(train, train_labels, test, test_labels, k, temperature) == reference


@pytest.mark.parametrize("evaluate", PROBES)
@pytest.mark.parametrize(
    ("train_shape", "train_count", "test_shape", "test_count", "message"),
    [
        ((20, 8), 20, (10, 6), 10, "dim"),
        ((20, 8), 19, (10, 8), 10, "train_labels has 19"),
        ((20, 8), 20, (10, 8), 11, "test_labels has 11"),
        ((20,), 20, (10, 8), 10, r"\[samples, dim\]"),
    ],
)
def test_mismatched_shapes_are_rejected(evaluate, train_shape, train_count, test_shape, test_count, message):
    rng = np.random.default_rng(5)
    with pytest.raises(ValueError, match=message):
        evaluate(
            rng.normal(size=train_shape).astype(np.float32),
            np.arange(train_count) % 2,
            rng.normal(size=test_shape).astype(np.float32),
            np.arange(test_count) % 2,
        )


@pytest.mark.parametrize("evaluate", PROBES)
def test_non_finite_features_are_rejected(evaluate):
    rng = np.random.default_rng(6)
    train, labels = random_split(rng, 20)
    train[3, 1] = np.nan
    with pytest.raises(ValueError, match="train_features contains NaN"):
        evaluate(train, labels, *random_split(rng, 10))


def noisy_pair(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Targets in [0, 1] and predictions with a different noise level per image."""
    generator = torch.Generator().manual_seed(seed)
    target = torch.rand(4, 3, 16, 16, generator=generator)
    noise = torch.randn(target.shape, generator=generator) * torch.tensor([0.01, 0.05, 0.1, 0.3]).view(4, 1, 1, 1)
    return (target + noise).clamp(0, 1), target


def test_psnr_matches_scikit_image_per_image():
    prediction, target = noisy_pair(0)
    values = psnr(prediction, target)
    assert values.shape == (4,) and values.dtype == torch.float64
    expected = [
        peak_signal_noise_ratio(t.double().numpy(), p.double().numpy(), data_range=1.0)
        for p, t in zip(prediction, target, strict=True)
    ]
    assert torch.allclose(values, torch.tensor(expected, dtype=torch.float64))
    assert torch.all(values[:-1] > values[1:])


def test_psnr_respects_data_range():
    prediction, target = noisy_pair(1)
    in_bytes = psnr(prediction * 255, target * 255, data_range=255.0)
    expected = [
        peak_signal_noise_ratio(t.double().numpy() * 255, p.double().numpy() * 255, data_range=255.0)
        for p, t in zip(prediction, target, strict=True)
    ]
    assert torch.allclose(in_bytes, torch.tensor(expected, dtype=torch.float64))
    assert torch.allclose(in_bytes, psnr(prediction, target))
    assert torch.allclose(psnr(prediction, target, data_range=2.0), psnr(prediction, target) + 20 * math.log10(2))


def test_psnr_of_identical_images_is_large_and_finite():
    _, target = noisy_pair(2)
    values = psnr(target, target.clone())
    assert torch.all(torch.isfinite(values))
    assert torch.allclose(values, torch.full((4,), 100.0, dtype=torch.float64))


def test_psnr_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match=r"\(2, 3, 8, 8\) and \(2, 3, 8, 7\)"):
        psnr(torch.zeros(2, 3, 8, 8), torch.zeros(2, 3, 8, 7))


@pytest.mark.parametrize(("image_size", "stored_size"), [(32, 32), (32, 36), (64, 72), (224, 256)])
def test_probe_pixels_follow_the_exported_processor_and_feed_what_it_makes_of_an_image(image_size, stored_size):
    """The probes read their crop and normalisation off fmkit's exported processor: ImageNet-normalised RGB centre
    crops of image_size, the same tensor the processor makes of an image stored at stored_size."""
    from PIL import Image

    from fmkit.eval.representation import ProbePixels
    from fmkit.models.backbone import IMAGENET_MEAN, IMAGENET_STD, image_processor

    processor = image_processor(image_size, stored_size)
    pixels = ProbePixels.of(processor)
    assert pixels == ProbePixels(image_size, IMAGENET_MEAN, IMAGENET_STD)
    images = np.random.default_rng(0).integers(0, 256, (2, stored_size, stored_size, 3), dtype=np.uint8)
    made = processor([Image.fromarray(image) for image in images], return_tensors="pt").pixel_values
    torch.testing.assert_close(pixels(images), made, atol=1e-4, rtol=0)
