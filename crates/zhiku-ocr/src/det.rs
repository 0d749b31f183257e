//! Text detection: PP-OCR's DB (differentiable binarization) model and its
//! post-processing, from a probability map to boxes around lines.

use crate::geometry::{convex_hull, distance, in_convex_quad, min_area_rect, order_quad};

/// DB post-processing parameters (PaddleOCR's defaults for PP-OCRv4).
#[derive(Debug, Clone, Copy)]
pub(crate) struct DbParams {
    /// A pixel is text when its probability is above this.
    pub thresh: f32,
    /// A box is kept when the mean probability inside it is at least this.
    pub box_thresh: f32,
    /// At most this many regions are looked at.
    pub max_candidates: usize,
    /// How far a shrunk text region is grown back, relative to its area / perimeter.
    pub unclip_ratio: f64,
}

impl Default for DbParams {
    fn default() -> Self {
        Self {
            thresh: 0.3,
            box_thresh: 0.5,
            max_candidates: 1000,
            unclip_ratio: 1.6,
        }
    }
}

/// The smallest side, in probability-map pixels, of a region worth reading.
const MIN_SIZE: f64 = 3.0;

/// The detector's input size for an image: the short side raised to at least 736, both
/// sides rounded to multiples of 32 (the network downsamples by 32).
pub(crate) fn input_size(width: u32, height: u32, limit_side_len: u32) -> (usize, usize) {
    let (w, h) = (f64::from(width), f64::from(height));
    let short = w.min(h);
    let ratio = if short < f64::from(limit_side_len) {
        f64::from(limit_side_len) / short
    } else {
        1.0
    };
    let round32 = |v: f64| (((v * ratio).trunc() / 32.0).round() as usize * 32).max(32);
    (round32(w), round32(h))
}

/// Boxes of text lines from the detector's probability map (`map_w` × `map_h`), in the
/// coordinates of an image of `dest_w` × `dest_h`: corners clockwise from top-left.
pub(crate) fn boxes_from_map(
    prob: &[f32],
    map_w: usize,
    map_h: usize,
    dest_w: u32,
    dest_h: u32,
    params: &DbParams,
) -> Vec<[[f64; 2]; 4]> {
    if map_w == 0 || map_h == 0 || prob.len() < map_w * map_h {
        return Vec::new();
    }
    let mask = dilated_mask(prob, map_w, map_h, params.thresh);
    let regions = regions(&mask, map_w, map_h);
    let (dw, dh) = (f64::from(dest_w), f64::from(dest_h));
    let mut boxes = Vec::new();
    for mut points in regions.into_iter().take(params.max_candidates) {
        let rect = min_area_rect(&convex_hull(&mut points));
        if rect.short_side() < MIN_SIZE {
            continue;
        }
        let score = box_score(prob, map_w, map_h, &rect.corners());
        if score < params.box_thresh {
            continue;
        }
        // Growing the shrunk kernel back: a rectangle offset by d with round joins has
        // the rectangle grown by d on every side as its minimum-area box.
        let (a, b) = (rect.size[0], rect.size[1]);
        let d = a * b * params.unclip_ratio / (2.0 * (a + b));
        let grown = rect.grown(d);
        if grown.short_side() < MIN_SIZE + 2.0 {
            continue;
        }
        let scaled = grown.corners().map(|[x, y]| {
            [
                (x / map_w as f64 * dw).round().clamp(0.0, dw),
                (y / map_h as f64 * dh).round().clamp(0.0, dh),
            ]
        });
        let quad = order_quad(scaled).map(|[x, y]| {
            [
                x.clamp(0.0, dw - 1.0).trunc(),
                y.clamp(0.0, dh - 1.0).trunc(),
            ]
        });
        let (w, h) = (distance(quad[0], quad[1]), distance(quad[0], quad[3]));
        if w.trunc() <= 3.0 || h.trunc() <= 3.0 {
            continue;
        }
        boxes.push(quad);
    }
    boxes
}

/// `prob > thresh`, dilated by a 2 × 2 square (each pixel also set when its left, upper or
/// upper-left neighbour is), which joins characters split by a one-pixel gap.
fn dilated_mask(prob: &[f32], w: usize, h: usize, thresh: f32) -> Vec<bool> {
    let bin: Vec<bool> = prob[..w * h].iter().map(|&p| p > thresh).collect();
    let mut out = bin.clone();
    for y in 0..h {
        for x in 0..w {
            if out[y * w + x] {
                continue;
            }
            let left = x > 0 && bin[y * w + x - 1];
            let up = y > 0 && bin[(y - 1) * w + x];
            let diag = x > 0 && y > 0 && bin[(y - 1) * w + x - 1];
            out[y * w + x] = left || up || diag;
        }
    }
    out
}

/// 8-connected regions of the mask, each as the end points of its horizontal runs (enough
/// for its convex hull), in the order of their first pixel in raster order.
fn regions(mask: &[bool], w: usize, h: usize) -> Vec<Vec<[i32; 2]>> {
    // Runs of set pixels per row: (row, start, end inclusive).
    let mut runs: Vec<(usize, usize, usize)> = Vec::new();
    let mut row_start = Vec::with_capacity(h + 1);
    for y in 0..h {
        row_start.push(runs.len());
        let row = &mask[y * w..(y + 1) * w];
        let mut x = 0;
        while x < w {
            if row[x] {
                let start = x;
                while x < w && row[x] {
                    x += 1;
                }
                runs.push((y, start, x - 1));
            } else {
                x += 1;
            }
        }
    }
    row_start.push(runs.len());
    let mut parent: Vec<usize> = (0..runs.len()).collect();
    fn find(parent: &mut [usize], mut i: usize) -> usize {
        while parent[i] != i {
            parent[i] = parent[parent[i]];
            i = parent[i];
        }
        i
    }
    for y in 1..h {
        let (prev, cur) = (
            row_start[y - 1]..row_start[y],
            row_start[y]..row_start[y + 1],
        );
        let mut j = prev.start;
        for i in cur {
            let (_, s, e) = runs[i];
            // Runs of the row above that touch this one, diagonals included.
            while j < prev.end && runs[j].2 + 1 < s {
                j += 1;
            }
            let mut k = j;
            while k < prev.end && runs[k].1 <= e + 1 {
                let (a, b) = (find(&mut parent, i), find(&mut parent, k));
                if a != b {
                    parent[a.max(b)] = a.min(b);
                }
                k += 1;
            }
        }
    }
    let mut index_of_root = vec![usize::MAX; runs.len()];
    let mut out: Vec<Vec<[i32; 2]>> = Vec::new();
    for (i, &(y, s, e)) in runs.iter().enumerate() {
        let root = find(&mut parent, i);
        if index_of_root[root] == usize::MAX {
            index_of_root[root] = out.len();
            out.push(Vec::new());
        }
        let region = &mut out[index_of_root[root]];
        region.push([s as i32, y as i32]);
        if e != s {
            region.push([e as i32, y as i32]);
        }
    }
    out
}

/// The mean probability inside the box (PaddleOCR's "fast" score: the box's corners
/// truncated to pixels, edges included).
fn box_score(prob: &[f32], w: usize, h: usize, corners: &[[f64; 2]; 4]) -> f32 {
    let xs = corners.map(|p| p[0]);
    let ys = corners.map(|p| p[1]);
    let clampi = |v: f64, hi: usize| (v as i64).clamp(0, hi as i64 - 1);
    let xmin = clampi(xs.iter().copied().fold(f64::MAX, f64::min).floor(), w);
    let xmax = clampi(xs.iter().copied().fold(f64::MIN, f64::max).ceil(), w);
    let ymin = clampi(ys.iter().copied().fold(f64::MAX, f64::min).floor(), h);
    let ymax = clampi(ys.iter().copied().fold(f64::MIN, f64::max).ceil(), h);
    let quad = corners.map(|[x, y]| [(x - xmin as f64) as i64, (y - ymin as f64) as i64]);
    let (mut sum, mut count) = (0.0f64, 0usize);
    for y in ymin..=ymax {
        for x in xmin..=xmax {
            if in_convex_quad(&quad, x - xmin, y - ymin) {
                sum += f64::from(prob[y as usize * w + x as usize]);
                count += 1;
            }
        }
    }
    if count == 0 {
        0.0
    } else {
        (sum / count as f64) as f32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn input_sizes_follow_paddleocr() {
        // Short side raised to 736, then both rounded to 32.
        assert_eq!(input_size(100, 50, 736), (1472, 736));
        // Already large enough: only rounding.
        assert_eq!(input_size(1240, 1754, 736), (1248, 1760));
        assert_eq!(input_size(1, 1, 736), (736, 736));
    }

    #[test]
    fn two_blocks_give_two_boxes() {
        let (w, h) = (64usize, 32usize);
        let mut prob = vec![0.0f32; w * h];
        for y in 4..10 {
            for x in 4..40 {
                prob[y * w + x] = 0.9;
            }
        }
        for y in 18..26 {
            for x in 10..60 {
                prob[y * w + x] = 0.8;
            }
        }
        let boxes = boxes_from_map(&prob, w, h, 128, 64, &DbParams::default());
        assert_eq!(boxes.len(), 2, "{boxes:?}");
        // Scaled by 2 and grown: the first box covers 8..80 x 8..20 and a little more.
        let first = boxes.iter().find(|b| b[0][1] < 20.0).unwrap();
        assert!(first[0][0] <= 8.0 && first[1][0] >= 78.0, "{first:?}");
        assert!(first[0][1] <= 8.0 && first[3][1] >= 19.0, "{first:?}");
    }

    #[test]
    fn faint_and_tiny_regions_are_dropped() {
        let (w, h) = (32usize, 32usize);
        let mut prob = vec![0.0f32; w * h];
        // Above the pixel threshold but below the box threshold.
        for y in 2..10 {
            for x in 2..30 {
                prob[y * w + x] = 0.35;
            }
        }
        // Strong but one pixel tall.
        for x in 2..30 {
            prob[20 * w + x] = 0.99;
        }
        assert!(boxes_from_map(&prob, w, h, 32, 32, &DbParams::default()).is_empty());
        assert!(boxes_from_map(&[], 0, 0, 32, 32, &DbParams::default()).is_empty());
    }

    #[test]
    fn diagonal_pixels_are_one_region() {
        let mask = [true, false, false, false, true, false, false, false, true];
        assert_eq!(regions(&mask, 3, 3).len(), 1);
        let mask = [true, false, true, false, false, false, true, false, true];
        assert_eq!(regions(&mask, 3, 3).len(), 4);
    }
}
