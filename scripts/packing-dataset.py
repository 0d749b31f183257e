#!/usr/bin/env python3
"""Writes a retrieval-style alpaca dataset of varied lengths from the llm-docs-zh eval sets
(eval/llm-docs-zh.{dev,test}.jsonl) for tune-bench --packing --data (issue 23's packing
figures): each question, with the paragraph of its source document that holds its gold
answer as the input (a paragraph of some document for an unanswerable one) and the gold answer
(or the refusal) as the output. Standard library only; prints JSON lines.

    scripts/packing-dataset.py > /tmp/llm-docs-zh.alpaca.jsonl
"""
import json
import os
import sys

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "eval")
REFUSAL = "根据已知信息无法回答该问题"
LONGEST = 1500  # characters of a paragraph


def paragraphs(path):
    with open(path, encoding="utf-8") as f:
        text = f.read()
    return [p.strip() for p in text.split("\n\n") if len(p.strip()) >= 40]


def main():
    for split in ("dev", "test"):
        with open(os.path.join(ROOT, f"llm-docs-zh.{split}.jsonl"), encoding="utf-8") as f:
            questions = [json.loads(line) for line in f if line.strip()]
        docs = sorted(os.listdir(os.path.join(ROOT, "llm-docs-zh", "docs")))
        for q in questions:
            pick = sum(map(ord, q["id"]))
            # An unanswerable question names no source: a document picked by its id.
            name = q.get("source") or os.path.join("llm-docs-zh", "docs", docs[pick % len(docs)])
            source = paragraphs(os.path.join(ROOT, name))
            gold = q.get("gold") or []
            holding = [p for p in source if gold and gold[0] in p]
            # Deterministic: the first paragraph holding the answer, else one picked by id.
            passage = holding[0] if holding else source[pick % len(source)]
            answerable = q.get("answerable", True) and bool(holding)
            record = {
                "instruction": q["question"],
                "input": passage[:LONGEST],
                "output": gold[0] if answerable else REFUSAL,
            }
            print(json.dumps(record, ensure_ascii=False))


if __name__ == "__main__":
    sys.exit(main())
