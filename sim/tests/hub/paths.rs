//! Peer links: a connection between two members, through the hub at first, direct where
//! the NATs allow, back through the hub when the direct path dies — one connection
//! throughout, so channels, order and exactly-once hold across every move.

use shoal_proto::hub::{HubError, HubEvent, LeaveReason, PathPolicy, RoomOptions, Target};
use shoal_proto::Event;
use shoal_sim::{NatConfig, NatKind, NodeId, Simulator};

use crate::world::{hub_config, link, messages, number, numbered, World};

/// Where a member sits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Place {
    Public,
    Behind(NatKind),
    /// A home NAT of this kind behind a port-restricted carrier NAT.
    Cgnat(NatKind),
}

fn place(sim: &mut Simulator, p: Place) -> Option<shoal_sim::NatId> {
    match p {
        Place::Public => None,
        Place::Behind(kind) => Some(sim.add_nat(NatConfig::new(kind)).expect("nat")),
        Place::Cgnat(kind) => {
            let carrier = sim
                .add_nat(NatConfig::carrier(NatKind::PortRestricted))
                .expect("carrier");
            Some(
                sim.add_nat_behind(carrier, NatConfig::new(kind))
                    .expect("home"),
            )
        }
    }
}

/// Two members in one room, placed as given, linked as `policy` says; each announces its
/// own address.
fn pair(seed: u64, a: Place, b: Place, policy: PathPolicy, loss: f64) -> (Simulator, World) {
    pair_at(seed, a, b, policy, loss).0
}

/// Like `pair`, also returning when the second member asked to join (when the hub
/// introduces them).
fn pair_at(
    seed: u64,
    a: Place,
    b: Place,
    policy: PathPolicy,
    loss: f64,
) -> ((Simulator, World), shoal_proto::Instant) {
    let (mut sim, mut w) = World::new(
        seed,
        hub_config(),
        shoal_proto::hub::endpoint_config(),
        link(loss),
    );
    for p in [a, b] {
        let nat = place(&mut sim, p);
        w.add_member(&mut sim, nat, policy);
    }
    let joined_at = meet(&mut sim, &mut w);
    ((sim, w), joined_at)
}

/// Connects both members to the hub; each announces its own address; member 0 creates a
/// room and member 1 joins it. Returns when member 1 asked to join.
fn meet(sim: &mut Simulator, w: &mut World) -> shoal_proto::Instant {
    let joined_at = ask_to_meet(sim, w);
    w.run(sim, 300);
    joined_at
}

/// `meet` up to member 1's asking to join (when it asked), the hub's answer not yet taken.
fn ask_to_meet(sim: &mut Simulator, w: &mut World) -> shoal_proto::Instant {
    w.settle(sim);
    for i in 0..2 {
        let own = sim.address(w.members[i]);
        w.act(sim, i, |c, ep| c.announce(ep, &[own]))
            .expect("announce");
    }
    w.act(sim, 0, |c, ep| {
        c.create_room(ep, "pair", &RoomOptions::default())
    })
    .expect("create");
    w.run(sim, 300);
    let joined_at = sim.now();
    w.act(sim, 1, |c, ep| c.join_room(ep, "pair", b"", b""))
        .expect("join");
    joined_at
}

/// The direct-or-not of each `PathChanged` member `i` saw, in order.
fn path_changes(events: &[HubEvent]) -> Vec<bool> {
    events
        .iter()
        .filter_map(|e| match e {
            HubEvent::PathChanged { direct, .. } => Some(*direct),
            _ => None,
        })
        .collect()
}

/// Member 0 streams `n` numbered messages to member 1 on `channel`, one per `every_ms`.
fn stream(
    sim: &mut Simulator,
    w: &mut World,
    channel: u8,
    range: std::ops::Range<u32>,
    every_ms: u64,
) {
    let b = w.user(1);
    for n in range {
        w.act(sim, 0, |c, ep| {
            c.send(ep, Target::User(b), channel, numbered(channel, n, 100))
        })
        .expect("send");
        w.run(sim, every_ms);
    }
}

fn received(events: &[HubEvent], channel: u8) -> Vec<u32> {
    messages(events)
        .iter()
        .filter(|m| m.2 == channel)
        .map(|m| number(&m.3))
        .collect()
}

#[test]
fn relay_only_links_carry_every_channel_kind_end_to_end() {
    let (mut sim, mut w) = pair(
        21,
        Place::Public,
        Place::Public,
        PathPolicy::RelayOnly,
        0.05,
    );
    w.run(&mut sim, 500);
    let (a, b) = (w.user(0), w.user(1));
    assert!(w.client(0).link(b).is_some() && w.client(1).link(a).is_some());
    for n in 0..100u32 {
        for channel in 0..4u8 {
            w.act(&mut sim, 0, |c, ep| {
                c.send(ep, Target::User(b), channel, numbered(channel, n, 60))
            })
            .expect("send");
        }
        w.run(&mut sim, 10);
    }
    let now = sim.now();
    let id = w
        .act(&mut sim, 0, |c, ep| c.request(ep, now, b, 2, b"ping"))
        .expect("request");
    w.run(&mut sim, 3000);
    let bob = w.take(1);
    assert_eq!(
        received(&bob, 3),
        (0..100).collect::<Vec<_>>(),
        "ordered, all"
    );
    let mut reliable = received(&bob, 2);
    reliable.sort_unstable();
    assert_eq!(reliable, (0..100).collect::<Vec<_>>(), "reliable, all once");
    assert!(
        received(&bob, 1).windows(2).all(|p| p[0] < p[1]),
        "sequenced"
    );
    let request = bob
        .iter()
        .find_map(|e| match e {
            HubEvent::Request { request, payload } if payload == "ping" => Some(*request),
            _ => None,
        })
        .expect("request arrived");
    assert_eq!(request.from, a);
    w.act(&mut sim, 1, |c, ep| c.respond(ep, request, b"pong"))
        .expect("respond");
    w.run(&mut sim, 500);
    assert!(w.take(0).contains(&HubEvent::Response {
        id,
        from: b,
        payload: "pong".into()
    }));
    assert!(path_changes(&bob).is_empty(), "never direct");
    // The hub carried only the link's sealed packets: it read none of the messages.
    let ep = sim.endpoint(w.members[0]);
    assert!(ep.stats().tunnelled_out > 50);
    assert!(w
        .hub_saw
        .iter()
        .all(|p| !p.windows(4).any(|win| win == [3, 0, 0, 0])));
}

#[test]
fn auto_links_go_direct_and_keep_order_and_exactly_once_across_the_move() {
    let (mut sim, mut w) = pair(22, Place::Public, Place::Public, PathPolicy::Auto, 0.02);
    // Messages flow from the moment the link is asked for: through the hub, then direct.
    stream(&mut sim, &mut w, 3, 0..100, 10);
    w.run(&mut sim, 1000);
    let bob = w.take(1);
    assert_eq!(received(&bob, 3), (0..100).collect::<Vec<_>>());
    assert_eq!(path_changes(&bob), [true]);
    assert_eq!(path_changes(&w.take(0)), [true]);
    // Direct from here on: the hub relays nothing more.
    let relayed = w.hub.stats().relayed_messages;
    stream(&mut sim, &mut w, 3, 100..150, 10);
    w.run(&mut sim, 500);
    assert_eq!(received(&w.take(1), 3), (100..150).collect::<Vec<_>>());
    assert!(
        w.hub.stats().relayed_messages - relayed < 10,
        "keepalives at most"
    );
}

#[test]
fn a_direct_path_that_dies_mid_transfer_falls_back_to_the_relay_with_nothing_lost() {
    let (mut sim, mut w) = pair(23, Place::Public, Place::Public, PathPolicy::Auto, 0.0);
    w.run(&mut sim, 1000);
    assert_eq!(path_changes(&w.take(1)), [true]);
    w.take(0);
    let (a, b) = (w.members[0], w.members[1]);
    stream(&mut sim, &mut w, 3, 0..50, 10);
    // The direct route breaks both ways, mid-stream; the hub still reaches both.
    sim.set_link_up(a, b, false);
    sim.set_link_up(b, a, false);
    stream(&mut sim, &mut w, 3, 50..200, 10);
    w.run(&mut sim, 3000);
    let bob = w.take(1);
    assert_eq!(
        received(&bob, 3),
        (0..200).collect::<Vec<_>>(),
        "in order, once each"
    );
    assert!(
        path_changes(&w.take(0)).ends_with(&[false]),
        "sender fell back"
    );
    assert!(path_changes(&bob).ends_with(&[false]), "receiver followed");
    let fallbacks: u64 = {
        let ep = sim.endpoint(a);
        ep.connections()
            .filter_map(|c| ep.connection_stats(c))
            .map(|s| s.path_fallbacks)
            .sum()
    };
    assert!(fallbacks >= 1);
}

#[test]
fn members_behind_one_nat_meet_at_their_announced_local_addresses() {
    // No hairpinning: the public mappings cannot reach each other, the LAN can.
    let (mut sim, mut w) = World::new(
        24,
        hub_config(),
        shoal_proto::hub::endpoint_config(),
        link(0.0),
    );
    let nat = sim
        .add_nat(NatConfig::new(NatKind::PortRestricted))
        .expect("nat");
    for _ in 0..2 {
        w.add_member(&mut sim, Some(nat), PathPolicy::Auto);
    }
    meet(&mut sim, &mut w);
    w.run(&mut sim, 1200);
    assert_eq!(path_changes(&w.take(1)), [true]);
    let b = w.user(1);
    let link = w.client(0).link(b).expect("link");
    let remote = sim
        .endpoint(w.members[0])
        .remote_address(link)
        .expect("remote");
    assert_eq!(remote, sim.address(w.members[1]), "the private address");
}

const KINDS: [Place; 6] = [
    Place::Public,
    Place::Behind(NatKind::FullCone),
    Place::Behind(NatKind::AddressRestricted),
    Place::Behind(NatKind::PortRestricted),
    Place::Behind(NatKind::Symmetric),
    Place::Cgnat(NatKind::PortRestricted),
];

/// Whether a direct path can open between two places (RFC 4787 behaviours, both sides
/// probing each other's hub-observed address).
fn direct_possible(a: Place, b: Place) -> bool {
    let kind = |p: Place| match p {
        Place::Public => None,
        Place::Behind(k) | Place::Cgnat(k) => Some(k),
    };
    let symmetric = |p: Place| kind(p) == Some(NatKind::Symmetric);
    // A symmetric NAT's probe leaves from a new port: only a peer that filters by address
    // alone (or not at all) lets it in; two symmetric NATs never meet.
    let lets_new_port_in = |p: Place| {
        matches!(
            kind(p),
            None | Some(NatKind::FullCone) | Some(NatKind::AddressRestricted)
        ) && !matches!(p, Place::Cgnat(_))
    };
    match (symmetric(a), symmetric(b)) {
        (true, true) => false,
        (true, false) => lets_new_port_in(b),
        (false, true) => lets_new_port_in(a),
        (false, false) => true,
    }
}

#[test]
fn nat_matrix_direct_wherever_the_kinds_allow_and_the_relay_elsewhere_nothing_lost() {
    let mut table = String::from("\nA \\ B           ");
    for b in KINDS {
        table += &format!("{:>22}", format!("{b:?}"));
    }
    for (i, a) in KINDS.into_iter().enumerate() {
        table += &format!("\n{:<16}", format!("{a:?}"));
        for (j, b) in KINDS.into_iter().enumerate() {
            let seed = 100 + (i * KINDS.len() + j) as u64;
            let ((mut sim, mut w), introduced) = pair_at(seed, a, b, PathPolicy::Auto, 0.01);
            stream(&mut sim, &mut w, 3, 0..60, 20);
            w.run(&mut sim, 2000);
            let bob = w.take(1);
            assert_eq!(
                received(&bob, 3),
                (0..60).collect::<Vec<_>>(),
                "{a:?} x {b:?}: every message, in order"
            );
            let direct = path_changes(&bob).last() == Some(&true);
            let expected = direct_possible(a, b);
            assert_eq!(direct, expected, "{a:?} x {b:?}");
            let when = w
                .direct_at
                .get(&w.members[1])
                .map(|t| t.saturating_duration_since(introduced).as_millis());
            table += &format!(
                "{:>22}",
                match (direct, when) {
                    (true, Some(ms)) => format!("direct {ms} ms"),
                    (true, None) => "direct".into(),
                    (false, _) => "relay".into(),
                }
            );
        }
    }
    eprintln!("{table}");
}

#[test]
fn direct_only_links_connect_where_the_nats_allow_and_not_elsewhere() {
    let cases = [
        (
            Place::Behind(NatKind::FullCone),
            Place::Behind(NatKind::PortRestricted),
            true,
        ),
        (
            Place::Behind(NatKind::PortRestricted),
            Place::Behind(NatKind::PortRestricted),
            true,
        ),
        (
            Place::Behind(NatKind::Symmetric),
            Place::Behind(NatKind::Symmetric),
            false,
        ),
    ];
    for (n, (a, b, possible)) in cases.into_iter().enumerate() {
        let (mut sim, mut w) = pair(200 + n as u64, a, b, PathPolicy::DirectOnly, 0.0);
        w.run(&mut sim, 3000);
        let ub = w.user(1);
        let linked = w
            .client(0)
            .link(ub)
            .is_some_and(|c| sim.endpoint(w.members[0]).is_connected(c));
        assert_eq!(linked, possible, "{a:?} x {b:?}");
        if possible {
            stream(&mut sim, &mut w, 3, 0..20, 10);
            w.run(&mut sim, 500);
            assert_eq!(received(&w.take(1), 3), (0..20).collect::<Vec<_>>());
            assert_eq!(w.hub.stats().relayed_messages, 0, "nothing through the hub");
        }
    }
}

#[test]
fn a_link_closes_quietly_when_its_peer_leaves_every_shared_room() {
    let (mut sim, mut w) = pair(25, Place::Public, Place::Public, PathPolicy::Auto, 0.0);
    w.run(&mut sim, 1000);
    let b = w.user(1);
    let link = w.client(0).link(b).expect("link");
    assert!(sim.endpoint(w.members[0]).is_connected(link));
    let room = w.client(1).rooms().next().expect("room").id;
    w.act(&mut sim, 1, |c, ep| c.leave_room(ep, room))
        .expect("leave");
    w.run(&mut sim, 1000);
    assert_eq!(w.client(0).link(b), None);
    assert!(!sim.endpoint(w.members[0]).is_connected(link), "closed");
    for i in 0..2 {
        assert!(
            !w.take(i).iter().any(|e| matches!(
                e,
                HubEvent::Transport(shoal_proto::Event::Disconnected { conn, .. })
                    if Some(*conn) != w.clients.values().nth(i).map(|c| c.connection())
            )),
            "member {i} saw nothing of the link closing"
        );
    }
}

/// A member that leaves and rejoins a shared room again and again makes a new link each
/// time: its addresses are probed for two of them at once, then one each 10 s (each probe
/// round spends up to 32 of the endpoint's path challenges, which every link shares); the
/// rest stay on the relay and are counted.
#[test]
fn a_peer_rejoining_again_and_again_is_probed_for_two_links_then_one_each_ten_seconds() {
    let (mut sim, mut w) = pair(26, Place::Public, Place::Public, PathPolicy::Auto, 0.0);
    w.run(&mut sim, 1000);
    let room = w.client(1).rooms().next().expect("room").id;
    let b = w.user(1);
    for _ in 0..5 {
        w.act(&mut sim, 1, |c, ep| c.leave_room(ep, room))
            .expect("leave");
        w.run(&mut sim, 300);
        w.act(&mut sim, 1, |c, ep| c.join_room(ep, "pair", b"", b""))
            .expect("join");
        w.run(&mut sim, 500);
        assert!(w.client(0).link(b).is_some(), "linked again");
    }
    // Six links in about 5 s: the first two probed, four not.
    assert_eq!(w.client(0).stats().probes_skipped, 4);
}

/// Peer links rest on the hub (the rooms they share, the keys it vouched for, the session's
/// user ids): when the member's hub connection ends they close with it, direct ones too. The
/// member hears it left its rooms, and a send to a former peer is refused rather than going
/// into a link that lives on without a room (direct) or can never carry it (relayed).
#[test]
fn peer_links_close_when_the_hub_connection_ends() {
    // The hub goes away unheard (a direct link would live on), or the member leaves it.
    for (seed, policy, hub_vanishes) in [
        (28, PathPolicy::Auto, true),
        (29, PathPolicy::RelayOnly, false),
    ] {
        let (mut sim, mut w) = pair(seed, Place::Public, Place::Public, policy, 0.0);
        w.run(&mut sim, 1000);
        let b = w.user(1);
        let link = w.client(0).link(b).expect("link");
        assert!(sim.endpoint(w.members[0]).is_connected(link));
        let room = w.client(0).rooms().next().expect("room").id;
        w.take(0);
        if hub_vanishes {
            for &m in &w.members {
                sim.set_link_up(w.hub_node, m, false);
                sim.set_link_up(m, w.hub_node, false);
            }
            // Past the idle timeout: both members' hub connections time out.
            w.run(&mut sim, 12_000);
        } else {
            let hub = w.client(0).connection();
            w.act(&mut sim, 0, |_, ep| ep.disconnect(hub, 0));
            w.run(&mut sim, 500);
        }
        assert_eq!(w.client(0).link(b), None, "{policy:?}");
        assert!(!sim.endpoint(w.members[0]).is_connected(link), "{policy:?}");
        let sent = w.act(&mut sim, 0, |c, ep| {
            c.send(ep, Target::User(b), 2, &b"x"[..])
        });
        assert!(
            matches!(sent, Err(HubError::NotIntroduced(u)) if u == b),
            "{policy:?}: {sent:?}"
        );
        let events = w.take(0);
        let hub = w.client(0).connection();
        let left = events.iter().position(|e| {
            matches!(
                e,
                HubEvent::RoomLeft { room: r, reason: LeaveReason::Disconnected } if *r == room
            )
        });
        let ended = events.iter().position(
            |e| matches!(e, HubEvent::Transport(Event::Disconnected { conn, .. }) if *conn == hub),
        );
        // The rooms first: an application that stops at the hub connection's end heard them.
        assert!(
            left.is_some() && left < ended,
            "{policy:?}: {left:?} {ended:?}"
        );
        assert!(
            !events.iter().any(|e| matches!(
                e,
                HubEvent::Transport(Event::Disconnected { conn, .. }) if *conn == link
            )),
            "the link's end is the hub connection's"
        );
        if !hub_vanishes {
            // (When the hub vanishes, the peer may close the link first: that one is lost.)
            assert_eq!(w.client(0).stats().links_lost, 0, "{policy:?}");
        }
    }
}

/// A direct-only link whose handshake cannot get through (both members behind symmetric
/// NATs) fails quietly: the application never saw it start, and the member forgets the
/// attempt instead of keeping a handle that refuses every send.
#[test]
fn a_direct_only_link_that_never_connects_fails_quietly() {
    let (mut sim, mut w) = pair(
        202,
        Place::Behind(NatKind::Symmetric),
        Place::Behind(NatKind::Symmetric),
        PathPolicy::DirectOnly,
        0.0,
    );
    w.run(&mut sim, 8000);
    let b = w.user(1);
    assert_eq!(w.client(0).link(b), None);
    for i in 0..2 {
        assert!(
            !w.take(i)
                .iter()
                .any(|e| matches!(e, HubEvent::Transport(Event::ConnectFailed { .. }))),
            "member {i} was told of a link it never saw start"
        );
    }
    // A send says so, rather than failing on a dead handle or waiting for a link that is
    // not coming.
    let sent = w.act(&mut sim, 0, |c, ep| {
        c.send(ep, Target::User(b), 2, &b"x"[..])
    });
    assert_eq!(sent, Err(HubError::LinkFailed(b)));
    assert!(w.client(0).stats().links_failed >= 1);
}

/// Direct-only members connect to each other at once when introduced; the handshakes cross
/// and one attempt gives way to the other. Messages sent from the moment of the
/// introduction wait for the link and all arrive; the attempt that gave way counts as no
/// failure.
#[test]
fn messages_sent_while_crossing_direct_handshakes_settle_all_arrive() {
    let (mut sim, mut w) = World::new(
        31,
        hub_config(),
        shoal_proto::hub::endpoint_config(),
        link(0.0),
    );
    for _ in 0..2 {
        w.add_member(&mut sim, None, PathPolicy::DirectOnly);
    }
    ask_to_meet(&mut sim, &mut w);
    let b = w.user(1);
    while w.client(0).link(b).is_none() {
        w.run(&mut sim, 1);
    }
    // The link is being set up: what is sent now waits for it.
    let mut sent = 0;
    for n in 0..20u32 {
        let r = w.act(&mut sim, 0, |c, ep| {
            c.send(ep, Target::User(b), 3, numbered(3, n, 100))
        });
        if r.is_ok() {
            sent += 1;
        }
        w.run(&mut sim, 1);
    }
    assert_eq!(sent, 20, "every send was taken");
    w.run(&mut sim, 2000);
    let ev1 = w.take(1);
    assert_eq!(received(&ev1, 3), (0..20).collect::<Vec<_>>());
    for i in 0..2 {
        assert_eq!(w.client(i).stats().links_failed, 0, "member {i}");
    }
}

/// A direct-only link is authenticated by nothing but the static key the hub vouched for:
/// a member makes none without one. Before, a member without a key was linked anyway, so a
/// host holding an address the peer announced (its own network, a public Wi-Fi) became the
/// peer's link and spoke as it, and anyone on the path could sit between the two.
#[test]
fn a_direct_only_link_needs_a_key_the_hub_vouched_for() {
    // Member 0 is direct-only (with a key); member 1 has no key.
    let key = Some(shoal_proto::Keypair::from_secret([1; 32]));
    let members = [(PathPolicy::DirectOnly, key), (PathPolicy::Auto, None)];
    let (mut sim, mut w, stranger) = meet_with_a_stranger_as(30, members, None);
    let b = w.user(1);
    assert_eq!(
        w.client(0).link(b),
        None,
        "no link to a member without a key"
    );
    let sent = w.act(&mut sim, 0, |c, ep| {
        c.send(ep, Target::User(b), 2, &b"x"[..])
    });
    assert_eq!(sent, Err(HubError::NoVouchedKey(b)));
    // The stranger at the address member 1 announced connects: an ordinary connection, not
    // member 1's link, and nothing it says comes from member 1.
    stranger_claims_to_be_member_1(&mut sim, &mut w, stranger);
    assert_eq!(w.client(0).link(b), None);
}

/// The stranger connects to member 0 and says it is member 1; asserts member 0 heard no
/// such thing from member 1.
fn stranger_claims_to_be_member_1(sim: &mut Simulator, w: &mut World, stranger: NodeId) {
    w.take(0);
    let conn = sim.connect(stranger, w.members[0], &[]).expect("connect");
    // Queued before the handshake ends, so it rides the first packet, with `Connected`.
    sim.endpoint_mut(stranger)
        .send(conn, 2, &b"I am member 1"[..])
        .expect("queued");
    w.run(sim, 1000);
    let events = w.take(0);
    assert!(
        !messages(&events)
            .iter()
            .any(|(_, _, _, m)| &m[..] == b"I am member 1"),
        "the stranger spoke as member 1: {events:?}"
    );
}

#[test]
fn a_direct_only_member_without_a_static_key_is_refused_at_once() {
    let config = shoal_proto::Config {
        accept_incoming: true,
        secret_seed: Some(shoal_proto::SecretSeed::insecure_from_u64(1)),
        ..shoal_proto::hub::endpoint_config()
    };
    let mut ep = shoal_proto::Endpoint::new(config.clone()).expect("endpoint");
    let hub = "192.0.2.1:4000".parse().expect("addr");
    let conn = ep
        .connect(shoal_proto::Instant::ZERO, hub, b"")
        .expect("connect");
    let made = shoal_proto::hub::HubClient::with_paths(conn, &config, PathPolicy::DirectOnly);
    assert!(matches!(made, Err(HubError::LinkSetup(_))));
}

#[test]
fn requests_travel_the_link_and_one_left_waiting_when_it_closes_times_out() {
    let (mut sim, mut w) = pair(26, Place::Public, Place::Public, PathPolicy::Auto, 0.0);
    w.run(&mut sim, 1000);
    let (a, b) = (w.user(0), w.user(1));
    let now = sim.now();
    let answered = w
        .act(&mut sim, 0, |c, ep| c.request(ep, now, b, 2, b"ping"))
        .expect("request");
    w.run(&mut sim, 200);
    let request = w
        .take(1)
        .iter()
        .find_map(|e| match e {
            HubEvent::Request { request, .. } => Some(*request),
            _ => None,
        })
        .expect("request arrived");
    assert_eq!(request.from, a);
    w.act(&mut sim, 1, |c, ep| c.respond(ep, request, b"pong"))
        .expect("respond");
    w.run(&mut sim, 200);
    assert!(w.take(0).contains(&HubEvent::Response {
        id: answered,
        from: b,
        payload: "pong".into()
    }));
    assert_eq!(
        w.hub.stats().relayed_requests,
        0,
        "over the link, not the hub"
    );
    // Bob never answers the next one and leaves: the link closes, the request times out.
    let now = sim.now();
    let abandoned = w
        .act(&mut sim, 0, |c, ep| c.request(ep, now, b, 2, b"ping again"))
        .expect("request");
    w.run(&mut sim, 200);
    let room = w.client(1).rooms().next().expect("room").id;
    w.act(&mut sim, 1, |c, ep| c.leave_room(ep, room))
        .expect("leave");
    w.run(&mut sim, 500);
    assert!(w.take(0).iter().any(|e| matches!(
        e,
        HubEvent::Transport(shoal_proto::Event::RequestTimedOut { id, .. }) if *id == abandoned
    )));
}

#[test]
fn an_idle_link_notices_its_direct_path_died_by_its_heartbeat_and_falls_back() {
    let (mut sim, mut w) = pair(27, Place::Public, Place::Public, PathPolicy::Auto, 0.0);
    w.run(&mut sim, 1000);
    assert_eq!(path_changes(&w.take(1)), [true]);
    w.take(0);
    let (a, b) = (w.members[0], w.members[1]);
    // Nothing to send; the direct route breaks both ways.
    sim.set_link_up(a, b, false);
    sim.set_link_up(b, a, false);
    w.run(&mut sim, 6000);
    assert_eq!(path_changes(&w.take(0)), [false], "keepalives found it");
    assert_eq!(path_changes(&w.take(1)), [false]);
    stream(&mut sim, &mut w, 3, 0..10, 10);
    w.run(&mut sim, 500);
    assert_eq!(received(&w.take(1), 3), (0..10).collect::<Vec<_>>());
}

#[test]
fn a_direct_path_that_dies_under_a_stream_of_unreliable_updates_falls_back_to_the_relay() {
    // Unreliable messages are acknowledged lazily and arm no probe timeout of their own: the
    // link must still notice the dead path while it never goes quiet enough for a keepalive.
    let (mut sim, mut w) = pair(24, Place::Public, Place::Public, PathPolicy::Auto, 0.0);
    w.run(&mut sim, 1000);
    assert_eq!(path_changes(&w.take(1)), [true]);
    w.take(0);
    let (a, b) = (w.members[0], w.members[1]);
    stream(&mut sim, &mut w, 0, 0..50, 50);
    sim.set_link_up(a, b, false);
    sim.set_link_up(b, a, false);
    stream(&mut sim, &mut w, 0, 50..150, 50);
    let bob = w.take(1);
    assert!(
        path_changes(&w.take(0)).ends_with(&[false]),
        "sender fell back"
    );
    // Within half a second of the break (10 updates), every update flows through the hub.
    let got = received(&bob, 0);
    let after: Vec<u32> = got.into_iter().filter(|&n| n >= 60).collect();
    assert_eq!(after, (60..150).collect::<Vec<_>>());
}

#[test]
fn an_idle_direct_link_sends_only_its_keepalives_and_their_acknowledgements() {
    let (mut sim, mut w) = pair(25, Place::Public, Place::Public, PathPolicy::Auto, 0.0);
    w.run(&mut sim, 1000);
    assert_eq!(path_changes(&w.take(1)), [true]);
    let a = w.members[0];
    let before = sim.endpoint(a).stats().datagrams_sent;
    w.run(&mut sim, 10_000);
    let sent = sim.endpoint(a).stats().datagrams_sent - before;
    // A keepalive a second on the link and on the hub connection, and an acknowledgement
    // of each of the peer's: about 40 in 10 s. Acknowledging acknowledgements sent 192.
    assert!(sent <= 60, "{sent} datagrams in 10 idle seconds");
}

/// Two members under `policy` in one room (each with a static key the hub vouches for, if
/// `keyed`), and a stranger on the same network whose address member 1 announced as its
/// own beside its real one (another host can hold a private address a member announced).
fn meet_with_a_stranger(
    seed: u64,
    policy: PathPolicy,
    keyed: bool,
) -> (Simulator, World, shoal_sim::NodeId) {
    let key = |i: u8| keyed.then(|| shoal_proto::Keypair::from_secret([i; 32]));
    meet_with_a_stranger_as(seed, [(policy, key(1)), (policy, key(2))], key(9))
}

/// Like `meet_with_a_stranger`, each member with its own policy and static key.
fn meet_with_a_stranger_as(
    seed: u64,
    members: [(PathPolicy, Option<shoal_proto::Keypair>); 2],
    stranger_key: Option<shoal_proto::Keypair>,
) -> (Simulator, World, shoal_sim::NodeId) {
    let (mut sim, mut w) = World::new(
        seed,
        hub_config(),
        shoal_proto::hub::endpoint_config(),
        link(0.0),
    );
    for (policy, key) in members {
        w.add_member_with_key(&mut sim, None, policy, key);
    }
    let stranger = sim
        .add_node(shoal_proto::Config {
            static_keypair: stranger_key,
            ..shoal_proto::hub::endpoint_config()
        })
        .expect("node");
    w.settle(&mut sim);
    let own = sim.address(w.members[1]);
    let taken = sim.address(stranger);
    w.act(&mut sim, 1, |c, ep| c.announce(ep, &[own, taken]))
        .expect("announce");
    w.act(&mut sim, 0, |c, ep| {
        c.create_room(ep, "pair", &RoomOptions::default())
    })
    .expect("create");
    w.run(&mut sim, 300);
    w.act(&mut sim, 1, |c, ep| c.join_room(ep, "pair", b"", b""))
        .expect("join");
    w.run(&mut sim, 1500);
    (sim, w, stranger)
}

/// Under `Auto` every link arrives through the hub, so a direct connection from an address
/// a member announced is not that member's link unless it proves the key the hub vouched
/// for; before, it replaced the member's live link, and the stranger received what was
/// sent to the member and spoke as it.
#[test]
fn a_direct_connection_from_an_address_a_member_announced_does_not_become_its_link() {
    let (mut sim, mut w, stranger) = meet_with_a_stranger(26, PathPolicy::Auto, false);
    let b = w.user(1);
    let link = w.client(0).link(b).expect("a link to member 1");
    sim.connect(stranger, w.members[0], &[]).expect("connect");
    w.run(&mut sim, 1000);
    assert_eq!(
        w.client(0).link(b),
        Some(link),
        "the link is still member 1's"
    );
    w.act(&mut sim, 0, |c, ep| {
        c.send(ep, Target::User(b), 2, b"for member 1".to_vec())
    })
    .expect("send");
    w.run(&mut sim, 500);
    assert!(
        messages(&w.take(1))
            .iter()
            .any(|(_, _, _, m)| &m[..] == b"for member 1"),
        "member 1 got it"
    );
}

/// With `DirectOnly` a member takes a direct connection from an address the hub gave for a
/// peer as that peer's link, but only if it proves the key the hub vouched for: a stranger
/// holding the address is turned away, nothing it sent is heard, and the link stays the
/// peer's.
#[test]
fn a_direct_link_that_proves_another_key_than_the_vouched_one_is_turned_away() {
    let (mut sim, mut w, stranger) = meet_with_a_stranger(27, PathPolicy::DirectOnly, true);
    let b = w.user(1);
    let link = w.client(0).link(b).expect("a direct link to member 1");
    stranger_claims_to_be_member_1(&mut sim, &mut w, stranger);
    assert_eq!(
        w.client(0).link(b),
        Some(link),
        "the link is still member 1's"
    );
    assert_eq!(sim.endpoint(stranger).peers().count(), 0, "turned away");
}

/// Two linked members and a third host: member 1 seals a path challenge towards the host's
/// address, and it reaches member 0 as if from that host (a link peer spoofing its source),
/// member 0 having started probing that address itself first if `probing`. Runs 2 s;
/// returns the simulator, the host and the challenge. (Member 1's own probes never reach
/// the host: what does is member 0's doing.)
fn spoofed_challenge(seed: u64, probing: bool) -> (Simulator, NodeId, Vec<u8>) {
    let (mut sim, mut w) = pair(seed, Place::Public, Place::Public, PathPolicy::Auto, 0.0);
    let host = sim
        .add_node(shoal_proto::Config {
            accept_incoming: false,
            ..shoal_proto::hub::endpoint_config()
        })
        .expect("node");
    let host_addr = sim.address(host);
    let (a, b) = (w.members[0], w.members[1]);
    let (user0, user1) = (w.user(0), w.user(1));
    let now = sim.now();
    if probing {
        let link = w.client(0).link(user1).expect("a link to member 1");
        sim.endpoint_mut(a).probe_path(now, link, host_addr);
    }
    let link = w.client(1).link(user0).expect("a link to member 0");
    let ep = sim.endpoint_mut(b);
    ep.probe_path(now, link, host_addr);
    let mut buf = vec![0u8; 1500];
    let challenge = std::iter::from_fn(|| ep.poll_transmit(now, &mut buf))
        .find(|t| t.to == host_addr)
        .map(|t| buf[..t.len].to_vec())
        .expect("a challenge");
    sim.set_link_up(b, host, false);
    sim.endpoint_mut(a)
        .handle_datagram(now, host_addr, &challenge);
    w.run(&mut sim, 2_000);
    (sim, host, challenge)
}

/// A peer link's peer holds its keys, so it can seal a path challenge and send it with
/// another host's address as its source: the member answers there and probes it back. With
/// the answer that is at most three times the bytes of the challenge (it was nine: eight
/// probes), so a member is no amplifier aimed at whoever its peer names.
#[test]
fn a_spoofed_challenge_on_a_peer_link_draws_at_most_three_times_its_bytes() {
    let (sim, victim, challenge) = spoofed_challenge(61, false);
    let drawn = sim.endpoint(victim).stats().bytes_received;
    assert!(drawn > 0, "the challenge is answered");
    assert!(
        drawn <= 3 * challenge.len() as u64,
        "{drawn} bytes drawn by a {}-byte challenge",
        challenge.len()
    );
}

/// A challenge from an address this member is probing already (the ordinary hole punch:
/// both sides probe each other at once) is answered, and the probe goes on with all its
/// attempts (a probe back once cut it to two).
#[test]
fn a_challenge_from_an_address_being_probed_leaves_its_probe_whole() {
    let (sim, target, _) = spoofed_challenge(62, true);
    // The answer, and all eight of member 0's challenges.
    assert_eq!(sim.endpoint(target).stats().datagrams_received, 9);
}
