//! Recognize over real gRPC on loopback: without OCR models it says how to enable them;
//! with the real PP-OCR models (models/ppocr) it reads images and refuses bad ones, over
//! the pixel limit, too many per request, or past the queue, each with its status.
//! (Real text read end to end: the workspace's tests/ocr.rs.)

mod common;

use std::io::Cursor;
use std::path::PathBuf;

use common::TestServer;
use tonic::Code;
use zhiku_embedder::EmbedderArgs;
use zhiku_ocr::image::{ImageFormat, Rgb, RgbImage};
use zhiku_proto::v1::{EmbedderInfoRequest, RecognizeRequest};
use zhiku_runtime::ServerArgs;

fn ppocr_dir() -> PathBuf {
    std::env::var_os("ZHIKU_MODELS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../models"))
        .join("ppocr")
}

/// A tiny embedder (written by the test) with OCR as `ocr_model` says.
fn args(dir: &std::path::Path, ocr_model: &str) -> EmbedderArgs {
    zhiku_embedder::testing::write_checkpoint(dir, "bert", 0, 64).unwrap();
    let mut args = EmbedderArgs::for_model(dir.to_string_lossy());
    args.ocr_model = Some(ocr_model.into());
    args
}

fn png(width: u32, height: u32) -> Vec<u8> {
    let mut image = RgbImage::from_pixel(width, height, Rgb([255, 255, 255]));
    // A dark bar: something for the detector to look at, no text for the recogniser.
    for x in width / 4..width / 2 {
        for y in height / 2..(height / 2 + 3).min(height) {
            image.put_pixel(x, y, Rgb([0, 0, 0]));
        }
    }
    let mut out = Vec::new();
    image
        .write_to(&mut Cursor::new(&mut out), ImageFormat::Png)
        .unwrap();
    out
}

fn request(images: Vec<Vec<u8>>) -> RecognizeRequest {
    RecognizeRequest { images }
}

#[tokio::test]
async fn without_ocr_models_recognize_says_how_to_enable_them() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(args(dir.path(), "off"), ServerArgs::default()).await;
    let mut client = server.client().await;
    let status = client
        .recognize(request(vec![png(64, 64)]))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert!(status.message().contains("--ocr-model"), "{status:?}");
    assert!(
        status.message().contains("scripts/fetch-models ppocr"),
        "{status:?}"
    );
    let info = client
        .info(EmbedderInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(info.ocr_model.is_empty());
}

#[tokio::test]
async fn an_ocr_model_that_does_not_load_fails_the_start_when_named() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-such-ocr-model");
    let args = args(dir.path(), &missing.to_string_lossy());
    let err = tokio::task::spawn_blocking(move || zhiku_embedder::EmbedderState::load(&args))
        .await
        .unwrap()
        .err()
        .expect("a missing --ocr-model fails the start");
    assert!(err.to_string().contains("--ocr-model"), "{err}");
}

#[tokio::test]
async fn recognize_reads_images_and_refuses_bad_ones() {
    let ppocr = ppocr_dir();
    if !ppocr.join(zhiku_ocr::DETECTION_MODEL).is_file() {
        println!(
            "SKIPPED recognize_reads_images_and_refuses_bad_ones: no OCR models in {} \
             (scripts/fetch-models ppocr)",
            ppocr.display()
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut args = args(dir.path(), &ppocr.to_string_lossy());
    args.ocr_max_pixels = 500 * 500;
    args.ocr_max_images = 3;
    args.ocr_max_queued = 2;
    let server = TestServer::start(args, ServerArgs::default()).await;
    let mut client = server.client().await;
    let info = client
        .info(EmbedderInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(info.ocr_model.ends_with("ppocr"), "{}", info.ocr_model);

    // A page with no text: one page, no lines.
    let read = client
        .recognize(request(vec![png(320, 240), png(200, 100)]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(read.pages.len(), 2);
    assert_eq!(read.pages[1].image_index, 1);
    assert_eq!((read.pages[0].width, read.pages[0].height), (320, 240));
    assert!(read.pages.iter().all(|p| p.text.is_empty() && p.page == 1));

    // A multi-page TIFF: each page, numbered, after the image before it.
    let mut tiff_bytes = Cursor::new(Vec::new());
    let mut encoder = tiff::encoder::TiffEncoder::new(&mut tiff_bytes).unwrap();
    for (w, h) in [(120, 80), (90, 60), (64, 64)] {
        encoder
            .write_image::<tiff::encoder::colortype::Gray8>(w, h, &vec![255; (w * h) as usize])
            .unwrap();
    }
    let read = client
        .recognize(request(vec![png(50, 50), tiff_bytes.into_inner()]))
        .await
        .unwrap()
        .into_inner();
    let pages: Vec<(u32, u32, u32)> = read
        .pages
        .iter()
        .map(|p| (p.image_index, p.page, p.width))
        .collect();
    assert_eq!(pages, [(0, 1, 50), (1, 1, 120), (1, 2, 90), (1, 3, 64)]);

    let refused = |status: tonic::Status, code: Code, words: &str| {
        assert_eq!(status.code(), code, "{status:?}");
        assert!(status.message().contains(words), "{status:?}");
    };
    let mut other = client.clone();
    let mut call =
        async |images: Vec<Vec<u8>>| other.recognize(request(images)).await.expect_err("refused");
    let good = png(64, 64);
    let truncated = good[..good.len() / 2].to_vec();
    refused(
        call(vec![good.clone(), truncated]).await,
        Code::InvalidArgument,
        "`images[1]`: corrupt or truncated image",
    );
    refused(
        call(vec![b"not an image".to_vec()]).await,
        Code::InvalidArgument,
        "unsupported image format",
    );
    refused(
        call(vec![png(600, 600)]).await,
        Code::InvalidArgument,
        "over the limit of 250000 pixels",
    );
    refused(
        call(vec![]).await,
        Code::InvalidArgument,
        "`images` is empty",
    );
    refused(
        call(vec![good.clone(); 4]).await,
        Code::InvalidArgument,
        "at most 3",
    );
    // Three images at once are more than the queue holds.
    refused(
        call(vec![good.clone(); 3]).await,
        Code::ResourceExhausted,
        "--ocr-max-queued",
    );
    // Every flipped byte of a good image: an answer or INVALID_ARGUMENT, never a crash.
    for at in (0..good.len()).step_by(good.len() / 24 + 1) {
        let mut flipped = good.clone();
        flipped[at] ^= 0x5A;
        if let Err(status) = client.recognize(request(vec![flipped])).await {
            assert_eq!(status.code(), Code::InvalidArgument, "{at}: {status:?}");
        }
    }
    // The server is still up.
    client
        .recognize(request(vec![good]))
        .await
        .expect("still serving");
}
