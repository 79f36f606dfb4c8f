"""Rebuild clip-tokenizer/vocab.json and merges.txt from OpenAI CLIP's BPE file.

The BPE file ships in the open-clip-torch wheel (`open_clip/bpe_simple_vocab_16e6.txt.gz`):
    pip download --no-deps open-clip-torch && unzip -p open_clip_torch-*.whl \
        open_clip/bpe_simple_vocab_16e6.txt.gz > bpe.txt.gz
    python sd_app/configs/convert_clip_vocab.py bpe.txt.gz sd_app/configs/clip-tokenizer
Both SDXL text encoders use this vocabulary (49408 tokens). Not imported by the app.
"""
import gzip
import json
import sys
from pathlib import Path


def bytes_to_unicode() -> dict[int, str]:
    # CLIP's reversible byte -> printable character table (same as GPT-2's).
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, chars)))


def convert(bpe_gz: str, out_dir: str) -> None:
    lines = gzip.open(bpe_gz).read().decode("utf-8").split("\n")
    merges = [tuple(line.split()) for line in lines[1 : 49152 - 256 - 2 + 1]]
    vocab = list(bytes_to_unicode().values())
    vocab += [v + "</w>" for v in vocab]
    vocab += ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "vocab.json").write_text(json.dumps({tok: i for i, tok in enumerate(vocab)}, ensure_ascii=False))
    (out / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n")


if __name__ == "__main__":
    convert(sys.argv[1], sys.argv[2])
