//! `zhiku eval`: reads a JSONL of questions with known answers, calls the orchestrator's
//! Evaluate RPC (one setting or a `--sweep` grid) and prints the figures as a table or JSON.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use futures::StreamExt;
use serde_json::{Value, json};
use zhiku_proto::v1::{
    EvalCase, EvalCaseResult, EvalReport, EvalSetting, EvalSummary, EvaluateRequest, LatencyStats,
    SamplingParams, SearchMode, Turn, evaluate_event,
};

use crate::commands::Mode;

#[derive(Debug, clap::Args)]
pub struct EvalArgs {
    /// JSONL, one case a line: {"id", "question", "gold": [substrings], "answerable",
    /// "history": [{"question", "answer"}, …] (earlier turns: the question is a follow-up)}.
    pub cases: PathBuf,
    /// The knowledge base to evaluate.
    #[arg(long, env = "ZHIKU_KB")]
    pub kb: String,
    /// Files or directories to ingest into the knowledge base first (created when missing).
    #[arg(long)]
    pub ingest: Vec<PathBuf>,
    /// Passages to retrieve.
    #[arg(long, default_value_t = 5)]
    pub top_k: u32,
    /// Cosine similarity under which passages are dropped (unset: the orchestrator's
    /// default, calibrated per embedder; negative: none dropped).
    #[arg(long, allow_negative_numbers = true)]
    pub threshold: Option<f32>,
    /// Tokens the passages may take in a prompt (unset: the orchestrator's default).
    #[arg(long)]
    pub context_tokens: Option<u32>,
    /// Retrieval: dense, sparse or hybrid.
    #[arg(long, value_enum, default_value_t = Mode::Hybrid)]
    pub mode: Mode,
    /// Rerank the candidates with the embedder's cross-encoder: on or off (unset: the
    /// orchestrator's --rerank; on needs an embedder with --reranker-model).
    #[arg(long, value_parser = parse_on_off)]
    pub rerank: Option<bool>,
    /// Longest answer in tokens.
    #[arg(long, default_value_t = 256)]
    pub max_new_tokens: u32,
    /// A grid to run, e.g. `top_k=3,5,threshold=none,default,0.3,mode=dense,hybrid,
    /// context_tokens=512,1024,rerank=off,on`; also `rrf_k=3,60` (hybrid fusion's k),
    /// `min_coverage=…`, `min_anchors=…`, `min_relevance=…` (0 to 1). Keys left out keep
    /// --top-k / --threshold / --mode / --context-tokens / --rerank and the orchestrator's
    /// Ask flags. Prints the best setting.
    #[arg(long)]
    pub sweep: Option<String>,
    /// Score retrieval only: the generator is not called.
    #[arg(long)]
    pub retrieval_only: bool,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    pub json: bool,
    /// The LoRA adapter every answer is generated with, by the name the generator serves it
    /// under; `none`: the base model. Unset: the knowledge base's own adapter.
    #[arg(long)]
    pub adapter: Option<String>,
}

/// Reads the cases: one JSON object a line (blank lines skipped); `gold` may be one string.
pub fn read_cases(path: &Path) -> Result<Vec<EvalCase>, String> {
    let text =
        std::fs::read_to_string(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
    parse_cases(&text).map_err(|e| format!("{}: {e}", path.display()))
}

pub fn parse_cases(text: &str) -> Result<Vec<EvalCase>, String> {
    let mut cases = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let at = |m: &str| format!("line {}: {m}", n + 1);
        let value: Value = serde_json::from_str(line).map_err(|e| at(&e.to_string()))?;
        let question = value
            .get("question")
            .and_then(Value::as_str)
            .ok_or_else(|| at("no \"question\" string"))?;
        let gold = match value.get("gold") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::String(s)) => vec![s.clone()],
            Some(Value::Array(items)) => items
                .iter()
                .map(|g| g.as_str().map(str::to_owned))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| at("\"gold\" holds something other than strings"))?,
            Some(_) => return Err(at("\"gold\" is neither a string nor a list of strings")),
        };
        let answerable = match value.get("answerable") {
            None | Some(Value::Null) => true,
            Some(Value::Bool(b)) => *b,
            Some(_) => return Err(at("\"answerable\" is not true or false")),
        };
        let id = match value.get("id") {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Number(n)) => n.to_string(),
            _ => String::new(),
        };
        let history = match value.get("history") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(turns)) => turns
                .iter()
                .map(|t| {
                    let field = |k: &str| t.get(k).and_then(Value::as_str).map(str::to_owned);
                    Some(Turn {
                        question: field("question")?,
                        answer: field("answer")?,
                    })
                })
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| {
                    at("\"history\" holds a turn without \"question\" and \"answer\" strings")
                })?,
            Some(_) => return Err(at("\"history\" is not a list of turns")),
        };
        cases.push(EvalCase {
            id,
            question: question.to_owned(),
            gold,
            answerable,
            history,
        });
    }
    if cases.is_empty() {
        return Err("no cases".into());
    }
    Ok(cases)
}

fn search_mode(mode: Mode) -> SearchMode {
    match mode {
        Mode::Dense => SearchMode::Dense,
        Mode::Sparse => SearchMode::Sparse,
        Mode::Hybrid => SearchMode::Hybrid,
    }
}

/// `on` / `off` (also true/false, yes/no).
pub fn parse_on_off(value: &str) -> Result<bool, String> {
    match value.trim().to_ascii_lowercase().as_str() {
        "on" | "true" | "yes" => Ok(true),
        "off" | "false" | "no" => Ok(false),
        v => Err(format!("`{v}`: on or off")),
    }
}

/// The grid of `--sweep` (top_k × threshold × mode × rrf_k × context_tokens × rerank ×
/// min_coverage × min_anchors × min_relevance, in that order), from the flags where a key is
/// not given.
pub fn parse_sweep(spec: &str, base: &EvalSetting) -> Result<Vec<EvalSetting>, String> {
    let mut rerank: Vec<Option<bool>> = Vec::new();
    let mut top_k: Vec<u32> = Vec::new();
    let mut threshold: Vec<Option<f32>> = Vec::new();
    let mut mode: Vec<i32> = Vec::new();
    let mut context: Vec<Option<u32>> = Vec::new();
    let mut coverage: Vec<Option<f64>> = Vec::new();
    let mut relevance: Vec<Option<f64>> = Vec::new();
    let mut anchors: Vec<Option<f64>> = Vec::new();
    let mut rrf_k: Vec<Option<u32>> = Vec::new();
    let mut key = String::new();
    for token in spec.split(',').map(str::trim).filter(|t| !t.is_empty()) {
        let value = match token.split_once('=') {
            Some((k, v)) => {
                key = k.trim().replace('-', "_");
                v.trim()
            }
            None if key.is_empty() => return Err(format!("`{token}`: expected KEY=VALUE")),
            None => token,
        };
        match key.as_str() {
            "top_k" => top_k.push(
                value
                    .parse()
                    .map_err(|_| format!("top_k `{value}` is not a whole number"))?,
            ),
            "threshold" => threshold.push(match value {
                // A negative threshold: the orchestrator drops nothing.
                "none" | "off" => Some(-1.0),
                "default" => None,
                v => Some(
                    v.parse()
                        .map_err(|_| format!("threshold `{v}` is not a number or none"))?,
                ),
            }),
            "mode" => mode.push(match value {
                "dense" => SearchMode::Dense,
                "sparse" => SearchMode::Sparse,
                "hybrid" => SearchMode::Hybrid,
                v => return Err(format!("mode `{v}`: dense, sparse or hybrid")),
            } as i32),
            "context_tokens" => {
                context.push(Some(value.parse().map_err(|_| {
                    format!("context_tokens `{value}` is not a whole number")
                })?))
            }
            "rrf_k" => rrf_k.push(match value {
                "default" => None,
                v => Some(
                    v.parse()
                        .ok()
                        .filter(|k| (1..=zhiku_orchestrator::MAX_RRF_K).contains(k))
                        .ok_or_else(|| {
                            format!(
                                "rrf_k `{v}` is not a whole number in 1..{}",
                                zhiku_orchestrator::MAX_RRF_K
                            )
                        })?,
                ),
            }),
            "min_coverage" => coverage.push(level("min_coverage", value)?),
            "min_relevance" => relevance.push(level("min_relevance", value)?),
            "min_anchors" => anchors.push(level("min_anchors", value)?),
            "rerank" => rerank.push(match value {
                "default" => None,
                v => Some(parse_on_off(v).map_err(|e| format!("rerank {e}"))?),
            }),
            k => {
                return Err(format!(
                    "unknown sweep key `{k}`: top_k, threshold, mode, rrf_k, context_tokens, \
                     rerank, min_coverage, min_anchors or min_relevance"
                ));
            }
        }
    }
    // Each key multiplies the grid by its values (the flags' one where not given), the
    // first key outermost.
    let mut grid = vec![*base];
    expand(&mut grid, top_k, |s, v| s.top_k = v);
    expand(&mut grid, threshold, |s, v| s.score_threshold = v);
    expand(&mut grid, mode, |s, v| s.mode = v);
    expand(&mut grid, rrf_k, |s, v| s.rrf_k = v);
    expand(&mut grid, context, |s, v| s.context_tokens = v);
    expand(&mut grid, rerank, |s, v| s.rerank = v);
    expand(&mut grid, coverage, |s, v| s.min_coverage = v);
    expand(&mut grid, anchors, |s, v| s.min_anchors = v);
    expand(&mut grid, relevance, |s, v| s.min_relevance = v);
    Ok(grid)
}

/// Every setting of `grid` once per value of `values` (none: unchanged).
fn expand<T: Copy>(grid: &mut Vec<EvalSetting>, values: Vec<T>, set: impl Fn(&mut EvalSetting, T)) {
    if values.is_empty() {
        return;
    }
    *grid = grid
        .iter()
        .flat_map(|setting| {
            values.iter().map(|&v| {
                let mut s = *setting;
                set(&mut s, v);
                s
            })
        })
        .collect();
}

/// A sweep's level in 0..1 for `key`, or `default` (None: the orchestrator's flag).
fn level(key: &str, value: &str) -> Result<Option<f64>, String> {
    match value {
        "default" => Ok(None),
        v => v
            .parse::<f64>()
            .ok()
            .filter(|c| (0.0..=1.0).contains(c))
            .map(Some)
            .ok_or_else(|| format!("{key} `{v}` is not a number in 0..1")),
    }
}

fn describe(setting: &EvalSetting) -> String {
    let mode = match SearchMode::try_from(setting.mode) {
        Ok(SearchMode::Dense) => "dense",
        Ok(SearchMode::Sparse) => "sparse",
        _ => "hybrid",
    };
    let threshold = match setting.score_threshold {
        None => "default".to_owned(),
        Some(t) if t < 0.0 => "none".to_owned(),
        Some(t) => t.to_string(),
    };
    let context = setting
        .context_tokens
        .map_or_else(|| "default".to_owned(), |t| t.to_string());
    let rerank = match setting.rerank {
        None => "",
        Some(true) => " rerank=on",
        Some(false) => " rerank=off",
    };
    let rrf_k = setting
        .rrf_k
        .map_or_else(String::new, |k| format!(" rrf_k={k}"));
    let coverage = setting
        .min_coverage
        .map_or_else(String::new, |c| format!(" min_coverage={c}"));
    let anchors = setting
        .min_anchors
        .map_or_else(String::new, |a| format!(" min_anchors={a}"));
    let relevance = setting
        .min_relevance
        .map_or_else(String::new, |r| format!(" min_relevance={r}"));
    format!(
        "top_k={} threshold={threshold} mode={mode}{rrf_k} context_tokens={context}{rerank}{coverage}{anchors}{relevance}",
        if setting.top_k == 0 { 5 } else { setting.top_k }
    )
}

fn latency_json(stats: Option<LatencyStats>) -> Value {
    let s = stats.unwrap_or_default();
    json!({"p50_ms": s.p50_ms, "p95_ms": s.p95_ms})
}

fn report_json(r: &EvalReport) -> Value {
    let setting = r.settings.unwrap_or_default();
    json!({
        "setting": {
            "top_k": if setting.top_k == 0 { 5 } else { setting.top_k },
            // As written (0.3, not the f32's 0.30000001192092896).
            "threshold": setting
                .score_threshold
                .map(|t| t.to_string().parse::<f64>().unwrap_or(f64::from(t))),
            "mode": match SearchMode::try_from(setting.mode) {
                Ok(SearchMode::Dense) => "dense",
                Ok(SearchMode::Sparse) => "sparse",
                _ => "hybrid",
            },
            "rrf_k": setting.rrf_k,
            "context_tokens": setting.context_tokens,
            "rerank": setting.rerank,
            "min_coverage": setting.min_coverage,
            "min_anchors": setting.min_anchors,
            "min_relevance": setting.min_relevance,
        },
        "answerable": r.answerable,
        "unanswerable": r.unanswerable,
        "recall_at_1": r.recall_at_1,
        "recall_at_3": r.recall_at_3,
        "recall_at_k": r.recall_at_k,
        "mrr": r.mrr,
        "correct": r.correct,
        "false_refusals": r.false_refusals,
        "refused_with_gold": r.refused_with_gold,
        "abstained": r.abstained,
        "latency": {
            "embed": latency_json(r.embed),
            "search": latency_json(r.search),
            "rerank": latency_json(r.rerank),
            "first_token": latency_json(r.first_token),
            "generate": latency_json(r.generate),
            "total": latency_json(r.total),
        },
        "prompt_tokens": r.prompt_tokens,
        "generated_tokens": r.generated_tokens,
        "generated_cases": r.generated_cases,
        "reranked_cases": r.reranked_cases,
        "mean_support": r.mean_support,
        "unsupported": r.unsupported,
        "unverified": r.unverified,
        "withdrawn": r.withdrawn,
        "refocused": r.refocused,
        "read_from_table": r.read_from_table,
    })
}

/// One setting's report with its cases, as `--json` writes it.
pub fn report_with_cases_json(r: &EvalReport, results: &[EvalCaseResult]) -> Value {
    let mut o = report_json(r);
    o["cases"] = results
        .iter()
        .filter(|c| c.setting == r.setting)
        .map(case_json)
        .collect();
    o
}

fn case_json(c: &EvalCaseResult) -> Value {
    json!({
        "id": c.id,
        "question": c.question,
        "answerable": c.answerable,
        "gold_rank": c.gold_rank,
        "correct": c.correct,
        "refused": c.refused,
        "answer": c.answer,
        "sources": c.citations.iter().map(|s| json!({
            "source": s.source, "chunk": s.chunk_index, "score": s.score,
            "relevance": s.relevance, "anchors": s.anchors, "heading_path": s.heading_path, "text": s.text,
        })).collect::<Vec<_>>(),
        "relevance": c.relevance,
        "support": c.support,
        "grounded": c.grounded,
        "coverage": c.coverage,
        "anchors": c.anchors,
        "search_question": c.search_question,
        "verification": c.verification.as_ref().map(|v| json!({
            "withdrawn": v.withdrawn, "echoed": v.echoed, "refocused": v.refocused,
            "units_dropped": v.units_dropped, "read_from_table": v.read_from_table, "unsupported_facts": v.unsupported_facts, "reason": v.reason,
        })),
        "total_ms": c.timings.unwrap_or_default().total_ms,
        "prompt_tokens": c.prompt_tokens,
        "generated_tokens": c.generated_tokens,
    })
}

/// One line per case as it finishes (stderr, so that stdout stays the result).
fn progress_line(c: &EvalCaseResult, done: usize, total: usize, retrieval_only: bool) -> String {
    let outcome = match (retrieval_only, c.answerable, c.correct, c.refused) {
        (_, true, _, true) => "REFUSED",
        (true, true, _, false) if c.gold_rank == 0 => "MISSED",
        (true, true, _, false) => "found",
        (false, true, true, _) => "right",
        (false, true, false, false) => "wrong",
        (_, false, _, true) => "abstained",
        (_, false, _, false) => "ANSWERED",
    };
    let rank = if c.answerable {
        if c.gold_rank == 0 {
            "gold not in sources".to_owned()
        } else {
            format!("gold at {}", c.gold_rank)
        }
    } else {
        "unanswerable".to_owned()
    };
    let answer: String = c.answer.replace('\n', " ").chars().take(60).collect();
    let relevance = c
        .relevance
        .map_or_else(String::new, |r| format!("relevance {r:.2}  "));
    let support = if retrieval_only {
        relevance
    } else if c.refused {
        format!("coverage {:.2}  {relevance}", c.coverage)
    } else if c.grounded {
        format!(
            "coverage {:.2}  {relevance}support {:.2}  ",
            c.coverage, c.support
        )
    } else {
        format!(
            "coverage {:.2}  {relevance}support {:.2} UNGROUNDED  ",
            c.coverage, c.support
        )
    };
    let rewritten = if c.search_question.is_empty() || c.search_question == c.question {
        String::new()
    } else {
        format!("  (searched: {})", c.search_question)
    };
    format!(
        "[{done}/{total}] {:<6} {outcome:<9} {rank:<19} {:>7.0} ms  {support}{answer}{rewritten}",
        c.id,
        c.timings.unwrap_or_default().total_ms
    )
}

fn fraction(n: u32, of: u32) -> String {
    format!("{n}/{of}")
}

/// The table of one setting.
pub fn report_table(r: &EvalReport, retrieval_only: bool) -> String {
    let setting = r.settings.unwrap_or_default();
    let k = if setting.top_k == 0 { 5 } else { setting.top_k };
    let mut out = format!("setting: {}\n", describe(&setting));
    let at_k = if k == 1 || k == 3 {
        String::new()
    } else {
        format!("recall@{k} {}  ", fraction(r.recall_at_k, r.answerable))
    };
    out += &format!(
        "retrieval     recall@1 {}  recall@3 {}  {at_k}MRR {:.3}\n",
        fraction(r.recall_at_1, r.answerable),
        fraction(r.recall_at_3, r.answerable),
        r.mrr
    );
    if retrieval_only {
        out += &format!(
            "refusals      refused before generating (threshold, coverage or anchors): {} \
             answerable ({} with the gold in the sources), {} unanswerable\n",
            fraction(r.false_refusals, r.answerable),
            r.refused_with_gold,
            fraction(r.abstained, r.unanswerable)
        );
    } else {
        out += &format!(
            "answers       right {}  false refusals {}\n",
            fraction(r.correct, r.answerable),
            fraction(r.false_refusals, r.answerable)
        );
        out += &format!(
            "unanswerable  refused {}\n",
            fraction(r.abstained, r.unanswerable)
        );
        out += &format!(
            "support       mean {:.2} over answered questions; {} under 0.5 (likely not grounded)\n",
            r.mean_support, r.unsupported
        );
        out += &format!(
            "verification  {} answered with a key fact no passage states; {} withdrawn; {} read \
             again from narrowed passages; {} read from the table cell the question names\n",
            r.unverified, r.withdrawn, r.refocused, r.read_from_table
        );
    }
    out += "latency (ms)       p50       p95\n";
    let stages = [
        ("embed", r.embed),
        ("search", r.search),
        ("rerank", r.rerank),
        ("first token", r.first_token),
        ("generate", r.generate),
        ("total", r.total),
    ];
    for (name, stats) in stages {
        if retrieval_only && matches!(name, "first token" | "generate") {
            continue;
        }
        if name == "rerank" && r.reranked_cases == 0 {
            continue;
        }
        let s = stats.unwrap_or_default();
        out += &format!("  {name:<12} {:>9.1} {:>9.1}\n", s.p50_ms, s.p95_ms);
    }
    if !retrieval_only {
        out += &format!(
            "tokens        prompt {} generated {} over {} generated answer(s)\n",
            r.prompt_tokens, r.generated_tokens, r.generated_cases
        );
    }
    out
}

/// One row per setting of a sweep, then the best.
pub fn sweep_table(summary: &EvalSummary) -> String {
    let mut out = String::from(
        "setting                                   R@1    R@3    R@k    MRR    right  false-ref  abstained  p50 ms\n",
    );
    for r in &summary.reports {
        let marker = if r.setting == summary.best { "*" } else { " " };
        out += &format!(
            "{marker}{:<41} {:<6} {:<6} {:<6} {:<6.3} {:<6} {:<10} {:<10} {:.0}\n",
            describe(&r.settings.unwrap_or_default()),
            fraction(r.recall_at_1, r.answerable),
            fraction(r.recall_at_3, r.answerable),
            fraction(r.recall_at_k, r.answerable),
            r.mrr,
            fraction(r.correct, r.answerable),
            fraction(r.false_refusals, r.answerable),
            fraction(r.abstained, r.unanswerable),
            r.total.unwrap_or_default().p50_ms
        );
    }
    if let Some(best) = summary.reports.get(summary.best as usize) {
        out += &format!("best: {}\n", describe(&best.settings.unwrap_or_default()));
    }
    out
}

pub async fn run(mut client: crate::commands::Client, args: EvalArgs) -> ExitCode {
    let cases = match read_cases(&args.cases) {
        Ok(cases) => cases,
        Err(e) => {
            eprintln!("zhiku eval: {e}");
            return ExitCode::from(2);
        }
    };
    let base = EvalSetting {
        top_k: args.top_k,
        score_threshold: args.threshold,
        mode: search_mode(args.mode) as i32,
        context_tokens: args.context_tokens,
        rerank: args.rerank,
        // The orchestrator's --min-coverage, --min-anchors and --min-relevance (in this
        // process: the global flags).
        min_coverage: None,
        min_anchors: None,
        min_relevance: None,
        // The orchestrator's --rrf-k.
        rrf_k: None,
    };
    let settings = match &args.sweep {
        None => vec![base],
        Some(spec) => match parse_sweep(spec, &base) {
            Ok(grid) => grid,
            Err(e) => {
                eprintln!("zhiku eval: --sweep: {e}");
                return ExitCode::from(2);
            }
        },
    };
    if !args.ingest.is_empty() {
        let options = crate::commands::IngestOptions {
            kb: args.kb.clone(),
            chunk_size: 250,
            overlap: 50,
            max_file_bytes: zhiku_orchestrator::DEFAULT_MAX_FILE_BYTES,
            ocr: None,
            readers: Vec::new(),
        };
        let code = crate::commands::ingest_quietly(client.clone(), &args.ingest, options).await;
        if code != ExitCode::SUCCESS {
            return code;
        }
    }
    let total = cases.len() * settings.len();
    let request = EvaluateRequest {
        filter: None,
        knowledge_base: args.kb.clone(),
        cases,
        settings,
        sampling: Some(SamplingParams {
            max_new_tokens: Some(args.max_new_tokens),
            ..Default::default()
        }),
        retrieval_only: args.retrieval_only,
        adapter: args.adapter.clone().map(crate::commands::adapter_choice),
    };
    let mut stream = match client.evaluate(request).await {
        Ok(r) => r.into_inner(),
        Err(status) => return crate::commands::fail("eval", status),
    };
    let mut results: Vec<EvalCaseResult> = Vec::new();
    while let Some(event) = stream.next().await {
        let event = match event {
            Ok(e) => e,
            Err(status) => return crate::commands::fail("eval", status),
        };
        match event.event {
            Some(evaluate_event::Event::CaseResult(c)) => {
                eprintln!(
                    "{}",
                    progress_line(&c, results.len() + 1, total, args.retrieval_only)
                );
                results.push(c);
            }
            Some(evaluate_event::Event::Report(r)) if !args.json => {
                println!("\n{}", report_table(&r, args.retrieval_only));
            }
            Some(evaluate_event::Event::Summary(summary)) => {
                if args.json {
                    let settings: Vec<Value> = summary
                        .reports
                        .iter()
                        .map(|r| report_with_cases_json(r, &results))
                        .collect();
                    println!(
                        "{}",
                        json!({
                            "knowledge_base": args.kb,
                            "retrieval_only": args.retrieval_only,
                            "settings": settings,
                            "best": summary.best,
                        })
                    );
                } else if summary.reports.len() > 1 {
                    println!("{}", sweep_table(&summary));
                }
                return ExitCode::SUCCESS;
            }
            _ => {}
        }
    }
    eprintln!("zhiku eval: the evaluation ended without a summary");
    ExitCode::FAILURE
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cases_are_read_from_jsonl() {
        let cases = parse_cases(
            "{\"id\":\"v1\",\"question\":\"原来叫什么？\",\"gold\":[\"ChatGLM\"],\"answerable\":true}\n\n\
             {\"question\":\"世界杯？\",\"gold\":[],\"answerable\":false}\n\
             {\"id\":3,\"question\":\"q\",\"gold\":\"one\"}\n",
        )
        .unwrap();
        assert_eq!(cases.len(), 3);
        assert_eq!(cases[0].gold, ["ChatGLM"]);
        assert!(!cases[1].answerable && cases[1].id.is_empty());
        assert_eq!((cases[2].id.as_str(), cases[2].answerable), ("3", true));
        assert_eq!(cases[2].gold, ["one"]);
        let e = parse_cases("{\"question\":\"q\"}\n{\"gold\":[]}").unwrap_err();
        assert!(e.starts_with("line 2"), "{e}");
        assert!(parse_cases("{\"question\":\"q\",\"gold\":[1]}").is_err());
        assert!(parse_cases("\n").is_err());
        // A follow-up with its earlier turn.
        let follow = parse_cases(
            "{\"question\":\"它呢？\",\"gold\":[\"x\"],\"history\":[{\"question\":\"a\",\"answer\":\"b\"}]}",
        )
        .unwrap();
        assert_eq!(follow[0].history.len(), 1);
        assert_eq!(follow[0].history[0].answer, "b");
        assert!(
            parse_cases("{\"question\":\"q\",\"gold\":[\"x\"],\"history\":[{\"question\":\"a\"}]}")
                .is_err()
        );
    }

    #[test]
    fn a_sweep_is_the_grid_of_its_keys() {
        let base = EvalSetting {
            top_k: 5,
            score_threshold: None,
            mode: SearchMode::Hybrid as i32,
            context_tokens: None,
            rerank: None,
            min_coverage: None,
            min_anchors: None,
            rrf_k: None,
            min_relevance: None,
        };
        let grid = parse_sweep("top_k=3,5,threshold=none,0.3,mode=dense,hybrid", &base).unwrap();
        assert_eq!(grid.len(), 8);
        assert_eq!(
            describe(&grid[0]),
            "top_k=3 threshold=none mode=dense context_tokens=default"
        );
        assert_eq!(grid[0].score_threshold, Some(-1.0), "none: drop nothing");
        assert_eq!(
            describe(&grid[7]),
            "top_k=5 threshold=0.3 mode=hybrid context_tokens=default"
        );
        let budgets = parse_sweep("threshold=default,context_tokens=256,512", &base).unwrap();
        assert_eq!(budgets.len(), 2);
        assert_eq!(budgets[0].score_threshold, None);
        assert_eq!(budgets[1].context_tokens, Some(512));
        let only_k = parse_sweep("top-k=1,2", &base).unwrap();
        assert_eq!(only_k.len(), 2);
        assert_eq!(only_k[1].mode, SearchMode::Hybrid as i32);
        let reranks = parse_sweep("rerank=off,on", &base).unwrap();
        assert_eq!(
            reranks.iter().map(|s| s.rerank).collect::<Vec<_>>(),
            [Some(false), Some(true)]
        );
        assert_eq!(
            describe(&reranks[1]),
            "top_k=5 threshold=default mode=hybrid context_tokens=default rerank=on"
        );
        let levels = parse_sweep("min_coverage=0,0.35,default", &base).unwrap();
        assert_eq!(
            levels.iter().map(|s| s.min_coverage).collect::<Vec<_>>(),
            [Some(0.0), Some(0.35), None]
        );
        assert!(describe(&levels[1]).ends_with(" min_coverage=0.35"));
        let judged = parse_sweep("min_coverage=0.35,min_relevance=0,0.2", &base).unwrap();
        assert_eq!(
            judged
                .iter()
                .map(|s| (s.min_coverage, s.min_relevance))
                .collect::<Vec<_>>(),
            [(Some(0.35), Some(0.0)), (Some(0.35), Some(0.2))]
        );
        assert!(describe(&judged[1]).ends_with(" min_coverage=0.35 min_relevance=0.2"));
        let anchored = parse_sweep("min_anchors=0,1,min_relevance=0.2", &base).unwrap();
        assert_eq!(
            anchored
                .iter()
                .map(|s| (s.min_anchors, s.min_relevance))
                .collect::<Vec<_>>(),
            [(Some(0.0), Some(0.2)), (Some(1.0), Some(0.2))]
        );
        assert!(describe(&anchored[1]).ends_with(" min_anchors=1 min_relevance=0.2"));
        let fused = parse_sweep("rrf_k=3,60,default,mode=hybrid", &base).unwrap();
        assert_eq!(
            fused.iter().map(|s| s.rrf_k).collect::<Vec<_>>(),
            [Some(3), Some(60), None]
        );
        assert!(describe(&fused[0]).contains(" mode=hybrid rrf_k=3 "));
        for bad in [
            "rrf_k=0",
            "rrf_k=1001",
            "rrf_k=-3",
            "min_relevance=1.5",
            "min_anchors=-0.5",
            "min_coverage=2",
            "min_coverage=high",
            "3,5",
            "top_k=x",
            "mode=fuzzy",
            "depth=3",
            "threshold=high",
            "rerank=maybe",
        ] {
            assert!(parse_sweep(bad, &base).is_err(), "{bad}");
        }
    }
}
