//! Guarantees at scale: the game scenario (every channel kind, chunked messages, requests)
//! over the fault matrix — loss 0–50% (i.i.d. and in bursts), one-way delay 0–300 ms with
//! jitter, reordering, duplication, MTU 576 / 1200 / 1500, asymmetric links. Reliable must be
//! exactly once, ordered exactly once in order, sequenced never stale, responses never
//! mismatched, and nothing corrupted.
//!
//! CI runs a bounded sweep (`SHOAL_SIM_SWEEP_SEEDS`, default 150) and a few proptest cases;
//! `SHOAL_SIM_SWEEP_SEEDS=3000 cargo test --release -p shoal-sim --test guarantees` runs
//! thousands.

use core::time::Duration;

use proptest::prelude::*;
use shoal_proto::DisconnectReason;
use shoal_sim::scenario::{run, Report, ScenarioConfig};
use shoal_sim::{BurstLoss, LinkConfig};

/// A small generator to pick a scenario from a seed.
struct Pick(u64);

impl Pick {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn of<T: Copy>(&mut self, options: &[T]) -> T {
        options[(self.next() % options.len() as u64) as usize]
    }
}

fn link(pick: &mut Pick, mtu: usize) -> LinkConfig {
    let bursty = pick.next() % 3 == 0;
    LinkConfig {
        latency: Duration::from_millis(pick.of(&[0, 10, 40, 120, 300])),
        jitter: Duration::from_millis(pick.of(&[0, 5, 20])),
        jitter_reorders: pick.next() % 2 == 0,
        loss: pick.of(&[0.0, 0.01, 0.05, 0.1, 0.2, 0.35, 0.5]),
        burst_loss: bursty.then_some(BurstLoss {
            p_good_to_bad: 0.05,
            p_bad_to_good: 0.3,
            loss_good: 0.0,
            loss_bad: 0.7,
        }),
        duplicate: pick.of(&[0.0, 0.02, 0.1]),
        reorder: pick.of(&[0.0, 0.05, 0.2]),
        reorder_delay: Duration::from_millis(pick.of(&[10, 50])),
        mtu,
        ..LinkConfig::default()
    }
}

fn scenario(seed: u64) -> ScenarioConfig {
    let mut pick = Pick(seed ^ 0x5111_5eed);
    let mtu = pick.of(&[576, 1200, 1500]);
    let up = link(&mut pick, mtu);
    let downlink = (pick.next() % 2 == 0).then(|| link(&mut pick, mtu));
    ScenarioConfig {
        clients: 4,
        duration: Duration::from_secs(3),
        seed,
        link: up,
        downlink,
        endpoint_mtu: mtu,
        large_size: 20_000,
        large_interval: Duration::from_secs(1),
        request_interval: Duration::from_millis(500),
        reliable_rate: 5.0,
        ordered_rate: 5.0,
        // At 50% loss in bursts with 300 ms each way and a 576-byte MTU, congestion control
        // (a 4-packet floor) moves a few chunks per second: the 80 KB of large messages can
        // take over a minute to drain. Late is not lost; the limit only bounds the run.
        drain_limit: Duration::from_secs(300),
        // Both engine schedules: node by node within lookahead windows, and one time order.
        node_batching: seed % 2 == 0,
        ..ScenarioConfig::default()
    }
}

/// No guarantee broken, and no connection ended but by silence (timed out, or told by a
/// peer whose side timed out that it no longer knows it): a connection that ends excuses
/// what was still in flight on it, so any other ending must fail the run.
fn check(report: &Report) -> Result<(), String> {
    let v = &report.violations;
    if v.total() > 0 {
        return Err(format!("violations {v:?}\n{report}"));
    }
    let silence = [DisconnectReason::TimedOut, DisconnectReason::PeerReset].map(|r| r.to_string());
    let by_silence = |r: &String| silence.iter().any(|s| r.ends_with(s.as_str()));
    if let Some((reason, _)) = report.disconnects.iter().find(|(r, _)| !by_silence(r)) {
        return Err(format!("a connection ended: {reason}\n{report}"));
    }
    let count = |ending: &str| -> u64 {
        let ending = report
            .disconnects
            .iter()
            .filter(|(r, _)| r.ends_with(ending));
        ending.map(|(_, n)| n).sum()
    };
    if count(&silence[1]) > count(&silence[0]) {
        return Err(format!("more resets than timeouts\n{report}"));
    }
    Ok(())
}

/// A link that loses little and never in bursts: everyone connects and stays connected.
fn mild(link: &LinkConfig) -> bool {
    link.loss < 0.1 && link.burst_loss.is_none()
}

#[test]
fn guarantees_hold_across_the_fault_matrix_in_a_seed_sweep() {
    let seeds: u64 = std::env::var("SHOAL_SIM_SWEEP_SEEDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(150);
    let mut failures = Vec::new();
    let mut connected = 0;
    for seed in 0..seeds {
        let config = scenario(seed);
        let report = run(&config, &mut |_| {}).expect("valid scenario");
        connected += report.clients_connected;
        if let Err(e) = check(&report) {
            failures.push(format!("seed {seed}: {e}"));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {seeds} seeds failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
    // Even at 50% loss the handshake gets through almost always.
    assert!(
        connected as f64 >= 0.97 * (seeds * 4) as f64,
        "{connected} of {} connected",
        seeds * 4
    );
}

fn any_link() -> impl Strategy<Value = LinkConfig> {
    (
        0u64..300,
        0u64..30,
        any::<bool>(),
        0.0f64..0.5,
        prop::option::of((0.01f64..0.2, 0.1f64..0.9, 0.3f64..1.0)),
        0.0f64..0.2,
        0.0f64..0.3,
    )
        .prop_map(
            |(latency, jitter, jitter_reorders, loss, burst, duplicate, reorder)| LinkConfig {
                latency: Duration::from_millis(latency),
                jitter: Duration::from_millis(jitter),
                jitter_reorders,
                loss,
                burst_loss: burst.map(|(enter, leave, bad)| BurstLoss {
                    p_good_to_bad: enter,
                    p_bad_to_good: leave,
                    loss_good: 0.0,
                    loss_bad: bad,
                }),
                duplicate,
                reorder,
                reorder_delay: Duration::from_millis(40),
                ..LinkConfig::default()
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig {
        // PROPTEST_CASES raises the count for a longer run.
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(12),
        ..ProptestConfig::default()
    })]

    /// Arbitrary links each way: the guarantees hold whatever the network does.
    #[test]
    fn guarantees_hold_for_arbitrary_asymmetric_links(
        up in any_link(),
        down in any_link(),
        mtu in prop::sample::select(vec![576usize, 1200, 1500]),
        seed in any::<u64>(),
        node_batching in any::<bool>(),
    ) {
        let config = ScenarioConfig {
            clients: 3,
            duration: Duration::from_secs(2),
            seed,
            link: LinkConfig { mtu, ..up },
            downlink: Some(LinkConfig { mtu, ..down }),
            endpoint_mtu: mtu,
            large_size: 10_000,
            large_interval: Duration::from_secs(1),
            request_interval: Duration::from_millis(500),
            // At 50% loss in bursts with 300 ms each way and a 576-byte MTU, congestion control
        // (a 4-packet floor) moves a few chunks per second: the 80 KB of large messages can
        // take over a minute to drain. Late is not lost; the limit only bounds the run.
        drain_limit: Duration::from_secs(300),
            node_batching,
            ..ScenarioConfig::default()
        };
        let report = run(&config, &mut |_| {}).expect("valid scenario");
        prop_assert!(check(&report).is_ok(), "{}", check(&report).unwrap_err());
        if mild(&up) && mild(&down) {
            prop_assert_eq!(report.clients_connected, 3, "{}", report);
            prop_assert!(report.disconnects.is_empty(), "{}", report);
        }
    }
}
