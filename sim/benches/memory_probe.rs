//! What a cold cache line costs on this machine, and a page of its own on top: the limits
//! the simulator's memory hints run into with thousands of clients (docs/benchmarks.md,
//! "The seventh session of 2026-12-02").
//!
//! ```text
//! cargo bench -p shoal-sim --bench memory_probe
//! ```
//!
//! Batches of lines of a 512 MB buffer (out of every cache) are named to the processor
//! ([`shoal_sim::prefetch`], or not), some unrelated work runs, then the lines are read.
//! The lines of a batch lie on as many random pages, or all on one random page.

use std::time::Instant;

const MEMORY: usize = 512 << 20;
const WORDS_PER_PAGE: usize = 4096 / 8;
const WORDS_PER_LINE: usize = 64 / 8;
const BATCHES: usize = 200_000;

fn xorshift(s: &mut u64) -> u64 {
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    *s
}

/// Nanoseconds per batch of `lines` lines.
fn probe(memory: &[u64], lines: usize, one_page: bool, prefetching: bool) -> f64 {
    let pages = memory.len() / WORDS_PER_PAGE;
    let mut seed = 0x1234_5678_9abc_def1_u64;
    let mut sum = 0u64;
    let mut batch = vec![0usize; lines];
    let started = Instant::now();
    for _ in 0..BATCHES {
        let page = xorshift(&mut seed) as usize % pages;
        for (j, word) in batch.iter_mut().enumerate() {
            let line = j * WORDS_PER_LINE % WORDS_PER_PAGE;
            *word = if one_page {
                page * WORDS_PER_PAGE + line
            } else {
                (xorshift(&mut seed) as usize % pages) * WORDS_PER_PAGE + line
            };
        }
        if prefetching {
            for &word in &batch {
                shoal_sim::prefetch(&memory[word]);
            }
        }
        // Work that does not need the lines, as a turn's has before it reads them.
        let mut x = sum;
        for i in 0..200u64 {
            x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(i);
        }
        sum = sum.wrapping_add(x);
        for &word in &batch {
            sum = sum.wrapping_add(memory[word]);
        }
    }
    std::hint::black_box(sum);
    started.elapsed().as_nanos() as f64 / BATCHES as f64
}

fn main() {
    let memory: Vec<u64> = (0..MEMORY / 8).map(|i| i as u64).collect();
    println!("ns per batch of cold lines ({BATCHES} batches, 512 MB):");
    println!(
        "{:>6} {:>22} {:>22}",
        "lines", "on as many pages", "on one page"
    );
    for lines in [16, 40] {
        for prefetching in [true, false] {
            let spread = probe(&memory, lines, false, prefetching);
            let one = probe(&memory, lines, true, prefetching);
            let how = if prefetching {
                "prefetched"
            } else {
                "read cold"
            };
            println!("{lines:>6} {spread:>22.1} {one:>22.1}   {how}");
        }
    }
}
