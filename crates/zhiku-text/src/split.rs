//! The Chinese-aware recursive passage splitter.
//!
//! Chinese text has no spaces between words, so a splitter that cuts on whitespace (or on a
//! token count) cuts sentences in half. This one cuts on the text's own structure, coarsest
//! first: blank lines, line breaks, sentence ends, semicolons, commas, spaces; only a piece
//! with none of them is cut hard, at a character boundary.
//!
//! Everything is measured in Unicode scalar values (`char`s), never bytes, so no cut can fall
//! inside a character, and every offset a [`Passage`] carries indexes `text.chars()`.

use crate::markdown::{code_block_of, ditto_labels, fence_marker, is_table_delimiter};
use crate::{Document, Format};

/// Why a [`SplitterConfig`] was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SplitterError {
    /// A chunk must hold at least one character, or the splitter could never make progress.
    #[error("chunk_size must be at least 1 character")]
    ZeroChunkSize,
    /// An overlap as large as the chunk would leave no room for new text in the next chunk.
    #[error("overlap ({overlap}) must be smaller than chunk_size ({chunk_size})")]
    OverlapTooLarge {
        /// The configured chunk size.
        chunk_size: usize,
        /// The refused overlap.
        overlap: usize,
    },
}

/// How large passages are and how much consecutive passages share, both in characters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SplitterConfig {
    /// The most characters of source text one passage holds. The heading path that
    /// [`Passage::indexed_text`] prepends is not counted: it is context, not content.
    pub chunk_size: usize,
    /// The most characters two consecutive passages of one section share, so that a sentence
    /// at a cut can still be found with its neighbour. Overlaps are made of whole pieces
    /// (sentences, clauses), so the real overlap is often smaller, and may be zero when the
    /// last piece of a passage is longer than this.
    pub overlap: usize,
}

impl Default for SplitterConfig {
    /// 250 characters with 50 of overlap: Langchain-Chatchat's defaults, which suit the
    /// 512-token limit of the BERT-family embedders zhiku runs (a Chinese character is about
    /// one token).
    fn default() -> Self {
        Self {
            chunk_size: 250,
            overlap: 50,
        }
    }
}

/// One passage: a contiguous span of the source text, ready to embed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Passage {
    /// Position among the passages of its document, from 0, without gaps.
    pub index: usize,
    /// The passage's text: exactly `source.chars().skip(char_start).take(char_end - char_start)`.
    /// It never starts or ends with whitespace.
    pub text: String,
    /// The markdown headings the passage sits under, outermost first (empty when none).
    pub heading_path: Vec<String>,
    /// When the passage starts inside a markdown table below its header row: that header row
    /// (`| 精度 | 显存占用 |`), so that the rows cut away from it still say what their
    /// columns are. Like the heading path, it is context for [`Passage::indexed_text`], not
    /// part of `text`.
    pub table_header: Option<String>,
    /// When the passage starts inside a table (markdown or HTML, its header row included) or
    /// at the opening fence of a code block: the paragraph just before it, which often names what the table
    /// is about ("以 Chinese-LLaMA-2-7B 为例，对比不同精度下的模型大小") or what the code does
    /// ("以下是使用 LMDeploy 的示例："), at most [`MAX_CAPTION_CHARS`] characters of it.
    /// Context like [`Passage::table_header`].
    pub caption: Option<String>,
    /// When the passage starts inside an HTML table below a row whose cells span down into
    /// it (`<td rowspan="3">14B</td>`): those cells' text, joined by ` | ` ("14B"), so that
    /// the rows under a merged cell still say which model or setting they belong to; in a
    /// markdown table, at a row whose first cell marks it as continuing the row above (`-`,
    /// `〃`, empty): that row's label. Context like [`Passage::table_header`].
    pub table_spanned: Option<String>,
    /// First character of the passage in the source, counted in `char`s.
    pub char_start: usize,
    /// One past the last character of the passage in the source, counted in `char`s.
    pub char_end: usize,
}

impl Passage {
    /// The heading path as one line, e.g. `"Guide > Install"` (empty when there is none).
    pub fn heading(&self) -> String {
        self.heading_path.join(" > ")
    }

    /// What the passage's text does not say about itself that a table around it does: the
    /// table's caption paragraph, then its header row, then the merged cells spanning into
    /// its first row, each on its own line (empty when the passage starts outside a table). Stored and shown with the passage.
    pub fn context(&self) -> String {
        let mut out = String::new();
        for line in [&self.caption, &self.table_header, &self.table_spanned]
            .into_iter()
            .flatten()
        {
            if !out.is_empty() {
                out.push('\n');
            }
            out.push_str(line);
        }
        out
    }

    /// The text to embed and index: the heading path on its own line, then the context
    /// ([`Passage::context`]) when the passage starts in a table, then the passage, its HTML
    /// table rows written as `cell | cell` lines.
    ///
    /// A passage cut out of a long section often never names its subject; the heading path
    /// puts it back (Langchain-Chatchat's "title enhance"), so that a question about
    /// "installation" finds the passages under "Guide > Install". Table rows cut away from
    /// their header are only numbers without it: the header names their columns. A passage
    /// cut from an HTML table is mostly markup (`<td align="center">`): written as its cells,
    /// the same characters hold several times the rows, and the embedder reads no tags; a
    /// merged cell (`rowspan`) is repeated in each row it spans.
    pub fn indexed_text(&self) -> String {
        let mut out = String::with_capacity(self.text.len() + 64);
        if !self.heading_path.is_empty() {
            out.push_str(&self.heading());
            out.push('\n');
        }
        let context = self.context();
        if !context.is_empty() {
            out.push_str(&context);
            out.push('\n');
        }
        out.push_str(&readable_text(&self.text));
        out
    }

    /// [`Passage::indexed_text`] under its document's title ([`crate::document_title`]) on a
    /// line of its own: what the orchestrator embeds. Nothing is added for an empty title.
    pub fn indexed_text_under(&self, title: &str) -> String {
        let indexed = self.indexed_text();
        if title.is_empty() {
            indexed
        } else {
            format!("{title}\n{indexed}")
        }
    }
}

/// The recursive splitter. Pure: no I/O, no state between calls, deterministic.
///
/// Guarantees, for every passage `p` it returns (the property tests check each):
/// - `p.text.chars().count() <= chunk_size`: the slack is **0** characters. (The heading path
///   that [`Passage::indexed_text`] adds is outside this bound.)
/// - `p.text` is the source's characters `[p.char_start, p.char_end)`, and is neither empty nor
///   padded with whitespace.
/// - passages are in order: both `char_start` and `char_end` strictly increase;
/// - every non-whitespace character of the source lies in some passage (for markdown:
///   except the heading lines, which travel in `heading_path` instead);
/// - consecutive passages of one section share at most `overlap` characters.
///
/// A cut never falls inside a URL, a number such as `3.14` or `1,000`, or an ASCII word,
/// unless that token alone is longer than `chunk_size`; and a sentence that fits in a chunk
/// is never cut.
///
/// `PassageSplitter::default()` uses [`SplitterConfig::default`].
#[derive(Debug, Clone, Default)]
pub struct PassageSplitter {
    config: SplitterConfig,
}

/// The separator levels, coarsest first. A piece too long for a chunk is cut at the coarsest
/// level it contains; each resulting piece still too long goes on to the next level.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Level {
    /// A blank line: a paragraph break.
    Blank,
    /// A line break.
    Line,
    /// After a sentence end: 。！？!?… or `.` before whitespace, with any closing quotes
    /// or brackets that follow it (`。」`, `！”`).
    Sentence,
    /// After ；or ;
    Semicolon,
    /// After ，, or 、
    Comma,
    /// Before a word that follows whitespace: keeps ASCII words whole in English text.
    Space,
}

const LEVELS: [Level; 6] = [
    Level::Blank,
    Level::Line,
    Level::Sentence,
    Level::Semicolon,
    Level::Comma,
    Level::Space,
];

/// A section of the source to split on its own: chunks never cross sections.
struct Section {
    heading_path: Vec<String>,
    start: usize,
    end: usize,
}

impl PassageSplitter {
    /// A splitter with the given sizes; refuses a zero `chunk_size` and an `overlap` that is
    /// not smaller than `chunk_size`.
    pub fn new(config: SplitterConfig) -> Result<Self, SplitterError> {
        if config.chunk_size == 0 {
            return Err(SplitterError::ZeroChunkSize);
        }
        if config.overlap >= config.chunk_size {
            return Err(SplitterError::OverlapTooLarge {
                chunk_size: config.chunk_size,
                overlap: config.overlap,
            });
        }
        Ok(Self { config })
    }

    /// The sizes this splitter was made with.
    pub fn config(&self) -> SplitterConfig {
        self.config
    }

    /// Splits plain text; `#` lines are text like any other.
    pub fn split(&self, text: &str) -> Vec<Passage> {
        let chars: Vec<char> = text.chars().collect();
        let section = Section {
            heading_path: Vec::new(),
            start: 0,
            end: chars.len(),
        };
        self.split_sections(&chars, vec![section])
    }

    /// Splits markdown: headings (ATX `#` to `######`, or setext: a line under a blank line,
    /// underlined with `===` or `---`; never inside fenced code blocks) open sections; each passage carries the path of headings above it, and no passage crosses a
    /// heading. The heading lines themselves are not in any passage's text: they are in its
    /// `heading_path`, so a heading with no text under it yields no passage.
    ///
    /// A passage that starts inside a markdown table, below its header, carries the table's
    /// header row in [`Passage::table_header`]; one that starts in a table at all, the
    /// paragraph before it in [`Passage::caption`], as does one that starts at the opening
    /// fence of a code block.
    pub fn split_markdown(&self, text: &str) -> Vec<Passage> {
        let chars: Vec<char> = text.chars().collect();
        let sections = markdown_sections(&chars);
        let mut passages = self.split_sections(&chars, sections);
        let blocks = code_blocks(&chars);
        for passage in &mut passages {
            let at = passage.char_start;
            passage.caption = blocks
                .iter()
                .find(|(start, end, _)| *start <= at && at < *end)
                .and_then(|(_, _, caption)| caption.clone());
        }
        let tables = markdown_tables(&chars);
        if !tables.is_empty() {
            for passage in &mut passages {
                passage.table_header = tables
                    .iter()
                    .find(|t| t.body_start <= passage.char_start && passage.char_start < t.end)
                    .map(|t| t.header.clone());
                if let Some(table) = tables
                    .iter()
                    .find(|t| t.start <= passage.char_start && passage.char_start < t.end)
                {
                    passage.caption = table.caption.clone();
                }
                passage.table_spanned = tables
                    .iter()
                    .find(|t| t.body_start <= passage.char_start && passage.char_start < t.end)
                    .and_then(|t| t.spanned_at(passage.char_start));
            }
        }
        passages
    }

    /// Splits a loaded document the way its format asks: one record (a csv row) is one
    /// passage, and is only cut when longer than `chunk_size`; markdown, and the html and docx
    /// loaders' output (which renders headings as markdown), by heading; the rest as plain
    /// text. Offsets index `document.text`.
    pub fn split_document(&self, document: &Document) -> Vec<Passage> {
        if let Some(records) = &document.records {
            // The offsets index the records joined as the loader joins them, which is
            // `document.text`; recomputing the join keeps them right even for a hand-built
            // document whose `text` disagrees.
            let mut chars = Vec::new();
            let mut sections = Vec::with_capacity(records.len());
            for record in records {
                if !chars.is_empty() {
                    chars.extend(crate::RECORD_SEPARATOR.chars());
                }
                let start = chars.len();
                chars.extend(record.chars());
                sections.push(Section {
                    heading_path: Vec::new(),
                    start,
                    end: chars.len(),
                });
            }
            return self.split_sections(&chars, sections);
        }
        if !document.pages.is_empty() {
            // A passage never spans two pages, so that it cites one.
            let chars: Vec<char> = document.text.chars().collect();
            let sections = document
                .pages
                .iter()
                .map(|page| Section {
                    heading_path: Vec::new(),
                    start: page.char_start.min(chars.len()),
                    end: page.char_end.min(chars.len()),
                })
                .collect();
            return self.split_sections(&chars, sections);
        }
        match document.format {
            Format::Markdown | Format::Html | Format::Docx => self.split_markdown(&document.text),
            Format::Text | Format::Pdf | Format::Ofd | Format::Csv | Format::Image => {
                self.split(&document.text)
            }
        }
    }

    fn split_sections(&self, chars: &[char], sections: Vec<Section>) -> Vec<Passage> {
        let spans = Spans::find(chars);
        let mut passages = Vec::new();
        for section in sections {
            let mut pieces = Vec::new();
            self.pieces(chars, &spans, section.start, section.end, 0, &mut pieces);
            for (start, end) in self.pack(chars, &pieces) {
                let Some((start, end)) = trim(chars, start, end) else {
                    continue;
                };
                if let Some(last) = passages
                    .last_mut()
                    .filter(|p: &&mut Passage| p.char_start >= start)
                {
                    // The previous chunk lay wholly in this one's leading overlap (it had
                    // nothing but whitespace before it): this one replaces it.
                    *last = passage(chars, &section.heading_path, start, end);
                    continue;
                }
                if passages.last().is_some_and(|p: &Passage| p.char_end >= end) {
                    // Only whitespace beyond the overlap: nothing new to say.
                    continue;
                }
                passages.push(passage(chars, &section.heading_path, start, end));
            }
        }
        for (index, passage) in passages.iter_mut().enumerate() {
            passage.index = index;
        }
        passages
    }

    /// Cuts `[start, end)` into consecutive pieces of at most `chunk_size` characters, at the
    /// coarsest separator level that occurs in it, recursing into pieces still too long.
    fn pieces(
        &self,
        chars: &[char],
        spans: &Spans,
        start: usize,
        end: usize,
        level: usize,
        out: &mut Vec<(usize, usize)>,
    ) {
        // Whitespace at the edges is trimmed off every passage, so it does not count.
        let content = trim(chars, start, end).map_or(0, |(s, e)| e - s);
        if content <= self.config.chunk_size {
            out.push((start, end));
            return;
        }
        let Some(&sep) = LEVELS.get(level) else {
            self.hard_cut(chars, spans, start, end, out);
            return;
        };
        let cuts = cuts(chars, spans, sep, start, end);
        let mut from = start;
        for to in cuts.into_iter().chain([end]) {
            self.pieces(chars, spans, from, to, level + 1, out);
            from = to;
        }
    }

    /// Cuts a piece that holds no separator at all into chunk-sized pieces, moving each cut
    /// back out of a protected token (URL, number, word) or off a combining mark when it can.
    fn hard_cut(
        &self,
        chars: &[char],
        spans: &Spans,
        mut start: usize,
        end: usize,
        out: &mut Vec<(usize, usize)>,
    ) {
        while end - start > self.config.chunk_size {
            let mut cut = start + self.config.chunk_size;
            if let Some(token_start) = spans.token_start(cut).filter(|&s| s > start) {
                cut = token_start;
            }
            while cut > start + 1 && is_glue(chars[cut]) && spans.token_start(cut).is_none() {
                cut -= 1;
            }
            out.push((start, cut));
            start = cut;
        }
        out.push((start, end));
    }

    /// Packs consecutive pieces greedily into chunks of at most `chunk_size` characters: a
    /// chunk closes only when the next piece does not fit, which is what merges tiny
    /// fragments into their neighbours. Each next chunk starts with as many of the previous
    /// chunk's trailing pieces as fit in `overlap`. Sizes are measured without the whitespace
    /// at the chunk's edges, which [`trim`] removes.
    fn pack(&self, chars: &[char], pieces: &[(usize, usize)]) -> Vec<(usize, usize)> {
        let size = self.config.chunk_size;
        // Each piece's content bounds; a whitespace-only piece is empty at its start.
        let bounds: Vec<(usize, usize)> = pieces
            .iter()
            .map(|&(s, e)| trim(chars, s, e).unwrap_or((s, s)))
            .collect();
        let mut chunks = Vec::new();
        let mut first = 0;
        while first < pieces.len() {
            let from = bounds[first].0;
            let mut last = first;
            while last + 1 < pieces.len() && bounds[last + 1].1 - from <= size {
                last += 1;
            }
            chunks.push((pieces[first].0, pieces[last].1));
            if last + 1 == pieces.len() {
                break;
            }
            // Step back over trailing pieces while they fit in the overlap and leave room for
            // the next new piece; `next > first` always, so the loop makes progress.
            let (to, after) = (bounds[last].1, bounds[last + 1].1);
            let mut next = last + 1;
            while next > first + 1
                && to.saturating_sub(bounds[next - 1].0) <= self.config.overlap
                && after - bounds[next - 1].0 <= size
            {
                next -= 1;
            }
            first = next;
        }
        chunks
    }
}

fn passage(chars: &[char], heading_path: &[String], start: usize, end: usize) -> Passage {
    Passage {
        index: 0,
        text: chars[start..end].iter().collect(),
        heading_path: heading_path.to_vec(),
        table_header: None,
        caption: None,
        table_spanned: None,
        char_start: start,
        char_end: end,
    }
}

/// `[start, end)` without leading and trailing whitespace, or `None` when nothing is left.
fn trim(chars: &[char], start: usize, end: usize) -> Option<(usize, usize)> {
    let first = (start..end).find(|&i| !chars[i].is_whitespace())?;
    let last = (first..end).rev().find(|&i| !chars[i].is_whitespace())?;
    Some((first, last + 1))
}

/// The positions in `(start, end)` where a piece may be cut at `level`: each is the index of
/// the first character of the next piece, so the separator (and the whitespace after it)
/// stays with the text before it.
fn cuts(chars: &[char], spans: &Spans, level: Level, start: usize, end: usize) -> Vec<usize> {
    let mut cuts = Vec::new();
    let mut i = start;
    while i < end {
        let Some(after) = separator_end(chars, spans, level, i, end) else {
            i += 1;
            continue;
        };
        if after > start && after < end && !spans.protects(after) {
            cuts.push(after);
        }
        i = after.max(i + 1);
    }
    cuts
}

/// When a separator of `level` starts at `i`, the index just past it: past the marks, any
/// closing quotes and brackets, and the whitespace that follow it.
fn separator_end(
    chars: &[char],
    spans: &Spans,
    level: Level,
    i: usize,
    end: usize,
) -> Option<usize> {
    let c = chars[i];
    if spans.covers(i) {
        // A `?` in a URL or the `,` of 1,000 ends nothing.
        return None;
    }
    let skip_ws = |mut j: usize| {
        while j < end && chars[j].is_whitespace() {
            j += 1;
        }
        j
    };
    match level {
        Level::Blank | Level::Line => {
            if c != '\n' {
                return None;
            }
            let after = skip_ws(i + 1);
            let breaks = chars[i..after].iter().filter(|&&c| c == '\n').count();
            (level == Level::Line || breaks >= 2).then_some(after)
        }
        Level::Sentence => {
            let is_end = matches!(
                c,
                '。' | '！' | '？' | '!' | '?' | '…' | '‼' | '⁇' | '⁈' | '⁉'
            ) || (c == '.' && chars.get(i + 1).is_none_or(|n| n.is_whitespace()));
            if !is_end {
                return None;
            }
            let mut j = i + 1;
            while j < end && (is_sentence_mark(chars[j]) || is_closer(chars[j])) {
                j += 1;
            }
            Some(skip_ws(j))
        }
        Level::Semicolon => matches!(c, '；' | ';').then(|| skip_ws(i + 1)),
        Level::Comma => matches!(c, '，' | ',' | '、').then(|| skip_ws(i + 1)),
        Level::Space => c.is_whitespace().then(|| skip_ws(i + 1)),
    }
}

fn is_sentence_mark(c: char) -> bool {
    matches!(
        c,
        '。' | '！' | '？' | '!' | '?' | '…' | '.' | '‼' | '⁇' | '⁈' | '⁉'
    )
}

/// Closing quotes and brackets, which belong to the sentence they close: `他说：“好。”`.
fn is_closer(c: char) -> bool {
    matches!(
        c,
        '」' | '』'
            | '”'
            | '’'
            | '"'
            | '\''
            | ')'
            | '）'
            | ']'
            | '］'
            | '】'
            | '》'
            | '〉'
            | '〕'
            | '}'
            | '｝'
    )
}

/// Characters that only modify the one before them: a cut before one would tear a
/// user-perceived character (é, 👍🏽, 👨‍👩‍👧) apart.
fn is_glue(c: char) -> bool {
    matches!(c,
        '\u{0300}'..='\u{036F}'     // combining diacritical marks
        | '\u{1AB0}'..='\u{1AFF}'
        | '\u{1DC0}'..='\u{1DFF}'
        | '\u{20D0}'..='\u{20FF}'
        | '\u{FE20}'..='\u{FE2F}'
        | '\u{200C}' | '\u{200D}'   // zero-width (non-)joiner
        | '\u{FE00}'..='\u{FE0F}'   // variation selectors
        | '\u{E0100}'..='\u{E01EF}'
        | '\u{1F3FB}'..='\u{1F3FF}' // skin tones
        | '\u{3099}' | '\u{309A}') // kana voicing marks
}

/// Tokens no cut may fall inside: URLs, and runs of ASCII letters and digits, with `.`, `,`
/// and `:` allowed between two digits (3.14, 1,000,000, 12:30) and `.`, `-` and `@` between
/// two letters or digits (ChatGLM-6B, main.rs, dev@example.com).
struct Spans {
    /// For each character, the start of the token that holds it, if any.
    token_of: Vec<Option<usize>>,
}

impl Spans {
    fn find(chars: &[char]) -> Self {
        let mut token_of = vec![None; chars.len()];
        let mut i = 0;
        while i < chars.len() {
            let len = url_len(chars, i).or_else(|| word_len(chars, i));
            match len {
                Some(len) => {
                    token_of[i..i + len].fill(Some(i));
                    i += len;
                }
                None => i += 1,
            }
        }
        Self { token_of }
    }

    /// Whether a cut before character `i` would fall inside a token.
    fn protects(&self, i: usize) -> bool {
        i > 0 && i < self.token_of.len() && self.token_of[i].is_some_and(|s| s < i)
    }

    /// The start of the token a cut before `i` would fall inside.
    fn token_start(&self, i: usize) -> Option<usize> {
        self.protects(i).then(|| self.token_of[i]).flatten()
    }

    /// Whether character `i` is part of a token.
    fn covers(&self, i: usize) -> bool {
        self.token_of.get(i).is_some_and(Option::is_some)
    }
}

/// The length of the URL starting at `i`, if one does: a scheme (`http://`, `https://`,
/// `ftp://`) or `www.`, then ASCII up to whitespace or a non-ASCII character, without the
/// trailing punctuation that ends the sentence around it.
fn url_len(chars: &[char], i: usize) -> Option<usize> {
    if i > 0 && chars[i - 1].is_ascii_alphanumeric() {
        return None;
    }
    let starts = |prefix: &str| {
        prefix
            .chars()
            .enumerate()
            .all(|(k, p)| chars.get(i + k).is_some_and(|c| c.eq_ignore_ascii_case(&p)))
    };
    let prefix = ["https://", "http://", "ftp://", "www."]
        .into_iter()
        .find(|p| starts(p))?
        .len();
    let mut end = i + prefix;
    while end < chars.len()
        && chars[end].is_ascii_graphic()
        && !matches!(chars[end], '<' | '>' | '"' | '`')
    {
        end += 1;
    }
    while end > i + prefix
        && matches!(
            chars[end - 1],
            '.' | ',' | ';' | ':' | '!' | '?' | ')' | ']' | '}' | '\''
        )
    {
        end -= 1;
    }
    (end > i + prefix).then_some(end - i)
}

/// The length of the ASCII word or number starting at `i`, if one of at least two characters
/// does (a lone character needs no protection).
fn word_len(chars: &[char], i: usize) -> Option<usize> {
    let word = |c: char| c.is_ascii_alphanumeric() || c == '_';
    if !word(chars[i]) || (i > 0 && word(chars[i - 1])) {
        return None;
    }
    let mut end = i + 1;
    while end < chars.len() {
        if word(chars[end]) {
            end += 1;
        } else if matches!(chars[end], '.' | ',' | ':')
            && chars[end - 1].is_ascii_digit()
            && chars.get(end + 1).is_some_and(char::is_ascii_digit)
        {
            end += 2;
        } else if matches!(chars[end], '.' | '-' | '@')
            && chars.get(end + 1).is_some_and(|&c| word(c))
        {
            // ChatGLM-6B, main.rs, v1.2.3, user@example.com: one token each.
            end += 2;
        } else {
            break;
        }
    }
    (end - i >= 2).then_some(end - i)
}

/// Each line of `chars` as (start, end without its `\n`, start of the next line).
fn line_spans(chars: &[char]) -> Vec<(usize, usize, usize)> {
    let mut lines = Vec::new();
    let mut line_start = 0;
    while line_start < chars.len() {
        let line_end = chars[line_start..]
            .iter()
            .position(|&c| c == '\n')
            .map_or(chars.len(), |p| line_start + p);
        let next_line = (line_end + 1).min(chars.len());
        lines.push((line_start, line_end, next_line));
        line_start = next_line;
    }
    lines
}

/// The sections of a markdown text: the text before the first heading, then one per
/// heading, each from the line after its heading to the next heading. Headings are ATX
/// (`## Title`) or setext (`Title` over a line of `=` or `-`, after a blank line), outside
/// fenced code blocks.
fn markdown_sections(chars: &[char]) -> Vec<Section> {
    let lines = line_spans(chars);
    let text_of = |k: usize| -> Option<String> {
        lines
            .get(k)
            .map(|&(start, end, _)| chars[start..end].iter().collect())
    };

    let texts: Vec<String> = (0..lines.len()).filter_map(text_of).collect();
    let code = code_block_of(texts.iter().map(String::as_str));
    let mut sections = Vec::new();
    let mut path: Vec<(usize, String)> = Vec::new();
    let mut body_start = 0;
    // Whether the line before starts no paragraph (blank, a heading, or none).
    let mut after_break = true;
    let mut k = 0;
    while let Some(line) = texts.get(k).cloned() {
        let (line_start, _, mut next_line) = lines[k];
        let in_code = code[k].is_some();
        k += 1;
        let mut heading = None;
        if !in_code {
            heading = atx_heading(&line);
            if heading.is_none()
                && after_break
                && let Some(level) = text_of(k).as_deref().and_then(setext_level)
                && setext_content(&line)
            {
                heading = Some((level, line.trim().to_string()));
                next_line = lines[k].2;
                k += 1;
            }
        }
        after_break = line.trim().is_empty() || heading.is_some();
        let Some((level, title)) = heading else {
            continue;
        };
        sections.push(Section {
            heading_path: path.iter().map(|(_, t)| t.clone()).collect(),
            start: body_start,
            end: line_start,
        });
        while path.last().is_some_and(|(l, _)| *l >= level) {
            path.pop();
        }
        path.push((level, title));
        body_start = next_line;
    }
    sections.push(Section {
        heading_path: path.into_iter().map(|(_, t)| t).collect(),
        start: body_start.min(chars.len()),
        end: chars.len(),
    });
    sections
}

/// A markdown table: its header row, and the span of its rows below the delimiter row.
struct Table {
    /// The first character of its header row (of an HTML table: of `<table`).
    start: usize,
    /// The paragraph before it ([`lead_paragraph`]).
    caption: Option<String>,
    /// The header row, trimmed.
    header: String,
    /// The first character of the first row under the delimiter row.
    body_start: usize,
    /// One past the last character of the last row.
    end: usize,
    /// Each body row's first character, with the text of the merged cells that earlier rows
    /// span into it (None when there are none): of an HTML table, its `rowspan` cells; of a
    /// markdown table, the label a ditto row continues ([`ditto_rows`]). An HTML row's own
    /// `rowspan` cells add an entry where each ends, with those cells added, for a passage
    /// that starts later in that row. In order of position.
    body_rows: Vec<(usize, Option<String>)>,
}

impl Table {
    /// The merged cells spanning into the row that holds `at` (the last row starting at or
    /// before it), joined by ` | `.
    fn spanned_at(&self, at: usize) -> Option<String> {
        let row = self.body_rows.partition_point(|(start, _)| *start <= at);
        self.body_rows.get(row.checked_sub(1)?)?.1.clone()
    }
}

/// The fenced code blocks of a markdown text, each as (the first character of its opening
/// fence line, one past that line, the paragraph before the block ([`lead_paragraph`])).
///
/// Only a passage that starts at the opening fence takes the caption: it has lost the
/// sentence introducing it ("以下是使用 LMDeploy 的示例："). One that starts further into a
/// long block continues a passage that already holds the fence, and a caption there only
/// dilutes its own lines (measured: it moved the visible set's `DEFAULT_EMBEDDING_MODEL`
/// passage from 1st to 7th).
fn code_blocks(chars: &[char]) -> Vec<(usize, usize, Option<String>)> {
    let spans = line_spans(chars);
    let texts: Vec<String> = spans
        .iter()
        .map(|&(start, end, _)| chars[start..end].iter().collect())
        .collect();
    let code = code_block_of(texts.iter().map(String::as_str));
    spans
        .iter()
        .enumerate()
        .filter(|&(k, _)| code[k] == Some(k))
        .map(|(_, &(start, end, _))| (start, end, lead_paragraph(chars, start)))
        .collect()
}

/// The tables of a markdown text, outside fenced code blocks: a line holding `|`, a delimiter
/// row under it (`|---|:--:|`), and the lines holding `|` that follow, up to a blank line.
fn markdown_tables(chars: &[char]) -> Vec<Table> {
    let lines: Vec<(usize, usize, String)> = line_spans(chars)
        .into_iter()
        .map(|(start, end, _)| (start, end, chars[start..end].iter().collect()))
        .collect();
    // The opening fence of the code block each line is in.
    let code = code_block_of(lines.iter().map(|l| l.2.as_str()));
    let mut tables = Vec::new();
    let mut k = 0;
    while k < lines.len() {
        let trimmed = lines[k].2.trim();
        if fence_marker(trimmed).is_some() {
            k += 1;
            continue;
        }
        if let Some(opening) = code[k]
            && let Some(table) = text_table(chars, &lines, k, lines[opening].0)
        {
            k = lines.partition_point(|l| l.0 < table.end);
            tables.push(table);
            continue;
        }
        let is_header = code[k].is_none()
            && trimmed.contains('|')
            && lines.get(k + 1).is_some_and(|l| is_table_delimiter(&l.2));
        if !is_header {
            k += 1;
            continue;
        }
        let header = trimmed.to_string();
        let mut last = k + 2;
        while lines.get(last).is_some_and(|l| {
            let row = l.2.trim();
            !row.is_empty() && row.contains('|') && fence_marker(row).is_none()
        }) {
            last += 1;
        }
        if last > k + 2 {
            tables.push(Table {
                start: lines[k].0,
                caption: lead_paragraph(chars, lines[k].0),
                header,
                body_start: lines[k + 2].0,
                end: lines[last - 1].1,
                body_rows: ditto_rows(&lines[k + 2..last]),
            });
        }
        k = last.max(k + 1);
    }
    tables.extend(html_tables(chars));
    tables
}

/// A table printed as text inside a code block, headed at line `k`: a header line, a rule
/// of dashes under it (`-------  --------`, two columns or more), and the lines up to a blank
/// line or the closing fence (`dataset  version  metric … qwen2-1.5b-instruct-hf`, then
/// `demo_gsm8k  1d7fe4  accuracy … 56.25`: OpenCompass prints its results so). A passage cut
/// below the rule has lost the column names that say which model a figure is of; it carries
/// the header, its whitespace collapsed, and the paragraph before the block as caption.
fn text_table(
    chars: &[char],
    lines: &[(usize, usize, String)],
    k: usize,
    block_start: usize,
) -> Option<Table> {
    let header = lines[k].2.split_whitespace().collect::<Vec<_>>();
    let rule = &lines.get(k + 1)?.2;
    let dash_runs = rule.split_whitespace().collect::<Vec<_>>();
    let is_rule = dash_runs.len() >= 2
        && dash_runs
            .iter()
            .all(|run| run.len() >= 2 && run.chars().all(|c| c == '-'));
    if header.len() < 2 || !is_rule {
        return None;
    }
    let mut last = k + 2;
    while lines.get(last).is_some_and(|l| {
        let row = l.2.trim();
        !row.is_empty() && fence_marker(row).is_none()
    }) {
        last += 1;
    }
    (last > k + 2).then(|| Table {
        start: lines[k].0,
        caption: lead_paragraph(chars, block_start),
        header: header.join(" "),
        body_start: lines[k + 2].0,
        end: lines[last - 1].1,
        body_rows: Vec::new(),
    })
}

/// Each body row of a markdown table with the label it continues: markdown has no merged
/// cells, so a table whose rows group under one model writes the model once and marks the
/// rows under it with `-` (or `〃`, `同上`, nothing) in its first column. A row so marked
/// carries the first cell of the nearest row above that names something; a passage starting
/// at it gets that label as context ([`Passage::table_spanned`]), as a passage starting
/// under an HTML `rowspan` cell does.
fn ditto_rows(rows: &[(usize, usize, String)]) -> Vec<(usize, Option<String>)> {
    let labels = ditto_labels(rows.iter().map(|(_, _, line)| line.as_str()));
    rows.iter()
        .map(|(start, _, _)| *start)
        .zip(labels)
        .collect()
}

/// The most characters of a table's caption paragraph kept as context (its start: where a
/// caption names its subject).
pub const MAX_CAPTION_CHARS: usize = 200;

/// The paragraph that ends just before the line holding `start` (blank lines between them
/// and lines of tags alone allowed), its lines joined by spaces and cut to
/// [`MAX_CAPTION_CHARS`]: None when a heading, a table row, a fence, a line starting with an
/// HTML tag and holding text, or the text's start comes first.
fn lead_paragraph(chars: &[char], start: usize) -> Option<String> {
    // Lines of tags alone skipped above a table, at most: a bound on the walk back.
    const MAX_WRAPPER_LINES: usize = 8;
    let mut wrappers = 0;
    let line_start = chars[..start]
        .iter()
        .rposition(|&c| c == '\n')
        .map_or(0, |p| p + 1);
    let mut end = line_start;
    let mut lines: Vec<String> = Vec::new();
    while end > 0 {
        let line_end = end - 1; // the '\n' ending the line before
        let begin = chars[..line_end]
            .iter()
            .rposition(|&c| c == '\n')
            .map_or(0, |p| p + 1);
        let line: String = chars[begin..line_end].iter().collect();
        let trimmed = line.trim();
        end = begin;
        // A line of tags alone (`<div align="center">`, `</details>`) wraps the table in a
        // README; the caption is above it.
        let wrapper = trimmed.starts_with('<') && strip_tags(trimmed).trim().is_empty();
        if wrapper {
            wrappers += 1;
        }
        if trimmed.is_empty() || (wrapper && wrappers <= MAX_WRAPPER_LINES) {
            if lines.is_empty() {
                continue;
            }
            break;
        }
        let structural = atx_heading(&line).is_some()
            || trimmed.contains('|')
            || fence_marker(trimmed).is_some()
            || trimmed.starts_with('<')
            || is_setext_underline(trimmed);
        if structural {
            break;
        }
        lines.push(trimmed.to_owned());
    }
    if lines.is_empty() {
        return None;
    }
    lines.reverse();
    let paragraph = lines.join(" ");
    Some(paragraph.chars().take(MAX_CAPTION_CHARS).collect())
}

/// A setext underline (`===` or `---`): the line above it is a heading, not a caption.
fn is_setext_underline(trimmed: &str) -> bool {
    !trimmed.is_empty() && (trimmed.chars().all(|c| c == '=') || trimmed.chars().all(|c| c == '-'))
}

/// The HTML tables a markdown text embeds (`<table>` … `</table>`, as READMEs write tables
/// with merged cells): the header is the first row's cells as a markdown row, the body what
/// follows that row's `</tr>`.
fn html_tables(chars: &[char]) -> Vec<Table> {
    let lower: String = chars.iter().map(|c| c.to_ascii_lowercase()).collect();
    // Char offsets of the lowercased text's byte offsets: every char lowercases to itself or
    // to one ASCII char, so the lengths per char are unchanged.
    let byte_to_char = |byte: usize| lower[..byte].chars().count();
    let mut tables = Vec::new();
    let mut from = 0;
    while let Some(open) = lower[from..].find("<table").map(|o| from + o) {
        let Some(close) = lower[open..].find("</table>").map(|c| open + c) else {
            break;
        };
        let table = &lower[open..close];
        let header_rows = html_header_rows(table);
        if let Some(&(_, row_end)) = header_rows.last() {
            let rows: Vec<Vec<HtmlCell>> = header_rows
                .iter()
                .map(|&(from, to)| {
                    let original: String = chars
                        [byte_to_char(open + from)..byte_to_char(open + to)]
                        .iter()
                        .collect();
                    html_cell_spans(&original)
                })
                .collect();
            let cells = header_columns(&rows);
            if !cells.is_empty() {
                let start = byte_to_char(open);
                let body_start = open + row_end + "</tr>".len();
                let mut spans = RowSpans::default();
                if let [.., last] = rows.as_slice() {
                    spans.fill(last.clone());
                }
                let mut body_rows = Vec::new();
                for (from, to) in row_pieces(&lower[body_start..close]) {
                    let row_start = byte_to_char(body_start + from);
                    let piece: String = chars[row_start..byte_to_char(body_start + to)]
                        .iter()
                        .collect();
                    let cells = html_cell_spans(&piece);
                    // The row's own merged cells, and its label (its first cell, when more
                    // follow), for a passage that starts after one of them inside this row:
                    // a wide row of `<td align="center">` cells is longer than a passage,
                    // and its numbers are nobody's without the model the row names.
                    let own: Vec<(usize, String)> = cells
                        .iter()
                        .enumerate()
                        .filter(|(i, c)| {
                            c.rowspan > 1 || (*i == 0 && cells.len() > 1 && !c.text.is_empty())
                        })
                        .map(|(_, c)| (row_start + piece[..c.end].chars().count(), c.text.clone()))
                        .collect();
                    let mut carried = spans.fill(cells).1;
                    body_rows.push((
                        row_start,
                        (!carried.is_empty()).then(|| carried.join(" | ")),
                    ));
                    for (end, text) in own {
                        carried.push(text);
                        body_rows.push((end, Some(carried.join(" | "))));
                    }
                }
                tables.push(Table {
                    start,
                    caption: lead_paragraph(chars, start),
                    header: format!("| {} |", cells.join(" | ")),
                    body_start: byte_to_char(body_start),
                    end: byte_to_char(close),
                    body_rows,
                });
            }
        }
        from = close + "</table>".len();
    }
    tables
}

/// The byte spans (in `table`, lowercased, from `<tr` to its `</tr>`) of an HTML table's
/// header rows: every row of its `<thead>` (multi-row headers: a task, then a metric, then
/// a dataset per column), else its first row. Empty when it has no closed row.
fn html_header_rows(table: &str) -> Vec<(usize, usize)> {
    let closed_row = |from: usize| {
        let start = from + table[from..].find("<tr")?;
        let end = start + table[start..].find("</tr>")?;
        Some((start, end))
    };
    let head = table.find("<thead").and_then(|start| {
        table[start..]
            .find("</thead>")
            .map(|end| (start, start + end))
    });
    let mut rows = Vec::new();
    if let Some((head_start, head_end)) = head {
        let mut from = head_start;
        while let Some((start, end)) = closed_row(from).filter(|&(start, _)| start < head_end) {
            rows.push((start, end));
            from = end;
        }
    }
    if rows.is_empty() {
        rows.extend(closed_row(0));
    }
    rows
}

/// The most header rows whose cells are joined into one column name.
const MAX_HEADER_ROWS: usize = 4;

/// One name per column of a table whose header has several rows: each column's cells from
/// the top row down (a `colspan` cell names every column it covers, a `rowspan` cell the
/// rows it covers), distinct texts joined by spaces: `ASR (zh) CER↓ AISHELL-1`. A one-row
/// header gives its cells as they are.
fn header_columns(rows: &[Vec<HtmlCell>]) -> Vec<String> {
    if let [row] = rows {
        return row.iter().map(|c| c.text.clone()).collect();
    }
    let mut columns: Vec<Vec<String>> = Vec::new();
    // Per column: how many more rows a rowspan cell above still covers.
    let mut covered: Vec<usize> = Vec::new();
    for row in rows.iter().take(MAX_HEADER_ROWS) {
        let mut column = 0;
        for cell in row {
            while covered.get(column).is_some_and(|&left| left > 0) {
                column += 1;
            }
            for c in column..column + cell.colspan {
                if columns.len() <= c {
                    columns.resize(c + 1, Vec::new());
                    covered.resize(c + 1, 0);
                }
                covered[c] = cell.rowspan.min(MAX_HEADER_ROWS);
                let names = &mut columns[c];
                if !cell.text.is_empty() && names.last() != Some(&cell.text) {
                    names.push(cell.text.clone());
                }
            }
            column += cell.colspan;
        }
        for left in &mut covered {
            *left = left.saturating_sub(1);
        }
    }
    columns.into_iter().map(|names| names.join(" ")).collect()
}

/// The most rows a merged cell is repeated in, and the most columns it covers: bounds on
/// what a `rowspan`/`colspan` attribute, which a document controls, can make us hold.
const MAX_ROWSPAN: usize = 1_000;
const MAX_COLSPAN: usize = 64;

/// One cell of an HTML row: its text and how many rows and columns it covers.
#[derive(Clone)]
struct HtmlCell {
    text: String,
    rowspan: usize,
    colspan: usize,
    /// Byte offset in the row where the cell ends (the next cell or row tag, or the row's end).
    end: usize,
}

/// The cells of an HTML row (`<td>`, `<th>`: tags removed, whitespace collapsed), with their `rowspan`/`colspan` (1 when absent
/// or unreadable, bounded by [`MAX_ROWSPAN`] and [`MAX_COLSPAN`]).
fn html_cell_spans(row: &str) -> Vec<HtmlCell> {
    // Each tag as (its start, one past its `>`, its lowercased name, whether it closes).
    let mut tags = Vec::new();
    let mut at = 0;
    while let Some(lt) = row[at..].find('<').map(|i| at + i) {
        let Some(gt) = row[lt..].find('>').map(|i| lt + i + 1) else {
            break;
        };
        let inner = &row[lt + 1..gt - 1];
        let closing = inner.starts_with('/');
        let name: String = inner
            .trim_start_matches('/')
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric())
            .map(|c| c.to_ascii_lowercase())
            .collect();
        tags.push((lt, gt, name, closing));
        at = gt;
    }
    let is_cell = |name: &str| name == "td" || name == "th";
    let mut cells = Vec::new();
    for (i, (_, open_end, name, closing)) in tags.iter().enumerate() {
        if *closing || !is_cell(name) {
            continue;
        }
        // The cell ends at the next cell tag, opening or closing, or at the row's end.
        let end = tags[i + 1..]
            .iter()
            .find(|(_, _, n, _)| is_cell(n) || n == "tr")
            .map_or(row.len(), |(start, ..)| *start);
        let text = strip_tags(&row[*open_end..end]);
        let attributes = row[..*open_end].rsplit_once('<').map_or("", |(_, tag)| tag);
        cells.push(HtmlCell {
            text: collapse_whitespace(&text),
            rowspan: span_attribute(attributes, "rowspan").min(MAX_ROWSPAN),
            colspan: span_attribute(attributes, "colspan").min(MAX_COLSPAN),
            end,
        });
    }
    cells
}

/// The number a tag's `name="n"` attribute gives (quoted or not), or 1.
fn span_attribute(tag: &str, name: &str) -> usize {
    let lower = tag.to_ascii_lowercase();
    let Some(at) = lower.find(name) else {
        return 1;
    };
    let value = lower[at + name.len()..]
        .trim_start()
        .strip_prefix('=')
        .map(|v| v.trim_start().trim_start_matches(['"', '\'']))
        .unwrap_or("");
    let digits: String = value.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok().filter(|n| *n >= 1).unwrap_or(1)
}

/// The merged cells of earlier rows that still cover columns of the rows to come.
#[derive(Default)]
struct RowSpans {
    /// Per column: the merged cell's text and how many more rows it covers.
    pending: Vec<Option<(String, usize)>>,
}

impl RowSpans {
    /// The row's cells with the merged cells of earlier rows put back in their columns, and
    /// those put-back cells alone.
    fn fill(&mut self, cells: Vec<HtmlCell>) -> (Vec<String>, Vec<String>) {
        let (mut row, mut carried) = (Vec::new(), Vec::new());
        let mut cells = cells.into_iter();
        let mut column = 0;
        loop {
            if let Some(Some((text, left))) = self.pending.get(column).cloned() {
                row.push(text.clone());
                carried.push(text.clone());
                self.pending[column] = (left > 1).then_some((text, left - 1));
                column += 1;
                continue;
            }
            let Some(cell) = cells.next() else {
                if self.pending[column.min(self.pending.len())..]
                    .iter()
                    .all(Option::is_none)
                {
                    break;
                }
                column += 1;
                continue;
            };
            if cell.rowspan > 1 {
                if self.pending.len() < column + cell.colspan {
                    self.pending.resize(column + cell.colspan, None);
                }
                for slot in &mut self.pending[column..column + cell.colspan] {
                    *slot = Some((cell.text.clone(), cell.rowspan - 1));
                }
            }
            row.push(cell.text);
            column += cell.colspan;
        }
        (row, carried)
    }
}

/// The byte spans of the rows of an HTML table body (lowercased): each from a `<tr` to the
/// next one or the end.
fn row_pieces(lower: &str) -> Vec<(usize, usize)> {
    let mut starts: Vec<usize> = lower.match_indices("<tr").map(|(i, _)| i).collect();
    starts.push(lower.len());
    starts.windows(2).map(|w| (w[0], w[1])).collect()
}

/// Whether `text` holds an HTML table cell.
fn has_html_cells(text: &str) -> bool {
    let lower = text.to_ascii_lowercase();
    lower.contains("<td") || lower.contains("<th")
}

/// `text` as a reader (the embedder, a prompt) should see it: when it holds HTML table
/// cells, its rows as `cell | cell` lines and every other tag removed
/// ([`Passage::indexed_text`] does the same); otherwise `text` itself.
pub fn readable_text(text: &str) -> std::borrow::Cow<'_, str> {
    if has_html_cells(text) {
        std::borrow::Cow::Owned(html_rows_as_text(text))
    } else {
        std::borrow::Cow::Borrowed(text)
    }
}

/// `text` with its HTML table rows as `cell | cell` lines and every other tag removed;
/// blank lines dropped. A passage that starts inside a row keeps that row's cells.
fn html_rows_as_text(text: &str) -> String {
    let lower = text.to_ascii_lowercase();
    // The rows, and before the first one what comes before it (a row's tail, or text).
    // Lowercasing ASCII keeps byte offsets, so they index `text` too.
    let mut pieces = row_pieces(&lower);
    match pieces.first() {
        None => pieces.push((0, text.len())),
        Some(&(first, _)) if first > 0 => pieces.insert(0, (0, first)),
        Some(_) => {}
    }
    let mut lines: Vec<String> = Vec::new();
    let mut spans = RowSpans::default();
    for piece in pieces.into_iter().map(|(from, to)| &text[from..to]) {
        let cells = spans.fill(html_cell_spans(piece)).0;
        if cells.iter().any(|c| !c.is_empty()) {
            // Text before the first cell (a piece that starts mid-cell) is a cell's tail.
            let head_end = piece.to_ascii_lowercase().find("<t").unwrap_or(0);
            let head = collapse_whitespace(&strip_tags(&piece[..head_end]));
            let mut row = Vec::with_capacity(cells.len() + 1);
            if !head.is_empty() {
                row.push(head);
            }
            row.extend(cells);
            lines.push(row.join(" | "));
        } else {
            lines.extend(
                strip_tags(piece)
                    .lines()
                    .map(collapse_whitespace)
                    .filter(|l| !l.is_empty()),
            );
        }
    }
    lines.join("\n")
}

fn collapse_whitespace(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// `html` without its tags.
fn strip_tags(html: &str) -> String {
    let mut out = String::with_capacity(html.len());
    let mut in_tag = false;
    for c in html.chars() {
        match c {
            '<' => in_tag = true,
            '>' => in_tag = false,
            c if !in_tag => out.push(c),
            _ => {}
        }
    }
    out
}

/// A setext underline: up to three spaces, then only `=` (level 1) or only `-` (level 2).
fn setext_level(line: &str) -> Option<usize> {
    let indent = line.len() - line.trim_start_matches(' ').len();
    let marks = line.trim();
    if indent > 3 || marks.is_empty() {
        None
    } else if marks.chars().all(|c| c == '=') {
        Some(1)
    } else if marks.chars().all(|c| c == '-') {
        Some(2)
    } else {
        None
    }
}

/// Whether a line can be a setext heading's text: not blank, not indented code, not a list
/// item or quote (under which `---` is a rule or a list, not an underline).
fn setext_content(line: &str) -> bool {
    let indent = line.len() - line.trim_start_matches(' ').len();
    let text = line.trim();
    indent <= 3
        && !text.is_empty()
        && !text.starts_with(['>', '|'])
        && !["- ", "* ", "+ "].iter().any(|m| text.starts_with(m))
}

/// An ATX heading line: up to three spaces, one to six `#`, then a space or the line's end;
/// the title without a closing `#` sequence.
fn atx_heading(line: &str) -> Option<(usize, String)> {
    let indent = line.len() - line.trim_start_matches(' ').len();
    if indent > 3 {
        return None;
    }
    let rest = &line[indent..];
    let level = rest.len() - rest.trim_start_matches('#').len();
    if !(1..=6).contains(&level) {
        return None;
    }
    let rest = &rest[level..];
    if !(rest.is_empty() || rest.starts_with([' ', '\t'])) {
        return None;
    }
    let mut title = rest.trim();
    let unclosed = title.trim_end_matches('#');
    if unclosed.is_empty() || unclosed.ends_with([' ', '\t']) {
        title = unclosed.trim_end();
    }
    Some((level, title.to_string()))
}
