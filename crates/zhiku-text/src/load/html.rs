//! The visible text of an HTML page, as markdown-ish plain text.
//!
//! html5gum is a WHATWG tokenizer with no dependencies: enough to tell text from markup and
//! to decode character references, without building a DOM (scraper and html2text pull in
//! html5ever and a selector engine, many times the build). Its "naive" state switching reads
//! `<script>` and `<style>` bodies as raw text, as a browser does.

use html5gum::{DefaultEmitter, Token, Tokenizer};

/// Elements whose content a reader never sees.
const INVISIBLE: &[&[u8]] = &[
    b"script",
    b"style",
    b"noscript",
    b"template",
    b"head",
    b"title",
    b"svg",
    b"iframe",
    b"object",
    b"canvas",
];

/// Elements that open a paragraph: a blank line before and after.
const PARAGRAPH: &[&[u8]] = &[
    b"p",
    b"blockquote",
    b"pre",
    b"table",
    b"ul",
    b"ol",
    b"dl",
    b"section",
    b"article",
    b"header",
    b"footer",
    b"nav",
    b"aside",
    b"main",
    b"figure",
    b"form",
    b"fieldset",
    b"address",
    b"hr",
    b"details",
    b"body",
];

/// Elements that start a new line.
const LINE: &[&[u8]] = &[
    b"br",
    b"div",
    b"li",
    b"tr",
    b"dt",
    b"dd",
    b"figcaption",
    b"caption",
    b"summary",
    b"center",
    b"option",
    b"legend",
];

/// Elements that never have content, so never an end tag to wait for.
const VOID: &[&[u8]] = &[
    b"area", b"base", b"br", b"col", b"embed", b"hr", b"img", b"input", b"link", b"meta",
    b"source", b"track", b"wbr",
];

/// The visible text of `html`: no markup, no script or style, whitespace collapsed as a
/// browser does, block elements as line breaks, `h1`–`h6` as `#` heading lines.
pub(super) fn visible_text(html: &str) -> String {
    let mut emitter = DefaultEmitter::default();
    emitter.naively_switch_states(true);
    let mut out = Output::default();
    // The invisible element being skipped, and how many of its kind are open inside it.
    let mut hidden: Option<(Vec<u8>, usize)> = None;
    for token in Tokenizer::new_with_emitter(html, emitter) {
        // The tokenizer's error type for a &str is `Infallible`.
        let Ok(token) = token;
        match token {
            Token::StartTag(tag) => {
                let name: &[u8] = &tag.name;
                if let Some((skipped, depth)) = &mut hidden {
                    if name == skipped.as_slice() && !tag.self_closing {
                        *depth += 1;
                    } else if name == b"body" && skipped.as_slice() == b"head" {
                        // `</head>` may be left out.
                        hidden = None;
                    }
                    continue;
                }
                let hidden_attr = tag.attributes.contains_key(b"hidden".as_slice())
                    || tag
                        .attributes
                        .get(b"aria-hidden".as_slice())
                        .is_some_and(|v| v.value.as_slice() == b"true");
                if (INVISIBLE.contains(&name) || hidden_attr)
                    && !tag.self_closing
                    && !VOID.contains(&name)
                {
                    hidden = Some((name.to_vec(), 0));
                    continue;
                }
                out.start(name);
            }
            Token::EndTag(tag) => {
                let name: &[u8] = &tag.name;
                if let Some((skipped, depth)) = &mut hidden {
                    if name == skipped.as_slice() {
                        if *depth == 0 {
                            hidden = None;
                        } else {
                            *depth -= 1;
                        }
                    }
                    continue;
                }
                out.end(name);
            }
            Token::String(text) if hidden.is_none() => {
                out.text(&String::from_utf8_lossy(&text.value));
            }
            _ => {}
        }
    }
    out.finish()
}

/// The text being built, with the state whitespace collapsing needs.
#[derive(Default)]
struct Output {
    text: String,
    /// Whitespace was seen since the last character written.
    space: bool,
    /// Inside `<pre>`: whitespace is kept.
    pre: usize,
    /// Inside `<h1>`–`<h6>`: line breaks become spaces, so the heading stays one line.
    heading: bool,
}

impl Output {
    fn start(&mut self, name: &[u8]) {
        if let Some(level) = heading_level(name) {
            self.newlines(2);
            self.text.push_str(&"#".repeat(level));
            self.text.push(' ');
            self.heading = true;
        } else if name == b"pre" {
            self.newlines(2);
            self.pre += 1;
        } else if PARAGRAPH.contains(&name) {
            self.newlines(2);
        } else if LINE.contains(&name) {
            self.newlines(1);
        } else if matches!(name, b"td" | b"th" | b"img") {
            // Cells and images separate words; `text` adds no space at a line start.
            self.space = true;
        }
    }

    fn end(&mut self, name: &[u8]) {
        if heading_level(name).is_some() {
            self.heading = false;
            self.newlines(2);
        } else if name == b"pre" {
            self.pre = self.pre.saturating_sub(1);
            self.newlines(2);
        } else if PARAGRAPH.contains(&name) {
            self.newlines(2);
        } else if LINE.contains(&name) {
            self.newlines(1);
        }
    }

    fn text(&mut self, text: &str) {
        for c in text.chars() {
            if self.pre > 0 && !self.heading {
                self.text.push(c);
            } else if c.is_whitespace() {
                self.space = true;
            } else {
                if self.space && !self.text.is_empty() && !self.text.ends_with(['\n', ' ']) {
                    self.text.push(' ');
                }
                self.space = false;
                self.text.push(c);
            }
        }
    }

    /// Ends the current line, making sure `count` line breaks end the text so far.
    fn newlines(&mut self, count: usize) {
        if self.heading {
            self.space = true;
            return;
        }
        self.space = false;
        let trimmed = self.text.trim_end_matches([' ', '\t']).len();
        self.text.truncate(trimmed);
        if self.text.is_empty() {
            return;
        }
        let have = self.text.len() - self.text.trim_end_matches('\n').len();
        for _ in have..count {
            self.text.push('\n');
        }
    }

    fn finish(self) -> String {
        self.text.trim().to_string()
    }
}

fn heading_level(name: &[u8]) -> Option<usize> {
    match name {
        [b'h', level @ b'1'..=b'6'] => Some(usize::from(level - b'0')),
        _ => None,
    }
}
