//! The evaluation gate at the end of `zhiku tune --kb NAME --eval FILE`: the new adapter is
//! loaded into the in-process generator beside the base model, the eval runs twice through
//! the orchestrator's Evaluate (the adapter field: the new adapter, then none), both rows are
//! printed side by side, and the adapter is bound to the knowledge base (BindAdapter, with
//! its provenance and both rows) only when it is not worse on right answers, false refusals
//! and refused unanswerables, or with `--force`. Both runs' answers, question by question,
//! are written beside the adapter ([`report_path`]) so that what changed can be read.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use futures::StreamExt;
use zhiku_orchestrator::AskPolicy;
use zhiku_proto::v1::generator_client::GeneratorClient;
use zhiku_proto::v1::{
    AdapterEvalFigures, AdapterProvenance, BindAdapterRequest, EvalCase, EvalCaseResult,
    EvalReport, EvaluateRequest, LoadAdapterRequest, SamplingParams, evaluate_event,
};

use crate::stack::{Ports, Stack, StackArgs};

/// The name the new adapter is evaluated under, before it is bound under its own.
const CANDIDATE: &str = "zhiku-tune-candidate";

#[derive(Debug, Clone, clap::Args)]
pub struct GateArgs {
    /// The knowledge base the adapter is for: with --eval, the adapter is evaluated on it and
    /// bound to it when it is not worse than the base model (see --force).
    #[arg(long, env = "ZHIKU_TUNE_KB")]
    pub kb: Option<String>,
    /// Held-out questions with known answers (`zhiku eval`'s JSONL), asked on --kb with the
    /// new adapter and without it.
    #[arg(long, env = "ZHIKU_TUNE_EVAL")]
    pub eval: Option<PathBuf>,
    /// Bind the adapter even when the eval finds it worse (or, without --eval, unevaluated).
    #[arg(long, env = "ZHIKU_TUNE_FORCE")]
    pub force: bool,
    /// The name the generator serves the bound adapter under (default: the knowledge base's).
    #[arg(long, env = "ZHIKU_TUNE_ADAPTER_NAME")]
    pub adapter_name: Option<String>,
    /// Longest answer of the eval, in tokens.
    #[arg(long, env = "ZHIKU_TUNE_EVAL_MAX_NEW_TOKENS", default_value_t = 256)]
    pub eval_max_new_tokens: u32,
}

impl GateArgs {
    /// Whether the command ends with the gate (a knowledge base to bind to).
    pub fn requested(&self) -> bool {
        self.kb.is_some()
    }
}

/// The three figures the gate compares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Row {
    pub answerable: u32,
    pub unanswerable: u32,
    pub correct: u32,
    pub false_refusals: u32,
    pub abstained: u32,
}

impl Row {
    fn of(report: &EvalReport) -> Self {
        Self {
            answerable: report.answerable,
            unanswerable: report.unanswerable,
            correct: report.correct,
            false_refusals: report.false_refusals,
            abstained: report.abstained,
        }
    }

    fn figures(self) -> AdapterEvalFigures {
        AdapterEvalFigures {
            answerable: self.answerable,
            unanswerable: self.unanswerable,
            correct: self.correct,
            false_refusals: self.false_refusals,
            abstained: self.abstained,
        }
    }
}

/// Where `with` is worse than `without`, in words; empty when it is not worse on any.
pub fn worse(with: Row, without: Row) -> Vec<String> {
    let mut why = Vec::new();
    if with.correct < without.correct {
        why.push(format!(
            "fewer right answers ({} < {})",
            with.correct, without.correct
        ));
    }
    if with.false_refusals > without.false_refusals {
        why.push(format!(
            "more false refusals ({} > {})",
            with.false_refusals, without.false_refusals
        ));
    }
    if with.abstained < without.abstained {
        why.push(format!(
            "fewer unanswerable questions refused ({} < {})",
            with.abstained, without.abstained
        ));
    }
    why
}

/// Both rows side by side.
pub fn table(with: Row, without: Row) -> String {
    let row = |name: &str, r: Row| {
        let right = format!("{}/{}", r.correct, r.answerable);
        let false_refusals = format!("{}/{}", r.false_refusals, r.answerable);
        let refused = format!("{}/{}", r.abstained, r.unanswerable);
        format!("{name:<17} {right:<7} {false_refusals:<16} {refused}\n")
    };
    let mut out = format!(
        "{:<17} {:<7} {:<16} {}\n",
        "", "right", "false refusals", "unanswerable refused"
    );
    out += &row("without adapter", without);
    out += &row("with adapter", with);
    out
}

/// Checks the gate's flags and reads the eval file before any training: a mistake there
/// must not cost a training run.
pub fn check(gate: &GateArgs) -> Result<Option<Vec<EvalCase>>, String> {
    match (&gate.kb, &gate.eval) {
        (None, Some(_)) => Err("--eval needs --kb, the knowledge base to evaluate on".into()),
        (None, None) => Ok(None),
        (Some(_), None) if !gate.force => Err(
            "--kb binds the adapter only after --eval FILE finds it not worse; give --eval, \
             or --force to bind it unevaluated"
                .into(),
        ),
        (Some(_), None) => Ok(None),
        (Some(_), Some(file)) => crate::eval::read_cases(file).map(Some),
    }
}

fn absolute(path: &Path) -> PathBuf {
    std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf())
}

/// The base model's SHA-256 as the adapter's config records it ("" when it does not).
fn base_sha256(adapter: &Path) -> String {
    std::fs::read_to_string(adapter.join(zhiku_tuner::peft::CONFIG_FILE))
        .ok()
        .and_then(|text| serde_json::from_str::<serde_json::Value>(&text).ok())
        .and_then(|config| config["zhiku"]["base_sha256"].as_str().map(str::to_owned))
        .unwrap_or_default()
}

/// One Evaluate of `cases` on `kb` with `adapter` ("" = the base model): its report.
async fn evaluate(
    client: &mut crate::commands::Client,
    kb: &str,
    cases: &[EvalCase],
    adapter: &str,
    max_new_tokens: u32,
) -> Result<(EvalReport, Vec<EvalCaseResult>), String> {
    let request = EvaluateRequest {
        knowledge_base: kb.to_owned(),
        cases: cases.to_vec(),
        sampling: Some(SamplingParams {
            max_new_tokens: Some(max_new_tokens),
            ..Default::default()
        }),
        adapter: Some(adapter.to_owned()),
        ..Default::default()
    };
    let mut stream = client
        .evaluate(request)
        .await
        .map_err(|s| s.message().to_owned())?
        .into_inner();
    let mut report = None;
    let mut results = Vec::new();
    while let Some(event) = stream.next().await {
        match event.map_err(|s| s.message().to_owned())?.event {
            Some(evaluate_event::Event::CaseResult(c)) => results.push(c),
            Some(evaluate_event::Event::Report(r)) => report = Some(r),
            Some(evaluate_event::Event::Summary(_)) => break,
            _ => {}
        }
    }
    report
        .map(|r| (r, results))
        .ok_or_else(|| "the evaluation ended without a report".into())
}

/// Where the gate writes both evaluations' reports for an adapter written to `out`:
/// `OUT.gate.json` beside it (the adapter directory holds PEFT's files only).
pub fn report_path(out: &Path) -> PathBuf {
    crate::with_suffix(out, ".gate.json")
}

/// Writes both reports, as `zhiku eval --json` writes one, to `path` (through a temporary
/// file, so that a reader never sees half of one).
fn write_reports(
    path: &Path,
    kb: &str,
    eval: &Path,
    with: &(EvalReport, Vec<EvalCaseResult>),
    without: &(EvalReport, Vec<EvalCaseResult>),
) -> Result<(), String> {
    let json = serde_json::json!({
        "knowledge_base": kb,
        "eval": eval,
        "with_adapter": crate::eval::report_with_cases_json(&with.0, &with.1),
        "without_adapter": crate::eval::report_with_cases_json(&without.0, &without.1),
    });
    let tmp = crate::with_suffix(path, ".tmp");
    std::fs::write(&tmp, format!("{json:#}\n"))
        .and_then(|()| std::fs::rename(&tmp, path))
        .map_err(|e| format!("writing the gate's reports to {}: {e}", path.display()))
}

/// What the training was given and how it reports, as the gate needs them.
pub struct Trained<'a> {
    /// Its training data (`--data`).
    pub data: &'a Path,
    /// The adapter it wrote (`--out`).
    pub out: &'a Path,
    /// One JSON object per line (`--json`).
    pub json: bool,
    pub gate: &'a GateArgs,
}

/// Runs the gate after a training that wrote its adapter to `args.out`, on the services
/// of this process.
pub async fn run(
    stack_args: &StackArgs,
    ask: &AskPolicy,
    log: Option<&str>,
    args: Trained<'_>,
    cases: Option<Vec<EvalCase>>,
) -> ExitCode {
    let server = crate::in_process_server_args(log);
    let mut stack = match Stack::start(stack_args, ask, Ports::ephemeral(), &server).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("zhiku tune: cannot start the in-process services for the gate: {e}");
            return ExitCode::FAILURE;
        }
    };
    let code = match stack.ready(Duration::from_secs(600)).await {
        Ok(()) => gate(&stack, stack_args, &args, cases).await,
        Err(e) => Err(e),
    };
    stack.shutdown().await;
    match code {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("zhiku tune: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn gate(
    stack: &Stack,
    stack_args: &StackArgs,
    args: &Trained<'_>,
    cases: Option<Vec<EvalCase>>,
) -> Result<(), String> {
    let gate = args.gate;
    let Some(kb) = gate.kb.clone() else {
        return Ok(());
    };
    let mut client = crate::commands::connect(
        &format!("http://{}", stack.ports.orchestrator),
        &crate::commands::ClientArgs {
            api_keys: Vec::new(),
            ca_cert: None,
        },
    )
    .map_err(|_| "cannot reach the in-process orchestrator".to_owned())?;
    let adapter_dir = absolute(args.out);
    let adapter_path = adapter_dir.to_string_lossy().into_owned();
    let models = stack_args.models();
    let mut provenance = AdapterProvenance {
        data_file: absolute(args.data).to_string_lossy().into_owned(),
        base_model: models.chat.clone(),
        base_sha256: base_sha256(&adapter_dir),
        ..Default::default()
    };
    let mut bind = gate.force;
    if let (Some(cases), Some(file)) = (cases, &gate.eval) {
        // The candidate sits beside the base model (and any adapter the knowledge base has)
        // under a name of its own until the gate decides.
        let mut generator = GeneratorClient::connect(format!("http://{}", stack.ports.generator))
            .await
            .map_err(|e| format!("cannot reach the in-process generator: {e}"))?;
        generator
            .load_adapter(LoadAdapterRequest {
                name: CANDIDATE.into(),
                path: adapter_path.clone(),
            })
            .await
            .map_err(|s| format!("the generator refused the adapter: {}", s.message()))?;
        let max = gate.eval_max_new_tokens;
        eprintln!(
            "evaluating {} on `{kb}` with the new adapter",
            file.display()
        );
        let with_report = evaluate(&mut client, &kb, &cases, CANDIDATE, max).await?;
        eprintln!("evaluating {} on `{kb}` without it", file.display());
        let without_report = evaluate(&mut client, &kb, &cases, "", max).await?;
        let reports = report_path(&adapter_dir);
        write_reports(&reports, &kb, file, &with_report, &without_report)?;
        let (with, without) = (Row::of(&with_report.0), Row::of(&without_report.0));
        let why = worse(with, without);
        let table = table(with, without);
        if args.json {
            println!(
                "{}",
                serde_json::json!({"event": "gate", "knowledge_base": kb,
                    "eval": file, "with_adapter": row_json(with),
                    "without_adapter": row_json(without), "worse": why,
                    "reports": reports})
            );
        } else {
            println!("{table}");
            println!("each answer of both runs: {}", reports.display());
        }
        provenance.eval_file = absolute(file).to_string_lossy().into_owned();
        provenance.with_adapter = Some(with.figures());
        provenance.without_adapter = Some(without.figures());
        provenance.forced = !why.is_empty() && gate.force;
        if why.is_empty() {
            bind = true;
        } else if !gate.force {
            let reason = why.join(", ");
            if args.json {
                println!(
                    "{}",
                    serde_json::json!({"event": "not_bound", "knowledge_base": kb,
                        "reason": reason})
                );
            } else {
                println!(
                    "not bound to `{kb}`: with the adapter, {reason}; the adapter stays in {} \
                     (--force binds it anyway)",
                    adapter_dir.display()
                );
            }
            return Ok(());
        }
    } else {
        provenance.forced = true;
    }
    if !bind {
        return Ok(());
    }
    let bound = client
        .bind_adapter(BindAdapterRequest {
            knowledge_base: kb.clone(),
            adapter: gate.adapter_name.clone().unwrap_or_default(),
            adapter_path,
            provenance: Some(provenance),
        })
        .await
        .map_err(|s| format!("binding the adapter to `{kb}` failed: {}", s.message()))?
        .into_inner();
    if args.json {
        println!(
            "{}",
            serde_json::json!({"event": "bound", "knowledge_base": bound.name,
                "adapter": bound.adapter, "adapter_path": bound.adapter_path,
                "forced": bound.adapter_provenance.is_some_and(|p| p.forced)})
        );
    } else {
        println!(
            "bound to `{}` as adapter `{}`{}",
            bound.name,
            bound.adapter,
            if gate.force { " (--force)" } else { "" }
        );
    }
    Ok(())
}

fn row_json(r: Row) -> serde_json::Value {
    serde_json::json!({"answerable": r.answerable, "unanswerable": r.unanswerable,
        "correct": r.correct, "false_refusals": r.false_refusals, "abstained": r.abstained})
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(correct: u32, false_refusals: u32, abstained: u32) -> Row {
        Row {
            answerable: 4,
            unanswerable: 2,
            correct,
            false_refusals,
            abstained,
        }
    }

    #[test]
    fn the_adapter_binds_only_when_it_is_not_worse_on_any_figure() {
        assert!(worse(row(2, 1, 1), row(2, 1, 1)).is_empty(), "equal");
        assert!(worse(row(3, 0, 2), row(2, 1, 1)).is_empty(), "better");
        let why = worse(row(1, 1, 1), row(2, 1, 1));
        assert_eq!(why, ["fewer right answers (1 < 2)"]);
        let why = worse(row(3, 2, 0), row(2, 1, 1));
        assert_eq!(
            why,
            [
                "more false refusals (2 > 1)",
                "fewer unanswerable questions refused (0 < 1)"
            ]
        );
    }

    #[test]
    fn both_rows_are_printed_side_by_side() {
        let t = table(row(3, 0, 2), row(2, 1, 1));
        let lines: Vec<&str> = t.lines().collect();
        assert!(lines[0].contains("right") && lines[0].contains("unanswerable refused"));
        assert!(lines[1].starts_with("without adapter") && lines[1].contains("2/4"));
        assert!(lines[2].starts_with("with adapter") && lines[2].contains("3/4"));
    }
}
