//! Bytes to text for the text formats (txt, md, html, csv).
//!
//! The rule, in order: a byte-order mark decides (UTF-8, UTF-16LE/BE); bytes with a NUL are
//! binary; valid UTF-8 is UTF-8; anything else must be valid GB18030, the superset of GBK and
//! GB2312 in which Chinese files not in UTF-8 are almost always written (Windows Notepad and
//! Excel in a Chinese locale save them). Valid UTF-8 is very rarely valid-looking GB18030
//! mojibake the other way round, so trying UTF-8 first is safe. Other legacy encodings
//! (Big5, Shift_JIS, Latin-1) are out of scope: they either fail as GB18030 or decode into
//! the wrong characters, so a caller with such files should convert them first.

use encoding_rs::{Encoding, GB18030};

/// How many control characters (other than tab, line and form feeds) in a hundred make a
/// decoded file "binary": real text has next to none.
const MAX_CONTROL_PERCENT: usize = 1;

/// Decodes `bytes` by the rule above; the error says why they are not text.
pub(super) fn decode(bytes: &[u8]) -> Result<String, String> {
    let text = if let Some((encoding, bom)) = Encoding::for_bom(bytes) {
        strict(encoding, &bytes[bom..])
            .ok_or_else(|| format!("invalid {} after its byte-order mark", encoding.name()))?
    } else if bytes.contains(&0) {
        return Err("it holds NUL bytes: binary data".to_string());
    } else if let Ok(text) = std::str::from_utf8(bytes) {
        text.to_string()
    } else {
        strict(GB18030, bytes).ok_or_else(|| {
            "its bytes are neither UTF-8 nor GB18030/GBK: binary data or another encoding"
                .to_string()
        })?
    };
    let chars = text.chars().count();
    let controls = text
        .chars()
        .filter(|&c| c.is_control() && !matches!(c, '\t' | '\n' | '\r' | '\x0c'))
        .count();
    if controls > 0 && controls * 100 > chars * MAX_CONTROL_PERCENT {
        return Err(format!(
            "{controls} of its {chars} characters are control characters: binary data"
        ));
    }
    Ok(normalize_line_ends(&text))
}

/// Decodes without replacement characters: an invalid sequence is a refusal, not a `�`.
fn strict(encoding: &'static Encoding, bytes: &[u8]) -> Option<String> {
    encoding
        .decode_without_bom_handling_and_without_replacement(bytes)
        .map(|text| text.into_owned())
}

/// `\r\n` and lone `\r` become `\n`, so the splitter sees one kind of line break.
fn normalize_line_ends(text: &str) -> String {
    if text.contains('\r') {
        text.replace("\r\n", "\n").replace('\r', "\n")
    } else {
        text.to_string()
    }
}
