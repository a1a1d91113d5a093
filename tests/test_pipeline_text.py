"""Prompt encoding (`models/text.py`) on the tiny umT5: masking, cleaning and the LRU cache."""

from __future__ import annotations

import pytest
import torch

from pusa_batch.errors import PipelineError
from pusa_batch.models.text import TextEncoder, clean_prompt
from pusa_batch.models.tiny import ensure_tiny_model


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return ensure_tiny_model("wan2.1", tmp_path_factory.getbasetemp() / "pusa-cache" / "tiny")


def encoder(tiny_dir, cache_size: int = 2) -> TextEncoder:
    return TextEncoder.load(
        tiny_dir / "text_encoder",
        tiny_dir / "tokenizer",
        max_length=16,
        device=torch.device("cpu"),
        dtype=torch.float32,
        cache_size=cache_size,
    )


def test_clean_prompt_unescapes_html_and_collapses_whitespace():
    assert clean_prompt("  a &amp;amp; b\n\tc  ") == "a & b c"


def test_prompts_differing_only_in_spacing_share_one_encoding(tiny_dir):
    enc = encoder(tiny_dir)
    first = enc.encode("a cat  walking")
    again = enc.encode(" a cat walking\n")
    assert enc.calls == 1
    assert torch.equal(first, again)


def test_least_recently_used_prompt_is_evicted(tiny_dir):
    enc = encoder(tiny_dir, cache_size=2)
    for prompt in ("one", "two", "one", "three"):  # "two" is now the oldest: evicted
        enc.encode(prompt)
    assert enc.calls == 3
    enc.encode("one")
    assert enc.calls == 3
    enc.encode("two")
    assert enc.calls == 4


def test_cache_size_zero_always_encodes(tiny_dir):
    enc = encoder(tiny_dir, cache_size=0)
    enc.encode("same")
    enc.encode("same")
    assert enc.calls == 2


def test_long_prompts_are_truncated_to_max_length(tiny_dir):
    emb = encoder(tiny_dir).encode(" ".join(["sunset"] * 100))
    assert emb.shape == (1, 16, 32)
    assert torch.count_nonzero(emb.abs().sum(-1)) == 16


def test_encoding_matches_a_direct_masked_umt5_call(tiny_dir):
    enc = encoder(tiny_dir)
    tokens = enc.tokenizer("a red car", return_tensors="pt")
    n = tokens.input_ids.shape[1]
    with torch.no_grad():
        direct = enc.model(**tokens).last_hidden_state
    torch.testing.assert_close(enc.encode("a red car")[:, :n], direct)


def test_a_missing_folder_is_a_pipeline_error(tmp_path, tiny_dir):
    with pytest.raises(PipelineError, match="text encoder"):
        TextEncoder.load(
            tmp_path / "absent",
            tiny_dir / "tokenizer",
            max_length=8,
            device=torch.device("cpu"),
            dtype=torch.float32,
        )
