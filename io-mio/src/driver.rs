//! [`MioDriver`]: a Shoal endpoint whose socket lives in the caller's `mio::Poll`.

use std::io;
use std::net::ToSocketAddrs;
use std::ops::{Deref, DerefMut};
use std::time::Duration;

use mio::event::Source;
use mio::net::UdpSocket;
use mio::{Interest, Registry, Token};
use shoal_proto::{Config, Instant};
use shoal_std::{DriverCore, IoMode};

use crate::clock::Clock;

/// Most datagrams one call reads before it returns, so a flood on Shoal's socket cannot starve
/// the caller's other sources. What is left is not forgotten: [`MioDriver::next_timeout`]
/// returns zero until [`MioDriver::update`] has read it. (Counted in receive slots: with GRO
/// one slot may hold a train of up to 64 datagrams, so the last read may go past it by at
/// most [`RECV_BATCH`](shoal_std::RECV_BATCH) × 63.)
pub const MAX_DATAGRAMS_PER_CALL: usize = 4096;

/// The interest [`MioDriver::register`] registers with: readable for arriving datagrams,
/// writable to resume sending after the socket's send buffer was full.
pub const INTEREST: Interest = Interest::READABLE.add(Interest::WRITABLE);

/// A Shoal endpoint on a non-blocking `mio` UDP socket that the caller registers in its own
/// `mio::Poll`, under its own token.
///
/// # The loop
///
/// ```text
/// driver.register(poll.registry(), SHOAL)?;
/// loop {
///     poll.poll(&mut events, driver.next_timeout())?;     // (min with your own timers)
///     for event in events.iter() {
///         match event.token() {
///             SHOAL => driver.on_event(event)?,            // reads datagrams, resumes sending
///             _ => { /* your other sources */ }
///         }
///     }
///     // your commands: driver.send(..), driver.connect(..), ...
///     driver.update()?;                                    // timers due; send what is queued
///     while let Some(event) = driver.poll_event() { /* Connected, Message, ... */ }
/// }
/// ```
///
/// Call [`update`](Self::update) once per loop turn, after the events and your commands, and
/// pass [`next_timeout`](Self::next_timeout) to `Poll::poll` (or fold it into your own
/// timeout). mio is edge-triggered; the driver reads until the socket is empty (in batches
/// of [`MAX_DATAGRAMS_PER_CALL`]; up to [`RECV_BATCH`](shoal_std::RECV_BATCH) per system
/// call on Linux and Android if made with [`IoMode::Batched`]) and keeps the datagrams the
/// socket refused back when sending would block (one, or up to
/// [`SEND_BATCH`](shoal_std::SEND_BATCH) sent per `sendmmsg` in batched mode) until the
/// next writable event, so no readiness is lost.
///
/// The commands (`connect`, `send`, ...), the events (`poll_event`, `events`) and the
/// getters (`local_addr`, `endpoint`, `stats`, ...) are [`DriverCore`]'s, shared with
/// `shoal-std`: a `MioDriver` dereferences to its core, so they are called as
/// `driver.send(..)` like its own methods.
///
/// If `Config::seed` is zero, [`bind`](Self::bind) replaces it with a seed derived from OS
/// randomness (see the crate docs).
#[derive(Debug)]
pub struct MioDriver {
    socket: UdpSocket,
    core: DriverCore,
    /// A read stopped at the batch limit, not at `WouldBlock`: more may be waiting, and no
    /// new readable event will say so.
    read_pending: bool,
    read_batch: usize,
}

impl MioDriver {
    /// Binds a non-blocking UDP socket to `addr` (port 0 picks a free port) and creates the
    /// endpoint. Register it with [`register`](Self::register) before polling.
    ///
    /// Fails with `InvalidInput` if `config` is invalid (the [`shoal_proto::ConfigError`] is
    /// the error's inner error), or with the OS error if the socket cannot be bound.
    pub fn bind(addr: impl ToSocketAddrs, config: Config) -> io::Result<Self> {
        Self::bind_with(addr, config, IoMode::default())
    }

    /// [`bind`](Self::bind), reading and writing the socket as `io_mode` says
    /// (`IoMode::Batched`: up to [`RECV_BATCH`](shoal_std::RECV_BATCH) datagrams per read and
    /// [`SEND_BATCH`](shoal_std::SEND_BATCH) per send, one system call each, on Linux and
    /// Android).
    pub fn bind_with(
        addr: impl ToSocketAddrs,
        config: Config,
        io_mode: IoMode,
    ) -> io::Result<Self> {
        Self::from_std_with(shoal_std::io_util::bind(addr)?, config, io_mode)
    }

    /// Wraps a socket the caller bound (e.g. with options set through another crate). The
    /// socket is switched to non-blocking mode.
    pub fn from_std(socket: std::net::UdpSocket, config: Config) -> io::Result<Self> {
        Self::from_std_with(socket, config, IoMode::default())
    }

    /// [`from_std`](Self::from_std), reading and writing the socket as `io_mode` says.
    pub fn from_std_with(
        socket: std::net::UdpSocket,
        config: Config,
        io_mode: IoMode,
    ) -> io::Result<Self> {
        socket.set_nonblocking(true)?;
        let dual_stack = shoal_std::io_util::is_dual_stack(&socket);
        let socket = UdpSocket::from_std(socket);
        let mut core = DriverCore::new(socket.local_addr()?, config)?;
        core.set_dual_stack(dual_stack);
        core.set_io_mode(io_mode, &socket);
        Ok(MioDriver {
            socket,
            core,
            read_pending: false,
            read_batch: MAX_DATAGRAMS_PER_CALL,
        })
    }

    // ------------------------------------------------------------------ registration

    /// Registers the socket in `registry` under `token`, with [`INTEREST`].
    pub fn register(&mut self, registry: &Registry, token: Token) -> io::Result<()> {
        registry.register(&mut self.socket, token, INTEREST)
    }

    /// Moves the socket's registration to `token`.
    pub fn reregister(&mut self, registry: &Registry, token: Token) -> io::Result<()> {
        registry.reregister(&mut self.socket, token, INTEREST)
    }

    /// Removes the socket from `registry`.
    pub fn deregister(&mut self, registry: &Registry) -> io::Result<()> {
        registry.deregister(&mut self.socket)
    }

    // ------------------------------------------------------------------ getters

    /// How long the caller's `Poll::poll` may sleep before [`update`](Self::update) must run:
    /// until the endpoint's next timer, zero if one is due or datagrams may be waiting (a
    /// read stopped at its batch, or by an error: `update` reads on), `None` if nothing is
    /// scheduled (sleep until an event).
    pub fn next_timeout(&self) -> Option<Duration> {
        if self.read_pending {
            return Some(Duration::ZERO);
        }
        let now = self.core.clock().peek();
        self.core
            .endpoint()
            .poll_timeout()
            .map(|deadline| Clock::until(now, deadline))
    }

    // ------------------------------------------------------------------ driving

    /// Handles a readiness event for the token this driver is registered under: reads the
    /// waiting datagrams if it is readable (or reports an error), and resumes sending if it
    /// is writable. Errors are the socket's own failures.
    pub fn on_event(&mut self, event: &mio::event::Event) -> io::Result<()> {
        let now = std::time::Instant::now();
        // Sending first: a read error must not leave a writable edge unanswered.
        if event.is_writable() {
            self.handle_writable(now);
        }
        if event.is_readable() || event.is_error() {
            self.handle_readable(now)?;
        }
        Ok(())
    }

    /// Reads datagrams until the socket is empty (or [`MAX_DATAGRAMS_PER_CALL`] were read)
    /// and hands them to the endpoint, timestamped with `now` (from the caller's clock, so
    /// one reading can serve a whole loop turn).
    pub fn handle_readable(&mut self, now: std::time::Instant) -> io::Result<()> {
        let now = self.core.clock_mut().at(now);
        // Until the socket said WouldBlock, more may wait, and an edge-triggered poller
        // (mio on Windows re-arms only after WouldBlock) signals nothing new: after an error
        // `update` reads on.
        self.read_pending = true;
        let mut left = self.read_batch;
        while left > 0 {
            let socket = &self.socket;
            let read = self
                .core
                .receive_batch(Some(now), left, socket, |buf| socket.recv_from(buf))?;
            if read == 0 {
                // A read cut short by a run of ICMP reports is not an empty socket: read on
                // next turn (after WouldBlock only would the poller signal it again).
                self.read_pending = self.core.take_stopped_on_reports();
                return Ok(());
            }
            left = left.saturating_sub(read);
        }
        Ok(())
    }

    /// Sends the datagrams kept back after a `WouldBlock`, then the rest of what is queued.
    pub fn handle_writable(&mut self, now: std::time::Instant) {
        let now = self.core.clock_mut().at(now);
        self.flush_at(now);
    }

    /// Runs the endpoint's timers that are due at `now` (early or repeated calls are
    /// harmless).
    pub fn handle_timeout(&mut self, now: std::time::Instant) {
        let now = self.core.clock_mut().at(now);
        self.core.handle_timeout(now);
    }

    /// Closes `conn`, telling the peer with `code`, and sends the notice at once (it does not
    /// wait for the next `update`). Emits `Disconnected { reason: ClosedLocally }`
    /// (`ConnectFailed` for an attempt that had not connected yet).
    pub fn disconnect(&mut self, conn: shoal_proto::ConnectionHandle, code: u16) {
        self.core.disconnect(conn, code);
        self.flush();
    }

    /// Sends what the endpoint has queued (unless a datagram is waiting for a writable
    /// event). Never blocks.
    pub fn flush(&mut self) {
        let now = self.core.now();
        self.flush_at(now);
    }

    /// Once per loop turn, after the readiness events and the application's commands: reads
    /// what a batch-limited read left behind, runs the timers that are due and sends what is
    /// queued. Never blocks.
    pub fn update(&mut self) -> io::Result<()> {
        let now = std::time::Instant::now();
        let read = if self.read_pending {
            self.handle_readable(now)
        } else {
            Ok(())
        };
        // Timers and sends go on whatever the read said.
        self.handle_timeout(now);
        self.flush();
        read
    }

    // ------------------------------------------------------------------ internals

    /// Lowers the read batch, so a test can show a limited read resumes.
    #[cfg(test)]
    pub(crate) fn set_read_batch(&mut self, batch: usize) {
        self.read_batch = batch.max(1);
    }

    fn flush_at(&mut self, now: Instant) {
        let socket = &self.socket;
        self.core
            .flush_batch(now, socket, |d, to| socket.send_to(d, to));
    }
}

/// A dropped driver closes its connections and sends the notices first (waiting at most
/// [`DROP_LINGER`](shoal_std::DROP_LINGER) for a full socket): its peers learn at once, not
/// at their idle timeout.
impl Drop for MioDriver {
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

/// The commands, getters and events shared with `shoal-std`: `driver.send(..)`,
/// `driver.poll_event()`, `driver.stats()`, ...
impl Deref for MioDriver {
    type Target = DriverCore;

    fn deref(&self) -> &DriverCore {
        &self.core
    }
}

impl DerefMut for MioDriver {
    fn deref_mut(&mut self) -> &mut DriverCore {
        &mut self.core
    }
}

/// Registering the driver itself works too: `registry.register(&mut driver, token,
/// shoal_mio::INTEREST)`. Use [`INTEREST`] (both readable and writable).
impl Source for MioDriver {
    fn register(
        &mut self,
        registry: &Registry,
        token: Token,
        interests: Interest,
    ) -> io::Result<()> {
        self.socket.register(registry, token, interests)
    }

    fn reregister(
        &mut self,
        registry: &Registry,
        token: Token,
        interests: Interest,
    ) -> io::Result<()> {
        self.socket.reregister(registry, token, interests)
    }

    fn deregister(&mut self, registry: &Registry) -> io::Result<()> {
        self.socket.deregister(registry)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mio::Poll;

    #[test]
    fn a_read_stopped_by_the_batch_limit_is_resumed_by_update() {
        a_read_stopped_by_the_batch_limit_is_resumed_by_update_in(IoMode::Batched);
        a_read_stopped_by_the_batch_limit_is_resumed_by_update_in(IoMode::Portable);
    }

    fn a_read_stopped_by_the_batch_limit_is_resumed_by_update_in(mode: IoMode) {
        let mut poll = Poll::new().expect("poll");
        let mut events = mio::Events::with_capacity(8);
        let mut driver =
            MioDriver::bind_with("127.0.0.1:0", Config::default(), mode).expect("bind");
        driver
            .register(poll.registry(), Token(3))
            .expect("register");
        driver.set_read_batch(4);

        let sender = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        for i in 0..10u8 {
            sender.send_to(&[i], driver.local_addr()).expect("send");
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while driver.endpoint().stats().datagrams_received == 0 {
            assert!(std::time::Instant::now() < deadline, "no readable event");
            poll.poll(&mut events, Some(Duration::from_millis(100)))
                .expect("poll");
            for event in events.iter() {
                assert_eq!(event.token(), Token(3));
                driver.on_event(event).expect("on_event");
            }
        }
        assert_eq!(driver.endpoint().stats().datagrams_received, 4);
        // Edge-triggered: no new event will come for the six left; the driver remembers.
        assert_eq!(driver.next_timeout(), Some(Duration::ZERO));
        driver.update().expect("update");
        assert_eq!(driver.endpoint().stats().datagrams_received, 8);
        driver.update().expect("update");
        assert_eq!(driver.endpoint().stats().datagrams_received, 10);
        // This read ended at `WouldBlock`, so nothing is pending any more.
        assert_ne!(driver.next_timeout(), Some(Duration::ZERO));
    }

    #[test]
    fn next_timeout_follows_the_endpoint_timers() {
        let mut driver = MioDriver::bind("127.0.0.1:0", Config::default()).expect("bind");
        assert_eq!(driver.next_timeout(), None, "no connection, no timer");
        let server = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        driver
            .connect(server.local_addr().expect("address"), &[])
            .expect("connect");
        driver.update().expect("update");
        let timeout = driver.next_timeout().expect("a handshake timer");
        assert!(timeout <= Config::default().handshake_resend_interval);
    }
}
