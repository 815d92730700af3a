//! Bulk transfer on loopback: a server `Driver` on its own thread keeps 64 KiB reliable
//! ordered messages queued to one client `Driver` on another, and the client counts what
//! arrives. The figures that matter for the send path are the server's: the datagrams it
//! sent per second and the CPU time its thread spent per datagram (from
//! `/proc/thread-self/schedstat`, Linux only), since writing is where a bulk sender pays a
//! system call per datagram, or, with segmented sends (UDP GSO in `IoMode::Batched` on
//! Linux), one per train of them.
//!
//! Run: `cargo bench -p shoal-std --bench bulk_loopback`. Environment: `SHOAL_IO=batched` for
//! batched I/O on both sides (`recvmmsg`, `sendmmsg`, GSO and GRO) instead of the portable
//! path (one `recv_from` or `send_to` per datagram, the default), `SHOAL_SECONDS` (measured
//! time, default 4), `SHOAL_PROTECTION=none` to send without packet protection.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use shoal_std::{Config, Driver, Event, IoMode, Protection};

/// The reliable ordered channel of the default config.
const ORDERED: u8 = 3;
const MESSAGE: usize = 64 * 1024;
const WARM_UP: Duration = Duration::from_secs(1);

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// CPU time this thread has run, in nanoseconds (Linux); `None` elsewhere.
fn thread_cpu_ns() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    text.split_whitespace().next()?.parse().ok()
}

fn main() {
    let seconds: u64 = env_or("SHOAL_SECONDS", 4);
    let io_mode = match std::env::var("SHOAL_IO").as_deref() {
        Ok("batched") => IoMode::Batched,
        _ => IoMode::Portable,
    };
    let protection = match std::env::var("SHOAL_PROTECTION").as_deref() {
        Ok("none") => Protection::None,
        _ => Protection::default(),
    };
    let config = |seed: u64, server: bool| Config {
        seed,
        protection,
        accept_incoming: server,
        ..Config::default()
    };
    let mut server = Driver::bind_with("127.0.0.1:0", config(1, true), io_mode).expect("bind");
    let mut client =
        Driver::bind_with("127.0.0.1:0", config(2, false), io_mode).expect("bind client");
    client
        .connect(server.local_addr(), &[])
        .expect("connect starts");
    let done = Arc::new(AtomicBool::new(false));
    let delivered = Arc::new(AtomicU64::new(0));
    let client_thread = {
        let (done, delivered) = (done.clone(), delivered.clone());
        std::thread::spawn(move || {
            let mut events = Vec::new();
            while !done.load(Ordering::Relaxed) {
                client
                    .poll(Some(Duration::from_millis(5)))
                    .expect("client poll");
                client.drain_events(&mut events);
                for event in events.drain(..) {
                    if let Event::Message { payload, .. } = event {
                        delivered.fetch_add(payload.len() as u64, Ordering::Relaxed);
                    }
                }
            }
        })
    };
    let payload = shoal_std::Bytes::from(vec![7u8; MESSAGE]);
    let started = Instant::now();
    let mut measured: Option<(Instant, u64, u64, Option<u64>)> = None;
    let end = started + WARM_UP + Duration::from_secs(seconds);
    let mut events = Vec::new();
    while Instant::now() < end {
        server.update().expect("server update");
        server.drain_events(&mut events);
        if let Some(&conn) = server.peers().first() {
            // Keep the channel's queue full: a refused send waits for room.
            while server.send(conn, ORDERED, payload.clone()).is_ok() {}
            server.flush();
        }
        if measured.is_none() && started.elapsed() >= WARM_UP {
            measured = Some((
                Instant::now(),
                delivered.load(Ordering::Relaxed),
                server.endpoint().stats().datagrams_sent,
                thread_cpu_ns(),
            ));
        }
    }
    let (t0, bytes0, sent0, cpu0) = measured.expect("warmed up");
    let wall = t0.elapsed().as_secs_f64();
    let bytes = delivered.load(Ordering::Relaxed) - bytes0;
    let sent = server.endpoint().stats().datagrams_sent - sent0;
    let cpu = cpu0.zip(thread_cpu_ns()).map(|(a, b)| b - a);
    done.store(true, Ordering::Relaxed);
    client_thread.join().expect("client thread");
    let stats = server.stats();
    println!(
        "bulk over loopback, io {io_mode:?}, protection {protection:?}: {:.1} MB/s delivered, \
         {:.0} datagrams/s sent by the server",
        bytes as f64 / wall / 1e6,
        sent as f64 / wall
    );
    if let Some(cpu) = cpu {
        println!(
            "server thread CPU: {:.2} us per datagram sent ({:.0}% of one core)",
            cpu as f64 / 1e3 / sent.max(1) as f64,
            cpu as f64 / 1e9 / wall * 100.0
        );
    }
    println!(
        "segmented sends: {} carrying {} datagrams (whole run); send errors {}",
        stats.segmented_sends, stats.segmented_datagrams, stats.send_errors
    );
}
