//! Property tests of the splitter: the guarantees its doc comment states, on Chinese, mixed and
//! arbitrary Unicode text, for arbitrary valid sizes.

use proptest::prelude::*;
use zhiku_text::{Passage, PassageSplitter, SplitterConfig};

/// The slack the splitter documents: passage text never exceeds `chunk_size` at all.
const SLACK: usize = 0;

/// Checks every stated guarantee of `passages` split from `source`. `skipped` marks the source
/// characters that need no covering (markdown heading lines).
fn check(source: &str, config: SplitterConfig, passages: &[Passage], skipped: &[bool]) {
    let chars: Vec<char> = source.chars().collect();
    let mut covered = vec![false; chars.len()];
    for (i, p) in passages.iter().enumerate() {
        assert_eq!(p.index, i, "indexes run from 0 without gaps");
        let len = p.text.chars().count();
        assert!(
            len <= config.chunk_size + SLACK,
            "passage {i} has {len} chars > {}",
            config.chunk_size
        );
        assert!(p.char_start < p.char_end, "passage {i} is empty");
        assert!(p.char_end <= chars.len());
        let slice: String = chars[p.char_start..p.char_end].iter().collect();
        assert_eq!(
            p.text, slice,
            "passage {i} is not the source at its offsets"
        );
        assert_eq!(len, p.char_end - p.char_start);
        assert!(!p.text.starts_with(char::is_whitespace));
        assert!(!p.text.ends_with(char::is_whitespace));
        covered[p.char_start..p.char_end].fill(true);
        if i > 0 {
            let prev = &passages[i - 1];
            assert!(p.char_start > prev.char_start, "starts increase");
            assert!(p.char_end > prev.char_end, "ends increase");
            let shared = prev.char_end.saturating_sub(p.char_start);
            assert!(
                shared <= config.overlap,
                "passages {} and {i} share {shared} chars > overlap {}",
                i - 1,
                config.overlap
            );
            if shared > 0 {
                // The shared text is the same in both passages and in the source.
                let tail: String = prev.text.chars().skip(len_of(prev) - shared).collect();
                let head: String = p.text.chars().take(shared).collect();
                assert_eq!(tail, head);
                let at: String = chars[p.char_start..prev.char_end].iter().collect();
                assert_eq!(head, at);
            }
        }
    }
    for (i, c) in chars.iter().enumerate() {
        if !c.is_whitespace() && !skipped[i] {
            assert!(covered[i], "char {i} ({c:?}) is in no passage");
        }
    }
}

/// Splits plain `source` and checks every guarantee.
fn check_plain(source: &str, config: SplitterConfig) -> Vec<Passage> {
    let passages = splitter(config).split(source);
    check(
        source,
        config,
        &passages,
        &vec![false; source.chars().count()],
    );
    passages
}

fn len_of(p: &Passage) -> usize {
    p.text.chars().count()
}

fn configs() -> impl Strategy<Value = SplitterConfig> {
    prop_oneof![
        (1usize..40).prop_flat_map(|size| (Just(size), 0..size)),
        (40usize..300).prop_flat_map(|size| (Just(size), 0..size)),
    ]
    .prop_map(|(chunk_size, overlap)| SplitterConfig {
        chunk_size,
        overlap,
    })
}

fn splitter(config: SplitterConfig) -> PassageSplitter {
    PassageSplitter::new(config).expect("strategy makes overlap < chunk_size")
}

/// Chinese prose: CJK ideographs, Chinese punctuation, closing quotes, line breaks.
fn chinese() -> impl Strategy<Value = String> {
    "[\u{4e00}-\u{9fa5}\u{4e00}-\u{9fa5}\u{4e00}-\u{9fa5}，。！？；、：“”「」……\n ]{0,700}"
}

/// Tokens that must stay whole, with how they may appear in text.
const PROTECTED: &[&str] = &[
    "3.14",
    "1,000,000",
    "12:30",
    "https://example.com/a.b?c=1",
    "http://zhiku.invalid/docs/install.html#gpu",
    "www.example.org/路径",
    "ChatGLM-6B",
    "LoRA",
];

/// Mixed Chinese and English text with numbers and URLs.
fn mixed() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        4 => "[\u{4e00}-\u{9fa5}]{1,12}",
        2 => "[a-zA-Z]{1,10}",
        1 => "[0-9]{1,6}",
        1 => prop::sample::select(PROTECTED).prop_map(|t| format!(" {t} ")),
        3 => prop::sample::select(&["。", "！", "？", "；", "，", ", ", ". ", "! ", "? ", "; ", "…", "。」", "！”", "、"][..])
            .prop_map(str::to_string),
        2 => prop::sample::select(&[" ", "\n", "\n\n", "\r\n", "\t", "  \n \n"][..]).prop_map(str::to_string),
    ];
    prop::collection::vec(piece, 0..160).prop_map(|v| v.concat())
}

/// Any Unicode scalar values at all, including controls, combining marks and emoji.
fn any_unicode() -> impl Strategy<Value = String> {
    prop::collection::vec(any::<char>(), 0..500).prop_map(|v| v.into_iter().collect())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn chinese_text_keeps_every_guarantee(text in chinese(), config in configs()) {
        check_plain(&text, config);
    }

    #[test]
    fn mixed_text_keeps_every_guarantee(text in mixed(), config in configs()) {
        check_plain(&text, config);
    }

    #[test]
    fn any_unicode_keeps_every_guarantee(text in any_unicode(), config in configs()) {
        check_plain(&text, config);
    }

    #[test]
    fn splitting_is_deterministic(text in mixed(), config in configs()) {
        let s = splitter(config);
        prop_assert_eq!(s.split(&text), s.split(&text));
    }

    /// No passage boundary falls inside a URL, number or word that fits in a chunk.
    #[test]
    fn protected_tokens_are_never_cut(
        parts in prop::collection::vec(
            (prop::sample::select(PROTECTED), "[\u{4e00}-\u{9fa5}，。 ]{0,30}"),
            1..20,
        ),
        config in configs(),
    ) {
        let mut text = String::new();
        let mut tokens = Vec::new();
        for (token, filler) in &parts {
            text.push_str(filler);
            text.push(' ');
            let start = text.chars().count();
            text.push_str(token);
            tokens.push((start, start + token.chars().count()));
            text.push(' ');
        }
        let passages = check_plain(&text, config);
        for p in &passages {
            for &(start, end) in &tokens {
                if end - start > config.chunk_size {
                    continue;
                }
                for bound in [p.char_start, p.char_end] {
                    prop_assert!(
                        bound <= start || bound >= end,
                        "passage {:?} cuts token {:?}",
                        p.text,
                        &text.chars().skip(start).take(end - start).collect::<String>()
                    );
                }
            }
        }
    }

    /// Sentences that fit in a chunk are whole in every passage that holds part of them.
    #[test]
    fn sentences_that_fit_are_never_cut(
        sentences in prop::collection::vec(
            ("[\u{4e00}-\u{9fa5}，]{1,20}", prop::sample::select(&["。", "！", "？", "。」", "？”", "…"][..])),
            1..60,
        ),
        chunk_size in 25usize..200,
        overlap_share in 0usize..100,
    ) {
        let config = SplitterConfig { chunk_size, overlap: chunk_size * overlap_share / 100 };
        let mut text = String::new();
        let mut bounds = vec![0];
        for (body, end) in &sentences {
            text.push_str(body);
            text.push_str(end);
            bounds.push(text.chars().count());
        }
        let passages = check_plain(&text, config);
        for p in &passages {
            prop_assert!(bounds.contains(&p.char_start), "{:?} starts mid-sentence", p.text);
            prop_assert!(bounds.contains(&p.char_end), "{:?} ends mid-sentence", p.text);
        }
    }

    /// Markdown: heading lines are in no passage, their path is on every passage under them,
    /// and everything else keeps the plain-text guarantees.
    #[test]
    fn markdown_headings_travel_with_their_passages(
        sections in prop::collection::vec(
            (
                1usize..5,
                any::<bool>(),
                "[\u{4e00}-\u{9fa5}a-z]{1,8}",
                "[\u{4e00}-\u{9fa5}，。！\n ]{0,200}",
            ),
            0..12,
        ),
        preamble in "[\u{4e00}-\u{9fa5}。\n]{0,50}",
        config in configs(),
    ) {
        let mut text = preamble.clone();
        let mut skipped = vec![false; text.chars().count()];
        // For each source char, the heading path it sits under.
        let mut path_at = vec![Vec::<String>::new(); text.chars().count()];
        let mut stack: Vec<(usize, String)> = Vec::new();
        for (level, setext, title, body) in &sections {
            // A setext heading (levels 1 and 2 only) needs a blank line above it.
            let setext = *setext && *level <= 2;
            let breaks = if setext { 2 } else { 1 };
            while !text.is_empty() && !text.ends_with(&"\n".repeat(breaks)) {
                text.push('\n');
                skipped.push(false);
                path_at.push(stack.iter().map(|(_, t)| t.clone()).collect());
            }
            let line = if setext {
                format!("{title}\n{}\n", if *level == 1 { "===" } else { "-" })
            } else {
                format!("{} {title}\n", "#".repeat(*level))
            };
            skipped.extend(std::iter::repeat_n(true, line.chars().count()));
            while stack.last().is_some_and(|(l, _)| l >= level) {
                stack.pop();
            }
            stack.push((*level, title.clone()));
            let path: Vec<String> = stack.iter().map(|(_, t)| t.clone()).collect();
            path_at.extend(std::iter::repeat_n(path.clone(), line.chars().count()));
            text.push_str(&line);
            text.push_str(body);
            skipped.extend(std::iter::repeat_n(false, body.chars().count()));
            path_at.extend(std::iter::repeat_n(path, body.chars().count()));
        }
        let passages = splitter(config).split_markdown(&text);
        check(&text, config, &passages, &skipped);
        for p in &passages {
            for i in p.char_start..p.char_end {
                prop_assert!(!skipped[i], "{:?} holds a heading line", p.text);
                prop_assert_eq!(&p.heading_path, &path_at[i]);
            }
            let expected = if p.heading_path.is_empty() {
                p.text.clone()
            } else {
                format!("{}\n{}", p.heading_path.join(" > "), p.text)
            };
            prop_assert_eq!(p.indexed_text(), expected);
        }
    }
}

#[test]
fn overlap_must_be_smaller_than_chunk_size() {
    for (chunk_size, overlap) in [(0, 0), (10, 10), (10, 11), (250, 250)] {
        assert!(
            PassageSplitter::new(SplitterConfig {
                chunk_size,
                overlap
            })
            .is_err(),
            "{chunk_size}/{overlap} accepted"
        );
    }
    let err = PassageSplitter::new(SplitterConfig {
        chunk_size: 10,
        overlap: 10,
    })
    .expect_err("overlap == chunk_size");
    assert_eq!(
        err.to_string(),
        "overlap (10) must be smaller than chunk_size (10)"
    );
    assert!(PassageSplitter::new(SplitterConfig::default()).is_ok());
    assert_eq!(
        SplitterConfig::default(),
        SplitterConfig {
            chunk_size: 250,
            overlap: 50
        }
    );
}

#[test]
fn empty_and_blank_text_give_no_passages() {
    let s = PassageSplitter::default();
    assert!(s.split("").is_empty());
    assert!(s.split(" \n\n\t ").is_empty());
    assert!(s.split_markdown("# 只有标题\n## 没有正文\n").is_empty());
}
