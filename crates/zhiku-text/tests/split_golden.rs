//! Golden tests of the splitter on a small Chinese knowledge base (tests/golden/).

mod common;

use zhiku_text::{Passage, PassageSplitter, SplitterConfig};

const KB: &str = include_str!("golden/knowledge_base.md");
const URL: &str = "https://example.com/a.b?c=1";

/// The passage texts of plain `text` split at the given sizes.
fn texts(chunk_size: usize, overlap: usize, text: &str) -> Vec<String> {
    splitter(chunk_size, overlap)
        .split(text)
        .into_iter()
        .map(|p| p.text)
        .collect()
}

fn splitter(chunk_size: usize, overlap: usize) -> PassageSplitter {
    PassageSplitter::new(SplitterConfig {
        chunk_size,
        overlap,
    })
    .expect("valid sizes")
}

/// The sentences of the knowledge base's body lines, each with its end mark and any closing
/// quote after it.
fn sentences(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let mut current = String::new();
        let mut chars = line.chars().peekable();
        while let Some(c) = chars.next() {
            current.push(c);
            if matches!(c, '。' | '！' | '？') {
                while let Some(&close) = chars.peek().filter(|&&n| n == '”') {
                    current.push(close);
                    chars.next();
                }
                out.push(std::mem::take(&mut current).trim().to_string());
            }
        }
        if !current.trim().is_empty() {
            out.push(current.trim().to_string());
        }
    }
    out
}

#[test]
fn knowledge_base_splits_at_sentences_with_heading_paths() {
    let passages = splitter(120, 30).split_markdown(KB);
    let got = common::headed(&passages);
    let expected = [
        (
            "本地知识库问答",
            "基于本地知识库的问答系统，先把文档切成段落，再用向量模型把每个段落编码成向量，存入向量数据库。提问时，系统把问题也编码成向量，检索出最相近的若干段落，连同问题一起交给大语言模型生成答案。",
        ),
        (
            "本地知识库问答",
            "这样，模型回答的依据来自你自己的文档，而不是它训练时见过的网页。",
        ),
        (
            "本地知识库问答 > ChatGLM 模型",
            "ChatGLM-6B 是一个开源的、支持中英双语的对话语言模型，基于 General Language Model (GLM) 架构，具有 62 亿参数。",
        ),
        (
            "本地知识库问答 > ChatGLM 模型",
            "结合模型量化技术，用户可以在消费级的显卡上进行本地部署（INT4 量化级别下最低只需 6GB 显存）。",
        ),
        (
            "本地知识库问答 > ChatGLM 模型",
            "官方说明见 https://example.com/a.b?c=1 ，其中写道：“模型在 3.14 版本的推理框架上测试通过。”如果显存不足，可以改用 CPU 推理，但速度会慢很多！",
        ),
        (
            "本地知识库问答 > LoRA 微调",
            "LoRA 的做法是冻结预训练模型的权重，只在每层旁边加一对低秩矩阵；训练时只更新这两个小矩阵，参数量通常不到原模型的 1%。训练好的 LoRA 权重只有几十 MB，可以随时加载或卸载，同一个底座模型因此能服务多个领域。",
        ),
        (
            "本地知识库问答 > LoRA 微调 > 数据准备",
            "每条训练样本包含指令、输入和输出三部分。数据量不必很大：一千条高质量的样本，往往比十万条杂乱的样本效果更好。",
        ),
    ];
    let expected: Vec<(String, &str)> = expected.iter().map(|(h, t)| (h.to_string(), *t)).collect();
    assert_eq!(got, expected);

    // Offsets point back into the file.
    let chars: Vec<char> = KB.chars().collect();
    for p in &passages {
        let at: String = chars[p.char_start..p.char_end].iter().collect();
        assert_eq!(at, p.text);
    }
    // Title enhance: the heading path leads the indexed text.
    assert_eq!(
        passages[6].indexed_text(),
        "本地知识库问答 > LoRA 微调 > 数据准备\n每条训练样本包含指令、输入和输出三部分。数据量不必很大：一千条高质量的样本，往往比十万条杂乱的样本效果更好。"
    );
    assert_eq!(
        passages[6].heading_path,
        ["本地知识库问答", "LoRA 微调", "数据准备"]
    );
}

#[test]
fn no_sentence_that_fits_is_cut_at_any_size() {
    let all = sentences(KB);
    assert!(all.len() >= 10, "the fixture has sentences: {all:?}");
    for chunk_size in (20..=260).step_by(7) {
        for overlap in [0, chunk_size / 5, chunk_size / 2] {
            let passages = splitter(chunk_size, overlap).split_markdown(KB);
            for sentence in all.iter().filter(|s| s.chars().count() <= chunk_size) {
                assert!(
                    passages.iter().any(|p| p.text.contains(sentence.as_str())),
                    "{chunk_size}/{overlap}: {sentence:?} is cut"
                );
            }
        }
    }
}

#[test]
fn numbers_and_urls_are_never_split() {
    for chunk_size in 28..=140 {
        let passages = splitter(chunk_size, chunk_size / 4).split_markdown(KB);
        for token in [URL, "3.14", "ChatGLM-6B", "1%", "6GB"] {
            let holding: Vec<&Passage> =
                passages.iter().filter(|p| p.text.contains(token)).collect();
            assert!(!holding.is_empty(), "{chunk_size}: {token} is cut");
        }
        for p in &passages {
            // A passage that holds part of the URL holds all of it.
            for part in ["https://example.com", "a.b?c=1"] {
                if p.text.contains(part) {
                    assert!(
                        p.text.contains(URL),
                        "{chunk_size}: {:?} cuts the URL",
                        p.text
                    );
                }
            }
            assert!(!p.text.ends_with("3.") && !p.text.starts_with(".14"));
        }
    }
}

#[test]
fn long_sentences_fall_back_to_clauses_then_hard_cuts() {
    let text = "第一个分句比较长一些，第二个分句也不短；第三个分句在这里。";
    assert_eq!(
        texts(12, 0, text),
        [
            "第一个分句比较长一些，",
            "第二个分句也不短；",
            "第三个分句在这里。"
        ]
    );

    // No separator at all: hard cuts at character boundaries, but not inside the URL.
    let text = "一二三四五六七八九十https://example.com/a.b?c=1一二三";
    assert_eq!(
        texts(30, 0, text),
        ["一二三四五六七八九十", "https://example.com/a.b?c=1一二三"]
    );
    let text = "一二三四五六七八九ChatGLM-6B十一二三ai@zhiku.cn";
    assert_eq!(
        texts(12, 0, text),
        [
            "一二三四五六七八九",
            "ChatGLM-6B十一",
            "二三",
            "ai@zhiku.cn"
        ]
    );
}

#[test]
fn closing_quotes_and_ellipses_stay_with_their_sentence() {
    let text = "他说：“明天见。”她答：「好！」然后……沉默了。最后一句？";
    assert_eq!(
        texts(9, 0, text),
        [
            "他说：“明天见。”",
            "她答：「好！」",
            "然后……沉默了。",
            "最后一句？"
        ]
    );
}

#[test]
fn consecutive_passages_overlap_by_whole_sentences() {
    let text = "甲乙丙丁。戊己庚辛。壬癸子丑。寅卯辰巳。午未申酉。戌亥天地。";
    assert_eq!(
        texts(15, 5, text),
        [
            "甲乙丙丁。戊己庚辛。壬癸子丑。",
            "壬癸子丑。寅卯辰巳。午未申酉。",
            "午未申酉。戌亥天地。"
        ]
    );
    let passages = splitter(15, 5).split(text);
    assert_eq!(passages[1].char_start, 10);
    assert_eq!(passages[0].char_end - passages[1].char_start, 5);
}

#[test]
fn english_sentences_split_after_period_space_only() {
    let text = "Pi is about 3.14 and e is 2.718. See www.example.org/x.html for more. Done!";
    assert_eq!(
        texts(35, 0, text),
        [
            "Pi is about 3.14 and e is 2.718.",
            "See www.example.org/x.html for",
            "more. Done!"
        ]
    );
}

#[test]
fn a_large_document_splits_quickly() {
    // Linear work per separator level: 100 copies of the knowledge base (about 60k chars)
    // take milliseconds even in a debug build; a quadratic splitter would take seconds.
    let big = KB.repeat(100);
    let started = std::time::Instant::now();
    let passages = PassageSplitter::default().split_markdown(&big);
    let elapsed = started.elapsed();
    assert!(passages.len() >= 300, "{}", passages.len());
    assert!(elapsed.as_secs() < 5, "took {elapsed:?}");
}

#[test]
fn setext_headings_and_code_fences() {
    let md = "指南\n====\n\n简介。\n\n安装\n----\n\n```sh\n# 注释，不是标题\ncargo build\n```\n\n- 列表项\n---\n\n结束。\n";
    let passages = PassageSplitter::default().split_markdown(md);
    let got = common::headed(&passages);
    assert_eq!(
        got,
        [
            ("指南".to_string(), "简介。"),
            (
                "指南 > 安装".to_string(),
                "```sh\n# 注释，不是标题\ncargo build\n```\n\n- 列表项\n---\n\n结束。"
            ),
        ]
    );
}

#[test]
fn tiny_fragments_merge_into_their_neighbours() {
    // Short lines and paragraphs, each a piece of its own at some level, end up together.
    let text = "好。\n\n是。\n对\n\n。\n1.\n\n- a\n- b";
    assert_eq!(texts(250, 50, text), [text]);
    // Only a piece that no longer fits starts a new passage.
    assert_eq!(
        texts(8, 0, "一。\n二。\n三。\n四。\n五。"),
        ["一。\n二。\n三。", "四。\n五。"]
    );
}

#[test]
fn table_rows_cut_from_their_header_carry_it() {
    let header = "| 精度 | 显卡数量 | 显存占用 | 输入token数 |";
    let rows: Vec<String> = (1..=8)
        .map(|i| format!("| BF16 | {i} | {} GB | {}000 |", 10 + i, i))
        .collect();
    let md = format!(
        "# 显存\n\n下表是实测数据。\n\n{header}\n|------|------|------|------|\n{}\n\n表后的说明。\n",
        rows.join("\n")
    );
    let passages = splitter(80, 0).split_markdown(&md);
    assert!(passages.len() >= 3, "{passages:#?}");
    // The first passage holds the header row itself; every later one that starts on a row
    // carries it for indexing, and text outside the table carries none.
    assert!(passages[0].text.contains(header));
    assert_eq!(passages[0].table_header, None);
    let continued: Vec<_> = passages
        .iter()
        .filter(|p| p.text.starts_with("| BF16"))
        .collect();
    assert!(!continued.is_empty(), "{passages:#?}");
    for p in &continued {
        assert_eq!(p.table_header.as_deref(), Some(header));
        assert_eq!(p.caption.as_deref(), Some("下表是实测数据。"));
        assert_eq!(p.context(), format!("下表是实测数据。\n{header}"));
        assert_eq!(
            p.indexed_text(),
            format!("显存\n下表是实测数据。\n{header}\n{}", p.text)
        );
    }
    // The first passage holds the caption in its text: no context.
    assert!(passages[0].text.contains("下表是实测数据。"));
    assert_eq!(passages[0].context(), "");
    let after = passages.last().expect("passages");
    if after.text.starts_with("表后") {
        assert_eq!(after.table_header, None);
        assert_eq!(after.caption, None);
    }
    // Offsets still index the source: the header is context, not text.
    let chars: Vec<char> = md.chars().collect();
    for p in &passages {
        let span: String = chars[p.char_start..p.char_end].iter().collect();
        assert_eq!(span, p.text);
    }
}

#[test]
fn pipes_in_code_and_prose_are_no_table() {
    let md = "# 命令\n\n```sh\n| a | b |\n|---|---|\n| 1 | 2 |\n```\n\n用 a | b 连接管道。\n";
    let passages = splitter(12, 0).split_markdown(md);
    assert!(
        passages.iter().all(|p| p.table_header.is_none()),
        "{passages:#?}"
    );
}

#[test]
fn html_table_rows_carry_the_first_row_as_their_header() {
    let rows: String = (1..=6)
        .map(|i| {
            format!(
                "    <tr>\n        <td>{i}B</td>\n        <td>{}.5</td>\n    </tr>\n",
                10 * i
            )
        })
        .collect();
    let md = format!(
        "# 速度\n\n<table>\n    <tr>\n        <th>Model Size</th>\n        <td><b>Speed</b> (Tokens/s)</td>\n    </tr>\n{rows}</table>\n\n表后。\n"
    );
    let passages = splitter(100, 0).split_markdown(&md);
    let continued: Vec<_> = passages
        .iter()
        .filter(|p| p.text.contains("<td>") && !p.text.contains("Model Size"))
        .collect();
    assert!(!continued.is_empty(), "{passages:#?}");
    for p in continued {
        assert_eq!(
            p.table_header.as_deref(),
            Some("| Model Size | Speed (Tokens/s) |"),
            "{p:#?}"
        );
    }
    assert!(passages[0].table_header.is_none(), "{passages:#?}");
    let after = passages.last().expect("passages");
    if after.text.starts_with("表后") {
        assert!(after.table_header.is_none(), "{after:#?}");
    }
}

#[test]
fn html_table_rows_are_indexed_as_cells_without_markup() {
    let md = "# 推理性能\n\n<table>\n    <tr>\n        <th>Model</th><th>精度</th><th>速度</th>\n    </tr>\n    <tr>\n        <td rowspan=\"2\">14B</td>\n        <td align=\"center\">BF16</td>\n        <td>32.22</td>\n    </tr>\n    <tr>\n        <td>Int4</td>\n        <td>50.09</td>\n    </tr>\n</table>\n";
    let passages = splitter(400, 0).split_markdown(md);
    let indexed: Vec<String> = passages.iter().map(|p| p.indexed_text()).collect();
    let all = indexed.join("\n");
    assert!(!all.contains("<td"), "{all}");
    assert!(!all.contains("align"), "{all}");
    assert!(all.contains("14B | BF16 | 32.22"), "{all}");
    // The merged cell is repeated in the row it spans.
    assert!(all.contains("14B | Int4 | 50.09"), "{all}");
    // The displayed text is the source's, markup and all.
    assert!(passages.iter().any(|p| p.text.contains("<td>32.22</td>")));
    // A passage cut inside a row keeps the cell it starts in.
    let cut = zhiku_text::Passage {
        index: 0,
        text: "32.22</td>\n    </tr>\n    <tr>\n        <td>Int4</td>".into(),
        heading_path: vec![],
        table_header: None,
        caption: None,
        table_spanned: None,
        char_start: 0,
        char_end: 0,
    };
    assert_eq!(cut.indexed_text(), "32.22\nInt4");
    // Text without table cells is indexed as it is, HTML or not.
    let prose = zhiku_text::Passage {
        text: "用 <b>INT4</b> 量化。".into(),
        ..cut
    };
    assert_eq!(prose.indexed_text(), "用 <b>INT4</b> 量化。");
}

#[test]
fn a_passage_is_embedded_under_its_documents_title() {
    let md = "## 软硬件依赖\n\n| 必需项 | 至少 |\n| --- | --- |\n| transformers | 4.49.0 |\n";
    let document = zhiku_text::load("LLaMA-Factory/README_zh.md", md.as_bytes()).expect("loads");
    let passages = PassageSplitter::default().split_document(&document);
    let title = zhiku_text::document_title(&document.source);
    assert_eq!(title, "LLaMA-Factory / README_zh");
    let first = &passages[0];
    assert_eq!(
        first.indexed_text_under(&title),
        format!("LLaMA-Factory / README_zh\n{}", first.indexed_text())
    );
    assert!(first.indexed_text().starts_with("软硬件依赖\n"));
    // No title, nothing added.
    assert_eq!(first.indexed_text_under(""), first.indexed_text());
}

#[test]
fn a_table_passage_carries_the_paragraph_before_its_table_as_caption() {
    let rows: String = (0..12)
        .map(|i| format!("| {i}-bit量化 | {i}.7 GB | 10.{i} |\n"))
        .collect();
    let table = format!("| 精度 | 模型大小 | PPL |\n| :-- | :--: | :--: |\n{rows}");
    let caption = |md: &str| -> Vec<Option<String>> {
        splitter(60, 0)
            .split_markdown(md)
            .into_iter()
            .filter(|p| p.text.starts_with('|'))
            .map(|p| p.caption)
            .collect()
    };
    // Two lines of one paragraph, joined; every passage that starts in the table has it,
    // the one starting on the header row too.
    let md = format!(
        "## 量化效果评测\n\n以Chinese-LLaMA-2-7B为例，\n对比不同精度下的模型大小。\n\n{table}"
    );
    let captions = caption(&md);
    assert!(captions.len() >= 2, "{captions:?}");
    for c in &captions {
        assert_eq!(
            c.as_deref(),
            Some("以Chinese-LLaMA-2-7B为例， 对比不同精度下的模型大小。")
        );
    }
    // A heading right above the table: no caption (the heading path says it already).
    let captions = caption(&format!("## 量化效果评测\n\n{table}"));
    assert!(captions.iter().all(Option::is_none), "{captions:?}");
    // A long paragraph is cut to its start.
    let long = "很".repeat(500);
    let captions = caption(&format!("# 表\n\n{long}\n\n{table}"));
    assert!(!captions.is_empty());
    for c in captions {
        assert_eq!(
            c.expect("a caption").chars().count(),
            zhiku_text::MAX_CAPTION_CHARS
        );
    }
}

#[test]
fn markdown_rows_marked_as_continuing_the_row_above_carry_its_label() {
    // LMDeploy's kv-cache table: each model named once, the rows under it marked `-`.
    let md = "## 推理效率\n\n\
| model             | kv type | RPS   |\n\
| ----------------- | ------- | ----- |\n\
| llama2-chat-7b    | fp16    | 14.98 |\n\
| -                 | int8    | 19.01 |\n\
| -                 | int4    | 20.81 |\n\
| llama2-chat-13b   | fp16    | 8.55  |\n\
| -                 | int8    | 10.96 |\n\
| 〃                | int4    | 11.91 |\n\
|                   | w8      | 12.50 |\n\
| internlm2-chat-7b | fp16    | 24.13 |\n";
    // One row per passage (each row is 42 characters).
    let passages = splitter(45, 0).split_markdown(md);
    let label_of = |figure: &str| {
        passages
            .iter()
            .find(|p| p.text.contains(figure))
            .map(|p| p.table_spanned.clone())
            .unwrap_or_else(|| panic!("{figure} is in no passage: {passages:#?}"))
    };
    assert_eq!(label_of("14.98"), None, "a named row carries nothing");
    assert_eq!(label_of("19.01").as_deref(), Some("llama2-chat-7b"));
    assert_eq!(label_of("10.96").as_deref(), Some("llama2-chat-13b"));
    assert_eq!(label_of("11.91").as_deref(), Some("llama2-chat-13b"));
    assert_eq!(label_of("12.50").as_deref(), Some("llama2-chat-13b"));
    assert_eq!(label_of("24.13"), None);
    let p = passages
        .iter()
        .find(|p| p.text.contains("10.96"))
        .expect("a passage");
    assert!(
        p.indexed_text().contains("llama2-chat-13b\n| -"),
        "{}",
        p.indexed_text()
    );
    // A passage that starts at a named row needs no label, though ditto rows follow in it.
    let whole = splitter(4000, 0).split_markdown(md);
    assert_eq!(whole[0].table_spanned, None);
}

#[test]
fn html_rows_under_a_merged_cell_carry_it() {
    // Three models, each a merged cell over three precisions, as Qwen's README writes its
    // speed table; passages small enough that most start below a model's first row.
    let mut rows = String::new();
    for model in ["1.8B", "7B", "14B"] {
        for (k, precision) in ["BF16", "Int8", "Int4"].iter().enumerate() {
            rows.push_str("    <tr>\n");
            if k == 0 {
                rows.push_str(&format!("        <td rowspan=\"3\">{model}</td>\n"));
            }
            rows.push_str(&format!(
                "        <td>{precision}</td>\n        <td>{model}-{precision}-speed</td>\n    </tr>\n"
            ));
        }
    }
    let md = format!(
        "# 推理性能\n\n下表是 Qwen-Chat 的生成速度。\n\n<table>\n    <tr>\n        <th>Model</th><th>Quantization</th><th>Speed</th>\n    </tr>\n{rows}</table>\n"
    );
    // Small enough that passages start inside rows, after a row's own merged cell too.
    let passages = splitter(40, 0).split_markdown(&md);
    let mut checked = 0;
    for p in &passages {
        // The row a passage starts in, by its speed cell: the model it names must be in
        // the passage's context or its own text.
        let Some(first) = p
            .text
            .split("-speed")
            .next()
            .filter(|_| p.text.contains("-speed"))
        else {
            continue;
        };
        let model = first
            .rsplit('>')
            .next()
            .and_then(|cell| cell.split('-').next())
            .expect("a speed cell");
        let own_row_names_it = p.text.contains(&format!("rowspan=\"3\">{model}<"));
        if !own_row_names_it {
            // The model, then the row's label when the passage starts after it.
            let spanned = p.table_spanned.as_deref().unwrap_or_default();
            assert!(
                spanned == model || spanned.starts_with(&format!("{model} | ")),
                "{p:#?}"
            );
            assert!(p.context().ends_with(spanned), "{p:#?}");
            assert!(
                p.indexed_text().contains(&format!("{spanned}\n")),
                "{}",
                p.indexed_text()
            );
            checked += 1;
        }
    }
    assert!(
        checked >= 2,
        "too few passages start under a merged cell: {passages:#?}"
    );
    // Some passage starts in a model's first row, after that row's own merged cell.
    assert!(
        passages.iter().any(|p| p.text.starts_with("<td>BF16</td>")),
        "{passages:#?}"
    );
    // Within one passage the merged cell is repeated in each row it spans.
    let whole = splitter(4000, 0).split_markdown(&md);
    let indexed = whole[0].indexed_text();
    assert!(indexed.contains("14B | Int4 | 14B-Int4-speed"), "{indexed}");
    assert!(indexed.contains("7B | Int8 | 7B-Int8-speed"), "{indexed}");
    assert_eq!(whole[0].table_spanned, None);
}

#[test]
fn merged_cell_attributes_from_a_document_are_bounded() {
    // A rowspan or colspan no table has must not make the splitter hold that many cells.
    let md = "<table>\n<tr><th>a</th><th>b</th></tr>\n<tr><td rowspan=\"999999999\" colspan=\"99999999\">x</td><td>y</td></tr>\n<tr><td>z</td></tr>\n<tr><td rowspan=abc>w</td></tr>\n</table>\n";
    let passages = splitter(400, 0).split_markdown(md);
    let indexed = passages[0].indexed_text();
    assert!(indexed.contains("x | y"), "{indexed}");
    assert!(indexed.contains("x | z"), "{indexed}");
    assert!(indexed.contains("x | w"), "{indexed}");
}

#[test]
fn a_passage_starting_inside_a_wide_html_row_names_the_row() {
    // MiniCPM-V's READMEs: a row of eleven `<td align="center">` cells is longer than a
    // passage, so a passage holding "894" starts after the row's model name.
    let mut rows = String::new();
    for (model, score) in [("GPT-4v", "656"), ("MiniCPM-V 4.0", "894")] {
        rows.push_str(&format!(
            "        <tr>\n            <td nowrap=\"nowrap\" align=\"left\">{model}</td>\n"
        ));
        for cell in ["4.1B", "69.0", score, "66.9", "50.8", "51.2"] {
            rows.push_str(&format!("            <td align=\"center\">{cell}</td>\n"));
        }
        rows.push_str("        </tr>\n");
    }
    let md = format!(
        "# 性能评估\n\n<table>\n    <thead>\n        <tr>\n            <th>model</th><th>Size</th><th>Opencompass</th><th>OCRBench</th><th>MathVista</th><th>MMMU</th><th>MMVet</th>\n        </tr>\n    </thead>\n    <tbody>\n{rows}    </tbody>\n</table>\n"
    );
    let passages = splitter(120, 0).split_markdown(&md);
    let holder = passages
        .iter()
        .find(|p| p.text.contains(">894<"))
        .expect("a passage holds 894");
    assert!(!holder.text.contains("MiniCPM-V 4.0"), "{holder:#?}");
    assert_eq!(holder.table_spanned.as_deref(), Some("MiniCPM-V 4.0"));
    let indexed = holder.indexed_text();
    assert!(indexed.contains("OCRBench"), "{indexed}");
    assert!(indexed.contains("MiniCPM-V 4.0\n"), "{indexed}");
    // A row of one cell (a group title spanning the table) labels nothing.
    let titled = "<table>\n<tr><th>a</th><th>b</th></tr>\n<tr><td colspan=\"2\">Open-Source</td></tr>\n<tr><td>x</td><td>1</td></tr>\n</table>\n";
    for p in splitter(30, 0).split_markdown(titled) {
        assert_ne!(p.table_spanned.as_deref(), Some("Open-Source"), "{p:#?}");
    }
}

#[test]
fn a_multi_row_html_header_names_each_column_from_every_row() {
    // MiniCPM-o 2.6's speech table: a task, a metric and a dataset per column.
    let md = "<div align=\"center\">\n\n**Speech understanding**\n\n<div align=\"center\">\n<table>\n    <thead>\n        <tr>\n            <th align=\"left\">Task</th>\n            <td>Size</td>\n            <th colspan=\"2\">ASR (zh)</th>\n            <th>AST</th>\n        </tr>\n        <tr>\n            <th align=\"left\">Metric</th>\n            <td></td>\n            <th colspan=\"2\">CER↓</th>\n            <th>BLEU↑</th>\n        </tr>\n        <tr>\n            <th align=\"left\">Dataset</th>\n            <td></td>\n            <th>AISHELL-1</th>\n            <th>Fleurs zh</th>\n            <th>CoVoST</th>\n        </tr>\n    </thead>\n    <tbody>\n        <tr>\n            <td>Qwen2-Audio-7B</td>\n            <td>8B</td>\n            <td>-</td>\n            <td>7.5</td>\n            <td>45.2</td>\n        </tr>\n        <tr>\n            <td>MiniCPM-o 2.6</td>\n            <td>8B</td>\n            <td>1.6</td>\n            <td>4.4</td>\n            <td>48.2</td>\n        </tr>\n    </tbody>\n</table>\n</div>\n";
    let passages = splitter(100, 0).split_markdown(md);
    let holder = passages
        .iter()
        .find(|p| p.text.contains(">1.6<"))
        .expect("a passage holds 1.6");
    assert_eq!(
        holder.table_header.as_deref(),
        Some(
            "| Task Metric Dataset | Size | ASR (zh) CER↓ AISHELL-1 | ASR (zh) CER↓ Fleurs zh | AST BLEU↑ CoVoST |"
        ),
        "{holder:#?}"
    );
    // The caption is found above the `<div>` lines that wrap the table.
    assert_eq!(holder.caption.as_deref(), Some("**Speech understanding**"));
    // A header row spanning two rows down names its column once.
    let spanned = "<table><thead>\n<tr><th rowspan=\"2\">Model</th><th colspan=\"2\">Speed</th></tr>\n<tr><th>BF16</th><th>Int4</th></tr>\n</thead>\n<tr><td>7B</td><td>30</td><td>50</td></tr>\n</table>\n";
    let p = &splitter(20, 0).split_markdown(spanned);
    let body = p.iter().find(|p| p.text.contains(">50<")).expect("50");
    assert_eq!(
        body.table_header.as_deref(),
        Some("| Model | Speed BF16 | Speed Int4 |"),
        "{p:#?}"
    );
}

#[test]
fn a_passage_inside_a_code_block_carries_the_paragraph_before_it() {
    // OpenCompass's README: the flag is in the code, the words a user asks with are in the
    // sentence above it, and the block is a passage of its own.
    let md = "# 评测\n\n- ### 推理后端\n\n  如果您想使用除 HuggingFace 之外的推理后端来进行加速评估，比如 LMDeploy 或 vLLM，可以通过以下命令进行。以下是使用 LMDeploy 的示例：\n\n  ```bash\n  opencompass --models hf_internlm2_5_1_8b_chat --datasets demo_gsm8k_chat_gen -a lmdeploy\n  ```\n\n## 其他\n\n后文。\n";
    let passages = splitter(110, 0).split_markdown(md);
    let code = passages
        .iter()
        .find(|p| p.text.contains("-a lmdeploy"))
        .expect("the command");
    assert!(code.text.starts_with("```bash"), "{passages:#?}");
    let caption = code.caption.as_deref().unwrap_or_default();
    assert!(
        caption.starts_with("如果您想使用除 HuggingFace"),
        "{code:#?}"
    );
    assert!(
        code.indexed_text().contains("LMDeploy"),
        "{}",
        code.indexed_text()
    );
    // A passage further into a block continues one that holds its fence: no caption.
    // (An introduction of 55 characters: with the fence it is over a passage of 60.)
    let intro = format!("{}：", "说明".repeat(27));
    let long = format!(
        "{intro}\n\n```bash\n{}```\n",
        (0..20)
            .map(|i| format!("echo line-{i}\n"))
            .collect::<String>()
    );
    let parts = splitter(60, 0).split_markdown(&long);
    assert!(parts.len() >= 3, "{parts:#?}");
    let opening = parts
        .iter()
        .find(|p| p.text.starts_with("```bash"))
        .expect("fence");
    assert_eq!(
        opening.caption.as_deref(),
        Some(intro.as_str()),
        "{parts:#?}"
    );
    assert!(
        parts
            .iter()
            .any(|p| p.text.starts_with("echo") && p.caption.is_none())
    );
    // Text after the block is outside it: no caption.
    let after = passages
        .iter()
        .find(|p| p.text.contains("后文"))
        .expect("after");
    assert_eq!(after.caption, None, "{after:#?}");
}

#[test]
fn a_passage_inside_a_text_table_of_a_code_block_carries_its_column_names() {
    // OpenCompass's quick start prints its results as a text table in a code block: a
    // passage cut below the rule of dashes has lost which model each column is.
    let rows = (0..6)
        .map(|i| format!("demo_task{i}  1d7fe4     accuracy  gen       {i}6.25      3{i}.81\n"))
        .collect::<String>();
    let md = format!(
        "# 快速上手\n\n评估完成后，评估结果表格将打印如下：\n\n```text\n\
         dataset     version    metric    mode      qwen2-1.5b-instruct-hf    internlm2-chat-1.8b-hf\n\
         ----------  ---------  --------  ------  ------------------------  ------------------------\n\
         {rows}```\n\n后文。\n"
    );
    let passages = splitter(120, 0).split_markdown(&md);
    let below = passages
        .iter()
        .filter(|p| p.text.contains("demo_task") && !p.text.contains("dataset"))
        .collect::<Vec<_>>();
    assert!(!below.is_empty(), "{passages:#?}");
    for p in below {
        assert_eq!(
            p.table_header.as_deref(),
            Some("dataset version metric mode qwen2-1.5b-instruct-hf internlm2-chat-1.8b-hf"),
            "{p:#?}"
        );
        assert_eq!(
            p.caption.as_deref(),
            Some("评估完成后，评估结果表格将打印如下："),
            "{p:#?}"
        );
        assert!(p.indexed_text().contains("qwen2-1.5b-instruct-hf"));
    }
    // Lines of code that are no table (one run of dashes, `--- a/file`) carry nothing.
    let code = format!(
        "# 补丁\n\n说明：\n\n```diff\n--- a/run.py\n+++ b/run.py\n{}```\n",
        (0..12)
            .map(|i| format!("+line {i} of the patch\n"))
            .collect::<String>()
    );
    let parts = splitter(60, 0).split_markdown(&code);
    assert!(parts.len() >= 2, "{parts:#?}");
    assert!(parts.iter().all(|p| p.table_header.is_none()), "{parts:#?}");
    // Text after the block is outside the table.
    let after = passages
        .iter()
        .find(|p| p.text.contains("后文"))
        .expect("after");
    assert_eq!(after.table_header, None);
}
