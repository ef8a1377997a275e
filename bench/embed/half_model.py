"""Copies a sentence-transformers model directory with its safetensors
weights stored as fp16 (half the size), for carrying to a machine where the
fp32 file does not fit the transfer. Standard library only.

    python3 bench/embed/half_model.py <model dir> <out dir>
"""

import json
import os
import shutil
import struct
import sys
from array import array

KEEP = ["config.json", "tokenizer.json", "sentence_bert_config.json", "1_Pooling/config.json"]


def main():
    src, out = sys.argv[1], sys.argv[2]
    os.makedirs(os.path.join(out, "1_Pooling"), exist_ok=True)
    for name in KEEP:
        if os.path.exists(os.path.join(src, name)):
            shutil.copyfile(os.path.join(src, name), os.path.join(out, name))
    with open(os.path.join(src, "model.safetensors"), "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
        data = f.read()
    new_header, chunks, offset = {}, [], 0
    for name, info in sorted(header.items(), key=lambda kv: kv[0]):
        if name == "__metadata__":
            new_header[name] = info
            continue
        begin, end = info["data_offsets"]
        raw = data[begin:end]
        dtype = info["dtype"]
        if dtype == "F32":
            floats = array("f")
            floats.frombytes(raw)
            raw = struct.pack(f"<{len(floats)}e", *floats)
            dtype = "F16"
        chunks.append(raw)
        new_header[name] = {"dtype": dtype, "shape": info["shape"], "data_offsets": [offset, offset + len(raw)]}
        offset += len(raw)
    head = json.dumps(new_header, separators=(",", ":")).encode()
    head += b" " * (-len(head) % 8)
    with open(os.path.join(out, "model.safetensors"), "wb") as f:
        f.write(struct.pack("<Q", len(head)))
        f.write(head)
        for c in chunks:
            f.write(c)


if __name__ == "__main__":
    main()
