"""A tiny causal language model and a JSONL dataset, made offline, for the fine-tuning tests."""

from __future__ import annotations

import json
from pathlib import Path

SENTENCES = [
    "the ship sails at dawn", "the crew loads the cargo", "the harbour is calm today",
    "a model learns from data", "the captain reads the chart", "the wind fills the sails",
    "the cargo is safe below", "data makes the model better",
]


def save_tiny_lm(folder: Path) -> Path:
    """A 2-layer GPT-2 with a word-level tokenizer over SENTENCES, saved with save_pretrained."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    words = sorted({word for sentence in SENTENCES for word in sentence.split()})
    vocabulary = {token: index for index, token in enumerate(["<unk>", "<eos>", *words])}
    backend = Tokenizer(models.WordLevel(vocabulary, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    backend.decoder = decoders.WordPiece()  # words joined by spaces
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", eos_token="<eos>",
                                        pad_token="<eos>", model_max_length=32)
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=len(vocabulary), n_positions=64, n_embd=16, n_layer=2, n_head=2,
                        bos_token_id=1, eos_token_id=1, pad_token_id=1)
    model = GPT2LMHeadModel(config)
    model.generation_config.max_new_tokens = 8  # generation stays well inside n_positions
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def save_dataset(path: Path, repeat: int = 2) -> Path:
    """SENTENCES as JSONL rows ``{"text": ...}``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({"text": text}) + "\n" for text in SENTENCES * repeat))
    return path
