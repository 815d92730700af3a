//! Prefetching what the next turns will read (`SimConfig::memory_hints`) changes nothing but
//! speed: with the hints on and off, every datagram and every event of a run is the same,
//! in both schedules.

use core::time::Duration;

use shoal_proto::Protection;
use shoal_sim::scenario::{run, ScenarioConfig};

fn trace(memory_hints: bool, node_batching: bool, protection: Protection) -> (u64, u64) {
    let config = ScenarioConfig {
        // More than two connections at the server, so its transmit queue is hinted too, and
        // large messages, so connections have more to send than one packet.
        clients: 40,
        duration: Duration::from_secs(3),
        seed: 7,
        protection,
        large_size: 8 * 1024,
        large_interval: Duration::from_secs(1),
        memory_hints,
        node_batching,
        ..ScenarioConfig::default()
    };
    let report = run(&config, &mut |_| {}).expect("the scenario runs");
    assert_eq!(report.violations.total(), 0);
    (report.trace_hash, report.sim.datagrams_sent)
}

#[test]
fn memory_hints_change_no_datagram_and_no_event() {
    for node_batching in [true, false] {
        for protection in [Protection::None, Protection::Encrypted] {
            let with = trace(true, node_batching, protection);
            let without = trace(false, node_batching, protection);
            assert_eq!(with, without, "batching {node_batching}, {protection:?}");
            assert!(with.1 > 1_000, "the run carried traffic");
        }
    }
}
