//! Builds a [`Decoder`] for each family from its files: GGUF `llama`, `qwen2`, `glm4`;
//! safetensors ChatGLM2/3 / GLM-4-9B-chat (`chatglm`) and GLM-4-0414 (`glm4`).
//!
//! Every linear layer is named by its module path in the Hugging Face checkpoint (what PEFT
//! adapters name), also for GGUF files, so one adapter serves the checkpoint and its GGUF.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::quantized::ggml_file::qtensor_from_ggml;
use candle_core::quantized::{GgmlDType, QMatMul, QTensor, gguf_file};
use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device, Tensor};
use serde::Deserialize;

use crate::ComputePath;
use crate::chatglm6b::ChatGlm6bConfig;
use crate::decoder::{BlankInfilling, Block, Decoder, DecoderSpec, Qkv, head_major_qkv_rows};
use crate::error::LmError;
use crate::layers::{Embedding, Linear, Mlp, Norm, activation_dtype};
use crate::lora::{LoraAdapter, merged_weight};
use crate::rotary::Rotary;
use zhiku_kernels::{QuantMatrix, QuantType};

fn load_err(e: impl std::fmt::Display) -> LmError {
    LmError::Load(e.to_string())
}

/// A GGUF file, memory-mapped: tensors are built from the mapped bytes, and a quantized
/// token table is read row by row from the map, so only the rows in use become resident.
pub struct GgufTensors {
    pub content: gguf_file::Content,
    map: Arc<memmap2::Mmap>,
    path: PathBuf,
    device: Device,
    /// Kernels: matrices repacked for zhiku's CPU kernels and the token table read by row
    /// from the map; Tensors: candle's quantized matmuls and a dense table, as on a GPU.
    compute: ComputePath,
}

impl GgufTensors {
    pub fn open(path: &Path, device: &Device, compute: ComputePath) -> Result<Self, LmError> {
        let mut file = File::open(path)
            .map_err(|e| LmError::Load(format!("cannot open {}: {e}", path.display())))?;
        let content = gguf_file::Content::read(&mut file)
            .map_err(|e| LmError::Load(format!("{} is not a GGUF file: {e}", path.display())))?;
        // SAFETY: the map is read-only and zhiku never writes model files while serving them;
        // a file truncated by someone else underneath would fault, as with any mmap reader.
        let map = unsafe { memmap2::Mmap::map(&file) }
            .map_err(|e| LmError::Load(format!("cannot map {}: {e}", path.display())))?;
        Ok(Self {
            content,
            map: Arc::new(map),
            path: path.to_path_buf(),
            device: device.clone(),
            compute: ComputePath::on(compute, device),
        })
    }

    fn has(&self, name: &str) -> bool {
        self.content.tensor_infos.contains_key(name)
    }

    /// The tensor's bytes in the map, with its type and (candle-order) dims.
    fn raw(&self, name: &str) -> Result<(usize, usize, GgmlDType, Vec<usize>), LmError> {
        let bad = |m: String| LmError::Load(format!("{}: {name}: {m}", self.path.display()));
        let info = self
            .content
            .tensor_infos
            .get(name)
            .ok_or_else(|| bad("no such tensor".into()))?;
        let elems = info.shape.elem_count();
        let block = info.ggml_dtype.block_size();
        if !elems.is_multiple_of(block) {
            return Err(bad(format!(
                "{elems} elements are no whole number of blocks"
            )));
        }
        let bytes = elems / block * info.ggml_dtype.type_size();
        let start = usize::try_from(self.content.tensor_data_offset.saturating_add(info.offset))
            .map_err(|_| bad("offset too large".into()))?;
        if start
            .checked_add(bytes)
            .is_none_or(|end| end > self.map.len())
        {
            return Err(bad(format!(
                "needs {bytes} bytes at offset {start}; the file has {}",
                self.map.len()
            )));
        }
        Ok((start, bytes, info.ggml_dtype, info.shape.dims().to_vec()))
    }

    fn qtensor(&mut self, name: &str) -> Result<QTensor, LmError> {
        let (start, bytes, dtype, dims) = self.raw(name)?;
        let t = qtensor_from_ggml(dtype, &self.map[start..start + bytes], dims, &self.device)
            .map_err(|e| LmError::Load(format!("{}: {name}: {e}", self.path.display())))?;
        self.release(start, bytes);
        Ok(t)
    }

    /// Drops the resident pages of a range whose bytes were copied out (repacked for the
    /// kernels, or into a tensor): otherwise the file would stay resident beside its copy.
    /// The pages are the file's, unmodified, so a later read (a tied token table read by row,
    /// a shared boundary page) faults them back in with the same bytes.
    fn release(&self, start: usize, len: usize) {
        #[cfg(unix)]
        // SAFETY: the map is a read-only shared file mapping that nothing writes, so
        // MADV_DONTNEED discards no data: the kernel re-reads the same file bytes on the next
        // access. Ranges come from `raw`, inside the map. The advice is a hint; its failure
        // only leaves the pages resident.
        let _ = unsafe {
            self.map
                .unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, start, len)
        };
        #[cfg(not(unix))]
        let _ = (start, len);
    }

    /// The token table: rows read from the map on the kernel path, dequantized whole on the
    /// tensor path.
    fn embedding(&mut self, name: &str) -> Result<(Embedding, usize), LmError> {
        let (start, bytes, dtype, dims) = self.raw(name)?;
        let [vocab, hidden] = dims[..] else {
            return Err(LmError::Load(format!("{name} is not a matrix: {dims:?}")));
        };
        if self.compute == ComputePath::Tensors || !hidden.is_multiple_of(dtype.block_size()) {
            return Ok((Embedding::new(self.dense(name)?), vocab));
        }
        Ok((
            Embedding::mapped(self.map.clone(), start, bytes / vocab, dtype, vocab, hidden),
            vocab,
        ))
    }

    fn dense(&mut self, name: &str) -> Result<Tensor, LmError> {
        Ok(self.qtensor(name)?.dequantize(&self.device)?)
    }

    fn optional_dense(&mut self, name: &str) -> Result<Option<Tensor>, LmError> {
        if self.has(name) {
            self.dense(name).map(Some)
        } else {
            Ok(None)
        }
    }

    /// On the kernel path, a block-quantized matrix repacked for zhiku's kernels straight
    /// from the map (None: the tensor path, or a type the kernels do not serve).
    fn kernel_matrix(&self, name: &str) -> Result<Option<Arc<QuantMatrix>>, LmError> {
        if self.compute == ComputePath::Tensors {
            return Ok(None);
        }
        let (start, bytes, dtype, dims) = self.raw(name)?;
        let [n, k] = dims[..] else {
            return Ok(None);
        };
        let Some(ty) = kernel_type(dtype) else {
            return Ok(None);
        };
        let m = QuantMatrix::from_gguf_bytes(ty, n, k, &self.map[start..start + bytes])
            .map_err(|e| LmError::Load(format!("{}: {name}: {e}", self.path.display())))?;
        self.release(start, bytes);
        Ok(Some(Arc::new(m)))
    }

    fn linear(&mut self, name: &str, module: &str) -> Result<Linear, LmError> {
        let weight = format!("{name}.weight");
        let bias = self.optional_dense(&format!("{name}.bias"))?;
        if let Some(m) = self.kernel_matrix(&weight)? {
            return Ok(Linear::kernel(m, bias, module));
        }
        let qt = self.qtensor(&weight)?;
        let (out, inp) = qt.shape().dims2()?;
        Ok(Linear::quantized(
            QMatMul::from_qtensor(qt)?,
            out,
            inp,
            bias,
            module,
        ))
    }

    fn rms(&mut self, name: &str, eps: f32) -> Result<Norm, LmError> {
        Ok(Norm::Rms {
            weight: self.dense(&format!("{name}.weight"))?,
            eps,
        })
    }

    fn md_u32(&self, key: &str) -> Option<usize> {
        self.content
            .metadata
            .get(key)
            .and_then(|v| v.to_u32().ok())
            .map(|v| v as usize)
    }

    fn md_f32(&self, key: &str) -> Option<f32> {
        self.content.metadata.get(key).and_then(|v| v.to_f32().ok())
    }

    fn need_u32(&self, key: &str) -> Result<usize, LmError> {
        self.md_u32(key)
            .ok_or_else(|| LmError::Load(format!("GGUF has no `{key}`")))
    }
}

/// The kernels' type of a GGUF tensor type (None: candle's kernels run it).
fn kernel_type(dtype: GgmlDType) -> Option<QuantType> {
    let id = match dtype {
        GgmlDType::Q4_0 => 2,
        GgmlDType::Q4_1 => 3,
        GgmlDType::Q5_0 => 6,
        GgmlDType::Q5_1 => 7,
        GgmlDType::Q8_0 => 8,
        GgmlDType::Q4K => 12,
        GgmlDType::Q5K => 13,
        GgmlDType::Q6K => 14,
        _ => return None,
    };
    QuantType::from_ggml_id(id)
}

/// The GGUF architectures the decoder serves.
pub fn gguf_decoder(gg: &mut GgufTensors, arch: &str) -> Result<Decoder, LmError> {
    let (interleaved, glm) = match arch {
        // llama.cpp stores Llama's q/k rows permuted for rotation of adjacent pairs.
        "llama" => (true, false),
        "qwen2" => (false, false),
        "glm4" => (true, true),
        other => {
            return Err(LmError::UnsupportedModel(format!(
                "GGUF architecture `{other}`; zhiku runs GGUF `llama`, `qwen2` and `glm4`"
            )));
        }
    };
    let heads = gg.need_u32(&format!("{arch}.attention.head_count"))?;
    let kv_heads = gg
        .md_u32(&format!("{arch}.attention.head_count_kv"))
        .unwrap_or(heads);
    let hidden = gg.need_u32(&format!("{arch}.embedding_length"))?;
    let layers = gg.need_u32(&format!("{arch}.block_count"))?;
    let context_length = gg.md_u32(&format!("{arch}.context_length")).unwrap_or(2048);
    let eps = gg
        .md_f32(&format!("{arch}.attention.layer_norm_rms_epsilon"))
        .unwrap_or(1e-5);
    let base = gg
        .md_f32(&format!("{arch}.rope.freq_base"))
        .unwrap_or(10_000.0) as f64;
    if heads == 0 || kv_heads == 0 || !heads.is_multiple_of(kv_heads) {
        return Err(LmError::Load(format!(
            "GGUF: {heads} attention heads do not split into {kv_heads} KV heads"
        )));
    }
    let head_dim = gg
        .md_u32(&format!("{arch}.attention.key_length"))
        .unwrap_or(hidden / heads);
    let rotary_dim = if glm {
        // GLM-4 rotates half of each head; the GGUF does not record the factor.
        head_dim / 2
    } else {
        gg.md_u32(&format!("{arch}.rope.dimension_count"))
            .unwrap_or(head_dim)
    };
    if rotary_dim == 0 || rotary_dim % 2 != 0 || rotary_dim > head_dim {
        return Err(LmError::Load(format!(
            "GGUF: rotary dimension {rotary_dim} does not fit heads of {head_dim}"
        )));
    }
    let device = gg.device.clone();
    let tied = !gg.has("output.weight");
    // A tied table serves as the output layer too: one copy for both, on the kernels.
    let shared = if tied {
        gg.kernel_matrix("token_embd.weight")?
    } else {
        None
    };
    let (embed, vocab) = match &shared {
        Some(m) => (Embedding::Kernel(m.clone()), m.rows()),
        None => gg.embedding("token_embd.weight")?,
    };
    let mut blocks = Vec::with_capacity(layers);
    for i in 0..layers {
        let p = format!("blk.{i}");
        let hf = format!("model.layers.{i}");
        let qkv = Qkv::Split {
            q: gg.linear(&format!("{p}.attn_q"), &format!("{hf}.self_attn.q_proj"))?,
            k: gg.linear(&format!("{p}.attn_k"), &format!("{hf}.self_attn.k_proj"))?,
            v: gg.linear(&format!("{p}.attn_v"), &format!("{hf}.self_attn.v_proj"))?,
        };
        let o = gg.linear(
            &format!("{p}.attn_output"),
            &format!("{hf}.self_attn.o_proj"),
        )?;
        let mlp = if glm {
            Mlp::SwiGluFused {
                gate_up: gg.linear(&format!("{p}.ffn_up"), &format!("{hf}.mlp.gate_up_proj"))?,
                down: gg.linear(&format!("{p}.ffn_down"), &format!("{hf}.mlp.down_proj"))?,
            }
        } else {
            Mlp::SwiGlu {
                gate: gg.linear(&format!("{p}.ffn_gate"), &format!("{hf}.mlp.gate_proj"))?,
                up: gg.linear(&format!("{p}.ffn_up"), &format!("{hf}.mlp.up_proj"))?,
                down: gg.linear(&format!("{p}.ffn_down"), &format!("{hf}.mlp.down_proj"))?,
            }
        };
        let (post_attn_norm, post_ffn_norm) = if glm {
            (
                Some(gg.rms(&format!("{p}.post_attention_norm"), eps)?),
                Some(gg.rms(&format!("{p}.post_ffw_norm"), eps)?),
            )
        } else {
            (None, None)
        };
        blocks.push(Block {
            attn_norm: gg.rms(&format!("{p}.attn_norm"), eps)?,
            qkv,
            o,
            post_attn_norm,
            ffn_norm: gg.rms(&format!("{p}.ffn_norm"), eps)?,
            mlp,
            post_ffn_norm,
        });
    }
    let final_norm = Some(gg.rms("output_norm", eps)?);
    let lm_head = if !tied {
        gg.linear("output", "lm_head")?
    } else if let Some(m) = shared {
        Linear::kernel(m, None, "lm_head")
    } else {
        // Tied embeddings.
        let qt = gg.qtensor("token_embd.weight")?;
        let (out, inp) = qt.shape().dims2()?;
        Linear::quantized(QMatMul::from_qtensor(qt)?, out, inp, None, "lm_head")
    };
    let rotary = Rotary::new(rotary_dim, base, interleaved, context_length, &device)?;
    Ok(Decoder {
        spec: DecoderSpec {
            hidden,
            heads,
            kv_heads,
            head_dim,
            vocab,
            context_length,
        },
        embed,
        blocks,
        final_norm,
        lm_head,
        rotary,
        act_dtype: DType::F32,
        compute: gg.compute,
        device,
        prefix: Vec::new(),
        permuted_qk: arch == "llama",
        infilling: None,
    })
}

/// Safetensors weights, memory-mapped, with adapters merged in as they load.
pub struct SafetensorsWeights<'a> {
    st: MmapedSafetensors,
    device: Device,
    dtype: DType,
    merge: &'a [LoraAdapter],
    /// Modules of the merged adapters that found their layer.
    used: HashMap<String, usize>,
}

impl<'a> SafetensorsWeights<'a> {
    pub fn open(
        files: &[PathBuf],
        device: &Device,
        dtype: DType,
        merge: &'a [LoraAdapter],
    ) -> Result<Self, LmError> {
        // SAFETY: the files are memory-mapped read-only; zhiku never writes model files while
        // serving them.
        let st = unsafe { MmapedSafetensors::multi(files) }.map_err(load_err)?;
        Ok(Self {
            st,
            device: device.clone(),
            dtype,
            merge,
            used: HashMap::new(),
        })
    }

    fn has(&self, name: &str) -> bool {
        self.st.get(name).is_ok()
    }

    fn tensor(&self, name: &str) -> Result<Tensor, LmError> {
        self.st
            .load(name, &self.device)
            .and_then(|t| t.to_dtype(self.dtype))
            .map_err(|e| LmError::Load(format!("checkpoint tensor `{name}`: {e}")))
    }

    fn optional(&self, name: &str) -> Result<Option<Tensor>, LmError> {
        if self.has(name) {
            self.tensor(name).map(Some)
        } else {
            Ok(None)
        }
    }

    /// The linear layer `module` (`module.weight`, optional `module.bias`), with the merged
    /// adapters folded in.
    fn linear(&mut self, module: &str) -> Result<Linear, LmError> {
        self.linear_rows(module, None)
    }

    /// [`Self::linear`] with its output rows (and bias) taken in the order `rows` gives
    /// (after the merged adapters, whose B rows are in the checkpoint's order).
    fn linear_rows(&mut self, module: &str, rows: Option<&[u32]>) -> Result<Linear, LmError> {
        let mut w = self.tensor(&format!("{module}.weight"))?;
        for adapter in self.merge {
            if let Some(pair) = adapter.pairs.get(module) {
                w = merged_weight(&w, pair)?;
                *self.used.entry(adapter.name.clone()).or_default() += 1;
            }
        }
        let mut bias = self.optional(&format!("{module}.bias"))?;
        if let Some(rows) = rows {
            // host: the row order goes to the device once, when the model loads.
            let rows = Tensor::from_slice(rows, rows.len(), &self.device)?;
            w = w.index_select(&rows, 0)?;
            bias = bias.map(|b| b.index_select(&rows, 0)).transpose()?;
        }
        Ok(Linear::dense(w, bias, module)?)
    }

    fn norm(&self, name: &str, eps: f32, rms: bool) -> Result<Norm, LmError> {
        let weight = self.tensor(&format!("{name}.weight"))?;
        Ok(if rms {
            Norm::Rms { weight, eps }
        } else {
            let bias = match self.optional(&format!("{name}.bias"))? {
                Some(b) => b,
                None => weight.zeros_like()?,
            };
            Norm::Layer { weight, bias, eps }
        })
    }

    /// A causal decoder of these parts on the weights' device, its activations' dtype
    /// chosen for theirs, on the kernel path where it can.
    fn decoder(
        &self,
        spec: DecoderSpec,
        embed: Embedding,
        blocks: Vec<Block>,
        final_norm: Option<Norm>,
        lm_head: Linear,
        rotary: Rotary,
    ) -> Decoder {
        Decoder {
            spec,
            embed,
            blocks,
            final_norm,
            lm_head,
            rotary,
            act_dtype: activation_dtype(&self.device, self.dtype),
            compute: ComputePath::on(ComputePath::Kernels, &self.device),
            device: self.device.clone(),
            prefix: Vec::new(),
            permuted_qk: false,
            infilling: None,
        }
    }

    /// Every module of every merged adapter must have found its layer.
    fn check_merged(&self) -> Result<(), LmError> {
        for a in self.merge {
            let used = self.used.get(&a.name).copied().unwrap_or(0);
            if used != a.pairs.len() {
                let mut names: Vec<&String> = a.pairs.keys().collect();
                names.sort();
                return Err(LmError::Load(format!(
                    "adapter `{}`: {} of its {} modules match no layer of the model \
                     (modules: {names:?})",
                    a.name,
                    a.pairs.len() - used,
                    a.pairs.len()
                )));
            }
        }
        Ok(())
    }
}

/// config.json of ChatGLM2/3 and GLM-4-9B-chat (model_type "chatglm").
#[derive(Debug, Clone, Deserialize)]
pub struct ChatGlmConfig {
    pub num_layers: usize,
    pub padded_vocab_size: usize,
    pub hidden_size: usize,
    pub ffn_hidden_size: usize,
    pub kv_channels: usize,
    pub num_attention_heads: usize,
    pub seq_length: usize,
    pub layernorm_epsilon: f64,
    #[serde(default = "yes")]
    pub rmsnorm: bool,
    #[serde(default = "yes")]
    pub post_layer_norm: bool,
    #[serde(default)]
    pub multi_query_attention: bool,
    #[serde(default = "one")]
    pub multi_query_group_num: usize,
    #[serde(default = "one")]
    pub rope_ratio: usize,
    #[serde(default)]
    pub apply_residual_connection_post_layernorm: bool,
}

fn yes() -> bool {
    true
}
fn one() -> usize {
    1
}

/// ChatGLM2/3 and GLM-4-9B-chat: fused query_key_value (multi-query groups), rotary on the
/// first half of each head in adjacent pairs, SwiGLU in dense_h_to_4h.
pub fn chatglm_decoder(config_json: &str, w: &mut SafetensorsWeights) -> Result<Decoder, LmError> {
    let c: ChatGlmConfig = serde_json::from_str(config_json)
        .map_err(|e| LmError::Load(format!("config.json: {e}")))?;
    if c.apply_residual_connection_post_layernorm {
        return Err(LmError::UnsupportedModel(
            "GLM with apply_residual_connection_post_layernorm".into(),
        ));
    }
    let kv_heads = if c.multi_query_attention {
        c.multi_query_group_num
    } else {
        c.num_attention_heads
    };
    let eps = c.layernorm_epsilon as f32;
    let t = "transformer.encoder";
    let mut blocks = Vec::with_capacity(c.num_layers);
    for i in 0..c.num_layers {
        let p = format!("{t}.layers.{i}");
        blocks.push(Block {
            attn_norm: w.norm(&format!("{p}.input_layernorm"), eps, c.rmsnorm)?,
            qkv: Qkv::Fused(w.linear(&format!("{p}.self_attention.query_key_value"))?),
            o: w.linear(&format!("{p}.self_attention.dense"))?,
            post_attn_norm: None,
            ffn_norm: w.norm(&format!("{p}.post_attention_layernorm"), eps, c.rmsnorm)?,
            mlp: Mlp::SwiGluFused {
                gate_up: w.linear(&format!("{p}.mlp.dense_h_to_4h"))?,
                down: w.linear(&format!("{p}.mlp.dense_4h_to_h"))?,
            },
            post_ffn_norm: None,
        });
    }
    let final_norm = if c.post_layer_norm {
        Some(w.norm(&format!("{t}.final_layernorm"), eps, c.rmsnorm)?)
    } else {
        None
    };
    let lm_head = w.linear("transformer.output_layer")?;
    let embed = Embedding::new(w.tensor("transformer.embedding.word_embeddings.weight")?);
    w.check_merged()?;
    let device = w.device.clone();
    let base = 10_000f64 * c.rope_ratio as f64;
    let rotary = Rotary::new(c.kv_channels / 2, base, true, c.seq_length, &device)?;
    let spec = DecoderSpec {
        hidden: c.hidden_size,
        heads: c.num_attention_heads,
        kv_heads,
        head_dim: c.kv_channels,
        vocab: c.padded_vocab_size,
        context_length: c.seq_length,
    };
    Ok(w.decoder(spec, embed, blocks, final_norm, lm_head, rotary))
}

/// ChatGLM-6B, the article's GLM: LayerNorms, one query_key_value giving each head's
/// [q | k | v] in turn (its rows reordered here), a GELU MLP, DeepNorm residuals, 2-D
/// positions over the two halves of each head, `[gMASK] <sop>` after every prompt, and the
/// prompt read bidirectionally.
pub fn chatglm6b_decoder(
    c: &ChatGlm6bConfig,
    w: &mut SafetensorsWeights,
) -> Result<Decoder, LmError> {
    if !c.position_encoding_2d {
        return Err(LmError::UnsupportedModel(
            "ChatGLM-6B with position_encoding_2d = false".into(),
        ));
    }
    let (h, heads) = (c.hidden_size, c.num_attention_heads);
    if heads == 0 || !h.is_multiple_of(heads) || !(h / heads).is_multiple_of(4) {
        return Err(LmError::Load(format!(
            "hidden_size {h} must split into {heads} heads whose size is a multiple of 4"
        )));
    }
    let head_dim = h / heads;
    let eps = c.layernorm_epsilon as f32;
    let qkv_rows = head_major_qkv_rows(heads, head_dim);
    let mut blocks = Vec::with_capacity(c.num_layers);
    for i in 0..c.num_layers {
        let p = format!("transformer.layers.{i}");
        blocks.push(Block {
            attn_norm: w.norm(&format!("{p}.input_layernorm"), eps, false)?,
            qkv: Qkv::Fused(
                w.linear_rows(&format!("{p}.attention.query_key_value"), Some(&qkv_rows))?,
            ),
            o: w.linear(&format!("{p}.attention.dense"))?,
            post_attn_norm: None,
            ffn_norm: w.norm(&format!("{p}.post_attention_layernorm"), eps, false)?,
            mlp: Mlp::Gelu {
                up: w.linear(&format!("{p}.mlp.dense_h_to_4h"))?,
                down: w.linear(&format!("{p}.mlp.dense_4h_to_h"))?,
            },
            post_ffn_norm: None,
        });
    }
    let final_norm = Some(w.norm("transformer.final_layernorm", eps, false)?);
    let lm_head = w.linear("lm_head")?;
    let embed = Embedding::new(w.tensor("transformer.word_embeddings.weight")?);
    w.check_merged()?;
    let device = w.device.clone();
    let rotary = Rotary::new(
        head_dim / 2,
        10_000.0,
        false,
        c.max_sequence_length,
        &device,
    )?
    .with_two_d();
    let spec = DecoderSpec {
        hidden: h,
        heads,
        kv_heads: heads,
        head_dim,
        vocab: c.vocab_size,
        context_length: c.max_sequence_length,
    };
    let mut decoder = w.decoder(spec, embed, blocks, final_norm, lm_head, rotary);
    decoder.infilling = Some(BlankInfilling {
        suffix: vec![c.gmask_token_id, c.bos_token_id],
        alpha: (2.0 * c.num_layers as f64).sqrt(),
        head_major_qkv: true,
    });
    Ok(decoder)
}

/// config.json of GLM-4-0414 (model_type "glm4").
#[derive(Debug, Clone, Deserialize)]
pub struct Glm4Config {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: Option<usize>,
    pub partial_rotary_factor: Option<f32>,
    pub max_position_embeddings: usize,
    #[serde(default)]
    pub tie_word_embeddings: bool,
    pub rope_theta: f64,
    pub rms_norm_eps: f64,
}

/// GLM-4-0414: Llama-like names, partial rotary in adjacent pairs, norms after attention
/// and after the MLP too.
pub fn glm4_0414_decoder(
    config_json: &str,
    w: &mut SafetensorsWeights,
) -> Result<Decoder, LmError> {
    let c: Glm4Config = serde_json::from_str(config_json)
        .map_err(|e| LmError::Load(format!("config.json: {e}")))?;
    let eps = c.rms_norm_eps as f32;
    let head_dim = c.head_dim.unwrap_or(c.hidden_size / c.num_attention_heads);
    let mut blocks = Vec::with_capacity(c.num_hidden_layers);
    for i in 0..c.num_hidden_layers {
        let p = format!("model.layers.{i}");
        blocks.push(Block {
            attn_norm: w.norm(&format!("{p}.input_layernorm"), eps, true)?,
            qkv: Qkv::Split {
                q: w.linear(&format!("{p}.self_attn.q_proj"))?,
                k: w.linear(&format!("{p}.self_attn.k_proj"))?,
                v: w.linear(&format!("{p}.self_attn.v_proj"))?,
            },
            o: w.linear(&format!("{p}.self_attn.o_proj"))?,
            post_attn_norm: Some(w.norm(&format!("{p}.post_self_attn_layernorm"), eps, true)?),
            ffn_norm: w.norm(&format!("{p}.post_attention_layernorm"), eps, true)?,
            mlp: Mlp::SwiGluFused {
                gate_up: w.linear(&format!("{p}.mlp.gate_up_proj"))?,
                down: w.linear(&format!("{p}.mlp.down_proj"))?,
            },
            post_ffn_norm: Some(w.norm(&format!("{p}.post_mlp_layernorm"), eps, true)?),
        });
    }
    let table = w.tensor("model.embed_tokens.weight")?;
    let lm_head = if c.tie_word_embeddings || !w.has("lm_head.weight") {
        Linear::dense(table.clone(), None, "lm_head")?
    } else {
        w.linear("lm_head")?
    };
    let final_norm = Some(w.norm("model.norm", eps, true)?);
    w.check_merged()?;
    let device = w.device.clone();
    let rotary_dim = (c.partial_rotary_factor.unwrap_or(1.0) * head_dim as f32) as usize;
    let rotary = Rotary::new(
        rotary_dim,
        c.rope_theta,
        true,
        c.max_position_embeddings,
        &device,
    )?;
    let spec = DecoderSpec {
        hidden: c.hidden_size,
        heads: c.num_attention_heads,
        kv_heads: c.num_key_value_heads,
        head_dim,
        vocab: c.vocab_size,
        context_length: c.max_position_embeddings,
    };
    let embed = Embedding::new(table);
    Ok(w.decoder(spec, embed, blocks, final_norm, lm_head, rotary))
}
