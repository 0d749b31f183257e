//! Every type against dequantize-then-f64-matmul, every SIMD path against the scalar path,
//! over fixed and random (proptest) shapes.

mod support;

use proptest::prelude::*;
use support::*;
use zhiku_kernels::{QuantType, SimdPath, supported_paths};

#[test]
fn paths_run_here() {
    for p in [
        SimdPath::Scalar,
        SimdPath::Avx2,
        SimdPath::Avx512,
        SimdPath::Avx512Vnni,
    ] {
        if p.supported() {
            println!("path {}: tested", p.name());
        } else {
            println!("path {}: skipped (not supported by this CPU)", p.name());
        }
    }
    assert!(supported_paths().contains(&SimdPath::Scalar));
    assert_eq!(
        zhiku_kernels::simd_level(),
        supported_paths().last().unwrap().name()
    );
}

/// The relative RMS error against the f32 weights × f32 activations (int8 activation
/// rounding only): stated per block size of the activations.
fn rel_rms(y: &[f32], want: &[f64]) -> f64 {
    let num: f64 = y
        .iter()
        .zip(want)
        .map(|(a, b)| (f64::from(*a) - b).powi(2))
        .sum();
    let den: f64 = want.iter().map(|b| b * b).sum();
    (num / den).sqrt()
}

#[test]
fn each_type_matches_dequantized_matmul() {
    let mut rng = Rng(7);
    for &ty in QUANT {
        let (n, k, m) = (37, 512, 5);
        let w = random_matrix(&mut rng, ty, n, k);
        let x = rng.vec(m * k, 1.0);
        let y = run_all_paths(&w, &x, m);
        check_against_dense(&w, &x, m, &y);
        let want = reference(&w.dequantize(), n, k, &x, m);
        let err = rel_rms(&y, &want);
        // Tolerance per type: int8 activations in blocks of 32 (Q4_0..Q8_0) or 256 (K).
        let tol = if ty.block_elems() == 256 {
            0.016
        } else {
            0.012
        };
        println!("{ty:?}: relative RMS error {err:.5} (tolerance {tol})");
        assert!(err < tol, "{ty:?}: relative RMS error {err}");
    }
}

#[test]
fn raw_random_blocks_agree_across_paths() {
    // Arbitrary bit patterns (codes of -128 in Q8_0, every scale packing bit set), with
    // the f16 scales kept finite and small.
    let mut rng = Rng(99);
    for &ty in QUANT {
        let (n, k, m) = (19, 256, 3);
        let mut bytes: Vec<u8> = (0..n * k / ty.block_elems() * ty.block_bytes())
            .map(|_| rng.next_u64() as u8)
            .collect();
        let bb = ty.block_bytes();
        for blk in bytes.chunks_exact_mut(bb) {
            let f16_at: &[usize] = match ty {
                QuantType::Q4_1 | QuantType::Q5_1 | QuantType::Q4K | QuantType::Q5K => &[0, 2],
                QuantType::Q6K => &[208],
                _ => &[0],
            };
            for &o in f16_at {
                // Exponent 8..15 (values 2^-7..1), random sign and mantissa.
                blk[o + 1] = (blk[o + 1] & 0x83) | 0x20;
            }
        }
        let w = zhiku_kernels::QuantMatrix::from_gguf_bytes(ty, n, k, &bytes).unwrap();
        let x = rng.vec(m * k, 1.0);
        let y = run_all_paths(&w, &x, m);
        check_against_dense(&w, &x, m, &y);
    }
}

#[test]
fn float_types_go_through_gemm() {
    let mut rng = Rng(3);
    for ty in [QuantType::F32, QuantType::F16, QuantType::BF16] {
        let (n, k, m) = (33, 70, 4);
        let wf = rng.vec(n * k, 0.1);
        let bytes = zhiku_kernels::quantize::quantize(ty, &wf);
        let w = zhiku_kernels::QuantMatrix::from_gguf_bytes(ty, n, k, &bytes).unwrap();
        let x = rng.vec(m * k, 1.0);
        let mut y = vec![0f32; m * n];
        w.matmul(&x, m, &mut y).unwrap();
        let wd = w.dequantize();
        let want = reference(&wd, n, k, &x, m);
        let mag = magnitude(&wd, n, k, &x, m);
        for j in 0..m * n {
            assert!(
                (f64::from(y[j]) - want[j]).abs() <= 1e-5 * mag[j] + 1e-6,
                "{ty:?} {j}"
            );
        }
        if ty == QuantType::F32 {
            assert_eq!(wd, wf);
        }
    }
}

fn shape_strategy() -> impl Strategy<Value = (usize, usize, usize, usize, u64)> {
    // (type index, n, k blocks of 32, m, seed)
    (
        0..QUANT.len(),
        1usize..42,
        1usize..12,
        prop::sample::select(vec![1usize, 2, 3, 17, 300]),
        any::<u64>(),
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 40, ..ProptestConfig::default() })]

    #[test]
    fn odd_shapes(( ti, n, kb, m, seed) in shape_strategy()) {
        let ty = QUANT[ti];
        // k a multiple of 32 and (mostly) not of 256 where the type allows it.
        let k = if ty.block_elems() == 256 { 256 * kb.div_ceil(4) } else { 32 * kb };
        // Keep the debug-build reference cheap.
        let n = if m == 300 { n.min(9) } else { n };
        let mut rng = Rng(seed | 1);
        let w = random_matrix(&mut rng, ty, n, k);
        let x = rng.vec(m * k, 1.0);
        let y = run_all_paths(&w, &x, m);
        check_against_dense(&w, &x, m, &y);
    }
}
