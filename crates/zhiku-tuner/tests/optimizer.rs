//! Our AdamW, whose state a checkpoint holds, against candle-nn's AdamW: the same updates
//! (f64, random parameters and gradients, weight decay, a changing learning rate), and a
//! restored state continuing exactly as the uninterrupted one.

mod common;

use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Tensor, Var};
use candle_nn::Optimizer;
use common::{max_diff, values_f64 as values};
use zhiku_lm::seeded::SplitMix64;
use zhiku_tuner::optimizer::{AdamW, AdamWParams};

const SHAPES: [(usize, usize); 3] = [(4, 16), (24, 4), (1, 7)];

fn random(rng: &mut SplitMix64, shape: (usize, usize)) -> Tensor {
    let v: Vec<f64> = (0..shape.0 * shape.1).map(|_| rng.normal()).collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

fn vars(seed: u64) -> Vec<Var> {
    let mut rng = SplitMix64(seed);
    SHAPES
        .iter()
        .map(|&s| Var::from_tensor(&random(&mut rng, s)).unwrap())
        .collect()
}

/// Gradients for `vars` at step `step` (the last parameter gets none every third step).
fn grads(vars: &[Var], step: u64) -> GradStore {
    let mut rng = SplitMix64(1000 + step);
    let loss = vars
        .iter()
        .map(|v| v.as_tensor().sum_all().unwrap())
        .reduce(|a, b| (a + b).unwrap())
        .unwrap();
    let mut store = loss.backward().unwrap();
    for (i, v) in vars.iter().enumerate() {
        store.remove(v);
        if i == vars.len() - 1 && step.is_multiple_of(3) {
            continue;
        }
        store.insert(v, (random(&mut rng, v.dims2().unwrap()) * 0.5).unwrap());
    }
    store
}

const PARAMS: AdamWParams = AdamWParams {
    lr: 3e-2,
    beta1: 0.9,
    beta2: 0.95,
    eps: 1e-8,
    weight_decay: 0.1,
};

fn lr_at(step: u64) -> f64 {
    PARAMS.lr * (1.0 + (step as f64 * 0.7).cos()) / 2.0
}

#[test]
fn n_steps_equal_candle_nns_adamw() {
    let ours_vars = vars(7);
    let theirs_vars = vars(7);
    let mut ours = AdamW::new(ours_vars.clone(), PARAMS).unwrap();
    let mut theirs = candle_nn::AdamW::new(
        theirs_vars.clone(),
        candle_nn::ParamsAdamW {
            lr: PARAMS.lr,
            beta1: PARAMS.beta1,
            beta2: PARAMS.beta2,
            eps: PARAMS.eps,
            weight_decay: PARAMS.weight_decay,
        },
    )
    .unwrap();
    let start = values(ours_vars[0].as_tensor());
    for step in 0..25 {
        ours.set_learning_rate(lr_at(step));
        theirs.set_learning_rate(lr_at(step));
        ours.step(&grads(&ours_vars, step)).unwrap();
        theirs.step(&grads(&theirs_vars, step)).unwrap();
    }
    assert_eq!(ours.step_count(), 25);
    for (a, b) in ours_vars.iter().zip(&theirs_vars) {
        assert_eq!(a.dtype(), DType::F64);
        let d = max_diff(a.as_tensor(), b.as_tensor());
        assert!(d <= 1e-12, "parameters differ by {d}");
    }
    assert_ne!(start, values(ours_vars[0].as_tensor()), "nothing trained");
}

#[test]
fn a_restored_state_continues_as_the_uninterrupted_one() {
    let straight_vars = vars(8);
    let mut straight = AdamW::new(straight_vars.clone(), PARAMS).unwrap();
    let first_vars = vars(8);
    let mut first = AdamW::new(first_vars.clone(), PARAMS).unwrap();
    for step in 0..10 {
        straight.set_learning_rate(lr_at(step));
        straight.step(&grads(&straight_vars, step)).unwrap();
        if step < 6 {
            first.set_learning_rate(lr_at(step));
            first.step(&grads(&first_vars, step)).unwrap();
        }
    }
    // A new optimizer over the parameters as they stood, with the saved moments and step.
    let moments: Vec<(Tensor, Tensor)> = (0..SHAPES.len())
        .map(|i| {
            let (m, v) = first.moments(i).unwrap();
            (m.copy().unwrap(), v.copy().unwrap())
        })
        .collect();
    let resumed_vars: Vec<Var> = first_vars
        .iter()
        .map(|v| Var::from_tensor(&v.as_tensor().copy().unwrap()).unwrap())
        .collect();
    let mut resumed = AdamW::new(resumed_vars.clone(), PARAMS).unwrap();
    resumed.restore(first.step_count(), moments).unwrap();
    for step in 6..10 {
        resumed.set_learning_rate(lr_at(step));
        resumed.step(&grads(&resumed_vars, step)).unwrap();
    }
    for (a, b) in straight_vars.iter().zip(&resumed_vars) {
        assert_eq!(max_diff(a.as_tensor(), b.as_tensor()), 0.0);
    }
    // A state for other parameters is refused.
    let mut other = AdamW::new(vars(9)[..2].to_vec(), PARAMS).unwrap();
    let wrong: Vec<(Tensor, Tensor)> = (0..SHAPES.len())
        .map(|i| {
            let (m, v) = first.moments(i).unwrap();
            (m.clone(), v.clone())
        })
        .collect();
    assert!(other.restore(6, wrong).is_err());
}
