//! Times the encoder alone (no gRPC, no tokenizer, no pooling) on fixed batches, once per
//! attention mode, the modes interleaved rep by rep so that a noisy machine slows them alike.
//! Prints the fastest and the median of the repetitions: the place to measure a change to
//! the forward pass.
//!
//!   cargo run --release -p zhiku-embedder --example forward-timing -- [MODEL_DIR] [REPS]

use std::path::PathBuf;
use std::time::{Duration, Instant};

use candle_core::{DType, Device};
use candle_nn::VarBuilder;
use zhiku_embedder::encoder::{AttentionMode, EncoderConfig, Positions, TransformerEncoder};

/// Deterministic lengths in `lo..=hi` and token ids below `vocab` (a tiny LCG: no rand crate).
fn batch(count: usize, lo: usize, hi: usize, vocab: u32, seed: u64) -> (Vec<u32>, Vec<usize>) {
    let mut state = seed;
    let mut next = move || {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (state >> 33) as usize
    };
    let lengths: Vec<usize> = (0..count).map(|_| lo + next() % (hi - lo + 1)).collect();
    let total = lengths.iter().sum();
    let ids = (0..total)
        .map(|_| 1000 + (next() as u32 % (vocab - 1000)))
        .collect();
    (ids, lengths)
}

/// The allocator of every zhiku binary (why: zhiku-embedder's main.rs).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // SAFETY: the first statement of main; no other thread exists yet.
    unsafe { zhiku_models::pin_cpu_threads() };
    let mut args = std::env::args().skip(1);
    let dir = PathBuf::from(
        args.next()
            .unwrap_or_else(|| "models/all-MiniLM-L6-v2".into()),
    );
    let reps: usize = args.next().map(|r| r.parse()).transpose()?.unwrap_or(30);
    let cfg: EncoderConfig =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json"))?)?;
    // SAFETY: the weights file is not modified while mapped.
    let vb = unsafe {
        VarBuilder::from_mmaped_safetensors(
            &[dir.join("model.safetensors")],
            DType::F32,
            &Device::Cpu,
        )?
    };
    let encoder = TransformerEncoder::load(vb, &cfg, Positions::FromZero)?;
    let vocab = cfg.vocab_size.min(20_000) as u32;
    let cases = [
        ("question ×1 (15 tok)", batch(1, 15, 15, vocab, 1)),
        ("passage ×1 (41 tok)", batch(1, 41, 41, vocab, 2)),
        ("questions ×8 (8-25)", batch(8, 8, 25, vocab, 5)),
        ("questions ×32 (8-25)", batch(32, 8, 25, vocab, 3)),
        ("passages ×32 (10-60)", batch(32, 10, 60, vocab, 4)),
    ];
    let modes = [AttentionMode::ByLength, AttentionMode::Batched];
    println!(
        "{:<22} {:<9} {:>9} {:>10}",
        "batch", "mode", "best ms", "median ms"
    );
    for (name, (ids, lengths)) in &cases {
        let mut times = vec![Vec::<Duration>::new(); modes.len()];
        for rep in 0..=reps {
            for (m, &mode) in modes.iter().enumerate() {
                let start = Instant::now();
                encoder.forward_packed_with(ids, lengths, mode)?;
                if rep > 0 {
                    times[m].push(start.elapsed());
                }
            }
        }
        for (m, mode) in modes.iter().enumerate() {
            let t = &mut times[m];
            t.sort();
            let ms = |d: Duration| d.as_secs_f64() * 1e3;
            println!(
                "{name:<22} {:<9} {:>9.2} {:>10.2}",
                format!("{mode:?}"),
                ms(t[0]),
                ms(t[t.len() / 2])
            );
        }
    }
    Ok(())
}
