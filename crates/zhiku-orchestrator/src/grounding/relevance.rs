//! Relevance: the chat model's own judgment of whether the passages state the answer to a
//! question. Coverage ([`super::coverage`]) counts the question's terms in the passages, and
//! in a knowledge base on one subject every passage shares them; this asks the model.
//!
//! The judgment prompts are the Ask's own prompt (instructions, passages, question) with a
//! yes/no question appended to its user turn: one for the passages together (the answer's
//! judgment) and one per passage (its source's), scored by the generator's
//! `NextTokenLogprobs` (one forward each, no generation). They share the Ask prompt's prefix,
//! so the generator computes the passages once and the answer's generation reuses them from
//! its prefix cache. A judgment is P(是) / (P(是) + P(否)) of the next token: 0 to 1.

/// The candidates read from the next token's distribution: yes first, then no.
pub const CANDIDATES: [&str; 2] = ["是", "否"];

/// Appended to the Ask prompt's user turn: do the passages together answer the question?
pub const ANSWER_QUESTION: &str =
    "\n\n请只回答“是”或“否”：上述已知信息中是否明确写出了这个问题的答案？";

/// Appended to the Ask prompt's user turn for passage `[number]`.
pub fn source_question(number: u32) -> String {
    format!("\n\n请只回答“是”或“否”：第 [{number}] 条已知信息中是否明确写出了这个问题的答案？")
}

/// The judgment from the log-probabilities of "是" and "否": the probability of yes
/// between the two (a softmax over them). Not finite (a vocabulary without them): 0.5,
/// the judgment that says nothing.
pub fn judgment(yes_logprob: f32, no_logprob: f32) -> f64 {
    let (yes, no) = (f64::from(yes_logprob), f64::from(no_logprob));
    if !yes.is_finite() && !no.is_finite() {
        return 0.5;
    }
    if !no.is_finite() {
        return if yes.is_finite() { 1.0 } else { 0.5 };
    }
    if !yes.is_finite() {
        return 0.0;
    }
    // 1 / (1 + e^(no - yes)), stable for any difference.
    1.0 / (1.0 + (no - yes).exp())
}

/// Whether zhiku refuses before generating, from both signals: the passages cover under
/// `min_coverage` of the question's terms, or the model judges them under `min_relevance`
/// (None: not judged, so it cannot refuse). Either one alone refuses: coverage catches
/// passages on another subject, relevance passages on the question's subject that do not
/// state its answer.
pub fn refuses(
    coverage: f64,
    min_coverage: f64,
    relevance: Option<f64>,
    min_relevance: f64,
) -> bool {
    coverage < min_coverage || relevance.is_some_and(|r| r < min_relevance)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_judgment_is_the_share_of_yes_between_yes_and_no() {
        assert!((judgment(-0.1, -0.1) - 0.5).abs() < 1e-12);
        let sure = judgment(-0.01, -6.0);
        assert!(sure > 0.99, "{sure}");
        let doubtful = judgment(-3.0, -0.1);
        assert!(doubtful < 0.1, "{doubtful}");
        // Only the difference counts: both unlikely next tokens still judge.
        assert!((judgment(-20.0, -21.0) - judgment(-1.0, -2.0)).abs() < 1e-12);
        // Extreme and missing values stay in 0..1 and never NaN.
        assert_eq!(judgment(0.0, f32::NEG_INFINITY), 1.0);
        assert_eq!(judgment(f32::NEG_INFINITY, 0.0), 0.0);
        assert_eq!(judgment(f32::NEG_INFINITY, f32::NEG_INFINITY), 0.5);
        assert_eq!(judgment(f32::NAN, f32::NAN), 0.5);
        let far = judgment(-1000.0, 0.0);
        assert!((0.0..1e-6).contains(&far), "{far}");
    }

    #[test]
    fn either_signal_alone_refuses() {
        // Covered and judged relevant: answered.
        assert!(!refuses(0.8, 0.35, Some(0.9), 0.5));
        // On the subject (covered) but judged not to state the answer: the near miss.
        assert!(refuses(0.8, 0.35, Some(0.2), 0.5));
        // Judged relevant, but about something else: coverage refuses.
        assert!(refuses(0.1, 0.35, Some(0.9), 0.5));
        // Not judged: coverage alone decides.
        assert!(!refuses(0.8, 0.35, None, 0.5));
        assert!(refuses(0.1, 0.35, None, 0.5));
        // Levels of 0 never refuse; the levels themselves pass.
        assert!(!refuses(0.0, 0.0, Some(0.0), 0.0));
        assert!(!refuses(0.35, 0.35, Some(0.5), 0.5));
    }

    #[test]
    fn the_judgment_questions_name_their_passage_and_ask_for_yes_or_no() {
        for text in [ANSWER_QUESTION.to_owned(), source_question(3)] {
            assert!(text.starts_with("\n\n"), "appended after the question");
            assert!(text.contains(CANDIDATES[0]) && text.contains(CANDIDATES[1]));
        }
        assert!(source_question(3).contains("[3]"));
    }
}
