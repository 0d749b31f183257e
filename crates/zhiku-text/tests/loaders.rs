//! Loader tests on real files of every format, made here byte by byte: a GBK text file, a
//! docx zipped with the `zip` crate, a PDF written by hand with a correct xref table, and
//! broken files that must give an error naming the file (and never a panic).

mod common;

use common::{pdf_of, zip_of};

use zhiku_text::{Document, Format, LoadError, PassageSplitter, load, load_path, load_paths};

fn loaded(file: &str, bytes: &[u8]) -> Document {
    load(file, bytes).unwrap_or_else(|e| panic!("{file} did not load: {e}"))
}

/// Loading must fail, with an error that names the file; returns the error.
fn refused(file: &str, bytes: &[u8]) -> LoadError {
    let err = match load(file, bytes) {
        Ok(doc) => panic!("{file} loaded: {doc:?}"),
        Err(err) => err,
    };
    assert_eq!(err.file(), file);
    assert!(
        err.to_string().starts_with(&format!("{file}: ")),
        "{err} does not name {file}"
    );
    err
}

// ---------------------------------------------------------------------------------- text --

#[test]
fn txt_utf8_with_bom_and_crlf() {
    let doc = loaded(
        "notes.TXT",
        "\u{feff}第一行。\r\n第二行。\rthird line\n".as_bytes(),
    );
    assert_eq!(doc.format, Format::Text);
    assert_eq!(doc.text, "第一行。\n第二行。\nthird line\n");
    assert_eq!(doc.source, "notes.TXT");
    assert_eq!(doc.records, None);
}

#[test]
fn txt_in_gbk_and_gb18030_is_converted() {
    let text = "知识库问答：ChatGLM-6B 的 INT4 量化只需 6GB 显存。\n第二段。";
    let (gbk, _, unmappable) = encoding_rs::GBK.encode(text);
    assert!(!unmappable);
    assert!(
        std::str::from_utf8(&gbk).is_err(),
        "the fixture is not UTF-8"
    );
    assert_eq!(loaded("gbk.txt", &gbk).text, text);

    // A character only GB18030 (not GBK) encodes, in four bytes.
    let text = "罕见字：𠀀，欧元：€。";
    let (gb18030, _, unmappable) = encoding_rs::GB18030.encode(text);
    assert!(!unmappable);
    assert_eq!(loaded("gb18030.txt", &gb18030).text, text);
}

#[test]
fn txt_in_utf16_with_bom_is_converted() {
    let mut bytes = vec![0xFF, 0xFE];
    for unit in "UTF-16 文本".encode_utf16() {
        bytes.extend(unit.to_le_bytes());
    }
    assert_eq!(loaded("wide.txt", &bytes).text, "UTF-16 文本");
}

#[test]
fn binary_and_undecodable_files_are_refused() {
    // A PNG header: NUL bytes.
    let png = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR\0\0\0\x10";
    let err = refused("图片.txt", png);
    assert!(matches!(err, LoadError::NotText { .. }), "{err}");
    assert!(err.to_string().contains("binary"), "{err}");

    // Neither UTF-8 nor GB18030.
    let err = refused("latin.md", b"caf\xff au lait");
    assert!(matches!(err, LoadError::NotText { .. }), "{err}");

    // Control characters without NULs.
    let err = refused("controls.txt", b"\x01\x02\x03\x04abc\x05\x06\x07");
    assert!(err.to_string().contains("control characters"), "{err}");
}

#[test]
fn unknown_extensions_are_refused() {
    for file in ["setup.exe", "README", "archive.tar.gz", "slides.pptx"] {
        let err = refused(file, b"anything");
        assert!(matches!(err, LoadError::Unsupported { .. }), "{err}");
    }
}

#[test]
fn markdown_keeps_headings_for_the_splitter() {
    let md = "# 指南\r\n\r\n简介。\r\n\r\n## 安装\r\n\r\n运行 `cargo build`。\r\n";
    let doc = loaded("guide.md", md.as_bytes());
    assert_eq!(doc.format, Format::Markdown);
    assert_eq!(
        doc.text,
        "# 指南\n\n简介。\n\n## 安装\n\n运行 `cargo build`。\n"
    );
    let passages = PassageSplitter::default().split_document(&doc);
    let got = common::headed(&passages);
    assert_eq!(
        got,
        [
            ("指南".to_string(), "简介。"),
            ("指南 > 安装".to_string(), "运行 `cargo build`。")
        ]
    );
    assert_eq!(
        passages[1].indexed_text(),
        "指南 > 安装\n运行 `cargo build`。"
    );
}

// ---------------------------------------------------------------------------------- html --

#[test]
fn html_gives_visible_text_only() {
    let html = r#"<!DOCTYPE html>
<html><head><title>页面标题</title>
<style>body { color: red; }</style>
<script>var secret = "不可见";</script></head>
<body>
  <nav hidden><a href="/">首页</a></nav>
  <h1>知识库 &amp; 问答</h1>
  <p>第一段，   包含
     换行和&nbsp;实体&lt;tag&gt;。</p>
  <div>块一</div><div>块二<br>换行</div>
  <h2>列表</h2>
  <ul><li>甲</li><li>乙</li></ul>
  <table><tr><th>名称</th><th>值</th></tr><tr><td>圆周率</td><td>3.14</td></tr></table>
  <pre>保留   空格
第二行</pre>
  <noscript>请启用脚本</noscript>
  <script>
    document.write("<p>也不可见</p>");
  </script>
  <p>结尾。</p>
</body></html>"#;
    let doc = loaded("page.html", html.as_bytes());
    assert_eq!(doc.format, Format::Html);
    assert_eq!(
        doc.text,
        "# 知识库 & 问答\n\n第一段， 包含 换行和 实体<tag>。\n\n块一\n块二\n换行\n\n## 列表\n\n甲\n乙\n\n名称 值\n圆周率 3.14\n\n保留   空格\n第二行\n\n结尾。"
    );
    for hidden in [
        "页面标题",
        "color",
        "secret",
        "不可见",
        "首页",
        "请启用脚本",
    ] {
        assert!(!doc.text.contains(hidden), "{hidden} leaked");
    }
    let passages = PassageSplitter::default().split_document(&doc);
    assert_eq!(passages.len(), 2);
    assert_eq!(passages[0].heading(), "知识库 & 问答");
    assert_eq!(passages[1].heading(), "知识库 & 问答 > 列表");
}

#[test]
fn html_in_gbk_is_converted() {
    let (bytes, _, _) = encoding_rs::GBK.encode("<p>中文网页</p>");
    assert_eq!(loaded("old.htm", &bytes).text, "中文网页");
}

// ----------------------------------------------------------------------------------- csv --

#[test]
fn csv_rows_become_whole_records_with_headers() {
    let csv = "问题,答案,备注\n什么是 LoRA？,\"低秩适配, 一种微调方法\",\n显存多少？,\"INT4: 6GB\n FP16: 13GB\",官方数据,多余\n,,\n";
    let doc = loaded("faq.csv", csv.as_bytes());
    assert_eq!(doc.format, Format::Csv);
    let records = doc.records.clone().expect("csv has records");
    assert_eq!(
        records,
        [
            "问题: 什么是 LoRA？\n答案: 低秩适配, 一种微调方法",
            "问题: 显存多少？\n答案: INT4: 6GB\n FP16: 13GB\n备注: 官方数据\ncolumn 4: 多余",
        ]
    );
    assert_eq!(doc.text, records.join("\n\n"));

    // One record, one passage, even where a blank line or a sentence end could cut.
    let passages = PassageSplitter::default().split_document(&doc);
    let texts: Vec<&str> = passages.iter().map(|p| p.text.as_str()).collect();
    assert_eq!(texts, records);
    let chars: Vec<char> = doc.text.chars().collect();
    for p in &passages {
        let at: String = chars[p.char_start..p.char_end].iter().collect();
        assert_eq!(at, p.text);
    }
}

#[test]
fn csv_records_longer_than_a_chunk_are_cut_at_lines() {
    let long = "很长的说明。".repeat(10);
    let csv = format!("名称,说明,值\n甲,{long},1\n乙,短,2\n");
    let doc = loaded("wide.csv", csv.as_bytes());
    let splitter = PassageSplitter::new(zhiku_text::SplitterConfig {
        chunk_size: 40,
        overlap: 0,
    })
    .expect("valid sizes");
    let texts: Vec<String> = splitter
        .split_document(&doc)
        .into_iter()
        .map(|p| p.text)
        .collect();
    assert!(texts.len() > 2, "{texts:?}");
    assert!(texts.iter().all(|t| t.chars().count() <= 40));
    assert_eq!(
        texts.last().map(String::as_str),
        Some("名称: 乙\n说明: 短\n值: 2")
    );
}

#[test]
fn tsv_and_gbk_csv_are_read() {
    let doc = loaded("data.tsv", "a\tb\n1,5\t2\n".as_bytes());
    assert_eq!(doc.records, Some(vec!["a: 1,5\nb: 2".to_string()]));

    // Excel in a Chinese locale saves csv in GBK.
    let (gbk, _, _) = encoding_rs::GBK.encode("姓名,城市\n张三,北京\n");
    let doc = loaded("excel.csv", &gbk);
    assert_eq!(
        doc.records,
        Some(vec!["姓名: 张三\n城市: 北京".to_string()])
    );
}

// ---------------------------------------------------------------------------------- docx --

const DOCUMENT_XML: &str = r#"<?xml version="1.0" encoding="UTF-8" standalone="yes"?>
<w:document xmlns:w="http://schemas.openxmlformats.org/wordprocessingml/2006/main" xmlns:mc="http://schemas.openxmlformats.org/markup-compatibility/2006" xmlns:wps="http://schemas.microsoft.com/office/word/2010/wordprocessingShape" xmlns:v="urn:schemas-microsoft-com:vml">
<w:body>
<w:p><w:pPr><w:pStyle w:val="Heading1"/></w:pPr><w:r><w:t>模型微调</w:t></w:r></w:p>
<w:p><w:r><w:t xml:space="preserve">LoRA 冻结原权重，</w:t></w:r><w:r><w:rPr><w:b/></w:rPr><w:t>只训练低秩矩阵。</w:t></w:r></w:p>
<w:p/>
<w:p><w:pPr><w:pStyle w:val="2"/><w:outlineLvl w:val="1"/><w:tabs><w:tab w:val="left" w:pos="420"/></w:tabs></w:pPr><w:r><w:t>数据 &amp; 评测</w:t></w:r></w:p>
<w:p><w:r><w:t>第一行</w:t></w:r><w:r><w:br/><w:t>第二行</w:t><w:tab/><w:t>&#x5B8C;</w:t></w:r></w:p>
<w:tbl>
<w:tr><w:tc><w:p><w:r><w:t>参数</w:t></w:r></w:p></w:tc><w:tc><w:p><w:r><w:t>值</w:t></w:r></w:p></w:tc></w:tr>
<w:tr><w:tc><w:p><w:r><w:t>rank</w:t></w:r></w:p></w:tc><w:tc><w:p><w:r><w:t>8</w:t></w:r></w:p><w:p><w:r><w:t>（默认）</w:t></w:r></w:p></w:tc></w:tr>
</w:tbl>
<w:p><w:r><w:t>正文前</w:t></w:r><w:r><mc:AlternateContent><mc:Choice Requires="wps"><w:drawing><wps:txbx><w:txbxContent><w:p><w:r><w:t>文本框</w:t></w:r></w:p></w:txbxContent></wps:txbx></w:drawing></mc:Choice><mc:Fallback><w:pict><v:textbox><w:txbxContent><w:p><w:r><w:t>文本框</w:t></w:r></w:p></w:txbxContent></v:textbox></w:pict></mc:Fallback></mc:AlternateContent></w:r><w:r><w:t>正文后</w:t></w:r></w:p>
<w:p><w:r><w:t>结束。</w:t></w:r></w:p>
<w:sectPr/>
</w:body>
</w:document>"#;

/// A zip archive of the given entries, deflated as Word writes them.
#[test]
fn docx_paragraphs_headings_and_tables() {
    let docx = zip_of(&[
        (
            "[Content_Types].xml",
            r#"<?xml version="1.0"?><Types xmlns="http://schemas.openxmlformats.org/package/2006/content-types"/>"#,
        ),
        ("word/document.xml", DOCUMENT_XML),
    ]);
    let doc = loaded("报告.docx", &docx);
    assert_eq!(doc.format, Format::Docx);
    assert_eq!(
        doc.text,
        "# 模型微调\n\nLoRA 冻结原权重，只训练低秩矩阵。\n\n## 数据 & 评测\n\n第一行\n第二行\t完\n\n参数 | 值\nrank | 8 （默认）\n\n文本框\n\n正文前正文后\n\n结束。"
    );
    let passages = PassageSplitter::default().split_document(&doc);
    let headings: Vec<String> = passages.iter().map(|p| p.heading()).collect();
    assert_eq!(headings, ["模型微调", "模型微调 > 数据 & 评测"]);
}

#[test]
fn broken_docx_files_are_refused() {
    let err = refused("坏.docx", b"PK\x03\x04 this is no zip");
    assert!(
        matches!(
            err,
            LoadError::Corrupt {
                format: Format::Docx,
                ..
            }
        ),
        "{err}"
    );

    let not_word = zip_of(&[("hello.txt", "hi")]);
    let err = refused("other.docx", &not_word);
    assert!(
        err.to_string().contains("word/document.xml is missing"),
        "{err}"
    );

    let bad_xml = zip_of(&[("word/document.xml", "<w:document><w:body></w:p>")]);
    let err = refused("badxml.docx", &bad_xml);
    assert!(matches!(err, LoadError::Corrupt { .. }), "{err}");
}

// ----------------------------------------------------------------------------------- pdf --

fn dict(text: &str) -> Vec<u8> {
    text.as_bytes().to_vec()
}

fn stream(data: &str) -> Vec<u8> {
    format!("<< /Length {} >>\nstream\n{data}\nendstream", data.len()).into_bytes()
}

/// ToUnicode map of the CIDs the Chinese page uses: 1 知, 2 识, 3 库, 4 。
const TO_UNICODE: &str = "/CIDInit /ProcSet findresource begin
12 dict begin
begincmap
/CIDSystemInfo << /Registry (Adobe) /Ordering (UCS) /Supplement 0 >> def
/CMapName /Adobe-Identity-UCS def
/CMapType 2 def
1 begincodespacerange
<0000> <FFFF>
endcodespacerange
4 beginbfchar
<0001> <77E5>
<0002> <8BC6>
<0003> <5E93>
<0004> <3002>
endbfchar
endcmap
CMapName currentdict /CMap defineresource pop
end
end";

/// Two pages: English in Helvetica, Chinese in a CID font with a ToUnicode map.
fn two_page_pdf() -> Vec<u8> {
    pdf_of(&[
        dict("<< /Type /Catalog /Pages 2 0 R >>"),
        dict("<< /Type /Pages /Kids [3 0 R 6 0 R] /Count 2 >>"),
        dict(
            "<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Resources << /Font << /F1 4 0 R >> >> /Contents 5 0 R >>",
        ),
        dict("<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding /WinAnsiEncoding >>"),
        stream("BT /F1 12 Tf 72 720 Td (Hello from page one. Pi is 3.14.) Tj ET"),
        dict(
            "<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Resources << /Font << /F2 7 0 R >> >> /Contents 8 0 R >>",
        ),
        dict(
            "<< /Type /Font /Subtype /Type0 /BaseFont /SimSun /Encoding /Identity-H /DescendantFonts [9 0 R] /ToUnicode 10 0 R >>",
        ),
        stream("BT /F2 12 Tf 72 720 Td <0001000200030004> Tj ET"),
        dict(
            "<< /Type /Font /Subtype /CIDFontType2 /BaseFont /SimSun /CIDSystemInfo << /Registry (Adobe) /Ordering (Identity) /Supplement 0 >> >>",
        ),
        stream(TO_UNICODE),
    ])
}

#[test]
fn pdf_text_layer_of_every_page() {
    let doc = loaded("paper.pdf", &two_page_pdf());
    assert_eq!(doc.format, Format::Pdf);
    assert_eq!(doc.text, "Hello from page one. Pi is 3.14.\n\n知识库。");
}

#[test]
fn pdf_without_text_layer_says_so() {
    let scan = pdf_of(&[
        dict("<< /Type /Catalog /Pages 2 0 R >>"),
        dict("<< /Type /Pages /Kids [3 0 R] /Count 1 >>"),
        dict("<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R >>"),
        stream("0 0 m 100 100 l S"),
    ]);
    let err = refused("scan.pdf", &scan);
    assert!(matches!(err, LoadError::NoTextLayer { .. }), "{err}");
}

#[test]
fn corrupt_pdfs_are_refused_without_panic() {
    let good = two_page_pdf();
    let mut cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "garbage.pdf",
            b"%PDF-1.7\nthis is not a pdf at all".to_vec(),
        ),
        ("empty.pdf", Vec::new()),
        ("binary.pdf", (0..=255u8).cycle().take(4096).collect()),
    ];
    // A valid frame around nonsense objects.
    cases.push((
        "nonsense.pdf",
        pdf_of(&[
            dict("<< /Type /Catalog /Pages 2 0 R >>"),
            dict("<< /Type /Pages /Kids [7 0 R] /Count 1 >>"),
        ]),
    ));
    for (file, bytes) in &cases {
        let err = refused(file, bytes);
        assert!(
            matches!(
                err,
                LoadError::Corrupt {
                    format: Format::Pdf,
                    ..
                } | LoadError::NoTextLayer { .. }
            ),
            "{file}: {err}"
        );
    }
    // Every truncation of a good file, and every byte flipped: lopdf recovers what it can
    // (a file cut after its first page still gives that page), else an error; never a panic.
    let mut recovered = 0;
    for cut in (0..good.len()).step_by(7) {
        if let Ok(doc) = load("cut.pdf", &good[..cut]) {
            let full = "Hello from page one. Pi is 3.14.\n\n知识库。";
            assert!(full.contains(&doc.text), "{cut}: {doc:?}");
            recovered += 1;
        }
    }
    assert!(recovered > 0);
    for at in (0..good.len()).step_by(3) {
        let mut flipped = good.clone();
        flipped[at] ^= 0x5A;
        let _ = load("flipped.pdf", &flipped);
    }
}

// ---------------------------------------------------------------------------------- paths --

#[test]
fn results_cross_threads() {
    // The orchestrator loads files on worker threads and sends results back.
    fn send_sync<T: Send + Sync + 'static>() {}
    send_sync::<Document>();
    send_sync::<LoadError>();
    send_sync::<zhiku_text::Passage>();
    send_sync::<PassageSplitter>();
}

#[test]
fn load_path_and_batches_go_on_past_a_bad_file() {
    let dir = tempfile::tempdir().expect("temp dir");
    let good = dir.path().join("好.txt");
    std::fs::write(&good, "你好。").expect("write");
    let bad = dir.path().join("坏.pdf");
    std::fs::write(&bad, b"not a pdf").expect("write");
    let missing = dir.path().join("缺.md");
    let unknown = dir.path().join("x.bin");
    std::fs::write(&unknown, [0u8; 8]).expect("write");
    let csv = dir.path().join("表.csv");
    std::fs::write(&csv, "a,b\n1,2\n").expect("write");

    let doc = load_path(&good).expect("good file loads");
    assert_eq!(doc.text, "你好。");
    assert_eq!(doc.source, good.display().to_string());

    let results = load_paths(&[&good, &bad, &missing, &unknown, &csv]);
    assert_eq!(results.len(), 5);
    assert!(results[0].is_ok());
    for (result, path) in results[1..4].iter().zip([&bad, &missing, &unknown]) {
        let err = result.as_ref().expect_err("bad file fails");
        assert_eq!(err.file(), path.display().to_string());
        assert!(err.to_string().contains(&path.display().to_string()));
    }
    assert!(matches!(results[2], Err(LoadError::Io { .. })));
    assert!(matches!(results[3], Err(LoadError::Unsupported { .. })));
    assert!(results[4].is_ok(), "the batch goes on after bad files");
}

// ------------------------------------------------------------------------------ fuzzing --

mod fuzz {
    use proptest::prelude::*;

    use super::*;

    const EXTENSIONS: &[&str] = &["txt", "md", "html", "pdf", "docx", "csv", "tsv"];

    /// A valid docx and pdf, for mutation.
    fn valid_files() -> [(&'static str, Vec<u8>); 2] {
        [
            ("m.docx", zip_of(&[("word/document.xml", DOCUMENT_XML)])),
            ("m.pdf", two_page_pdf()),
        ]
    }

    /// The loader's contract on any input: a document, or an error naming the file.
    fn loads_or_names(file: &str, bytes: &[u8]) {
        if let Err(err) = load(file, bytes) {
            assert_eq!(err.file(), file);
            assert!(err.to_string().starts_with(&format!("{file}: ")), "{err}");
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]

        #[test]
        fn arbitrary_bytes_never_panic(
            extension in prop::sample::select(EXTENSIONS),
            bytes in prop::collection::vec(any::<u8>(), 0..3000),
        ) {
            loads_or_names(&format!("随机.{extension}"), &bytes);
        }

        #[test]
        fn damaged_files_never_panic(
            which in 0usize..2,
            flips in prop::collection::vec((any::<prop::sample::Index>(), 1u8..=255), 1..8),
            cut in any::<prop::sample::Index>(),
            truncate in any::<bool>(),
        ) {
            let [docx, pdf] = valid_files();
            let (file, mut bytes) = if which == 0 { docx } else { pdf };
            for (at, mask) in &flips {
                let i = at.index(bytes.len());
                bytes[i] ^= mask;
            }
            if truncate {
                bytes.truncate(cut.index(bytes.len()));
            }
            loads_or_names(file, &bytes);
        }
    }
}
