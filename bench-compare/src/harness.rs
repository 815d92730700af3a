//! Drives a [`Stack`] through the [`Link`] in virtual time, or through loopback UDP sockets
//! in real time, handing every received message to an [`App`] that checks it.

use std::time::{Duration, Instant};

use crate::adapters::{Channel, Stack};
use crate::link::{Datagram, Link, Node, SERVER};
use crate::msg::MESSAGE_SIZE;

/// What a scenario does with the messages it receives.
pub trait App {
    /// Sends what is due at `now`.
    fn tick(&mut self, now: u64, stack: &mut dyn Stack) -> Result<(), String>;
    /// `at` received `bytes` from `from`; a returned message goes back to `from` on the same
    /// channel. An error is a failed check.
    fn on_message(
        &mut self,
        now: u64,
        at: Node,
        from: Node,
        channel: Channel,
        bytes: &[u8],
    ) -> Result<Option<[u8; MESSAGE_SIZE]>, String>;
    /// Whether the scenario has seen everything it waits for.
    fn done(&self) -> bool;
}

/// A stack on a link, with a virtual clock and the server's share of wall time.
pub struct World {
    /// The library.
    pub stack: Box<dyn Stack>,
    /// The network.
    pub link: Link,
    /// Virtual microseconds.
    pub now: u64,
    /// Clients.
    pub clients: usize,
    /// Wall time spent in the server's calls (datagrams in, polls, sends).
    pub server_time: Duration,
    out: Vec<Datagram>,
}

/// Rounds of delivery at one instant (a zero-delay link needs a few: data, then its ack).
const ROUNDS: usize = 8;

/// A scenario that never connects (e.g. a missing channel) or never finishes.
pub type Outcome = Result<(), String>;

impl World {
    /// A world at virtual time 0.
    pub fn new(stack: Box<dyn Stack>, link: Link, clients: usize) -> Self {
        World {
            stack,
            link,
            now: 0,
            clients,
            server_time: Duration::ZERO,
            out: Vec::new(),
        }
    }

    /// Polls `node` once, puts its datagrams on the link, answers its messages through `app`.
    fn poll_node(&mut self, node: Node, app: &mut dyn App) -> Outcome {
        let now = self.now;
        let mut failure = None;
        let started = (node == SERVER).then(Instant::now);
        let stack = &mut self.stack;
        let out = &mut self.out;
        let mut call = || {
            stack.poll(now, node, out, &mut |from, channel, bytes| match app
                .on_message(now, node, from, channel, bytes)
            {
                Ok(reply) => reply,
                Err(e) => {
                    failure.get_or_insert(e);
                    None
                }
            })
        };
        if node == SERVER {
            server_side(call);
        } else {
            call();
        }
        if let Some(t) = started {
            self.server_time += t.elapsed();
        }
        for d in self.out.drain(..) {
            self.link.push(now, d);
        }
        failure.map_or(Ok(()), Err)
    }

    /// One tick at `self.now`: the app sends, then datagrams and polls until the instant is
    /// quiet; then the clock moves on by `tick_us`.
    pub fn step(&mut self, tick_us: u64, app: &mut dyn App) -> Outcome {
        app.tick(self.now, self.stack.as_mut())?;
        for _ in 0..ROUNDS {
            while let Some(d) = self.link.pop_due(self.now) {
                let started = (d.to == SERVER).then(Instant::now);
                if d.to == SERVER {
                    server_side(|| self.stack.handle_datagram(self.now, d.from, d.to, &d.bytes));
                } else {
                    self.stack.handle_datagram(self.now, d.from, d.to, &d.bytes);
                }
                if let Some(t) = started {
                    self.server_time += t.elapsed();
                }
            }
            for node in 0..=self.clients {
                self.poll_node(node, app)?;
            }
            if self.link.next_arrival().is_none_or(|t| t > self.now) {
                break;
            }
        }
        self.now += tick_us;
        Ok(())
    }

    /// Steps until `app` is done, failing at virtual time `deadline`.
    pub fn run(&mut self, tick_us: u64, deadline: u64, app: &mut dyn App) -> Outcome {
        while !app.done() {
            if self.now > deadline {
                return Err(format!(
                    "not done after {:.1} s of virtual time",
                    deadline as f64 / 1e6
                ));
            }
            self.step(tick_us, app)?;
        }
        Ok(())
    }

    /// Steps until every client is connected.
    pub fn connect(&mut self, tick_us: u64, timeout_us: u64) -> Outcome {
        let deadline = self.now + timeout_us;
        let mut idle = Idle;
        while self.stack.connected() < self.clients {
            if self.now > deadline {
                return Err(format!(
                    "{} of {} clients connected after {:.1} s",
                    self.stack.connected(),
                    self.clients,
                    timeout_us as f64 / 1e6
                ));
            }
            self.step(tick_us, &mut idle)?;
        }
        Ok(())
    }
}

/// An app that sends nothing and receives nothing (while connecting).
pub struct Idle;

impl App for Idle {
    fn tick(&mut self, _now: u64, _stack: &mut dyn Stack) -> Outcome {
        Ok(())
    }

    fn on_message(
        &mut self,
        _now: u64,
        _at: Node,
        _from: Node,
        _channel: Channel,
        _bytes: &[u8],
    ) -> Result<Option<[u8; MESSAGE_SIZE]>, String> {
        Err("a message before anyone sent one".into())
    }

    fn done(&self) -> bool {
        true
    }
}

/// Runs a call of the server's, under a name a profiler can pick out of a stack.
#[inline(never)]
fn server_side<R>(call: impl FnOnce() -> R) -> R {
    // Not a tail call, which would leave this frame out of the stack.
    std::hint::black_box(call())
}
