//! Fact-level verification of an answer against the passages it cites, and detection of an
//! answer that echoes the prompt's instructions. Pure functions: no model, no I/O.
//!
//! An invented answer in a large in-domain knowledge base reuses the question's and the
//! passages' words, so word overlap cannot catch it; what it gets wrong are its key facts.
//! [`check_answer`] extracts them — numbers with units (6GB, 13 GB, 6.7G, 128 token/s, 72G显存),
//! bare numbers of two digits or more, versions (v1.2.3, 4.49.0), command-line flags and
//! `key=value` settings (`--world_size 2`, `lora_alpha=32`), model names and other ASCII
//! identifiers (ChatGLM-6B, Qwen2.5-1.5B, INT4, `vicuna`), and Chinese numerals before a unit
//! or a measure word (六 GB, 两张) — and checks that each is stated by a passage or by the
//! question. Comparison ignores spacing, case and full width; G, GB and GiB are one unit, as
//! are 张, 块, 台, 卡 and GPUs; 亿, 万, K, M, B and T scale a count (62 亿 is 6.2B).
//!
//! A number from a neighbouring table row (the FP16 figure when the question asks about INT4)
//! is stated by the passage, so presence alone passes it. When a number appears in the
//! passages only inside markdown table rows and the question names what tells the rows apart
//! (INT4, a bit width, a model size), the number must sit in a row holding it, and under a
//! heading naming the question's model when the passage heads its tables by model. A row
//! whose first cell names another model than the question's is not its row, and a column
//! the question names (Q4_K, batch=16, a header's own Chinese words) must hold the number.
//! A line or row (an HTML row with the cells spanning it) that names a model size or a bit
//! width, and not the question's, is about something else: its figures do not answer it.
//!
//! What it cannot tell: a column the question describes in other words, a number the
//! answer derives (14082MiB as 13.75GB is unsupported), and a fact true of the passage but
//! not of the question's subject when nothing ASCII or numeric in the question says so.

use zhiku_text::markdown::{code_block_of, ditto_labels, is_table_delimiter, row_cells};
use zhiku_text::terms::SETTING_WORDS;

mod table_cell;
pub use table_cell::{TableCellReading, read_from_table};

/// What kind of key fact a span of the answer is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FactKind {
    /// A number with a unit or measure word: 6GB, 128 token/s, 两张.
    Quantity,
    /// A number without a unit, of two digits or more or with a decimal point: 2048, 0.1.
    Number,
    /// A version: v0.7.0, 4.49.0.
    Version,
    /// A command-line flag or a `snake_case` setting, with its value when it has one.
    Flag,
    /// An ASCII name holding letters and digits: ChatGLM-6B, INT4, A100.
    ModelName,
    /// Another ASCII identifier: `vicuna`, dataset_info.json, LoRA.
    Identifier,
}

impl FactKind {
    /// A quantity, a number or a version: what a figure of an answer is.
    pub fn is_figure(self) -> bool {
        matches!(self, Self::Quantity | Self::Number | Self::Version)
    }
}

/// A key fact of an answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Fact {
    /// The span as the answer writes it.
    pub text: String,
    pub kind: FactKind,
    key: Key,
}

/// A key fact that no passage nor the question states, and why.
#[derive(Debug, Clone, PartialEq)]
pub struct UnsupportedFact {
    pub fact: Fact,
    pub reason: String,
    pub why: Unsupported,
}

/// Why a key fact is unsupported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unsupported {
    /// No passage (nor the question) states it: invented, or misread.
    NotStated,
    /// Only table rows that the question's qualifiers do not pick, or lines about another
    /// model size or bit width than the question's, state it: the right table, the wrong
    /// row; the right sentence, another model's.
    OtherRow,
    /// Only passages of documents that name the question's subject less well than the best
    /// one state it: another model's figure.
    OtherDocument,
    /// Stated, but not the kind of quantity the question asks for: a parameter count or a
    /// number of GPUs for a question about memory.
    OtherKind,
}

impl Unsupported {
    /// The fact is in the passages, only in the wrong place: a reading the passages narrowed
    /// to the question's rows and documents ([`focus_passages`]) may get right.
    pub fn is_misplaced(self) -> bool {
        matches!(self, Self::OtherRow | Self::OtherDocument)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Every key fact is stated by a passage or the question (or the answer has none).
    Supported,
    /// At least one key fact is stated by neither.
    UnsupportedKeyFact,
}

/// What [`check_answer`] found.
#[derive(Debug, Clone, PartialEq)]
pub struct FactCheck {
    pub facts: Vec<Fact>,
    pub unsupported: Vec<UnsupportedFact>,
    pub verdict: Verdict,
    /// Key facts of the question that no passage states (RTX 4090, 3-bit): a near-miss
    /// question whose answer the passages cannot hold. An answer may repeat them and still be
    /// [`Verdict::Supported`]; whether to refuse is the caller's call.
    pub question_unstated: Vec<Fact>,
}

/// Checks every key fact of `answer` against `passages` and `question`.
pub fn check_answer(answer: &str, passages: &[&str], question: &str) -> FactCheck {
    check_answer_on_subject(answer, passages, &[], question)
}

/// As [`check_answer`], where `off_subject[i]` marks passage `i` as cut from a document that
/// does not name what the question asks about as well as the best of them does (its anchors:
/// `crate::grounding::anchors`). A figure of the answer (a quantity, a number or a version)
/// that only such passages state is unsupported: the right kind of fact from another
/// model's document is how a near-miss question gets a confident answer. Names and other
/// identifiers are not held to it (an answer may name a tool that another document
/// describes).
pub fn check_answer_on_subject(
    answer: &str,
    passages: &[&str],
    off_subject: &[bool],
    question: &str,
) -> FactCheck {
    let facts = extract_facts(answer);
    let derived = derived_values(answer);
    let asked = Asked::of(question);
    let mut sources: Vec<Source> = passages.iter().map(|p| Source::new(p)).collect();
    // Stated by the passages alone (the question index past their end).
    let question_unstated: Vec<Fact> = extract_facts(question)
        .into_iter()
        .filter(|f| {
            unsupported_reason(f, &sources, sources.len(), &Asked::default(), &[]).is_some()
        })
        .collect();
    sources.push(Source::new(question));
    let question_index = sources.len() - 1;
    let mut unsupported = Vec::new();
    for fact in &facts {
        if let Key::Quantity { value, .. } = fact.key
            && derived.iter().any(|&d| same_value(d, value))
        {
            // The result of the answer's own arithmetic on stated figures (13GB + 5.2GB =
            // 18.2GB): its operands are facts checked in turn.
            continue;
        }
        let reason =
            unsupported_reason(fact, &sources, question_index, &asked, &[]).or_else(|| {
                (fact.kind.is_figure() && off_subject.iter().any(|&o| o))
                    .then(|| {
                        unsupported_reason(fact, &sources, question_index, &asked, off_subject)
                    })
                    .flatten()
                    .map(|_| {
                        (
                            Unsupported::OtherDocument,
                            format!(
                                "{} is stated only by passages of documents that do not name \
                                 what the question asks about",
                                fact.text
                            ),
                        )
                    })
            });
        if let Some((why, reason)) = reason {
            unsupported.push(UnsupportedFact {
                fact: fact.clone(),
                reason,
                why,
            });
        }
    }
    if unsupported.is_empty()
        && let Some((fact, kind)) = not_the_quantity_asked(&facts, &asked)
    {
        unsupported.push(UnsupportedFact {
            reason: format!(
                "the question asks {}, and {} is not {}",
                kind.question(),
                fact.text,
                kind.noun()
            ),
            fact: fact.clone(),
            why: Unsupported::OtherKind,
        });
    }
    let verdict = if unsupported.is_empty() {
        Verdict::Supported
    } else {
        Verdict::UnsupportedKeyFact
    };
    FactCheck {
        facts,
        unsupported,
        verdict,
        question_unstated,
    }
}

/// The kinds of quantity a question may ask for by its words alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AskedQuantity {
    /// 显存, 内存 with 多少, 多大, 几, 占多.
    Memory,
    /// 多长时间, 多久, 耗时, 用时, 时长.
    Duration,
}

impl AskedQuantity {
    fn of(asked: &Asked) -> Option<Self> {
        let has = |words: &[&str]| words.iter().any(|w| asked.text.contains(w));
        if has(&["显存", "内存"]) && has(&["多少", "多大", "几", "占多"]) {
            Some(Self::Memory)
        } else if has(&["多长时间", "多久", "多少时间", "耗时", "用时", "时长"]) {
            Some(Self::Duration)
        } else {
            None
        }
    }

    fn question(self) -> &'static str {
        match self {
            Self::Memory => "how much memory",
            Self::Duration => "how long",
        }
    }

    fn noun(self) -> &'static str {
        match self {
            Self::Memory => "an amount of memory",
            Self::Duration => "a duration",
        }
    }

    fn is(self, unit: Unit) -> bool {
        match self {
            Self::Memory => matches!(
                unit,
                Unit::Gigabytes | Unit::Megabytes | Unit::Terabytes | Unit::Kilobytes
            ),
            Self::Duration => matches!(unit, Unit::Seconds | Unit::Milliseconds),
        }
    }
}

/// For a question that asks how much memory (显存, 内存) or how long (多长时间, 多久), the
/// answer's first key fact, with the kind asked, when none of its figures is a quantity of
/// that kind or a bare number: a model size (30B), a number of cards, a speed (10FPS, also
/// when read as a name), or for memory only GPUs named (4个 A100-SXM4-80G GPUs). Such an answer states something the
/// passages hold and answers another question (the near miss whose table has no memory
/// column). None otherwise, and for an answer without key facts.
fn not_the_quantity_asked<'a>(
    facts: &'a [Fact],
    asked: &Asked,
) -> Option<(&'a Fact, AskedQuantity)> {
    let kind = AskedQuantity::of(asked)?;
    let answers_it = facts
        .iter()
        .any(|f| matches!(f.key, Key::Quantity { unit, bare, .. } if bare || kind.is(unit)));
    if answers_it {
        return None;
    }
    // Without figures, only an answer naming GPUs gives hardware for an amount; a name
    // alone ("可以参考 ChatGLM3 的做法") is left to the other checks.
    // A number with a unit of its own (10FPS, read as a name) is a figure too.
    let figures = facts.iter().any(|f| {
        f.kind.is_figure()
            || matches!(&f.key, Key::Literal(n) if n.starts_with(|c: char| c.is_ascii_digit()))
    });
    let gpus = kind == AskedQuantity::Memory && facts.iter().any(|f| !gpus_in(&f.text).is_empty());
    if !figures && !gpus {
        return None;
    }
    facts.first().map(|f| (f, kind))
}

/// A flag or setting as the answer or passage writes it (`text`): its name canonical, its
/// value in lower case.
fn setting_fact(text: String, name: &str, value: Option<&str>) -> Fact {
    Fact {
        text,
        kind: FactKind::Flag,
        key: Key::Setting {
            name: canonical_name(name),
            value: value.map(str::to_ascii_lowercase),
        },
    }
}

/// What `question` names that may tell table rows apart (see [`Qualifier`]).
fn qualifiers_of(question: &str) -> Vec<Qualifier> {
    extract_facts(question)
        .into_iter()
        .filter_map(|f| match (f.kind, f.key) {
            (FactKind::ModelName | FactKind::Identifier, Key::Literal(name)) => {
                Some(Qualifier::Name(name))
            }
            (FactKind::Quantity | FactKind::Number, Key::Quantity { value, .. }) => {
                Some(Qualifier::Value(value))
            }
            _ => None,
        })
        .collect()
}

/// What a question asks about, as verification holds a figure's row or line to it.
#[derive(Debug, Default)]
struct Asked {
    /// Names and values that may tell table rows apart.
    qualifiers: Vec<Qualifier>,
    /// Model sizes in parameters (7B, 70亿: 7e9), alone or in a model's name.
    sizes: Vec<f64>,
    /// Bit widths (4-bit, INT4, 8bits, FP16).
    bits: Vec<f64>,
    /// Model names with a size (yi-9b-200k, internlm2.5-20b-chat), canonical.
    models: Vec<String>,
    /// `name=value` settings (batch=16), which may head table columns.
    settings: Vec<(String, String)>,
    /// GPU models (h100, 4090).
    gpus: Vec<String>,
    /// Fine-tuning methods (LoRA, Q-LoRA, P-Tuning, full-parameter, freeze).
    methods: Vec<TuningMethod>,
    /// The question's text, lower case, full width folded, `_` as `-`.
    text: String,
}

impl Asked {
    /// Whether the question names the setting `name` (canonical, as `text` is: lower case,
    /// `_` as `-`).
    fn names_setting(&self, name: &str) -> bool {
        if name.is_empty() {
            return false;
        }
        contains_word(&self.text, name)
            || SETTING_WORDS.iter().any(|(word, names)| {
                self.text.contains(word)
                    && names.iter().any(|n| {
                        name == *n || name.strip_suffix(n).is_some_and(|head| head.ends_with('-'))
                    })
            })
    }

    fn of(question: &str) -> Self {
        let source = Source::new(question);
        let keys: Vec<&Key> = source.facts.iter().flatten().collect();
        let mut models: Vec<String> = Vec::new();
        for key in &keys {
            if let Key::Literal(name) = key
                && is_sized_model(name)
                && !models.contains(name)
            {
                models.push(name.clone());
            }
        }
        let text = source.lines.join("\n");
        Self {
            qualifiers: qualifiers_of(question),
            sizes: sizes_in(&keys),
            bits: bits_in(&keys),
            models,
            settings: settings_in(&text),
            gpus: gpus_in(&text),
            methods: tuning_methods_in(&text),
            text,
        }
    }

    /// Why line `k` of `source` is about another subject than the question, or `None`: it
    /// names a model size (a bit width, a GPU, a setting's value) and none of the
    /// question's, where the question names one. A size, bit width or GPU the line does not
    /// name, the line leading into its table or code block may (在 H200 上测试：). A line
    /// that names none says nothing against it.
    fn contradicted_by(&self, source: &Source, k: usize) -> Option<String> {
        // An HTML table row spans lines: its cells, and those spanning it, are one line's.
        let keys_of = |k: usize| -> Vec<&Key> {
            match source.html_row_facts.get(k).and_then(Option::as_ref) {
                Some(row) => row.iter().collect(),
                None => source.facts[k].iter().collect(),
            }
        };
        let keys = keys_of(k);
        let lead = source.lead_in[k];
        let lead_keys = lead.map(keys_of).unwrap_or_default();
        // A model's name rounds its size: ChatGLM-6B has 62 亿 (6.2B) parameters.
        let near = |a: f64, b: f64| (a - b).abs() <= 0.05 * a.abs().max(b.abs());
        // A size under a column of the model's language model (LLM Size, 基座模型) is that
        // part's: CogVLM2-LLaMA3-Chinese is a 19B model on an 8B LLM.
        let sizes = match sizes_outside_component_columns(source, k) {
            Some(own) => own,
            None => own_or_lead(sizes_in(&keys), || sizes_in(&lead_keys)),
        };
        if disjoint(&self.sizes, &sizes, |a, l| near(*a, *l)) {
            return Some(format!(
                "a line about a {} model, not a {} one",
                size_text(sizes[0]),
                size_text(self.sizes[0])
            ));
        }
        // A row continuing the one above (`-`, an empty first cell) is that row's label's:
        // its bit width (tigerbot-70b-chat-4bit) counts as the row's own.
        let label_keys: Vec<Key> = match source.table_of[k] {
            Some(_) => scan(zhiku_text::markdown::first_cell(&source.lines[k]), true)
                .into_iter()
                .map(|s| s.fact.key)
                .collect(),
            None => Vec::new(),
        };
        let row_keys: Vec<&Key> = keys.iter().copied().chain(&label_keys).collect();
        let bits = own_or_lead(bits_in(&row_keys), || bits_in(&lead_keys));
        if disjoint(&self.bits, &bits, |a, l| same_value(*a, *l)) {
            return Some(format!(
                "a line about {}-bit, not {}-bit",
                bits[0], self.bits[0]
            ));
        }
        let gpus = line_or_lead(source, k, gpus_in);
        if disjoint(&self.gpus, &gpus, PartialEq::eq) {
            return Some(format!(
                "a line about {}, not {}",
                gpus[0].to_uppercase(),
                self.gpus[0].to_uppercase()
            ));
        }
        // Memory and speed are given per fine-tuning method, a line or a row each
        // (`+ SFT 全量微调: … 48346MiB` / `+ LORA 微调: … 14082MiB`).
        let methods = line_or_lead(source, k, tuning_methods_in);
        if disjoint(&self.methods, &methods, PartialEq::eq) {
            return Some(format!(
                "a line about {}, not {}",
                methods[0].name(),
                self.methods[0].name()
            ));
        }
        // A setting the question gives with another value on the line (`- batch=1: 7 GB`, a
        // table cell written out under its column's name).
        let line_settings = settings_in(&source.lines[k]);
        for (name, wanted) in &self.settings {
            let values: Vec<&String> = line_settings
                .iter()
                .filter(|(n, _)| n == name)
                .map(|(_, v)| v)
                .collect();
            if !values.is_empty() && !values.contains(&wanted) {
                return Some(format!(
                    "a line about {name}={}, not {name}={wanted}",
                    values[0]
                ));
            }
        }
        None
    }
}

/// The model sizes of markdown table row `k` outside the columns that describe a part of
/// the model (a header naming its LLM, language model, base or backbone: `LLM Size`,
/// `基座模型`), when its table has such a column; `None` otherwise.
fn sizes_outside_component_columns(source: &Source, k: usize) -> Option<Vec<f64>> {
    const PARTS: &[&str] = &["llm", "语言模型", "基座", "backbone", "base model"];
    let first = source.table_of.get(k).copied().flatten()?;
    if first == k || !source.is_table_head(first) || source.is_table_head(k) {
        return None;
    }
    let header = row_cells(&source.lines[first]);
    let part_column = |i: usize| {
        i > 0
            && header
                .get(i)
                .is_some_and(|h| PARTS.iter().any(|p| h.to_lowercase().contains(p)))
    };
    if !(0..header.len()).any(part_column) {
        return None;
    }
    let row = row_cells(&source.lines[k]);
    let keys: Vec<Key> = row
        .iter()
        .enumerate()
        .filter(|&(i, _)| !part_column(i))
        .flat_map(|(_, cell)| scan(cell, true).into_iter().map(|s| s.fact.key))
        .collect();
    Some(sizes_in(&keys.iter().collect::<Vec<_>>()))
}

/// The model sizes among `keys`: counts of 100M to 1T written with a unit (7B, 1.8B, 70亿).
fn sizes_in(keys: &[&Key]) -> Vec<f64> {
    let mut sizes: Vec<f64> = Vec::new();
    for key in keys {
        if let Key::Quantity {
            value,
            unit: Unit::Count,
            bare: false,
        } = key
            && (1e8..1e12).contains(value)
            && !sizes.iter().any(|s| same_value(*s, *value))
        {
            sizes.push(*value);
        }
    }
    sizes
}

/// The bit widths among `keys`: 4-bit, 8bits, and the parts of names INT4, FP16, BF16, NF4,
/// 4bit (tigerbot-70b-chat-4bit).
fn bits_in(keys: &[&Key]) -> Vec<f64> {
    let mut bits: Vec<f64> = Vec::new();
    let mut add = |b: f64| {
        if !bits.iter().any(|x| same_value(*x, b)) {
            bits.push(b);
        }
    };
    for key in keys {
        match key {
            Key::Quantity {
                value,
                unit: Unit::Bits,
                ..
            } => add(*value),
            Key::Literal(name) => {
                for part in name.split('-') {
                    let digits = ["int", "fp", "bf", "nf"]
                        .iter()
                        .find_map(|p| part.strip_prefix(p))
                        .or_else(|| part.strip_suffix("bits"))
                        .or_else(|| part.strip_suffix("bit"));
                    if let Some(d) = digits
                        && !d.is_empty()
                        && d.chars().all(|ch| ch.is_ascii_digit())
                        && let Ok(b) = d.parse::<f64>()
                    {
                        add(b);
                    }
                }
            }
            _ => {}
        }
    }
    bits
}

/// 7e9 as 7B, 1.5e9 as 1.5B.
fn size_text(size: f64) -> String {
    format!("{}B", size / 1e9)
}

/// A model's name with its size as one of its parts: yi-9b-200k, xverse-13b (not 7b alone).
fn is_sized_model(name: &str) -> bool {
    let parts: Vec<&str> = name.split('-').filter(|p| !p.is_empty()).collect();
    parts.len() > 1
        && parts.iter().any(|p| {
            p.strip_suffix(['b', 'm']).is_some_and(|n| {
                !n.is_empty()
                    && n.chars().all(|ch| ch.is_ascii_digit() || ch == '.')
                    && n.chars().next().is_some_and(|ch| ch.is_ascii_digit())
            })
        })
}

/// Whether the row's model `row` is the question's `asked`: the same name, a variant of it
/// (asked xverse-13b, row xverse-13b-base), or the question's with words only after it
/// (asked yi-34b-chat, row yi-34b); not a name the question extends with a figure
/// (asked yi-9b-200k, row yi-9b).
fn same_model(asked: &str, row: &str) -> bool {
    fn extends<'a>(long: &'a str, short: &str) -> Option<&'a str> {
        long.strip_prefix(short)?.strip_prefix('-')
    }
    row == asked
        || extends(row, asked).is_some()
        || extends(asked, row).is_some_and(|rest| {
            rest.split('-')
                .all(|p| p.chars().all(|ch| ch.is_ascii_alphabetic()))
        })
}

/// The `name=value` settings of `text` with a numeric value (batch=16), names canonical.
fn settings_in(text: &str) -> Vec<(String, String)> {
    let c: Vec<char> = text.chars().collect();
    let mut out = Vec::new();
    for (i, &ch) in c.iter().enumerate() {
        if ch != '=' {
            continue;
        }
        let mut a = i;
        while a > 0 && c[a - 1] == ' ' {
            a -= 1;
        }
        let name_end = a;
        while a > 0 && (c[a - 1].is_ascii_alphanumeric() || matches!(c[a - 1], '_' | '-')) {
            a -= 1;
        }
        let mut b = i + 1;
        while b < c.len() && c[b] == ' ' {
            b += 1;
        }
        let value_start = b;
        while b < c.len() && c[b].is_ascii_digit() {
            b += 1;
        }
        let name: String = c[a..name_end].iter().collect();
        if name
            .chars()
            .next()
            .is_some_and(|ch| ch.is_ascii_alphabetic())
            && b > value_start
        {
            out.push((
                canonical_name(&name),
                c[value_start..b].iter().collect::<String>(),
            ));
        }
    }
    out
}

/// The passages narrowed to what `question` names, for a second reading after an answer
/// whose figure sat in another table row or another model's document
/// ([`Unsupported::is_misplaced`]): a passage marked in `off_subject` is dropped (`None`),
/// and from each markdown table of the others, the body rows that the question's qualifiers
/// do not pick (as verification judges rows). A table that lost rows is written out cell by
/// cell, one `- column: value` line each under its row's first cell: a small model reads the
/// value from its column's name instead of counting pipes, and verification then checks a
/// figure against its own cell (a table without the question's row keeps only its header).
/// A passage with nothing to drop comes back unchanged.
pub fn focus_passages(
    passages: &[&str],
    off_subject: &[bool],
    question: &str,
) -> Vec<Option<String>> {
    let asked = Asked::of(question);
    passages
        .iter()
        .enumerate()
        .map(|(i, text)| {
            if off_subject.get(i).copied().unwrap_or(false) {
                return None;
            }
            let source = Source::new(text);
            let raw: Vec<&str> = text.split('\n').collect();
            if raw.len() != source.lines.len() {
                // Decoding changed the line count (an escaped line break): rows cannot be
                // told apart safely, so the passage stays whole.
                return Some((*text).to_owned());
            }
            let mut out: Vec<String> = Vec::new();
            let mut k = 0;
            while k < raw.len() {
                let Some(first) = source.table_of[k] else {
                    out.push(raw[k].to_owned());
                    k += 1;
                    continue;
                };
                let end = (first..raw.len())
                    .take_while(|&l| source.table_of[l] == Some(first))
                    .last()
                    .map_or(first + 1, |l| l + 1);
                let body = source.table_body(first);
                let kept: Vec<usize> = body
                    .iter()
                    .copied()
                    .filter(|&r| wrong_row(&source, r, first, &asked).is_none())
                    .collect();
                let header = row_cells(raw[first]);
                if kept.len() == body.len() || !source.is_table_head(first) || body.contains(&first)
                {
                    out.extend(raw[first..end].iter().map(|l| (*l).to_owned()));
                } else if kept.is_empty() {
                    out.extend(
                        (first..end)
                            .filter(|&l| source.is_table_head(l))
                            .map(|l| raw[l].to_owned()),
                    );
                } else {
                    for r in kept {
                        out.extend(row_by_cells(&header, &row_cells(raw[r])));
                    }
                }
                k = end;
            }
            Some(out.join("\n"))
        })
        .collect()
}

/// A table row as lines: its first cell under its column's name, then `- column: value` for
/// each other cell that holds something.
fn row_by_cells(header: &[String], cells: &[String]) -> Vec<String> {
    let name = |i: usize| header.get(i).map_or("", String::as_str);
    let mut lines = Vec::new();
    for (i, cell) in cells.iter().enumerate() {
        if cell.is_empty() {
            continue;
        }
        match (i, name(i)) {
            (0, "") => lines.push(format!("{cell}:")),
            (0, column) => lines.push(format!("{column}: {cell}")),
            (_, "") => lines.push(format!("- {cell}")),
            (_, column) => lines.push(format!("- {column}: {cell}")),
        }
    }
    lines
}

/// [`check_answer_on_subject`] for a second reading of passages narrowed by [`focus_passages`], held to
/// a stricter reading of units: a quantity of the answer must be written with its unit in a
/// passage, or sit alone in a cell written out as `- column: value` whose column names the
/// unit. A bare number that shares a prose line with a unit (`8192的显存占用（GB）`) does not
/// state that many gigabytes: the second reading is the model's second try, and its
/// figure must be read, not assembled.
pub fn check_second_reading(
    answer: &str,
    focused: &[&str],
    off_subject: &[bool],
    question: &str,
) -> FactCheck {
    let mut check = check_answer_on_subject(answer, focused, off_subject, question);
    let sources: Vec<Source> = focused.iter().map(|p| Source::new(p)).collect();
    let question_source = Source::new(question);
    for fact in &check.facts {
        let Key::Quantity {
            value,
            unit,
            bare: false,
        } = fact.key
        else {
            continue;
        };
        let with_unit = |source: &Source, k: usize| {
            source.facts[k].iter().any(|f| {
                matches!(f, Key::Quantity { value: v, unit: u, bare: false }
                    if *u == unit && same_value(*v, value))
            })
        };
        let in_its_cell = |source: &Source, k: usize| {
            let line = &source.lines[k];
            line.strip_prefix("- ")
                .and_then(|cell| cell.split_once(": "))
                .is_some_and(|(column, _)| unit_spelled_in(column, unit))
                && source.facts[k]
                    .iter()
                    .any(|f| matches!(f, Key::Quantity { value: v, .. } if same_value(*v, value)))
        };
        let stated = sources
            .iter()
            .chain(std::iter::once(&question_source))
            .any(|s| (0..s.lines.len()).any(|k| with_unit(s, k) || in_its_cell(s, k)));
        if !stated && !check.unsupported.iter().any(|u| u.fact == *fact) {
            check.unsupported.push(UnsupportedFact {
                fact: fact.clone(),
                reason: format!(
                    "no passage writes {} with its unit (a bare number beside a unit is not read \
                     as one on a second reading)",
                    fact.text
                ),
                why: Unsupported::NotStated,
            });
        }
    }
    if !check.unsupported.is_empty() {
        check.verdict = Verdict::UnsupportedKeyFact;
    }
    check
}

/// `answer` with each of its quantities that `check` found unsupported for want of a stated
/// unit written as its bare number: "112.9 ms/tok" becomes "112.9" when no passage writes the
/// unit (a table captioned as token speed, its cells bare). The model read the figure and
/// added a unit of its own; the caller verifies the result again, so a number that no
/// passage states (or only another row's) is withdrawn as before. Only numbers that are key
/// facts on their own (two digits or more, or a decimal) qualify: a bare "4" would be
/// checked against nothing. Nor when the question names a key fact that no passage states
/// (`check.question_unstated`, RTX 4090 where the table is of an A100): such a near miss
/// asks what the passages lack, and its figure's invented unit is one more sign of it.
/// `None` when nothing qualifies.
pub fn without_unstated_units(answer: &str, check: &FactCheck) -> Option<String> {
    if !check.question_unstated.is_empty() {
        return None;
    }
    let mut repaired = answer.to_owned();
    let mut changed = false;
    for u in &check.unsupported {
        let Key::Quantity { bare: false, .. } = u.fact.key else {
            continue;
        };
        if u.why != Unsupported::NotStated {
            continue;
        }
        let number: String = u
            .fact
            .text
            .chars()
            .take_while(|c| c.is_ascii_digit() || *c == '.')
            .collect();
        let number = number.trim_end_matches('.');
        let stands_alone = extract_facts(number)
            .iter()
            .any(|f| f.kind == FactKind::Number && f.text == number);
        if !stands_alone || !repaired.contains(u.fact.text.as_str()) {
            continue;
        }
        repaired = repaired.replacen(u.fact.text.as_str(), number, 1);
        changed = true;
    }
    changed.then_some(repaired)
}

/// Whether `text` states `quantity`, a number with its unit and nothing else (`25min`,
/// `0.26h`, `14 GB`), in any spelling of the unit that verification reads as the same
/// (`25分钟`, `15.6 分钟`, `14GB`). False when `quantity` is not one such figure.
pub fn states_quantity(text: &str, quantity: &str) -> bool {
    let wanted = scan(&fold_width(&quantity.to_lowercase()), true);
    let [
        Spanned {
            fact:
                Fact {
                    key:
                        Key::Quantity {
                            value,
                            unit,
                            bare: false,
                        },
                    ..
                },
            ..
        },
    ] = wanted.as_slice()
    else {
        return false;
    };
    scan(&fold_width(&text.to_lowercase()), true)
        .iter()
        .any(|s| matches!(s.fact.key, Key::Quantity { value: v, unit: u, bare: false } if u == *unit && same_value(v, *value)))
}

/// Whether `text` states a figure: a quantity, a number or a version.
pub fn states_a_figure(text: &str) -> bool {
    extract_facts(text).iter().any(|f| f.kind.is_figure())
}

/// The key facts of `text`, in order.
pub fn extract_facts(text: &str) -> Vec<Fact> {
    scan(&fold_width(text), false)
        .into_iter()
        .map(|s| s.fact)
        .collect()
}

/// Why an answer reproduces the prompt's instructions.
#[derive(Debug, Clone, PartialEq)]
pub struct Echo {
    /// The instruction clauses the answer holds that no passage holds.
    pub clauses: Vec<String>,
    pub reason: String,
}

/// Share of an answer that instruction clauses must make up for the answer to be an echo.
const ECHO_SHARE: f64 = 0.5;

/// Clauses shorter than this (in characters, whitespace left out) are too common to tell an
/// echo: 问题是, 已知信息.
const MIN_CLAUSE_CHARS: usize = 6;

/// Whether `answer` echoes the prompt of `template` (the prompt template, with its
/// `{context}` and `{question}` placeholders) instead of answering: it only restates the
/// question, instruction clauses make up most of it, or it reproduces an instruction clause
/// followed by the question itself, as the prompt ends. A clause that a passage also holds does not count
/// towards the share (the answer may quote the passage), but the instruction followed by the
/// user's question is an echo whatever the passages hold: no passage holds the question.
pub fn echoes_prompt(
    answer: &str,
    question: &str,
    passages: &[&str],
    template: &str,
) -> Option<Echo> {
    let answer_n = squash(answer);
    if answer_n.is_empty() {
        return None;
    }
    if restates_question(answer, question) {
        return Some(Echo {
            reason: "the answer restates the question instead of answering it".to_owned(),
            clauses: Vec::new(),
        });
    }
    if points_at_a_passage(answer) {
        return Some(Echo {
            reason: "the answer is a passage's marker or header from the prompt, not an answer"
                .to_owned(),
            clauses: Vec::new(),
        });
    }
    let passages_n: Vec<String> = passages.iter().map(|p| squash(p)).collect();
    let clauses = instruction_clauses(template);
    let mut own: Vec<String> = Vec::new();
    let mut covered = vec![false; answer_n.chars().count()];
    let answer_chars: Vec<char> = answer_n.chars().collect();
    let mut last_clause_end: Option<usize> = None;
    for clause in &clauses {
        let clause_chars: Vec<char> = clause.chars().collect();
        let Some(start) = find_chars(&answer_chars, &clause_chars) else {
            continue;
        };
        let end = start + clause_chars.len();
        last_clause_end = Some(last_clause_end.map_or(end, |e: usize| e.max(end)));
        if passages_n.iter().any(|p| p.contains(clause.as_str())) {
            continue;
        }
        for c in &mut covered[start..end] {
            *c = true;
        }
        own.push(clause.clone());
    }
    let share = covered.iter().filter(|&&c| c).count() as f64 / covered.len() as f64;
    if !own.is_empty() && share >= ECHO_SHARE {
        return Some(Echo {
            reason: format!(
                "{:.0}% of the answer is the prompt's instructions, which no passage holds",
                share * 100.0
            ),
            clauses: own,
        });
    }
    let question_n = squash(question);
    if let Some(end) = last_clause_end {
        let after: String = answer_chars[end..].iter().collect();
        if question_n.chars().count() >= 2 && after.contains(question_n.as_str()) {
            return Some(Echo {
                reason: "the answer reproduces the prompt's instructions followed by the question"
                    .to_owned(),
                clauses: if own.is_empty() {
                    clauses
                        .iter()
                        .filter(|c| answer_n.contains(c.as_str()))
                        .cloned()
                        .collect()
                } else {
                    own
                },
            });
        }
    }
    None
}

/// Whether `answer` is the prompt's passage markup instead of an answer: only passage
/// markers (`[3]`), or a passage copied from its header on (`[3] （来源：a.md；章节：…）…`).
/// A marker after the answer's own words (`6 GB [1]`) is a citation, not this.
fn points_at_a_passage(answer: &str) -> bool {
    let mut rest = answer.trim_start();
    let mut markers = 0;
    while let Some(after) = rest.strip_prefix('[') {
        let digits = after.chars().take_while(char::is_ascii_digit).count();
        match after[digits..].strip_prefix(']') {
            Some(tail) if digits > 0 => {
                markers += 1;
                rest =
                    tail.trim_start_matches(|c: char| c.is_whitespace() || c == ',' || c == '，');
            }
            _ => break,
        }
    }
    let rest = rest.trim();
    (markers > 0 && rest.is_empty()) || crate::context::header_label(rest).is_some()
}

/// The template's fixed text (placeholders left out) cut at punctuation into clauses, each
/// whitespace-free and lower case; short ones left out.
fn instruction_clauses(template: &str) -> Vec<String> {
    let mut text = template.to_owned();
    for placeholder in ["{context}", "{question}"] {
        text = text.replace(placeholder, "\n");
    }
    // What the template quotes is what the model is told to say (the refusal), not an
    // instruction to echo.
    let mut unquoted = String::with_capacity(text.len());
    let mut quoted = false;
    for ch in text.chars() {
        match ch {
            '“' | '「' if !quoted => quoted = true,
            '”' | '」' if quoted => {
                quoted = false;
                unquoted.push('\n');
            }
            _ if !quoted => unquoted.push(ch),
            _ => {}
        }
    }
    let text = unquoted;
    let mut out: Vec<String> = Vec::new();
    for piece in squash_keep_breaks(&text).split(|c: char| {
        matches!(
            c,
            '\n' | '。'
                | '，'
                | ','
                | '：'
                | ':'
                | '；'
                | ';'
                | '“'
                | '”'
                | '"'
                | '!'
                | '！'
                | '?'
                | '？'
        )
    }) {
        if piece.chars().count() >= MIN_CLAUSE_CHARS && !out.iter().any(|c| c == piece) {
            out.push(piece.to_owned());
        }
    }
    out
}

fn find_chars(haystack: &[char], needle: &[char]) -> Option<usize> {
    if needle.is_empty() || needle.len() > haystack.len() {
        return None;
    }
    (0..=haystack.len() - needle.len()).find(|&i| haystack[i..i + needle.len()] == *needle)
}

/// Full width folded, whitespace removed, lower case.
fn squash(text: &str) -> String {
    fold_width(text)
        .chars()
        .filter(|c| !c.is_whitespace())
        .flat_map(char::to_lowercase)
        .collect()
}

/// Whether `answer` only repeats `question`, whole or a piece of it, still asking ("TensorRT-LLM
/// 哪个 release？" for "用 TensorRT-LLM 部署 ChatGLM3，文档里用的是 TensorRT-LLM 哪个
/// release？"): a small model's way of not answering. Punctuation and spacing are ignored. A
/// piece of the question that does not end in a question mark may be an answer (a choice the
/// question offers: "vLLM" for "vLLM 还是 Ollama？").
fn restates_question(answer: &str, question: &str) -> bool {
    let letters =
        |t: &str| -> String { squash(t).chars().filter(|c| c.is_alphanumeric()).collect() };
    let answer = without_lead_in(answer);
    let (answer_l, question_l) = (letters(answer), letters(question));
    if answer_l.chars().count() < 2 || !question_l.contains(answer_l.as_str()) {
        return false;
    }
    answer_l == question_l || answer.trim_end().ends_with(['？', '?'])
}

/// Openings that say where an answer comes from and nothing else: the prompt's own words
/// (the article's template says 根据上述已知信息, its refusal 根据已知信息) that models
/// put before an answer, and before a restated question.
const LEAD_INS: [&str; 6] = [
    "根据上述已知信息",
    "根据已知信息",
    "根据提供的信息",
    "根据以上信息",
    "according to the known information",
    "according to the information provided",
];

/// `answer` without a [`LEAD_INS`] opening and the punctuation after it.
fn without_lead_in(answer: &str) -> &str {
    let trimmed = answer.trim_start();
    for lead_in in LEAD_INS {
        let Some(head) = trimmed.get(..lead_in.len()) else {
            continue;
        };
        if head.eq_ignore_ascii_case(lead_in) {
            return trimmed[lead_in.len()..].trim_start_matches(|c: char| {
                c.is_whitespace() || matches!(c, '，' | ',' | '：' | ':')
            });
        }
    }
    trimmed
}

/// As [`squash`], keeping line breaks (they end clauses).
fn squash_keep_breaks(text: &str) -> String {
    fold_width(text)
        .chars()
        .filter(|c| *c == '\n' || !c.is_whitespace())
        .flat_map(char::to_lowercase)
        .collect()
}

/// `%XX` escapes of ASCII punctuation and the space decoded: passages quote URLs (a badge's
/// `python-3.8%7C3.9%7C3.10` lists versions).
fn percent_decoded(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.contains('%') {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find('%') {
        out.push_str(&rest[..at]);
        let escaped = rest
            .get(at + 1..at + 3)
            .and_then(|hex| u8::from_str_radix(hex, 16).ok())
            .filter(|b| b.is_ascii_punctuation() || *b == b' ');
        match escaped {
            Some(b) => {
                out.push(char::from(b));
                rest = &rest[at + 3..];
            }
            None => {
                out.push('%');
                rest = &rest[at + 1..];
            }
        }
    }
    out.push_str(rest);
    std::borrow::Cow::Owned(out)
}

/// The results of arithmetic the text writes out (`13GB + 5.2GB = 18.2GB`, `2 × 24 = 48`):
/// each value right of `=` (or `≈`) whose expression on the left, of numbers joined by `+`,
/// `-`, `×`, `*`, `÷` or `/` (a unit in letters may follow a number), gives it to the
/// precision the result is written with.
fn derived_values(text: &str) -> Vec<f64> {
    #[derive(Clone, Copy, PartialEq)]
    enum Token {
        Number(f64, i32),
        Op(char),
        Equals,
        Break,
    }
    let chars: Vec<char> = fold_width(text).chars().collect();
    let mut tokens = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c.is_ascii_digit() {
            let start = i;
            while i < chars.len()
                && (chars[i].is_ascii_digit()
                    || (chars[i] == '.' && chars.get(i + 1).is_some_and(char::is_ascii_digit)))
            {
                i += 1;
            }
            let written: String = chars[start..i].iter().collect();
            let decimals = written.split_once('.').map_or(0, |(_, d)| d.len() as i32);
            match written.parse::<f64>() {
                Ok(v) => tokens.push(Token::Number(v, decimals)),
                Err(_) => tokens.push(Token::Break),
            }
            // A unit written in letters belongs to the number.
            while i < chars.len() && chars[i].is_ascii_alphabetic() {
                i += 1;
            }
            continue;
        }
        tokens.push(match c {
            '+' | '-' | '×' | '*' | '÷' | '/' => Token::Op(c),
            '=' | '≈' => Token::Equals,
            c if c.is_whitespace() => {
                i += 1;
                continue;
            }
            _ => Token::Break,
        });
        i += 1;
    }
    let mut out = Vec::new();
    for (e, token) in tokens.iter().enumerate() {
        if *token != Token::Equals {
            continue;
        }
        let Some(&Token::Number(result, decimals)) = tokens.get(e + 1) else {
            continue;
        };
        // The expression: alternating numbers and operators back to a break.
        let start = tokens[..e]
            .iter()
            .rposition(|t| matches!(t, Token::Break | Token::Equals))
            .map_or(0, |b| b + 1);
        let expression = &tokens[start..e];
        if expression.len() < 3 || expression.len() % 2 == 0 {
            continue;
        }
        let mut numbers = Vec::new();
        let mut ops = Vec::new();
        for (j, t) in expression.iter().enumerate() {
            match (j % 2, *t) {
                (0, Token::Number(v, _)) => numbers.push(v),
                (1, Token::Op(op)) => ops.push(op),
                _ => break,
            }
        }
        if numbers.len() != ops.len() + 1 || numbers.len() + ops.len() != expression.len() {
            continue;
        }
        // Sums of products, left to right.
        let (mut sum, mut sign, mut term) = (0.0, 1.0, numbers[0]);
        let mut well_formed = true;
        for (&op, &n) in ops.iter().zip(&numbers[1..]) {
            match op {
                '×' | '*' => term *= n,
                '÷' | '/' if n != 0.0 => term /= n,
                '+' | '-' => {
                    sum += sign * term;
                    sign = if op == '+' { 1.0 } else { -1.0 };
                    term = n;
                }
                _ => well_formed = false,
            }
        }
        if !well_formed {
            continue;
        }
        let value = sum + sign * term;
        let tolerance = 0.5 * 10f64.powi(-decimals) + 1e-9 * result.abs();
        if value.is_finite() && (value - result).abs() <= tolerance {
            out.push(result);
        }
    }
    out
}

/// Full-width ASCII forms and the ideographic space folded to ASCII.
fn fold_width(text: &str) -> String {
    text.chars()
        .map(|c| match c {
            '\u{3000}' => ' ',
            // The full-width comma separates list items (128，256), never digit groups.
            '\u{FF0C}' => c,
            '\u{FF01}'..='\u{FF5E}' => char::from_u32(c as u32 - 0xFEE0).unwrap_or(c),
            _ => c,
        })
        .collect()
}

// ---------------------------------------------------------------------------------------
// Facts and their keys

/// The units a quantity is compared in: spellings of one unit share a class.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Unit {
    /// Bare numbers and counts: K, M, B, T, 万, 亿 scale them; tokens, 词元 are counts too.
    Count,
    Gigabytes,
    Megabytes,
    Terabytes,
    Kilobytes,
    Bits,
    Percent,
    Seconds,
    Milliseconds,
    TokensPerSecond,
    SecondsPerIteration,
    IterationsPerSecond,
    MillisecondsPerToken,
    /// GPUs, cards: 张, 块, 台, 卡, GPU.
    Cards,
    /// 倍, x.
    Times,
}

impl Unit {
    /// As a reason writes it after a number (a count has none).
    fn name(self) -> &'static str {
        match self {
            Unit::Count => "",
            Unit::Gigabytes => "GB",
            Unit::Megabytes => "MB",
            Unit::Terabytes => "TB",
            Unit::Kilobytes => "KB",
            Unit::Bits => "bit",
            Unit::Percent => "%",
            Unit::Seconds => "s",
            Unit::Milliseconds => "ms",
            Unit::TokensPerSecond => "token/s",
            Unit::SecondsPerIteration => "s/it",
            Unit::IterationsPerSecond => "it/s",
            Unit::MillisecondsPerToken => "ms/token",
            Unit::Cards => "cards",
            Unit::Times => "times",
        }
    }
}

/// An ASCII unit word after a number: its class and the factor it scales a count by.
fn ascii_unit(word: &str) -> Option<(Unit, f64)> {
    Some(match word {
        "g" | "gb" | "gib" => (Unit::Gigabytes, 1.0),
        "mb" | "mib" => (Unit::Megabytes, 1.0),
        "tb" | "tib" => (Unit::Terabytes, 1.0),
        "kb" | "kib" => (Unit::Kilobytes, 1.0),
        "k" => (Unit::Count, 1e3),
        "m" => (Unit::Count, 1e6),
        "b" => (Unit::Count, 1e9),
        "t" => (Unit::Count, 1e12),
        "token" | "tokens" => (Unit::Count, 1.0),
        "bit" | "bits" => (Unit::Bits, 1.0),
        "s" | "sec" => (Unit::Seconds, 1.0),
        "min" | "mins" | "minute" | "minutes" => (Unit::Seconds, 60.0),
        "h" | "hr" | "hrs" | "hour" | "hours" => (Unit::Seconds, 3600.0),
        "ms" => (Unit::Milliseconds, 1.0),
        "gpu" | "gpus" | "card" | "cards" => (Unit::Cards, 1.0),
        "x" => (Unit::Times, 1.0),
        _ => return None,
    })
}

/// A rate written `a/b` after a number.
fn ascii_rate(numerator: &str, denominator: &str) -> Option<Unit> {
    Some(match (numerator, denominator) {
        ("token" | "tokens" | "tok" | "t", "s") => Unit::TokensPerSecond,
        ("s", "it") => Unit::SecondsPerIteration,
        ("it", "s") => Unit::IterationsPerSecond,
        ("ms", "tok" | "token") => Unit::MillisecondsPerToken,
        _ => return None,
    })
}

/// A CJK unit or measure word after a number: its class, the factor, and its length.
fn cjk_unit(rest: &[char]) -> Option<(Unit, f64, usize)> {
    let first = *rest.first()?;
    let second = rest.get(1).copied();
    Some(match (first, second) {
        ('亿', _) => (Unit::Count, 1e8, 1),
        ('万', _) => (Unit::Count, 1e4, 1),
        ('张' | '块' | '台' | '卡', _) => (Unit::Cards, 1.0, 1),
        ('倍', _) => (Unit::Times, 1.0, 1),
        ('秒', _) => (Unit::Seconds, 1.0, 1),
        ('分', Some('钟')) => (Unit::Seconds, 60.0, 2),
        ('小', Some('时')) => (Unit::Seconds, 3600.0, 2),
        ('天', _) => (Unit::Seconds, 86400.0, 1),
        ('毫', Some('秒')) => (Unit::Milliseconds, 1.0, 2),
        ('词', Some('元')) | ('令', Some('牌')) => (Unit::Count, 1.0, 2),
        _ => return None,
    })
}

#[derive(Debug, Clone, PartialEq)]
enum Key {
    Quantity {
        value: f64,
        unit: Unit,
        bare: bool,
    },
    /// A version (without its leading v), or a name in lower case with `_` as `-`.
    Literal(String),
    Setting {
        name: String,
        value: Option<String>,
    },
}

/// A fact with the line it was found on.
#[derive(Debug, Clone)]
struct Spanned {
    fact: Fact,
    line: usize,
}

/// Letter-only words that name a category rather than state a fact.
const GENERIC_WORDS: &[&str] = &[
    "ai", "api", "cpu", "gpu", "gpus", "http", "https", "id", "json", "llm", "ok", "pdf", "url",
];

fn is_run_char(c: char) -> bool {
    c.is_ascii_alphanumeric()
}

fn is_connector(c: char) -> bool {
    matches!(c, '.' | '-' | '_')
}

fn is_cjk_numeral(c: char) -> bool {
    matches!(
        c,
        '零' | '〇'
            | '一'
            | '二'
            | '两'
            | '三'
            | '四'
            | '五'
            | '六'
            | '七'
            | '八'
            | '九'
            | '十'
            | '百'
            | '千'
            | '万'
            | '亿'
    )
}

/// The value of a Chinese numeral (一百二十八, 两, 六十二亿); `None` when it is not one.
fn cjk_numeral_value(chars: &[char]) -> Option<f64> {
    let digit = |c: char| -> Option<f64> {
        Some(match c {
            '零' | '〇' => 0.0,
            '一' => 1.0,
            '二' | '两' => 2.0,
            '三' => 3.0,
            '四' => 4.0,
            '五' => 5.0,
            '六' => 6.0,
            '七' => 7.0,
            '八' => 8.0,
            '九' => 9.0,
            _ => return None,
        })
    };
    let mut total = 0.0;
    let mut section = 0.0;
    let mut current: Option<f64> = None;
    let mut any_digit = false;
    for &c in chars {
        if let Some(d) = digit(c) {
            current = Some(d);
            any_digit = true;
            continue;
        }
        let scale = match c {
            '十' => 10.0,
            '百' => 100.0,
            '千' => 1000.0,
            '万' => 1e4,
            '亿' => 1e8,
            _ => return None,
        };
        if scale >= 1e4 {
            total = (total + section + current.unwrap_or(0.0)) * scale;
            section = 0.0;
        } else {
            section += current.unwrap_or(1.0) * scale;
        }
        current = None;
    }
    any_digit
        .then(|| total + section + current.unwrap_or(0.0))
        .or_else(|| (chars == ['十']).then_some(10.0))
}

/// The facts of `text` (full width folded), each with its line. Bare single digits are facts
/// only with `single_digits` (in a passage, a table cell or a bit width; in an answer, a list
/// marker).
fn scan(text: &str, single_digits: bool) -> Vec<Spanned> {
    let c: Vec<char> = text.chars().collect();
    let n = c.len();
    let mut out = Vec::new();
    let mut line = 0usize;
    let mut in_code = false;
    let mut i = 0usize;
    let skip_blanks = |mut j: usize| {
        while j < n && (c[j] == ' ' || c[j] == '\t') {
            j += 1;
        }
        j
    };
    // A setting's text as written, without the blanks read past its value.
    let written =
        |from: usize, to: usize| c[from..to].iter().collect::<String>().trim_end().to_owned();
    while i < n {
        let ch = c[i];
        if ch == '\n' {
            line += 1;
            i += 1;
            continue;
        }
        if ch == '`' {
            in_code = !in_code;
            i += 1;
            continue;
        }
        let after_boundary = i == 0 || !(is_run_char(c[i - 1]) || is_connector(c[i - 1]));
        // A `-` that starts a flag or define: two more characters, no word or `-` before it.
        let flag_start =
            ch == '-' && i + 2 < n && (i == 0 || !(is_run_char(c[i - 1]) || c[i - 1] == '-'));
        // A CMake define, -DNAME=VALUE (`CMAKE_ARGS="-DGGML_CUBLAS=ON"`): the setting
        // NAME=VALUE, as an answer names it.
        if flag_start && c[i + 1] == 'D' && (c[i + 2].is_ascii_uppercase() || c[i + 2] == '_') {
            let (name, name_end) = read_run(&c, i + 2);
            if c.get(name_end) == Some(&'=') {
                let (value, end) = read_value(&c, name_end);
                if value.is_some() {
                    out.push(Spanned {
                        fact: setting_fact(written(i, end), &name, value.as_deref()),
                        line,
                    });
                    i = end;
                    continue;
                }
            }
        }
        // A long flag: --name, with a value after a space or `=` when one follows.
        if flag_start && c[i + 1] == '-' && c[i + 2].is_ascii_alphabetic() {
            let (name, end) = read_run(&c, i + 2);
            let (value, end) = read_value(&c, end);
            out.push(Spanned {
                fact: setting_fact(written(i, end), &name, value.as_deref()),
                line,
            });
            i = end;
            continue;
        }
        if ch.is_ascii_alphanumeric() && after_boundary {
            let (run, end) = read_run(&c, i);
            let (fact, end) = classify_run(&c, i, &run, end, in_code, single_digits);
            if let Some(fact) = fact {
                out.push(Spanned { fact, line });
            }
            i = end;
            continue;
        }
        if is_cjk_numeral(ch)
            || (ch == '单' && matches!(c.get(i + 1), Some('张' | '块' | '台' | '卡')))
        {
            let mut j = i;
            if ch == '单' {
                j += 1;
            } else {
                while j < n && is_cjk_numeral(c[j]) {
                    j += 1;
                }
            }
            let value = if ch == '单' {
                Some(1.0)
            } else {
                cjk_numeral_value(&c[i..j])
            };
            if let Some(value) = value {
                let k = skip_blanks(j);
                if let Some((unit, factor, end)) = unit_after(&c, k) {
                    // 一 before a measure word is mostly an article (一张图); before a
                    // memory unit it is a figure.
                    if value != 1.0 || matches!(unit, Unit::Gigabytes | Unit::Megabytes) {
                        out.push(Spanned {
                            fact: Fact {
                                text: c[i..end].iter().collect(),
                                kind: FactKind::Quantity,
                                key: Key::Quantity {
                                    value: value * factor,
                                    unit,
                                    bare: false,
                                },
                            },
                            line,
                        });
                    }
                    i = end;
                    continue;
                }
            }
            i = j.max(i + 1);
            continue;
        }
        i += 1;
    }
    out
}

/// A run of ASCII letters and digits joined by `.`, `-`, `_` (a connector only between two
/// run characters), and `,` between digit groups of three.
fn read_run(c: &[char], start: usize) -> (String, usize) {
    let n = c.len();
    let mut j = start;
    let mut run = String::new();
    while j < n {
        let joins = is_connector(c[j]) && j + 1 < n && is_run_char(c[j + 1]) && !run.is_empty();
        if is_run_char(c[j]) || joins {
            run.push(c[j]);
            j += 1;
        } else if c[j] == ','
            && run.chars().all(|d| d.is_ascii_digit())
            && !run.is_empty()
            && c[j + 1..]
                .iter()
                .take(3)
                .filter(|d| d.is_ascii_digit())
                .count()
                == 3
            && c.get(j + 4).is_none_or(|d| !d.is_ascii_digit())
        {
            run.extend(c[j + 1..j + 4].iter());
            j += 4;
        } else {
            break;
        }
    }
    (run, j)
}

/// The value after a flag or a setting: a run after blanks or `=` (or `: `), on the same line.
fn read_value(c: &[char], mut j: usize) -> (Option<String>, usize) {
    let n = c.len();
    let start = j;
    let mut separated = false;
    while j < n && matches!(c[j], ' ' | '\t' | '=' | ':') {
        separated = true;
        j += 1;
    }
    if !separated || j >= n || !(c[j].is_ascii_alphanumeric() || c[j] == '.') {
        return (None, start);
    }
    let mut end = j;
    while end < n && (c[end].is_ascii_alphanumeric() || matches!(c[end], '.' | '_' | '-' | '/')) {
        end += 1;
    }
    let value: String = c[j..end].iter().collect();
    (Some(value), end)
}

/// A unit right after a number at `k` (blanks skipped by the caller): ASCII word, rate,
/// `%`, or CJK unit. Returns its class, factor and where it ends.
fn unit_after(c: &[char], k: usize) -> Option<(Unit, f64, usize)> {
    let n = c.len();
    if k >= n {
        return None;
    }
    if c[k] == '%' {
        return Some((Unit::Percent, 1.0, k + 1));
    }
    if c[k].is_ascii_alphabetic() {
        let mut end = k;
        while end < n && c[end].is_ascii_alphabetic() {
            end += 1;
        }
        let word: String = c[k..end].iter().collect::<String>().to_ascii_lowercase();
        if end < n && c[end] == '/' {
            let mut e2 = end + 1;
            while e2 < n && c[e2].is_ascii_alphabetic() {
                e2 += 1;
            }
            let denominator = c[end + 1..e2]
                .iter()
                .collect::<String>()
                .to_ascii_lowercase();
            if let Some(unit) = ascii_rate(&word, &denominator) {
                return Some((unit, 1.0, e2));
            }
        }
        // A unit word ends there: 6GB显存, 6 GB, not 6 Gradio.
        if end < n && c[end].is_ascii_alphanumeric() {
            return None;
        }
        return ascii_unit(&word).map(|(u, f)| (u, f, end));
    }
    cjk_unit(&c[k..]).map(|(u, f, len)| (u, f, k + len))
}

/// Classifies the run `run` at `start..end`; returns the fact, if it is one, and where the
/// scan goes on.
fn classify_run(
    c: &[char],
    start: usize,
    run: &str,
    end: usize,
    in_code: bool,
    single_digits: bool,
) -> (Option<Fact>, usize) {
    let text_of = |e: usize| c[start..e].iter().collect::<String>();
    let lower = run.to_ascii_lowercase();
    let first = run.chars().next().unwrap_or(' ');
    if first.is_ascii_digit() {
        let numeric: String = {
            let mut s = String::new();
            let chars: Vec<char> = run.chars().collect();
            for (k, &ch) in chars.iter().enumerate() {
                if ch.is_ascii_digit()
                    || (ch == '.' && chars.get(k + 1).is_some_and(|d| d.is_ascii_digit()))
                {
                    s.push(ch);
                } else {
                    break;
                }
            }
            s
        };
        let rest = lower[numeric.len()..].trim_start_matches('-').to_owned();
        let dots = numeric.matches('.').count();
        if dots >= 2 {
            return (
                Some(Fact {
                    text: text_of(end),
                    kind: FactKind::Version,
                    key: Key::Literal(lower.clone()),
                }),
                end,
            );
        }
        let value: f64 = numeric.parse().unwrap_or(f64::NAN);
        if rest.is_empty() {
            let before_rate = preceded_by_per_second(c, start);
            let k = {
                let mut k = end;
                while k < c.len() && (c[k] == ' ' || c[k] == '\t') {
                    k += 1;
                }
                k
            };
            if let Some((mut unit, factor, unit_end)) = unit_after(c, k) {
                if before_rate && unit == Unit::Count && factor == 1.0 {
                    unit = Unit::TokensPerSecond;
                }
                return (
                    Some(Fact {
                        text: text_of(unit_end),
                        kind: FactKind::Quantity,
                        key: Key::Quantity {
                            value: value * factor,
                            unit,
                            bare: false,
                        },
                    }),
                    unit_end,
                );
            }
            // One bare digit is a list marker or an article, not a key fact.
            let is_fact = single_digits || numeric.len() >= 2;
            return (
                is_fact.then(|| Fact {
                    text: text_of(end),
                    kind: FactKind::Number,
                    key: Key::Quantity {
                        value,
                        unit: Unit::Count,
                        bare: true,
                    },
                }),
                end,
            );
        }
        // 6gb, 4-bit, 128tokens/s
        let (rest_word, rest_tail) = match rest.find(|ch: char| !ch.is_ascii_alphabetic()) {
            Some(p) => (&rest[..p], &rest[p..]),
            None => (rest.as_str(), ""),
        };
        if rest_tail.is_empty() {
            if end < c.len()
                && c[end] == '/'
                && let Some((unit, _, unit_end)) = unit_after(c, start + numeric.len())
            {
                return (
                    Some(Fact {
                        text: text_of(unit_end),
                        kind: FactKind::Quantity,
                        key: Key::Quantity {
                            value,
                            unit,
                            bare: false,
                        },
                    }),
                    unit_end,
                );
            }
            if let Some((unit, factor)) = ascii_unit(rest_word) {
                return (
                    Some(Fact {
                        text: text_of(end),
                        kind: FactKind::Quantity,
                        key: Key::Quantity {
                            value: value * factor,
                            unit,
                            bare: false,
                        },
                    }),
                    end,
                );
            }
        }
        // 3090ti, 2xa100: a name.
        return (
            Some(Fact {
                text: text_of(end),
                kind: FactKind::ModelName,
                key: Key::Literal(canonical_name(&lower)),
            }),
            end,
        );
    }
    // v0.7.0
    if (first == 'v' || first == 'V')
        && run.len() > 1
        && run[1..].chars().all(|ch| ch.is_ascii_digit() || ch == '.')
        && run[1..].starts_with(|ch: char| ch.is_ascii_digit())
        && run.contains('.')
    {
        return (
            Some(Fact {
                text: text_of(end),
                kind: FactKind::Version,
                key: Key::Literal(lower[1..].to_owned()),
            }),
            end,
        );
    }
    // A snake_case setting with its value: lora_alpha=32, neftune_noise_alpha: 5.
    if run.contains('_') {
        let (value, value_end) = read_value(c, end);
        let is_setting =
            value.is_some() && c[end..value_end].iter().any(|&ch| ch == '=' || ch == ':');
        if is_setting {
            return (
                Some(setting_fact(text_of(value_end), run, value.as_deref())),
                value_end,
            );
        }
    }
    let has_digit = run.chars().any(|ch| ch.is_ascii_digit());
    if has_digit {
        return (
            Some(Fact {
                text: text_of(end),
                kind: FactKind::ModelName,
                key: Key::Literal(canonical_name(run)),
            }),
            end,
        );
    }
    // In Chinese text a capitalised ASCII word names a product (Milvus, Gradio).
    let capitalised = run.chars().any(|ch| ch.is_ascii_uppercase());
    let is_identifier = (in_code || capitalised || run.contains(['_', '.']))
        && !GENERIC_WORDS.contains(&lower.as_str())
        && run.len() >= 2;
    (
        is_identifier.then(|| Fact {
            text: text_of(end),
            kind: FactKind::Identifier,
            key: Key::Literal(canonical_name(run)),
        }),
        end,
    )
}

/// The most characters between 每秒 and the number it makes a rate of: a verb and an
/// adverb (每秒能输出, 每秒大约生成).
const PER_SECOND_REACH: usize = 6;

/// 每秒 before the number at `start`, in the same clause and at most [`PER_SECOND_REACH`]
/// characters (blanks aside) ahead of it (每秒 24.4 token, 每秒能输出 28.7 tokens): its count is
/// a rate.
fn preceded_by_per_second(c: &[char], start: usize) -> bool {
    let mut j = start;
    let mut between = 0;
    while j >= 2 && between <= PER_SECOND_REACH {
        if c[j - 2] == '每' && c[j - 1] == '秒' {
            return true;
        }
        let ch = c[j - 1];
        if ch.is_ascii_digit() || ch.is_ascii_punctuation() || is_clause_break(ch) {
            return false;
        }
        if ch != ' ' && ch != '\t' {
            between += 1;
        }
        j -= 1;
    }
    false
}

/// Punctuation that ends a clause in Chinese text.
fn is_clause_break(ch: char) -> bool {
    matches!(ch, '，' | '。' | '；' | '：' | '、' | '？' | '！' | '\n')
}

/// A name compared across spellings: lower case, `_` as `-`.
fn canonical_name(name: &str) -> String {
    name.to_ascii_lowercase().replace('_', "-")
}

// ---------------------------------------------------------------------------------------
// The passages' side

/// One passage (or the question): its lines, their facts, and where its markdown tables are.
struct Source {
    /// Each line in lower case, full width folded, `_` as `-`.
    lines: Vec<String>,
    /// Facts per line, and the parts of hyphenated names (Qwen-7B states 7B).
    facts: Vec<Vec<Key>>,
    /// For each line in a markdown table: the index of the table's first line.
    table_of: Vec<Option<usize>>,
    /// For each line in an HTML table: the lines of the table. Its rows span lines, so its
    /// numbers are not checked by row; its header names their unit.
    html_table_of: Vec<Option<(usize, usize)>>,
    /// For each line in an HTML table row (`<tr>` … `</tr>`, found with or without its
    /// `<table>`): the row's facts, with the cells of rows above that span it (`rowspan`).
    html_row_facts: Vec<Option<std::rc::Rc<Vec<Key>>>>,
    /// For each line: the markdown headings above it, nearest first, each of a higher level
    /// than the one before it (the line's heading path).
    headings_of: Vec<Vec<usize>>,
    /// Lines that are markdown headings.
    is_heading: Vec<bool>,
    /// For each line of a markdown table or a fenced code block: the line that leads into
    /// the block (the nearest non-empty line above it, outside any block), which often says
    /// what the block's figures are of (在 H200 上测试：, 这里展示对 qwen1half-7b-chat 量化).
    lead_in: Vec<Option<usize>>,
}

/// Writes into each markdown table row whose first cell marks it as continuing the row
/// above (`-`, `〃`, empty) the label of the nearest row above that has one, so that the
/// row's model is read from the row as the table means it (LMDeploy's kv-cache table names
/// llama2-chat-13b once, over its int8 and int4 rows). Header and delimiter rows give no
/// label.
fn label_ditto_rows(lines: &mut [String], table_of: &[Option<usize>]) {
    let mut k = 0;
    while k < lines.len() {
        let Some(table) = table_of[k] else {
            k += 1;
            continue;
        };
        let end = (k..lines.len())
            .find(|&j| table_of[j] != Some(table))
            .unwrap_or(lines.len());
        let is_header = |j: usize| lines.get(j + 1).is_some_and(|n| is_table_delimiter(n));
        let body: Vec<usize> = (k..end)
            .filter(|&j| !is_header(j) && !is_table_delimiter(&lines[j]))
            .collect();
        let labels = ditto_labels(body.iter().map(|&j| lines[j].as_str()));
        for (j, label) in body.into_iter().zip(labels) {
            let Some(name) = label else {
                continue;
            };
            let line = &lines[j];
            let cell_start = if line.trim_start().starts_with('|') {
                line.find('|').map_or(0, |i| i + 1)
            } else {
                0
            };
            let cell_end = line[cell_start..]
                .find('|')
                .map_or(line.len(), |i| cell_start + i);
            lines[j] = format!("{} {name} {}", &line[..cell_start], &line[cell_end..]);
        }
        k = end;
    }
}

impl Source {
    fn new(text: &str) -> Self {
        let folded = fold_width(&percent_decoded(text));
        let raw_lines: Vec<&str> = folded.split('\n').collect();
        let facts = facts_per_line(&folded, raw_lines.len());
        // Markdown tables: lines that start with `|`, or (GFM's tables without the outer
        // pipes) a line with a `|` over a delimiter row, and the lines with a `|` after it.
        let mut table_of = vec![None; raw_lines.len()];
        let mut current: Option<(usize, bool)> = None;
        for (k, l) in raw_lines.iter().enumerate() {
            let piped = l.trim_start().starts_with('|');
            let continues_bare = matches!(current, Some((_, true))) && l.contains('|');
            let starts_bare = !piped
                && l.contains('|')
                && raw_lines
                    .get(k + 1)
                    .is_some_and(|next| is_table_delimiter(next));
            if piped || continues_bare {
                let (first, _) = *current.get_or_insert((k, false));
                table_of[k] = Some(first);
            } else if starts_bare {
                current = Some((k, true));
                table_of[k] = Some(k);
            } else {
                current = None;
            }
        }
        let mut lines: Vec<String> = raw_lines.iter().map(|l| canonical_name(l)).collect();
        label_ditto_rows(&mut lines, &table_of);
        let mut html_table_of = vec![None; lines.len()];
        let mut open: Option<usize> = None;
        for (k, l) in lines.iter().enumerate() {
            if open.is_none() && l.contains("<table") {
                open = Some(k);
            }
            if let Some(start) = open
                && l.contains("</table")
            {
                for slot in &mut html_table_of[start..=k] {
                    *slot = Some((start, k));
                }
                open = None;
            }
        }
        let html_row_facts = html_rows(&lines);
        let level = |l: &str| {
            let t = l.trim_start();
            let hashes = t.chars().take_while(|&ch| ch == '#').count();
            (hashes > 0 && t[hashes..].starts_with(' ')).then_some(hashes)
        };
        let is_heading: Vec<bool> = lines.iter().map(|l| level(l).is_some()).collect();
        let mut headings_of = vec![Vec::new(); lines.len()];
        let mut path: Vec<(usize, usize)> = Vec::new();
        for (k, l) in lines.iter().enumerate() {
            headings_of[k] = path.iter().rev().map(|&(line, _)| line).collect();
            if let Some(lv) = level(l) {
                path.retain(|&(_, upper)| upper < lv);
                path.push((k, lv));
            }
        }
        let lead_in = lead_in_lines(&lines, &table_of);
        Self {
            lines,
            facts,
            table_of,
            html_table_of,
            html_row_facts,
            headings_of,
            is_heading,
            lead_in,
        }
    }

    /// Whether line `k` is a table's header or its separator row (`|---|`). A table's first
    /// line is its header only when a separator row follows it: a passage cut from the
    /// middle of a table starts with a body row.
    fn is_table_head(&self, k: usize) -> bool {
        let is_separator = |l: usize| {
            self.lines
                .get(l)
                .is_some_and(|line| is_table_delimiter(line))
        };
        match self.table_of.get(k).copied().flatten() {
            Some(first) => {
                (k == first
                    && self.table_of.get(k + 1) == Some(&Some(first))
                    && is_separator(k + 1))
                    || is_separator(k)
            }
            None => false,
        }
    }

    /// The body rows of the table starting at `first`.
    fn table_body(&self, first: usize) -> Vec<usize> {
        (first..self.lines.len())
            .take_while(|&k| self.table_of[k] == Some(first))
            .filter(|&k| !self.is_table_head(k))
            .collect()
    }
}

/// For each line of a markdown table (`table_of`) or a fenced code block, the nearest
/// non-empty line above the block that is in no block: see [`Source::lead_in`].
fn lead_in_lines(lines: &[String], table_of: &[Option<usize>]) -> Vec<Option<usize>> {
    // The first line of the block each line is in (the opening fence for code), as the
    // splitter reads it.
    let code = code_block_of(lines.iter().map(String::as_str));
    let block_of: Vec<Option<usize>> = table_of
        .iter()
        .zip(code)
        .map(|(table, code)| code.or(*table))
        .collect();
    block_of
        .iter()
        .map(|block| {
            let start = (*block)?;
            (0..start)
                .rev()
                .find(|&l| !lines[l].trim().is_empty())
                .filter(|&l| block_of[l].is_none())
        })
        .collect()
}

/// What a line names itself, or when it names nothing of the kind, what its lead-in does.
fn own_or_lead<T>(own: Vec<T>, lead: impl FnOnce() -> Vec<T>) -> Vec<T> {
    if own.is_empty() { lead() } else { own }
}

/// What `read` finds on line `k` of `source`, or on the line leading into its table or
/// code block when line `k` has none ([`own_or_lead`]).
fn line_or_lead<T>(source: &Source, k: usize, read: impl Fn(&str) -> Vec<T>) -> Vec<T> {
    own_or_lead(read(&source.lines[k]), || {
        source.lead_in[k]
            .map(|l| read(&source.lines[l]))
            .unwrap_or_default()
    })
}

/// Whether the question names some (`asked`), the line some (`line`), and `same` pairs
/// none of the line's with one of the question's: the line is about something else.
fn disjoint<T>(asked: &[T], line: &[T], same: impl Fn(&T, &T) -> bool) -> bool {
    !asked.is_empty() && !line.is_empty() && !line.iter().any(|l| asked.iter().any(|a| same(a, l)))
}

/// GPU models named in `text` (lower case): a100, h200, rtx 4090 as 4090.
fn gpus_in(text: &str) -> Vec<String> {
    const GPUS: &[&str] = &[
        "a10", "a30", "a40", "a100", "a800", "a6000", "h20", "h100", "h200", "h800", "b100",
        "b200", "l4", "l20", "l40", "l40s", "t4", "v100", "p100", "910b", "2080", "2080ti", "3060",
        "3070", "3080", "3090", "3090ti", "4060", "4070", "4080", "4090", "5090",
    ];
    let mut found: Vec<String> = Vec::new();
    for word in text
        .to_lowercase()
        .split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|w| !w.is_empty())
    {
        if GPUS.contains(&word) && !found.iter().any(|f| f == word) {
            found.push(word.to_owned());
        }
    }
    found
}

/// A fine-tuning method, as documents give memory and speed for each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TuningMethod {
    Lora,
    QLora,
    PTuning,
    Full,
    Freeze,
}

impl TuningMethod {
    fn name(self) -> &'static str {
        match self {
            Self::Lora => "LoRA",
            Self::QLora => "Q-LoRA",
            Self::PTuning => "P-Tuning",
            Self::Full => "full-parameter fine-tuning",
            Self::Freeze => "freeze fine-tuning",
        }
    }
}

/// The fine-tuning methods `text` names, in order of first mention: words of ASCII letters
/// and digits with their hyphens dropped (Q-LoRA is `qlora`, not LoRA; P-TuningV2 is
/// `ptuningv2`), full-parameter tuning also as 全量 or 全参, or `full` before `param…` or
/// `fine…`.
fn tuning_methods_in(text: &str) -> Vec<TuningMethod> {
    let folded = fold_width(text).to_lowercase();
    let words: Vec<String> = folded
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))
        .map(|w| w.replace('-', ""))
        .filter(|w| !w.is_empty())
        .collect();
    let mut found: Vec<TuningMethod> = Vec::new();
    let mut add = |m: TuningMethod| {
        if !found.contains(&m) {
            found.push(m);
        }
    };
    for (i, word) in words.iter().enumerate() {
        let next = words.get(i + 1).map_or("", String::as_str);
        match word.as_str() {
            "lora" | "loras" => add(TuningMethod::Lora),
            "qlora" => add(TuningMethod::QLora),
            "freeze" => add(TuningMethod::Freeze),
            "full" if next.starts_with("param") || next.starts_with("fine") => {
                add(TuningMethod::Full)
            }
            w if w.starts_with("ptuning") => add(TuningMethod::PTuning),
            w if w.starts_with("fullparam") || w.starts_with("fullfine") => add(TuningMethod::Full),
            _ => {}
        }
    }
    if folded.contains("全量") || folded.contains("全参") {
        add(TuningMethod::Full);
    }
    found
}

/// The facts of each of the `lines` lines of `folded`, with the figures in the parts of
/// hyphenated names (Qwen-7B states 7B).
fn facts_per_line(folded: &str, lines: usize) -> Vec<Vec<Key>> {
    let mut facts: Vec<Vec<Key>> = vec![Vec::new(); lines];
    for s in scan(folded, true) {
        if let Some(slot) = facts.get_mut(s.line) {
            if let Key::Literal(name) = &s.fact.key {
                for part in name.split('-').filter(|p| !p.is_empty()) {
                    for sub in scan(part, true) {
                        if let Key::Quantity { .. } = sub.fact.key {
                            slot.push(sub.fact.key);
                        }
                    }
                }
            }
            slot.push(s.fact.key);
        }
    }
    facts
}

/// The facts of each HTML table row for the lines it spans: its own cells and those of
/// earlier rows whose `rowspan` reaches it (a `<td rowspan="3">72B</td>` names the model of
/// the two rows below it too). Rows are found by `<tr>` and `</tr>` alone, so that a passage
/// cut from a table's middle still has them; a spanning cell cut off above is not known.
fn html_rows(lines: &[String]) -> Vec<Option<std::rc::Rc<Vec<Key>>>> {
    let mut out = vec![None; lines.len()];
    // Text of spanning cells and how many more rows each reaches.
    let mut spans: Vec<(String, usize)> = Vec::new();
    let mut open: Option<usize> = None;
    for (k, line) in lines.iter().enumerate() {
        if open.is_none() && line.contains("<tr") {
            open = Some(k);
        }
        let Some(start) = open else {
            continue;
        };
        if !line.contains("</tr") {
            continue;
        }
        open = None;
        let own: Vec<&str> = lines[start..=k].iter().map(String::as_str).collect();
        let mut text: Vec<String> = spans.iter().map(|(t, _)| t.clone()).collect();
        text.extend(own.iter().map(|l| (*l).to_owned()));
        spans.retain_mut(|(_, left)| {
            *left -= 1;
            *left > 0
        });
        for cell in own.iter().flat_map(|l| l.split("<td").skip(1)) {
            let Some(n) = cell
                .split("rowspan=")
                .nth(1)
                .and_then(|r| {
                    r.trim_start_matches(['"', '\''])
                        .split(|ch: char| !ch.is_ascii_digit())
                        .next()
                })
                .and_then(|n| n.parse::<usize>().ok())
            else {
                continue;
            };
            let content = cell
                .split_once('>')
                .map_or("", |(_, rest)| rest.split("</td").next().unwrap_or(""));
            if n > 1 && !content.trim().is_empty() {
                spans.push((content.trim().to_owned(), n - 1));
            }
        }
        let facts = facts_per_line(&text.join("\n"), text.len()).concat();
        let facts = std::rc::Rc::new(facts);
        for slot in &mut out[start..=k] {
            *slot = Some(facts.clone());
        }
    }
    out
}

/// `needle` in `hay` with no ASCII letter or digit on either side.
fn contains_word(hay: &str, needle: &str) -> bool {
    if needle.is_empty() {
        return false;
    }
    let mut from = 0;
    while let Some(p) = hay[from..].find(needle) {
        let start = from + p;
        let end = start + needle.len();
        let before_ok = hay[..start]
            .chars()
            .next_back()
            .is_none_or(|ch| !ch.is_ascii_alphanumeric());
        let after_ok = hay[end..]
            .chars()
            .next()
            .is_none_or(|ch| !ch.is_ascii_alphanumeric());
        if before_ok && after_ok {
            return true;
        }
        from = start + hay[start..].chars().next().map_or(1, char::len_utf8);
    }
    false
}

fn same_value(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1.0)
}

/// Whether line `k` of `source` states the quantity `value unit`: the same unit (any
/// spelling), or, for a bare number in the answer, any unit; or a bare number on a line (or
/// under a table header) that names the unit.
fn line_states_quantity(
    source: &Source,
    k: usize,
    value: f64,
    unit: Unit,
    bare: bool,
    asked: &Asked,
) -> bool {
    let names_unit = |line: usize| {
        source.facts[line]
            .iter()
            .any(|f| matches!(f, Key::Quantity { unit: u, bare: false, .. } if *u == unit))
            || unit_spelled_in(&source.lines[line], unit)
    };
    let html_header_names_unit = |line: usize| {
        source.html_table_of[line].is_some_and(|(start, end)| {
            (start..=end).any(|l| unit_spelled_in(&source.lines[l], unit))
        })
    };
    // The line just above a table (its caption, 显存占用对比 (GPU Mem in GB)：) names the unit
    // of its bare numbers as its header would.
    let caption_names_unit = |first: usize| {
        (0..first)
            .rev()
            .find(|&l| !source.lines[l].trim().is_empty())
            .is_some_and(|l| source.table_of[l].is_none() && names_unit(l))
    };
    source.facts[k].iter().any(|f| match f {
        Key::Quantity {
            value: v,
            unit: u,
            bare: b,
        } => {
            same_value(*v, value)
                && (bare
                    || *u == unit
                    || (*b
                        && (names_unit(k)
                            || source.table_of[k].is_some_and(|first| {
                                names_unit(first) || caption_names_unit(first)
                            })
                            || html_header_names_unit(k))))
        }
        // A bare number is stated as a setting's value written with a decimal point
        // (rope_scaling_factor=2.0), or as the value of the setting the question names
        // (max_position_embeddings = 65536); any other whole one (--num_train_epochs 4) is
        // too often some other setting's to stand for 4.0.
        Key::Setting {
            name,
            value: Some(v),
        } => {
            (bare
                && v.parse::<f64>().is_ok_and(|v| same_value(v, value))
                && (v.contains('.') || asked.names_setting(name)))
                // A value with its unit (`Q4_K_M  :  3.80G`) states that quantity.
                || scan(v, true).iter().any(|s| {
                    matches!(s.fact.key, Key::Quantity { value: v, unit: u, bare: false }
                        if same_value(v, value) && (bare || u == unit))
                })
        }
        _ => false,
    })
}

/// A table header or a line naming a unit without a number: 显存（GB）.
fn unit_spelled_in(line: &str, unit: Unit) -> bool {
    let words: &[&str] = match unit {
        Unit::Gigabytes => &["gb", "gib"],
        Unit::Megabytes => &["mb", "mib"],
        Unit::TokensPerSecond => &["tokens/s", "token/s", "tok/s", "tokens per second"],
        Unit::Milliseconds => &["ms"],
        Unit::Seconds => &["(s)", "(sec)", "(秒)", "seconds"],
        Unit::MillisecondsPerToken => &["ms/token", "ms/tok"],
        Unit::SecondsPerIteration => &["s/it"],
        Unit::IterationsPerSecond => &["it/s"],
        Unit::Percent => &["%"],
        _ => &[],
    };
    // A token generation speed in words (token 生成速度, 每秒生成的 token 数).
    if unit == Unit::TokensPerSecond
        && (contains_word(line, "token") || contains_word(line, "tokens"))
        && (line.contains("速度") || line.contains("每秒"))
    {
        return true;
    }
    words.iter().any(|w| {
        if w.chars().all(|ch| ch.is_ascii_alphanumeric()) {
            contains_word(line, w)
        } else {
            line.contains(w)
        }
    })
}

fn line_states_literal(source: &Source, k: usize, literal: &str, kind: FactKind) -> bool {
    let line = &source.lines[k];
    match kind {
        FactKind::Version => {
            source.facts[k]
                .iter()
                .any(|f| matches!(f, Key::Literal(l) if l.trim_start_matches('v') == literal))
                || contains_word(line, literal)
        }
        _ => contains_word(line, literal),
    }
}

fn line_states_setting(source: &Source, k: usize, name: &str, value: Option<&str>) -> bool {
    let line = &source.lines[k];
    // Where the name starts: as a word, or after a CMake define's `-D` (`-DGGML_CUBLAS=ON`
    // sets GGML_CUBLAS).
    let at = if contains_word(line, name) {
        line.find(name)
    } else {
        let define = format!("-d{name}");
        line.find(&define)
            .filter(|&p| {
                !line[p + define.len()..]
                    .starts_with(|ch: char| ch.is_ascii_alphanumeric() || ch == '-')
            })
            .map(|p| p + 2)
    };
    let Some(at) = at else {
        return false;
    };
    match value {
        None => true,
        Some(v) => {
            let v = canonical_name(v);
            // After the name on the line: `--world_size 2`, `lora_alpha=32, # …`.
            contains_word(&line[at + name.len()..], &v)
        }
    }
}

/// What the question says that may tell table rows apart: a name (INT4, GLM-4-9B-0414) or a
/// value (4-bit, 8000 tokens).
#[derive(Debug, Clone, PartialEq)]
enum Qualifier {
    Name(String),
    Value(f64),
}

impl Qualifier {
    fn in_line(&self, source: &Source, k: usize) -> bool {
        match self {
            Qualifier::Name(name) => contains_word(&source.lines[k], name),
            Qualifier::Value(value) => source.facts[k]
                .iter()
                .any(|f| matches!(f, Key::Quantity { value: v, .. } if same_value(*v, *value))),
        }
    }

    /// A model name: names like it head the sections of a document (#### GLM-4-9B-0414).
    fn is_model_name(&self) -> bool {
        matches!(self, Qualifier::Name(name) if name.chars().any(|ch| ch.is_ascii_digit()))
    }

    fn describe(&self) -> String {
        match self {
            Qualifier::Name(name) => name.clone(),
            Qualifier::Value(value) => value.to_string(),
        }
    }
}

/// Why the table row `k` of `source` is not the one the question picks, or `None` when it
/// is: the row holds every qualifier that some rows of its table hold and others do not,
/// every model name that heads a section of the passage heads the row's section (or is in
/// the row), a model its first cell names is the question's, and it names no other model
/// size or bit width than the question's.
fn wrong_row(source: &Source, k: usize, first: usize, asked: &Asked) -> Option<String> {
    let qualifiers = &asked.qualifiers;
    let body = source.table_body(first);
    let missing_in_row: Vec<&Qualifier> = qualifiers
        .iter()
        .filter(|q| {
            let holding = body.iter().filter(|&&r| q.in_line(source, r)).count();
            holding > 0 && holding < body.len() && !q.in_line(source, k)
        })
        .collect();
    let label = row_label(&source.lines[k]);
    if let Some(q) = missing_in_row.first() {
        return Some(format!(
            "the table row for {label}, not the row for {}",
            q.describe()
        ));
    }
    let headed_elsewhere = qualifiers.iter().find(|q| {
        q.is_model_name()
            && (0..source.lines.len()).any(|h| source.is_heading[h] && q.in_line(source, h))
            && !q.in_line(source, k)
            && !source.headings_of[first]
                .iter()
                .any(|&h| q.in_line(source, h))
    });
    let headed = headed_elsewhere.map(|q| {
        let section = source.headings_of[first]
            .first()
            .map(|&h| {
                source.lines[h]
                    .trim_start_matches(['#', ' '])
                    .trim()
                    .to_owned()
            })
            .unwrap_or_default();
        format!(
            "the table row for {label} under \"{section}\", not under the section for {}",
            q.describe()
        )
    });
    if headed.is_some() {
        return headed;
    }
    if let Some(asked_model) = asked.models.first()
        && !asked
            .models
            .iter()
            .any(|q| contains_word(&source.lines[k], q))
    {
        let label_literals = |line: &str| -> Vec<String> {
            scan(&row_label(line), true)
                .into_iter()
                .filter_map(|s| match s.fact.key {
                    Key::Literal(name) => Some(name),
                    _ => None,
                })
                .collect()
        };
        let names_sized_model = |line: &str| label_literals(line).iter().any(|n| is_sized_model(n));
        let row_names = label_literals(&source.lines[k]);
        let is_asked = row_names
            .iter()
            .any(|r| asked.models.iter().any(|q| same_model(q, r)));
        // A table whose rows are models (most first cells name a sized model): a row for
        // another model, sized or not (GPT-4), is not the question's.
        let model_rows = body
            .iter()
            .filter(|&&r| names_sized_model(&source.lines[r]))
            .count();
        let rows_are_models = model_rows >= 2 && model_rows * 2 >= body.len();
        if !is_asked
            && (row_names.iter().any(|n| is_sized_model(n))
                || (rows_are_models && !row_names.is_empty()))
        {
            return Some(format!(
                "the table row for {label}, another model than {asked_model}"
            ));
        }
    }
    asked
        .contradicted_by(source, k)
        .map(|why| format!("the table row for {label}, {why}"))
}

/// Why `fact` is unsupported, or `None` when a passage or the question states it.
/// Why no source states `fact` (None when one does). Sources marked in `ignored` (by index;
/// the question is never marked) are left out.
fn unsupported_reason(
    fact: &Fact,
    sources: &[Source],
    question_index: usize,
    asked: &Asked,
    ignored: &[bool],
) -> Option<(Unsupported, String)> {
    let states = |source: &Source, k: usize| -> bool {
        match &fact.key {
            Key::Quantity { value, unit, bare } => {
                line_states_quantity(source, k, *value, *unit, *bare, asked)
            }
            Key::Literal(l) => line_states_literal(source, k, l, fact.kind),
            Key::Setting { name, value } => line_states_setting(source, k, name, value.as_deref()),
        }
    };
    let mut table_hits: Vec<(usize, usize)> = Vec::new();
    let mut wrong: Vec<String> = Vec::new();
    for (s, source) in sources.iter().enumerate() {
        if ignored.get(s).copied().unwrap_or(false) {
            continue;
        }
        for k in 0..source.lines.len() {
            if !states(source, k) {
                continue;
            }
            let in_table_body = source.table_of[k].is_some() && !source.is_table_head(k);
            // A name, the question itself, or a header states it.
            if s == question_index || !matches!(fact.key, Key::Quantity { .. }) {
                return None;
            }
            if in_table_body {
                table_hits.push((s, k));
                continue;
            }
            // Prose states the number, unless it is said of another model size or bit width.
            match asked.contradicted_by(source, k) {
                None => return None,
                Some(why) => {
                    if !wrong.contains(&why) {
                        wrong.push(why);
                    }
                }
            }
        }
    }
    if table_hits.is_empty() && wrong.is_empty() {
        return Some((Unsupported::NotStated, not_stated_reason(fact, sources)));
    }
    // Only table rows (or lines about something else) state the number: it must sit in a row
    // the question picks.
    for &(s, k) in &table_hits {
        let source = &sources[s];
        let Some(first) = source.table_of[k] else {
            continue;
        };
        let column = match fact.key {
            Key::Quantity { value, .. } => wrong_column(source, k, first, asked, value),
            _ => None,
        };
        match wrong_row(source, k, first, asked).or(column) {
            None => return None,
            Some(why) => {
                if !wrong.contains(&why) {
                    wrong.push(why);
                }
            }
        }
    }
    Some((
        Unsupported::OtherRow,
        format!("{} is only in {}", fact.text, wrong.join("; ")),
    ))
}

/// Why the number `value` of table row `k` sits in another column than the one the
/// question names, or `None`: a name the question gives (Q4_K, INT4) that heads exactly one
/// column of the table, not its first (the rows' labels), and that the row itself does not
/// hold, picks that column; the row
/// must state the value in that column's cell (12.91G under F16 is not the Q4_K size).
fn wrong_column(
    source: &Source,
    k: usize,
    first: usize,
    asked: &Asked,
    value: f64,
) -> Option<String> {
    if k == first || !source.is_table_head(first) {
        return None;
    }
    let header = row_cells(&source.lines[first]);
    let row = row_cells(&source.lines[k]);
    let states = |cell: &str| {
        scan(cell, true)
            .iter()
            .any(|s| matches!(s.fact.key, Key::Quantity { value: v, .. } if same_value(v, value)))
    };
    let holding = row.iter().position(|cell| states(cell));
    // A cell holding a number the question gives (SeqLen 65536, 输入 1000 token) is a
    // condition the row meets, not the figure asked for: its column is not picked.
    let meets_condition = |cell: &str| {
        asked.qualifiers.iter().any(|q| {
            matches!(q, Qualifier::Value(v) if scan(cell, true).iter().any(|s| {
                matches!(s.fact.key, Key::Quantity { value, .. } if same_value(value, *v))
            }))
        })
    };
    // A setting the question gives (batch=64) picks the column headed by it among the
    // columns its name heads (batch=1 … batch=32); none of them, when none has its value.
    for (name, wanted) in &asked.settings {
        let setting_of = |cell: &str| {
            settings_in(cell)
                .into_iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v)
        };
        let columns: Vec<usize> = (0..header.len())
            .filter(|&i| setting_of(&header[i]).is_some())
            .collect();
        let Some(holding) = holding else {
            continue;
        };
        if !columns.contains(&holding) || setting_of(&header[holding]).as_ref() == Some(wanted) {
            continue;
        }
        let picked = columns
            .iter()
            .find(|&&i| setting_of(&header[i]).as_ref() == Some(wanted));
        return Some(match picked {
            Some(_) => format!(
                "the column {}, not the column for {name}={wanted}, of the table row for {}",
                header[holding],
                row_label(&source.lines[k])
            ),
            None => format!(
                "the column {} of the table row for {}: the table has no column for \
                 {name}={wanted}",
                header[holding],
                row_label(&source.lines[k])
            ),
        });
    }
    // A column whose header has words of its own (a run of Chinese no other column's header
    // holds) that the question uses picks that column, when it is the only one: 最低 GPU
    // 显存（高效参数微调） for "做高效参数微调" against （推理）.
    let own_words = |i: usize| -> Vec<String> {
        cjk_runs(&header[i])
            .into_iter()
            .filter(|w| {
                w.chars().count() >= 2
                    && (1..header.len()).all(|j| j == i || !header[j].contains(w.as_str()))
            })
            .collect()
    };
    let picked: Vec<usize> = (1..header.len())
        .filter(|&i| own_words(i).iter().any(|w| asked.text.contains(w.as_str())))
        .filter(|&i| !row.get(i).is_some_and(|cell| meets_condition(cell)))
        .collect();
    if let [column] = picked[..]
        && !row.get(column).is_some_and(|cell| states(cell))
        && let Some(holding) = (1..row.len()).find(|&i| states(&row[i]))
    {
        return Some(format!(
            "the column {}, not the column {}, of the table row for {}",
            header.get(holding).map_or("", String::as_str),
            header[column],
            row_label(&source.lines[k])
        ));
    }
    // A header cell that is, whole, a name the question writes (llm-awq, mlc-llm, turbomind:
    // the engines a speed table compares) picks its column when it is the only such cell.
    let asked_words: Vec<String> = asked
        .text
        .split(|c: char| !(c.is_ascii_alphanumeric() || "-_.".contains(c)))
        .filter(|w| w.chars().filter(char::is_ascii_alphabetic).count() >= 3)
        .map(str::to_ascii_lowercase)
        .collect();
    let named: Vec<usize> = (1..header.len())
        .filter(|&i| asked_words.contains(&header[i].trim().to_ascii_lowercase()))
        .collect();
    if let [column] = named[..]
        && !row
            .get(column)
            .is_some_and(|cell| states(cell) || meets_condition(cell))
        && let Some(holding) = holding.filter(|&h| h >= 1)
    {
        return Some(format!(
            "the column {}, not the column {}, of the table row for {}",
            header.get(holding).map_or("", String::as_str),
            header[column],
            row_label(&source.lines[k])
        ));
    }
    // Each name the question gives that heads exactly one column picks it, and so does a
    // model size (33B over a table whose columns are 7B, 13B, 33B, 65B). A question may
    // name several (拿 Alpaca-Plus-7B、Plus-13B 和 33B 做对比时，Plus-13B 的…): the value
    // stands in any column it names, and is misplaced only when none of them holds it.
    let names = |cell: &str, q: &Qualifier| match q {
        Qualifier::Name(name) => contains_word(cell, name),
        Qualifier::Value(size) if asked.sizes.iter().any(|s| same_value(*s, *size)) => {
            scan(cell, true).iter().any(|s| match s.fact.key {
                Key::Quantity {
                    value,
                    unit: Unit::Count,
                    ..
                } => same_value(value, *size),
                _ => false,
            })
        }
        Qualifier::Value(_) => false,
    };
    // The first name that picks a column whose cell does not hold the value.
    let mut first_missed: Option<String> = None;
    for q in &asked.qualifiers {
        let mut named = header.iter().enumerate().filter(|(_, h)| names(h, q));
        // The first column labels the rows (its header may name the table: llama.cpp).
        let (Some((column @ 1.., _)), None) = (named.next(), named.next()) else {
            continue;
        };
        if row.iter().any(|cell| names(cell, q)) {
            continue;
        }
        if row
            .get(column)
            .is_some_and(|cell| states(cell) || meets_condition(cell))
        {
            return None;
        }
        first_missed.get_or_insert_with(|| match q {
            Qualifier::Value(size) => size_text(*size),
            Qualifier::Name(name) => name.clone(),
        });
    }
    let (Some(name), Some(holding)) = (first_missed, holding) else {
        return None;
    };
    let under = header.get(holding).map_or("", String::as_str);
    Some(format!(
        "the column {under}, not the column for {name}, of the table row for {}",
        row_label(&source.lines[k])
    ))
}

/// The maximal runs of CJK characters in `text`.
fn cjk_runs(text: &str) -> Vec<String> {
    let mut runs = Vec::new();
    let mut run = String::new();
    for ch in text.chars() {
        if zhiku_text::is_han(ch) {
            run.push(ch);
        } else if !run.is_empty() {
            runs.push(std::mem::take(&mut run));
        }
    }
    if !run.is_empty() {
        runs.push(run);
    }
    runs
}

/// The first cell of a table row, trimmed.
fn row_label(line: &str) -> String {
    line.trim()
        .trim_start_matches('|')
        .split('|')
        .next()
        .unwrap_or("")
        .trim()
        .to_owned()
}

fn not_stated_reason(fact: &Fact, sources: &[Source]) -> String {
    match (&fact.key, fact.kind) {
        (Key::Quantity { value, unit, bare }, _) => {
            // The passages' figures in the same unit, nearest first: what the answer
            // probably misread.
            let mut near: Vec<f64> = Vec::new();
            if !bare {
                for f in sources.iter().flat_map(|s| s.facts.iter().flatten()) {
                    if let Key::Quantity {
                        value: v,
                        unit: u,
                        bare: false,
                    } = f
                        && u == unit
                        && v.is_finite()
                        && !near.iter().any(|n| same_value(*n, *v))
                    {
                        near.push(*v);
                    }
                }
            }
            near.sort_by(|a, b| (a - value).abs().total_cmp(&(b - value).abs()));
            let seen: Vec<String> = near
                .iter()
                .take(3)
                .map(|v| format!("{v}{}", unit.name()))
                .collect();
            if seen.is_empty() {
                format!("no passage states {}", fact.text)
            } else {
                format!(
                    "no passage states {}; they give {}",
                    fact.text,
                    seen.join(", ")
                )
            }
        }
        (
            Key::Setting {
                name,
                value: Some(_),
            },
            _,
        ) if sources
            .iter()
            .any(|s| s.lines.iter().any(|l| contains_word(l, name))) =>
        {
            format!("the passages give {name} another value than {}", fact.text)
        }
        (_, FactKind::Flag) => format!("no passage has the flag or setting {}", fact.text),
        (_, FactKind::Version) => format!("no passage names version {}", fact.text),
        _ => format!("no passage names {}", fact.text),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The token-speed table of LMDeploy's w4a16 guide: a caption, bare cells.
    const SPEED_TABLE: &str = "我们在 NVIDIA GeForce RTX 4090 上分别测试了 4-bit Llama-2-7B-chat 和 \
Llama-2-13B-chat 模型的 token 生成速度。测试配置为 batch size = 1\n\
| model            | llm-awq | mlc-llm | turbomind |\n\
| ---------------- | ------- | ------- | --------- |\n\
| Llama-2-7B-chat  | 112.9   | 159.4   | 206.4     |\n\
| Llama-2-13B-chat | N/A     | 90.7    | 115.8     |";

    #[test]
    fn a_model_size_the_question_names_picks_its_column() {
        let table = "\
| 模型版本 | 7B | 13B | 33B |
| :--- | :---: | :---: | :---: |
| 原模型大小（FP16） | 13 GB | 24 GB | 60 GB |
| 量化后大小（4-bit） | 3.9 GB | 7.8 GB | 17.2 GB |";
        let q = "33B 模型做 4-bit 量化后文件多大？";
        let check = check_answer("约 7.8 GB", &[table], q);
        let reasons: Vec<&str> = check
            .unsupported
            .iter()
            .map(|u| u.reason.as_str())
            .collect();
        assert_eq!(reasons.len(), 1);
        assert!(reasons[0].contains("not the column for 33B"), "{reasons:?}");
        assert_eq!(
            check_answer("约 17.2 GB", &[table], q).verdict,
            Verdict::Supported
        );
        // Without a size, the 4-bit row's cells all stand.
        let q = "做 4-bit 量化后文件多大？";
        assert_eq!(
            check_answer("约 7.8 GB", &[table], q).verdict,
            Verdict::Supported
        );
    }

    #[test]
    fn a_cmake_define_states_its_setting() {
        let passage = "如需使用 CUDA 加速，需要添加环境变量 `CMAKE_ARGS=\"-DGGML_CUBLAS=ON\"`。\n\
                       ```sh\nCMAKE_ARGS=\"-DGGML_CUBLAS=ON\" pip install chatglm-cpp -v\n```";
        let q = "pip 安装 chatglm-cpp 想要 CUDA 加速，CMAKE_ARGS 里要打开哪个选项？";
        for answer in [
            "GGML_CUBLAS=ON",
            "`-DGGML_CUBLAS=ON`",
            "CMAKE_ARGS=\"-DGGML_CUBLAS=ON\"",
        ] {
            let check = check_answer(answer, &[passage], q);
            assert_eq!(check.verdict, Verdict::Supported, "{answer}: {check:?}");
        }
        for answer in ["GGML_CUBLAS=OFF", "-DGGML_CUDA=ON"] {
            let check = check_answer(answer, &[passage], q);
            assert_eq!(
                check.verdict,
                Verdict::UnsupportedKeyFact,
                "{answer}: {check:?}"
            );
        }
    }

    #[test]
    fn a_memory_question_answered_with_another_kind_of_figure_is_unsupported() {
        let passage = "| Model | Size | Avg Score | Total Inference Time |\n| --- | --- | --- | --- |\n\
                       | MiniCPM-V 4.5 | 8B | 74.5 | 7.5h |\n| Qwen2.5-VL | 30B | 70.1 | 9.2h |\n\
                       微调在 4个 A100-SXM4-80G GPUs 上完成，每张卡显存占用 28G。";
        let q = "MiniCPM-V 4.5 跑 OpenCompass 评测时显存占多少？";
        for (answer, why) in [("8B", "8B"), ("4个 A100-SXM4-80G GPUs。", "A100-SXM4-80G")] {
            let check = check_answer(answer, &[passage], q);
            assert_eq!(
                check.verdict,
                Verdict::UnsupportedKeyFact,
                "{answer}: {check:?}"
            );
            let u = &check.unsupported[0];
            assert_eq!(u.why, Unsupported::OtherKind, "{check:?}");
            assert!(u.reason.contains(why), "{check:?}");
            // Not a unit to drop: the figure answers another question.
            assert_eq!(without_unstated_units(answer, &check), None);
        }
        for answer in ["28G", "每张卡 28G，共 4个 A100-SXM4-80G GPUs。", "28"] {
            let check = check_answer(answer, &[passage], q);
            assert_eq!(check.verdict, Verdict::Supported, "{answer}: {check:?}");
        }
        // Another question may be answered with a size.
        let check = check_answer("30B", &[passage], "Qwen2.5-VL 的参数量是多少？");
        assert_eq!(check.verdict, Verdict::Supported, "{check:?}");
    }

    /// A table's `LLM Size` column gives the size of the model's language model, not of the
    /// model: CogVLM2-LLaMA3-Chinese's OCRbench score answers for its 19B chat model. A size
    /// in any other column still tells rows apart.
    #[test]
    fn a_size_under_a_column_of_the_models_llm_is_not_the_models_size() {
        let table = "| Model | Open Source | LLM Size | OCRbench | MMMU |\n\
                     | --- | --- | --- | --- | --- |\n\
                     | CogVLM2-LLaMA3 (Ours) | ✅ | 8B | 756 | 44.3 |\n\
                     | CogVLM2-LLaMA3-Chinese (Ours) | ✅ | 8B | **780** | 42.8 |";
        let q = "中文版 CogVLM2（cogvlm2-llama3-chinese-chat-19B）在 OCRbench 上多少分？";
        let check = check_answer("780", &[table], q);
        assert_eq!(check.verdict, Verdict::Supported, "{check:?}");
        // The same table with the size as the model's own column: 8B is not 19B.
        let sized = table.replace("LLM Size", "Size");
        let check = check_answer("780", &[sized.as_str()], q);
        assert_eq!(check.verdict, Verdict::UnsupportedKeyFact, "{check:?}");
        assert!(check.unsupported[0].reason.contains("8B"), "{check:?}");
    }

    #[test]
    fn a_duration_question_answered_with_another_kind_of_figure_is_unsupported() {
        let passage = "MiniCPM-V 4.5 可以实现业界领先的高帧率（最高 10FPS）视频理解。\n\
                       | Model | Size | Total Inference Time |\n| --- | --- | --- |\n\
                       | MiniCPM-V 4.5 | 8B | 0.26h |";
        let q = "MiniCPM-V 4.5 跑完 Video-MME 评测总共推理了多长时间？";
        for (answer, why) in [
            ("总共推理了约 10FPS 的视频理解性能。", "10FPS"),
            ("8B", "8B"),
        ] {
            let check = check_answer(answer, &[passage], q);
            let u = check
                .unsupported
                .first()
                .unwrap_or_else(|| panic!("{answer}: {check:?}"));
            assert_eq!(u.why, Unsupported::OtherKind, "{check:?}");
            assert!(
                u.reason.contains("how long") && u.reason.contains(why),
                "{check:?}"
            );
        }
        for answer in ["0.26h", "约 15.6 分钟"] {
            let check = check_answer(answer, &[passage], q);
            assert_eq!(check.verdict, Verdict::Supported, "{answer}: {check:?}");
        }
        // A length of context is not a time.
        let check = check_answer("8B", &[passage], "MiniCPM-V 4.5 支持多长的上下文？");
        assert_eq!(check.verdict, Verdict::Supported, "{check:?}");
    }

    #[test]
    fn a_row_marked_as_continuing_the_one_above_is_that_rows_model() {
        // LMDeploy's kv-cache table, two passages merged: each model named once, the rows
        // under it marked `-`.
        let table = "| -                 | int4    | ratio 0.8 | 20.81 |\n\
| llama2-chat-13b   | fp16    | ratio 0.9 | 8.55  |\n\
| -                 | int8    | ratio 0.9 | 10.96 |\n\
| -                 | int4    | ratio 0.9 | 11.91 |";
        let q = "llama2-chat-13b 用 kv int8 的时候 RPS 能到多少？";
        assert_eq!(
            check_answer("10.96", &[table], q).verdict,
            Verdict::Supported
        );
        for (other, why) in [
            ("11.91", "not the row for int8"),
            ("8.55", "not the row for int8"),
            ("20.81", "not the row for llama2-chat-13b"),
        ] {
            let check = check_answer(other, &[table], q);
            assert_eq!(check.verdict, Verdict::UnsupportedKeyFact, "{other}");
            assert!(check.unsupported[0].reason.contains(why), "{check:?}");
        }
    }

    #[test]
    fn a_unit_no_passage_states_is_dropped_and_the_bare_figure_checked_again() {
        let question = "llm-awq 跑 4-bit 的 Llama-2-7B-chat 在 4090 上速度是多少？";
        let answer = "llm-awq 上 4-bit Llama-2-7B-chat 的速度是 112.9 ms/tok。";
        let check = check_answer(answer, &[SPEED_TABLE], question);
        assert_eq!(check.verdict, Verdict::UnsupportedKeyFact, "{check:?}");
        let bare = without_unstated_units(answer, &check).expect("the unit is dropped");
        assert_eq!(bare, "llm-awq 上 4-bit Llama-2-7B-chat 的速度是 112.9。");
        let again = check_answer(&bare, &[SPEED_TABLE], question);
        assert_eq!(again.verdict, Verdict::Supported, "{again:?}");

        // An invented figure stays unsupported once bare: the caller withdraws it as before.
        let invented = "速度是 2027.0 tok/s。";
        let check = check_answer(invented, &[SPEED_TABLE], question);
        let bare = without_unstated_units(invented, &check).expect("the unit is dropped");
        let again = check_answer(&bare, &[SPEED_TABLE], question);
        assert_eq!(again.verdict, Verdict::UnsupportedKeyFact, "{again:?}");

        // Another column's figure stays another column's once bare: the header cell the
        // question names (llm-awq) picks the column.
        let neighbour = "速度是 159.4 ms/tok。";
        let check = check_answer(neighbour, &[SPEED_TABLE], question);
        let again = without_unstated_units(neighbour, &check)
            .map(|bare| check_answer(&bare, &[SPEED_TABLE], question));
        assert!(
            again
                .as_ref()
                .is_none_or(|c| c.verdict == Verdict::UnsupportedKeyFact),
            "{again:?}"
        );

        // A one-digit number is no key fact alone: nothing to check it by, so it keeps its
        // unit (and its withdrawal).
        let small = "需要 7 GB 显存。";
        let check = check_answer(small, &[SPEED_TABLE], question);
        assert_eq!(check.verdict, Verdict::UnsupportedKeyFact);
        assert_eq!(without_unstated_units(small, &check), None);

        // A question naming what no passage states (the table is of an RTX 4090, the
        // question of a 3090) is a near miss: its figure keeps its unit and its withdrawal.
        let near_miss = "llm-awq 跑 4-bit 的 Llama-2-7B-chat 在 RTX 3090 上速度是多少？";
        let check = check_answer("112.9 ms/tok", &[SPEED_TABLE], near_miss);
        assert_eq!(check.verdict, Verdict::UnsupportedKeyFact, "{check:?}");
        assert!(!check.question_unstated.is_empty(), "{check:?}");
        assert_eq!(without_unstated_units("112.9 ms/tok", &check), None);

        // A figure stated with its unit is not touched.
        let stated = "最低需要 13 GB 显存。";
        let check = check_answer(stated, &["FP16 推理最低需要 13GB 显存。"], "");
        assert_eq!(check.verdict, Verdict::Supported);
        assert_eq!(without_unstated_units(stated, &check), None);
    }

    fn unsupported(answer: &str, passages: &[&str], question: &str) -> Vec<String> {
        check_answer(answer, passages, question)
            .unsupported
            .into_iter()
            .map(|u| u.fact.text)
            .collect()
    }

    fn texts(unsupported: &[UnsupportedFact]) -> Vec<&str> {
        unsupported.iter().map(|u| u.fact.text.as_str()).collect()
    }

    fn verdict(answer: &str, passages: &[&str], question: &str) -> Verdict {
        check_answer(answer, passages, question).verdict
    }

    fn assert_verdicts(passages: &[&str], question: &str, cases: &[(&str, Verdict)]) {
        for (answer, expected) in cases {
            assert_eq!(verdict(answer, passages, question), *expected, "{answer}");
        }
    }

    fn kinds(text: &str) -> Vec<(String, FactKind)> {
        extract_facts(text)
            .into_iter()
            .map(|f| (f.text, f.kind))
            .collect()
    }

    // --- extraction ---

    #[test]
    fn extracts_each_kind_of_key_fact() {
        let facts = kinds(
            "用 `--quantize 4` 加载 ChatGLM-6B 的 INT4 模型需要 6GB 显存，transformers 4.49.0，\
             每秒 128 token，两张卡，lora_alpha=32，模板填 `vicuna`，共 2048 个。",
        );
        let expect = [
            ("--quantize 4", FactKind::Flag),
            ("ChatGLM-6B", FactKind::ModelName),
            ("INT4", FactKind::ModelName),
            ("6GB", FactKind::Quantity),
            ("4.49.0", FactKind::Version),
            ("128 token", FactKind::Quantity),
            ("两张", FactKind::Quantity),
            ("lora_alpha=32", FactKind::Flag),
            ("vicuna", FactKind::Identifier),
            ("2048", FactKind::Number),
        ];
        for (text, kind) in expect {
            assert!(
                facts.iter().any(|(t, k)| t == text && *k == kind),
                "{text} as {kind:?} not in {facts:?}"
            );
        }
        // List markers, single digits and plain prose are not key facts.
        assert!(kinds("1. 先安装依赖\n2. 再运行 python 脚本").is_empty());
    }

    // --- one test per rule ---

    #[test]
    fn numbers_with_units_match_across_spellings_and_only_their_value() {
        let passage =
            "INT4 量化级别下最低只需 6 GB 显存，生成速度 24.4 tokens/s，首 Token 延迟 0.16s。";
        for answer in [
            "需要 6GB 显存",
            "需要 6G 显存",
            "需要 6 GiB",
            "需要６ＧＢ显存",
            "速度是 24.4 token/s",
            "每秒 24.4 token",
            "每秒能输出 24.4 tokens",
            "每秒大约生成 24.4 个 token",
            "延迟 0.16 s",
        ] {
            assert_eq!(
                verdict(answer, &[passage], ""),
                Verdict::Supported,
                "{answer}"
            );
        }
        assert_eq!(unsupported("需要 6MB", &[passage], ""), ["6MB"]);
        assert_eq!(unsupported("需要 16GB", &[passage], ""), ["16GB"]);
        assert_eq!(
            unsupported("生成速度能达到每秒 128 token", &[passage], ""),
            ["128 token"]
        );
        // 每秒 of another clause does not make a count a rate.
        assert_eq!(
            unsupported("每秒很快，共生成 24.4 token", &[passage], ""),
            ["24.4 token"]
        );
        // 62 亿 and 6.2B are one count.
        assert!(unsupported("有 6.2B 参数", &["具有 62 亿参数"], "").is_empty());
    }

    #[test]
    fn versions_must_match_exactly_with_or_without_v() {
        let passage = "本流程将使用 v0.7.0 Release 版本；transformers 至少 4.49.0，推荐 4.50.0。";
        assert!(unsupported("用的是 0.7.0", &[passage], "").is_empty());
        assert!(unsupported("用的是 v0.7.0，transformers 4.49.0", &[passage], "").is_empty());
        assert_eq!(unsupported("用的是 v0.8.0", &[passage], ""), ["v0.8.0"]);
        assert_eq!(unsupported("至少 4.49.1", &[passage], ""), ["4.49.1"]);
    }

    #[test]
    fn flags_and_settings_need_their_name_and_value_in_a_passage() {
        let passage = "python3 build.py -m chatglm3_6b --world_size 2 --output_dir trt_engines\n\
                       请使用 `neftune_noise_alpha: 5` 参数启用 NEFTune。";
        assert!(unsupported("加上 `--world_size 2`", &[passage], "").is_empty());
        assert!(unsupported("加上 --world-size 2", &[passage], "").is_empty());
        assert!(unsupported("设置 neftune_noise_alpha: 5", &[passage], "").is_empty());
        assert_eq!(
            unsupported("加上 --world_size 4", &[passage], ""),
            ["--world_size 4"]
        );
        assert_eq!(
            unsupported("加上 --quantize 4 即可", &[passage], ""),
            ["--quantize 4"]
        );
        assert_eq!(unsupported("用 `--lora`", &[passage], ""), ["--lora"]);
        let reason = &check_answer("neftune_noise_alpha=10", &[passage], "").unsupported[0].reason;
        assert!(reason.contains("another value"), "{reason}");
    }

    #[test]
    fn model_names_and_identifiers_match_case_and_separator_blind() {
        let passage = "可以选择 chatglm3_6b 或 THUDM/chatglm3-6b-32k，量化后 ChatGLM3-6B 用 Int4；默认用 FAISS。";
        assert!(unsupported("ChatGLM3-6B 支持 INT4，向量库 FAISS", &[passage], "").is_empty());
        assert!(unsupported("模型 ChatGLM3-6B-32K", &[passage], "").is_empty());
        assert_eq!(
            unsupported("推荐 Qwen2.5-1.5B 和 Milvus", &[passage], ""),
            ["Qwen2.5-1.5B", "Milvus"]
        );
        assert_eq!(
            unsupported("模板参数应该填 `vicuna`", &[passage], ""),
            ["vicuna"]
        );
        // A name inside a longer one is not a different name, but a prefix of a word is.
        assert_eq!(unsupported("ChatGLM3-6", &[passage], ""), ["ChatGLM3-6"]);
    }

    #[test]
    fn chinese_numerals_are_compared_with_digits() {
        let passage = "LORA 微调: 1张显卡，占用 14082MiB；SFT 全量微调: 4张显卡平均分配，需要 6GB 显存 Need 2 GPUs。";
        assert!(unsupported("需要六 GB 显存", &[passage], "").is_empty());
        assert!(unsupported("要四张显卡", &[passage], "").is_empty());
        assert!(unsupported("用两块 GPU", &[passage], "").is_empty());
        assert!(unsupported("单卡即可", &[passage], "").is_empty());
        assert_eq!(unsupported("要三张显卡", &[passage], ""), ["三张"]);
        assert_eq!(unsupported("需要十三GB", &[passage], ""), ["十三GB"]);
        assert!(unsupported("需要十三GB", &["FP16 需要 13 GB"], "").is_empty());
        // 一 before a measure word is an article.
        assert!(extract_facts("给出一张图").is_empty());
    }

    #[test]
    fn the_question_supports_its_own_facts() {
        let question = "在 INT4 量化级别下部署 ChatGLM-6B 最低需要多少显存？";
        assert!(
            unsupported(
                "ChatGLM-6B 在 INT4 下需要 6GB",
                &["最低只需 6GB 显存"],
                question
            )
            .is_empty()
        );
    }

    // --- the issue's failures ---

    const CHATGLM_TABLE: &str = "| **量化等级**   | **最低 GPU 显存**（推理） | **最低 GPU 显存**（高效参数微调） |\n\
        | -------------- | ------------------------- | --------------------------------- |\n\
        | FP16（无量化） | 13 GB                     | 14 GB                             |\n\
        | INT8           | 8 GB                     | 9 GB                             |\n\
        | INT4           | 6 GB                      | 7 GB                              |";

    #[test]
    fn an_invented_72g_is_unsupported() {
        let passages = [
            "| GLM-4-9B-0414     | lora                 | 22G (Each GPU, Need 1 GPU)   |\n\
             | GLM-4-9B-0414     | SFT (Zero3 method)   | 55G (Each GPU, Need 4 GPUs)  |",
            "GLM-4-32B-0414 系列模型，320 亿参数。",
        ];
        let check = check_answer(
            "最少需要准备 72G显存",
            &passages,
            "用 LLaMA-Factory 做 GLM-4-9B-0414 的 LoRA 微调要准备多少显存？",
        );
        assert_eq!(check.verdict, Verdict::UnsupportedKeyFact);
        assert_eq!(check.unsupported.len(), 1);
        let reason = &check.unsupported[0].reason;
        assert!(
            reason.contains("72G") && reason.contains("22GB"),
            "{reason}"
        );
    }

    #[test]
    fn a_number_from_the_neighbouring_row_is_unsupported() {
        let question = "INT4 量化下推理 ChatGLM-6B 最少要多少显存？";
        let wrong = check_answer("INT4 量化下需要 13GB 显存。", &[CHATGLM_TABLE], question);
        assert_eq!(wrong.verdict, Verdict::UnsupportedKeyFact);
        let reason = &wrong.unsupported[0].reason;
        assert!(
            reason.contains("fp16") && reason.contains("int4"),
            "{reason}"
        );
        let right = check_answer("INT4 量化下需要 6GB 显存。", &[CHATGLM_TABLE], question);
        assert_eq!(right.verdict, Verdict::Supported, "{right:?}");
        // Without a qualifier in the question, any row states it.
        assert_eq!(
            check_answer(
                "需要 13GB 显存",
                &[CHATGLM_TABLE],
                "ChatGLM-6B 要多少显存？"
            )
            .verdict,
            Verdict::Supported
        );
        // Stated in prose, a number is supported unless its line is about another bit width.
        let prose = "默认情况下，运行上述代码需要大概 13GB 显存。";
        assert_eq!(
            verdict("需要 13GB", &[CHATGLM_TABLE, prose], question),
            Verdict::Supported
        );
        let fp16 = "默认情况下，模型以 FP16 精度加载，运行上述代码需要大概 13GB 显存。";
        assert_eq!(
            verdict("需要 13GB", &[CHATGLM_TABLE, fp16], question),
            Verdict::UnsupportedKeyFact
        );
    }

    #[test]
    fn a_number_from_a_table_under_another_models_heading_is_unsupported() {
        let passage = "#### GLM-4-32B-0414\n\n| 精度 | 显卡数量 | 显存占用 | 输入token数 |\n\
            |------|------|-------|----------|\n| BF16 | 1 | 68 GB | 1000 |\n| BF16 | 1 | 72 GB | 8000 |\n\n\
            #### GLM-4-9B-0414\n\n| 精度 | 显卡数量 | 显存占用 | 输入token数 |\n\
            |------|------|-------|----------|\n| BF16 | 1 | 19 GB | 1000 |\n| BF16 | 1 | 25 GB | 8000 |";
        let question = "GLM-4-9B-0414 用 BF16、输入 8000 个 token 时显存占用多少？";
        let wrong = check_answer("显存占用为 72 GB。", &[passage], question);
        assert_eq!(wrong.verdict, Verdict::UnsupportedKeyFact);
        let reason = &wrong.unsupported[0].reason;
        assert!(reason.contains("glm-4-32b-0414"), "{reason}");
        // 19 GB is the right section but the 1000-token row: the question's 8000 picks the row.
        assert_verdicts(
            &[passage],
            question,
            &[
                ("显存占用为 19 GB。", Verdict::UnsupportedKeyFact),
                ("显存占用为 25 GB。", Verdict::Supported),
            ],
        );
    }

    #[test]
    fn misplaced_figures_are_told_from_invented_ones() {
        let question = "INT4 量化下推理 ChatGLM-6B 最少要多少显存？";
        let why = |answer: &str, off: &[bool], passages: &[&str]| -> Vec<Unsupported> {
            check_answer_on_subject(answer, passages, off, question)
                .unsupported
                .iter()
                .map(|u| u.why)
                .collect()
        };
        assert_eq!(
            why("需要 13GB", &[], &[CHATGLM_TABLE]),
            [Unsupported::OtherRow]
        );
        assert_eq!(
            why("需要 72GB", &[], &[CHATGLM_TABLE]),
            [Unsupported::NotStated]
        );
        let other = "Qwen 的 INT4 推理需要 48GB 显存。";
        assert_eq!(
            why("需要 48GB", &[false, true], &[CHATGLM_TABLE, other]),
            [Unsupported::OtherDocument]
        );
        // Said of another model size, the line itself is off the question's subject.
        let sized = "Qwen-72B 的 INT4 推理需要 48GB 显存。";
        assert_eq!(
            why("需要 48GB", &[false, true], &[CHATGLM_TABLE, sized]),
            [Unsupported::OtherRow]
        );
        assert!(Unsupported::OtherRow.is_misplaced() && Unsupported::OtherDocument.is_misplaced());
        assert!(!Unsupported::NotStated.is_misplaced());
    }

    #[test]
    fn focus_keeps_the_rows_and_documents_the_question_names() {
        let question = "INT4 量化下推理 ChatGLM-6B 最少要多少显存？";
        let other = "Qwen-72B 的 INT4 推理需要 48GB 显存。";
        let focused = focus_passages(&[CHATGLM_TABLE, other], &[false, true], question);
        assert_eq!(focused.len(), 2);
        assert_eq!(focused[1], None, "the other model's document is dropped");
        let table = focused[0]
            .as_deref()
            .expect("the question's document stays");
        // The row that stays is written cell by cell under its columns' names.
        assert_eq!(
            table,
            "**量化等级**: INT4\n- **最低 GPU 显存**（推理）: 6 GB\n- **最低 GPU 显存**（高效参数微调）: 7 GB"
        );
        // After focusing, the right row's figure is the only one left, and it verifies.
        let right = check_answer("需要 6GB", &[table], question);
        assert_eq!(right.verdict, Verdict::Supported, "{right:?}");
        // Nothing to drop: the passage comes back as it was.
        let unqualified = focus_passages(&[CHATGLM_TABLE], &[], "ChatGLM-6B 要多少显存？");
        assert_eq!(unqualified, [Some(CHATGLM_TABLE.to_owned())]);
        // A table under another model's heading loses its rows, keeps its header.
        let sections = "#### GLM-4-32B-0414\n\n| 精度 | 显存占用 |\n|---|---|\n| BF16 | 68 GB |\n\n\
            #### GLM-4-9B-0414\n\n| 精度 | 显存占用 |\n|---|---|\n| BF16 | 19 GB |";
        let focused = focus_passages(&[sections], &[], "GLM-4-9B-0414 用 BF16 显存占用多少？");
        let text = focused[0].as_deref().unwrap_or_default();
        // The question's table lost nothing: it stays as it was.
        assert!(
            text.contains("| BF16 | 19 GB |") && !text.contains("68 GB"),
            "{text}"
        );
        // The other model's table keeps its heading and header, no row.
        assert!(
            text.contains("#### GLM-4-32B-0414\n\n| 精度 | 显存占用 |\n|---|---|\n\n"),
            "{text}"
        );
    }

    /// Cell by cell, a figure is checked against its own cell: a bare number from the token
    /// column does not become gigabytes because another cell of the row holds some.
    #[test]
    fn a_focused_row_checks_each_figure_against_its_cell() {
        let passage = "| 精度 | 显存占用 | 输入token数 |\n|---|---|---|\n\
            | BF16 | 25 GB | 8000 |\n| INT4 | 10 GB | 8000 |";
        let question = "BF16 输入 8000 token 时显存占用多少？";
        let focused = focus_passages(&[passage], &[], question);
        let text = focused[0].as_deref().unwrap_or_default();
        assert_eq!(text, "精度: BF16\n- 显存占用: 25 GB\n- 输入token数: 8000");
        assert_verdicts(
            &[text],
            question,
            &[
                ("25 GB", Verdict::Supported),
                ("8000 GB", Verdict::UnsupportedKeyFact),
                ("10 GB", Verdict::UnsupportedKeyFact),
            ],
        );
        // A second reading is held to units written out: a bare number beside a unit in
        // prose is not that many gigabytes; a cell whose column names the unit is.
        let prose = "记录输入长度分别为256、512和8192的显存占用（GB）。";
        assert_eq!(verdict("8192 GB", &[prose], question), Verdict::Supported);
        let second = |answer: &str, passage: &str| {
            check_second_reading(answer, &[passage], &[], question).verdict
        };
        assert_eq!(second("8192 GB", prose), Verdict::UnsupportedKeyFact);
        assert_eq!(second("25 GB", text), Verdict::Supported);
        assert_eq!(second("8000 GB", text), Verdict::UnsupportedKeyFact);
        assert_eq!(second("需要 40 GB", "- 显存（GB）: 40"), Verdict::Supported);
        // In the whole table too: 8000 is the token count the question gives (a condition
        // the row meets), so the memory column is the one asked, and 8000 is not in it.
        assert_eq!(
            verdict("8000 GB", &[passage], question),
            Verdict::UnsupportedKeyFact
        );
        assert_eq!(verdict("25 GB", &[passage], question), Verdict::Supported);
        // An escaped pipe stays inside its cell.
        assert_eq!(row_cells("| a \\| b | c |"), ["a \\| b", "c"]);
    }

    #[test]
    fn a_name_heading_one_column_picks_its_cell() {
        let passage = "| llama.cpp | F16 | Q2_K | Q4_0 | Q4_K |\n|---|---|---|---|---|\n\
            | Size | 12.91G | 2.41G | 3.69G | 4.08G |\n| PPL | 9.128 | 11.107 | 9.576 | 9.290 |";
        let question = "Chinese-LLaMA-2-7B 在 llama.cpp 里 Q4_K 量化后文件有多大？";
        assert_verdicts(
            &[passage],
            question,
            &[
                ("4.08G", Verdict::Supported),
                ("12.91G", Verdict::UnsupportedKeyFact),
                ("3.69G", Verdict::UnsupportedKeyFact),
            ],
        );
        let reason = &check_answer("12.91G", &[passage], question).unsupported[0];
        assert!(
            reason.reason.contains("f16") && reason.reason.contains("q4-k"),
            "{reason:?}"
        );
        assert_eq!(reason.why, Unsupported::OtherRow);
        // Without a name for a column, any cell of the row states it.
        assert_eq!(
            verdict("12.91G", &[passage], "量化后文件有多大？"),
            Verdict::Supported
        );
        // A name that heads no column, or several, picks none.
        let two = "| | INT4 推理 | INT4 微调 |\n|---|---|---|\n| ChatGLM-6B | 6 GB | 7 GB |";
        assert_eq!(
            verdict("7 GB", &[two], "INT4 要多少显存？"),
            Verdict::Supported
        );
    }

    #[test]
    fn a_question_naming_several_columns_takes_the_figure_of_any_of_them() {
        // llm-docs-zh4's w12: the question names all three compared models and asks of one.
        let passage = "| 测试任务 | 样例数 | Alpaca-Plus-7B | Alpaca-Plus-13B | Alpaca-33B |\n\
            |---|---|---|---|---|\n\
            | **总平均分** | 200 | 75.3 | 79.4 | 82.0 |\n\
            | 知识问答 | 20 | 70.5 | 79.5 | 82.3 |";
        let question = "拿 Alpaca-Plus-7B、Alpaca-Plus-13B 和 Alpaca-33B 做效果对比时，\
            Alpaca-Plus-13B 的总平均分是多少？";
        assert_verdicts(
            &[passage],
            question,
            &[
                ("79.4", Verdict::Supported),
                // A column the question names, not another row's figure.
                ("75.3", Verdict::Supported),
            ],
        );
        // A column the question does not name stays another column's.
        assert_eq!(
            verdict(
                "82.0",
                &[passage],
                "Alpaca-Plus-7B 和 Alpaca-Plus-13B 的总平均分是多少？"
            ),
            Verdict::UnsupportedKeyFact
        );
    }

    #[test]
    fn a_bit_width_in_the_question_picks_its_row() {
        let passage = "| 方法 | 精度 | 7B | 14B |\n| ---- | ---- | ---- | ---- |\n\
            | Freeze/LoRA | 16 | 16GB | 32GB |\n| QLoRA | 8 | 10GB | 20GB |\n\
            | QLoRA | 4 | 6GB | 12GB |\n| QLoRA | 2 | 4GB | 8GB |";
        let question = "用 4-bit QLoRA 微调 7B 模型需要多少显存？";
        assert_verdicts(
            &[passage],
            question,
            &[
                ("大约需要 6GB。", Verdict::Supported),
                ("大约需要 10GB。", Verdict::UnsupportedKeyFact),
            ],
        );
    }

    /// The kind of reason a figure of `answer` got, or None when it is supported.
    fn misplaced(answer: &str, passages: &[&str], question: &str) -> Option<Unsupported> {
        check_answer(answer, passages, question)
            .unsupported
            .first()
            .map(|u| u.why)
    }

    #[test]
    fn a_figure_said_of_another_model_size_or_bit_width_is_unsupported() {
        let memory = "# 4-bit 量化的 InternLM3 8B 大约会消耗 8GB 显存.";
        assert_eq!(
            misplaced(
                "大约 8GB",
                &[memory],
                "InternLM3 8B 按 8bit 加载要多少显存？"
            ),
            Some(Unsupported::OtherRow)
        );
        assert_eq!(
            misplaced(
                "大约 8GB",
                &[memory],
                "InternLM3 8B 用 INT8 加载要多少显存？"
            ),
            Some(Unsupported::OtherRow)
        );
        assert_eq!(
            misplaced(
                "大约 8GB",
                &[memory],
                "InternLM3 8B 按 4bit 加载要多少显存？"
            ),
            None
        );
        let tuning = "XTuner 支持在 8GB 显存下微调 7B 模型，同时也支持多节点微调更大的模型。";
        assert_eq!(
            misplaced(
                "8GB",
                &[tuning],
                "用 XTuner 微调 InternLM2.5-20B 最少要多少显存？"
            ),
            Some(Unsupported::OtherRow)
        );
        assert_eq!(
            misplaced("8GB", &[tuning], "用 XTuner 最少多大显存能微调 7B 模型？"),
            None
        );
        // A line that names no size or bit width says nothing against the question.
        assert_eq!(
            misplaced(
                "8GB",
                &["最少需要 8GB 显存。"],
                "InternLM2.5-20B 要多少显存？"
            ),
            None
        );
        // Nor does a line that names the question's beside another.
        let both = "7B 模型需要 16GB，20B 模型需要 40GB。";
        assert_eq!(misplaced("40GB", &[both], "20B 模型要多少显存？"), None);
        // A name rounds its model's size.
        let rounded = "具有 62 亿参数，INT4 量化级别下最低只需 6GB 显存。";
        assert_eq!(
            misplaced("6GB", &[rounded], "ChatGLM-6B 用 INT4 要多少显存？"),
            None
        );
        assert_eq!(
            misplaced("6GB", &[rounded], "ChatGLM-13B 用 INT4 要多少显存？"),
            Some(Unsupported::OtherRow)
        );
    }

    #[test]
    fn a_row_for_another_model_is_unsupported_when_no_row_is_the_questions() {
        let base = "| 模型 | 最低显存 | 推荐 GPU |\n|:--|:--|:--|\n\
            | Yi-6B-200K | 50 GB | 1 x A800 (80 GB) |\n| Yi-9B | 20 GB | 1 x RTX 4090 (24 GB) |\n\
            | Yi-34B-200K | 200 GB | 4 x A800 (80 GB) |";
        assert_eq!(
            misplaced("20 GB", &[base], "部署 Yi-9B-200K 最低需要多少显存？"),
            Some(Unsupported::OtherRow)
        );
        assert_eq!(
            misplaced("20 GB", &[base], "部署 Yi-9B 最低需要多少显存？"),
            None
        );
        assert_eq!(misplaced("200 GB", &[base], "Yi-34B-200K 最低显存？"), None);
        let tools = "| 模型 | 是否集成工具 | MATH |\n| :-: | :-: | :-: |\n\
            | InternLM2-Chat-20B | w/ | 51.2 |\n| InternLM2.5-7B-Chat | w/ | 63.0 |";
        assert_eq!(
            misplaced(
                "63.0",
                &[tools],
                "InternLM2.5-20B-Chat 集成工具后 MATH 多少？"
            ),
            Some(Unsupported::OtherRow)
        );
        assert_eq!(
            misplaced(
                "63.0",
                &[tools],
                "InternLM2.5-7B-Chat 集成工具后 MATH 多少？"
            ),
            None
        );
        // In a table whose rows are models, a row for a model without a size is another
        // model's too.
        let with_gpt4 = format!("{tools}\n| gpt-4-0125-preview | w/o | 64.2 |");
        assert_eq!(
            misplaced(
                "64.2",
                &[&with_gpt4],
                "InternLM2.5-20B-Chat 集成工具后 MATH 多少？"
            ),
            Some(Unsupported::OtherRow)
        );
        // Where rows are not models (GPUs), a row names no other model.
        let speeds =
            "| GPU | 速度 |\n|---|---|\n| A100 | 30 tokens/s |\n| RTX 4090 | 20 tokens/s |";
        assert_eq!(
            misplaced("30 tokens/s", &[speeds], "Qwen-7B 在 A100 上的生成速度？"),
            None
        );
        // A row for a variant of the question's model (its base or chat model) is its row.
        let scores = "| | GSM8K | MATH |\n|:-:|:-:|:-:|\n\
            | **XVERSE-13B** | 18.20 | 2.18 |\n| **Baichuan2-13B-Base** | 52.77 | 10.08 |";
        assert_eq!(
            misplaced("52.77", &[scores], "Baichuan2-13B 的 GSM8K 多少？"),
            None
        );
        assert_eq!(
            misplaced(
                "18.20",
                &[scores],
                "Baichuan2-13B-Chat-4bits 的 GSM8K 多少？"
            ),
            Some(Unsupported::OtherRow)
        );
        assert_eq!(
            misplaced(
                "52.77",
                &[scores],
                "Baichuan2-13B-Chat-4bits 的 GSM8K 多少？"
            ),
            Some(Unsupported::OtherRow)
        );
    }

    #[test]
    fn a_passage_cut_from_a_tables_middle_starts_with_a_row() {
        // No header: the first line is a row like the others, and is held to the question.
        let rows = "| **XVERSE-13B**         |   18.20   | 2.18  | 15.85 |  16.80   |\n\
            | **Baichuan-13B-Base**  |   26.76   | 4.84  | 11.59 |  22.80   |\n\
            | **Baichuan2-13B-Base** |   52.77   | 10.08 | 17.07 |  30.20   |";
        let question = "Baichuan2-13B-Base 在 GSM8K 上的成绩是多少？";
        assert_eq!(
            misplaced("15.85", &[rows], question),
            Some(Unsupported::OtherRow)
        );
        assert_eq!(misplaced("52.77", &[rows], question), None);
    }

    #[test]
    fn an_html_row_carries_the_cells_that_span_it() {
        let rows = "<td>11.20GB</td>\n    </tr>\n    <tr>\n        <td>Int4</td>\n        <td>50.09</td>\n\
            <td>8.21GB</td>\n    </tr>\n    <tr>\n        <td rowspan=\"3\">72B</td>\n        <td>BF16</td>\n\
            <td>8.48</td>\n        <td>144.69GB (2xA100)</td>\n    </tr>\n    <tr>\n        <td>Int8</td>\n\
            <td>9.05</td>\n        <td>81.27GB (2xA100)</td>\n    </tr>\n    <tr>\n        <td>Int4</td>\n\
            <td>11.32</td>\n        <td>48.86GB</td>\n    </tr>\n    <tr>\n        <td>72B + vLLM</td>\n\
            <td>BF16</td>\n        <td>17.60</td>\n        <td>2xA100</td>\n    </tr>\n</table>";
        let question = "Qwen-7B-Chat 的 Int4 模型生成 2048 个 token 时显存占用多少？";
        // The 72B rows below the spanning cell are 72B's; the 7B row cut off above names no size.
        assert_eq!(
            misplaced("48.86GB", &[rows], question),
            Some(Unsupported::OtherRow)
        );
        assert_eq!(misplaced("8.21GB", &[rows], question), None);
        // Another bit width in the same model's rows.
        assert_eq!(
            misplaced(
                "81.27GB",
                &[rows],
                "Qwen-72B-Chat 的 Int4 模型显存占用多少？"
            ),
            Some(Unsupported::OtherRow)
        );
        assert_eq!(
            misplaced(
                "48.86GB",
                &[rows],
                "Qwen-72B-Chat 的 Int4 模型显存占用多少？"
            ),
            None
        );
    }

    #[test]
    fn a_bit_width_no_row_holds_leaves_the_others_rows_unsupported() {
        let memory = "| Precision | Baichuan2-7B | Baichuan2-13B |\n|---|:-:|:-:|\n\
            | bf16 / fp16 | 15.3 | 27.5 |\n| 8bits | 8.0 | 16.1 |\n| 4bits | 5.1 | 8.6 |";
        assert_eq!(
            misplaced("8.6", &[memory], "Baichuan2-13B 做 3bits 量化要多少显存？"),
            Some(Unsupported::OtherRow)
        );
        assert_eq!(
            misplaced("16.1", &[memory], "Baichuan2-13B 做 8bits 量化要多少显存？"),
            None
        );
        assert_eq!(
            misplaced("27.5", &[memory], "Baichuan2-13B 用 fp16 要多少显存？"),
            None
        );
    }

    #[test]
    fn a_column_named_in_chinese_picks_its_cell() {
        let table = "| **量化等级** | **最低 GPU 显存**（推理） | **最低 GPU 显存**（高效参数微调） |\n\
            | -------------- | ------------------------- | --------------------------------- |\n\
            | FP16（无量化） | 13 GB | 14 GB |\n| INT8 | 8 GB | 9 GB |\n| INT4 | 6 GB | 7 GB |";
        let tuning = "ChatGLM-6B 不做量化、按 FP16 做高效参数微调的话，最低需要多大显存？";
        assert_eq!(misplaced("14 GB", &[table], tuning), None);
        assert_eq!(
            misplaced("13 GB", &[table], tuning),
            Some(Unsupported::OtherRow)
        );
        let inference = "INT4 量化推理最低要多少显存？";
        assert_eq!(misplaced("6 GB", &[table], inference), None);
        assert_eq!(
            misplaced("7 GB", &[table], inference),
            Some(Unsupported::OtherRow)
        );
        // Naming neither column's own words, the question leaves the column open.
        assert_eq!(misplaced("7 GB", &[table], "INT4 最低要多少显存？"), None);
    }

    #[test]
    fn a_setting_in_the_question_picks_its_column() {
        let batches = "| 模型 | batch=1 | batch=4 | batch=16 | batch=32 |\n\
            | :-- | :-- | :-- | :-- | :-- |\n\
            | Yi-6B-Chat-8bits | 7 GB | 8 GB | 10 GB | 14 GB |\n\
            | Yi-34B-Chat-4bits | 19 GB | 20 GB | 30 GB | 40 GB |";
        let q16 = "Yi-6B-Chat-8bits 在 batch=16 时最少要多少显存？";
        assert_eq!(misplaced("10 GB", &[batches], q16), None);
        assert_eq!(
            misplaced("14 GB", &[batches], q16),
            Some(Unsupported::OtherRow)
        );
        assert_eq!(
            misplaced(
                "40 GB",
                &[batches],
                "Yi-34B-Chat-4bits 在 batch=64 时要多少显存？"
            ),
            Some(Unsupported::OtherRow)
        );
        // A cell written out under its column's name (a second reading's passages).
        let cells = "Yi-6B-Chat-8bits:\n- batch=1: 7 GB\n- batch=16: 10 GB";
        assert_eq!(misplaced("10 GB", &[cells], q16), None);
        assert_eq!(
            misplaced("7 GB", &[cells], q16),
            Some(Unsupported::OtherRow)
        );
    }

    #[test]
    fn a_caption_above_a_table_names_its_numbers_unit() {
        let table = "量化前后显存占用对比 (GPU Mem in GB)：\n\
            | Precision | Baichuan2-7B | Baichuan2-13B |\n|---|:-:|:-:|\n| 8bits | 8.0 | 16.1 |";
        let question = "Baichuan2-13B 做 8bits 量化要多少显存？";
        assert_eq!(misplaced("16.1GB", &[table], question), None);
        assert_eq!(
            misplaced("16.1 MB", &[table], question),
            Some(Unsupported::NotStated)
        );
        // Without the caption the table does not say gigabytes.
        let bare =
            "| Precision | Baichuan2-7B | Baichuan2-13B |\n|---|:-:|:-:|\n| 8bits | 8.0 | 16.1 |";
        assert_eq!(
            misplaced("16.1GB", &[bare], question),
            Some(Unsupported::NotStated)
        );
    }

    #[test]
    fn a_bare_number_is_stated_by_a_settings_value() {
        let code = "engine_config = TurbomindEngineConfig(session_len=200000,\n    rope_scaling_factor=2.0)";
        assert!(unsupported("2.0", &[code], "").is_empty());
        assert_eq!(unsupported("3.0", &[code], ""), ["3.0"]);
        let flags = "deepspeed fine-tune.py --num_train_epochs 4 --learning_rate 2e-5";
        assert_eq!(unsupported("4.0", &[flags], ""), ["4.0"]);
    }

    #[test]
    fn a_whole_number_is_stated_by_the_value_of_the_setting_the_question_names() {
        let diff = "```diff\n+ max_position_embeddings = 65536\n```";
        let q = "上下文要拓展到 64K，config 里 max_position_embeddings 改成多少？";
        assert!(unsupported("改成 65536", &[diff], q).is_empty());
        // Another setting's whole value stands for nothing.
        let other = "上下文要拓展到 64K，rope_theta 改成多少？";
        assert_eq!(unsupported("改成 65536", &[diff], other), ["65536"]);
        assert_eq!(unsupported("改成 32768", &[diff], q), ["32768"]);
    }

    #[test]
    fn a_setting_named_in_chinese_is_named() {
        let command = "启动tensorboard命令如下：\n```shell\n\
            tensorboard --logdir output_dir/logs --host 0.0.0.0 --port 8008\n```";
        let q = "MedicalGPT 训练完用 tensorboard 看日志，文档里给的端口是多少？";
        assert!(unsupported("8008", &[command], q).is_empty());
        assert_eq!(unsupported("8080", &[command], q), ["8080"]);
        // A question that names no setting: a whole value stands for nothing.
        let other = "MedicalGPT 训练完用 tensorboard 看日志，命令里有哪个数字？";
        assert_eq!(unsupported("8008", &[command], other), ["8008"]);
        let flags = "python train.py --num_train_epochs 12 --learning_rate 5e-5";
        assert!(unsupported("12", &[flags], "默认训练轮数是多少？").is_empty());
        assert_eq!(unsupported("12", &[flags], "默认的温度是多少？"), ["12"]);
    }

    #[test]
    fn a_setting_value_with_its_unit_states_the_quantity() {
        let listing = "  14  or  Q4_K_S  :  3.59G, +0.0992 ppl @ LLaMA-v1-7B\n\
                       15  or  Q4_K_M  :  3.80G, +0.0532 ppl @ LLaMA-v1-7B";
        let q = "llama.cpp 量化成 Q4_K_M 的话，LLaMA-v1-7B 大概有多大？";
        assert!(unsupported("大概有3.80G。", &[listing], q).is_empty());
        assert!(unsupported("3.80 GB", &[listing], q).is_empty());
        assert_eq!(unsupported("大概有3.85G。", &[listing], q), ["3.85G"]);
        assert_eq!(unsupported("大概有3.80MB。", &[listing], q), ["3.80MB"]);
    }

    #[test]
    fn durations_compare_across_units() {
        let faq = "对于200万的数据量，大概要350G的内存，加载时长大概在25min左右";
        let q = "BELLE 加载 2M 条训练数据大约要花多长时间？";
        for answer in ["大约需要25分钟。", "25 minutes", "25min"] {
            assert!(unsupported(answer, &[faq], q).is_empty(), "{answer}");
        }
        assert_eq!(unsupported("大约需要35分钟。", &[faq], q), ["35分钟"]);
        assert_eq!(unsupported("大约需要25小时。", &[faq], q), ["25小时"]);
        let table = "| Model | Total Inference Time |\n| --- | --- |\n| MiniCPM-V 4.5 | 0.26h |";
        let q = "MiniCPM-V 4.5 跑完 Video-MME 评测总共推理了多长时间？";
        for answer in ["0.26h", "0.26 小时", "15.6 分钟"] {
            assert!(unsupported(answer, &[table], q).is_empty(), "{answer}");
        }
        assert_eq!(unsupported("0.26 天", &[table], q), ["0.26 天"]);
    }

    #[test]
    fn a_table_without_outer_pipes_is_a_table() {
        let table = "配置 | SeqLen | TimePerIter (s) | Tokens/GPU/Second\n-- | -- | -- | --\n\
            BF16 | 65536 | 32.77 | 2000\nFP8  | 65536 | 26.75 | 2450";
        let q = "XTuner 用 BF16 训练每个 iter 要多少秒？";
        // Its header names seconds for the bare numbers under it …
        assert!(unsupported("32.77 秒", &[table], q).is_empty());
        assert_eq!(misplaced("32.77 秒", &[table], q), None);
        // … and its rows are rows: FP8's figure is not BF16's.
        assert_eq!(
            misplaced("26.75 秒", &[table], q),
            Some(Unsupported::OtherRow)
        );
    }

    #[test]
    fn the_line_leading_into_a_block_says_what_its_figures_are_of() {
        let code = "这里展示对 qwen1half-7b-chat 进行 gptq 量化.\n```bash\n\
            # gptq-int4 量化 (使用 A100 大约需要 20 分钟, 显存占用: 7GB)\nswift export\n```";
        let asked_14b = "用 swift 给 qwen1half-14b-chat 做 gptq-int4 量化，显存占用多少？";
        assert_eq!(
            misplaced("7GB", &[code], asked_14b),
            Some(Unsupported::OtherRow)
        );
        let asked_7b = "用 swift 给 qwen1half-7b-chat 做 gptq-int4 量化，显存占用多少？";
        assert_eq!(misplaced("7GB", &[code], asked_7b), None);
        // A line that names its own size is not overruled by its lead-in.
        let own = "这里展示 qwen1half-7b-chat 的量化.\n```bash\n# 14B: 显存占用 9GB\n```";
        assert_eq!(misplaced("9GB", &[own], asked_14b), None);
        // Prose outside any block has no lead-in.
        let prose = "这里展示 qwen1half-7b-chat 的量化.\n\n量化时显存占用 7GB。";
        assert_eq!(misplaced("7GB", &[prose], asked_14b), None);
    }

    #[test]
    fn a_figure_measured_on_another_gpu_is_not_the_questions() {
        let table = "在 H200 上使用 Qwen3-30B-A3B-Base 测试：\n\n| 指标 | TurboQuant |\n| --- | --- |\n\
            | 输出吞吐 | 2027.0 tok/s |";
        let on_h100 = "TurboQuant 在 H100 上跑 Qwen3-30B-A3B-Base 的输出吞吐是多少？";
        assert_eq!(
            misplaced("2027.0 tok/s", &[table], on_h100),
            Some(Unsupported::OtherRow)
        );
        let on_h200 = "TurboQuant 在 H200 上跑 Qwen3-30B-A3B-Base 的输出吞吐是多少？";
        assert_eq!(misplaced("2027.0 tok/s", &[table], on_h200), None);
        // A question that names no GPU takes the figure.
        let any = "TurboQuant 跑 Qwen3-30B-A3B-Base 的输出吞吐是多少？";
        assert_eq!(misplaced("2027.0 tok/s", &[table], any), None);
        assert_eq!(
            gpus_in("NVIDIA GeForce RTX 4090 与 A100-80G"),
            ["4090", "a100"]
        );
        assert!(gpus_in("v1.1 版本, 4096 tokens").is_empty());
    }

    #[test]
    fn a_figure_of_another_fine_tuning_method_is_not_the_questions() {
        let list = "本仓库中的**默认配置文件**中，我们记录了显存的占用情况：\n\n\
            + SFT 全量微调: 4张显卡平均分配，每张显卡占用 `48346MiB` 显存。\n\
            + P-TuningV2 微调: 1张显卡，占用 `18426MiB` 显存。\n\
            + LORA 微调: 1张显卡，占用 `14082MiB` 显存。";
        let lora = "用 ChatGLM3 自带的微调套件做 LoRA，单张卡大概吃多少显存？";
        assert_eq!(misplaced("14082MiB", &[list], lora), None);
        assert_eq!(
            misplaced("48346 MiB", &[list], lora),
            Some(Unsupported::OtherRow)
        );
        assert_eq!(
            misplaced("18426MiB", &[list], "P-Tuning v2 微调要多少显存？"),
            None
        );
        // A question that names no method takes any line's figure.
        assert_eq!(misplaced("48346MiB", &[list], "微调要多少显存？"), None);
        // Q-LoRA is not LoRA, in a table row as on a line.
        let table = "| 方法 | 显存 |\n| --- | --- |\n| LoRA | 20.1G |\n| Q-LoRA | 13.9G |";
        let qlora = "用 Q-LoRA 微调要多少显存？";
        assert_eq!(misplaced("13.9G", &[table], qlora), None);
        assert_eq!(
            misplaced("20.1G", &[table], qlora),
            Some(Unsupported::OtherRow)
        );
        use TuningMethod::*;
        assert_eq!(tuning_methods_in("Q-LoRA 与 LoRA (emb)"), [QLora, Lora]);
        assert_eq!(
            tuning_methods_in("Full-parameter, P-Tuning v2, freeze"),
            [Full, PTuning, Freeze]
        );
        assert_eq!(tuning_methods_in("full fine-tuning 全参数"), [Full]);
        assert!(tuning_methods_in("a full GPU, explorations, 微调").is_empty());
    }

    #[test]
    fn a_column_whose_cell_meets_the_questions_condition_is_not_the_one_asked() {
        let table = "| 精度 | 输入token数 | Token 输出速度 |\n| --- | --- | --- |\n\
            | INT4 | 1000 | 28.7 tokens/s |\n| INT4 | 8000 | 21.1 tokens/s |";
        let q = "INT4 推理、输入 1000 token 时每秒能输出多少 token？";
        assert_eq!(misplaced("28.7 tokens/s", &[table], q), None);
        assert_eq!(
            misplaced("21.1 tokens/s", &[table], q),
            Some(Unsupported::OtherRow)
        );
        let seq = "配置 | SeqLen | Tokens/GPU/Second\n-- | -- | --\nFP8 | 65536 | 2450";
        assert_eq!(
            misplaced("2450", &[seq], "FP8、SeqLen 65536 时每秒多少 tokens？"),
            None
        );
        assert_eq!(
            misplaced("2450", &[seq], "FP8、SeqLen 32768 时每秒多少 tokens？"),
            Some(Unsupported::OtherRow)
        );
    }

    #[test]
    fn a_caption_naming_token_speed_in_words_gives_the_unit() {
        let table = "我们在 RTX 4090 上测试了 4-bit 模型的 token 生成速度。\n\
            | model | llm-awq | mlc-llm |\n| --- | --- | --- |\n| Llama-2-7B-chat | 112.9 | 159.4 |";
        let q = "4-bit Llama-2-7B-chat 用 mlc-llm 每秒能生成多少 token？";
        assert!(unsupported("每秒能生成 159.4 token", &[table], q).is_empty());
        assert!(unsupported("159.4 tokens/s", &[table], q).is_empty());
        // The caption names a speed, not a latency.
        assert_eq!(
            unsupported("159.4 ms/token", &[table], q),
            ["159.4 ms/token"]
        );
        let without = "| model | llm-awq | mlc-llm |\n| --- | --- | --- |\n| Llama-2-7B-chat | 112.9 | 159.4 |";
        assert_eq!(
            unsupported("159.4 tokens/s", &[without], q),
            ["159.4 tokens/s"]
        );
    }

    #[test]
    fn a_bare_number_under_an_html_header_naming_the_unit_is_stated() {
        let passage = "<table>\n<tr><th>Quantization</th><th>Speed (Tokens/s)</th><th>GPU Memory Usage</th></tr>\n\
            <tr>\n<td>Int4</td>\n<td>50.09</td>\n<td>8.21GB</td>\n</tr>\n</table>";
        assert!(unsupported("速度 50.09 tokens/s，显存 8.21GB", &[passage], "").is_empty());
        assert_eq!(unsupported("显存 50.09GB", &[passage], ""), ["50.09GB"]);
    }

    #[test]
    fn question_facts_no_passage_states_are_reported() {
        let question = "Qwen-7B-Chat-Int4 在 RTX 4090 上生成速度能到每秒多少 token？";
        // A figure said of another GPU is not the question's.
        assert_eq!(
            verdict(
                "在 RTX 4090 上约为 50.09 tokens/s。",
                &["单张 A100 上 Int4 模型速度为 50.09 tokens/s。"],
                question
            ),
            Verdict::UnsupportedKeyFact
        );
        let check = check_answer(
            "在 RTX 4090 上约为 50.09 tokens/s。",
            &["Int4 模型速度为 50.09 tokens/s。"],
            question,
        );
        // The answer only repeats the question, so it is supported …
        assert_eq!(check.verdict, Verdict::Supported);
        // … but the question names what the passages never do.
        let unstated: Vec<&str> = check
            .question_unstated
            .iter()
            .map(|f| f.text.as_str())
            .collect();
        assert_eq!(unstated, ["Qwen-7B-Chat-Int4", "RTX", "4090"]);
    }

    #[test]
    fn a_figure_from_another_sentence_is_unsupported() {
        let question = "INT4 量化下对 ChatGLM-6B 做高效参数微调最低需要多少显存？";
        let check = check_answer("最低需要 6.7G 显存", &[CHATGLM_TABLE], question);
        assert_eq!(check.verdict, Verdict::UnsupportedKeyFact);
        assert!(
            check.unsupported[0].reason.contains("7GB"),
            "{:?}",
            check.unsupported
        );
        assert_eq!(
            verdict("最低需要 7GB 显存", &[CHATGLM_TABLE], question),
            Verdict::Supported
        );
    }

    #[test]
    fn no_input_panics() {
        let long_numeral = "九".repeat(400) + "亿亿亿万万GB";
        for text in [
            "",
            "--",
            "--a",
            "v",
            "v.",
            "1,",
            "1,00",
            "99999999999999999999999999999999999999999GB",
            "1e999 0.0.0.0.0 ....---___",
            "单",
            "十",
            "亿GB",
            "｀－－ｘ＝",
            long_numeral.as_str(),
            "| | |\n|---|\n| 6 | x |",
        ] {
            let _ = check_answer(text, &[text, "| a | 6 GB |"], text);
            let _ = echoes_prompt(text, text, &[text], text);
        }
    }

    // --- arithmetic, escaped URLs, the document a figure comes from ---

    #[test]
    fn a_sum_of_stated_figures_is_supported_when_it_adds_up() {
        let passages =
            ["加载 FP16 模型消耗大概 13GB 的内存，INT4 量化后的模型仅需大概 5.2GB 的内存。"];
        let question = "先加载 FP16 再量化，一共要多少内存？";
        let sum = check_answer("13GB + 5.2GB = 18.2GB", &passages, question);
        assert_eq!(sum.verdict, Verdict::Supported, "{:?}", sum.unsupported);
        let wrong = check_answer("13GB + 5.2GB = 20GB", &passages, question);
        assert_eq!(texts(&wrong.unsupported), ["20GB"]);
        // The operands are checked in turn.
        let invented = check_answer("13GB + 7GB = 20GB", &passages, question);
        assert_eq!(texts(&invented.unsupported), ["7GB"]);
        let product = check_answer(
            "需要 2 × 24GB = 48GB 显存",
            &["每张卡 24GB，共 2 张卡。"],
            "两张卡一共多少显存？",
        );
        assert_eq!(
            product.verdict,
            Verdict::Supported,
            "{:?}",
            product.unsupported
        );
        // Rounded as written: 14082 / 1024 = 13.75 to two places.
        assert_eq!(derived_values("14082MiB / 1024 = 13.75GB"), [13.75]);
        assert_eq!(derived_values("2023-05-15"), Vec::<f64>::new());
        assert_eq!(derived_values("= 3 + = 4 + 1 ="), Vec::<f64>::new());
    }

    #[test]
    fn escaped_punctuation_in_a_passage_is_read_as_written() {
        let badge =
            "![python](https://img.shields.io/badge/python-3.8%7C3.9%7C3.10%7C3.11-blue.svg)";
        let check = check_answer(
            "Python 3.8, 3.9, 3.10, and 3.11",
            &[badge],
            "支持哪些 Python 版本？",
        );
        assert_eq!(check.verdict, Verdict::Supported, "{:?}", check.unsupported);
        assert_eq!(percent_decoded("100%"), "100%");
        assert_eq!(percent_decoded("a%2"), "a%2");
        assert_eq!(percent_decoded("%E4%B8%AD"), "%E4%B8%AD");
    }

    #[test]
    fn a_figure_only_another_models_document_states_is_unsupported() {
        let passages = [
            "Qwen-72B 的推理显存见下表，全参数微调需要多机。",
            "ChatGLM3 微调: 全参数微调: 4张显卡，每张显卡占用 48346MiB 显存。",
        ];
        let question = "Qwen-72B 做全参数微调需要多少显存？";
        let answer = "Qwen-72B 做全参数微调需要 48346 MiB 显存。";
        let off = check_answer_on_subject(answer, &passages, &[false, true], question);
        assert_eq!(texts(&off.unsupported), ["48346 MiB"]);
        assert!(
            off.unsupported[0]
                .reason
                .contains("do not name what the question asks about"),
            "{}",
            off.unsupported[0].reason
        );
        // Every passage counting, it is stated.
        assert_eq!(
            check_answer(answer, &passages, question).verdict,
            Verdict::Supported
        );
        // A name from the other document is not held to it.
        let named = check_answer_on_subject(
            "可以参考 ChatGLM3 的做法。",
            &passages,
            &[false, true],
            question,
        );
        assert_eq!(named.verdict, Verdict::Supported, "{:?}", named.unsupported);
    }

    // --- echoed instructions ---

    const ARTICLE: &str = "已知信息：\n{context}\n\n根据上述已知信息，简洁和专业的来回答用户的问题。\
如果无法从中得到答案，请说 “根据已知信息无法回答该问题” 或 “没有提供足够的相关信息”，\
不允许在答案中添加编造成分，答案请使用中文。问题是：{question}";

    #[test]
    fn an_answer_that_is_a_passage_marker_or_a_copied_passage_is_an_echo() {
        let question = "MiniCPM5-1B 开思考模式时推荐的 temperature 是多少？";
        let passages = ["推荐 temperature=0.9。"];
        for answer in [
            "[3]",
            " [3] [1]\n",
            "[3] （来源：minicpm--README-cn.md；章节：✨ 亮点） ![图](./a.png) 双模式推理",
            "（章节：亮点）推荐 temperature=0.9。",
        ] {
            let echo = echoes_prompt(answer, question, &passages, ARTICLE);
            assert!(
                echo.as_ref()
                    .is_some_and(|e| e.reason.contains("marker or header")),
                "{answer}: {echo:?}"
            );
        }
        for answer in [
            "0.9 [1]",
            "推荐 0.9。[2]",
            "[2] 推荐 temperature 为 0.9。",
            "[x]",
        ] {
            assert_eq!(
                echoes_prompt(answer, question, &passages, ARTICLE),
                None,
                "{answer}"
            );
        }
    }

    #[test]
    fn an_answer_that_is_the_instruction_is_an_echo() {
        let question = "ChatGLM-6B 有多少参数？";
        let passages = ["ChatGLM-6B 具有 62 亿参数。"];
        let echo = echoes_prompt(
            "根据上述已知信息，简洁和专业的来回答用户的问题，不允许在答案中添加编造成分。",
            question,
            &passages,
            ARTICLE,
        );
        assert!(echo.is_some());
        let with_question = echoes_prompt(
            "根据上述已知信息，简洁和专业的来回答用户的问题。问题是：ChatGLM-6B 有多少参数？",
            question,
            &passages,
            ARTICLE,
        );
        assert!(with_question.is_some());
        assert_eq!(
            echoes_prompt("ChatGLM-6B 具有 62 亿参数。", question, &passages, ARTICLE),
            None
        );
        // A right answer that mentions one short instruction phrase is not an echo.
        assert_eq!(
            echoes_prompt(
                "ChatGLM-6B 具有 62 亿参数，INT4 量化下最低只需 6GB 显存即可部署，适合消费级显卡。答案请使用中文",
                question,
                &passages,
                ARTICLE,
            ),
            None
        );
    }

    #[test]
    fn an_answer_that_restates_the_question_is_an_echo() {
        let question = "用 TensorRT-LLM 部署 ChatGLM3，文档里用的是 TensorRT-LLM 哪个 release？";
        let passages = ["本文基于 TensorRT-LLM 的 release v0.5.0 版本。"];
        for restated in [
            "TensorRT-LLM 哪个 release？",
            question,
            "用TensorRT-LLM部署ChatGLM3，文档里用的是TensorRT-LLM哪个release",
            // The refusal's opening before the question is still the question.
            "根据已知信息，用 TensorRT-LLM 部署 ChatGLM3，文档里用的是 TensorRT-LLM 哪个 release？",
            "According to the known information: TensorRT-LLM 哪个 release？",
        ] {
            let echo = echoes_prompt(restated, question, &passages, ARTICLE);
            assert!(
                echo.is_some_and(|e| e.reason.contains("restates the question")),
                "{restated}"
            );
        }
        for answer in [
            "release v0.5.0",
            "TensorRT-LLM 的 v0.5.0。",
            "部署 ChatGLM3",
            "根据已知信息，文档里用的是 TensorRT-LLM 的 release v0.5.0。",
            "根据已知信息",
        ] {
            assert_eq!(
                echoes_prompt(answer, question, &passages, ARTICLE),
                None,
                "{answer}"
            );
        }
        // A choice the question offers is an answer, though the question holds it.
        assert_eq!(
            echoes_prompt("vLLM", "部署 ChatGLM3 用 vLLM 还是 Ollama？", &[], ARTICLE),
            None
        );
        assert_eq!(echoes_prompt("？", question, &passages, ARTICLE), None);
    }

    #[test]
    fn a_passage_holding_the_instruction_lets_the_answer_quote_it() {
        // The knowledge base is the article, which prints its own prompt template.
        let passage = "本项目的 prompt 模板如下：已知信息：{context} 根据上述已知信息，简洁和专业的来回答用户的问题。\
            如果无法从中得到答案，请说 “根据已知信息无法回答该问题”。另外，文本分割时 chunk_size 设为 500。";
        let question = "文本分割的 chunk_size 设为多少？";
        assert_eq!(
            echoes_prompt("chunk_size 设为 500。", question, &[passage], ARTICLE),
            None
        );
        // Quoting the template the passage prints, when asked for it, is an answer.
        assert_eq!(
            echoes_prompt(
                "模板是：根据上述已知信息，简洁和专业的来回答用户的问题。",
                "项目用的 prompt 模板是什么？",
                &[passage],
                ARTICLE
            ),
            None
        );
        // The instruction followed by the user's question is an echo even so.
        assert!(
            echoes_prompt(
                "根据上述已知信息，简洁和专业的来回答用户的问题。问题是：文本分割的 chunk_size 设为多少？",
                question,
                &[passage],
                ARTICLE
            )
            .is_some()
        );
    }
}
