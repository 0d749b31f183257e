//! Pixel operations the pipeline needs, written to match what PaddleOCR does with OpenCV
//! (bilinear resize with half-pixel centres, perspective crops with bicubic sampling and
//! replicated borders), so the models see the inputs they were trained on.

use image::RgbImage;

/// One output coordinate of a bilinear resize: the two source indices and the weight of
/// the second.
#[derive(Debug, Clone, Copy)]
struct Tap {
    lo: usize,
    hi: usize,
    weight: f32,
}

/// OpenCV's INTER_LINEAR sampling positions: half-pixel centres, clamped at the borders.
fn linear_taps(dst: usize, src: usize) -> Vec<Tap> {
    let scale = src as f64 / dst as f64;
    (0..dst)
        .map(|d| {
            let f = (d as f64 + 0.5) * scale - 0.5;
            let s = f.floor();
            let (s, t) = if s < 0.0 {
                (0usize, 0.0)
            } else {
                (s as usize, f - s)
            };
            if s + 1 >= src {
                Tap {
                    lo: src - 1,
                    hi: src - 1,
                    weight: 0.0,
                }
            } else {
                Tap {
                    lo: s,
                    hi: s + 1,
                    weight: t as f32,
                }
            }
        })
        .collect()
}

/// Resizes `src` to `dst_w` × `dst_h` and writes it normalised to [-1, 1] as three planes in
/// B, G, R order (the order PaddleOCR's models were trained on, from OpenCV's BGR images)
/// into `out`: plane `c` starts at `c * plane`, row `y` at `y * stride`. Both sizes must be
/// non-zero and fit in `out`.
pub(crate) fn resize_normalize_bgr(
    src: &RgbImage,
    dst_w: usize,
    dst_h: usize,
    out: &mut [f32],
    plane: usize,
    stride: usize,
) {
    let (sw, sh) = (src.width() as usize, src.height() as usize);
    if sw == 0 || sh == 0 || dst_w == 0 || dst_h == 0 {
        return;
    }
    let xs = linear_taps(dst_w, sw);
    let ys = linear_taps(dst_h, sh);
    let pixels = src.as_raw();
    // The two horizontally resized source rows in use; rows advance monotonically, so the
    // upper one is often the next lower one.
    let mut lo_row = (usize::MAX, vec![0.0f32; dst_w * 3]);
    let mut hi_row = (usize::MAX, vec![0.0f32; dst_w * 3]);
    let horizontal = |y: usize, row: &mut Vec<f32>| {
        let line = &pixels[y * sw * 3..(y + 1) * sw * 3];
        for (x, tap) in xs.iter().enumerate() {
            for c in 0..3 {
                let a = f32::from(line[tap.lo * 3 + c]);
                let b = f32::from(line[tap.hi * 3 + c]);
                row[x * 3 + c] = a + (b - a) * tap.weight;
            }
        }
    };
    for (y, tap) in ys.iter().enumerate() {
        if hi_row.0 == tap.lo && lo_row.0 != tap.lo {
            std::mem::swap(&mut lo_row, &mut hi_row);
        }
        if lo_row.0 != tap.lo {
            horizontal(tap.lo, &mut lo_row.1);
            lo_row.0 = tap.lo;
        }
        if hi_row.0 != tap.hi {
            horizontal(tap.hi, &mut hi_row.1);
            hi_row.0 = tap.hi;
        }
        let (lo, hi) = (&lo_row.1, &hi_row.1);
        for x in 0..dst_w {
            for c in 0..3 {
                let a = lo[x * 3 + c];
                let v = a + (hi[x * 3 + c] - a) * tap.weight;
                // RGB in, BGR out.
                out[(2 - c) * plane + y * stride + x] = v / 127.5 - 1.0;
            }
        }
    }
}

/// A bilinear resize of an RGB image (OpenCV's INTER_LINEAR).
pub(crate) fn resize_rgb(src: &RgbImage, dst_w: u32, dst_h: u32) -> RgbImage {
    let (sw, sh) = (src.width() as usize, src.height() as usize);
    let (dw, dh) = (dst_w as usize, dst_h as usize);
    if sw == 0 || sh == 0 || dw == 0 || dh == 0 {
        return RgbImage::new(dst_w, dst_h);
    }
    let xs = linear_taps(dw, sw);
    let ys = linear_taps(dh, sh);
    let pixels = src.as_raw();
    let mut out = vec![0u8; dw * dh * 3];
    for (y, ty) in ys.iter().enumerate() {
        let r0 = &pixels[ty.lo * sw * 3..(ty.lo + 1) * sw * 3];
        let r1 = &pixels[ty.hi * sw * 3..(ty.hi + 1) * sw * 3];
        for (x, tx) in xs.iter().enumerate() {
            for c in 0..3 {
                let p = |r: &[u8], i: usize| f32::from(r[i * 3 + c]);
                let top = p(r0, tx.lo) + (p(r0, tx.hi) - p(r0, tx.lo)) * tx.weight;
                let bottom = p(r1, tx.lo) + (p(r1, tx.hi) - p(r1, tx.lo)) * tx.weight;
                let v = top + (bottom - top) * ty.weight;
                out[(y * dw + x) * 3 + c] = v.round().clamp(0.0, 255.0) as u8;
            }
        }
    }
    RgbImage::from_raw(dst_w, dst_h, out).unwrap_or_else(|| RgbImage::new(dst_w, dst_h))
}

/// Copies `src` into a taller image with `pad` black rows above and below.
pub(crate) fn pad_vertical(src: &RgbImage, pad: u32) -> RgbImage {
    let mut out = RgbImage::new(src.width(), src.height() + 2 * pad);
    image::imageops::replace(&mut out, src, 0, i64::from(pad));
    out
}

/// The 3×3 projective transform taking the rectangle (0,0), (w,0), (w,h), (0,h) to the quad
/// `q` (in that corner order); `None` when the quad is degenerate.
pub(crate) fn homography(w: f64, h: f64, q: &[[f64; 2]; 4]) -> Option<[f64; 9]> {
    let from = [[0.0, 0.0], [w, 0.0], [w, h], [0.0, h]];
    // Unknowns a..h of x' = (ax + by + c) / (gx + hy + 1), y' = (dx + ey + f) / (gx + hy + 1).
    let mut m = [[0.0f64; 9]; 8];
    for i in 0..4 {
        let [x, y] = from[i];
        let [u, v] = q[i];
        m[2 * i] = [x, y, 1.0, 0.0, 0.0, 0.0, -x * u, -y * u, u];
        m[2 * i + 1] = [0.0, 0.0, 0.0, x, y, 1.0, -x * v, -y * v, v];
    }
    for col in 0..8 {
        let pivot = (col..8).max_by(|&a, &b| m[a][col].abs().total_cmp(&m[b][col].abs()))?;
        if m[pivot][col].abs() < 1e-12 {
            return None;
        }
        m.swap(col, pivot);
        for row in 0..8 {
            if row != col {
                let f = m[row][col] / m[col][col];
                if f != 0.0 {
                    let pivot_row = m[col];
                    for (v, p) in m[row][col..].iter_mut().zip(&pivot_row[col..]) {
                        *v -= f * p;
                    }
                }
            }
        }
    }
    let s: Vec<f64> = (0..8).map(|i| m[i][8] / m[i][i]).collect();
    let out = [s[0], s[1], s[2], s[3], s[4], s[5], s[6], s[7], 1.0];
    out.iter().all(|v| v.is_finite()).then_some(out)
}

/// OpenCV's bicubic kernel (a = -0.75) weights for a fractional offset.
fn cubic_weights(t: f32) -> [f32; 4] {
    const A: f32 = -0.75;
    let w0 = ((A * (t + 1.0) - 5.0 * A) * (t + 1.0) + 8.0 * A) * (t + 1.0) - 4.0 * A;
    let w1 = ((A + 2.0) * t - (A + 3.0)) * t * t + 1.0;
    let w2 = ((A + 2.0) * (1.0 - t) - (A + 3.0)) * (1.0 - t) * (1.0 - t) + 1.0;
    [w0, w1, w2, 1.0 - w0 - w1 - w2]
}

/// Cuts the quad `q` (corners clockwise from top-left) out of `src` as a `w` × `h` upright
/// image: a perspective warp with bicubic sampling and replicated borders.
pub(crate) fn warp_crop(src: &RgbImage, q: &[[f64; 2]; 4], w: u32, h: u32) -> RgbImage {
    let mut out = RgbImage::new(w, h);
    let Some(m) = homography(f64::from(w), f64::from(h), q) else {
        return out;
    };
    let (sw, sh) = (src.width() as i64, src.height() as i64);
    if sw == 0 || sh == 0 {
        return out;
    }
    let pixels = src.as_raw();
    let at = |x: i64, y: i64, c: usize| -> f32 {
        let x = x.clamp(0, sw - 1) as usize;
        let y = y.clamp(0, sh - 1) as usize;
        f32::from(pixels[(y * sw as usize + x) * 3 + c])
    };
    for y in 0..h {
        for x in 0..w {
            let (fx, fy) = (f64::from(x), f64::from(y));
            let d = m[6] * fx + m[7] * fy + 1.0;
            if d.abs() < 1e-12 {
                continue;
            }
            let u = (m[0] * fx + m[1] * fy + m[2]) / d;
            let v = (m[3] * fx + m[4] * fy + m[5]) / d;
            if !u.is_finite() || !v.is_finite() {
                continue;
            }
            let (u0, v0) = (u.floor(), v.floor());
            let wx = cubic_weights((u - u0) as f32);
            let wy = cubic_weights((v - v0) as f32);
            let (u0, v0) = (u0 as i64, v0 as i64);
            let px = out.get_pixel_mut(x, y);
            for c in 0..3 {
                let mut acc = 0.0;
                for (j, wyj) in wy.iter().enumerate() {
                    let yy = v0 - 1 + j as i64;
                    let mut row = 0.0;
                    for (i, wxi) in wx.iter().enumerate() {
                        row += wxi * at(u0 - 1 + i as i64, yy, c);
                    }
                    acc += wyj * row;
                }
                px[c] = acc.round().clamp(0.0, 255.0) as u8;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_resize_keeps_pixels() {
        let src = RgbImage::from_fn(5, 4, |x, y| image::Rgb([(x * 40) as u8, (y * 50) as u8, 7]));
        assert_eq!(resize_rgb(&src, 5, 4), src);
        let mut out = vec![0.0; 3 * 20];
        resize_normalize_bgr(&src, 5, 4, &mut out, 20, 5);
        // Plane 0 is blue, plane 2 red.
        assert!((out[0] - (7.0 / 127.5 - 1.0)).abs() < 1e-6);
        assert!((out[2 * 20 + 3] - (120.0 / 127.5 - 1.0)).abs() < 1e-6);
    }

    #[test]
    fn half_pixel_centres_like_opencv() {
        // 2 -> 4 pixels: OpenCV gives a, a, a*0.25+b*0.75... i.e. [10, 12.5, 17.5, 20].
        let src = RgbImage::from_fn(2, 1, |x, _| image::Rgb([if x == 0 { 10 } else { 20 }; 3]));
        let mut out = vec![0.0; 3 * 4];
        resize_normalize_bgr(&src, 4, 1, &mut out, 4, 4);
        let back: Vec<f32> = out[..4].iter().map(|v| (v + 1.0) * 127.5).collect();
        for (got, want) in back.iter().zip([10.0, 12.5, 17.5, 20.0]) {
            assert!((got - want).abs() < 1e-3, "{back:?}");
        }
    }

    #[test]
    fn axis_aligned_crop_is_a_copy() {
        let src = RgbImage::from_fn(20, 10, |x, y| {
            image::Rgb([(x * 10) as u8, (y * 20) as u8, 3])
        });
        let crop = warp_crop(
            &src,
            &[[4.0, 2.0], [12.0, 2.0], [12.0, 7.0], [4.0, 7.0]],
            8,
            5,
        );
        for (x, y, p) in crop.enumerate_pixels() {
            assert_eq!(p, src.get_pixel(x + 4, y + 2));
        }
    }

    #[test]
    fn degenerate_quad_gives_blank_crop() {
        let src = RgbImage::new(4, 4);
        let crop = warp_crop(&src, &[[1.0, 1.0]; 4], 3, 2);
        assert_eq!(crop.dimensions(), (3, 2));
    }
}
