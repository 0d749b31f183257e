//! Markdown line tests shared by the splitter and by answer verification (which reads the
//! passages the splitter cut), so that both agree on what a table or a code block is.

/// A table's delimiter row: cells of `-` with optional `:` alignment marks, split by `|`.
pub fn is_table_delimiter(line: &str) -> bool {
    let row = line.trim();
    row.contains('-')
        && (row.contains('|') || row.starts_with(':'))
        && row
            .chars()
            .all(|c| matches!(c, '|' | '-' | ':' | ' ' | '\t'))
        && row
            .trim_matches('|')
            .split('|')
            .all(|cell| cell.trim().trim_matches(':').chars().any(|c| c == '-'))
}

/// ```` ``` ```` or `~~~` opening or closing a fenced code block, in which `#` is no heading.
pub fn fence_marker(trimmed_line: &str) -> Option<char> {
    if trimmed_line.starts_with("```") {
        Some('`')
    } else if trimmed_line.starts_with("~~~") {
        Some('~')
    } else {
        None
    }
}

/// Whether a table cell says "same as the cell above": empty, a dash, or a ditto mark.
/// Markdown has no merged cells, so a table whose rows group under one model names it once
/// and marks the rows under it so.
pub fn is_ditto(cell: &str) -> bool {
    matches!(
        cell.trim(),
        "" | "-" | "–" | "—" | "〃" | "″" | "\"" | "''" | "同上" | "同前"
    )
}

/// The first cell of a table row (with or without its outer pipes), trimmed.
pub fn first_cell(row: &str) -> &str {
    let row = row.trim();
    let row = row.strip_prefix('|').unwrap_or(row);
    row.split('|').next().unwrap_or_default().trim()
}

/// For each table body row, the label it continues: when its first cell is a ditto mark
/// ([`is_ditto`]), the first cell of the nearest row above that names something; None for a
/// row that names its own (or has nothing above to continue).
pub fn ditto_labels<'a>(rows: impl IntoIterator<Item = &'a str>) -> Vec<Option<String>> {
    let mut label: Option<String> = None;
    rows.into_iter()
        .map(|row| {
            let first = first_cell(row);
            if is_ditto(first) {
                label.clone()
            } else {
                label = Some(first.to_owned());
                None
            }
        })
        .collect()
}
