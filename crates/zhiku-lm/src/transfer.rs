//! Every copy between the host and a model's device on the tensor path goes through here,
//! counted, so that a test can hold a forward step to its bound (a few small uploads per
//! step, whatever the number of layers) and `tests/host_traffic.rs` can fail when
//! tensor-path code copies anywhere else. On a GPU each of these is a PCIe transfer and a
//! synchronisation point; on the CPU tensor path they are plain copies, counted alike.
//!
//! The counts are per thread: a forward runs on the thread that calls it, and tests that
//! run side by side do not see each other's copies.

use std::cell::Cell;

use candle_core::{Device, Shape, Tensor, WithDType};

/// Copies between the host and a device, and their bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Transfers {
    /// Host → device copies.
    pub uploads: usize,
    pub upload_bytes: usize,
    /// Device → host copies.
    pub read_backs: usize,
    pub read_back_bytes: usize,
}

thread_local! {
    static COUNTS: Cell<Transfers> = const { Cell::new(Transfers {
        uploads: 0,
        upload_bytes: 0,
        read_backs: 0,
        read_back_bytes: 0,
    }) };
}

/// Runs `f` and returns what it copied between host and device on this thread.
pub fn counted<R>(f: impl FnOnce() -> R) -> (R, Transfers) {
    let before = COUNTS.with(Cell::get);
    let out = f();
    let after = COUNTS.with(Cell::get);
    (
        out,
        Transfers {
            uploads: after.uploads - before.uploads,
            upload_bytes: after.upload_bytes - before.upload_bytes,
            read_backs: after.read_backs - before.read_backs,
            read_back_bytes: after.read_back_bytes - before.read_back_bytes,
        },
    )
}

fn count_upload(bytes: usize) {
    COUNTS.with(|c| {
        let mut t = c.get();
        t.uploads += 1;
        t.upload_bytes += bytes;
        c.set(t);
    });
}

fn count_read_back(bytes: usize) {
    COUNTS.with(|c| {
        let mut t = c.get();
        t.read_backs += 1;
        t.read_back_bytes += bytes;
        c.set(t);
    });
}

/// `data` as a tensor of `shape` on `device`: one upload.
pub fn upload<T: WithDType, S: Into<Shape>>(
    data: Vec<T>,
    shape: S,
    device: &Device,
) -> candle_core::Result<Tensor> {
    count_upload(std::mem::size_of_val(data.as_slice()));
    Tensor::from_vec(data, shape, device)
}

/// [`upload`] of a borrowed slice.
pub fn upload_slice<T: WithDType, S: Into<Shape>>(
    data: &[T],
    shape: S,
    device: &Device,
) -> candle_core::Result<Tensor> {
    count_upload(std::mem::size_of_val(data));
    Tensor::from_slice(data, shape, device)
}

/// A tensor made on the host, moved to `device`: one upload.
pub fn to_device(t: &Tensor, device: &Device) -> candle_core::Result<Tensor> {
    count_upload(t.elem_count() * t.dtype().size_in_bytes());
    t.to_device(device)
}

/// A 1-D tensor's values on the host: one read-back.
pub fn read_back<T: WithDType>(t: &Tensor) -> candle_core::Result<Vec<T>> {
    let out = t.to_vec1::<T>()?;
    count_read_back(std::mem::size_of_val(out.as_slice()));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_are_counted_on_their_own_thread_only() {
        let ((), outer) = counted(|| {
            let t = upload(vec![1u32, 2, 3], 3, &Device::Cpu).unwrap();
            let (back, inner) = counted(|| read_back::<u32>(&t).unwrap());
            assert_eq!(back, [1, 2, 3]);
            assert_eq!(
                inner,
                Transfers {
                    uploads: 0,
                    upload_bytes: 0,
                    read_backs: 1,
                    read_back_bytes: 12,
                }
            );
            std::thread::spawn(|| upload_slice(&[0f32; 8], 8, &Device::Cpu).unwrap())
                .join()
                .unwrap();
        });
        assert_eq!(
            outer,
            Transfers {
                uploads: 1,
                upload_bytes: 12,
                read_backs: 1,
                read_back_bytes: 12,
            }
        );
    }
}
