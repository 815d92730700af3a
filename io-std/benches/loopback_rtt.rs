//! Round trip of a 32-byte reliable message between two `shoal-std` drivers on 127.0.0.1,
//! with and without packet protection, measured in the same run (interleaved rounds, so both
//! see the same machine). One thread spins both drivers with the never-blocking `update`, as
//! a game's frame loop would at full speed: the figure is the protocol, the crypto and the
//! four socket calls of a round trip, without scheduler wake-ups.
//!
//! Run: `cargo bench -p shoal-std --bench loopback_rtt` (`SHOAL_IO=batched` reads with
//! `IoMode::Batched`).

use std::time::{Duration, Instant};

use shoal_std::{Config, ConnectionHandle, Driver, Event, IoMode, Protection};

const RELIABLE: u8 = 2;
const ROUNDS: usize = 5;
const PINGS_PER_ROUND: usize = 2_000;

struct Link {
    client: Driver,
    server: Driver,
    conn: ConnectionHandle,
}

impl Link {
    fn new(protection: Protection) -> Link {
        let config = |seed, accept_incoming| Config {
            seed,
            accept_incoming,
            protection,
            ..Config::default()
        };
        let io_mode = match std::env::var("SHOAL_IO").as_deref() {
            Ok("batched") => IoMode::Batched,
            _ => IoMode::Portable,
        };
        let mut server = Driver::bind_with("127.0.0.1:0", config(2, true), io_mode).expect("bind");
        let mut client = Driver::bind_with("127.0.0.1:0", config(1, false), io_mode).expect("bind");
        let conn = client.connect(server.local_addr(), &[]).expect("connect");
        let deadline = Instant::now() + Duration::from_secs(10);
        let (mut up, mut down) = (false, false);
        while !(up && down) {
            assert!(Instant::now() < deadline, "handshake timed out");
            client.update().expect("update");
            server.update().expect("update");
            up |= client
                .events()
                .any(|e| matches!(e, Event::Connected { .. }));
            down |= server
                .events()
                .any(|e| matches!(e, Event::Connected { .. }));
        }
        Link {
            client,
            server,
            conn,
        }
    }

    /// One ping: the client sends, the server echoes, the client receives. Microseconds.
    fn ping(&mut self, payload: &[u8; 32]) -> f64 {
        let start = Instant::now();
        self.client
            .send(self.conn, RELIABLE, payload.to_vec())
            .expect("send");
        self.client.flush();
        loop {
            self.server.update().expect("update");
            let echoes: Vec<(ConnectionHandle, shoal_std::Bytes)> = self
                .server
                .events()
                .filter_map(|e| match e {
                    Event::Message { conn, payload, .. } => Some((conn, payload)),
                    _ => None,
                })
                .collect();
            for (conn, payload) in echoes {
                self.server.send(conn, RELIABLE, payload).expect("echo");
                self.server.flush();
            }
            self.client.update().expect("update");
            if self
                .client
                .events()
                .any(|e| matches!(e, Event::Message { .. }))
            {
                return start.elapsed().as_secs_f64() * 1e6;
            }
            assert!(start.elapsed() < Duration::from_secs(5), "a ping was lost");
        }
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn main() {
    let payload = [7u8; 32];
    let mut links = [
        (
            Protection::Encrypted,
            Link::new(Protection::Encrypted),
            Vec::new(),
        ),
        (Protection::None, Link::new(Protection::None), Vec::new()),
    ];
    // Warm up both, then interleave rounds.
    for (_, link, _) in &mut links {
        for _ in 0..200 {
            link.ping(&payload);
        }
    }
    for _ in 0..ROUNDS {
        for (_, link, samples) in &mut links {
            for _ in 0..PINGS_PER_ROUND {
                samples.push(link.ping(&payload));
            }
        }
    }
    let mut p50s = Vec::new();
    for (protection, _, samples) in &mut links {
        samples.sort_by(f64::total_cmp);
        let (p50, p99) = (percentile(samples, 0.5), percentile(samples, 0.99));
        p50s.push(p50);
        println!(
            "loopback round trip, 32-byte reliable message, {protection:?}: p50 {p50:.1} us, \
             p99 {p99:.1} us ({} pings)",
            samples.len()
        );
    }
    println!("protection adds {:+.1} us at p50", p50s[0] - p50s[1]);
}
