//! Quantized CPU matmul for zhiku: GGUF/ggml block types × f32 activations → f32.
//!
//! Weights are repacked at load into a private layout (rows interleaved in groups of 8,
//! see `layout`); activations are quantized once per call (int8 blocks of 32 or 256);
//! the kernels compute integer dot products and one f32 step per block. The SIMD path is
//! chosen once at run time (AVX-512 VNNI, AVX-512, AVX2, else portable scalar code): one
//! dispatch table of function pointers (`arch`), portable code in `arch::generic` and each
//! architecture's beside it. Every path gives bit-identical matmuls. Work runs on one
//! persistent pool (`set_threads`).
//!
//! Decode (few activation rows) is a GEMV split over threads by chunks of output rows;
//! prefill (many rows) tiles `MR` activation rows × 8 weight rows per register tile, so a
//! weight block is unpacked once per tile, and blocks the activations by 64 rows.
//!
//! ```
//! use zhiku_kernels::{QuantMatrix, QuantType};
//! # fn main() -> Result<(), zhiku_kernels::KernelError> {
//! // Call `zhiku_kernels::set_threads(n)` first if the count is configured.
//! let (n, k) = (8, 64);
//! // One ggml Q8_0 block: scale 1.0 (f16 0x3c00), then 32 codes of 1.
//! let block: Vec<u8> = [0x00, 0x3c].into_iter().chain([1u8; 32]).collect();
//! let w = QuantMatrix::from_gguf_bytes(QuantType::Q8_0, n, k, &block.repeat(n * k / 32))?;
//! let x = vec![1.0f32; 2 * k]; // m = 2 rows
//! let mut y = vec![0.0f32; 2 * n];
//! w.matmul(&x, 2, &mut y)?;
//! assert!(y.iter().all(|&v| (v - k as f32).abs() < 1e-3));
//! # Ok(())
//! # }
//! ```

mod act;
mod arch;
mod attn;
pub mod half;
mod heads;
mod layout;
mod pool;
#[doc(hidden)]
pub mod quantize;
mod swiglu;

pub use attn::{AttnBatch, attend, attend_batch};
#[doc(hidden)]
pub use attn::{attend_batch_with, attend_with};
pub use heads::{HeadGroup, KvRows};
pub use pool::{default_threads, set_threads, threads};
pub use swiglu::silu_mul;
#[doc(hidden)]
pub use swiglu::silu_mul_with;

use act::{Acts, RowOut};
use arch::{Kernels, MatmulJob};
use layout::{Canon, R, canon_row_f32, canon_to_gb, gb_to_canon, ggml_to_canon, regions};

/// GGUF/ggml block types served.
#[allow(non_camel_case_types)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum QuantType {
    F32,
    F16,
    BF16,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q4K,
    Q5K,
    Q6K,
}

impl QuantType {
    /// Every type, for tests and benches.
    pub const ALL: [QuantType; 11] = [
        QuantType::F32,
        QuantType::F16,
        QuantType::BF16,
        QuantType::Q4_0,
        QuantType::Q4_1,
        QuantType::Q5_0,
        QuantType::Q5_1,
        QuantType::Q8_0,
        QuantType::Q4K,
        QuantType::Q5K,
        QuantType::Q6K,
    ];

    /// From the ggml type id stored in GGUF tensor infos (0=F32, 1=F16, 2=Q4_0, 3=Q4_1,
    /// 6=Q5_0, 7=Q5_1, 8=Q8_0, 12=Q4_K, 13=Q5_K, 14=Q6_K, 30=BF16).
    pub fn from_ggml_id(id: u32) -> Option<Self> {
        use QuantType::*;
        Some(match id {
            0 => F32,
            1 => F16,
            2 => Q4_0,
            3 => Q4_1,
            6 => Q5_0,
            7 => Q5_1,
            8 => Q8_0,
            12 => Q4K,
            13 => Q5K,
            14 => Q6K,
            30 => BF16,
            _ => return None,
        })
    }

    /// Elements per block: 32 or 256 (1 for float types).
    pub const fn block_elems(self) -> usize {
        use QuantType::*;
        match self {
            F32 | F16 | BF16 => 1,
            Q4_0 | Q4_1 | Q5_0 | Q5_1 | Q8_0 => 32,
            Q4K | Q5K | Q6K => 256,
        }
    }

    /// Bytes per block in ggml's format.
    pub const fn block_bytes(self) -> usize {
        use QuantType::*;
        match self {
            F32 => 4,
            F16 | BF16 => 2,
            Q4_0 => 18,
            Q4_1 => 20,
            Q5_0 => 22,
            Q5_1 => 24,
            Q8_0 => 34,
            Q4K => 144,
            Q5K => 176,
            Q6K => 210,
        }
    }

    fn is_float(self) -> bool {
        matches!(self, QuantType::F32 | QuantType::F16 | QuantType::BF16)
    }
}

/// The crate's errors: shapes, lengths and the thread pool.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error("{ty:?} matrix {n}x{k}: {why}")]
    Shape {
        ty: QuantType,
        n: usize,
        k: usize,
        why: String,
    },
    #[error("{what}: expected {expected} elements or bytes, got {got}")]
    Length {
        what: &'static str,
        expected: usize,
        got: usize,
    },
    #[error("row {row} out of range: the matrix has {rows} rows")]
    Row { row: usize, rows: usize },
    #[error("SIMD path {0:?} is not supported by this CPU")]
    Unsupported(SimdPath),
    #[error("threads: {0}")]
    Threads(String),
    #[error("attention: {0}")]
    Attention(String),
}

/// The kernel implementations, for tests and benches (`matmul_with`).
#[doc(hidden)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SimdPath {
    Scalar,
    Avx2,
    Avx512,
    Avx512Vnni,
}

impl SimdPath {
    pub fn name(self) -> &'static str {
        match self {
            SimdPath::Scalar => "scalar",
            SimdPath::Avx2 => "avx2",
            SimdPath::Avx512 => "avx512",
            SimdPath::Avx512Vnni => "avx512-vnni",
        }
    }

    /// Whether this CPU can run the path.
    pub fn supported(self) -> bool {
        arch::table(self).is_ok()
    }
}

/// Every path this CPU runs, fastest last.
#[doc(hidden)]
pub fn supported_paths() -> Vec<SimdPath> {
    arch::supported().iter().map(|k| k.path).collect()
}

/// Which SIMD path runs (for logs/benches): "avx512-vnni" | "avx512" | "avx2" | "scalar".
pub fn simd_level() -> &'static str {
    arch::best().path.name()
}

enum Store {
    /// F32/F16/BF16, widened to f32 for `gemm`.
    Float(Vec<f32>),
    /// Group-blocks: `ceil(n/8)` groups × `nb` blocks.
    Blocks { gb: Vec<u8>, nb: usize },
}

/// An [n, k] weight matrix (n output rows, k inputs per row), as GGUF stores a 2-D tensor
/// with ne0 = k, ne1 = n: row r is k / block_elems consecutive blocks.
pub struct QuantMatrix {
    ty: QuantType,
    n: usize,
    k: usize,
    store: Store,
}

/// Output pointer shared by the workers; each writes a disjoint set of elements.
#[derive(Clone, Copy)]
pub(crate) struct OutPtr(pub(crate) *mut f32);

impl OutPtr {
    /// A method, so closures capture the whole (Sync) wrapper, not the raw field.
    pub(crate) fn get(self) -> *mut f32 {
        self.0
    }
}
// SAFETY: workers write disjoint elements (distinct rows × groups) and the caller's
// output outlives the parallel section.
unsafe impl Send for OutPtr {}
// SAFETY: as above.
unsafe impl Sync for OutPtr {}

/// Rows of activations per cache block of the prefill GEMM.
const MBLOCK: usize = 64;

/// The least work (multiply-adds) worth handing to another thread.
const MIN_ITEM_MACS: usize = 1 << 18;

impl QuantMatrix {
    /// Builds the matrix from ggml's bytes (any alignment, e.g. a slice of a memory-mapped
    /// GGUF), repacking them. `data` must be exactly `n · k / block_elems · block_bytes`.
    pub fn from_gguf_bytes(
        ty: QuantType,
        n: usize,
        k: usize,
        data: &[u8],
    ) -> Result<Self, KernelError> {
        let shape = |why: &str| KernelError::Shape {
            ty,
            n,
            k,
            why: why.to_string(),
        };
        if n == 0 || k == 0 {
            return Err(shape("empty matrix"));
        }
        let be = ty.block_elems();
        if !k.is_multiple_of(be) {
            return Err(shape(&format!("k is no multiple of the block size {be}")));
        }
        let nb = k / be;
        let expected = n
            .checked_mul(nb)
            .and_then(|v| v.checked_mul(ty.block_bytes()))
            .ok_or_else(|| shape("size overflows"))?;
        if data.len() != expected {
            return Err(KernelError::Length {
                what: "weight bytes",
                expected,
                got: data.len(),
            });
        }
        let store = if ty.is_float() {
            Store::Float(to_f32(ty, data))
        } else {
            Store::Blocks {
                gb: repack(ty, n, nb, data),
                nb,
            }
        };
        Ok(QuantMatrix { ty, n, k, store })
    }

    pub fn quant_type(&self) -> QuantType {
        self.ty
    }

    pub fn rows(&self) -> usize {
        self.n
    }

    pub fn cols(&self) -> usize {
        self.k
    }

    /// Bytes held for the weights.
    pub fn storage_bytes(&self) -> usize {
        match &self.store {
            Store::Float(v) => v.len() * 4,
            Store::Blocks { gb, .. } => gb.len(),
        }
    }

    /// y[m, n] = x[m, k] · Wᵀ, all row-major f32. Activations quantized once per call
    /// (Q8_0 / Q8_K-like blocks as the type needs).
    pub fn matmul(&self, x: &[f32], m: usize, y: &mut [f32]) -> Result<(), KernelError> {
        self.matmul_on(arch::best(), x, m, y)
    }

    /// [`QuantMatrix::matmul`] on a chosen path (tests compare the paths).
    #[doc(hidden)]
    pub fn matmul_with(
        &self,
        path: SimdPath,
        x: &[f32],
        m: usize,
        y: &mut [f32],
    ) -> Result<(), KernelError> {
        self.matmul_on(arch::table(path)?, x, m, y)
    }

    fn matmul_on(
        &self,
        kernels: &Kernels,
        x: &[f32],
        m: usize,
        y: &mut [f32],
    ) -> Result<(), KernelError> {
        self.check(x, m, Some(y.len()))?;
        // SAFETY: y has m·n elements (checked).
        unsafe { self.matmul_raw(kernels, x, m, y.as_mut_ptr()) };
        Ok(())
    }

    /// y[m, n] = x[m, k] · Wᵀ into a new vector. Every element is written by the kernels,
    /// so the output is not zeroed first (for the lm_head of a batch, that is megabytes per
    /// step).
    pub fn matmul_vec(&self, x: &[f32], m: usize) -> Result<Vec<f32>, KernelError> {
        let kernels = arch::best();
        self.check(x, m, None)?;
        let len = m * self.n;
        let mut y: Vec<f32> = Vec::with_capacity(len);
        // SAFETY: the vector holds room for m·n elements; `matmul_raw` writes each of them
        // (every row × group item of the kernels, or gemm without reading the
        // destination), so all `len` are initialised before `set_len`.
        unsafe {
            self.matmul_raw(kernels, x, m, y.as_mut_ptr());
            y.set_len(len);
        }
        Ok(y)
    }

    /// The checks of a matmul: x's length, and y's if given (else m·n must not overflow).
    fn check(&self, x: &[f32], m: usize, y_len: Option<usize>) -> Result<(), KernelError> {
        let (n, k) = (self.n, self.k);
        let len = |what, expected: Option<usize>, got| match expected {
            Some(expected) if expected == got => Ok(()),
            e => Err(KernelError::Length {
                what,
                expected: e.unwrap_or(usize::MAX),
                got,
            }),
        };
        len("activations x[m, k]", m.checked_mul(k), x.len())?;
        match y_len {
            Some(got) => len("output y[m, n]", m.checked_mul(n), got),
            None => m.checked_mul(n).map(|_| ()).ok_or(KernelError::Length {
                what: "output y[m, n]",
                expected: usize::MAX,
                got: m,
            }),
        }
    }

    /// # Safety
    /// x has m·k elements and `y` is valid for writes of m·n.
    unsafe fn matmul_raw(&self, kernels: &Kernels, x: &[f32], m: usize, y: *mut f32) {
        if m == 0 {
            return;
        }
        match &self.store {
            // SAFETY: the caller's contract on y and x.
            Store::Float(w) => unsafe { float_matmul(w, self.n, self.k, x, m, OutPtr(y)) },
            Store::Blocks { gb, nb } => {
                let acts = quantize_acts(kernels, self.ty, x, m, self.k);
                // SAFETY: as above; `acts` has m rows of k.
                unsafe { self.block_matmul(kernels, gb, *nb, &acts, m, OutPtr(y)) };
            }
        }
    }

    /// # Safety
    /// `out` is valid for writes of m·n elements.
    unsafe fn block_matmul(
        &self,
        kernels: &Kernels,
        gb: &[u8],
        nb: usize,
        acts: &Acts,
        m: usize,
        out: OutPtr,
    ) {
        let n = self.n;
        let ngroups = n.div_ceil(R);
        let mblocks = m.div_ceil(MBLOCK);
        let th = threads();
        // Enough items per thread to balance, each a run of whole groups, but none so
        // small that waking a worker costs more than it saves (small decode GEMVs).
        let macs = m * n * self.k;
        let chunks = if th == 1 {
            1
        } else {
            (4 * th)
                .min(macs / MIN_ITEM_MACS)
                .div_ceil(mblocks)
                .clamp(1, ngroups)
        };
        let per = ngroups.div_ceil(chunks);
        let chunks = ngroups.div_ceil(per);
        let ty = self.ty;
        let job = MatmulJob {
            w: gb,
            nb,
            acts,
            y: out,
            n,
        };
        pool::parallel_for(mblocks * chunks, |item| {
            let (mb, ch) = (item / chunks, item % chunks);
            let rows = mb * MBLOCK..(m.min((mb + 1) * MBLOCK));
            let groups = ch * per..ngroups.min((ch + 1) * per);
            // SAFETY: the table is one this CPU runs; `gb` holds `ngroups` groups of `nb`
            // blocks; `acts` has `m` rows of `k`; the item's rows × groups are inside y and
            // written by this item only.
            unsafe { (kernels.gemm)(ty, &job, rows, groups) };
        });
    }

    /// Row r dequantized into out (len k): for embedding lookups of quantized token_embd.
    pub fn dequantize_row(&self, r: usize, out: &mut [f32]) -> Result<(), KernelError> {
        if r >= self.n {
            return Err(KernelError::Row {
                row: r,
                rows: self.n,
            });
        }
        if out.len() != self.k {
            return Err(KernelError::Length {
                what: "dequantized row",
                expected: self.k,
                got: out.len(),
            });
        }
        match &self.store {
            Store::Float(w) => out.copy_from_slice(&w[r * self.k..(r + 1) * self.k]),
            Store::Blocks { gb, nb } => {
                let size = regions(self.ty).size;
                let be = self.ty.block_elems();
                let mut c = Canon::default();
                let g = r / R;
                for b in 0..*nb {
                    let at = (g * nb + b) * size;
                    gb_to_canon(self.ty, &gb[at..at + size], &mut c);
                    canon_row_f32(self.ty, &c, r % R, &mut out[b * be..(b + 1) * be]);
                }
            }
        }
        Ok(())
    }

    /// The whole matrix dequantized, [n, k] row-major (tests, LoRA merge references).
    pub fn dequantize(&self) -> Vec<f32> {
        let mut out = vec![0f32; self.n * self.k];
        for (r, row) in out.chunks_exact_mut(self.k).enumerate() {
            // Cannot fail: r < n and the row has length k.
            let _ = self.dequantize_row(r, row);
        }
        out
    }
}

fn to_f32(ty: QuantType, data: &[u8]) -> Vec<f32> {
    match ty {
        QuantType::F32 => data
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
        QuantType::F16 => data
            .chunks_exact(2)
            .map(|b| half::f16_to_f32(u16::from_le_bytes([b[0], b[1]])))
            .collect(),
        _ => data
            .chunks_exact(2)
            .map(|b| half::bf16_to_f32(u16::from_le_bytes([b[0], b[1]])))
            .collect(),
    }
}

/// ggml rows → group-blocks, groups in parallel.
fn repack(ty: QuantType, n: usize, nb: usize, data: &[u8]) -> Vec<u8> {
    use rayon::prelude::*;
    let size = regions(ty).size;
    let bb = ty.block_bytes();
    let mut gb = vec![0u8; n.div_ceil(R) * nb * size];
    let group = |(g, out): (usize, &mut [u8])| {
        let mut c = Canon::default();
        for b in 0..nb {
            for r in 0..R {
                let row = g * R + r;
                if row < n {
                    let at = (row * nb + b) * bb;
                    ggml_to_canon(ty, &data[at..at + bb], r, &mut c);
                }
            }
            canon_to_gb(ty, &c, &mut out[b * size..(b + 1) * size]);
        }
    };
    // Only on our pool: with one thread, rayon would fall back to its global pool.
    if threads() > 1 {
        pool::install(|| gb.par_chunks_mut(nb * size).enumerate().for_each(group));
    } else {
        gb.chunks_mut(nb * size).enumerate().for_each(group);
    }
    gb
}

/// Quantizes the activations, rows in parallel when there are many.
fn quantize_acts(kernels: &Kernels, ty: QuantType, x: &[f32], m: usize, k: usize) -> Acts {
    use rayon::prelude::*;
    let blk = if ty.block_elems() == 256 { 256 } else { 32 };
    let mut a = Acts::new(m, k, blk);
    // SAFETY: the table is one this CPU runs; the slices are one row's (k, a multiple of
    // blk, and the outputs sized for it by `Acts::new`).
    let one = |x: &[f32], o: &mut RowOut<'_>| unsafe { (kernels.quantize_row)(x, blk, o) };
    macro_rules! rows {
        ($chunks:ident, $chunks_mut:ident) => {
            x.$chunks(k)
                .zip(a.qs.$chunks_mut(k))
                .zip(a.d.$chunks_mut(k / blk))
                .zip(a.s.$chunks_mut(k / 32))
                .zip(a.b32.$chunks_mut(k / 32))
                .zip(a.b16.$chunks_mut(k / 16))
                .map(|(((((x, qs), d), s), b32), b16)| (x, RowOut { qs, d, s, b32, b16 }))
        };
    }
    if m >= 16 && threads() > 1 {
        pool::install(|| {
            rows!(par_chunks, par_chunks_mut)
                .with_min_len(4)
                .for_each(|(x, mut o)| one(x, &mut o))
        });
    } else {
        rows!(chunks, chunks_mut).for_each(|(x, mut o)| one(x, &mut o));
    }
    a
}

/// y = x · Wᵀ in f32 through `gemm`.
///
/// # Safety
/// `y` is valid for writes of m·n elements.
unsafe fn float_matmul(w: &[f32], n: usize, k: usize, x: &[f32], m: usize, y: OutPtr) {
    let th = threads();
    let par = if th > 1 && m * n * k >= 1 << 20 {
        gemm::Parallelism::Rayon(th)
    } else {
        gemm::Parallelism::None
    };
    pool::install(|| {
        // SAFETY: y is m×n (row stride n), x is m×k (row stride k), and Wᵀ is read as a
        // k×n matrix with column stride k and row stride 1 from w (n×k); all lengths were
        // checked by the caller; `read_dst` false, so y's old contents are not read.
        unsafe {
            gemm::gemm(
                m,
                n,
                k,
                y.get(),
                1,
                n as isize,
                false,
                x.as_ptr(),
                1,
                k as isize,
                w.as_ptr(),
                k as isize,
                1,
                0.0,
                1.0,
                false,
                false,
                false,
                par,
            )
        }
    });
}

/// The activations as the kernels see them (dequantized), for tests' error bounds.
#[doc(hidden)]
pub fn activation_roundtrip(ty: QuantType, x: &[f32], m: usize, k: usize) -> Vec<f32> {
    let a = quantize_acts(&arch::generic::KERNELS, ty, x, m, k);
    a.qs.iter()
        .enumerate()
        .map(|(j, &q)| f32::from(q) * a.d[j / a.blk])
        .collect()
}
