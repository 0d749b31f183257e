//! The tensor path (candle's ops over a KV cache of tensors: what a GPU runs, and what a
//! trainer differentiates through) run on the CPU against the kernel path, on tiny GGUF
//! files the tests write: prompts prefilled in chunks, decode steps, mixed batches with a
//! different adapter per row, and prefix-cache hits through the engine.
//!
//! Tolerances: in f32 both paths compute the same function and differ only in the order of
//! their sums (attention, matmul blocking), so logits agree to 1e-4. With Q8_0 weights each
//! path also rounds its activations to 8-bit blocks in its own way (zhiku's kernels, candle's
//! quantized matmul): the tensor path must then be as close to the exact, dequantized model
//! as the kernel path is.

mod common;

use std::path::Path;
use std::sync::Arc;

use candle_core::quantized::{GgmlDType, QTensor, gguf_file};
use candle_core::{DType, Device, Tensor};
use zhiku_generator::config::{ComputePathArg, KvCacheDtype};
use zhiku_generator::engine::Completion;
use zhiku_generator::sampling::{
    DeviceRow, DeviceSampler, Filter, Pick, SamplingConfig, pick_on_device, sample_host,
};
use zhiku_generator::{GeneratorArgs, GeneratorState};
use zhiku_lm::ComputePath;
use zhiku_lm::decoder::{Batch, BatchModel, Decoder, Solo, prepare_adapter};
use zhiku_lm::families::{GgufTensors, gguf_decoder};
use zhiku_lm::kv::{KvCache, KvDtype, LayerKv};
use zhiku_lm::lora::LoraAdapter;
use zhiku_lm::transfer;

use common::tiny_gguf::{HEAD_DIM, HEADS, HIDDEN, KV_HEADS, LAYERS, tiny_weights, write_tiny_gguf};
use common::{max_abs_diff, worst, write_adapter};

const PROMPT: &[u32] = &[
    17, 104, 101, 108, 108, 111, 32, 119, 111, 114, 108, 100, 3, 9, 40,
];
const FOLLOW: &[u32] = &[44, 200, 7, 99];
const ARCHES: [&str; 3] = ["llama", "qwen2", "glm4"];

fn decoder(path: &Path, arch: &str, compute: ComputePath) -> Decoder {
    let mut gg = GgufTensors::open(path, &Device::Cpu, compute).unwrap();
    gguf_decoder(&mut gg, arch).unwrap()
}

/// Logits after each prompt chunk (the prompt in two chunks of 9 and 6), then after each
/// follow-up token.
fn logits(model: &Decoder, adapter: Option<Arc<LoraAdapter>>) -> Vec<Tensor> {
    let mut solo = Solo::new(model, 64).unwrap().with_adapter(adapter);
    let mut out = vec![
        solo.feed(model, &PROMPT[..9]).unwrap(),
        solo.feed(model, &PROMPT[9..]).unwrap(),
    ];
    for t in FOLLOW {
        out.push(solo.feed(model, &[*t]).unwrap());
    }
    out
}

/// The tensor path is what it claims: a KV cache of tensors, and no kernel-only weights.
#[test]
fn the_tensor_path_keeps_its_cache_in_tensors() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("llama.gguf");
    write_tiny_gguf(&path, "llama", &tiny_weights("llama", 3), GgmlDType::Q8_0);
    for (compute, tensors) in [(ComputePath::Kernels, false), (ComputePath::Tensors, true)] {
        let model = decoder(&path, "llama", compute);
        assert_eq!(model.compute_path(), compute);
        let cache = KvCache::new(
            model.kv_shape(),
            64,
            KvDtype::F16,
            model.device(),
            model.kv_dtype(),
            model.compute_path(),
        )
        .unwrap();
        assert_eq!(
            matches!(cache.layers[0], LayerKv::Tensor { .. }),
            tensors,
            "{compute:?}"
        );
    }
}

#[test]
fn f32_families_give_the_kernel_paths_logits_on_the_tensor_path() {
    let dir = tempfile::tempdir().unwrap();
    for arch in ARCHES {
        let path = dir.path().join(format!("{arch}-f32.gguf"));
        write_tiny_gguf(&path, arch, &tiny_weights(arch, 7), GgmlDType::F32);
        let kernels = logits(&decoder(&path, arch, ComputePath::Kernels), None);
        let tensors = logits(&decoder(&path, arch, ComputePath::Tensors), None);
        let diff = worst(&kernels, &tensors);
        println!("{arch} f32: tensor path {diff:.2e} from the kernel path");
        assert!(diff < 1e-4, "{arch} f32: the paths differ by {diff}");
    }
}

/// Every tensor of a GGUF file, dequantized to f32, in file order.
fn dequantized(path: &Path) -> Vec<(String, Tensor)> {
    let mut file = std::fs::File::open(path).unwrap();
    let content = gguf_file::Content::read(&mut file).unwrap();
    let mut names: Vec<(u64, String)> = content
        .tensor_infos
        .iter()
        .map(|(n, i)| (i.offset, n.clone()))
        .collect();
    names.sort();
    names
        .into_iter()
        .map(|(_, name)| {
            let t: QTensor = content.tensor(&mut file, &name, &Device::Cpu).unwrap();
            (name, t.dequantize(&Device::Cpu).unwrap())
        })
        .collect()
}

#[test]
fn quantized_families_on_the_tensor_path_are_as_exact_as_the_kernel_path() {
    let dir = tempfile::tempdir().unwrap();
    for arch in ARCHES {
        for dtype in [GgmlDType::Q8_0, GgmlDType::Q4_0] {
            let q = dir.path().join(format!("{arch}-{dtype:?}.gguf"));
            write_tiny_gguf(&q, arch, &tiny_weights(arch, 7), dtype);
            let exact_path = dir.path().join(format!("{arch}-{dtype:?}-f32.gguf"));
            write_tiny_gguf(&exact_path, arch, &dequantized(&q), GgmlDType::F32);
            let exact = logits(&decoder(&exact_path, arch, ComputePath::Kernels), None);
            let kernels = worst(
                &logits(&decoder(&q, arch, ComputePath::Kernels), None),
                &exact,
            );
            let tensors = worst(
                &logits(&decoder(&q, arch, ComputePath::Tensors), None),
                &exact,
            );
            println!("{arch} {dtype:?}: kernels {kernels:.2e}, tensors {tensors:.2e} from exact");
            assert!(
                tensors <= 2.0 * kernels + 1e-3,
                "{arch} {dtype:?}: the tensor path is {tensors} from the exact logits, the \
                 kernel path {kernels}"
            );
        }
    }
}

fn adapter_modules() -> Vec<(String, usize, usize)> {
    let mut m = Vec::new();
    for i in 0..LAYERS {
        let p = format!("model.layers.{i}");
        m.push((format!("{p}.self_attn.q_proj"), HIDDEN, HEADS * HEAD_DIM));
        m.push((format!("{p}.self_attn.v_proj"), HIDDEN, KV_HEADS * HEAD_DIM));
        m.push((format!("{p}.mlp.down_proj"), 128, HIDDEN));
    }
    m
}

fn write_test_adapter(dir: &Path, name: &str, seed: u64) -> std::path::PathBuf {
    let path = dir.join(name);
    write_adapter(
        &path,
        seed,
        0.3,
        &["q_proj", "v_proj", "down_proj"],
        &adapter_modules(),
    );
    path
}

fn adapter(path: &Path, name: &str, model: &Decoder) -> Arc<LoraAdapter> {
    let a = LoraAdapter::load(name, path, DType::F32, &Device::Cpu).unwrap();
    Arc::new(prepare_adapter(a, model).unwrap())
}

/// The same adapter gives the same logits on both paths.
#[test]
fn adapters_give_the_same_logits_on_both_paths() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("llama-f32.gguf");
    write_tiny_gguf(&path, "llama", &tiny_weights("llama", 5), GgmlDType::F32);
    let lora = write_test_adapter(dir.path(), "legal", 2);
    let kernels = decoder(&path, "llama", ComputePath::Kernels);
    let tensors = decoder(&path, "llama", ComputePath::Tensors);
    let base = logits(&tensors, None);
    let with_k = logits(&kernels, Some(adapter(&lora, "legal", &kernels)));
    let with_t = logits(&tensors, Some(adapter(&lora, "legal", &tensors)));
    assert!(
        worst(&with_t, &base) > 1e-2,
        "the adapter must change the logits"
    );
    let diff = worst(&with_k, &with_t);
    assert!(diff < 1e-4, "with the adapter the paths differ by {diff}");
}

/// A step of several sequences (prefill chunks and decode rows, each sequence with its own
/// scattered blocks and its own adapter) gives each the logits it gets alone, on the tensor
/// path, and those are the kernel path's.
#[test]
fn a_batch_on_the_tensor_path_gives_each_sequence_its_logits_alone() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("llama-f32.gguf");
    write_tiny_gguf(&path, "llama", &tiny_weights("llama", 5), GgmlDType::F32);
    let a_dir = write_test_adapter(dir.path(), "a", 3);
    let b_dir = write_test_adapter(dir.path(), "b", 4);
    let model = decoder(&path, "llama", ComputePath::Tensors);
    let kernels = decoder(&path, "llama", ComputePath::Kernels);
    let a = adapter(&a_dir, "a", &model);
    let b = adapter(&b_dir, "b", &model);
    let (ka, kb) = (
        adapter(&a_dir, "a", &kernels),
        adapter(&b_dir, "b", &kernels),
    );
    type Prompt = (Vec<u32>, Option<Arc<LoraAdapter>>, Option<Arc<LoraAdapter>>);
    let prompts: Vec<Prompt> = vec![
        (PROMPT.to_vec(), None, None),
        (vec![5, 6, 7], Some(a.clone()), Some(ka.clone())),
        ((20..60).collect(), Some(b.clone()), Some(kb.clone())),
        (vec![9], None, None),
        (PROMPT[..5].to_vec(), Some(b.clone()), Some(kb.clone())),
    ];
    let alone = |m: &Decoder, p: &[u32], ad: Option<Arc<LoraAdapter>>| {
        let mut solo = Solo::new(m, 64).unwrap().with_adapter(ad);
        let first = solo.feed(m, p).unwrap();
        (first, solo.feed(m, &[42]).unwrap())
    };
    let mut cache = f32_cache(&model, 16 * 4 * prompts.len());
    let tables: Vec<Vec<u32>> = (0..prompts.len() as u32)
        .map(|s| (s * 4..s * 4 + 4).rev().collect())
        .collect();
    let mut batch = Batch::default();
    for ((p, ad, _), blocks) in prompts.iter().zip(&tables) {
        batch.push(p, 0, blocks, ad.clone(), true);
    }
    let (first, prefill) = transfer::counted(|| model.forward(&batch, &mut cache).unwrap());
    let mut batch = Batch::default();
    for ((p, ad, _), blocks) in prompts.iter().zip(&tables).rev() {
        batch.push(&[42], p.len(), blocks, ad.clone(), true);
    }
    let (second, decode) = transfer::counted(|| model.forward(&batch, &mut cache).unwrap());
    // Host traffic per step, whatever the number of layers (LAYERS here): the tokens'
    // embedding rows, the positions, every sequence's slots, the prompt chunks' masks and
    // the logit rows, each one upload; nothing read back (the logits stay on the device).
    assert_eq!(prefill.uploads, 5, "prefill: {prefill:?}");
    assert_eq!(decode.uploads, 4, "decode (no mask): {decode:?}");
    assert_eq!((prefill.read_backs, decode.read_backs), (0, 0));
    let rows = prompts.iter().map(|p| p.0.len()).sum::<usize>();
    let cached: usize = prompts.iter().map(|p| p.0.len() + 1).sum();
    assert!(
        decode.upload_bytes <= n_seqs_bytes(prompts.len(), cached) + prompts.len() * HIDDEN * 4,
        "decode uploaded {} bytes for {} sequences",
        decode.upload_bytes,
        prompts.len()
    );
    assert!(
        prefill.upload_bytes > decode.upload_bytes,
        "{rows} prompt rows"
    );
    let n = prompts.len();
    for (i, (p, ad, kad)) in prompts.iter().enumerate() {
        let (one, two) = alone(&model, p, ad.clone());
        let (k_one, k_two) = alone(&kernels, p, kad.clone());
        let together = [first.get(i).unwrap(), second.get(n - 1 - i).unwrap()];
        for (step, (alone_t, (together_t, alone_k))) in [one, two]
            .iter()
            .zip(together.iter().zip([k_one, k_two].iter()))
            .enumerate()
        {
            let batched = max_abs_diff(alone_t, together_t);
            assert!(
                batched < 1e-5,
                "prompt {i}, step {step}: batching moved it by {batched}"
            );
            let paths = max_abs_diff(alone_t, alone_k);
            assert!(
                paths < 1e-4,
                "prompt {i}, step {step}: the paths differ by {paths}"
            );
        }
    }
}

/// A decode step whose rows use different adapters (two, and the base model) uploads as
/// often as the same step on the base model: the rows' adapter slots go up with the logit
/// rows, one u32 a row, and the masks and stacked weights are made on the device.
#[test]
fn adapters_cost_a_decode_step_no_upload_of_their_own() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("llama-f32.gguf");
    write_tiny_gguf(&path, "llama", &tiny_weights("llama", 5), GgmlDType::F32);
    let model = decoder(&path, "llama", ComputePath::Tensors);
    let a = adapter(&write_test_adapter(dir.path(), "a", 3), "a", &model);
    let b = adapter(&write_test_adapter(dir.path(), "b", 4), "b", &model);
    let prompts: [&[u32]; 4] = [PROMPT, &[5, 6, 7], FOLLOW, &[9]];
    let tables: Vec<Vec<u32>> = (0..prompts.len() as u32)
        .map(|s| vec![2 * s, 2 * s + 1])
        .collect();
    let mixed = [Some(a.clone()), None, Some(b), Some(a)];
    let mut steps = Vec::new();
    for adapters in [mixed.to_vec(), vec![None; prompts.len()]] {
        let mut cache = f32_cache(&model, 16 * 2 * prompts.len());
        let mut batch = Batch::default();
        for ((p, blocks), ad) in prompts.iter().zip(&tables).zip(&adapters) {
            batch.push(p, 0, blocks, ad.clone(), true);
        }
        model.forward(&batch, &mut cache).unwrap();
        let mut batch = Batch::default();
        for ((p, blocks), ad) in prompts.iter().zip(&tables).zip(&adapters) {
            batch.push(&[42], p.len(), blocks, ad.clone(), true);
        }
        let (_, step) = transfer::counted(|| model.forward(&batch, &mut cache).unwrap());
        steps.push(step);
    }
    let (with, without) = (steps[0], steps[1]);
    assert_eq!(with.uploads, 4, "{with:?}");
    assert_eq!(without.uploads, 4, "{without:?}");
    assert_eq!(with.upload_bytes, without.upload_bytes + 4 * prompts.len());
    assert_eq!((with.read_backs, without.read_backs), (0, 0));
}

/// An f32 KV cache of `tokens` laid out for `model`'s path.
fn f32_cache(model: &Decoder, tokens: usize) -> KvCache {
    KvCache::new(
        model.kv_shape(),
        tokens,
        KvDtype::F32,
        model.device(),
        model.kv_dtype(),
        model.compute_path(),
    )
    .unwrap()
}

/// The integers a decode step of `seqs` sequences uploads: a token, a position and a logit
/// row each, and the slots of their `cached` tokens.
fn n_seqs_bytes(seqs: usize, cached: usize) -> usize {
    4 * (3 * seqs + cached)
}

fn state(path: &Path, compute: ComputePathArg, lora: &Path) -> GeneratorState {
    let mut args = GeneratorArgs::for_model(path.to_string_lossy().into_owned());
    args.compute_path = compute;
    args.kv_cache_dtype = KvCacheDtype::F32;
    args.prefill_chunk = 8;
    args.lora = vec![format!("legal={}", lora.display())];
    GeneratorState::load(&args).unwrap()
}

/// A tiny llama and an adapter "legal" in `dir`, served on the kernel path and on the
/// tensor path.
fn engines_on_both_paths(dir: &Path) -> (GeneratorState, GeneratorState) {
    let path = dir.join("llama-f32.gguf");
    write_tiny_gguf(&path, "llama", &tiny_weights("llama", 9), GgmlDType::F32);
    let lora = write_test_adapter(dir, "legal", 6);
    (
        state(&path, ComputePathArg::Kernels, &lora),
        state(&path, ComputePathArg::Tensors, &lora),
    )
}

fn generate(state: &GeneratorState, prompt: &[u32], adapter: Option<&str>) -> Completion {
    generate_with(
        state,
        prompt,
        adapter,
        SamplingConfig {
            max_new_tokens: 12,
            repetition_penalty: 1.0,
            ..Default::default()
        },
    )
}

fn generate_with(
    state: &GeneratorState,
    prompt: &[u32],
    adapter: Option<&str>,
    sampling: SamplingConfig,
) -> Completion {
    common::try_generate(state, prompt.to_vec(), sampling, adapter).expect("generation succeeds")
}

/// Through the engine (prompts prefilled in chunks of 8, a second request served from the
/// prefix cache, an adapter per request), greedy generation on the tensor path gives the
/// kernel path's text.
#[test]
fn the_engine_on_the_tensor_path_generates_the_kernel_paths_text() {
    let dir = tempfile::tempdir().unwrap();
    let (kernels, tensors) = engines_on_both_paths(dir.path());
    let long: Vec<u32> = (30..70).collect();
    for adapter in [None, Some("legal")] {
        let k = generate(&kernels, &long, adapter);
        let t = generate(&tensors, &long, adapter);
        assert!(t.generated_tokens > 0);
        assert_eq!(k.text, t.text, "adapter {adapter:?}");
        // The same prompt again: its full blocks come from the prefix cache.
        let again = generate(&tensors, &long, adapter);
        assert!(again.cached_prompt_tokens >= 32, "{again:?}");
        assert_eq!(
            again.text, t.text,
            "adapter {adapter:?}, from the prefix cache"
        );
    }
}

/// A sampled decode step (temperature, top-k, top-p, a repetition penalty) on the tensor
/// path: the forward's uploads, the penalties' two and the sampling settings' one up, and
/// only the picked ids back (no row of logits); each pick is the host reference's.
#[test]
fn a_sampled_step_reads_back_only_the_ids() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("llama-f32.gguf");
    write_tiny_gguf(&path, "llama", &tiny_weights("llama", 5), GgmlDType::F32);
    let model = decoder(&path, "llama", ComputePath::Tensors);
    let prompts: [&[u32]; 3] = [PROMPT, &[5, 6, 7], FOLLOW];
    let mut cache = f32_cache(&model, 16 * 2 * prompts.len());
    let tables: Vec<Vec<u32>> = (0..prompts.len() as u32)
        .map(|s| vec![2 * s, 2 * s + 1])
        .collect();
    let mut batch = Batch::default();
    for (p, blocks) in prompts.iter().zip(&tables) {
        batch.push(p, 0, blocks, None, true);
    }
    let first = model.forward(&batch, &mut cache).unwrap();
    let vocab = first.dim(1).unwrap();
    let sampler = DeviceSampler::new(vocab, model.device()).unwrap();
    let mut batch = Batch::default();
    for (p, blocks) in prompts.iter().zip(&tables) {
        batch.push(&[42], p.len(), blocks, None, true);
    }
    let filters = [
        Filter {
            temperature: 0.8,
            top_k: Some(20),
            top_p: Some(0.9),
        },
        Filter {
            temperature: 1.0,
            top_k: None,
            top_p: Some(0.5),
        },
        Filter {
            temperature: 1.5,
            top_k: Some(3),
            top_p: None,
        },
    ];
    let recent: [&[u32]; 3] = [&[42, 7], &[42], &[42, 42, 9]];
    let rows: Vec<DeviceRow<'_>> = filters
        .iter()
        .zip(recent)
        .enumerate()
        .map(|(i, (f, recent))| DeviceRow {
            penalty: 1.2,
            recent,
            pick: Pick::Sample {
                filter: *f,
                u: 0.1 + 0.35 * i as f32,
            },
        })
        .collect();
    let ((logits, (penalised, picks)), step) = transfer::counted(|| {
        let logits = model.forward(&batch, &mut cache).unwrap();
        let picked = pick_on_device(&logits, &rows, Some(&sampler)).unwrap();
        (logits, picked)
    });
    assert_eq!(step.uploads, 4 + 2 + 1, "{step:?}");
    assert_eq!(
        (step.read_backs, step.read_back_bytes),
        (1, 4 * prompts.len()),
        "only the ids come back: {step:?}"
    );
    assert!(
        step.upload_bytes <= n_seqs_bytes(3, 3 * 16) + 3 * HIDDEN * 4 + 3 * (4 * 4 + 3 * 8),
        "{step:?}"
    );
    let picks = picks.unwrap();
    for (i, r) in rows.iter().enumerate() {
        let Pick::Sample { filter, u } = r.pick else {
            unreachable!()
        };
        let row: Vec<f32> = penalised.get(i).unwrap().to_vec1().unwrap();
        assert_eq!(picks[i], sample_host(&row, &filter, u), "row {i}");
        let raw: Vec<f32> = logits.get(i).unwrap().to_vec1().unwrap();
        assert_ne!(raw, row, "row {i}: the penalty applied");
    }
}

/// Sampling with a seed through the engine: the tensor path (drawn on the device) gives
/// the kernel path's text (drawn on the host), and the same seed gives the same text.
#[test]
fn sampled_generation_on_the_tensor_path_is_the_kernel_paths() {
    let dir = tempfile::tempdir().unwrap();
    let (kernels, tensors) = engines_on_both_paths(dir.path());
    let prompt: Vec<u32> = (30..50).collect();
    let mut texts = std::collections::BTreeSet::new();
    for (seed, top_k, top_p) in [
        (1, Some(40), Some(0.9)),
        (2, None, Some(0.7)),
        (3, None, None),
    ] {
        let sampling = SamplingConfig {
            max_new_tokens: 16,
            temperature: 0.9,
            top_k,
            top_p,
            seed,
            ..Default::default()
        };
        let k = generate_with(&kernels, &prompt, None, sampling.clone());
        let t = generate_with(&tensors, &prompt, None, sampling.clone());
        assert!(t.generated_tokens > 0);
        assert_eq!(k.text, t.text, "seed {seed}");
        let again = generate_with(&tensors, &prompt, None, sampling);
        assert_eq!(again.text, t.text, "seed {seed} again");
        texts.insert(t.text);
    }
    assert!(
        texts.len() > 1,
        "different seeds, different draws: {texts:?}"
    );
}
