//! The scenarios: each builds a world, runs it, checks every message and returns figures.

use std::collections::HashSet;
use std::hash::{BuildHasherDefault, Hasher};
use std::time::Instant;

use crate::adapters::{Channel, Lib, SendError, Stack};
use crate::harness::{App, Outcome, World};
use crate::link::{Link, Node, SERVER};
use crate::msg::{self, MESSAGE_SIZE};

const MS: u64 = 1_000;
const S: u64 = 1_000_000;

/// Checks ordered delivery of one sender's stream at one receiver.
struct OrderedCheck {
    sender: u32,
    next: u32,
}

impl OrderedCheck {
    fn check(&mut self, from: Node, channel: Channel, bytes: &[u8]) -> Result<msg::Header, String> {
        if channel != Channel::Ordered {
            return Err(format!("ordered message arrived as {channel:?}"));
        }
        let h = msg::decode(bytes)?;
        if h.sender != self.sender || from != self.sender as Node {
            return Err(format!(
                "message from sender {} (node {from}), expected {}",
                h.sender, self.sender
            ));
        }
        if h.seq != self.next {
            return Err(format!(
                "message {} arrived, expected {} (order)",
                h.seq, self.next
            ));
        }
        self.next += 1;
        Ok(h)
    }
}

fn send_one(
    stack: &mut dyn Stack,
    from: Node,
    to: Node,
    channel: Channel,
    seq: u32,
    now: u64,
) -> Result<bool, String> {
    let mut buf = [0u8; MESSAGE_SIZE];
    let sender = if from == SERVER { 0 } else { from as u32 };
    msg::encode(&mut buf, sender, seq, now);
    match stack.send(from, to, channel, &buf) {
        Ok(()) => Ok(true),
        Err(SendError::WouldBlock) => Ok(false),
        Err(SendError::Unsupported(why)) => Err(format!("unsupported: {why}")),
        Err(e) => Err(format!("send refused: {e:?}")),
    }
}

/// Figures of one bulk run.
#[derive(Clone, Debug)]
pub struct Bulk {
    /// Messages per second of wall time.
    pub msgs_per_s: f64,
    /// Virtual time to deliver all.
    pub virtual_s: f64,
    /// Wire bytes (both ways) per message.
    pub wire_per_msg: f64,
}

struct BulkApp {
    total: u32,
    sent: u32,
    per_tick: u32,
    check: OrderedCheck,
}

impl App for BulkApp {
    fn tick(&mut self, now: u64, stack: &mut dyn Stack) -> Outcome {
        let stop = (self.sent + self.per_tick).min(self.total);
        while self.sent < stop {
            if !send_one(stack, 1, SERVER, Channel::Ordered, self.sent, now)? {
                break;
            }
            self.sent += 1;
        }
        Ok(())
    }

    fn on_message(
        &mut self,
        _now: u64,
        at: Node,
        from: Node,
        channel: Channel,
        bytes: &[u8],
    ) -> Result<Option<[u8; MESSAGE_SIZE]>, String> {
        if at != SERVER {
            return Err("the client received a message".into());
        }
        self.check.check(from, channel, bytes)?;
        Ok(None)
    }

    fn done(&self) -> bool {
        self.check.next == self.total
    }
}

/// `total` 32-byte ordered messages from one client, up to 1,000 queued per 1 ms tick, over
/// a lossless zero-delay link.
pub fn bulk(lib: Lib, total: u32, seed: u64) -> Result<Bulk, String> {
    let mut w = World::new(lib.build(1, seed, 0, false), Link::new(0.0, 0, seed), 1);
    w.connect(MS, 10 * S)?;
    let (bytes0, t0) = (w.link.bytes, w.now);
    let mut app = BulkApp {
        total,
        sent: 0,
        per_tick: 1000,
        check: OrderedCheck { sender: 1, next: 0 },
    };
    let started = Instant::now();
    w.run(MS, w.now + 300 * S, &mut app)?;
    let wall = started.elapsed().as_secs_f64();
    Ok(Bulk {
        msgs_per_s: total as f64 / wall,
        virtual_s: (w.now - t0) as f64 / 1e6,
        wire_per_msg: (w.link.bytes - bytes0) as f64 / total as f64,
    })
}

/// Figures of one lossy run.
#[derive(Clone, Debug)]
pub struct Lossy {
    /// Messages sent.
    pub sent: u32,
    /// Latencies (virtual µs) of the messages delivered, sorted.
    pub latencies: Vec<u64>,
    /// Wire bytes (both ways) over payload bytes.
    pub wire_ratio: f64,
}

struct LossyApp {
    total: u32,
    sent: u32,
    burst: u32,
    every_us: u64,
    next_at: u64,
    check: OrderedCheck,
    latencies: Vec<u64>,
}

impl App for LossyApp {
    fn tick(&mut self, now: u64, stack: &mut dyn Stack) -> Outcome {
        if now >= self.next_at && self.sent < self.total {
            self.next_at += self.every_us;
            for _ in 0..self.burst.min(self.total - self.sent) {
                if !send_one(stack, 1, SERVER, Channel::Ordered, self.sent, now)? {
                    return Err(format!("send queue full at message {}", self.sent));
                }
                self.sent += 1;
            }
        }
        Ok(())
    }

    fn on_message(
        &mut self,
        now: u64,
        at: Node,
        from: Node,
        channel: Channel,
        bytes: &[u8],
    ) -> Result<Option<[u8; MESSAGE_SIZE]>, String> {
        if at != SERVER {
            return Err("the client received a message".into());
        }
        let h = self.check.check(from, channel, bytes)?;
        self.latencies.push(now - h.sent_us);
        Ok(None)
    }

    fn done(&self) -> bool {
        self.check.next == self.total
    }
}

/// 16 x 32-byte ordered messages per 16 ms for `seconds`, 10% loss each way, 50 ms one way.
pub fn lossy(lib: Lib, seconds: u64, seed: u64) -> Result<Lossy, String> {
    let mut w = World::new(
        lib.build(1, seed, 0, false),
        Link::new(0.10, 50 * MS, seed),
        1,
    );
    w.connect(MS, 30 * S)?;
    let bytes0 = w.link.bytes;
    let every_us = 16 * MS;
    let total = (seconds * S / every_us) as u32 * 16;
    let mut app = LossyApp {
        total,
        sent: 0,
        burst: 16,
        every_us,
        next_at: w.now,
        check: OrderedCheck { sender: 1, next: 0 },
        latencies: Vec::with_capacity(total as usize),
    };
    let deadline = w.now + (seconds + 60) * S;
    w.run(MS, deadline, &mut app).map_err(|e| {
        format!(
            "{e}: {} of {} delivered in order",
            app.latencies.len(),
            app.total
        )
    })?;
    let mut latencies = app.latencies;
    latencies.sort_unstable();
    Ok(Lossy {
        sent: total,
        latencies,
        wire_ratio: (w.link.bytes - bytes0) as f64 / (total as f64 * MESSAGE_SIZE as f64),
    })
}

/// Figures of one many-clients run (one process).
#[derive(Clone, Debug)]
pub struct Many {
    /// Messages the clients sent.
    pub sent: u64,
    /// Messages the server received (and echoed).
    pub at_server: u64,
    /// Echoes the clients received.
    pub echoed: u64,
    /// Wall seconds spent in the server's calls during the message phase.
    pub server_s: f64,
    /// Peak resident memory of the process (KiB), clients included.
    pub peak_rss_kib: u64,
    /// Datagrams on the link (both ways) during the message phase.
    pub datagrams: u64,
}

struct ManyApp {
    clients: usize,
    end: u64,
    drain_until: u64,
    seq: Vec<u32>,
    sent: u64,
    at_server: u64,
    echoed: u64,
    /// Messages the server has and whose echo has not come back, as sender << 32 | seq.
    seen: HashSet<u64, BuildHasherDefault<Mix>>,
}

/// A cheap hash for the checker's keys (SipHash was 6-8% of shoal-plain's server time,
/// the same absolute cost for every library).
#[derive(Default)]
struct Mix(u64);

impl Hasher for Mix {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }

    fn write_u64(&mut self, x: u64) {
        // MurmurHash3's finalizer: every input bit reaches every output bit.
        let mut x = self.0 ^ x;
        x ^= x >> 33;
        x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
        x ^= x >> 33;
        x = x.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        self.0 = x ^ (x >> 33);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

fn key(sender: u32, seq: u32) -> u64 {
    u64::from(sender) << 32 | u64::from(seq)
}

const MANY_TICK: u64 = 10 * MS;
const MANY_PERIOD: u64 = 50 * MS;

impl App for ManyApp {
    fn tick(&mut self, now: u64, stack: &mut dyn Stack) -> Outcome {
        if now >= self.end {
            return Ok(());
        }
        // Client i sends in the 10 ms slot (i mod 5) of every 50 ms.
        let slot = (now % MANY_PERIOD) / MANY_TICK;
        let slots = (MANY_PERIOD / MANY_TICK) as usize;
        for i in (slot as usize..self.clients).step_by(slots) {
            if send_one(stack, i + 1, SERVER, Channel::Unreliable, self.seq[i], now)? {
                self.seq[i] += 1;
                self.sent += 1;
            }
        }
        Ok(())
    }

    fn on_message(
        &mut self,
        _now: u64,
        at: Node,
        from: Node,
        channel: Channel,
        bytes: &[u8],
    ) -> Result<Option<[u8; MESSAGE_SIZE]>, String> {
        if channel != Channel::Unreliable {
            return Err(format!("unreliable message arrived as {channel:?}"));
        }
        let h = msg::decode(bytes)?;
        if at == SERVER {
            if h.sender as Node != from {
                return Err(format!(
                    "server: message of {} arrived from {from}",
                    h.sender
                ));
            }
            if !self.seen.insert(key(h.sender, h.seq)) {
                return Err(format!("server: message {} of {} twice", h.seq, h.sender));
            }
            self.at_server += 1;
            let mut echo = [0u8; MESSAGE_SIZE];
            echo.copy_from_slice(bytes);
            Ok(Some(echo))
        } else {
            if h.sender as Node != at || from != SERVER {
                return Err(format!(
                    "client {at}: echo of client {}'s message",
                    h.sender
                ));
            }
            if !self.seen.remove(&key(h.sender, h.seq)) {
                return Err(format!(
                    "client {at}: echo of {} twice or never sent",
                    h.seq
                ));
            }
            self.echoed += 1;
            Ok(None)
        }
    }

    fn done(&self) -> bool {
        false
    }
}

/// `clients` clients each send one 32-byte unreliable message per 50 ms for `seconds` of
/// virtual time over a lossless link with 1 ms one way; the server echoes each. The
/// server's calls are timed.
pub fn many(lib: Lib, clients: usize, seconds: u64, seed: u64) -> Result<Many, String> {
    let mut w = World::new(
        lib.build(clients, seed, 0, true),
        Link::new(0.0, MS, seed),
        clients,
    );
    // The probe: a library without an unreliable channel says so before anyone connects.
    if let Some(why) = w.stack.unsupported(Channel::Unreliable) {
        return Err(format!("unsupported: {why}"));
    }
    w.connect(MS, 30 * S)?;
    w.server_time = std::time::Duration::ZERO;
    let datagrams0 = w.link.sent;
    let start = w.now;
    let mut app = ManyApp {
        clients,
        end: start + seconds * S,
        drain_until: start + seconds * S + 500 * MS,
        seq: vec![0; clients],
        sent: 0,
        at_server: 0,
        echoed: 0,
        seen: HashSet::default(),
    };
    while w.now < app.drain_until {
        w.step(MANY_TICK, &mut app)?;
    }
    Ok(Many {
        sent: app.sent,
        at_server: app.at_server,
        echoed: app.echoed,
        server_s: w.server_time.as_secs_f64(),
        peak_rss_kib: peak_rss_kib(),
        datagrams: w.link.sent - datagrams0,
    })
}

/// VmHWM of this process, in KiB (0 where /proc is missing).
pub fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}
