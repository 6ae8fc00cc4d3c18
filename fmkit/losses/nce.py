"""NCE as in instance discrimination (Wu et al. 2018): tell the data sample from K noise samples, one binary
decision each, so the softmax over all N instances never has to be computed.

With P(i|v) = exp(s / T) / Z (Z a fixed estimate of the partition function) and uniform noise Pn = 1/N, the
posterior that a sample came from the data rather than the noise is

    h(s) = P(D=1|v) = exp(s / T) / ( exp(s / T) + K * Pn * Z )  =  sigmoid(s / T - log(K * Z / N))

and the loss over one positive score s+ and K noise scores s_1..s_K is

    l = -log h(s+) - sum_k log(1 - h(s_k)),

averaged (or summed) over the batch. It is computed through log-sigmoid, which stays finite where the ratio form
underflows.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from fmkit.losses._checks import check_positive
from fmkit.losses.infonce import Reduction


def nce_loss(
    positive_scores: torch.Tensor,
    noise_scores: torch.Tensor,
    temperature: float,
    normalizer: float,
    num_data: int,
    reduction: Reduction = "mean",
) -> torch.Tensor:
    """positive_scores: (B,) similarities s+ (e.g. v_i . f_i with the memory bank); noise_scores: (B, K)."""
    check_positive("temperature", temperature)
    check_positive("normalizer", normalizer)
    check_positive("num_data", num_data)
    shapes_fit = positive_scores.ndim == 1 and noise_scores.ndim == 2 and len(noise_scores) == len(positive_scores)
    if not shapes_fit or noise_scores.shape[1] == 0:
        raise ValueError(
            f"positive_scores must be (B,) and noise_scores (B, K >= 1) for the same B, got shapes "
            f"{tuple(positive_scores.shape)} and {tuple(noise_scores.shape)}"
        )
    noise_count = noise_scores.shape[1]
    log_noise_odds = math.log(noise_count * normalizer / num_data)
    positive_term = F.logsigmoid(positive_scores / temperature - log_noise_odds)
    noise_term = F.logsigmoid(log_noise_odds - noise_scores / temperature).sum(dim=1)
    losses = -(positive_term + noise_term)
    return losses.mean() if reduction == "mean" else losses.sum() if reduction == "sum" else losses


def nce_normalizer(scores: torch.Tensor, temperature: float, num_data: int) -> float:
    """Wu et al.'s Monte-Carlo estimate Z = N * mean_j exp(s_j / T) over sampled scores, taken once and then fixed."""
    check_positive("temperature", temperature)
    check_positive("num_data", num_data)
    return num_data * torch.exp(scores.detach() / temperature).mean().item()
