"""sentence-transformers' side of the embed benchmark: encodes every line of
the corpus with the same model and prints one JSON line like
batchmill-embed-bench's.

    python st_bench.py <model dir> <corpus> [cpu|cuda] [fp32|fp16] [batch size] [runs]
"""

import json
import sys
import time

import torch
from sentence_transformers import SentenceTransformer


def main():
    model_dir, corpus = sys.argv[1], sys.argv[2]
    device = sys.argv[3] if len(sys.argv) > 3 else "cpu"
    precision = sys.argv[4] if len(sys.argv) > 4 else "fp32"
    batch_size = int(sys.argv[5]) if len(sys.argv) > 5 else 32
    runs = int(sys.argv[6]) if len(sys.argv) > 6 else 3
    lines = open(corpus, encoding="utf-8").read().splitlines()
    started = time.perf_counter()
    model = SentenceTransformer(model_dir, device=device)
    if precision == "fp16":
        model = model.half()
    load_s = time.perf_counter() - started
    tokens = sum(len(ids) for ids in model.tokenizer(lines, truncation=True, max_length=model.max_seq_length)["input_ids"])
    with torch.inference_mode():
        model.encode(lines[:256], batch_size=batch_size)
        best = float("inf")
        for _ in range(runs):
            if device == "cuda":
                torch.cuda.synchronize()
            t = time.perf_counter()
            model.encode(lines, batch_size=batch_size, convert_to_numpy=True)
            if device == "cuda":
                torch.cuda.synchronize()
            best = min(best, time.perf_counter() - t)
    print(json.dumps({
        "tool": "sentence-transformers",
        "device": f"{device} ({torch.get_num_threads()} threads)" if device == "cpu" else torch.cuda.get_device_name(0),
        "half": precision == "fp16",
        "batch_size": batch_size,
        "sentences": len(lines),
        "tokens": tokens,
        "seconds": best,
        "sentences_per_s": len(lines) / best,
        "tokens_per_s": tokens / best,
        "load_s": load_s,
        "versions": f"sentence-transformers {__import__('sentence_transformers').__version__}, torch {torch.__version__}",
    }, sort_keys=True))


if __name__ == "__main__":
    main()
