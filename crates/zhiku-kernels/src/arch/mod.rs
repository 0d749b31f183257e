//! The one dispatch table of the kernels: a struct of function pointers per SIMD path, the
//! portable one ([`generic`]) and each architecture's ([`x86`]; `aarch64`, NEON, beside it).
//! The CPU is probed once, on first use; the fastest table it runs serves every call after
//! ([`best`]), and tests and benches pick any table it runs ([`table`]).
//!
//! Every entry is an `unsafe fn` because the SIMD ones need their CPU features: holding a
//! table from [`best`] or [`table`] proves those, so a caller's SAFETY argument is only the
//! entry's own contract on its arguments.

use std::ops::Range;
use std::sync::OnceLock;

use crate::act::{Acts, RowOut};
use crate::heads::HeadGroup;
use crate::{KernelError, OutPtr, QuantType, SimdPath};

#[cfg(target_arch = "aarch64")]
mod aarch64;
pub(crate) mod generic;
#[cfg(target_arch = "x86_64")]
mod x86;

/// One matmul's operands, shared by its work items.
pub(crate) struct MatmulJob<'a> {
    /// The weights' group-blocks: `ceil(n/8)` groups of `nb` blocks (see `crate::layout`).
    pub w: &'a [u8],
    pub nb: usize,
    /// The quantized activations, m rows of k.
    pub acts: &'a Acts,
    /// The output, row-major m × n.
    pub y: OutPtr,
    pub n: usize,
}

/// The kernels of one SIMD path.
pub(crate) struct Kernels {
    pub path: SimdPath,
    /// Quantizes one row of activations (`x.len()` a multiple of `blk`, 32 or 256) into
    /// `o`, sized for it.
    pub quantize_row: unsafe fn(x: &[f32], blk: usize, o: &mut RowOut<'_>),
    /// Computes the outputs of activation rows `rows` × weight groups `groups` of the job;
    /// `job.y` must be writable there, by this call only.
    pub gemm:
        unsafe fn(ty: QuantType, job: &MatmulJob<'_>, rows: Range<usize>, groups: Range<usize>),
    /// scores[h·n + j] = scale · q_h·k_j; every row of the group inside both caches, q of
    /// heads·d elements, scores of heads·n.
    pub scores: unsafe fn(g: &HeadGroup<'_>, scores: &mut [f32]),
    /// Scores become exp(s − max); returns (max, Σ exp).
    pub exp_shifted: unsafe fn(scores: &mut [f32]) -> (f32, f32),
    /// out_h += Σ_j scores[h·n + j] · v_j, as `scores` for the values; out of heads·d
    /// elements.
    pub weighted_sum: unsafe fn(g: &HeadGroup<'_>, scores: &[f32], out: &mut [f32]),
    /// out[i] = silu(gate[i]) · up[i], the three slices of one length.
    pub silu_mul: unsafe fn(gate: &[f32], up: &[f32], out: &mut [f32]),
}

/// Every table this CPU runs, the portable one first, the fastest last.
pub(crate) fn supported() -> &'static [&'static Kernels] {
    static TABLES: OnceLock<Vec<&'static Kernels>> = OnceLock::new();
    TABLES.get_or_init(|| {
        let mut tables = vec![&generic::KERNELS];
        #[cfg(target_arch = "x86_64")]
        tables.extend(x86::supported());
        #[cfg(target_arch = "aarch64")]
        tables.extend(aarch64::supported());
        tables
    })
}

/// The fastest table this CPU runs.
pub(crate) fn best() -> &'static Kernels {
    supported().last().copied().unwrap_or(&generic::KERNELS)
}

/// The table of `path`, or why this CPU cannot run it.
pub(crate) fn table(path: SimdPath) -> Result<&'static Kernels, KernelError> {
    supported()
        .iter()
        .copied()
        .find(|k| k.path == path)
        .ok_or(KernelError::Unsupported(path))
}
