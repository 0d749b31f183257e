//! `zhiku-bench ingest`: where an Ingest's time goes, and how close it is to the embedder's.
//!
//! The documents are ingested once through the orchestrator, as a user does; then each stage
//! is run alone on the same passages, in the same run: loading and splitting in this process,
//! tokenizing with the embedder's tokenizer, Embed on the embedder's port in the batches
//! Ingest sends, Upsert of the same vectors on the retriever's port into a second knowledge
//! base, and (with `--python`) sentence-transformers embedding the same texts.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use futures::StreamExt;
use tonic::Request;
use zhiku_proto::v1::{
    DocumentInput, EmbedKind, EmbedRequest, EmbedderInfoRequest, IngestRequest, Passage,
    UpsertRequest, ingest_event,
};
use zhiku_text::{PassageSplitter, SplitterConfig};

use crate::Server;

/// Passages per Embed call: the orchestrator's `--embed-batch` default.
const EMBED_BATCH: usize = 32;
/// Passages per Upsert call, as Ingest sends them.
const UPSERT_BATCH: usize = 256;

/// The documents to ingest: every file under `docs` that zhiku loads, sorted by path.
pub fn documents(docs: &Path) -> Result<Vec<(String, Vec<u8>)>, String> {
    let mut files = Vec::new();
    let mut pending = vec![docs.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let entries =
            std::fs::read_dir(&dir).map_err(|e| format!("cannot read {}: {e}", dir.display()))?;
        for entry in entries {
            let path = entry.map_err(|e| e.to_string())?.path();
            if path.is_dir() {
                pending.push(path);
            } else if zhiku_text::Format::from_file_name(&path.to_string_lossy()).is_some() {
                files.push(path);
            }
        }
    }
    files.sort();
    if files.is_empty() {
        return Err(format!("no document zhiku loads under {}", docs.display()));
    }
    files
        .into_iter()
        .map(|path| {
            let bytes =
                std::fs::read(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
            let name = path
                .strip_prefix(docs)
                .unwrap_or(&path)
                .to_string_lossy()
                .into_owned();
            Ok((name, bytes))
        })
        .collect()
}

/// One stage's wall time.
struct Stage {
    name: &'static str,
    seconds: f64,
}

fn seconds(since: Instant) -> f64 {
    since.elapsed().as_secs_f64()
}

/// The whole ingest through the orchestrator: (seconds, passages stored).
async fn ingest_all(
    server: &Server,
    kb: &str,
    files: &[(String, Vec<u8>)],
) -> Result<(f64, u64), String> {
    let documents = files
        .iter()
        .map(|(name, bytes)| DocumentInput {
            file_name: name.clone(),
            content: bytes.clone(),
            ..Default::default()
        })
        .collect();
    let mut request = Request::new(IngestRequest {
        knowledge_base: kb.into(),
        documents,
        create_if_missing: true,
        ..Default::default()
    });
    request.set_timeout(Duration::from_secs(3600));
    let started = Instant::now();
    let mut stream = server
        .orchestrator()
        .ingest(request)
        .await
        .map_err(|s| format!("ingest: {s}"))?
        .into_inner();
    while let Some(event) = stream.next().await {
        let event = event.map_err(|s| format!("ingest: {s}"))?;
        if let Some(ingest_event::Event::Summary(summary)) = event.event {
            if summary.files_failed > 0 {
                return Err(format!("ingest: failed files: {:?}", summary.errors));
            }
            return Ok((seconds(started), summary.passages_stored));
        }
    }
    Err("ingest: the stream ended without a summary".into())
}

/// sentence-transformers encoding `texts` (batch 32, the same threads): texts/s, best of 2.
fn sentence_transformers(
    python: &Path,
    model: &Path,
    texts: &[String],
    threads: usize,
) -> Result<f64, String> {
    let dir = std::env::temp_dir().join(format!("zhiku-bench-st-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let input = dir.join("texts.json");
    let json = serde_json::to_vec(texts).map_err(|e| e.to_string())?;
    std::fs::write(&input, json).map_err(|e| e.to_string())?;
    const SCRIPT: &str = r#"
import json, sys, time, torch
from sentence_transformers import SentenceTransformer
torch.set_num_threads(int(sys.argv[3]))
texts = json.load(open(sys.argv[2]))
model = SentenceTransformer(sys.argv[1], device="cpu")
model.encode(texts[:32], batch_size=32)
best = 0.0
for _ in range(2):
    started = time.perf_counter()
    model.encode(texts, batch_size=32)
    best = max(best, len(texts) / (time.perf_counter() - started))
print(best)
"#;
    let output = std::process::Command::new(python)
        .args(["-c", SCRIPT])
        .arg(model)
        .arg(&input)
        .arg(threads.to_string())
        .output()
        .map_err(|e| format!("cannot run {}: {e}", python.display()));
    let _ = std::fs::remove_dir_all(&dir);
    let output = output?;
    if !output.status.success() {
        return Err(format!(
            "sentence-transformers failed: {}",
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    String::from_utf8_lossy(&output.stdout)
        .trim()
        .parse()
        .map_err(|e| format!("sentence-transformers printed no rate: {e}"))
}

pub struct Settings<'a> {
    pub docs: &'a Path,
    pub model: PathBuf,
    pub python: Option<&'a Path>,
}

/// Runs the bench; prints the table.
pub async fn run(server: &Server, settings: Settings<'_>) -> Result<(), String> {
    let files = documents(settings.docs)?;
    let bytes: usize = files.iter().map(|(_, b)| b.len()).sum();
    let kib = bytes as f64 / 1024.0;
    println!(
        "{} files, {kib:.0} KiB under {}",
        files.len(),
        settings.docs.display()
    );

    // 1. The Ingest as a user runs it.
    let (ingest_s, stored) = ingest_all(server, "ingest-bench", &files).await?;

    // 2. Loading and splitting, in this process, one thread (the orchestrator loads on
    //    blocking threads, --max-parallel-loads at once).
    let mut stages = Vec::new();
    let started = Instant::now();
    let mut documents = Vec::new();
    for (name, bytes) in &files {
        documents.push(zhiku_text::load(name, bytes).map_err(|e| e.to_string())?);
    }
    stages.push(Stage {
        name: "load",
        seconds: seconds(started),
    });
    let splitter = PassageSplitter::new(SplitterConfig::default()).map_err(|e| e.to_string())?;
    let started = Instant::now();
    let passages: Vec<Vec<zhiku_text::Passage>> = documents
        .iter()
        .map(|d| splitter.split_document(d))
        .collect();
    stages.push(Stage {
        name: "split",
        seconds: seconds(started),
    });
    // What Ingest embeds: each passage under its document's title.
    let texts: Vec<String> = documents
        .iter()
        .zip(&passages)
        .flat_map(|(d, ps)| {
            let title = zhiku_text::document_title(&d.source);
            ps.iter().map(move |p| p.indexed_text_under(&title))
        })
        .collect();
    if texts.len() as u64 != stored {
        return Err(format!(
            "this process split {} passages, the Ingest stored {stored}",
            texts.len()
        ));
    }

    // 3. Tokenizing, with the embedder's tokenizer and prefix.
    let info = server
        .embedder()
        .info(EmbedderInfoRequest {})
        .await
        .map_err(|s| format!("embedder info: {s}"))?
        .into_inner();
    let tokenizer = zhiku_embedder::tokenizer::TextTokenizer::from_file(
        &settings.model.join("tokenizer.json"),
        info.max_input_tokens as usize,
        info.query_prefix.clone(),
        info.passage_prefix.clone(),
    )
    .map_err(|e| e.to_string())?;
    let started = Instant::now();
    let mut tokens = 0usize;
    for text in &texts {
        tokens += tokenizer
            .encode(text, zhiku_embedder::tokenizer::TextKind::Passage)
            .map_err(|e| e.to_string())?
            .ids
            .len();
    }
    stages.push(Stage {
        name: "tokenize",
        seconds: seconds(started),
    });

    // 4. Embed alone, in Ingest's batches, one call at a time.
    let started = Instant::now();
    let mut vectors = Vec::with_capacity(texts.len());
    for batch in texts.chunks(EMBED_BATCH) {
        let response = server
            .embedder()
            .embed(EmbedRequest {
                texts: batch.to_vec(),
                kind: EmbedKind::Passage as i32,
                ..Default::default()
            })
            .await
            .map_err(|s| format!("embed: {s}"))?
            .into_inner();
        vectors.extend(response.embeddings.into_iter().map(|e| e.values));
    }
    let embed_s = seconds(started);
    stages.push(Stage {
        name: "embed (incl. tokenize)",
        seconds: embed_s,
    });

    // 5. Upsert alone (dense index, BM25, payload), the same points into a second base.
    let mut points = Vec::with_capacity(texts.len());
    let mut vectors = vectors.into_iter();
    for ((name, _), document_passages) in files.iter().zip(&passages) {
        let count = document_passages.len() as u32;
        for p in document_passages {
            points.push(Passage {
                document_id: name.clone(),
                chunk_index: p.index as u32,
                chunk_count: count,
                text: p.text.clone(),
                source: name.clone(),
                vector: vectors.next().unwrap_or_default(),
                heading_path: p.heading(),
                char_start: p.char_start as u32,
                char_end: p.char_end as u32,
                ..Default::default()
            });
        }
    }
    server
        .orchestrator()
        .create_knowledge_base(zhiku_proto::v1::CreateKnowledgeBaseRequest {
            name: "ingest-bench-upsert".into(),
            distance: zhiku_proto::v1::Distance::Cosine as i32,
            ..Default::default()
        })
        .await
        .map_err(|s| format!("create: {s}"))?;
    let started = Instant::now();
    for batch in points.chunks(UPSERT_BATCH) {
        server
            .retriever()
            .upsert(UpsertRequest {
                knowledge_base: "ingest-bench-upsert".into(),
                passages: batch.to_vec(),
            })
            .await
            .map_err(|s| format!("upsert: {s}"))?;
    }
    let upsert_s = seconds(started);
    stages.push(Stage {
        name: "upsert",
        seconds: upsert_s,
    });

    let n = texts.len() as f64;
    println!(
        "Ingest through the orchestrator: {ingest_s:.2} s for {stored} passages ({tokens} \
         tokens): {:.1} KiB/s, {:.1} passages/s",
        kib / ingest_s,
        n / ingest_s
    );
    println!("each stage alone, on the same passages (share of the Ingest's time):");
    for stage in &stages {
        println!(
            "  {:<24} {:>8.2} s  {:>5.1} %",
            stage.name,
            stage.seconds,
            100.0 * stage.seconds / ingest_s
        );
    }
    println!(
        "embedder share of the Ingest: {:.1} % (Embed alone / Ingest)",
        100.0 * embed_s / ingest_s
    );
    let zhiku_rate = n / embed_s;
    if let Some(python) = settings.python {
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        let prefixed: Vec<String> = texts
            .iter()
            .map(|t| format!("{}{t}", info.passage_prefix))
            .collect();
        let st = sentence_transformers(python, &settings.model, &prefixed, threads)?;
        println!(
            "embedding the same passages: zhiku {zhiku_rate:.1}/s over gRPC, \
             sentence-transformers {st:.1}/s in process ({threads} threads): {:.2}x; \
             the whole Ingest {:.2}x sentence-transformers' embedding alone",
            zhiku_rate / st,
            (n / ingest_s) / st
        );
    }
    Ok(())
}
