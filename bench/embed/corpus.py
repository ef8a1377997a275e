"""Writes a benchmark corpus: English-like texts, one a line, from a fixed
seed.

    python3 bench/embed/corpus.py [COUNT] > short.txt         # sentences
    python3 bench/embed/corpus.py [COUNT] --long > long.txt   # passages

Sentences (the default, 10,000): lengths follow a spread typical of
sentence-embedding workloads, mostly 5 to 40 words with a tail to 120.
Passages (--long): several sentences each, 40 to 256 tokens for
all-MiniLM-L6-v2's tokenizer (every word below is one WordPiece token, each
sentence ends in one punctuation token, and [CLS] and [SEP] add two), spread
evenly over that range.
"""

import random
import sys

WORDS = (
    "the of and to in is was for on that with as by at from it his an were are which this be or had "
    "not but first one their also its new after who they have her she two been other when there all "
    "during into school time may years more most only over city some world would where later up such "
    "used many can state about national out known university united then made team season film "
    "company group system model data batch queue worker result storage inference embedding vector "
    "sentence network cluster scheduler progress failure river music album game war party government "
    "history series people public station book church family village north south west east water "
    "language population district county region american british french german league club played "
    "released records building house night small large long short high early late final young old"
).split()


def sentence(rng, n):
    words = [rng.choice(WORDS) for _ in range(n)]
    words[0] = words[0].capitalize()
    return " ".join(words) + rng.choice([".", ".", ".", "?", "!"])


def passage(rng, tokens):
    """Sentences of 8 to 30 words whose tokens (a word's one, the
    punctuation's one, plus [CLS] and [SEP]) total `tokens`."""
    left = tokens - 2
    out = []
    while left > 0:
        n = min(left - 1, rng.randint(8, 30))
        if left - (n + 1) < 4:  # no sentence of under three words at the end
            n = left - 1
        out.append(sentence(rng, n))
        left -= n + 1
    return " ".join(out)


def main():
    args = [a for a in sys.argv[1:] if a != "--long"]
    long = "--long" in sys.argv[1:]
    rng = random.Random(10_000)
    count = int(args[0]) if args else 10_000
    if long:
        out = [passage(rng, rng.randint(40, 256)) for _ in range(count)]
    else:
        out = [sentence(rng, min(120, max(3, int(rng.lognormvariate(2.7, 0.6))))) for _ in range(count)]
    sys.stdout.write("\n".join(out) + "\n")


if __name__ == "__main__":
    main()
