//! Packing on tiny checkpoints of every family the trainer supports (written by
//! `zhiku_lm::tiny`): a packed row of examples gives the loss and the gradients of A and B
//! that the same examples give unpacked (the loss is the mean over every counted token of
//! the step, packed or not), each example's logits in a packed row are its logits alone,
//! and packing lays an epoch out in fewer, fuller rows.

mod common;

use std::ops::ControlFlow;

use candle_core::{DType, Device, Tensor};
use common::{TRAINED, example, for_family, max_diff, model, perturbed, values_f64 as values};
use zhiku_lm::attention::Segments;
use zhiku_lm::tiny::{self, TinyFamily};
use zhiku_tuner::{Gradients, TrainConfig, TrainExample, Trainer, TuneError, epoch_padding};

fn config(dtype: DType, packing: Option<usize>, batch_size: usize) -> TrainConfig {
    TrainConfig {
        batch_size,
        packing,
        ..common::config(dtype)
    }
}

/// Three examples of different lengths (19 tokens): one row of 24.
fn three() -> Vec<TrainExample> {
    vec![
        example(&[3, 17, 5, 40, 22, 9, 31, 2], 4),
        example(&[8, 1, 44, 13, 27, 6], 3),
        example(&[12, 30, 7, 19, 4], 2),
    ]
}

/// A trainer of `family` with the same perturbed adapter whatever the configuration.
fn trainer(family: TinyFamily, config: TrainConfig) -> Trainer {
    let mut trainer = Trainer::new(model(family, 5), config).unwrap();
    let start = perturbed(&trainer.pairs().unwrap(), 9);
    trainer.load_pairs(&start).unwrap();
    trainer
}

/// The largest difference between two sets of gradients relative to the largest entry of
/// `reference` (A and B of every module).
fn relative_gap(got: &Gradients, reference: &Gradients) -> f64 {
    let mut gap = 0f64;
    let mut scale = 0f64;
    for (g, r) in got.pairs.iter().zip(&reference.pairs) {
        assert_eq!(g.module, r.module);
        for (x, y) in [(&g.a, &r.a), (&g.b, &r.b)] {
            gap = gap.max(max_diff(x, y));
            scale = values(y).iter().fold(scale, |m, v| m.max(v.abs()));
        }
    }
    gap / scale
}

/// Tolerances of a packed row against the same examples unpacked: the loss relative, the
/// gradients relative to their largest entry. f32: the packed row runs other matmul shapes
/// (other summation orders) and its attention sums over masked keys too; f64: the same
/// computations exactly but for rounding.
const F32_TOL: f64 = 1e-5;
const F64_TOL: f64 = 1e-12;

/// The must-show of packing: for every family, the loss and the gradients of A and B of
/// one packed row of three examples equal those of the three unpacked (one forward each,
/// and one padded forward of the three), the loss being the mean over every counted
/// token of the step in each case; with gradient checkpointing too.
#[test]
fn a_packed_row_has_the_loss_and_gradients_of_its_examples_unpacked() {
    for family in TRAINED {
        // ChatGLM-6B's examples are 6 tokens longer: a row of 30 holds them all.
        let data = for_family(family, three());
        for (dtype, tol) in [(DType::F32, F32_TOL), (DType::F64, F64_TOL)] {
            let mut packed = trainer(family, config(dtype, Some(30), 1));
            assert_eq!(packed.rows(&data), vec![vec![0, 1, 2]], "one row of three");
            let got = packed.gradients(&data).unwrap();
            let mut checkpointed_config = config(dtype, Some(30), 1);
            checkpointed_config.gradient_checkpointing = true;
            let checkpointed = trainer(family, checkpointed_config)
                .gradients(&data)
                .unwrap();
            for (name, batch_size) in [("one at a time", 1), ("padded together", 3)] {
                let mut unpacked = trainer(family, config(dtype, None, batch_size));
                assert_eq!(unpacked.rows(&data).len(), 3);
                let want = unpacked.gradients(&data).unwrap();
                let loss_gap = (got.loss - want.loss).abs() / want.loss.abs();
                let grad_gap = relative_gap(&got, &want);
                eprintln!(
                    "{family:?} {dtype:?} vs {name}: loss {:.8} vs {:.8} (relative {loss_gap:.1e}), \
                     gradients relative {grad_gap:.1e}",
                    got.loss, want.loss
                );
                assert!(
                    loss_gap <= tol,
                    "{family:?} {dtype:?} {name}: loss off by {loss_gap:e}"
                );
                assert!(
                    grad_gap <= tol,
                    "{family:?} {dtype:?} {name}: gradients off by {grad_gap:e}"
                );
                let gap = relative_gap(&checkpointed, &want);
                assert!(
                    gap <= tol,
                    "{family:?} {dtype:?} checkpointed: off by {gap:e}"
                );
            }
        }
    }
}

/// Each example's logits in a packed row are its logits alone (f64, within 1e-10): the
/// block-diagonal attention keeps examples apart. The control: the same row run as one
/// sequence (causal only, positions running on) gives the later examples other logits,
/// so the comparison can fail. (That positions restart at 0 is checked where the rotation
/// is applied, `zhiku-lm`'s `packed_examples_are_rotated_from_position_zero`: rotary
/// attention depends on relative positions only, so logits cannot tell an offset apart
/// beyond rounding.)
#[test]
fn each_examples_logits_in_a_packed_row_are_its_logits_alone() {
    let data = three();
    let lengths = vec![vec![8, 6], vec![5]];
    let tokens = 14;
    for family in TinyFamily::ALL {
        let trainer = trainer(family, config(DType::F64, Some(24), 2));
        let mut ids: Vec<u32> = data[0]
            .tokens
            .iter()
            .chain(&data[1].tokens)
            .copied()
            .collect();
        ids.extend(&data[2].tokens);
        ids.extend(std::iter::repeat_n(0, tokens - 5));
        let batch = Tensor::from_vec(ids.clone(), (2, tokens), &Device::Cpu).unwrap();
        let segments = Segments::from_lengths(tokens, &lengths).unwrap();
        let packed = trainer.logits_segments(&batch, &segments).unwrap();
        let causal = trainer.logits(&batch.narrow(0, 0, 1).unwrap()).unwrap();
        for (row, start, e) in [(0, 0, &data[0]), (0, 8, &data[1]), (1, 0, &data[2])] {
            let n = e.tokens.len();
            let alone = trainer
                .logits(
                    &Tensor::new(e.tokens.as_slice(), &Device::Cpu)
                        .unwrap()
                        .unsqueeze(0)
                        .unwrap(),
                )
                .unwrap();
            let part = packed
                .narrow(0, row, 1)
                .unwrap()
                .narrow(1, start, n)
                .unwrap();
            let scale = values(&alone).iter().fold(0f64, |m, v| m.max(v.abs()));
            let gap = max_diff(&part, &alone) / scale;
            assert!(
                gap <= 1e-10,
                "{family:?} example at {row}:{start}: off by {gap:e}"
            );
            if start > 0 {
                let leaked = causal.narrow(1, start, n).unwrap();
                assert!(
                    max_diff(&leaked, &alone) / scale > 1e-4,
                    "{family:?}: without segments the second example should see the first"
                );
            }
        }
    }
}

/// Training with packing: an epoch is the packed rows (fewer steps), the loss falls, and
/// the layout pads less than one example a row.
#[test]
fn training_packed_takes_fewer_steps_and_the_loss_falls() {
    let mut data = three();
    data.extend([
        example(&[5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15], 5),
        example(&[21, 22, 23, 24], 2),
        example(&[33, 34, 35, 36, 37, 38, 39], 3),
    ]);
    for family in [TinyFamily::Qwen2, TinyFamily::ChatGlm] {
        let mut c = config(DType::F32, Some(24), 1);
        c.lora.dropout = 0.05;
        c.max_grad_norm = Some(1.0);
        let packed_padding = epoch_padding(&data, &c, 0);
        let unpacked_padding = epoch_padding(&data, &config(DType::F32, None, 2), 0);
        assert_eq!(unpacked_padding.rows, 6);
        assert!(packed_padding.rows < unpacked_padding.rows);
        assert!(packed_padding.share() < unpacked_padding.share());
        let mut trainer = Trainer::new(model(family, 7), c).unwrap();
        let rows = trainer.rows(&data).len();
        assert_eq!(rows, packed_padding.rows);
        let before = trainer.evaluate(&data).unwrap();
        let reports = trainer
            .train(&data, 15, &mut |_| ControlFlow::Continue(()))
            .unwrap();
        assert_eq!(reports.len(), 15 * rows);
        assert!(reports.iter().all(|r| r.tokens > 0));
        let tokens: usize = data.iter().map(|e| e.tokens.len()).sum();
        assert_eq!(
            reports.iter().take(rows).map(|r| r.tokens).sum::<usize>(),
            tokens,
            "an epoch runs every example's tokens once"
        );
        let after = trainer.evaluate(&data).unwrap();
        assert!(after < before * 0.8, "{family:?}: {before} -> {after}");
    }
}

/// Rows longer than the model's context cannot be packed: the error says so.
#[test]
fn packing_past_the_context_is_refused() {
    match Trainer::new(
        model(TinyFamily::Llama, 3),
        config(DType::F32, Some(tiny::CONTEXT + 1), 1),
    ) {
        Err(TuneError::Validation(m)) => {
            assert!(m.contains("packing") && m.contains("context"), "{m}")
        }
        Err(other) => panic!("expected a validation error, got {other}"),
        Ok(_) => panic!("expected a refusal"),
    }
}
