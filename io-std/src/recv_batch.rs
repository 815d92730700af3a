//! Batched reads: many datagrams per system call where the OS offers it (`recvmmsg` on Linux
//! and Android, through `quinn-udp`, so no `unsafe` of ours), and the portable path, one
//! `recv_from` per datagram, everywhere else or when asked for.
//!
//! [`DriverCore::receive_batch`](crate::DriverCore::receive_batch) is the entry point; this
//! module holds the mode, the socket bound and the buffers.

use std::io;
use std::net::SocketAddr;

use crate::io_util::Train;
#[cfg(any(target_os = "linux", target_os = "android"))]
use crate::io_util::RECV_BUFFER_LEN;

/// How a driver reads and writes its socket. Chosen when the driver is made
/// (`Driver::bind_with`, `MioDriver::bind_with`, ...), apart from
/// [`Config`](shoal_proto::Config): it is about the host, not the protocol.
///
/// The default is `Portable`: on loopback (see `docs/benchmarks.md`, "Batched I/O") a game
/// server's batched reads cost as much CPU per datagram as one `recv_from` each and its
/// batched sends, one datagram to each of many peers, about 6% less than one `send_to` each
/// (within the spread between runs), and batching changes the socket's options (below). A
/// bulk sender gains most: its large messages leave in segmented sends, 1.8x (protected) to
/// 6-7x (unprotected) less CPU per datagram. Measure on your host before choosing
/// `Batched`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum IoMode {
    /// On Linux and Android, up to [`RECV_BATCH`] datagrams per read (`recvmmsg`, through
    /// `quinn-udp`) and up to [`SEND_BATCH`](crate::SEND_BATCH) per send (`sendmmsg`,
    /// through `rustix`); elsewhere, or if the socket cannot be set up for it, the same as
    /// `Portable`. Datagrams leave in the same order as in `Portable`, and a full socket or
    /// an unreachable destination has the same effect; a full socket can leave up to a batch
    /// of datagrams waiting instead of one. Setting the socket up turns on UDP GRO (trains
    /// of datagrams are split again before the endpoint sees them) and sets
    /// `IP_MTU_DISCOVER` to probe: datagrams leave with the don't-fragment bit and are never
    /// fragmented by the sending host, so keep `Config::mtu` within the path's MTU. On Linux,
    /// a run of equal-sized datagrams to one peer (a large message's chunks) leaves in one
    /// segmented send (UDP GSO), which the kernel or the card cuts up again; where the
    /// device refuses it, the same datagrams go again through `sendmmsg`, as all sends do
    /// from then on.
    Batched,
    /// One `recv_from` or `send_to` per datagram, as on every platform.
    #[default]
    Portable,
}

/// Receive slots of one batched read (64 KiB each, allocated once): a datagram each, or with
/// GRO a train of up to 64 from one sender.
pub const RECV_BATCH: usize = 32;

/// A socket a driver can read in batches: on Linux and Android anything with a file
/// descriptor (`std::net::UdpSocket`, `mio::net::UdpSocket`); elsewhere any type, since only
/// the portable path exists there.
#[cfg(any(target_os = "linux", target_os = "android"))]
pub trait BatchSocket: std::os::fd::AsFd {}
#[cfg(any(target_os = "linux", target_os = "android"))]
impl<T: std::os::fd::AsFd> BatchSocket for T {}

/// A socket a driver can read in batches: on Linux and Android anything with a file
/// descriptor (`std::net::UdpSocket`, `mio::net::UdpSocket`); elsewhere any type, since only
/// the portable path exists there.
#[cfg(not(any(target_os = "linux", target_os = "android")))]
pub trait BatchSocket {}
#[cfg(not(any(target_os = "linux", target_os = "android")))]
impl<T> BatchSocket for T {}

/// The socket's batched-read state and its [`RECV_BATCH`] receive slots.
#[cfg(any(target_os = "linux", target_os = "android"))]
pub(crate) struct BatchReader {
    state: quinn_udp::UdpSocketState,
    /// `RECV_BATCH` slots of `RECV_BUFFER_LEN` bytes: any datagram fits, and so does a GRO
    /// train (the kernel joins same-sized datagrams from one source into one IP packet of
    /// at most 64 KiB; `RecvMeta::stride` splits it again). Zeroed memory from the allocator
    /// is mapped lazily, so the pages a busy socket never writes cost no RAM.
    slots: Box<[u8]>,
    meta: [quinn_udp::RecvMeta; RECV_BATCH],
}

#[cfg(any(target_os = "linux", target_os = "android"))]
impl BatchReader {
    /// Sets `socket` up for batched reads (see [`IoMode::Batched`] for what quinn-udp
    /// changes) and allocates the slots.
    pub(crate) fn new(socket: &impl BatchSocket) -> io::Result<Self> {
        let state = quinn_udp::UdpSocketState::new(socket.into())?;
        // Shoal reads neither the TOS byte nor the destination address that quinn-udp asks
        // the kernel to attach to every datagram: writing those control messages made a
        // batched read cost 20% more CPU per datagram than `recv_from` on loopback. An IPv6
        // socket refuses these IPv4 options; nothing is lost.
        let _ = socket2::SockRef::from(socket).set_recv_tos_v4(false);
        let _ = nix::sys::socket::setsockopt(
            &socket.as_fd(),
            nix::sys::socket::sockopt::Ipv4PacketInfo,
            &false,
        );
        // Their IPv6 twins too: with GRO's segment size and the timestamp, their control
        // messages would also overflow the room quinn-udp gives them (96 bytes), and the
        // kernel would cut what does not fit. An IPv4 socket refuses these.
        let _ = nix::sys::socket::setsockopt(
            &socket.as_fd(),
            nix::sys::socket::sockopt::Ipv6RecvPacketInfo,
            &false,
        );
        let _ = nix::sys::socket::setsockopt(
            &socket.as_fd(),
            nix::sys::socket::sockopt::Ipv6RecvTClass,
            &false,
        );
        Ok(BatchReader {
            state,
            slots: vec![0; RECV_BATCH * RECV_BUFFER_LEN].into_boxed_slice(),
            meta: [quinn_udp::RecvMeta::default(); RECV_BATCH],
        })
    }

    /// Most datagrams one segmented send (UDP GSO) may carry on this socket: 1 where the
    /// kernel cannot, and from the first send the device refused (it drops to 1 by itself).
    /// (Batched sends are Linux's: on Android these two go unused.)
    #[cfg_attr(target_os = "android", allow(dead_code))]
    pub(crate) fn max_segments(&self) -> usize {
        self.state.max_gso_segments()
    }

    /// Sends `train` as one segmented datagram: one `sendmsg`, which the kernel (or the
    /// network card) cuts into the train's datagrams again.
    #[cfg_attr(target_os = "android", allow(dead_code))]
    pub(crate) fn send_train(&self, socket: &impl BatchSocket, train: Train<'_>) -> io::Result<()> {
        let transmit = quinn_udp::Transmit {
            destination: train.to,
            ecn: None,
            contents: train.bytes,
            segment_size: Some(train.segment),
            src_ip: None,
        };
        self.state.try_send(socket.into(), &transmit)
    }

    /// One `recvmmsg` of at most `max` (1 to [`RECV_BATCH`]) buffers; calls `deliver` with
    /// each datagram in arrival order. Returns how many datagrams it delivered (at least
    /// one), or the call's error (`WouldBlock` when nothing was waiting).
    pub(crate) fn read(
        &mut self,
        socket: &impl BatchSocket,
        max: usize,
        mut deliver: impl FnMut(SocketAddr, &[u8]),
    ) -> io::Result<usize> {
        let slots = max.clamp(1, RECV_BATCH);
        let mut chunks = self.slots.chunks_mut(RECV_BUFFER_LEN);
        let mut bufs: [io::IoSliceMut<'_>; RECV_BATCH] =
            std::array::from_fn(|_| io::IoSliceMut::new(chunks.next().expect("RECV_BATCH slots")));
        let filled = self
            .state
            .recv(socket.into(), &mut bufs[..slots], &mut self.meta[..slots])?;
        let mut delivered = 0;
        for (buf, meta) in bufs.iter().zip(&self.meta).take(filled) {
            let data = &buf[..meta.len.min(buf.len())];
            let stride = if meta.stride == 0 {
                data.len().max(1)
            } else {
                meta.stride
            };
            if data.is_empty() {
                // An empty datagram (the background thread's wake-up is one).
                deliver(meta.addr, data);
                delivered += 1;
                continue;
            }
            for datagram in data.chunks(stride) {
                deliver(meta.addr, datagram);
                delivered += 1;
            }
        }
        Ok(delivered)
    }
}

/// Waits up to `wait` (`None`: forever) until `socket` has something to read, without
/// reading it: whether it has. A signal ends the wait early (`false`), so the caller works its
/// wait out again rather than starting the whole of it anew.
#[cfg(any(target_os = "linux", target_os = "android"))]
pub(crate) fn wait_readable(
    socket: &impl BatchSocket,
    wait: Option<std::time::Duration>,
) -> io::Result<bool> {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    // Whole milliseconds, rounded up: rounded down, a wait under one would not wait at all.
    let timeout = match wait {
        None => PollTimeout::NONE,
        Some(w) => {
            let millis = w.as_nanos().div_ceil(1_000_000);
            PollTimeout::try_from(millis).unwrap_or(PollTimeout::MAX)
        }
    };
    let mut fds = [PollFd::new(socket.as_fd(), PollFlags::POLLIN)];
    match poll(&mut fds, timeout) {
        Ok(ready) => Ok(ready > 0),
        Err(nix::errno::Errno::EINTR) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Turns UDP GRO off: a socket read with `recv_from`, one datagram a call, must get its
/// datagrams one at a time. One a batched reader set up (or half set up: quinn-udp turns
/// GRO on before the options that can fail) would join a train into one read, which the
/// endpoint drops as a single oversized datagram.
#[cfg(any(target_os = "linux", target_os = "android"))]
pub(crate) fn unbatch(socket: &impl BatchSocket) {
    // A kernel without GRO has it off already.
    let _ = nix::sys::socket::setsockopt(
        &socket.as_fd(),
        nix::sys::socket::sockopt::UdpGroSegment,
        &false,
    );
}

/// Elsewhere sockets are never set up for batched reads.
#[cfg(not(any(target_os = "linux", target_os = "android")))]
pub(crate) fn unbatch(_socket: &impl BatchSocket) {}

/// Elsewhere a driver is never batched, so this is never called: it reports the socket
/// readable, and the (portable) read that follows finds out.
#[cfg(not(any(target_os = "linux", target_os = "android")))]
pub(crate) fn wait_readable(
    _socket: &impl BatchSocket,
    _wait: Option<std::time::Duration>,
) -> io::Result<bool> {
    Ok(true)
}

/// Stand-in where the OS has no batched read: it cannot be made, so drivers stay portable.
#[cfg(not(any(target_os = "linux", target_os = "android")))]
pub(crate) struct BatchReader {
    _never: std::convert::Infallible,
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
impl BatchReader {
    pub(crate) fn new(_socket: &impl BatchSocket) -> io::Result<Self> {
        Err(io::ErrorKind::Unsupported.into())
    }

    pub(crate) fn read(
        &mut self,
        _socket: &impl BatchSocket,
        _max: usize,
        _deliver: impl FnMut(SocketAddr, &[u8]),
    ) -> io::Result<usize> {
        match self._never {}
    }

    pub(crate) fn max_segments(&self) -> usize {
        match self._never {}
    }

    pub(crate) fn send_train(
        &self,
        _socket: &impl BatchSocket,
        _train: Train<'_>,
    ) -> io::Result<()> {
        match self._never {}
    }
}

impl std::fmt::Debug for BatchReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BatchReader")
            .field("slots", &RECV_BATCH)
            .finish_non_exhaustive()
    }
}
