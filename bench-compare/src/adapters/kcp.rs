//! KCP (the `kcp` crate): one control object per client on each side, `conv` = client id,
//! output through a writer into the harness's outbox. KCP is one reliable ordered stream of
//! messages per conversation: it has no unreliable channel and no handshake.
//! Settings: the "fast" mode its README recommends for games (`nodelay`, 10 ms interval,
//! fast resend after 2 duplicate acks, no congestion window), 1,024-segment windows, a
//! 1,200-byte MTU like Shoal's, and a flush after every send and input so nothing waits
//! for the next 10 ms update.

use std::cell::RefCell;
use std::io::Write;
use std::rc::Rc;

use kcp::Kcp;

use super::{Channel, SendError, Sink, Stack};
use crate::link::{Datagram, Node, SERVER};

type Outbox = Rc<RefCell<Vec<Datagram>>>;

/// KCP's output callback: every write is one datagram from `from` to `to`.
pub struct Writer {
    from: Node,
    to: Node,
    outbox: Outbox,
}

impl Write for Writer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.outbox.borrow_mut().push(Datagram {
            from: self.from,
            to: self.to,
            bytes: buf.to_vec(),
        });
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

struct Side {
    kcp: Kcp<Writer>,
    dirty: bool,
}

/// The server's control objects (one per client) and each client's.
pub struct KcpStack {
    server: Vec<Side>,
    clients: Vec<Side>,
    outbox: Outbox,
    buf: Vec<u8>,
}

const WINDOW: u16 = 1024;

fn side(conv: u32, from: Node, to: Node, outbox: &Outbox) -> Side {
    let mut kcp = Kcp::new(
        conv,
        Writer {
            from,
            to,
            outbox: Rc::clone(outbox),
        },
    );
    kcp.set_nodelay(true, 10, 2, true);
    kcp.set_wndsize(WINDOW, WINDOW);
    kcp.set_mtu(1200).expect("mtu");
    Side { kcp, dirty: false }
}

impl KcpStack {
    /// A server and `n` clients (KCP has no handshake: they can send at once).
    pub fn new(n: usize) -> Self {
        let outbox: Outbox = Rc::default();
        let server = (0..n)
            .map(|i| side(i as u32 + 1, SERVER, i + 1, &outbox))
            .collect();
        let clients = (0..n)
            .map(|i| side(i as u32 + 1, i + 1, SERVER, &outbox))
            .collect();
        KcpStack {
            server,
            clients,
            outbox,
            buf: vec![0; 64 * 1024],
        }
    }

    fn side(&mut self, node: Node, peer: Node) -> &mut Side {
        if node == SERVER {
            &mut self.server[peer - 1]
        } else {
            &mut self.clients[node - 1]
        }
    }
}

/// Why KCP cannot run a scenario on an unreliable channel.
pub const NO_UNRELIABLE: &str =
    "KCP has no unreliable channel: every message is retransmitted until acknowledged";

impl Stack for KcpStack {
    fn unsupported(&self, channel: Channel) -> Option<&'static str> {
        (channel == Channel::Unreliable).then_some(NO_UNRELIABLE)
    }

    fn connected(&self) -> usize {
        self.clients.len()
    }

    fn send(
        &mut self,
        from: Node,
        to: Node,
        channel: Channel,
        payload: &[u8],
    ) -> Result<(), SendError> {
        if channel == Channel::Unreliable {
            return Err(SendError::Unsupported(NO_UNRELIABLE));
        }
        let s = self.side(from, to);
        if s.kcp.wait_snd() >= 2 * WINDOW as usize {
            return Err(SendError::WouldBlock);
        }
        s.kcp.send(payload).map_err(|_| SendError::NotConnected)?;
        s.dirty = true;
        Ok(())
    }

    fn handle_datagram(&mut self, _now: u64, from: Node, to: Node, bytes: &[u8]) {
        let s = self.side(to, from);
        if s.kcp.input(bytes).is_ok() {
            s.dirty = true;
        }
    }

    fn poll(&mut self, now: u64, node: Node, out: &mut Vec<Datagram>, sink: &mut Sink<'_>) {
        let ms = (now / 1000) as u32;
        let range = if node == SERVER {
            0..self.server.len()
        } else {
            0..1
        };
        for k in range {
            let (s, peer) = if node == SERVER {
                (&mut self.server[k], k + 1)
            } else {
                (&mut self.clients[node - 1], SERVER)
            };
            while let Ok(n) = s.kcp.recv(&mut self.buf) {
                if let Some(reply) = sink(peer, Channel::Ordered, &self.buf[..n]) {
                    let _ = s.kcp.send(&reply);
                    s.dirty = true;
                }
            }
            let _ = s.kcp.update(ms);
            if s.dirty {
                let _ = s.kcp.flush();
                s.dirty = false;
            }
        }
        out.append(&mut self.outbox.borrow_mut());
    }
}
