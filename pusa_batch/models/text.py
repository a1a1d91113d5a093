"""umT5 prompt encoding as Wan and Pusa do it, with a per-pipeline LRU cache of embeddings.

Tokenize to `max_length` (512 for the real model), run the encoder with the attention mask and
zero every position past the prompt's real length (Pusa's `wan_prompter`, diffusers'
`_get_t5_prompt_embeds`). Embeddings are kept on the CPU in the cache and returned as
`(1, max_length, d_model)` tensors.

The umT5 is a transformers `UMT5EncoderModel` folder (`-Diffusers` layout) or Wan's original
`models_t5_umt5-xxl-enc-bf16.pth` (`models.original_wan.load_umt5_file`); either way the tokenizer
is a transformers folder (`tokenizer/`, or the original layout's `google/umt5-xxl/`).
"""

from __future__ import annotations

import contextlib
import html
import os
import re
from collections import OrderedDict
from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

import torch
from torch import Tensor

from pusa_batch.errors import PipelineError

V = TypeVar("V")


def clean_prompt(text: str) -> str:
    """diffusers' Wan `prompt_clean` without ftfy: unescape HTML twice, collapse whitespace."""
    text = html.unescape(html.unescape(text))
    return re.sub(r"\s+", " ", text).strip()


@contextlib.contextmanager
def no_hub_progress_bars() -> Iterator[None]:
    """Silence transformers' load/save progress bars (they would mix into our progress view)."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def load_text_model(
    model_cls,
    name: str,
    text_encoder_path: str | os.PathLike,
    tokenizer_path: str | os.PathLike,
    dtype: torch.dtype,
) -> tuple[Any, torch.nn.Module]:
    """(tokenizer, encoder) from two transformers folders; a PipelineError names the bad one.
    `model_cls` None loads the tokenizer only (the encoder is then None)."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(os.fspath(tokenizer_path))
    except (OSError, ValueError) as e:
        raise PipelineError(f"cannot load the {name} tokenizer from {tokenizer_path}: {e}") from e
    if model_cls is None:
        return tokenizer, None
    try:
        with no_hub_progress_bars():
            model = model_cls.from_pretrained(os.fspath(text_encoder_path), dtype=dtype)
    except (OSError, ValueError) as e:
        raise PipelineError(
            f"cannot load the {name} text encoder from {text_encoder_path}: {e}. It must be a "
            f"transformers {model_cls.__name__} folder (config.json + model*.safetensors)."
        ) from e
    return tokenizer, model


class PromptCache(Generic[V]):
    """The `size` most recently used prompt encodings (size 0 keeps none)."""

    def __init__(self, size: int):
        self.size = size
        self._items: OrderedDict[str, V] = OrderedDict()

    def get(self, key: str, encode: Callable[[], V]) -> V:
        hit = self._items.get(key)
        if hit is not None:
            self._items.move_to_end(key)
            return hit
        value = encode()
        if self.size > 0:
            self._items[key] = value
            while len(self._items) > self.size:
                self._items.popitem(last=False)
        return value


class TextEncoder:
    """Tokenizer + umT5 encoder, loaded once; `encode(prompt)` is cached by prompt text."""

    def __init__(
        self,
        tokenizer,
        model: torch.nn.Module,
        *,
        max_length: int,
        device: torch.device,
        out_dtype: torch.dtype,
        cache_size: int = 256,
    ):
        self.tokenizer = tokenizer
        self.model = model.eval()
        self.max_length = max_length
        self.device = device
        self.out_dtype = out_dtype
        self.calls = 0  # encoder forward passes actually run (cache misses)
        self._cache: PromptCache[Tensor] = PromptCache(cache_size)

    @classmethod
    def load(
        cls,
        text_encoder_path: str | os.PathLike,
        tokenizer_path: str | os.PathLike,
        *,
        max_length: int,
        device: torch.device,
        dtype: torch.dtype,
        cache_size: int = 256,
    ) -> TextEncoder:
        """Load a transformers `UMT5EncoderModel` folder, or Wan's original umT5 `.pth`, and
        its tokenizer folder.

        `device` is where the encoder runs (the CPU when the pipeline offloads it).
        """
        from transformers import UMT5EncoderModel

        if os.path.isfile(text_encoder_path):
            from pusa_batch.models.original_wan import load_umt5_file

            tokenizer, _ = load_text_model(None, "umT5", None, tokenizer_path, dtype)
            model = load_umt5_file(text_encoder_path, dtype)
        else:
            tokenizer, model = load_text_model(
                UMT5EncoderModel, "umT5", text_encoder_path, tokenizer_path, dtype
            )
        return cls(
            tokenizer,
            model.to(device),
            max_length=max_length,
            device=device,
            out_dtype=dtype,
            cache_size=cache_size,
        )

    def encode(self, prompt: str) -> Tensor:
        """(1, max_length, d_model) embeddings on the CPU, zero past the prompt's tokens."""
        key = clean_prompt(prompt)
        return self._cache.get(key, lambda: self._run(key))

    @torch.inference_mode()
    def _run(self, text: str) -> Tensor:
        tokens = self.tokenizer(
            [text],
            padding="max_length",
            max_length=self.max_length,
            truncation=True,
            add_special_tokens=True,
            return_attention_mask=True,
            return_tensors="pt",
        )
        ids = tokens.input_ids.to(self.device)
        mask = tokens.attention_mask.to(self.device)
        self.calls += 1
        hidden = self.model(input_ids=ids, attention_mask=mask).last_hidden_state
        hidden = hidden.masked_fill(mask[..., None] == 0, 0.0)
        return hidden.to(device="cpu", dtype=self.out_dtype)
