//! Shared test helpers: deterministic data, the f64 references and the error bounds.
#![allow(dead_code)]

use zhiku_kernels::{QuantMatrix, QuantType, SimdPath, quantize::quantize, supported_paths};

/// xorshift64*: deterministic, dependency-free test data.
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    /// Roughly normal (sum of 4 uniforms), mean 0, sd 1.
    pub fn normal(&mut self) -> f32 {
        let s: f64 = (0..4)
            .map(|_| (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64)
            .sum();
        ((s - 2.0) * 3f64.sqrt()) as f32
    }
    pub fn vec(&mut self, len: usize, scale: f32) -> Vec<f32> {
        (0..len).map(|_| self.normal() * scale).collect()
    }
}

/// The quantized types (every type but the float ones).
pub const QUANT: &[QuantType] = QuantType::ALL.split_at(3).1;

/// A weight matrix of `ty` quantized from random data (rows with varied magnitudes and a
/// few offset rows, so minimums and scales are exercised).
pub fn random_matrix(rng: &mut Rng, ty: QuantType, n: usize, k: usize) -> QuantMatrix {
    let mut w = Vec::with_capacity(n * k);
    for r in 0..n {
        let scale = 0.02 * (1.0 + (r % 5) as f32);
        let offset = if r % 3 == 0 { 0.03 } else { 0.0 };
        w.extend(rng.vec(k, scale).into_iter().map(|v| v + offset));
    }
    let bytes = quantize(ty, &w);
    QuantMatrix::from_gguf_bytes(ty, n, k, &bytes).expect("valid matrix")
}

/// f64 x[m,k] · w[n,k]ᵀ.
pub fn reference(w: &[f32], n: usize, k: usize, x: &[f32], m: usize) -> Vec<f64> {
    let mut y = vec![0f64; m * n];
    for i in 0..m {
        for j in 0..n {
            y[i * n + j] = (0..k)
                .map(|t| f64::from(w[j * k + t]) * f64::from(x[i * k + t]))
                .sum();
        }
    }
    y
}

/// Σ|w||x| per output: the scale of float reassociation error.
pub fn magnitude(w: &[f32], n: usize, k: usize, x: &[f32], m: usize) -> Vec<f64> {
    let aw: Vec<f32> = w.iter().map(|v| v.abs()).collect();
    let ax: Vec<f32> = x.iter().map(|v| v.abs()).collect();
    reference(&aw, n, k, &ax, m)
}

/// Runs every supported path; asserts each equals the scalar path bit for bit; returns
/// the scalar result.
pub fn run_all_paths(w: &QuantMatrix, x: &[f32], m: usize) -> Vec<f32> {
    let n = w.rows();
    let mut want = vec![f32::NAN; m * n];
    w.matmul_with(SimdPath::Scalar, x, m, &mut want)
        .expect("scalar matmul");
    for path in supported_paths() {
        let mut y = vec![f32::NAN; m * n];
        w.matmul_with(path, x, m, &mut y).expect("matmul");
        for (j, (a, b)) in y.iter().zip(&want).enumerate() {
            assert_eq!(
                a.to_bits(),
                b.to_bits(),
                "{:?} {} path differs from scalar at {j} (m={m}, n={n}, k={}): {a} vs {b}",
                w.quant_type(),
                path.name(),
                w.cols()
            );
        }
    }
    want
}

/// Checks `y` against the dense references: within float rounding of W·x̂ (x̂ the
/// activations as quantized), and within the activation quantization bound of W·x:
/// |W·x − W·x̂| ≤ Σ_t |w_t|·Δ_t/2 with Δ the step of t's activation block.
pub fn check_against_dense(w: &QuantMatrix, x: &[f32], m: usize, y: &[f32]) {
    let (n, k, ty) = (w.rows(), w.cols(), w.quant_type());
    let wd = w.dequantize();
    let xq = zhiku_kernels::activation_roundtrip(ty, x, m, k);
    let exact_q = reference(&wd, n, k, &xq, m);
    let exact = reference(&wd, n, k, x, m);
    let mag = magnitude(&wd, n, k, &xq, m);
    // Half a step per activation, per block of 32 or 256.
    let blk = if ty.block_elems() == 256 { 256 } else { 32 };
    let half_step: Vec<f32> = x
        .chunks(blk)
        .flat_map(|b| {
            let amax = b.iter().fold(0f32, |a, v| a.max(v.abs()));
            std::iter::repeat_n(amax / 127.0 / 2.0, blk)
        })
        .collect();
    let bound = magnitude(&wd, n, k, &half_step, m);
    for j in 0..m * n {
        let got = f64::from(y[j]);
        let tol_q = 1e-5 * mag[j] + 1e-6;
        assert!(
            (got - exact_q[j]).abs() <= tol_q,
            "{ty:?} (m={m}, n={n}, k={k}) out {j}: {got} vs W·x̂ {} (tol {tol_q})",
            exact_q[j]
        );
        let tol = bound[j] * 1.001 + tol_q;
        assert!(
            (got - exact[j]).abs() <= tol,
            "{ty:?} (m={m}, n={n}, k={k}) out {j}: {got} vs W·x {} (bound {tol})",
            exact[j]
        );
    }
}
