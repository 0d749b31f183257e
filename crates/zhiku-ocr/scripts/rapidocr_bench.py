#!/usr/bin/env python3
"""The reference side of zhiku-ocr's benchmark (examples/ocr-bench.rs): RapidOCR
(rapidocr-onnxruntime 1.4.4 on onnxruntime) reading the same page images with the same model
files. It reads one image path a line on standard input, reads that image once, and answers
one JSON line: the lines found (box, text, score) and the seconds the read took. The
benchmark alternates its own runs with these, so that both see the same load on a shared
machine.

    rapidocr_bench.py --models DIR --threads N < paths
"""
import argparse
import json
import os
import sys
import time

import cv2
from rapidocr_onnxruntime import RapidOCR


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", required=True)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    # OpenCV's resizes and warps would otherwise use every core: held to the same threads
    # as the models (zhiku-ocr's own image processing runs on one).
    cv2.setNumThreads(args.threads)
    engine = RapidOCR(
        det_model_path=os.path.join(args.models, "ch_PP-OCRv4_det_infer.onnx"),
        rec_model_path=os.path.join(args.models, "ch_PP-OCRv4_rec_infer.onnx"),
        cls_model_path=os.path.join(args.models, "ch_ppocr_mobile_v2.0_cls_infer.onnx"),
        intra_op_num_threads=args.threads,
        inter_op_num_threads=1,
    )
    for path in sys.stdin:
        path = path.rstrip("\n")
        if not path:
            continue
        start = time.perf_counter()
        result, _ = engine(path)
        seconds = time.perf_counter() - start
        lines = [
            {"box": [[float(x), float(y)] for x, y in box], "text": text, "score": float(score)}
            for box, text, score in (result or [])
        ]
        print(json.dumps({"lines": lines, "seconds": seconds}, ensure_ascii=False), flush=True)


if __name__ == "__main__":
    main()
