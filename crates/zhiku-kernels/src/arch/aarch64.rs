//! The aarch64 tables. NEON is part of every aarch64 CPU, but no NEON kernel is written
//! yet: the portable table serves. A NEON table goes here, built like `x86`'s (a
//! `SimdPath` of its own, entries for what it speeds up, the portable ones for the rest),
//! and the tests compare it with the portable one as they do the x86 paths.

use super::Kernels;

/// The tables this CPU runs beside the portable one, slowest first: none yet.
pub(super) fn supported() -> Vec<&'static Kernels> {
    Vec::new()
}
