//! The client side of each command: calls to the orchestrator and what a person sees.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use futures::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;
use tonic::transport::Channel;
use zhiku_proto::v1::orchestrator_client::OrchestratorClient;
use zhiku_proto::v1::{
    AskRequest, CreateKnowledgeBaseRequest, DeleteDocumentRequest, DeleteKnowledgeBaseRequest,
    DocumentInput, IngestRequest, IngestStage, ListDocumentsRequest, ListKnowledgeBasesRequest,
    SamplingParams, SearchMode, SplitOptions, ask_event, ingest_event,
};

use crate::Command;

/// Retrieval mode of `zhiku ask`.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum Mode {
    Dense,
    Sparse,
    Hybrid,
}

#[derive(Debug, clap::Subcommand)]
pub enum KbAction {
    /// List knowledge bases with their sizes.
    List,
    /// Create a knowledge base (dimensions from the embedder, cosine distance).
    Create {
        name: String,
        /// Free text for people.
        #[arg(long, default_value = "")]
        description: String,
        /// A generator LoRA adapter its answers use.
        #[arg(long, default_value = "")]
        adapter: String,
    },
    /// Delete a knowledge base and all its passages.
    Delete { name: String },
}

#[derive(Debug, clap::Subcommand)]
pub enum DocsAction {
    /// List the documents of a knowledge base.
    List {
        #[arg(long, env = "ZHIKU_KB")]
        kb: String,
    },
    /// Delete one document.
    Delete {
        #[arg(long, env = "ZHIKU_KB")]
        kb: String,
        document_id: String,
    },
}

/// Shows a spinner while `work` runs (on a terminal).
pub async fn with_spinner<T>(message: &str, work: impl std::future::Future<Output = T>) -> T {
    let spinner = ProgressBar::new_spinner();
    spinner.set_message(message.to_owned());
    spinner.enable_steady_tick(Duration::from_millis(100));
    let out = work.await;
    spinner.finish_and_clear();
    out
}

fn fail(what: &str, status: tonic::Status) -> ExitCode {
    eprintln!(
        "zhiku: {what} failed: {} ({:?})",
        status.message(),
        status.code()
    );
    ExitCode::FAILURE
}

pub async fn run(addr: &str, command: Command) -> ExitCode {
    let channel = match Channel::from_shared(addr.to_owned()) {
        Ok(endpoint) => endpoint.connect_lazy(),
        Err(e) => {
            eprintln!("zhiku: bad --addr `{addr}`: {e}");
            return ExitCode::from(2);
        }
    };
    let client = OrchestratorClient::new(channel)
        .max_decoding_message_size(64 << 20)
        .max_encoding_message_size(64 << 20);
    match command {
        Command::Serve { .. } => ExitCode::SUCCESS,
        Command::Ingest {
            paths,
            kb,
            chunk_size,
            overlap,
        } => ingest(client, &paths, kb, chunk_size, overlap).await,
        Command::Ask {
            question,
            kb,
            top_k,
            threshold,
            mode,
            max_new_tokens,
            json,
        } => {
            let request = AskRequest {
                question,
                knowledge_base: kb,
                top_k,
                score_threshold: threshold,
                mode: match mode {
                    Mode::Dense => SearchMode::Dense,
                    Mode::Sparse => SearchMode::Sparse,
                    Mode::Hybrid => SearchMode::Hybrid,
                } as i32,
                sampling: Some(SamplingParams {
                    max_new_tokens: Some(max_new_tokens),
                    ..Default::default()
                }),
                ..Default::default()
            };
            ask(client, request, json).await
        }
        Command::Kb { action } => kb(client, action).await,
        Command::Docs { action } => docs(client, action).await,
    }
}

/// Files under `paths` (directories walked in name order), with the names they go in under.
fn collect(paths: &[PathBuf]) -> Vec<(String, PathBuf)> {
    fn walk(base: &Path, path: &Path, out: &mut Vec<(String, PathBuf)>) {
        if path.is_dir() {
            let mut entries: Vec<PathBuf> = std::fs::read_dir(path)
                .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
                .unwrap_or_default();
            entries.sort();
            for entry in entries {
                walk(base, &entry, out);
            }
        } else {
            let name = path
                .strip_prefix(base)
                .ok()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(path)
                .to_string_lossy()
                .replace('\\', "/");
            out.push((name, path.to_path_buf()));
        }
    }
    let mut out = Vec::new();
    for path in paths {
        let base = if path.is_dir() {
            path.as_path()
        } else {
            path.parent().unwrap_or(Path::new(""))
        };
        walk(base, path, &mut out);
    }
    out
}

/// Bytes sent per Ingest call (well under the 64 MiB message limit).
const INGEST_CALL_BYTES: usize = 16 << 20;

async fn ingest(
    mut client: OrchestratorClient<Channel>,
    paths: &[PathBuf],
    kb: String,
    chunk_size: u32,
    overlap: u32,
) -> ExitCode {
    let files = collect(paths);
    if files.is_empty() {
        eprintln!("zhiku: no files under {paths:?}");
        return ExitCode::FAILURE;
    }
    let bar = ProgressBar::new(files.len() as u64);
    bar.set_style(
        ProgressStyle::with_template("{spinner} [{bar:30}] {pos}/{len} files · {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    let mut failures: Vec<String> = Vec::new();
    let mut stored = 0u64;
    let mut ingested = 0u32;

    // Files go in groups that fit one message; unreadable files fail here, the rest go on.
    let mut batch: Vec<DocumentInput> = Vec::new();
    let mut batch_bytes = 0;
    let mut groups = Vec::new();
    for (name, path) in files {
        match std::fs::read(&path) {
            Ok(content) => {
                if batch_bytes + content.len() > INGEST_CALL_BYTES && !batch.is_empty() {
                    groups.push(std::mem::take(&mut batch));
                    batch_bytes = 0;
                }
                batch_bytes += content.len();
                batch.push(DocumentInput {
                    file_name: name.clone(),
                    content,
                    document_id: name,
                    metadata: Default::default(),
                });
            }
            Err(e) => {
                failures.push(format!("{name}: cannot read: {e}"));
                bar.inc(1);
            }
        }
    }
    if !batch.is_empty() {
        groups.push(batch);
    }
    for documents in groups {
        let request = IngestRequest {
            knowledge_base: kb.clone(),
            documents,
            paths: Vec::new(),
            split: Some(SplitOptions {
                chunk_size,
                overlap: Some(overlap),
            }),
            create_if_missing: true,
        };
        let mut stream = match client.ingest(request).await {
            Ok(r) => r.into_inner(),
            Err(status) => {
                bar.abandon();
                return fail("ingest", status);
            }
        };
        while let Some(event) = stream.next().await {
            match event {
                Ok(event) => match event.event {
                    Some(ingest_event::Event::File(file)) => {
                        let stage =
                            IngestStage::try_from(file.stage).unwrap_or(IngestStage::Unspecified);
                        bar.set_message(format!(
                            "{} {}",
                            file.source,
                            stage_name(stage, file.done, file.chunks)
                        ));
                        if matches!(stage, IngestStage::Stored | IngestStage::Failed) {
                            bar.inc(1);
                        }
                        if stage == IngestStage::Failed {
                            bar.println(format!("✗ {}: {}", file.source, file.error));
                        }
                    }
                    Some(ingest_event::Event::Summary(summary)) => {
                        stored += summary.passages_stored;
                        ingested += summary.files_ingested;
                        failures.extend(summary.errors);
                    }
                    None => {}
                },
                Err(status) => {
                    bar.abandon();
                    return fail("ingest", status);
                }
            }
        }
    }
    bar.finish_and_clear();
    println!(
        "ingested {ingested} file(s), {stored} passage(s) into `{kb}`; {} failed",
        failures.len()
    );
    for failure in &failures {
        println!("  ✗ {failure}");
    }
    if failures.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn stage_name(stage: IngestStage, done: u32, chunks: u32) -> String {
    match stage {
        IngestStage::Loaded => "loaded".into(),
        IngestStage::Split => format!("{chunks} passages"),
        IngestStage::Embedded => format!("embedded {done}/{chunks}"),
        IngestStage::Stored => "stored".into(),
        IngestStage::Failed => "failed".into(),
        IngestStage::Unspecified => String::new(),
    }
}

async fn ask(
    mut client: OrchestratorClient<Channel>,
    request: AskRequest,
    json_output: bool,
) -> ExitCode {
    let mut stream = match client.ask(request).await {
        Ok(r) => r.into_inner(),
        Err(status) => return fail("ask", status),
    };
    let mut stdout = std::io::stdout();
    while let Some(event) = stream.next().await {
        let event = match event {
            Ok(e) => e,
            Err(status) => {
                if !json_output {
                    println!();
                }
                return fail("ask", status);
            }
        };
        match event.event {
            Some(ask_event::Event::Chunk(chunk)) if !json_output => {
                let _ = write!(stdout, "{}", chunk.text);
                let _ = stdout.flush();
            }
            Some(ask_event::Event::Answer(answer)) => {
                let timings = answer.timings.unwrap_or_default();
                if json_output {
                    let object = json!({
                        "answer": answer.text,
                        "refused": answer.refused,
                        "sources": answer.citations.iter().map(|c| json!({
                            "source": c.source,
                            "document_id": c.document_id,
                            "chunk": c.chunk_index,
                            "score": c.score,
                            "text": c.text,
                        })).collect::<Vec<_>>(),
                        "timings": {
                            "embed_ms": timings.embed_ms,
                            "search_ms": timings.search_ms,
                            "first_token_ms": timings.first_token_ms,
                            "generate_ms": timings.generate_ms,
                            "total_ms": timings.total_ms,
                        },
                    });
                    println!("{object}");
                } else {
                    if answer.refused {
                        print!("{}", answer.text);
                    }
                    println!();
                    if !answer.citations.is_empty() {
                        println!("\nsources:");
                        for c in &answer.citations {
                            let preview: String = c.text.chars().take(60).collect();
                            println!(
                                "  [{}] {} #{} (score {:.3}) {}",
                                c.number, c.source, c.chunk_index, c.score, preview
                            );
                        }
                    }
                    println!("({:.0} ms)", timings.total_ms);
                }
            }
            _ => {}
        }
    }
    ExitCode::SUCCESS
}

async fn kb(mut client: OrchestratorClient<Channel>, action: KbAction) -> ExitCode {
    match action {
        KbAction::List => match client
            .list_knowledge_bases(ListKnowledgeBasesRequest {})
            .await
        {
            Ok(r) => {
                let list = r.into_inner().knowledge_bases;
                if list.is_empty() {
                    println!("no knowledge bases yet: zhiku ingest PATH --kb NAME creates one");
                }
                for kb in list {
                    println!(
                        "{:<24} {:>6} documents {:>8} passages  {}d  {}",
                        kb.name, kb.document_count, kb.passage_count, kb.dimensions, kb.description
                    );
                }
                ExitCode::SUCCESS
            }
            Err(status) => fail("kb list", status),
        },
        KbAction::Create {
            name,
            description,
            adapter,
        } => match client
            .create_knowledge_base(CreateKnowledgeBaseRequest {
                name,
                dimensions: 0,
                distance: 0,
                description,
                adapter,
            })
            .await
        {
            Ok(r) => {
                let kb = r.into_inner();
                println!("created `{}` ({} dimensions)", kb.name, kb.dimensions);
                ExitCode::SUCCESS
            }
            Err(status) => fail("kb create", status),
        },
        KbAction::Delete { name } => {
            match client
                .delete_knowledge_base(DeleteKnowledgeBaseRequest { name: name.clone() })
                .await
            {
                Ok(r) => {
                    println!(
                        "deleted `{name}` ({} passages)",
                        r.into_inner().deleted_passages
                    );
                    ExitCode::SUCCESS
                }
                Err(status) => fail("kb delete", status),
            }
        }
    }
}

async fn docs(mut client: OrchestratorClient<Channel>, action: DocsAction) -> ExitCode {
    match action {
        DocsAction::List { kb } => {
            let mut token = String::new();
            loop {
                let page = match client
                    .list_documents(ListDocumentsRequest {
                        knowledge_base: kb.clone(),
                        page_size: 1000,
                        page_token: token.clone(),
                    })
                    .await
                {
                    Ok(r) => r.into_inner(),
                    Err(status) => return fail("docs list", status),
                };
                for doc in page.documents {
                    println!(
                        "{:<40} {:>6} passages  {}",
                        doc.document_id, doc.chunk_count, doc.source
                    );
                }
                if page.next_page_token.is_empty() {
                    return ExitCode::SUCCESS;
                }
                token = page.next_page_token;
            }
        }
        DocsAction::Delete { kb, document_id } => match client
            .delete_document(DeleteDocumentRequest {
                knowledge_base: kb,
                document_id: document_id.clone(),
            })
            .await
        {
            Ok(r) => {
                println!(
                    "deleted `{document_id}` ({} passages)",
                    r.into_inner().deleted_passages
                );
                ExitCode::SUCCESS
            }
            Err(status) => fail("docs delete", status),
        },
    }
}
