"""Writes the benchmark corpus: 10,000 English-like sentences, one a line,
from a fixed seed. Lengths follow a spread typical of sentence-embedding
workloads: mostly 5 to 40 words, a tail to 120.

    python3 bench/embed/corpus.py > corpus.txt
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


def main():
    rng = random.Random(10_000)
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 10_000
    out = []
    for _ in range(count):
        n = min(120, max(3, int(rng.lognormvariate(2.7, 0.6))))
        words = [rng.choice(WORDS) for _ in range(n)]
        words[0] = words[0].capitalize()
        out.append(" ".join(words) + rng.choice([".", ".", ".", "?", "!"]))
    sys.stdout.write("\n".join(out) + "\n")


if __name__ == "__main__":
    main()
