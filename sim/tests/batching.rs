//! Running node by node within lookahead windows (`SimConfig::node_batching`) changes only
//! how different nodes' callbacks interleave: every node sees the same events at the same
//! times as in one global time order. (Happenings at one node at the same microsecond that
//! different nodes caused may be taken in the other order; the network below is laid out
//! so that none coincide, which makes each node's whole record comparable.)

use core::time::Duration;

use shoal_proto::{Config, ConnectionHandle, Event, Instant};
use shoal_sim::{Application, LinkConfig, NatConfig, NodeContext, SimConfig, SimStats, Simulator};

const CLIENTS: usize = 24;
const RELIABLE: u8 = 2;
const SEQUENCED: u8 = 1;

/// Clients send on their own timers (a reliable and a sequenced message every 7 ms, each
/// client starting at its own offset); the server echoes every message. Every event is
/// recorded per node with its time.
struct Echo {
    conns: Vec<Option<ConnectionHandle>>,
    seen: Vec<Vec<(Instant, String)>>,
    /// Per node: state shared across nodes would see the interleaving change.
    sent: Vec<u32>,
    /// Clients stop sending here (everything is echoed before the run ends).
    stop: Instant,
}

impl Application for Echo {
    fn on_event(&mut self, ctx: &mut NodeContext<'_>, event: Event) {
        let id = ctx.id();
        self.seen[id.index()].push((ctx.now(), format!("{event:?}")));
        match event {
            Event::Connected { conn, .. } if id.index() > 0 => {
                self.conns[id.index()] = Some(conn);
                let first = ctx.now() + Duration::from_micros(350 * id.0 as u64);
                ctx.set_timer(first, 0);
            }
            Event::Message {
                conn,
                channel,
                payload,
                ..
            } if id.index() == 0 => {
                ctx.endpoint()
                    .send(conn, channel, payload)
                    .expect("echo fits the queue");
            }
            _ => {}
        }
    }

    fn on_timer(&mut self, ctx: &mut NodeContext<'_>, _token: u64) {
        let id = ctx.id();
        let Some(conn) = self.conns[id.index()] else {
            return;
        };
        let sent = &mut self.sent[id.index()];
        let body = format!("{}:{}", id.0, sent).into_bytes();
        *sent += 1;
        let ep = ctx.endpoint();
        ep.send(conn, RELIABLE, body.clone()).expect("send");
        ep.send(conn, SEQUENCED, body).expect("send");
        if ctx.now() < self.stop {
            ctx.set_timer(ctx.now() + Duration::from_millis(7), 0);
        }
    }
}

/// Runs the echo over `link` (deterministic: no loss, no jitter, so the outcome does not
/// depend on the order random numbers are drawn in), with a partition of a few clients
/// scheduled in the middle, and returns what each node saw and the simulator's counters.
fn run(batching: bool, link: LinkConfig) -> (Vec<Vec<(Instant, String)>>, SimStats) {
    run_in_steps(
        batching,
        link,
        Duration::from_millis(900),
        Instant::from_millis(900),
    )
}

/// Like `run`, calling `run_until_with` every `step` of simulated time until `end`.
fn run_in_steps(
    batching: bool,
    link: LinkConfig,
    step: Duration,
    end: Instant,
) -> (Vec<Vec<(Instant, String)>>, SimStats) {
    let mut sim = Simulator::new(SimConfig {
        seed: 3,
        default_link: link,
        node_batching: batching,
        ..SimConfig::default()
    })
    .expect("valid link");
    let server = sim.add_node(Config::default()).expect("valid config");
    let mut clients = Vec::new();
    for _ in 0..CLIENTS {
        let c = sim
            .add_node(Config {
                accept_incoming: false,
                ..Config::default()
            })
            .expect("valid config");
        // Each client its own latency (a multiple of 37 us more than the last, both ways):
        // no two clients' datagrams ever reach the server in the same microsecond.
        let own = LinkConfig {
            latency: link.latency + Duration::from_micros(37 * clients.len() as u64),
            ..link
        };
        sim.set_link(c, server, own).expect("valid link");
        sim.set_link(server, c, own).expect("valid link");
        sim.connect(c, server, b"").expect("connect");
        clients.push(c);
    }
    sim.schedule_partition(
        Instant::from_millis(200),
        Instant::from_millis(260),
        &[server],
        &clients[..4],
    );
    let mut app = Echo {
        conns: vec![None; CLIENTS + 1],
        seen: vec![Vec::new(); CLIENTS + 1],
        sent: vec![0; CLIENTS + 1],
        stop: end - Duration::from_millis(300),
    };
    while sim.now() < end {
        let until = (sim.now() + step).min(end);
        sim.run_until_with(until, &mut app);
        assert_eq!(sim.now(), until, "the clock ends at the deadline");
        let last = app.seen.iter().flatten().map(|(at, _)| *at).max();
        assert!(
            last.is_none_or(|t| t <= until),
            "nothing runs past the deadline"
        );
    }
    assert_eq!(sim.node_count(), CLIENTS + 1);
    (app.seen, *sim.stats())
}

fn deterministic_link(latency: Duration) -> LinkConfig {
    LinkConfig {
        latency,
        ..LinkConfig::default()
    }
}

#[test]
fn node_batching_gives_every_node_the_same_events_at_the_same_times() {
    let link = deterministic_link(Duration::from_millis(15));
    let (ordered, ordered_stats) = run(false, link);
    let (batched, batched_stats) = run(true, link);
    same_events(&ordered, &ordered_stats, &batched, &batched_stats);
}

/// A lookahead longer than the agenda's calendar spans (256 µs x 1,024 buckets): a window
/// takes its far entries too.
#[test]
fn windows_longer_than_the_calendar_lose_nothing() {
    let link = deterministic_link(Duration::from_millis(300));
    let (step, end) = (Duration::from_secs(8), Instant::from_millis(8_000));
    let (ordered, ordered_stats) = run_in_steps(false, link, step, end);
    let (batched, batched_stats) = run_in_steps(true, link, step, end);
    same_events(&ordered, &ordered_stats, &batched, &batched_stats);
}

/// Every node saw the same events at the same times in both runs, in a meaningful run.
fn same_events(
    ordered: &[Vec<(Instant, String)>],
    ordered_stats: &SimStats,
    batched: &[Vec<(Instant, String)>],
    batched_stats: &SimStats,
) {
    assert_eq!(ordered_stats.windows, 0);
    assert!(batched_stats.windows > 10, "{batched_stats:?}");
    let messages: usize = ordered
        .iter()
        .flatten()
        .filter(|(_, e)| e.starts_with("Message"))
        .count();
    assert!(messages > 2_000, "a meaningful run: {messages} messages");
    for (node, (a, b)) in ordered.iter().zip(batched).enumerate() {
        let first_difference = a.iter().zip(b).position(|(x, y)| x != y);
        assert!(
            a.len() == b.len() && first_difference.is_none(),
            "node {node} saw other events in batched mode: {} against {}, first differing: {:?}",
            a.len(),
            b.len(),
            first_difference.map(|i| (&a[i], &b[i]))
        );
    }
    assert_eq!(ordered_stats.datagrams_sent, batched_stats.datagrams_sent);
    assert_eq!(ordered_stats.drops, batched_stats.drops);
}

#[test]
fn without_latency_there_is_no_lookahead_and_everything_runs_in_one_order() {
    let link = deterministic_link(Duration::ZERO);
    let (ordered, _) = run(false, link);
    let (batched, stats) = run(true, link);
    assert_eq!(stats.windows, 0);
    assert_eq!(ordered, batched);
}

#[test]
fn deadlines_cut_windows_without_changing_what_any_node_sees() {
    let link = deterministic_link(Duration::from_millis(15));
    let (whole, whole_stats) = run(true, link);
    // Deadlines every 7.3 ms fall inside windows (15 ms long): each run ends its last window
    // early, and the next starts where it stopped.
    let (chunked, stats) = run_in_steps(
        true,
        link,
        Duration::from_micros(7_300),
        Instant::from_millis(900),
    );
    assert!(
        stats.windows > whole_stats.windows,
        "{} windows in steps, {} in one run",
        stats.windows,
        whole_stats.windows
    );
    assert_eq!(whole, chunked);
}

#[test]
fn a_nat_turns_batching_off() {
    let mut sim = Simulator::new(SimConfig {
        seed: 9,
        default_link: deterministic_link(Duration::from_millis(15)),
        node_batching: true,
        ..SimConfig::default()
    })
    .expect("valid link");
    let server = sim.add_node(Config::default()).expect("valid config");
    let nat = sim.add_nat(NatConfig::default()).expect("room");
    let client = sim
        .add_node_behind(
            Config {
                accept_incoming: false,
                ..Config::default()
            },
            nat,
        )
        .expect("valid config");
    let conn = sim.connect(client, server, b"").expect("connect");
    sim.run_until(Instant::from_millis(500));
    assert!(sim.endpoint(client).is_connected(conn));
    assert_eq!(sim.stats().windows, 0, "NAT mappings are shared and age");
}
