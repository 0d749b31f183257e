//! zhiku-ocr beside RapidOCR on the same pages, in one run: character error rate per
//! condition and speed (pages/s, seconds per page) at 1 and 2 threads.
//!
//! ```text
//! cargo run -p zhiku-ocr --example ocr-bench -- [--models models/ppocr]
//!     [--python .venv-bench/bin/python] [--repeat 3] [--threads 1,2]
//! ```
//!
//! The reference is `scripts/rapidocr_bench.py`: rapidocr-onnxruntime 1.4.4 on onnxruntime,
//! reading the same PNG files with the same model files (a Python environment holding both:
//! `python3 -m venv .venv-bench && .venv-bench/bin/pip install rapidocr-onnxruntime==1.4.4
//! onnxruntime==1.31.1`). RapidOCR orders lines top to bottom only; its CER is also given
//! with its lines put in zhiku-ocr's reading order, which isolates recognition.

#[path = "../tests/corpus/mod.rs"]
mod corpus;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use zhiku_ocr::{DecodeLimits, Line, OcrEngine, OcrOptions, Page, Point};

struct Args {
    models: PathBuf,
    python: PathBuf,
    repeat: usize,
    threads: Vec<usize>,
}

fn args() -> Args {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let mut args = Args {
        models: corpus::models_dir(),
        python: root.join(".venv-bench/bin/python"),
        repeat: 3,
        threads: vec![1, 2],
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

fn reference(args: &Args, threads: usize, files: &[PathBuf]) -> HashMap<String, (Run, String)> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/rapidocr_bench.py");
    let output = Command::new(&args.python)
        .arg(&script)
        .arg("--models")
        .arg(&args.models)
        .args([
            "--threads",
            &threads.to_string(),
            "--repeat",
            &args.repeat.to_string(),
        ])
        .args(files)
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", args.python.display()));
    assert!(
        output.status.success(),
        "RapidOCR failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).expect("RapidOCR's JSON");
    let mut out = HashMap::new();
    for (name, result) in json.as_object().expect("an object") {
        let seconds: Vec<f64> = result["seconds"]
            .as_array()
            .expect("seconds")
            .iter()
            .filter_map(|s| s.as_f64())
            .collect();
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
        let raw = texts.join("\n");
        let ordered = Page::from_lines(0, 0, lines).text();
        out.insert(
            name.clone(),
            (
                Run {
                    text: raw,
                    seconds: seconds.iter().sum::<f64>() / seconds.len().max(1) as f64,
                    lines: texts,
                },
                ordered,
            ),
        );
    }
    out
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
        let engine = OcrEngine::load(
            args.models.to_str().expect("utf-8 path"),
            None,
            OcrOptions {
                threads,
                ..OcrOptions::default()
            },
        )
        .expect("loading the models");
        // One untimed run: the first inference allocates and plans.
        let _ = engine.recognize(&conditions[0].1.image);
        let theirs = reference(&args, threads, &files);
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
        for ((name, page), path) in conditions.iter().zip(&files) {
            let bytes = std::fs::read(path).expect("reading a page");
            let mut seconds = 0.0;
            let mut result = None;
            for _ in 0..args.repeat {
                let start = Instant::now();
                result = Some(
                    engine
                        .recognize_bytes(&bytes, &DecodeLimits::default())
                        .expect("recognition"),
                );
                seconds += start.elapsed().as_secs_f64();
            }
            let result = result.expect("at least one run");
            let ours = Run {
                text: result.text(),
                seconds: seconds / args.repeat.max(1) as f64,
                lines: result.lines.iter().map(|l| l.text.clone()).collect(),
            };
            let key = format!("{name}.png");
            let (reference, reordered) = &theirs[&key];
            let truth = page.text();
            println!(
                "{:<12} {:>8.2}% {:>12.2}% {:>13.2}% {:>10.3} {:>12.3} {:>5}/{:<5}",
                name,
                100.0 * corpus::cer(&truth, &ours.text),
                100.0 * corpus::cer(&truth, &reference.text),
                100.0 * corpus::cer(&truth, reordered),
                ours.seconds,
                reference.seconds,
                same_lines(&ours.lines, &reference.lines),
                reference.lines.len()
            );
            ours_total += ours.seconds;
            theirs_total += reference.seconds;
        }
        let pages = conditions.len() as f64;
        println!(
            "pages/s: zhiku-ocr {:.3}, RapidOCR {:.3} ({:.2}x)",
            pages / ours_total,
            pages / theirs_total,
            theirs_total / ours_total
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
