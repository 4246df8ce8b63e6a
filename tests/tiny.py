"""Tiny randomly initialised models of every supported family, saved as real Hugging Face directories."""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    BertModel,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
    T5Config,
    T5ForConditionalGeneration,
)

CORPUS = [
    "Who founded Acme? Jane Roe founded it.", "What is the capital of France? Paris.",
    "The mother tongue of Danielle Darrieux is French.", "Which river flows through Cairo? The Nile.",
    "Who wrote Hamlet? William Shakespeare.", "When was the company started? In 1999.",
    "What colour is the sky? Blue.", "The quick brown fox jumps over the lazy dog.",
    "Which team won the cup in 2010? Spain.", "Who is the CEO of Initech? Bill Lumbergh.",
] * 20
SPECIALS = ["<pad>", "<s>", "</s>", "<unk>"]
CHAT_TEMPLATE = ("{% for m in messages %}<s>{{ m['role'] }}: {{ m['content'] }}</s>{% endfor %}"
                 "{% if add_generation_prompt %}<s>assistant: {% endif %}")
LABELS = {0: "affirmed", 1: "reversed", 2: "remanded"}


def make_tokenizer() -> PreTrainedTokenizerFast:
    core = Tokenizer(models.BPE(unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    core.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=400, special_tokens=SPECIALS,
                                                         initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
                                        unk_token="<unk>")
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.model_max_length = 64  # as real tokenizers declare it; T5 has no position table to read it from
    return tokenizer


def make_model(family: str, vocab: int, seed: int = 0):
    torch.manual_seed(seed)
    ids = dict(pad_token_id=0, bos_token_id=1, eos_token_id=2)
    # A large initialiser: with the usual 0.02 a 32-wide model's logits are nearly flat and no LoRA can make them peak.
    init = dict(initializer_range=0.5)
    if family == "llama":
        return LlamaForCausalLM(LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64,
                                            num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
                                            max_position_embeddings=64, **ids, **init))
    if family == "gpt2":
        return GPT2LMHeadModel(GPT2Config(vocab_size=vocab, n_embd=32, n_layer=4, n_head=4, n_positions=64, **ids,
                                          **init))
    if family == "t5":
        return T5ForConditionalGeneration(T5Config(vocab_size=vocab, d_model=64, d_ff=128, d_kv=16, num_layers=2,
                                                   num_decoder_layers=2, num_heads=4, decoder_start_token_id=0,
                                                   initializer_factor=3.0, **ids))
    if family == "bert":
        return BertForSequenceClassification(BertConfig(
            vocab_size=vocab, hidden_size=32, num_hidden_layers=3, num_attention_heads=4, intermediate_size=64,
            max_position_embeddings=64, num_labels=3, **init, id2label=LABELS,
            label2id={v: k for k, v in LABELS.items()}, pad_token_id=0))
    if family == "encoder":  # a tiny sentence encoder for key="encoder"
        return BertModel(BertConfig(vocab_size=vocab, hidden_size=24, num_hidden_layers=1, num_attention_heads=2,
                                    intermediate_size=48, max_position_embeddings=64, pad_token_id=0))
    raise ValueError(family)


def save_tiny(family: str, directory: Path, seed: int = 0) -> Path:
    tokenizer = make_tokenizer()
    model = make_model(family, len(tokenizer), seed)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory
