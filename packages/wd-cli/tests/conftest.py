"""Shared tiny parts, built once per session: a saved tiny T5 and a tiny pipeline (plus its saved directory)."""

from __future__ import annotations

from pathlib import Path

import pytest
from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers

SENTENCES = ["a red circle moves up", "a blue square moves down and bounces", "a green triangle moves left"]


@pytest.fixture(scope="session")
def tiny_t5_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 1-layer T5 encoder (d_model 16) and a word-level tokenizer trained on three sentences, saved the
    transformers way (what `T5TextEncoder.from_pretrained` reads from a hub name or local path)."""
    from transformers import PreTrainedTokenizerFast, T5Config, T5EncoderModel

    words = Tokenizer(models.WordLevel(unk_token="<unk>"))
    words.pre_tokenizer = pre_tokenizers.Whitespace()
    words.train_from_iterator(SENTENCES, trainers.WordLevelTrainer(special_tokens=["<pad>", "</s>", "<unk>"]))
    words.post_processor = processors.TemplateProcessing(
        single="$A </s>", special_tokens=[("</s>", words.token_to_id("</s>"))]
    )
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=words, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")
    config = T5Config(vocab_size=tokenizer.vocab_size, d_model=16, d_kv=8, d_ff=32, num_layers=1, num_heads=2)
    directory = tmp_path_factory.mktemp("tiny-t5")
    T5EncoderModel(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory
