//! Forward error correction across packets: each packet that goes out anyway may carry a
//! repair symbol, a random linear combination over GF(2^8) of the frames of up to
//! [`COVERAGE`] earlier small packets. A receiver that lost some of them rebuilds them from
//! enough repairs and the packets it has, without waiting a round trip for a retransmission.
//!
//! One repair per packet costs about what one copy of every small frame did, but each lost
//! packet is covered by several repairs in several later packets, so it is rebuilt unless
//! most of those are lost too: at 10% loss about one packet in three thousand, against one
//! in a hundred for a single copy. Only packets whose loss costs something a repair saves
//! are coded ([`worth_coding`]).

use alloc::collections::VecDeque;
use alloc::vec::Vec;
use core::time::Duration;

use crate::config::DeliveryKind;
use crate::time::Instant;
use crate::wire::{MessageHeader, SendType};

/// Earlier packets one repair covers at most.
pub(crate) const COVERAGE: usize = 12;
/// Received packets kept to solve repairs with.
const KEPT: usize = 24;
/// Repairs kept until they are solved or useless.
const PENDING: usize = 12;
/// Byte operations (a byte multiplied and added) solving may spend per byte the peer sent
/// since the decoder was made: an honest path's solves take a small fraction of that, while
/// repairs made so that no equation ever solves had every one of them rerun the whole
/// elimination (some 45 times a packet's own cost).
const SOLVE_WORK_PER_BYTE: usize = 8;
/// Solving work allowed ahead of the bytes that pay for it (a burst of losses solves at
/// once).
const SOLVE_WORK_AHEAD: usize = 1 << 20;
/// Solving work counted for each repair's equation besides its bytes (a buffer, a lookup
/// per covered packet), so that one-byte symbols do not make solving look free.
const ROW_WORK: usize = 64 * COVERAGE_SPAN as usize;

/// Whether a frame's loss costs something a repair saves, which makes its packet worth
/// coding: a reliable frame waits a round trip for its retransmission, an unreliable one
/// is lost for good, and a request or response not delivered times its request out. A
/// message on a sequenced channel is not: the channel's next message supersedes it, and a
/// game's state sent every tick would otherwise be most of what is coded. Both sides
/// decide it alike (their channels' kinds must match to connect), so a receiver keeps only
/// the packets its peer codes.
pub(crate) fn worth_coding(header: &MessageHeader, kind: DeliveryKind) -> bool {
    kind != DeliveryKind::Sequenced || header.send_type == SendType::Response || header.reliable
}

/// Multiplication tables of GF(2^8) with the AES polynomial x^8 + x^4 + x^3 + x + 1.
struct Gf {
    exp: [u8; 512],
    log: [u8; 256],
}

const GF: Gf = {
    let mut exp = [0u8; 512];
    let mut log = [0u8; 256];
    let mut x: u16 = 1;
    let mut i = 0;
    while i < 255 {
        exp[i] = x as u8;
        log[x as usize] = i as u8;
        // Multiply by the generator 3 (x + 1).
        x ^= x << 1;
        if x & 0x100 != 0 {
            x ^= 0x11b;
        }
        i += 1;
    }
    while i < 512 {
        exp[i] = exp[i - 255];
        i += 1;
    }
    Gf { exp, log }
};

const fn mul(a: u8, b: u8) -> u8 {
    if a == 0 || b == 0 {
        return 0;
    }
    GF.exp[GF.log[a as usize] as usize + GF.log[b as usize] as usize]
}

/// Products by halves: `c * s == low[c][s & 15] ^ high[c][s >> 4]` (multiplication
/// distributes over the XOR that joins the halves). 8 KiB that make each byte of a symbol
/// two loads, with no branch: coding runs over every small packet of a lossy connection.
struct Nibbles {
    low: [[u8; 16]; 256],
    high: [[u8; 16]; 256],
}

static NIBBLES: Nibbles = {
    let mut low = [[0u8; 16]; 256];
    let mut high = [[0u8; 16]; 256];
    let mut c = 0;
    while c < 256 {
        let mut n = 0;
        while n < 16 {
            low[c][n] = mul(c as u8, n as u8);
            high[c][n] = mul(c as u8, (n << 4) as u8);
            n += 1;
        }
        c += 1;
    }
    Nibbles { low, high }
};

fn inv(a: u8) -> u8 {
    // a != 0 by construction of every caller.
    GF.exp[255 - usize::from(GF.log[usize::from(a)])]
}

/// `dst ^= c * src` over the common length, eight bytes at a time. The product is linear
/// over GF(2): `c * s` is the sum of `c * 2^b` over the bits `b` set in `s`, and a byte's
/// bit (0 or 1) times a byte constant never carries into the next byte, so one multiply
/// per bit does all eight bytes of a word. (Twice as fast as two table lookups per byte.)
fn mul_add(dst: &mut [u8], c: u8, src: &[u8]) {
    /// The lowest bit of every byte.
    const LOW_BITS: u64 = 0x0101_0101_0101_0101;
    if c == 0 {
        return;
    }
    let mut by_bit = [0u64; 8];
    let mut power = c;
    for k in &mut by_bit {
        *k = u64::from(power);
        // Times 2 in the field (x^8 = x^4 + x^3 + x + 1).
        power = (power << 1) ^ if power & 0x80 != 0 { 0x1b } else { 0 };
    }
    let n = dst.len().min(src.len());
    let (dst, src) = (&mut dst[..n], &src[..n]);
    let mut dst_words = dst.chunks_exact_mut(8);
    let mut src_words = src.chunks_exact(8);
    for (d, s) in (&mut dst_words).zip(&mut src_words) {
        let mut word = [0u8; 8];
        word.copy_from_slice(s);
        let s = u64::from_le_bytes(word);
        let mut product = 0;
        for (bit, k) in by_bit.iter().enumerate() {
            product ^= ((s >> bit) & LOW_BITS) * k;
        }
        word.copy_from_slice(d);
        d.copy_from_slice(&(u64::from_le_bytes(word) ^ product).to_le_bytes());
    }
    let (low, high) = (&NIBBLES.low[usize::from(c)], &NIBBLES.high[usize::from(c)]);
    let tail = dst_words.into_remainder().iter_mut();
    for (d, &s) in tail.zip(src_words.remainder()) {
        *d ^= low[usize::from(s & 15)] ^ high[usize::from(s >> 4)];
    }
}

/// `dst *= c`, bytewise.
fn scale_by(dst: &mut [u8], c: u8) {
    let (low, high) = (&NIBBLES.low[usize::from(c)], &NIBBLES.high[usize::from(c)]);
    for d in dst {
        *d = low[usize::from(*d & 15)] ^ high[usize::from(*d >> 4)];
    }
}

/// The coefficient of packet `covered` in the repair carried by packet `repair`: a fixed,
/// well-mixed function of the two (low 32 bits of) packet numbers, never zero. Both ends
/// compute it, so it costs nothing on the wire.
pub(crate) fn coefficient(repair: u64, covered: u64) -> u8 {
    let mut x = (repair as u32 as u64) << 32 | covered as u32 as u64;
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    (x % 255) as u8 + 1
}

/// What a repair covers: (distance below the newest covered packet, frames length).
pub(crate) type Coverage = heapless::Vec<(u32, usize), COVERAGE>;

/// The frames of the latest `N` packets, oldest first, in one ring buffer: appended after
/// the newest, forgotten at the oldest, each packet's frames in one piece (a packet that
/// does not fit before the buffer's end starts again at its front). Coding reads them for
/// every packet it sends or solves, and a heap block per packet (as they once were) missed
/// the cache once per packet; compacting a linear buffer moved every byte once more, into
/// lines just as cold. `T` is what else an entry keeps: the encoder its sending time, the
/// decoder nothing.
#[derive(Debug)]
struct FrameLog<const N: usize, T> {
    entries: heapless::Deque<LogEntry<T>, N>,
    /// The ring: its whole length is room (it grows, never shrinks, while the log lives).
    bytes: Vec<u8>,
}

/// 16 bytes, 24 with a time: with thousands of connections coding, the logs are read cold
/// once per packet, so every line they span is a cache miss (the decoder's log spanned 12
/// lines with 32-byte entries).
#[derive(Clone, Copy, Debug)]
struct LogEntry<T> {
    pn: u64,
    /// Offset and length of its frames in `bytes` (a log holds at most `N` packets of at
    /// most one datagram each: far below 4 GiB).
    start: u32,
    len: u32,
    stamp: T,
}

impl<T> LogEntry<T> {
    fn end(&self) -> usize {
        self.start as usize + self.len as usize
    }
}

impl<const N: usize, T> Default for FrameLog<N, T> {
    fn default() -> Self {
        FrameLog {
            entries: heapless::Deque::new(),
            bytes: Vec::new(),
        }
    }
}

impl<const N: usize, T: Copy> FrameLog<N, T> {
    /// Appends packet `pn`'s frames, forgetting the oldest packet if `N` are kept.
    fn push(&mut self, pn: u64, stamp: T, frames: &[u8]) {
        if self.entries.is_full() {
            self.entries.pop_front();
        }
        let start = match self.room_for(frames.len()) {
            Some(start) => start,
            None => self.grow(frames.len()),
        };
        let Some(to) = self.bytes.get_mut(start..start + frames.len()) else {
            return; // (Unreachable: there is room by construction.)
        };
        to.copy_from_slice(frames);
        let entry = LogEntry {
            pn,
            start: start as u32,
            len: frames.len() as u32,
            stamp,
        };
        let _ = self.entries.push_back(entry);
    }

    /// Where `len` bytes fit in one piece after the newest packet's, if they do.
    fn room_for(&self, len: usize) -> Option<usize> {
        let (Some(oldest), Some(newest)) = (self.entries.front(), self.entries.back()) else {
            return (len <= self.bytes.len()).then_some(0);
        };
        let (head, tail) = (oldest.start as usize, newest.end());
        if newest.start >= oldest.start {
            // Kept bytes in one run, [head, tail): room after it, else before it.
            if len <= self.bytes.len() - tail {
                Some(tail)
            } else {
                (len <= head).then_some(0)
            }
        } else {
            // Wrapped: room only between the newest and the oldest.
            (len <= head.saturating_sub(tail)).then_some(tail)
        }
    }

    /// Moves the kept frames, oldest first, to the front of a buffer with room for them, `len`
    /// more, a quarter of both and one more packet as long; returns where the `len` bytes go.
    /// (The slack is what the ring wastes at its end; a doubling buffer kept up to twice the
    /// kept frames, and on a client that codes its 24 received packets that was most of its
    /// coding state.)
    fn grow(&mut self, len: usize) -> usize {
        let kept: usize = self.entries.iter().map(|e| e.len as usize).sum();
        let need = kept + len;
        let mut bytes = alloc::vec![0; (need + need / 4 + len).max(64)];
        let mut at = 0;
        for e in self.entries.iter_mut() {
            let (from, n) = (e.start as usize, e.len as usize);
            if let (Some(to), Some(from)) =
                (bytes.get_mut(at..at + n), self.bytes.get(from..from + n))
            {
                to.copy_from_slice(from);
            }
            e.start = at as u32;
            at += n;
        }
        self.bytes = bytes;
        at
    }

    /// (packet number, stamp, frames), oldest first.
    fn iter(&self) -> impl DoubleEndedIterator<Item = (u64, T, &[u8])> {
        self.entries.iter().map(|e| {
            let (start, len) = (e.start as usize, e.len as usize);
            let frames = self.bytes.get(start..start + len).unwrap_or_default();
            (e.pn, e.stamp, frames)
        })
    }

    /// The address where the newest packet's frames end (for memory hints).
    fn tail_address(&self) -> usize {
        let end = self.entries.back().map_or(0, LogEntry::end);
        self.bytes.as_ptr().addr() + end
    }

    fn get(&self, pn: u64) -> Option<&[u8]> {
        self.iter().find(|&(p, _, _)| p == pn).map(|(_, _, f)| f)
    }

    fn contains(&self, pn: u64) -> bool {
        self.entries.iter().any(|e| e.pn == pn)
    }
}

/// The sender's side: the frames of its latest small packets.
#[derive(Debug, Default)]
pub(crate) struct RepairEncoder {
    sent: FrameLog<COVERAGE, Instant>,
    /// Repairs sent while this encoder lived (counted here, beside the log a repair is
    /// written from, rather than in the connection's cold rare counters; folded into those
    /// when the encoder goes).
    pub(crate) repairs_sent: u64,
}

/// What a repair covers, found before it is written: the newest covered packet, the
/// coverage as (distance below it, frames length), and the symbol's length (the longest).
#[derive(Debug)]
pub(crate) struct RepairPlan {
    pub(crate) newest: u64,
    pub(crate) covered: Coverage,
    pub(crate) symbol_len: usize,
}

impl RepairEncoder {
    /// Remembers the frames of packet `pn`, sent at `now`.
    pub(crate) fn on_sent(&mut self, pn: u64, now: Instant, frames: &[u8]) {
        debug_assert!(
            self.sent.entries.back().is_none_or(|e| e.stamp <= now),
            "in time order"
        );
        self.sent.push(pn, now, frames);
    }

    /// Where the log appends next (for memory hints).
    pub(crate) fn tail_address(&self) -> usize {
        self.sent.tail_address()
    }

    /// The newest packet logged, if any.
    pub(crate) fn newest_logged(&self) -> Option<u64> {
        self.sent.entries.back().map(|e| e.pn)
    }

    /// Plans the repair for a packet going out at `now`: it covers the packets sent
    /// before this instant and within `horizon`, newest first, as many as a symbol of at
    /// most `room` bytes allows. `None` if nothing is worth covering, which includes a
    /// newest packet not above `covered_before` (the last repair's).
    pub(crate) fn plan(
        &self,
        now: Instant,
        horizon: Duration,
        room: usize,
        covered_before: Option<u64>,
    ) -> Option<RepairPlan> {
        let mut covered = Coverage::new();
        let mut newest = None;
        let mut symbol_len = 0;
        for (covered_pn, sent_at, frames) in self.sent.iter().rev() {
            if now >= sent_at + horizon {
                // The log is in sending order: the rest are older still.
                break;
            }
            if sent_at >= now || frames.len() > room {
                continue;
            }
            if newest.is_none() && covered_before.is_some_and(|b| covered_pn <= b) {
                return None;
            }
            let newest_pn = *newest.get_or_insert(covered_pn);
            let distance = newest_pn - covered_pn;
            if distance >= COVERAGE_SPAN {
                break;
            }
            // Newest first, so distances come in increasing order, as the mask wants.
            if covered.push((distance as u32, frames.len())).is_err() {
                break;
            }
            symbol_len = symbol_len.max(frames.len());
        }
        Some(RepairPlan {
            newest: newest?,
            covered,
            symbol_len,
        })
    }

    /// Codes the symbol `plan` describes, for the repair packet `pn` carries, into `symbol`
    /// (zeroed, `plan.symbol_len` bytes): straight into the packet, with no buffer of its own.
    /// Shorter frames count as zero-padded.
    pub(crate) fn code(&self, pn: u64, plan: &RepairPlan, symbol: &mut [u8]) {
        let mut covered = plan.covered.iter().peekable();
        for (covered_pn, _, frames) in self.sent.iter().rev() {
            let Some(&&(distance, _)) = covered.peek() else {
                break;
            };
            if plan.newest.checked_sub(u64::from(distance)) == Some(covered_pn) {
                mul_add(symbol, coefficient(pn, covered_pn), frames);
                covered.next();
            }
        }
    }
}

/// How far below the newest covered packet a repair may reach (the bits of its mask).
pub(crate) const COVERAGE_SPAN: u64 = crate::wire::MAX_REPAIR_COVERAGE as u64;

/// A repair not solved yet, in the wire's shape: the newest covered packet and a mask of
/// the ones below it (80 bytes, where a list of (number, length) pairs took 296: solving
/// reads every pending repair for every repair that arrives).
#[derive(Debug)]
struct Pending {
    /// The packet that carried it (for the coefficients).
    repair_pn: u64,
    /// The newest covered packet.
    newest: u64,
    /// Bit `i`: packet `newest - i` is covered.
    mask: u16,
    /// Bit `i`'s frames length (saturated: no symbol is that long, see `covered`).
    lens: [u16; COVERAGE_SPAN as usize],
    symbol: Vec<u8>,
}

impl Pending {
    /// (packet number, frames length) of each covered packet, newest first. A length
    /// saturated at `u16::MAX` is still longer than any symbol (at most half an MTU of
    /// 65,507), so it still rebuilds nothing.
    fn covered(&self) -> impl Iterator<Item = (u64, usize)> + '_ {
        (0..COVERAGE_SPAN)
            .filter(|&i| self.mask & (1 << i) != 0)
            .map(|i| (self.newest - i, usize::from(self.lens[i as usize])))
    }

    /// Whether packet `pn` is among those covered (a bit test, for every packet received).
    fn covers(&self, pn: u64) -> bool {
        self.newest
            .checked_sub(pn)
            .filter(|&i| i < COVERAGE_SPAN)
            .is_some_and(|i| self.mask & (1 << i) != 0)
    }
}

/// The receiver's side: recent packets' frames and the repairs not solved yet.
///
/// In declaration order (`repr(C)`), what every received packet reads and writes first:
/// the flags and counters and the pending repairs' ring fill its first 64 bytes, where
/// the compiler's order spread them over three (its last three), each a cold line at
/// thousands of connections. Only a coded packet goes on to the kept frames.
#[derive(Debug, Default)]
#[repr(C)]
pub(crate) struct RepairDecoder {
    /// Whether the peer sends repairs (only then are packets kept).
    active: bool,
    /// Something since the last `solve` can make it rebuild more: a repair kept, or a packet
    /// a pending repair covers. Otherwise solving again would only redo the last solve (a
    /// peer could otherwise have it redone, in full, for every packet it sends).
    dirty: bool,
    /// Packets received since the last repair: past `2 × KEPT` the peer has stopped coding,
    /// and the kept frames and buffers are given back.
    quiet: usize,
    /// Solving work done and not paid for yet by bytes received (see `SOLVE_WORK_PER_BYTE`).
    work_owed: usize,
    /// Solves put off for lack of paid work (see `solve`); the caller counts them.
    deferred: u64,
    pending: VecDeque<Pending>,
    spare: Vec<Vec<u8>>,
    kept: FrameLog<KEPT, ()>,
    /// Solves run (for the tests).
    #[cfg(test)]
    solves: usize,
}

impl RepairDecoder {
    /// Keeps the frames of received packet `pn` (once the peer has sent a repair), if they
    /// are at most `max_len` bytes: no honest repair covers a longer packet (a coded packet
    /// carries at most half its room in frames), so keeping one would only let a peer make
    /// the kept frames' buffer hold full-size packets. Nor is a packet kept that is not
    /// `coded` (see [`worth_coding`]): no honest repair covers it either.
    pub(crate) fn on_received(&mut self, pn: u64, frames: &[u8], max_len: usize, coded: bool) {
        if !self.active {
            return;
        }
        self.quiet += 1;
        if self.quiet > 2 * KEPT {
            // (What is owed stays, for the connection to keep: see `work_owed`.)
            let work_owed = self.work_owed;
            *self = RepairDecoder::default();
            self.work_owed = work_owed;
            return;
        }
        self.pay(frames.len());
        if coded && frames.len() <= max_len {
            self.kept.push(pn, (), frames);
        }
        if !self.dirty {
            self.dirty = self.pending.iter().any(|p| p.covers(pn));
        }
    }

    /// Where the log appends next (for memory hints).
    pub(crate) fn tail_address(&self) -> usize {
        self.kept.tail_address()
    }

    /// Whether the peer sends repairs: a decoder goes inactive (and empty) once it has
    /// gone `2 × KEPT` packets without one.
    pub(crate) fn is_active(&self) -> bool {
        self.active
    }

    /// Takes a repair carried by packet `repair_pn`: `covered` as (packet number, length).
    /// `missing(pn)` says whether a packet is still wanted: a repair none of whose packets
    /// is can rebuild nothing, now or later, so it is counted (the peer codes) but its
    /// symbol is not kept. (`solve` would drop it unused; most repairs are such, so this
    /// saves a copy per packet on a clean path.)
    pub(crate) fn on_repair(
        &mut self,
        repair_pn: u64,
        covered: &[(u64, usize)],
        symbol: &[u8],
        missing: impl Fn(u64) -> bool,
    ) {
        self.on_repair_seen();
        self.pay(symbol.len());
        if !covered.iter().any(|&(pn, _)| missing(pn)) {
            return;
        }
        // (Only a repair that is kept takes the oldest one's place: one over packets that
        // all arrived must not push out one that may still rebuild something.)
        if self.pending.len() == PENDING {
            if let Some(old) = self.pending.pop_front() {
                self.spare.push(old.symbol);
            }
        }
        let mut buf = self.spare.pop().unwrap_or_default();
        buf.clear();
        buf.extend_from_slice(symbol);
        let newest = covered.iter().map(|&(pn, _)| pn).max().unwrap_or(0);
        let (mut mask, mut lens) = (0u16, [0u16; COVERAGE_SPAN as usize]);
        for &(pn, len) in covered {
            // Within the mask by construction (a repair's distances are its mask's bits).
            if let Some(bit) = usize::try_from(newest - pn)
                .ok()
                .filter(|&b| b < lens.len())
            {
                mask |= 1 << bit;
                lens[bit] = u16::try_from(len).unwrap_or(u16::MAX);
            }
        }
        self.pending.push_back(Pending {
            repair_pn,
            newest,
            mask,
            lens,
            symbol: buf,
        });
        self.dirty = true;
    }

    /// A decoder that starts owing `work` (what the one before it left unpaid).
    pub(crate) fn owing(work: u32) -> Self {
        RepairDecoder {
            work_owed: work as usize,
            ..RepairDecoder::default()
        }
    }

    /// Solving work owed (kept by the connection when the decoder goes).
    pub(crate) fn work_owed(&self) -> u32 {
        u32::try_from(self.work_owed).unwrap_or(u32::MAX)
    }

    /// Bytes received: they pay for solving work.
    fn pay(&mut self, bytes: usize) {
        self.work_owed = self
            .work_owed
            .saturating_sub(bytes.saturating_mul(SOLVE_WORK_PER_BYTE));
    }

    /// Solves put off since the last call, for lack of bytes received to pay for them.
    pub(crate) fn take_deferred(&mut self) -> u64 {
        core::mem::take(&mut self.deferred)
    }

    /// A repair arrived: the peer codes (received packets are kept from now on).
    pub(crate) fn on_repair_seen(&mut self) {
        self.active = true;
        self.quiet = 0;
    }

    /// Has the next `solve` run even if nothing changed: a packet it rebuilt could not be
    /// taken (no room yet), so it is still missing.
    pub(crate) fn mark_dirty(&mut self) {
        self.dirty = true;
    }

    /// Whether repairs wait to be solved.
    pub(crate) fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Drops every pending repair (they rebuilt something that is not a packet).
    pub(crate) fn forget_repairs(&mut self) {
        while let Some(p) = self.pending.pop_front() {
            self.spare.push(p.symbol);
        }
    }

    fn kept(&self, pn: u64) -> Option<&[u8]> {
        self.kept.get(pn)
    }

    /// Solves what the pending repairs allow, if anything changed since the last time.
    /// `missing(pn)` says whether a packet is still wanted. Each rebuilt packet is handed to
    /// `rebuilt` as (packet number, frames).
    pub(crate) fn solve(
        &mut self,
        missing: impl Fn(u64) -> bool,
        mut rebuilt: impl FnMut(u64, &[u8]),
    ) {
        if !self.dirty {
            return;
        }
        if self.work_owed > SOLVE_WORK_AHEAD {
            // Still dirty: it solves once the peer's bytes paid for the last solves.
            self.deferred += 1;
            return;
        }
        self.dirty = false;
        #[cfg(test)]
        {
            self.solves += 1;
        }
        // Drop repairs that cannot help: nothing missing, or a covered packet that is
        // neither missing nor kept (its frames are gone).
        let kept = &self.kept;
        let spare = &mut self.spare;
        self.pending.retain_mut(|p| {
            let useful = p.covered().any(|(pn, _)| missing(pn))
                && p.covered().all(|(pn, _)| missing(pn) || kept.contains(pn));
            if !useful {
                spare.push(core::mem::take(&mut p.symbol));
            }
            useful
        });
        if self.pending.is_empty() {
            return;
        }
        // Unknowns: the missing packets the repairs cover, with their lengths.
        let mut unknowns: heapless::Vec<(u64, usize), 32> = heapless::Vec::new();
        for p in &self.pending {
            for (pn, len) in p.covered() {
                if missing(pn) && !unknowns.iter().any(|&(u, _)| u == pn) {
                    let _ = unknowns.push((pn, len));
                }
            }
        }
        // One row per repair: coefficients of the unknowns, and the symbol with the known
        // packets taken out.
        let width = self
            .pending
            .iter()
            .map(|p| p.symbol.len())
            .max()
            .unwrap_or(0);
        let mut rows: heapless::Vec<([u8; 32], Vec<u8>), PENDING> = heapless::Vec::new();
        // Byte operations spent, owed until the peer's bytes pay for them.
        let mut work = 0usize;
        'repairs: for p in &self.pending {
            let mut coefs = [0u8; 32];
            let mut rhs = Vec::with_capacity(width);
            rhs.extend_from_slice(&p.symbol);
            rhs.resize(width, 0);
            // (Besides the bytes: a buffer, and a lookup per covered packet.)
            work += width + ROW_WORK;
            for (pn, _) in p.covered() {
                let c = coefficient(p.repair_pn, pn);
                match unknowns.iter().position(|&(u, _)| u == pn) {
                    Some(col) => coefs[col] = c,
                    None => match self.kept(pn) {
                        Some(frames) if !missing(pn) => {
                            work += frames.len();
                            mul_add(&mut rhs, c, frames)
                        }
                        // A missing packet that did not fit the unknowns (a long outage): the
                        // equation would be wrong, so it is left out rather than solved.
                        _ => continue 'repairs,
                    },
                }
            }
            let _ = rows.push((coefs, rhs));
        }
        // Gauss-Jordan elimination.
        let mut pivot_row = 0;
        let mut solved: heapless::Vec<(usize, usize), 32> = heapless::Vec::new();
        for col in 0..unknowns.len() {
            let Some(r) = (pivot_row..rows.len()).find(|&r| rows[r].0[col] != 0) else {
                continue;
            };
            rows.swap(pivot_row, r);
            let scale = inv(rows[pivot_row].0[col]);
            let (coefs, rhs) = &mut rows[pivot_row];
            for c in coefs.iter_mut() {
                *c = mul(*c, scale);
            }
            scale_by(rhs, scale);
            let (pivot_coefs, pivot_rhs) = rows[pivot_row].clone();
            for (r, (coefs, rhs)) in rows.iter_mut().enumerate() {
                if r == pivot_row || coefs[col] == 0 {
                    continue;
                }
                let factor = coefs[col];
                for (c, &p) in coefs.iter_mut().zip(&pivot_coefs) {
                    *c ^= mul(factor, p);
                }
                mul_add(rhs, factor, &pivot_rhs);
                work += width + 32;
            }
            let _ = solved.push((col, pivot_row));
            pivot_row += 1;
        }
        self.work_owed = self.work_owed.saturating_add(work);
        // A pivot row with no other unknown left gives its packet.
        for &(col, r) in &solved {
            let only = rows[r]
                .0
                .iter()
                .enumerate()
                .all(|(c, &v)| c == col || v == 0);
            if only {
                let (pn, len) = unknowns[col];
                if let Some(frames) = rows[r].1.get(..len) {
                    rebuilt(pn, frames);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The repair packet `pn` would carry: (newest covered, coverage, symbol).
    fn build(
        enc: &RepairEncoder,
        pn: u64,
        now: Instant,
        horizon: Duration,
        room: usize,
    ) -> Option<(u64, Coverage, Vec<u8>)> {
        let plan = enc.plan(now, horizon, room, None)?;
        let mut symbol = vec![0; plan.symbol_len];
        enc.code(pn, &plan, &mut symbol);
        Some((plan.newest, plan.covered, symbol))
    }

    #[cfg(target_pointer_width = "64")]
    #[test]
    fn a_pending_repair_is_kept_in_80_bytes() {
        assert_eq!(core::mem::size_of::<Pending>(), 80);
    }

    #[test]
    fn field_arithmetic_inverts() {
        for a in 1..=255u8 {
            assert_eq!(mul(a, inv(a)), 1, "{a}");
        }
        assert_eq!(mul(0x57, 0x83), 0xc1, "the AES field's worked example");
    }

    #[test]
    fn products_by_words_match_the_field_for_every_coefficient() {
        let src: Vec<u8> = (0..37u8).map(|i| i.wrapping_mul(97) ^ 0xa5).collect();
        for c in 0..=255u8 {
            let mut d: Vec<u8> = (0..37u8).map(|i| i.wrapping_mul(31)).collect();
            let expected: Vec<u8> = d.iter().zip(&src).map(|(&d, &s)| d ^ mul(c, s)).collect();
            mul_add(&mut d, c, &src);
            assert_eq!(d, expected, "coefficient {c}");
        }
        // Over the common length only, whichever is longer.
        for (d_len, s_len) in [(37, 20), (20, 37), (3, 37), (16, 16)] {
            let mut d = vec![0x11u8; d_len];
            mul_add(&mut d, 0x53, &src[..s_len]);
            for (i, &b) in d.iter().enumerate() {
                let want = if i < s_len {
                    0x11 ^ mul(0x53, src[i])
                } else {
                    0x11
                };
                assert_eq!(b, want, "byte {i} of {d_len} with {s_len}");
            }
        }
    }

    #[test]
    fn products_by_halves_match_the_field_for_every_pair() {
        for c in 0..=255u8 {
            for s in 0..=255u8 {
                let mut d = [0x5a];
                mul_add(&mut d, c, &[s]);
                assert_eq!(d[0], 0x5a ^ mul(c, s), "{c} * {s}");
            }
        }
    }

    #[test]
    fn two_lost_packets_are_rebuilt_from_two_repairs() {
        let t = Instant::from_millis;
        let horizon = Duration::from_millis(100);
        let packets: Vec<Vec<u8>> = (0..4u8).map(|i| vec![i + 1; 10 + usize::from(i)]).collect();
        let mut enc = RepairEncoder::default();
        let mut dec = RepairDecoder {
            active: true,
            ..RepairDecoder::default()
        };
        for (pn, frames) in packets.iter().enumerate() {
            enc.on_sent(pn as u64, t(pn as u64), frames);
        }
        // Packets 1 and 2 are lost; 0 and 3 arrive; repairs ride in packets 4 and 5.
        dec.on_received(0, &packets[0], usize::MAX, true);
        dec.on_received(3, &packets[3], usize::MAX, true);
        for repair_pn in [4u64, 5] {
            let (newest, covered, symbol) =
                build(&enc, repair_pn, t(10), horizon, 1200).expect("covers");
            let covered: Vec<(u64, usize)> = covered
                .iter()
                .map(|&(d, len)| (newest - u64::from(d), len))
                .collect();
            dec.on_repair(repair_pn, &covered, &symbol, |pn| pn == 1 || pn == 2);
        }
        let mut got = Vec::new();
        dec.solve(
            |pn| pn == 1 || pn == 2,
            |pn, frames| got.push((pn, frames.to_vec())),
        );
        got.sort();
        assert_eq!(got, vec![(1, packets[1].clone()), (2, packets[2].clone())]);
    }

    #[test]
    fn only_packets_the_peer_codes_are_kept() {
        let mut dec = RepairDecoder {
            active: true,
            ..RepairDecoder::default()
        };
        dec.on_received(0, &[1; 40], 600, false);
        dec.on_received(1, &[2; 40], 600, true);
        assert!(!dec.kept.contains(0), "no repair of the peer's covers it");
        assert_eq!(dec.kept(1), Some(&[2; 40][..]));
        // Sequenced messages alone are not coded; anything else is.
        let header = |send_type, reliable| MessageHeader {
            channel: 1,
            send_type,
            reliable,
            owner: 0,
            sequence: 0,
            redirect: None,
            chunk: None,
        };
        let message = header(SendType::Message, false);
        assert!(!worth_coding(&message, DeliveryKind::Sequenced));
        for kind in [
            DeliveryKind::Unreliable,
            DeliveryKind::Reliable,
            DeliveryKind::Ordered,
        ] {
            assert!(worth_coding(&message, kind), "{kind:?}");
        }
        let request = header(SendType::Message, true);
        let response = header(SendType::Response, false);
        assert!(worth_coding(&request, DeliveryKind::Sequenced));
        assert!(worth_coding(&response, DeliveryKind::Sequenced));
    }

    #[test]
    fn more_missing_packets_than_unknown_slots_never_rebuild_wrong_frames() {
        let t = Instant::from_millis;
        let horizon = Duration::from_secs(10);
        let packets: Vec<Vec<u8>> = (0..120u8).map(|i| vec![i ^ 0x5a; 20]).collect();
        let mut dec = RepairDecoder {
            active: true,
            ..RepairDecoder::default()
        };
        let mut enc = RepairEncoder::default();
        let mut rebuilt = Vec::new();
        // Blocks of 12 lost packets, each block covered by two repairs of its own: together
        // far more unknowns than the solver has slots, yet each block alone is solvable
        // only up to two packets.
        for block in 0..10u64 {
            for i in 0..12u64 {
                let pn = block * 12 + i;
                enc.on_sent(pn, t(pn), &packets[pn as usize]);
            }
            for extra in 0..2u64 {
                let repair_pn = 1_000 + block * 2 + extra;
                let (newest, covered, symbol) =
                    build(&enc, repair_pn, t(500), horizon, 1200).expect("covers the block");
                let covered: Vec<(u64, usize)> = covered
                    .iter()
                    .map(|&(d, len)| (newest - u64::from(d), len))
                    .collect();
                dec.on_repair(repair_pn, &covered, &symbol, |p| p < 120);
            }
            dec.solve(|p| p < 120, |p, f| rebuilt.push((p, f.to_vec())));
        }
        for (p, f) in &rebuilt {
            assert_eq!(f, &packets[*p as usize], "packet {p} rebuilt wrong");
        }
        assert!(
            rebuilt.is_empty(),
            "12 unknowns per block, 2 equations: nothing solvable"
        );
    }

    /// Twelve repairs wait, each over two lost packets of its own (unsolvable); then every
    /// packet carries a repair over packets that arrived. None of those can change what the
    /// waiting ones solve, so the solver runs again only when a packet they cover arrives.
    #[test]
    fn repairs_that_add_no_equation_do_not_rerun_the_solver() {
        let mut dec = RepairDecoder {
            active: true,
            ..RepairDecoder::default()
        };
        let lost = |pn: u64| pn < 24;
        for r in 0..12u64 {
            let covered = [(2 * r + 1, 40), (2 * r, 40)];
            dec.on_repair(100 + r, &covered, &[r as u8; 40], lost);
        }
        dec.solve(lost, |_, _| panic!("nothing is solvable"));
        assert_eq!(dec.solves, 1);
        for pn in 200..1_200u64 {
            dec.on_received(pn, &[1; 40], 600, true);
            dec.on_repair(pn, &[(pn, 40), (pn - 1, 40)], &[2; 40], lost);
            dec.solve(lost, |_, _| panic!("nothing is solvable"));
        }
        assert_eq!(
            dec.solves, 1,
            "nothing changed what the waiting repairs solve"
        );
        // A packet a waiting repair covers arrives: that one may solve now.
        dec.on_received(0, &[3; 40], 600, true);
        dec.solve(|pn| pn < 24 && pn != 0, |_, _| {});
        assert_eq!(dec.solves, 2);
        // A packet it rebuilt could not be taken (no room): the next repair solves again.
        dec.mark_dirty();
        dec.solve(|pn| pn < 24 && pn != 0, |_, _| {});
        assert_eq!(dec.solves, 3);
    }

    /// A peer can send repairs that each add an equation and never let one solve (every
    /// other packet missing, each repair over eight missing and eight kept ones): each
    /// reran the whole elimination, some 45 times what its packet costs otherwise. Solving
    /// now stops once it has cost more than the peer's bytes pay for, until they do.
    #[test]
    fn repairs_that_never_solve_cost_at_most_what_the_peers_bytes_pay_for() {
        let mut dec = RepairDecoder {
            active: true,
            ..RepairDecoder::default()
        };
        let missing = |pn: u64| pn % 2 == 1;
        let frames = [5u8; 600];
        let mut sent = 0usize;
        for newest in (100..2_100u64).step_by(2) {
            dec.on_received(newest, &frames, 600, true);
            sent += frames.len();
            let covered: Vec<(u64, usize)> = (0..16).map(|d| (newest - d, 600)).collect();
            dec.on_repair(newest + 1, &covered, &[9u8; 600], missing);
            sent += 600;
            dec.solve(missing, |_, _| panic!("nothing solves"));
        }
        let allowed = sent * SOLVE_WORK_PER_BYTE + SOLVE_WORK_AHEAD;
        // Each solve of twelve pending repairs of 600 bytes does some 150,000 operations.
        assert!(
            dec.solves * 100_000 <= allowed,
            "{} solves for {sent} bytes received",
            dec.solves
        );
        assert!(dec.take_deferred() > 0, "the ones put off are counted");
        // An honest repair, once the peer's bytes paid: solved again.
        for pn in 3_000..3_200u64 {
            dec.on_received(pn, &frames, 600, true);
        }
        let before = dec.solves;
        dec.on_repair(3_300, &[(3_201, 10)], &[1u8; 10], |pn| pn == 3_201);
        dec.solve(|pn| pn == 3_201, |_, _| {});
        assert_eq!(dec.solves, before + 1);
    }

    #[test]
    fn a_repair_of_packets_that_all_arrived_is_not_kept() {
        let mut dec = RepairDecoder::default();
        dec.on_repair(5, &[(3, 100), (4, 100)], &[7; 100], |_| false);
        assert!(dec.is_active(), "the peer codes");
        assert!(dec.pending.is_empty(), "nothing it could rebuild");
        dec.on_repair(6, &[(4, 100), (5, 100)], &[7; 100], |pn| pn == 4);
        assert_eq!(dec.pending.len(), 1, "one it covers is missing: kept");
    }

    /// A peer decides how long its packets are, not how much the receiver keeps: however it
    /// mixes lengths, the decoder's ring stays within 5/4 of `KEPT` packets of the longest
    /// length kept (half an MTU), plus one, and longer packets are not kept at all.
    #[test]
    fn a_peer_cannot_grow_the_decoders_ring_past_its_bound() {
        const MAX_LEN: usize = 600;
        let mut dec = RepairDecoder::default();
        dec.on_repair(0, &[(0, 10)], &[7; 10], |_| true);
        let bound = KEPT * MAX_LEN + KEPT * MAX_LEN / 4 + MAX_LEN;
        let mut x: u64 = 1;
        for pn in 1..20_000u64 {
            // A repair now and then keeps the decoder active; lengths jump about.
            if pn % 8 == 0 {
                dec.on_repair_seen();
            }
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let len = match x >> 62 {
                0 => 0,
                1 => (x >> 32) as usize % 64,
                2 => MAX_LEN,
                _ => 4 * MAX_LEN, // not kept
            };
            dec.on_received(pn, &vec![pn as u8; len], MAX_LEN, true);
            assert!(dec.is_active());
            assert!(
                dec.kept.bytes.len() <= bound,
                "ring of {} bytes after packet {pn}",
                dec.kept.bytes.len()
            );
        }
        assert_eq!(dec.kept.entries.len(), KEPT);
    }

    #[test]
    fn a_receiver_lets_go_of_kept_packets_once_the_peer_stops_coding() {
        let mut dec = RepairDecoder::default();
        dec.on_received(0, &[1; 100], 600, true);
        assert!(
            dec.kept.entries.is_empty(),
            "nothing kept before the first repair"
        );
        dec.on_repair(1, &[(0, 100)], &[7; 100], |_| true);
        for pn in 2..2 + KEPT as u64 {
            dec.on_received(pn, &[1; 100], 600, true);
        }
        assert_eq!(dec.kept.entries.len(), KEPT);
        dec.on_received(99, &[1; 601], 600, true);
        assert!(
            !dec.kept.contains(99),
            "a packet longer than any honest repair covers is not kept"
        );
        for pn in 100..100 + 2 * KEPT as u64 {
            dec.on_received(pn, &[1; 100], 600, true);
        }
        assert!(!dec.active && dec.kept.entries.is_empty() && dec.pending.is_empty());
        assert_eq!(dec.kept.bytes.capacity(), 0, "kept frames given back");
        assert_eq!(dec.spare.capacity(), 0, "buffers given back");
    }

    /// Pushes packets of these lengths into a log of `N`, checking after each that it gives
    /// back exactly the last `N` packets' frames, and that its ring is at most 5/4 of the
    /// most it has had to hold, plus the longest packet.
    fn check_frame_log<const N: usize>(
        lens: &[usize],
    ) -> Result<(), proptest::test_runner::TestCaseError> {
        let mut log = FrameLog::<N, Instant>::default();
        let mut model: VecDeque<(u64, Vec<u8>)> = VecDeque::new();
        let (mut most, mut longest) = (0, 0);
        for (pn, &len) in lens.iter().enumerate() {
            let frames: Vec<u8> = (0..len).map(|i| (pn * 31 + i) as u8).collect();
            log.push(pn as u64, Instant::from_micros(pn as u64), &frames);
            if model.len() == N {
                model.pop_front();
            }
            model.push_back((pn as u64, frames));
            let got: Vec<(u64, Vec<u8>)> = log.iter().map(|(p, _, f)| (p, f.to_vec())).collect();
            proptest::prop_assert_eq!(&got, &model.iter().cloned().collect::<Vec<_>>());
            most = most.max(model.iter().map(|(_, f)| f.len()).sum::<usize>());
            longest = longest.max(len);
            proptest::prop_assert!(log.bytes.len() <= (most + most / 4 + longest).max(64));
        }
        Ok(())
    }

    proptest::proptest! {
        /// The encoder's log and the decoder's keep what they should in a bounded ring,
        /// whatever the packets' lengths (mixed, so that packets wrap and the ring grows).
        #[test]
        fn a_frame_log_keeps_the_last_packets_in_a_bounded_ring(
            lens in proptest::collection::vec(
                proptest::prop_oneof![0usize..8, 0usize..100, 0usize..600],
                1..300,
            ),
        ) {
            check_frame_log::<COVERAGE>(&lens)?;
            check_frame_log::<KEPT>(&lens)?;
        }
    }
}
