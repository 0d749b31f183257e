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

/// For each of `lines`, the index of the line opening the fenced code block it is in, its
/// opening and closing fences included; `None` outside any block. A fence closes only the
/// block its own marker opened (a ```` ``` ```` line inside a `~~~` block is one of its
/// lines), and a block left open runs to the end.
pub fn code_block_of<'a>(lines: impl IntoIterator<Item = &'a str>) -> Vec<Option<usize>> {
    let mut open: Option<(usize, char)> = None;
    lines
        .into_iter()
        .enumerate()
        .map(|(k, line)| {
            let marker = fence_marker(line.trim_start());
            match (open, marker) {
                (Some((start, opened)), marker) => {
                    if marker == Some(opened) {
                        open = None;
                    }
                    Some(start)
                }
                (None, Some(marker)) => {
                    open = Some((k, marker));
                    Some(k)
                }
                (None, None) => None,
            }
        })
        .collect()
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

/// The cells of a markdown table row, its outer pipes stripped, each trimmed (`\|` stays
/// inside its cell).
pub fn row_cells(row: &str) -> Vec<String> {
    let inner = row.trim();
    let inner = inner.strip_prefix('|').unwrap_or(inner);
    let inner = inner.strip_suffix('|').unwrap_or(inner);
    let mut cells = vec![String::new()];
    let mut escaped = false;
    for ch in inner.chars() {
        match ch {
            '|' if !escaped => cells.push(String::new()),
            _ => {
                if let Some(cell) = cells.last_mut() {
                    cell.push(ch);
                }
            }
        }
        escaped = ch == '\\';
    }
    cells.iter().map(|c| c.trim().to_owned()).collect()
}

/// The header row that a passage's context carries for a passage cut below it (the
/// splitter keeps it with its outer pipes; see `Passage::context`).
pub fn context_header(context: &str) -> Option<&str> {
    context.lines().map(str::trim).find(|l| l.starts_with('|'))
}

/// `text` with the body rows of its markdown tables written out under their column names,
/// one row per line: `模型：Baichuan2-13B-Base；GSM8K：52.77；MATH：10.08`. A small model
/// reading `| 量化后大小（8-bit） | 7.8 GB | 14.9 GB |` has to count columns to find 13B's
/// figure, and often takes its neighbour's; written out, the figure stands beside its
/// column's name. The header and delimiter rows of a table whose rows are written out are
/// left out (every row repeats them). `header` is the header row of a table that `text`
/// starts inside (a passage cut below it): it names the columns of the rows before the
/// first line that is not a table row. Rows whose cell count differs from their header's,
/// and everything outside tables and in fenced code blocks, are left as written.
///
/// Returns the text and whether `header` named the columns of any row.
pub fn headed_table_rows(text: &str, header: Option<&str>) -> (String, bool) {
    let lines: Vec<&str> = text.lines().collect();
    let mut out: Vec<String> = Vec::with_capacity(lines.len());
    let mut columns: Option<Vec<String>> = header.map(row_cells);
    let mut header_used = false;
    let mut from_header = columns.is_some();
    let mut fence: Option<char> = None;
    let mut k = 0;
    while k < lines.len() {
        let line = lines[k];
        let trimmed = line.trim();
        if let Some(marker) = fence_marker(trimmed) {
            fence = match fence {
                None => Some(marker),
                Some(open) if open == marker => None,
                other => other,
            };
            columns = None;
            out.push(line.to_owned());
            k += 1;
            continue;
        }
        if fence.is_some() || !trimmed.contains('|') {
            columns = None;
            out.push(line.to_owned());
            k += 1;
            continue;
        }
        if lines.get(k + 1).is_some_and(|l| is_table_delimiter(l)) {
            let next_is_row = lines.get(k + 2).is_some_and(|l| {
                let row = l.trim();
                row.contains('|') && row_cells(row).len() == row_cells(trimmed).len()
            });
            columns = Some(row_cells(trimmed));
            from_header = false;
            if !next_is_row {
                out.push(line.to_owned());
                out.push(lines[k + 1].to_owned());
            }
            k += 2;
            continue;
        }
        let cells = row_cells(trimmed);
        match &columns {
            Some(names) if names.len() == cells.len() && cells.len() > 1 => {
                header_used |= from_header;
                let pairs: Vec<String> = names
                    .iter()
                    .zip(&cells)
                    .filter(|(_, cell)| !cell.is_empty())
                    .map(|(name, cell)| {
                        if name.is_empty() || name == cell {
                            (*cell).to_owned()
                        } else {
                            format!("{name}：{cell}")
                        }
                    })
                    .collect();
                out.push(pairs.join("；"));
            }
            _ => out.push(line.to_owned()),
        }
        k += 1;
    }
    (out.join("\n"), header_used)
}

/// Whether a header row groups the columns under it rather than naming each: a ditto cell
/// after the first (`| - | internlm2.5-chat-7b | - | - |`), a second header row below it
/// naming each column. Alone, it names no column of a group but the first.
pub fn groups_columns(header: &str) -> bool {
    row_cells(header).iter().skip(1).any(|c| is_ditto(c))
}

/// A passage cut inside a markdown table below its header (`text` starts with a row, and
/// its `context` carries the header: see [`context_header`]) as a table of its own: the
/// header and a delimiter row, then the passage's rows, the leading rows that continue the
/// row above the cut (a ditto first cell: [`is_ditto`]) given the label the context carries
/// after the header (`Passage::table_spanned`). A reader of the result finds each figure's
/// column and row model as in the whole table. `None` when `text` does not start with a
/// table row, when `context` holds no header, or when the header groups columns
/// ([`groups_columns`]).
pub fn with_context_header(text: &str, context: &str) -> Option<String> {
    let header = context_header(context)?;
    let text = text.trim_start();
    if !text.starts_with('|') || groups_columns(header) {
        return None;
    }
    let columns = row_cells(header).len();
    let label = context
        .lines()
        .map(str::trim)
        .skip_while(|l| *l != header)
        .nth(1)
        .filter(|l| !l.is_empty() && !l.starts_with('|'));
    let mut out = format!("{header}\n|{}", " --- |".repeat(columns));
    let mut continuing = label.is_some();
    for line in text.lines() {
        out.push('\n');
        let row = line.trim_start();
        match label {
            Some(label) if continuing && row.starts_with('|') && is_ditto(first_cell(row)) => {
                let rest = row[1..].split_once('|').map_or("", |(_, rest)| rest);
                out.push_str(&format!("| {label} |{rest}"));
            }
            _ => {
                continuing = false;
                out.push_str(line);
            }
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_rows_are_written_under_their_column_names() {
        let text = "以下是合并模型后的大小：\n\n\
            | 模型版本 | 7B | 13B |\n| :-- | :-: | :-: |\n\
            | 原模型大小（FP16） | 13 GB | 24 GB |\n| 量化后大小（8-bit） | 7.8 GB | 14.9 GB |\n\n\
            具体内容请参考 Wiki";
        let (out, used) = headed_table_rows(text, None);
        assert!(!used);
        assert_eq!(
            out,
            "以下是合并模型后的大小：\n\n\
             模型版本：原模型大小（FP16）；7B：13 GB；13B：24 GB\n\
             模型版本：量化后大小（8-bit）；7B：7.8 GB；13B：14.9 GB\n\n\
             具体内容请参考 Wiki"
        );
    }

    #[test]
    fn a_passage_cut_below_its_header_uses_the_header_it_is_given() {
        let rows =
            "| 数学 | GSM8K | 54.9 | 18.4 |\n| 推理 | PIQA | 80.8 | 79.0 |\n说明：\n| a | b |";
        let header = "| 类别 | 数据集 | XVERSE-13B-2 | XVERSE-13B |";
        let (out, used) = headed_table_rows(rows, Some(header));
        assert!(used);
        assert_eq!(
            out,
            "类别：数学；数据集：GSM8K；XVERSE-13B-2：54.9；XVERSE-13B：18.4\n\
             类别：推理；数据集：PIQA；XVERSE-13B-2：80.8；XVERSE-13B：79.0\n\
             说明：\n| a | b |"
        );
        // A header of another width names nothing.
        let (out, used) = headed_table_rows(rows, Some("| x | y |"));
        assert!(!used);
        assert_eq!(out, rows);
    }

    #[test]
    fn code_blocks_empty_cells_and_lone_headers_are_left_alone() {
        let text = "```\n| a | b |\n|---|---|\n| 1 | 2 |\n```\n| 名称 | 值 |\n|---|---|";
        assert_eq!(headed_table_rows(text, None).0, text);
        let text = "| | 7B | 13B |\n|---|---|---|\n| 8-bit | 7.8 GB | |";
        assert_eq!(headed_table_rows(text, None).0, "8-bit；7B：7.8 GB");
        let text = "| a | b |\n|---|---|\n| 1 | 2 | 3 |";
        assert_eq!(headed_table_rows(text, None).0, text);
    }

    #[test]
    fn a_passage_cut_below_its_header_is_read_with_the_header_and_row_label_of_its_context() {
        let context =
            "以下是各版本：\n| Model | version | disk size (GB) |\ntigerbot-70b-chat-4bit";
        let text = "|  | v3 | 37 |\n| - | v2 | 37 |\n| tigerbot-13b | v1 | 26 |\n|  | v0 | 25 |";
        assert_eq!(
            with_context_header(text, context).as_deref(),
            Some(
                "| Model | version | disk size (GB) |\n| --- | --- | --- |\n\
                 | tigerbot-70b-chat-4bit | v3 | 37 |\n| tigerbot-70b-chat-4bit | v2 | 37 |\n\
                 | tigerbot-13b | v1 | 26 |\n|  | v0 | 25 |"
            )
        );
        // No label: the rows as they are, under the header.
        assert_eq!(
            with_context_header("| a | 1 |", "| k | v |").as_deref(),
            Some("| k | v |\n| --- | --- |\n| a | 1 |")
        );
        // Not inside a table, or no header to give.
        assert_eq!(with_context_header("量化结果见下表。", "| k | v |"), None);
        assert_eq!(with_context_header("| a | 1 |", "以下是各版本："), None);
        // A header grouping columns under a name (`-` after it) names one column alone.
        assert_eq!(
            with_context_header(
                "| gsm8k | 85.67 | 83.78 |",
                "| - | internlm2.5-chat-7b | - |"
            ),
            None
        );
    }

    #[test]
    fn code_blocks_close_only_on_their_own_marker() {
        let lines = ["a", "```", "~~~", "x", "```", "b", "~~~", "```", "~~~", "c"];
        let expected = [
            None,
            Some(1),
            Some(1),
            Some(1),
            Some(1),
            None,
            Some(6),
            Some(6),
            Some(6),
            None,
        ];
        assert_eq!(code_block_of(lines), expected);
        // Left open, a block runs to the end.
        assert_eq!(code_block_of(["  ```py", "x"]), [Some(0), Some(0)]);
    }
}
