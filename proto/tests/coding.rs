//! Forward error correction and what is queued: a connection codes small packets under loss,
//! but not a backlog, which fills its packets instead. Responses count in that backlog too,
//! on a channel the side never sent a message on.

mod common;

use std::time::Duration;

use common::*;
use shoal_proto::Event;

const RELIABLE: u8 = 2;
const ORDERED: u8 = 3;

fn numbered(i: u32, len: usize) -> Vec<u8> {
    let mut v = i.to_be_bytes().to_vec();
    v.resize(len.max(4), (i % 251) as u8);
    v
}

#[test]
fn a_backlog_of_responses_is_not_coded() {
    let mut p = Pair::default_pair();
    p.latency = Duration::from_millis(50);
    let (c, s) = p.connect();
    // The server learns the link is lossy (its own stream on ORDERED loses packets), so it
    // codes small packets from now on.
    p.hook = lossy(5, 0.05);
    for i in 0..400 {
        p.server.send(s, ORDERED, numbered(i, 32)).expect("send");
        p.run_for(Duration::from_millis(16));
    }
    p.run_for(Duration::from_secs(2));
    assert!(
        p.server.connection_stats(s).expect("stats").repairs_sent > 0,
        "the server codes under loss"
    );
    // A thousand requests on RELIABLE, a channel the server never sent a message on.
    p.hook = lossy(6, 0.02);
    for i in 0..1_000u32 {
        p.client
            .request(p.now, c, RELIABLE, numbered(i, 8))
            .expect("request");
    }
    assert!(p.run_until(Duration::from_secs(30), |p| {
        p.server_events
            .iter()
            .filter(|e| matches!(e, Event::Request { .. }))
            .count()
            == 1_000
    }));
    // Answered at once: 32 KB of responses wait, a backlog like a bulk transfer.
    let before = p.server.connection_stats(s).expect("stats");
    for e in std::mem::take(&mut p.server_events) {
        if let Event::Request { request, .. } = e {
            p.server
                .respond(s, request, vec![7u8; 32])
                .expect("respond");
        }
    }
    assert!(p.run_until(Duration::from_secs(60), |p| {
        p.client_events
            .iter()
            .filter(|e| matches!(e, Event::Response { .. }))
            .count()
            == 1_000
    }));
    let after = p.server.connection_stats(s).expect("stats");
    let packets = after.packets_sent - before.packets_sent;
    let repairs = after.repairs_sent - before.repairs_sent;
    eprintln!("{repairs} repairs in {packets} packets");
    // Full packets, as for a backlog of messages (`a_bulk_transfer_is_not_coded`).
    assert!(
        repairs * 4 < packets && packets < 120,
        "{repairs} repairs in {packets} packets for 1000 x 32-byte responses"
    );
}
