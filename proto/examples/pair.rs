//! Two endpoints in memory, a server and a client, exchanging messages on every channel kind
//! over a link with 20 ms of one-way latency and 10% loss, driven by a virtual clock that jumps
//! to the next event. Prints what happens.
//!
//! Run: `cargo run --release -p shoal-proto --example pair`

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::net::SocketAddr;
use std::time::Duration;

use shoal_proto::{Config, Endpoint, Event, Instant};

/// A datagram on the wire: arrival time, tie-breaker, towards the server?, bytes.
type InFlight = Reverse<(Instant, u64, bool, Vec<u8>)>;

const CHANNEL_NAMES: [&str; 4] = ["unreliable", "sequenced", "reliable", "ordered"];

fn main() {
    let server_addr: SocketAddr = "10.0.0.1:4000".parse().expect("address");
    let client_addr: SocketAddr = "10.0.0.2:5000".parse().expect("address");
    let mut server = Endpoint::new(Config {
        seed: 1,
        secret_seed: Some(shoal_proto::SecretSeed::insecure_from_u64(1)),
        ..Config::default()
    })
    .expect("config");
    let mut client = Endpoint::new(Config {
        seed: 2,
        secret_seed: Some(shoal_proto::SecretSeed::insecure_from_u64(2)),
        accept_incoming: false,
        ..Config::default()
    })
    .expect("config");
    server.set_accept_hook(Box::new(|req| {
        println!(
            "server: accept hook sees {} with data {:?}",
            req.remote,
            String::from_utf8_lossy(req.data)
        );
        Ok(())
    }));

    let mut now = Instant::ZERO;
    let conn = client
        .connect(now, server_addr, b"player one")
        .expect("connect");
    for channel in 0..4u8 {
        for i in 0..5 {
            let text = format!("{} #{i}", CHANNEL_NAMES[channel as usize]);
            client.send(conn, channel, text.into_bytes()).expect("send");
        }
    }
    client
        .send(conn, 3, vec![0xab; 100_000])
        .expect("send a large message");
    let request = client
        .request(now, conn, 2, &b"what time is it?"[..])
        .expect("request");
    println!("client: sent 20 small messages, one of 100 kB, and request {request:?}");

    // The link: 20 ms one way, every tenth datagram lost (deterministically).
    let latency = Duration::from_millis(20);
    let mut in_flight: BinaryHeap<InFlight> = BinaryHeap::new();
    let mut counter = 0u64;
    let mut buf = vec![0u8; 1500];
    let mut delivered = [0usize; 4];
    let end = now + Duration::from_secs(3);
    while now < end {
        for (ep, to_server) in [(&mut client, true), (&mut server, false)] {
            while let Some(t) = ep.poll_transmit(now, &mut buf) {
                counter += 1;
                if counter % 10 != 0 {
                    in_flight.push(Reverse((
                        now + latency,
                        counter,
                        to_server,
                        buf[..t.len].to_vec(),
                    )));
                }
            }
        }
        for (name, ep) in [("client", &mut client), ("server", &mut server)] {
            while let Some(event) = ep.poll_event() {
                match event {
                    Event::Message {
                        channel, payload, ..
                    } => {
                        delivered[channel as usize] += 1;
                        if payload.len() > 100 {
                            println!(
                                "{name}: {} message of {} bytes",
                                CHANNEL_NAMES[channel as usize],
                                payload.len()
                            );
                        } else {
                            println!(
                                "{name}: {} message {:?}",
                                CHANNEL_NAMES[channel as usize],
                                String::from_utf8_lossy(&payload)
                            );
                        }
                    }
                    Event::Request {
                        conn,
                        request,
                        payload,
                        ..
                    } => {
                        println!("{name}: request {:?}", String::from_utf8_lossy(&payload));
                        ep.respond(conn, request, &b"half past the tick"[..])
                            .expect("respond");
                    }
                    other => println!("{name}: {other:?}"),
                }
            }
        }
        let next = [
            in_flight.peek().map(|Reverse((t, ..))| *t),
            client.poll_timeout(),
            server.poll_timeout(),
        ]
        .into_iter()
        .flatten()
        .min();
        now = match next {
            Some(t) if t > now => t.min(end),
            Some(_) => now,
            None => end,
        };
        while let Some(Reverse((at, ..))) = in_flight.peek() {
            if *at > now {
                break;
            }
            let Some(Reverse((_, _, to_server, bytes))) = in_flight.pop() else {
                break;
            };
            if to_server {
                server.handle_datagram(now, client_addr, &bytes);
            } else {
                client.handle_datagram(now, server_addr, &bytes);
            }
        }
        client.handle_timeout(now);
        server.handle_timeout(now);
    }
    let stats = client.connection_stats(conn).expect("live");
    println!(
        "\ndelivered per channel (unreliable, sequenced, reliable, ordered): {delivered:?}\n\
         client: {} packets / {} bytes sent, {} retransmissions, {} lost, rtt {:?}",
        stats.packets_sent,
        stats.bytes_sent,
        stats.retransmissions,
        stats.packets_lost,
        stats.smoothed_rtt
    );
}
