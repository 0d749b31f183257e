//! `zhiku`: the command line of the zhiku knowledge base.
//!
//! ```text
//! zhiku serve                              all four services in one process
//! zhiku ingest docs/ --kb handbook         put documents in (progress bar)
//! zhiku ask "小拾喜欢做什么？" --kb handbook  answer, streamed, then the sources
//! zhiku eval cases.jsonl --kb handbook   retrieval recall, answer accuracy, refusals, latency
//! zhiku tune --data train.jsonl --out lora/ --kb handbook --eval cases.jsonl   train, gate, bind
//! zhiku kb list | create NAME | delete NAME | describe NAME | bind-adapter NAME DIR
//! zhiku docs list --kb NAME | delete --kb NAME DOC_ID
//! ```
//! Commands talk to a running orchestrator (`--addr`, `ZHIKU_ADDR`); without one they run
//! the whole pipeline in this process, on the embedded store and the local models.

mod commands;
mod eval;
mod stack;
mod tune;
mod tune_examples;
mod tune_gate;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand};
use zhiku_orchestrator::AskPolicy;
use zhiku_runtime::ServerArgs;

use stack::{Ports, Stack, StackArgs};

/// zhiku 知库: a knowledge base that answers questions from your documents.
#[derive(Debug, Parser)]
#[command(name = "zhiku", version, propagate_version = true)]
struct Cli {
    /// A running orchestrator (e.g. http://127.0.0.1:50051). Unset: run the pipeline in
    /// this process.
    #[arg(long, env = "ZHIKU_ADDR", global = true)]
    addr: Option<String>,

    #[command(flatten)]
    access: commands::ClientArgs,

    #[command(flatten)]
    stack: StackArgs,

    /// The Ask policy of the in-process orchestrator (`zhiku serve` has its own, the same
    /// flags): global where no subcommand has a flag of the same name ([`command`]).
    #[command(flatten)]
    ask: AskPolicy,

    /// Log filter of the in-process services (`tracing` EnvFilter syntax, e.g. `warn`).
    /// Unset: errors only, so that a command prints its own output, not the services'
    /// operator warnings.
    #[arg(long, env = "ZHIKU_LOG", global = true)]
    log: Option<String>,

    #[command(subcommand)]
    command: Command,
}

/// What the in-process services log unless --log says otherwise.
const IN_PROCESS_LOG: &str = "error";

/// The command line: [`Cli`], with the Ask policy's flags made global (usable after any
/// subcommand, as `zhiku ask --min-coverage 0.5 …`) where no subcommand has a flag of the
/// same name of its own (`zhiku ask --max-new-tokens` is the request's, not the policy's).
fn command() -> clap::Command {
    fn own_flags(command: &clap::Command, taken: &mut std::collections::HashSet<String>) {
        for arg in command.get_arguments() {
            taken.insert(arg.get_id().to_string());
            if let Some(long) = arg.get_long() {
                taken.insert(long.to_owned());
            }
        }
        for sub in command.get_subcommands() {
            own_flags(sub, taken);
        }
    }
    let cli = Cli::command();
    let mut taken = std::collections::HashSet::new();
    for sub in cli.get_subcommands().filter(|s| s.get_name() != "serve") {
        own_flags(sub, &mut taken);
    }
    let policy: Vec<(String, Option<String>)> = AskPolicy::augment_args(clap::Command::new("ask"))
        .get_arguments()
        .map(|a| (a.get_id().to_string(), a.get_long().map(str::to_owned)))
        .collect();
    cli.mut_args(|arg| {
        let global = policy.iter().any(|(id, long)| {
            id == arg.get_id().as_str()
                && !taken.contains(id)
                && long.as_ref().is_none_or(|l| !taken.contains(l))
        });
        if global { arg.global(true) } else { arg }
    })
}

fn parse() -> Cli {
    Cli::from_arg_matches(&command().get_matches()).unwrap_or_else(|e| e.exit())
}

// Parsed once per run: the size of `Serve`'s flags costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
enum Command {
    /// Run the embedder, retriever (embedded store), generator and orchestrator in one
    /// process, each on its own port, with the same gRPC API as the separate services.
    Serve {
        /// Orchestrator address.
        #[arg(
            long,
            env = "ZHIKU_ORCHESTRATOR_LISTEN",
            default_value = "0.0.0.0:50051"
        )]
        orchestrator_listen: SocketAddr,
        /// Embedder address.
        #[arg(long, env = "ZHIKU_EMBEDDER_LISTEN", default_value = "127.0.0.1:50052")]
        embedder_listen: SocketAddr,
        /// Retriever address.
        #[arg(
            long,
            env = "ZHIKU_RETRIEVER_LISTEN",
            default_value = "127.0.0.1:50053"
        )]
        retriever_listen: SocketAddr,
        /// Generator address.
        #[arg(
            long,
            env = "ZHIKU_GENERATOR_LISTEN",
            default_value = "127.0.0.1:50054"
        )]
        generator_listen: SocketAddr,
        /// The orchestrator's HTTP address: the OpenAI-compatible API, REST and the web page
        /// (the same port as the orchestrator binary's default). `off` turns it off.
        #[arg(long, env = "ZHIKU_HTTP_LISTEN", default_value = "0.0.0.0:8080")]
        http_listen: zhiku_orchestrator::HttpListen,
        /// The orchestrator's Ask policy: every Ask flag of `zhiku-orchestrator`.
        #[command(flatten)]
        ask: AskPolicy,
        #[command(flatten)]
        server: ServerArgs,
        #[command(flatten)]
        audit: zhiku_runtime::AuditArgs,
    },
    /// Put files or directories (walked recursively) into a knowledge base.
    Ingest {
        /// Files or directories (.txt .md .html .pdf .ofd .docx .csv, and with OCR .png .jpg .bmp
        /// .tif .webp).
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        /// The knowledge base (created when missing).
        #[arg(long, env = "ZHIKU_KB")]
        kb: String,
        /// Passage length in characters.
        #[arg(long, default_value_t = 250)]
        chunk_size: u32,
        /// Characters neighbouring passages share.
        #[arg(long, default_value_t = 50)]
        overlap: u32,
        /// Largest file sent, in bytes; a larger one fails alone and the rest goes on. It
        /// must fit one gRPC message (the server's --max-message-bytes).
        #[arg(
            long,
            env = "ZHIKU_INGEST_MAX_FILE_BYTES",
            default_value_t = zhiku_orchestrator::DEFAULT_MAX_FILE_BYTES
        )]
        max_file_bytes: u64,
        /// Reader groups of every file, comma-separated: only keys holding one of these
        /// groups read them (see --api-key-file). Unset: everyone with access to the
        /// knowledge base.
        #[arg(long, env = "ZHIKU_READERS", value_delimiter = ',')]
        readers: Vec<String>,
    },
    /// Ask a question; the answer streams, then its sources.
    Ask {
        /// The question.
        question: String,
        /// The knowledge base.
        #[arg(long, env = "ZHIKU_KB")]
        kb: String,
        /// Passages to retrieve.
        #[arg(long, default_value_t = 5)]
        top_k: u32,
        /// Drop passages whose cosine similarity to the question is below this; with none
        /// left the answer is "根据已知信息无法回答该问题". Unset: the orchestrator's default,
        /// calibrated per embedder; negative: drop none.
        #[arg(long, allow_negative_numbers = true)]
        threshold: Option<f32>,
        /// Retrieval: dense, sparse or hybrid.
        #[arg(long, value_enum, default_value_t = commands::Mode::Hybrid)]
        mode: commands::Mode,
        /// Longest answer in tokens.
        #[arg(long, default_value_t = 512)]
        max_new_tokens: u32,
        /// Print one JSON object {answer, refused, sources: [{source, score, text}], timings}.
        #[arg(long)]
        json: bool,
        /// The LoRA adapter that answers, by the name the generator serves it under; `none`:
        /// the base model. Unset: the knowledge base's own adapter.
        #[arg(long)]
        adapter: Option<String>,
    },
    /// Score a knowledge base on questions with known answers (JSONL): retrieval recall@1/3/k
    /// and MRR, answers holding their gold, false refusals, abstention on unanswerable
    /// questions, per-stage latency and tokens; `--sweep` runs a grid and names the best.
    Eval(eval::EvalArgs),
    /// Train a LoRA adapter on the chat model (--chat-model, as `serve` picks it) from an
    /// alpaca or sharegpt dataset, and write it in PEFT's layout for `--lora NAME=DIR`.
    Tune(tune::TuneArgs),
    /// Manage knowledge bases.
    Kb {
        #[command(subcommand)]
        action: commands::KbAction,
    },
    /// Manage the documents of a knowledge base.
    Docs {
        #[command(subcommand)]
        action: commands::DocsAction,
    },
    /// API keys for --api-key-file (no server needed).
    Keys {
        #[command(subcommand)]
        action: commands::KeysAction,
    },
}

/// The in-process services' settings: the defaults, logging as `log` says (else
/// [`IN_PROCESS_LOG`]).
/// `zhiku tune --kb NAME` without `--data`: makes (or resumes) the examples file from the
/// knowledge base and returns its path; exit status 2 for bad flags, 1 when nothing came out.
async fn examples_from_kb(cli: &Cli, args: &tune::TuneArgs) -> Result<PathBuf, ExitCode> {
    let Some(kb) = &args.gate.kb else {
        eprintln!(
            "zhiku tune: no training data: give --data FILE (alpaca or sharegpt records), or \
             --kb NAME to make examples from that knowledge base"
        );
        return Err(ExitCode::from(2));
    };
    let path = args.from_kb.path(&args.out);
    let server = in_process_server_args(cli.log.as_deref());
    let json = args.json;
    let progress = |line: &str| {
        if json {
            println!(
                "{}",
                serde_json::json!({"event": "examples", "message": line})
            );
        } else {
            eprintln!("{line}");
        }
    };
    progress(&format!(
        "making training examples from knowledge base {kb} into {}",
        path.display()
    ));
    let made = tune_examples::make_examples_file(
        &cli.stack,
        &cli.ask,
        &server,
        kb,
        &args.from_kb,
        args.seed,
        &path,
        progress,
    )
    .await;
    match made {
        Ok(summary) if summary.answers + summary.refusals > 0 => {
            progress(&format!(
                "{} examples ({} answers, {} refusals) from {} passages tried: {}",
                summary.answers + summary.refusals,
                summary.answers,
                summary.refusals,
                summary.tried,
                path.display()
            ));
            if args.from_kb.self_distill {
                let distilled = tune_examples::distill_examples_file(
                    &cli.stack,
                    &cli.ask,
                    &server,
                    &path,
                    args.gate.eval_max_new_tokens,
                    progress,
                )
                .await;
                match distilled {
                    Ok(d) => progress(&format!(
                        "answer targets: {} the model's own, {} rewritten from the teacher's, {} the teacher's",
                        d.own, d.rewritten, d.teacher
                    )),
                    Err(e) => {
                        eprintln!("zhiku tune: {e}");
                        return Err(ExitCode::FAILURE);
                    }
                }
            }
            if args.from_kb.evidence_first {
                match tune_examples::add_evidence_to_file(&path) {
                    Ok((quoted, unquoted)) => progress(&format!(
                        "evidence first: {quoted} answer targets now quote their line; {unquoted} had no line that holds their fact and stay as they were"
                    )),
                    Err(e) => {
                        eprintln!("zhiku tune: {e}");
                        return Err(ExitCode::FAILURE);
                    }
                }
            }
            Ok(path)
        }
        Ok(summary) => {
            eprintln!(
                "zhiku tune: no example survived the checks ({} passages tried in {kb}); a \
                 stronger --teacher-model writes better questions",
                summary.tried
            );
            Err(ExitCode::FAILURE)
        }
        Err(e) => {
            eprintln!("zhiku tune: {e}");
            Err(ExitCode::FAILURE)
        }
    }
}

/// `path` with `suffix` appended to its last component (`out/kb` → `out/kb.gate.json`): the
/// files `zhiku tune` keeps beside an adapter or an examples file.
fn with_suffix(path: &std::path::Path, suffix: &str) -> std::path::PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    name.into()
}

fn in_process_server_args(log: Option<&str>) -> ServerArgs {
    ServerArgs {
        log: log.unwrap_or(IN_PROCESS_LOG).to_owned(),
        ..ServerArgs::default()
    }
}

/// The allocator of every zhiku binary (why: zhiku-embedder's main.rs).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    // SAFETY: the first statement of main; no other thread exists yet.
    unsafe { zhiku_models::pin_cpu_threads() };
    run()
}

#[tokio::main]
async fn run() -> ExitCode {
    let cli = parse();
    if let Command::Keys { action } = &cli.command {
        return commands::keys(action);
    }
    if let Command::Serve {
        orchestrator_listen,
        embedder_listen,
        retriever_listen,
        generator_listen,
        http_listen,
        ask,
        server,
        audit,
    } = &cli.command
    {
        // Held until `serve` returns: the audit file's last lines are written then.
        let _audit = match zhiku_runtime::telemetry::init_with_audit(
            server.log_format,
            &server.log,
            audit,
        ) {
            Ok(guard) => guard,
            Err(e) => {
                eprintln!("zhiku: {e}");
                return ExitCode::from(2);
            }
        };
        zhiku_runtime::EffectiveConfig::of_command(command()).log_start("zhiku serve");
        if let Err(e) = zhiku_runtime::server::start_metrics(server).await {
            eprintln!("zhiku serve: {e}");
            return ExitCode::FAILURE;
        }
        let ports = Ports {
            orchestrator: *orchestrator_listen,
            embedder: *embedder_listen,
            retriever: *retriever_listen,
            generator: *generator_listen,
            http: http_listen.0,
        };
        let stack = match Stack::start(&cli.stack, ask, ports, server).await {
            Ok(s) => s,
            Err(e) => {
                eprintln!("zhiku serve: {e}");
                return ExitCode::FAILURE;
            }
        };
        let p = stack.ports;
        tracing::info!(
            orchestrator = %p.orchestrator,
            embedder = %p.embedder,
            retriever = %p.retriever,
            generator = %p.generator,
            http = %p.http.map_or_else(|| "off".to_owned(), |a| format!("http://{a}/")),
            "zhiku serve: all services listening"
        );
        return match stack
            .run_until(zhiku_runtime::server::shutdown_signal())
            .await
        {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("zhiku serve: {e}");
                ExitCode::FAILURE
            }
        };
    }

    // Training runs here, on blocking threads, without the services; the gate (--kb) then
    // starts them to evaluate and bind the adapter.
    if let Command::Tune(args) = &cli.command {
        let cases = match tune_gate::check(&args.gate) {
            Ok(cases) => cases,
            Err(e) => {
                eprintln!("zhiku tune: {e}");
                return ExitCode::from(2);
            }
        };
        let mut args = args.clone();
        if args.data.is_some() && (args.from_kb.self_distill || args.from_kb.evidence_first) {
            let flag = if args.from_kb.self_distill {
                "--self-distill"
            } else {
                "--evidence-first"
            };
            eprintln!(
                "zhiku tune: {flag} works on the examples file that --kb makes (or resumes); \
                 for a file zhiku made, pass it as --examples FILE with --kb NAME instead of \
                 --data"
            );
            return ExitCode::from(2);
        }
        if args.data.is_none() {
            match examples_from_kb(&cli, &args).await {
                Ok(path) => args.data = Some(path),
                Err(code) => return code,
            }
        }
        let (stack, tune_args) = (cli.stack.clone(), args.clone());
        let trained = tokio::task::spawn_blocking(move || tune::run(&stack, &tune_args))
            .await
            .unwrap_or_else(|e| {
                eprintln!("zhiku tune: {e}");
                ExitCode::FAILURE
            });
        if trained != ExitCode::SUCCESS || !args.gate.requested() {
            return trained;
        }
        let data = args.data.clone().unwrap_or_default();
        let written = tune_gate::Trained {
            data: &data,
            out: &args.out,
            json: args.json,
            gate: &args.gate,
        };
        return tune_gate::run(&cli.stack, &cli.ask, cli.log.as_deref(), written, cases).await;
    }

    // Other commands: a running orchestrator, or the pipeline in this process.
    let (addr, stack) = match &cli.addr {
        Some(addr) => (addr.clone(), None),
        None => {
            let server = in_process_server_args(cli.log.as_deref());
            if let Err(e) = zhiku_runtime::telemetry::init(server.log_format, &server.log) {
                eprintln!("zhiku: {e}");
                return ExitCode::from(2);
            }
            let mut stack =
                match Stack::start(&cli.stack, &cli.ask, Ports::ephemeral(), &server).await {
                    Ok(s) => s,
                    Err(e) => {
                        eprintln!("zhiku: cannot start the in-process pipeline: {e}");
                        return ExitCode::FAILURE;
                    }
                };
            if let Err(e) =
                commands::with_spinner("loading models", stack.ready(Duration::from_secs(600)))
                    .await
            {
                eprintln!("zhiku: {e}");
                stack.shutdown().await;
                return ExitCode::FAILURE;
            }
            (format!("http://{}", stack.ports.orchestrator), Some(stack))
        }
    };
    let code = match commands::connect(&addr, &cli.access) {
        Ok(client) => match cli.command {
            Command::Eval(args) => eval::run(client, args).await,
            command => commands::run(client, command, cli.stack.ocr).await,
        },
        Err(code) => code,
    };
    if let Some(stack) = stack {
        stack.shutdown().await;
    }
    code
}

#[cfg(test)]
mod tests {
    use super::*;
    use zhiku_orchestrator::{Abstention, OrchestratorCli, PassageOrder, Rerank};

    /// Every Ask setting away from its default.
    const POLICY_FLAGS: &[&str] = &[
        "--prompt-template",
        "template.txt",
        "--max-history-turns",
        "3",
        "--max-question-chars",
        "100",
        "--max-history-bytes",
        "999",
        "--max-new-tokens",
        "77",
        "--context-tokens",
        "300",
        "--score-threshold",
        "-1",
        "--rewrite-follow-ups",
        "false",
        "--rerank",
        "on",
        "--rerank-candidates",
        "30",
        "--passage-order",
        "best-last",
        "--abstain-below",
        "0.2",
        "--abstention",
        "model",
        "--min-coverage",
        "0.6",
    ];

    fn zhiku(args: &[&str]) -> Cli {
        let argv = std::iter::once("zhiku").chain(args.iter().copied());
        let matches = command().try_get_matches_from(argv).unwrap();
        Cli::from_arg_matches(&matches).unwrap()
    }

    fn orchestrator_policy(args: &[&str]) -> AskPolicy {
        let argv = std::iter::once("zhiku-orchestrator").chain(args.iter().copied());
        OrchestratorCli::try_parse_from(argv)
            .unwrap()
            .orchestrator
            .ask
    }

    fn serve_policy(cli: Cli) -> AskPolicy {
        match cli.command {
            Command::Serve { ask, .. } => ask,
            other => panic!("not serve: {other:?}"),
        }
    }

    #[test]
    fn the_command_line_is_well_formed() {
        command().debug_assert();
    }

    #[test]
    fn zhiku_serve_and_the_orchestrator_parse_the_same_ask_policy() {
        let orchestrator = orchestrator_policy(POLICY_FLAGS);
        assert_ne!(orchestrator, AskPolicy::default(), "the flags were taken");
        assert_eq!(orchestrator.abstention, Abstention::Model);
        assert_eq!(orchestrator.passage_order, PassageOrder::BestLast);
        assert_eq!(orchestrator.rerank, Rerank::On);
        assert_eq!(orchestrator.score_threshold, Some(-1.0));

        let mut serve = vec!["serve"];
        serve.extend_from_slice(POLICY_FLAGS);
        assert_eq!(serve_policy(zhiku(&serve)), orchestrator);
        // With no flag, the same defaults.
        assert_eq!(serve_policy(zhiku(&["serve"])), orchestrator_policy(&[]));
    }

    #[test]
    fn every_ask_flag_of_the_orchestrator_is_a_flag_of_zhiku_serve() {
        let policy: Vec<String> = AskPolicy::augment_args(clap::Command::new("policy"))
            .get_arguments()
            .map(|a| a.get_id().to_string())
            .collect();
        let mut orchestrator = OrchestratorCli::command();
        orchestrator.build();
        let mut cli = command();
        cli.build();
        let serve = cli.find_subcommand("serve").unwrap();
        let mut checked = 0;
        for arg in orchestrator.get_arguments() {
            let env = arg.get_env().map(|e| e.to_string_lossy().into_owned());
            let is_ask = policy.contains(&arg.get_id().to_string())
                || env.as_deref().is_some_and(|e| e.starts_with("ZHIKU_ASK_"));
            if !is_ask {
                continue;
            }
            let long = arg.get_long().unwrap();
            let on_serve = serve
                .get_arguments()
                .find(|a| a.get_long() == Some(long))
                .unwrap_or_else(|| panic!("zhiku serve has no --{long}"));
            assert_eq!(
                on_serve.get_env().map(|e| e.to_string_lossy().into_owned()),
                env,
                "--{long}"
            );
            checked += 1;
        }
        assert_eq!(checked, policy.len(), "every Ask flag is in the policy");
        assert!(checked >= 14, "{checked}");
    }

    #[test]
    fn the_in_process_commands_take_the_policy_before_or_after_the_subcommand() {
        let after = zhiku(&[
            "ask",
            "q",
            "--kb",
            "k",
            "--min-coverage",
            "0.6",
            "--abstention",
            "model",
            "--max-new-tokens",
            "64",
        ]);
        assert_eq!(after.ask.min_coverage, 0.6);
        assert_eq!(after.ask.abstention, Abstention::Model);
        // `zhiku ask --max-new-tokens` is the request's own, as before.
        match &after.command {
            Command::Ask { max_new_tokens, .. } => assert_eq!(*max_new_tokens, 64),
            other => panic!("{other:?}"),
        }
        let before = zhiku(&["--rerank", "off", "--min-coverage", "0.1", "kb", "list"]);
        assert_eq!(before.ask.rerank, Rerank::Off);
        assert_eq!(before.ask.min_coverage, 0.1);
        let eval = zhiku(&["eval", "cases.jsonl", "--kb", "k", "--rerank", "on"]);
        match eval.command {
            Command::Eval(args) => assert_eq!(args.rerank, Some(true)),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_largest_file_has_one_default() {
        match zhiku(&["ingest", "docs", "--kb", "k"]).command {
            Command::Ingest { max_file_bytes, .. } => {
                assert_eq!(max_file_bytes, zhiku_orchestrator::DEFAULT_MAX_FILE_BYTES);
            }
            other => panic!("{other:?}"),
        }
        let orchestrator = OrchestratorCli::try_parse_from(["zhiku-orchestrator"]).unwrap();
        assert_eq!(
            orchestrator.orchestrator.max_file_bytes,
            zhiku_orchestrator::DEFAULT_MAX_FILE_BYTES
        );
    }
}
