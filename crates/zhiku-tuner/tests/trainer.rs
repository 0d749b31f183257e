//! The trainer on tiny checkpoints of every family (written by `zhiku_lm::tiny`): its
//! gradients are the loss's (central finite differences, f64), an untrained adapter changes
//! nothing, training lowers the loss, accumulation equals one larger batch, clipping bounds
//! the norm, and only A and B change. ChatGLM-6B among them, its prompts read both ways;
//! an adapter it trains serves as it trained.

mod common;

use std::ops::ControlFlow;

use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use common::{
    TRAINED, config, example, for_family, max_diff, model, perturbed, values_f64 as values,
};
use zhiku_lm::attention::Segments;
use zhiku_lm::decoder::{Solo, prepare_adapter};
use zhiku_lm::lora::{LoraAdapter, LoraPair};
use zhiku_lm::tiny::{self, TinyFamily};
use zhiku_tuner::checkpoint::{latest_checkpoint, load_checkpoint};
use zhiku_tuner::dataset::fingerprint;
use zhiku_tuner::{
    CheckpointPlan, LayerSelection, LoraInit, StepReport, TrainConfig, TrainExample, TrainedPair,
    Trainer,
};

fn examples() -> Vec<TrainExample> {
    vec![
        example(&[3, 17, 5, 40, 22, 9, 31, 2], 4),
        example(&[8, 1, 44, 13, 27, 6], 3),
    ]
}

/// `pairs` with one element of module `m`'s A (or B) moved by `h`.
fn nudged(pairs: &[TrainedPair], m: usize, in_b: bool, at: usize, h: f64) -> Vec<TrainedPair> {
    let mut out = pairs.to_vec();
    let t = if in_b { &out[m].b } else { &out[m].a };
    let mut v = values(t);
    v[at] += h;
    let moved = Tensor::from_vec(v, t.shape(), &Device::Cpu).unwrap();
    if in_b {
        out[m].b = moved;
    } else {
        out[m].a = moved;
    }
    out
}

/// Relative tolerance of analytic against central-difference gradients in f64 (h = 1e-5:
/// truncation error ~h², rounding ~1e-16/h), with an absolute floor for entries near 0.
const GRAD_REL: f64 = 1e-5;
const GRAD_ABS: f64 = 1e-8;

#[test]
fn gradients_of_a_and_b_match_finite_differences_in_every_family() {
    for family in TRAINED {
        let data = for_family(family, examples());
        let mut trainer = Trainer::new(model(family, 5), config(DType::F64)).unwrap();
        let start = perturbed(&trainer.pairs().unwrap(), 9);
        trainer.load_pairs(&start).unwrap();
        let grads = trainer.gradients(&data).unwrap();
        assert_eq!(grads.pairs.len(), start.len());
        let h = 1e-5;
        let mut checked = 0;
        let mut worst = 0f64;
        for (m, g) in grads.pairs.iter().enumerate() {
            assert_eq!(g.module, start[m].module);
            for in_b in [false, true] {
                let analytic = values(if in_b { &g.b } else { &g.a });
                // A few entries spread over the matrix, and its largest one.
                let n = analytic.len();
                let largest = (0..n)
                    .max_by(|&i, &j| analytic[i].abs().total_cmp(&analytic[j].abs()))
                    .unwrap();
                for at in [0, n / 3, 2 * n / 3 + 1, largest] {
                    trainer.load_pairs(&nudged(&start, m, in_b, at, h)).unwrap();
                    let up = trainer.evaluate(&data).unwrap();
                    trainer
                        .load_pairs(&nudged(&start, m, in_b, at, -h))
                        .unwrap();
                    let down = trainer.evaluate(&data).unwrap();
                    let numeric = (up - down) / (2.0 * h);
                    let err = (analytic[at] - numeric).abs();
                    worst = worst.max(err / numeric.abs().max(1e-12));
                    assert!(
                        err <= GRAD_ABS + GRAD_REL * numeric.abs(),
                        "{family:?} {} {}[{at}]: analytic {} vs finite differences {numeric}",
                        g.module,
                        if in_b { "B" } else { "A" },
                        analytic[at]
                    );
                    checked += 1;
                }
            }
        }
        trainer.load_pairs(&start).unwrap();
        assert!((trainer.evaluate(&data).unwrap() - grads.loss).abs() < 1e-12);
        assert!(checked >= 8 * 4 * 2, "{family:?}: {checked} entries");
        eprintln!("{family:?}: {checked} entries, worst relative error {worst:.2e}");
    }
}

#[test]
fn an_untrained_adapter_gives_the_base_models_logits() {
    for family in TinyFamily::ALL {
        let trainer = Trainer::new(model(family, 6), config(DType::F32)).unwrap();
        assert!(trainer.pairs().unwrap().iter().all(|p| {
            values(&p.b).iter().all(|&x| x == 0.0) && values(&p.a).iter().any(|&x| x != 0.0)
        }));
        let tokens = Tensor::new(&[[3u32, 17, 5, 40, 22, 9]], &Device::Cpu).unwrap();
        let with = trainer.logits(&tokens).unwrap();
        let base = trainer
            .model()
            .forward_train(&tokens, &LoraAdapter::none())
            .unwrap();
        assert_eq!(max_diff(&with, &base), 0.0, "{family:?}");
    }
}

#[test]
fn loss_falls_when_memorising_two_examples() {
    for family in [
        TinyFamily::Qwen2,
        TinyFamily::ChatGlm,
        TinyFamily::ChatGlm6b,
    ] {
        let mut c = config(DType::F32);
        c.lora.dropout = 0.05;
        c.batch_size = 2;
        c.max_grad_norm = Some(1.0);
        c.warmup_steps = 3;
        let mut trainer = Trainer::new(model(family, 7), c).unwrap();
        let data = for_family(family, examples());
        let before = trainer.evaluate(&data).unwrap();
        let mut seen = Vec::new();
        let reports = trainer
            .train(&data, 30, &mut |r| {
                seen.push(r.step);
                ControlFlow::Continue(())
            })
            .unwrap();
        assert_eq!(reports.len(), 30);
        assert_eq!(seen, (1..=30).collect::<Vec<_>>());
        let tokens: usize = data.iter().map(|e| e.tokens.len()).sum();
        assert!(
            reports
                .iter()
                .all(|r| r.total_steps == 30 && r.tokens == tokens)
        );
        assert_eq!(reports[0].lr, 0.0, "warm-up starts at 0");
        let after = trainer.evaluate(&data).unwrap();
        eprintln!("{family:?}: loss {before:.4} → {after:.4} in 30 steps");
        assert!(
            after < 0.3 * before,
            "{family:?}: loss {before} → {after} after 30 steps"
        );
    }
}

/// A ChatGLM-6B adapter trained here serves as it trained: its pairs in the checkpoint's
/// row order (query_key_value's B rows back to each head's [q | k | v]), loaded as the
/// generator loads an adapter, give the serving decoder (the prompt read both ways, then
/// the answer decoded token by token) the trainer's logits, within 1e-4 of the largest.
#[test]
fn a_trained_chatglm6b_adapter_serves_as_it_trained() {
    let family = TinyFamily::ChatGlm6b;
    let mut trainer = Trainer::new(model(family, 31), config(DType::F32)).unwrap();
    let data = for_family(family, examples());
    trainer
        .train(&data, 5, &mut |_| ControlFlow::Continue(()))
        .unwrap();
    let pairs = trainer.pairs().unwrap();
    assert!(pairs.iter().all(|p| values(&p.b).iter().any(|&x| x != 0.0)));
    let adapter = LoraAdapter {
        name: "trained".into(),
        id: 1,
        rank: 4,
        alpha: 8.0,
        target_modules: Vec::new(),
        pairs: pairs
            .into_iter()
            .map(|p| {
                let pair = LoraPair {
                    a: p.a,
                    b: p.b,
                    scale: 2.0,
                };
                (p.module, pair)
            })
            .collect(),
    };
    let served = model(family, 31);
    let adapter = Arc::new(prepare_adapter(adapter, &served).unwrap());
    for e in &data {
        let n = e.tokens.len();
        let tokens = Tensor::new(e.tokens.as_slice(), &Device::Cpu)
            .unwrap()
            .unsqueeze(0)
            .unwrap();
        let rows = Segments::rows(n, &[e.bidirectional]).unwrap();
        let trained = trainer
            .logits_segments(&tokens, &rows)
            .unwrap()
            .get(0)
            .unwrap();
        let mut solo = Solo::new(&served, n)
            .unwrap()
            .with_adapter(Some(adapter.clone()))
            .with_bidirectional(e.bidirectional);
        let mut decoded = vec![solo.feed(&served, &e.tokens[..=e.bidirectional]).unwrap()];
        for &t in &e.tokens[e.bidirectional + 1..] {
            decoded.push(solo.feed(&served, &[t]).unwrap());
        }
        let decoded = Tensor::stack(&decoded, 0).unwrap();
        let answer = trained
            .narrow(0, e.bidirectional, n - e.bidirectional)
            .unwrap();
        let scale = values(&decoded).iter().fold(1f64, |m, v| m.max(v.abs()));
        let diff = max_diff(&decoded, &answer);
        assert!(diff <= 1e-4 * scale, "served logits differ by {diff}");
    }
}

#[test]
fn training_stops_when_the_callback_says_so() {
    let mut trainer = Trainer::new(model(TinyFamily::Llama, 8), config(DType::F32)).unwrap();
    let reports = trainer
        .train(&examples(), 10, &mut |r| {
            if r.step == 3 {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        })
        .unwrap();
    assert_eq!(reports.len(), 3);
    assert_eq!(trainer.steps_done(), 3);
}

#[test]
fn accumulating_two_batches_of_one_equals_one_batch_of_two() {
    // Examples of different lengths: the batch of two pads the shorter one.
    let data = examples();
    let mut one_batch = config(DType::F64);
    one_batch.batch_size = 2;
    let mut accumulated = config(DType::F64);
    accumulated.batch_size = 1;
    accumulated.grad_accumulation = 2;
    let mut a = Trainer::new(model(TinyFamily::Glm4_0414, 9), one_batch).unwrap();
    let mut b = Trainer::new(model(TinyFamily::Glm4_0414, 9), accumulated).unwrap();
    for _ in 0..3 {
        let ra = a.step(&data).unwrap();
        let rb = b.step(&data).unwrap();
        assert!(
            (ra.loss - rb.loss).abs() < 1e-12,
            "{} vs {}",
            ra.loss,
            rb.loss
        );
    }
    for (pa, pb) in a.pairs().unwrap().iter().zip(b.pairs().unwrap()) {
        assert!(max_diff(&pa.a, &pb.a) < 1e-12, "{}", pa.module);
        assert!(max_diff(&pa.b, &pb.b) < 1e-12, "{}", pa.module);
        assert!(values(&pa.b).iter().any(|&x| x != 0.0));
    }
}

fn global_norm(pairs: &[TrainedPair]) -> f64 {
    pairs
        .iter()
        .flat_map(|p| values(&p.a).into_iter().chain(values(&p.b)))
        .map(|x| x * x)
        .sum::<f64>()
        .sqrt()
}

#[test]
fn clipping_bounds_the_gradient_norm() {
    let data = examples();
    let mut free = Trainer::new(model(TinyFamily::Glm4Gguf, 10), config(DType::F64)).unwrap();
    let start = perturbed(&free.pairs().unwrap(), 3);
    free.load_pairs(&start).unwrap();
    let unclipped = free.gradients(&data).unwrap();
    assert!((global_norm(&unclipped.pairs) - unclipped.norm).abs() < 1e-9 * unclipped.norm);
    let max = unclipped.norm / 10.0;
    let mut c = config(DType::F64);
    c.max_grad_norm = Some(max);
    let mut clipped = Trainer::new(model(TinyFamily::Glm4Gguf, 10), c).unwrap();
    clipped.load_pairs(&start).unwrap();
    let g = clipped.gradients(&data).unwrap();
    assert!((g.norm - unclipped.norm).abs() < 1e-12);
    let norm = global_norm(&g.pairs);
    assert!(norm <= max && norm > 0.999 * max, "{norm} vs {max}");
    // The same direction, scaled.
    let ratio = max / (unclipped.norm + 1e-6);
    for (p, q) in g.pairs.iter().zip(&unclipped.pairs) {
        assert!(max_diff(&p.a, &(&q.a * ratio).unwrap()) < 1e-12);
        assert!(max_diff(&p.b, &(&q.b * ratio).unwrap()) < 1e-12);
    }
    // And a step reports the norm before clipping.
    let report = clipped.step(&data).unwrap();
    assert!((report.grad_norm - unclipped.norm).abs() < 1e-9);
}

#[test]
fn only_a_and_b_change() {
    let data = examples();
    let mut c = config(DType::F32);
    c.lora.init = LoraInit::Kaiming;
    let mut trainer = Trainer::new(model(TinyFamily::Llama, 11), c).unwrap();
    let tokens = Tensor::new(&[[3u32, 17, 5, 40, 22, 9, 31, 2]], &Device::Cpu).unwrap();
    let base_before = trainer
        .model()
        .forward_train(&tokens, &LoraAdapter::none())
        .unwrap();
    let pairs_before = trainer.pairs().unwrap();
    for _ in 0..3 {
        trainer.step(&data).unwrap();
    }
    let base_after = trainer
        .model()
        .forward_train(&tokens, &LoraAdapter::none())
        .unwrap();
    assert_eq!(max_diff(&base_before, &base_after), 0.0, "W0 changed");
    let pairs_after = trainer.pairs().unwrap();
    for (p, q) in pairs_before.iter().zip(&pairs_after) {
        assert!(max_diff(&p.a, &q.a) > 0.0, "{}: A did not train", p.module);
        assert!(max_diff(&p.b, &q.b) > 0.0, "{}: B did not train", p.module);
    }
    // The adapter changes the logits now.
    assert!(max_diff(&trainer.logits(&tokens).unwrap(), &base_after) > 0.0);
}

#[test]
fn the_same_seed_trains_the_same_adapter() {
    let data = examples();
    let run = |seed: u64| {
        let mut c = config(DType::F32);
        c.lora.dropout = 0.2;
        c.seed = seed;
        c.threads = Some(1);
        let mut t = Trainer::new(model(TinyFamily::Qwen2, 12), c).unwrap();
        t.train(&data, 2, &mut |_| ControlFlow::Continue(()))
            .unwrap();
        t.pairs().unwrap()
    };
    let (a, b, other) = (run(1), run(1), run(2));
    let same = a
        .iter()
        .zip(&b)
        .all(|(p, q)| max_diff(&p.a, &q.a) == 0.0 && max_diff(&p.b, &q.b) == 0.0);
    assert!(same, "one seed, two adapters");
    let differ = a
        .iter()
        .zip(&other)
        .any(|(p, q)| max_diff(&p.a, &q.a) > 0.0);
    assert!(differ, "two seeds, one adapter");
}

#[test]
fn targets_map_to_each_familys_modules() {
    let names = |family, targets: &[&str]| {
        let m = model(family, 13);
        let t: Vec<String> = targets.iter().map(|s| s.to_string()).collect();
        zhiku_tuner::target_modules(&m, &t, &zhiku_tuner::LayerSelection::All)
            .unwrap()
            .into_iter()
            .map(|(n, _, _)| n)
            .filter(|n| n.contains("layers.0."))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        names(TinyFamily::ChatGlm, &["q", "v", "up"]),
        [
            "transformer.encoder.layers.0.self_attention.query_key_value",
            "transformer.encoder.layers.0.mlp.dense_h_to_4h"
        ]
    );
    assert_eq!(
        names(TinyFamily::Qwen2, &["q", "v", "gate"]),
        [
            "model.layers.0.self_attn.q_proj",
            "model.layers.0.self_attn.v_proj",
            "model.layers.0.mlp.gate_proj"
        ]
    );
    assert_eq!(
        names(TinyFamily::Glm4_0414, &["o", "gate", "down"]),
        [
            "model.layers.0.self_attn.o_proj",
            "model.layers.0.mlp.gate_up_proj",
            "model.layers.0.mlp.down_proj"
        ]
    );
    let m = model(TinyFamily::Llama, 13);
    let err =
        zhiku_tuner::target_modules(&m, &["lm".to_string()], &zhiku_tuner::LayerSelection::All)
            .unwrap_err();
    assert!(err.to_string().contains("q, k, v"), "{err}");
}

#[test]
fn bad_examples_are_refused_with_their_index() {
    let mut trainer = Trainer::new(model(TinyFamily::Qwen2, 14), config(DType::F32)).unwrap();
    let mut data = examples();
    data.push(TrainExample {
        tokens: vec![1, 2, 3],
        loss_mask: vec![false, true],
        bidirectional: 0,
    });
    let err = trainer.step(&data).unwrap_err().to_string();
    assert!(err.contains("example 2"), "{err}");
    let too_big = example(&[1, tiny::VOCAB as u32], 1);
    assert!(trainer.step(&[too_big]).is_err());
    let nothing = example(&[1, 2, 3], 0);
    assert!(trainer.step(&[nothing]).is_err());
    // A causal model is not given a bidirectional part...
    let both_ways = for_family(TinyFamily::ChatGlm6b, examples());
    let err = trainer.step(&both_ways).unwrap_err().to_string();
    assert!(
        err.contains("example 0") && err.contains("reads its prompts causally"),
        "{err}"
    );
    // ...and ChatGLM-6B is given one, inside the example.
    let mut glm = Trainer::new(model(TinyFamily::ChatGlm6b, 14), config(DType::F32)).unwrap();
    let err = glm.step(&examples()).unwrap_err().to_string();
    assert!(
        err.contains("example 0") && err.contains("no bidirectional part"),
        "{err}"
    );
    let mut whole = both_ways.clone();
    whole[1].bidirectional = whole[1].tokens.len();
    let err = glm.step(&whole).unwrap_err().to_string();
    assert!(err.contains("example 1"), "{err}");
    assert!(glm.step(&both_ways).is_ok());
}

fn more_examples() -> Vec<TrainExample> {
    let mut data = examples();
    data.push(example(&[12, 30, 7, 7, 19, 41, 5], 3));
    data.push(example(&[2, 9, 33, 18, 4], 2));
    data.push(example(&[25, 14, 38, 6, 1, 29, 44, 10, 3], 5));
    data
}

/// A run that resumes must see dropout, shuffling, accumulation, clipping and the schedule.
fn resume_config() -> TrainConfig {
    let mut c = config(DType::F32);
    c.lora.dropout = 0.1;
    c.batch_size = 2;
    c.grad_accumulation = 1;
    c.max_grad_norm = Some(0.5);
    c.warmup_steps = 2;
    c.weight_decay = 0.01;
    c.threads = Some(1);
    c.seed = 77;
    c
}

fn same_pairs(a: &[TrainedPair], b: &[TrainedPair]) -> bool {
    a.iter().zip(b).all(|(p, q)| {
        p.module == q.module && max_diff(&p.a, &q.a) == 0.0 && max_diff(&p.b, &q.b) == 0.0
    })
}

const EPOCHS: usize = 4;

/// Trains `EPOCHS` epochs in one go (3 steps each): the reference.
fn uninterrupted(data: &[TrainExample]) -> (Vec<StepReport>, Vec<TrainedPair>) {
    let mut t = Trainer::new(model(TinyFamily::Qwen2, 21), resume_config()).unwrap();
    let reports = t
        .train(data, EPOCHS, &mut |_| ControlFlow::Continue(()))
        .unwrap();
    assert_eq!(reports.len(), 12);
    (reports, t.pairs().unwrap())
}

#[test]
fn training_k_steps_then_resuming_k_equals_training_2k() {
    let data = more_examples();
    let (straight, straight_pairs) = uninterrupted(&data);

    // Checkpoints every 2 steps; stop after step 7 (mid-epoch); the newest is step 6.
    let dir = tempfile::tempdir().unwrap();
    let runs = dir.path().join("checkpoints");
    let mut first = Trainer::new(model(TinyFamily::Qwen2, 21), resume_config()).unwrap();
    first.set_checkpoints(Some(CheckpointPlan {
        dir: runs.clone(),
        every: 2,
        keep: 2,
    }));
    let reports = first
        .train(&data, EPOCHS, &mut |r| {
            if r.step == 7 {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        })
        .unwrap();
    assert_eq!(reports.len(), 7);
    let written: Vec<bool> = reports.iter().map(|r| r.checkpoint.is_some()).collect();
    assert_eq!(written, [false, true, false, true, false, true, false]);
    let newest = latest_checkpoint(&runs).unwrap().unwrap();
    assert!(newest.ends_with("step-0000000006"), "{}", newest.display());
    assert_eq!(std::fs::read_dir(&runs).unwrap().count(), 2, "keep 2");
    for (r, s) in reports.iter().zip(&straight) {
        assert_eq!(r.loss, s.loss, "step {}", r.step);
    }

    // A new process: the model, the checkpoint, the rest of the run.
    let mut resumed = Trainer::new(model(TinyFamily::Qwen2, 21), resume_config()).unwrap();
    let checkpoint = load_checkpoint(&newest, &Device::Cpu).unwrap();
    assert_eq!(checkpoint.progress.optimizer_step, 6);
    assert_eq!(
        (checkpoint.progress.epoch, checkpoint.progress.batch_index),
        (2, 0)
    );
    let total = resumed.planned_steps(data.len(), EPOCHS);
    resumed
        .restore(&checkpoint, &fingerprint(&data), total)
        .unwrap();
    assert_eq!(resumed.steps_done(), 6);
    assert_eq!(resumed.cursor(), (2, 0));
    let rest = resumed
        .train(&data, EPOCHS, &mut |_| ControlFlow::Continue(()))
        .unwrap();
    assert_eq!(rest.len(), 6);
    for (r, s) in rest.iter().zip(&straight[6..]) {
        assert_eq!((r.step, r.epoch), (s.step, s.epoch));
        assert_eq!(
            (r.loss, r.lr, r.grad_norm),
            (s.loss, s.lr, s.grad_norm),
            "step {}",
            r.step
        );
    }
    assert!(
        same_pairs(&resumed.pairs().unwrap(), &straight_pairs),
        "the adapters differ"
    );

    // The same from a mid-epoch checkpoint (step 4: epoch 1, its second step).
    let mut again = Trainer::new(model(TinyFamily::Qwen2, 21), resume_config()).unwrap();
    let mut at_4 = first.checkpoint(&fingerprint(&data), total).unwrap();
    assert_eq!(at_4.progress.optimizer_step, 7);
    at_4 = load_checkpoint(&runs.join("step-0000000004"), &Device::Cpu).unwrap();
    assert_eq!((at_4.progress.epoch, at_4.progress.batch_index), (1, 1));
    again.restore(&at_4, &fingerprint(&data), total).unwrap();
    again
        .train(&data, EPOCHS, &mut |_| ControlFlow::Continue(()))
        .unwrap();
    assert!(
        same_pairs(&again.pairs().unwrap(), &straight_pairs),
        "from step 4"
    );
}

#[test]
fn resume_refuses_another_spec_other_hyperparameters_or_other_data() {
    let data = more_examples();
    let mut t = Trainer::new(model(TinyFamily::Llama, 22), resume_config()).unwrap();
    t.train(&data, 1, &mut |_| ControlFlow::Continue(()))
        .unwrap();
    let total = t.planned_steps(data.len(), EPOCHS);
    let checkpoint = t.checkpoint(&fingerprint(&data), total).unwrap();

    let mut other = resume_config();
    other.lora.rank = 2;
    let mut t2 = Trainer::new(model(TinyFamily::Llama, 22), other).unwrap();
    let m = t2
        .restore(&checkpoint, &fingerprint(&data), total)
        .unwrap_err()
        .to_string();
    assert!(m.contains("rank 4") && m.contains("rank 2"), "{m}");

    let mut other = resume_config();
    other.learning_rate = 5e-3;
    let mut t3 = Trainer::new(model(TinyFamily::Llama, 22), other).unwrap();
    let m = t3
        .restore(&checkpoint, &fingerprint(&data), total)
        .unwrap_err()
        .to_string();
    assert!(m.contains("learning rate 0.01 then, 0.005 now"), "{m}");
    let m = t3
        .restore(&checkpoint, &fingerprint(&data), total * 2)
        .unwrap_err()
        .to_string();
    assert!(m.contains("total steps"), "{m}");

    let mut t4 = Trainer::new(model(TinyFamily::Llama, 22), resume_config()).unwrap();
    let fewer = &data[..4];
    let m = t4
        .restore(&checkpoint, &fingerprint(fewer), total)
        .unwrap_err()
        .to_string();
    assert!(m.contains("training data differ"), "{m}");
    // Nothing was restored by the refusals.
    assert_eq!(t4.steps_done(), 0);
    t4.restore(&checkpoint, &fingerprint(&data), total).unwrap();
    assert_eq!(t4.steps_done(), 3);
}

#[test]
fn a_failed_checkpoint_write_stops_training_and_the_previous_checkpoint_resumes() {
    let data = more_examples();
    let (_, straight_pairs) = uninterrupted(&data);
    let dir = tempfile::tempdir().unwrap();
    let runs = dir.path().join("checkpoints");
    std::fs::create_dir_all(&runs).unwrap();
    // The write of step 4 fails: a file (not ours) stands where its temporary directory
    // goes (a read-only directory stops nothing when the tests run as root).
    let blocker = runs.join(".step-0000000004.partial");
    std::fs::write(&blocker, b"not zhiku's").unwrap();
    let mut t = Trainer::new(model(TinyFamily::Qwen2, 21), resume_config()).unwrap();
    t.set_checkpoints(Some(CheckpointPlan {
        dir: runs.clone(),
        every: 2,
        keep: 1,
    }));
    let mut seen = 0;
    let err = t
        .train(&data, EPOCHS, &mut |r| {
            seen = r.step;
            ControlFlow::Continue(())
        })
        .unwrap_err()
        .to_string();
    assert_eq!(seen, 3, "training stopped at the failed write");
    assert!(err.contains(".step-0000000004.partial"), "{err}");
    let latest = latest_checkpoint(&runs).unwrap().unwrap();
    assert!(latest.ends_with("step-0000000002"), "{}", latest.display());
    assert!(!runs.join("step-0000000004").exists());

    // The previous checkpoint loads and the run continues from it to the same adapter.
    std::fs::remove_file(&blocker).unwrap();
    let checkpoint = load_checkpoint(&latest, &Device::Cpu).unwrap();
    let mut resumed = Trainer::new(model(TinyFamily::Qwen2, 21), resume_config()).unwrap();
    let total = resumed.planned_steps(data.len(), EPOCHS);
    resumed
        .restore(&checkpoint, &fingerprint(&data), total)
        .unwrap();
    resumed
        .train(&data, EPOCHS, &mut |_| ControlFlow::Continue(()))
        .unwrap();
    assert!(same_pairs(&resumed.pairs().unwrap(), &straight_pairs));
}

#[test]
fn gradient_checkpointing_gives_the_same_gradients_and_training() {
    for family in TRAINED {
        let data = for_family(family, more_examples());
        let mut plain = config(DType::F64);
        plain.batch_size = 2;
        let mut recomputed = plain.clone();
        recomputed.gradient_checkpointing = true;
        let mut a = Trainer::new(model(family, 23), plain.clone()).unwrap();
        let mut b = Trainer::new(model(family, 23), recomputed.clone()).unwrap();
        let start = perturbed(&a.pairs().unwrap(), 4);
        a.load_pairs(&start).unwrap();
        b.load_pairs(&start).unwrap();
        let ga = a.gradients(&data).unwrap();
        let gb = b.gradients(&data).unwrap();
        assert!((ga.loss - gb.loss).abs() < 1e-12, "{family:?}");
        assert!((ga.norm - gb.norm).abs() < 1e-12, "{family:?}");
        let mut worst = 0f64;
        for (p, q) in ga.pairs.iter().zip(&gb.pairs) {
            assert_eq!(p.module, q.module);
            worst = worst.max(max_diff(&p.a, &q.a)).max(max_diff(&p.b, &q.b));
            assert!(
                values(&p.b).iter().any(|&x| x != 0.0),
                "{family:?} {}",
                p.module
            );
        }
        assert!(worst < 1e-12, "{family:?}: gradients differ by {worst}");

        // Training with dropout: the recomputation replays the same masks.
        for c in [&mut plain, &mut recomputed] {
            c.lora.dropout = 0.2;
            c.grad_accumulation = 2;
            c.batch_size = 1;
        }
        let mut a = Trainer::new(model(family, 24), plain).unwrap();
        let mut b = Trainer::new(model(family, 24), recomputed).unwrap();
        let ra = a
            .train(&data, 2, &mut |_| ControlFlow::Continue(()))
            .unwrap();
        let rb = b
            .train(&data, 2, &mut |_| ControlFlow::Continue(()))
            .unwrap();
        for (x, y) in ra.iter().zip(&rb) {
            assert!(
                (x.loss - y.loss).abs() < 1e-12,
                "{family:?} step {}",
                x.step
            );
        }
        let mut worst = 0f64;
        for (p, q) in a.pairs().unwrap().iter().zip(&b.pairs().unwrap()) {
            worst = worst.max(max_diff(&p.a, &q.a)).max(max_diff(&p.b, &q.b));
        }
        assert!(
            worst < 1e-12,
            "{family:?}: trained adapters differ by {worst}"
        );
    }
}

#[test]
fn adapting_the_top_blocks_alone_gives_the_full_runs_gradients_there() {
    for family in TRAINED {
        let data = for_family(family, more_examples());
        let full = config(DType::F64);
        let mut top = full.clone();
        top.lora.layers = LayerSelection::Last(1);
        let mut a = Trainer::new(model(family, 31), full).unwrap();
        let blocks = a.model().blocks.len();
        let in_top = |module: &str| module.contains(&format!(".{}.", blocks - 1));
        // Every pair of the full run, with B = 0 below the top block: the same model as an
        // adapter on the top block alone.
        let start: Vec<TrainedPair> = perturbed(&a.pairs().unwrap(), 6)
            .into_iter()
            .map(|mut p| {
                if !in_top(&p.module) {
                    p.b = p.b.zeros_like().unwrap();
                }
                p
            })
            .collect();
        a.load_pairs(&start).unwrap();
        let reference = a.gradients(&data).unwrap();
        for checkpointing in [false, true] {
            let mut c = top.clone();
            c.gradient_checkpointing = checkpointing;
            let mut b = Trainer::new(model(family, 31), c).unwrap();
            assert_eq!(
                b.config().lora.layers,
                LayerSelection::Only(vec![blocks - 1]),
                "{family:?}: last:1 is recorded as the block it names"
            );
            let modules = b.modules();
            assert!(
                !modules.is_empty() && modules.iter().all(|m| in_top(m)),
                "{family:?}: {modules:?}"
            );
            b.load_pairs(&start).unwrap();
            let got = b.gradients(&data).unwrap();
            assert!((got.loss - reference.loss).abs() < 1e-12, "{family:?}");
            assert_eq!(got.pairs.len(), modules.len());
            for g in &got.pairs {
                let r = reference
                    .pairs
                    .iter()
                    .find(|r| r.module == g.module)
                    .unwrap();
                let gap = max_diff(&g.a, &r.a).max(max_diff(&g.b, &r.b));
                assert!(
                    gap < 1e-12,
                    "{family:?} {} (checkpointing {checkpointing}): {gap}",
                    g.module
                );
                assert!(values(&g.a).iter().any(|&x| x != 0.0), "{}", g.module);
            }
        }
    }
}

#[test]
fn layers_past_the_model_are_refused_with_its_block_count() {
    let mut c = config(DType::F32);
    c.lora.layers = LayerSelection::Only(vec![0, 7]);
    let blocks = model(TinyFamily::Llama, 13).blocks.len();
    let err = Trainer::new(model(TinyFamily::Llama, 13), c)
        .err()
        .expect("block 7 is refused")
        .to_string();
    assert!(
        err.contains("block 7") && err.contains(&format!("has {blocks} blocks")),
        "{err}"
    );
}
