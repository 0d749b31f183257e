//! Evaluation: questions with known answers go through the Ask pipeline itself (or, with
//! `retrieval_only`, through its first two stages) under each setting of a sweep, and the
//! outcomes are scored: where the gold first appears in the sources, whether the answer holds
//! it, refusals on answerable and unanswerable questions, per-stage latency and tokens.
//!
//! The scoring is pure ([`score_case`], [`report`], [`best`]) so that it is tested on
//! hand-made rows; [`Orchestrator::evaluate`] only runs the cases.

use std::time::Instant;

use tokio::sync::mpsc;
use zhiku_proto::v1::{
    Answer, AskEvent, AskRequest, EvalCase, EvalCaseResult, EvalReport, EvalSetting, EvalSummary,
    EvaluateEvent, EvaluateRequest, LatencyStats, Timings, ask_event, evaluate_event,
};

use crate::ask::{Retrieved, Search, effective_top_k, search_mode};
use crate::config::MAX_RRF_K;
use crate::downstream::Deadline;
use crate::error::OrchestratorError;
use crate::grounding::{
    EvidenceLevels, SUPPORTED, check_min_coverage, is_refusal, normalize, support, weigh_evidence,
};
use crate::prompt::REFUSAL;
use crate::{Events, Orchestrator};

/// Bounds on one request: each case is a full Ask.
const MAX_CASES: usize = 10_000;
const MAX_SETTINGS: usize = 256;
const MAX_RUNS: usize = 100_000;

/// Every gold substring is in `text` (compared in [`gold_form`]), or, for a gold that is one
/// number with its unit, `text` states that quantity in another spelling of the unit
/// (`25分钟` for `25min`; [`crate::verify::states_quantity`]). No gold never matches.
pub fn contains_gold(text: &str, gold: &[String]) -> bool {
    let form = gold_form(text);
    !gold.is_empty()
        && gold
            .iter()
            .all(|g| form.contains(&gold_form(g)) || crate::verify::states_quantity(text, g))
}

/// The form gold is compared in: [`normalize`]d (no whitespace, lower case), and a number's
/// digit groups joined (`55,296` and `55，296` read as `55296`), since an answer that writes a
/// number grouped states the same number.
fn gold_form(text: &str) -> String {
    let chars: Vec<char> = normalize(text).chars().collect();
    let mut out = String::with_capacity(chars.len());
    for (i, &c) in chars.iter().enumerate() {
        let grouping = matches!(c, ',' | '，')
            && i > 0
            && chars[i - 1].is_ascii_digit()
            && chars.get(i + 1).is_some_and(char::is_ascii_digit);
        if !grouping {
            out.push(c);
        }
    }
    out
}

/// The 1-based rank of the source by which every gold substring has appeared in the sources
/// (each gold may sit in a different passage); `None` when some never does.
pub fn gold_rank(sources: &[&str], gold: &[String]) -> Option<usize> {
    if gold.is_empty() {
        return None;
    }
    let gold: Vec<String> = gold.iter().map(|g| gold_form(g)).collect();
    let mut found = vec![false; gold.len()];
    for (i, source) in sources.iter().enumerate() {
        let source = gold_form(source);
        for (seen, g) in found.iter_mut().zip(&gold) {
            *seen |= source.contains(g.as_str());
        }
        if found.iter().all(|&f| f) {
            return Some(i + 1);
        }
    }
    None
}

/// Scores one case from what the pipeline returned.
pub fn score_case(setting: u32, case: &EvalCase, answer: Answer) -> EvalCaseResult {
    let texts: Vec<&str> = answer.citations.iter().map(|c| c.text.as_str()).collect();
    let gold_rank = if case.answerable {
        gold_rank(&texts, &case.gold).unwrap_or(0) as u32
    } else {
        0
    };
    let refused = answer.refused || is_refusal(&answer.text);
    let support = if refused {
        0.0
    } else {
        support(&answer.text, &texts)
    };
    EvalCaseResult {
        setting,
        id: case.id.clone(),
        question: case.question.clone(),
        answerable: case.answerable,
        gold_rank,
        correct: case.answerable && !refused && contains_gold(&answer.text, &case.gold),
        refused,
        answer: answer.text,
        citations: answer.citations,
        timings: answer.timings,
        prompt_tokens: answer.prompt_tokens,
        generated_tokens: answer.generated_tokens,
        grounded: refused || support >= SUPPORTED,
        search_question: answer.search_question,
        support,
        coverage: answer.coverage,
        anchors: answer.anchors,
        relevance: answer.relevance,
        verification: answer.verification,
    }
}

/// Nearest-rank percentile (`p` in (0, 100]) of `values`; 0 for none.
pub fn percentile(values: &[f64], p: f64) -> f64 {
    let mut sorted: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
    if sorted.is_empty() {
        return 0.0;
    }
    sorted.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn stats(values: &[f64]) -> LatencyStats {
    LatencyStats {
        p50_ms: percentile(values, 50.0),
        p95_ms: percentile(values, 95.0),
    }
}

/// The figures of one setting over its case results.
pub fn report(index: u32, setting: &EvalSetting, results: &[EvalCaseResult]) -> EvalReport {
    let top_k = effective_top_k(setting.top_k) as usize;
    let answerable: Vec<&EvalCaseResult> = results.iter().filter(|r| r.answerable).collect();
    let within = |k: usize| {
        answerable
            .iter()
            .filter(|r| r.gold_rank != 0 && r.gold_rank as usize <= k)
            .count() as u32
    };
    let mrr = if answerable.is_empty() {
        0.0
    } else {
        answerable
            .iter()
            .filter(|r| r.gold_rank != 0)
            .map(|r| 1.0 / f64::from(r.gold_rank))
            .sum::<f64>()
            / answerable.len() as f64
    };
    let timings: Vec<Timings> = results
        .iter()
        .map(|r| r.timings.unwrap_or_default())
        .collect();
    let generated: Vec<&Timings> = results
        .iter()
        .zip(&timings)
        .filter(|(r, _)| r.prompt_tokens > 0 || r.generated_tokens > 0)
        .map(|(_, t)| t)
        .collect();
    let answered: Vec<f64> = results
        .iter()
        .filter(|r| !r.refused)
        .map(|r| r.support)
        .collect();
    let reranked: Vec<f64> = timings
        .iter()
        .map(|t| t.rerank_ms)
        .filter(|&ms| ms > 0.0)
        .collect();
    let stage = |f: fn(&Timings) -> f64| stats(&timings.iter().map(f).collect::<Vec<_>>());
    let generated_stage =
        |f: fn(&Timings) -> f64| stats(&generated.iter().map(|t| f(t)).collect::<Vec<_>>());
    EvalReport {
        setting: index,
        settings: Some(*setting),
        answerable: answerable.len() as u32,
        unanswerable: (results.len() - answerable.len()) as u32,
        recall_at_1: within(1),
        recall_at_3: within(3),
        recall_at_k: within(top_k),
        mrr,
        correct: answerable.iter().filter(|r| r.correct).count() as u32,
        false_refusals: answerable.iter().filter(|r| r.refused).count() as u32,
        refused_with_gold: answerable
            .iter()
            .filter(|r| r.refused && r.gold_rank != 0 && r.gold_rank as usize <= top_k)
            .count() as u32,
        abstained: results
            .iter()
            .filter(|r| !r.answerable && r.refused)
            .count() as u32,
        embed: Some(stage(|t| t.embed_ms)),
        search: Some(stage(|t| t.search_ms)),
        first_token: Some(generated_stage(|t| t.first_token_ms)),
        generate: Some(generated_stage(|t| t.generate_ms)),
        total: Some(stage(|t| t.total_ms)),
        prompt_tokens: results.iter().map(|r| u64::from(r.prompt_tokens)).sum(),
        generated_tokens: results.iter().map(|r| u64::from(r.generated_tokens)).sum(),
        generated_cases: generated.len() as u32,
        mean_support: if answered.is_empty() {
            0.0
        } else {
            answered.iter().sum::<f64>() / answered.len() as f64
        },
        unsupported: answered.iter().filter(|&&s| s < SUPPORTED).count() as u32,
        rerank: Some(stats(&reranked)),
        reranked_cases: reranked.len() as u32,
        unverified: results
            .iter()
            .filter(|r| {
                !r.refused
                    && r.verification
                        .as_ref()
                        .is_some_and(|v| !v.unsupported_facts.is_empty())
            })
            .count() as u32,
        withdrawn: results
            .iter()
            .filter(|r| r.verification.as_ref().is_some_and(|v| v.withdrawn))
            .count() as u32,
        refocused: results
            .iter()
            .filter(|r| r.verification.as_ref().is_some_and(|v| v.refocused))
            .count() as u32,
        read_from_table: results
            .iter()
            .filter(|r| r.verification.as_ref().is_some_and(|v| v.read_from_table))
            .count() as u32,
    }
}

/// The best report's index: most right outcomes (answers with their gold plus abstentions;
/// with `retrieval_only` the gold in the sources plus abstentions less the refusals of
/// questions whose gold was in them, since there a refused question keeps its sources), then
/// fewer false refusals, higher MRR, lower median total time; the first of equals.
pub fn best(reports: &[EvalReport], retrieval_only: bool) -> u32 {
    let key = |r: &EvalReport| {
        let right = if retrieval_only {
            (r.recall_at_k + r.abstained).saturating_sub(r.refused_with_gold)
        } else {
            r.correct + r.abstained
        };
        (right, u32::MAX - r.false_refusals, r.mrr)
    };
    let mut best = 0;
    for (i, r) in reports.iter().enumerate().skip(1) {
        let (b, candidate) = (key(&reports[best]), key(r));
        let total = |r: &EvalReport| r.total.map_or(f64::INFINITY, |t| t.p50_ms);
        let better = match candidate.0.cmp(&b.0).then(candidate.1.cmp(&b.1)) {
            std::cmp::Ordering::Equal => match candidate.2.total_cmp(&b.2) {
                std::cmp::Ordering::Equal => total(r) < total(&reports[best]),
                order => order.is_gt(),
            },
            order => order.is_gt(),
        };
        if better {
            best = i;
        }
    }
    best as u32
}

fn validate(request: &mut EvaluateRequest) -> Result<(), OrchestratorError> {
    let invalid = |m: String| Err(OrchestratorError::Validation(m));
    if request.knowledge_base.is_empty() {
        return invalid("`knowledge_base` is empty: name the knowledge base to evaluate".into());
    }
    if request.cases.is_empty() {
        return invalid("`cases` is empty: give at least one question".into());
    }
    if request.cases.len() > MAX_CASES {
        return invalid(format!("more than {MAX_CASES} cases"));
    }
    if request.settings.len() > MAX_SETTINGS {
        return invalid(format!("more than {MAX_SETTINGS} settings"));
    }
    if request.settings.is_empty() {
        request.settings.push(EvalSetting::default());
    }
    for (i, setting) in request.settings.iter().enumerate() {
        check_min_coverage(&format!("settings[{i}].min_coverage"), setting.min_coverage)?;
        check_min_coverage(
            &format!("settings[{i}].min_relevance"),
            setting.min_relevance,
        )?;
        check_min_coverage(&format!("settings[{i}].min_anchors"), setting.min_anchors)?;
        if let Some(k) = setting.rrf_k
            && !(1..=MAX_RRF_K).contains(&k)
        {
            return invalid(format!(
                "settings[{i}].rrf_k {k} is out of range: give 1-{MAX_RRF_K}, or leave it unset"
            ));
        }
    }
    if request.cases.len() * request.settings.len() > MAX_RUNS {
        return invalid(format!(
            "{} cases × {} settings is over {MAX_RUNS} runs",
            request.cases.len(),
            request.settings.len()
        ));
    }
    for (i, case) in request.cases.iter_mut().enumerate() {
        if case.id.is_empty() {
            case.id = (i + 1).to_string();
        }
        if case.answerable && case.gold.iter().all(|g| normalize(g).is_empty()) {
            return invalid(format!(
                "case {}: answerable but `gold` is empty; give the substrings a right answer holds",
                case.id
            ));
        }
    }
    Ok(())
}

impl Orchestrator {
    /// Runs every case under every setting, one at a time (so that latencies are those of
    /// one request alone), sending a result per case, a report per setting and a summary.
    pub async fn evaluate(
        &self,
        request: EvaluateRequest,
        deadline: Deadline,
        events: Events<EvaluateEvent>,
    ) {
        crate::run_pipeline(
            "evaluation",
            "before the evaluation was complete",
            deadline,
            &events,
            self.evaluate_inner(request, deadline, &events),
        )
        .await
    }

    async fn evaluate_inner(
        &self,
        mut request: EvaluateRequest,
        deadline: Deadline,
        events: &Events<EvaluateEvent>,
    ) -> Result<(), OrchestratorError> {
        validate(&mut request)?;
        if let Some(adapter) = request.adapter.as_deref().filter(|a| !a.is_empty())
            && !request.retrieval_only
        {
            // Before the first case: an unknown adapter fails the evaluation, not each case.
            self.require_loaded(adapter, deadline).await?;
        }
        let mut reports = Vec::with_capacity(request.settings.len());
        for (index, setting) in request.settings.iter().enumerate() {
            let index = index as u32;
            let mut results = Vec::with_capacity(request.cases.len());
            for case in &request.cases {
                let answer = if request.retrieval_only {
                    self.retrieve_only(&request, case, setting, deadline)
                        .await
                        .map_err(|e| e.in_case(&case.id))?
                } else {
                    self.ask_case(&request, case, setting, deadline)
                        .await
                        .map_err(|e| e.in_case(&case.id))?
                };
                let result = score_case(index, case, answer);
                send(events, evaluate_event::Event::CaseResult(result.clone())).await?;
                results.push(result);
            }
            let report = report(index, setting, &results);
            send(events, evaluate_event::Event::Report(report)).await?;
            reports.push(report);
        }
        let best = best(&reports, request.retrieval_only);
        send(
            events,
            evaluate_event::Event::Summary(EvalSummary { reports, best }),
        )
        .await
    }

    /// One case through the Ask pipeline itself; its final Answer.
    async fn ask_case(
        &self,
        request: &EvaluateRequest,
        case: &EvalCase,
        setting: &EvalSetting,
        deadline: Deadline,
    ) -> Result<Answer, OrchestratorError> {
        let ask = AskRequest {
            question: case.question.clone(),
            knowledge_base: request.knowledge_base.clone(),
            top_k: setting.top_k,
            score_threshold: setting.score_threshold,
            mode: setting.mode,
            sampling: request.sampling.clone(),
            history: case.history.clone(),
            context_tokens: setting.context_tokens,
            min_coverage: setting.min_coverage,
            adapter: request.adapter.clone(),
            min_relevance: setting.min_relevance,
            min_anchors: setting.min_anchors,
            filter: request.filter.clone(),
            ..Default::default()
        };
        let (tx, mut rx) = mpsc::channel::<Result<AskEvent, OrchestratorError>>(16);
        let collect = async {
            let mut answer = None;
            while let Some(event) = rx.recv().await {
                if let Some(ask_event::Event::Answer(a)) = event?.event {
                    answer = Some(a);
                }
            }
            answer.ok_or_else(|| {
                OrchestratorError::Internal("the ask ended without an answer".into())
            })
        };
        let ((), answer) = tokio::join!(
            self.ask_reranked(ask, setting.rerank, deadline, tx),
            collect
        );
        answer
    }

    /// The first stages of Ask (embed, search, threshold, rerank; with --relevance the
    /// model's judgment of the passages that fit the prompt) without generation: an Answer
    /// holding the sources, refused as an Ask would be before generating: none passed, or
    /// (`--abstention evidence`) they cover too little of the question or are judged under
    /// the setting's min_relevance.
    async fn retrieve_only(
        &self,
        request: &EvaluateRequest,
        case: &EvalCase,
        setting: &EvalSetting,
        deadline: Deadline,
    ) -> Result<Answer, OrchestratorError> {
        let started = Instant::now();
        let knowledge_base = request.knowledge_base.as_str();
        let Retrieved {
            citations,
            embed_ms,
            search_ms,
            rerank_ms,
        } = self
            .retrieve(
                Search {
                    knowledge_base,
                    question: case.question.trim(),
                    top_k: effective_top_k(setting.top_k),
                    score_threshold: setting.score_threshold,
                    filter: request.filter.clone(),
                    mode: search_mode(setting.mode)?,
                    rerank: setting.rerank,
                    rrf_k: setting.rrf_k,
                },
                deadline,
            )
            .await?;
        let levels = EvidenceLevels::of(
            &self.args.ask,
            setting.min_coverage,
            setting.min_anchors,
            setting.min_relevance,
        );
        let evidence =
            weigh_evidence(&self.args.ask, case.question.trim(), &citations, levels).await?;
        let (coverage, anchors, mut refused) =
            (evidence.coverage, evidence.anchors, evidence.refuse);
        let mut citations = citations;
        evidence.mark_anchors(&mut citations);
        let mut relevance = None;
        if !refused && self.args.ask.relevance {
            let max_new_tokens = request
                .sampling
                .as_ref()
                .and_then(|s| s.max_new_tokens)
                .unwrap_or(self.args.ask.max_new_tokens);
            let described = self.describe_for_ask(knowledge_base, deadline).await?;
            let (fitted, _) = self
                .fit_passages(
                    citations.clone(),
                    setting.context_tokens,
                    max_new_tokens,
                    deadline,
                )
                .await?;
            let rendered: Vec<String> = fitted.iter().map(crate::context::render).collect();
            let judged = self
                .judge_relevance(
                    &described,
                    &[],
                    &fitted,
                    &rendered,
                    case.question.trim(),
                    max_new_tokens,
                    deadline,
                )
                .await?;
            if let Some(judged) = judged {
                refused = crate::grounding::refuses_from_evidence(
                    fitted.len(),
                    coverage,
                    anchors,
                    Some(judged.answer),
                    self.args.ask.abstention,
                    levels,
                );
                relevance = Some(judged.answer);
            }
        }
        Ok(Answer {
            text: if refused {
                REFUSAL.into()
            } else {
                String::new()
            },
            refused,
            citations,
            timings: Some(Timings {
                embed_ms,
                search_ms,
                rerank_ms,
                total_ms: started.elapsed().as_secs_f64() * 1e3,
                ..Default::default()
            }),
            coverage,
            anchors,
            relevance,
            ..Default::default()
        })
    }
}

async fn send(
    events: &Events<EvaluateEvent>,
    event: evaluate_event::Event,
) -> Result<(), OrchestratorError> {
    events
        .send(Ok(EvaluateEvent { event: Some(event) }))
        .await
        .map_err(|_| OrchestratorError::Cancelled)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn case(id: &str, gold: &[&str], answerable: bool) -> EvalCase {
        EvalCase {
            id: id.into(),
            question: format!("question {id}"),
            gold: gold.iter().map(|g| g.to_string()).collect(),
            answerable,
            history: Vec::new(),
        }
    }

    fn answer(text: &str, sources: &[&str], refused: bool, total_ms: f64) -> Answer {
        Answer {
            text: text.into(),
            refused,
            citations: crate::context::numbered(sources),
            timings: Some(Timings {
                embed_ms: 1.0,
                search_ms: 2.0,
                first_token_ms: if refused { 0.0 } else { total_ms / 2.0 },
                generate_ms: if refused { 0.0 } else { total_ms - 3.0 },
                total_ms,
                rerank_ms: if refused { 0.0 } else { 4.0 },
            }),
            prompt_tokens: if refused { 0 } else { 100 },
            generated_tokens: if refused { 0 } else { 10 },
            ..Default::default()
        }
    }

    #[test]
    fn settings_out_of_range_are_named() {
        let request = |setting: EvalSetting| EvaluateRequest {
            knowledge_base: "kb".into(),
            cases: vec![EvalCase {
                id: "q".into(),
                question: "问题？".into(),
                ..Default::default()
            }],
            settings: vec![EvalSetting::default(), setting],
            ..Default::default()
        };
        let message = |setting| match validate(&mut request(setting)) {
            Err(OrchestratorError::Validation(m)) => m,
            other => panic!("{other:?}"),
        };
        for k in [0, 1001] {
            let m = message(EvalSetting {
                rrf_k: Some(k),
                ..Default::default()
            });
            assert!(m.contains("settings[1].rrf_k"), "{m}");
        }
        let m = message(EvalSetting {
            min_anchors: Some(1.5),
            ..Default::default()
        });
        assert!(m.contains("settings[1].min_anchors"), "{m}");
        for k in [1, 3, 1000] {
            let setting = EvalSetting {
                rrf_k: Some(k),
                ..Default::default()
            };
            assert!(validate(&mut request(setting)).is_ok(), "{k}");
        }
    }

    #[test]
    fn gold_is_compared_without_whitespace_or_case() {
        let gold = vec!["pip install Langchain-Chatchat".to_string()];
        assert!(contains_gold(
            "用 PIP  install\nlangchain-chatchat -U 安装",
            &gold
        ));
        assert!(!contains_gold("用 pip install chatchat 安装", &gold));
        assert!(!contains_gold("anything", &[]), "no gold never matches");
        let two = vec!["FAISS".to_string(), "127.0.0.1".to_string()];
        assert!(
            !contains_gold("默认 faiss", &two),
            "every gold must be there"
        );
        assert!(contains_gold("默认 faiss，监听 127.0.0.1", &two));
    }

    #[test]
    fn a_grouped_number_states_the_same_number() {
        let gold = vec!["55296".to_string()];
        assert!(contains_gold("词表大小为 55,296", &gold));
        assert!(contains_gold("词表大小为 55，296", &gold));
        assert!(!contains_gold("词表大小为 55, 297", &gold));
        // A quantity in another spelling of its unit.
        let minutes = vec!["25min".to_string()];
        assert!(contains_gold("大约需要25分钟。", &minutes));
        assert!(contains_gold("25 minutes", &minutes));
        assert!(!contains_gold("大约需要35分钟。", &minutes));
        assert!(!contains_gold("大约需要25小时。", &minutes));
        let hours = vec!["0.26h".to_string()];
        assert!(contains_gold("约 0.26 小时", &hours));
        assert!(contains_gold("15.6 分钟", &hours));
        // A gold that is not one quantity is matched as written only.
        let cards = vec!["A100 * 4".to_string()];
        assert!(!contains_gold("4 张 A100", &cards));
        assert!(contains_gold("需要 A100 * 4。", &cards));
        // Commas that group nothing stay: a list is not one number.
        let list = vec!["a,b".to_string()];
        assert!(contains_gold("a,b", &list));
        assert!(!contains_gold("ab", &list));
        assert_eq!(gold_rank(&["55,296 个词"], &gold), Some(1));
    }

    #[test]
    fn the_gold_rank_is_where_the_last_gold_piece_appears() {
        let gold = vec!["a b".to_string(), "C".to_string()];
        assert_eq!(gold_rank(&["x", "ab", "yc"], &gold), Some(3));
        assert_eq!(gold_rank(&["x", "ab c"], &gold), Some(2));
        assert_eq!(gold_rank(&["ab", "x"], &gold), None);
        assert_eq!(gold_rank(&["x"], &[]), None);
    }

    #[test]
    fn percentiles_take_the_nearest_rank() {
        let values: Vec<f64> = (1..=20).map(f64::from).collect();
        assert_eq!(percentile(&values, 50.0), 10.0);
        assert_eq!(percentile(&values, 95.0), 19.0);
        assert_eq!(percentile(&[7.0], 95.0), 7.0);
        assert_eq!(percentile(&[], 50.0), 0.0);
    }

    /// Hand-made rows: every outcome once, with the figures worked out by hand.
    fn rows() -> Vec<EvalCaseResult> {
        vec![
            // Gold at rank 1, answered: correct.
            score_case(
                0,
                &case("a", &["740"], true),
                answer(
                    "知识条目数为 740。",
                    &["初始化后知识条目数为 740 条", "x", "y"],
                    false,
                    10.0,
                ),
            ),
            // Gold at rank 3, answered wrong.
            score_case(
                0,
                &case("b", &["FAISS"], true),
                answer("Milvus", &["x", "y", "默认 faiss"], false, 20.0),
            ),
            // Gold at rank 2, the model refused: a false refusal.
            score_case(
                0,
                &case("c", &["chatchat kb -r"], true),
                answer(
                    "根据已知信息无法回答该问题",
                    &["x", "chatchat kb -r"],
                    false,
                    30.0,
                ),
            ),
            // Gold not retrieved at all, nothing passed the threshold: a false refusal.
            score_case(
                0,
                &case("d", &["3.8"], true),
                answer(REFUSAL, &[], true, 4.0),
            ),
            // Unanswerable, refused without generating: abstained.
            score_case(0, &case("e", &[], false), answer(REFUSAL, &[], true, 5.0)),
            // Unanswerable, the model invented an answer.
            score_case(
                0,
                &case("f", &[], false),
                answer("用 HPA 配置。", &["x"], false, 60.0),
            ),
        ]
    }

    #[test]
    fn cases_are_scored_by_hand() {
        let r = rows();
        let ranks: Vec<u32> = r.iter().map(|r| r.gold_rank).collect();
        assert_eq!(ranks, [1, 3, 2, 0, 0, 0]);
        let correct: Vec<bool> = r.iter().map(|r| r.correct).collect();
        assert_eq!(correct, [true, false, false, false, false, false]);
        let refused: Vec<bool> = r.iter().map(|r| r.refused).collect();
        assert_eq!(refused, [false, false, true, true, true, false]);
    }

    #[test]
    fn a_withdrawn_answer_counts_as_a_refusal() {
        let sources = ["| ChatGLM-6B | INT4 | 6 GB |"];
        let question = "ChatGLM-6B 在 INT4 下最少要多少显存？";
        let verification = crate::ask::verification(
            crate::config::Verify::Withdraw,
            "最少需要准备 72GB 显存。",
            &sources,
            &[],
            question,
        );
        assert!(verification.withdrawn);
        let mut withdrawn = answer(REFUSAL, &sources, true, 50.0);
        withdrawn.verification = Some(verification);
        let unanswerable = score_case(0, &case("g", &[], false), withdrawn.clone());
        assert!(unanswerable.refused && !unanswerable.correct);
        let answerable = score_case(0, &case("h", &["6"], true), withdrawn);
        assert!(answerable.refused && !answerable.correct);

        // Under mark the same draft stands, listed as unverified; the report counts both.
        let mut marked = answer("最少需要准备 72GB 显存。", &sources, false, 50.0);
        marked.verification = Some(crate::ask::verification(
            crate::config::Verify::Mark,
            &marked.text,
            &sources,
            &[],
            question,
        ));
        let marked = score_case(0, &case("i", &[], false), marked);
        assert!(!marked.refused);
        let report = report(0, &EvalSetting::default(), &[answerable, marked]);
        assert_eq!((report.unverified, report.withdrawn), (1, 1));
    }

    #[test]
    fn a_report_adds_up_the_rows() {
        let setting = EvalSetting {
            top_k: 3,
            ..Default::default()
        };
        let report = report(0, &setting, &rows());
        assert_eq!((report.answerable, report.unanswerable), (4, 2));
        assert_eq!(
            (report.recall_at_1, report.recall_at_3, report.recall_at_k),
            (1, 3, 3)
        );
        assert!((report.mrr - (1.0 + 1.0 / 3.0 + 0.5) / 4.0).abs() < 1e-12);
        assert_eq!(report.correct, 1);
        assert_eq!(report.false_refusals, 2);
        assert_eq!(report.abstained, 1);
        // Answered rows a, b and f: a says what its passage says (support 1), "Milvus" and
        // "用 HPA 配置" appear nowhere (0).
        assert!((report.mean_support - 1.0 / 3.0).abs() < 1e-12);
        assert_eq!(report.unsupported, 2);
        // Four rows reached the generator (a, b, c, f): totals 10, 20, 30, 60.
        assert_eq!(report.generated_cases, 4);
        assert_eq!(report.prompt_tokens, 400);
        assert_eq!(report.generated_tokens, 40);
        let total = report.total.unwrap();
        // All six totals: 4, 5, 10, 20, 30, 60.
        assert_eq!((total.p50_ms, total.p95_ms), (10.0, 60.0));
        let generate = report.generate.unwrap();
        assert_eq!((generate.p50_ms, generate.p95_ms), (17.0, 57.0));
        // Rerank latency counts over the reranked rows alone.
        assert_eq!(report.reranked_cases, 4);
        assert_eq!(report.rerank.unwrap().p50_ms, 4.0);
        // recall@k is bounded by k: with top_k 1 only rank 1 counts.
        let k1 = super::report(
            0,
            &EvalSetting {
                top_k: 1,
                ..Default::default()
            },
            &rows(),
        );
        assert_eq!(k1.recall_at_k, 1);
    }

    #[test]
    fn the_best_setting_has_the_most_right_outcomes_then_fewer_false_refusals() {
        let base = report(0, &EvalSetting::default(), &rows());
        let with = |correct, abstained, false_refusals, mrr, p50| EvalReport {
            correct,
            abstained,
            false_refusals,
            mrr,
            total: Some(LatencyStats {
                p50_ms: p50,
                p95_ms: p50,
            }),
            ..base
        };
        let reports = [
            with(2, 0, 1, 0.5, 10.0),
            with(1, 2, 1, 0.5, 10.0),
            with(3, 0, 0, 0.5, 10.0),
            with(3, 0, 0, 0.5, 5.0),
            with(3, 0, 0, 0.4, 1.0),
        ];
        assert_eq!(best(&reports, false), 3);
        assert_eq!(best(&reports[..2], false), 1);
        // Retrieval only: recall@k (3 in every row here) counts instead of answers.
        assert_eq!(best(&reports, true), 1);
        // … less the refusals that cost a found gold; refusing a question whose gold was
        // not retrieved costs nothing there, beyond the tie on false refusals.
        let retrieval = |abstained, false_refusals, refused_with_gold| EvalReport {
            abstained,
            false_refusals,
            refused_with_gold,
            ..base
        };
        let refusing = [retrieval(0, 0, 0), retrieval(2, 2, 2), retrieval(2, 2, 0)];
        assert_eq!(best(&refusing[..2], true), 0, "a tie: fewer false refusals");
        assert_eq!(best(&refusing, true), 2);
    }

    #[test]
    fn requests_are_checked_before_anything_runs() {
        let mut request = EvaluateRequest {
            knowledge_base: "kb".into(),
            cases: vec![case("", &["x"], true), case("", &[], false)],
            ..Default::default()
        };
        validate(&mut request).unwrap();
        assert_eq!(request.settings.len(), 1, "no settings: one default run");
        assert_eq!(request.cases[1].id, "2");
        request.cases.push(case("z", &[" "], true));
        let e = validate(&mut request).unwrap_err().to_string();
        assert!(e.contains("case z") && e.contains("gold"), "{e}");
        let mut empty = EvaluateRequest {
            knowledge_base: "kb".into(),
            ..Default::default()
        };
        assert!(validate(&mut empty).is_err());
    }
}
