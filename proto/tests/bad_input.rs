//! Hostile and malformed input: every truncation of every packet type, random bytes, wrong
//! versions, oversized lengths. Each is dropped and counted; nothing panics; an unvalidated
//! address never gets more bytes back than it sent; nothing grows.

mod common;

use std::time::Duration;

use common::*;
use shoal_proto::fuzzing::wire::{CloseCode, DataHeader, Packet, RejectCode};
use shoal_proto::{Config, DropReason, Endpoint, Event, Instant, Protection};

// Hostile peers are played with hand-built clear packets: these endpoints run unprotected
// (the secure tests cover what protection adds).
fn client_config(seed: u64) -> Config {
    plain(common::client_config(seed))
}

fn server_config(seed: u64) -> Config {
    plain(common::server_config(seed))
}

fn server() -> Endpoint {
    Endpoint::new(server_config(2)).expect("config")
}

/// Feeds `datagram` from an unvalidated address; returns the bytes sent back.
fn feed(server: &mut Endpoint, now: Instant, datagram: &[u8]) -> usize {
    let from = addr("192.0.2.66:7777");
    server.handle_datagram(now, from, datagram);
    let mut buf = [0u8; 1500];
    let mut sent = 0;
    while let Some(t) = server.poll_transmit(now, &mut buf) {
        assert_eq!(t.to, from);
        sent += t.len;
    }
    sent
}

/// One valid example of every packet type.
fn every_packet_type() -> Vec<Vec<u8>> {
    let frames = [0x30, 0, 7, 0, 1, 3, b'a', b'b', b'c'];
    let packets = [
        Packet::Hello {
            protocol_id: Config::default().protocol_id,
            client_nonce: 1,
            protection: Protection::None,
        },
        Packet::Challenge {
            client_nonce: 1,
            cookie: [7; 24],
        },
        Packet::Connect {
            protocol_id: Config::default().protocol_id,
            client_nonce: 1,
            cookie: [7; 24],
            channel_layout: 0x4321,
            mtu: 1200,
            reassembly_budget: 1 << 20,
            protection: Protection::Encrypted,
            ephemeral: Some([9; 32]),
            static_key: None,
            token: None,
            data: b"payload",
            token_proof: None,
        },
        Packet::Accept {
            client_nonce: 1,
            connection_id: 5,
            user_id: 3,
            reassembly_budget: 1 << 20,
            protection: Protection::Encrypted,
            ephemeral: Some([9; 32]),
            static_key: None,
            tag: Some([1; 16]),
        },
        Packet::Reject {
            client_nonce: 1,
            code: RejectCode::Full,
        },
        Packet::Data {
            header: DataHeader {
                connection_id: 5,
                packet_number: 0,
                ping: false,
                ack: None,
                repair: None,
            },
            frames: &frames,
        },
        Packet::Disconnect {
            connection_id: 5,
            packet_number: 1,
            code: CloseCode::Application(1),
        },
    ];
    packets
        .iter()
        .map(|p| {
            let mut buf = vec![0u8; 1500];
            let n = p.encode(&mut buf).expect("encodes");
            buf.truncate(n);
            buf
        })
        .collect()
}

#[test]
fn every_truncation_of_every_packet_type_is_dropped_and_counted() {
    let mut server = server();
    let now = Instant::from_millis(1);
    let mut fed = 0;
    for packet in every_packet_type() {
        for len in 0..packet.len() {
            let resets = server.stats().resets_sent;
            let reply = feed(&mut server, now, &packet[..len]);
            // A short-header packet whose 13-byte header is whole names a connection id: an
            // unknown one is answered "unknown connection" (12 bytes); nothing else is.
            let short_header = (6..=9).contains(&(packet[0] & 0x0f)) && len >= 13;
            let expected = if short_header { 12 } else { 0 };
            assert_eq!(
                reply,
                expected,
                "reply to a truncated {:02x?}",
                &packet[..len]
            );
            assert_eq!(server.stats().resets_sent - resets, u64::from(short_header));
            fed += 1;
        }
    }
    let drops = server.stats().drops;
    assert_eq!(
        drops.total(),
        fed,
        "every truncation counted exactly once: {drops:?}"
    );
    assert!(drops.get(DropReason::Malformed) > 0);
    assert_eq!(server.connection_count(), 0);
    assert!(server.poll_event().is_none());
}

#[test]
fn whole_packets_from_strangers_are_dropped_by_cause() {
    let mut server = server();
    let now = Instant::from_millis(1);
    let packets = every_packet_type();
    let replies: Vec<usize> = packets.iter().map(|p| feed(&mut server, now, p)).collect();
    // The Hello is answered with a Challenge no larger than itself; packets of connections
    // (data, disconnect, path challenge and response) naming an unknown id with a 12-byte
    // "unknown connection" Reject; nothing else.
    assert_eq!(replies[0], 33);
    assert!(replies[0] <= packets[0].len());
    assert_eq!(replies[1..5], [0, 0, 0, 0], "{replies:?}");
    assert!(replies[5..].iter().all(|&r| r == 12), "{replies:?}");
    assert_eq!(server.stats().resets_sent, (packets.len() - 5) as u64);
    let drops = server.stats().drops;
    assert_eq!(drops.get(DropReason::BadCookie), 1, "forged cookie");
    assert_eq!(
        drops.get(DropReason::Unexpected),
        3,
        "challenge, accept, reject to a server"
    );
    assert_eq!(
        drops.get(DropReason::UnknownConnection),
        2,
        "data and disconnect"
    );
    assert_eq!(server.connection_count(), 0);
}

#[test]
fn wrong_versions_and_unknown_types_are_counted() {
    let mut server = server();
    let now = Instant::from_millis(1);
    let mut hello = every_packet_type().remove(0);
    for version in [0u8, 2, 15] {
        hello[0] = (version << 4) | 1;
        assert_eq!(feed(&mut server, now, &hello), 0);
    }
    for ty in [0u8, 10, 15] {
        hello[0] = 0x30 | ty;
        assert_eq!(feed(&mut server, now, &hello), 0);
    }
    let drops = server.stats().drops;
    assert_eq!(drops.get(DropReason::UnknownVersion), 3);
    assert_eq!(drops.get(DropReason::UnknownPacketType), 3);
}

#[test]
fn random_bytes_never_panic_never_amplify_and_never_grow() {
    let mut server = server();
    let mut rng = TestRng(99);
    let mut now = Instant::from_millis(1);
    let mut total_in = 0usize;
    let mut total_out = 0usize;
    for i in 0..20_000 {
        let len = (rng.next() % 1400) as usize;
        let mut d: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        // Make a good share look like our version, so deeper parsers get exercised.
        if i % 2 == 0 && !d.is_empty() {
            d[0] = 0x30 | (d[0] & 0x0f);
        }
        let out = feed(&mut server, now, &d);
        assert!(out <= d.len(), "replied {out} bytes to {}", d.len());
        total_in += d.len();
        total_out += out;
        now += Duration::from_micros(100);
        server.handle_timeout(now);
    }
    assert!(total_out <= total_in);
    assert_eq!(server.connection_count(), 0);
    assert_eq!(server.reassembly_bytes(), 0);
    assert!(server.poll_event().is_none());
    assert_eq!(
        server.stats().drops.total() + server.stats().datagrams_sent - server.stats().resets_sent,
        20_000
    );
}

#[test]
fn oversized_length_prefixes_are_malformed() {
    let mut server = server();
    let now = Instant::from_millis(1);
    // Connect whose data length claims more than follows.
    let mut connect = every_packet_type().remove(2);
    let n = connect.len();
    connect[n - 9] = 0xff; // high byte of the u16 data length
    assert_eq!(feed(&mut server, now, &connect), 0);
    assert_eq!(server.stats().drops.get(DropReason::Malformed), 1);
}

/// A connected pair where the test writes raw datagrams as the client: the pair, the server's
/// handle, the connection id, and the client's user id as the owner bytes of a frame header.
fn connected() -> (Pair, shoal_proto::ConnectionHandle, u64, [u8; 2]) {
    let mut p = Pair::new(client_config(1), server_config(2));
    let (_, s) = p.connect();
    p.run_for(Duration::from_millis(50));
    // Learn the connection id from a datagram the client sends.
    let c = p.client.connections().next().expect("client conn");
    p.client.send(c, 0, &b"probe"[..]).expect("send");
    let mut buf = [0u8; 1500];
    let t = p.client.poll_transmit(p.now, &mut buf).expect("datagram");
    let Ok(Packet::Data { header, .. }) = Packet::decode(&buf[..t.len]) else {
        panic!("expected data");
    };
    let user = peer_user_id(&p.server_events);
    (p, s, header.connection_id, user.to_be_bytes())
}

#[test]
fn garbage_with_a_sniffed_connection_id_is_dropped_and_counted_but_never_closes() {
    let (mut p, s, id, [hi, lo]) = connected();
    let hostile: Vec<Vec<u8>> = vec![
        vec![0x90, hi, lo, 0, 1, 1, 0],                   // unknown channel 9
        vec![0x31, hi, lo, 0, 1, 0, 0, 0xff, 0xff, 1, 0], // 65535 chunks: oversized
        vec![0x30, 0, 99, 0, 1, 1, 0],                    // claims another user's id
        vec![0x30, hi, lo, 0, 1, 9, 0],                   // length beyond the packet
    ];
    // From the client's own address (spoofed) and from a stranger: unauthenticated packets
    // look the same as the peer's own, so none of them may end the connection.
    let stranger = addr("192.0.2.7:9");
    let mut seq = 1000u32;
    for _ in 0..25 {
        for frames in &hostile {
            for from in [p.client_addr, stranger] {
                let d = data_packet(id, seq, frames);
                seq += 1;
                p.server.handle_datagram(p.now, from, &d);
            }
        }
    }
    p.run_for(Duration::from_secs(1));
    assert!(p.server.is_connected(s), "still connected");
    assert!(!p
        .client_events
        .iter()
        .any(|e| matches!(e, Event::Disconnected { .. })));
    let drops = p.server.connection_stats(s).expect("live").drops;
    assert!(drops.get(DropReason::UnknownChannel) > 0);
    assert!(drops.get(DropReason::Oversized) > 0);
    assert!(drops.get(DropReason::ProtocolViolation) > 0);
    assert!(drops.get(DropReason::Malformed) > 0);
    assert!(
        drops.get(DropReason::UnvalidatedPath) > 0,
        "the stranger's never got in"
    );
    // The connection still carries messages.
    let c = p.client.connections().next().expect("client conn");
    p.client.send(c, 2, &b"still here"[..]).expect("send");
    p.run_for(Duration::from_millis(200));
    assert!(p.server_messages(2).iter().any(|m| m == &b"still here"[..]));
}

#[test]
fn every_truncation_of_a_live_data_packet_is_dropped_without_delivery() {
    let (mut p, _, id, [hi, lo]) = connected();
    let frames = [
        0x30, hi, lo, 0, 7, 3, b'a', b'b', b'c', 0x10, hi, lo, 0, 8, 1, b'z',
    ];
    let full = data_packet(id, 500, &frames);
    let before = p.server_messages(3).len() + p.server_messages(1).len();
    for len in 14..full.len() {
        p.server.handle_datagram(p.now, p.client_addr, &full[..len]);
    }
    p.flush();
    let after = p.server_messages(3).len() + p.server_messages(1).len();
    // Truncations that cut a frame are dropped whole; those ending on a frame boundary are
    // valid shorter packets but reuse packet number 500, so only the first is accepted.
    assert!(
        after - before <= 1,
        "delivered {} from truncations",
        after - before
    );
}

#[test]
fn a_slow_application_backpressures_its_peer_without_timing_out() {
    let limit = 16 * 1024;
    let server = Config {
        max_pending_event_bytes: limit,
        ..server_config(2)
    };
    let mut p = Pair::new(client_config(1), server);
    let (c, s) = p.connect();
    p.server_events.clear();
    // The client sends 2,000 ordered messages of 100 bytes; the server's application does
    // not read events for 15 s, longer than the idle timeout.
    for i in 0..2_000u32 {
        let mut m = i.to_be_bytes().to_vec();
        m.resize(100, 0);
        p.client.send(c, 3, m).expect("queued");
    }
    let mut buf = [0u8; 1500];
    let end = p.now + Duration::from_secs(15);
    while p.now < end {
        while let Some(t) = p.client.poll_transmit(p.now, &mut buf) {
            p.server
                .handle_datagram(p.now, p.client_addr, &buf[..t.len]);
        }
        while let Some(t) = p.server.poll_transmit(p.now, &mut buf) {
            p.client
                .handle_datagram(p.now, p.server_addr, &buf[..t.len]);
        }
        assert!(
            p.server.pending_event_bytes() <= limit + 1500 * 8,
            "bounded: {}",
            p.server.pending_event_bytes()
        );
        p.now += Duration::from_millis(10);
        p.client.handle_timeout(p.now);
        p.server.handle_timeout(p.now);
        while let Some(e) = p.client.poll_event() {
            assert!(!matches!(e, Event::Disconnected { .. }), "{e:?}");
        }
    }
    assert!(p.server.is_connected(s) && p.client.is_connected(c));
    assert!(
        p.server.stats().drops.get(DropReason::EventQueueFull)
            + p.server
                .connection_stats(s)
                .expect("live")
                .drops
                .get(DropReason::EventQueueFull)
            > 0
    );
    // The application catches up: everything arrives, in order, exactly once.
    p.run_for(Duration::from_secs(20));
    let got: Vec<u32> = p
        .server_messages(3)
        .iter()
        .map(|m| u32::from_be_bytes([m[0], m[1], m[2], m[3]]))
        .collect();
    assert_eq!(got, (0..2_000).collect::<Vec<_>>());
}

#[test]
fn a_peer_withholding_the_rest_of_a_large_message_holds_only_its_reservation() {
    let mut p = Pair::new(client_config(1), server_config(2));
    let (c, s) = p.connect();
    // The client's network delivers only the first chunk of any large message (everything
    // else, keepalives and acknowledgements included, goes through): the server holds a
    // reservation the peer never completes.
    p.hook = Box::new(|dir, _, bytes| {
        let withheld = dir == Dir::ClientToServer
            && matches!(Packet::decode(bytes), Ok(Packet::Data { frames, .. })
                if shoal_proto::fuzzing::wire::Frames::new(frames)
                    .flatten()
                    .any(|f| f.header.chunk.is_some_and(|c| c.index > 0)));
        if withheld {
            vec![]
        } else {
            vec![Duration::ZERO]
        }
    });
    p.client.send(c, 2, vec![7u8; 50_000]).expect("send");
    p.run_for(Duration::from_secs(1));
    let held = p.server.reassembly_bytes();
    assert!(held >= 50_000, "the first chunk reserved the message");
    // An honest peer on a terrible link looks the same, so it is not closed; what it holds
    // is bounded by its budget (and its fair share: see the budget tests).
    p.run_for(Duration::from_secs(40));
    assert!(p.server.is_connected(s));
    assert_eq!(p.server.reassembly_bytes(), held);
    assert!(held <= p.server.config().reassembly_budget);
}
