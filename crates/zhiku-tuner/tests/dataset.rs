//! The dataset side: formats as LLaMA-Factory reads them, errors that name the line, no
//! panic on any input, rendering with the model's own template and tokenizer (SmolLM2's
//! GGUF from `models/`), batching and the split.

use std::path::Path;

use candle_core::quantized::gguf_file;
use zhiku_lm::template::{ChatTemplate, Message, Role};
use zhiku_lm::tokenizer::GenTokenizer;
use zhiku_tuner::dataset::{
    Batch, BatchOptions, Conversation, LengthPolicy, SeededRng, epoch_batches, fingerprint,
    pack_rows, parse_conversations, read_conversations, render_conversation, render_dataset,
    split_train_validation,
};
use zhiku_tuner::{TrainExample, TuneError};

const SMOLLM: &str = "models/SmolLM2-135M-Instruct-GGUF/SmolLM2-135M-Instruct.Q4_1.gguf";
const QWEN: &str =
    "models/Qwen2.5-Coder-0.5B-Instruct-GGUF/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf";

/// A GGUF model's tokenizer and its own (Jinja) chat template, as the generator loads them.
fn gguf_model(file: &str) -> Option<(GenTokenizer, ChatTemplate)> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(file);
    let Ok(mut file) = std::fs::File::open(&path) else {
        eprintln!(
            "SKIPPED: {} is missing (scripts/fetch-models)",
            path.display()
        );
        return None;
    };
    let content = gguf_file::Content::read(&mut file).expect("the GGUF reads");
    let tokenizer = GenTokenizer::from_gguf(&content).expect("the GGUF's tokenizer");
    let source = content
        .metadata
        .get("tokenizer.chat_template")
        .and_then(|v| v.to_string().ok())
        .cloned()
        .expect("the GGUF has a chat template");
    let template = ChatTemplate::Jinja {
        source,
        bos: tokenizer.bos.clone().unwrap_or_default(),
        eos: tokenizer.eos.clone().unwrap_or_default(),
    };
    Some((tokenizer, template))
}

fn validation(result: Result<Vec<Conversation>, TuneError>) -> String {
    match result {
        Err(TuneError::Validation(message)) => message,
        other => panic!("expected a validation error, got {other:?}"),
    }
}

#[test]
fn alpaca_and_sharegpt_as_llama_factory_reads_them() {
    let alpaca = r#"[
      {"instruction": "Translate", "input": "你好", "output": "Hello", "system": "Be brief",
       "history": [["Hi", "Hello!"]]},
      {"instruction": "What is LoRA?", "input": "", "output": "A low-rank update."}
    ]"#;
    let read = parse_conversations(alpaca, "a.json").unwrap();
    assert_eq!(read.len(), 2);
    assert_eq!(
        read[0].messages,
        vec![
            Message::new(Role::System, "Be brief"),
            Message::new(Role::User, "Hi"),
            Message::new(Role::Assistant, "Hello!"),
            Message::new(Role::User, "Translate\n你好"),
            Message::new(Role::Assistant, "Hello"),
        ]
    );
    assert_eq!(
        read[1].messages[0],
        Message::new(Role::User, "What is LoRA?")
    );
    assert_eq!(read[1].origin, "a.json record 1");

    let sharegpt = concat!(
        r#"{"conversations": [{"from": "human", "value": "q1"}, {"from": "gpt", "value": "a1"}, {"from": "human", "value": "q2"}, {"from": "gpt", "value": "a2"}], "system": "S"}"#,
        "\n\n",
        r#"{"messages": [{"role": "system", "content": "S2"}, {"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}"#,
        "\n"
    );
    let read = parse_conversations(sharegpt, "s.jsonl").unwrap();
    assert_eq!(read.len(), 2);
    assert_eq!(read[0].messages.len(), 5);
    assert_eq!(read[0].messages[0], Message::new(Role::System, "S"));
    assert_eq!(read[0].messages[4], Message::new(Role::Assistant, "a2"));
    assert_eq!(read[1].messages[0], Message::new(Role::System, "S2"));
    assert_eq!(read[1].origin, "s.jsonl line 3");
}

#[test]
fn a_malformed_record_is_named_by_line_or_index() {
    let good = r#"{"instruction": "q", "output": "a"}"#;
    let jsonl = format!("{good}\n{good}\n{{\"instruction\": \"q\", \"output\": 3}}\n");
    let message = validation(parse_conversations(&jsonl, "data.jsonl"));
    assert!(message.contains("data.jsonl line 3"), "{message}");
    assert!(message.contains("`output` must be a string"), "{message}");

    let broken = format!("{good}\n{{\"instruction\": \n");
    let message = validation(parse_conversations(&broken, "data.jsonl"));
    assert!(
        message.contains("data.jsonl line 2: not a JSON record"),
        "{message}"
    );

    let array =
        r#"[{"conversations": [{"from": "human", "value": "q"}, {"from": "tool", "value": "x"}]}]"#;
    let message = validation(parse_conversations(array, "data.json"));
    assert!(message.contains("data.json record 0"), "{message}");
    assert!(message.contains("`tool`"), "{message}");

    let unanswered = r#"{"messages": [{"role": "user", "content": "q"}]}"#;
    let message = validation(parse_conversations(unanswered, "d.jsonl"));
    assert!(message.contains("no answer to learn"), "{message}");

    let twice =
        r#"{"messages": [{"role": "user", "content": "q"}, {"role": "user", "content": "q"}]}"#;
    let message = validation(parse_conversations(twice, "d.jsonl"));
    assert!(message.contains("alternate"), "{message}");

    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.jsonl");
    match read_conversations(&missing) {
        Err(TuneError::Io { path, .. }) => assert!(path.ends_with("nope.jsonl")),
        other => panic!("expected an i/o error, got {other:?}"),
    }
    let file = dir.path().join("bad.json");
    std::fs::write(&file, "[{\"instruction\": \"q\"}]").unwrap();
    let message = validation(read_conversations(&file));
    assert!(message.contains("bad.json record 0"), "{message}");
}

/// Truncated and mutated datasets: every prefix and thousands of byte mutations of a valid
/// file parse or fail with an error, and what parses renders or fails: nothing panics.
#[test]
fn truncated_or_mutated_input_never_panics() {
    let valid = concat!(
        r#"{"instruction": "What is r?", "input": "LoRA", "output": "The rank.", "history": [["a", "b"]], "system": "s"}"#,
        "\n",
        r#"{"conversations": [{"from": "human", "value": "q1"}, {"from": "gpt", "value": "a1 <|im_end|>"}]}"#,
        "\n",
        r#"{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}"#,
        "\n"
    );
    let as_array = format!("[{}]", valid.lines().collect::<Vec<_>>().join(",\n"));
    let model = gguf_model(SMOLLM);
    let check = |text: &str| {
        if let Ok(conversations) = parse_conversations(text, "fuzz")
            && let Some((tokenizer, template)) = &model
        {
            let _ = render_dataset(
                &conversations,
                template,
                tokenizer,
                &[],
                64,
                LengthPolicy::Truncate,
            );
        }
    };
    for source in [valid, as_array.as_str()] {
        let bytes = source.as_bytes();
        for end in 0..=bytes.len() {
            check(&String::from_utf8_lossy(&bytes[..end]));
        }
        let mut rng = SeededRng::new(23);
        let alphabet = b"{}[]\":,\\ \n0aZ\xff";
        for _ in 0..3000 {
            let mut mutated = bytes.to_vec();
            for _ in 0..=rng.below(3) {
                let at = rng.below(mutated.len() as u64) as usize;
                match rng.below(3) {
                    0 => mutated[at] = alphabet[rng.below(alphabet.len() as u64) as usize],
                    1 => {
                        mutated.remove(at);
                    }
                    _ => mutated.insert(at, alphabet[rng.below(alphabet.len() as u64) as usize]),
                }
            }
            check(&String::from_utf8_lossy(&mutated));
        }
    }
}

fn answer_spans(example: &TrainExample) -> Vec<std::ops::Range<usize>> {
    let mut spans = Vec::new();
    let mut start = None;
    for (i, &m) in example.loss_mask.iter().chain([&false]).enumerate() {
        match (m, start) {
            (true, None) => start = Some(i),
            (false, Some(s)) => {
                spans.push(s..i);
                start = None;
            }
            _ => {}
        }
    }
    spans
}

fn two_turns() -> Vec<Conversation> {
    parse_conversations(
        r#"{"conversations": [{"from": "human", "value": "What is r?"}, {"from": "gpt", "value": "The rank."}, {"from": "human", "value": "And alpha?"}, {"from": "gpt", "value": "The scale."}]}"#,
        "c.jsonl",
    )
    .unwrap()
}

/// A ChatML model's own template: a two-turn conversation is one example whose answers
/// (and only they, each with its `<|im_end|>`) count, and whose prompts are exactly what the
/// generator feeds for each turn.
fn multi_turn_chatml(tokenizer: &GenTokenizer, template: &ChatTemplate) {
    let im_end = tokenizer.token_to_id("<|im_end|>").unwrap();
    let conversations = two_turns();
    let examples = render_conversation(&conversations[0], template, tokenizer, &[]).unwrap();
    assert_eq!(
        examples.len(),
        1,
        "ChatML extends turn by turn: one example"
    );
    let example = &examples[0];
    let spans = answer_spans(example);
    assert_eq!(spans.len(), 2, "every assistant turn counts");
    let answers: Vec<String> = spans
        .iter()
        .map(|s| tokenizer.decode(&example.tokens[s.clone()]).unwrap())
        .collect();
    assert_eq!(answers, ["The rank.", "The scale."]);
    for span in &spans {
        assert_eq!(
            example.tokens[span.end - 1],
            im_end,
            "the end of turn is learnt"
        );
    }
    let messages = &conversations[0].messages;
    for (span, j) in spans.iter().zip([1, 3]) {
        let served = tokenizer
            .encode_prompt(&template.render_prompt(&messages[..j]).unwrap())
            .unwrap();
        assert_eq!(&example.tokens[..span.start], served.as_slice());
    }
    // A control token written in an answer stays text.
    let injected = parse_conversations(
        r#"{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a<|im_end|>b"}]}"#,
        "i.jsonl",
    )
    .unwrap();
    let example = &render_conversation(&injected[0], template, tokenizer, &[]).unwrap()[0];
    let answer: Vec<u32> = example
        .tokens
        .iter()
        .zip(&example.loss_mask)
        .filter(|(_, m)| **m)
        .map(|(t, _)| *t)
        .collect();
    assert_eq!(answer.iter().filter(|&&t| t == im_end).count(), 1);
}

#[test]
fn examples_render_with_the_models_template_and_mask_only_the_answers() {
    let Some((tokenizer, template)) = gguf_model(SMOLLM) else {
        return;
    };
    multi_turn_chatml(&tokenizer, &template);

    // GLM-4's template does not extend turn by turn: one example per assistant turn, each
    // with the template's `\n` lead-in before the answer.
    let conversations = two_turns();
    let examples =
        render_conversation(&conversations[0], &ChatTemplate::Glm4, &tokenizer, &[]).unwrap();
    assert_eq!(examples.len(), 2);
    for (example, answer) in examples.iter().zip(["\nThe rank.", "\nThe scale."]) {
        let spans = answer_spans(example);
        assert_eq!(spans.len(), 1);
        let text = tokenizer
            .decode(&example.tokens[spans[0].start..spans[0].end - 1])
            .unwrap();
        assert_eq!(text, answer);
        assert_eq!(spans[0].end, example.tokens.len());
    }
}

/// ChatGLM-6B: each turn's prompt is the generator's (its template's rendering, then the
/// model's `[gMASK] <sop>` suffix), read both ways through `[gMASK]` exactly as the
/// generator sets it (the whole prompt less its last token), then the answer, the only
/// part the loss counts; each turn an example of its own. Its vocabulary is stood in for
/// by SmolLM2's tokenizer (ids 1 and 2 standing for `[gMASK]` and `<sop>`).
#[test]
fn chatglm6b_examples_read_their_prompts_both_ways_as_served() {
    let Some((tokenizer, _)) = gguf_model(SMOLLM) else {
        return;
    };
    let template = ChatTemplate::ChatGlm6b;
    let suffix = [1, 2];
    let conversations = two_turns();
    let examples = render_conversation(&conversations[0], &template, &tokenizer, &suffix).unwrap();
    assert_eq!(examples.len(), 2, "one example per turn");
    let messages = &conversations[0].messages;
    for (example, (turn, answer)) in examples.iter().zip([(1, "The rank."), (3, "The scale.")]) {
        let mut served = tokenizer
            .encode_prompt(&template.render_prompt(&messages[..turn]).unwrap())
            .unwrap();
        served.extend(suffix);
        assert_eq!(&example.tokens[..served.len()], served.as_slice());
        // The generator: `tokens.len() - 1` of prompt + suffix.
        assert_eq!(example.bidirectional, served.len() - 1);
        let spans = answer_spans(example);
        assert_eq!(spans, vec![served.len()..example.tokens.len()]);
        let text = tokenizer
            .decode(&example.tokens[served.len()..example.tokens.len() - 1])
            .unwrap();
        assert_eq!(text, answer);
        assert!(tokenizer.eos_ids.contains(example.tokens.last().unwrap()));
    }
    // Without a suffix the same template gives causal examples.
    let causal = render_conversation(&conversations[0], &template, &tokenizer, &[]).unwrap();
    assert!(causal.iter().all(|e| e.bidirectional == 0));
    let (_, report) = render_dataset(
        &conversations,
        &template,
        &tokenizer,
        &suffix,
        64,
        LengthPolicy::Truncate,
    )
    .unwrap();
    assert_eq!((report.examples, report.split_conversations), (2, 1));
}

/// Qwen2.5's own template (ChatML with a default system prompt) renders the same way.
#[test]
fn qwen_examples_render_with_its_own_template() {
    if let Some((tokenizer, template)) = gguf_model(QWEN) {
        multi_turn_chatml(&tokenizer, &template);
    }
}

#[test]
fn max_seq_len_truncates_or_skips_and_counts() {
    let Some((tokenizer, template)) = gguf_model(SMOLLM) else {
        return;
    };
    let long = "word ".repeat(200);
    let text = format!(
        "{}\n{}\n{}\n",
        r#"{"instruction": "q", "output": "a"}"#,
        serde_json::json!({"instruction": long, "output": "a"}),
        serde_json::json!({"instruction": "q", "output": long}),
    );
    let conversations = parse_conversations(&text, "d.jsonl").unwrap();
    let (kept, report) = render_dataset(
        &conversations,
        &template,
        &tokenizer,
        &[],
        64,
        LengthPolicy::Skip,
    )
    .unwrap();
    assert_eq!(
        (report.read, report.examples, report.skipped_too_long),
        (3, 1, 2)
    );
    assert_eq!(kept.len(), 1);
    let (kept, report) = render_dataset(
        &conversations,
        &template,
        &tokenizer,
        &[],
        64,
        LengthPolicy::Truncate,
    )
    .unwrap();
    // The long question leaves no answer within 64 tokens: skipped; the long answer is cut.
    assert_eq!(
        (report.examples, report.truncated, report.skipped_too_long),
        (2, 1, 1)
    );
    assert!(
        kept.iter()
            .all(|e| e.tokens.len() <= 64 && e.loss_mask.len() == e.tokens.len())
    );
    assert_eq!(report.longest, 64);
    assert_eq!(
        report.answer_tokens,
        kept.iter()
            .flat_map(|e| &e.loss_mask)
            .filter(|&&m| m)
            .count()
    );
    assert!(
        render_dataset(
            &conversations,
            &template,
            &tokenizer,
            &[],
            1,
            LengthPolicy::Skip
        )
        .is_err()
    );
}

fn toy_examples(n: usize) -> Vec<TrainExample> {
    (0..n)
        .map(|i| {
            let len = 3 + (i * 7) % 13;
            TrainExample {
                tokens: (0..len as u32).map(|t| 100 + i as u32 * 50 + t).collect(),
                loss_mask: (0..len).map(|t| t >= len / 2).collect(),
                bidirectional: 0,
            }
        })
        .collect()
}

#[test]
fn batches_are_seeded_grouped_by_length_and_padded() {
    let examples = toy_examples(50);
    let options = BatchOptions {
        batch_size: 4,
        pad_id: 7,
        seed: 42,
        bucket_batches: 4,
        ..BatchOptions::default()
    };
    let batches = epoch_batches(&examples, &options, 0).unwrap();
    assert_eq!(batches, epoch_batches(&examples, &options, 0).unwrap());
    assert_ne!(batches, epoch_batches(&examples, &options, 1).unwrap());
    let other_seed = BatchOptions {
        seed: 43,
        ..options.clone()
    };
    assert_ne!(batches, epoch_batches(&examples, &other_seed, 0).unwrap());

    let mut seen: Vec<usize> = batches.iter().flat_map(|b| b.examples.clone()).collect();
    seen.sort_unstable();
    assert_eq!(
        seen,
        (0..50).collect::<Vec<_>>(),
        "each example once per epoch"
    );
    let mut padding = 0;
    for batch in &batches {
        assert!(batch.rows <= 4);
        assert_eq!(batch.tokens.len(), batch.rows * batch.seq_len);
        for (row, &i) in batch.examples.iter().enumerate() {
            let cells = row * batch.seq_len..(row + 1) * batch.seq_len;
            let e = &examples[i];
            assert_eq!(
                &batch.tokens[cells.start..cells.start + e.tokens.len()],
                e.tokens.as_slice()
            );
            assert!(
                batch.tokens[cells.start + e.tokens.len()..cells.end]
                    .iter()
                    .all(|&t| t == 7)
            );
            assert_eq!(
                batch.attention_mask[cells.clone()]
                    .iter()
                    .filter(|&&m| m)
                    .count(),
                e.tokens.len()
            );
            assert_eq!(
                &batch.loss_mask[cells.start..cells.start + e.tokens.len()],
                e.loss_mask.as_slice()
            );
            assert!(
                !batch.loss_mask[cells.start + e.tokens.len()..cells.end]
                    .iter()
                    .any(|&m| m)
            );
        }
        padding += batch.tokens.len() - batch.real_tokens();
    }
    // Grouping by length pads less than batches drawn without it.
    let ungrouped = BatchOptions {
        bucket_batches: 1,
        ..options.clone()
    };
    let ungrouped_padding: usize = epoch_batches(&examples, &ungrouped, 0)
        .unwrap()
        .iter()
        .map(|b| b.tokens.len() - b.real_tokens())
        .sum();
    assert!(
        padding < ungrouped_padding,
        "{padding} vs {ungrouped_padding}"
    );

    assert!(
        epoch_batches(
            &examples,
            &BatchOptions {
                batch_size: 0,
                ..options
            },
            0
        )
        .is_err()
    );
}

#[test]
fn the_split_is_seeded_disjoint_and_sized_by_the_fraction() {
    let items: Vec<usize> = (0..100).collect();
    let (train, validation) = split_train_validation(&items, 0.1, 5).unwrap();
    assert_eq!((train.len(), validation.len()), (90, 10));
    assert_eq!(
        split_train_validation(&items, 0.1, 5).unwrap().1,
        validation
    );
    assert_ne!(
        split_train_validation(&items, 0.1, 6).unwrap().1,
        validation
    );
    let mut all: Vec<usize> = train.iter().chain(&validation).copied().collect();
    all.sort_unstable();
    assert_eq!(all, items);
    assert_eq!(
        split_train_validation(&items[..3], 0.01, 1)
            .unwrap()
            .1
            .len(),
        1
    );
    assert_eq!(split_train_validation(&items, 0.0, 1).unwrap().0.len(), 100);
    assert!(split_train_validation(&items[..1], 0.5, 1).is_err());
    assert!(split_train_validation(&items, 1.0, 1).is_err());
    assert!(split_train_validation(&items, f64::NAN, 1).is_err());
}

#[test]
fn the_fingerprint_follows_tokens_and_masks() {
    let examples = toy_examples(5);
    let same = fingerprint(&examples);
    assert_eq!(same.len(), 64);
    assert_eq!(same, fingerprint(&toy_examples(5)));
    let mut changed = examples.clone();
    changed[2].loss_mask[0] = !changed[2].loss_mask[0];
    assert_ne!(same, fingerprint(&changed));
    assert_ne!(same, fingerprint(&examples[..4]));
}

/// Packing: every example once, in rows of at most `max_seq_len` tokens, each row its
/// examples' tokens and loss masks side by side with positions restarting at 0; the same
/// rows every epoch (in a seeded order), fewer rows and far less padding than one example
/// a row on examples of varied lengths.
#[test]
fn packing_fills_rows_up_to_max_seq_len_and_pads_less() {
    let examples = toy_examples(50); // 3 to 15 tokens
    let total: usize = examples.iter().map(|e| e.tokens.len()).sum();
    let padded = BatchOptions {
        batch_size: 4,
        pad_id: 7,
        seed: 42,
        bucket_batches: 4,
        max_seq_len: 32,
        ..BatchOptions::default()
    };
    let packed = BatchOptions {
        packing: true,
        ..padded.clone()
    };
    let batches = epoch_batches(&examples, &packed, 0).unwrap();
    assert_eq!(batches, epoch_batches(&examples, &packed, 0).unwrap());
    let rows_of = |batches: &[Batch]| {
        let mut rows = Vec::new();
        for batch in batches {
            assert!(batch.rows <= 4 && batch.seq_len <= 32);
            let mut next = batch.examples.iter();
            for r in 0..batch.rows {
                let (start, end) = (r * batch.seq_len, (r + 1) * batch.seq_len);
                let real = batch.attention_mask[start..end]
                    .iter()
                    .filter(|&&m| m)
                    .count();
                let (mut at, mut row) = (start, Vec::new());
                while at < start + real {
                    let i = *next.next().expect("the row's examples");
                    let e = &examples[i];
                    let cells = at..at + e.tokens.len();
                    assert_eq!(&batch.tokens[cells.clone()], e.tokens.as_slice());
                    assert_eq!(&batch.loss_mask[cells.clone()], e.loss_mask.as_slice());
                    let positions: Vec<u32> = (0..e.tokens.len() as u32).collect();
                    assert_eq!(&batch.positions[cells], positions.as_slice());
                    row.push(i);
                    at += e.tokens.len();
                }
                assert_eq!(at, start + real);
                assert!(batch.tokens[at..end].iter().all(|&t| t == 7));
                assert!(!batch.loss_mask[at..end].iter().any(|&m| m));
                rows.push(row);
            }
            assert!(next.next().is_none());
        }
        rows
    };
    let mut rows = rows_of(&batches);
    let mut seen: Vec<usize> = rows.iter().flatten().copied().collect();
    seen.sort_unstable();
    assert_eq!(seen, (0..50).collect::<Vec<_>>(), "each example once");
    let mut next_epoch = rows_of(&epoch_batches(&examples, &packed, 1).unwrap());
    rows.sort();
    next_epoch.sort();
    assert_eq!(rows, next_epoch, "the same rows every epoch");

    let lengths: Vec<usize> = examples.iter().map(|e| e.tokens.len()).collect();
    let packed_rows = pack_rows(&lengths, 32, 42);
    assert_eq!(packed_rows.len(), rows.len());
    let pads = |batches: &[Batch]| -> (usize, usize) {
        (
            batches.iter().map(|b| b.rows).sum(),
            batches.iter().map(|b| b.pad_tokens()).sum(),
        )
    };
    let (packed_n, packed_pads) = pads(&batches);
    let (padded_n, padded_pads) = pads(&epoch_batches(&examples, &padded, 0).unwrap());
    eprintln!(
        "{total} tokens: padded {padded_n} rows, {padded_pads} pads ({:.1} %); packed \
         {packed_n} rows, {packed_pads} pads ({:.1} %)",
        100.0 * padded_pads as f64 / (total + padded_pads) as f64,
        100.0 * packed_pads as f64 / (total + packed_pads) as f64
    );
    assert_eq!(padded_n, 50);
    // First-fit decreasing: within two rows of the bound of total / 32.
    assert!(packed_n <= total.div_ceil(32) + 2, "{packed_n} rows");
    assert!(
        packed_pads * 2 < padded_pads,
        "{packed_pads} vs {padded_pads}"
    );
}

#[test]
fn pack_rows_is_first_fit_decreasing_seeded_and_gives_long_examples_a_row() {
    // Longest first, each into the first row with room.
    assert_eq!(
        pack_rows(&[2, 7, 5, 3, 12], 10, 0),
        vec![vec![4], vec![1, 3], vec![2, 0]]
    );
    // Equal lengths: which example goes where follows the seed.
    let same = [4; 12];
    assert_ne!(pack_rows(&same, 8, 1), pack_rows(&same, 8, 2));
    assert_eq!(pack_rows(&same, 8, 1), pack_rows(&same, 8, 1));
    assert_eq!(pack_rows(&same, 8, 1).len(), 6);
    assert!(pack_rows(&[], 8, 1).is_empty());
}
