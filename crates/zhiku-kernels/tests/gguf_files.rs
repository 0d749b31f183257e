//! Real tensors of the project's GGUF files against candle's dequantizer (an independent
//! implementation): our dequantize() equal to candle's, our matmul within the activation
//! bound of candle's dequantized f32 matmul. Skips, saying so, when a file is absent.

mod support;

use std::io::{Read, Seek, SeekFrom};
use std::path::PathBuf;

use candle_core::quantized::{GgmlDType, ggml_file::qtensor_from_ggml, gguf_file};
use candle_core::{Device, Tensor};
use support::*;
use zhiku_kernels::{QuantMatrix, QuantType};

fn models() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../models")
}

fn our_type(t: GgmlDType) -> Option<QuantType> {
    Some(match t {
        GgmlDType::F32 => QuantType::F32,
        GgmlDType::F16 => QuantType::F16,
        GgmlDType::BF16 => QuantType::BF16,
        GgmlDType::Q4_0 => QuantType::Q4_0,
        GgmlDType::Q4_1 => QuantType::Q4_1,
        GgmlDType::Q5_0 => QuantType::Q5_0,
        GgmlDType::Q5_1 => QuantType::Q5_1,
        GgmlDType::Q8_0 => QuantType::Q8_0,
        GgmlDType::Q4K => QuantType::Q4K,
        GgmlDType::Q5K => QuantType::Q5K,
        GgmlDType::Q6K => QuantType::Q6K,
        _ => return None,
    })
}

/// Up to `per_type` 2-D tensors of each quantized type (small ones first), checked.
fn check_file(rel: &str, want_types: &[QuantType], per_type: usize) {
    let path = models().join(rel);
    let Ok(mut f) = std::fs::File::open(&path) else {
        println!(
            "skipped: {} is absent (scripts/fetch-models)",
            path.display()
        );
        return;
    };
    let content = gguf_file::Content::read(&mut f).expect("gguf header");
    let mut infos: Vec<_> = content
        .tensor_infos
        .iter()
        .filter(|(_, i)| i.shape.dims().len() == 2)
        .collect();
    infos.sort_by_key(|(name, i)| (i.shape.elem_count(), (*name).clone()));
    let mut rng = Rng(11);
    for &ty in want_types {
        let picked: Vec<_> = infos
            .iter()
            .filter(|(_, i)| our_type(i.ggml_dtype) == Some(ty))
            .take(per_type)
            .collect();
        assert!(!picked.is_empty(), "{rel} has no {ty:?} tensor");
        for (name, info) in picked {
            let dims = info.shape.dims();
            // candle lists dims outermost first: [ne1, ne0] = [n, k]. Rows are consecutive
            // in the file, so the first rows alone are a valid matrix: keep the debug-build
            // references cheap on large tensors.
            let (n, k) = (dims[0].min(128), dims[1]);
            let len = n * k / ty.block_elems() * ty.block_bytes();
            let mut raw = vec![0u8; len + 1];
            f.seek(SeekFrom::Start(content.tensor_data_offset + info.offset))
                .unwrap();
            // Read one byte in, so our copy of the tensor is unaligned as in a mapped file.
            f.read_exact(&mut raw[1..]).unwrap();
            let ours = QuantMatrix::from_gguf_bytes(ty, n, k, &raw[1..]).expect("our matrix");
            let q =
                qtensor_from_ggml(info.ggml_dtype, &raw[1..], vec![n, k], &Device::Cpu).unwrap();
            let theirs = q.dequantize(&Device::Cpu).unwrap();
            let theirs: Vec<f32> = theirs.flatten_all().unwrap().to_vec1().unwrap();
            let deq = ours.dequantize();
            let differ = deq
                .iter()
                .zip(&theirs)
                .filter(|(a, b)| a.to_bits() != b.to_bits())
                .count();
            assert_eq!(
                differ, 0,
                "{name} ({ty:?}): {differ} dequantized values differ from candle's"
            );

            let m = 3;
            let x = rng.vec(m * k, 1.0);
            let mut y = vec![0f32; m * n];
            ours.matmul(&x, m, &mut y).unwrap();
            let xt = Tensor::from_vec(x.clone(), (m, k), &Device::Cpu).unwrap();
            let wt = Tensor::from_vec(theirs, (n, k), &Device::Cpu).unwrap();
            let yc: Vec<f32> = xt
                .matmul(&wt.t().unwrap())
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            // Our result within the activation-quantization bound of W·x (the bound is
            // checked against an f64 reference), and near candle's f32 matmul.
            check_against_dense(&ours, &x, m, &y);
            let num: f64 = y
                .iter()
                .zip(&yc)
                .map(|(a, b)| f64::from(a - b).powi(2))
                .sum();
            let den: f64 = yc.iter().map(|b| f64::from(*b).powi(2)).sum();
            let err = (num / den).sqrt();
            println!(
                "{rel}: {name} {ty:?} [{n}x{k}]: dequantize equal; matmul rel. error vs candle {err:.5}"
            );
            assert!(err < 0.02, "{name}: relative error {err} against candle");
        }
    }
}

#[test]
fn smollm2_q4_1_and_q8_0() {
    check_file(
        "SmolLM2-135M-Instruct-GGUF/SmolLM2-135M-Instruct.Q4_1.gguf",
        &[QuantType::Q4_1, QuantType::Q8_0],
        2,
    );
}

#[test]
fn qwen_q5_0_q8_0_q4_k_q6_k() {
    check_file(
        "Qwen2.5-Coder-0.5B-Instruct-GGUF/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
        &[
            QuantType::Q5_0,
            QuantType::Q8_0,
            QuantType::Q4K,
            QuantType::Q6K,
        ],
        2,
    );
}
