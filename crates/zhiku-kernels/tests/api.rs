//! The public API's contract: unaligned and short buffers, shapes, rows, threads.

mod support;

use support::*;
use zhiku_kernels::{KernelError, QuantMatrix, QuantType, quantize::quantize};

#[test]
fn ggml_ids_and_sizes() {
    use QuantType::*;
    for (id, ty, be, bb) in [
        (0, F32, 1, 4),
        (1, F16, 1, 2),
        (2, Q4_0, 32, 18),
        (3, Q4_1, 32, 20),
        (6, Q5_0, 32, 22),
        (7, Q5_1, 32, 24),
        (8, Q8_0, 32, 34),
        (12, Q4K, 256, 144),
        (13, Q5K, 256, 176),
        (14, Q6K, 256, 210),
        (30, BF16, 1, 2),
    ] {
        assert_eq!(QuantType::from_ggml_id(id), Some(ty));
        assert_eq!((ty.block_elems(), ty.block_bytes()), (be, bb), "{ty:?}");
    }
    for id in [4, 5, 9, 10, 11, 15, 16, 29, 31, 1000] {
        assert_eq!(QuantType::from_ggml_id(id), None, "id {id}");
    }
}

#[test]
fn unaligned_weights_give_the_same_matrix() {
    let mut rng = Rng(5);
    for ty in QuantType::ALL {
        let (n, k) = (13, 256);
        let bytes = quantize(ty, &rng.vec(n * k, 0.1));
        let aligned = QuantMatrix::from_gguf_bytes(ty, n, k, &bytes).unwrap();
        for shift in 1..4 {
            let mut buf = vec![0u8; bytes.len() + shift];
            buf[shift..].copy_from_slice(&bytes);
            let m = QuantMatrix::from_gguf_bytes(ty, n, k, &buf[shift..]).unwrap();
            assert_eq!(m.dequantize(), aligned.dequantize(), "{ty:?} shift {shift}");
            // Unaligned activations and outputs too.
            let x = rng.vec(3 * k + 1, 1.0);
            let mut y1 = vec![0f32; 3 * n + 1];
            let mut y2 = vec![0f32; 3 * n];
            m.matmul(&x[1..], 3, &mut y1[1..]).unwrap();
            aligned.matmul(&x[1..], 3, &mut y2).unwrap();
            assert_eq!(&y1[1..], &y2[..], "{ty:?}");
        }
    }
}

#[test]
fn short_long_and_misshapen_buffers_are_errors() {
    for &ty in QUANT {
        let (n, k) = (9, 256);
        let bytes = quantize(ty, &vec![0.5; n * k]);
        for len in [0, 1, bytes.len() - 1] {
            let e = QuantMatrix::from_gguf_bytes(ty, n, k, &bytes[..len]).err();
            assert!(
                matches!(e, Some(KernelError::Length { .. })),
                "{ty:?} len {len}: {e:?}"
            );
        }
        let mut long = bytes.clone();
        long.push(0);
        assert!(QuantMatrix::from_gguf_bytes(ty, n, k, &long).is_err());
        assert!(matches!(
            QuantMatrix::from_gguf_bytes(ty, n, k + 16, &bytes),
            Err(KernelError::Shape { .. })
        ));
        assert!(QuantMatrix::from_gguf_bytes(ty, 0, k, &[]).is_err());
        assert!(QuantMatrix::from_gguf_bytes(ty, usize::MAX, 1 << 40, &bytes).is_err());

        let w = QuantMatrix::from_gguf_bytes(ty, n, k, &bytes).unwrap();
        assert_eq!((w.rows(), w.cols(), w.quant_type()), (n, k, ty));
        assert!(w.storage_bytes() >= bytes.len());
        let x = vec![1.0; 2 * k];
        let mut y = vec![0.0; 2 * n];
        assert!(w.matmul(&x[..2 * k - 1], 2, &mut y).is_err());
        assert!(w.matmul(&x, 2, &mut y[..2 * n - 1]).is_err());
        assert!(w.matmul(&x, usize::MAX, &mut y).is_err());
        assert!(w.matmul(&[], 0, &mut []).is_ok());
        let mut row = vec![0.0; k];
        assert!(matches!(
            w.dequantize_row(n, &mut row),
            Err(KernelError::Row { .. })
        ));
        assert!(w.dequantize_row(0, &mut row[..k - 1]).is_err());
        w.dequantize_row(n - 1, &mut row).unwrap();
        assert_eq!(&row[..], &w.dequantize()[(n - 1) * k..]);
    }
}

#[test]
fn a_matrix_is_shared_across_threads() {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<QuantMatrix>();
    let mut rng = Rng(8);
    let w = random_matrix(&mut rng, QuantType::Q4K, 24, 512);
    let x = rng.vec(2 * 512, 1.0);
    let mut want = vec![0f32; 2 * 24];
    w.matmul(&x, 2, &mut want).unwrap();
    std::thread::scope(|s| {
        for _ in 0..3 {
            s.spawn(|| {
                let mut y = vec![0f32; 2 * 24];
                w.matmul(&x, 2, &mut y).unwrap();
                assert_eq!(y, want);
            });
        }
    });
}

#[test]
fn the_thread_count_is_set_once() {
    let n = zhiku_kernels::threads();
    assert!(n >= 1);
    assert!(zhiku_kernels::default_threads() >= 1);
    zhiku_kernels::set_threads(n).unwrap();
    assert!(zhiku_kernels::set_threads(n + 1).is_err());
    assert!(zhiku_kernels::set_threads(0).is_err());
    assert_eq!(zhiku_kernels::threads(), n);
}
