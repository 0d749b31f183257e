//! `zhiku tune --kb NAME` without `--data`: training examples made from the knowledge base
//! itself (see `zhiku_orchestrator::examples`), written to a JSON-lines file that people can
//! read and edit and that `--data` reads back. A run that stops resumes: the passages already
//! tried are listed beside the file (`FILE.tried`) and are not tried again.

use std::collections::HashSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use zhiku_orchestrator::examples::{
    Distilled, EvidenceOutcome, ExampleEvent, ExampleKind, ExampleSettings, TrainingExample,
    needs_distilling, with_evidence,
};
use zhiku_orchestrator::{AskPolicy, Orchestrator, OrchestratorArgs, OrchestratorError};
use zhiku_runtime::ServerArgs;

use crate::stack::{Ports, Stack, StackArgs};

/// How examples are made from a knowledge base.
#[derive(Debug, Clone, clap::Args)]
pub struct ExampleArgs {
    /// With --kb and no --data: the examples file to write (JSON lines of sharegpt records,
    /// which --data reads back). An existing one is resumed. Default: the adapter directory's
    /// path with `.examples.jsonl` appended.
    #[arg(long, env = "ZHIKU_TUNE_EXAMPLES")]
    pub examples: Option<PathBuf>,
    /// Examples to make from the knowledge base at most (each costs one generation of the
    /// teacher; on 2 CPU cores and a 0.5B model, a few seconds).
    #[arg(long, env = "ZHIKU_TUNE_MAX_EXAMPLES", default_value_t = 200)]
    pub max_examples: usize,
    /// Distractor passages (retrieved for the question from the same base) in each example.
    #[arg(long, env = "ZHIKU_TUNE_DISTRACTORS", default_value_t = 3)]
    pub distractors: usize,
    /// Share of examples (0-1) with distractors only, whose target is the refusal.
    #[arg(long, env = "ZHIKU_TUNE_REFUSAL_SHARE", default_value_t = 0.1)]
    pub refusal_share: f64,
    /// Share of answer examples (0-1) whose question names a model size, bit width or GPU
    /// that also give a near-miss twin: the same passages, the question changed to one of
    /// these that no passage states (13B where the passage gives 7B), the refusal its
    /// target. Teaches refusing the unanswerable questions users ask most: the passage on
    /// the subject is there, for another size or setting.
    #[arg(long, env = "ZHIKU_TUNE_NEAR_MISS_SHARE", default_value_t = 0.0)]
    pub near_miss_share: f64,
    /// Keep answers that state no key fact (no number, version, flag, path or name), or
    /// that run past 100 characters, too.
    /// By default such examples are dropped: users ask a knowledge base for facts, and
    /// verification can check only facts.
    #[arg(long, env = "ZHIKU_TUNE_ANY_ANSWER")]
    pub any_answer: bool,
    /// Passages tried per document at most, so that examples spread over the base.
    #[arg(long, env = "ZHIKU_TUNE_EXAMPLES_PER_DOCUMENT", default_value_t = 8)]
    pub examples_per_document: usize,
    /// Have the teacher write every question. By default a passage holding markdown table
    /// rows is asked about one of its cells without the teacher (the row and column named,
    /// the cell the answer): right by construction, and the reading small models get wrong
    /// most.
    #[arg(long, env = "ZHIKU_TUNE_TEACHER_ONLY", conflicts_with = "no_teacher")]
    pub teacher_only: bool,
    /// Also ask a passage without table rows about a figure of one of its sentences without
    /// the teacher: the sentence with `多少` in the figure's place, the figure the answer
    /// (`P-Tuning v2 将需要微调的参数量减少到原来的多少？` → `0.1%`). Right by construction;
    /// the questions keep the passage's words.
    #[arg(
        long,
        env = "ZHIKU_TUNE_STATEMENT_QUESTIONS",
        conflicts_with = "teacher_only"
    )]
    pub statement_questions: bool,
    /// Make only the questions read from the passages themselves (table cells, and with
    /// --statement-questions sentence figures); a passage with none gives no example. The
    /// teacher writes nothing, so making examples takes minutes, not the teacher's hour.
    #[arg(long, env = "ZHIKU_TUNE_NO_TEACHER")]
    pub no_teacher: bool,
    /// Questions at most (1-8) from a passage whose questions are read from it (table cells,
    /// sentence figures): the others ask for its other figures over the same prompt, each
    /// with its own answer, so that the model learns to read the question rather than one
    /// answer per passage.
    #[arg(long, env = "ZHIKU_TUNE_QUESTIONS_PER_PASSAGE", default_value_t = 1)]
    pub questions_per_passage: usize,
    /// Answer targets that restate what the question asks about before the fact
    /// (`MiniCPM 的 vllm 版本是 0.2.7。`, not `0.2.7`): the question word replaced by the
    /// teacher's answer or the table cell, the words around it the question's own. A target
    /// that would state a fact neither the passage nor the question does stays the bare fact.
    #[arg(long, env = "ZHIKU_TUNE_RESTATE_ANSWERS")]
    pub restate_answers: bool,
    /// After the examples are made, the chat model (the one being trained) answers each
    /// answer example's prompt, and its own answer becomes the target where it states the
    /// teacher's fact; where it does not, it answers again with the teacher's answer shown
    /// as a reference, and that rewrite is the target when it states the fact; else the
    /// teacher's answer stays (self-distillation). Targets in the model's own words move it
    /// less from what it already reads right. Each example records which (`zhiku.distilled`);
    /// a rerun distills only those not yet distilled.
    #[arg(long, env = "ZHIKU_TUNE_SELF_DISTILL")]
    pub self_distill: bool,
    /// After the examples are made (and distilled), each answer target quotes its evidence
    /// first: `依据：[k]` and the line of passage k that holds the fact (a table row's name
    /// and cell under their column names, a sentence), then `回答：` and the target on the
    /// next line. The Ask answers with what follows `回答：`. Off by default: measured in
    /// docs/src/benchmarks/tuner.md. A rerun leaves targets written so as they are.
    #[arg(long, env = "ZHIKU_TUNE_EVIDENCE_FIRST")]
    pub evidence_first: bool,
    /// The model that writes the questions and answers: a .gguf file, a directory or a hub
    /// id. Default: the chat model (--chat-model).
    #[arg(long, env = "ZHIKU_TUNE_TEACHER_MODEL")]
    pub teacher_model: Option<String>,
}

impl ExampleArgs {
    /// Where the examples go for an adapter written to `out`.
    pub fn path(&self, out: &Path) -> PathBuf {
        self.examples
            .clone()
            .unwrap_or_else(|| crate::with_suffix(out, ".examples.jsonl"))
    }

    fn settings(&self, seed: u64) -> ExampleSettings {
        ExampleSettings {
            max_examples: self.max_examples,
            distractors: self.distractors,
            refusal_share: self.refusal_share,
            near_miss_share: self.near_miss_share,
            per_document: self.examples_per_document,
            seed,
            facts_only: !self.any_answer,
            table_questions: !self.teacher_only,
            statement_questions: self.statement_questions,
            teacher_questions: !self.no_teacher,
            questions_per_passage: self.questions_per_passage,
            restate_answers: self.restate_answers,
            ..ExampleSettings::default()
        }
    }
}

/// What a run of [`make_examples_file`] left in the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExamplesSummary {
    pub answers: usize,
    pub refusals: usize,
    /// Passages tried (this run and earlier ones).
    pub tried: usize,
}

/// Makes examples from `knowledge_base` into `path` with the services of `stack` started in
/// this process (the teacher as their chat model), resuming what an earlier run wrote there.
#[allow(clippy::too_many_arguments)]
pub async fn make_examples_file(
    stack: &StackArgs,
    ask: &AskPolicy,
    server: &ServerArgs,
    knowledge_base: &str,
    args: &ExampleArgs,
    seed: u64,
    path: &Path,
    progress: impl Fn(&str),
) -> Result<ExamplesSummary, String> {
    let settings = args.settings(seed);
    settings.validate().map_err(|e| e.to_string())?;
    let tried_path = tried_path(path);
    let (mut summary, tried) = read_progress(path, &tried_path)?;
    if summary.answers + summary.refusals >= settings.max_examples {
        progress(&format!(
            "{}: {} examples already made (--max-examples {})",
            path.display(),
            summary.answers + summary.refusals,
            settings.max_examples
        ));
        return Ok(summary);
    }

    let mut stack_args = stack.clone();
    if let Some(teacher) = &args.teacher_model {
        stack_args.chat_model = Some(teacher.clone());
        stack_args.gguf_file = None;
    }
    let (services, orchestrator) =
        start_services(&stack_args, ask, server, "make examples").await?;
    let result = async {
        let mut writer = ExamplesWriter::open(path, &tried_path)?;
        let started = Instant::now();
        let mut planned = 0usize;
        let mut this_run = 0usize;
        let already = summary.answers + summary.refusals;
        orchestrator
            .make_examples(knowledge_base, &settings, &tried, already, |event| {
                match event {
                    ExampleEvent::Planned { passages } => planned = passages,
                    ExampleEvent::Made { attempt, example } => {
                        writer.example(&example)?;
                        match example.zhiku.kind {
                            ExampleKind::Answer => summary.answers += 1,
                            ExampleKind::Refusal => summary.refusals += 1,
                        }
                        // A near-miss twin comes from the passage just tried.
                        if summary.tried != attempt {
                            this_run += 1;
                        }
                        summary.tried = attempt;
                        progress(&status_line(
                            &summary, planned, &settings, started, this_run,
                        ));
                    }
                    ExampleEvent::Rejected {
                        attempt,
                        passage,
                        reason,
                    } => {
                        writer.tried(&passage)?;
                        summary.tried = attempt;
                        this_run += 1;
                        progress(&format!("{passage}: dropped, {reason}"));
                    }
                }
                Ok(())
            })
            .await
            .map_err(|e| e.to_string())?;
        Ok::<_, String>(summary)
    }
    .await;
    services.shutdown().await;
    result
}

/// What [`distill_examples_file`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DistillSummary {
    /// Targets now in the model's own words, as first written or rewritten from the
    /// teacher's, and those where the teacher's answer stayed.
    pub own: usize,
    pub rewritten: usize,
    pub teacher: usize,
}

/// Puts the answer targets of the examples file at `path` in the chat model's own words
/// ([`zhiku_orchestrator::examples::distill`]) with the services of `stack` started in this
/// process (the chat model, not the teacher). The file is replaced whole (written beside it,
/// then renamed), so a run that stops leaves it as it was, and a rerun skips the examples
/// already distilled.
pub async fn distill_examples_file(
    stack: &StackArgs,
    ask: &AskPolicy,
    server: &ServerArgs,
    path: &Path,
    max_new_tokens: u32,
    progress: impl Fn(&str),
) -> Result<DistillSummary, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let examples = parse_examples(path, &text)?;
    let (services, orchestrator) = start_services(stack, ask, server, "distill examples").await?;
    let result = async {
        let started = Instant::now();
        let to_do = examples.iter().filter(|e| needs_distilling(e)).count();
        let mut done = 0usize;
        let mut summary = DistillSummary::default();
        let mut distilled = Vec::with_capacity(examples.len());
        for example in examples {
            let fresh = needs_distilling(&example);
            let example = orchestrator
                .distill(example, max_new_tokens)
                .await
                .map_err(|e| e.to_string())?;
            match example.zhiku.distilled {
                Some(Distilled::Own) => summary.own += 1,
                Some(Distilled::Rewritten) => summary.rewritten += 1,
                Some(Distilled::Teacher) => summary.teacher += 1,
                None => {}
            }
            if fresh {
                done += 1;
                let per = started.elapsed().as_secs_f64() / done as f64;
                let eta = (per * to_do.saturating_sub(done) as f64).round() as u64;
                progress(&format!(
                    "distilled {done} of {to_do} answer targets ({} the model's own, {} rewritten, {} the teacher's); ETA {}",
                    summary.own,
                    summary.rewritten,
                    summary.teacher,
                    duration(eta)
                ));
            }
            distilled.push(example);
        }
        write_examples(path, &distilled)?;
        Ok::<_, String>(summary)
    }
    .await;
    services.shutdown().await;
    result
}

/// Puts the evidence before each answer target of the examples file at `path`
/// ([`zhiku_orchestrator::examples::with_evidence`]), replacing the file whole; how many
/// targets it changed and how many answer targets had no line to quote (kept as they were).
pub fn add_evidence_to_file(path: &Path) -> Result<(usize, usize), String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut examples = parse_examples(path, &text)?;
    let (mut quoted, mut unquoted) = (0, 0);
    for example in &mut examples {
        match with_evidence(example) {
            EvidenceOutcome::Quoted => quoted += 1,
            EvidenceOutcome::NoLine => unquoted += 1,
            EvidenceOutcome::AlreadyQuoted | EvidenceOutcome::NotAnAnswer => {}
        }
    }
    write_examples(path, &examples)?;
    Ok((quoted, unquoted))
}

/// Replaces the examples file at `path` with `examples`: written beside it and renamed over
/// it, so that it is whole at every moment.
fn write_examples(path: &Path, examples: &[TrainingExample]) -> Result<(), String> {
    let tmp = crate::with_suffix(path, ".tmp");
    let mut text = String::new();
    for example in examples {
        let line =
            serde_json::to_string(example).map_err(|e| format!("an example as JSON: {e}"))?;
        text.push_str(&line);
        text.push('\n');
    }
    std::fs::write(&tmp, text)
        .and_then(|()| std::fs::rename(&tmp, path))
        .map_err(|e| format!("{}: {e}", path.display()))
}

/// The services of `stack` started in this process and ready, and an orchestrator that calls
/// them; `what` says what for in the error. The services are shut down again on an error.
async fn start_services(
    stack: &StackArgs,
    ask: &AskPolicy,
    server: &ServerArgs,
    what: &str,
) -> Result<(Stack, Orchestrator), String> {
    let mut services = Stack::start(stack, ask, Ports::ephemeral(), server)
        .await
        .map_err(|e| format!("cannot start the services that {what}: {e}"))?;
    if let Err(e) = services.ready(Duration::from_secs(600)).await {
        services.shutdown().await;
        return Err(e);
    }
    let mut orchestrator_args = OrchestratorArgs::local(
        services.ports.embedder.port(),
        services.ports.retriever.port(),
        services.ports.generator.port(),
    );
    orchestrator_args.ask = ask.clone();
    match Orchestrator::new(orchestrator_args) {
        Ok(orchestrator) => Ok((services, orchestrator)),
        Err(e) => {
            services.shutdown().await;
            Err(e.to_string())
        }
    }
}

/// The examples of an examples file's `text` (blank lines skipped); a line that is not one
/// is named.
fn parse_examples(path: &Path, text: &str) -> Result<Vec<TrainingExample>, String> {
    text.lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty())
        .map(|(i, line)| {
            serde_json::from_str(line).map_err(|e| {
                format!(
                    "{} line {}: not an example zhiku made ({e}); move the file away or pass \
                     --examples with another path",
                    path.display(),
                    i + 1
                )
            })
        })
        .collect()
}

fn tried_path(path: &Path) -> PathBuf {
    crate::with_suffix(path, ".tried")
}

/// The examples already in `path` (counted by kind) and every passage tried: those of the
/// examples and those listed in `tried_path`. A missing file is an empty one.
fn read_progress(
    path: &Path,
    tried_path: &Path,
) -> Result<(ExamplesSummary, HashSet<String>), String> {
    let read = |p: &Path| match std::fs::read_to_string(p) {
        Ok(text) => Ok(text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(String::new()),
        Err(e) => Err(format!("{}: {e}", p.display())),
    };
    let mut summary = ExamplesSummary {
        answers: 0,
        refusals: 0,
        tried: 0,
    };
    let mut tried = HashSet::new();
    for example in parse_examples(path, &read(path)?)? {
        match example.zhiku.kind {
            ExampleKind::Answer => summary.answers += 1,
            ExampleKind::Refusal => summary.refusals += 1,
        }
        tried.insert(example.zhiku.passage);
    }
    for key in read(tried_path)?.lines().map(str::trim) {
        if !key.is_empty() {
            tried.insert(key.to_owned());
        }
    }
    summary.tried = tried.len();
    Ok((summary, tried))
}

/// Appends examples and tried passages, each flushed as it comes, so that a run stopped at any
/// point loses at most the passage it was on.
struct ExamplesWriter {
    examples: std::fs::File,
    tried: std::fs::File,
    path: PathBuf,
}

impl ExamplesWriter {
    fn open(path: &Path, tried_path: &Path) -> Result<Self, String> {
        let append = |p: &Path| {
            if let Some(dir) = p.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
            }
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .map_err(|e| format!("{}: {e}", p.display()))
        };
        Ok(Self {
            examples: append(path)?,
            tried: append(tried_path)?,
            path: path.to_path_buf(),
        })
    }

    fn example(&mut self, example: &TrainingExample) -> Result<(), OrchestratorError> {
        let line = serde_json::to_string(example)
            .map_err(|e| OrchestratorError::Internal(format!("an example as JSON: {e}")))?;
        writeln!(self.examples, "{line}")
            .and_then(|()| self.examples.flush())
            .map_err(|e| OrchestratorError::Internal(format!("{}: {e}", self.path.display())))
    }

    fn tried(&mut self, passage: &str) -> Result<(), OrchestratorError> {
        writeln!(self.tried, "{passage}")
            .and_then(|()| self.tried.flush())
            .map_err(|e| OrchestratorError::Internal(format!("{}: {e}", self.path.display())))
    }
}

/// "12 examples (10 answers, 2 refusals) from 30 passages tried of 600; ETA 4 min".
fn status_line(
    summary: &ExamplesSummary,
    planned: usize,
    settings: &ExampleSettings,
    started: Instant,
    this_run: usize,
) -> String {
    let made = summary.answers + summary.refusals;
    let per_attempt = started.elapsed().as_secs_f64() / this_run.max(1) as f64;
    let keep_rate = made as f64 / summary.tried.max(1) as f64;
    let attempts_left = if keep_rate > 0.0 {
        (settings.max_examples.saturating_sub(made) as f64 / keep_rate).ceil() as usize
    } else {
        planned
    };
    let attempts_left = attempts_left.min(planned.saturating_sub(summary.tried));
    let eta = (attempts_left as f64 * per_attempt).round() as u64;
    format!(
        "{made} examples ({} answers, {} refusals) from {} passages tried of {planned}; ETA {}",
        summary.answers,
        summary.refusals,
        summary.tried,
        duration(eta)
    )
}

fn duration(seconds: u64) -> String {
    match seconds {
        s if s < 90 => format!("{s} s"),
        s if s < 90 * 60 => format!("{} min", (s + 30) / 60),
        s => format!("{:.1} h", s as f64 / 3600.0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_counts_examples_by_kind_and_every_tried_passage() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kb.examples.jsonl");
        let line = |key: &str, kind: &str| {
            format!(
                r#"{{"conversations":[{{"from":"human","value":"q"}},{{"from":"gpt","value":"a"}}],"zhiku":{{"passage":"{key}","source":"a.md","kind":"{kind}","question":"q","answer":"a","support":1.0}}}}"#
            )
        };
        std::fs::write(
            &path,
            format!(
                "{}\n\n{}\n{}\n",
                line("a.md#0", "answer"),
                line("a.md#1", "refusal"),
                line("b.md#4", "answer")
            ),
        )
        .unwrap();
        std::fs::write(tried_path(&path), "c.md#2\na.md#0\n").unwrap();
        let (summary, tried) = read_progress(&path, &tried_path(&path)).unwrap();
        assert_eq!(
            (summary.answers, summary.refusals, summary.tried),
            (2, 1, 4)
        );
        assert!(tried.contains("c.md#2") && tried.contains("b.md#4"));
    }

    #[test]
    fn a_file_that_is_not_zhikus_examples_is_named_with_its_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mine.jsonl");
        std::fs::write(&path, "{\"instruction\":\"x\",\"output\":\"y\"}\n").unwrap();
        let e = read_progress(&path, &tried_path(&path)).unwrap_err();
        assert!(e.contains("mine.jsonl line 1"), "{e}");
    }

    #[test]
    fn missing_files_are_an_empty_start() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("new.jsonl");
        let (summary, tried) = read_progress(&path, &tried_path(&path)).unwrap();
        assert_eq!(summary.tried, 0);
        assert!(tried.is_empty());
    }

    #[test]
    fn the_default_file_sits_beside_the_adapter() {
        let args = ExampleArgs {
            examples: None,
            max_examples: 1,
            distractors: 1,
            refusal_share: 0.0,
            near_miss_share: 0.25,
            any_answer: false,
            examples_per_document: 1,
            teacher_only: false,
            statement_questions: false,
            no_teacher: false,
            questions_per_passage: 1,
            restate_answers: true,
            self_distill: false,
            evidence_first: false,
            teacher_model: None,
        };
        assert_eq!(
            args.path(Path::new("out/kb-adapter")),
            PathBuf::from("out/kb-adapter.examples.jsonl")
        );
        assert_eq!(args.settings(7).near_miss_share, 0.25);
        assert!(args.settings(7).restate_answers);
    }

    #[test]
    fn a_distilled_file_replaces_the_old_one_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kb.examples.jsonl");
        std::fs::write(&path, "old\n").unwrap();
        let line = r#"{"conversations":[{"from":"human","value":"q"},{"from":"gpt","value":"a"}],"zhiku":{"passage":"a.md#0","source":"a.md","kind":"answer","question":"q","answer":"a","support":1.0,"distilled":"own"}}"#;
        let example: TrainingExample = serde_json::from_str(line).unwrap();
        assert_eq!(example.zhiku.distilled, Some(Distilled::Own));
        write_examples(&path, &[example.clone(), example]).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 2);
        assert!(text.lines().all(|l| l.contains(r#""distilled":"own""#)));
        assert!(!crate::with_suffix(&path, ".tmp").exists());
    }

    #[test]
    fn evidence_is_put_before_each_answer_target_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kb.examples.jsonl");
        let prompt = "已知信息：\\n[1] （来源：a.md）\\nINT4 量化最低需要 6 GB 显存。\\n\\n问题：INT4 要多少显存？";
        let answer = format!(
            r#"{{"conversations":[{{"from":"human","value":"{prompt}"}},{{"from":"gpt","value":"6 GB"}}],"zhiku":{{"passage":"a.md#0","source":"a.md","kind":"answer","question":"INT4 要多少显存？","answer":"6 GB","support":1.0}}}}"#
        );
        // Its fact is in no passage line: kept as it was, and counted.
        let unquoted = answer.replace(r#""answer":"6 GB""#, r#""answer":"7 GB""#);
        let refusal = answer.replace(r#""kind":"answer""#, r#""kind":"refusal""#);
        std::fs::write(&path, format!("{answer}\n{unquoted}\n{refusal}\n")).unwrap();
        assert_eq!(add_evidence_to_file(&path).unwrap(), (1, 1));
        let text = std::fs::read_to_string(&path).unwrap();
        let examples = parse_examples(&path, &text).unwrap();
        assert_eq!(
            examples[0].conversations[1].value,
            "依据：[1] INT4 量化最低需要 6 GB 显存。\n回答：6 GB"
        );
        assert_eq!(examples[1].conversations[1].value, "6 GB");
        assert_eq!(examples[2].conversations[1].value, "6 GB");
        // A rerun changes nothing.
        assert_eq!(add_evidence_to_file(&path).unwrap(), (0, 1));
        assert_eq!(std::fs::read_to_string(&path).unwrap(), text);
    }

    #[test]
    fn eta_reads_as_people_say_it() {
        assert_eq!(duration(42), "42 s");
        assert_eq!(duration(600), "10 min");
        assert_eq!(duration(3 * 3600), "3.0 h");
    }
}
