//! Reading the cell a question names when the draft took its neighbour.
//!
//! A small model given the right table often copies the figure one row or one column away
//! (the FP16 size where the question asks for 4-bit, Q4_K's size for Q4_0's). Verification
//! withdraws it and knows why: the row or column the question picks is another one. The
//! cell the question does pick is then in the passage, on the same row or in the same column
//! as the draft's, and verification can tell it from the rest. [`read_from_table`] tries
//! each cell of that row and column holding the same kind of figure, keeps those whose
//! answer verifies, and gives the answer when exactly one value is left.

use zhiku_text::markdown::groups_columns;

use super::{
    FactCheck, FactKind, Key, Source, Unit, Unsupported, canonical_name, check_answer_on_subject,
    contains_word, extract_facts, fold_width, percent_decoded, row_cells, same_value, scan,
};

/// An answer read from the table cell the question names, in place of the draft's figure.
#[derive(Debug, Clone, PartialEq)]
pub struct TableCellReading {
    /// The draft with its figure replaced by the cell's.
    pub answer: String,
    /// The draft's figure, as it wrote it.
    pub draft_figure: String,
    /// The cell's figure, as the passage writes it.
    pub cell: String,
}

/// The only quantity a cell holds: its value, unit and whether it is written bare.
fn cell_quantity(cell: &str) -> Option<(f64, Unit, bool)> {
    let folded = fold_width(&cell.to_lowercase());
    match scan(&folded, true).as_slice() {
        [only] => match only.fact.key {
            Key::Quantity { value, unit, bare } => Some((value, unit, bare)),
            _ => None,
        },
        _ => None,
    }
}

/// The lines of `source` (read from a passage whose lines, width folded, are `raw_lines`)
/// with every line blanked that is not a markdown table's, a heading or a table's lead-in
/// line.
fn tables_only(raw_lines: &[&str], source: &Source) -> String {
    let mut kept: Vec<bool> = (0..source.lines.len())
        .map(|k| source.table_of[k].is_some() || source.is_heading[k])
        .collect();
    for k in 0..source.lines.len() {
        if source.table_of[k].is_some()
            && let Some(lead) = source.lead_in[k]
        {
            kept[lead] = true;
        }
    }
    raw_lines
        .iter()
        .zip(kept)
        .map(|(line, keep)| if keep { *line } else { "" })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The draft `answer` with its one misplaced figure replaced by the figure of the table
/// cell that the question picks, when `check` (of `answer` against `passages`, as
/// [`check_answer_on_subject`] with `off_subject` gives it) found exactly one unsupported key
/// fact, a quantity that only other rows or columns of markdown tables state
/// ([`Unsupported::OtherRow`]), and exactly one value among the cells on the same row or in
/// the same column as it (with the same unit, alone in its cell) makes an answer that
/// verifies. `None` otherwise, and when the question names a key fact that no passage
/// states (a near miss: the table it reads lacks the question's row).
///
/// `documents[i]` names passage `i`'s document. A table is read only from a document that
/// names (in its name or its cited passages) every name of the question that some cited
/// document names: the draft's figure may come from another product's table that shares
/// the question's words (Baichuan's int8 row for a question about MiniCPM-V's int8), where
/// the question's cell is not the answer either.
pub fn read_from_table(
    answer: &str,
    passages: &[&str],
    documents: &[&str],
    off_subject: &[bool],
    question: &str,
    check: &FactCheck,
) -> Option<TableCellReading> {
    let [misplaced] = check.unsupported.as_slice() else {
        return None;
    };
    let Key::Quantity { value, .. } = misplaced.fact.key else {
        return None;
    };
    if misplaced.why != Unsupported::OtherRow
        || !check.question_unstated.is_empty()
        || !answer.contains(misplaced.fact.text.as_str())
    {
        return None;
    }
    // The answer's unit as it wrote it, kept when the cell writes its number bare (the
    // header names the unit).
    let written_unit: String = misplaced
        .fact
        .text
        .trim_start_matches(|c: char| c.is_ascii_digit() || c == '.' || c == ',')
        .to_owned();
    let sources: Vec<Source> = passages.iter().map(|p| Source::new(p)).collect();
    // Each passage's lines as written (width folded): the cells are taken from them.
    let raw: Vec<String> = passages
        .iter()
        .map(|p| fold_width(&percent_decoded(p)))
        .collect();
    let raw_lines: Vec<Vec<&str>> = raw.iter().map(|r| r.split('\n').collect()).collect();
    // The passages' tables alone, with their headings and lead-in lines: a cell's figure
    // must verify as a cell. Prose may state it of something else (`CodeGeeX4-ALL-9B 分别
    // 取得了 48.9 和 40.4 的高分`, of BigCodeBench, beside a HumanEval question's table row
    // holding 40.4 under NCB), which verification lets stand for a whole answer.
    let table_texts: Vec<String> = raw_lines
        .iter()
        .zip(&sources)
        .map(|(lines, source)| tables_only(lines, source))
        .collect();
    let tables: Vec<&str> = table_texts.iter().map(String::as_str).collect();
    let document_of = |i: usize| documents.get(i).copied().unwrap_or("");
    let document_names = |document: &str, name: &str| {
        contains_word(&canonical_name(&fold_width(document)), name)
            || (0..sources.len()).any(|i| {
                document_of(i) == document
                    && sources[i].lines.iter().any(|l| contains_word(l, name))
            })
    };
    let names: Vec<String> = extract_facts(question)
        .into_iter()
        .filter_map(|f| match (f.kind, f.key) {
            (FactKind::ModelName | FactKind::Identifier, Key::Literal(name)) => Some(name),
            _ => None,
        })
        .filter(|name| (0..sources.len()).any(|i| document_names(document_of(i), name)))
        .collect();
    let mut readings: Vec<(f64, TableCellReading)> = Vec::new();
    for (s, source) in sources.iter().enumerate() {
        if off_subject.get(s).copied().unwrap_or(false)
            || names.iter().any(|n| !document_names(document_of(s), n))
        {
            continue;
        }
        let cells_of = |k: usize| row_cells(raw_lines[s].get(k).copied().unwrap_or(""));
        for k in 0..source.lines.len() {
            let Some(first) = source.table_of[k] else {
                continue;
            };
            // Under a header that groups its columns, a cell that verifies may be another
            // column of the question's group.
            let grouped = source.is_table_head(first)
                && groups_columns(raw_lines[s].get(first).copied().unwrap_or(""));
            if source.is_table_head(k) || grouped {
                continue;
            }
            let row = cells_of(k);
            // The draft's cells on this row: the misplaced figure alone in its cell.
            let placed = (1..row.len()).filter_map(|c| {
                cell_quantity(&row[c])
                    .filter(|&(v, _, _)| same_value(v, value))
                    .map(|(_, unit, bare)| (c, unit, bare))
            });
            for (column, unit, bare) in placed.collect::<Vec<_>>() {
                let along_row = (1..row.len())
                    .filter(|&c| c != column)
                    .map(|c| row[c].clone());
                let down_column = source
                    .table_body(first)
                    .into_iter()
                    .filter(|&r| r != k)
                    .filter_map(|r| cells_of(r).get(column).cloned());
                for cell in along_row.chain(down_column).collect::<Vec<_>>() {
                    let Some((v, u, b)) = cell_quantity(&cell) else {
                        continue;
                    };
                    if u != unit || b != bare || same_value(v, value) {
                        continue;
                    }
                    if readings.iter().any(|(seen, _)| same_value(*seen, v)) {
                        continue;
                    }
                    let cell = cell.trim().to_owned();
                    let figure = if bare {
                        format!("{cell}{written_unit}")
                    } else {
                        cell.clone()
                    };
                    let candidate =
                        answer.replacen(misplaced.fact.text.as_str(), figure.as_str(), 1);
                    let verifies = |passages: &[&str]| {
                        check_answer_on_subject(&candidate, passages, off_subject, question)
                            .unsupported
                            .is_empty()
                    };
                    if verifies(passages) && verifies(&tables) {
                        readings.push((
                            v,
                            TableCellReading {
                                answer: candidate,
                                draft_figure: misplaced.fact.text.clone(),
                                cell,
                            },
                        ));
                    }
                }
            }
        }
    }
    match readings.len() {
        1 => readings.pop().map(|(_, reading)| reading),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verify::check_answer;

    const QUANTIZED: &str = "\
| llama.cpp |    F16 |   Q2_K |  Q3_K |  Q4_0 |  Q4_1 |  Q4_K |  Q5_0 |
| --------- | -----: | -----: | ----: | ----: | ----: | ----: | ----: |
| PPL       |  9.128 | 11.107 | 9.576 | 9.476 | 9.576 | 9.240 | 9.156 |
| Size      | 12.91G |  2.41G | 3.18G | 3.69G | 4.08G | 3.92G | 4.47G |";
    const QUANTIZED_LEAD: &str = "以Chinese-LLaMA-2-7B为例，对比不同精度下的模型大小、PPL。";
    const QUANTIZED_Q: &str = "llama.cpp 下用 Q4_0 量化 Chinese-LLaMA-2-7B，模型大小是多少？";

    const MERGED: &str = "\
以下是合并模型后，FP16精度和4-bit量化后的大小：

| 模型版本            |   7B   |   13B   |   33B   |   65B   |
| :------------------ | :----: | :-----: | :-----: | :-----: |
| 原模型大小（FP16）  | 13 GB  |  24 GB  |  60 GB  | 120 GB  |
| 量化后大小（8-bit） | 7.8 GB | 14.9 GB | 32.4 GB | ~60 GB  |
| 量化后大小（4-bit） | 3.9 GB | 7.8 GB  | 17.2 GB | 38.5 GB |";
    const MERGED_NAMES: &str = "Alpaca-Plus模型需要同时下载对应的LLaMA-Plus模型。";
    const MERGED_DOCUMENT: &str = "chinese-llama-alpaca/README.md";

    fn read(
        answer: &str,
        passages: &[&str],
        documents: &[&str],
        question: &str,
    ) -> Option<TableCellReading> {
        let check = check_answer(answer, passages, question);
        read_from_table(answer, passages, documents, &[], question, &check)
    }

    #[test]
    fn the_column_the_question_names_gives_the_figure() {
        let passages = [QUANTIZED, QUANTIZED_LEAD];
        let documents = ["chinese-llama-alpaca-2/README.md"; 2];
        let reading =
            read("模型大小为3.92G。", &passages, &documents, QUANTIZED_Q).expect("read from Q4_0");
        assert_eq!(reading.cell, "3.69G");
        assert_eq!(reading.answer, "模型大小为3.69G。");
        assert_eq!(reading.draft_figure, "3.92G");
    }

    #[test]
    fn the_row_and_the_size_column_the_question_names_give_the_figure() {
        // 60 GB is also the 8-bit row's 65B cell: read from there, the 4-bit row's other
        // cells would verify too, were the 33B column not the question's.
        let q = "一代中文 LLaMA/Alpaca 的 33B 模型合并完再做 4-bit 量化，文件大概多大？";
        let passages = [MERGED, MERGED_NAMES];
        let reading = read("大约 60 GB。", &passages, &[MERGED_DOCUMENT; 2], q)
            .expect("read from the 4-bit row");
        assert_eq!(reading.cell, "17.2 GB");
        assert_eq!(reading.answer, "大约 17.2 GB。");
    }

    #[test]
    fn a_bare_cell_keeps_the_unit_the_answer_wrote() {
        let table = "\
| 量化 | 7B 显存（GB） | 13B 显存（GB） |
| --- | --- | --- |
| FP16 | 13.5 | 26.1 |
| INT4 | 5.1 | 8.9 |";
        let q = "13B 模型 INT4 量化后显存多少？";
        let reading = read("约 26.1GB", &[table], &[], q).expect("read from the INT4 row");
        assert_eq!(reading.answer, "约 8.9GB");
    }

    #[test]
    fn nothing_is_read_when_the_question_does_not_pick_one_cell() {
        // The question names the bit width but not the model size: any cell of the 4-bit
        // row would verify.
        let q = "一代中文 LLaMA/Alpaca 合并完再做 4-bit 量化，文件大概多大？";
        assert_eq!(read("大约 60 GB。", &[MERGED], &[MERGED_DOCUMENT], q), None);
    }

    #[test]
    fn nothing_is_read_for_a_near_miss_or_a_figure_no_passage_states() {
        // 3-bit: no row holds it, and no passage states it.
        let q = "LLaMA/Alpaca 的 33B 模型用 3-bit 和 4-bit 分别量化后文件多大？";
        let check = check_answer("大约 60 GB。", &[MERGED], q);
        assert!(!check.question_unstated.is_empty());
        assert_eq!(read("大约 60 GB。", &[MERGED], &[MERGED_DOCUMENT], q), None);
        // An invented figure is not misplaced: nothing to move from.
        let q = "LLaMA/Alpaca 的 33B 模型合并完再做 4-bit 量化，文件大概多大？";
        assert_eq!(
            read("大约 37.2 GB。", &[MERGED], &[MERGED_DOCUMENT], q),
            None
        );
        // A right answer has nothing unsupported.
        assert_eq!(
            read("大约 17.2 GB。", &[MERGED], &[MERGED_DOCUMENT], q),
            None
        );
    }

    #[test]
    fn another_products_table_is_not_read() {
        // The draft took Baichuan's int4 figure for a question about MiniCPM-V, whose own
        // table has no int8 row: Baichuan's int8 row does not answer it either.
        let minicpm = "| MiniCPM-V 2.6 int4 | GPU | 7 GB  | int4量化版，更低显存占用。 |";
        let baichuan = "\
量化前后占用显存情况如下：
| Precision   | GPU Mem (GB) |
|-------------|:------------:|
| bf16 / fp16 | 26.0         |
| int8        | 15.8         |
| int4        | 9.7          |";
        let q = "MiniCPM-V 2.6 的 int8 量化版要多少显存？";
        let passages = [minicpm, baichuan];
        let check = check_answer("9.7", &passages, q);
        assert!(!check.unsupported.is_empty());
        let documents = [
            "minicpm-v/docs/minicpm_v2dot6_zh.md",
            "baichuan-13b/README.md",
        ];
        assert_eq!(read("9.7", &passages, &documents, q), None);
        // Read as one document, Baichuan's int8 row would be taken.
        assert!(read("9.7", &passages, &["one.md"; 2], q).is_some());
    }

    #[test]
    fn a_figure_prose_states_of_something_else_is_no_second_reading() {
        // 40.4, under NCB in the question's row, is also stated in prose (of BigCodeBench):
        // the whole answer would verify, the cell does not.
        let passage = "\
| 模型 | 序列长度 | HumanEval | MBPP | NCB | HumanEvalFIM |
| --- | --- | --- | --- | --- | --- |
| Codestral-22B | 32K | 81.1 | 78.2 | 46.0 | 91.6 |
| CodeGeeX4-All-9B | 128K | 82.3 | 75.7 | 40.4 | 85.0 |

在 BigCodeBench 的 complete 和 instruct 任务中，CodeGeeX4-ALL-9B 分别取得了 `48.9` 和 `40.4` 的高分。";
        let q = "CodeGeeX4-All-9B 在 HumanEval 上能拿多少分？";
        let answer = "CodeGeeX4-All-9B 在 HumanEval 上能拿85.0分。";
        assert!(
            check_answer(&answer.replace("85.0", "40.4"), &[passage], q)
                .unsupported
                .is_empty()
        );
        let reading = read(answer, &[passage], &["codegeex4/README_zh.md"], q)
            .expect("read from the HumanEval column");
        assert_eq!(reading.cell, "82.3");
    }

    #[test]
    fn nothing_is_read_under_a_header_that_groups_its_columns() {
        // The header names each model once over its three kv columns; the kv int4 figure
        // the question asks for is under a `-` cell.
        let passage = "\
| -       | -       | internlm2-chat-7b | -       | -       | internlm2.5-chat-7b | -       | -       |
| ------- | ------- | ----------------- | ------- | ------- | ------------------- | ------- | ------- |
| dataset | metric  | kv fp16           | kv int8 | kv int4 | kv fp16             | kv int8 | kv int4 |
| gsm8k   | accuracy| 70.13             | 69.75   | 66.87   | 85.67               | 85.44   | 83.78   |";
        let q = "internlm2.5-chat-7b 开了 kv int4 量化以后 gsm8k 还有多少分？";
        let check = check_answer("66.87", &[passage], q);
        assert_eq!(check.unsupported.len(), 1, "{check:?}");
        assert_eq!(
            read("66.87", &[passage], &["lmdeploy/kv_quant.md"], q),
            None
        );
    }

    #[test]
    fn a_passage_off_the_subject_is_not_read() {
        let passages = [QUANTIZED, QUANTIZED_LEAD];
        let check = check_answer("模型大小为3.92G。", &passages, QUANTIZED_Q);
        assert_eq!(
            read_from_table(
                "模型大小为3.92G。",
                &passages,
                &[],
                &[true, false],
                QUANTIZED_Q,
                &check
            ),
            None
        );
    }
}
