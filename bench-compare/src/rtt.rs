//! Round trips over loopback UDP in real time: every library through the same driver (two
//! non-blocking sockets, one thread spinning both), beside raw UDP ping-pong.

use std::io::ErrorKind;
use std::net::UdpSocket;
use std::time::{Duration, Instant};

use crate::adapters::{Channel, Lib};
use crate::link::{Datagram, Node, SERVER};
use crate::msg::{self, MESSAGE_SIZE};

const WARMUP: usize = 200;

fn sockets() -> std::io::Result<(UdpSocket, UdpSocket)> {
    let server = UdpSocket::bind("127.0.0.1:0")?;
    let client = UdpSocket::bind("127.0.0.1:0")?;
    server.set_nonblocking(true)?;
    client.set_nonblocking(true)?;
    Ok((server, client))
}

/// One library's round trips.
pub struct Trips {
    /// Round-trip times (µs, sorted).
    pub samples: Vec<f64>,
    /// Datagrams both sides sent per ping, warm-up and handshake included.
    pub datagrams_per_ping: f64,
}

/// Round trips of `pings` 32-byte reliable ordered messages and their echo.
pub fn library(lib: Lib, pings: usize, seed: u64) -> Result<Trips, String> {
    let (server_sock, client_sock) = sockets().map_err(|e| e.to_string())?;
    let server_addr = server_sock.local_addr().map_err(|e| e.to_string())?;
    let client_addr = client_sock.local_addr().map_err(|e| e.to_string())?;
    let origin = Instant::now();
    let now = || origin.elapsed().as_micros() as u64;
    // The ping carries its send time in nanoseconds (the field is the message's timestamp).
    let now_ns = || origin.elapsed().as_nanos() as u64;
    let mut stack = lib.build(1, seed, now(), false);
    let mut out: Vec<Datagram> = Vec::new();
    let mut buf = [0u8; 2048];
    let mut samples = Vec::with_capacity(pings);
    let mut in_flight: Option<u32> = None;
    let mut next_seq = 0u32;
    let mut datagrams = 0u64;
    let mut failure: Option<String> = None;
    let deadline = Instant::now() + Duration::from_secs(60);
    while samples.len() < pings {
        if Instant::now() > deadline {
            return Err(format!("{} of {pings} round trips in 60 s", samples.len()));
        }
        let t = now();
        if in_flight.is_none() && stack.connected() == 1 {
            let mut m = [0u8; MESSAGE_SIZE];
            msg::encode(&mut m, 1, next_seq, now_ns());
            match stack.send(1, SERVER, Channel::Ordered, &m) {
                Ok(()) => {
                    in_flight = Some(next_seq);
                    next_seq += 1;
                }
                Err(e) => return Err(format!("send refused: {e:?}")),
            }
        }
        for node in [1, SERVER] {
            stack.poll(
                t,
                node,
                &mut out,
                &mut |from: Node, channel, bytes: &[u8]| {
                    let checked = msg::decode(bytes).and_then(|h| {
                        if channel != Channel::Ordered || h.sender != 1 {
                            return Err(format!("message of {} on {channel:?}", h.sender));
                        }
                        Ok(h)
                    });
                    match checked {
                        Err(e) => {
                            failure.get_or_insert(e);
                            None
                        }
                        // The server echoes the ping as it came.
                        Ok(_) if node == SERVER && from == 1 => {
                            let mut m = [0u8; MESSAGE_SIZE];
                            m.copy_from_slice(bytes);
                            Some(m)
                        }
                        Ok(h) => {
                            if in_flight != Some(h.seq) {
                                failure.get_or_insert(format!("echo of {} out of turn", h.seq));
                            }
                            in_flight = None;
                            if h.seq as usize >= WARMUP {
                                samples.push((now_ns() - h.sent_us) as f64 / 1000.0);
                            }
                            None
                        }
                    }
                },
            );
            for d in out.drain(..) {
                let (sock, to) = if d.from == SERVER {
                    (&server_sock, client_addr)
                } else {
                    (&client_sock, server_addr)
                };
                sock.send_to(&d.bytes, to).map_err(|e| e.to_string())?;
                datagrams += 1;
            }
        }
        if let Some(e) = failure {
            return Err(e);
        }
        for (sock, from, to) in [(&server_sock, 1, SERVER), (&client_sock, SERVER, 1)] {
            loop {
                match sock.recv_from(&mut buf) {
                    Ok((n, _)) => stack.handle_datagram(now(), from, to, &buf[..n]),
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(e) => return Err(e.to_string()),
                }
            }
        }
    }
    samples.sort_by(f64::total_cmp);
    Ok(Trips {
        samples,
        datagrams_per_ping: datagrams as f64 / f64::from(next_seq.max(1)),
    })
}

/// Raw UDP: the client sends 32 bytes, the server sends them back; same sockets and spin.
pub fn raw_udp(pings: usize) -> Result<Vec<f64>, String> {
    let (server, client) = sockets().map_err(|e| e.to_string())?;
    let server_addr = server.local_addr().map_err(|e| e.to_string())?;
    let mut buf = [0u8; 2048];
    let mut samples = Vec::with_capacity(pings);
    for i in 0..pings + WARMUP {
        let mut m = [0u8; MESSAGE_SIZE];
        msg::encode(&mut m, 1, i as u32, 0);
        let started = Instant::now();
        client.send_to(&m, server_addr).map_err(|e| e.to_string())?;
        let from = loop {
            match server.recv_from(&mut buf) {
                Ok((n, from)) if n == MESSAGE_SIZE => break from,
                Ok(_) => return Err("short datagram".into()),
                Err(e) if e.kind() == ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e.to_string()),
            }
        };
        server
            .send_to(&buf[..MESSAGE_SIZE], from)
            .map_err(|e| e.to_string())?;
        loop {
            match client.recv_from(&mut buf) {
                Ok((n, _)) if n == MESSAGE_SIZE => break,
                Ok(_) => return Err("short datagram".into()),
                Err(e) if e.kind() == ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e.to_string()),
            }
        }
        msg::decode(&buf[..MESSAGE_SIZE])?;
        if i >= WARMUP {
            samples.push(started.elapsed().as_nanos() as f64 / 1000.0);
        }
    }
    samples.sort_by(f64::total_cmp);
    Ok(samples)
}
