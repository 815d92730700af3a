//! Socket plumbing shared by Shoal's drivers (public so `shoal-mio` and your own drivers can
//! use it), kept apart from sockets so it can be tested with fakes: the outbox that
//! drains `poll_transmit` and keeps one datagram back when the socket is full, and the sorting
//! of receive errors into "nothing to read", "try again", "ignore" and "fail".

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
    /// An ICMP error from an earlier send surfaced here (`ConnectionReset` on Windows,
    /// `ConnectionRefused` on some Unixes): it concerns one peer, not this socket. The
    /// protocol notices an unreachable peer by its silence, so skip it and keep reading.
    Ignore,
    /// Anything else: the socket is unusable.
    Fail,
}

/// Sorts a `recv_from` error.
pub fn recv_error_action(kind: io::ErrorKind) -> RecvErrorAction {
    match kind {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => RecvErrorAction::Empty,
        io::ErrorKind::Interrupted => RecvErrorAction::Retry,
        io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionRefused => {
            RecvErrorAction::Ignore
        }
        _ => RecvErrorAction::Fail,
    }
}

/// How a flush ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flushed {
    /// Everything the endpoint had to send was sent (or dropped after a send error).
    All,
    /// The socket's send buffer is full; one datagram waits in the outbox.
    Blocked,
}

/// The transmit buffer, and the one datagram in it that the socket refused with `WouldBlock`.
#[derive(Debug)]
pub struct Outbox {
    buf: Box<[u8]>,
    pending: Option<Transmit>,
    /// Datagrams the socket refused with an error other than `WouldBlock`/`Interrupted`.
    pub send_errors: u64,
    /// The last such error, with the OS error code and the destination.
    pub last_send_error: Option<SendFailure>,
}

/// The first address `remote` resolves to in the family of a socket bound to `local`:
/// `AddressFamily` if it resolves only to the other family, `Unresolved` if to nothing.
pub fn resolve(
    remote: impl std::net::ToSocketAddrs,
    local: SocketAddr,
) -> Result<SocketAddr, shoal_proto::ConnectError> {
    use shoal_proto::ConnectError;
    let mut other_family = None;
    for addr in remote
        .to_socket_addrs()
        .map_err(|_| ConnectError::Unresolved)?
    {
        if addr.is_ipv4() == local.is_ipv4() {
            return Ok(addr);
        }
        other_family.get_or_insert(addr);
    }
    Err(match other_family {
        Some(remote) => ConnectError::AddressFamily { remote, local },
        None => ConnectError::Unresolved,
    })
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
    /// An outbox whose buffer holds datagrams of up to `mtu` bytes.
    pub fn new(mtu: usize) -> Self {
        Outbox {
            buf: vec![0; mtu].into_boxed_slice(),
            pending: None,
            send_errors: 0,
            last_send_error: None,
        }
    }

    /// Whether a datagram waits for the socket to have room.
    pub fn is_blocked(&self) -> bool {
        self.pending.is_some()
    }

    /// Sends the waiting datagram, if any, then everything `endpoint` has to send, through
    /// `send_to`. Stops at the first `WouldBlock` and keeps that datagram for the next call.
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
        loop {
            let transmit = match self.pending.take() {
                Some(t) => t,
                None => match endpoint.poll_transmit(now, &mut self.buf) {
                    Some(t) => t,
                    None => return Flushed::All,
                },
            };
            let datagram = &self.buf[..transmit.len.min(self.buf.len())];
            loop {
                match send_to(datagram, transmit.to) {
                    Ok(_) => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        self.pending = Some(transmit);
                        return Flushed::Blocked;
                    }
                    Err(e) => {
                        self.send_errors += 1;
                        self.last_send_error = Some(SendFailure::new(&e, transmit.to));
                        break;
                    }
                }
            }
        }
    }
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

    #[test]
    fn receive_errors_are_sorted() {
        use io::ErrorKind::*;
        assert_eq!(recv_error_action(WouldBlock), RecvErrorAction::Empty);
        assert_eq!(recv_error_action(TimedOut), RecvErrorAction::Empty);
        assert_eq!(recv_error_action(Interrupted), RecvErrorAction::Retry);
        assert_eq!(recv_error_action(ConnectionReset), RecvErrorAction::Ignore);
        assert_eq!(
            recv_error_action(ConnectionRefused),
            RecvErrorAction::Ignore
        );
        assert_eq!(recv_error_action(PermissionDenied), RecvErrorAction::Fail);
        assert_eq!(recv_error_action(InvalidInput), RecvErrorAction::Fail);
    }
}
