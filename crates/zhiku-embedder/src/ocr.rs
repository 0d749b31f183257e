//! The Recognize call: page images read by zhiku-ocr's PP-OCR pipeline. OCR is CPU-bound
//! and slow next to an Embed, so each image runs on a blocking thread, at most
//! --ocr-workers at once, and at most --ocr-max-queued images wait for one.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::Semaphore;
use zhiku_ocr::{DecodeLimits, OcrEngine, OcrError, OcrOptions, decode_pages};
use zhiku_proto::v1::{OcrLine, OcrPage, RecognizeRequest, RecognizeResponse};

use crate::config::{EmbedderArgs, OcrModelChoice};
use crate::error::EmbedderError;

/// The loaded OCR models and the queue in front of them.
pub struct OcrState {
    engine: Arc<OcrEngine>,
    /// Where the models came from, as Info and the responses name them.
    pub model_id: String,
    limits: DecodeLimits,
    workers: Arc<Semaphore>,
    queued: AtomicUsize,
    max_queued: usize,
    max_images: usize,
    max_pages: usize,
}

/// Releases the queue slots of a request however it ends.
struct QueueSlots<'a> {
    queued: &'a AtomicUsize,
    count: usize,
}

impl Drop for QueueSlots<'_> {
    fn drop(&mut self) {
        self.queued.fetch_sub(self.count, Ordering::AcqRel);
    }
}

impl OcrState {
    /// Loads the OCR models (blocking) as --ocr-model says: `None` when OCR is off, or when
    /// the models found under --models-dir do not load (logged: the embedder still serves
    /// embeddings).
    pub fn load(args: &EmbedderArgs) -> Result<Option<Self>, EmbedderError> {
        let (model, explicit) = match args.ocr_model_choice() {
            OcrModelChoice::Off => return Ok(None),
            OcrModelChoice::Explicit(model) => (model, true),
            OcrModelChoice::Found(dir) => (dir.display().to_string(), false),
        };
        let started = std::time::Instant::now();
        let options = OcrOptions {
            threads: args.ocr_threads(),
            cuda_device: args.ocr_cuda_device(),
            ..OcrOptions::default()
        };
        let engine = match OcrEngine::load(&model, Some(&args.models_dir), options) {
            Ok(engine) => engine,
            Err(e) if explicit => {
                return Err(EmbedderError::Load(format!("--ocr-model {model}: {e}")));
            }
            Err(e) => {
                tracing::warn!(model = %model, error = %e, "OCR models found but not loaded; Recognize is off");
                return Ok(None);
            }
        };
        tracing::info!(
            ocr_model = %model,
            threads = args.ocr_threads(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "OCR models loaded"
        );
        Ok(Some(Self::new(Arc::new(engine), model, args)))
    }

    /// An already loaded engine with the limits of `args`.
    pub fn new(engine: Arc<OcrEngine>, model_id: String, args: &EmbedderArgs) -> Self {
        Self {
            engine,
            model_id,
            limits: DecodeLimits {
                max_pixels: args.ocr_max_pixels.max(1),
                ..DecodeLimits::default()
            },
            workers: Arc::new(Semaphore::new(args.ocr_workers.max(1))),
            queued: AtomicUsize::new(0),
            max_queued: args.ocr_max_queued.max(1),
            max_images: args.ocr_max_images.max(1),
            max_pages: args.ocr_max_pages.max(1),
        }
    }

    /// Reads every image of a request, in order; the first bad image fails the request,
    /// naming it.
    pub async fn recognize(
        &self,
        request: RecognizeRequest,
    ) -> Result<RecognizeResponse, EmbedderError> {
        let images = request.images;
        check_count(images.len(), self.max_images)?;
        let count = images.len();
        let before = self.queued.fetch_add(count, Ordering::AcqRel);
        let _slots = QueueSlots {
            queued: &self.queued,
            count,
        };
        if before + count > self.max_queued {
            return Err(EmbedderError::OcrOverloaded {
                queued: before,
                max: self.max_queued,
            });
        }
        let mut pages = Vec::with_capacity(count);
        for (index, bytes) in images.into_iter().enumerate() {
            let permit = self
                .workers
                .clone()
                .acquire_owned()
                .await
                .map_err(|_| EmbedderError::ShuttingDown)?;
            let engine = self.engine.clone();
            let (limits, max_pages) = (self.limits, self.max_pages);
            let read = tokio::task::spawn_blocking(move || {
                let _permit = permit;
                decode_pages(&bytes, &limits, max_pages)?
                    .iter()
                    .map(|image| engine.recognize(image))
                    .collect::<Result<Vec<_>, _>>()
            })
            .await
            .map_err(|e| EmbedderError::Inference(format!("the OCR thread failed: {e}")))?
            .map_err(|e| ocr_error(index, e))?;
            for (number, page) in read.iter().enumerate() {
                pages.push(page_message(index as u32, number as u32 + 1, page));
            }
        }
        Ok(RecognizeResponse {
            pages,
            model: self.model_id.clone(),
        })
    }
}

fn check_count(count: usize, max: usize) -> Result<(), EmbedderError> {
    if count == 0 {
        return Err(EmbedderError::Validation(format!(
            "`images` is empty: send between 1 and {max} image files"
        )));
    }
    if count > max {
        return Err(EmbedderError::Validation(format!(
            "`images` has {count} images; at most {max} are allowed per request \
             (--ocr-max-images): split the request"
        )));
    }
    Ok(())
}

/// What is wrong with the image is the caller's to fix; the rest is the server's.
fn ocr_error(index: usize, e: OcrError) -> EmbedderError {
    match e {
        OcrError::UnsupportedFormat
        | OcrError::TooLarge { .. }
        | OcrError::TooManyPages { .. }
        | OcrError::Empty { .. }
        | OcrError::Corrupt(_) => EmbedderError::Validation(format!("`images[{index}]`: {e}")),
        other => EmbedderError::Inference(format!("`images[{index}]`: {other}")),
    }
}

fn page_message(image_index: u32, page_number: u32, page: &zhiku_ocr::Page) -> OcrPage {
    let (mut weighted, mut chars) = (0.0f32, 0usize);
    for line in &page.lines {
        let n = line.text.chars().count().max(1);
        weighted += line.confidence * n as f32;
        chars += n;
    }
    OcrPage {
        image_index,
        page: page_number,
        width: page.width,
        height: page.height,
        lines: page
            .lines
            .iter()
            .map(|line| OcrLine {
                text: line.text.clone(),
                confidence: line.confidence,
                r#box: line.bbox.iter().flat_map(|p| [p.x, p.y]).collect(),
                vertical: line.vertical,
            })
            .collect(),
        text: page.text(),
        confidence: if chars == 0 {
            0.0
        } else {
            weighted / chars as f32
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// OCR follows the embedder's --device: a CUDA device there is ONNX Runtime's device.
    #[test]
    fn the_ocr_device_is_the_embedders_cuda_device() {
        let mut args = crate::EmbedderArgs::for_model("m");
        for (device, expected) in [
            ("cpu", None),
            ("cuda", Some(0)),
            ("cuda:1", Some(1)),
            (" cuda:3 ", Some(3)),
            ("cuda:x", None),
            ("metal", None),
        ] {
            args.device = device.into();
            assert_eq!(args.ocr_cuda_device(), expected, "{device:?}");
        }
    }

    #[test]
    fn image_counts_are_checked() {
        let err = check_count(0, 4).unwrap_err().to_string();
        assert!(err.contains("`images` is empty"), "{err}");
        let err = check_count(5, 4).unwrap_err().to_string();
        assert!(err.contains("at most 4"), "{err}");
        assert!(check_count(4, 4).is_ok());
    }

    #[test]
    fn bad_images_are_the_callers_errors() {
        let err = ocr_error(2, OcrError::Corrupt("truncated".into()));
        assert!(matches!(err, EmbedderError::Validation(_)));
        assert!(err.to_string().starts_with("`images[2]`: corrupt"), "{err}");
        let err = ocr_error(
            0,
            OcrError::TooLarge {
                width: 100_000,
                height: 100_000,
                max_pixels: 10,
            },
        );
        assert!(matches!(err, EmbedderError::Validation(_)));
        let err = ocr_error(
            0,
            OcrError::Inference {
                model: "detector",
                reason: "x".into(),
            },
        );
        assert!(matches!(err, EmbedderError::Inference(_)));
    }

    #[test]
    fn the_default_model_is_found_under_the_models_dir() {
        let dir = tempfile::tempdir().unwrap();
        let mut args = EmbedderArgs::for_model("m");
        args.models_dir = dir.path().to_path_buf();
        assert_eq!(args.ocr_model_choice(), OcrModelChoice::Off);
        let ppocr = dir.path().join("ppocr");
        std::fs::create_dir(&ppocr).unwrap();
        std::fs::write(ppocr.join(zhiku_ocr::DETECTION_MODEL), b"").unwrap();
        assert_eq!(args.ocr_model_choice(), OcrModelChoice::Found(ppocr));
        args.ocr_model = Some("off".into());
        assert_eq!(args.ocr_model_choice(), OcrModelChoice::Off);
        args.ocr_model = Some("/some/dir".into());
        assert_eq!(
            args.ocr_model_choice(),
            OcrModelChoice::Explicit("/some/dir".into())
        );
    }
}
