//! Fuzz target bodies, compiled only for fuzzing (`cfg(fuzzing)`) or with the `fuzzing`
//! feature, so ordinary CI builds them and the `fuzz/` targets stay one line each.

use alloc::vec::Vec;
use core::net::{IpAddr, Ipv4Addr, SocketAddr};

use crate::wire::{roundtrip_is_identity, Frames, Packet};
use crate::{Config, Endpoint, Instant};

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

/// Feeds arbitrary datagrams to a server endpoint (and to one connected client's session):
/// nothing may panic, and replies to unvalidated addresses must not exceed what arrived.
pub fn endpoint_input(data: &[u8]) {
    let server_addr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)), 9000);
    let attacker = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 66)), 9000);
    let mut server = match Endpoint::new(Config::default()) {
        Ok(e) => e,
        Err(_) => return,
    };
    let mut buf = [0u8; 1500];
    let mut now = Instant::ZERO;
    // Split the input into datagrams at each 0xff 0xfe marker.
    let datagrams: Vec<&[u8]> = split_datagrams(data);
    for d in datagrams {
        server.handle_datagram(now, attacker, d);
        let mut sent = 0;
        while let Some(t) = server.poll_transmit(now, &mut buf) {
            sent += t.len;
        }
        assert!(
            sent <= d.len(),
            "amplification: {sent} bytes out for {} in",
            d.len()
        );
        now += core::time::Duration::from_millis(10);
        server.handle_timeout(now);
        while server.poll_event().is_some() {}
    }
    let _ = server_addr;
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
