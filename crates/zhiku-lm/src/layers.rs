//! The layers every family is built from: a `Linear` that holds dense or block-quantized
//! weights and optional LoRA adapters, RMSNorm / LayerNorm, rotary tables (full or partial,
//! half-split or interleaved pairs) and the MLPs. Layers know nothing of requests: a forward
//! takes the rows of a batch and the adapter each row uses ([`RowAdapters`]).

use std::sync::Arc;

use candle_core::quantized::{GgmlDType, QMatMul};
use candle_core::{D, DType, Device, Module, Tensor};
use zhiku_kernels::QuantMatrix;

use crate::ComputePath;
use crate::lora::TrainLora;
use crate::lora_rows::LoraStacks;
pub use crate::lora_rows::{Adapters, RowAdapters, RowGroup};

/// The weight of a linear layer, [out, in].
pub enum Weight {
    /// f32 / f16 / bf16, stored transposed ([in, out], contiguous) so the CPU matmul does
    /// not repack it on every call.
    Dense { wt: Tensor },
    /// GGUF block-quantized (candle's kernels: on a GPU, and CPU types ours lack).
    Quant(QMatMul),
    /// GGUF block-quantized on zhiku's own CPU kernels.
    Kernel(Arc<QuantMatrix>),
}

/// y = x·W0ᵀ + b (+ (alpha/r)·(x·Aᵀ)·Bᵀ for rows whose adapter targets this layer).
pub struct Linear {
    weight: Weight,
    bias: Option<Tensor>,
    /// The module path adapters name (PEFT's, as in the Hugging Face checkpoint).
    module: String,
    out_features: usize,
    in_features: usize,
    /// The adapters of recent steps stacked for this layer.
    pub(crate) stacks: LoraStacks,
}

impl Linear {
    /// `weight` is [out, in] as checkpoints store it.
    pub fn dense(
        weight: Tensor,
        bias: Option<Tensor>,
        module: impl Into<String>,
    ) -> candle_core::Result<Self> {
        let (out_features, in_features) = weight.dims2()?;
        Ok(Self {
            weight: Weight::Dense {
                wt: weight.t()?.contiguous()?,
            },
            bias,
            module: module.into(),
            out_features,
            in_features,
            stacks: LoraStacks::default(),
        })
    }

    pub fn quantized(
        weight: QMatMul,
        out_features: usize,
        in_features: usize,
        bias: Option<Tensor>,
        module: impl Into<String>,
    ) -> Self {
        Self {
            weight: Weight::Quant(weight),
            bias,
            module: module.into(),
            out_features,
            in_features,
            stacks: LoraStacks::default(),
        }
    }

    pub fn kernel(
        weight: Arc<QuantMatrix>,
        bias: Option<Tensor>,
        module: impl Into<String>,
    ) -> Self {
        let (out_features, in_features) = (weight.rows(), weight.cols());
        Self {
            weight: Weight::Kernel(weight),
            bias,
            module: module.into(),
            out_features,
            in_features,
            stacks: LoraStacks::default(),
        }
    }

    pub fn module(&self) -> &str {
        &self.module
    }

    pub fn out_features(&self) -> usize {
        self.out_features
    }

    pub fn in_features(&self) -> usize {
        self.in_features
    }

    /// The base product x·W0ᵀ (+ bias), x [rows, in].
    pub fn base(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let y = match &self.weight {
            Weight::Dense { wt } => x.to_dtype(wt.dtype())?.matmul(wt)?,
            Weight::Quant(q) => q.forward(x)?,
            Weight::Kernel(m) => kernel_matmul(m, x)?,
        };
        match &self.bias {
            Some(b) => y.broadcast_add(&b.to_dtype(y.dtype())?),
            None => Ok(y),
        }
    }

    /// x [rows, in] → [rows, out], each row with its own adapter: the base product, plus
    /// the LoRA update of every row whose adapter targets this layer ([`crate::lora_rows`]:
    /// one batched product on the tensor path, a product per run of rows on the kernel
    /// path).
    pub fn forward(&self, x: &Tensor, adapters: &RowAdapters) -> candle_core::Result<Tensor> {
        self.stacks.drop_unloaded();
        let y = self.base(x)?;
        adapters.apply(
            x,
            y,
            &self.module,
            &self.stacks,
            (self.in_features, self.out_features),
        )
    }
}

impl Linear {
    /// The training forward, x [rows, in] → [rows, out]: x·W0ᵀ (+ bias) plus, where `lora`
    /// targets this layer, scale·(dropout(x)·Aᵀ)·Bᵀ. Only differentiable ops, and W0 is
    /// used as it is (never merged nor copied), so gradients reach A and B and nothing else.
    /// The weight must be dense ([`Linear::make_dense`]): candle's quantized matmul and
    /// zhiku's kernels have no backward, and would cut the graph silently.
    pub fn forward_train(&self, x: &Tensor, lora: &dyn TrainLora) -> candle_core::Result<Tensor> {
        let Weight::Dense { wt } = &self.weight else {
            candle_core::bail!(
                "layer `{}` holds quantized weights; a training forward needs them dense \
                 (Decoder::into_training)",
                self.module
            );
        };
        let x = x.to_dtype(wt.dtype())?;
        let pair = lora.pair(&self.module);
        if let Some(pair) = pair
            && pair.a.dtype() == wt.dtype()
            && pair.b.dtype() == wt.dtype()
        {
            // One node for W0 and the pair (W0 frozen: its gradient is never computed).
            let bias = match &self.bias {
                Some(b) => Some(b.to_dtype(wt.dtype())?),
                None => None,
            };
            let mask = lora.lora_mask(&self.module, &x)?;
            return crate::autograd::lora_linear(
                &x,
                wt,
                bias.as_ref(),
                &pair.a,
                &pair.b,
                pair.scale,
                mask,
            );
        }
        // W0 is frozen: its gradient is never computed.
        let mut y = crate::autograd::frozen_matmul(&x, wt)?;
        if let Some(b) = &self.bias {
            y = y.broadcast_add(&b.to_dtype(y.dtype())?)?;
        }
        let Some(pair) = pair else {
            return Ok(y);
        };
        let xs = match lora.lora_mask(&self.module, &x)? {
            Some(m) => (&x * m)?,
            None => x,
        }
        .to_dtype(pair.a.dtype())?;
        let update = (xs.matmul(&pair.a.t()?)?.matmul(&pair.b.t()?)? * pair.scale)?;
        let update = update.to_dtype(y.dtype())?;
        y + update
    }

    /// Whether this layer's weight is dense and equal, value for value, to `w` [out, in].
    pub fn dense_weight_is(&self, w: &Tensor) -> candle_core::Result<bool> {
        let Weight::Dense { wt } = &self.weight else {
            return Ok(false);
        };
        if w.dims() != [self.out_features, self.in_features] || w.dtype() != wt.dtype() {
            return Ok(false);
        }
        // host: once, when a model is made trainable.
        Ok(wt.t()?.eq(w)?.min_all()?.to_scalar::<u8>()? == 1)
    }

    /// Makes the dense token table `table` [out, in] this layer's weight, as a view (no copy:
    /// a tied output layer shares the embedding's dense table), the bias in its dtype.
    pub fn share_dense_table(&mut self, table: &Tensor) -> candle_core::Result<()> {
        let (out, inp) = table.dims2()?;
        if (out, inp) != (self.out_features, self.in_features) {
            candle_core::bail!(
                "a table of {out}×{inp} for layer `{}` of {}×{}",
                self.module,
                self.out_features,
                self.in_features
            );
        }
        self.weight = Weight::Dense { wt: table.t()? };
        if let Some(b) = &self.bias {
            self.bias = Some(b.to_dtype(table.dtype())?);
        }
        Ok(())
    }

    /// Turns the weight into a dense one of `dtype` (dequantizing GGUF blocks), and the bias
    /// into `dtype`: what a training forward needs.
    pub fn make_dense(&mut self, dtype: DType, device: &Device) -> candle_core::Result<()> {
        let w = match &self.weight {
            Weight::Dense { wt } => wt.to_dtype(dtype)?,
            Weight::Quant(QMatMul::QTensor(qt)) => qt.dequantize(device)?.t()?,
            Weight::Quant(QMatMul::Tensor(t) | QMatMul::TensorF16(t)) => t.t()?,
            Weight::Kernel(m) => dequantize_matrix(m, device)?.t()?,
        };
        self.weight = Weight::Dense {
            wt: w.to_dtype(dtype)?.contiguous()?,
        };
        if let Some(b) = &self.bias {
            self.bias = Some(b.to_dtype(dtype)?);
        }
        Ok(())
    }
}

/// A kernel matrix as a dense f32 tensor [rows, cols].
fn dequantize_matrix(m: &QuantMatrix, device: &Device) -> candle_core::Result<Tensor> {
    let cols = m.cols();
    let mut out = vec![0f32; m.rows() * cols];
    for (r, row) in out.chunks_exact_mut(cols).enumerate() {
        m.dequantize_row(r, row).map_err(candle_core::Error::wrap)?;
    }
    Tensor::from_vec(out, (m.rows(), cols), device) // host: once, when a model is made dense
}

/// x [rows, k] · Wᵀ on zhiku's kernels (activations quantized once for the whole batch).
fn kernel_matmul(m: &QuantMatrix, x: &Tensor) -> candle_core::Result<Tensor> {
    let (rows, _) = x.dims2()?;
    let run = |input: &[f32]| m.matmul_vec(input, rows).map_err(candle_core::Error::wrap);
    let out = match with_cpu_f32(x, run) {
        Some(out) => out?,
        None => run(&cpu_f32(x)?)?,
    };
    Tensor::from_vec(out, (rows, m.rows()), x.device()) // host: the kernel path, CPU only
}

/// The f32 values of a CPU tensor, in row-major order.
pub fn cpu_f32(t: &Tensor) -> candle_core::Result<Vec<f32>> {
    t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>() // host: the kernel path, CPU only
}

/// `f` on the elements of a contiguous f32 CPU tensor, borrowed rather than copied out;
/// None for any other tensor.
pub fn with_cpu_f32<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> R) -> Option<R> {
    let (storage, layout) = t.storage_and_layout();
    match &*storage {
        candle_core::Storage::Cpu(candle_core::CpuStorage::F32(v)) => {
            let (start, end) = layout.contiguous_offsets()?;
            v.get(start..end).map(f)
        }
        _ => None,
    }
}

/// silu(g) · u: one pass on the kernels for f32 CPU tensors, candle's ops elsewhere.
fn swiglu_kernel(g: &Tensor, u: &Tensor) -> candle_core::Result<Tensor> {
    if g.shape() == u.shape() {
        let fused = with_cpu_f32(g, |gs| {
            with_cpu_f32(u, |us| {
                let mut out = vec![0f32; gs.len()];
                zhiku_kernels::silu_mul(gs, us, &mut out).map(|()| out)
            })
        });
        if let Some(Some(out)) = fused {
            let out = out.map_err(candle_core::Error::wrap)?;
            return Tensor::from_vec(out, g.shape(), g.device()); // host: f32 CPU tensors only
        }
    }
    candle_nn::ops::silu(g)? * u
}

/// RMSNorm or LayerNorm over the last dimension.
pub enum Norm {
    Rms {
        weight: Tensor,
        eps: f32,
    },
    Layer {
        weight: Tensor,
        bias: Tensor,
        eps: f32,
    },
}

impl Norm {
    /// The training forward: the same norm from primitive ops (candle's fused norms have no
    /// backward), as one recomputed node ([`crate::autograd::recomputed`]): the graph keeps
    /// the input and the output, not every step between.
    pub fn forward_train(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let (weight, bias, eps) = match self {
            Norm::Rms { weight, eps } => (weight.clone(), None, *eps as f64),
            Norm::Layer { weight, bias, eps } => (weight.clone(), Some(bias.clone()), *eps as f64),
        };
        let x = x.to_dtype(weight.dtype())?;
        crate::autograd::recomputed(&[&x], move |x| {
            norm_composed(&x[0], &weight, bias.as_ref(), eps)
        })
    }

    /// The norm's parameters in `dtype`.
    pub fn to_dtype(&mut self, dtype: DType) -> candle_core::Result<()> {
        match self {
            Norm::Rms { weight, .. } => *weight = weight.to_dtype(dtype)?,
            Norm::Layer { weight, bias, .. } => {
                *weight = weight.to_dtype(dtype)?;
                *bias = bias.to_dtype(dtype)?;
            }
        }
        Ok(())
    }

    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            Norm::Rms { weight, eps } => {
                let x = x.to_dtype(weight.dtype())?.contiguous()?;
                candle_nn::ops::rms_norm(&x, weight, *eps)
            }
            Norm::Layer { weight, bias, eps } => {
                let x = x.to_dtype(weight.dtype())?.contiguous()?;
                candle_nn::ops::layer_norm(&x, weight, bias, *eps)
            }
        }
    }
}

/// RMSNorm (no bias) or LayerNorm (a bias) over the last dimension from primitive ops.
fn norm_composed(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    eps: f64,
) -> candle_core::Result<Tensor> {
    let centred = match bias {
        None => x.clone(),
        Some(_) => x.broadcast_sub(&x.mean_keepdim(D::Minus1)?)?,
    };
    let var = centred.sqr()?.mean_keepdim(D::Minus1)?;
    let y = centred
        .broadcast_div(&(var + eps)?.sqrt()?)?
        .broadcast_mul(weight)?;
    match bias {
        None => Ok(y),
        Some(bias) => y.broadcast_add(bias),
    }
}

/// The feed-forward block.
pub enum Mlp {
    /// down(silu(gate(x)) · up(x)).
    SwiGlu {
        gate: Linear,
        up: Linear,
        down: Linear,
    },
    /// One matrix gives [gate | up] (GLM's dense_h_to_4h, GGUF glm4's ffn_up).
    SwiGluFused { gate_up: Linear, down: Linear },
    /// down(gelu(up(x))), GELU's tanh approximation (ChatGLM-6B's).
    Gelu { up: Linear, down: Linear },
}

impl Mlp {
    /// `compute`: on the kernel path an f32 CPU SwiGLU runs as one pass on the kernels; the
    /// tensor path keeps candle's ops (what a GPU runs, and differentiable).
    pub fn forward(
        &self,
        x: &Tensor,
        adapters: &RowAdapters,
        compute: ComputePath,
    ) -> candle_core::Result<Tensor> {
        let swiglu = |g: &Tensor, u: &Tensor| match compute {
            ComputePath::Kernels => swiglu_kernel(g, u),
            ComputePath::Tensors => candle_nn::ops::silu(g)? * u,
        };
        self.apply(x, &|l, x| l.forward(x, adapters), &swiglu, &|h| h.gelu())
    }

    /// The training forward: every linear through [`Linear::forward_train`].
    pub fn forward_train(&self, x: &Tensor, lora: &dyn TrainLora) -> candle_core::Result<Tensor> {
        // silu(g)·u as one recomputed node: the graph keeps g, u and the product, not silu(g).
        self.apply(
            x,
            &|l, x| l.forward_train(x, lora),
            &|g, u| crate::autograd::recomputed(&[g, u], |t| candle_nn::ops::silu(&t[0])? * &t[1]),
            &gelu_train,
        )
    }

    /// The block's structure, once for serving and training: `linear` runs a layer,
    /// `swiglu` is silu(g)·u, `gelu` GELU (tanh approximation).
    fn apply(
        &self,
        x: &Tensor,
        linear: &dyn Fn(&Linear, &Tensor) -> candle_core::Result<Tensor>,
        swiglu: &dyn Fn(&Tensor, &Tensor) -> candle_core::Result<Tensor>,
        gelu: &dyn Fn(&Tensor) -> candle_core::Result<Tensor>,
    ) -> candle_core::Result<Tensor> {
        match self {
            Mlp::SwiGlu { gate, up, down } => {
                let g = linear(gate, x)?;
                let u = linear(up, x)?;
                linear(down, &swiglu(&g, &u)?)
            }
            Mlp::SwiGluFused { gate_up, down } => {
                let w = linear(gate_up, x)?;
                let half = w.dim(D::Minus1)? / 2;
                let g = w.narrow(D::Minus1, 0, half)?.contiguous()?;
                let u = w.narrow(D::Minus1, half, half)?.contiguous()?;
                linear(down, &swiglu(&g, &u)?)
            }
            Mlp::Gelu { up, down } => {
                let h = gelu(&linear(up, x)?)?;
                linear(down, &h)
            }
        }
    }

    /// Every linear layer of the block.
    pub fn linears(&self) -> Vec<&Linear> {
        match self {
            Mlp::SwiGlu { gate, up, down } => vec![gate, up, down],
            Mlp::SwiGluFused { gate_up, down } => vec![gate_up, down],
            Mlp::Gelu { up, down } => vec![up, down],
        }
    }

    pub fn linears_mut(&mut self) -> Vec<&mut Linear> {
        match self {
            Mlp::SwiGlu { gate, up, down } => vec![gate, up, down],
            Mlp::SwiGluFused { gate_up, down } => vec![gate_up, down],
            Mlp::Gelu { up, down } => vec![up, down],
        }
    }
}

/// The token embedding table, [vocab, hidden].
pub enum Embedding {
    Dense(Tensor),
    /// Rows of a quantized matrix on zhiku's kernels, shared with a tied output layer.
    Kernel(Arc<QuantMatrix>),
    /// GGUF rows left quantized in the memory-mapped file and dequantized per lookup: a
    /// 150k-token table in f32 would take more memory than the whole quantized model.
    Mapped {
        map: Arc<memmap2::Mmap>,
        start: usize,
        row_bytes: usize,
        dtype: GgmlDType,
        vocab: usize,
        hidden: usize,
    },
}

impl Embedding {
    pub fn new(table: Tensor) -> Self {
        Embedding::Dense(table)
    }

    /// The table, when it is dense.
    pub fn dense_table(&self) -> Option<&Tensor> {
        match self {
            Embedding::Dense(t) => Some(t),
            _ => None,
        }
    }

    pub fn mapped(
        map: Arc<memmap2::Mmap>,
        start: usize,
        row_bytes: usize,
        dtype: GgmlDType,
        vocab: usize,
        hidden: usize,
    ) -> Self {
        Embedding::Mapped {
            map,
            start,
            row_bytes,
            dtype,
            vocab,
            hidden,
        }
    }

    /// The same table as a dense tensor of `dtype` (dequantized whole).
    pub fn to_dense(&self, dtype: DType, device: &Device) -> candle_core::Result<Embedding> {
        let table = match self {
            Embedding::Dense(t) => t.clone(),
            Embedding::Kernel(m) => dequantize_matrix(m, device)?,
            Embedding::Mapped {
                map,
                start,
                row_bytes,
                dtype: ggml,
                vocab,
                hidden,
            } => candle_core::quantized::ggml_file::qtensor_from_ggml(
                *ggml,
                &map[*start..*start + vocab * row_bytes],
                vec![*vocab, *hidden],
                &Device::Cpu,
            )?
            .dequantize(device)?,
        };
        Ok(Embedding::Dense(table.to_dtype(dtype)?))
    }

    /// Rows of `ids` [n] (u32) → [n, hidden].
    pub fn forward(&self, ids: &[u32], device: &Device) -> candle_core::Result<Tensor> {
        match self {
            Embedding::Dense(table) => {
                let ids = crate::transfer::upload_slice(ids, ids.len(), table.device())?;
                table.index_select(&ids, 0)
            }
            Embedding::Kernel(m) => {
                let hidden = m.cols();
                let mut out = vec![0f32; ids.len() * hidden];
                for (row, &id) in out.chunks_exact_mut(hidden).zip(ids) {
                    m.dequantize_row(id as usize, row)
                        .map_err(candle_core::Error::wrap)?;
                }
                Tensor::from_vec(out, (ids.len(), hidden), device) // host: the kernel path, CPU only
            }
            Embedding::Mapped {
                map,
                start,
                row_bytes,
                dtype,
                vocab,
                hidden,
            } => {
                let mut rows = Vec::with_capacity(ids.len());
                for &id in ids {
                    let id = id as usize;
                    if id >= *vocab {
                        candle_core::bail!("token id {id} is outside the vocabulary of {vocab}");
                    }
                    let at = start + id * row_bytes;
                    let row = candle_core::quantized::ggml_file::qtensor_from_ggml(
                        *dtype,
                        &map[at..at + row_bytes],
                        vec![*hidden],
                        &Device::Cpu,
                    )?;
                    rows.push(row.dequantize(&Device::Cpu)?);
                }
                crate::transfer::to_device(&Tensor::stack(&rows, 0)?, device)
            }
        }
    }
}

/// GELU (tanh approximation: candle's `gelu`, ChatGLM-6B's) as one node with its exact
/// derivative: candle 0.11's own backward of `gelu` rounds its constants to six digits
/// (0.797885 for √(2/π)), an error that f64 gradient checks see (1e-5 relative).
fn gelu_train(h: &Tensor) -> candle_core::Result<Tensor> {
    let value = h.detach().gelu()?;
    crate::autograd::with_backward(
        h,
        value,
        Box::new(|x, grad| {
            // y = ½x(1 + tanh u), u = c(x + a·x³): y' = ½(1 + tanh u) + ½x(1 − tanh²u)·c(1 + 3a·x²).
            let (c, a) = ((2.0 / std::f64::consts::PI).sqrt(), 0.044715);
            let x = x.detach();
            let x2 = x.sqr()?;
            let t = (&x * x2.affine(a * c, c)?)?.tanh()?;
            let slope = x2.affine(3.0 * a * c, c)?;
            let d = (t.affine(0.5, 0.5)?
                + ((x.affine(0.5, 0.0)? * t.sqr()?.affine(-1.0, 1.0)?)? * slope)?)?;
            Ok(Some((grad * d)?))
        }),
    )
}

/// The dtype activations flow in: f32 on the CPU, the weights' dtype on a GPU.
pub fn activation_dtype(device: &Device, weights: DType) -> DType {
    if device.is_cpu() { DType::F32 } else { weights }
}

#[cfg(test)]
mod train_tests {
    use candle_core::Var;

    use super::*;
    use crate::autograd::grad_check::{probed, seeded, values};

    /// The recomputed norm nodes against candle's autograd of the same ops (RMSNorm and
    /// LayerNorm): the same value and gradient, exactly.
    #[test]
    fn recomputed_norms_have_the_compositions_value_and_gradient() {
        let weight = (seeded((1, 6), 0.3).squeeze(0).unwrap() + 1.0).unwrap();
        let bias = seeded((1, 6), 0.8).squeeze(0).unwrap();
        let probe = seeded((4, 6), 2.1);
        let norms = [
            Norm::Rms {
                weight: weight.clone(),
                eps: 1e-5,
            },
            Norm::Layer {
                weight: weight.clone(),
                bias: bias.clone(),
                eps: 1e-5,
            },
        ];
        for (norm, b) in norms.iter().zip([None, Some(&bias)]) {
            let x = Var::from_tensor(&seeded((4, 6), 0.2)).unwrap();
            let composed = norm_composed(x.as_tensor(), &weight, b, 1e-5f32 as f64).unwrap();
            let node = norm.forward_train(x.as_tensor()).unwrap();
            assert_eq!(values(&composed), values(&node));
            let g1 = probed(composed, &probe);
            let g2 = probed(node, &probe);
            assert_eq!(
                values(g1.get(x.as_tensor()).unwrap()),
                values(g2.get(x.as_tensor()).unwrap())
            );
        }
    }

    /// The training MLP's recomputed silu(g)·u against candle's autograd of silu(g)·u.
    #[test]
    fn recomputed_swiglu_has_the_compositions_value_and_gradients() {
        let mlp = Mlp::SwiGlu {
            gate: Linear::dense(seeded((5, 3), 0.1), None, "gate").unwrap(),
            up: Linear::dense(seeded((5, 3), 0.6), None, "up").unwrap(),
            down: Linear::dense(seeded((3, 5), 1.2), None, "down").unwrap(),
        };
        let x = Var::from_tensor(&seeded((4, 3), 0.4)).unwrap();
        let probe = seeded((4, 3), 2.5);
        let none = crate::lora::LoraAdapter::none();
        let node = mlp.forward_train(x.as_tensor(), &none).unwrap();
        let composed = mlp
            .apply(
                x.as_tensor(),
                &|l, x| l.forward_train(x, &none),
                &|g, u| candle_nn::ops::silu(g)? * u,
                &|h| h.gelu(),
            )
            .unwrap();
        assert_eq!(values(&composed), values(&node));
        let g1 = probed(composed, &probe);
        let g2 = probed(node, &probe);
        assert_eq!(
            values(g1.get(x.as_tensor()).unwrap()),
            values(g2.get(x.as_tensor()).unwrap())
        );
    }

    /// The training GELU: candle's value, and the derivative of that value, element by
    /// element, within 1e-10 of central finite differences of candle's forward (f64, h =
    /// 1e-5, over [−4, 4]).
    #[test]
    fn gelu_has_candles_value_and_its_exact_derivative() {
        let xs: Vec<f64> = (0..81).map(|i| -4.0 + 0.1 * i as f64).collect();
        let x = Var::from_tensor(&Tensor::new(xs.as_slice(), &Device::Cpu).unwrap()).unwrap();
        let node = gelu_train(x.as_tensor()).unwrap();
        assert_eq!(values(&node), values(&x.as_tensor().gelu().unwrap()));
        let grads = node.sum_all().unwrap().backward().unwrap();
        let analytic = values(grads.get(x.as_tensor()).unwrap());
        let h = 1e-5;
        let at = |d: f64| {
            let moved: Vec<f64> = xs.iter().map(|v| v + d).collect();
            values(
                &Tensor::new(moved.as_slice(), &Device::Cpu)
                    .unwrap()
                    .gelu()
                    .unwrap(),
            )
        };
        let (up, down) = (at(h), at(-h));
        for (i, g) in analytic.iter().enumerate() {
            let numeric = (up[i] - down[i]) / (2.0 * h);
            assert!(
                (g - numeric).abs() <= 1e-10,
                "x = {}: {g} against {numeric}",
                xs[i]
            );
        }
    }
}
