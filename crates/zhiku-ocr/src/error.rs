//! The crate's one error type.

use std::path::PathBuf;

/// What can go wrong between image bytes and recognised text.
#[derive(Debug, thiserror::Error)]
pub enum OcrError {
    /// The bytes are in no image format this crate reads.
    #[error("unsupported image format: the OCR reads PNG, JPEG, BMP, TIFF and WebP")]
    UnsupportedFormat,
    /// The image is larger than the configured pixel limit (a decompression bomb, or a scan
    /// at a resolution far above what OCR needs).
    #[error(
        "image of {width}x{height} pixels is over the limit of {max_pixels} pixels: \
         scan at a lower resolution (300 dpi is plenty for OCR) or raise the limit"
    )]
    TooLarge {
        width: u32,
        height: u32,
        max_pixels: u64,
    },
    /// A multi-page image with more pages than allowed.
    #[error("image has more than {max} pages: split it into smaller files")]
    TooManyPages { max: usize },
    /// The image has no pixels.
    #[error("image has no pixels ({width}x{height})")]
    Empty { width: u32, height: u32 },
    /// The image is corrupt or truncated.
    #[error("corrupt or truncated image: {0}")]
    Corrupt(String),
    /// A model file could not be found.
    #[error(transparent)]
    Model(#[from] zhiku_models::ModelSourceError),
    /// The ONNX Runtime library could not be loaded.
    #[error(
        "cannot load ONNX Runtime from {path}: {reason}. Run `scripts/fetch-models ppocr` \
         (it puts libonnxruntime.so beside the models) or set ORT_DYLIB_PATH"
    )]
    Runtime { path: PathBuf, reason: String },
    /// No ONNX Runtime library was found.
    #[error(
        "no ONNX Runtime library found beside the OCR models in {0} and ORT_DYLIB_PATH is \
         not set: run `scripts/fetch-models ppocr` or set ORT_DYLIB_PATH"
    )]
    NoRuntime(PathBuf),
    /// tract was asked for in a build without it.
    #[error(
        "this build of zhiku-ocr has no tract runtime: build it with `--features tract`, or use \
         ONNX Runtime (the default)"
    )]
    TractNotBuilt,
    /// A model is not the model this pipeline expects.
    #[error("model {model}: {reason}")]
    BadModel { model: String, reason: String },
    /// ONNX Runtime failed while running a model.
    #[error("{model} inference failed: {reason}")]
    Inference { model: &'static str, reason: String },
}
