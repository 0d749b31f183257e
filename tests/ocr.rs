//! End-to-end OCR over the four service binaries on loopback: pages rendered here from
//! Chinese text with a CJK font, saved as an image-only PDF (two scanned pages, JPEG as a
//! scanner embeds them), as a PNG and as the scanned page of an OFD (whose other page is
//! typed text), are ingested beside text files; the embedder reads
//! them with the PP-OCR models (Recognize), and an Ask whose answer is only on a scanned
//! page cites that file and page. A truncated image fails alone, naming the file. A DOCX
//! holding a picture of text is read with `images` OCR, the picture's text found by an
//! Ask at its place, and skipped without it. Needs
//! models/ppocr (with libonnxruntime), a CJK font, an embedder and the chat model; prints
//! SKIPPED without them.

#[path = "../crates/zhiku-ocr/tests/corpus/mod.rs"]
#[allow(dead_code, clippy::all)]
mod corpus;
#[path = "../crates/zhiku-text/tests/common/pdf.rs"]
mod pdf;

use std::io::Cursor;
use std::time::Duration;

use image::{ImageFormat, RgbImage};
use zhiku_e2e::models_dir;
use zhiku_e2e::pipeline::{
    STARTUP, Services, ask_request, ask_with, documents, ingest_files, ingest_request,
};
use zhiku_proto::v1::embedder_client::EmbedderClient;
use zhiku_proto::v1::orchestrator_client::OrchestratorClient;
use zhiku_proto::v1::{Citation, DocumentInput, IngestRequest, OcrMode, RecognizeRequest};

/// The chat model under models/ (scripts/fetch-models).
const CHAT_MODEL: &str = "Qwen2.5-Coder-0.5B-Instruct-GGUF";

/// Only on page 2 of the scanned PDF.
const PDF_FACT: &str = "青松实验室的门禁密码每周一上午更换，本周的密码是七三九五。";
/// Only in the OFD's scanned page 2 (page 1 is typed text).
const OFD_FACT: &str = "红杉项目的验收会议定在十一月二十日，由质量部主持。";
const OFD_TYPED: &str = "采购合同第一页：甲方为华东公司，乙方为西岭科技。";

/// Only in the PNG.
const PNG_FACT: &str = "蓝湖仓库的负责人是周明远，仓库每天下午五点关门。";

/// Only in the picture inside the DOCX; its typed text around it says nothing of it.
const DOCX_PICTURE_FACT: &str = "白桦档案室的钥匙由李文静保管，借用需要登记。";
const DOCX_BEFORE: &str = "附件一：档案室门口的告示照片如下。";
const DOCX_AFTER: &str = "以上告示自十二月起施行。";

fn page_image(font: &ab_glyph::FontVec, paragraphs: &[&str]) -> RgbImage {
    corpus::render(
        font,
        &corpus::Layout {
            width: 1000,
            font_px: 30.0,
            columns: 1,
            title: None,
            paragraphs,
        },
    )
    .image
}

fn encoded(image: &RgbImage, format: ImageFormat) -> Vec<u8> {
    let mut out = Vec::new();
    image
        .write_to(&mut Cursor::new(&mut out), format)
        .expect("encoding the page");
    out
}

/// A PDF whose pages are each one JPEG image and nothing else (no text layer), as a
/// scanner writes them.
fn image_only_pdf(pages: &[RgbImage]) -> Vec<u8> {
    let mut objects: Vec<Vec<u8>> = Vec::new();
    let kids: Vec<String> = (0..pages.len())
        .map(|i| format!("{} 0 R", 3 + 3 * i))
        .collect();
    objects.push(b"<< /Type /Catalog /Pages 2 0 R >>".to_vec());
    objects.push(
        format!(
            "<< /Type /Pages /Kids [{}] /Count {} >>",
            kids.join(" "),
            pages.len()
        )
        .into_bytes(),
    );
    for (i, page) in pages.iter().enumerate() {
        let (w, h) = page.dimensions();
        let image_id = 4 + 3 * i;
        let content_id = 5 + 3 * i;
        objects.push(
            format!(
                "<< /Type /Page /Parent 2 0 R /MediaBox [0 0 {w} {h}] /Resources << /XObject << /Im0 {image_id} 0 R >> >> /Contents {content_id} 0 R >>"
            )
            .into_bytes(),
        );
        let jpeg = encoded(page, ImageFormat::Jpeg);
        let mut image = format!(
            "<< /Type /XObject /Subtype /Image /Width {w} /Height {h} /ColorSpace /DeviceRGB /BitsPerComponent 8 /Filter /DCTDecode /Length {} >>\nstream\n",
            jpeg.len()
        )
        .into_bytes();
        image.extend(&jpeg);
        image.extend(b"\nendstream");
        objects.push(image);
        let draw = format!("q {w} 0 0 {h} 0 0 cm /Im0 Do Q");
        objects
            .push(format!("<< /Length {} >>\nstream\n{draw}\nendstream", draw.len()).into_bytes());
    }
    pdf::pdf_of(&objects)
}

/// An OFD (GB/T 33190) of two pages: typed text, then a scanned page (one PNG image).
fn ofd(typed: &str, scan_png: &[u8]) -> Vec<u8> {
    let ns = r#"xmlns:ofd="http://www.ofdspec.org/2016""#;
    let entries: Vec<(&str, Vec<u8>)> = vec![
        ("OFD.xml", format!(r#"<ofd:OFD {ns} Version="1.0" DocType="OFD"><ofd:DocBody><ofd:DocRoot>Doc_0/Document.xml</ofd:DocRoot></ofd:DocBody></ofd:OFD>"#).into_bytes()),
        ("Doc_0/Document.xml", format!(r#"<ofd:Document {ns}><ofd:CommonData><ofd:DocumentRes>DocumentRes.xml</ofd:DocumentRes></ofd:CommonData><ofd:Pages><ofd:Page ID="1" BaseLoc="Pages/Page_0/Content.xml"/><ofd:Page ID="2" BaseLoc="Pages/Page_1/Content.xml"/></ofd:Pages></ofd:Document>"#).into_bytes()),
        ("Doc_0/DocumentRes.xml", format!(r#"<ofd:Res {ns} BaseLoc="Res"><ofd:MultiMedias><ofd:MultiMedia ID="10" Type="Image"><ofd:MediaFile>scan.png</ofd:MediaFile></ofd:MultiMedia></ofd:MultiMedias></ofd:Res>"#).into_bytes()),
        ("Doc_0/Pages/Page_0/Content.xml", format!(r#"<ofd:Page {ns}><ofd:Content><ofd:Layer ID="3"><ofd:TextObject ID="4" Boundary="20 20 170 10" Font="1" Size="5"><ofd:TextCode X="0" Y="5">{typed}</ofd:TextCode></ofd:TextObject></ofd:Layer></ofd:Content></ofd:Page>"#).into_bytes()),
        ("Doc_0/Pages/Page_1/Content.xml", format!(r#"<ofd:Page {ns}><ofd:Content><ofd:Layer ID="5"><ofd:ImageObject ID="6" ResourceID="10" Boundary="0 0 210 297"/></ofd:Layer></ofd:Content></ofd:Page>"#).into_bytes()),
        ("Doc_0/Res/scan.png", scan_png.to_vec()),
    ];
    zip_of(entries)
}

/// A zip archive of the entries (an OFD or a DOCX).
fn zip_of(entries: Vec<(&str, Vec<u8>)>) -> Vec<u8> {
    use std::io::Write;
    let mut zip = zip::ZipWriter::new(Cursor::new(Vec::new()));
    for (name, content) in entries {
        zip.start_file(name, zip::write::SimpleFileOptions::default())
            .expect("a zip entry");
        zip.write_all(&content).expect("a zip entry");
    }
    zip.finish().expect("the zip").into_inner()
}

/// A Word file of a paragraph, a picture (PNG, in its own paragraph, as Word places an
/// inline picture) and another paragraph.
fn docx_with_picture(before: &str, picture_png: &[u8], after: &str) -> Vec<u8> {
    let document = format!(
        r#"<?xml version="1.0" encoding="UTF-8" standalone="yes"?>
<w:document xmlns:w="http://schemas.openxmlformats.org/wordprocessingml/2006/main" xmlns:r="http://schemas.openxmlformats.org/officeDocument/2006/relationships" xmlns:wp="http://schemas.openxmlformats.org/drawingml/2006/wordprocessingDrawing" xmlns:a="http://schemas.openxmlformats.org/drawingml/2006/main" xmlns:pic="http://schemas.openxmlformats.org/drawingml/2006/picture"><w:body>
<w:p><w:r><w:t>{before}</w:t></w:r></w:p>
<w:p><w:r><w:drawing><wp:inline><wp:extent cx="5486400" cy="1828800"/><wp:docPr id="1" name="图片 1"/><a:graphic><a:graphicData uri="http://schemas.openxmlformats.org/drawingml/2006/picture"><pic:pic><pic:nvPicPr><pic:cNvPr id="1" name="notice.png"/><pic:cNvPicPr/></pic:nvPicPr><pic:blipFill><a:blip r:embed="rId4"/></pic:blipFill><pic:spPr/></pic:pic></a:graphicData></a:graphic></wp:inline></w:drawing></w:r></w:p>
<w:p><w:r><w:t>{after}</w:t></w:r></w:p>
<w:sectPr/></w:body></w:document>"#
    );
    let rels = r#"<?xml version="1.0" encoding="UTF-8" standalone="yes"?>
<Relationships xmlns="http://schemas.openxmlformats.org/package/2006/relationships"><Relationship Id="rId4" Type="http://schemas.openxmlformats.org/officeDocument/2006/relationships/image" Target="media/image1.png"/></Relationships>"#;
    let entries: Vec<(&str, Vec<u8>)> = vec![
        ("[Content_Types].xml", br#"<?xml version="1.0" encoding="UTF-8"?><Types xmlns="http://schemas.openxmlformats.org/package/2006/content-types"><Default Extension="png" ContentType="image/png"/><Override PartName="/word/document.xml" ContentType="application/vnd.openxmlformats-officedocument.wordprocessingml.document.main+xml"/></Types>"#.to_vec()),
        ("word/document.xml", document.into_bytes()),
        ("word/_rels/document.xml.rels", rels.as_bytes().to_vec()),
        ("word/media/image1.png", picture_png.to_vec()),
    ];
    zip_of(entries)
}

fn document(name: &str, content: Vec<u8>) -> DocumentInput {
    DocumentInput {
        readers: Vec::new(),
        file_name: name.into(),
        content,
        document_id: String::new(),
        metadata: Default::default(),
    }
}

/// What the test needs, or why it is skipped.
fn prerequisites() -> Result<(ab_glyph::FontVec, std::path::PathBuf), String> {
    let ppocr = models_dir().join("ppocr");
    for file in [
        "ch_PP-OCRv4_det_infer.onnx",
        "ch_PP-OCRv4_rec_infer.onnx",
        "ch_ppocr_mobile_v2.0_cls_infer.onnx",
    ] {
        if !ppocr.join(file).is_file() {
            return Err(format!(
                "no {file} in {} (scripts/fetch-models ppocr)",
                ppocr.display()
            ));
        }
    }
    let runtime_beside = std::fs::read_dir(&ppocr)
        .map(|entries| {
            entries.flatten().any(|e| {
                e.file_name()
                    .to_string_lossy()
                    .starts_with("libonnxruntime")
            })
        })
        .unwrap_or(false);
    if !runtime_beside && std::env::var_os("ORT_DYLIB_PATH").is_none() {
        return Err("no libonnxruntime beside the OCR models and no ORT_DYLIB_PATH".into());
    }
    let font = corpus::find_font()
        .ok_or("no CJK font (apt-get install fonts-wqy-microhei, or set ZHIKU_CJK_FONT)")?;
    // A multilingual embedder reads Chinese; MiniLM is the fallback the other tests use.
    let embedding = ["multilingual-e5-small", "all-MiniLM-L6-v2"]
        .iter()
        .map(|name| models_dir().join(name))
        .find(|dir| dir.join("model.safetensors").is_file())
        .ok_or("no embedding model in models/ (scripts/fetch-models)")?;
    let chat = models_dir().join(CHAT_MODEL);
    if !chat.is_dir() {
        return Err(format!(
            "{} is missing (scripts/fetch-models)",
            chat.display()
        ));
    }
    Ok((font, embedding))
}

fn cites(sources: &[Citation], file: &str, page: u32) -> bool {
    sources.iter().any(|c| c.source == file && c.page == page)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn scanned_pdf_and_png_are_ingested_and_cited_by_page() {
    let (font, embedding) = match prerequisites() {
        Ok(found) => found,
        Err(why) => {
            println!("SKIPPED scanned_pdf_and_png_are_ingested_and_cited_by_page: {why}");
            return;
        }
    };
    let pdf_pages = [
        page_image(&font, &corpus::PARAGRAPHS[..2]),
        page_image(&font, &[corpus::PARAGRAPHS[2], PDF_FACT]),
    ];
    let pdf = image_only_pdf(&pdf_pages);
    let png = encoded(
        &page_image(&font, &[PNG_FACT, corpus::PARAGRAPHS[4]]),
        ImageFormat::Png,
    );

    let data = tempfile::tempdir().unwrap();
    let path = |p: &std::path::Path| p.to_str().expect("utf-8 path").to_owned();
    let ppocr = path(&models_dir().join("ppocr"));
    let services = Services::start_custom(
        &[
            "--model",
            &path(&embedding),
            "--ocr-model",
            &ppocr,
            "--ocr-threads",
            "2",
        ],
        (&["--data-dir", &path(data.path())], &[]),
        CHAT_MODEL,
        &["--min-coverage", "0"],
    )
    .await;

    // The embedder's Recognize on its own: the PNG's text, and a bad image named.
    let mut ocr = EmbedderClient::new(services.embedder.channel(STARTUP).await)
        .max_decoding_message_size(64 << 20)
        .max_encoding_message_size(64 << 20);
    let read = ocr
        .recognize(RecognizeRequest {
            images: vec![png.clone()],
        })
        .await
        .expect("recognize")
        .into_inner();
    assert_eq!(read.pages.len(), 1);
    let page = &read.pages[0];
    println!(
        "Recognize: {:?} (confidence {:.3})",
        page.text, page.confidence
    );
    assert!(page.text.contains("蓝湖仓库"), "{:?}", page.text);
    assert!(page.confidence > 0.8, "{}", page.confidence);
    assert!(page.lines.iter().all(|l| l.r#box.len() == 8));
    let err = ocr
        .recognize(RecognizeRequest {
            images: vec![png[..png.len() / 2].to_vec()],
        })
        .await
        .expect_err("a truncated image");
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    assert!(
        err.message().starts_with("`images[0]`"),
        "{}",
        err.message()
    );

    // Ingest: text files, the scans, and a truncated PNG that fails alone.
    let mut client = OrchestratorClient::new(services.orchestrator.channel(STARTUP).await)
        .max_decoding_message_size(64 << 20)
        .max_encoding_message_size(64 << 20);
    let mut files = documents();
    let texts = files.len() as u32;
    files.push(document("scan.pdf", pdf));
    files.push(document("notice.png", png.clone()));
    let ofd_scan = encoded(
        &page_image(&font, &[corpus::PARAGRAPHS[3], OFD_FACT]),
        ImageFormat::Png,
    );
    files.push(document("contract.ofd", ofd(OFD_TYPED, &ofd_scan)));
    files.push(document("broken.png", png[..png.len() / 3].to_vec()));
    let summary = ingest_files(&mut client, "scans", files)
        .await
        .expect("ingest");
    println!("{summary:?}");
    assert_eq!(summary.files_ingested, texts + 3, "{summary:?}");
    assert_eq!(summary.files_failed, 1, "{summary:?}");
    assert!(
        summary.errors[0].starts_with("broken.png: ") && summary.errors[0].contains("corrupt"),
        "{:?}",
        summary.errors
    );

    for (question, file, page) in [
        ("青松实验室本周的门禁密码是什么？", "scan.pdf", 2),
        ("蓝湖仓库的负责人是谁？", "notice.png", 1),
        ("红杉项目的验收会议定在哪一天？", "contract.ofd", 2),
        ("采购合同的乙方是谁？", "contract.ofd", 1),
    ] {
        let mut request = ask_request("scans", question, Some(-1.0), 24);
        request.top_k = 3;
        let asked = ask_with(&mut client, request, Duration::from_secs(300))
            .await
            .expect("ask");
        let shown: Vec<(String, u32, String)> = asked
            .sources
            .iter()
            .map(|c| (c.source.clone(), c.page, c.text.chars().take(30).collect()))
            .collect();
        println!("{question} -> {:?}\n  sources {shown:?}", asked.answer.text);
        assert!(
            cites(&asked.sources, file, page),
            "{question}: {file} page {page} is not among the sources {shown:?}"
        );
    }
    // A DOCX's picture: read at its place with `images`, skipped without.
    let picture = encoded(&page_image(&font, &[DOCX_PICTURE_FACT]), ImageFormat::Png);
    let docx = docx_with_picture(DOCX_BEFORE, &picture, DOCX_AFTER);
    for (kb, mode) in [
        ("docx-images", OcrMode::Images),
        ("docx-plain", OcrMode::Auto),
    ] {
        let summary = ingest_request(
            &mut client,
            IngestRequest {
                knowledge_base: kb.into(),
                documents: vec![document("notice.docx", docx.clone())],
                create_if_missing: true,
                ocr: mode as i32,
                ..Default::default()
            },
        )
        .await
        .expect("ingest");
        assert_eq!(summary.files_ingested, 1, "{kb}: {summary:?}");
        let mut request = ask_request(kb, "白桦档案室的钥匙由谁保管？", Some(-1.0), 8);
        request.top_k = 3;
        let asked = ask_with(&mut client, request, Duration::from_secs(300))
            .await
            .expect("ask");
        let texts: Vec<String> = asked
            .sources
            .iter()
            .filter(|c| c.source == "notice.docx")
            .map(|c| corpus::normalize(&c.text).into_iter().collect())
            .collect();
        println!("{kb}: {texts:?}");
        let read = texts.iter().any(|t| t.contains("李文静保管"));
        if mode == OcrMode::Images {
            assert!(read, "{kb}: the picture's text is not among {texts:?}");
            // At its place: after the paragraph before it, before the one after it, where
            // the passage holds them.
            for text in texts.iter().filter(|t| t.contains("李文静")) {
                let fact = text.find("李文静").unwrap_or(0);
                assert!(text.find("照片如下").is_none_or(|i| i < fact), "{text}");
                assert!(text.find("以上告示").is_none_or(|i| i > fact), "{text}");
            }
        } else {
            assert!(!texts.is_empty(), "{kb}: the DOCX's text is not cited");
            assert!(
                !read,
                "{kb}: the picture was read without `images`: {texts:?}"
            );
        }
    }

    // Text files have no pages.
    let asked = ask_with(
        &mut client,
        ask_request("scans", "小拾喜欢做什么？", Some(-1.0), 8),
        Duration::from_secs(300),
    )
    .await
    .expect("ask");
    assert!(
        asked
            .sources
            .iter()
            .any(|c| c.source == "xiaoshi.txt" && c.page == 0),
        "{:?}",
        asked.sources
    );
}
