"""Generation speed: medvl's decoding loops vs a plain Hugging Face ``generate`` on the same model.

Run (one core, from the repository root)::

    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/generation_speed.py [--n 32] [--tokens 40]

Model: the tests' tiny randomly initialised GPT-2 (2 layers, width 64, byte-level BPE trained on
phantom reports; tests/generate/tiny_lm.py), built in a temp folder; nothing is downloaded. Each
"report" is a greedy continuation of ``"FINDINGS:"`` of exactly ``--tokens`` new tokens (the end
token is suppressed in both systems, so both do the same amount of work), for ``--n`` prompts:

* **HF generate**: ``model.generate(input_ids, do_sample=False, min_new_tokens=T, max_new_tokens=T)``
  with its key/value cache, batched (all prompts at once) and single (one prompt per call);
* **medvl greedy**: :func:`medvl.generate.decoding.greedy` driving the same GPT-2 through a
  ``LogitsFn`` that runs the whole prefix each step (no cache), batched and single;
* **medvl greedy + KV cache**: the same loop with :class:`medvl.generate.hf_step.CachedCausalLM`
  (the LM's cache reordered to follow the loop's sequences; what the LLaVA adapter uses);
* **medvl beam** (4 beams, batched) for scale, and the CoCa caption decoder (greedy, batched and
  single) on phantom-sized image memories.

Prints reports/s (best of ``--repeat``), batch/single speed-ups and the medvl/HF ratios, and checks
that both greedy systems produce the same tokens (the comparison is only fair if they do).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "generate"))
sys.path.insert(0, str(ROOT / "src"))

from tiny_lm import make_tiny_lm  # noqa: E402

from medvl.generate.decoding import DecodeConfig, beam_search, greedy  # noqa: E402
from medvl.generate.hf_step import CachedCausalLM  # noqa: E402

TEXTS = ["FINDINGS: The heart size is normal. No pleural effusion or pneumothorax. IMPRESSION: Normal chest.",
         "FINDINGS: Small left pleural effusion. No pneumothorax. IMPRESSION: Left effusion.",
         "FINDINGS: Right upper lobe consolidation. Heart size is normal. IMPRESSION: Pneumonia."] * 20


def best_of(fn: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=32, help="prompts (reports) per measurement")
    ap.add_argument("--tokens", type=int, default=40, help="new tokens per report")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    torch.manual_seed(0)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        folder = make_tiny_lm(Path(tmp) / "gpt2-tiny", TEXTS)
        lm = AutoModelForCausalLM.from_pretrained(str(folder), local_files_only=True).eval()
        tok = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    eos = int(tok.eos_token_id)
    prompt = torch.tensor([tok("FINDINGS:")["input_ids"]])
    n, t = args.n, args.tokens
    prompts = prompt.expand(n, -1).contiguous()
    cfg = DecodeConfig(max_new_tokens=t, min_new_tokens=t)

    @torch.no_grad()
    def hf(batch: torch.Tensor) -> torch.Tensor:
        out = lm.generate(batch, attention_mask=torch.ones_like(batch), do_sample=False, min_new_tokens=t,
                          max_new_tokens=t, pad_token_id=eos)
        return out[:, batch.shape[1]:]

    def medvl_fn(ids: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        full = torch.cat([prompt.expand(ids.shape[0], -1), ids[:, 1:]], dim=1)  # ids[:, 0] is the start slot
        with torch.no_grad():
            return lm(full).logits[:, -1]

    def medvl(batch_size: int) -> list:
        return greedy(medvl_fn, batch_size, eos, eos, cfg)

    # correctness first: same greedy tokens
    ours = [g.tokens for g in medvl(2)]
    theirs = hf(prompts[:2]).tolist()
    same = ours == theirs
    rows = {}
    rows["HF generate, batched"] = n / best_of(lambda: hf(prompts), args.repeat)
    rows["HF generate, single"] = n / best_of(lambda: [hf(prompt) for _ in range(n)], args.repeat)
    rows["medvl greedy, batched"] = n / best_of(lambda: medvl(n), args.repeat)
    rows["medvl greedy, single"] = n / best_of(lambda: [medvl(1) for _ in range(n)], args.repeat)
    prompt_emb = lm.get_input_embeddings()(prompt[0]).detach()

    def medvl_cached(batch_size: int) -> list:
        return greedy(CachedCausalLM(lm, [prompt_emb] * batch_size), batch_size, eos, eos, cfg)

    same_cached = [g.tokens for g in medvl_cached(2)] == theirs
    rows["medvl greedy + KV cache, batched"] = n / best_of(lambda: medvl_cached(n), args.repeat)
    rows["medvl greedy + KV cache, single"] = n / best_of(lambda: [medvl_cached(1) for _ in range(n)], args.repeat)
    rows["medvl beam x4, batched"] = n / best_of(
        lambda: beam_search(medvl_fn, n, eos, eos, DecodeConfig(method="beam", num_beams=4, max_new_tokens=t,
                                                                min_new_tokens=t)), 1)

    from medvl.models.caption_decoder import CaptionDecoder, DecoderConfig

    dec = CaptionDecoder(DecoderConfig(vocab_size=400, memory_dim=64, bos_id=2, eos_id=3, width=64, layers=2,
                                       heads=4, context_length=t + 2)).eval()
    memory = dec.project_memory(torch.randn(n, 17, 64)).detach()

    def cap_fn(ids: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return dec(ids, memory[r], projected=True)[:, -1]

    rows["CoCa decoder greedy, batched"] = n / best_of(lambda: greedy(cap_fn, n, 2, 3, cfg), args.repeat)
    rows["CoCa decoder greedy, single"] = n / best_of(
        lambda: [greedy(lambda i, r, k=k: cap_fn(i, r + k), 1, 2, 3, cfg) for k in range(n)], args.repeat)

    print(f"tiny GPT-2 (2 layers, width 64), {n} reports x {t} new tokens, torch threads {torch.get_num_threads()}, "
          f"best of {args.repeat}")
    print(f"greedy tokens identical to HF generate: medvl {same}, medvl + KV cache {same_cached}")
    for name, v in rows.items():
        print(f"  {name:32s} {v:8.1f} reports/s")
    print(f"batch/single: HF {rows['HF generate, batched'] / rows['HF generate, single']:.1f}x, "
          f"medvl {rows['medvl greedy, batched'] / rows['medvl greedy, single']:.1f}x, "
          f"CoCa {rows['CoCa decoder greedy, batched'] / rows['CoCa decoder greedy, single']:.1f}x")
    for variant in ("medvl greedy", "medvl greedy + KV cache"):
        print(f"{variant} / HF generate: batched {rows[variant + ', batched'] / rows['HF generate, batched']:.2f}x, "
              f"single {rows[variant + ', single'] / rows['HF generate, single']:.2f}x")


if __name__ == "__main__":
    main()
