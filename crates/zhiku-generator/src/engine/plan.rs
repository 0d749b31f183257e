//! The scheduler's decision for one step, apart from running it: which running sequences
//! take part and how many of their pending tokens each feeds.

/// One sequence's part in a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Planned {
    /// Its index among the running sequences.
    pub index: usize,
    /// Tokens it feeds this step.
    pub tokens: usize,
    /// Whether the step ends its pending tokens, so that its next-token logits are wanted.
    pub logits: bool,
}

/// Plans a step over sequences with `pending[i]` tokens not yet in the cache (1: decoding;
/// more: a prompt still prefilling). Every decoding sequence feeds its one token; prompts
/// then feed chunks in arrival (index) order until `prefill_chunk` prompt tokens are taken,
/// so a long prompt never stalls the streams already running. Sequences with nothing
/// pending take no part.
pub fn plan_step(pending: &[usize], prefill_chunk: usize) -> Vec<Planned> {
    plan_step_whole(pending, &vec![false; pending.len()], prefill_chunk)
}

/// [`plan_step`] where a prompt with `whole[i]` (read bidirectionally, ChatGLM-6B's) is fed
/// in one step: when it is first in line, even past `prefill_chunk`; otherwise it and the
/// prompts after it wait for a step of their own.
pub fn plan_step_whole(pending: &[usize], whole: &[bool], prefill_chunk: usize) -> Vec<Planned> {
    let mut plan: Vec<Planned> = pending
        .iter()
        .enumerate()
        .filter(|&(_, &p)| p == 1)
        .map(|(index, _)| Planned {
            index,
            tokens: 1,
            logits: true,
        })
        .collect();
    let full = prefill_chunk.max(1);
    let mut budget = full;
    for (index, &p) in pending.iter().enumerate() {
        if p <= 1 || budget == 0 {
            continue;
        }
        if whole.get(index).copied().unwrap_or(false) && p > budget {
            if budget < full {
                break;
            }
            budget = p;
        }
        let tokens = p.min(budget);
        budget -= tokens;
        plan.push(Planned {
            index,
            tokens,
            logits: tokens == p,
        });
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(index: usize, tokens: usize, logits: bool) -> Planned {
        Planned {
            index,
            tokens,
            logits,
        }
    }

    #[test]
    fn decoding_sequences_come_first_then_prompts_in_arrival_order() {
        let plan = plan_step(&[30, 1, 5, 1], 512);
        assert_eq!(
            plan,
            vec![p(1, 1, true), p(3, 1, true), p(0, 30, true), p(2, 5, true)]
        );
    }

    #[test]
    fn prompts_share_the_prefill_budget_and_a_partial_chunk_wants_no_logits() {
        let plan = plan_step(&[700, 1, 300], 512);
        assert_eq!(plan, vec![p(1, 1, true), p(0, 512, false)]);
        // The next step: the rest of the first prompt, then the second one's start.
        let plan = plan_step(&[188, 1, 300], 512);
        assert_eq!(plan, vec![p(1, 1, true), p(0, 188, true), p(2, 300, true)]);
        let plan = plan_step(&[188, 400], 512);
        assert_eq!(plan, vec![p(0, 188, true), p(1, 324, false)]);
    }

    #[test]
    fn decode_rows_never_wait_for_the_budget() {
        let pending = vec![1; 40];
        let plan = plan_step(&pending, 1);
        assert_eq!(plan.len(), 40);
        assert!(plan.iter().all(|e| e.tokens == 1 && e.logits));
    }

    #[test]
    fn a_zero_budget_still_moves_prompts_forward() {
        // --prefill-chunk 0 is read as 1: a prompt must never starve.
        assert_eq!(plan_step(&[3], 0), vec![p(0, 1, false)]);
    }

    #[test]
    fn sequences_with_nothing_pending_take_no_part() {
        assert_eq!(plan_step(&[0, 1, 0], 8), vec![p(1, 1, true)]);
        assert!(plan_step(&[], 8).is_empty());
    }

    #[test]
    fn a_whole_prompt_is_fed_in_one_step_when_first_in_line() {
        // Alone in line: all 40 tokens at once, past the chunk of 16.
        assert_eq!(
            plan_step_whole(&[1, 40, 20], &[false, true, false], 16),
            vec![p(0, 1, true), p(1, 40, true)]
        );
        // Behind a prompt that took part of the chunk: it and those after it wait.
        assert_eq!(
            plan_step_whole(&[10, 40, 3], &[false, true, false], 16),
            vec![p(0, 10, true)]
        );
        // Small enough for what is left: fed with the others.
        assert_eq!(
            plan_step_whole(&[10, 5, 3], &[false, true, false], 16),
            vec![p(0, 10, true), p(1, 5, true), p(2, 1, false)]
        );
    }
}
