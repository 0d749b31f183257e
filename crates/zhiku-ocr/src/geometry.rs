//! Plane geometry for text boxes: convex hulls, minimum-area rectangles, corner order.

/// A point in image pixels (x to the right, y down).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Point {
    pub x: f32,
    pub y: f32,
}

/// A rectangle at any angle: its corners in [`order_quad`]'s order and its two side lengths.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RotatedRect {
    pub center: [f64; 2],
    /// Unit vectors along the two sides.
    pub axes: [[f64; 2]; 2],
    /// Side lengths along `axes`.
    pub size: [f64; 2],
}

impl RotatedRect {
    pub fn short_side(&self) -> f64 {
        self.size[0].min(self.size[1])
    }

    /// The same rectangle grown by `d` on every side.
    pub fn grown(&self, d: f64) -> Self {
        Self {
            size: [self.size[0] + 2.0 * d, self.size[1] + 2.0 * d],
            ..*self
        }
    }

    /// The corners, ordered by [`order_mini_box`].
    pub fn corners(&self) -> [[f64; 2]; 4] {
        let [cx, cy] = self.center;
        let (hu, hv) = (self.size[0] / 2.0, self.size[1] / 2.0);
        let [u, v] = self.axes;
        let corner = |su: f64, sv: f64| {
            [
                cx + su * hu * u[0] + sv * hv * v[0],
                cy + su * hu * u[1] + sv * hv * v[1],
            ]
        };
        order_mini_box([
            corner(-1.0, -1.0),
            corner(1.0, -1.0),
            corner(1.0, 1.0),
            corner(-1.0, 1.0),
        ])
    }
}

/// The convex hull of `points` (Andrew's monotone chain), counter-clockwise in image
/// coordinates, without repeated points.
pub(crate) fn convex_hull(points: &mut [[i32; 2]]) -> Vec<[f64; 2]> {
    points.sort_unstable();
    let cross = |o: [i32; 2], a: [i32; 2], b: [i32; 2]| {
        i64::from(a[0] - o[0]) * i64::from(b[1] - o[1])
            - i64::from(a[1] - o[1]) * i64::from(b[0] - o[0])
    };
    let mut hull: Vec<[i32; 2]> = Vec::with_capacity(points.len() + 1);
    for pass in 0..2 {
        let start = hull.len();
        let iter: Box<dyn Iterator<Item = &[i32; 2]>> = if pass == 0 {
            Box::new(points.iter())
        } else {
            Box::new(points.iter().rev())
        };
        for &p in iter {
            while hull.len() >= start + 2
                && cross(hull[hull.len() - 2], hull[hull.len() - 1], p) <= 0
            {
                hull.pop();
            }
            hull.push(p);
        }
        hull.pop();
    }
    hull.dedup();
    if hull.is_empty()
        && let Some(&p) = points.first()
    {
        hull.push(p);
    }
    hull.iter()
        .map(|p| [f64::from(p[0]), f64::from(p[1])])
        .collect()
}

/// The rectangle of least area around a convex polygon (rotating calipers: one side of the
/// best rectangle lies on a side of the hull).
pub(crate) fn min_area_rect(hull: &[[f64; 2]]) -> RotatedRect {
    let Some(&first) = hull.first() else {
        return RotatedRect {
            center: [0.0, 0.0],
            axes: [[1.0, 0.0], [0.0, 1.0]],
            size: [0.0, 0.0],
        };
    };
    let mut best: Option<(f64, RotatedRect)> = None;
    for i in 0..hull.len() {
        let a = hull[i];
        let b = hull[(i + 1) % hull.len()];
        let (dx, dy) = (b[0] - a[0], b[1] - a[1]);
        let len = dx.hypot(dy);
        let u = if len > 0.0 {
            [dx / len, dy / len]
        } else {
            [1.0, 0.0]
        };
        let v = [-u[1], u[0]];
        let (mut umin, mut umax, mut vmin, mut vmax) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
        for p in hull {
            let pu = (p[0] - first[0]) * u[0] + (p[1] - first[1]) * u[1];
            let pv = (p[0] - first[0]) * v[0] + (p[1] - first[1]) * v[1];
            umin = umin.min(pu);
            umax = umax.max(pu);
            vmin = vmin.min(pv);
            vmax = vmax.max(pv);
        }
        let area = (umax - umin) * (vmax - vmin);
        if best.as_ref().is_none_or(|(a, _)| area < *a) {
            let (cu, cv) = ((umin + umax) / 2.0, (vmin + vmax) / 2.0);
            best = Some((
                area,
                RotatedRect {
                    center: [
                        first[0] + cu * u[0] + cv * v[0],
                        first[1] + cu * u[1] + cv * v[1],
                    ],
                    axes: [u, v],
                    size: [umax - umin, vmax - vmin],
                },
            ));
        }
    }
    best.map(|(_, r)| r).unwrap_or(RotatedRect {
        center: first,
        axes: [[1.0, 0.0], [0.0, 1.0]],
        size: [0.0, 0.0],
    })
}

/// PaddleOCR's corner order for a detected box: of the two left-most corners the upper is
/// first and the lower last; of the two right-most the upper is second.
pub(crate) fn order_mini_box(mut pts: [[f64; 2]; 4]) -> [[f64; 2]; 4] {
    pts.sort_by(|a, b| a[0].total_cmp(&b[0]));
    let (first, fourth) = if pts[1][1] > pts[0][1] {
        (0, 1)
    } else {
        (1, 0)
    };
    let (second, third) = if pts[3][1] > pts[2][1] {
        (2, 3)
    } else {
        (3, 2)
    };
    [pts[first], pts[second], pts[third], pts[fourth]]
}

/// Top-left, top-right, bottom-right, bottom-left: the two left-most corners by y, then the
/// two right-most by y.
pub(crate) fn order_quad(mut pts: [[f64; 2]; 4]) -> [[f64; 2]; 4] {
    pts.sort_by(|a, b| a[0].total_cmp(&b[0]));
    let (mut left, mut right) = ([pts[0], pts[1]], [pts[2], pts[3]]);
    left.sort_by(|a, b| a[1].total_cmp(&b[1]));
    right.sort_by(|a, b| a[1].total_cmp(&b[1]));
    [left[0], right[0], right[1], left[1]]
}

pub(crate) fn distance(a: [f64; 2], b: [f64; 2]) -> f64 {
    (a[0] - b[0]).hypot(a[1] - b[1])
}

/// Whether the integer point lies in the convex quad (edges included).
pub(crate) fn in_convex_quad(q: &[[i64; 2]; 4], x: i64, y: i64) -> bool {
    let mut sign = 0i64;
    for i in 0..4 {
        let (a, b) = (q[i], q[(i + 1) % 4]);
        let c = (b[0] - a[0]) * (y - a[1]) - (b[1] - a[1]) * (x - a[0]);
        if c != 0 {
            if sign != 0 && c.signum() != sign {
                return false;
            }
            sign = c.signum();
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hull_of_a_filled_rectangle_is_its_corners() {
        let mut pts: Vec<[i32; 2]> = (0..5).flat_map(|y| (0..10).map(move |x| [x, y])).collect();
        let mut hull = convex_hull(&mut pts);
        hull.sort_by(|a, b| a.partial_cmp(b).unwrap());
        assert_eq!(hull, vec![[0.0, 0.0], [0.0, 4.0], [9.0, 0.0], [9.0, 4.0]]);
        let rect = min_area_rect(&hull);
        let mut size = rect.size;
        size.sort_by(f64::total_cmp);
        assert!(
            (size[0] - 4.0).abs() < 1e-9 && (size[1] - 9.0).abs() < 1e-9,
            "{size:?}"
        );
    }

    #[test]
    fn rotated_rectangle_is_found() {
        // A 40 x 10 rectangle turned by 30 degrees.
        let (c, s) = (30f64.to_radians().cos(), 30f64.to_radians().sin());
        let mut pts = Vec::new();
        for i in 0..=40 {
            for j in 0..=10 {
                let (x, y) = (f64::from(i), f64::from(j));
                pts.push([
                    (100.0 + x * c - y * s).round() as i32,
                    (100.0 + x * s + y * c).round() as i32,
                ]);
            }
        }
        let rect = min_area_rect(&convex_hull(&mut pts));
        let mut size = rect.size;
        size.sort_by(f64::total_cmp);
        assert!(
            (size[0] - 10.0).abs() < 1.5 && (size[1] - 40.0).abs() < 1.5,
            "{size:?}"
        );
    }

    #[test]
    fn degenerate_inputs() {
        assert_eq!(convex_hull(&mut []), Vec::<[f64; 2]>::new());
        assert_eq!(convex_hull(&mut [[3, 4], [3, 4]]), vec![[3.0, 4.0]]);
        assert_eq!(min_area_rect(&[]).short_side(), 0.0);
        assert_eq!(min_area_rect(&[[1.0, 1.0], [5.0, 1.0]]).short_side(), 0.0);
    }

    #[test]
    fn quad_order_and_containment() {
        let q = order_quad([[10.0, 5.0], [0.0, 0.0], [0.0, 5.0], [10.0, 0.0]]);
        assert_eq!(q, [[0.0, 0.0], [10.0, 0.0], [10.0, 5.0], [0.0, 5.0]]);
        let qi = [[0, 0], [10, 0], [10, 5], [0, 5]];
        assert!(
            in_convex_quad(&qi, 0, 0) && in_convex_quad(&qi, 10, 5) && in_convex_quad(&qi, 4, 2)
        );
        assert!(!in_convex_quad(&qi, 11, 2) && !in_convex_quad(&qi, 4, -1));
    }
}
