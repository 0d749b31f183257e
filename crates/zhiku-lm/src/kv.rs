//! The KV cache's storage: K and V of every layer in fixed-size blocks of tokens,
//! preallocated once from a token budget; it never grows. Which blocks a sequence holds (and
//! the prefix cache) is the engine's business: attention only follows a block table.
//!
//! On the kernel path the cache is host memory (f32 or f16) that the kernels read in place;
//! on the tensor path it is one [slots, kv_heads · head_dim] tensor per layer on the
//! model's device, written in place.
//!
//! Storage is token-major within a layer (`[slot][kv_head][head_dim]`, slot = block ·
//! block_size + offset), so writing one token's K is one contiguous copy and a grouped
//! query head reads each key once for its whole group.

use candle_core::{DType, Device, Tensor};
use half::f16;

use crate::ComputePath;
use crate::error::LmError;

/// Tokens per block.
pub const BLOCK_SIZE: usize = 16;

/// Element type of the cache on the CPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KvDtype {
    F32,
    /// Half the memory; K/V are rounded to f16 when stored.
    F16,
}

/// The shape of one layer's K (or V) per token.
#[derive(Debug, Clone, Copy)]
pub struct KvShape {
    pub layers: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
}

impl KvShape {
    pub fn token_width(&self) -> usize {
        self.kv_heads * self.head_dim
    }
}

/// One layer's K and V.
pub enum LayerKv {
    F32 {
        k: Vec<f32>,
        v: Vec<f32>,
    },
    F16 {
        k: Vec<f16>,
        v: Vec<f16>,
    },
    /// The tensor path: [slots, kv_heads · head_dim] tensors written in place.
    Tensor {
        k: Tensor,
        v: Tensor,
    },
}

/// The preallocated storage.
pub struct KvCache {
    pub shape: KvShape,
    pub num_blocks: usize,
    pub layers: Vec<LayerKv>,
}

impl KvCache {
    /// Room for `tokens` tokens (rounded up to whole blocks): host vectors of `dtype` on
    /// the kernel path (zeroed by the allocator lazily: pages count as resident only once
    /// written), tensors of `tensor_dtype` on `device` on the tensor path (always off the
    /// CPU).
    pub fn new(
        shape: KvShape,
        tokens: usize,
        dtype: KvDtype,
        device: &Device,
        tensor_dtype: DType,
        compute: ComputePath,
    ) -> Result<Self, LmError> {
        let host = ComputePath::on(compute, device) == ComputePath::Kernels;
        let num_blocks = tokens.div_ceil(BLOCK_SIZE).max(1);
        let slots = num_blocks * BLOCK_SIZE;
        let len = slots
            .checked_mul(shape.token_width())
            .ok_or_else(|| LmError::Load("--kv-cache-tokens is too large".into()))?;
        let layers = (0..shape.layers)
            .map(|_| -> Result<LayerKv, LmError> {
                Ok(if host {
                    match dtype {
                        KvDtype::F32 => LayerKv::F32 {
                            k: vec![0f32; len],
                            v: vec![0f32; len],
                        },
                        KvDtype::F16 => LayerKv::F16 {
                            k: vec![f16::ZERO; len],
                            v: vec![f16::ZERO; len],
                        },
                    }
                } else {
                    LayerKv::Tensor {
                        k: Tensor::zeros((slots, shape.token_width()), tensor_dtype, device)?,
                        v: Tensor::zeros((slots, shape.token_width()), tensor_dtype, device)?,
                    }
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            shape,
            num_blocks,
            layers,
        })
    }

    pub fn capacity_tokens(&self) -> usize {
        self.num_blocks * BLOCK_SIZE
    }

    /// Bytes the cache takes when full.
    pub fn bytes(&self) -> usize {
        let per = match self.layers.first() {
            Some(LayerKv::F16 { .. }) => 2,
            Some(LayerKv::Tensor { k, .. }) => k.dtype().size_in_bytes(),
            _ => 4,
        };
        2 * self.shape.layers * self.capacity_tokens() * self.shape.token_width() * per
    }
}
