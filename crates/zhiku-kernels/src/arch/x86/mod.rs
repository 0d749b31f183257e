//! The x86-64 tables: AVX2 (with FMA and F16C), AVX-512 (F/BW/VL) and AVX-512 VNNI. They
//! share every kernel but the matmul's register tile.

mod act;
mod attn;
mod matmul;
mod swiglu;

use super::Kernels;
use crate::SimdPath;

const AVX2_KERNELS: Kernels = Kernels {
    path: SimdPath::Avx2,
    quantize_row: act::quantize_row,
    gemm: matmul::range_avx2,
    scores: attn::scores,
    exp_shifted: attn::exp_shifted,
    weighted_sum: attn::weighted_sum,
    silu_mul: swiglu::silu_mul,
};

static AVX2: Kernels = AVX2_KERNELS;

static AVX512: Kernels = Kernels {
    path: SimdPath::Avx512,
    gemm: matmul::range_avx512,
    ..AVX2_KERNELS
};

static AVX512_VNNI: Kernels = Kernels {
    path: SimdPath::Avx512Vnni,
    gemm: matmul::range_vnni,
    ..AVX2_KERNELS
};

/// The tables this CPU runs, slowest first.
pub(super) fn supported() -> Vec<&'static Kernels> {
    use std::arch::is_x86_feature_detected as has;
    let avx2 = has!("avx2") && has!("fma") && has!("f16c");
    let avx512 = avx2 && has!("avx512f") && has!("avx512bw") && has!("avx512vl");
    let vnni = avx512 && has!("avx512vnni");
    [(avx2, &AVX2), (avx512, &AVX512), (vnni, &AVX512_VNNI)]
        .into_iter()
        .filter(|(runs, _)| *runs)
        .map(|(_, table)| table)
        .collect()
}
