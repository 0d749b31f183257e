//! The client side of each command: calls to the orchestrator and what a person sees.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use futures::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use zhiku_orchestrator::OcrSetting;
use zhiku_proto::v1::orchestrator_client::OrchestratorClient;
use zhiku_proto::v1::{
    AdapterEvalFigures, AdapterProvenance, AskRequest, BindAdapterRequest,
    CreateKnowledgeBaseRequest, DeleteDocumentRequest, DeleteKnowledgeBaseRequest,
    DescribeKnowledgeBaseRequest, DocumentInput, IngestRequest, IngestStage, KnowledgeBase,
    ListDocumentsRequest, ListKnowledgeBasesRequest, OcrMode, SamplingParams, SearchMode,
    SetDocumentReadersRequest, SplitOptions, UnbindAdapterRequest, ask_event, ingest_event,
};
use zhiku_runtime::request_id::PropagateRequestId;
use zhiku_text::Walker;

use crate::Command;

/// A client of the orchestrator that sends the caller's API key.
pub type Client = OrchestratorClient<InterceptedService<Channel, PropagateRequestId>>;

/// How the CLI reaches a running orchestrator.
#[derive(Debug, Clone, clap::Args)]
pub struct ClientArgs {
    /// API key sent as `authorization: Bearer KEY` (the first, when several are given).
    /// With `zhiku serve`: the keys the services accept.
    #[arg(
        long = "api-key",
        env = "ZHIKU_API_KEY",
        global = true,
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub api_keys: Vec<zhiku_runtime::Secret>,

    /// PEM file of CA certificates to trust for an https:// --addr, besides the system roots.
    #[arg(long, env = "ZHIKU_CA_CERT", global = true)]
    pub ca_cert: Option<PathBuf>,
}

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
        /// The generator LoRA adapter its answers use: the name of an adapter the generator
        /// holds, or a PEFT adapter directory (adapter_config.json +
        /// adapter_model.safetensors), which the generator then loads under the knowledge
        /// base's name, with no restart. The directory must be readable by the generator at
        /// the same path (the CLI sends it made absolute).
        #[arg(long, default_value = "")]
        adapter: String,
    },
    /// Delete a knowledge base and all its passages.
    Delete { name: String },
    /// Show a knowledge base: sizes, and the adapter bound to it with its provenance
    /// (trained from what, with which eval figures).
    Describe {
        name: String,
        /// Print the KnowledgeBase as one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Bind a LoRA adapter to a knowledge base without a restart: the generator loads it
    /// (replacing an adapter of the same name), then the knowledge base's Asks use it.
    BindAdapter {
        /// The knowledge base.
        name: String,
        /// A PEFT adapter directory (sent made absolute; the generator must read it at the
        /// same path), or the name of an adapter the generator already serves.
        adapter: String,
        /// The name the generator serves it under (default: the knowledge base's name).
        #[arg(long, default_value = "")]
        adapter_name: String,
        /// Provenance kept with the binding: the training data file it was trained from.
        #[arg(long, default_value = "")]
        data_file: String,
    },
    /// Unbind a knowledge base's adapter: its Asks use the base model again.
    UnbindAdapter {
        name: String,
        /// Also unload the adapter from the generator (unless another knowledge base is
        /// bound to it).
        #[arg(long)]
        unload: bool,
    },
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
    /// Set who may read a document (no re-embedding).
    SetReaders {
        #[arg(long, env = "ZHIKU_KB")]
        kb: String,
        document_id: String,
        /// Reader groups, comma-separated; empty (`--readers ''`): everyone.
        #[arg(long, value_delimiter = ',', num_args = 0..)]
        readers: Vec<String>,
    },
}

#[derive(Debug, clap::Subcommand)]
pub enum KeysAction {
    /// Print the SHA-256 of a key (read from standard input), as a key file's `sha256`.
    Hash,
    /// Make a new random key; print it, then its key-file line.
    New {
        /// The principal's name (in logs and the audit trail).
        #[arg(long)]
        name: String,
        /// admin, editor or reader.
        #[arg(long, default_value = "reader")]
        role: String,
        /// Its reader groups, comma-separated.
        #[arg(long, value_delimiter = ',')]
        groups: Vec<String>,
        /// The knowledge bases it may use, comma-separated; unset: all.
        #[arg(long, value_delimiter = ',')]
        knowledge_bases: Option<Vec<String>>,
    },
}

/// `zhiku keys`.
pub fn keys(action: &KeysAction) -> ExitCode {
    use zhiku_runtime::auth::key_hash;
    match action {
        KeysAction::Hash => {
            let mut key = String::new();
            if let Err(e) = std::io::stdin().read_line(&mut key) {
                eprintln!("zhiku keys hash: cannot read the key: {e}");
                return ExitCode::FAILURE;
            }
            if key.trim().is_empty() {
                eprintln!("zhiku keys hash: give the key on standard input");
                return ExitCode::from(2);
            }
            println!("{}", key_hash(&key));
            ExitCode::SUCCESS
        }
        KeysAction::New {
            name,
            role,
            groups,
            knowledge_bases,
        } => {
            if !matches!(role.as_str(), "admin" | "editor" | "reader") {
                eprintln!("zhiku keys new: --role is admin, editor or reader, not `{role}`");
                return ExitCode::from(2);
            }
            let key = zhiku_runtime::auth::random_key();
            let mut line = serde_json::json!({
                "name": name,
                "sha256": key_hash(&key),
                "role": role,
                "groups": groups,
            });
            if let Some(kbs) = knowledge_bases {
                line["knowledge_bases"] = serde_json::json!(kbs);
            }
            println!("key: {key}");
            println!("{line}");
            ExitCode::SUCCESS
        }
    }
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

pub fn fail(what: &str, status: tonic::Status) -> ExitCode {
    eprintln!(
        "zhiku: {what} failed: {} ({:?})",
        status.message(),
        status.code()
    );
    ExitCode::FAILURE
}

/// A client of the orchestrator at `addr` (connected at its first call); the exit code of a
/// bad address or key, said on stderr.
pub fn connect(addr: &str, access: &ClientArgs) -> Result<Client, ExitCode> {
    let channel = match zhiku_runtime::client::endpoint(addr, access.ca_cert.as_deref()) {
        Ok(endpoint) => endpoint.connect_lazy(),
        Err(e) => {
            eprintln!("zhiku: bad --addr `{addr}`: {e}");
            return Err(ExitCode::from(2));
        }
    };
    let caller =
        match PropagateRequestId::with_api_key(access.api_keys.first().map(|k| k.0.as_str())) {
            Ok(caller) => caller,
            Err(e) => {
                eprintln!("zhiku: --api-key: {e}");
                return Err(ExitCode::from(2));
            }
        };
    Ok(OrchestratorClient::with_interceptor(channel, caller)
        .max_decoding_message_size(64 << 20)
        .max_encoding_message_size(64 << 20))
}

/// Runs one client command (`zhiku eval` runs in its own module).
pub async fn run(client: Client, command: Command, ocr: Option<OcrSetting>) -> ExitCode {
    match command {
        Command::Serve { .. } | Command::Eval(_) | Command::Tune(_) | Command::Keys { .. } => {
            ExitCode::SUCCESS
        }
        Command::Ingest {
            paths,
            kb,
            chunk_size,
            overlap,
            max_file_bytes,
            readers,
        } => {
            let options = IngestOptions {
                kb,
                chunk_size,
                overlap,
                max_file_bytes,
                ocr,
                readers,
            };
            ingest(client, &paths, options).await
        }
        Command::Ask {
            question,
            kb,
            top_k,
            threshold,
            mode,
            max_new_tokens,
            json,
            adapter,
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
                adapter: adapter.map(adapter_choice),
                ..Default::default()
            };
            ask(client, request, json).await
        }
        Command::Kb { action } => kb(client, action).await,
        Command::Docs { action } => docs(client, action).await,
    }
}

/// Bytes sent per Ingest call: files are read one at a time and small ones share a call,
/// so the CLI holds at most this much (plus one file) in memory.
const INGEST_CALL_BYTES: u64 = 8 << 20;
/// Files per Ingest call.
const INGEST_CALL_FILES: usize = 64;

/// What `zhiku ingest` adds up over its calls.
#[derive(Default)]
struct IngestTally {
    failures: Vec<String>,
    stored: u64,
    ingested: u32,
}

async fn ingest(client: Client, paths: &[PathBuf], options: IngestOptions) -> ExitCode {
    ingest_to(client, paths, options, &mut std::io::stdout()).await
}

/// `zhiku ingest` with its summary on stderr (for commands whose stdout is their result).
pub async fn ingest_quietly(client: Client, paths: &[PathBuf], options: IngestOptions) -> ExitCode {
    ingest_to(client, paths, options, &mut std::io::stderr()).await
}

async fn ingest_to(
    mut client: Client,
    paths: &[PathBuf],
    options: IngestOptions,
    out: &mut (dyn Write + Send),
) -> ExitCode {
    let walked = {
        let paths = paths.to_vec();
        tokio::task::spawn_blocking(move || Walker::new().walk(&paths)).await
    };
    let walk = match walked {
        Ok(Ok(walk)) => walk,
        // Two files with one id: nothing is sent.
        Ok(Err(e)) => {
            eprintln!("zhiku: {e}");
            return ExitCode::FAILURE;
        }
        Err(e) => {
            eprintln!("zhiku: walking {paths:?} failed: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut tally = IngestTally::default();
    let mut skipped = 0;
    for skip in &walk.skipped {
        if skip.is_failure() {
            tally.failures.push(skip.to_string());
        } else {
            skipped += 1;
            eprintln!("zhiku: skipped {skip}");
        }
    }
    if walk.files.is_empty() && tally.failures.is_empty() {
        eprintln!("zhiku: no files under {paths:?}");
        return ExitCode::FAILURE;
    }
    let bar = ProgressBar::new(walk.files.len() as u64);
    bar.set_style(
        ProgressStyle::with_template("{spinner} [{bar:30}] {pos}/{len} files · {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    // One file read at a time; a file that cannot be read or is too large fails alone.
    let mut batch: Vec<DocumentInput> = Vec::new();
    let mut batch_bytes = 0;
    for file in walk.files {
        if file.size > options.max_file_bytes {
            tally.failures.push(format!(
                "{}: too large ({} bytes; the limit is {}, --max-file-bytes)",
                file.id, file.size, options.max_file_bytes
            ));
            bar.inc(1);
            continue;
        }
        if !batch.is_empty()
            && (batch_bytes + file.size > INGEST_CALL_BYTES || batch.len() >= INGEST_CALL_FILES)
        {
            let documents = std::mem::take(&mut batch);
            batch_bytes = 0;
            if let Err(status) =
                send_ingest(&mut client, &options, documents, &bar, &mut tally).await
            {
                bar.abandon();
                return fail("ingest", status);
            }
        }
        let max = options.max_file_bytes;
        let read = tokio::task::spawn_blocking(move || {
            let bytes = file.read(max);
            (file, bytes)
        })
        .await;
        match read {
            Ok((file, Ok(content))) => {
                batch_bytes += content.len() as u64;
                batch.push(DocumentInput {
                    readers: Vec::new(),
                    file_name: file.id.clone(),
                    content,
                    document_id: file.id,
                    metadata: Default::default(),
                });
            }
            Ok((_, Err(e))) => {
                tally.failures.push(e.to_string());
                bar.inc(1);
            }
            Err(e) => {
                tally.failures.push(format!("reading failed: {e}"));
                bar.inc(1);
            }
        }
    }
    if !batch.is_empty()
        && let Err(status) = send_ingest(&mut client, &options, batch, &bar, &mut tally).await
    {
        bar.abandon();
        return fail("ingest", status);
    }
    bar.finish_and_clear();
    let kb = &options.kb;
    let _ = writeln!(
        out,
        "ingested {} file(s), {} passage(s) into `{kb}`; {} failed, {skipped} skipped",
        tally.ingested,
        tally.stored,
        tally.failures.len()
    );
    for failure in &tally.failures {
        let _ = writeln!(out, "  ✗ {failure}");
    }
    if tally.failures.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// The settings of `zhiku ingest`.
pub struct IngestOptions {
    pub kb: String,
    pub chunk_size: u32,
    pub overlap: u32,
    pub max_file_bytes: u64,
    /// Sent with each call; unset leaves it to the server's --ocr.
    pub ocr: Option<OcrSetting>,
    /// Reader groups of every file (empty: everyone).
    pub readers: Vec<String>,
}

/// One Ingest call; its progress goes to the bar and its summary into `tally`.
async fn send_ingest(
    client: &mut Client,
    options: &IngestOptions,
    documents: Vec<DocumentInput>,
    bar: &ProgressBar,
    tally: &mut IngestTally,
) -> Result<(), tonic::Status> {
    let request = IngestRequest {
        readers: options.readers.clone(),
        knowledge_base: options.kb.clone(),
        documents,
        paths: Vec::new(),
        split: Some(SplitOptions {
            chunk_size: options.chunk_size,
            overlap: Some(options.overlap),
        }),
        create_if_missing: true,
        ocr: match options.ocr {
            None => OcrMode::Unspecified,
            Some(OcrSetting::Auto) => OcrMode::Auto,
            Some(OcrSetting::Images) => OcrMode::Images,
            Some(OcrSetting::Always) => OcrMode::Always,
            Some(OcrSetting::Off) => OcrMode::Off,
        } as i32,
    };
    let mut stream = client.ingest(request).await?.into_inner();
    while let Some(event) = stream.next().await {
        match event?.event {
            Some(ingest_event::Event::File(file)) => {
                let stage = IngestStage::try_from(file.stage).unwrap_or(IngestStage::Unspecified);
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
                tally.stored += summary.passages_stored;
                tally.ingested += summary.files_ingested;
                tally.failures.extend(summary.errors);
            }
            None => {}
        }
    }
    Ok(())
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

async fn ask(mut client: Client, request: AskRequest, json_output: bool) -> ExitCode {
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
                        "support": answer.support,
                        "grounded": answer.grounded,
                        "coverage": answer.coverage,
                        "anchors": answer.anchors,
                        "verification": answer.verification.as_ref().map(|v| json!({
                            "checked": v.checked,
                            "withdrawn": v.withdrawn,
                            "unsupported_facts": v.unsupported_facts,
                            "reason": v.reason,
                            "echoed": v.echoed,
                            "refocused": v.refocused,
                            "units_dropped": v.units_dropped,
                            "read_from_table": v.read_from_table,
                        })),
                        "sources": answer.citations.iter().map(|c| json!({
                            "source": c.source,
                            "document_id": c.document_id,
                            "chunk": c.chunk_index,
                            "heading_path": c.heading_path,
                            "page": c.page,
                            "score": c.score,
                            "anchors": c.anchors,
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
                    let verification = answer.verification.clone().unwrap_or_default();
                    let abstained = answer.refused && answer.generated_tokens > 0;
                    if verification.withdrawn {
                        print!(
                            "\n\n[withdrawn] {}: the answer above is withdrawn:\n",
                            verification.reason
                        );
                    } else if abstained {
                        print!(
                            "\n\n[abstained] support {:.2}: the sources hold almost none of \
                             the answer above, so it is withdrawn:\n",
                            answer.support
                        );
                    } else if verification.read_from_table {
                        // The stream held the draft (and a second reading, if one was made).
                        print!(
                            "\n\n[read from the table] {}; the answer:\n{}",
                            verification.reason, answer.text
                        );
                    } else if verification.units_dropped {
                        // The stream held the draft with the unit it invented.
                        print!(
                            "\n\n[unit dropped] no source states the unit given for a figure \
                             above; the answer, as the sources write it:\n{}",
                            answer.text
                        );
                    } else if verification.refocused {
                        // The stream held the draft, then the second reading.
                        print!(
                            "\n\n[read again] the first draft gave a figure from another table \
                             row or document; the answer, from the passages the question \
                             names:\n{}",
                            answer.text
                        );
                    }
                    if answer.refused {
                        print!("{}", answer.text);
                        if !abstained && !answer.citations.is_empty() {
                            print!(
                                "\n[refused] the sources below hold {:.0}% of the question's \
                                 terms (--min-coverage), and one of them at most {:.0}% of \
                                 its names and figures (--min-anchors): the model was not \
                                 asked",
                                answer.coverage * 100.0,
                                answer.anchors * 100.0
                            );
                        }
                    }
                    println!();
                    if !verification.withdrawn && !verification.unsupported_facts.is_empty() {
                        println!(
                            "\n[unverified] {}: check it against the sources",
                            verification.reason
                        );
                    }
                    if !answer.grounded && !abstained {
                        println!(
                            "\n[ungrounded] support {:.2}: the sources hold little of this \
                             answer; check it against them",
                            answer.support
                        );
                    }
                    if !answer.citations.is_empty() {
                        println!("\nsources:");
                        for c in &answer.citations {
                            let preview: String = c.text.chars().take(60).collect();
                            let page = if c.page > 0 {
                                format!(" p.{}", c.page)
                            } else {
                                String::new()
                            };
                            println!(
                                "  [{}] {}{page} #{} (score {:.3}) {}",
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

async fn kb(mut client: Client, action: KbAction) -> ExitCode {
    match action {
        KbAction::List => match client
            .list_knowledge_bases(ListKnowledgeBasesRequest::default())
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
        } => {
            let (adapter, adapter_path) = adapter_or_directory(adapter);
            match client
                .create_knowledge_base(CreateKnowledgeBaseRequest {
                    name,
                    dimensions: 0,
                    distance: 0,
                    description,
                    adapter,
                    adapter_path,
                })
                .await
            {
                Ok(r) => {
                    let kb = r.into_inner();
                    match kb.adapter.as_str() {
                        "" => println!("created `{}` ({} dimensions)", kb.name, kb.dimensions),
                        a => println!(
                            "created `{}` ({} dimensions), answering with adapter `{a}`",
                            kb.name, kb.dimensions
                        ),
                    }
                    ExitCode::SUCCESS
                }
                Err(status) => fail("kb create", status),
            }
        }
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
        KbAction::Describe { name, json } => {
            match client
                .describe_knowledge_base(DescribeKnowledgeBaseRequest {
                    name,
                    metadata_only: false,
                    ..Default::default()
                })
                .await
            {
                Ok(r) => {
                    let kb = r.into_inner();
                    if json {
                        println!("{}", kb_json(&kb));
                    } else {
                        print!("{}", describe_kb(&kb));
                    }
                    ExitCode::SUCCESS
                }
                Err(status) => fail("kb describe", status),
            }
        }
        KbAction::BindAdapter {
            name,
            adapter,
            adapter_name,
            data_file,
        } => {
            let (named, adapter_path) = adapter_or_directory(adapter);
            let adapter = if adapter_name.is_empty() {
                named
            } else {
                adapter_name
            };
            let provenance = (!data_file.is_empty()).then(|| AdapterProvenance {
                data_file,
                ..Default::default()
            });
            match client
                .bind_adapter(BindAdapterRequest {
                    knowledge_base: name,
                    adapter,
                    adapter_path,
                    provenance,
                })
                .await
            {
                Ok(r) => {
                    let kb = r.into_inner();
                    println!("`{}` now answers with adapter `{}`", kb.name, kb.adapter);
                    ExitCode::SUCCESS
                }
                Err(status) => fail("kb bind-adapter", status),
            }
        }
        KbAction::UnbindAdapter { name, unload } => {
            match client
                .unbind_adapter(UnbindAdapterRequest {
                    knowledge_base: name,
                    unload,
                })
                .await
            {
                Ok(r) => {
                    println!("`{}` now answers with the base model", r.into_inner().name);
                    ExitCode::SUCCESS
                }
                Err(status) => fail("kb unbind-adapter", status),
            }
        }
    }
}

/// `--adapter` of ask and eval: `none` (or "") is the base model, anything else an
/// adapter's name.
pub fn adapter_choice(adapter: String) -> String {
    if adapter == "none" {
        String::new()
    } else {
        adapter
    }
}

fn figures_json(f: &AdapterEvalFigures) -> serde_json::Value {
    json!({
        "answerable": f.answerable,
        "unanswerable": f.unanswerable,
        "correct": f.correct,
        "false_refusals": f.false_refusals,
        "abstained": f.abstained,
    })
}

fn kb_json(kb: &KnowledgeBase) -> serde_json::Value {
    json!({
        "name": kb.name,
        "description": kb.description,
        "dimensions": kb.dimensions,
        "passage_count": kb.passage_count,
        "document_count": kb.document_count,
        "created_at_ms": kb.created_at_ms,
        "adapter": kb.adapter,
        "adapter_path": kb.adapter_path,
        "adapter_provenance": kb.adapter_provenance.as_ref().map(|p| json!({
            "data_file": p.data_file,
            "base_model": p.base_model,
            "base_sha256": p.base_sha256,
            "bound_at_ms": p.bound_at_ms,
            "eval_file": p.eval_file,
            "with_adapter": p.with_adapter.as_ref().map(figures_json),
            "without_adapter": p.without_adapter.as_ref().map(figures_json),
            "forced": p.forced,
        })),
    })
}

fn figures_line(f: &AdapterEvalFigures) -> String {
    format!(
        "right {}/{}  false refusals {}/{}  unanswerable refused {}/{}",
        f.correct, f.answerable, f.false_refusals, f.answerable, f.abstained, f.unanswerable
    )
}

/// What `zhiku kb describe` prints.
fn describe_kb(kb: &KnowledgeBase) -> String {
    let mut out = format!(
        "{}\n  {} documents, {} passages, {} dimensions\n",
        kb.name, kb.document_count, kb.passage_count, kb.dimensions
    );
    if !kb.description.is_empty() {
        out += &format!("  description: {}\n", kb.description);
    }
    if kb.adapter.is_empty() {
        out += "  adapter: none (the base model answers)\n";
        return out;
    }
    out += &format!("  adapter: {}\n", kb.adapter);
    if !kb.adapter_path.is_empty() {
        out += &format!("  adapter path: {}\n", kb.adapter_path);
    }
    if let Some(p) = &kb.adapter_provenance {
        let known = |s: &str| {
            if s.is_empty() {
                "unknown".to_owned()
            } else {
                s.to_owned()
            }
        };
        out += &format!("  trained from: {}\n", known(&p.data_file));
        out += &format!("  base model: {}\n", known(&p.base_model));
        if !p.base_sha256.is_empty() {
            out += &format!("  base sha256: {}\n", p.base_sha256);
        }
        if let Some(f) = &p.with_adapter {
            out += &format!(
                "  eval {}: with the adapter    {}\n",
                known(&p.eval_file),
                figures_line(f)
            );
        }
        if let Some(f) = &p.without_adapter {
            out += &format!(
                "  eval {}: without (the base)  {}\n",
                known(&p.eval_file),
                figures_line(f)
            );
        }
        if p.forced {
            out += "  bound with --force (the gate found it worse)\n";
        }
    }
    out
}

async fn docs(mut client: Client, action: DocsAction) -> ExitCode {
    match action {
        DocsAction::List { kb } => {
            let mut token = String::new();
            loop {
                let page = match client
                    .list_documents(ListDocumentsRequest {
                        readable_by: None,
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
                    let readers = if doc.readers.is_empty() {
                        String::new()
                    } else {
                        format!("  readers: {}", doc.readers.join(","))
                    };
                    println!(
                        "{:<40} {:>6} passages  {}{readers}",
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
        DocsAction::SetReaders {
            kb,
            document_id,
            readers,
        } => match client
            .set_document_readers(SetDocumentReadersRequest {
                knowledge_base: kb,
                document_id: document_id.clone(),
                readers: readers.into_iter().filter(|r| !r.is_empty()).collect(),
            })
            .await
        {
            Ok(r) => match r.into_inner().updated_passages {
                0 => {
                    eprintln!("zhiku docs set-readers: no document `{document_id}`");
                    ExitCode::FAILURE
                }
                n => {
                    println!("readers of `{document_id}` set ({n} passages)");
                    ExitCode::SUCCESS
                }
            },
            Err(status) => fail("docs set-readers", status),
        },
    }
}

/// `--adapter`: an existing directory is an adapter to load (sent absolute, under the
/// knowledge base's name); anything else names an adapter the generator holds.
fn adapter_or_directory(adapter: String) -> (String, String) {
    let path = std::path::Path::new(&adapter);
    if adapter.is_empty() || !path.is_dir() {
        return (adapter, String::new());
    }
    let absolute = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    (String::new(), absolute.to_string_lossy().into_owned())
}
