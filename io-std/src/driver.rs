//! [`Driver`]: one `std::net::UdpSocket`, one endpoint, one clock.

use std::io;
use std::net::{SocketAddr, ToSocketAddrs, UdpSocket};
use std::time::Duration;

use shoal_proto::{
    Bytes, Config, ConnectError, ConnectionHandle, Endpoint, Event, IncomingRequest, Instant,
    RequestId, SendError,
};

use crate::clock::{endpoint_seed, Clock};
use crate::io_util::{recv_error_action, Outbox, RecvErrorAction, RECV_BUFFER_LEN};

/// Most datagrams one [`Driver::update`] reads before it moves on to timers and sending, so
/// a flood cannot hold a game frame hostage. The rest wait in the socket for the next call.
pub const MAX_DATAGRAMS_PER_UPDATE: usize = 4096;

/// How long [`Driver::poll`] waits at most while a datagram waits for room in the socket's
/// send buffer (a blocking `std` socket cannot wait for "writable" and "readable" at once).
pub const BLOCKED_SEND_RETRY: Duration = Duration::from_millis(1);

/// Counters of what the driver itself did with the socket (the endpoint keeps its own, see
/// [`Endpoint::stats`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DriverStats {
    /// Datagrams the socket refused with an error other than `WouldBlock`/`Interrupted`
    /// (e.g. an unreachable destination). They are dropped, like any lost datagram.
    pub send_errors: u64,
    /// The kind of the most recent such error.
    pub last_send_error: Option<io::ErrorKind>,
    /// ICMP errors reported by `recv_from` (`ConnectionReset`/`ConnectionRefused`), skipped.
    pub icmp_errors_ignored: u64,
}

/// A Shoal endpoint on a `std::net::UdpSocket`.
///
/// The socket is non-blocking. Two ways to drive it:
///
/// - **A game's frame loop**: call [`update`](Self::update) once per frame. It never blocks:
///   it reads every datagram waiting, runs the timers that are due and sends what is queued.
/// - **A blocking loop**: call [`poll`](Self::poll). It sleeps until a datagram arrives, the
///   endpoint's next timer is due or the given timeout passes, then does what `update` does.
///
/// In both, queue work with [`connect`](Self::connect), [`send`](Self::send) and friends (or
/// on [`endpoint_mut`](Self::endpoint_mut) with [`now`](Self::now)), then drain
/// [`poll_event`](Self::poll_event) or [`events`](Self::events). Queued messages leave at the
/// next `update`, `poll` or [`flush`](Self::flush).
///
/// Buffers are allocated once, at [`bind`](Self::bind): a 64 KiB receive buffer and a
/// transmit buffer of `Config::mtu` bytes.
///
/// # The seed
///
/// If `Config::seed` is zero, `bind` replaces it with a seed derived from OS randomness (see
/// the crate docs); a non-zero seed is used as given, which makes tests reproducible.
#[derive(Debug)]
pub struct Driver {
    socket: UdpSocket,
    local_addr: SocketAddr,
    endpoint: Endpoint,
    clock: Clock,
    recv_buf: Box<[u8]>,
    outbox: Outbox,
    icmp_errors_ignored: u64,
    /// Datagrams from this address are wake-ups for the background thread, not for the
    /// endpoint.
    wake_from: Option<SocketAddr>,
}

impl Driver {
    /// Binds a UDP socket to `addr` (port 0 picks a free port) and creates the endpoint.
    ///
    /// Fails with `InvalidInput` if `config` is invalid (the [`shoal_proto::ConfigError`] is
    /// the error's inner error), or with the OS error if the socket cannot be bound.
    pub fn bind(addr: impl ToSocketAddrs, config: Config) -> io::Result<Self> {
        Self::from_socket(UdpSocket::bind(addr)?, config)
    }

    /// Wraps a socket the caller bound (e.g. with options set through another crate). The
    /// socket is switched to non-blocking mode.
    pub fn from_socket(socket: UdpSocket, mut config: Config) -> io::Result<Self> {
        socket.set_nonblocking(true)?;
        let local_addr = socket.local_addr()?;
        config.seed = endpoint_seed(config.seed, local_addr);
        let outbox = Outbox::new(config.mtu);
        let endpoint =
            Endpoint::new(config).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        Ok(Driver {
            socket,
            local_addr,
            endpoint,
            clock: Clock::new(),
            recv_buf: vec![0; RECV_BUFFER_LEN].into_boxed_slice(),
            outbox,
            icmp_errors_ignored: 0,
            wake_from: None,
        })
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

    /// The endpoint, for commands this type does not wrap (`send_redirected`,
    /// `set_accept_hook`, ...). Pass [`now`](Self::now) where it asks for the time.
    pub fn endpoint_mut(&mut self) -> &mut Endpoint {
        &mut self.endpoint
    }

    /// The current time on the driver's clock, as the endpoint counts it (microseconds since
    /// the driver was created).
    pub fn now(&mut self) -> Instant {
        self.clock.now()
    }

    /// The driver's own counters.
    pub fn stats(&self) -> DriverStats {
        DriverStats {
            send_errors: self.outbox.send_errors,
            last_send_error: self.outbox.last_send_error,
            icmp_errors_ignored: self.icmp_errors_ignored,
        }
    }

    /// Whether a datagram waits for room in the socket's send buffer.
    pub fn is_send_blocked(&self) -> bool {
        self.outbox.is_blocked()
    }

    // ------------------------------------------------------------------ commands

    /// Starts connecting to `remote`; see [`Endpoint::connect`]. The handshake leaves at the
    /// next `update`, `poll` or `flush`.
    pub fn connect(
        &mut self,
        remote: SocketAddr,
        data: &[u8],
    ) -> Result<ConnectionHandle, ConnectError> {
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

    /// Closes a connection; see [`Endpoint::disconnect`]. The notice to the peer leaves at the
    /// next `update`, `poll` or `flush`.
    pub fn disconnect(&mut self, conn: ConnectionHandle, code: u16) {
        self.endpoint.disconnect(conn, code);
    }

    // ------------------------------------------------------------------ events

    /// The next event, if any.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.endpoint.poll_event()
    }

    /// Drains the events that are waiting (the iterator ends when none is left). It borrows
    /// the driver; to send in reaction to an event, loop on
    /// [`poll_event`](Self::poll_event) instead.
    pub fn events(&mut self) -> Events<'_> {
        Events {
            endpoint: &mut self.endpoint,
        }
    }

    // ------------------------------------------------------------------ driving

    /// Does everything that can be done without waiting: reads the datagrams waiting in the
    /// socket (up to [`MAX_DATAGRAMS_PER_UPDATE`]), runs the timers that are due and sends
    /// what the endpoint has queued. Never blocks.
    ///
    /// Errors are the socket's own failures; per-peer trouble (ICMP errors, an unreachable
    /// destination) is counted in [`stats`](Self::stats) and skipped.
    pub fn update(&mut self) -> io::Result<()> {
        self.receive_waiting()?;
        let now = self.clock.now();
        self.endpoint.handle_timeout(now);
        self.flush_at(now);
        Ok(())
    }

    /// Sends what is queued now (e.g. right after `send`, without waiting for the next
    /// `update`). Never blocks; if the socket is full, the rest leaves on a later call.
    pub fn flush(&mut self) {
        let now = self.clock.now();
        self.flush_at(now);
    }

    /// Sends what is queued, then blocks until a datagram arrives, the endpoint's next timer
    /// is due, or `timeout` passes (`None`: no limit besides the endpoint's timers), and then
    /// does what [`update`](Self::update) does.
    ///
    /// It returns after one wake-up, so call it in a loop and drain the events in between.
    /// With no connections and `timeout == None` it sleeps until a datagram arrives.
    pub fn poll(&mut self, timeout: Option<Duration>) -> io::Result<()> {
        let now = self.clock.now();
        self.flush_at(now);
        let mut wait = self
            .endpoint
            .poll_timeout()
            .map(|deadline| Clock::until(now, deadline));
        if let Some(t) = timeout {
            wait = Some(wait.map_or(t, |w| w.min(t)));
        }
        if self.outbox.is_blocked() {
            wait = Some(wait.map_or(BLOCKED_SEND_RETRY, |w| w.min(BLOCKED_SEND_RETRY)));
        }
        if wait != Some(Duration::ZERO) {
            self.receive_blocking(wait)?;
        }
        self.update()
    }

    // ------------------------------------------------------------------ internals

    /// Lets the background thread mark its wake-up datagrams.
    pub(crate) fn set_wake_source(&mut self, from: SocketAddr) {
        self.wake_from = Some(from);
    }

    #[cfg(test)]
    pub(crate) fn socket_for_tests(&self) -> &UdpSocket {
        &self.socket
    }

    fn flush_at(&mut self, now: Instant) {
        let socket = &self.socket;
        // A full send buffer is not an error: `poll` retries soon, `update` next frame.
        self.outbox
            .flush(&mut self.endpoint, now, |d, to| socket.send_to(d, to));
    }

    /// Waits up to `wait` (`None`: forever) for one datagram and hands it to the endpoint.
    fn receive_blocking(&mut self, wait: Option<Duration>) -> io::Result<()> {
        self.socket.set_nonblocking(false)?;
        let set = self.socket.set_read_timeout(wait);
        let received = set.and_then(|()| self.receive_one());
        // Back to non-blocking whatever happened, so `update` can never block.
        let restored = self.socket.set_nonblocking(true);
        received?;
        restored
    }

    /// Reads what is waiting, without blocking.
    fn receive_waiting(&mut self) -> io::Result<()> {
        for _ in 0..MAX_DATAGRAMS_PER_UPDATE {
            if !self.receive_one()? {
                break;
            }
        }
        Ok(())
    }

    /// Reads one datagram (blocking or not, as the socket is set) and hands it to the
    /// endpoint. `Ok(false)` when none was waiting.
    fn receive_one(&mut self) -> io::Result<bool> {
        loop {
            match self.socket.recv_from(&mut self.recv_buf) {
                Ok((len, from)) => {
                    if Some(from) != self.wake_from {
                        let now = self.clock.now();
                        let datagram = &self.recv_buf[..len.min(self.recv_buf.len())];
                        self.endpoint.handle_datagram(now, from, datagram);
                    }
                    return Ok(true);
                }
                Err(e) => match recv_error_action(e.kind()) {
                    RecvErrorAction::Empty => return Ok(false),
                    RecvErrorAction::Retry => continue,
                    RecvErrorAction::Ignore => {
                        // Counts as "something happened" so the drain goes on reading.
                        self.icmp_errors_ignored += 1;
                        return Ok(true);
                    }
                    RecvErrorAction::Fail => return Err(e),
                },
            }
        }
    }
}

/// Iterator over the events waiting in a [`Driver`], from [`Driver::events`].
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
