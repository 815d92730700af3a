//! NAT boxes with real endpoints: each kind's mapping and filtering, timeouts, hairpinning,
//! nesting, bounds, and which simultaneous opens (hole punching) each pair of kinds allows.

use core::net::SocketAddr;
use core::time::Duration;

use shoal_proto::{Config, ConnectionHandle, DisconnectReason, Event};
use shoal_sim::{
    AddNatError, DropCause, Fate, LinkConfig, NatConfig, NatId, NatKind, NodeId, SimConfig,
    Simulator, MAX_NAT_DEPTH,
};

const RELIABLE: u8 = 2;

fn sim(seed: u64) -> Simulator {
    Simulator::new(SimConfig {
        seed,
        default_link: LinkConfig {
            latency: Duration::from_millis(10),
            ..LinkConfig::default()
        },
        trace_capacity: 1_000_000,
        ..SimConfig::default()
    })
    .expect("valid link")
}

fn client() -> Config {
    Config {
        accept_incoming: false,
        ..Config::default()
    }
}

fn run(sim: &mut Simulator, d: Duration) {
    let until = sim.now() + d;
    sim.run_until(until);
}

/// What a node saw, accumulated over several drains.
#[derive(Default, Debug)]
struct Seen {
    connected: Vec<(ConnectionHandle, SocketAddr)>,
    messages: Vec<(ConnectionHandle, Vec<u8>)>,
    disconnected: Vec<(ConnectionHandle, DisconnectReason)>,
    /// Connection attempts that never connected.
    failed: Vec<(ConnectionHandle, DisconnectReason)>,
}

impl Seen {
    fn drain(&mut self, sim: &mut Simulator, node: NodeId) -> &mut Self {
        while let Some((_, event)) = sim.next_event(node) {
            match event {
                Event::Connected { conn, remote, .. } => self.connected.push((conn, remote)),
                Event::Message { conn, payload, .. } => {
                    self.messages.push((conn, payload.to_vec()))
                }
                Event::Disconnected { conn, reason } => self.disconnected.push((conn, reason)),
                Event::ConnectFailed { conn, reason } => self.failed.push((conn, reason)),
                _ => {}
            }
        }
        self
    }

    fn got(&self, payload: &[u8]) -> bool {
        self.messages.iter().any(|(_, p)| p == payload)
    }
}

/// A public server and one client behind a fresh NAT of `kind`, connected; returns the
/// server's handle and the address it sees the client at.
struct Behind {
    sim: Simulator,
    server: NodeId,
    nat: NatId,
    client: NodeId,
    client_conn: ConnectionHandle,
    server_conn: ConnectionHandle,
    seen_at: SocketAddr,
}

fn client_behind(kind: NatKind, nat: NatConfig, client_config: Config) -> Behind {
    let mut sim = sim(7);
    let server = sim
        .add_node(Config {
            keepalive_interval: client_config.keepalive_interval,
            idle_timeout: client_config.idle_timeout,
            ..Config::default()
        })
        .expect("valid config");
    let nat = sim.add_nat(NatConfig { kind, ..nat }).expect("room");
    let client = sim
        .add_node_behind(client_config, nat)
        .expect("valid config");
    let client_conn = sim.connect(client, server, b"").expect("connect");
    run(&mut sim, Duration::from_millis(500));
    let mut seen = Seen::default();
    seen.drain(&mut sim, server);
    let &[(server_conn, seen_at)] = seen.connected.as_slice() else {
        panic!("{kind}: the server must see exactly one connection: {seen:?}");
    };
    assert!(sim.endpoint(client).is_connected(client_conn), "{kind}");
    Behind {
        sim,
        server,
        nat,
        client,
        client_conn,
        server_conn,
        seen_at,
    }
}

#[test]
fn a_client_behind_each_nat_kind_reaches_a_public_server_which_sees_the_nat_address() {
    for kind in NatKind::ALL {
        let mut b = client_behind(kind, NatConfig::default(), client());
        let private = b.sim.address(b.client);
        assert_eq!(
            private,
            "192.168.0.1:7000".parse().expect("valid"),
            "{kind}"
        );
        assert_eq!(b.seen_at.ip(), b.sim.nat_address(b.nat), "{kind}");
        assert_ne!(b.seen_at, private, "{kind}");
        assert_eq!(
            b.sim.endpoint(b.server).remote_address(b.server_conn),
            Some(b.seen_at),
            "{kind}"
        );
        let expected_public = kind.endpoint_independent_mapping().then_some(b.seen_at);
        assert_eq!(b.sim.public_address(b.client), expected_public, "{kind}");

        let (c, s) = (b.client_conn, b.server_conn);
        b.sim
            .endpoint_mut(b.client)
            .send(c, RELIABLE, b"ping".to_vec())
            .expect("send");
        b.sim
            .endpoint_mut(b.server)
            .send(s, RELIABLE, b"pong".to_vec())
            .expect("send");
        run(&mut b.sim, Duration::from_millis(500));
        let (mut at_client, mut at_server) = (Seen::default(), Seen::default());
        assert!(at_server.drain(&mut b.sim, b.server).got(b"ping"), "{kind}");
        assert!(at_client.drain(&mut b.sim, b.client).got(b"pong"), "{kind}");
        assert!(b.sim.nat_stats(b.nat).inbound > 0, "{kind}");
    }
}

#[test]
fn a_public_node_cannot_open_a_connection_to_a_node_behind_a_nat() {
    for kind in NatKind::ALL {
        let mut sim = sim(3);
        let outsider = sim.add_node(client()).expect("valid config");
        let nat = sim.add_nat(NatConfig::new(kind)).expect("room");
        let inside = sim
            .add_node_behind(Config::default(), nat)
            .expect("valid config");
        // Neither the private address nor a guess at the NAT's address gets anywhere.
        let private = sim.address(inside);
        let guess = SocketAddr::new(sim.nat_address(nat).into(), 7000);
        let to_private = sim.connect_to(outsider, private, b"").expect("connect");
        let to_guess = sim.connect_to(outsider, guess, b"").expect("connect");
        run(&mut sim, Duration::from_secs(7));

        assert_eq!(sim.endpoint(inside).stats().datagrams_received, 0, "{kind}");
        assert!(sim.trace().all(|r| r.to_node != Some(inside)), "{kind}");
        assert!(sim.stats().drops.get(DropCause::Unroutable) > 0, "{kind}");
        assert!(sim.nat_stats(nat).dropped_no_mapping > 0, "{kind}");
        let mut seen = Seen::default();
        seen.drain(&mut sim, outsider);
        for conn in [to_private, to_guess] {
            assert!(
                seen.failed.contains(&(conn, DisconnectReason::TimedOut)),
                "{kind}: {seen:?}"
            );
        }
    }
}

/// Fates of the datagrams `from` sent to `to`: (delivered, filtered).
fn fates(sim: &Simulator, from: NodeId, to: SocketAddr) -> (usize, usize) {
    let mut delivered = 0;
    let mut filtered = 0;
    for r in sim.trace().filter(|r| r.from_node == from && r.to == to) {
        match r.fate {
            Fate::Delivered { .. } => delivered += 1,
            Fate::Dropped(DropCause::NatFiltered) => filtered += 1,
            other => panic!("unexpected fate {other}"),
        }
    }
    (delivered, filtered)
}

#[test]
fn each_kind_filters_other_senders_as_rfc_4787_says() {
    // Whether a datagram to the client's mapping (made by sending to the server S at port
    // 7000) gets in from: a third node T, and S's own address at another port.
    const EXPECTED: [(NatKind, bool, bool); 4] = [
        //                            third node  S, other port
        (NatKind::FullCone, true, true),
        (NatKind::AddressRestricted, false, true),
        (NatKind::PortRestricted, false, false),
        (NatKind::Symmetric, false, false),
    ];
    for (kind, third_gets_in, other_port_gets_in) in EXPECTED {
        let mut b = client_behind(kind, NatConfig::default(), client());
        let third = b.sim.add_node(client()).expect("valid config");
        let other_port = b.sim.add_node(client()).expect("valid config");
        let server_ip = b.sim.address(b.server).ip();
        b.sim
            .rebind(other_port, Some(SocketAddr::new(server_ip, 7001)))
            .expect("free address");
        for (sender, gets_in) in [(third, third_gets_in), (other_port, other_port_gets_in)] {
            b.sim.connect_to(sender, b.seen_at, b"").expect("connect");
            run(&mut b.sim, Duration::from_millis(600));
            let (delivered, filtered) = fates(&b.sim, sender, b.seen_at);
            assert!(delivered + filtered > 0, "{kind}: nothing was sent");
            if gets_in {
                assert_eq!(filtered, 0, "{kind}: {sender} must get in");
            } else {
                assert_eq!(delivered, 0, "{kind}: {sender} must be filtered");
            }
        }
        let filtered = b.sim.nat_stats(b.nat).dropped_filtered;
        assert_eq!(
            filtered > 0,
            !(third_gets_in && other_port_gets_in),
            "{kind}"
        );
        assert_eq!(b.sim.stats().drops.get(DropCause::NatFiltered), filtered);
        // The server itself still gets through: the connection lives.
        assert!(
            b.sim.endpoint(b.client).is_connected(b.client_conn),
            "{kind}"
        );
    }
}

#[test]
fn a_symmetric_nat_gives_each_destination_its_own_port_and_the_others_one_port() {
    for kind in NatKind::ALL {
        let mut sim = sim(5);
        let servers = [0, 1].map(|_| sim.add_node(Config::default()).expect("valid config"));
        let nat = sim.add_nat(NatConfig::new(kind)).expect("room");
        let c = sim.add_node_behind(client(), nat).expect("valid config");
        for s in servers {
            sim.connect(c, s, b"").expect("connect");
        }
        run(&mut sim, Duration::from_millis(500));
        let seen_at = servers.map(|s| {
            let mut seen = Seen::default();
            seen.drain(&mut sim, s);
            assert_eq!(seen.connected.len(), 1, "{kind}");
            seen.connected[0].1
        });
        assert_eq!(seen_at[0].ip(), seen_at[1].ip(), "{kind}");
        let one_port = seen_at[0].port() == seen_at[1].port();
        assert_eq!(one_port, kind.endpoint_independent_mapping(), "{kind}");
        let mappings = sim.nat_mappings(nat);
        let expected = if one_port { 1 } else { 2 };
        assert_eq!(mappings.len(), expected, "{kind}: {mappings:?}");
        assert!(mappings.iter().all(|m| m.internal == sim.address(c)));
        if kind == NatKind::Symmetric {
            let remotes: Vec<_> = mappings.iter().filter_map(|m| m.remote).collect();
            assert_eq!(remotes.len(), 2);
        }
    }
}

/// Both sides quiet for 20 s at a time: only what the test sends crosses the NAT.
fn quiet(keepalive: Duration) -> Config {
    Config {
        accept_incoming: false,
        keepalive_interval: keepalive,
        idle_timeout: Duration::from_secs(60),
        ..Config::default()
    }
}

fn short_mappings() -> NatConfig {
    NatConfig {
        mapping_timeout: Duration::from_secs(5),
        ..NatConfig::default()
    }
}

#[test]
fn a_mapping_idle_longer_than_its_timeout_is_forgotten_and_drops_what_comes_back() {
    let mut b = client_behind(
        NatKind::PortRestricted,
        short_mappings(),
        quiet(Duration::from_secs(20)),
    );
    assert_eq!(b.sim.nat_mappings(b.nat).len(), 1);
    run(&mut b.sim, Duration::from_secs(6));
    assert!(b.sim.nat_mappings(b.nat).is_empty(), "idle past 5 s");
    let s = b.server_conn;
    b.sim
        .endpoint_mut(b.server)
        .send(s, RELIABLE, b"late".to_vec())
        .expect("send");
    run(&mut b.sim, Duration::from_secs(2));
    let mut at_client = Seen::default();
    assert!(!at_client.drain(&mut b.sim, b.client).got(b"late"));
    let stats = *b.sim.nat_stats(b.nat);
    assert_eq!(stats.dropped_expired, 1, "{stats:?}");
    assert_eq!(stats.mappings_expired, 1, "{stats:?}");
    // Retransmissions find no mapping at all.
    assert!(stats.dropped_no_mapping > 0, "{stats:?}");
    assert_eq!(b.sim.stats().drops.get(DropCause::NatExpired), 1);
}

#[test]
fn outbound_keepalives_keep_a_mapping_alive_past_its_timeout() {
    // The client sends a keepalive every second; the server stays quiet.
    let mut b = client_behind(
        NatKind::PortRestricted,
        short_mappings(),
        quiet(Duration::from_secs(1)),
    );
    run(&mut b.sim, Duration::from_secs(8));
    let s = b.server_conn;
    b.sim
        .endpoint_mut(b.server)
        .send(s, RELIABLE, b"late".to_vec())
        .expect("send");
    run(&mut b.sim, Duration::from_secs(1));
    let mut at_client = Seen::default();
    assert!(at_client.drain(&mut b.sim, b.client).got(b"late"));
    let stats = *b.sim.nat_stats(b.nat);
    assert_eq!(
        (
            stats.mappings_created,
            stats.mappings_expired,
            stats.dropped_expired
        ),
        (1, 0, 0),
        "{stats:?}"
    );
}

#[test]
fn hairpinning_lets_a_node_reach_a_neighbour_at_its_public_mapping_only_when_on() {
    for hairpinning in [true, false] {
        let mut sim = sim(9);
        let observer = sim.add_node(Config::default()).expect("valid config");
        let nat = sim
            .add_nat(NatConfig {
                hairpinning,
                ..NatConfig::new(NatKind::FullCone)
            })
            .expect("room");
        let [a, b] = [0, 1].map(|_| {
            sim.add_node_behind(Config::default(), nat)
                .expect("valid config")
        });
        for n in [a, b] {
            sim.connect(n, observer, b"").expect("connect");
        }
        run(&mut sim, Duration::from_millis(500));
        let [public_a, public_b] =
            [a, b].map(|n| sim.public_address(n).expect("full cone maps once"));
        let a_to_b = sim.connect_to(a, public_b, b"").expect("connect");
        run(&mut sim, Duration::from_secs(6));

        let (mut at_a, mut at_b) = (Seen::default(), Seen::default());
        at_a.drain(&mut sim, a);
        at_b.drain(&mut sim, b);
        let stats = *sim.nat_stats(nat);
        if hairpinning {
            assert!(at_a.connected.contains(&(a_to_b, public_b)), "{at_a:?}");
            // B sees A at A's public mapping, not its private address.
            assert!(
                at_b.connected.iter().any(|&(_, r)| r == public_a),
                "{at_b:?}"
            );
            assert!(stats.hairpinned > 0 && stats.dropped_no_hairpin == 0);
        } else {
            assert!(
                at_a.failed.contains(&(a_to_b, DisconnectReason::TimedOut)),
                "{at_a:?}"
            );
            assert_eq!(at_b.connected.len(), 1, "only the observer: {at_b:?}");
            assert!(stats.hairpinned == 0 && stats.dropped_no_hairpin > 0);
        }
    }
}

#[test]
fn nodes_behind_one_nat_reach_each_other_by_private_address_and_other_lans_stay_apart() {
    let mut sim = sim(4);
    let home1 = sim.add_nat(NatConfig::default()).expect("room");
    let home2 = sim.add_nat(NatConfig::default()).expect("room");
    let a1 = sim.add_node_behind(client(), home1).expect("valid config");
    let b1 = sim
        .add_node_behind(Config::default(), home1)
        .expect("valid config");
    let _a2 = sim.add_node_behind(client(), home2).expect("valid config");
    let b2 = sim
        .add_node_behind(Config::default(), home2)
        .expect("valid config");
    // Both homes use the same private addresses.
    assert_eq!(sim.address(b1), sim.address(b2));
    let conn = sim.connect(a1, b1, b"").expect("connect");
    run(&mut sim, Duration::from_millis(500));
    assert!(sim.endpoint(a1).is_connected(conn));
    let mut at_b1 = Seen::default();
    at_b1.drain(&mut sim, b1);
    assert_eq!(
        at_b1.connected,
        vec![(at_b1.connected[0].0, sim.address(a1))]
    );
    assert_eq!(sim.endpoint(b2).stats().datagrams_received, 0);
    // The LAN never touched either NAT.
    for nat in [home1, home2] {
        assert_eq!(sim.nat_stats(nat).outbound, 0);
        assert!(sim.nat_mappings(nat).is_empty());
    }
}

#[test]
fn a_node_two_nats_deep_reaches_a_public_server_through_a_carrier_nat() {
    let mut sim = sim(6);
    let server = sim.add_node(Config::default()).expect("valid config");
    let carrier = sim
        .add_nat(NatConfig::carrier(NatKind::PortRestricted))
        .expect("room");
    let home = sim
        .add_nat_behind(carrier, NatConfig::new(NatKind::PortRestricted))
        .expect("room");
    assert_eq!(sim.nat_parent(home), Some(carrier));
    assert_eq!(
        sim.nat_address(home),
        "100.64.0.1".parse::<core::net::Ipv4Addr>().expect("valid")
    );
    let c = sim.add_node_behind(client(), home).expect("valid config");
    assert_eq!(sim.address(c), "192.168.0.1:7000".parse().expect("valid"));
    let conn = sim.connect(c, server, b"").expect("connect");
    run(&mut sim, Duration::from_millis(500));
    assert!(sim.endpoint(c).is_connected(conn));
    let mut at_server = Seen::default();
    at_server.drain(&mut sim, server);
    let &[(sconn, seen_at)] = at_server.connected.as_slice() else {
        panic!("one connection: {at_server:?}");
    };
    assert_eq!(seen_at.ip(), sim.nat_address(carrier));
    assert_eq!(sim.public_address(c), Some(seen_at));
    // The carrier maps the home NAT's mapping, which maps the node.
    let [home_map] = sim.nat_mappings(home)[..] else {
        panic!("one home mapping");
    };
    let [carrier_map] = sim.nat_mappings(carrier)[..] else {
        panic!("one carrier mapping");
    };
    assert_eq!(home_map.internal, sim.address(c));
    assert_eq!(carrier_map.internal, home_map.external);
    assert_eq!(carrier_map.external, seen_at);
    sim.endpoint_mut(server)
        .send(sconn, RELIABLE, b"down two".to_vec())
        .expect("send");
    run(&mut sim, Duration::from_millis(500));
    let mut at_c = Seen::default();
    assert!(at_c.drain(&mut sim, c).got(b"down two"));
    // Nesting is bounded.
    let mut deepest = home;
    for _ in 2..MAX_NAT_DEPTH {
        deepest = sim
            .add_nat_behind(deepest, NatConfig::default())
            .expect("room");
    }
    assert_eq!(
        sim.add_nat_behind(deepest, NatConfig::default()),
        Err(AddNatError::TooDeep)
    );
}

#[test]
fn a_full_nat_table_drops_new_flows_and_counts_them() {
    let mut sim = sim(8);
    let servers = [0, 1, 2].map(|_| sim.add_node(Config::default()).expect("valid config"));
    let nat = sim
        .add_nat(NatConfig {
            max_mappings: 2,
            ..NatConfig::new(NatKind::Symmetric)
        })
        .expect("room");
    let c = sim.add_node_behind(client(), nat).expect("valid config");
    let conns = servers.map(|s| sim.connect(c, s, b"").expect("connect"));
    run(&mut sim, Duration::from_millis(500));
    let connected: Vec<bool> = conns
        .iter()
        .map(|&conn| sim.endpoint(c).is_connected(conn))
        .collect();
    assert_eq!(connected, vec![true, true, false]);
    assert_eq!(sim.nat_mappings(nat).len(), 2);
    let full = sim.nat_stats(nat).dropped_table_full;
    assert!(full > 0);
    assert_eq!(sim.stats().drops.get(DropCause::NatTableFull), full);
    assert_eq!(sim.endpoint(servers[2]).stats().datagrams_received, 0);
}

fn nat_run(seed: u64) -> (u64, Vec<SocketAddr>) {
    let mut sim = sim(seed);
    let server = sim.add_node(Config::default()).expect("valid config");
    let carrier = sim
        .add_nat(NatConfig::carrier(NatKind::Symmetric))
        .expect("room");
    let homes: Vec<NatId> = NatKind::ALL
        .iter()
        .map(|&k| {
            sim.add_nat_behind(carrier, NatConfig::new(k))
                .expect("room")
        })
        .collect();
    for &home in &homes {
        let c = sim.add_node_behind(client(), home).expect("valid config");
        sim.connect(c, server, b"").expect("connect");
    }
    run(&mut sim, Duration::from_secs(2));
    let mappings = sim
        .nat_mappings(carrier)
        .iter()
        .map(|m| m.external)
        .collect();
    (sim.trace_hash(), mappings)
}

#[test]
fn the_same_seed_gives_the_same_nat_run() {
    let a = nat_run(21);
    assert_eq!(a, nat_run(21));
    assert_eq!(a.1.len(), NatKind::ALL.len());
    assert_ne!(a, nat_run(22));
}

// ------------------------------------------------------------------ simultaneous open

/// The sides of the matrix: no NAT, then each kind.
const SIDES: [Option<NatKind>; 5] = [
    None,
    Some(NatKind::FullCone),
    Some(NatKind::AddressRestricted),
    Some(NatKind::PortRestricted),
    Some(NatKind::Symmetric),
];

/// Whether two peers behind these (rows: A, columns: B) end up connected when each connects
/// to the other's mapping as an observer saw it, at the same instant. A symmetric NAT sends
/// the peer's datagrams from a new port, which only a full-cone NAT, or an address-restricted
/// one whose node has sent to that address already, lets in; and the peer's datagrams to the
/// observed mapping are filtered by the symmetric NAT itself.
const EXPECTED: [[bool; 5]; 5] = [
    //    public full   addr   port   symmetric
    [true, true, true, true, true],   // public
    [true, true, true, true, true],   // full cone
    [true, true, true, true, true],   // address-restricted
    [true, true, true, true, false],  // port-restricted
    [true, true, true, false, false], // symmetric
];

#[derive(Debug, PartialEq, Eq)]
struct Opened {
    /// Both sides ended with exactly one connection to the other, carrying messages both ways.
    connected: bool,
    /// Whose own connect attempt is the surviving connection: A's, B's (`None` if none).
    winner: Option<char>,
    /// How A's and B's own attempts ended, if they did (`Replaced`: the handshakes crossed
    /// and the other won; `TimedOut`: it never got through).
    ended: [Option<DisconnectReason>; 2],
}

fn simultaneous_open(a_side: Option<NatKind>, b_side: Option<NatKind>) -> Opened {
    let mut sim = sim(31);
    let observer = sim.add_node(Config::default()).expect("valid config");
    let mut place = |side: Option<NatKind>| match side {
        None => sim.add_node(Config::default()).expect("valid config"),
        Some(kind) => {
            let nat = sim.add_nat(NatConfig::new(kind)).expect("room");
            sim.add_node_behind(Config::default(), nat)
                .expect("valid config")
        }
    };
    let (a, b) = (place(a_side), place(b_side));
    // Like STUN: each learns its mapping from what the observer sees.
    let to_observer = [a, b].map(|n| sim.connect(n, observer, b"").expect("connect"));
    run(&mut sim, Duration::from_millis(500));
    let mut at_observer = Seen::default();
    at_observer.drain(&mut sim, observer);
    let public_ip = |n: NodeId| match sim.nat_of(n) {
        Some(nat) => core::net::IpAddr::V4(sim.nat_address(nat)),
        None => sim.address(n).ip(),
    };
    let observed = |n: NodeId| {
        let &(conn, _) = at_observer
            .connected
            .iter()
            .find(|(_, r)| r.ip() == public_ip(n))
            .expect("the observer sees both");
        sim.endpoint(observer)
            .remote_address(conn)
            .expect("live connection")
    };
    let (mapped_a, mapped_b) = (observed(a), observed(b));

    let a_to_b = sim.connect_to(a, mapped_b, b"").expect("connect");
    let b_to_a = sim.connect_to(b, mapped_a, b"").expect("connect");
    // Past the handshake timeout: a failed attempt has ended by then.
    run(&mut sim, Duration::from_secs(7));
    let peers = |sim: &Simulator, n: NodeId, own: ConnectionHandle| {
        sim.endpoint(n)
            .connections()
            .filter(|&c| c != own && sim.endpoint(n).is_connected(c))
            .collect::<Vec<_>>()
    };
    let (peers_a, peers_b) = (
        peers(&sim, a, to_observer[0]),
        peers(&sim, b, to_observer[1]),
    );
    let (mut at_a, mut at_b) = (Seen::default(), Seen::default());
    at_a.drain(&mut sim, a);
    at_b.drain(&mut sim, b);
    let ended_of = |seen: &Seen, conn| {
        seen.disconnected
            .iter()
            .find(|&&(c, _)| c == conn)
            .map(|&(_, r)| r)
    };
    let ended = [ended_of(&at_a, a_to_b), ended_of(&at_b, b_to_a)];
    let winner = if peers_a.contains(&a_to_b) {
        Some('A')
    } else if peers_b.contains(&b_to_a) {
        Some('B')
    } else {
        None
    };
    let &[pa] = peers_a.as_slice() else {
        assert!(
            peers_a.is_empty() && peers_b.is_empty(),
            "{peers_a:?} {peers_b:?}"
        );
        return Opened {
            connected: false,
            winner,
            ended,
        };
    };
    let &[pb] = peers_b.as_slice() else {
        panic!("A has a connection to B but B has {peers_b:?}");
    };
    sim.endpoint_mut(a)
        .send(pa, RELIABLE, b"from A".to_vec())
        .expect("send");
    sim.endpoint_mut(b)
        .send(pb, RELIABLE, b"from B".to_vec())
        .expect("send");
    run(&mut sim, Duration::from_millis(500));
    let (mut at_a, mut at_b) = (Seen::default(), Seen::default());
    let carried = at_a.drain(&mut sim, a).got(b"from B") && at_b.drain(&mut sim, b).got(b"from A");
    Opened {
        connected: carried,
        winner,
        ended,
    }
}

#[test]
fn simultaneous_open_connects_exactly_where_the_nat_kinds_allow() {
    let name = |s: Option<NatKind>| s.map_or("public", NatKind::name);
    let mut table = String::new();
    let mut wrong = Vec::new();
    for (i, &a) in SIDES.iter().enumerate() {
        for (j, &b) in SIDES.iter().enumerate() {
            let opened = simultaneous_open(a, b);
            table += &format!(
                "{:>18} x {:<18} connected={} winner={:?} attempts ended {:?}\n",
                name(a),
                name(b),
                opened.connected,
                opened.winner,
                opened.ended
            );
            if opened.connected != EXPECTED[i][j] {
                wrong.push(format!("{} x {}", name(a), name(b)));
            }
            // Connected is the same as one attempt surviving.
            assert_eq!(opened.connected, opened.winner.is_some(), "{table}");
        }
    }
    println!("{table}");
    assert!(wrong.is_empty(), "unexpected cells {wrong:?}:\n{table}");
}
