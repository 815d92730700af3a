//! Fuzz target bodies, compiled only for fuzzing (`cfg(fuzzing)`) or with the `fuzzing`
//! feature, so ordinary CI builds them and the `fuzz/` targets stay one line each.

use alloc::vec::Vec;
use core::net::{IpAddr, Ipv4Addr, SocketAddr};

use crate::wire::{roundtrip_is_identity, Frames, Packet};
use crate::{Config, Endpoint, Instant};

/// The wire format, for fuzzing and for tests that build packets by hand. Not part of the
/// public API: it changes with the protocol version.
pub mod wire {
    pub use crate::wire::*;
}

/// Decodes arbitrary bytes as a packet and its frames; decoding must not panic and a
/// successful decode must re-encode to the same bytes.
pub fn parse_packet(data: &[u8]) {
    if let Ok(Packet::Data { frames, .. }) = Packet::decode(data) {
        for frame in Frames::new(frames) {
            if frame.is_err() {
                break;
            }
        }
    }
    assert!(
        roundtrip_is_identity(data),
        "decode → encode is not the identity"
    );
}

/// Feeds arbitrary datagrams to a server endpoint, both from a stranger (unvalidated: replies
/// must never exceed what arrived) and from a client with an established connection (its
/// `Data` packets get the real connection id patched in, so the live receive path — frames,
/// channels, reassembly, acknowledgements — is what gets fuzzed). Nothing may panic, and
/// reassembly memory must stay within its budget.
pub fn endpoint_input(data: &[u8]) {
    let server_addr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)), 9000);
    let client_addr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2)), 9000);
    let attacker = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 66)), 9000);
    let config = Config::default();
    let (Ok(mut server), Ok(mut client)) = (
        Endpoint::new(Config {
            seed: 1,
            ..config.clone()
        }),
        Endpoint::new(Config {
            seed: 2,
            accept_incoming: false,
            ..config
        }),
    ) else {
        return;
    };
    let mut buf = [0u8; 1500];
    let mut now = Instant::from_millis(1);
    // Handshake over a perfect link, learning the connection id from the client's traffic.
    let Ok(conn) = client.connect(now, server_addr, b"fuzz") else {
        return;
    };
    // A first message makes the client send Data, which reveals the connection id.
    if client.send(conn, 0, &b"hello"[..]).is_err() {
        return;
    }
    let mut connection_id = None;
    for _ in 0..8 {
        while let Some(t) = client.poll_transmit(now, &mut buf) {
            if let Ok(Packet::Data { header, .. }) = Packet::decode(&buf[..t.len]) {
                connection_id = Some(header.connection_id);
            }
            server.handle_datagram(now, client_addr, &buf[..t.len]);
        }
        while let Some(t) = server.poll_transmit(now, &mut buf) {
            client.handle_datagram(now, server_addr, &buf[..t.len]);
        }
    }
    let Some(connection_id) = connection_id else {
        return;
    };
    while server.poll_event().is_some() {}

    for (i, d) in split_datagrams(data).into_iter().enumerate() {
        if i % 2 == 0 {
            server.handle_datagram(now, attacker, d);
            let mut sent = 0;
            while let Some(t) = server.poll_transmit(now, &mut buf) {
                if t.to == attacker {
                    sent += t.len;
                }
            }
            assert!(
                sent <= d.len(),
                "amplification: {sent} bytes out for {} in",
                d.len()
            );
        } else {
            let mut d = d.to_vec();
            if d.len() >= 9 && d[0] == 0x26 {
                d[1..9].copy_from_slice(&connection_id.to_be_bytes());
            }
            server.handle_datagram(now, client_addr, &d);
            while server.poll_transmit(now, &mut buf).is_some() {}
        }
        assert!(server.reassembly_bytes() <= server.config().endpoint_reassembly_budget);
        now += core::time::Duration::from_millis(10);
        server.handle_timeout(now);
        while server.poll_event().is_some() {}
    }
}

fn split_datagrams(data: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut i = 0;
    while i + 1 < data.len() {
        if data[i] == 0xff && data[i + 1] == 0xfe {
            out.push(&data[start..i]);
            start = i + 2;
            i += 2;
        } else {
            i += 1;
        }
    }
    out.push(&data[start..]);
    out
}
