//! Incremental decoding that never splits a UTF-8 character between stream events.
//!
//! A Chinese character often spans several byte-level tokens; decoding each token alone
//! would give U+FFFD halves. Text is emitted only once the decoded tail is whole.

use crate::error::GeneratorError;
use zhiku_lm::tokenizer::GenTokenizer;

pub struct DecodeStream {
    tokens: Vec<u32>,
    /// Start of the window re-decoded for context (tokenizers may need a token before).
    prev: usize,
    /// Tokens up to here are already emitted.
    current: usize,
}

impl Default for DecodeStream {
    fn default() -> Self {
        Self::new()
    }
}

impl DecodeStream {
    pub fn new() -> Self {
        Self {
            tokens: Vec::new(),
            prev: 0,
            current: 0,
        }
    }

    /// Adds a token; returns the new text it completes, if any.
    pub fn push(
        &mut self,
        tokenizer: &GenTokenizer,
        token: u32,
    ) -> Result<Option<String>, GeneratorError> {
        let before = tokenizer.decode(&self.tokens[self.prev..self.current])?;
        self.tokens.push(token);
        let after = tokenizer.decode(&self.tokens[self.prev..])?;
        if after.len() > before.len()
            && !after.ends_with('\u{FFFD}')
            && after.is_char_boundary(before.len())
        {
            let text = after[before.len()..].to_owned();
            self.prev = self.current;
            self.current = self.tokens.len();
            Ok(Some(text))
        } else {
            Ok(None)
        }
    }

    /// Whatever is left undecoded at the end (may hold U+FFFD for a truncated character).
    pub fn finish(&mut self, tokenizer: &GenTokenizer) -> Result<Option<String>, GeneratorError> {
        let before = tokenizer.decode(&self.tokens[self.prev..self.current])?;
        let after = tokenizer.decode(&self.tokens[self.prev..])?;
        self.prev = self.current;
        self.current = self.tokens.len();
        if after.len() > before.len() && after.is_char_boundary(before.len()) {
            Ok(Some(after[before.len()..].to_owned()))
        } else {
            Ok(None)
        }
    }

    pub fn tokens(&self) -> &[u32] {
        &self.tokens
    }
}

/// Holds back the text that could be the start of a stop string, so that a stop string is
/// never streamed, not even partly.
pub struct StopMatcher {
    stops: Vec<String>,
    longest: usize,
    text: String,
    emitted: usize,
}

pub enum StopOutcome {
    /// Text safe to emit now (may be empty).
    Continue(String),
    /// A stop string appeared: the text before it that is still to emit.
    Stopped(String),
}

impl StopMatcher {
    pub fn new(stops: Vec<String>) -> Self {
        let stops: Vec<String> = stops.into_iter().filter(|s| !s.is_empty()).collect();
        let longest = stops.iter().map(String::len).max().unwrap_or(0);
        Self {
            stops,
            longest,
            text: String::new(),
            emitted: 0,
        }
    }

    pub fn push(&mut self, piece: &str) -> StopOutcome {
        let search_from = self.emitted.saturating_sub(self.longest);
        self.text.push_str(piece);
        let found = self
            .stops
            .iter()
            .filter_map(|s| {
                let start = floor_boundary(&self.text, search_from);
                self.text[start..].find(s.as_str()).map(|i| start + i)
            })
            .min();
        if let Some(at) = found {
            let out = self.text[self.emitted.min(at)..at].to_owned();
            self.text.truncate(at);
            self.emitted = at;
            return StopOutcome::Stopped(out);
        }
        // Keep back up to longest-1 bytes that may begin a stop string.
        let safe = if self.longest == 0 {
            self.text.len()
        } else {
            floor_boundary(&self.text, self.text.len().saturating_sub(self.longest - 1))
        };
        if safe > self.emitted {
            let out = self.text[self.emitted..safe].to_owned();
            self.emitted = safe;
            StopOutcome::Continue(out)
        } else {
            StopOutcome::Continue(String::new())
        }
    }

    /// The held-back tail, at the end of generation.
    pub fn flush(&mut self) -> String {
        let out = self.text[self.emitted..].to_owned();
        self.emitted = self.text.len();
        out
    }

    /// All text so far, stop string excluded.
    pub fn text(&self) -> &str {
        &self.text
    }
}

fn floor_boundary(s: &str, mut i: usize) -> usize {
    while i > 0 && !s.is_char_boundary(i) {
        i -= 1;
    }
    i.min(s.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(stops: &[&str], pieces: &[&str]) -> (String, bool) {
        let mut m = StopMatcher::new(stops.iter().map(|s| s.to_string()).collect());
        let mut out = String::new();
        for p in pieces {
            match m.push(p) {
                StopOutcome::Continue(t) => out.push_str(&t),
                StopOutcome::Stopped(t) => {
                    out.push_str(&t);
                    return (out, true);
                }
            }
        }
        out.push_str(&m.flush());
        (out, false)
    }

    #[test]
    fn stop_strings_across_pieces_are_never_emitted() {
        assert_eq!(
            run(&["<END>"], &["答案是", "小拾<E", "ND>后面"]),
            ("答案是小拾".into(), true)
        );
        assert_eq!(run(&["。"], &["你好", "。再见"]), ("你好".into(), true));
        assert_eq!(run(&["xyz"], &["abc", "xy"]), ("abcxy".into(), false));
        assert_eq!(run(&[], &["a", "b"]), ("ab".into(), false));
    }
}
