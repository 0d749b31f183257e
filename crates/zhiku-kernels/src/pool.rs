//! The one persistent compute pool: the calling thread plus a rayon pool of `threads - 1`
//! workers, started on first use. Work is split into items claimed from an atomic counter;
//! the caller works through them too, and a helper task that starts late (its worker busy
//! or descheduled on a shared machine) finds nothing left instead of holding the call up.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};

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

/// Runs `f(i)` for every `i` in `0..items`, spread over the pool's workers.
pub fn parallel_for(items: usize, f: impl Fn(usize) + Sync) {
    match pool() {
        Some(pool) if items > 1 => {
            let next = AtomicUsize::new(0);
            let work = || {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= items {
                        break;
                    }
                    f(i);
                }
            };
            let helpers = (items - 1).min(pool.current_num_threads());
            pool.in_place_scope(|s| {
                for _ in 0..helpers {
                    s.spawn(|_| work());
                }
                work();
            });
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
