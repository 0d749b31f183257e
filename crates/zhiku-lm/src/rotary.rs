//! Rotary position embedding tables, applied on host rows (the kernel path) or on tensors.

use candle_core::{D, DType, Device, Tensor};

use crate::transfer;

/// Rotary position embedding: `rotary_dim` leading dimensions of each head rotate, the rest
/// pass. Pairs are (i, i + rotary_dim/2) ("half", Qwen2/NeoX) or (2i, 2i+1) ("interleaved",
/// GGUF Llama, the GLM family).
#[derive(Debug, Clone)]
pub struct Rotary {
    pub rotary_dim: usize,
    pub interleaved: bool,
    /// cos / sin [max_positions, rotary_dim / 2], f32, row-major.
    pub cos: Vec<f32>,
    pub sin: Vec<f32>,
    pub max_positions: usize,
    /// The same tables as tensors on the model's device (for the tensor path).
    pub cos_t: Tensor,
    pub sin_t: Tensor,
    /// ChatGLM-6B's 2-D positions: each half of a head rotates (`rotary_dim` = half the
    /// head) at its own position, the first at the token's position, the second at its
    /// block position ([`Rotary::two_d_positions`]).
    pub two_d: bool,
}

impl Rotary {
    pub fn new(
        rotary_dim: usize,
        base: f64,
        interleaved: bool,
        max_positions: usize,
        device: &Device,
    ) -> candle_core::Result<Self> {
        let half = rotary_dim / 2;
        let inv: Vec<f32> = (0..half)
            .map(|i| 1f32 / base.powf((2 * i) as f64 / rotary_dim as f64) as f32)
            .collect();
        let mut cos = Vec::with_capacity(max_positions * half);
        let mut sin = Vec::with_capacity(max_positions * half);
        for p in 0..max_positions {
            for f in &inv {
                let a = p as f32 * f;
                cos.push(a.cos());
                sin.push(a.sin());
            }
        }
        // host: the tables go to the device once, when the model loads.
        let cos_t = Tensor::from_slice(&cos, (max_positions, half), device)?;
        let sin_t = Tensor::from_slice(&sin, (max_positions, half), device)?; // host: the same
        Ok(Self {
            rotary_dim,
            interleaved,
            cos,
            sin,
            max_positions,
            cos_t,
            sin_t,
            two_d: false,
        })
    }

    /// ChatGLM-6B's rotary: 2-D positions over the two halves of each head.
    pub fn with_two_d(mut self) -> Self {
        self.two_d = true;
        self
    }

    /// The position and block position of the token at index `i` of a sequence whose
    /// blank (`[gMASK]`) is the last token of its bidirectional part, `context` tokens long:
    /// the prompt counts 0, 1, 2, … with block position 0; what follows keeps the blank's
    /// position and counts block positions 1, 2, 3, …
    #[inline]
    pub fn two_d_positions(i: usize, context: usize) -> (u32, u32) {
        let blank = context.saturating_sub(1);
        (i.min(blank) as u32, i.saturating_sub(blank) as u32)
    }

    /// Rotates one head vector at `first` and, with 2-D positions, its second half at
    /// `second` (ignored otherwise).
    #[inline]
    pub fn apply_at(&self, x: &mut [f32], first: usize, second: usize) {
        if self.two_d {
            let (a, b) = x.split_at_mut(x.len() / 2);
            self.apply(a, first);
            self.apply(b, second);
        } else {
            self.apply(x, first);
        }
    }

    /// Rotates one head vector `x` (head_dim) in place at position `pos`.
    #[inline]
    pub fn apply(&self, x: &mut [f32], pos: usize) {
        let half = self.rotary_dim / 2;
        let cos = &self.cos[pos * half..(pos + 1) * half];
        let sin = &self.sin[pos * half..(pos + 1) * half];
        if self.interleaved {
            for i in 0..half {
                let (a, b) = (x[2 * i], x[2 * i + 1]);
                x[2 * i] = a * cos[i] - b * sin[i];
                x[2 * i + 1] = a * sin[i] + b * cos[i];
            }
        } else {
            for i in 0..half {
                let (a, b) = (x[i], x[i + half]);
                x[i] = a * cos[i] - b * sin[i];
                x[i + half] = a * sin[i] + b * cos[i];
            }
        }
    }

    /// The tensor path's tables at `positions` [rows] (u32; with 2-D positions [2·rows]:
    /// every row's first positions, then its second ones), in `dtype`: gathered once per
    /// step and applied by every layer.
    pub fn at(&self, positions: &Tensor, dtype: DType) -> candle_core::Result<RotaryAt> {
        Ok(RotaryAt {
            cos: self.cos_t.index_select(positions, 0)?.to_dtype(dtype)?,
            sin: self.sin_t.index_select(positions, 0)?.to_dtype(dtype)?,
            rotary_dim: self.rotary_dim,
            interleaved: self.interleaved,
            two_d: self.two_d,
        })
    }

    /// The training path: x [batch, heads, tokens, head_dim] at positions 0..tokens, rotated
    /// with differentiable ops (candle's fused rope has no backward).
    pub fn apply_train(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let (_, _, tokens, _) = x.dims4()?;
        self.train_tables(tokens)?.apply(x)
    }

    /// The tables of positions 0..tokens, for [`RotaryTables::apply`] (cheap: views).
    pub fn train_tables(&self, tokens: usize) -> candle_core::Result<RotaryTables> {
        if tokens > self.max_positions {
            candle_core::bail!(
                "{tokens} tokens are past the rotary table of {} positions",
                self.max_positions
            );
        }
        Ok(RotaryTables {
            cos: self.cos_t.narrow(0, 0, tokens)?,
            sin: self.sin_t.narrow(0, 0, tokens)?,
            rotary_dim: self.rotary_dim,
            interleaved: self.interleaved,
        })
    }

    /// The tables of the given positions, one per token of a row (a packed row restarts at
    /// 0 for each example), for [`RotaryTables::apply`].
    pub fn tables_at(&self, positions: &[u32]) -> candle_core::Result<RotaryTables> {
        if let Some(&p) = positions
            .iter()
            .find(|&&p| p as usize >= self.max_positions)
        {
            candle_core::bail!(
                "position {p} is past the rotary table of {} positions",
                self.max_positions
            );
        }
        let index = transfer::upload_slice(positions, positions.len(), self.cos_t.device())?;
        Ok(RotaryTables {
            cos: self.cos_t.index_select(&index, 0)?,
            sin: self.sin_t.index_select(&index, 0)?,
            rotary_dim: self.rotary_dim,
            interleaved: self.interleaved,
        })
    }
}

/// The rotary tables of positions 0..tokens of a training forward, owned (a recomputed
/// attention node holds them).
#[derive(Debug, Clone)]
pub struct RotaryTables {
    cos: Tensor,
    sin: Tensor,
    rotary_dim: usize,
    interleaved: bool,
}

impl RotaryTables {
    /// The inverse rotation (sin negated): also the transpose, which carries a gradient back
    /// through [`RotaryTables::apply`].
    pub fn inverse(&self) -> candle_core::Result<Self> {
        Ok(Self {
            cos: self.cos.clone(),
            sin: self.sin.neg()?,
            rotary_dim: self.rotary_dim,
            interleaved: self.interleaved,
        })
    }

    /// x [batch, heads, tokens, head_dim] rotated with differentiable ops.
    pub fn apply(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let (_, _, _, head_dim) = x.dims4()?;
        let cos = self.cos.to_dtype(x.dtype())?;
        let sin = self.sin.to_dtype(x.dtype())?;
        let rot = x.narrow(D::Minus1, 0, self.rotary_dim)?.contiguous()?;
        let rot = if self.interleaved {
            candle_nn::rotary_emb::rope_i_slow(&rot, &cos, &sin)?
        } else {
            candle_nn::rotary_emb::rope_slow(&rot, &cos, &sin)?
        };
        if self.rotary_dim == head_dim {
            Ok(rot)
        } else {
            let pass = x.narrow(D::Minus1, self.rotary_dim, head_dim - self.rotary_dim)?;
            Tensor::cat(&[&rot, &pass], D::Minus1)
        }
    }
}

/// The rotary tables at one step's positions (tensor path): cos / sin [rows, rotary_dim / 2]
/// ([2·rows, …] with 2-D positions).
#[derive(Debug, Clone)]
pub struct RotaryAt {
    cos: Tensor,
    sin: Tensor,
    rotary_dim: usize,
    interleaved: bool,
    two_d: bool,
}

impl RotaryAt {
    /// x [rows, heads, head_dim] rotated, row i at the i-th position (with 2-D positions,
    /// each half of the head at its own).
    pub fn apply(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let (rows, _, head_dim) = x.dims3()?;
        if self.two_d {
            let half = |i: usize| -> candle_core::Result<Tensor> {
                let at = Self {
                    cos: self.cos.narrow(0, i * rows, rows)?,
                    sin: self.sin.narrow(0, i * rows, rows)?,
                    two_d: false,
                    ..self.clone()
                };
                at.apply(&x.narrow(D::Minus1, i * head_dim / 2, head_dim / 2)?)
            };
            return Tensor::cat(&[half(0)?, half(1)?], D::Minus1)?.contiguous();
        }
        let cos = self.cos.to_dtype(x.dtype())?;
        let sin = self.sin.to_dtype(x.dtype())?;
        let rot = x
            .narrow(D::Minus1, 0, self.rotary_dim)?
            .transpose(0, 1)?
            .unsqueeze(0)?
            .contiguous()?;
        let rot = if self.interleaved {
            candle_nn::rotary_emb::rope_i(&rot, &cos, &sin)?
        } else {
            candle_nn::rotary_emb::rope(&rot, &cos, &sin)?
        };
        let rot = rot.squeeze(0)?.transpose(0, 1)?;
        if self.rotary_dim == head_dim {
            rot.contiguous()
        } else {
            let pass = x.narrow(D::Minus1, self.rotary_dim, head_dim - self.rotary_dim)?;
            Tensor::cat(&[&rot, &pass], D::Minus1)?.contiguous()
        }
    }
}
