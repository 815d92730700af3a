//! The simulator's one use of `unsafe`: a prefetch instruction, asking the processor to
//! start loading memory the engine will read soon (what [`Endpoint::memory_hints`] names).
//!
//! With thousands of nodes, every endpoint and connection is out of the cache when its
//! turn comes, and its state is read one miss after another. The engine knows its turns in
//! advance (a window's nodes in order, a server's queued datagrams), so it names the memory
//! of the turns a few places ahead, stage by stage: by the time a turn comes its state has
//! arrived, and the misses of several turns overlap instead of adding up.

use shoal_proto::{Endpoint, MemoryHint};

/// Prefetches every cache line the first `len` bytes at `address` touch (of at most
/// [`MAX_BYTES`] bytes), one line at a time, into the second-level cache.
///
/// Into L2 (`T1`), not L1 (`T0`): the turns it serves read the lines a few microseconds
/// later from L2 at a dozen cycles, and the 10,000-client run went 4-5% faster
/// (alternating runs, 0.65-0.66 with `T0` against 0.67-0.71; `T2` between, `NTA` 25%
/// slower). The likely reason, which the VM has no counters to confirm: the run is bound
/// by how many misses are in flight at once, and a prefetch into L1 holds one of the few
/// L1 fill buffers until its line arrives.
#[allow(unsafe_code)]
pub(super) fn prefetch_bytes(address: *const u8, len: usize) {
    #[cfg(target_arch = "x86_64")]
    each_line(address, len, |line| {
        use core::arch::x86_64::{_mm_prefetch, _MM_HINT_T1};
        // SAFETY: a prefetch is only a hint: it never faults, whatever the address (it is
        // dropped if the address is not mapped), and it reads nothing into the program. The
        // pointer is never dereferenced. `_mm_prefetch` is `unsafe` only for its target
        // feature, SSE, which every x86-64 processor has.
        unsafe { _mm_prefetch::<_MM_HINT_T1>(line.cast()) };
    });
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (address, len);
}

/// Calls `f` with the start of each cache line the first `len` bytes at `address` touch (of
/// at most [`MAX_BYTES`] bytes). Counted from the line `address` is in, not from `address`:
/// a region that does not start on a line (a 16-byte-aligned connection struct, a ring's
/// element) would otherwise lose its last line.
#[inline(always)]
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
fn each_line(address: *const u8, len: usize, mut f: impl FnMut(*const u8)) {
    let skew = address as usize % LINE;
    let first_line = address.wrapping_sub(skew);
    let end = skew + len.min(MAX_BYTES);
    // (A plain loop: a `step_by` iterator here cost more instructions than the prefetches.)
    let mut offset = 0;
    while offset < end {
        f(first_line.wrapping_add(offset));
        offset += LINE;
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The start of each line `prefetch_bytes` names.
    fn lines(address: usize, len: usize) -> Vec<usize> {
        let mut lines = Vec::new();
        each_line(core::ptr::without_provenance(address), len, |line| {
            lines.push(line as usize);
        });
        lines
    }

    #[test]
    fn a_region_that_straddles_a_line_names_both_lines() {
        assert_eq!(lines(640 + 48, 32), [640, 704]);
        // 1,376 bytes from 16 bytes into a line reach into a 23rd line.
        assert_eq!(lines(640 + 16, 1376).len(), 22);
        assert_eq!(lines(640 + 48, 1376).len(), 23);
        assert_eq!(lines(640 + 48, 1376).last(), Some(&(640 + 22 * 64)));
    }

    #[test]
    fn a_region_within_one_line_names_that_line_once() {
        assert_eq!(lines(640, 64), [640]);
        assert_eq!(lines(640 + 8, 8), [640]);
        assert_eq!(lines(640, 0), Vec::<usize>::new());
    }

    #[test]
    fn a_region_longer_than_the_cap_names_only_the_lines_of_its_first_max_bytes() {
        assert_eq!(lines(640, 1 << 20).len(), MAX_BYTES / LINE);
        assert_eq!(lines(640 + 32, 1 << 20).len(), MAX_BYTES / LINE + 1);
    }
}
