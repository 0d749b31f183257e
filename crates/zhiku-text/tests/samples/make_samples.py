#!/usr/bin/env python3
"""Writes the encoded images of the PDF image-filter tests (tests/scans.rs) from one
pattern, with Pillow 13.0.0 (its wheel bundles OpenJPEG and libtiff):

    pattern.j2k  JPEG 2000 codestream, lossless (reversible 5/3 wavelet), 8-bit gray
    pattern.g4   CCITT Group 4 (T.6) data, the one strip of a TIFF Pillow wrote with
                 compression="group4", black runs coded as black

The pattern (64 x 48, black where (x / 8 + y / 6) % 3 == 0) is computed again by the tests,
which compare every decoded pixel with it.

    .venv-bench/bin/python crates/zhiku-text/tests/samples/make_samples.py
"""
import io
import os

from PIL import Image, ImageOps, TiffImagePlugin

W, H = 64, 48
HERE = os.path.dirname(os.path.abspath(__file__))


def black(x, y):
    return (x // 8 + y // 6) % 3 == 0


def main():
    gray = Image.new("L", (W, H))
    gray.putdata([0 if black(x, y) else 255 for y in range(H) for x in range(W)])
    gray.save(os.path.join(HERE, "pattern.j2k"), irreversible=False, no_jp2=True)

    TiffImagePlugin.WRITE_LIBTIFF = True
    buf = io.BytesIO()
    # Pillow writes bilevel TIFFs black-is-zero (photometric 1), where the code's "white"
    # runs are the zero bits: the pattern inverted is written, so that they are its white.
    inverted = ImageOps.invert(gray).convert("1")
    inverted.save(buf, format="TIFF", compression="group4")
    tiff = Image.open(io.BytesIO(buf.getvalue()))
    tags = tiff.tag_v2
    # 262: photometric; 273/279: the strip's offset and length.
    assert tags[262] == 1, f"photometric {tags[262]}"
    offsets, counts = tags[273], tags[279]
    assert len(offsets) == 1, "one strip"
    data = buf.getvalue()[offsets[0] : offsets[0] + counts[0]]
    with open(os.path.join(HERE, "pattern.g4"), "wb") as f:
        f.write(data)


if __name__ == "__main__":
    main()
