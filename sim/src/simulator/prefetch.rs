//! The simulator's one use of `unsafe`: a prefetch instruction, asking the processor to
//! start loading memory the engine will read soon (what [`Endpoint::memory_hints`] names).
//!
//! With thousands of nodes, every endpoint and connection is out of the cache when its
//! turn comes, and its state is read one miss after another. The engine knows its turns in
//! advance (a window's nodes in order, a server's queued datagrams), so it names the memory
//! of the turns a few places ahead, stage by stage: by the time a turn comes its state has
//! arrived, and the misses of several turns overlap instead of adding up.

use shoal_proto::{Endpoint, MemoryHint};

/// Prefetches `len` bytes from `address` (at most [`MAX_BYTES`]), one cache line at a time.
#[allow(unsafe_code)]
pub(super) fn prefetch_bytes(address: *const u8, len: usize) {
    #[cfg(target_arch = "x86_64")]
    {
        use core::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        let mut offset = 0;
        while offset < len.min(MAX_BYTES) {
            // SAFETY: a prefetch is only a hint: it never faults, whatever the address (it
            // is dropped if the address is not mapped), and it reads nothing into the
            // program. The pointer is never dereferenced. `_mm_prefetch` is `unsafe` only
            // for its target feature, SSE, which every x86-64 processor has.
            unsafe { _mm_prefetch::<_MM_HINT_T0>(address.wrapping_add(offset).cast()) };
            offset += LINE;
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (address, len);
}

/// Bytes of a cache line.
const LINE: usize = 64;
/// The most bytes one hint prefetches (a connection is some 1.4 KB).
const MAX_BYTES: usize = 2048;

/// Asks the processor to start loading `value` into the cache (at most its first 2 KiB),
/// for [`Application::upcoming`](crate::Application::upcoming). Only a hint: it reads
/// nothing and changes nothing (and does nothing off x86-64).
pub fn prefetch<T: ?Sized>(value: &T) {
    prefetch_bytes((value as *const T).cast(), core::mem::size_of_val(value));
}

/// Prefetches stage `stage` of `hint` at `endpoint`.
pub(super) fn hint(endpoint: &Endpoint, hint: MemoryHint<'_>, stage: u8) {
    endpoint.memory_hints(hint, stage, prefetch_bytes);
}
