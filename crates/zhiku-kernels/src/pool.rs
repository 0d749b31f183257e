//! The one persistent compute pool: the calling thread plus a rayon pool of `threads - 1`
//! workers, started on first use. Work is split into items claimed from an atomic counter;
//! the caller works through them too, and a helper that starts late (its worker busy or
//! descheduled on a shared machine) finds the call closed instead of holding it up.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use crate::KernelError;

static CONFIGURED: OnceLock<usize> = OnceLock::new();
static POOL: OnceLock<Option<rayon::ThreadPool>> = OnceLock::new();

/// Cores really free to this process: `available_parallelism` reads the scheduler affinity
/// mask and the cgroup CPU quota on Linux.
pub fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

pub fn set_threads(n: usize) -> Result<(), KernelError> {
    if n == 0 {
        return Err(KernelError::Threads(
            "the thread count must be at least 1".into(),
        ));
    }
    let got = *CONFIGURED.get_or_init(|| n);
    if got != n {
        return Err(KernelError::Threads(format!(
            "the compute pool already runs {got} threads; cannot change it to {n}"
        )));
    }
    Ok(())
}

pub fn threads() -> usize {
    *CONFIGURED.get_or_init(default_threads)
}

fn pool() -> Option<&'static rayon::ThreadPool> {
    POOL.get_or_init(|| {
        let n = threads();
        if n <= 1 {
            return None;
        }
        // A pool that cannot start (no threads left to the process) degrades to running
        // on the caller's thread rather than failing every matmul.
        rayon::ThreadPoolBuilder::new()
            .num_threads(n - 1)
            .thread_name(|i| format!("zhiku-kernel-{i}"))
            .build()
            .ok()
    })
    .as_ref()
}

/// One parallel call's shared state. A helper may start after the call returned (its
/// worker busy, or descheduled on a shared machine): it then finds the call closed and
/// touches nothing but this struct, which its `Arc` keeps alive.
struct Call {
    /// Bit 0: closed; the other bits: helpers inside, times 2.
    state: AtomicUsize,
    next: AtomicUsize,
    items: usize,
    /// The caller's closure with its lifetime erased: dereferenced only by helpers that
    /// joined while the call was open, and the caller waits for those before returning.
    f: *const (dyn Fn(usize) + Sync),
}

// SAFETY: `f` points to a `Sync` closure, used only under the join protocol of `Call`.
unsafe impl Send for Call {}
// SAFETY: as above; the other fields are atomics.
unsafe impl Sync for Call {}

impl Call {
    fn work(&self, f: &(dyn Fn(usize) + Sync)) {
        loop {
            let i = self.next.fetch_add(1, Ordering::Relaxed);
            if i >= self.items {
                break;
            }
            f(i);
        }
    }

    fn help(&self) {
        let mut s = self.state.load(Ordering::Acquire);
        loop {
            if s & 1 == 1 {
                return;
            }
            match self
                .state
                .compare_exchange_weak(s, s + 2, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => break,
                Err(now) => s = now,
            }
        }
        // SAFETY: we joined while the call was open, so the caller has not returned: it
        // waits in `Close` until we leave below.
        let f = unsafe { &*self.f };
        self.work(f);
        self.state.fetch_sub(2, Ordering::Release);
    }
}

/// Closes the call and waits for the helpers inside it, on unwinding too.
struct Close<'a>(&'a Call);

impl Drop for Close<'_> {
    fn drop(&mut self) {
        self.0.state.fetch_or(1, Ordering::AcqRel);
        let mut spins = 0u32;
        while self.0.state.load(Ordering::Acquire) >> 1 != 0 {
            if spins < 2000 {
                std::hint::spin_loop();
                spins += 1;
            } else {
                std::thread::yield_now();
            }
        }
    }
}

/// Runs `f(i)` for every `i` in `0..items`: the caller works through the items and asks
/// the pool's workers to help; it waits only for helpers that actually started.
pub fn parallel_for(items: usize, f: impl Fn(usize) + Sync) {
    match pool() {
        Some(pool) if items > 1 => {
            let f: &(dyn Fn(usize) + Sync) = &f;
            // SAFETY: only the lifetime changes (same fat-pointer layout); the pointer is
            // used under `Call`'s protocol and `Close` outlives every use (see `Call::f`).
            let erased: *const (dyn Fn(usize) + Sync + 'static) =
                unsafe { std::mem::transmute::<*const (dyn Fn(usize) + Sync + '_), _>(f) };
            let call = Arc::new(Call {
                state: AtomicUsize::new(0),
                next: AtomicUsize::new(0),
                items,
                f: erased,
            });
            for _ in 0..(items - 1).min(pool.current_num_threads()) {
                let c = Arc::clone(&call);
                pool.spawn(move || c.help());
            }
            let _close = Close(&call);
            call.work(f);
        }
        _ => (0..items).for_each(f),
    }
}

/// Runs `f` inside the pool (so rayon-parallel code such as `gemm` uses its workers).
/// The caller waits meanwhile, so float matmuls get one thread fewer than `threads`.
pub fn install<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    match pool() {
        Some(pool) => pool.install(f),
        None => f(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_item_runs_exactly_once() {
        for call in 0..2000usize {
            let items = call % 37;
            let hits: Vec<AtomicUsize> = (0..items).map(|_| AtomicUsize::new(0)).collect();
            parallel_for(items, |i| {
                hits[i].fetch_add(1, Ordering::Relaxed);
            });
            assert!(
                hits.iter().all(|h| h.load(Ordering::Relaxed) == 1),
                "call {call}"
            );
        }
    }
}
