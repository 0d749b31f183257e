//! Reading order: lines into columns and paragraphs.
//!
//! Horizontal lines are cut into columns where a vertical gutter runs between them (lines
//! that span the gutter, such as a title over two columns, divide the page into bands read
//! one after another); inside a column, lines are read top to bottom (pieces of one row
//! left to right) and broken into paragraphs at wide gaps, indented first lines and short
//! last lines. Vertical lines (Chinese set top to bottom) are read right to left.

/// A line's axis-aligned extent and whether its text runs top to bottom.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LineBox {
    pub left: f32,
    pub top: f32,
    pub right: f32,
    pub bottom: f32,
    /// The height of the text itself, across the line (on a skewed page the box is taller).
    pub text_height: f32,
    pub vertical: bool,
}

impl LineBox {
    fn width(&self) -> f32 {
        (self.right - self.left).max(0.0)
    }
    fn height(&self) -> f32 {
        self.text_height.max(0.0)
    }
    fn center_y(&self) -> f32 {
        (self.top + self.bottom) / 2.0
    }
    /// The size of one character: the line's height, or its width when vertical.
    fn thickness(&self) -> f32 {
        if self.vertical {
            self.width()
        } else {
            self.height()
        }
    }
    fn covers(&self, x: f32) -> bool {
        self.left <= x && x <= self.right
    }
}

/// The lines' paragraphs in reading order, each a list of line indices in reading order.
pub fn paragraphs(lines: &[LineBox]) -> Vec<Vec<usize>> {
    let horizontal: Vec<usize> = (0..lines.len()).filter(|&i| !lines[i].vertical).collect();
    let vertical: Vec<usize> = (0..lines.len()).filter(|&i| lines[i].vertical).collect();
    let mut out = Vec::new();
    order_block(lines, horizontal, &mut out, 0);
    // Vertical paragraphs go before the first horizontal one that starts below them.
    for para in vertical_paragraphs(lines, vertical) {
        let top = para.iter().map(|&i| lines[i].top).fold(f32::MAX, f32::min);
        let at = out
            .iter()
            .position(|p: &Vec<usize>| {
                p.iter().map(|&i| lines[i].top).fold(f32::MAX, f32::min) > top
            })
            .unwrap_or(out.len());
        out.insert(at, para);
    }
    out
}

fn median(mut values: Vec<f32>) -> f32 {
    if values.is_empty() {
        return 0.0;
    }
    values.sort_by(f32::total_cmp);
    values[values.len() / 2]
}

/// The deepest recursion of column splits followed (a page has few levels; this bounds
/// the work on adversarial input).
const MAX_DEPTH: usize = 8;

fn order_block(lines: &[LineBox], ids: Vec<usize>, out: &mut Vec<Vec<usize>>, depth: usize) {
    if ids.is_empty() {
        return;
    }
    if ids.len() > 1
        && depth < MAX_DEPTH
        && let Some((a, b)) = gutter(lines, &ids)
    {
        let crosses = |i: usize| lines[i].left < b && lines[i].right > a;
        if ids.iter().all(|&i| !crosses(i)) {
            let (left, right): (Vec<usize>, Vec<usize>) =
                ids.iter().partition(|&&i| lines[i].right <= a);
            order_block(lines, left, out, depth + 1);
            order_block(lines, right, out, depth + 1);
            return;
        }
        // Lines across the gutter (a title, a caption) divide the block into bands, read
        // one after another.
        let mut sorted = ids.clone();
        sorted.sort_by(|&x, &y| lines[x].top.total_cmp(&lines[y].top));
        let mut bands: Vec<(bool, Vec<usize>)> = Vec::new();
        for i in sorted {
            let c = crosses(i);
            match bands.last_mut() {
                Some((kind, band)) if *kind == c => band.push(i),
                _ => bands.push((c, vec![i])),
            }
        }
        for (_, band) in bands {
            order_block(lines, band, out, depth + 1);
        }
        return;
    }
    column_paragraphs(lines, ids, out);
}

/// The widest run of x, at least a character wide, that at most a few lines of `ids` cross
/// (a title may) and that has at least two lines wholly on each side: (start, end).
fn gutter(lines: &[LineBox], ids: &[usize]) -> Option<(f32, f32)> {
    let char_size = median(ids.iter().map(|&i| lines[i].height()).collect()).max(1.0);
    let mut edges: Vec<f32> = ids
        .iter()
        .flat_map(|&i| [lines[i].left, lines[i].right])
        .filter(|v| v.is_finite())
        .collect();
    edges.sort_by(f32::total_cmp);
    edges.dedup();
    // Between consecutive edges the set of covering lines is constant. The fewest crossing
    // lines win: a clean gutter first, then one crossed by a title, and so on.
    let covering: Vec<usize> = edges
        .windows(2)
        .map(|pair| {
            let mid = (pair[0] + pair[1]) / 2.0;
            ids.iter().filter(|&&i| lines[i].covers(mid)).count()
        })
        .collect();
    for allowed in 0..=(ids.len() / 5).max(1) {
        let mut best: Option<(f32, f32)> = None;
        let mut run_start: Option<f32> = None;
        for (pair, &count) in edges.windows(2).zip(&covering) {
            let (x0, x1) = (pair[0], pair[1]);
            if count > allowed {
                run_start = None;
                continue;
            }
            let start = *run_start.get_or_insert(x0);
            if x1 - start >= char_size && best.is_none_or(|(a, b)| x1 - start > b - a) {
                let left = ids.iter().filter(|&&i| lines[i].right <= start).count();
                let right = ids.iter().filter(|&&i| lines[i].left >= x1).count();
                if left >= 2 && right >= 2 {
                    best = Some((start, x1));
                }
            }
        }
        if best.is_some() {
            return best;
        }
    }
    None
}

/// One column: rows top to bottom, pieces of a row left to right, paragraphs broken at
/// wide gaps, indented first lines and short last lines.
fn column_paragraphs(lines: &[LineBox], mut ids: Vec<usize>, out: &mut Vec<Vec<usize>>) {
    ids.sort_by(|&a, &b| lines[a].center_y().total_cmp(&lines[b].center_y()));
    // Rows: lines whose centres are within half a line of each other.
    let mut rows: Vec<Vec<usize>> = Vec::new();
    for i in ids {
        let line = &lines[i];
        let joins = rows.last().is_some_and(|row| {
            let last = &lines[row[row.len() - 1]];
            (line.center_y() - last.center_y()).abs() <= 0.5 * line.height().min(last.height())
        });
        match rows.last_mut() {
            Some(row) if joins => row.push(i),
            _ => rows.push(vec![i]),
        }
    }
    for row in &mut rows {
        row.sort_by(|&a, &b| lines[a].left.total_cmp(&lines[b].left));
    }
    let all: Vec<usize> = rows.iter().flatten().copied().collect();
    let char_size = median(all.iter().map(|&i| lines[i].height()).collect()).max(1.0);
    let left = all.iter().map(|&i| lines[i].left).fold(f32::MAX, f32::min);
    let right = all.iter().map(|&i| lines[i].right).fold(f32::MIN, f32::max);
    let extent = |row: &[usize]| {
        let top = row.iter().map(|&i| lines[i].top).fold(f32::MAX, f32::min);
        let bottom = row
            .iter()
            .map(|&i| lines[i].bottom)
            .fold(f32::MIN, f32::max);
        let l = row.iter().map(|&i| lines[i].left).fold(f32::MAX, f32::min);
        let r = row.iter().map(|&i| lines[i].right).fold(f32::MIN, f32::max);
        (top, bottom, l, r)
    };
    let mut paragraph: Vec<usize> = Vec::new();
    let mut previous: Option<(f32, f32, f32, f32)> = None;
    for row in rows {
        let (top, bottom, l, r) = extent(&row);
        let breaks = previous.is_some_and(|(_, p_bottom, _, p_right)| {
            let gap = top - p_bottom;
            gap > 0.8 * char_size || l > left + 1.2 * char_size || p_right < right - 2.5 * char_size
        });
        if breaks && !paragraph.is_empty() {
            out.push(std::mem::take(&mut paragraph));
        }
        paragraph.extend(row);
        previous = Some((top, bottom, l, r));
    }
    if !paragraph.is_empty() {
        out.push(paragraph);
    }
}

/// Vertical lines: right to left, a new paragraph where columns of text are far apart or
/// start at different heights.
fn vertical_paragraphs(lines: &[LineBox], mut ids: Vec<usize>) -> Vec<Vec<usize>> {
    ids.sort_by(|&a, &b| lines[b].right.total_cmp(&lines[a].right));
    let char_size = median(ids.iter().map(|&i| lines[i].thickness()).collect()).max(1.0);
    let mut out: Vec<Vec<usize>> = Vec::new();
    let mut previous: Option<usize> = None;
    for i in ids {
        let breaks = previous.is_none_or(|p| {
            let (a, b) = (&lines[p], &lines[i]);
            a.left - b.right > 1.5 * char_size || (a.top - b.top).abs() > 1.5 * char_size
        });
        if breaks {
            out.push(vec![i]);
        } else if let Some(last) = out.last_mut() {
            last.push(i);
        }
        previous = Some(i);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(left: f32, top: f32, right: f32, bottom: f32) -> LineBox {
        LineBox {
            left,
            top,
            right,
            bottom,
            text_height: bottom - top,
            vertical: false,
        }
    }

    #[test]
    fn one_column_with_paragraphs() {
        // Indented first lines, a short last line, a wide gap.
        let lines = [
            line(40.0, 0.0, 500.0, 20.0),   // 0: indented: a new paragraph
            line(0.0, 30.0, 500.0, 50.0),   // 1
            line(0.0, 60.0, 200.0, 80.0),   // 2: short: ends the paragraph
            line(0.0, 90.0, 500.0, 110.0),  // 3
            line(0.0, 160.0, 500.0, 180.0), // 4: after a wide gap
        ];
        assert_eq!(paragraphs(&lines), vec![vec![0, 1, 2], vec![3], vec![4]]);
    }

    #[test]
    fn two_columns_under_a_title() {
        let mut lines = vec![line(100.0, 0.0, 900.0, 30.0)]; // 0: title over both columns
        for row in 0..4 {
            let top = 60.0 + row as f32 * 30.0;
            lines.push(line(0.0, top, 480.0, top + 20.0)); // left column
            lines.push(line(520.0, top, 1000.0, top + 20.0)); // right column
        }
        lines.push(line(0.0, 200.0, 1000.0, 220.0)); // 9: footer over both
        let order: Vec<usize> = paragraphs(&lines).into_iter().flatten().collect();
        assert_eq!(order, vec![0, 1, 3, 5, 7, 2, 4, 6, 8, 9]);
    }

    #[test]
    fn pieces_of_a_row_read_left_to_right() {
        let lines = [line(300.0, 1.0, 500.0, 21.0), line(0.0, 0.0, 250.0, 20.0)];
        assert_eq!(paragraphs(&lines), vec![vec![1, 0]]);
    }

    #[test]
    fn vertical_lines_right_to_left() {
        let v = |left: f32| LineBox {
            left,
            top: 0.0,
            right: left + 20.0,
            bottom: 300.0,
            text_height: 300.0,
            vertical: true,
        };
        let lines = [v(0.0), v(60.0), v(30.0)];
        assert_eq!(paragraphs(&lines), vec![vec![1, 2, 0]]);
    }

    #[test]
    fn empty_and_degenerate() {
        assert!(paragraphs(&[]).is_empty());
        let nan = line(f32::NAN, f32::NAN, f32::NAN, f32::NAN);
        let order: Vec<usize> = paragraphs(&[nan, nan, line(0.0, 0.0, 1.0, 1.0)])
            .into_iter()
            .flatten()
            .collect();
        let mut sorted = order.clone();
        sorted.sort();
        assert_eq!(sorted, vec![0, 1, 2]);
    }
}
