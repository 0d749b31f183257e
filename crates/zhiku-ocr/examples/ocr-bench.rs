//! zhiku-ocr beside RapidOCR on the same pages, in one run: character error rate per
//! condition and speed (pages/s, seconds per page) at 1 and 2 threads.
//!
//! ```text
//! cargo run --release -p zhiku-ocr --example ocr-bench -- [--models models/ppocr]
//!     [--python .venv-bench/bin/python] [--repeat 3] [--threads 1,2]
//!     [--runtime onnxruntime|tract|both]
//! ```
//!
//! The reference is `scripts/rapidocr_bench.py`: rapidocr-onnxruntime 1.4.4 on onnxruntime,
//! reading the same PNG files with the same model files (a Python environment holding both:
//! `python3 -m venv .venv-bench && .venv-bench/bin/pip install rapidocr-onnxruntime==1.4.4
//! onnxruntime==1.31.1`). It runs as a worker beside this program, and each timed read of
//! ours alternates with one of RapidOCR's on the same page (which goes first alternates
//! too): on a shared machine both then see the same load, and the ratio holds where the
//! absolute times do not. Both sides time the file read and decode as well. RapidOCR orders
//! lines top to bottom only; its CER is also given with its lines put in zhiku-ocr's reading
//! order, which isolates recognition.
//!
//! `--runtime both` (a build with `--features tract`) then times the same pipeline on tract,
//! the pure-Rust ONNX runtime, against ONNX Runtime on the same pages, alternating as above,
//! and says whether the two read identical text: the measurement behind the runtime choice.

#[path = "../tests/corpus/mod.rs"]
mod corpus;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::Instant;

use zhiku_ocr::{DecodeLimits, Line, OcrEngine, OcrOptions, OcrRuntime, Page, Point};

struct Args {
    models: PathBuf,
    python: PathBuf,
    repeat: usize,
    threads: Vec<usize>,
    /// The runtime of the table against RapidOCR.
    runtime: OcrRuntime,
    /// Also tract against ONNX Runtime on the same pages.
    compare_runtimes: bool,
}

fn args() -> Args {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let mut args = Args {
        models: corpus::models_dir(),
        python: root.join(".venv-bench/bin/python"),
        repeat: 3,
        threads: vec![1, 2],
        runtime: OcrRuntime::OnnxRuntime,
        compare_runtimes: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--models" => args.models = value.into(),
            "--python" => args.python = value.into(),
            "--repeat" => args.repeat = value.parse().expect("--repeat N"),
            "--threads" => {
                args.threads = value
                    .split(',')
                    .map(|t| t.parse().expect("--threads 1,2"))
                    .collect()
            }
            "--runtime" => match value.as_str() {
                "onnxruntime" => args.runtime = OcrRuntime::OnnxRuntime,
                "tract" => args.runtime = OcrRuntime::Tract,
                "both" => args.compare_runtimes = true,
                other => panic!("--runtime onnxruntime|tract|both, not {other}"),
            },
            other => panic!("unknown flag {other}"),
        }
    }
    args
}

struct Run {
    text: String,
    seconds: f64,
    lines: Vec<String>,
}

/// RapidOCR in a Python worker: one image path a line in, one JSON line out.
struct Reference {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Reference {
    fn start(args: &Args, threads: usize) -> Self {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/rapidocr_bench.py");
        let mut child = Command::new(&args.python)
            .arg(&script)
            .arg("--models")
            .arg(&args.models)
            .args(["--threads", &threads.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("running {}: {e}", args.python.display()));
        let stdin = child.stdin.take().expect("piped stdin");
        let stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
        Self {
            child,
            stdin,
            stdout,
        }
    }

    /// One timed read of `path`: its lines (raw order, and in zhiku-ocr's reading order)
    /// and the seconds RapidOCR took.
    fn read(&mut self, path: &Path) -> (Run, String) {
        writeln!(self.stdin, "{}", path.display()).expect("writing to RapidOCR");
        self.stdin.flush().expect("writing to RapidOCR");
        let mut answer = String::new();
        self.stdout
            .read_line(&mut answer)
            .expect("reading RapidOCR's answer");
        assert!(
            !answer.is_empty(),
            "RapidOCR stopped (see its stderr above)"
        );
        let result: serde_json::Value = serde_json::from_str(&answer).expect("RapidOCR's JSON");
        let mut lines = Vec::new();
        let mut texts = Vec::new();
        for line in result["lines"].as_array().expect("lines") {
            let text = line["text"].as_str().unwrap_or_default().to_string();
            let corners: Vec<Point> = line["box"]
                .as_array()
                .expect("box")
                .iter()
                .map(|p| Point {
                    x: p[0].as_f64().unwrap_or(0.0) as f32,
                    y: p[1].as_f64().unwrap_or(0.0) as f32,
                })
                .collect();
            texts.push(text.clone());
            lines.push(Line {
                text,
                bbox: [corners[0], corners[1], corners[2], corners[3]],
                confidence: line["score"].as_f64().unwrap_or(0.0) as f32,
                vertical: false,
            });
        }
        let ordered = Page::from_lines(0, 0, lines).text();
        let run = Run {
            text: texts.join("\n"),
            seconds: result["seconds"].as_f64().expect("seconds"),
            lines: texts,
        };
        (run, ordered)
    }
}

impl Drop for Reference {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One timed read of ours, the file read and decode included.
fn ours(engine: &OcrEngine, path: &Path) -> Run {
    let start = Instant::now();
    let bytes = std::fs::read(path).expect("reading a page");
    let page = engine
        .recognize_bytes(&bytes, &DecodeLimits::default())
        .expect("recognition");
    Run {
        seconds: start.elapsed().as_secs_f64(),
        text: page.text(),
        lines: page.lines.iter().map(|l| l.text.clone()).collect(),
    }
}

fn load(args: &Args, threads: usize, runtime: OcrRuntime) -> OcrEngine {
    OcrEngine::load(
        args.models.to_str().expect("utf-8 path"),
        None,
        OcrOptions {
            threads,
            runtime,
            ..OcrOptions::default()
        },
    )
    .unwrap_or_else(|e| panic!("loading the models on {runtime:?}: {e}"))
}

/// The same pipeline on tract against ONNX Runtime (`onnxruntime`): seconds per page, and
/// whether the text and lines read are identical.
fn compare_runtimes(
    args: &Args,
    threads: usize,
    onnxruntime: &OcrEngine,
    conditions: &[(&'static str, corpus::RenderedPage)],
    files: &[PathBuf],
) {
    let started = Instant::now();
    let tract = load(args, threads, OcrRuntime::Tract);
    println!(
        "\n== tract against ONNX Runtime, {threads} thread(s) (tract loaded and optimised in {:.2} s)",
        started.elapsed().as_secs_f64()
    );
    ours(&tract, &files[0]);
    println!(
        "{:<12} {:>10} {:>12} {:>7} {:>10} {:>10} {:>10}",
        "condition", "s/page ORT", "s/page tract", "tract×", "same text", "CER tract", "same lines"
    );
    let (mut ort_total, mut tract_total, mut identical) = (0.0, 0.0, 0);
    let mut turn = 0usize;
    for ((name, page), path) in conditions.iter().zip(files) {
        let seconds = |run: &Run| run.seconds;
        let (a, a_seconds, b, b_seconds) = alternating(
            args.repeat,
            &mut turn,
            || ours(onnxruntime, path),
            seconds,
            || ours(&tract, path),
            seconds,
        );
        identical += usize::from(a.text == b.text);
        println!(
            "{:<12} {:>10.3} {:>12.3} {:>7.2} {:>10} {:>9.2}% {:>5}/{:<5}",
            name,
            a_seconds,
            b_seconds,
            a_seconds / b_seconds,
            if a.text == b.text { "yes" } else { "NO" },
            100.0 * corpus::cer(&page.text(), &b.text),
            same_lines(&b.lines, &a.lines),
            a.lines.len()
        );
        ort_total += a_seconds;
        tract_total += b_seconds;
    }
    let pages = conditions.len() as f64;
    println!(
        "pages/s: ONNX Runtime {:.3}, tract {:.3} (tract at {:.2}x ONNX Runtime's speed); identical text on {identical}/{} pages",
        pages / ort_total,
        pages / tract_total,
        ort_total / tract_total,
        conditions.len()
    );
}

/// `repeat` (at least one) timed reads of the same page by each of two sides, which goes
/// first alternating with `turn` so that neither always follows the other's caches: each
/// side's last result and its mean seconds.
fn alternating<A, B>(
    repeat: usize,
    turn: &mut usize,
    mut first: impl FnMut() -> A,
    first_seconds: impl Fn(&A) -> f64,
    mut second: impl FnMut() -> B,
    second_seconds: impl Fn(&B) -> f64,
) -> (A, f64, B, f64) {
    let rounds = repeat.max(1);
    let (mut a_seconds, mut b_seconds) = (0.0, 0.0);
    let mut last = None;
    for _ in 0..rounds {
        *turn += 1;
        let (a, b) = if turn.is_multiple_of(2) {
            let a = first();
            (a, second())
        } else {
            let b = second();
            (first(), b)
        };
        a_seconds += first_seconds(&a);
        b_seconds += second_seconds(&b);
        last = Some((a, b));
    }
    let (a, b) = last.expect("at least one round");
    let rounds = rounds as f64;
    (a, a_seconds / rounds, b, b_seconds / rounds)
}

fn same_lines(a: &[String], b: &[String]) -> usize {
    let mut pool: HashMap<&str, usize> = HashMap::new();
    for t in b {
        *pool.entry(t.as_str()).or_default() += 1;
    }
    a.iter()
        .filter(|t| match pool.get_mut(t.as_str()) {
            Some(n) if *n > 0 => {
                *n -= 1;
                true
            }
            _ => false,
        })
        .count()
}

fn main() {
    let args = args();
    let font = corpus::find_font().expect("a CJK font (fonts-wqy-microhei, or ZHIKU_CJK_FONT)");
    let conditions = corpus::conditions(&font);
    let dir = std::env::temp_dir().join(format!("zhiku-ocr-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let mut files = Vec::new();
    for (name, page) in &conditions {
        let path = dir.join(format!("{name}.png"));
        page.image.save(&path).expect("writing a page");
        files.push(path);
    }
    println!(
        "{} pages: {}",
        conditions.len(),
        conditions
            .iter()
            .map(|(n, p)| format!("{n} {}x{}", p.image.width(), p.image.height()))
            .collect::<Vec<_>>()
            .join(", ")
    );
    for &threads in &args.threads {
        let engine = load(&args, threads, args.runtime);
        let mut reference = Reference::start(&args, threads);
        // One untimed run each: the first inference allocates and plans.
        ours(&engine, &files[0]);
        reference.read(&files[0]);
        println!("\n== {threads} thread(s)");
        println!(
            "{:<12} {:>9} {:>13} {:>14} {:>10} {:>12} {:>11}",
            "condition",
            "CER ours",
            "CER RapidOCR",
            "(our order)",
            "s/page",
            "s/page Rapid",
            "same lines"
        );
        let (mut ours_total, mut theirs_total) = (0.0, 0.0);
        let mut turn = 0usize;
        for ((name, page), path) in conditions.iter().zip(&files) {
            let (mine, my_seconds, (reference_run, reordered), their_seconds) = alternating(
                args.repeat,
                &mut turn,
                || ours(&engine, path),
                |run| run.seconds,
                || reference.read(path),
                |(run, _)| run.seconds,
            );
            let truth = page.text();
            println!(
                "{:<12} {:>8.2}% {:>12.2}% {:>13.2}% {:>10.3} {:>12.3} {:>5}/{:<5}",
                name,
                100.0 * corpus::cer(&truth, &mine.text),
                100.0 * corpus::cer(&truth, &reference_run.text),
                100.0 * corpus::cer(&truth, &reordered),
                my_seconds,
                their_seconds,
                same_lines(&mine.lines, &reference_run.lines),
                reference_run.lines.len()
            );
            ours_total += my_seconds;
            theirs_total += their_seconds;
        }
        let pages = conditions.len() as f64;
        println!(
            "pages/s: zhiku-ocr {:.3}, RapidOCR {:.3} ({:.2}x)",
            pages / ours_total,
            pages / theirs_total,
            theirs_total / ours_total
        );
        if args.compare_runtimes {
            drop(reference);
            compare_runtimes(&args, threads, &engine, &conditions, &files);
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}
