//! The simulator's promises, each shown with real endpoints: determinism, every link
//! impairment, partitions, link failures and NAT rebinding.

use core::time::Duration;
use std::collections::HashMap;

use shoal_proto::{Config, ConnectionHandle, DisconnectReason, Event, Instant};
use shoal_sim::{
    Application, BurstLoss, DropCause, Fate, LinkConfig, NodeContext, NodeId, SimConfig, Simulator,
};

const UNRELIABLE: u8 = 0;
const SEQUENCED: u8 = 1;
const RELIABLE: u8 = 2;
const ORDERED: u8 = 3;

fn client_config() -> Config {
    Config {
        accept_incoming: false,
        ..Config::default()
    }
}

fn sim_with(seed: u64, link: LinkConfig) -> Simulator {
    Simulator::new(SimConfig {
        seed,
        default_link: link,
        trace_capacity: 100_000,
        ..SimConfig::default()
    })
    .expect("valid link")
}

fn ms(ms: u64) -> Instant {
    Instant::from_millis(ms)
}

/// A server and `clients` clients, each connecting at once.
fn star(sim: &mut Simulator, clients: usize) -> (NodeId, Vec<(NodeId, ConnectionHandle)>) {
    let server = sim.add_node(Config::default()).expect("valid config");
    let clients = (0..clients)
        .map(|_| {
            let c = sim.add_node(client_config()).expect("valid config");
            let conn = sim.connect(c, server, b"").expect("connect");
            (c, conn)
        })
        .collect();
    (server, clients)
}

/// A server and one connected client over links of 10 ms each way: (sim, server, client,
/// the client's connection).
fn pair_at_10ms(seed: u64) -> (Simulator, NodeId, NodeId, ConnectionHandle) {
    let link = LinkConfig {
        latency: Duration::from_millis(10),
        ..LinkConfig::default()
    };
    let mut sim = sim_with(seed, link);
    let (server, clients) = star(&mut sim, 1);
    let (client, conn) = clients[0];
    (sim, server, client, conn)
}

/// Messages (channel, payload) and other events a node saw, with the connection each came on.
#[derive(Default, Debug)]
struct Seen {
    messages: Vec<(ConnectionHandle, u8, Vec<u8>)>,
    connected: Vec<(ConnectionHandle, NodeId)>,
    disconnected: Vec<(Instant, ConnectionHandle, DisconnectReason)>,
}

fn drain(sim: &mut Simulator, node: NodeId, seen: &mut Seen) {
    while let Some((at, event)) = sim.next_event(node) {
        match event {
            Event::Message {
                conn,
                channel,
                payload,
                ..
            } => seen.messages.push((conn, channel, payload.to_vec())),
            Event::Connected { conn, remote, .. } => {
                let peer = sim.node_at(remote).expect("connected to a node");
                seen.connected.push((conn, peer));
            }
            Event::Disconnected { conn, reason } => seen.disconnected.push((at, conn, reason)),
            _ => {}
        }
    }
}

/// Counters in payloads: `[sender node, channel, counter (u32 LE)]`.
fn payload(sender: NodeId, channel: u8, counter: u32) -> Vec<u8> {
    let mut p = vec![sender.0 as u8, channel];
    p.extend_from_slice(&counter.to_le_bytes());
    p
}

fn counter_of(p: &[u8]) -> u32 {
    u32::from_le_bytes([p[2], p[3], p[4], p[5]])
}

/// Runs a small lossy exchange and returns the trace hash and some counters.
fn lossy_run(seed: u64) -> (u64, u64, u64) {
    let link = LinkConfig {
        latency: Duration::from_millis(20),
        jitter: Duration::from_millis(10),
        loss: 0.1,
        duplicate: 0.05,
        reorder: 0.05,
        ..LinkConfig::default()
    };
    let mut sim = sim_with(seed, link);
    let (_server, clients) = star(&mut sim, 3);
    for step in 0..60u32 {
        for &(c, conn) in &clients {
            let ep = sim.endpoint_mut(c);
            ep.send(conn, RELIABLE, payload(c, RELIABLE, step))
                .expect("send");
            ep.send(conn, SEQUENCED, payload(c, SEQUENCED, step))
                .expect("send");
        }
        sim.run_until(ms(50 * u64::from(step + 1)));
    }
    sim.run_until(ms(5000));
    (
        sim.trace_hash(),
        sim.stats().datagrams_sent,
        sim.stats().drops.total(),
    )
}

#[test]
fn same_seed_gives_the_same_trace_and_another_seed_a_different_one() {
    let a = lossy_run(11);
    let b = lossy_run(11);
    let c = lossy_run(12);
    assert_eq!(a, b, "two runs with one seed must match bit for bit");
    assert_ne!(a.0, c.0, "another seed must give another run");
    assert!(
        a.2 > 0,
        "the run must have lost something to be a meaningful check"
    );
}

#[test]
fn lossy_duplicating_reordering_link_still_delivers_reliable_once_and_ordered_in_order() {
    let link = LinkConfig {
        latency: Duration::from_millis(15),
        jitter: Duration::from_millis(10),
        jitter_reorders: true,
        loss: 0.2,
        duplicate: 0.1,
        reorder: 0.1,
        reorder_delay: Duration::from_millis(30),
        ..LinkConfig::default()
    };
    let mut sim = sim_with(3, link);
    let (server, clients) = star(&mut sim, 3);
    const N: u32 = 100;
    let mut server_seen = Seen::default();
    let mut client_seen: Vec<Seen> = clients.iter().map(|_| Seen::default()).collect();
    let mut server_conns: HashMap<NodeId, ConnectionHandle> = HashMap::new();
    for step in 0..N {
        for &(c, conn) in &clients {
            let ep = sim.endpoint_mut(c);
            ep.send(conn, RELIABLE, payload(c, RELIABLE, step))
                .expect("send");
            ep.send(conn, ORDERED, payload(c, ORDERED, step))
                .expect("send");
        }
        sim.run_until(ms(20 * u64::from(step + 1)));
        drain(&mut sim, server, &mut server_seen);
        // The server answers on the ordered channel once it knows the client.
        for &(conn, peer) in &server_seen.connected {
            server_conns.insert(peer, conn);
        }
    }
    // The server sends N ordered messages to each client in one go.
    for &(c, _) in &clients {
        let conn = server_conns[&c];
        for i in 0..N {
            sim.endpoint_mut(server)
                .send(conn, ORDERED, payload(server, ORDERED, i))
                .expect("send");
        }
    }
    sim.run_until(ms(30_000));
    drain(&mut sim, server, &mut server_seen);
    for (i, &(c, _)) in clients.iter().enumerate() {
        drain(&mut sim, c, &mut client_seen[i]);
    }

    let stats = *sim.stats();
    assert!(stats.drops.get(DropCause::RandomLoss) > 100, "{stats:?}");
    assert!(stats.duplicates > 20 && stats.reordered > 20, "{stats:?}");

    for &(c, _) in &clients {
        let conn = server_conns[&c];
        let on = |channel| -> Vec<u32> {
            server_seen
                .messages
                .iter()
                .filter(|(k, ch, _)| *k == conn && *ch == channel)
                .map(|(_, _, p)| counter_of(p))
                .collect()
        };
        let mut reliable = on(RELIABLE);
        reliable.sort_unstable();
        assert_eq!(
            reliable,
            (0..N).collect::<Vec<_>>(),
            "reliable from {c}: each exactly once"
        );
        assert_eq!(
            on(ORDERED),
            (0..N).collect::<Vec<_>>(),
            "ordered from {c}: all, in order"
        );
    }
    for seen in &client_seen {
        let ordered: Vec<u32> = seen
            .messages
            .iter()
            .map(|(_, _, p)| counter_of(p))
            .collect();
        assert_eq!(ordered, (0..N).collect::<Vec<_>>());
        assert!(seen.disconnected.is_empty());
    }
    assert!(server_seen.disconnected.is_empty());
}

/// One client sending an ordered message every 100 ms until `until`, with both directions
/// between it and the server cut from `cut` to `heal`; returns what each side saw.
fn partitioned_run(cut: Instant, heal: Instant, until: Instant) -> (Simulator, Seen, Seen, u32) {
    let (mut sim, server, client, conn) = pair_at_10ms(5);
    sim.schedule_partition(cut, heal, &[server], &[client]);
    let mut server_seen = Seen::default();
    let mut client_seen = Seen::default();
    let mut sent = 0;
    let mut t = ms(0);
    while t < until {
        t += Duration::from_millis(100);
        if t < ms(8_000) && client_seen.disconnected.is_empty() {
            sim.endpoint_mut(client)
                .send(conn, ORDERED, payload(client, ORDERED, sent))
                .expect("send");
            sent += 1;
        }
        sim.run_until(t);
        drain(&mut sim, server, &mut server_seen);
        drain(&mut sim, client, &mut client_seen);
    }
    (sim, server_seen, client_seen, sent)
}

#[test]
fn partition_shorter_than_idle_timeout_recovers_without_losing_reliable_messages() {
    let (sim, server_seen, client_seen, sent) = partitioned_run(ms(2_000), ms(6_000), ms(20_000));
    assert!(
        sim.stats().drops.get(DropCause::Partition) > 20,
        "{:?}",
        sim.stats()
    );
    assert!(server_seen.disconnected.is_empty() && client_seen.disconnected.is_empty());
    let got: Vec<u32> = server_seen
        .messages
        .iter()
        .filter(|(_, ch, _)| *ch == ORDERED)
        .map(|(_, _, p)| counter_of(p))
        .collect();
    assert_eq!(got, (0..sent).collect::<Vec<_>>());
}

#[test]
fn partition_longer_than_idle_timeout_times_out_on_both_sides() {
    let (_sim, server_seen, client_seen, _) = partitioned_run(ms(2_000), ms(30_000), ms(16_000));
    for (side, seen) in [("server", &server_seen), ("client", &client_seen)] {
        assert_eq!(seen.disconnected.len(), 1, "{side}: {seen:?}");
        let (at, _, reason) = seen.disconnected[0];
        assert_eq!(reason, DisconnectReason::TimedOut, "{side}");
        // Idle timeout (10 s) after the last datagram that got through before the cut.
        assert!(
            at >= ms(11_000) && at <= ms(12_100),
            "{side} timed out at {at:?}"
        );
    }
}

#[test]
fn bandwidth_queue_spaces_arrivals_and_counts_drops() {
    let rate = 20_000; // bytes per second
    let mut sim = sim_with(7, LinkConfig::default());
    let (server, clients) = star(&mut sim, 1);
    let (client, conn) = clients[0];
    let narrow = LinkConfig {
        bandwidth: Some(rate),
        queue_bytes: 4096,
        latency: Duration::from_millis(5),
        ..LinkConfig::default()
    };
    sim.set_link(client, server, narrow).expect("valid link");
    sim.run_until(ms(100));
    for i in 0..200 {
        sim.endpoint_mut(client)
            .send(conn, UNRELIABLE, vec![i as u8; 1000])
            .expect("send");
    }
    sim.run_until(ms(3_000));

    assert!(
        sim.stats().drops.get(DropCause::QueueFull) > 0,
        "{:?}",
        sim.stats()
    );
    let uplink: Vec<_> = sim.trace().filter(|r| r.from_node == client).collect();
    assert!(uplink
        .iter()
        .any(|r| r.fate == Fate::Dropped(DropCause::QueueFull)));
    // Delivered datagrams leave the bottleneck one after another: consecutive arrivals are at
    // least one serialization time apart.
    let mut arrivals: Vec<(Instant, usize)> = uplink
        .iter()
        .filter_map(|r| match r.fate {
            Fate::Delivered { at, .. } => Some((at, r.len)),
            _ => None,
        })
        .collect();
    arrivals.sort();
    assert!(arrivals.len() > 10);
    for w in arrivals.windows(2) {
        let gap = w[1].0 - w[0].0;
        let serialize = Duration::from_micros(w[1].1 as u64 * 1_000_000 / rate);
        assert!(
            gap + Duration::from_micros(1) >= serialize,
            "{gap:?} < {serialize:?}"
        );
    }
    // Roughly the link's rate overall (the first datagram's serialization is not in the span).
    let bytes: usize = arrivals[1..].iter().map(|a| a.1).sum();
    let span = arrivals[arrivals.len() - 1].0 - arrivals[0].0;
    assert!(bytes as f64 / span.as_secs_f64() <= rate as f64 * 1.01);
}

#[test]
fn datagrams_above_the_link_mtu_are_dropped_and_counted() {
    let mut sim = sim_with(
        8,
        LinkConfig {
            mtu: 600,
            ..LinkConfig::default()
        },
    );
    let (server, clients) = star(&mut sim, 1);
    let (client, conn) = clients[0];
    sim.run_until(ms(100));
    let mut seen = Seen::default();
    drain(&mut sim, server, &mut seen);
    assert_eq!(seen.connected.len(), 1, "small handshake packets pass");
    sim.endpoint_mut(client)
        .send(conn, UNRELIABLE, vec![1u8; 100])
        .expect("send");
    sim.endpoint_mut(client)
        .send(conn, UNRELIABLE, vec![2u8; 1100])
        .expect("send");
    sim.run_until(ms(500));
    drain(&mut sim, server, &mut seen);
    assert_eq!(seen.messages.len(), 1);
    assert_eq!(seen.messages[0].2.len(), 100);
    assert!(sim.stats().drops.get(DropCause::Mtu) >= 1);
    assert!(sim
        .trace()
        .any(|r| r.fate == Fate::Dropped(DropCause::Mtu) && r.len > 600));
}

#[test]
fn nat_rebinding_keeps_the_connection_and_the_server_follows_the_new_address() {
    let (mut sim, server, client, conn) = pair_at_10ms(9);
    let old = sim.address(client);
    sim.schedule_rebind(ms(2_000), client, None);
    let mut server_seen = Seen::default();
    let mut client_seen = Seen::default();
    let mut server_conn = None;
    let mut sent_up = 0u32;
    let mut sent_down = 0u32;
    for step in 1..=100u64 {
        sim.endpoint_mut(client)
            .send(conn, ORDERED, payload(client, ORDERED, sent_up))
            .expect("send");
        sent_up += 1;
        if let Some(sc) = server_conn {
            sim.endpoint_mut(server)
                .send(sc, ORDERED, payload(server, ORDERED, sent_down))
                .expect("send");
            sent_down += 1;
        }
        sim.run_until(ms(50 * step));
        drain(&mut sim, server, &mut server_seen);
        drain(&mut sim, client, &mut client_seen);
        server_conn = server_seen.connected.first().map(|c| c.0);
    }
    sim.run_until(ms(8_000));
    drain(&mut sim, server, &mut server_seen);
    drain(&mut sim, client, &mut client_seen);

    let new = sim.address(client);
    assert_ne!(old, new);
    let sc = server_conn.expect("connected");
    assert_eq!(sim.endpoint(server).remote_address(sc), Some(new));
    assert_eq!(sim.endpoint(server).stats().migrations, 1);
    assert!(server_seen.disconnected.is_empty() && client_seen.disconnected.is_empty());
    let up: Vec<u32> = server_seen
        .messages
        .iter()
        .map(|m| counter_of(&m.2))
        .collect();
    let down: Vec<u32> = client_seen
        .messages
        .iter()
        .map(|m| counter_of(&m.2))
        .collect();
    assert_eq!(up, (0..sent_up).collect::<Vec<_>>());
    assert_eq!(down, (0..sent_down).collect::<Vec<_>>());
    // After the rebinding, the client's datagrams come from the new address.
    assert!(sim
        .trace()
        .filter(|r| r.from_node == client && r.time > ms(2_000))
        .all(|r| r.from == new));
}

#[test]
fn a_node_that_rebound_is_not_reached_at_the_address_it_left() {
    let (mut sim, server, client, conn) = pair_at_10ms(11);
    sim.run_until(ms(1_000));
    let first = sim.address(server);
    let moved = sim.rebind(server, None).expect("a free port");
    assert_ne!(first, moved);
    for step in 1..=10u64 {
        sim.endpoint_mut(client)
            .send(conn, ORDERED, payload(client, ORDERED, step as u32))
            .expect("send");
        sim.run_until(ms(1_000 + 50 * step));
    }
    let after: Vec<_> = sim
        .trace()
        .filter(|r| r.from_node == client && r.time > ms(1_000))
        .collect();
    assert!(!after.is_empty());
    for r in after {
        assert_eq!(r.to, first, "the client does not know the server moved");
        assert_eq!(r.to_node, None, "{r}");
        assert_eq!(r.fate, Fate::Dropped(DropCause::Unroutable), "{r}");
    }
}

#[test]
fn asymmetric_links_delay_each_direction_by_its_own_latency() {
    let mut sim = sim_with(10, LinkConfig::default());
    let (server, clients) = star(&mut sim, 1);
    let (client, _) = clients[0];
    let up = LinkConfig {
        latency: Duration::from_millis(10),
        ..LinkConfig::default()
    };
    let down = LinkConfig {
        latency: Duration::from_millis(70),
        ..LinkConfig::default()
    };
    sim.set_link(client, server, up).expect("valid");
    sim.set_link(server, client, down).expect("valid");
    sim.run_until(ms(3_000));
    let mut directions = [0, 0];
    for r in sim.trace() {
        let Fate::Delivered { at, .. } = r.fate else {
            panic!("lossless link lost {r}")
        };
        let expected = if r.from_node == client { 10 } else { 70 };
        assert_eq!(at - r.time, Duration::from_millis(expected), "{r}");
        directions[usize::from(r.from_node == client)] += 1;
    }
    assert!(directions[0] > 0 && directions[1] > 0);
}

#[test]
fn link_down_then_up_drops_meanwhile_and_the_connection_survives() {
    let mut sim = sim_with(11, LinkConfig::default());
    let (server, clients) = star(&mut sim, 1);
    let (client, conn) = clients[0];
    sim.schedule_link_down(ms(1_000), client, server);
    sim.schedule_link_up(ms(3_000), client, server);
    let mut seen = Seen::default();
    for step in 1..=50u32 {
        sim.endpoint_mut(client)
            .send(conn, RELIABLE, payload(client, RELIABLE, step))
            .expect("send");
        sim.run_until(ms(100 * u64::from(step)));
        if step == 20 {
            assert!(!sim.is_link_up(client, server));
            assert!(sim.is_link_up(server, client), "only one direction is down");
        }
    }
    sim.run_until(ms(10_000));
    drain(&mut sim, server, &mut seen);
    assert!(sim.stats().drops.get(DropCause::LinkDown) > 0);
    assert!(seen.disconnected.is_empty());
    let mut got: Vec<u32> = seen.messages.iter().map(|m| counter_of(&m.2)).collect();
    got.sort_unstable();
    assert_eq!(got, (1..=50).collect::<Vec<_>>());
}

#[test]
fn burst_loss_drops_in_runs_and_reliable_traffic_still_arrives() {
    let link = LinkConfig {
        latency: Duration::from_millis(5),
        burst_loss: Some(BurstLoss::new(0.05, 0.3)),
        ..LinkConfig::default()
    };
    let mut sim = sim_with(12, link);
    let (server, clients) = star(&mut sim, 1);
    let (client, conn) = clients[0];
    for step in 1..=100u32 {
        sim.endpoint_mut(client)
            .send(conn, ORDERED, payload(client, ORDERED, step))
            .expect("send");
        sim.run_until(ms(20 * u64::from(step)));
    }
    sim.run_until(ms(15_000));
    let mut seen = Seen::default();
    drain(&mut sim, server, &mut seen);
    assert!(sim.stats().drops.get(DropCause::BurstLoss) > 10);
    assert_eq!(sim.stats().drops.get(DropCause::RandomLoss), 0);
    let got: Vec<u32> = seen.messages.iter().map(|m| counter_of(&m.2)).collect();
    assert_eq!(got, (1..=100).collect::<Vec<_>>());
}

/// Sends a sequenced message from a timer every 50 ms and checks none arrives stale.
struct Ticker {
    conn: Option<ConnectionHandle>,
    client: NodeId,
    sent: u32,
    received: Vec<u32>,
}

impl Application for Ticker {
    fn on_event(&mut self, ctx: &mut NodeContext<'_>, event: Event) {
        match event {
            Event::Connected { conn, .. } if ctx.id() == self.client => {
                self.conn = Some(conn);
                ctx.set_timer(ctx.now(), 0);
            }
            Event::Message { payload, .. } => self.received.push(counter_of(&payload)),
            _ => {}
        }
    }

    fn on_timer(&mut self, ctx: &mut NodeContext<'_>, _token: u64) {
        let Some(conn) = self.conn else { return };
        let id = ctx.id();
        ctx.endpoint()
            .send(conn, SEQUENCED, payload(id, SEQUENCED, self.sent))
            .expect("send");
        self.sent += 1;
        let next = ctx.now() + Duration::from_millis(50);
        ctx.set_timer(next, 0);
    }
}

#[test]
fn application_timers_drive_sends_and_sequenced_never_goes_back() {
    let link = LinkConfig {
        latency: Duration::from_millis(30),
        jitter: Duration::from_millis(40), // heavy reordering
        loss: 0.05,
        ..LinkConfig::default()
    };
    let mut sim = sim_with(13, link);
    let (_server, clients) = star(&mut sim, 1);
    let mut app = Ticker {
        conn: None,
        client: clients[0].0,
        sent: 0,
        received: Vec::new(),
    };
    sim.run_until_with(ms(5_000), &mut app);
    assert!(app.sent >= 95, "{}", app.sent);
    assert!(app.received.len() > 50);
    assert!(
        app.received.windows(2).all(|w| w[0] < w[1]),
        "stale delivery: {:?}",
        app.received
    );
    assert!(sim.stats().drops.get(DropCause::RandomLoss) > 0);
    assert!(sim.endpoint(NodeId(0)).stats().drops.total() + sim.stats().drops.total() > 0);
}

#[test]
fn hundreds_of_clients_connect_and_stay_connected() {
    let link = LinkConfig {
        latency: Duration::from_millis(20),
        loss: 0.02,
        ..LinkConfig::default()
    };
    let mut sim = sim_with(14, link);
    let (server, clients) = star(&mut sim, 300);
    sim.run_until(ms(4_000));
    assert_eq!(sim.endpoint(server).connection_count(), 300);
    for &(c, conn) in &clients {
        assert!(sim.endpoint(c).is_connected(conn), "{c}");
    }
    let stats = sim.stats();
    assert_eq!(stats.timer_spins, 0);
    // Keepalives every second: a few wake-ups per client per second, not one per node per
    // step.
    assert!(stats.wakeups < 300 * 4 * 10, "{stats:?}");
}

#[test]
fn disconnect_reaches_the_peer_with_its_code() {
    let link = LinkConfig {
        latency: Duration::from_millis(15),
        ..LinkConfig::default()
    };
    let mut sim = sim_with(15, link);
    let (server, clients) = star(&mut sim, 2);
    sim.run_until(ms(500));
    let (leaver, conn) = clients[0];
    sim.endpoint_mut(leaver).disconnect(conn, 42);
    sim.run_until(ms(1_000));
    let mut server_seen = Seen::default();
    let mut leaver_seen = Seen::default();
    drain(&mut sim, server, &mut server_seen);
    drain(&mut sim, leaver, &mut leaver_seen);
    assert_eq!(leaver_seen.disconnected.len(), 1);
    assert_eq!(
        leaver_seen.disconnected[0].2,
        DisconnectReason::ClosedLocally
    );
    assert_eq!(
        server_seen.disconnected.len(),
        1,
        "only the leaver's connection ends"
    );
    let (at, _, reason) = server_seen.disconnected[0];
    assert_eq!(reason, DisconnectReason::ClosedByPeer { code: 42 });
    assert_eq!(at, ms(515), "one link latency after the disconnect");
    assert_eq!(sim.endpoint(server).connection_count(), 1);
}

/// A datagram sent before a NAT rebinding that arrives after one sent from the new address
/// (reordered) must not move the server's connection back to the dead old address: only the
/// newest packet number may migrate a connection (as in RFC 9000 §9.3).
#[test]
fn a_reordered_datagram_from_before_a_rebinding_does_not_move_the_connection_back() {
    let (mut sim, server, client, conn) = pair_at_10ms(16);
    sim.run_until(ms(1_000));
    let mut seen = Seen::default();
    drain(&mut sim, server, &mut seen);
    let server_conn = seen.connected[0].0;
    // The next datagram from the old address is held back by 50 ms.
    let slow = LinkConfig {
        latency: Duration::from_millis(10),
        reorder: 1.0,
        reorder_delay: Duration::from_millis(50),
        ..LinkConfig::default()
    };
    sim.set_link(client, server, slow).expect("valid");
    sim.endpoint_mut(client)
        .send(conn, ORDERED, &b"sent from the old address"[..])
        .expect("send");
    sim.run_until(ms(1_001));
    sim.clear_link(client, server);
    let new = sim.rebind(client, None).expect("free address");
    sim.endpoint_mut(client)
        .send(conn, ORDERED, &b"sent from the new address"[..])
        .expect("send");
    sim.run_until(ms(1_200));
    assert_eq!(sim.endpoint(server).remote_address(server_conn), Some(new));
    assert_eq!(sim.endpoint(server).stats().migrations, 1);
}

/// Datagrams follow addresses, not node numbers: once a node has moved away, its original
/// address belongs to whoever rebinds onto it.
#[test]
fn an_address_a_node_left_reaches_the_node_that_took_it() {
    let mut sim = sim_with(17, LinkConfig::default());
    let a = sim.add_node(Config::default()).expect("valid config");
    let b = sim.add_node(Config::default()).expect("valid config");
    let client = sim.add_node(client_config()).expect("valid config");
    let original = sim.address(a);
    sim.rebind(a, None).expect("free address");
    assert_eq!(sim.rebind(b, Some(original)), Ok(original));
    assert_eq!(sim.node_at(original), Some(b));
    sim.connect_to(client, original, b"")
        .expect("connect starts");
    sim.run_until(ms(500));
    let first = sim.trace().next().expect("the client sent");
    assert_eq!((first.to, first.to_node), (original, Some(b)));
    assert_eq!(sim.endpoint(b).peers().count(), 1);
    assert_eq!(sim.endpoint(a).peers().count(), 0);
}
