//! The one network every library runs over: a priority queue of datagrams with arrival
//! times in virtual microseconds, seeded loss and a fixed one-way delay.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

/// A node of the simulated network: 0 is the server, `i + 1` is client `i`.
pub type Node = usize;

/// The server's node.
pub const SERVER: Node = 0;

/// SplitMix64: small, seeded, the same stream on every machine.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// A generator whose stream depends only on `seed`.
    pub fn new(seed: u64) -> Self {
        Rng(seed ^ 0x9e37_79b9_7f4a_7c15)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        p > 0.0 && (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64 <= p
    }
}

/// A datagram a library handed to the network.
#[derive(Clone, Debug)]
pub struct Datagram {
    /// The sending node.
    pub from: Node,
    /// The receiving node.
    pub to: Node,
    /// The bytes.
    pub bytes: Vec<u8>,
}

/// A datagram on the wire: arrival time, send order (ties), from, to, bytes.
type InFlight = (u64, u64, Node, Node, Vec<u8>);

/// Independent loss with probability `loss` in each direction and a fixed one-way `delay_us`.
pub struct Link {
    loss: f64,
    delay_us: u64,
    rng: Rng,
    counter: u64,
    queue: BinaryHeap<Reverse<InFlight>>,
    /// Datagrams handed to the link.
    pub sent: u64,
    /// Datagrams the link dropped.
    pub dropped: u64,
    /// Bytes handed to the link (UDP payload).
    pub bytes: u64,
}

impl Link {
    /// A link with the given loss, delay and seed.
    pub fn new(loss: f64, delay_us: u64, seed: u64) -> Self {
        Link {
            loss,
            delay_us,
            rng: Rng::new(seed),
            counter: 0,
            queue: BinaryHeap::new(),
            sent: 0,
            dropped: 0,
            bytes: 0,
        }
    }

    /// Puts a datagram on the wire at `now`.
    pub fn push(&mut self, now: u64, d: Datagram) {
        self.sent += 1;
        self.bytes += d.bytes.len() as u64;
        if self.rng.chance(self.loss) {
            self.dropped += 1;
            return;
        }
        self.counter += 1;
        self.queue.push(Reverse((
            now + self.delay_us,
            self.counter,
            d.from,
            d.to,
            d.bytes,
        )));
    }

    /// The next datagram that has arrived by `now`, in arrival order (ties in send order).
    pub fn pop_due(&mut self, now: u64) -> Option<Datagram> {
        if self.next_arrival()? > now {
            return None;
        }
        let Reverse((_, _, from, to, bytes)) = self.queue.pop()?;
        Some(Datagram { from, to, bytes })
    }

    /// When the next datagram arrives.
    pub fn next_arrival(&self) -> Option<u64> {
        self.queue.peek().map(|Reverse((at, ..))| *at)
    }
}
