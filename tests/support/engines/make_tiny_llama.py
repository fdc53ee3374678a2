"""A tiny random Llama that vLLM serves on CPU: real model code, random weights, a trained tokenizer.

    $ .engines/vllm/bin/python tests/support/engines/make_tiny_llama.py .engines/models/tiny-llama
    tiny-llama: 2 layers, hidden 128, vocab 512, 1.2 MB in .engines/models/tiny-llama

No model can be downloaded in CI, and none is needed: gpuops drives the server, not the answers.
Choices that matter (found by trying):
- head_dim 32 (hidden 128 / 4 heads): vLLM's CPU attention backend rejects 16;
- bf16 weights, served with `--dtype bfloat16`;
- a BPE tokenizer with a Metaspace pre-tokenizer over printable ASCII: every token decodes to
  visible text, so a random model still streams non-empty chunks (a byte-level BPE makes it stream
  empty ones, as its random picks are partial UTF-8 sequences).
Runs in the vLLM venv (torch, transformers, tokenizers); deterministic (fixed seed).
"""

from __future__ import annotations

import string
import sys
from pathlib import Path

CORPUS = """\
The quick brown fox jumps over the lazy dog.
Hello! This is a tiny model served by a real inference engine for tests.
A GPU inference server loads a model, answers requests, streams tokens and stops cleanly.
Say hello in one short sentence. Write a haiku about GPUs. The sky is blue because of Rayleigh scattering.
Numbers 0 1 2 3 4 5 6 7 8 9 and punctuation , . ; : ! ? ' " ( ) [ ] { } - + * / = < > @ # $ % & _ ~ ^ | \\ `
"""

CHAT_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant:{% endif %}"
)


def make_tokenizer(vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    alphabet = sorted(set(string.printable) - set(string.whitespace)) + ["\u2581"]
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<unk>", "<s>", "</s>"],
                                  initial_alphabet=alphabet, limit_alphabet=len(alphabet))
    tok.train_from_iterator(CORPUS.splitlines() * 20, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>",
                                   chat_template=CHAT_TEMPLATE)


def make(out: Path, vocab_size: int = 512) -> None:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    tokenizer = make_tokenizer(vocab_size)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=4, head_dim=32, max_position_embeddings=512,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         torch_dtype="bfloat16")
    model = LlamaForCausalLM(config).to(torch.bfloat16)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    size = sum(f.stat().st_size for f in out.iterdir() if f.is_file())
    print(f"tiny-llama: {config.num_hidden_layers} layers, hidden {config.hidden_size}, vocab {len(tokenizer)}, "
          f"{size / 1e6:.1f} MB in {out}")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: make_tiny_llama.py OUT_DIR")
    make(Path(sys.argv[1]))
