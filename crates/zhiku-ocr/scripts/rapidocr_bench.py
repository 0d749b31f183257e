#!/usr/bin/env python3
"""The reference side of zhiku-ocr's benchmark (examples/ocr-bench.rs): RapidOCR
(rapidocr-onnxruntime 1.4.4 on onnxruntime) reading the same page images with the same model
files. Prints one JSON object: per image, its lines (box, text, score) and the seconds of
each timed run.

    rapidocr_bench.py --models DIR --threads N --repeat R IMAGE...
"""
import argparse
import json
import os
import sys
import time

from rapidocr_onnxruntime import RapidOCR


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", required=True)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("images", nargs="+")
    args = parser.parse_args()
    engine = RapidOCR(
        det_model_path=os.path.join(args.models, "ch_PP-OCRv4_det_infer.onnx"),
        rec_model_path=os.path.join(args.models, "ch_PP-OCRv4_rec_infer.onnx"),
        cls_model_path=os.path.join(args.models, "ch_ppocr_mobile_v2.0_cls_infer.onnx"),
        intra_op_num_threads=args.threads,
        inter_op_num_threads=1,
    )
    # One untimed run: the first inference allocates and plans.
    engine(args.images[0])
    out = {}
    for path in args.images:
        seconds = []
        result = None
        for _ in range(args.repeat):
            start = time.perf_counter()
            result, _ = engine(path)
            seconds.append(time.perf_counter() - start)
        lines = [
            {"box": [[float(x), float(y)] for x, y in box], "text": text, "score": float(score)}
            for box, text, score in (result or [])
        ]
        out[os.path.basename(path)] = {"lines": lines, "seconds": seconds}
    json.dump(out, sys.stdout, ensure_ascii=False)


if __name__ == "__main__":
    main()
