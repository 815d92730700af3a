//! Batched sends on Linux: the datagrams of a [`SendBatch`] in one `sendmmsg`, through
//! `rustix`, so no `unsafe` of ours. [`Outbox::flush_batch`](crate::io_util::Outbox) decides
//! what to offer and what a partial send or an error means; this module only makes the
//! system call. (Elsewhere, Android included, batched mode sends one `send_to` each.)

use std::io::{self, IoSlice};
use std::net::{Ipv4Addr, SocketAddr};
use std::os::fd::AsFd;

use rustix::net::{MMsgHdr, SendAncillaryBuffer, SendFlags, SocketAddrAny};

use crate::io_util::{SendBatch, SEND_BATCH};

/// Sends the first [`SEND_BATCH`] datagrams of `batch` (or all, if fewer) on `socket` with one
/// `sendmmsg`. Returns how many the kernel took, in order from the first (fewer than offered
/// when one of them failed: the error is reported when it is offered first, on the next
/// call), or the error of the first datagram. Everything it needs is on the stack.
pub(crate) fn sendmmsg(socket: &impl AsFd, batch: SendBatch<'_>) -> io::Result<usize> {
    let count = batch.len().min(SEND_BATCH);
    let unused = SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0));
    let iovs: [[IoSlice<'_>; 1]; SEND_BATCH] =
        std::array::from_fn(|i| [IoSlice::new(batch.get(i).map_or(&[], |(d, _)| d))]);
    let addrs: [SocketAddrAny; SEND_BATCH] =
        std::array::from_fn(|i| SocketAddrAny::from(batch.get(i).map_or(unused, |(_, to)| to)));
    let mut no_control: [SendAncillaryBuffer<'_, '_, '_>; SEND_BATCH] =
        std::array::from_fn(|_| SendAncillaryBuffer::default());
    let mut parts = iovs.iter().zip(&addrs).zip(&mut no_control);
    let mut messages: [MMsgHdr<'_>; SEND_BATCH] = std::array::from_fn(|_| {
        let ((iov, addr), control) = parts.next().expect("SEND_BATCH of each");
        MMsgHdr::new_with_addr(addr, iov, control)
    });
    Ok(rustix::net::sendmmsg(
        socket,
        &mut messages[..count],
        SendFlags::empty(),
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io_util::{client_connecting_to, sent_one_at_a_time, Flushed, Outbox};
    use shoal_proto::Instant;
    use std::net::{SocketAddr, UdpSocket};

    /// Everything waiting in `socket` (non-blocking), in arrival order.
    fn read_all(socket: &UdpSocket) -> Vec<(Vec<u8>, SocketAddr)> {
        // Loopback delivers at once, but give the last datagram a moment to be queued.
        std::thread::sleep(std::time::Duration::from_millis(20));
        let mut buf = [0; 2048];
        let mut got = Vec::new();
        while let Ok((len, from)) = socket.recv_from(&mut buf) {
            got.push((buf[..len].to_vec(), from));
        }
        got
    }

    fn bound() -> (UdpSocket, SocketAddr) {
        bound_to("127.0.0.1:0")
    }

    fn bound_to(addr: &str) -> (UdpSocket, SocketAddr) {
        let socket = UdpSocket::bind(addr).expect("bind");
        socket.set_nonblocking(true).expect("non-blocking");
        let addr = socket.local_addr().expect("address");
        (socket, addr)
    }

    /// `n` distinct loopback addresses (127.0.0.1, 127.0.0.2, ...) of one port: a socket
    /// bound to the wildcard address and that port receives what is sent to any of them, so
    /// an endpoint (one connection per address) can send it a batch of handshakes.
    fn loopback_aliases(port: u16, n: u8) -> Vec<SocketAddr> {
        (1..=n)
            .map(|i| SocketAddr::from(([127, 0, 0, i], port)))
            .collect()
    }

    #[test]
    fn a_batch_arrives_whole_and_in_order_at_a_real_socket() {
        let (sender, from) = bound();
        let (receiver, to) = bound_to("0.0.0.0:0");
        let servers = loopback_aliases(to.port(), 40);
        let mut client = client_connecting_to(&servers);
        let mut outbox = Outbox::with_slots(1200, SEND_BATCH);
        let mut taken = Vec::new();
        let result = outbox.flush_batch(&mut client, Instant::ZERO, |batch| {
            let sent = sendmmsg(&sender, batch);
            taken.push(*sent.as_ref().unwrap_or(&0));
            sent
        });
        assert_eq!(result, Flushed::All);
        // One system call per batch.
        assert_eq!(taken, [SEND_BATCH, 40 - SEND_BATCH]);
        let expected: Vec<_> = sent_one_at_a_time(&servers)
            .into_iter()
            .map(|(d, _)| (d, from))
            .collect();
        assert_eq!(read_all(&receiver), expected);
    }

    #[test]
    fn a_destination_the_kernel_refuses_costs_only_its_own_datagram() {
        let (sender, _) = bound();
        let (receiver, to) = bound_to("0.0.0.0:0");
        // An IPv4 socket cannot send to an IPv6 address: `EAFNOSUPPORT` for that one.
        let v6 = SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, to.port()));
        let mut servers = loopback_aliases(to.port(), 4);
        servers.insert(2, v6);
        let mut client = client_connecting_to(&servers);
        let mut outbox = Outbox::with_slots(1200, SEND_BATCH);
        let result = outbox.flush_batch(&mut client, Instant::ZERO, |b| sendmmsg(&sender, b));
        assert_eq!(result, Flushed::All);
        assert_eq!(outbox.send_errors, 1);
        let failure = outbox.last_send_error.expect("recorded");
        assert_eq!(failure.to, v6);
        assert_eq!(
            failure.os_code,
            Some(rustix::io::Errno::AFNOSUPPORT.raw_os_error()),
            "{failure}"
        );
        let mut expected: Vec<_> = sent_one_at_a_time(&servers)
            .into_iter()
            .map(|(d, _)| d)
            .collect();
        expected.remove(2);
        let got: Vec<_> = read_all(&receiver).into_iter().map(|(d, _)| d).collect();
        assert_eq!(got, expected);
    }
}
