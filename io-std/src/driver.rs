//! [`Driver`]: one `std::net::UdpSocket`, one endpoint, one clock.

use std::io;
use std::net::{SocketAddr, ToSocketAddrs, UdpSocket};
use std::ops::{Deref, DerefMut};
use std::time::Duration;

use shoal_proto::{Config, Instant};

use crate::clock::Clock;
use crate::driver_core::DriverCore;
use crate::recv_batch::IoMode;

/// Most datagrams one [`Driver::update`] reads before it moves on to timers and sending, so
/// a flood cannot hold a game frame hostage. The rest wait in the socket for the next call.
/// (Counted in receive slots: with GRO one slot may hold a train of up to 64 datagrams, so
/// the last read may go past it by at most [`RECV_BATCH`](crate::RECV_BATCH) × 63.)
pub const MAX_DATAGRAMS_PER_UPDATE: usize = 4096;

/// How long [`Driver::poll`] waits at most while a datagram waits for room in the socket's
/// send buffer (a blocking `std` socket cannot wait for "writable" and "readable" at once).
pub const BLOCKED_SEND_RETRY: Duration = Duration::from_millis(1);

/// A Shoal endpoint on a `std::net::UdpSocket`.
///
/// The socket is non-blocking. Two ways to drive it:
///
/// - **A game's frame loop**: call [`update`](Self::update) once per frame. It never blocks:
///   it reads every datagram waiting, runs the timers that are due and sends what is queued.
/// - **A blocking loop**: call [`poll`](Self::poll). It sleeps until a datagram arrives, the
///   endpoint's next timer is due or the given timeout passes, then does what `update` does.
///
/// In both, queue work with [`connect`](DriverCore::connect), [`send`](DriverCore::send) and
/// friends (or on [`endpoint_mut`](DriverCore::endpoint_mut) with
/// [`now`](DriverCore::now)), then drain [`poll_event`](DriverCore::poll_event) or
/// [`events`](DriverCore::events). Queued messages leave at the next `update`, `poll` or
/// [`flush`](Self::flush).
///
/// Those commands, the getters (`local_addr`, `endpoint`, `stats`, ...) and the events are
/// [`DriverCore`]'s, shared with `shoal-mio`: a `Driver` dereferences to its core, so they
/// are called as `driver.send(..)` like its own methods.
///
/// Reads and sends are one `recv_from` or `send_to` per datagram ([`IoMode::Portable`], the
/// default); [`bind_with`](Self::bind_with) with [`IoMode::Batched`] reads up to
/// [`RECV_BATCH`](crate::RECV_BATCH) datagrams per `recvmmsg` and sends up to
/// [`SEND_BATCH`](crate::SEND_BATCH) per `sendmmsg`, on Linux (on Android, batched reads
/// and one `send_to` per datagram).
/// [`io_mode`](DriverCore::io_mode) tells which is in effect.
///
/// Buffers are allocated once, at [`bind`](Self::bind): a 64 KiB receive buffer, a
/// transmit buffer of `Config::mtu` bytes, and in batched mode `RECV_BATCH` receive slots of
/// 64 KiB (2 MiB of address space, of which only the pages datagrams were written to are
/// backed by memory) and `SEND_BATCH` transmit slots of `Config::mtu` bytes.
///
/// # The seed
///
/// If `Config::seed` is zero, `bind` replaces it with a seed derived from OS randomness (see
/// the crate docs); a non-zero seed is used as given, which makes tests reproducible. A
/// missing `Config::secret_seed` is drawn from the OS random source.
#[derive(Debug)]
pub struct Driver {
    socket: UdpSocket,
    core: DriverCore,
}

impl Driver {
    /// Binds a UDP socket to `addr` (port 0 picks a free port) and creates the endpoint.
    ///
    /// Fails with `InvalidInput` if `config` is invalid (the [`shoal_proto::ConfigError`] is
    /// the error's inner error), or with the OS error if the socket cannot be bound.
    pub fn bind(addr: impl ToSocketAddrs, config: Config) -> io::Result<Self> {
        Self::bind_with(addr, config, IoMode::default())
    }

    /// [`bind`](Self::bind), reading and writing the socket as `io_mode` says
    /// (`IoMode::Batched`: up to [`RECV_BATCH`](crate::RECV_BATCH) datagrams per read and
    /// [`SEND_BATCH`](crate::SEND_BATCH) per send, one system call each, on Linux; batched
    /// reads only on Android).
    pub fn bind_with(
        addr: impl ToSocketAddrs,
        config: Config,
        io_mode: IoMode,
    ) -> io::Result<Self> {
        Self::from_socket_with(crate::io_util::bind(addr)?, config, io_mode)
    }

    /// Wraps a socket the caller bound (e.g. with options set through another crate). The
    /// socket is switched to non-blocking mode.
    pub fn from_socket(socket: UdpSocket, config: Config) -> io::Result<Self> {
        Self::from_socket_with(socket, config, IoMode::default())
    }

    /// [`from_socket`](Self::from_socket), reading and writing the socket as `io_mode` says.
    pub fn from_socket_with(
        socket: UdpSocket,
        config: Config,
        io_mode: IoMode,
    ) -> io::Result<Self> {
        socket.set_nonblocking(true)?;
        let mut core = DriverCore::new(socket.local_addr()?, config)?;
        core.set_dual_stack(crate::io_util::is_dual_stack(&socket));
        core.set_io_mode(io_mode, &socket);
        Ok(Driver { socket, core })
    }

    // ------------------------------------------------------------------ driving

    /// Does everything that can be done without waiting: reads the datagrams waiting in the
    /// socket (up to [`MAX_DATAGRAMS_PER_UPDATE`]), runs the timers that are due and sends
    /// what the endpoint has queued. Never blocks.
    ///
    /// Errors are the socket's own failures; per-peer trouble (ICMP errors, an unreachable
    /// destination) is counted in [`stats`](DriverCore::stats) and skipped.
    pub fn update(&mut self) -> io::Result<()> {
        self.receive_waiting(MAX_DATAGRAMS_PER_UPDATE)?;
        self.run_due();
        Ok(())
    }

    /// Closes `conn`, telling the peer with `code`, and sends the notice at once (it does not
    /// wait for the next `update`). Emits `Disconnected { reason: ClosedLocally }`
    /// (`ConnectFailed` for an attempt that had not connected yet).
    pub fn disconnect(&mut self, conn: shoal_proto::ConnectionHandle, code: u16) {
        self.core.disconnect(conn, code);
        self.flush();
    }

    /// Sends what is queued now (e.g. right after `send`, without waiting for the next
    /// `update`). Never blocks; if the socket is full, the rest leaves on a later call.
    pub fn flush(&mut self) {
        let now = self.core.now();
        self.flush_at(now);
    }

    /// Sends what is queued, then blocks until a datagram arrives, the endpoint's next timer
    /// is due, or `timeout` passes (`None`: no limit besides the endpoint's timers), and then
    /// does what [`update`](Self::update) does: [`MAX_DATAGRAMS_PER_UPDATE`] bounds the
    /// datagrams it reads in all, the wake-up's and the ones waiting after it.
    ///
    /// It returns after one wake-up (a signal interrupting the wait is one), so call it in a
    /// loop and drain the events in between.
    /// With no connections and `timeout == None` it sleeps until a datagram arrives.
    pub fn poll(&mut self, timeout: Option<Duration>) -> io::Result<()> {
        self.poll_within(timeout, MAX_DATAGRAMS_PER_UPDATE)
    }

    // ------------------------------------------------------------------ internals

    /// [`poll`](Self::poll), reading at most `budget` datagrams.
    fn poll_within(&mut self, timeout: Option<Duration>, budget: usize) -> io::Result<()> {
        let now = self.core.now();
        self.flush_at(now);
        let mut wait = self
            .core
            .endpoint()
            .poll_timeout()
            .map(|deadline| Clock::until(now, deadline));
        if let Some(t) = timeout {
            wait = Some(wait.map_or(t, |w| w.min(t)));
        }
        if self.core.is_send_blocked() {
            wait = Some(wait.map_or(BLOCKED_SEND_RETRY, |w| w.min(BLOCKED_SEND_RETRY)));
        }
        let mut read = 0;
        if wait != Some(Duration::ZERO) {
            read = self.receive_blocking(wait, budget)?;
        }
        self.receive_waiting(budget.saturating_sub(read))?;
        self.run_due();
        Ok(())
    }

    /// Runs the timers that are due and sends what is queued.
    fn run_due(&mut self) {
        let now = self.core.now();
        self.core.handle_timeout(now);
        self.flush_at(now);
    }

    /// Lets the background thread mark its wake-up datagrams.
    pub(crate) fn set_wake_source(&mut self, from: SocketAddr) {
        self.core.wake_from = Some(from);
    }

    /// Whether the socket is connected to one peer: the kernel then drops datagrams from
    /// anyone else, a background thread's wake-ups included.
    pub(crate) fn is_socket_connected(&self) -> bool {
        self.socket.peer_addr().is_ok()
    }

    #[cfg(test)]
    pub(crate) fn socket_for_tests(&self) -> &UdpSocket {
        &self.socket
    }

    fn flush_at(&mut self, now: Instant) {
        let socket = &self.socket;
        // A full send buffer is not an error: `poll` retries soon, `update` next frame.
        self.core
            .flush_batch(now, socket, |d, to| socket.send_to(d, to));
    }

    /// Waits up to `wait` (`None`: forever) for a datagram and hands it to the endpoint (in
    /// batched mode, what is waiting then, up to `budget`). Returns how many were read.
    fn receive_blocking(&mut self, wait: Option<Duration>, budget: usize) -> io::Result<usize> {
        if self.core.io_mode() == IoMode::Batched {
            // A batched socket takes trains of datagrams (GRO), which only a batched read
            // cuts up again: wait until there is something to read, then read that way.
            if crate::recv_batch::wait_readable(&self.socket, wait)? {
                return self.receive_waiting(budget);
            }
            return Ok(0);
        }
        self.socket.set_nonblocking(false)?;
        let set = self.socket.set_read_timeout(wait);
        let received = set.and_then(|()| self.read_one());
        // Back to non-blocking whatever happened, so `update` can never block.
        let restored = self.socket.set_nonblocking(true);
        let read = usize::from(received?);
        restored.map(|()| read)
    }

    /// Reads what is waiting, up to `budget` datagrams, without blocking. Returns how many
    /// were read.
    fn receive_waiting(&mut self, budget: usize) -> io::Result<usize> {
        let mut left = budget;
        while left > 0 {
            let socket = &self.socket;
            let read = self
                .core
                .receive_batch(None, left, socket, |buf| socket.recv_from(buf))?;
            if read == 0 {
                break;
            }
            left = left.saturating_sub(read);
        }
        Ok(budget - left)
    }

    /// Reads one datagram (blocking or not, as the socket is set) and hands it to the
    /// endpoint. `Ok(false)` when none was waiting.
    fn read_one(&mut self) -> io::Result<bool> {
        let socket = &self.socket;
        self.core.receive_one(None, |buf| socket.recv_from(buf))
    }
}

/// A dropped driver closes its connections and sends the notices first (waiting at most
/// [`DROP_LINGER`](crate::DROP_LINGER) for a full socket): its peers learn at once, not at
/// their idle timeout.
impl Drop for Driver {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // (Unwinding from a panic, perhaps the endpoint's: calling into it again could
            // panic twice and abort the process.)
            return;
        }
        let socket = &self.socket;
        self.core.close_all(|d, to| socket.send_to(d, to));
    }
}

/// The commands, getters and events shared with `shoal-mio`: `driver.send(..)`,
/// `driver.poll_event()`, `driver.stats()`, ...
impl Deref for Driver {
    type Target = DriverCore;

    fn deref(&self) -> &DriverCore {
        &self.core
    }
}

impl DerefMut for Driver {
    fn deref_mut(&mut self) -> &mut DriverCore {
        &mut self.core
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `poll` reads at most its budget in all: the datagrams its wait ends on and the ones
    /// waiting after it (it once read a budget for each, twice the documented bound).
    #[test]
    fn a_poll_reads_at_most_its_budget_of_datagrams() {
        for mode in [IoMode::Portable, IoMode::Batched] {
            let config = Config {
                seed: 7,
                ..Config::default()
            };
            let mut driver = Driver::bind_with("127.0.0.1:0", config, mode).expect("bind");
            let sender = UdpSocket::bind("127.0.0.1:0").expect("bind");
            for _ in 0..20 {
                sender.send_to(&[0xff], driver.local_addr()).expect("send");
            }
            let received = |d: &Driver| d.endpoint().stats().datagrams_received;
            driver
                .poll_within(Some(Duration::from_secs(5)), 8)
                .expect("poll");
            assert_eq!(received(&driver), 8, "{mode:?}");
            driver.update().expect("update");
            assert_eq!(received(&driver), 20, "{mode:?}: the rest waited");
        }
    }
}
