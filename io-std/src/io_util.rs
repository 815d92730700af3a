//! Socket plumbing shared by Shoal's drivers (public so `shoal-mio` and your own drivers can
//! use it), kept apart from sockets so it can be tested with fakes: the outbox that
//! drains `poll_transmit`, one datagram or a batch at a time, and keeps back what the socket
//! refused with `WouldBlock`, and the sorting of receive errors into "nothing to read", "try
//! again", "ignore" and "fail".

use std::io;
use std::net::SocketAddr;

use shoal_proto::{Endpoint, Instant, Transmit};

/// Binds a UDP socket to `addr`, with an error that names the address when it fails ("could
/// not bind 127.0.0.1:7777: Address already in use"), of the same kind as the OS error.
pub fn bind(addr: impl std::net::ToSocketAddrs) -> io::Result<std::net::UdpSocket> {
    let addrs: Vec<SocketAddr> = addr.to_socket_addrs()?.collect();
    std::net::UdpSocket::bind(&addrs[..]).map_err(|e| {
        let what = match addrs.as_slice() {
            [one] => one.to_string(),
            many => format!("{many:?}"),
        };
        io::Error::new(e.kind(), format!("could not bind {what}: {e}"))
    })
}

/// Largest UDP payload over IPv4 is 65,507 bytes; a buffer of 64 KiB holds any datagram, so
/// a peer configured with a larger MTU than ours is never truncated.
pub const RECV_BUFFER_LEN: usize = 1 << 16;

/// What a receive error means for the drain loop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecvErrorAction {
    /// No datagram is waiting (`WouldBlock`, or `TimedOut` from a read timeout on Windows).
    Empty,
    /// A signal interrupted the call: call again.
    Retry,
    /// An error that concerns one peer or one datagram, not this socket: an ICMP report of
    /// an earlier send surfacing here (`ConnectionReset` or `WSAENETRESET`, a time-to-live
    /// exceeded, on Windows; `ConnectionRefused`, `HostUnreachable`, `NetworkUnreachable` on
    /// Unixes, the latter two on a connected socket), or a datagram longer than the buffer
    /// that Windows drops with `WSAEMSGSIZE`. The protocol notices an unreachable peer by
    /// its silence, so skip it and keep reading: one peer's trouble must not stop a server.
    /// Also the kernel short of buffers or memory for a moment (`ENOBUFS`, `ENOMEM`): a
    /// datagram is lost, which the protocol recovers from, and the socket is fine.
    Ignore,
    /// Anything else: the socket is unusable.
    Fail,
}

/// Windows' code for an ICMP "time to live exceeded" about an earlier send (std sorts it as
/// `Uncategorized`); no other system uses the number.
const WSAENETRESET: i32 = 10052;
/// Windows' code for a datagram longer than the receive buffer, which it drops.
const WSAEMSGSIZE: i32 = 10040;

/// Linux and Android (one kernel, one set of error numbers).
const LINUX: bool = cfg!(any(target_os = "linux", target_os = "android"));
/// macOS, iOS and the BSDs (the BSD error numbers).
const BSD: bool = cfg!(any(
    target_os = "macos",
    target_os = "ios",
    target_os = "freebsd",
    target_os = "openbsd",
    target_os = "netbsd",
    target_os = "dragonfly"
));

/// `ENOBUFS` where its number is known (std sorts it as `Uncategorized`).
fn no_buffers() -> Option<i32> {
    if LINUX {
        Some(105)
    } else if BSD {
        Some(55)
    } else if cfg!(windows) {
        Some(10055)
    } else {
        None
    }
}

/// The codes of the other ICMP reports a connected socket's receive surfaces (std sorts
/// them as `Uncategorized`, or as `PermissionDenied`), each about one peer like the reports
/// std does sort. Linux (and Android, its kernel): fragmentation needed (`EMSGSIZE`),
/// parameter problem (`EPROTO`), protocol unreachable (`ENOPROTOOPT`), host down or unknown
/// (`EHOSTDOWN`, `ENONET`), source route failed (`EOPNOTSUPP`), and ICMPv6's
/// administratively prohibited, policy failure and reject route (`EACCES`: a firewall on the
/// way to an IPv6 peer that rejects rather than drops). macOS and the BSDs: fragmentation
/// needed, protocol unreachable, host down.
fn icmp_reports() -> &'static [i32] {
    if LINUX {
        &[90, 71, 92, 112, 64, 95, 13]
    } else if BSD {
        &[40, 42, 64]
    } else {
        &[]
    }
}

/// Sorts a `recv_from` error.
pub fn recv_error_action(e: &io::Error) -> RecvErrorAction {
    if matches!(e.raw_os_error(), Some(WSAENETRESET | WSAEMSGSIZE)) {
        return RecvErrorAction::Ignore;
    }
    if e.raw_os_error().is_some() && e.raw_os_error() == no_buffers() {
        return RecvErrorAction::Ignore;
    }
    if e.raw_os_error()
        .is_some_and(|code| icmp_reports().contains(&code))
    {
        return RecvErrorAction::Ignore;
    }
    match e.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => RecvErrorAction::Empty,
        io::ErrorKind::Interrupted => RecvErrorAction::Retry,
        io::ErrorKind::ConnectionReset
        | io::ErrorKind::ConnectionRefused
        | io::ErrorKind::HostUnreachable
        | io::ErrorKind::NetworkUnreachable
        | io::ErrorKind::OutOfMemory => RecvErrorAction::Ignore,
        _ => RecvErrorAction::Fail,
    }
}

/// How a flush ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flushed {
    /// Everything the endpoint had to send was sent (or dropped after a send error).
    All,
    /// The socket's send buffer is full; the datagrams it refused wait in the outbox (one
    /// in an outbox of one slot, up to a batch in a larger one), in order.
    Blocked,
}

/// Most datagrams one batched send hands to the socket (`sendmmsg` on Linux in
/// [`IoMode::Batched`](crate::IoMode::Batched)); the outbox of a batched driver has this many
/// slots of `Config::mtu` bytes, allocated once.
pub const SEND_BATCH: usize = 32;

/// The transmit buffer: slots of `mtu` bytes that [`Endpoint::poll_transmit`] fills, and the
/// datagrams in them the socket has not taken yet (refused with `WouldBlock`).
///
/// With one slot ([`new`](Self::new)) it sends one datagram per call of `send_to`, as the
/// portable drivers do; with more ([`with_slots`](Self::with_slots)) it fills up to that
/// many before each batched send ([`flush_batch`](Self::flush_batch)). Either way the
/// datagrams leave in the order the endpoint gave them, and the same errors have the same
/// effect.
#[derive(Debug)]
pub struct Outbox {
    /// Room for `slots` datagrams of up to `mtu` bytes, written back to back (so a run of
    /// full-sized datagrams to one peer, a large message's, can leave in one segmented send).
    buf: Box<[u8]>,
    mtu: usize,
    slots: usize,
    /// Where the datagrams in the buffer go and how long they are (capacity `slots`,
    /// allocated once). `queue[head..]` are not sent yet.
    queue: Vec<Transmit>,
    /// Where `queue[i]` starts in `buf` (capacity `slots`).
    starts: Vec<usize>,
    head: usize,
    /// Whether IPv4 destinations are written as IPv4-mapped IPv6 addresses: the socket is
    /// an IPv6 one, which reaches IPv4 peers that way when it is dual-stack.
    map_ipv4: bool,
    /// Datagrams the socket refused with an error other than `WouldBlock`/`Interrupted`.
    pub send_errors: u64,
    /// The last such error, with the OS error code and the destination.
    pub last_send_error: Option<SendFailure>,
}

/// The datagrams one batched send offers the socket, oldest first: the unsent part of an
/// [`Outbox`]. The send function sends a prefix of them and says how long it was.
#[derive(Clone, Copy, Debug)]
pub struct SendBatch<'a> {
    /// The outbox's buffer, where the datagrams lie back to back.
    buf: &'a [u8],
    /// Where each datagram of the batch starts in `buf`.
    starts: &'a [usize],
    queue: &'a [Transmit],
}

/// Datagrams at the front of a [`SendBatch`] that can leave in one segmented send (UDP GSO):
/// to one destination, back to back in memory, each `segment` bytes long but the last, which
/// may be shorter. The kernel cuts `bytes` into the datagrams again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Train<'a> {
    /// The datagrams, one after another.
    pub bytes: &'a [u8],
    /// Bytes of each datagram but the last.
    pub segment: usize,
    /// How many datagrams (at least two).
    pub count: usize,
    /// Their destination.
    pub to: SocketAddr,
}

/// Most bytes one segmented send carries: the kernel refuses a UDP datagram of more than
/// 64 KiB, headers included, before it cuts it up.
pub const MAX_TRAIN_BYTES: usize = 60_000;

impl<'a> SendBatch<'a> {
    /// How many datagrams the batch holds (at least one when a send function is called).
    pub fn len(&self) -> usize {
        self.queue.len()
    }

    /// Whether the batch holds no datagram (never, when a send function is called).
    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// The `i`th datagram and its destination.
    pub fn get(&self, i: usize) -> Option<(&'a [u8], SocketAddr)> {
        let transmit = self.queue.get(i)?;
        let start = *self.starts.get(i)?;
        Some((self.buf.get(start..start + transmit.len)?, transmit.to))
    }

    /// The datagrams and their destinations, in the order they must leave.
    pub fn iter(&self) -> impl Iterator<Item = (&'a [u8], SocketAddr)> + 'a {
        let batch = *self;
        (0..self.len()).filter_map(move |i| batch.get(i))
    }

    /// The batch's first `n` datagrams (all of them if it holds fewer).
    pub fn prefix(&self, n: usize) -> SendBatch<'a> {
        let n = n.min(self.len());
        SendBatch {
            buf: self.buf,
            starts: &self.starts[..n],
            queue: &self.queue[..n],
        }
    }

    /// The datagrams from the `i`th on that can leave as one segmented send of at most
    /// `max_segments` datagrams: `None` unless there are at least two.
    pub fn train_at(&self, i: usize, max_segments: usize) -> Option<Train<'a>> {
        let (first, to) = self.get(i)?;
        // (Port 0 is no destination: the kernel refuses it with an error that `quinn-udp` takes
        // for a device without segmentation, which would turn it off for the socket.)
        if to.port() == 0 {
            return None;
        }
        let segment = first.len();
        let start = self.starts[i];
        let mut count = 1;
        let mut end = start + segment;
        while count < max_segments {
            let Some((next, next_to)) = self.get(i + count) else {
                break;
            };
            if next_to != to
                || self.starts[i + count] != end
                || next.len() > segment
                || next.is_empty()
                || end - start + next.len() > MAX_TRAIN_BYTES
            {
                break;
            }
            count += 1;
            end += next.len();
            if next.len() < segment {
                break; // a shorter datagram ends a train
            }
        }
        (count >= 2).then(|| Train {
            bytes: &self.buf[start..end],
            segment,
            count,
            to,
        })
    }
}

/// The first address `remote` resolves to in the family of a socket bound to `local` (an
/// IPv4-mapped one as the IPv4 address it stands for), or failing that an IPv4 one if the
/// socket is `dual_stack` (see [`is_dual_stack`]): `AddressFamily` if it resolves only to
/// addresses the socket cannot reach, `Unresolved` if to nothing.
pub fn resolve(
    remote: impl std::net::ToSocketAddrs,
    local: SocketAddr,
    dual_stack: bool,
) -> Result<SocketAddr, shoal_proto::ConnectError> {
    use shoal_proto::ConnectError;
    let mut other_family = None;
    for addr in remote
        .to_socket_addrs()
        .map_err(|_| ConnectError::Unresolved)?
    {
        let addr = shoal_proto::canonical_address(addr);
        if addr.is_ipv4() == local.is_ipv4() {
            return Ok(addr);
        }
        other_family.get_or_insert(addr);
    }
    if let Some(v4) = other_family.filter(|a| a.is_ipv4() && dual_stack) {
        return Ok(v4);
    }
    Err(match other_family {
        Some(remote) => ConnectError::AddressFamily { remote, local },
        None => ConnectError::Unresolved,
    })
}

/// Whether `socket` is an IPv6 socket that also reaches IPv4 peers: bound to `[::]` with
/// `IPV6_V6ONLY` off (the default on Linux, macOS and most BSDs; not on Windows or OpenBSD).
pub fn is_dual_stack(socket: &std::net::UdpSocket) -> bool {
    let unspecified_v6 = socket
        .local_addr()
        .is_ok_and(|a| a.is_ipv6() && a.ip().is_unspecified());
    unspecified_v6
        && socket2::SockRef::from(socket)
            .only_v6()
            .is_ok_and(|only| !only)
}

/// `addr` as an IPv6 socket sends to it: an IPv4 address mapped into IPv6.
pub fn mapped(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V4(v4) => SocketAddr::new(v4.ip().to_ipv6_mapped().into(), v4.port()),
        v6 => v6,
    }
}

/// A datagram the socket refused: the OS error as it came (its kind and raw code) and where
/// the datagram was going. `Display` gives the OS's own message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SendFailure {
    /// The error's kind.
    pub kind: io::ErrorKind,
    /// The OS error code (`errno`, or the Windows error), if the OS gave one.
    pub os_code: Option<i32>,
    /// The datagram's destination.
    pub to: SocketAddr,
}

impl SendFailure {
    fn new(error: &io::Error, to: SocketAddr) -> Self {
        SendFailure {
            kind: error.kind(),
            os_code: error.raw_os_error(),
            to,
        }
    }

    /// The error again, as an `io::Error` (the OS's own when it gave a code).
    pub fn to_io_error(&self) -> io::Error {
        match self.os_code {
            Some(code) => io::Error::from_raw_os_error(code),
            None => io::Error::from(self.kind),
        }
    }
}

impl std::fmt::Display for SendFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "sending to {} failed: {}", self.to, self.to_io_error())
    }
}

impl Outbox {
    /// An outbox of one slot of `mtu` bytes: one datagram per send, as the portable drivers
    /// send.
    pub fn new(mtu: usize) -> Self {
        Self::with_slots(mtu, 1)
    }

    /// An outbox of `slots` slots (at least one) of `mtu` bytes each, for batched sends: a
    /// flush takes up to `slots` datagrams from the endpoint before it offers them to the
    /// socket.
    pub fn with_slots(mtu: usize, slots: usize) -> Self {
        let slots = slots.max(1);
        Outbox {
            buf: vec![0; mtu * slots].into_boxed_slice(),
            mtu,
            slots,
            queue: Vec::with_capacity(slots),
            starts: Vec::with_capacity(slots),
            head: 0,
            map_ipv4: false,
            send_errors: 0,
            last_send_error: None,
        }
    }

    /// Says that the socket is an IPv6 one (`true`): IPv4 destinations are then sent to as
    /// IPv4-mapped IPv6 addresses, which a dual-stack socket reaches (an IPv6-only one
    /// refuses them, each counted in `send_errors`). Off by default.
    pub fn set_ipv6_socket(&mut self, ipv6: bool) {
        self.map_ipv4 = ipv6;
    }

    /// How many datagrams the outbox holds at most.
    pub fn slots(&self) -> usize {
        self.slots
    }

    /// Whether datagrams wait for the socket to have room.
    pub fn is_blocked(&self) -> bool {
        self.head < self.queue.len()
    }

    /// Sends the waiting datagrams, if any, then everything `endpoint` has to send, one
    /// datagram per call of `send_to`. Stops at the first `WouldBlock` and keeps that
    /// datagram (and any after it already taken from the endpoint) for the next call.
    ///
    /// Any other send error drops the datagram and is counted: to UDP a refused send is a
    /// lost datagram, which the protocol repairs (reliable channels) or reports (a peer that
    /// stays unreachable times out). One unreachable peer must not stop the others' traffic.
    pub fn flush(
        &mut self,
        endpoint: &mut Endpoint,
        now: Instant,
        mut send_to: impl FnMut(&[u8], SocketAddr) -> io::Result<usize>,
    ) -> Flushed {
        self.flush_batch(endpoint, now, |batch| match batch.get(0) {
            Some((datagram, to)) => send_to(datagram, to).map(|_| 1),
            None => Ok(0),
        })
    }

    /// [`flush`](Self::flush) with a batched send: fills the outbox's slots from `endpoint`
    /// and offers them to `send_batch` (e.g. one `sendmmsg`), which sends a prefix of the
    /// batch, in order, and returns how many datagrams that was, or fails on the first one
    /// (the contract of `sendmmsg`). Sends again until everything is sent or the socket is
    /// full:
    ///
    /// - fewer sent than offered: the rest is offered again at once (a real socket then
    ///   sends more or reports the error of the first unsent one);
    /// - `WouldBlock` (or `Ok(0)`): the unsent datagrams stay in the outbox, in order, for the
    ///   next call, which offers them before anything new;
    /// - `Interrupted`: offered again;
    /// - any other error is the first datagram's: it is dropped and counted, as in `flush`,
    ///   and the rest is offered again.
    pub fn flush_batch(
        &mut self,
        endpoint: &mut Endpoint,
        now: Instant,
        mut send_batch: impl FnMut(SendBatch<'_>) -> io::Result<usize>,
    ) -> Flushed {
        loop {
            if self.head == self.queue.len() {
                self.fill(endpoint, now);
                if self.queue.is_empty() {
                    return Flushed::All;
                }
            }
            let batch = SendBatch {
                buf: &self.buf,
                starts: &self.starts[self.head..],
                queue: &self.queue[self.head..],
            };
            let offered = batch.len();
            match send_batch(batch) {
                Ok(0) => return Flushed::Blocked,
                Ok(sent) => self.head += sent.min(offered),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Flushed::Blocked,
                Err(e) => {
                    self.send_errors += 1;
                    self.last_send_error = Some(SendFailure::new(&e, self.queue[self.head].to));
                    self.head += 1;
                }
            }
        }
    }

    /// Empties the buffer and fills it again from `endpoint`, up to `slots` datagrams, each
    /// right after the one before.
    fn fill(&mut self, endpoint: &mut Endpoint, now: Instant) {
        self.queue.clear();
        self.starts.clear();
        self.head = 0;
        let mut at = 0;
        while self.queue.len() < self.slots {
            // Room for a datagram of `mtu` bytes is always left: `slots` of them fit.
            let Some(room) = self.buf.get_mut(at..at + self.mtu) else {
                break;
            };
            match endpoint.poll_transmit(now, room) {
                Some(mut transmit) => {
                    transmit.len = transmit.len.min(self.mtu);
                    if self.map_ipv4 {
                        transmit.to = mapped(transmit.to);
                    }
                    self.starts.push(at);
                    at += transmit.len;
                    self.queue.push(transmit);
                }
                None => break,
            }
        }
    }
}

/// A client endpoint (seeded, so twins send the same bytes) with one handshake queued to
/// each of `servers`, in that order.
#[cfg(test)]
pub(crate) fn client_connecting_to(servers: &[SocketAddr]) -> Endpoint {
    let mut client = Endpoint::new(shoal_proto::Config {
        seed: 3,
        secret_seed: Some(shoal_proto::SecretSeed::insecure_from_u64(3)),
        accept_incoming: false,
        ..shoal_proto::Config::default()
    })
    .expect("valid config");
    for &server in servers {
        client
            .connect(Instant::ZERO, server, b"hi")
            .expect("connect starts");
    }
    client
}

/// What an outbox of one slot sends for `client_connecting_to(servers)`, in order.
#[cfg(test)]
pub(crate) fn sent_one_at_a_time(servers: &[SocketAddr]) -> Vec<(Vec<u8>, SocketAddr)> {
    let mut client = client_connecting_to(servers);
    let mut sent = Vec::new();
    let flushed = Outbox::new(1200).flush(&mut client, Instant::ZERO, |d, to| {
        sent.push((d.to_vec(), to));
        Ok(d.len())
    });
    assert_eq!(flushed, Flushed::All);
    sent
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_proto::Config;

    fn client_with_queued_handshake() -> (Endpoint, SocketAddr) {
        let server: SocketAddr = SocketAddr::from(([127, 0, 0, 1], 4000));
        let mut client = Endpoint::new(Config {
            seed: 3,
            secret_seed: Some(shoal_proto::SecretSeed::insecure_from_u64(3)),
            accept_incoming: false,
            ..Config::default()
        })
        .expect("valid config");
        client
            .connect(Instant::ZERO, server, b"hi")
            .expect("connect starts");
        (client, server)
    }

    #[test]
    fn would_block_keeps_the_datagram_and_the_next_flush_sends_it_first() {
        let (mut client, server) = client_with_queued_handshake();
        let mut outbox = Outbox::new(1200);
        let mut refused = Vec::new();
        let result = outbox.flush(&mut client, Instant::ZERO, |d, to| {
            refused.push((d.to_vec(), to));
            Err(io::ErrorKind::WouldBlock.into())
        });
        assert_eq!(result, Flushed::Blocked);
        assert!(outbox.is_blocked());
        assert_eq!(refused.len(), 1);

        let mut sent = Vec::new();
        let result = outbox.flush(&mut client, Instant::ZERO, |d, to| {
            sent.push((d.to_vec(), to));
            Ok(d.len())
        });
        assert_eq!(result, Flushed::All);
        assert!(!outbox.is_blocked());
        // The refused datagram went out first, unchanged, to the same address.
        assert_eq!(sent.first(), refused.first());
        assert_eq!(sent[0].1, server);
        assert_eq!(outbox.send_errors, 0);
    }

    /// An IPv6 socket sends to IPv4 peers at their mapped addresses (Linux also takes the
    /// IPv4 form on a dual-stack socket; macOS, the BSDs and Windows refuse it).
    #[test]
    fn an_ipv6_socket_reaches_ipv4_peers_through_mapped_addresses() {
        let v4: SocketAddr = "192.0.2.7:4000".parse().expect("address");
        let v6: SocketAddr = "[2001:db8::7]:4000".parse().expect("address");
        let mut client = client_connecting_to(&[v4, v6]);
        let mut outbox = Outbox::new(1200);
        outbox.set_ipv6_socket(true);
        let mut to = Vec::new();
        outbox.flush(&mut client, Instant::ZERO, |d, addr| {
            to.push(addr);
            Ok(d.len())
        });
        let mapped_v4: SocketAddr = "[::ffff:192.0.2.7]:4000".parse().expect("address");
        assert_eq!(to, [mapped_v4, v6]);
        assert_eq!(mapped(v6), v6);
    }

    #[test]
    fn interrupted_sends_are_retried() {
        let (mut client, _) = client_with_queued_handshake();
        let mut outbox = Outbox::new(1200);
        let mut calls = 0;
        let result = outbox.flush(&mut client, Instant::ZERO, |d, _| {
            calls += 1;
            if calls == 1 {
                Err(io::ErrorKind::Interrupted.into())
            } else {
                Ok(d.len())
            }
        });
        assert_eq!(result, Flushed::All);
        assert!(calls >= 2);
        assert_eq!(outbox.send_errors, 0);
    }

    #[test]
    fn other_send_errors_drop_the_datagram_and_are_counted() {
        let (mut client, _) = client_with_queued_handshake();
        let mut outbox = Outbox::new(1200);
        // EACCES, as the OS reports it.
        let result = outbox.flush(&mut client, Instant::ZERO, |_, _| {
            Err(io::Error::from_raw_os_error(13))
        });
        assert_eq!(result, Flushed::All);
        assert!(!outbox.is_blocked());
        assert!(outbox.send_errors >= 1);
        let failure = outbox.last_send_error.expect("recorded");
        assert_eq!(failure.kind, io::ErrorKind::PermissionDenied);
        assert_eq!(failure.os_code, Some(13));
        assert_eq!(failure.to, "127.0.0.1:4000".parse().expect("address"));
        let text = failure.to_string();
        assert!(
            text.starts_with("sending to 127.0.0.1:4000 failed: "),
            "{text}"
        );
        assert!(text.contains("os error 13"), "the OS's own message: {text}");
    }

    /// `n` servers on loopback, ports 5000 and up.
    fn servers(n: u16) -> Vec<SocketAddr> {
        (0..n)
            .map(|i| SocketAddr::from(([127, 0, 0, 1], 5000 + i)))
            .collect()
    }

    /// Records the datagrams a fake batched send takes, and the size of each batch offered.
    #[derive(Default)]
    struct FakeSocket {
        sent: Vec<(Vec<u8>, SocketAddr)>,
        offered: Vec<usize>,
    }

    impl FakeSocket {
        /// Takes the first `n` datagrams of `batch` (all if fewer).
        fn take(&mut self, batch: SendBatch<'_>, n: usize) -> io::Result<usize> {
            self.offered.push(batch.len());
            let n = n.min(batch.len());
            self.sent
                .extend(batch.iter().take(n).map(|(d, to)| (d.to_vec(), to)));
            Ok(n)
        }
    }

    #[test]
    fn a_batched_flush_sends_what_a_portable_flush_sends_in_the_same_order_a_batch_per_call() {
        let servers = servers(40);
        let mut client = client_connecting_to(&servers);
        let mut outbox = Outbox::with_slots(1200, SEND_BATCH);
        let mut socket = FakeSocket::default();
        let result = outbox.flush_batch(&mut client, Instant::ZERO, |b| socket.take(b, usize::MAX));
        assert_eq!(result, Flushed::All);
        assert!(!outbox.is_blocked());
        assert_eq!(socket.offered, [SEND_BATCH, 40 - SEND_BATCH]);
        assert_eq!(socket.sent, sent_one_at_a_time(&servers));
        assert_eq!(socket.sent.len(), 40);
    }

    #[test]
    fn a_batch_sized_outbox_flushed_one_datagram_at_a_time_sends_the_same() {
        // What a batched driver does when it is dropped (`close_all` sends through `send_to`).
        let servers = servers(40);
        let mut client = client_connecting_to(&servers);
        let mut outbox = Outbox::with_slots(1200, SEND_BATCH);
        let mut sent = Vec::new();
        let result = outbox.flush(&mut client, Instant::ZERO, |d, to| {
            sent.push((d.to_vec(), to));
            Ok(d.len())
        });
        assert_eq!(result, Flushed::All);
        assert_eq!(sent, sent_one_at_a_time(&servers));
    }

    #[test]
    fn a_partial_send_offers_the_rest_again_at_once_in_order() {
        let servers = servers(40);
        let mut client = client_connecting_to(&servers);
        let mut outbox = Outbox::with_slots(1200, SEND_BATCH);
        let mut socket = FakeSocket::default();
        let result = outbox.flush_batch(&mut client, Instant::ZERO, |b| socket.take(b, 5));
        assert_eq!(result, Flushed::All);
        assert_eq!(socket.offered[..3], [32, 27, 22]);
        assert_eq!(socket.sent, sent_one_at_a_time(&servers));
    }

    #[test]
    fn would_block_mid_batch_keeps_the_unsent_datagrams_for_the_next_flush_in_order() {
        let servers = servers(40);
        let mut client = client_connecting_to(&servers);
        let mut outbox = Outbox::with_slots(1200, SEND_BATCH);
        let mut socket = FakeSocket::default();
        let mut calls = 0;
        let result = outbox.flush_batch(&mut client, Instant::ZERO, |b| {
            calls += 1;
            match calls {
                1 => socket.take(b, 10),
                _ => Err(io::ErrorKind::WouldBlock.into()),
            }
        });
        assert_eq!(result, Flushed::Blocked);
        assert!(outbox.is_blocked());
        assert_eq!(socket.sent.len(), 10);

        let result = outbox.flush_batch(&mut client, Instant::ZERO, |b| socket.take(b, usize::MAX));
        assert_eq!(result, Flushed::All);
        assert!(!outbox.is_blocked());
        // The 22 kept back went first, alone, before the endpoint was asked for more.
        assert_eq!(socket.offered, [32, 22, 8]);
        assert_eq!(socket.sent, sent_one_at_a_time(&servers));
        assert_eq!(outbox.send_errors, 0);
    }

    #[test]
    fn an_error_on_one_destination_drops_just_that_datagram_and_counts_it() {
        let servers = servers(40);
        let unreachable = servers[7];
        let mut client = client_connecting_to(&servers);
        let mut outbox = Outbox::with_slots(1200, SEND_BATCH);
        let mut socket = FakeSocket::default();
        // As `sendmmsg` does: the datagrams before the failing one are sent and counted; the
        // error comes when the failing one is offered first.
        let result = outbox.flush_batch(&mut client, Instant::ZERO, |b| {
            match b.iter().position(|(_, to)| to == unreachable) {
                Some(0) => Err(io::Error::from_raw_os_error(13)),
                Some(before) => socket.take(b, before),
                None => socket.take(b, usize::MAX),
            }
        });
        assert_eq!(result, Flushed::All);
        let mut expected = sent_one_at_a_time(&servers);
        expected.remove(7);
        assert_eq!(socket.sent, expected);
        assert_eq!(outbox.send_errors, 1);
        let failure = outbox.last_send_error.expect("recorded");
        assert_eq!(failure.to, unreachable);
        assert_eq!(failure.os_code, Some(13));
    }

    #[test]
    fn interrupted_batched_sends_are_retried() {
        let servers = servers(3);
        let mut client = client_connecting_to(&servers);
        let mut outbox = Outbox::with_slots(1200, SEND_BATCH);
        let mut socket = FakeSocket::default();
        let mut calls = 0;
        let result = outbox.flush_batch(&mut client, Instant::ZERO, |b| {
            calls += 1;
            if calls == 1 {
                Err(io::ErrorKind::Interrupted.into())
            } else {
                socket.take(b, usize::MAX)
            }
        });
        assert_eq!(result, Flushed::All);
        assert_eq!(socket.offered, [3]);
        assert_eq!(socket.sent, sent_one_at_a_time(&servers));
        assert_eq!(outbox.send_errors, 0);
    }

    #[test]
    fn a_send_that_takes_nothing_keeps_everything_for_the_next_flush() {
        let servers = servers(3);
        let mut client = client_connecting_to(&servers);
        let mut outbox = Outbox::with_slots(1200, SEND_BATCH);
        let result = outbox.flush_batch(&mut client, Instant::ZERO, |_| Ok(0));
        assert_eq!(result, Flushed::Blocked);
        assert!(outbox.is_blocked());
        let mut socket = FakeSocket::default();
        let result = outbox.flush_batch(&mut client, Instant::ZERO, |b| socket.take(b, usize::MAX));
        assert_eq!(result, Flushed::All);
        assert_eq!(socket.sent, sent_one_at_a_time(&servers));
    }

    /// A batch over `lens` datagrams to `tos`, back to back in one buffer.
    fn packed(lens: &[usize], tos: &[SocketAddr]) -> (Vec<u8>, Vec<usize>, Vec<Transmit>) {
        let mut starts = Vec::new();
        let mut queue = Vec::new();
        let mut at = 0;
        for (&len, &to) in lens.iter().zip(tos) {
            starts.push(at);
            queue.push(Transmit { to, len });
            at += len;
        }
        ((0..at).map(|i| i as u8).collect(), starts, queue)
    }

    #[test]
    fn a_train_is_equal_datagrams_to_one_peer_and_ends_at_a_shorter_one() {
        let (a, b) = (servers(2)[0], servers(2)[1]);
        let (buf, starts, queue) = packed(&[1200, 1200, 1200, 500, 1200, 900], &[a, a, a, a, a, b]);
        let batch = SendBatch {
            buf: &buf,
            starts: &starts,
            queue: &queue,
        };
        let train = batch.train_at(0, 64).expect("a train");
        assert_eq!((train.count, train.segment, train.to), (4, 1200, a));
        assert_eq!(train.bytes, &buf[..4100], "the datagrams, back to back");
        // After the shorter one: one datagram to `a`, then one to `b`: no train.
        assert_eq!(batch.train_at(4, 64), None);
        assert_eq!(batch.train_at(5, 64), None);
        // At most `max_segments`, and none of one.
        assert_eq!(batch.train_at(0, 2).map(|t| t.count), Some(2));
        assert_eq!(batch.train_at(0, 1), None);
        // A prefix ends where it is cut.
        assert_eq!(batch.prefix(2).train_at(0, 64).map(|t| t.count), Some(2));
        assert_eq!(batch.prefix(1).train_at(0, 64), None);
    }

    #[test]
    fn a_longer_datagram_or_another_peer_ends_a_train_and_a_train_stays_within_64_kib() {
        let (a, b) = (servers(2)[0], servers(2)[1]);
        let (buf, starts, queue) = packed(&[600, 600, 1200, 600], &[a, a, a, a]);
        let batch = SendBatch {
            buf: &buf,
            starts: &starts,
            queue: &queue,
        };
        assert_eq!(
            batch.train_at(0, 64).map(|t| t.count),
            Some(2),
            "longer ends it"
        );
        let (buf, starts, queue) = packed(&[600, 600, 600], &[a, b, b]);
        let batch = SendBatch {
            buf: &buf,
            starts: &starts,
            queue: &queue,
        };
        assert_eq!(batch.train_at(0, 64), None, "another peer");
        assert_eq!(batch.train_at(1, 64).map(|t| (t.count, t.to)), Some((2, b)));
        let lens = [1200; 60];
        let (buf, starts, queue) = packed(&lens, &[a; 60]);
        let batch = SendBatch {
            buf: &buf,
            starts: &starts,
            queue: &queue,
        };
        let train = batch.train_at(0, 128).expect("a train");
        assert_eq!(train.count, MAX_TRAIN_BYTES / 1200);
        assert!(train.bytes.len() <= MAX_TRAIN_BYTES);
    }

    /// The outbox writes each datagram right after the one before, so a large message's
    /// packets to one peer lie back to back and leave as trains; each datagram reads back
    /// as the endpoint wrote it.
    #[test]
    fn an_outbox_packs_a_large_message_into_trains() {
        let now = Instant::ZERO;
        let server_addr = servers(1)[0];
        let client_addr = SocketAddr::from(([127, 0, 0, 1], 5000));
        let mut client = client_connecting_to(&[server_addr]);
        let mut server = Endpoint::new(Config {
            seed: 4,
            secret_seed: Some(shoal_proto::SecretSeed::insecure_from_u64(4)),
            ..Config::default()
        })
        .expect("valid config");
        let mut buf = [0u8; 1500];
        for _ in 0..4 {
            while let Some(t) = client.poll_transmit(now, &mut buf) {
                server.handle_datagram(now, client_addr, &buf[..t.len]);
            }
            while let Some(t) = server.poll_transmit(now, &mut buf) {
                client.handle_datagram(now, server_addr, &buf[..t.len]);
            }
            while server.poll_event().is_some() {}
        }
        let conn = std::iter::from_fn(|| client.poll_event())
            .find_map(|e| match e {
                shoal_proto::Event::Connected { conn, .. } => Some(conn),
                _ => None,
            })
            .expect("connected");
        client.send(conn, 3, vec![7u8; 30_000]).expect("queued");
        let mut outbox = Outbox::with_slots(1200, SEND_BATCH);
        let mut in_trains = 0;
        let mut datagrams = Vec::new();
        outbox.flush_batch(&mut client, now, |batch| {
            // A train where there is one, else a lone datagram (an acknowledgement, say).
            let count = match batch.train_at(0, 64) {
                Some(train) => {
                    let sent: Vec<u8> = batch
                        .iter()
                        .take(train.count)
                        .flat_map(|(d, to)| {
                            assert_eq!(to, server_addr);
                            d.to_vec()
                        })
                        .collect();
                    assert_eq!(train.bytes, &sent[..], "the train is its datagrams");
                    in_trains += train.count;
                    train.count
                }
                None => 1,
            };
            datagrams.extend(batch.iter().take(count).map(|(d, _)| d.to_vec()));
            Ok(count)
        });
        // The first flight (the pacer lets ten full packets go at once) travels in trains,
        // but for one lone datagram at most.
        assert!(datagrams.len() >= 8, "{} datagrams", datagrams.len());
        assert!(
            in_trains + 1 >= datagrams.len(),
            "{in_trains} of {}",
            datagrams.len()
        );
        // The server takes every datagram as the client wrote it.
        let before = server.stats().datagrams_received;
        for d in &datagrams {
            server.handle_datagram(now, client_addr, d);
        }
        assert_eq!(
            server.stats().datagrams_received - before,
            datagrams.len() as u64
        );
        assert_eq!(
            server.stats().drops.total(),
            0,
            "{:?}",
            server.stats().drops
        );
    }

    #[test]
    fn receive_errors_are_sorted() {
        use io::ErrorKind::*;
        let action = |kind: io::ErrorKind| recv_error_action(&io::Error::from(kind));
        assert_eq!(action(WouldBlock), RecvErrorAction::Empty);
        assert_eq!(action(TimedOut), RecvErrorAction::Empty);
        assert_eq!(action(Interrupted), RecvErrorAction::Retry);
        assert_eq!(action(ConnectionReset), RecvErrorAction::Ignore);
        assert_eq!(action(ConnectionRefused), RecvErrorAction::Ignore);
        assert_eq!(action(HostUnreachable), RecvErrorAction::Ignore);
        assert_eq!(action(NetworkUnreachable), RecvErrorAction::Ignore);
        assert_eq!(action(PermissionDenied), RecvErrorAction::Fail);
        assert_eq!(action(InvalidInput), RecvErrorAction::Fail);
        // The kernel short of memory or buffers for a moment loses a datagram, not the
        // socket: a hub or a background thread must not stop on it.
        assert_eq!(action(OutOfMemory), RecvErrorAction::Ignore);
        if let Some(code) = no_buffers() {
            let e = io::Error::from_raw_os_error(code);
            assert_eq!(recv_error_action(&e), RecvErrorAction::Ignore, "{e}");
        }
    }

    /// Windows reports an ICMP time-to-live exceeded, and a datagram too long for the
    /// buffer, by codes std leaves uncategorized: a routing loop towards one client, or one
    /// over-long broadcast on the LAN, must not stop a server or a discovery responder.
    #[test]
    fn windows_reports_about_one_peer_or_datagram_are_skipped() {
        for code in [WSAENETRESET, WSAEMSGSIZE] {
            assert_eq!(
                recv_error_action(&io::Error::from_raw_os_error(code)),
                RecvErrorAction::Ignore,
                "{code}"
            );
        }
    }

    /// On a connected socket Linux hands the next receive any ICMP report about the peer:
    /// those about one peer are skipped, not taken as the socket failing (which stopped a
    /// background thread and every connection on it).
    #[cfg(target_os = "linux")]
    #[test]
    fn icmp_hard_errors_on_a_connected_socket_are_skipped() {
        for &code in icmp_reports() {
            let e = io::Error::from_raw_os_error(code);
            assert_eq!(recv_error_action(&e), RecvErrorAction::Ignore, "{e}");
        }
        // Linux's mapping of ICMP and ICMPv6 errors (icmp_err_convert, icmpv6_err_convert):
        // every one concerns the peer, none the socket. A firewall rejecting with ICMPv6
        // "administratively prohibited" gives EACCES, which once stopped a connected driver.
        if cfg!(target_os = "linux") {
            for code in [101, 113, 92, 111, 90, 95, 112, 64, 71, 13] {
                let e = io::Error::from_raw_os_error(code);
                assert_eq!(recv_error_action(&e), RecvErrorAction::Ignore, "{e}");
            }
        }
        // A bad descriptor still fails.
        assert_eq!(
            recv_error_action(&io::Error::from_raw_os_error(9)),
            RecvErrorAction::Fail
        );
    }
}
