//! [`DriverCore`]: what every Shoal driver holds besides its socket, and the commands that
//! do not depend on how the socket is driven.
//!
//! [`Driver`](crate::Driver) and `shoal_mio::MioDriver` each own a `DriverCore` and
//! dereference to it, so `driver.send(..)`, `driver.poll_event()`, `driver.stats()` and the
//! rest are written once, here, and called on either driver as its own methods.

use std::io;
use std::net::{SocketAddr, ToSocketAddrs};

use shoal_proto::{
    Bytes, Config, ConnectError, ConnectionHandle, Endpoint, Event, IncomingRequest, Instant,
    LinkStats, NetError, Network, RequestId, SendError,
};

use crate::clock::{endpoint_seed, os_secret_seed, unix_time, Clock};
use crate::io_util::{
    recv_error_action, Outbox, RecvErrorAction, SendFailure, RECV_BUFFER_LEN, SEND_BATCH,
};
use crate::recv_batch::{BatchReader, BatchSocket, IoMode};

/// How often the endpoint is told the wall-clock time again (see
/// [`DriverCore::handle_timeout`]).
const UNIX_TIME_RESYNC: std::time::Duration = std::time::Duration::from_secs(1);

/// Counters of what the driver itself did with the socket (the endpoint keeps its own, see
/// [`Endpoint::stats`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DriverStats {
    /// Datagrams the socket refused with an error other than `WouldBlock`/`Interrupted`
    /// (e.g. an unreachable destination). They are dropped, like any lost datagram.
    pub send_errors: u64,
    /// The most recent such error: the OS error (kind and code) and the destination.
    pub last_send_error: Option<SendFailure>,
    /// Receive errors about one peer or one datagram, skipped: ICMP reports of earlier sends
    /// (`ConnectionReset`, `ConnectionRefused`, unreachable host or network, Windows'
    /// time-to-live exceeded), on Windows datagrams longer than the buffer, and the kernel
    /// short of buffers or memory for a moment (`ENOBUFS`, `ENOMEM`).
    pub icmp_errors_ignored: u64,
    /// Times a send hit `WouldBlock` and the unsent datagrams were kept for a later flush
    /// (with `shoal-mio`, the next writable event).
    pub sends_blocked: u64,
    /// Segmented sends ([`IoMode::Batched`] on Linux): system calls that each carried a
    /// train of datagrams to one peer, cut up again by the kernel or the card (UDP GSO).
    pub segmented_sends: u64,
    /// The datagrams those sends carried.
    pub segmented_datagrams: u64,
}

/// The part of a driver that does not touch the socket: the endpoint, the clock, the send
/// and receive buffers and the counters, with the commands an application calls.
///
/// You do not make one yourself to use Shoal: [`Driver`](crate::Driver) and
/// `shoal_mio::MioDriver` own one and dereference to it, so its methods read as the driver's
/// own:
///
/// ```no_run
/// # use shoal_std::{Config, Driver};
/// # fn main() -> std::io::Result<()> {
/// # let mut driver = Driver::bind("127.0.0.1:0", Config::default())?;
/// # let server = driver.local_addr();
/// let conn = driver.connect(server, b"hello").expect("connect starts");
/// driver.send(conn, 2, "reliable").expect("queued");
/// while let Some(event) = driver.poll_event() { /* ... */ }
/// println!("{:?} {:?}", driver.stats(), driver.endpoint().stats());
/// # Ok(())
/// # }
/// ```
///
/// A driver of your own can be built on it the same way: own the socket and a `DriverCore`,
/// and feed it with [`receive_one`](Self::receive_one) and [`flush_with`](Self::flush_with)
/// (or, to honour [`IoMode`], [`receive_batch`](Self::receive_batch) and
/// [`flush_batch`](Self::flush_batch)).
#[derive(Debug)]
pub struct DriverCore {
    local_addr: SocketAddr,
    endpoint: Endpoint,
    clock: Clock,
    recv_buf: Box<[u8]>,
    /// Set up by [`set_io_mode`](Self::set_io_mode) for batched reads; `None`: portable.
    batch: Option<BatchReader>,
    outbox: Outbox,
    icmp_errors_ignored: u64,
    /// Reports skipped since the last datagram or empty read (see `ignored`).
    ignored_in_a_row: u32,
    /// The last read stopped at `MAX_IGNORED_IN_A_ROW` reports, not on an empty socket.
    stopped_on_reports: bool,
    /// The socket is an IPv6 one that reaches IPv4 too (see `set_dual_stack`).
    dual_stack: bool,
    sends_blocked: u64,
    segmented_sends: u64,
    segmented_datagrams: u64,
    /// Datagrams from this address are wake-ups for `shoal-std`'s background thread, not for
    /// the endpoint.
    pub(crate) wake_from: Option<SocketAddr>,
    /// When the endpoint was last told the wall-clock time.
    unix_synced: Instant,
}

/// ICMP reports skipped in a row, with no datagram or empty read between, after which a
/// drain ends as if the socket were empty (see `DriverCore::ignored`).
const MAX_IGNORED_IN_A_ROW: u32 = 64;

impl DriverCore {
    /// The core of a driver whose socket is bound to `local_addr`: creates the endpoint and
    /// allocates the buffers (a 64 KiB receive buffer, a transmit buffer of `Config::mtu`
    /// bytes). It reads on the portable path until [`set_io_mode`](Self::set_io_mode). A zero `Config::seed` is replaced by one derived from OS randomness, and a
    /// missing `Config::secret_seed` by 32 bytes from the OS random source; the endpoint is
    /// told the wall-clock time (for connect token expiry).
    ///
    /// Fails with `InvalidInput` if `config` is invalid (the [`shoal_proto::ConfigError`] is
    /// the error's inner error).
    pub fn new(local_addr: SocketAddr, mut config: Config) -> io::Result<Self> {
        config.seed = endpoint_seed(config.seed, local_addr);
        if config.secret_seed.is_none() {
            config.secret_seed = Some(os_secret_seed()?);
        }
        let mut endpoint =
            Endpoint::new(config).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        // (Sized from the checked config: an absurd mtu is refused above, not allocated.)
        let mut outbox = Outbox::new(endpoint.config().mtu);
        outbox.set_ipv6_socket(local_addr.is_ipv6());
        let mut clock = Clock::new();
        let unix_synced = clock.now();
        endpoint.set_unix_time(unix_synced, unix_time());
        Ok(DriverCore {
            local_addr,
            endpoint,
            clock,
            recv_buf: vec![0; RECV_BUFFER_LEN].into_boxed_slice(),
            batch: None,
            outbox,
            icmp_errors_ignored: 0,
            ignored_in_a_row: 0,
            stopped_on_reports: false,
            dual_stack: false,
            sends_blocked: 0,
            segmented_sends: 0,
            segmented_datagrams: 0,
            wake_from: None,
            unix_synced,
        })
    }

    /// Runs the endpoint's timers due at `now`, telling it the wall-clock time again first
    /// when a second has passed since it was last told: connect tokens expire by the wall
    /// clock, which an NTP step or a suspended machine (whose time the monotonic clock does
    /// not count) moves away from the one read at start.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.resync_unix_time(now);
        self.endpoint.handle_timeout(now);
    }

    /// Tells the endpoint the wall-clock time again if a second has passed since the last
    /// time (before datagrams are read too: the first Connect after a resume is judged by
    /// the time now, not the time before).
    fn resync_unix_time(&mut self, now: Instant) {
        if now.saturating_duration_since(self.unix_synced) >= UNIX_TIME_RESYNC {
            self.endpoint.set_unix_time(now, unix_time());
            self.unix_synced = now;
        }
    }

    // ------------------------------------------------------------------ getters

    /// The address the socket is bound to (with the port the OS picked, if it was 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The endpoint, for its getters (`stats`, `is_connected`, `connection_stats`, ...).
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// The endpoint, for commands the driver does not wrap (`send_redirected`,
    /// `set_accept_hook`, ...). Pass [`now`](Self::now) where it asks for the time.
    pub fn endpoint_mut(&mut self) -> &mut Endpoint {
        &mut self.endpoint
    }

    /// The current time on the driver's clock, as the endpoint counts it (microseconds since
    /// the driver was created).
    pub fn now(&mut self) -> Instant {
        self.clock.now()
    }

    /// The driver's clock, to read the time without recording it ([`Clock::peek`]).
    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    /// The driver's clock, to convert a `std::time::Instant` the caller already read
    /// ([`Clock::at`]).
    pub fn clock_mut(&mut self) -> &mut Clock {
        &mut self.clock
    }

    /// The driver's own counters.
    pub fn stats(&self) -> DriverStats {
        DriverStats {
            send_errors: self.outbox.send_errors,
            last_send_error: self.outbox.last_send_error,
            icmp_errors_ignored: self.icmp_errors_ignored,
            sends_blocked: self.sends_blocked,
            segmented_sends: self.segmented_sends,
            segmented_datagrams: self.segmented_datagrams,
        }
    }

    /// How [`receive_batch`](Self::receive_batch) reads: `Batched` if the socket was set up
    /// for it, `Portable` otherwise.
    pub fn io_mode(&self) -> IoMode {
        if self.batch.is_some() {
            IoMode::Batched
        } else {
            IoMode::Portable
        }
    }

    /// Says whether the socket is an IPv6 one that reaches IPv4 peers too
    /// ([`io_util::is_dual_stack`](crate::io_util::is_dual_stack); the drivers ask when they
    /// are made): then [`connect`](Self::connect) takes IPv4 addresses. Either way an IPv6
    /// socket sends to IPv4 destinations at their IPv4-mapped addresses.
    pub fn set_dual_stack(&mut self, dual_stack: bool) {
        self.dual_stack = dual_stack;
    }

    /// Whether the socket reaches both IPv4 and IPv6 peers (see
    /// [`set_dual_stack`](Self::set_dual_stack)).
    pub fn is_dual_stack(&self) -> bool {
        self.dual_stack
    }

    /// Whether a datagram waits for room in the socket's send buffer.
    pub fn is_send_blocked(&self) -> bool {
        self.outbox.is_blocked()
    }

    // ------------------------------------------------------------------ commands

    /// Starts connecting to `remote`, an address or text that resolves to one
    /// (`"203.0.113.7:4000"`, `"game.example.com:4000"`, a `SocketAddr`); see
    /// [`Endpoint::connect`]. Of the addresses a name resolves to, the first of the socket's
    /// family is taken (or, on a dual-stack socket, an IPv4 one if there is none). The
    /// handshake leaves when the driver next sends (its `update`, `poll` or `flush`);
    /// `Connected` or `ConnectFailed` follows.
    ///
    /// Fails at once with `ConnectError::AddressFamily` for an address the socket cannot
    /// reach (IPv6 from an IPv4 socket, IPv4 from an IPv6 socket that is not dual-stack) and
    /// `ConnectError::Unresolved` for text that resolves to nothing.
    pub fn connect(
        &mut self,
        remote: impl ToSocketAddrs,
        data: &[u8],
    ) -> Result<ConnectionHandle, ConnectError> {
        let remote = crate::io_util::resolve(remote, self.local_addr, self.dual_stack)?;
        let now = self.clock.now();
        self.endpoint.connect(now, remote, data)
    }

    /// Queues a message; see [`Endpoint::send`].
    pub fn send(
        &mut self,
        conn: ConnectionHandle,
        channel: u8,
        payload: impl Into<Bytes>,
    ) -> Result<(), SendError> {
        self.endpoint.send(conn, channel, payload)
    }

    /// Sends a request; see [`Endpoint::request`].
    pub fn request(
        &mut self,
        conn: ConnectionHandle,
        channel: u8,
        payload: impl Into<Bytes>,
    ) -> Result<RequestId, SendError> {
        let now = self.clock.now();
        self.endpoint.request(now, conn, channel, payload)
    }

    /// Answers a request; see [`Endpoint::respond`].
    pub fn respond(
        &mut self,
        conn: ConnectionHandle,
        request: IncomingRequest,
        payload: impl Into<Bytes>,
    ) -> Result<(), SendError> {
        self.endpoint.respond(conn, request, payload)
    }

    /// Queues `payload` on `channel` to every peer but `except`; see
    /// [`Endpoint::broadcast`]. Returns how many it was queued for.
    pub fn broadcast(
        &mut self,
        channel: u8,
        payload: impl Into<Bytes>,
        except: Option<ConnectionHandle>,
    ) -> usize {
        self.endpoint.broadcast(channel, payload, except)
    }

    /// Round-trip time, loss and bytes per second of a live connection, to show on screen;
    /// see [`Endpoint::link_stats`].
    pub fn link_stats(&self, conn: ConnectionHandle) -> Option<LinkStats> {
        self.endpoint.link_stats(conn)
    }

    /// The connected peers the application has seen connect; see [`Endpoint::peers`].
    /// Collected, so the driver can be used while going through them.
    pub fn peers(&self) -> Vec<ConnectionHandle> {
        self.endpoint.peers().collect()
    }

    /// Closes a connection; see [`Endpoint::disconnect`]. The notice to the peer leaves when
    /// the driver next sends (its `update`, `poll` or `flush`).
    pub fn disconnect(&mut self, conn: ConnectionHandle, code: u16) {
        self.endpoint.disconnect(conn, code);
    }

    // ------------------------------------------------------------------ events

    /// The next event, if any.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.endpoint.poll_event()
    }

    /// Moves the events that are waiting into `events`, a buffer the game keeps from frame
    /// to frame (no allocation once it has grown). The driver is then free while the game
    /// goes through them, so it can answer and send:
    ///
    /// ```no_run
    /// # use shoal_std::{Config, Driver, Event};
    /// # fn main() -> std::io::Result<()> {
    /// # let mut net = Driver::bind("127.0.0.1:4000", Config::default())?;
    /// let mut events = Vec::new();
    /// loop {
    ///     net.update()?;
    ///     net.drain_events(&mut events);
    ///     for event in events.drain(..) {
    ///         if let Event::Message { conn, channel, payload, .. } = event {
    ///             net.send(conn, channel, payload).ok(); // echo: `net` is not borrowed
    ///         }
    ///     }
    /// #   break;
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub fn drain_events(&mut self, events: &mut Vec<Event>) {
        while let Some(event) = self.endpoint.poll_event() {
            events.push(event);
        }
    }

    /// Drains the events that are waiting (the iterator ends when none is left). It borrows
    /// the driver until it is dropped; to send in reaction to an event, use
    /// [`drain_events`](Self::drain_events) or loop on [`poll_event`](Self::poll_event).
    pub fn events(&mut self) -> Events<'_> {
        Events {
            endpoint: &mut self.endpoint,
        }
    }

    // ------------------------------------------------------------------ for drivers

    /// Reads one datagram through `recv_from` (a socket's `recv_from`, blocking or not) and
    /// hands it to the endpoint, stamped `now` (`None`: the clock's time once it arrived).
    /// For a portable socket only: one set up for batched reads takes trains of datagrams in
    /// (GRO), which only [`receive_batch`](Self::receive_batch) cuts up again.
    ///
    /// Returns `Ok(false)` when none was waiting, `Ok(true)` when something happened: a
    /// datagram, an ICMP error that is counted and skipped, or a signal that interrupted the
    /// call (a blocking read then returns to its caller, which works out its wait again: read
    /// again at once, it would wait its whole timeout anew, and a steady signal would keep
    /// timers from running). Other errors are the socket's own and returned.
    pub fn receive_one(
        &mut self,
        now: Option<Instant>,
        mut recv_from: impl FnMut(&mut [u8]) -> io::Result<(usize, SocketAddr)>,
    ) -> io::Result<bool> {
        match recv_from(&mut self.recv_buf) {
            Ok((len, from)) => {
                self.ignored_in_a_row = 0;
                self.stopped_on_reports = false;
                if Some(from) != self.wake_from {
                    let now = now.unwrap_or_else(|| self.clock.now());
                    self.resync_unix_time(now);
                    let datagram = &self.recv_buf[..len.min(self.recv_buf.len())];
                    self.endpoint.handle_datagram(now, from, datagram);
                }
                Ok(true)
            }
            Err(e) => match recv_error_action(&e) {
                RecvErrorAction::Empty => {
                    self.ignored_in_a_row = 0;
                    self.stopped_on_reports = false;
                    Ok(false)
                }
                // Counts as "something happened" so a drain goes on reading.
                RecvErrorAction::Retry => Ok(true),
                RecvErrorAction::Ignore => Ok(self.ignored()),
                RecvErrorAction::Fail => Err(e),
            },
        }
    }

    /// Counts an ICMP report skipped; says whether to go on reading: not once
    /// `MAX_IGNORED_IN_A_ROW` came with no datagram and no empty read between. The kernel
    /// holds one pending report per socket, so a run that long is an error the socket
    /// repeats (an `EACCES` from a security module rather than from ICMPv6) or a flood of
    /// spoofed reports: either would keep a drain reading for good. The drain ends as if the
    /// socket were empty (the counter shows it); the driver is not failed, which a spoofed
    /// flood must not be able to do.
    fn ignored(&mut self) -> bool {
        self.icmp_errors_ignored += 1;
        self.ignored_in_a_row += 1;
        if self.ignored_in_a_row >= MAX_IGNORED_IN_A_ROW {
            self.ignored_in_a_row = 0;
            self.stopped_on_reports = true;
            return false;
        }
        true
    }

    /// Whether the last read that found nothing stopped on a run of ICMP reports rather
    /// than on an empty socket (cleared by the call). A driver on an edge-triggered poller
    /// must then read again without waiting for readiness: the socket never said
    /// `WouldBlock`, and mio on Windows signals a socket again only after it did, so a run
    /// of 64 reports (port unreachables, which Windows hands to every read, or spoofed
    /// ones) would otherwise stop its reads for good.
    pub fn take_stopped_on_reports(&mut self) -> bool {
        core::mem::take(&mut self.stopped_on_reports)
    }

    /// Chooses how [`receive_batch`](Self::receive_batch) reads `socket`, the driver's own
    /// socket (the one it goes on passing there), and how [`flush_batch`](Self::flush_batch)
    /// writes it. `Batched` sets the socket up for `recvmmsg` through `quinn-udp`, allocates
    /// [`RECV_BATCH`](crate::RECV_BATCH) receive slots of 64 KiB and
    /// [`SEND_BATCH`](crate::SEND_BATCH) transmit slots of `Config::mtu` bytes; where the
    /// platform or the socket cannot, and for `Portable`, reads and sends stay one
    /// `recv_from` or `send_to` per datagram, and UDP GRO is turned off (a batched reader
    /// turned it on; a train already queued in the socket still reads as one datagram, and
    /// is dropped as too long). Returns the mode in effect.
    ///
    /// While datagrams wait for room in the socket ([`is_send_blocked`](Self::is_send_blocked))
    /// the transmit slots stay as they are, so none is lost; either size works with either
    /// way of sending.
    pub fn set_io_mode(&mut self, mode: IoMode, socket: &impl BatchSocket) -> IoMode {
        self.batch = match mode {
            IoMode::Batched => BatchReader::new(socket).ok(),
            IoMode::Portable => None,
        };
        if self.batch.is_none() {
            // Back to portable, or batched reads could not be set up after all.
            crate::recv_batch::unbatch(socket);
        }
        let slots = match self.io_mode() {
            IoMode::Batched => SEND_BATCH,
            _ => 1,
        };
        if self.outbox.slots() != slots && !self.outbox.is_blocked() {
            let mut outbox = Outbox::with_slots(self.endpoint.config().mtu, slots);
            outbox.set_ipv6_socket(self.local_addr.is_ipv6());
            outbox.send_errors = self.outbox.send_errors;
            outbox.last_send_error = self.outbox.last_send_error;
            self.outbox = outbox;
        }
        self.io_mode()
    }

    /// Reads what one system call returns, at most `max` datagrams (at least one), and hands
    /// them to the endpoint, stamped `now` (`None`: the clock's time once they arrived). In
    /// batched mode that is one `recvmmsg` on `socket`; in portable mode one datagram
    /// through `recv_from`, as [`receive_one`](Self::receive_one) does.
    ///
    /// Returns how many datagrams it read (wake-ups of the background thread included, not
    /// delivered) or ICMP errors it counted and skipped; 0 when none was waiting. An
    /// interrupted batched read is retried; an interrupted portable read counts as one, as in
    /// [`receive_one`](Self::receive_one). Other errors are the socket's own and returned.
    pub fn receive_batch<S: BatchSocket>(
        &mut self,
        now: Option<Instant>,
        max: usize,
        socket: &S,
        recv_from: impl FnMut(&mut [u8]) -> io::Result<(usize, SocketAddr)>,
    ) -> io::Result<usize> {
        if self.batch.is_some() {
            // (The datagrams' own stamp is taken as the first arrives, inside the read.)
            let peeked = now.unwrap_or_else(|| self.clock.peek());
            self.resync_unix_time(peeked);
        }
        let Some(reader) = &mut self.batch else {
            return Ok(usize::from(self.receive_one(now, recv_from)?));
        };
        let endpoint = &mut self.endpoint;
        let clock = &mut self.clock;
        let wake_from = self.wake_from;
        let mut stamp = now;
        loop {
            let read = reader.read(socket, max, |from, datagram| {
                if Some(from) != wake_from {
                    let now = *stamp.get_or_insert_with(|| clock.now());
                    endpoint.handle_datagram(now, from, datagram);
                }
            });
            match read {
                Ok(n) => {
                    self.ignored_in_a_row = 0;
                    self.stopped_on_reports = false;
                    return Ok(n);
                }
                Err(e) => match recv_error_action(&e) {
                    RecvErrorAction::Empty => {
                        self.ignored_in_a_row = 0;
                        self.stopped_on_reports = false;
                        return Ok(0);
                    }
                    RecvErrorAction::Retry => continue,
                    RecvErrorAction::Ignore => return Ok(usize::from(self.ignored())),
                    RecvErrorAction::Fail => return Err(e),
                },
            }
        }
    }

    /// What a driver does when it is dropped: closes every open connection with
    /// [`SHUTDOWN_CODE`](crate::SHUTDOWN_CODE) and sends the notices through `send_to`,
    /// retrying a full socket for at most [`DROP_LINGER`], so peers learn at once rather
    /// than at their idle timeout. Returns how many connections it closed.
    pub fn close_all(
        &mut self,
        mut send_to: impl FnMut(&[u8], SocketAddr) -> io::Result<usize>,
    ) -> usize {
        let open: Vec<ConnectionHandle> = self.endpoint.connections().collect();
        for &conn in &open {
            self.endpoint.disconnect(conn, crate::SHUTDOWN_CODE);
        }
        let deadline = std::time::Instant::now() + DROP_LINGER;
        loop {
            let now = self.now();
            self.flush_with(now, &mut send_to);
            if !self.is_send_blocked() || std::time::Instant::now() >= deadline {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        open.len()
    }

    /// Sends, through `send_to` (a non-blocking socket's `send_to`), one datagram per call,
    /// the datagrams kept back after a `WouldBlock`, then what the endpoint has queued at
    /// `now`. A `WouldBlock` keeps the datagram (and any after it already taken from the
    /// endpoint) for the next call (see [`is_send_blocked`](Self::is_send_blocked)); any
    /// other send error drops it and is counted. Never waits.
    pub fn flush_with(
        &mut self,
        now: Instant,
        send_to: impl FnMut(&[u8], SocketAddr) -> io::Result<usize>,
    ) {
        let was_blocked = self.outbox.is_blocked();
        self.outbox.flush(&mut self.endpoint, now, send_to);
        self.count_block(was_blocked);
    }

    /// What [`flush_with`](Self::flush_with) does, writing `socket` (the driver's own, as
    /// for [`receive_batch`](Self::receive_batch)) as the [`io_mode`](Self::io_mode) says:
    /// in batched mode up to [`SEND_BATCH`](crate::SEND_BATCH) datagrams per `sendmmsg` (a
    /// lone datagram through `send_to`), in portable mode one `send_to` per datagram. The datagrams leave in the same order, and
    /// `WouldBlock` and send errors have the same effect, in both. Never waits.
    pub fn flush_batch<S: BatchSocket>(
        &mut self,
        now: Instant,
        socket: &S,
        send_to: impl FnMut(&[u8], SocketAddr) -> io::Result<usize>,
    ) {
        #[cfg(target_os = "linux")]
        if let Some(reader) = &self.batch {
            let was_blocked = self.outbox.is_blocked();
            let mut send_to = send_to;
            let (mut trains, mut carried) = (0, 0);
            self.outbox.flush_batch(&mut self.endpoint, now, |batch| {
                // (Read at every send: it drops to 1 when the device refuses segmentation.)
                let segments = reader.max_segments();
                if segments > 1 {
                    if let Some(train) = batch.train_at(0, segments) {
                        return match reader.send_train(socket, train) {
                            Ok(()) => {
                                trains += 1;
                                carried += train.count as u64;
                                Ok(train.count)
                            }
                            // The device refused segmentation, and `quinn-udp` turned it off
                            // for the socket: offer the same datagrams again, to `sendmmsg`,
                            // so none is lost for it.
                            Err(e)
                                if reader.max_segments() <= 1
                                    && e.kind() != io::ErrorKind::WouldBlock =>
                            {
                                Err(io::ErrorKind::Interrupted.into())
                            }
                            Err(e) => Err(e),
                        };
                    }
                }
                // Up to the next train, which leaves in a send of its own.
                let until = (1..batch.len())
                    .find(|&i| segments > 1 && batch.train_at(i, segments).is_some())
                    .unwrap_or(batch.len());
                let batch = batch.prefix(until);
                match batch.get(0) {
                    // One datagram: `sendmmsg` would cost as much, plus its headers.
                    Some((datagram, to)) if batch.len() == 1 => send_to(datagram, to).map(|_| 1),
                    _ => crate::send_batch::sendmmsg(socket, batch),
                }
            });
            self.segmented_sends += trains;
            self.segmented_datagrams += carried;
            self.count_block(was_blocked);
            return;
        }
        #[cfg(not(target_os = "linux"))]
        let _ = socket;
        self.flush_with(now, send_to);
    }

    /// Counts a flush that left datagrams waiting when none were before it.
    fn count_block(&mut self, was_blocked: bool) {
        if self.outbox.is_blocked() && !was_blocked {
            self.sends_blocked += 1;
        }
    }
}

/// Longest a dropped driver waits for room in its socket to send its goodbyes.
pub const DROP_LINGER: std::time::Duration = std::time::Duration::from_millis(50);

/// Iterator over the events waiting in a driver, from [`DriverCore::events`].
#[derive(Debug)]
pub struct Events<'a> {
    endpoint: &'a mut Endpoint,
}

impl Iterator for Events<'_> {
    type Item = Event;

    fn next(&mut self) -> Option<Event> {
        self.endpoint.poll_event()
    }
}

/// The commands of [`Network`], for game code written once for every driver, the background
/// thread and the simulator. A driver is a `Network` through its core: pass `&mut *driver`
/// (a `Driver` or a `MioDriver` dereferences to its `DriverCore`). Called on a driver, the
/// same names are the core's own methods, with their narrower error types and `connect`
/// taking text too.
impl Network for DriverCore {
    fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    fn connect(&mut self, remote: SocketAddr, data: &[u8]) -> Result<ConnectionHandle, NetError> {
        Ok(DriverCore::connect(self, remote, data)?)
    }

    fn send(
        &mut self,
        conn: ConnectionHandle,
        channel: u8,
        payload: impl Into<Bytes>,
    ) -> Result<(), NetError> {
        Ok(DriverCore::send(self, conn, channel, payload)?)
    }

    fn request(
        &mut self,
        conn: ConnectionHandle,
        channel: u8,
        payload: impl Into<Bytes>,
    ) -> Result<RequestId, NetError> {
        Ok(DriverCore::request(self, conn, channel, payload)?)
    }

    fn respond(
        &mut self,
        conn: ConnectionHandle,
        request: IncomingRequest,
        payload: impl Into<Bytes>,
    ) -> Result<(), NetError> {
        Ok(DriverCore::respond(self, conn, request, payload)?)
    }

    fn broadcast(
        &mut self,
        channel: u8,
        payload: impl Into<Bytes>,
        except: Option<ConnectionHandle>,
    ) -> usize {
        DriverCore::broadcast(self, channel, payload, except)
    }

    fn disconnect(&mut self, conn: ConnectionHandle, code: u16) {
        DriverCore::disconnect(self, conn, code);
    }

    fn poll_event(&mut self) -> Option<Event> {
        DriverCore::poll_event(self)
    }

    fn peers(&self) -> Vec<ConnectionHandle> {
        DriverCore::peers(self)
    }

    fn link_stats(&self, conn: ConnectionHandle) -> Option<LinkStats> {
        DriverCore::link_stats(self, conn)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn core() -> DriverCore {
        let local = SocketAddr::from(([127, 0, 0, 1], 4000));
        DriverCore::new(local, Config::default()).expect("valid config")
    }

    /// The endpoint is told the wall-clock time again once a second as timers run (it was
    /// told once, at start: an NTP step or a suspend left token expiry judged by a stale
    /// clock, refusing every valid token or taking expired ones, until a restart).
    #[test]
    fn the_wall_clock_is_told_again_once_a_second() {
        let mut core = core();
        let start = core.unix_synced;
        core.handle_timeout(start + std::time::Duration::from_millis(500));
        assert_eq!(core.unix_synced, start, "not within the second");
        let later = start + std::time::Duration::from_millis(1_000);
        core.handle_timeout(later);
        assert_eq!(core.unix_synced, later);
    }

    /// A socket switched back to portable reads gets its datagrams one at a time again: GRO,
    /// which batched reads turn on, would join a train into one `recv_from`.
    #[cfg(any(target_os = "linux", target_os = "android"))]
    #[test]
    fn a_socket_back_to_portable_reads_has_gro_off() {
        use nix::sys::socket::{getsockopt, sockopt::UdpGroSegment};
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        let mut core = core();
        if core.set_io_mode(IoMode::Batched, &socket) == IoMode::Batched {
            let on = getsockopt(&socket, UdpGroSegment);
            if !matches!(on, Ok(true)) {
                return; // A kernel without GRO: nothing to turn off.
            }
        }
        assert_eq!(
            core.set_io_mode(IoMode::Portable, &socket),
            IoMode::Portable
        );
        assert!(matches!(
            getsockopt(&socket, UdpGroSegment),
            Ok(false) | Err(_)
        ));
    }

    /// A report the socket gives on every read (a security module's `EACCES` looks like
    /// ICMPv6's, and spoofed reports can come faster than reads) ends a drain after
    /// `MAX_IGNORED_IN_A_ROW` instead of spinning it, and never fails the driver; real
    /// reports, one at a time between datagrams or empty reads, never end it.
    #[test]
    fn a_report_the_socket_repeats_for_ever_ends_the_drain_not_the_driver() {
        let mut core = core();
        let eacces = |_: &mut [u8]| -> io::Result<(usize, SocketAddr)> {
            Err(io::Error::from_raw_os_error(13))
        };
        let from = SocketAddr::from(([127, 0, 0, 1], 5000));
        for _ in 0..10 * MAX_IGNORED_IN_A_ROW {
            assert!(core.receive_one(None, eacces).expect("one report"));
            assert!(core
                .receive_one(None, |_| Ok((3, from)))
                .expect("a datagram"));
        }
        let mut calls = 0;
        while core.receive_one(None, eacces).expect("never fails") {
            calls += 1;
            assert!(calls < 1000, "spins");
        }
        assert_eq!(calls + 1, MAX_IGNORED_IN_A_ROW);
        assert!(
            core.take_stopped_on_reports(),
            "the drain says why it ended"
        );
        assert!(!core.take_stopped_on_reports(), "once");
        assert!(core
            .receive_one(None, eacces)
            .expect("the next drain reads again"));
        let empty = |_: &mut [u8]| -> io::Result<(usize, SocketAddr)> {
            Err(io::ErrorKind::WouldBlock.into())
        };
        assert!(!core.receive_one(None, empty).expect("empty"));
        assert!(
            !core.take_stopped_on_reports(),
            "an empty socket is not a run of reports"
        );
    }

    /// An IPv6 socket connects to an IPv4 address only if it is dual-stack.
    #[test]
    fn an_ipv4_address_is_reachable_from_a_dual_stack_socket_only() {
        use crate::io_util::resolve;
        let v6: SocketAddr = "[::]:7000".parse().expect("address");
        let v4: SocketAddr = "192.0.2.1:4000".parse().expect("address");
        assert!(matches!(
            resolve(v4, v6, false),
            Err(ConnectError::AddressFamily { .. })
        ));
        assert_eq!(resolve(v4, v6, true), Ok(v4));
        let mapped: SocketAddr = "[::ffff:192.0.2.1]:4000".parse().expect("address");
        assert_eq!(resolve(mapped, v6, true), Ok(v4), "taken as IPv4");
        let from_v4: SocketAddr = "0.0.0.0:7000".parse().expect("address");
        assert_eq!(resolve(mapped, from_v4, false), Ok(v4));
    }

    #[test]
    fn receive_one_sorts_errors_and_counts_icmp() {
        let mut core = core();
        let from = SocketAddr::from(([127, 0, 0, 1], 5000));
        let mut results = vec![
            Err(io::ErrorKind::WouldBlock.into()),
            Err(io::ErrorKind::ConnectionReset.into()),
            Ok((3, from)),
            Err(io::ErrorKind::Interrupted.into()),
        ];
        let mut next = |_: &mut [u8]| results.pop().expect("a result");
        // An interruption returns (a blocking caller works its wait out again); the
        // datagram comes with the next read.
        assert!(core.receive_one(None, &mut next).expect("interrupted"));
        assert_eq!(core.endpoint().stats().datagrams_received, 0);
        assert!(core.receive_one(None, &mut next).expect("datagram"));
        assert_eq!(core.endpoint().stats().datagrams_received, 1);
        assert!(core.receive_one(None, &mut next).expect("icmp"));
        assert_eq!(core.stats().icmp_errors_ignored, 1);
        assert!(!core.receive_one(None, &mut next).expect("empty"));
        let fail = core.receive_one(None, |_| Err(io::ErrorKind::PermissionDenied.into()));
        assert!(fail.is_err());
    }

    #[test]
    fn datagrams_from_the_wake_source_are_read_but_not_delivered() {
        let mut core = core();
        let waker = SocketAddr::from(([127, 0, 0, 1], 5001));
        core.wake_from = Some(waker);
        assert!(core.receive_one(None, |_| Ok((0, waker))).expect("wake"));
        assert_eq!(core.endpoint().stats().datagrams_received, 0);
    }

    #[test]
    fn connect_resolves_text_to_the_sockets_family_and_says_why_it_cannot() {
        let mut core = core(); // IPv4
        let conn = core.connect("127.0.0.1:4001", b"").expect("text resolves");
        assert_eq!(
            core.endpoint().remote_address(conn),
            Some(SocketAddr::from(([127, 0, 0, 1], 4001)))
        );
        let v6 = SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, 4002));
        assert_eq!(
            core.connect(v6, b""),
            Err(ConnectError::AddressFamily {
                remote: v6,
                local: core.local_addr()
            })
        );
        assert_eq!(
            core.connect("no port here", b""),
            Err(ConnectError::Unresolved)
        );
        let text = ConnectError::AddressFamily {
            remote: v6,
            local: core.local_addr(),
        }
        .to_string();
        assert!(
            text.contains("[::1]:4002") && text.contains("127.0.0.1:4000"),
            "{text}"
        );
    }

    #[test]
    fn flush_with_counts_each_time_sending_starts_to_block() {
        let mut core = core();
        let server = SocketAddr::from(([127, 0, 0, 1], 5002));
        core.connect(server, &[]).expect("connect");
        let now = core.now();
        core.flush_with(now, |_, _| Err(io::ErrorKind::WouldBlock.into()));
        assert!(core.is_send_blocked());
        // Still blocked on the same datagram: not a new block.
        core.flush_with(now, |_, _| Err(io::ErrorKind::WouldBlock.into()));
        assert_eq!(core.stats().sends_blocked, 1);
        core.flush_with(now, |d, _| Ok(d.len()));
        assert!(!core.is_send_blocked());
        assert_eq!(core.stats().send_errors, 0);
    }
}

#[cfg(test)]
mod batch_tests {
    use super::*;
    use std::net::UdpSocket;

    /// A core whose socket already holds `count` one-byte datagrams from `sender`.
    fn core_with_waiting(mode: IoMode, count: u8) -> (DriverCore, UdpSocket, UdpSocket) {
        let socket = UdpSocket::bind("127.0.0.1:0").expect("bind");
        socket.set_nonblocking(true).expect("non-blocking");
        let mut core = DriverCore::new(socket.local_addr().expect("address"), Config::default())
            .expect("core");
        core.set_io_mode(mode, &socket);
        let sender = UdpSocket::bind("127.0.0.1:0").expect("bind");
        for i in 0..count {
            sender
                .send_to(&[i], socket.local_addr().expect("address"))
                .expect("send");
        }
        // Loopback delivers at once, but give the last one a moment to be queued.
        std::thread::sleep(std::time::Duration::from_millis(20));
        (core, socket, sender)
    }

    fn read(core: &mut DriverCore, socket: &UdpSocket, max: usize) -> usize {
        core.receive_batch(None, max, socket, |buf| socket.recv_from(buf))
            .expect("read")
    }

    /// An IPv6 socket read in batches asks for no control message Shoal does not read (as an
    /// IPv4 one), and cuts a train of datagrams (GRO) up again. Skipped where IPv6 loopback
    /// is missing.
    #[cfg(any(target_os = "linux", target_os = "android"))]
    #[test]
    fn a_batched_ipv6_socket_reads_a_train_as_its_datagrams() {
        use nix::sys::socket::{getsockopt, setsockopt, sockopt};
        let Ok(socket) = UdpSocket::bind("[::1]:0") else {
            eprintln!("no IPv6 loopback: skipped");
            return;
        };
        socket.set_nonblocking(true).expect("non-blocking");
        let to = socket.local_addr().expect("address");
        let mut core = DriverCore::new(to, Config::default()).expect("core");
        assert_eq!(core.set_io_mode(IoMode::Batched, &socket), IoMode::Batched);
        assert!(matches!(
            getsockopt(&socket, sockopt::Ipv6RecvPacketInfo),
            Ok(false)
        ));
        assert!(matches!(
            getsockopt(&socket, sockopt::Ipv6RecvTClass),
            Ok(false)
        ));
        // One segmented send of five 40-byte datagrams (each alone where the kernel
        // cannot segment): GRO may hand them over as one train.
        let sender = UdpSocket::bind("[::1]:0").expect("bind");
        let segmented = setsockopt(&sender, sockopt::UdpGsoSegment, &40).is_ok();
        if segmented {
            sender.send_to(&[7; 200], to).expect("send");
        } else {
            for _ in 0..5 {
                sender.send_to(&[7; 40], to).expect("send");
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
        let mut got = 0;
        while got < 5 {
            let n = read(&mut core, &socket, 64);
            assert!(n > 0, "{got} of 5 datagrams");
            got += n;
        }
        assert_eq!(core.endpoint().stats().datagrams_received, 5);
    }

    #[test]
    fn batched_mode_is_in_effect_on_linux_and_portable_mode_when_asked() {
        let (core, _, _) = core_with_waiting(IoMode::Batched, 0);
        let expected = if cfg!(any(target_os = "linux", target_os = "android")) {
            IoMode::Batched
        } else {
            IoMode::Portable
        };
        assert_eq!(core.io_mode(), expected);
        let (core, _, _) = core_with_waiting(IoMode::Portable, 0);
        assert_eq!(core.io_mode(), IoMode::Portable);
    }

    #[test]
    fn a_batched_read_returns_at_most_a_batch_and_never_more_than_asked() {
        for mode in [IoMode::Batched, IoMode::Portable] {
            let (mut core, socket, _) = core_with_waiting(mode, 40);
            let per_call = match core.io_mode() {
                IoMode::Batched => crate::RECV_BATCH,
                _ => 1,
            };
            let first = read(&mut core, &socket, 3);
            assert_eq!(first, per_call.min(3), "{mode:?}");
            assert_eq!(read(&mut core, &socket, 1000), per_call, "{mode:?}");
            let mut total = first + per_call;
            loop {
                match read(&mut core, &socket, 1000) {
                    0 => break,
                    n => total += n,
                }
            }
            assert_eq!(total, 40, "{mode:?}: every datagram read once");
            assert_eq!(core.endpoint().stats().datagrams_received, 40, "{mode:?}");
        }
    }

    #[test]
    fn batched_reads_recognise_wake_ups_and_deliver_the_rest() {
        for mode in [IoMode::Batched, IoMode::Portable] {
            let (mut core, socket, sender) = core_with_waiting(mode, 0);
            let waker = UdpSocket::bind("127.0.0.1:0").expect("bind");
            core.wake_from = Some(waker.local_addr().expect("address"));
            let to = socket.local_addr().expect("address");
            sender.send_to(&[1], to).expect("send");
            waker.send_to(&[], to).expect("wake");
            sender.send_to(&[2], to).expect("send");
            std::thread::sleep(std::time::Duration::from_millis(20));
            let mut read_total = 0;
            loop {
                match read(&mut core, &socket, 1000) {
                    0 => break,
                    n => read_total += n,
                }
            }
            assert_eq!(read_total, 3, "{mode:?}: the wake-up is read");
            assert_eq!(
                core.endpoint().stats().datagrams_received,
                2,
                "{mode:?}: but not delivered"
            );
        }
    }

    #[test]
    fn a_flush_in_either_mode_sends_everything_but_what_the_socket_refuses() {
        for mode in [IoMode::Batched, IoMode::Portable] {
            let (mut core, socket, _) = core_with_waiting(mode, 0);
            let receiver = UdpSocket::bind("0.0.0.0:0").expect("bind");
            receiver.set_nonblocking(true).expect("non-blocking");
            let port = receiver.local_addr().expect("address").port();
            // 40 addresses that all reach `receiver` (127.0.0.1 to 127.0.0.40), and one
            // the IPv4 socket cannot send to.
            let v6 = SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, port));
            let mut servers: Vec<SocketAddr> = (1..=40)
                .map(|i| SocketAddr::from(([127, 0, 0, i], port)))
                .collect();
            servers.insert(20, v6);
            let now = core.now();
            for &server in &servers {
                core.endpoint_mut()
                    .connect(now, server, b"")
                    .expect("connect");
            }
            core.flush_batch(now, &socket, |d, to| socket.send_to(d, to));
            assert!(!core.is_send_blocked(), "{mode:?}");
            let stats = core.stats();
            assert_eq!(stats.send_errors, 1, "{mode:?}");
            assert_eq!(stats.last_send_error.map(|f| f.to), Some(v6), "{mode:?}");
            assert_eq!(stats.sends_blocked, 0, "{mode:?}");
            std::thread::sleep(std::time::Duration::from_millis(20));
            let mut buf = [0; 2048];
            let mut arrived = 0;
            while let Ok((_, from)) = receiver.recv_from(&mut buf) {
                assert_eq!(from, core.local_addr(), "{mode:?}");
                arrived += 1;
            }
            assert_eq!(arrived, 40, "{mode:?}");
            assert_eq!(core.endpoint().stats().datagrams_sent, 41, "{mode:?}");
        }
    }

    #[test]
    fn in_batched_mode_a_lone_datagram_takes_send_to_and_a_batch_takes_sendmmsg() {
        let (mut core, socket, receiver) = core_with_waiting(IoMode::Batched, 0);
        receiver.set_nonblocking(true).expect("non-blocking");
        let to = receiver.local_addr().expect("address");
        let now = core.now();
        core.endpoint_mut().connect(now, to, b"").expect("connect");
        let mut through_send_to = 0;
        core.flush_batch(now, &socket, |d, to| {
            through_send_to += 1;
            socket.send_to(d, to)
        });
        assert_eq!(through_send_to, 1);

        let others = [
            UdpSocket::bind("127.0.0.1:0"),
            UdpSocket::bind("127.0.0.1:0"),
        ]
        .map(|s| s.expect("bind"));
        for other in &others {
            let server = other.local_addr().expect("address");
            core.endpoint_mut()
                .connect(now, server, b"")
                .expect("connect");
        }
        let mut through_send_to = 0;
        core.flush_batch(now, &socket, |d, to| {
            through_send_to += 1;
            socket.send_to(d, to)
        });
        let expected = if cfg!(target_os = "linux") { 0 } else { 2 };
        assert_eq!(through_send_to, expected);
        assert_eq!(core.endpoint().stats().datagrams_sent, 3);
        assert_eq!(core.stats().send_errors, 0);
    }
}
