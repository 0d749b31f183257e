//! The passages of a prompt, chosen to fit the model:
//!
//! - chunks of one document that overlap or follow each other within one section are
//!   merged into one passage (the splitter makes consecutive chunks share up to its overlap,
//!   and retrieval often returns neighbours together), so nothing is said twice;
//! - each passage is shown with its source name and heading path;
//! - passages are kept in rank order (the reranker's when the Ask reranked; the best first:
//!   a small model reads the start of its context most reliably, and `[1]` is then the
//!   strongest evidence), each while its tokens
//!   fit what is left of the budget; one that does not fit is skipped and later, shorter
//!   ones may still fit. The budget is never exceeded: a passage larger than the whole
//!   budget is left out, and when none fits the Ask refuses as if nothing had been found.

use zhiku_proto::v1::Citation;

/// Merges overlapping or adjacent chunks of one document. Chunks overlap when their character
/// ranges meet (`char_start` of the later ≤ `char_end` of the earlier); they are adjacent when
/// their chunk indices follow each other under the same heading path. A merged passage takes
/// the text of its chunks once each, in document order, the best score of its chunks and the
/// rank of its best chunk; `chunk_index`..=`last_chunk_index` are the chunks it holds.
/// Citations are renumbered 1, 2, … in the order returned.
pub fn merge(citations: Vec<Citation>) -> Vec<Citation> {
    // Each group: its members' rank (first = best) and the merged citation.
    let mut merged: Vec<(usize, Citation)> = Vec::new();
    // Rank order in, so that a passage's rank is that of its best chunk.
    let mut by_position: Vec<(usize, Citation)> = citations
        .into_iter()
        .map(|mut c| {
            c.last_chunk_index = c.last_chunk_index.max(c.chunk_index);
            c
        })
        .enumerate()
        .collect();
    // Document order within each document; documents apart.
    by_position.sort_by(|(ra, a), (rb, b)| {
        (a.document_id.as_str(), a.chunk_index, *ra).cmp(&(
            b.document_id.as_str(),
            b.chunk_index,
            *rb,
        ))
    });
    for (rank, c) in by_position {
        if let Some((best, last)) = merged.last_mut()
            && last.document_id == c.document_id
            && joins(last, &c)
        {
            *best = (*best).min(rank);
            append(last, c);
            continue;
        }
        merged.push((rank, c));
    }
    merged.sort_by_key(|(rank, _)| *rank);
    merged
        .into_iter()
        .enumerate()
        .map(|(i, (_, mut c))| {
            c.number = i as u32 + 1;
            c
        })
        .collect()
}

/// `next` (later in the document than `last`) overlaps `last` or follows it in its section.
fn joins(last: &Citation, next: &Citation) -> bool {
    // A citation names one page.
    if last.page != next.page {
        return false;
    }
    let ranged = last.char_end > 0 && next.char_end > 0;
    if ranged && next.char_start <= last.char_end {
        return true;
    }
    next.chunk_index <= last.last_chunk_index + 1 && next.heading_path == last.heading_path
}

/// Appends `next`'s text to `last` without the characters they share (by their ranges).
fn append(last: &mut Citation, next: Citation) {
    let ranged = last.char_end > 0 && next.char_end > 0;
    if ranged && next.char_end <= last.char_end {
        // Inside what `last` already holds.
    } else if ranged && next.char_start <= last.char_end {
        let shared = (last.char_end - next.char_start) as usize;
        last.text.extend(next.text.chars().skip(shared));
        last.char_end = next.char_end;
    } else {
        last.text.push('\n');
        last.text.push_str(&next.text);
        last.char_end = last.char_end.max(next.char_end);
    }
    last.last_chunk_index = last.last_chunk_index.max(next.last_chunk_index);
    last.score = last.score.max(next.score);
    last.rerank_score = match (last.rerank_score, next.rerank_score) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    };
}

/// A passage as the prompt shows it (its `[n]` aside): where it comes from, then its context
/// (a table's caption and header row) and its text, HTML table rows as `cell | cell` lines
/// (the model reads the cells, not the markup, and the budget pays for no tags), markdown
/// table rows written out under their column names
/// ([`zhiku_text::markdown::headed_table_rows`]).
pub fn render(c: &Citation) -> String {
    let readable = zhiku_text::readable_text(&c.text);
    let header = zhiku_text::markdown::context_header(&c.context);
    let (rows, header_used) = zhiku_text::markdown::headed_table_rows(readable.trim(), header);
    let trimmed = rows.trim();
    // A header that names every row's columns is said in each of them.
    let context: Vec<&str> = c
        .context
        .lines()
        .map(str::trim)
        .filter(|l| !(l.is_empty() || (header_used && Some(*l) == header)))
        .collect();
    let joined;
    let text = if context.is_empty() {
        trimmed
    } else {
        joined = format!("{}\n{trimmed}", context.join("\n"));
        &joined
    };
    match (c.source.is_empty(), c.heading_path.is_empty()) {
        (true, true) => text.to_owned(),
        (false, true) => format!("{SOURCE_LABEL}{}）\n{text}", c.source),
        (true, false) => format!("{SECTION_LABEL}{}）\n{text}", c.heading_path),
        (false, false) => format!(
            "{SOURCE_LABEL}{}；章节：{}）\n{text}",
            c.source, c.heading_path
        ),
    }
}

/// How a passage's header line opens in the prompt: its source file, or its section.
pub const SOURCE_LABEL: &str = "（来源：";
pub const SECTION_LABEL: &str = "（章节：";

/// The label `text` opens with when it opens with a passage's header line as the prompt
/// shows it ([`SOURCE_LABEL`] or [`SECTION_LABEL`]; leading whitespace skipped).
pub fn header_label(text: &str) -> Option<&'static str> {
    let text = text.trim_start();
    [SOURCE_LABEL, SECTION_LABEL]
        .into_iter()
        .find(|label| text.starts_with(label))
}

/// Whether `text` holds a passage's header line as the prompt shows it (`（来源：a.md；章节：…）`):
/// a reply with one has copied the prompt's passages, not answered from them.
pub fn quotes_passage_header(text: &str) -> bool {
    text.contains(SOURCE_LABEL) || text.contains(SECTION_LABEL)
}

/// The indices of the passages kept under `budget` tokens, given each one's `costs` (its
/// tokens as rendered): in rank order, each one that fits what is left.
pub fn within_budget(costs: &[u32], budget: u32) -> Vec<usize> {
    let mut left = u64::from(budget);
    let mut kept = Vec::new();
    for (i, &cost) in costs.iter().enumerate() {
        if u64::from(cost) <= left {
            left -= u64::from(cost);
            kept.push(i);
        }
    }
    kept
}

/// Passages of these texts, numbered from 1 in order: the citations unit tests start from.
#[cfg(test)]
pub(crate) fn numbered(texts: &[&str]) -> Vec<Citation> {
    texts
        .iter()
        .enumerate()
        .map(|(i, t)| Citation {
            number: i as u32 + 1,
            text: t.to_string(),
            ..Default::default()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Chunk `index` of `doc`: characters [start, end) of a document whose text is the
    /// alphabet repeated.
    fn chunk(doc: &str, index: u32, start: u32, end: u32, score: f32) -> Citation {
        let text: String = ('a'..='z')
            .cycle()
            .skip(start as usize)
            .take((end - start) as usize)
            .collect();
        Citation {
            document_id: doc.into(),
            source: format!("{doc}.md"),
            chunk_index: index,
            last_chunk_index: index,
            char_start: start,
            char_end: end,
            heading_path: "指南 > 安装".into(),
            score,
            text,
            ..Default::default()
        }
    }

    #[test]
    fn a_rendered_passages_header_is_what_a_copied_reply_is_told_by() {
        let mut c = chunk("a", 0, 0, 5, 0.9);
        assert!(quotes_passage_header(&render(&c)), "source and section");
        c.heading_path.clear();
        assert!(quotes_passage_header(&render(&c)), "source alone");
        c.source.clear();
        c.heading_path = "指南".into();
        assert!(quotes_passage_header(&render(&c)), "section alone");
        assert!(!quotes_passage_header(
            "用 pip 安装：pip install zhiku（来自官方源）"
        ));
    }

    #[test]
    fn overlapping_chunks_of_one_document_are_merged_once() {
        // Ranked: doc b's chunk, then a's chunk 1, a's chunk 0 (overlapping it by 3), a's
        // chunk 2 (touching chunk 1), and a chunk 1 again (a duplicate hit).
        let merged = merge(vec![
            chunk("b", 0, 0, 5, 0.9),
            chunk("a", 1, 7, 14, 0.8),
            chunk("a", 0, 0, 10, 0.7),
            chunk("a", 2, 14, 20, 0.6),
            chunk("a", 1, 7, 14, 0.5),
        ]);
        assert_eq!(merged.len(), 2, "{merged:?}");
        assert_eq!(merged[0].document_id, "b");
        let a = &merged[1];
        // Characters 0..20 once each, in document order.
        assert_eq!(a.text, "abcdefghijklmnopqrst");
        assert_eq!((a.chunk_index, a.last_chunk_index), (0, 2));
        assert_eq!((a.char_start, a.char_end), (0, 20));
        assert_eq!(a.score, 0.8, "the best score of its chunks");
        assert_eq!(merged.iter().map(|c| c.number).collect::<Vec<_>>(), [1, 2]);
    }

    #[test]
    fn chunks_of_two_pages_stay_apart() {
        // Touching chunks, the second on the next page: each citation names its page.
        let mut next_page = chunk("a", 1, 10, 20, 0.8);
        next_page.page = 2;
        let mut first = chunk("a", 0, 0, 10, 0.9);
        first.page = 1;
        let merged = merge(vec![first, next_page]);
        assert_eq!(merged.len(), 2, "{merged:?}");
        assert_eq!(merged.iter().map(|c| c.page).collect::<Vec<_>>(), [1, 2]);
    }

    #[test]
    fn a_merged_passage_takes_the_rank_of_its_best_chunk() {
        let merged = merge(vec![
            chunk("a", 3, 40, 50, 0.9),
            chunk("b", 0, 0, 5, 0.8),
            chunk("a", 2, 30, 41, 0.7),
        ]);
        assert_eq!(merged[0].document_id, "a");
        assert_eq!(merged[0].text.chars().count(), 20);
        assert_eq!(merged[1].document_id, "b");
    }

    #[test]
    fn distant_chunks_and_other_sections_stay_apart() {
        let mut other = chunk("a", 1, 12, 20, 0.5);
        other.heading_path = "指南 > 配置".into();
        let merged = merge(vec![
            chunk("a", 0, 0, 10, 0.9),
            other,
            chunk("a", 5, 60, 70, 0.4),
        ]);
        assert_eq!(merged.len(), 3, "{merged:?}");
        // Adjacent chunks of one section with a gap between them (a heading line, a blank
        // line) are joined on a new line.
        let merged = merge(vec![chunk("a", 0, 0, 10, 0.9), chunk("a", 1, 12, 20, 0.5)]);
        assert_eq!(merged.len(), 1);
        assert_eq!(merged[0].text, "abcdefghij\nmnopqrst");
    }

    #[test]
    fn passages_carry_their_source_and_heading_path() {
        let c = chunk("a", 0, 0, 3, 0.9);
        assert_eq!(render(&c), "（来源：a.md；章节：指南 > 安装）\nabc");
        let bare = Citation {
            text: " x ".into(),
            ..Default::default()
        };
        assert_eq!(render(&bare), "x");
        // A row cut out of a table shows its table's caption and header before it.
        let row = Citation {
            context: "以 7B 为例。\n| 精度 | 大小 |".into(),
            text: "| 4-bit | 3.7 GB |".into(),
            ..c.clone()
        };
        assert_eq!(
            render(&row),
            "（来源：a.md；章节：指南 > 安装）\n以 7B 为例。\n精度：4-bit；大小：3.7 GB"
        );
        // Merging keeps the first chunk's context: the passage starts where it did.
        let next = Citation {
            context: String::new(),
            chunk_index: 1,
            last_chunk_index: 1,
            char_start: 3,
            char_end: 6,
            text: "def".into(),
            ..row.clone()
        };
        let merged = merge(vec![row, next]);
        assert_eq!(merged.len(), 1);
        assert_eq!(merged[0].context, "以 7B 为例。\n| 精度 | 大小 |");
        // HTML table rows are shown as their cells; the citation keeps the source's markup.
        let html = Citation {
            source: String::new(),
            heading_path: String::new(),
            context: String::new(),
            text: "<tr>\n  <td align=\"left\">MiniCPM-V 4.5</td>\n  <td><b>28G</td>\n</tr>".into(),
            ..c.clone()
        };
        assert_eq!(render(&html), "MiniCPM-V 4.5 | 28G");
        assert!(html.text.contains("<b>28G</td>"));
    }

    #[test]
    fn the_budget_is_never_exceeded() {
        assert_eq!(within_budget(&[100, 50, 80, 20], 200), [0, 1, 3]);
        assert_eq!(within_budget(&[300, 50], 200), [1]);
        assert_eq!(within_budget(&[300], 200), Vec::<usize>::new());
        assert_eq!(within_budget(&[], 200), Vec::<usize>::new());
        // Every budget over every mix of costs: the kept ones fit, and every one left out
        // would not have fitted with them.
        let costs = [7, 120, 33, 64, 1, 90, 250, 18, 45, 5];
        for budget in 0..400 {
            let kept = within_budget(&costs, budget);
            let used: u32 = kept.iter().map(|&i| costs[i]).sum();
            assert!(used <= budget, "{budget}: {used}");
            for (i, &cost) in costs.iter().enumerate() {
                if !kept.contains(&i) {
                    let before: u32 = kept.iter().filter(|&&k| k < i).map(|&k| costs[k]).sum();
                    assert!(before + cost > budget, "{budget}: {i} would have fitted");
                }
            }
        }
    }
}
