#!/usr/bin/env python3
"""Splits the pretty-printed KJV text of the `bible` program into train / valid / held-out files.

Called by prepare_corpus.sh. Chapters are numbered 0..1188 in canonical order; chapter i goes to
valid when i % 20 == 9, to heldout when i % 20 == 19, else to train. Both non-train splits are
spread over the whole canon (every book family is represented) and no verse of them is trained on.
"""
import argparse
import hashlib
import json
import os
import re
import sys

# The KJV as packaged: 66 books, 1189 chapters, 31102 verses. A parse that finds other counts
# means the `bible` output format changed, and the splits would silently differ.
EXPECTED_BOOKS = 66
EXPECTED_CHAPTERS = 1189
EXPECTED_VERSES = 31102
HOLDOUT_EVERY = 20
VALID_PHASE = 9
HELDOUT_PHASE = 19

HEADING_RE = re.compile(r"^(\S.*) (\d+)$")  # "Genesis 1", "Song of Solomon 2", "1 Kings 3"
VERSE_RE = re.compile(r"^\s+(\d+) (.*)$")   # "  12 And God said, ..."


def parse_kjv(path):
    """Returns [(book, chapter, [verse text...])] in file order."""
    chapters = []
    with open(path, encoding="utf-8") as f:
        for line_no, raw in enumerate(f, 1):
            line = raw.rstrip("\n")
            if not line.strip():
                continue
            m = VERSE_RE.match(line)
            if m:
                if not chapters:
                    raise ValueError(f"{path}:{line_no}: verse before any chapter heading")
                expected = len(chapters[-1][2]) + 1
                if int(m.group(1)) != expected:
                    raise ValueError(f"{path}:{line_no}: verse {m.group(1)}, expected {expected}")
                chapters[-1][2].append(" ".join(m.group(2).split()))
                continue
            m = HEADING_RE.match(line)
            if not m:
                raise ValueError(f"{path}:{line_no}: neither a heading nor a verse: {line[:60]!r}")
            chapters.append((m.group(1), int(m.group(2)), []))
    return chapters


def parse_fortunes(path):
    """A fortune file: entries separated by lines holding a single '%'."""
    with open(path, encoding="utf-8", errors="replace") as f:
        text = f.read()
    entries = []
    for block in re.split(r"^%\n", text, flags=re.M):
        lines = [l.rstrip() for l in block.strip("\n").split("\n")]
        # Entries keep their line breaks; empty lines inside an entry would read as a document
        # separator, so they are dropped.
        lines = [l for l in lines if l.strip()]
        if lines:
            entries.append("\n".join(lines) + "\n")
    return entries


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        h.update(f.read())
    return h.hexdigest()


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--kjv", required=True, help="output of `bible -l1000000 gen1:1-rev22:21`")
    ap.add_argument("--out", required=True)
    ap.add_argument("--fortunes", action="append", default=[], help="fortune file (train only)")
    args = ap.parse_args()

    chapters = parse_kjv(args.kjv)
    books = {b for b, _, _ in chapters}
    verses = sum(len(v) for _, _, v in chapters)
    if (len(books), len(chapters), verses) != (EXPECTED_BOOKS, EXPECTED_CHAPTERS, EXPECTED_VERSES):
        print(f"split_corpus.py: {args.kjv}: found {len(books)} books, {len(chapters)} chapters, "
              f"{verses} verses; expected {EXPECTED_BOOKS}, {EXPECTED_CHAPTERS}, {EXPECTED_VERSES}",
              file=sys.stderr)
        return 1

    splits = {"train": [], "valid": [], "heldout": []}
    names = {"train": [], "valid": [], "heldout": []}
    for i, (book, number, vs) in enumerate(chapters):
        doc = f"{book} {number}\n" + "\n".join(vs) + "\n"
        phase = i % HOLDOUT_EVERY
        split = "heldout" if phase == HELDOUT_PHASE else "valid" if phase == VALID_PHASE else "train"
        splits[split].append(doc)
        names[split].append(f"{book} {number}")

    fortune_docs = []
    for path in args.fortunes:
        fortune_docs += parse_fortunes(path)
    splits["train"] += fortune_docs

    os.makedirs(args.out, exist_ok=True)
    manifest = {
        "source": "Debian bible-kjv-text via `bible -l1000000 gen1:1-rev22:21`"
                  + (", fortunes-min (train only)" if args.fortunes else ""),
        "document_format": "'Book N' line, then one verse per line; documents separated by one empty line",
        "split_rule": f"chapter index i (0..{EXPECTED_CHAPTERS - 1}, canonical order): "
                      f"valid if i % {HOLDOUT_EVERY} == {VALID_PHASE}, "
                      f"heldout if i % {HOLDOUT_EVERY} == {HELDOUT_PHASE}, else train",
        "fortune_files": args.fortunes,
        "fortune_documents": len(fortune_docs),
        "splits": {},
    }
    for split, docs in splits.items():
        path = os.path.join(args.out, f"{split}.txt")
        with open(path, "w", encoding="utf-8", newline="\n") as f:
            f.write("\n".join(docs))  # each doc ends with "\n": this leaves one empty line between
        manifest["splits"][split] = {
            "file": f"{split}.txt",
            "documents": len(docs),
            "chapters": names[split],
            "bytes": os.path.getsize(path),
            "sha256": sha256(path),
        }
        print(f"{split}: {len(docs)} documents, {os.path.getsize(path)} bytes -> {path}")
    with open(os.path.join(args.out, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
