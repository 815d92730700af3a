//! Server throughput on loopback: one server `Driver` on its own thread and many client
//! `Driver`s (500 by default) on the main thread, each sending a 32-byte unreliable message
//! per round, as fast as one thread can. The figure that matters for batched I/O is the
//! server's: datagrams it read per second and the CPU time its thread spent per datagram
//! (from `/proc/thread-self/schedstat`, Linux only), since reading is where the server pays a
//! system call per datagram.
//!
//! It first measures the read path alone (one sender of datagrams that are not Shoal packets,
//! see `read_path`). The server then runs a frame loop: `update`, then sleep for a tick (2 ms by default), so the
//! datagrams of a tick wait in the socket and are read together, as on a game server.
//!
//! With `SHOAL_BROADCAST=1` the traffic goes the other way, for the send path: the clients
//! send nothing and the server broadcasts a 32-byte unreliable message to every client each
//! tick, so each `update` flushes one datagram per client (the server's sends are what
//! batched I/O should make cheaper there); the figures are the server's CPU per datagram it
//! sent and the wall time of the `flush` that sends each broadcast (building the datagrams,
//! encrypting them and handing them to the socket) per datagram. The read path is skipped
//! then.
//!
//! Run: `cargo bench -p shoal-std --bench many_clients`. Environment: `SHOAL_CLIENTS`
//! (default 500; 0 runs the read path alone), `SHOAL_SECONDS` (measured time, default 5), `SHOAL_TICK_MS` (default 2; 0
//! drives the server with the blocking `poll` instead), `SHOAL_IO=batched` to run the
//! server on the batched path (`recvmmsg`, `sendmmsg`) instead of the portable one (one
//! `recv_from` or `send_to` per datagram, the default), `SHOAL_BROADCAST=1` for the send
//! path.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use shoal_std::{Config, ConnectionHandle, Driver, Event, IoMode};

const UNRELIABLE: u8 = 0;
const WARM_UP: Duration = Duration::from_secs(1);

const WARMING: u8 = 0;
const MEASURING: u8 = 1;
const STOPPED: u8 = 2;

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

/// What the server saw while measuring.
struct ServerFigures {
    seconds: f64,
    datagrams: u64,
    sent: u64,
    /// Wall time in `flush` right after each broadcast, and the datagrams it sent.
    flush_ns: u64,
    flushed: u64,
    messages: u64,
    cpu_ns: Option<u64>,
}

/// Drives the server as a game does: `update` once per tick of `tick` (zero: the blocking
/// `poll`, woken by each datagram), so datagrams pile up between ticks and are read together.
/// With `broadcast`, it first queues a 32-byte unreliable message to every client each tick.
fn run_server(
    server: &mut Driver,
    phase: &AtomicU8,
    tick: Duration,
    broadcast: bool,
) -> ServerFigures {
    let mut events = Vec::new();
    let mut messages = 0u64;
    let mut start = None;
    let (mut flush_ns, mut flushed) = (0u64, 0u64);
    loop {
        if broadcast && phase.load(Ordering::Relaxed) != STOPPED {
            server.broadcast(UNRELIABLE, &[9u8; 32][..], None);
            // The send path alone: building the tick's datagrams and handing them to the
            // socket.
            let sent_before = server.endpoint().stats().datagrams_sent;
            let flush_start = Instant::now();
            server.flush();
            if start.is_some() {
                flush_ns += flush_start.elapsed().as_nanos() as u64;
                flushed += server.endpoint().stats().datagrams_sent - sent_before;
            }
        }
        if tick.is_zero() {
            server.poll(Some(Duration::from_millis(5))).expect("poll");
        } else {
            std::thread::sleep(tick);
            server.update().expect("update");
        }
        server.drain_events(&mut events);
        let received = events
            .drain(..)
            .filter(|e| matches!(e, Event::Message { .. }))
            .count() as u64;
        match phase.load(Ordering::Relaxed) {
            WARMING => {}
            MEASURING => {
                if start.is_none() {
                    let stats = server.endpoint().stats();
                    start = Some((
                        Instant::now(),
                        stats.datagrams_received,
                        stats.datagrams_sent,
                        thread_cpu_ns(),
                    ));
                }
                messages += received;
            }
            _ => break,
        }
    }
    let (t0, d0, s0, c0) = start.expect("the measurement started");
    let stats = server.endpoint().stats();
    ServerFigures {
        seconds: t0.elapsed().as_secs_f64(),
        datagrams: stats.datagrams_received - d0,
        sent: stats.datagrams_sent - s0,
        flush_ns,
        flushed,
        messages,
        cpu_ns: c0.zip(thread_cpu_ns()).map(|(a, b)| b - a),
    }
}

/// The read path alone: a plain socket sends 32-byte datagrams that are not Shoal packets as
/// fast as it can; a server `Driver` in `io_mode` reads them once per 1 ms tick (the endpoint
/// drops each after a glance at its header). Returns datagrams read per second and the server
/// thread's CPU nanoseconds per datagram.
fn read_path(io_mode: IoMode, seconds: u64) -> (f64, Option<f64>) {
    let mut server = Driver::bind_with("127.0.0.1:0", Config::default(), io_mode).expect("bind");
    let to = server.local_addr();
    let stop = Arc::new(AtomicU8::new(WARMING));
    let sender_stop = Arc::clone(&stop);
    let sender = std::thread::spawn(move || {
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        while sender_stop.load(Ordering::Relaxed) != STOPPED {
            for _ in 0..64 {
                // A full socket buffer at the server drops datagrams; that is fine here.
                let _ = socket.send_to(&[0xEE; 32], to);
            }
        }
    });
    let tick = Duration::from_millis(1);
    let warm_until = Instant::now() + WARM_UP;
    while Instant::now() < warm_until {
        std::thread::sleep(tick);
        server.update().expect("update");
    }
    let (t0, d0, c0) = (
        Instant::now(),
        server.endpoint().stats().datagrams_received,
        thread_cpu_ns(),
    );
    while t0.elapsed() < Duration::from_secs(seconds) {
        std::thread::sleep(tick);
        server.update().expect("update");
    }
    let datagrams = server.endpoint().stats().datagrams_received - d0;
    let cpu = c0.zip(thread_cpu_ns()).map(|(a, b)| (b - a) as f64);
    let elapsed = t0.elapsed().as_secs_f64();
    stop.store(STOPPED, Ordering::Relaxed);
    sender.join().expect("sender");
    (
        datagrams as f64 / elapsed,
        cpu.map(|ns| ns / datagrams.max(1) as f64),
    )
}

fn main() {
    let clients_wanted: usize = env_or("SHOAL_CLIENTS", 500);
    let seconds: u64 = env_or("SHOAL_SECONDS", 5);
    let tick = Duration::from_millis(env_or("SHOAL_TICK_MS", 2));
    let broadcast = env_or("SHOAL_BROADCAST", 0u8) != 0;
    let io_mode = match std::env::var("SHOAL_IO").as_deref() {
        Ok("batched") => IoMode::Batched,
        _ => IoMode::Portable,
    };
    if !broadcast {
        let (rate, cpu) = read_path(io_mode, seconds);
        println!(
            "read path, server io {:?}: {rate:.0} datagrams/s read, {} per datagram",
            Driver::bind_with("127.0.0.1:0", Config::default(), io_mode)
                .expect("bind")
                .io_mode(),
            cpu.map_or("CPU n/a".to_string(), |ns| format!(
                "{:.2} us CPU",
                ns / 1e3
            )),
        );
    }

    if clients_wanted == 0 {
        return;
    }

    // Every client is on 127.0.0.1: the per-address limit must take them all.
    let server_config = Config {
        max_connections_per_ip: clients_wanted,
        ..Config::default()
    };
    let mut server = Driver::bind_with("127.0.0.1:0", server_config, io_mode).expect("bind");
    let server_addr = server.local_addr();
    let effective = server.io_mode();
    let phase = Arc::new(AtomicU8::new(WARMING));
    let server_phase = Arc::clone(&phase);
    let server_thread =
        std::thread::spawn(move || run_server(&mut server, &server_phase, tick, broadcast));

    let mut clients: Vec<(Driver, ConnectionHandle)> = (0..clients_wanted)
        .map(|_| {
            let config = Config {
                accept_incoming: false,
                ..Config::default()
            };
            let mut driver = Driver::bind("127.0.0.1:0", config).expect("bind");
            let conn = driver.connect(server_addr, &[]).expect("connect");
            (driver, conn)
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut connected = 0;
    while connected < clients.len() {
        assert!(Instant::now() < deadline, "handshakes timed out");
        for (client, _) in &mut clients {
            client.update().expect("update");
            connected += client
                .events()
                .filter(|e| matches!(e, Event::Connected { .. }))
                .count();
        }
    }

    let payload = [7u8; 32];
    let mut sent = 0u64;
    let mut sent_at_start = 0;
    let mut clients_received = 0u64;
    let started = Instant::now();
    loop {
        let elapsed = started.elapsed();
        if elapsed >= WARM_UP && phase.load(Ordering::Relaxed) == WARMING {
            sent_at_start = sent;
            phase.store(MEASURING, Ordering::Relaxed);
        }
        if elapsed >= WARM_UP + Duration::from_secs(seconds) {
            phase.store(STOPPED, Ordering::Relaxed);
            break;
        }
        if !broadcast {
            for (client, conn) in &mut clients {
                if client.send(*conn, UNRELIABLE, payload.to_vec()).is_ok() {
                    sent += 1;
                }
                client.flush();
            }
        }
        for (client, _) in &mut clients {
            client.update().expect("update");
            let arrived = client
                .events()
                .filter(|e| matches!(e, Event::Message { .. }))
                .count();
            if phase.load(Ordering::Relaxed) == MEASURING {
                clients_received += arrived as u64;
            }
        }
    }
    let sent = sent - sent_at_start;
    let figures = server_thread.join().expect("server thread");

    let per_second = |n: u64| n as f64 / figures.seconds;
    let cpu_line = |n: u64, what: &str| match figures.cpu_ns {
        Some(ns) => println!(
            "server thread CPU: {:.2} us per datagram {what} ({:.0}% of one core)",
            ns as f64 / 1e3 / n.max(1) as f64,
            100.0 * ns as f64 / 1e9 / figures.seconds
        ),
        None => println!("server thread CPU: not available on this platform"),
    };
    if broadcast {
        println!(
            "{} clients, server io {:?}, tick {:?}, server broadcasts: {:.0} datagrams/s sent by \
             the server ({:.0} read), {:.0} messages/s delivered to the clients",
            clients.len(),
            effective,
            tick,
            per_second(figures.sent),
            per_second(figures.datagrams),
            per_second(clients_received),
        );
        cpu_line(figures.sent, "sent");
        println!(
            "flush after each broadcast: {:.2} us per datagram sent (wall time, {} datagrams)",
            figures.flush_ns as f64 / 1e3 / figures.flushed.max(1) as f64,
            figures.flushed
        );
        return;
    }
    println!(
        "{} clients, server io {:?}, tick {:?}: {:.0} datagrams/s read by the server, {:.0} messages/s \
         delivered ({:.0} sent/s, {:.1}% arrived); {:.0} datagrams/s sent by the server",
        clients.len(),
        effective,
        tick,
        per_second(figures.datagrams),
        per_second(figures.messages),
        per_second(sent),
        100.0 * figures.messages as f64 / sent.max(1) as f64,
        per_second(figures.sent),
    );
    cpu_line(figures.datagrams, "read");
}
