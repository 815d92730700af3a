//! Batched sends on Linux and Android: the datagrams of a [`SendBatch`] in one `sendmmsg`,
//! through `nix`, so no `unsafe` of ours. [`Outbox::flush_batch`](crate::io_util::Outbox)
//! decides what to offer and what a partial send or an error means; this module only makes
//! the system call.

use std::cell::RefCell;
use std::io::{self, IoSlice};
use std::os::fd::{AsFd, AsRawFd};

use nix::sys::socket::{ControlMessage, MsgFlags, MultiHeaders, SockaddrStorage};

use crate::io_util::{SendBatch, SEND_BATCH};

/// What `sendmmsg` needs besides the datagrams, allocated once per thread that sends in
/// batches (about 10 KiB). It cannot live in the driver: the headers hold raw pointers, so
/// they are not `Send`, and a driver must be (the background thread takes one). Between calls
/// the headers point at nothing valid; each call sets every header it passes to the kernel.
struct Scratch {
    headers: MultiHeaders<SockaddrStorage>,
    /// The destinations of the batch being sent (capacity `SEND_BATCH`).
    addrs: Vec<Option<SockaddrStorage>>,
}

impl Scratch {
    fn new() -> Self {
        Scratch {
            headers: MultiHeaders::preallocate(SEND_BATCH, None),
            addrs: Vec::with_capacity(SEND_BATCH),
        }
    }
}

thread_local! {
    static SCRATCH: RefCell<Option<Scratch>> = const { RefCell::new(None) };
}

/// Sends the first [`SEND_BATCH`] datagrams of `batch` (or all, if fewer) on `socket` with one
/// `sendmmsg`. Returns how many the kernel took, in order from the first (fewer than offered
/// when one of them failed: the error is reported when it is offered first, on the next
/// call), or the error of the first datagram.
pub(crate) fn sendmmsg(socket: &impl AsFd, batch: SendBatch<'_>) -> io::Result<usize> {
    let mut iovs: [[IoSlice<'_>; 1]; SEND_BATCH] = std::array::from_fn(|_| [IoSlice::new(&[])]);
    let mut count = 0;
    for (iov, (datagram, _)) in iovs.iter_mut().zip(batch.iter()) {
        *iov = [IoSlice::new(datagram)];
        count += 1;
    }
    let fd = socket.as_fd().as_raw_fd();
    let send = |scratch: &mut Scratch| -> io::Result<usize> {
        scratch.addrs.clear();
        scratch.addrs.extend(
            batch
                .iter()
                .take(count)
                .map(|(_, to)| Some(SockaddrStorage::from(to))),
        );
        let no_control: [ControlMessage<'_>; 0] = [];
        let sent = nix::sys::socket::sendmmsg(
            fd,
            &mut scratch.headers,
            &iovs[..count],
            &scratch.addrs,
            no_control,
            MsgFlags::empty(),
        )?;
        // nix reports how many were sent only as an iterator with one item per datagram
        // sent. (Making each item, nix copies an address slot that `sendmmsg` never writes,
        // uninitialised bytes that nothing reads afterwards; nix's own test counts the same
        // way.)
        Ok(sent.count())
    };
    SCRATCH
        .try_with(|scratch| send(scratch.borrow_mut().get_or_insert_with(Scratch::new)))
        // The thread is being torn down (a driver dropped by a thread-local destructor):
        // scratch for this one call.
        .unwrap_or_else(|_| send(&mut Scratch::new()))
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
            Some(nix::errno::Errno::EAFNOSUPPORT as i32),
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
