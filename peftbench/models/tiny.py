"""``tiny:llama``: a 2-layer Llama with seeded random weights and a byte-level tokenizer, for tests.

It needs no download, so every test and the CPU quickstart can build a real transformers model in a
fraction of a second; it has no accuracy to speak of.
"""

from __future__ import annotations

from typing import Any

TINY_PRESETS = ("tiny:llama",)


def byte_symbols() -> list[str]:
    """GPT-2's byte -> printable character map (the ByteLevel alphabet), indexed by byte value."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    extra = iter(range(256, 512))
    return [chr(b) if b in keep else chr(next(extra)) for b in range(256)]


def tiny_tokenizer() -> Any:
    """Byte-level BPE without merges: one token per UTF-8 byte, so any text round-trips."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<s>", "</s>", "<pad>"]
    vocab = {s: i for i, s in enumerate(specials)}
    vocab.update({ch: len(specials) + b for b, ch in enumerate(byte_symbols())})
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in specials])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                   padding_side="right", model_max_length=512, clean_up_tokenization_spaces=False)


def tiny_model(vocab_size: int) -> Any:
    """A 2-layer Llama with seed-0 weights, built without touching the global RNG state."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=vocab_size, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, intermediate_size=128, max_position_embeddings=512,
                         tie_word_embeddings=False, bos_token_id=0, eos_token_id=1, pad_token_id=2)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return LlamaForCausalLM(config)
