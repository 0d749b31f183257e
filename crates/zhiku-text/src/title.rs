//! The title a document is indexed under.
//!
//! A passage cut from a long README rarely names its project: the section "软硬件依赖" of
//! LLaMA-Factory's README says `transformers 4.49.0` and nothing else, and a knowledge base
//! of many projects has such a section in each. The file name usually does name it, so the
//! orchestrator embeds and keyword-indexes every passage under its document's title
//! (contextual chunk headers; measured in the docs' eval benchmark page).

/// File stems that say nothing about what a document is about; their directory does.
const GENERIC_STEMS: &[&str] = &[
    "readme", "index", "main", "home", "doc", "docs", "document", "untitled", "intro",
];

/// The title of the document at `source` (a file name, path or URL): its file name without
/// the extension, with the directory in front (`LLaMA-Factory / README_zh`) when the name
/// alone is generic (`README_zh.md`, `index.html`). Empty when `source` names no file.
///
/// ```
/// use zhiku_text::document_title;
/// assert_eq!(document_title("docs/xverse-13b--README.md"), "xverse-13b--README");
/// assert_eq!(document_title("LLaMA-Factory/README_zh.md"), "LLaMA-Factory / README_zh");
/// assert_eq!(document_title("部署指南.pdf"), "部署指南");
/// ```
pub fn document_title(source: &str) -> String {
    // A URL's query and fragment are not part of its name.
    let path = source.split(['?', '#']).next().unwrap_or(source);
    let mut parts = path
        .split(['/', '\\'])
        .map(str::trim)
        .filter(|p| !p.is_empty() && *p != "." && *p != "..");
    let Some(file) = parts.next_back() else {
        return String::new();
    };
    let stem = strip_extension(file);
    if !is_generic(stem) {
        return stem.to_owned();
    }
    match parts.next_back() {
        // `https://host/index.html`: the host is no title either.
        Some(parent) if !parent.ends_with(':') && !path.contains("://") => {
            format!("{parent} / {stem}")
        }
        _ => stem.to_owned(),
    }
}

/// `guide.md` → `guide`; a leading dot (`.env`) is the name, not an extension.
fn strip_extension(file: &str) -> &str {
    match file.rfind('.') {
        Some(dot) if dot > 0 => &file[..dot],
        _ => file,
    }
}

/// `README`, `readme_zh`, `README-CN`, `index.zh-cn`: a generic stem with or without a
/// language tag.
fn is_generic(stem: &str) -> bool {
    let lower = stem.to_ascii_lowercase();
    let base = lower
        .split(['_', '-', '.'])
        .next()
        .unwrap_or(lower.as_str());
    GENERIC_STEMS.contains(&base) && lower[base.len()..].len() <= 6
}

#[cfg(test)]
mod tests {
    use super::document_title;

    #[test]
    fn a_named_file_is_its_own_title() {
        assert_eq!(document_title("qwen--README_CN.md"), "qwen--README_CN");
        assert_eq!(
            document_title("eval/llm-docs-zh/docs/chinese-llama-alpaca-2--scripts--README.md"),
            "chinese-llama-alpaca-2--scripts--README"
        );
        assert_eq!(document_title("C:\\资料\\产品手册.docx"), "产品手册");
        assert_eq!(document_title("notes"), "notes");
        assert_eq!(document_title(".env"), ".env");
    }

    #[test]
    fn a_generic_name_takes_its_directory() {
        assert_eq!(
            document_title("repos/LLaMA-Factory/README_zh.md"),
            "LLaMA-Factory / README_zh"
        );
        assert_eq!(
            document_title("MiniCPM/README-CN.md"),
            "MiniCPM / README-CN"
        );
        assert_eq!(
            document_title("site/guide/index.zh-cn.html"),
            "guide / index.zh-cn"
        );
        assert_eq!(document_title("./docs/README.md"), "docs / README");
    }

    #[test]
    fn generic_names_without_a_directory_stay_as_they_are() {
        assert_eq!(document_title("README.md"), "README");
        assert_eq!(document_title("https://example.com/index.html"), "index");
        assert_eq!(
            document_title("https://example.com/wiki/deploy.html?x=1#top"),
            "deploy"
        );
    }

    #[test]
    fn a_longer_name_that_starts_like_a_generic_one_is_not_generic() {
        assert_eq!(
            document_title("x/readme_for_the_operators_of_zhiku.md"),
            "readme_for_the_operators_of_zhiku"
        );
        assert_eq!(
            document_title("x/mainland-china-mirrors.md"),
            "mainland-china-mirrors"
        );
    }

    #[test]
    fn nothing_to_name() {
        assert_eq!(document_title(""), "");
        assert_eq!(document_title("/"), "");
        assert_eq!(document_title("  "), "");
    }
}
