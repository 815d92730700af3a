//! A seed sweep over the fault matrix: every seed picks loss (0–50%, i.i.d. or in bursts),
//! one-way delay (0–300 ms) with jitter, reordering, duplication, an MTU of 576, 1200 or
//! 1500 bytes, and possibly different conditions each way; both sides then exchange traffic
//! on every channel kind and the guarantees are checked.
//!
//! CI runs 300 seeds; `SHOAL_SWEEP_SEEDS=5000 cargo test --release -p shoal-proto --test
//! fault_matrix` runs thousands.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::*;
use shoal_proto::{Config, Event};

/// Conditions of one direction.
#[derive(Clone, Copy, Debug)]
struct Link {
    loss: f64,
    /// Gilbert-Elliott: chance to enter / leave the bad state per datagram, and the loss in it.
    burst: Option<(f64, f64, f64)>,
    jitter_ms: u64,
    reorder: f64,
    duplicate: f64,
}

#[derive(Clone, Copy, Debug)]
struct Scenario {
    latency_ms: u64,
    mtu: usize,
    up: Link,
    down: Link,
}

fn scenario(seed: u64) -> Scenario {
    let mut rng = TestRng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ 0xfeed);
    let link = |rng: &mut TestRng| Link {
        loss: [0.0, 0.01, 0.05, 0.1, 0.2, 0.3, 0.5][(rng.next() % 7) as usize],
        burst: (rng.next() % 3 == 0).then_some((0.05, 0.3, 0.6)),
        jitter_ms: [0, 5, 20, 50][(rng.next() % 4) as usize],
        reorder: [0.0, 0.05, 0.2][(rng.next() % 3) as usize],
        duplicate: [0.0, 0.02, 0.1][(rng.next() % 3) as usize],
    };
    let up = link(&mut rng);
    let down = if rng.next() % 2 == 0 {
        up
    } else {
        link(&mut rng)
    };
    Scenario {
        latency_ms: [0, 10, 50, 150, 300][(rng.next() % 5) as usize],
        mtu: [576, 1200, 1500][(rng.next() % 3) as usize],
        up,
        down,
    }
}

fn hook(seed: u64, s: Scenario) -> FateHook {
    let mut rng = TestRng(seed);
    let mut bad = [false, false];
    Box::new(move |dir, _, _| {
        let (link, state) = match dir {
            Dir::ClientToServer => (s.up, &mut bad[0]),
            Dir::ServerToClient => (s.down, &mut bad[1]),
        };
        let loss = match link.burst {
            Some((enter, leave, bad_loss)) => {
                if *state {
                    *state = !rng.chance(leave);
                } else {
                    *state = rng.chance(enter);
                }
                if *state {
                    bad_loss
                } else {
                    link.loss
                }
            }
            None => link.loss,
        };
        if rng.chance(loss) {
            return vec![];
        }
        let jitter = |rng: &mut TestRng| {
            Duration::from_millis(if link.jitter_ms > 0 {
                rng.next() % link.jitter_ms
            } else {
                0
            })
        };
        let mut copies = vec![jitter(&mut rng)];
        if rng.chance(link.reorder) {
            copies[0] += Duration::from_millis(1 + rng.next() % 80);
        }
        if rng.chance(link.duplicate) {
            copies.push(jitter(&mut rng) + Duration::from_millis(rng.next() % 20));
        }
        copies
    })
}

fn payload(i: u32, len: usize) -> Vec<u8> {
    let mut v = i.to_be_bytes().to_vec();
    v.resize(len.max(4), i as u8);
    v
}

fn number(p: &[u8]) -> u32 {
    u32::from_be_bytes([p[0], p[1], p[2], p[3]])
}

/// Runs one seed; returns a description of the first broken guarantee.
fn run(seed: u64) -> Result<(), String> {
    let s = scenario(seed);
    let tweak = |c: Config| Config {
        mtu: s.mtu,
        handshake_timeout: Duration::from_secs(60),
        idle_timeout: Duration::from_secs(60),
        ..c
    };
    let mut p = Pair::new(tweak(client_config(seed)), tweak(server_config(seed + 1)));
    p.latency = Duration::from_millis(s.latency_ms);
    p.mtu = s.mtu;
    p.hook = hook(seed, s);
    let (c, sv) = p.connect();
    let mut rng = TestRng(seed ^ 0xabcd);
    let mut sent = [[0u32; 4]; 2];
    for _ in 0..60 {
        for channel in 0..4u8 {
            let len = if rng.chance(0.05) {
                3_000
            } else {
                1 + (rng.next() % 100) as usize
            };
            let n = &mut sent[0][channel as usize];
            p.client
                .send(c, channel, payload(*n, len))
                .map_err(|e| e.to_string())?;
            *n += 1;
            let n = &mut sent[1][channel as usize];
            p.server
                .send(sv, channel, payload(*n, len))
                .map_err(|e| e.to_string())?;
            *n += 1;
        }
        p.run_for(Duration::from_millis(rng.next() % 40));
    }
    let done = p.run_until(Duration::from_secs(120), |p| {
        p.client.is_idle(c)
            && p.server.is_idle(sv)
            && p.server_messages(3).len() == sent[0][3] as usize
            && p.client_messages(3).len() == sent[1][3] as usize
    });
    if !done {
        return Err(format!("reliable traffic did not finish: {s:?}"));
    }
    for (events, sent, side) in [
        (&p.server_events, sent[0], "client→server"),
        (&p.client_events, sent[1], "server→client"),
    ] {
        if events
            .iter()
            .any(|e| matches!(e, Event::Disconnected { .. }))
        {
            return Err(format!("{side}: disconnected {s:?}"));
        }
        let got = |ch: u8| -> Vec<u32> { messages(events, ch).iter().map(|m| number(m)).collect() };
        if got(3) != (0..sent[3]).collect::<Vec<_>>() {
            return Err(format!("{side}: ordered broken {:?} {s:?}", got(3)));
        }
        let mut reliable = got(2);
        reliable.sort_unstable();
        if reliable != (0..sent[2]).collect::<Vec<_>>() {
            return Err(format!(
                "{side}: reliable not exactly once {reliable:?} {s:?}"
            ));
        }
        let sequenced = got(1);
        if !sequenced.windows(2).all(|w| w[0] < w[1]) {
            return Err(format!("{side}: sequenced went back {sequenced:?} {s:?}"));
        }
        let unreliable = got(0);
        if unreliable.iter().collect::<HashSet<_>>().len() != unreliable.len() {
            return Err(format!("{side}: unreliable duplicated {s:?}"));
        }
    }
    if std::env::var("SHOAL_SWEEP_VERBOSE").is_ok() {
        eprintln!(
            "seed {seed}: {s:?} {} events, virtual {:?}",
            p.server_events.len() + p.client_events.len(),
            p.now
        );
    }
    Ok(())
}

#[test]
fn guarantees_hold_across_the_fault_matrix() {
    let seeds: u64 = std::env::var("SHOAL_SWEEP_SEEDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300);
    let failures: Vec<String> = (0..seeds)
        .filter_map(|seed| run(seed).err().map(|e| format!("seed {seed}: {e}")))
        .collect();
    assert!(
        failures.is_empty(),
        "{} of {seeds} seeds failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn a_partition_shorter_than_the_idle_timeout_loses_nothing() {
    let mut p = Pair::default_pair();
    let (c, _) = p.connect();
    let mut sent = 0u32;
    for _ in 0..20 {
        p.client.send(c, 3, payload(sent, 20)).expect("send");
        sent += 1;
        p.run_for(Duration::from_millis(50));
    }
    p.hook = Box::new(|_, _, _| vec![]);
    for _ in 0..100 {
        p.client.send(c, 3, payload(sent, 20)).expect("send");
        sent += 1;
        p.run_for(Duration::from_millis(80));
    }
    // 8 s of partition, below the 10 s idle timeout.
    p.hook = Box::new(|_, _, _| vec![Duration::ZERO]);
    assert!(
        p.run_until(Duration::from_secs(10), |p| p.server_messages(3).len()
            == sent as usize)
    );
    let got: Vec<u32> = p.server_messages(3).iter().map(|m| number(m)).collect();
    assert_eq!(got, (0..sent).collect::<Vec<_>>());
    assert!(!p
        .client_events
        .iter()
        .any(|e| matches!(e, Event::Disconnected { .. })));
}
