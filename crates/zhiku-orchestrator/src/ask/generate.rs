//! Ask's last stages: the prompt (instructions in the system role, numbered passages and the
//! question last, the earlier turns that fit), the answer streamed from the generator (once
//! more with the article's template when it echoed the instructions), its grounding and its
//! fact-level verification.

use std::time::Instant;

use tokio_stream::StreamExt;
use zhiku_proto::v1::{
    Answer, AskEvent, Chat, Citation, GenerateRequest, KnowledgeBase, SamplingParams, Turn,
    Verification, ask_event, generate_request, generate_stream_response,
};

use zhiku_proto::limits::MAX_STOP_STRINGS;

use crate::config::{PassageOrder, Verify};
use crate::downstream::Deadline;
use crate::error::OrchestratorError;
use crate::grounding::is_refusal;
use crate::grounding::{abstains, grounding_of};
use crate::prompt::{PromptTemplate, REFUSAL};
use crate::verify::{echoes_prompt, states_a_figure};
use crate::{Events, Orchestrator};

use super::{ms, send};

impl Orchestrator {
    /// The conversation sent to the generator: `template` with the passages (`rendered`,
    /// numbered as `citations`, in --passage-order) and `question` (its instructions in the
    /// system role when it has them apart), after the earlier turns of `history` that fit.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn prompt_chat(
        &self,
        template: &PromptTemplate,
        history: &[Turn],
        citations: &[Citation],
        rendered: &[String],
        question: &str,
        max_new_tokens: u32,
        deadline: Deadline,
    ) -> Result<Chat, OrchestratorError> {
        let mut passages: Vec<(u32, &str)> = citations
            .iter()
            .zip(rendered)
            .map(|(c, r)| (c.number, r.as_str()))
            .collect();
        if self.args.ask.passage_order == PassageOrder::BestLast {
            passages.reverse();
        }
        let prompt = template.render_numbered(&passages, question);
        self.fit_conversation(
            template.system(),
            history,
            &prompt,
            max_new_tokens,
            deadline,
        )
        .await
    }

    /// Generates the answer to the prompt of `template` with `knowledge_base`'s adapter,
    /// sending each chunk as it comes. An answer that echoes the prompt's instructions is
    /// generated once more with the article's template (its chunks follow), and refused if
    /// that one echoes too. `draft` (sources, timings so far, coverage) is completed with
    /// the answer, its support, its fact-level verification (--verify) and, under
    /// --abstain-below or when verification withdraws it, the refusal in its place.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn generate_answer(
        &self,
        knowledge_base: &KnowledgeBase,
        history: &[Turn],
        rendered: &[String],
        sampling: SamplingParams,
        draft: Answer,
        started: Instant,
        deadline: Deadline,
        events: &Events<AskEvent>,
    ) -> Result<Answer, OrchestratorError> {
        let generate_started = Instant::now();
        let max_new_tokens = sampling
            .max_new_tokens
            .unwrap_or(self.args.ask.max_new_tokens);
        let question = draft.search_question.clone();
        let passages: Vec<&str> = draft.citations.iter().map(|c| c.text.as_str()).collect();
        let mut sampling = sampling;
        sampling.stop = with_passage_header_stops(sampling.stop, &draft.citations, rendered);
        let mut first_token_ms = None;
        let mut echo = None;
        let mut done = None;
        for template in [&self.template, &self.article_template] {
            let chat = self
                .prompt_chat(
                    template,
                    history,
                    &draft.citations,
                    rendered,
                    &question,
                    max_new_tokens,
                    deadline,
                )
                .await?;
            let generated = self
                .generate_streamed(
                    knowledge_base,
                    chat,
                    sampling.clone(),
                    started,
                    &mut first_token_ms,
                    deadline,
                    events,
                )
                .await?;
            echo = echoes_prompt(
                &generated.text,
                &question,
                &passages,
                &template.instructions(),
            );
            done = Some(generated);
            match &echo {
                None => break,
                Some(e) => tracing::info!(
                    reason = %e.reason,
                    draft = %done.as_ref().map_or("", |d| d.text.as_str()),
                    "the answer echoed the prompt"
                ),
            }
            if self.template.instructions() == self.article_template.instructions() {
                // Already the article's template: nothing else to try.
                break;
            }
        }
        let Some(mut done) = done else {
            return Err(OrchestratorError::Internal(
                "no answer was generated".into(),
            ));
        };
        let (verification, focused, table_cell) = match &echo {
            Some(echo) => (
                Verification {
                    checked: true,
                    withdrawn: true,
                    unsupported_facts: Vec::new(),
                    reason: format!(
                        "the answer echoed the prompt (its instructions or the question), also \
                         when generated again with the article's template: {}",
                        echo.reason
                    ),
                    echoed: true,
                    refocused: false,
                    units_dropped: false,
                    read_from_table: false,
                },
                None,
                None,
            ),
            None => {
                let checked = verification_of(
                    self.args.ask.verify,
                    &done.text,
                    &draft.citations,
                    &question,
                    Reading::First,
                )
                .await?;
                let mut verification = checked.verification;
                // The answer given was the regeneration after an echo.
                verification.echoed = done.regenerated;
                if let Some(bare) = checked.units_dropped {
                    done.text = bare;
                }
                (verification, checked.focused, checked.table_cell)
            }
        };
        let (done, verification) = self
            .refocus_if_misplaced(
                knowledge_base,
                history,
                focused,
                (&question, draft.anchors),
                (done, verification),
                (sampling, max_new_tokens),
                (started, &mut first_token_ms),
                deadline,
                events,
            )
            .await?;
        let (done, verification) = read_from_table_if_withdrawn(done, verification, table_cell);
        let mut timings = draft.timings.unwrap_or_default();
        timings.first_token_ms = first_token_ms.unwrap_or_else(|| ms(started));
        timings.generate_ms = ms(generate_started);
        timings.total_ms = ms(started);
        let (support, grounded) = grounding_of(&done.text, &draft.citations).await?;
        let abstained = abstains(support, self.args.ask.abstain_below);
        if abstained {
            tracing::info!(
                support,
                draft = %done.text,
                "grounded abstention: the answer was replaced by the refusal"
            );
        }
        if verification.withdrawn {
            tracing::info!(
                reason = %verification.reason,
                draft = %done.text,
                "the answer was withdrawn"
            );
        }
        let refused = abstained || verification.withdrawn;
        Ok(Answer {
            text: if refused { REFUSAL.into() } else { done.text },
            refused,
            verification: Some(verification),
            timings: Some(timings),
            finish_reason: done.finish_reason,
            prompt_tokens: done.prompt_tokens,
            generated_tokens: done.generated_tokens,
            support,
            grounded,
            ..draft
        })
    }

    /// When every unsupported key fact of the draft sat in the passages only in another table
    /// row or another model's document, reads the question once more from `focused`, the
    /// passages its verification narrowed to the question's rows and documents ([`refocus`]),
    /// its chunks streamed after the draft's. The second answer stands when it verifies against the
    /// narrowed passages; otherwise the draft keeps its verification, its reason extended.
    /// Anything else passes through unchanged.
    #[allow(clippy::too_many_arguments)]
    async fn refocus_if_misplaced(
        &self,
        knowledge_base: &KnowledgeBase,
        history: &[Turn],
        focused: Option<Vec<Citation>>,
        (question, anchors): (&str, f64),
        (draft, mut verification): (Generated, Verification),
        (sampling, max_new_tokens): (SamplingParams, u32),
        (started, first_token_ms): (Instant, &mut Option<f64>),
        deadline: Deadline,
        events: &Events<AskEvent>,
    ) -> Result<(Generated, Verification), OrchestratorError> {
        // Only when one passage names everything the question does: otherwise the question
        // may ask about what the passages lack (ChatGLM3-6B at INT8, where only ChatGLM-6B's
        // table has an INT8 row), and a narrowed reading would answer it from the wrong row.
        let named = anchors >= 1.0 - 1e-6;
        let (true, Some(focused)) = (named, focused) else {
            return Ok((draft, verification));
        };
        let rendered: Vec<String> = focused.iter().map(crate::context::render).collect();
        let chat = self
            .prompt_chat(
                &self.template,
                history,
                &focused,
                &rendered,
                question,
                max_new_tokens,
                deadline,
            )
            .await?;
        let mut second = self
            .generate_streamed(
                knowledge_base,
                chat,
                sampling,
                started,
                first_token_ms,
                deadline,
                events,
            )
            .await?;
        let texts: Vec<&str> = focused.iter().map(|c| c.text.as_str()).collect();
        let echo = echoes_prompt(
            &second.text,
            question,
            &texts,
            &self.template.instructions(),
        );
        let checked = match &echo {
            Some(_) => None,
            None => {
                let checked = verification_of(
                    self.args.ask.verify,
                    &second.text,
                    &focused,
                    question,
                    Reading::Second,
                )
                .await?;
                if let Some(bare) = checked.units_dropped {
                    second.text = bare;
                }
                Some(checked.verification)
            }
        };
        tracing::info!(
            draft = %draft.text,
            second = %second.text,
            stands = checked.as_ref().is_some_and(|v| v.unsupported_facts.is_empty()),
            "the draft's figure sat in another table row or document: read again from the \
             question's rows and documents"
        );
        // A second reading that drops the figure the draft got wrong evades the question.
        let wanted_figure = states_a_figure(&verification.unsupported_facts.join(" "));
        let answers = is_refusal(&second.text) || !wanted_figure || states_a_figure(&second.text);
        match checked {
            Some(v) if v.unsupported_facts.is_empty() && answers => Ok((
                second,
                Verification {
                    echoed: verification.echoed,
                    refocused: true,
                    ..v
                },
            )),
            other => {
                let why = match other {
                    Some(v) if !v.reason.is_empty() => v.reason,
                    Some(_) => "the answer names no figure".to_owned(),
                    None => "the answer echoed the prompt".to_owned(),
                };
                verification.refocused = true;
                verification.reason = format!(
                    "{}; read again from the rows and documents the question names: {why}",
                    verification.reason
                );
                Ok((draft, verification))
            }
        }
    }

    /// One generation of `chat`, its chunks sent on `events` as they come; `first_token_ms`
    /// set at the first of them (of any attempt).
    #[allow(clippy::too_many_arguments)]
    async fn generate_streamed(
        &self,
        knowledge_base: &KnowledgeBase,
        chat: Chat,
        sampling: SamplingParams,
        started: Instant,
        first_token_ms: &mut Option<f64>,
        deadline: Deadline,
        events: &Events<AskEvent>,
    ) -> Result<Generated, OrchestratorError> {
        let regenerated = first_token_ms.is_some();
        let generate = GenerateRequest {
            input: Some(generate_request::Input::Chat(chat)),
            sampling: Some(sampling),
            adapter: knowledge_base.adapter.clone(),
        };
        let mut stream = self
            .generate_for(knowledge_base, generate, deadline)
            .await?;
        // Chunks passed on: a generator lost after the first is not retried elsewhere.
        let mut chunks = 0;
        while let Some(event) = stream.next().await {
            let event = event.map_err(OrchestratorError::generation(chunks))?;
            match event.event {
                Some(generate_stream_response::Event::Chunk(chunk)) => {
                    first_token_ms.get_or_insert_with(|| ms(started));
                    chunks += 1;
                    send(events, ask_event::Event::Chunk(chunk)).await?;
                }
                Some(generate_stream_response::Event::Done(done)) => {
                    // An adapter trained evidence first quotes its line before the answer:
                    // the answer is what follows, and what verification reads.
                    let text = match crate::prompt::split_evidence(&done.text) {
                        (Some(quote), answer) => {
                            tracing::debug!(quote, "the answer quoted its evidence first");
                            answer.to_owned()
                        }
                        (None, _) => done.text,
                    };
                    return Ok(Generated {
                        text,
                        finish_reason: done.finish_reason,
                        prompt_tokens: done.prompt_tokens,
                        generated_tokens: done.generated_tokens,
                        regenerated,
                    });
                }
                None => {}
            }
        }
        Err(OrchestratorError::Downstream {
            service: "generator",
            status: tonic::Status::unavailable("the answer stream ended before its final event"),
        })
    }
}

/// `stops` (the caller's) and, in the room left, one stop string per passage that opens
/// with a header: a line break, then its marker and header as the prompt shows them
/// (`\n[2] （来源：`). A small model that copies a passage as its answer runs on into the
/// next passage's header; the answer ends there instead of taking that passage along and
/// naming its file. A reply that opens with a header has no line break before it and is
/// left to the echo check ([`echoes_prompt`]).
fn with_passage_header_stops(
    mut stops: Vec<String>,
    citations: &[Citation],
    rendered: &[String],
) -> Vec<String> {
    for (citation, passage) in citations.iter().zip(rendered) {
        if stops.len() >= MAX_STOP_STRINGS {
            break;
        }
        if let Some(label) = crate::context::header_label(passage) {
            let stop = format!("\n[{}] {label}", citation.number);
            if !stops.contains(&stop) {
                stops.push(stop);
            }
        }
    }
    stops
}

/// The draft with its figure read from the table cell the question names
/// ([`crate::verify::read_from_table`]), when verification withdrew it (a second reading,
/// if one was made, failed too) and such a cell was found; anything else unchanged.
fn read_from_table_if_withdrawn(
    mut done: Generated,
    verification: Verification,
    table_cell: Option<crate::verify::TableCellReading>,
) -> (Generated, Verification) {
    let (true, Some(reading)) = (verification.withdrawn, table_cell) else {
        return (done, verification);
    };
    tracing::info!(
        draft = %done.text,
        answer = %reading.answer,
        "the draft's figure sat in another cell of the table: read from the cell the question \
         names"
    );
    let reason = format!(
        "the draft's {} sat in another row or column of the table ({}); the cell the question \
         names gives {}",
        reading.draft_figure, verification.reason, reading.cell
    );
    done.text = reading.answer;
    (
        done,
        Verification {
            checked: true,
            withdrawn: false,
            unsupported_facts: Vec::new(),
            reason,
            echoed: verification.echoed,
            refocused: verification.refocused,
            units_dropped: false,
            read_from_table: true,
        },
    )
}

/// What one generation gave.
struct Generated {
    text: String,
    finish_reason: i32,
    prompt_tokens: u32,
    generated_tokens: u32,
    /// It followed an earlier attempt that echoed the instructions.
    regenerated: bool,
}

/// Which reading of the passages an answer is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reading {
    /// The first, against every cited passage.
    First,
    /// A second one, against the passages narrowed to the question
    /// ([`crate::verify::check_second_reading`]).
    Second,
}

/// What verifying an answer gave.
struct Checked {
    verification: Verification,
    /// On a first reading whose every unsupported key fact was misplaced, the citations
    /// narrowed for a second one ([`refocus`]).
    focused: Option<Vec<Citation>>,
    /// The answer with figures whose unit no passage states written bare
    /// ([`crate::verify::without_unstated_units`]), when that verified: the answer to give.
    units_dropped: Option<String>,
    /// On a first reading whose one unsupported figure sat in another cell of a table, the
    /// draft with the figure of the cell the question names
    /// ([`crate::verify::read_from_table`]): the answer to give when the draft is withdrawn.
    table_cell: Option<crate::verify::TableCellReading>,
}

/// The fact-level verification of `answer` against its passages and `question`
/// ([`crate::verify::check_answer_on_subject`], or for a second reading
/// [`crate::verify::check_second_reading`]), off the async threads, as `mode` says; a first
/// reading's check also decides whether to read again, and on what.
async fn verification_of(
    mode: Verify,
    answer: &str,
    citations: &[Citation],
    question: &str,
    reading: Reading,
) -> Result<Checked, OrchestratorError> {
    if mode == Verify::Off {
        return Ok(Checked {
            verification: Verification::default(),
            focused: None,
            units_dropped: None,
            table_cell: None,
        });
    }
    let citations = citations.to_vec();
    let (answer, question) = (answer.to_owned(), question.to_owned());
    tokio::task::spawn_blocking(move || {
        let texts: Vec<&str> = citations.iter().map(|c| c.text.as_str()).collect();
        let verified: Vec<std::borrow::Cow<'_, str>> =
            citations.iter().map(verified_text).collect();
        let read: Vec<&str> = verified.iter().map(|t| t.as_ref()).collect();
        let off_subject = off_subject(&citations, &question);
        let check_of = |answer: &str| match reading {
            Reading::First => {
                crate::verify::check_answer_on_subject(answer, &read, &off_subject, &question)
            }
            Reading::Second => {
                crate::verify::check_second_reading(answer, &read, &off_subject, &question)
            }
        };
        let check = check_of(&answer);
        if let Some(bare) = crate::verify::without_unstated_units(&answer, &check) {
            let again = check_of(&bare);
            if again.unsupported.is_empty() {
                return Checked {
                    verification: Verification {
                        units_dropped: true,
                        ..checked_verification(mode, &bare, again)
                    },
                    focused: None,
                    units_dropped: Some(bare),
                    table_cell: None,
                };
            }
        }
        let focused = match reading {
            Reading::First => refocus(&answer, &texts, &check, &below_best(&citations), &question)
                .map(|focus| {
                    citations
                        .iter()
                        .zip(focus)
                        .filter_map(|(c, text)| text.map(|text| Citation { text, ..c.clone() }))
                        .collect()
                }),
            Reading::Second => None,
        };
        let table_cell = match reading {
            Reading::First => {
                let documents: Vec<&str> = citations.iter().map(|c| c.source.as_str()).collect();
                crate::verify::read_from_table(
                    &answer,
                    &read,
                    &documents,
                    &off_subject,
                    &question,
                    &check,
                )
            }
            Reading::Second => None,
        };
        Checked {
            verification: checked_verification(mode, &answer, check),
            focused,
            units_dropped: None,
            table_cell,
        }
    })
    .await
    .map_err(|e| OrchestratorError::Internal(format!("verifying the answer failed: {e}")))
}

/// What verification reads of a passage: a passage cut inside a markdown table below its
/// header, with the header and row label its context carries
/// ([`zhiku_text::markdown::with_context_header`]), as the prompt shows its rows under the
/// header's column names; any other as it is.
fn verified_text(c: &Citation) -> std::borrow::Cow<'_, str> {
    match zhiku_text::markdown::with_context_header(&c.text, &c.context) {
        Some(headed) => std::borrow::Cow::Owned(headed),
        None => std::borrow::Cow::Borrowed(c.text.as_str()),
    }
}

/// The passages narrowed to the question's rows and passages
/// ([`crate::verify::focus_passages`]; `None` for a dropped one), when `check` (of `answer`)
/// found unsupported key facts and each sat in the passages only in the wrong place
/// ([`crate::verify::Unsupported::is_misplaced`]), and narrowing drops something yet leaves
/// a passage. `None` otherwise: an invented figure is not read again. The passages dropped
/// are those in `below_best` ([`below_best`]): a second reading sees only the passages that
/// name the question's subject best, not only their documents (one README's table for
/// another model, under that model's heading, is the neighbouring row that misled the first).
pub fn refocus(
    answer: &str,
    passages: &[&str],
    check: &crate::verify::FactCheck,
    below_best: &[bool],
    question: &str,
) -> Option<Vec<Option<String>>> {
    if crate::grounding::is_refusal(answer)
        || check.unsupported.is_empty()
        || !check.unsupported.iter().all(|u| u.why.is_misplaced())
    {
        return None;
    }
    let focused = crate::verify::focus_passages(passages, below_best, question);
    let narrowed = focused
        .iter()
        .zip(passages)
        .any(|(f, p)| f.as_deref() != Some(*p));
    (narrowed && focused.iter().any(Option::is_some)).then_some(focused)
}

/// A citation's anchor share; one that was not weighed counts as naming everything.
fn share(c: &Citation) -> f64 {
    c.anchors.map_or(1.0, f64::from)
}

/// The best anchor share among `citations` (0 for none).
fn best_share(citations: &[Citation]) -> f64 {
    citations.iter().map(share).fold(0.0, f64::max)
}

/// For each passage, whether it (with its source name and heading path) names what the
/// question asks about less well than the best passage does. A citation that was not
/// weighed counts as naming it.
pub fn below_best(citations: &[Citation]) -> Vec<bool> {
    let best = best_share(citations);
    citations.iter().map(|c| share(c) + 1e-9 < best).collect()
}

/// For each passage, whether its document is off the question's subject: it names what the
/// question asks about less well than the best passage does (a document's anchor share is its
/// best passage's: a file names its model once, in its title or a table's caption, not in
/// every passage), or it leaves out a model the question names that another document names
/// ([`crate::grounding::anchors::documents_missing_a_model`]: the Qwen README's INT4 figure
/// for a GLM-4-32B-0414 question, where each document holds half the question's anchors).
/// A citation that was not weighed counts as on the subject. When the question asks of a
/// benchmark, method or product that no passage names
/// ([`crate::grounding::anchors::unnamed_subject`]: MMBench where the table has MME), every
/// passage is off the subject.
pub fn off_subject(citations: &[Citation], question: &str) -> Vec<bool> {
    let rendered: Vec<String> = citations.iter().map(crate::context::render).collect();
    let texts: Vec<&str> = rendered.iter().map(String::as_str).collect();
    // The question asks of something that no passage names: every passage is about
    // something else ([`crate::grounding::anchors::unnamed_subject`]).
    if crate::grounding::anchors::unnamed_subject(question, &texts).is_some() {
        return vec![true; citations.len()];
    }
    let best = best_share(citations);
    let document = |source: &str| {
        citations
            .iter()
            .filter(|c| c.source == source)
            .map(share)
            .fold(0.0, f64::max)
    };
    citations
        .iter()
        .zip(crate::grounding::anchors::documents_missing_a_model(
            question,
            &texts,
            &citations
                .iter()
                .map(|c| c.source.as_str())
                .collect::<Vec<_>>(),
        ))
        .map(|(c, unnamed)| unnamed || document(&c.source) + 1e-9 < best)
        .collect()
}

/// [`verification_of`] itself: an answer whose model wrote the refusal claims nothing.
/// `off_subject` as [`off_subject`] gives it (empty: every passage counts).
pub fn verification(
    mode: Verify,
    answer: &str,
    passages: &[&str],
    off_subject: &[bool],
    question: &str,
) -> Verification {
    if mode == Verify::Off {
        return Verification::default();
    }
    let check = crate::verify::check_answer_on_subject(answer, passages, off_subject, question);
    checked_verification(mode, answer, check)
}

/// The verification `check` of `answer` gives under `mode`.
fn checked_verification(
    mode: Verify,
    answer: &str,
    check: crate::verify::FactCheck,
) -> Verification {
    if check.unsupported.is_empty() || crate::grounding::is_refusal(answer) {
        return Verification {
            checked: true,
            ..Default::default()
        };
    }
    let reason = check
        .unsupported
        .iter()
        .map(|u| u.reason.as_str())
        .collect::<Vec<_>>()
        .join("; ");
    Verification {
        checked: true,
        withdrawn: mode == Verify::Withdraw,
        unsupported_facts: check.unsupported.into_iter().map(|u| u.fact.text).collect(),
        reason: format!("unsupported key fact: {reason}"),
        echoed: false,
        refocused: false,
        units_dropped: false,
        read_from_table: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSAGE: &str =
        "| 量化等级 | 最低 GPU 显存 |\n| --- | --- |\n| FP16 | 13 GB |\n| INT4 | 6 GB |";
    const QUESTION: &str = "ChatGLM-6B 在 INT4 量化下最少要多少显存？";

    fn cited(source: &str, anchors: Option<f32>) -> Citation {
        Citation {
            source: source.into(),
            anchors,
            ..Default::default()
        }
    }

    /// A document's share is its best passage's: a passage of the model's own README that
    /// does not repeat the model's name stays on the subject; another model's document, whose
    /// best passage names less of the question, is off it; an unweighed citation counts as on.
    #[test]
    fn a_document_is_off_the_subject_when_its_best_passage_names_less() {
        let citations = [
            cited("chatglm-6b.md", Some(1.0)),
            cited("chatglm-6b.md", Some(0.25)),
            cited("qwen-72b.md", Some(0.5)),
            cited("qwen-72b.md", Some(0.5)),
            cited("notes.txt", None),
        ];
        assert_eq!(
            off_subject(&citations, "要多少显存？"),
            [false, false, true, true, false]
        );
        // When no passage names the subject fully, the best share sets the bar.
        let weaker = [cited("a.md", Some(0.5)), cited("b.md", Some(0.25))];
        assert_eq!(off_subject(&weaker, "要多少显存？"), [false, true]);
        assert!(off_subject(&[], "").is_empty());
        // Equal shares, but only one document names the question's model.
        let halves = [
            Citation {
                text: "| INT8 | 8 GB |".into(),
                ..cited("chatglm-6b--README.md", Some(0.5))
            },
            Citation {
                text: "ChatGLM3-6B 以 FP16 加载需要 13GB 显存。".into(),
                ..cited("chatglm3--README.md", Some(0.5))
            },
        ];
        assert_eq!(
            off_subject(&halves, "ChatGLM3-6B 用 INT8 要多少显存？"),
            [true, false]
        );
        // Passage by passage, the README's second passage names less than its first.
        assert_eq!(below_best(&citations), [false, true, true, true, false]);
    }

    /// A figure from the neighbouring row or another model's document is read again from the
    /// narrowed passages; an invented one, a refusal and a supported answer are not.
    #[test]
    fn only_a_misplaced_figure_is_read_again() {
        let other = "Qwen-72B 的 INT4 推理需要 48GB 显存。";
        let refocus =
            |answer: &str, passages: &[&str], (off, below): (&[bool], &[bool]), question| {
                let check = crate::verify::check_answer_on_subject(answer, passages, off, question);
                refocus(answer, passages, &check, below, question)
            };
        let neighbour = refocus("INT4 下需要 13 GB。", &[PASSAGE], (&[], &[]), QUESTION)
            .expect("13 GB is the FP16 row's");
        assert_eq!(neighbour.len(), 1);
        let table = neighbour[0].as_deref().unwrap_or_default();
        assert!(
            table.contains("6 GB") && !table.contains("13 GB"),
            "{table}"
        );
        let document = refocus(
            "需要 48GB。",
            &[PASSAGE, other],
            (&[false, true], &[false, true]),
            QUESTION,
        )
        .expect("48GB is another model's");
        assert_eq!(document[1], None);
        assert_eq!(
            refocus("需要 72GB。", &[PASSAGE], (&[], &[]), QUESTION),
            None
        );
        assert_eq!(
            refocus("需要 6 GB。", &[PASSAGE], (&[], &[]), QUESTION),
            None
        );
        assert_eq!(refocus(REFUSAL, &[PASSAGE], (&[], &[]), QUESTION), None);
        // A misplaced figure and an invented one together: not read again.
        assert_eq!(
            refocus("13 GB 或 72GB。", &[PASSAGE], (&[], &[]), QUESTION),
            None
        );
    }

    /// A passage cut below its table's header is verified with the header its context
    /// carries: its cells are read by column, as the prompt shows them (the column of the
    /// model's LLM is not the model's size; a figure from another column than the one the
    /// question names is not its answer).
    #[test]
    fn a_passage_cut_below_its_header_is_verified_with_the_header_from_its_context() {
        let check = |c: &Citation, answer: &str, question: &str| {
            let headed = verified_text(c);
            assert_ne!(headed, c.text.as_str(), "the passage starts inside a table");
            let raw = crate::verify::check_answer_on_subject(answer, &[&c.text], &[], question);
            let read = crate::verify::check_answer_on_subject(answer, &[&headed], &[], question);
            (raw.verdict, read.verdict)
        };
        use crate::verify::Verdict::{Supported, UnsupportedKeyFact};
        let cogvlm = Citation {
            text: "| CogVLM2-LLaMA3-Chinese (Ours) | ✅ | 8B | **780** | 42.8 |".into(),
            context: "| Model | Open Source | LLM Size | OCRbench | MMMU |".into(),
            ..Default::default()
        };
        let q = "中文版 CogVLM2（cogvlm2-llama3-chinese-chat-19B）在 OCRbench 上多少分？";
        assert_eq!(check(&cogvlm, "780", q), (UnsupportedKeyFact, Supported));
        let sizes = Citation {
            text: "| 7B | 12.91G | 3.80G |\n| 13B | 24.69G | 7.32G |".into(),
            context: "以 Chinese-LLaMA-2 为例：\n| 模型 | F16 | Q4_K |".into(),
            ..Default::default()
        };
        let q = "7B 模型用 Q4_K 量化以后有多大？";
        assert_eq!(check(&sizes, "12.91G", q), (Supported, UnsupportedKeyFact));
        assert_eq!(check(&sizes, "3.80G", q), (Supported, Supported));
        // Rows continuing the one above the passage (an empty first cell) are that row's:
        // tigerbot-70b-chat-4bit's 37 is no 8-bit size.
        let ditto = Citation {
            text: "|  | v3 | llama-2 | 37 |\n|  | v2 | llama-2 | 37 |".into(),
            context: "| Model | version | architecture | disk size (GB) |\n\
                      tigerbot-70b-chat-4bit"
                .into(),
            ..Default::default()
        };
        let q = "tigerbot-70b-chat 的 8bit 量化版模型文件有多大？";
        assert_eq!(check(&ditto, "37 GB", q).1, UnsupportedKeyFact);
        let q = "tigerbot-70b-chat 的 4bit 量化版模型文件有多大？";
        assert_eq!(check(&ditto, "37 GB", q).1, Supported);
        // A passage that does not start inside a table is read as it is.
        let prose = Citation {
            text: "量化结果见下表。".into(),
            ..sizes.clone()
        };
        assert_eq!(verified_text(&prose), prose.text.as_str());
    }

    /// The neighbouring cell of a passage cut below its header is read by the header's
    /// columns: HumanEvalFIM's 85.0 for a question of HumanEval gives HumanEval's 82.3.
    #[test]
    fn a_cell_of_a_passage_cut_below_its_header_is_read_by_the_headers_columns() {
        let c = Citation {
            text: "| Codestral-22B | 32K | 81.1 | 78.2 | 91.6 |\n\
                   | CodeGeeX4-All-9B | 128K | 82.3 | 75.7 | 85.0 |"
                .into(),
            context: "| **模型** | **序列长度** | **HumanEval** | **MBPP** | **HumanEvalFIM** |"
                .into(),
            source: "codegeex4/README_zh.md".into(),
            ..Default::default()
        };
        let q = "CodeGeeX4-All-9B 在 HumanEval 上能拿多少分？";
        let answer = "CodeGeeX4-All-9B 在 HumanEval 上能拿85.0分。";
        let text = verified_text(&c);
        let check = crate::verify::check_answer_on_subject(answer, &[&text], &[], q);
        let reading =
            crate::verify::read_from_table(answer, &[&text], &[&c.source], &[], q, &check)
                .expect("read from the HumanEval column");
        assert_eq!(
            reading.answer,
            "CodeGeeX4-All-9B 在 HumanEval 上能拿82.3分。"
        );
        // Read as it is, the passage has no columns: the draft stands.
        let raw = crate::verify::check_answer_on_subject(answer, &[&c.text], &[], q);
        assert!(raw.unsupported.is_empty(), "{raw:?}");
    }

    #[test]
    fn an_invented_number_is_withdrawn_with_its_name_in_the_reason() {
        let v = verification(
            Verify::Withdraw,
            "最少需要准备 72GB 显存。",
            &[PASSAGE],
            &[],
            QUESTION,
        );
        assert!(v.checked && v.withdrawn && !v.echoed);
        assert_eq!(v.unsupported_facts, ["72GB"]);
        assert!(v.reason.contains("72GB"), "{}", v.reason);
    }

    #[test]
    fn a_withdrawn_draft_is_answered_from_the_table_cell_the_question_names() {
        let generated = |text: &str| Generated {
            text: text.into(),
            finish_reason: 0,
            prompt_tokens: 10,
            generated_tokens: 5,
            regenerated: false,
        };
        let reading = crate::verify::TableCellReading {
            answer: "模型大小为3.69G。".into(),
            draft_figure: "3.92G".into(),
            cell: "3.69G".into(),
        };
        let withdrawn = Verification {
            checked: true,
            withdrawn: true,
            unsupported_facts: vec!["3.92G".into()],
            reason: "unsupported key fact: 3.92G is only in the column q4-k".into(),
            refocused: true,
            ..Default::default()
        };
        let (done, v) = read_from_table_if_withdrawn(
            generated("模型大小为3.92G。"),
            withdrawn.clone(),
            Some(reading.clone()),
        );
        assert_eq!(done.text, "模型大小为3.69G。");
        assert!(v.read_from_table && v.refocused && !v.withdrawn);
        assert!(v.unsupported_facts.is_empty());
        assert!(
            v.reason.contains("3.92G") && v.reason.ends_with("gives 3.69G"),
            "{}",
            v.reason
        );
        // Nothing read: the withdrawal stands.
        let (done, v) =
            read_from_table_if_withdrawn(generated("模型大小为3.92G。"), withdrawn.clone(), None);
        assert_eq!((done.text.as_str(), &v), ("模型大小为3.92G。", &withdrawn));
        // A draft that stands (or is only marked) is left as it is.
        let marked = Verification {
            withdrawn: false,
            ..withdrawn
        };
        let (done, v) = read_from_table_if_withdrawn(
            generated("模型大小为3.92G。"),
            marked.clone(),
            Some(reading),
        );
        assert_eq!((done.text.as_str(), &v), ("模型大小为3.92G。", &marked));
    }

    #[test]
    fn an_answer_stops_where_it_runs_on_into_a_passage_header() {
        let citation = |number| Citation {
            number,
            ..Default::default()
        };
        let citations = [citation(1), citation(2), citation(3)];
        let rendered = [
            "（来源：README.md；章节：安装）\npip install langchain-chatchat -U".to_owned(),
            "no header here".to_owned(),
            "（章节：配置）\nDEFAULT_BIND_HOST".to_owned(),
        ];
        let stops = with_passage_header_stops(vec!["</s>".into()], &citations, &rendered);
        assert_eq!(stops, ["</s>", "\n[1] （来源：", "\n[3] （章节："]);
        // The prompt shows each passage as its stop string expects.
        let prompt = crate::prompt::PromptTemplate::default()
            .render_numbered(&[(1, rendered[0].as_str()), (3, rendered[2].as_str())], "q");
        for stop in &stops[1..] {
            assert!(prompt.contains(stop.as_str()), "{stop:?} not in {prompt}");
        }
        // The caller's stops come first and the generator's limit holds.
        let many: Vec<String> = (0..MAX_STOP_STRINGS).map(|i| format!("s{i}")).collect();
        assert_eq!(
            with_passage_header_stops(many.clone(), &citations, &rendered),
            many
        );
    }

    #[test]
    fn mark_keeps_the_answer_and_names_the_fact() {
        let v = verification(
            Verify::Mark,
            "最少需要准备 72GB 显存。",
            &[PASSAGE],
            &[],
            QUESTION,
        );
        assert!(v.checked && !v.withdrawn);
        assert_eq!(v.unsupported_facts, ["72GB"]);
    }

    #[test]
    fn a_stated_fact_a_refusal_and_off_stand() {
        let right = verification(
            Verify::Withdraw,
            "INT4 下最少需要 6GB 显存。",
            &[PASSAGE],
            &[],
            QUESTION,
        );
        assert!(right.checked && !right.withdrawn && right.unsupported_facts.is_empty());
        assert!(right.reason.is_empty());
        let refusal = verification(Verify::Withdraw, REFUSAL, &[PASSAGE], &[], QUESTION);
        assert!(refusal.checked && !refusal.withdrawn);
        let off = verification(Verify::Off, "72GB", &[PASSAGE], &[], QUESTION);
        assert_eq!(off, Verification::default());
    }
}
