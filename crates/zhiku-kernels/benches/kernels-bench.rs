//! Per-type microbenchmark of zhiku-kernels (a program, not a test):
//! GFLOP/s for many rows (m = 16: a decode step of 16 streams; 128, 512: prefill) and
//! decode GB/s of weights read (m = 1), next to this
//! machine's measured peaks (a plain f32 `gemm` on the same shape, a memory-bandwidth
//! loop) and candle 0.11's own CPU `QMatMul` on the same weights as the reference column.
//!
//! `cargo bench -p zhiku-kernels --bench kernels-bench [-- --threads 1,2] [--types q5_0,q8_0]
//! [--rows 1,16,128,512]`
//! Each thread count runs in a child process (the pool's size is fixed per process).

use std::time::{Duration, Instant};

use candle_core::quantized::{GgmlDType, QMatMul, ggml_file::qtensor_from_ggml};
use candle_core::{Device, Module, Tensor};
use zhiku_kernels::{QuantMatrix, QuantType, quantize::quantize};

fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn candle_type(t: QuantType) -> GgmlDType {
    match t {
        QuantType::F32 => GgmlDType::F32,
        QuantType::F16 => GgmlDType::F16,
        QuantType::BF16 => GgmlDType::BF16,
        QuantType::Q4_0 => GgmlDType::Q4_0,
        QuantType::Q4_1 => GgmlDType::Q4_1,
        QuantType::Q5_0 => GgmlDType::Q5_0,
        QuantType::Q5_1 => GgmlDType::Q5_1,
        QuantType::Q8_0 => GgmlDType::Q8_0,
        QuantType::Q4K => GgmlDType::Q4K,
        QuantType::Q5K => GgmlDType::Q5K,
        QuantType::Q6K => GgmlDType::Q6K,
    }
}

/// CPU time of every thread of this process, in seconds (pool workers included, their
/// spinning too).
fn process_cpu() -> f64 {
    let Ok(dir) = std::fs::read_dir("/proc/self/task") else {
        return f64::NAN;
    };
    dir.filter_map(|t| t.ok())
        .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<f64>().ok())
        .sum::<f64>()
        / 1e9
}

/// Best wall time of each of the functions, run in interleaved rounds (so a busy moment on
/// a shared machine hits all of them alike) for at least 3 rounds and about `budget`; with
/// the first function's CPU time per call (all threads) over its rounds.
fn rounds<const N: usize>(budget: Duration, fs: &mut [&mut dyn FnMut(); N]) -> ([f64; N], f64) {
    for f in fs.iter_mut() {
        f();
    }
    let start = Instant::now();
    let mut best = [f64::MAX; N];
    let mut cpu = 0.0;
    let mut runs = 0;
    while runs < 3 || (start.elapsed() < budget && runs < 100) {
        for (j, f) in fs.iter_mut().enumerate() {
            let c = if j == 0 { process_cpu() } else { 0.0 };
            let t = Instant::now();
            f();
            best[j] = best[j].min(t.elapsed().as_secs_f64());
            if j == 0 {
                cpu += process_cpu() - c;
            }
        }
        runs += 1;
    }
    (best, cpu / runs as f64)
}

/// Best time of `f` over at least 2 runs and about `budget`.
fn best(budget: Duration, mut f: impl FnMut()) -> f64 {
    let (b, _) = rounds(budget, &mut [&mut f]);
    b[0]
}

/// GB/s of a read-only pass over 512 MiB split over `threads` threads.
fn memory_bandwidth(threads: usize) -> f64 {
    let words = 64 << 20;
    let buf: Vec<u64> = (0..words as u64).collect();
    let t = best(Duration::from_millis(800), || {
        let per = words / threads;
        let total: u64 = std::thread::scope(|s| {
            let hs: Vec<_> = buf
                .chunks(per)
                .map(|c| s.spawn(move || c.iter().fold(0u64, |a, &v| a.wrapping_add(v))))
                .collect();
            hs.into_iter()
                .map(|h| h.join().unwrap_or(0))
                .fold(0, u64::wrapping_add)
        });
        std::hint::black_box(total);
    });
    (words * 8) as f64 / t / 1e9
}

fn parse_types(s: &str) -> Vec<QuantType> {
    let key = |t: &str| t.to_lowercase().replace('_', "");
    s.split(',')
        .filter_map(|t| {
            QuantType::ALL
                .into_iter()
                .find(|q| key(&format!("{q:?}")) == key(t))
        })
        .collect()
}

fn child(threads: usize, types: &[QuantType], rows: &[usize]) {
    zhiku_kernels::set_threads(threads).expect("first use of the pool");
    let budget = Duration::from_millis(1500);
    let dev = Device::Cpu;
    println!(
        "## {threads} thread(s), SIMD path {}; memory read {:.1} GB/s",
        zhiku_kernels::simd_level(),
        memory_bandwidth(threads)
    );
    println!(
        "| type | n×k | m | zhiku | zhiku by CPU time | candle QMatMul | ratio | f32 gemm (peak) | zhiku / peak |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    let mut seed = 1u64;
    let mut rand = move || {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((seed >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.2
    };
    for &ty in types {
        // Qwen2.5-0.5B shapes; K-quants need k a multiple of 256, so 896 becomes 1024.
        let shapes: &[(usize, usize)] = if ty.block_elems() == 256 {
            &[(1024, 1024), (4864, 1024), (896, 4864)]
        } else {
            &[(896, 896), (4864, 896), (896, 4864)]
        };
        for &(n, k) in shapes {
            let wf: Vec<f32> = (0..n * k).map(|_| rand()).collect();
            let bytes = quantize(ty, &wf);
            let ours = QuantMatrix::from_gguf_bytes(ty, n, k, &bytes).expect("matrix");
            let f32w = QuantMatrix::from_gguf_bytes(
                QuantType::F32,
                n,
                k,
                &quantize(QuantType::F32, &ours.dequantize()),
            )
            .expect("f32 matrix");
            let qt = qtensor_from_ggml(candle_type(ty), &bytes, vec![n, k], &dev).expect("qtensor");
            let qmm = QMatMul::from_qtensor(qt).expect("qmatmul");
            for &m in rows {
                let x: Vec<f32> = (0..m * k).map(|_| rand() * 10.0).collect();
                let mut y = vec![0f32; m * n];
                let mut y2 = vec![0f32; m * n];
                let xt = Tensor::from_vec(x.clone(), (m, k), &dev).expect("tensor");
                let ([t_ours, t_f32, t_candle], cpu) = rounds(
                    budget,
                    &mut [
                        &mut || ours.matmul(&x, m, &mut y).expect("matmul"),
                        &mut || f32w.matmul(&x, m, &mut y2).expect("matmul"),
                        &mut || {
                            std::hint::black_box(qmm.forward(&xt).expect("candle forward"));
                        },
                    ],
                );
                let (unit, f) = if m == 1 {
                    // Decode: weight bytes (as stored in the GGUF) per second.
                    ("GB/s", bytes.len() as f64 / 1e9)
                } else {
                    ("GFLOP/s", 2.0 * (m * n * k) as f64 / 1e9)
                };
                let peak_f = if m == 1 { (n * k * 4) as f64 / 1e9 } else { f };
                // A call of a few microseconds is below the CPU clock's resolution.
                let by_cpu = if m == 1 {
                    "–".to_string()
                } else {
                    format!("{:.1}", f / cpu * threads as f64)
                };
                println!(
                    "| {ty:?} | {n}×{k} | {m} | {:.1} {unit} | {by_cpu} | {:.1} | {:.2}× | {:.1} | {:.2}× |",
                    f / t_ours,
                    f / t_candle,
                    t_candle / t_ours,
                    peak_f / t_f32,
                    (f / t_ours) / (peak_f / t_f32),
                );
            }
        }
    }
}

fn main() {
    let types = arg("--types")
        .map(|s| parse_types(&s))
        .unwrap_or_else(|| QuantType::ALL[3..].to_vec());
    let rows_arg = arg("--rows").unwrap_or_else(|| "1,16,128,512".into());
    let rows: Vec<usize> = rows_arg
        .split(',')
        .map(|m| m.parse().expect("--rows: row counts, e.g. 1,16,128"))
        .collect();
    if let Some(t) = arg("--child") {
        child(t.parse().expect("thread count"), &types, &rows);
        return;
    }
    let counts = arg("--threads").unwrap_or_else(|| "1,2".into());
    let exe = std::env::current_exe().expect("own path");
    println!(
        "zhiku-kernels microbenchmark. Decode rows (m = 1) are GB/s of weights read (the f32 \
         column: GB/s of its f32 weights); prefill rows GFLOP/s. Best of interleaved rounds; \
         'by CPU time' divides the work by the CPU time of all threads per call, times the \
         thread count (what a machine of otherwise idle cores would give)."
    );
    for t in counts.split(',') {
        let types_arg: Vec<String> = types.iter().map(|t| format!("{t:?}")).collect();
        let status = std::process::Command::new(&exe)
            .args([
                "--child",
                t,
                "--types",
                &types_arg.join(","),
                "--rows",
                &rows_arg,
            ])
            .env("RAYON_NUM_THREADS", t)
            .status()
            .expect("run the child");
        if !status.success() {
            eprintln!("child with {t} threads failed: {status}");
        }
    }
}
