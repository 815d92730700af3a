//! The endpoint's timer wake-ups stay exact across the heap and the wheel that hold them:
//! a server grows past 256 queued wake-ups (a wheel), then loses connections until a rebuild
//! makes a heap again, and through all of it every connection keeps a wake-up at or before
//! its deadline and, while the wake-ups are a heap, `poll_timeout` is the earliest deadline.
#![cfg(feature = "fuzzing")]

use std::net::SocketAddr;
use std::time::Duration;

use shoal_proto::fuzzing::check_wakeups;
use shoal_proto::{Config, ConnectionHandle, Endpoint, Instant, SecretSeed};

fn config(seed: u64, accept_incoming: bool) -> Config {
    Config {
        seed,
        secret_seed: Some(SecretSeed::insecure_from_u64(seed)),
        accept_incoming,
        max_connections: 100,
        ..Config::default()
    }
}

struct Swarm {
    server: Endpoint,
    server_addr: SocketAddr,
    clients: Vec<(Endpoint, SocketAddr, Option<ConnectionHandle>)>,
    now: Instant,
    buf: Vec<u8>,
}

impl Swarm {
    /// One 10 ms step: every client sends a message now and then (so acknowledgement and
    /// loss timers move both ways), everything is delivered at once, the server's
    /// wake-ups are checked after each of its calls.
    fn step(&mut self, round: usize) {
        for (i, (c, addr, conn)) in self.clients.iter_mut().enumerate() {
            if let Some(conn) = *conn {
                if (round + i) % 3 == 0 {
                    let _ = c.send(conn, 0, vec![1u8; 20]);
                }
            }
            c.handle_timeout(self.now);
            while let Some(t) = c.poll_transmit(self.now, &mut self.buf) {
                self.server
                    .handle_datagram(self.now, *addr, &self.buf[..t.len]);
                check_wakeups(&self.server);
            }
        }
        self.server.handle_timeout(self.now);
        check_wakeups(&self.server);
        while let Some(t) = self.server.poll_transmit(self.now, &mut self.buf) {
            check_wakeups(&self.server);
            if let Some((c, _, _)) = self.clients.iter_mut().find(|(_, a, _)| *a == t.to) {
                c.handle_datagram(self.now, self.server_addr, &self.buf[..t.len]);
            }
        }
        while self.server.poll_event().is_some() {}
        check_wakeups(&self.server);
        for (c, _, _) in self.clients.iter_mut() {
            while c.poll_event().is_some() {}
        }
        self.now += Duration::from_millis(10);
    }
}

#[test]
fn wake_ups_keep_their_invariants_while_a_server_grows_into_a_wheel_and_shrinks_back() {
    let mut swarm = Swarm {
        server: Endpoint::new(config(1, true)).expect("valid"),
        server_addr: "10.0.0.1:4000".parse().expect("address"),
        clients: (0..80u64)
            .map(|i| {
                let addr = SocketAddr::from(([10, 1, 0, i as u8 + 1], 5000));
                let client = Endpoint::new(config(100 + i, false)).expect("valid");
                (client, addr, None)
            })
            .collect(),
        now: Instant::from_millis(1),
        buf: vec![0u8; 1500],
    };
    for (c, _, conn) in swarm.clients.iter_mut() {
        *conn = Some(
            c.connect(swarm.now, swarm.server_addr, b"")
                .expect("connect"),
        );
    }
    for round in 0..300 {
        swarm.step(round);
    }
    assert_eq!(swarm.server.peers().count(), 80);
    // Down to 40: the next rebuild makes a heap again.
    for (c, _, conn) in swarm.clients.iter_mut().skip(40) {
        if let Some(conn) = conn.take() {
            c.disconnect(conn, 0);
        }
    }
    for round in 300..900 {
        swarm.step(round);
    }
    assert_eq!(swarm.server.peers().count(), 40);
}
