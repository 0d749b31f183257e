//! The operands of attention's inner loops: a group of query heads and the cached key and
//! value rows it attends to (see [`crate::attn`]).

use crate::half::f16_to_f32;

/// Cached key or value rows, f32 or IEEE half (as bits).
#[derive(Clone, Copy)]
pub enum KvRows<'a> {
    F32(&'a [f32]),
    F16(&'a [u16]),
}

impl KvRows<'_> {
    pub(crate) fn len(&self) -> usize {
        match self {
            KvRows::F32(s) => s.len(),
            KvRows::F16(s) => s.len(),
        }
    }
}

/// One attention head group.
pub struct HeadGroup<'a> {
    /// Query heads, [heads, d] row-major.
    pub q: &'a [f32],
    pub heads: usize,
    pub d: usize,
    pub keys: KvRows<'a>,
    pub values: KvRows<'a>,
    /// Where token j's key (and value) starts: `rows[j] + col` in `keys` / `values`.
    pub rows: &'a [usize],
    pub col: usize,
    /// Multiplies every score (1/√d).
    pub scale: f32,
}

/// Element `i` of `rows`, widened to f32.
#[inline]
pub fn load(rows: KvRows<'_>, i: usize) -> f32 {
    match rows {
        KvRows::F32(s) => s[i],
        KvRows::F16(s) => f16_to_f32(s[i]),
    }
}
