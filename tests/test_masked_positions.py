"""The masked-only head gives exactly the full model's logits at the masked positions, for every
masked-LM family named in the docs."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoConfig, AutoModelForMaskedLM

from fmkit.models.masked_positions import MaskedPositionsOnly

SMALL = {
    "bert": {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64},
    "roberta": {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64},
    "distilbert": {"dim": 32, "n_layers": 2, "n_heads": 2, "hidden_dim": 64},
    "modernbert": {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64},
}


@pytest.mark.parametrize("model_type", sorted(SMALL))
def test_masked_only_logits_equal_full_logits_at_masked_positions(model_type):
    torch.manual_seed(0)
    config = AutoConfig.for_model(model_type, vocab_size=128, pad_token_id=0, **SMALL[model_type])
    model = AutoModelForMaskedLM.from_config(config, attn_implementation="sdpa").eval()
    input_ids = torch.randint(5, 128, (3, 16))
    masked = torch.rand(3, 16) < 0.3
    with torch.no_grad():
        full = model(input_ids=input_ids).logits
        head = MaskedPositionsOnly(model)
        with head.selecting(masked):
            selected = model(input_ids=input_ids).logits
        again = model(input_ids=input_ids).logits  # outside the block the model is unchanged
    assert selected.shape == (int(masked.sum()), full.shape[-1])
    torch.testing.assert_close(selected, full[masked], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(again, full)
