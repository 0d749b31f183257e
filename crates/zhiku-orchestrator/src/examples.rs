//! Retrieval-aware training examples made from a knowledge base itself, for `zhiku tune --kb`
//! (RAFT, Zhang et al. 2024): the model learns to answer from the passage that holds the
//! answer among distractors retrieved from the same base, and to refuse when only
//! distractors are there.
//!
//! For each sampled passage a question is read from the passage itself where it can be (a
//! table cell, [`table_question`]; with `statement_questions` a sentence's figure,
//! [`statement_question`]), and otherwise the teacher (the served chat model) writes a
//! question and a short answer; an answer whose key facts or wording the passage does not
//! state is dropped (the teacher got it wrong). The question is then retrieved as an Ask
//! retrieves it, the best other passages become the distractors, and the example is the
//! Ask's own prompt (the serving template, numbered passages, the question last) with the
//! teacher's answer, or, for a share of them, the distractors alone with the refusal as the
//! target. A share of the answer examples whose question names a size, bit width or GPU also
//! give a near-miss twin ([`near_miss`]): the same passages, the question changed to ask for
//! one that no passage states, the refusal the target.
//!
//! Sampling is seeded and keyed by passage (`document_id#chunk_index`), so a run that stopped
//! resumes where it was: the caller passes the keys already tried.

use std::collections::HashSet;

use serde::{Deserialize, Serialize};
use zhiku_proto::v1::{Filter, ListDocumentsRequest, ReaderScope, SearchMode, SearchRequest};

use crate::Orchestrator;
use crate::ask::Search;
use crate::downstream::Deadline;
use crate::error::OrchestratorError;
use crate::grounding::{is_refusal, support};
use crate::prompt::REFUSAL;
use crate::verify::{Verdict, check_answer};

pub mod distill;
pub mod evidence;
pub mod near_miss;
pub mod restate;
pub mod statement;
pub use distill::{Distilled, needs_distilling, states_fact};
pub use evidence::{EvidenceOutcome, evidence_quote, with_evidence};
pub use near_miss::{NearMiss, near_miss_question};
pub use restate::{is_question, restated_answer};
pub use statement::{statement_question, statement_questions};

/// Asks the teacher for one question the passage answers and its short answer.
/// The question names its subject (the product, model or setting) so that it stands without
/// the passage, as a user's question does, and asks for one fact that the answer copies.
pub const QUESTION_TEMPLATE: &str = "下面是知识库中的一段文字。请提出一个用户可能会问的具体问题，\
它的答案必须能在这段文字中找到，并且是一个具体的事实（数字、版本、命令、参数、路径或名称）；\
问题里要写明说的是哪个产品、模型或设置，不看这段文字也能读懂。再给出简短的答案：\
只写这个事实，照抄原文中的写法。\n\n\
文字：\n{passage}\n\n只按下面的格式输出两行：\n问题：……\n答案：……";

/// Passages shorter than this (characters) hold too little to ask about.
const MIN_PASSAGE_CHARS: usize = 40;
/// Passages read from one document when sampling (a Search returns at most 100).
const PASSAGES_PER_DOCUMENT: u32 = 100;
/// Lexical support an answer needs in its passage (the share of its bigrams the passage has).
const MIN_ANSWER_SUPPORT: f64 = 0.5;
/// Characters of a facts-only answer at most: a user's question asks for one fact, and a
/// target that copies a code block or a paragraph teaches the model to copy passages.
const MAX_FACT_ANSWER_CHARS: usize = 100;
/// Salts of the seeded draws, so that no two draws of one passage are the same number: the
/// passages kept per document are those with the lowest shuffle keys, and an unsalted
/// refusal draw made every one of them a refusal.
const REFUSAL_SALT: u64 = 0x7265_6675_7361_6c00;
const SLOT_SALT: u64 = 0xa11ce;
const TABLE_CELL_SALT: u64 = 0x7ab1e;
const PHRASING_SALT: u64 = 0x9e7a;
const NEAR_MISS_DRAW_SALT: u64 = 0x7717;
/// Questions read from one passage at most: more would make one passage's prompt most of
/// the examples.
const MAX_QUESTIONS_PER_PASSAGE: usize = 8;
/// Characters of a table cell at most for it to be asked about: one figure or name, not a
/// sentence.
const MAX_CELL_CHARS: usize = 40;

/// How many examples, of what kind.
#[derive(Debug, Clone, PartialEq)]
pub struct ExampleSettings {
    /// Examples to make at most (attempts stop when this many were kept).
    pub max_examples: usize,
    /// Distractor passages per example.
    pub distractors: usize,
    /// Share of examples, 0–1, whose passages are distractors only and whose target is the
    /// refusal.
    pub refusal_share: f64,
    /// Share of answer examples, 0–1, whose question can be changed into a near miss
    /// ([`near_miss_question`]) that also give that near miss over the same passages, the
    /// refusal its target.
    pub near_miss_share: f64,
    /// Passages tried per document at most, so that examples spread over the base.
    pub per_document: usize,
    /// Seeds which passages are tried, in which order, and where the answering passage sits.
    pub seed: u64,
    /// Tokens the teacher may write for a question and its answer.
    pub max_new_tokens: u32,
    /// Keep only answers that state a key fact (a number, version, flag, path or name):
    /// what users ask a knowledge base for, and what verification can check.
    pub facts_only: bool,
    /// Ask a passage holding markdown table rows about one of its cells without the teacher
    /// ([`table_question`]): right by construction, and the reading that small models get
    /// wrong most (the figure of the neighbouring row or column).
    pub table_questions: bool,
    /// Ask a passage with no table question about a figure of one of its sentences without
    /// the teacher ([`statement_question`]): `多少` in the figure's place, the figure the
    /// answer. Right by construction.
    pub statement_questions: bool,
    /// Have the teacher write a question where no question is read from the passage itself
    /// (table cells, sentences); without it such passages give no example.
    pub teacher_questions: bool,
    /// Questions at most from one passage whose questions are read from it (table cells,
    /// sentence figures): the others ask for other figures over the same prompt, each with
    /// its own answer, so that the model learns to read the question rather than the
    /// passage's one answer.
    pub questions_per_passage: usize,
    /// Answer targets restate what the question asks about before the fact
    /// ([`restated_answer`]): `MiniCPM 的 vllm 版本是 0.2.7。`, not `0.2.7`.
    pub restate_answers: bool,
}

impl Default for ExampleSettings {
    fn default() -> Self {
        Self {
            max_examples: 200,
            distractors: 3,
            refusal_share: 0.1,
            near_miss_share: 0.0,
            per_document: 8,
            seed: 0,
            max_new_tokens: 160,
            facts_only: true,
            table_questions: true,
            statement_questions: false,
            teacher_questions: true,
            questions_per_passage: 1,
            restate_answers: false,
        }
    }
}

impl ExampleSettings {
    pub fn validate(&self) -> Result<(), OrchestratorError> {
        let bad = |what: String| Err(OrchestratorError::Validation(what));
        if self.max_examples == 0 {
            return bad("max examples must be at least 1".into());
        }
        if !(0.0..=1.0).contains(&self.refusal_share) {
            return bad(format!(
                "refusal share {} must be between 0 and 1",
                self.refusal_share
            ));
        }
        if !(0.0..=1.0).contains(&self.near_miss_share) {
            return bad(format!(
                "near-miss share {} must be between 0 and 1",
                self.near_miss_share
            ));
        }
        if self.refusal_share > 0.0 && self.distractors == 0 {
            return bad("refusal examples need at least 1 distractor".into());
        }
        if self.distractors > 20 {
            return bad(format!("{} distractors: at most 20", self.distractors));
        }
        if !(1..=MAX_QUESTIONS_PER_PASSAGE).contains(&self.questions_per_passage) {
            return bad(format!(
                "{} questions per passage: between 1 and {MAX_QUESTIONS_PER_PASSAGE}",
                self.questions_per_passage
            ));
        }
        if self.per_document == 0 {
            return bad("passages per document must be at least 1".into());
        }
        Ok(())
    }
}

/// Whether the example teaches an answer or the refusal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ExampleKind {
    Answer,
    Refusal,
}

/// One turn of a sharegpt record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Turn {
    pub from: String,
    pub value: String,
}

/// Where an example came from (kept in the record for people; the trainer ignores it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExampleOrigin {
    /// `document_id#chunk_index` of the passage the question was written from.
    pub passage: String,
    pub source: String,
    pub kind: ExampleKind,
    /// The teacher's question and answer, before they were put in the prompt.
    pub question: String,
    pub answer: String,
    /// The target, where it is not `answer` itself: the answer restated
    /// ([`restated_answer`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restated: Option<String>,
    /// Where the target came from after distillation ([`distill`]), when it was run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub distilled: Option<Distilled>,
    /// The answer's support in its passage.
    pub support: f64,
    /// The question was read from a table row of the passage ([`table_question`]), not
    /// written by the teacher.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub from_table: bool,
    /// The question was read from a sentence of the passage ([`statement_question`]).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub from_statement: bool,
    /// For a near-miss refusal: the question its prompt asks (`question` with one
    /// qualifier changed) and the change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub near_miss: Option<NearMissOrigin>,
}

/// How a near-miss refusal example changed its question.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NearMissOrigin {
    pub asked: String,
    /// `72B → 110B`.
    pub changed: String,
}

/// One training example as a sharegpt record (`zhiku tune --data` reads it back): the
/// serving prompt's system instructions, its user turn, and the target.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainingExample {
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub system: Option<String>,
    pub conversations: Vec<Turn>,
    pub zhiku: ExampleOrigin,
}

/// Why a passage gave no example.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rejection {
    /// The teacher's output has no `问题：`/`答案：` lines.
    Unparsed,
    /// The teacher refused or answered with nothing.
    NoAnswer,
    /// A key fact of the answer is not in the passage (named).
    UnsupportedFact(String),
    /// Too little of the answer's wording is in the passage.
    WeakSupport,
    /// Retrieval found no passage to serve as a distractor.
    NoDistractors,
    /// The question already states the answer.
    AnswerInQuestion,
    /// The answer states no key fact (with facts only).
    NoKeyFact,
    /// The answer is longer than one fact needs (with facts only).
    LongAnswer,
    /// The teacher's "question" is a statement (named): a sentence copied from the passage.
    NotAQuestion(String),
    /// Retrieval for the question does not find its own passage: the question is too
    /// generic to pick it out of the base ("模型的名称是什么？"), so serving could not
    /// answer it either.
    NotRetrieved,
    /// Without the teacher: the passage has no table cell or sentence figure to ask about.
    NothingToAsk,
}

impl std::fmt::Display for Rejection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Rejection::Unparsed => write!(f, "the teacher's output has no 问题/答案 lines"),
            Rejection::NoAnswer => write!(f, "the teacher gave no answer"),
            Rejection::UnsupportedFact(fact) => {
                write!(f, "the answer's \"{fact}\" is not in the passage")
            }
            Rejection::WeakSupport => write!(f, "the passage does not state the answer"),
            Rejection::NoDistractors => write!(f, "no other passage to use as a distractor"),
            Rejection::AnswerInQuestion => write!(f, "the question already states the answer"),
            Rejection::NoKeyFact => write!(f, "the answer states no number, version or name"),
            Rejection::LongAnswer => write!(
                f,
                "the answer is longer than {MAX_FACT_ANSWER_CHARS} characters: not one fact"
            ),
            Rejection::NotAQuestion(question) => {
                write!(f, "the teacher's \"question\" is a statement: {question}")
            }
            Rejection::NotRetrieved => {
                write!(f, "retrieval for the question does not find its passage")
            }
            Rejection::NothingToAsk => write!(
                f,
                "no table cell or sentence with a figure to ask about (the teacher is off)"
            ),
        }
    }
}

/// What happened to one sampled passage.
#[derive(Debug, Clone, PartialEq)]
pub enum ExampleEvent {
    /// The sampling plan: passages that may be tried, in order.
    Planned { passages: usize },
    /// An example was made from a passage (`attempt` counts the passages tried from 1,
    /// this run and earlier ones; a passage whose answer has a near-miss twin gives two).
    Made {
        attempt: usize,
        example: Box<TrainingExample>,
    },
    Rejected {
        attempt: usize,
        passage: String,
        reason: Rejection,
    },
}

/// A passage that may be asked about.
#[derive(Debug, Clone)]
struct Candidate {
    key: String,
    source: String,
    text: String,
    /// The table header and caption above a passage cut below them.
    context: String,
}

impl Orchestrator {
    /// Makes up to `settings.max_examples` examples from `knowledge_base`, skipping the
    /// passages in `tried` (keys of an earlier run); `on_event` gets every kept example and
    /// every rejection as it happens (and can stop the run with an error).
    pub async fn make_examples(
        &self,
        knowledge_base: &str,
        settings: &ExampleSettings,
        tried: &HashSet<String>,
        already_made: usize,
        mut on_event: impl FnMut(ExampleEvent) -> Result<(), OrchestratorError>,
    ) -> Result<usize, OrchestratorError> {
        settings.validate()?;
        let deadline = Deadline::default();
        let candidates = self
            .sample_passages(knowledge_base, settings, deadline)
            .await?;
        on_event(ExampleEvent::Planned {
            passages: candidates.len(),
        })?;
        let mut made = already_made;
        let mut attempt = tried.len();
        for candidate in candidates {
            if made >= settings.max_examples {
                break;
            }
            if tried.contains(&candidate.key) {
                continue;
            }
            attempt += 1;
            match self
                .example_from(knowledge_base, &candidate, settings, deadline)
                .await?
            {
                Ok(examples) => {
                    // A near-miss twin past --max-examples is left out.
                    for example in examples.into_iter().take(settings.max_examples - made) {
                        made += 1;
                        on_event(ExampleEvent::Made {
                            attempt,
                            example: Box::new(example),
                        })?;
                    }
                }
                Err(reason) => on_event(ExampleEvent::Rejected {
                    attempt,
                    passage: candidate.key.clone(),
                    reason,
                })?,
            }
        }
        Ok(made)
    }

    /// The passages to try, in a seeded order: documents shuffled, up to `per_document`
    /// passages of each (shuffled), then all of them shuffled together.
    async fn sample_passages(
        &self,
        knowledge_base: &str,
        settings: &ExampleSettings,
        deadline: Deadline,
    ) -> Result<Vec<Candidate>, OrchestratorError> {
        let mut documents = Vec::new();
        let mut page_token = String::new();
        loop {
            let page = self
                .downstream
                .retriever
                .clone()
                .list_documents(deadline.request(ListDocumentsRequest {
                    readable_by: Some(every_reader()),
                    knowledge_base: knowledge_base.to_owned(),
                    page_size: 1000,
                    page_token,
                }))
                .await
                .map_err(OrchestratorError::downstream("retriever"))?
                .into_inner();
            documents.extend(page.documents);
            if page.next_page_token.is_empty() {
                break;
            }
            page_token = page.next_page_token;
        }
        if documents.is_empty() {
            return Err(OrchestratorError::Validation(format!(
                "knowledge base {knowledge_base} has no documents to make examples from: \
                 ingest some first (documents with readers are left out: an adapter bound to \
                 the knowledge base answers every reader, so it learns only from what every \
                 reader may read)"
            )));
        }
        shuffle(&mut documents, settings.seed, |d| d.document_id.as_str());
        // Three tries per wanted example is enough when a third of the teacher's answers
        // survive the checks; the documents beyond that are not read. Without the teacher a
        // try costs no generation, and most prose passages hold no figure to ask about: read
        // every document.
        let wanted = if settings.teacher_questions {
            settings.max_examples.saturating_mul(3)
        } else {
            usize::MAX
        };
        let mut candidates = Vec::new();
        for document in documents {
            if candidates.len() >= wanted {
                break;
            }
            let mut passages: Vec<Candidate> = self
                .document_passages(
                    knowledge_base,
                    &document.document_id,
                    &document.source,
                    deadline,
                )
                .await?
                .into_iter()
                .filter(|c| c.text.chars().count() >= MIN_PASSAGE_CHARS)
                .collect();
            shuffle(&mut passages, settings.seed, |c| c.key.as_str());
            passages.truncate(settings.per_document);
            candidates.extend(passages);
        }
        shuffle(&mut candidates, settings.seed ^ 0x5eed, |c| c.key.as_str());
        Ok(candidates)
    }

    /// Up to 100 passages of one document: a dense search restricted to it (its source as the
    /// query, so every passage of the document qualifies whatever it scores).
    async fn document_passages(
        &self,
        knowledge_base: &str,
        document_id: &str,
        source: &str,
        deadline: Deadline,
    ) -> Result<Vec<Candidate>, OrchestratorError> {
        let query = if source.is_empty() {
            document_id
        } else {
            source
        };
        let vector = self.embed_query(query, deadline).await?;
        let hits = self
            .downstream
            .retriever
            .clone()
            .search(deadline.request(SearchRequest {
                knowledge_base: knowledge_base.to_owned(),
                vector,
                top_k: PASSAGES_PER_DOCUMENT,
                filter: Some(Filter {
                    document_ids: vec![document_id.to_owned()],
                    ..Default::default()
                }),
                mode: SearchMode::Dense as i32,
                ..Default::default()
            }))
            .await
            .map_err(OrchestratorError::downstream("retriever"))?
            .into_inner()
            .hits;
        // In the order of the hits: the caller's shuffle does not depend on it.
        Ok(hits
            .into_iter()
            .filter_map(|hit| hit.passage)
            .map(|p| Candidate {
                key: passage_key(&p.document_id, p.chunk_index),
                source: p.source,
                text: p.text,
                context: p.context,
            })
            .collect())
    }

    /// One example from one passage, or why none.
    async fn example_from(
        &self,
        knowledge_base: &str,
        candidate: &Candidate,
        settings: &ExampleSettings,
        deadline: Deadline,
    ) -> Result<Result<Vec<TrainingExample>, Rejection>, OrchestratorError> {
        let (text, seed, key) = (&candidate.text, settings.seed, &candidate.key);
        let mut read = Vec::new();
        if settings.table_questions {
            read = table_questions(text, &candidate.context, seed, key);
        }
        let from_table = !read.is_empty();
        if read.is_empty() && settings.statement_questions {
            read = statement_questions(text, seed, key);
        }
        let from_statement = !from_table && !read.is_empty();
        let (question, answer) = match read.first().cloned() {
            Some(asked) => asked,
            None if !settings.teacher_questions => return Ok(Err(Rejection::NothingToAsk)),
            None => {
                let written = self
                    .teacher_question(&candidate.text, settings.max_new_tokens, deadline)
                    .await?;
                let Some(asked) = parse_question_answer(&written) else {
                    return Ok(Err(Rejection::Unparsed));
                };
                if !is_question(&asked.0) {
                    return Ok(Err(Rejection::NotAQuestion(asked.0)));
                }
                asked
            }
        };
        let answer_support = match screen_answer(&question, &answer, &candidate.text, settings) {
            Ok(support) => support,
            Err(rejection) => return Ok(Err(rejection)),
        };
        // The target restated, with `restate_answers`: the first question's and its siblings'.
        let restate = |question: &str, answer: &str| {
            settings
                .restate_answers
                .then(|| restated_target(question, answer, &candidate.text))
                .flatten()
        };
        let restated = restate(&question, &answer);

        let retrieved = self
            .retrieve(
                Search {
                    knowledge_base,
                    question: &question,
                    top_k: (settings.distractors + 4) as u32,
                    score_threshold: Some(-1.0),
                    filter: Some(Filter {
                        readable_by: Some(every_reader()),
                        ..Default::default()
                    }),
                    mode: SearchMode::Hybrid,
                    rerank: Some(false),
                    rrf_k: None,
                },
                deadline,
            )
            .await?;
        let Some(own) = retrieved
            .citations
            .iter()
            .find(|c| passage_key(&c.document_id, c.chunk_index) == candidate.key)
        else {
            return Ok(Err(Rejection::NotRetrieved));
        };
        // Passages as the Ask's prompt shows them: source, heading path, table context.
        let own = crate::context::render(own);
        // A distractor must not answer the question too: one that states the answer would
        // teach the model to refuse (or to cite) the wrong way.
        let distractors: Vec<String> = retrieved
            .citations
            .iter()
            .filter(|c| passage_key(&c.document_id, c.chunk_index) != candidate.key)
            .filter(|c| support(&answer, &[&c.text]) < MIN_ANSWER_SUPPORT)
            .map(crate::context::render)
            .take(settings.distractors)
            .collect();
        if settings.distractors > 0 && distractors.is_empty() {
            return Ok(Err(Rejection::NoDistractors));
        }

        let kind = example_kind(settings.seed, &candidate.key, settings.refusal_share);
        let mut passages: Vec<&str> = distractors.iter().map(String::as_str).collect();
        if kind == ExampleKind::Answer {
            let slot = (mix(settings.seed ^ SLOT_SALT, &candidate.key)
                % (passages.len() as u64 + 1)) as usize;
            passages.insert(slot, &own);
        }
        let numbered: Vec<(u32, &str)> = passages
            .iter()
            .enumerate()
            .map(|(i, p)| (i as u32 + 1, *p))
            .collect();
        // One example over `numbered`: `origin` the question and answer it was made for,
        // `asked` the question its prompt asks.
        let example = |origin: &Asked, asked: &str, kind: ExampleKind, near_miss| TrainingExample {
            system: self.template.system().map(str::to_owned),
            conversations: vec![
                Turn {
                    from: "human".into(),
                    value: self.template.render_numbered(&numbered, asked),
                },
                Turn {
                    from: "gpt".into(),
                    value: match kind {
                        ExampleKind::Answer => origin
                            .restated
                            .clone()
                            .unwrap_or_else(|| origin.answer.clone()),
                        ExampleKind::Refusal => REFUSAL.to_owned(),
                    },
                },
            ],
            zhiku: ExampleOrigin {
                passage: candidate.key.clone(),
                source: candidate.source.clone(),
                kind,
                question: origin.question.clone(),
                answer: origin.answer.clone(),
                restated: origin
                    .restated
                    .clone()
                    .filter(|_| kind == ExampleKind::Answer),
                distilled: None,
                support: origin.support,
                from_table,
                from_statement,
                near_miss,
            },
        };
        let first = Asked {
            question: question.clone(),
            answer: answer.clone(),
            restated: restated.clone(),
            support: answer_support,
        };
        let mut examples = vec![example(&first, &question, kind, None)];
        // The twin: the same passages, asked for what none of them states.
        if let Some(miss) = near_miss_twin(settings, &candidate.key, kind, &question, &passages) {
            let origin = NearMissOrigin {
                asked: miss.question.clone(),
                changed: format!("{} → {}", miss.replaced, miss.by),
            };
            examples.push(example(
                &first,
                &miss.question,
                ExampleKind::Refusal,
                Some(origin),
            ));
        }
        // Siblings: other figures of the same passage asked over the same prompt, each with
        // its own answer, so that the question, not the passage, decides the answer.
        if kind == ExampleKind::Answer {
            let mut answers = vec![answer.clone()];
            for (asked, cell) in read.iter().skip(1) {
                if answers.len() >= settings.questions_per_passage {
                    break;
                }
                let stated_elsewhere = || {
                    distractors
                        .iter()
                        .any(|d| support(cell, &[d.as_str()]) >= MIN_ANSWER_SUPPORT)
                };
                if answers.contains(cell) || stated_elsewhere() {
                    continue;
                }
                let Ok(support) = screen_answer(asked, cell, &candidate.text, settings) else {
                    continue;
                };
                answers.push(cell.clone());
                let sibling = Asked {
                    question: asked.clone(),
                    answer: cell.clone(),
                    restated: restate(asked, cell),
                    support,
                };
                examples.push(example(&sibling, asked, kind, None));
            }
        }
        Ok(Ok(examples))
    }

    async fn teacher_question(
        &self,
        passage: &str,
        max_new_tokens: u32,
        deadline: Deadline,
    ) -> Result<String, OrchestratorError> {
        self.complete_greedy(
            QUESTION_TEMPLATE.replacen("{passage}", passage, 1),
            max_new_tokens,
            deadline,
        )
        .await
    }
}

/// A question and the target made for it, before they are put in a prompt.
struct Asked {
    question: String,
    answer: String,
    restated: Option<String>,
    support: f64,
}

/// What the teacher got wrong, read from its question, its answer and the passage: the
/// answer's support in the passage when the example may be kept.
fn screen_answer(
    question: &str,
    answer: &str,
    passage: &str,
    settings: &ExampleSettings,
) -> Result<f64, Rejection> {
    if answer.is_empty() || is_refusal(answer) {
        return Err(Rejection::NoAnswer);
    }
    if question_states_answer(question, answer) {
        return Err(Rejection::AnswerInQuestion);
    }
    let check = check_answer(answer, &[passage], "");
    if check.verdict == Verdict::UnsupportedKeyFact {
        let fact = check
            .unsupported
            .first()
            .map(|u| u.fact.text.clone())
            .unwrap_or_default();
        return Err(Rejection::UnsupportedFact(fact));
    }
    if settings.facts_only && check.facts.is_empty() {
        return Err(Rejection::NoKeyFact);
    }
    if settings.facts_only && answer.chars().count() > MAX_FACT_ANSWER_CHARS {
        return Err(Rejection::LongAnswer);
    }
    let answer_support = support(answer, &[passage]);
    if answer_support < MIN_ANSWER_SUPPORT {
        return Err(Rejection::WeakSupport);
    }
    Ok(answer_support)
}

/// The answer restated as a statement of the question ([`restated_answer`]), where the
/// statement states no key fact that neither the passage nor the question does (the
/// question's words are what it adds).
fn restated_target(question: &str, answer: &str, passage: &str) -> Option<String> {
    restated_answer(question, answer)
        .filter(|target| check_answer(target, &[passage], question).verdict == Verdict::Supported)
}

/// A question about one cell of a markdown table row in `text`, and the cell as its answer:
/// made without a teacher, so right by construction. The row's header is the table's own
/// header row in `text`, or, for a passage cut below it, the one its `context` carries. The
/// row is named by its leading cells up to the first figure (`数学 GSM8K`; a ditto mark takes
/// the label of the row above), the column by its header; the cell asked about holds a digit
/// (a figure, a size, a version) and is short. Which cell, and which of a few phrasings, is
/// drawn from `seed` and `key`. None when no row has such a cell.
pub fn table_question(text: &str, context: &str, seed: u64, key: &str) -> Option<(String, String)> {
    table_questions(text, context, seed, key).into_iter().next()
}

/// Every cell of `text` that [`table_question`] may ask about, as (question, cell), the one
/// it asks first and the others after it in the table's order.
pub fn table_questions(text: &str, context: &str, seed: u64, key: &str) -> Vec<(String, String)> {
    use zhiku_text::markdown::{
        context_header, fence_marker, is_ditto, is_table_delimiter, row_cells,
    };
    let lines: Vec<&str> = text.lines().collect();
    let mut header: Option<Vec<String>> = context_header(context).map(row_cells);
    let mut label_above: Option<String> = None;
    let mut fence = false;
    // (row name, column name, cell)
    let mut cells: Vec<(String, String, String)> = Vec::new();
    let mut k = 0;
    while k < lines.len() {
        let line = lines[k].trim();
        if fence_marker(line).is_some() {
            fence = !fence;
            header = None;
            k += 1;
            continue;
        }
        if fence || !line.contains('|') {
            header = None;
            label_above = None;
            k += 1;
            continue;
        }
        if lines.get(k + 1).is_some_and(|l| is_table_delimiter(l)) {
            header = Some(row_cells(line));
            label_above = None;
            k += 2;
            continue;
        }
        k += 1;
        let row = row_cells(line);
        let Some(names) = header
            .as_ref()
            .filter(|h| h.len() == row.len() && row.len() >= 2)
        else {
            continue;
        };
        let plain_row: Vec<String> = row.iter().map(|c| plain_cell(c)).collect();
        let is_figure = |c: &str| c.starts_with(|ch: char| ch.is_ascii_digit());
        let label_cells = plain_row
            .iter()
            .take_while(|c| !is_figure(c))
            .take(2)
            .count();
        if label_cells == 0 {
            continue;
        }
        let first = if is_ditto(&plain_row[0]) {
            match &label_above {
                Some(above) => above.clone(),
                None => continue,
            }
        } else {
            label_above = Some(plain_row[0].clone());
            plain_row[0].clone()
        };
        let label = std::iter::once(&first)
            .chain(&plain_row[1..label_cells])
            .filter(|c| !c.is_empty())
            .cloned()
            .collect::<Vec<_>>()
            .join(" ");
        for (name, cell) in names.iter().zip(&plain_row).skip(label_cells) {
            let name = plain_cell(name);
            let asked = !name.is_empty()
                && !is_ditto(&name)
                && name != label
                && cell.chars().any(|ch| ch.is_ascii_digit())
                && cell.chars().count() <= MAX_CELL_CHARS
                && !label.contains(cell.as_str());
            if asked {
                cells.push((label.clone(), name, cell.clone()));
            }
        }
    }
    put_drawn_first(&mut cells, seed ^ TABLE_CELL_SALT, key);
    cells
        .into_iter()
        .enumerate()
        .map(|(k, (row, column, cell))| {
            // The first keeps the passage's own phrasing draw; the others draw their own.
            let draw = match k {
                0 => mix(seed ^ PHRASING_SALT, key),
                _ => mix(seed ^ PHRASING_SALT, &format!("{key}/{k}")),
            };
            let question = match draw % 3 {
                0 => format!("{row} 的 {column} 是多少？"),
                1 => format!("{row} 在 {column} 上是多少？"),
                _ => format!("表格里 {row} 对应的 {column} 是多少？"),
            };
            (question, cell)
        })
        .collect()
}

/// A table cell without its markdown emphasis, code marks, HTML tags and link targets
/// (`[Qwen2](https://…)` is `Qwen2`).
fn plain_cell(cell: &str) -> String {
    // A footnote mark (`<sup>1</sup>`) is not part of what the cell names.
    let mut cell = cell.to_owned();
    while let Some(start) = cell.find("<sup>") {
        let Some(len) = cell[start..].find("</sup>") else {
            break;
        };
        cell.replace_range(start..start + len + "</sup>".len(), "");
    }
    let chars: Vec<char> = cell.chars().collect();
    let mut out = String::with_capacity(cell.len());
    let mut in_tag = false;
    let mut k = 0;
    while k < chars.len() {
        let ch = chars[k];
        k += 1;
        match ch {
            '<' => in_tag = true,
            '>' if in_tag => in_tag = false,
            _ if in_tag => {}
            '*' | '`' | '[' => {}
            // `](url)`: the link's target is not what the cell says.
            ']' => {
                if chars.get(k) == Some(&'(') {
                    while k < chars.len() && chars[k] != ')' {
                        k += 1;
                    }
                    k += 1;
                }
            }
            _ => out.push(ch),
        }
    }
    out.trim().to_owned()
}

/// The documents every reader of a knowledge base may read: those without readers. An
/// adapter bound to the knowledge base answers every caller, so its examples (passages and
/// distractors alike) come only from these; a group's document would leak through it.
fn every_reader() -> ReaderScope {
    ReaderScope { groups: Vec::new() }
}

/// `document_id#chunk_index`: a passage's key in the examples file.
pub fn passage_key(document_id: &str, chunk_index: u32) -> String {
    format!("{document_id}#{chunk_index}")
}

/// The question and the answer of the teacher's output: the text after `问题：` up to the
/// end of its line, and after `答案：` to the end of the output (markdown bold and list marks
/// trimmed). None when either is missing or the question is empty.
pub fn parse_question_answer(output: &str) -> Option<(String, String)> {
    let output = output.replace("**", "");
    let output = output.as_str();
    let after = |label: &str| -> Option<usize> {
        [format!("{label}："), format!("{label}:")]
            .iter()
            .filter_map(|l| output.find(l.as_str()).map(|i| i + l.len()))
            .min()
    };
    let q_start = after("问题")?;
    let a_start = after("答案")?;
    if a_start <= q_start {
        return None;
    }
    let clean = |s: &str| {
        s.trim()
            .trim_matches(|c: char| c == '*' || c == '-' || c == '#')
            .trim()
            .to_owned()
    };
    let question_text = output[q_start..].lines().next().unwrap_or_default();
    let question = clean(question_text);
    let answer = clean(&output[a_start..]);
    // A second question the teacher went on to write is not part of this answer.
    let answer = match answer.find("问题") {
        Some(i) => clean(&answer[..i]),
        None => answer,
    };
    if question.is_empty() || question.chars().count() > 200 || answer.chars().count() > 400 {
        return None;
    }
    Some((question, answer))
}

/// SplitMix64 of the seed and a key's FNV-1a hash: the same on every machine and release.
fn mix(seed: u64, key: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    let mut z = seed ^ h;
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A draw in [0, 1) fixed by the seed and the key.
fn unit_draw(seed: u64, key: &str) -> f64 {
    (mix(seed, key) >> 11) as f64 / (1u64 << 53) as f64
}

/// Whether the question already holds all of the answer's wording: the teacher copied one
/// sentence into both lines, and the example would teach nothing. An answer that restates
/// the question and adds its fact is kept.
fn question_states_answer(question: &str, answer: &str) -> bool {
    support(answer, &[question]) >= 1.0
}

/// Whether the passage `key` makes a refusal example: a draw of its own salt, independent of
/// the shuffles that chose the passage.
fn example_kind(seed: u64, key: &str, refusal_share: f64) -> ExampleKind {
    if unit_draw(seed ^ REFUSAL_SALT, key) < refusal_share {
        ExampleKind::Refusal
    } else {
        ExampleKind::Answer
    }
}

/// The near-miss twin of the example made from passage `key`: for an answer example drawn
/// into `settings.near_miss_share`, its question changed into a near miss over the same
/// `passages` when it can be.
fn near_miss_twin(
    settings: &ExampleSettings,
    key: &str,
    kind: ExampleKind,
    question: &str,
    passages: &[&str],
) -> Option<NearMiss> {
    let drawn = unit_draw(settings.seed ^ NEAR_MISS_DRAW_SALT, key) < settings.near_miss_share;
    (kind == ExampleKind::Answer && drawn)
        .then(|| near_miss_question(question, passages, settings.seed, key))
        .flatten()
}

/// Moves the item drawn by `seed` and `key` to the front, the others following it in their
/// order (wrapping round): the one asked about first, then its siblings.
fn put_drawn_first<T>(items: &mut [T], seed: u64, key: &str) {
    if !items.is_empty() {
        let first = (mix(seed, key) % items.len() as u64) as usize;
        items.rotate_left(first);
    }
}

/// Orders `items` by a seeded hash of each one's key: a shuffle that does not depend on the
/// order the items came in.
fn shuffle<T>(items: &mut [T], seed: u64, key: impl Fn(&T) -> &str) {
    items.sort_by_cached_key(|item| mix(seed, key(item)));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn question_and_answer_are_read_from_the_teachers_lines() {
        let (q, a) =
            parse_question_answer("问题：ChatGLM-6B 在 INT4 下需要多少显存？\n答案：6GB。")
                .unwrap();
        assert_eq!(q, "ChatGLM-6B 在 INT4 下需要多少显存？");
        assert_eq!(a, "6GB。");
        let (q, a) =
            parse_question_answer("**问题**: 默认端口是什么？\n**答案**: 7861\n\n问题：再来一个")
                .unwrap();
        assert_eq!(q, "默认端口是什么？");
        assert_eq!(a, "7861");
    }

    #[test]
    fn a_table_row_gives_a_question_about_one_cell_and_the_cell() {
        let table = "| **Model** | GSM8K | MATH |\n|---|---|---|\n\
                     | **Baichuan-13B-Base** | 26.76 | 4.84 |\n| **Baichuan2-13B-Base** | 52.77 | 10.08 |";
        let cells = ["26.76", "4.84", "52.77", "10.08"];
        let mut seen = std::collections::HashSet::new();
        for seed in 0..40 {
            let (q, a) = table_question(table, "", seed, "b.md#3").expect("a question");
            assert!(cells.contains(&a.as_str()), "{q} {a}");
            // The question names the cell's row and column, and only they hold the answer.
            let (row, column) = match a.as_str() {
                "26.76" => ("Baichuan-13B-Base", "GSM8K"),
                "4.84" => ("Baichuan-13B-Base", "MATH"),
                "52.77" => ("Baichuan2-13B-Base", "GSM8K"),
                _ => ("Baichuan2-13B-Base", "MATH"),
            };
            assert!(q.contains(row) && q.contains(column), "{q} {a}");
            assert!(!q.contains('*') && !q.contains(&a), "{q}");
            seen.insert(a);
        }
        assert_eq!(seen.len(), 4, "seeds reach every cell: {seen:?}");
        // The same seed and key: the same question.
        assert_eq!(
            table_question(table, "", 7, "b.md#3"),
            table_question(table, "", 7, "b.md#3")
        );
    }

    #[test]
    fn a_passage_cut_below_its_header_is_asked_with_the_header_it_carries() {
        let rows = "| 数学 | GSM8K | 4-shot | 54.9 | 18.4 |\n| - | MATH | 4-shot | 11.2 | 3.5 |";
        let context = "评测结果如下：\n| 类别 | 数据集 | 设置 | XVERSE-13B-2 | XVERSE-13B |";
        for seed in 0..20 {
            let (q, a) = table_question(rows, context, seed, "x.md#9").expect("a question");
            // Row names stop at the first figure: "4-shot" is a cell, not part of the name.
            match a.as_str() {
                "54.9" => assert!(
                    q.contains("数学 GSM8K") && q.contains("XVERSE-13B-2"),
                    "{q}"
                ),
                "18.4" => assert!(q.contains("数学 GSM8K") && q.contains("XVERSE-13B "), "{q}"),
                // A ditto mark takes the first cell of the row above.
                "11.2" | "3.5" => assert!(q.contains("数学 MATH"), "{q}"),
                "4-shot" => assert!(q.contains("设置"), "{q}"),
                other => panic!("{other}: {q}"),
            }
        }
        // Without the header, the rows name no columns.
        assert_eq!(table_question(rows, "", 1, "x.md#9"), None);
    }

    #[test]
    fn cells_are_read_without_markup() {
        assert_eq!(
            plain_cell(" [Qwen2 (Code/Math)](https://huggingface.co/Qwen) "),
            "Qwen2 (Code/Math)"
        );
        assert_eq!(plain_cell("**7B**<sup>1</sup> <b>x</b>"), "7B x");
        assert_eq!(plain_cell("`--port` [x]"), "--port x");
    }

    #[test]
    fn every_cell_is_listed_with_the_asked_one_first() {
        let table = "| 模型 | 显存 | 速度 |\n|---|---|---|\n| ChatGLM-6B | 13GB | 20 token/s |\n\
                     | Qwen-7B | 16GB | 25 token/s |";
        for seed in 0..8 {
            let all = table_questions(table, "", seed, "t.md#1");
            assert_eq!(all.len(), 4, "{all:?}");
            assert_eq!(
                all.first().cloned(),
                table_question(table, "", seed, "t.md#1")
            );
            let cells: HashSet<&str> = all.iter().map(|(_, c)| c.as_str()).collect();
            assert_eq!(cells.len(), 4, "{all:?}");
        }
    }

    #[test]
    fn text_code_and_cells_without_figures_give_no_table_question() {
        assert_eq!(table_question("部署需要 13GB 显存。", "", 1, "a#1"), None);
        let code = "```\n| a | b |\n|---|---|\n| x | 12 |\n```";
        assert_eq!(table_question(code, "", 1, "a#1"), None);
        let words = "| 名称 | 说明 |\n|---|---|\n| lora | 低秩适配 |";
        assert_eq!(table_question(words, "", 1, "a#1"), None);
    }

    #[test]
    fn output_without_both_lines_is_unparsed() {
        assert_eq!(parse_question_answer("这段文字讲了部署。"), None);
        assert_eq!(parse_question_answer("答案：6GB\n问题：多少显存？"), None);
        assert_eq!(parse_question_answer("问题：\n答案：6GB"), None);
    }

    #[test]
    fn draws_are_fixed_by_seed_and_key_and_spread() {
        assert_eq!(unit_draw(7, "a.md#3"), unit_draw(7, "a.md#3"));
        assert_ne!(unit_draw(7, "a.md#3"), unit_draw(8, "a.md#3"));
        let refusals = (0..1000)
            .filter(|i| unit_draw(1, &format!("doc#{i}")) < 0.2)
            .count();
        assert!(
            (150..250).contains(&refusals),
            "{refusals} of 1000 under 0.2"
        );
    }

    /// The passages sampling keeps (the first few of each document's shuffle) get refusals
    /// in the share asked for, not all of them.
    #[test]
    fn kept_passages_get_the_refusal_share() {
        let mut kept = Vec::new();
        for doc in 0..200 {
            let mut passages: Vec<String> = (0..30).map(|i| format!("doc{doc}#{i}")).collect();
            shuffle(&mut passages, 1, |s| s.as_str());
            passages.truncate(2);
            kept.extend(passages);
        }
        let refusals = kept
            .iter()
            .filter(|k| example_kind(1, k, 0.2) == ExampleKind::Refusal)
            .count();
        assert!(
            (50..110).contains(&refusals),
            "{refusals} of {} kept passages are refusals, 0.2 asked",
            kept.len()
        );
    }

    #[test]
    fn a_question_that_states_its_answer_is_caught() {
        let copied = "评测脚本及prompt已开源在我们的Github仓库中。";
        assert!(question_states_answer(copied, copied));
        assert!(question_states_answer("INT4 量化要 6GB 显存吗？", "6GB"));
        assert!(!question_states_answer("INT4 量化要多少显存？", "6GB"));
        assert!(!question_states_answer(
            "ChatGLM-6B 的 INT4 量化需要多少显存？",
            "INT4 量化需要 6GB 显存。"
        ));
        assert!(!question_states_answer(
            "ChatGLM-6B 在 INT4 量化等级下最低需要多少 GPU 显存？",
            "ChatGLM-6B 在 INT4 量化等级下最低需要 6 GB GPU 显存。"
        ));
    }

    #[test]
    fn answers_are_screened_for_a_supported_key_fact() {
        let passage = "在 FP16 精度下运行 ChatGLM-6B 需要 13GB 显存，INT4 量化后最低只需要 6GB。\
                       推荐使用 `--quantize 4` 参数启动。";
        let settings = ExampleSettings::default();
        let q = "ChatGLM-6B 用 INT4 量化最少要多少显存？";
        assert!(screen_answer(q, "6GB", passage, &settings).is_ok());
        assert!(screen_answer(q, "`--quantize 4`", passage, &settings).is_ok());
        assert_eq!(
            screen_answer(q, "8GB", passage, &settings),
            Err(Rejection::UnsupportedFact("8GB".into()))
        );
        // A sentence with no number, version, flag or name teaches no fact to look up.
        let vague = "量化后需要的显存更少。";
        assert_eq!(
            screen_answer(q, vague, passage, &settings),
            Err(Rejection::NoKeyFact)
        );
        let any = ExampleSettings {
            facts_only: false,
            ..settings.clone()
        };
        assert_ne!(
            screen_answer(q, vague, passage, &any),
            Err(Rejection::NoKeyFact)
        );
        let copied = format!(
            "```bash\npython serve.py --quantize 4\n```\n{}",
            "注意".repeat(50)
        );
        assert_eq!(
            screen_answer(q, &copied, &format!("{passage}{copied}"), &settings),
            Err(Rejection::LongAnswer)
        );
        assert_eq!(
            screen_answer(q, "根据已知信息无法回答该问题", passage, &settings),
            Err(Rejection::NoAnswer)
        );
    }

    #[test]
    fn a_restated_target_keeps_the_fact_or_stays_the_bare_answer() {
        let passage = "ChatGLM-6B 的 INT4 量化版本最低只需要 6 GB 显存。";
        assert_eq!(
            restated_target("ChatGLM-6B 用 INT4 量化要多少 GB 显存？", "6", passage).as_deref(),
            Some("ChatGLM-6B 用 INT4 量化要 6 GB 显存。")
        );
        // The question's unit would make the figure one that nothing states (6 MB).
        assert_eq!(
            restated_target("ChatGLM-6B 用 INT4 量化要多少 MB 显存？", "6", passage),
            None
        );
    }

    #[test]
    fn answer_examples_drawn_into_the_near_miss_share_get_a_twin() {
        let passage = "| 模型 | 显存 |\n|---|---|\n| Qwen-7B | 16GB |";
        let asked = "Qwen-7B 推理需要多少显存？";
        let twins = |share: f64, kind: ExampleKind| {
            let settings = ExampleSettings {
                near_miss_share: share,
                seed: 3,
                ..ExampleSettings::default()
            };
            (0..400)
                .filter_map(|i| {
                    near_miss_twin(&settings, &format!("d#{i}"), kind, asked, &[passage])
                })
                .collect::<Vec<_>>()
        };
        assert!(twins(0.0, ExampleKind::Answer).is_empty());
        assert!(twins(1.0, ExampleKind::Refusal).is_empty());
        let all = twins(1.0, ExampleKind::Answer);
        assert_eq!(all.len(), 400);
        assert!(all.iter().all(|m| m.replaced == "7B" && m.by != "7B"));
        let half = twins(0.5, ExampleKind::Answer).len();
        assert!((150..250).contains(&half), "{half} of 400 under 0.5");
        // A question with nothing to change has no twin.
        let settings = ExampleSettings {
            near_miss_share: 1.0,
            ..ExampleSettings::default()
        };
        assert_eq!(
            near_miss_twin(
                &settings,
                "d#0",
                ExampleKind::Answer,
                "默认端口是多少？",
                &[passage]
            ),
            None
        );
    }

    #[test]
    fn shuffle_does_not_depend_on_input_order() {
        let mut a = vec!["x#1", "x#2", "y#0", "z#5"];
        let mut b = vec!["z#5", "y#0", "x#2", "x#1"];
        shuffle(&mut a, 3, |s| s);
        shuffle(&mut b, 3, |s| s);
        assert_eq!(a, b);
    }

    #[test]
    fn settings_out_of_range_are_refused_with_the_reason() {
        let bad = |s: ExampleSettings| s.validate().unwrap_err().to_string();
        assert!(
            bad(ExampleSettings {
                refusal_share: 1.5,
                ..Default::default()
            })
            .contains("between 0 and 1")
        );
        assert!(
            bad(ExampleSettings {
                near_miss_share: -0.1,
                ..Default::default()
            })
            .contains("near-miss share -0.1 must be between 0 and 1")
        );
        assert!(
            bad(ExampleSettings {
                distractors: 0,
                ..Default::default()
            })
            .contains("distractor")
        );
        assert!(
            bad(ExampleSettings {
                max_examples: 0,
                ..Default::default()
            })
            .contains("at least 1")
        );
        for questions_per_passage in [0, 9] {
            assert!(
                bad(ExampleSettings {
                    questions_per_passage,
                    ..Default::default()
                })
                .contains("questions per passage: between 1 and 8")
            );
        }
        assert!(ExampleSettings::default().validate().is_ok());
    }

    #[test]
    fn an_example_reads_back_as_a_sharegpt_record() {
        let example = TrainingExample {
            system: Some("你是知识库问答助手。".into()),
            conversations: vec![
                Turn {
                    from: "human".into(),
                    value: "已知信息：\n[1] …\n\n问题：多少显存？".into(),
                },
                Turn {
                    from: "gpt".into(),
                    value: "6GB".into(),
                },
            ],
            zhiku: ExampleOrigin {
                passage: "a.md#0".into(),
                source: "a.md".into(),
                kind: ExampleKind::Answer,
                question: "多少显存？".into(),
                answer: "6GB".into(),
                restated: None,
                distilled: None,
                support: 1.0,
                from_table: false,
                from_statement: false,
                near_miss: None,
            },
        };
        let line = serde_json::to_string(&example).unwrap();
        assert!(line.contains("\"kind\":\"answer\""));
        // Written only when set, and read as unset when absent (files of earlier runs).
        assert!(!line.contains("from_table"));
        assert!(!line.contains("restated"));
        let back: TrainingExample = serde_json::from_str(&line).unwrap();
        assert_eq!(back, example);
    }
}
