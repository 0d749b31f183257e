//! Grounding: how far the passages answer a question and an answer says what its passages
//! say, and the refusals decided from that. Ask and Evaluate both judge by it:
//!
//! - before generating: the question's coverage by its passages ([`coverage`]), the share
//!   of its anchors one passage holds ([`anchors`]), the chat model's judgment that they
//!   state the answer ([`relevance`]) and the refusal from the evidence
//!   ([`weigh_evidence`]: no passage, or, with `--abstention evidence`, too little coverage
//!   or too few anchors; [`relevance::refuses`] once the model has judged);
//! - after generating: the answer's support score ([`support`], [`grounding`]) and grounded
//!   abstention ([`abstains`]);
//! - refusals the model wrote ([`is_refusal`]).

pub mod anchors;
pub mod coverage;
pub mod relevance;

use std::collections::HashSet;

use zhiku_proto::v1::Citation;

use crate::config::{Abstention, AskPolicy};
use crate::context;
use crate::error::OrchestratorError;
use crate::prompt::REFUSAL;

pub use coverage::question_coverage;

/// Support under this marks an answer as likely not grounded in its passages.
pub const SUPPORTED: f64 = 0.5;

/// What the model says when the passages do not hold the answer (the article's prompt asks
/// for "根据已知信息无法回答该问题" or "没有提供足够的相关信息").
const REFUSAL_MARKS: &[&str] = &["无法回答", "没有提供足够的相关信息"];

/// The units support is counted in: each CJK (or other non-ASCII) character, and each run of
/// ASCII letters and digits; punctuation and whitespace are dropped, case ignored.
fn units(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut word = String::new();
    for c in text.chars().flat_map(char::to_lowercase) {
        if c.is_ascii_alphanumeric() {
            word.push(c);
            continue;
        }
        if !word.is_empty() {
            out.push(std::mem::take(&mut word));
        }
        if !c.is_ascii() && c.is_alphanumeric() {
            out.push(c.to_string());
        }
    }
    if !word.is_empty() {
        out.push(word);
    }
    out
}

fn bigrams(units: &[String]) -> Vec<(&str, &str)> {
    units
        .windows(2)
        .map(|w| (w[0].as_str(), w[1].as_str()))
        .collect()
}

/// The share of the answer's unit bigrams (unigrams for a one-unit answer) that occur in the
/// passages: lexical evidence that the answer says what the passages say. 0 for no content.
pub fn support(answer: &str, passages: &[&str]) -> f64 {
    let answer = units(answer);
    let passages: Vec<Vec<String>> = passages.iter().map(|p| units(p)).collect();
    if answer.len() == 1 {
        let found = passages.iter().any(|p| p.contains(&answer[0]));
        return if found { 1.0 } else { 0.0 };
    }
    let wanted = bigrams(&answer);
    if wanted.is_empty() {
        return 0.0;
    }
    let known: HashSet<(&str, &str)> = passages.iter().flat_map(|p| bigrams(p)).collect();
    wanted.iter().filter(|b| known.contains(b)).count() as f64 / wanted.len() as f64
}

/// Whitespace removed, lower case: how refusals, gold and answers are compared.
pub fn normalize(text: &str) -> String {
    text.chars()
        .filter(|c| !c.is_whitespace())
        .flat_map(char::to_lowercase)
        .collect()
}

/// A refusal: the pipeline's own (nothing passed the threshold, or too little coverage) or
/// the model's.
pub fn is_refusal(answer: &str) -> bool {
    let answer = normalize(answer);
    answer == normalize(REFUSAL) || REFUSAL_MARKS.iter().any(|m| answer.contains(m))
}

/// How grounded an answer is: its support score, and whether that reaches [`SUPPORTED`].
/// Refusals claim nothing: support 1, grounded.
pub fn grounding(answer: &str, passages: &[&str]) -> (f64, bool) {
    if is_refusal(answer) {
        return (1.0, true);
    }
    let s = support(answer, passages);
    (s, s >= SUPPORTED)
}

/// [`grounding`] off the async threads: scoring is CPU work in proportion to the answer and
/// its passages.
pub(crate) async fn grounding_of(
    answer: &str,
    citations: &[Citation],
) -> Result<(f64, bool), OrchestratorError> {
    let texts: Vec<String> = citations.iter().map(|c| c.text.clone()).collect();
    let answer = answer.to_owned();
    tokio::task::spawn_blocking(move || {
        let texts: Vec<&str> = texts.iter().map(String::as_str).collect();
        grounding(&answer, &texts)
    })
    .await
    .map_err(|e| OrchestratorError::Internal(format!("the scoring thread failed: {e}")))
}

/// Grounded abstention: an answer with `support` under `level` (0: never) gives way to the
/// refusal. A refusal's own support is 1, so it never abstains.
pub fn abstains(support: f64, level: f64) -> bool {
    support < level
}

/// A request's own question-coverage level, if it sets one, lies in 0..1; `field` names it
/// in the error.
pub fn check_min_coverage(field: &str, level: Option<f64>) -> Result<(), OrchestratorError> {
    match level {
        Some(m) if !(0.0..=1.0).contains(&m) => Err(OrchestratorError::Validation(format!(
            "`{field}` {m} is not between 0 and 1"
        ))),
        _ => Ok(()),
    }
}

/// What the passages are worth before generating: as the prompt shows them, how much of the
/// question they cover, how many of its anchors each holds, and whether zhiku refuses from
/// them.
pub(crate) struct Evidence {
    /// Each passage as the prompt shows it (with its source and heading path, which often
    /// name what a short chunk is about).
    pub rendered: Vec<String>,
    pub coverage: f64,
    /// The question's anchor share: its best passage's ([`anchors`]).
    pub anchors: f64,
    /// Each passage's anchor share, in the order of the citations.
    pub passage_anchors: Vec<f64>,
    pub refuse: bool,
}

impl Evidence {
    /// Sets each citation's anchor share (`citations` in the order they were weighed).
    pub fn mark_anchors(&self, citations: &mut [Citation]) {
        for (citation, &share) in citations.iter_mut().zip(&self.passage_anchors) {
            citation.anchors = Some(share as f32);
        }
    }
}

/// The levels the evidence must reach with `--abstention evidence` (0: never refuse on it).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EvidenceLevels {
    pub min_coverage: f64,
    pub min_anchors: f64,
    /// Applies once the model has judged.
    pub min_relevance: f64,
}

impl EvidenceLevels {
    /// A request's own levels (checked by [`check_min_coverage`]), else the policy's.
    pub fn of(
        policy: &AskPolicy,
        min_coverage: Option<f64>,
        min_anchors: Option<f64>,
        min_relevance: Option<f64>,
    ) -> Self {
        Self {
            min_coverage: min_coverage.unwrap_or(policy.min_coverage),
            min_anchors: min_anchors.unwrap_or(policy.min_anchors),
            min_relevance: min_relevance.unwrap_or(policy.min_relevance),
        }
    }
}

/// Whether zhiku refuses from the evidence: no passage left, or (`--abstention evidence`)
/// coverage under `min_coverage`, an anchor share under `min_anchors`, or the model's
/// judgment of the passages, when it judged, under `min_relevance`
/// ([`relevance::refuses`]).
pub fn refuses_from_evidence(
    passages: usize,
    coverage: f64,
    anchors: f64,
    relevance: Option<f64>,
    abstention: Abstention,
    levels: EvidenceLevels,
) -> bool {
    passages == 0
        || (abstention == Abstention::Evidence
            && (anchors < levels.min_anchors
                || relevance::refuses(
                    coverage,
                    levels.min_coverage,
                    relevance,
                    levels.min_relevance,
                )))
}

/// Weighs `citations` against `question` at `levels` under `policy`'s abstention (the
/// model's judgment comes later: see [`refuses_from_evidence`]). Counting is CPU work in
/// proportion to the passages and the question: off the async threads.
pub(crate) async fn weigh_evidence(
    policy: &AskPolicy,
    question: &str,
    citations: &[Citation],
    levels: EvidenceLevels,
) -> Result<Evidence, OrchestratorError> {
    if citations.is_empty() {
        return Ok(Evidence {
            rendered: Vec::new(),
            coverage: 0.0,
            anchors: 0.0,
            passage_anchors: Vec::new(),
            refuse: true,
        });
    }
    let rendered: Vec<String> = citations.iter().map(context::render).collect();
    let asked = question.to_owned();
    let (rendered, coverage, anchors, passage_anchors) = tokio::task::spawn_blocking(move || {
        let texts: Vec<&str> = rendered.iter().map(String::as_str).collect();
        let coverage = question_coverage(&asked, &texts);
        let named = anchors::question_anchors(&asked);
        let shares = anchors::anchor_shares(&named, &texts);
        let best = anchors::best_share(&named, &shares);
        (rendered, coverage, best, shares)
    })
    .await
    .map_err(|e| OrchestratorError::Internal(format!("the scoring thread failed: {e}")))?;
    let refuse = refuses_from_evidence(
        rendered.len(),
        coverage,
        anchors,
        None,
        policy.abstention,
        levels,
    );
    if refuse {
        tracing::info!(
            coverage,
            min_coverage = levels.min_coverage,
            anchors,
            min_anchors = levels.min_anchors,
            "the passages cover too little of the question, or no passage names what it \
             asks about: refused without generating"
        );
    }
    Ok(Evidence {
        rendered,
        coverage,
        anchors,
        passage_anchors,
        refuse,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_are_the_pipelines_and_the_models() {
        assert!(is_refusal(REFUSAL));
        assert!(is_refusal("很抱歉，根据已知信息无法回答该问题。"));
        assert!(is_refusal("没有提供足够的相关信息"));
        assert!(!is_refusal("默认使用 FAISS。"));
    }

    #[test]
    fn support_is_high_for_grounded_answers_and_low_for_invented_ones() {
        let passages = [
            "从 0.3.0 版本起，Langchain-Chatchat 提供以 Python 库形式的安装方式，请执行 pip install langchain-chatchat -U",
            "默认使用 FAISS 知识库类型，默认监听地址 DEFAULT_BIND_HOST 为 127.0.0.1。",
        ];
        let grounded = "从 0.3.0 版本起，用 pip install langchain-chatchat -U 安装。";
        let restated = "默认监听地址 DEFAULT_BIND_HOST 是 127.0.0.1。";
        let invented =
            "在 Kubernetes 上配置 HorizontalPodAutoscaler，设置 CPU 利用率目标为百分之八十。";
        let g = support(grounded, &passages);
        let r = support(restated, &passages);
        let i = support(invented, &passages);
        assert!(g >= 0.7, "{g}");
        assert!(r >= SUPPORTED, "{r}");
        assert!(i < 0.2, "{i}");
        assert_eq!(support("FAISS", &passages), 1.0);
        assert_eq!(support("Milvus", &passages), 0.0);
        assert_eq!(support("。", &passages), 0.0);
        assert_eq!(units("Hello, 世界 v0.3"), ["hello", "世", "界", "v0", "3"]);
    }

    #[test]
    fn grounded_and_ungrounded_answers() {
        let passages =
            ["ChatGLM-6B 在 INT4 量化级别下最低只需 6GB 显存，可在消费级显卡上本地部署。"];
        let (s, grounded) = grounding("INT4 量化级别下最低只需 6GB 显存。", &passages);
        assert!(grounded && s >= 0.9, "{s}");
        let (s, grounded) = grounding(
            "需要在 Kubernetes 集群里配置三个副本和负载均衡器。",
            &passages,
        );
        assert!(!grounded && s < 0.2, "{s}");
        assert_eq!(
            grounding("根据已知信息无法回答该问题。", &passages),
            (1.0, true)
        );
    }

    #[test]
    fn only_answers_under_the_level_abstain() {
        let passages =
            ["ChatGLM-6B 在 INT4 量化级别下最低只需 6GB 显存，可在消费级显卡上本地部署。"];
        let (invented, _) = grounding(
            "需要在 Kubernetes 集群里配置三个副本和负载均衡器。",
            &passages,
        );
        let (right, _) = grounding("INT4 量化级别下最低只需 6GB 显存。", &passages);
        let (refusal, _) = grounding("根据已知信息无法回答该问题。", &passages);
        assert!(abstains(invented, 0.25));
        assert!(!abstains(right, 0.25));
        assert!(!abstains(refusal, 0.25));
        assert!(!abstains(invented, 0.0), "0: never");
    }

    #[test]
    fn the_evidence_refuses_on_no_passage_or_too_little_coverage_when_zhiku_decides() {
        let levels = EvidenceLevels {
            min_coverage: 0.35,
            min_anchors: 0.0,
            min_relevance: 0.5,
        };
        let refuses = |n, coverage, relevance, abstention| {
            refuses_from_evidence(n, coverage, 1.0, relevance, abstention, levels)
        };
        assert!(refuses(0, 1.0, None, Abstention::Model));
        assert!(refuses(2, 0.2, None, Abstention::Evidence));
        assert!(!refuses(2, 0.5, None, Abstention::Evidence));
        assert!(
            !refuses(2, 0.2, None, Abstention::Model),
            "the model decides"
        );
        // The model's judgment of the passages refuses on its own, covered or not.
        assert!(refuses(2, 0.9, Some(0.1), Abstention::Evidence));
        assert!(!refuses(2, 0.9, Some(0.9), Abstention::Evidence));
        assert!(refuses(2, 0.2, Some(0.9), Abstention::Evidence));
        assert!(
            !refuses(2, 0.9, Some(0.1), Abstention::Model),
            "the model decides"
        );
        // Anchors refuse on their own at their level; 0 never.
        let anchored = EvidenceLevels {
            min_anchors: 1.0,
            ..levels
        };
        assert!(refuses_from_evidence(
            2,
            0.9,
            0.5,
            None,
            Abstention::Evidence,
            anchored
        ));
        assert!(!refuses_from_evidence(
            2,
            0.9,
            1.0,
            None,
            Abstention::Evidence,
            anchored
        ));
        assert!(!refuses_from_evidence(
            2,
            0.9,
            0.0,
            None,
            Abstention::Evidence,
            levels
        ));
        assert!(!refuses_from_evidence(
            2,
            0.9,
            0.5,
            None,
            Abstention::Model,
            anchored
        ));
        assert!(check_min_coverage("min_coverage", Some(1.5)).is_err());
        assert!(check_min_coverage("min_coverage", Some(0.5)).is_ok());
        assert!(check_min_coverage("min_coverage", None).is_ok());
    }
}
