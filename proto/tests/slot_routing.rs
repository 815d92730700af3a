//! Routing by the slot hidden in a connection id: what a client can learn from the ids a
//! server gives it, and where a packet can land.
//!
//! Deterministic: seeded endpoints, a fixed clock, datagrams moved by hand.

mod common;

use std::net::SocketAddr;

use common::{addr, plain, server_config};
use shoal_proto::fuzzing::wire::Packet;
use shoal_proto::{Config, ConnectionHandle, Endpoint, Event, Instant, SecretSeed};

fn client_config(seed: u64) -> Config {
    Config {
        seed,
        secret_seed: Some(SecretSeed::insecure_from_u64(seed)),
        accept_incoming: false,
        ..Config::default()
    }
}

/// Moves datagrams between `client` (at `client_addr`) and `server` until both are quiet;
/// returns the connection ids the server's Accepts named.
fn exchange(
    client: &mut Endpoint,
    client_addr: SocketAddr,
    server: &mut Endpoint,
    server_addr: SocketAddr,
    now: Instant,
) -> Vec<u64> {
    let mut buf = vec![0u8; 1500];
    let mut ids = Vec::new();
    for _ in 0..8 {
        while let Some(t) = client.poll_transmit(now, &mut buf) {
            server.handle_datagram(now, client_addr, &buf[..t.len]);
        }
        while let Some(t) = server.poll_transmit(now, &mut buf) {
            if let Ok(Packet::Accept { connection_id, .. }) = Packet::decode(&buf[..t.len]) {
                ids.push(connection_id);
            }
            client.handle_datagram(now, server_addr, &buf[..t.len]);
        }
    }
    ids
}

const M: i128 = 1 << 44;

/// The inverse of odd `h` modulo 2^44.
fn inverse(h: i128) -> i128 {
    let h = h as u64;
    let mut x = h;
    for _ in 0..6 {
        x = x.wrapping_mul(2u64.wrapping_sub(h.wrapping_mul(x)));
    }
    i128::from(x) % M
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

fn gram_schmidt(b: &[Vec<i128>]) -> Vec<Vec<f64>> {
    let mut out: Vec<Vec<f64>> = Vec::new();
    for row in b {
        let mut v: Vec<f64> = row.iter().map(|&x| x as f64).collect();
        for u in &out {
            let mu = dot(&v, u) / dot(u, u);
            v.iter_mut().zip(u).for_each(|(x, y)| *x -= mu * y);
        }
        out.push(v);
    }
    out
}

/// Textbook LLL (δ = 0.99) on a small integer basis.
fn lll(b: &mut [Vec<i128>]) {
    let n = b.len();
    let mut k = 1;
    while k < n {
        for j in (0..k).rev() {
            let bs = gram_schmidt(b);
            let row: Vec<f64> = b[k].iter().map(|&x| x as f64).collect();
            let q = (dot(&row, &bs[j]) / dot(&bs[j], &bs[j])).round() as i128;
            if q != 0 {
                let bj = b[j].clone();
                b[k].iter_mut().zip(&bj).for_each(|(x, y)| *x -= q * y);
            }
        }
        let bs = gram_schmidt(b);
        let row: Vec<f64> = b[k].iter().map(|&x| x as f64).collect();
        let mu = dot(&row, &bs[k - 1]) / dot(&bs[k - 1], &bs[k - 1]);
        if dot(&bs[k], &bs[k]) >= (0.99 - mu * mu) * dot(&bs[k - 1], &bs[k - 1]) {
            k += 1;
        } else {
            b.swap(k, k - 1);
            k = (k - 1).max(1);
        }
    }
}

/// Babai's nearest plane: the lattice vector near `target`.
fn closest(b: &[Vec<i128>], target: &[i128]) -> Vec<i128> {
    let bs = gram_schmidt(b);
    let mut rest: Vec<i128> = target.to_vec();
    for i in (0..b.len()).rev() {
        let r: Vec<f64> = rest.iter().map(|&x| x as f64).collect();
        let c = (dot(&r, &bs[i]) / dot(&bs[i], &bs[i])).round() as i128;
        rest.iter_mut().zip(&b[i]).for_each(|(x, y)| *x -= c * y);
    }
    target.iter().zip(&rest).map(|(t, r)| t - r).collect()
}

/// What the server's slot mask of high part `h` (the id's top 44 bits) would be under `k`.
fn mask(h: i128, k: i128) -> u64 {
    ((h * k).rem_euclid(M) >> 24) as u64
}

/// A multiplier that reproduces `masks[i]` = the top 20 of the 44 bits of `highs[i] × key`,
/// found as a hidden-number problem: the lattice of (h_i × x mod 2^44) has a point within
/// 2^23 of (mask_i × 2^24 + 2^23).
fn recover(highs: &[i128], masks: &[u64]) -> Option<i128> {
    let pivot = highs.iter().position(|h| h & 1 == 1)?;
    let inv = inverse(highs[pivot]);
    let order: Vec<usize> = std::iter::once(pivot)
        .chain((0..highs.len()).filter(|&i| i != pivot))
        .collect();
    let n = order.len();
    let mut basis = vec![vec![0i128; n]; n];
    for (col, &i) in order.iter().enumerate() {
        basis[0][col] = (highs[i] * inv).rem_euclid(M);
    }
    for (row, b) in basis.iter_mut().enumerate().skip(1) {
        b[row] = M;
    }
    lll(&mut basis);
    let target: Vec<i128> = order
        .iter()
        .map(|&i| (i128::from(masks[i]) << 24) + (1 << 23))
        .collect();
    let x = closest(&basis, &target)[0].rem_euclid(M);
    let k = (x * inv).rem_euclid(M);
    (0..highs.len())
        .all(|i| mask(highs[i], k) == masks[i])
        .then_some(k)
}

/// The docs ("Without protection"): the id's low 20 bits name the slot "masked under a key: a
/// guesser cannot aim at occupied slots". The key never leaves the server, but the ids do.
/// A first version masked with a truncated product (high × key mod 2^44, top 20 bits): a
/// hidden-number problem that a 5-dimensional lattice solves from four ids. The attack below
/// recovered that key; against the keyed PRF now used it finds nothing.
/// The attacker below is an ordinary client that connects five times (a closed connection's
/// slot is the next one handed out, so all five share one slot, whose number it guesses
/// among the first 64). With the multiplier it names the slot any id maps to, and so writes,
/// for a slot and any 44 high bits, the one id that could be that slot's: a guess at a
/// connection needs 2^44 tries per hit (≈ 200 days at 1 Mpps, 20 at 10 Mpps), not 2^64 / N.
#[test]
fn a_client_cannot_learn_from_its_own_ids_how_ids_name_slots() {
    let server_addr = addr("10.0.0.1:4000");
    let mut server = Endpoint::new(plain(server_config(7))).expect("config");
    let now = Instant::from_millis(1);

    // The victim: the server's first connection.
    let victim_addr = addr("10.0.9.9:5000");
    let mut victim = Endpoint::new(plain(client_config(900))).expect("config");
    victim.connect(now, server_addr, b"v").expect("connect");
    let victim_id = exchange(&mut victim, victim_addr, &mut server, server_addr, now)[0];
    let victim_slot = server_slot_of(&mut server, victim_addr);

    // The attacker: five short connections, each closed before the next.
    let mut own_ids = Vec::new();
    for i in 0..5u64 {
        let at = addr(&format!("10.0.2.{}:6000", i + 1));
        let mut client = Endpoint::new(plain(client_config(100 + i))).expect("config");
        let c = client.connect(now, server_addr, b"a").expect("connect");
        own_ids.extend(exchange(&mut client, at, &mut server, server_addr, now));
        while client.poll_event().is_some() {}
        assert!(client.is_connected(c));
        client.disconnect(c, 0);
        exchange(&mut client, at, &mut server, server_addr, now);
        assert_eq!(
            server.connection_count(),
            1,
            "the attacker's connection closed"
        );
    }
    assert_eq!(own_ids.len(), 5);

    let highs: Vec<i128> = own_ids.iter().map(|id| i128::from(id >> 20)).collect();
    let lows: Vec<u64> = own_ids.iter().map(|id| id & 0xF_FFFF).collect();
    let found = (0..64u64).find_map(|slot| {
        let masks: Vec<u64> = lows.iter().map(|low| low ^ slot).collect();
        recover(&highs[..4], &masks[..4])
            .filter(|&k| mask(highs[4], k) == masks[4])
            .map(|k| (slot, k))
    });
    if let Some((own_slot, k)) = found {
        // Aiming: for the victim's slot and the victim's high bits (one of the 2^44 an aimed
        // guesser runs through), the attacker writes the victim's whole id.
        let high = victim_id >> 20;
        let aimed = (high << 20) | (victim_slot ^ mask(i128::from(high), k));
        assert_ne!(
            aimed, victim_id,
            "from its own 5 ids (slot {own_slot}) a client learned the slot mask: it writes \
             the id of slot {victim_slot} for any high bits, so ids are aimable"
        );
    }
}

/// The server's slot (handle index) of the connection from `remote`.
fn server_slot_of(server: &mut Endpoint, remote: SocketAddr) -> u64 {
    let handle: ConnectionHandle = std::iter::from_fn(|| server.poll_event())
        .find_map(|e| match e {
            Event::Connected {
                conn, remote: r, ..
            } if r == remote => Some(conn),
            _ => None,
        })
        .expect("the server reported the connection");
    handle.index() as u64
}

/// A client's connection has id 0 until its Accept names one, and id 0 names slot 0 under
/// any key (`slot_of(0) == 0`), as does `last_looked_up` before any lookup: so a short-header
/// packet naming id 0, from anyone, is taken as that connection's (opened, counted as
/// `EarlyPacket`) where before it named no connection (`UnknownConnection`). Harmless today
/// (nothing in it is acted on before the handshake ends), but "routed only to the connection
/// whose whole id it names" no longer holds for the one id no connection has.
#[test]
fn a_packet_naming_id_0_reaches_no_connection() {
    let mut client = Endpoint::new(plain(client_config(3))).expect("config");
    let now = Instant::from_millis(1);
    client
        .connect(now, addr("10.0.0.1:4000"), b"")
        .expect("connect");
    let mut buf = vec![0u8; 1500];
    while client.poll_transmit(now, &mut buf).is_some() {}
    let stranger = addr("192.0.2.7:9999");
    let data = common::data_packet(0, 1, &[]);
    let unknown = |c: &Endpoint| {
        c.stats()
            .drops
            .get(shoal_proto::DropReason::UnknownConnection)
    };
    let before = unknown(&client);
    client.handle_datagram(now, stranger, &data);
    assert_eq!(
        unknown(&client),
        before + 1,
        "id 0 was routed to a connection: {:?}",
        client.stats().drops
    );
}
