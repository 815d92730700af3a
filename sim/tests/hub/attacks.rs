//! What hostile, vanishing or lying members can do to the hub and to each other, each
//! attack pinned by the test that once showed it working.

use std::time::Duration;

use shoal_sim::Simulator;

use shoal_proto::hub::{self, HubConfig, HubEvent, RateLimit, Refusal, Target};

use crate::world::{
    approval_room, create, hub_config, joined, link, messages, numbered, refusal, room_of_all,
    small_rooms_hub_config, world, world_with, World,
};

/// Member 0 asks, through its raw endpoint, for four requests to member 1 relayed on the
/// hub's control channel.
fn control_channel_requests(sim: &mut Simulator, w: &mut World) {
    let b = w.user(1);
    let control = hub::DEFAULT_CONTROL_CHANNEL;
    let conn = w.client(0).connection();
    for n in 0..4u32 {
        let now = sim.now();
        sim.endpoint_mut(w.members[0])
            .request_redirected(now, conn, control, numbered(control, n, 100), Some(b))
            .expect("queued");
    }
}

/// Whether a request from member `from` to member `to` reaches it (what `to` had waiting is
/// dropped first).
fn request_reaches(sim: &mut Simulator, w: &mut World, from: usize, to: usize) -> bool {
    w.take(to);
    let (now, user) = (sim.now(), w.user(to));
    w.act(sim, from, |cl, ep| {
        cl.request(ep, now, user, 2, &numbered(2, 9, 100))
    })
    .expect("request");
    w.run(sim, 300);
    w.take(to)
        .iter()
        .any(|e| matches!(e, HubEvent::Request { .. }))
}

#[test]
fn requests_to_a_member_that_vanishes_do_not_use_up_the_askers_budget() {
    let config = HubConfig {
        max_relayed_requests: 2,
        ..hub_config()
    };
    let (mut sim, mut w) = world(101, 3, config, link(0.0));
    room_of_all(&mut sim, &mut w, "rpc");
    let (b, c) = (w.user(1), w.user(2));
    // Bob takes two requests and disconnects without answering.
    for n in 0..2u32 {
        let now = sim.now();
        w.act(&mut sim, 0, |cl, ep| {
            cl.request(ep, now, b, 2, &numbered(2, n, 100))
        })
        .expect("request");
    }
    w.run(&mut sim, 300);
    let asked = w
        .take(1)
        .iter()
        .filter(|e| matches!(e, HubEvent::Request { .. }))
        .count();
    assert_eq!(asked, 2);
    let conn = w.client(1).connection();
    sim.endpoint_mut(w.members[1]).disconnect(conn, 0);
    w.run(&mut sim, 6000);
    // Alice may still ask Carol.
    assert_eq!(w.user(2), c);
    assert!(
        request_reaches(&mut sim, &mut w, 0, 2),
        "the hub forwarded Alice's request to Carol (dropped: {})",
        w.hub.stats().dropped_requests
    );
}

#[test]
fn a_join_request_whose_asker_left_frees_its_place_in_the_approval_queue() {
    let config = HubConfig {
        max_pending_joins: 1,
        approval_timeout: Duration::from_secs(60),
        ..hub_config()
    };
    let (mut sim, mut w) = world(102, 3, config, link(0.0));
    let room = create(&mut sim, &mut w, 0, "vip", approval_room());
    w.act(&mut sim, 1, |cl, ep| cl.join_room(ep, "vip", b"", b"m1"))
        .expect("join");
    w.run(&mut sim, 200);
    let gone = w.user(1);
    let conn = w.client(1).connection();
    sim.endpoint_mut(w.members[1]).disconnect(conn, 0);
    w.run(&mut sim, 300);
    w.take(0);
    // The one place in the queue is free again.
    w.act(&mut sim, 2, |cl, ep| cl.join_room(ep, "vip", b"", b"m2"))
        .expect("join");
    w.run(&mut sim, 300);
    assert_eq!(refusal(&w.take(2)), None);
    let carol = w.user(2);
    assert!(w.take(0).iter().any(|e| matches!(
        e,
        HubEvent::JoinRequested { room: r, user, .. } if *r == room && *user == carol
    )));
    // Approving the one that left is refused: it is no longer waiting.
    w.act(&mut sim, 0, |cl, ep| cl.approve(ep, room, gone, true))
        .expect("approve");
    w.run(&mut sim, 300);
    assert_eq!(refusal(&w.take(0)), Some(Refusal::NotMember));
}

#[test]
fn joins_awaiting_approval_are_put_to_the_new_owner_when_the_owner_leaves() {
    let config = HubConfig {
        approval_timeout: Duration::from_secs(60),
        ..hub_config()
    };
    let (mut sim, mut w) = world(104, 3, config, link(0.0));
    let room = create(&mut sim, &mut w, 0, "vip", approval_room());
    let (b, c) = (w.user(1), w.user(2));
    w.act(&mut sim, 1, |cl, ep| cl.join_room(ep, "vip", b"", b"m1"))
        .expect("join");
    w.run(&mut sim, 200);
    w.act(&mut sim, 0, |cl, ep| cl.approve(ep, room, b, true))
        .expect("approve");
    w.run(&mut sim, 200);
    w.act(&mut sim, 2, |cl, ep| cl.join_room(ep, "vip", b"", b"m2"))
        .expect("join");
    w.run(&mut sim, 200);
    // The owner leaves with Carol's join unanswered: Bob owns the room now, and is asked.
    w.take(1);
    w.act(&mut sim, 0, |cl, ep| cl.leave_room(ep, room))
        .expect("leave");
    w.run(&mut sim, 300);
    let bob = w.take(1);
    assert!(bob.contains(&HubEvent::OwnerChanged { room, owner: b }));
    assert!(
        bob.iter().any(|e| matches!(
            e,
            HubEvent::JoinRequested { room: r, user, .. } if *r == room && *user == c
        )),
        "{bob:?}"
    );
    w.act(&mut sim, 1, |cl, ep| cl.approve(ep, room, c, true))
        .expect("approve");
    w.run(&mut sim, 300);
    assert_eq!(joined(&w.take(2)), Some(room));
}

#[test]
fn a_datagram_from_the_socket_claiming_a_relay_address_is_dropped() {
    use shoal_proto::hub::{self, PathPolicy};
    use shoal_proto::{Config, Endpoint, SecretSeed};
    let (mut sim, mut w) =
        crate::world::World::new(105, hub_config(), hub::endpoint_config(), link(0.0));
    w.add_member(&mut sim, None, PathPolicy::Auto);
    w.settle(&mut sim);
    let node = w.members[0];
    let before = sim.endpoint(node).stats().tunnelled_out;
    // Anyone who can spoof a source in 100::/64 knocks on the member's socket as if it
    // were the hub's tunnel from user 77: a handshake the member would answer through
    // the hub, at the cost of its relay budget.
    let mut mallory = Endpoint::new(Config {
        seed: 5,
        secret_seed: Some(SecretSeed::insecure_from_u64(5)),
        ..hub::endpoint_config()
    })
    .expect("endpoint");
    let now = sim.now();
    mallory
        .connect(now, sim.address(node), &[])
        .expect("connect");
    let mut buf = vec![0u8; 1500];
    let t = mallory.poll_transmit(now, &mut buf).expect("hello");
    sim.endpoint_mut(node)
        .handle_datagram(now, hub::relay_address(77), &buf[..t.len]);
    w.run(&mut sim, 200);
    assert_eq!(sim.endpoint(node).stats().tunnelled_out, before);
}

/// The hub's endpoint settings with every channel's send queue at `bytes`.
fn hub_endpoint_with_queues_of(bytes: usize) -> shoal_proto::Config {
    let mut endpoint = hub::endpoint_config();
    for ch in &mut endpoint.channels {
        ch.max_queued_bytes = bytes;
    }
    endpoint
}

#[test]
fn room_mates_flooding_a_slow_member_cannot_get_it_disconnected() {
    let endpoint = hub_endpoint_with_queues_of(32 * 1024);
    let (mut sim, mut w) = world_with(31, 3, small_rooms_hub_config(), endpoint, link(0.0));
    let room = room_of_all(&mut sim, &mut w, "flood");
    // The victim's downlink carries 100 kB/s; the two others send it 4 times that.
    let slow = shoal_sim::LinkConfig {
        bandwidth: Some(100_000),
        queue_bytes: 64 * 1024,
        ..link(0.0)
    };
    sim.set_link(w.hub_node, w.members[2], slow).expect("link");
    for n in 0..400u32 {
        for i in 0..2 {
            w.act(&mut sim, i, |c, ep| {
                c.send(ep, Target::RoomExceptSender(room), 0, numbered(0, n, 1000))
            })
            .expect("send");
        }
        w.run(&mut sim, 10);
    }
    w.run(&mut sim, 2000);
    let stats = w.hub.stats();
    assert!(stats.dropped_queue_full > 0, "the flood did not fit");
    assert_eq!(stats.too_slow, 0, "but the victim kept draining");
    let victim = w.client(2).connection();
    assert!(sim.endpoint(w.members[2]).is_connected(victim));
    assert!(messages(&w.take(2)).len() > 100, "and kept receiving");
}

/// A member whose control queue at the hub cannot take a notice (here its downlink is cut
/// while room mates come and go) is disconnected as too slow at once, rather than left
/// connected with a view of its rooms that no longer matches the hub's: a missed
/// `PeerJoined` also took a pair key with it, so it could never have messaged that peer.
#[test]
fn a_member_that_misses_a_notice_is_disconnected_not_left_out_of_step() {
    const MEMBERS: usize = 8;
    let endpoint = hub_endpoint_with_queues_of(2048);
    let hub = HubConfig {
        max_members_per_room: MEMBERS,
        max_name_len: 16,
        max_metadata_len: 16,
        ..small_rooms_hub_config()
    };
    let (mut sim, mut w) = world_with(33, MEMBERS, hub, endpoint, link(0.0));
    let room = room_of_all(&mut sim, &mut w, "churn");
    sim.set_link_up(w.hub_node, w.members[0], false);
    // The others come and go, each within its command rate, until a notice to member 0 does
    // not fit (its stall clock starts only then).
    let started = sim.now();
    let mut round = 0;
    while w.hub.stats().notices_dropped == 0 && sim.now() < started + Duration::from_secs(8) {
        for i in 1..MEMBERS {
            let name = format!("m{i}");
            let _ = w.act(&mut sim, i, |c, ep| {
                if round % 2 == 0 {
                    c.leave_room(ep, room)
                } else {
                    c.join_room(ep, "churn", b"", name.as_bytes())
                }
            });
        }
        w.run(&mut sim, 60);
        round += 1;
    }
    assert!(
        w.hub.stats().notices_dropped > 0,
        "the churn did not fill the queue: {round} rounds, {:?}",
        w.hub.stats()
    );
    sim.set_link_up(w.hub_node, w.members[0], true);
    w.run(&mut sim, 3000);
    // Every member still connected holds the hub's view of the room.
    let hub_view: Vec<u16> = w
        .hub
        .rooms()
        .find(|r| r.id == room)
        .map(|r| r.members)
        .unwrap_or_default();
    for i in 0..4 {
        let conn = w.client(i).connection();
        if !sim.endpoint(w.members[i]).is_connected(conn) {
            continue;
        }
        let user = w.user(i);
        let mut view: Vec<u16> = w
            .client(i)
            .room(room)
            .map(|r| r.members.iter().map(|m| m.user).collect())
            .unwrap_or_default();
        let mut expected = if hub_view.contains(&user) {
            hub_view.clone()
        } else {
            Vec::new()
        };
        expected.sort_unstable();
        view.sort_unstable();
        assert_eq!(view, expected, "member {i}'s view of the room");
    }
    assert_eq!(w.hub.stats().too_slow, 1, "the member that missed a notice");
    let first = w.client(0).connection();
    assert!(!sim.endpoint(w.members[0]).is_connected(first));
}

/// Members that join and leave in turn, each within its own command rate, cannot make the
/// hub stream notices at a room's members faster than the room takes joins.
#[test]
fn a_room_takes_joins_at_its_own_rate_whoever_asks() {
    const CHURNERS: usize = 6;
    let config = HubConfig {
        room_joins: RateLimit {
            per_second: 2.0,
            burst: 8.0,
        },
        ..small_rooms_hub_config()
    };
    let (mut sim, mut w) = world(34, CHURNERS + 1, config, link(0.0));
    let room = room_of_all(&mut sim, &mut w, "busy");
    w.take(0);
    // Each churner leaves and joins again every 200 ms (5 joins/s each, 30 in all, within
    // its 20 commands/s) for 5 s.
    for round in 0..25 {
        for i in 1..=CHURNERS {
            let _ = w.act(&mut sim, i, |c, ep| {
                if round % 2 == 0 {
                    c.leave_room(ep, room)
                } else {
                    c.join_room(ep, "busy", b"", b"")
                }
            });
        }
        w.run(&mut sim, 200);
    }
    let joined = w
        .take(0)
        .iter()
        .filter(|e| matches!(e, HubEvent::PeerJoined { .. }))
        .count();
    // The room's burst (spent down by the first joins) and 2 a second after that.
    assert!(joined <= 8 + 2 * 5 + 1, "{joined} joins told to member 0");
    assert!(joined >= 5, "joins still go through ({joined})");
}

/// In a room that approves its joins, asking costs the room's members nothing (only its
/// owner hears of it), so only an approval spends the room's joins: strangers asking and
/// being refused cannot use them up and keep real joiners out.
#[test]
fn refused_asks_to_join_an_approval_room_spend_none_of_its_joins() {
    let config = HubConfig {
        room_joins: RateLimit {
            per_second: 0.01,
            burst: 1.0,
        },
        approval_timeout: Duration::from_secs(60),
        ..hub_config()
    };
    let (mut sim, mut w) = world(35, 5, config, link(0.0));
    let room = create(&mut sim, &mut w, 0, "vip", approval_room());
    for i in 1..4 {
        let asker = w.user(i);
        w.act(&mut sim, i, |cl, ep| cl.join_room(ep, "vip", b"", b""))
            .expect("join");
        w.run(&mut sim, 200);
        w.act(&mut sim, 0, |cl, ep| cl.approve(ep, room, asker, false))
            .expect("refuse");
        w.run(&mut sim, 200);
        assert_eq!(refusal(&w.take(i)), Some(Refusal::NotApproved));
    }
    let welcome = w.user(4);
    w.act(&mut sim, 4, |cl, ep| cl.join_room(ep, "vip", b"", b""))
        .expect("join");
    w.run(&mut sim, 200);
    w.act(&mut sim, 0, |cl, ep| cl.approve(ep, room, welcome, true))
        .expect("approve");
    w.run(&mut sim, 300);
    assert_eq!(joined(&w.take(4)), Some(room), "the approved joiner is in");
}

#[test]
fn commands_past_the_rate_limit_are_refused() {
    let config = HubConfig {
        commands: RateLimit {
            per_second: 1.0,
            burst: 5.0,
        },
        ..hub_config()
    };
    let (mut sim, mut w) = world(32, 2, config, link(0.0));
    room_of_all(&mut sim, &mut w, "churn");
    w.take(1);
    let mut refused = 0;
    for _ in 0..10 {
        let room = w.client(1).rooms().next().map(|r| r.id);
        w.act(&mut sim, 1, |c, ep| match room {
            Some(room) => c.leave_room(ep, room),
            None => c.join_room(ep, "churn", b"", b""),
        })
        .expect("command");
        w.run(&mut sim, 100);
        if refusal(&w.take(1)) == Some(Refusal::RateLimited) {
            refused += 1;
        }
    }
    // Its join was the first of five; about one more a second after that.
    assert!((4..=7).contains(&refused), "{refused} refused");
}

#[test]
fn only_local_addresses_may_be_announced() {
    let (mut sim, mut w) = world(33, 1, hub_config(), link(0.0));
    let announce = |sim: &mut Simulator, w: &mut World, addr: &str| {
        let addr: std::net::SocketAddr = addr.parse().expect("address");
        w.act(sim, 0, |c, ep| c.announce(ep, &[addr]))
            .expect("announce");
        w.run(sim, 100);
        refusal(&w.take(0))
    };
    for ok in [
        "192.168.1.5:7000",
        "10.1.2.3:9",
        "100.64.0.7:1",
        "[fe80::1]:5",
        "[fd00::2]:5",
        // A dual-stack member's own view of an IPv4 address.
        "[::ffff:192.168.1.6]:7000",
    ] {
        assert_eq!(announce(&mut sim, &mut w, ok), None, "{ok}");
    }
    for bad in [
        "198.51.100.7:7000",
        "127.0.0.1:7000",
        "224.0.0.1:7000",
        "0.0.0.0:7000",
        "192.168.1.5:0",
        "[100::]:7",
        "[2001:db8::1]:5",
        "[::ffff:198.51.100.7]:7000",
    ] {
        assert_eq!(
            announce(&mut sim, &mut w, bad),
            Some(Refusal::Invalid),
            "{bad}"
        );
    }
}

#[test]
fn join_and_refuse_in_a_loop_does_not_grow_the_approval_deadlines() {
    let config = HubConfig {
        approval_timeout: Duration::from_secs(600),
        commands: RateLimit {
            per_second: 1000.0,
            burst: 1000.0,
        },
        ..hub_config()
    };
    let (mut sim, mut w) = world(105, 2, config, link(0.0));
    let room = create(&mut sim, &mut w, 0, "door", approval_room());
    let joiner = w.user(1);
    for _ in 0..200 {
        w.act(&mut sim, 1, |c, ep| c.join_room(ep, "door", b"", b""))
            .expect("join");
        w.run(&mut sim, 60);
        w.act(&mut sim, 0, |c, ep| c.approve(ep, room, joiner, false))
            .expect("refuse");
        w.run(&mut sim, 60);
    }
    assert_eq!(refusal(&w.take(1)), Some(Refusal::NotApproved));
    // Each answered join leaves a deadline until it would have expired (600 s): without
    // trimming there would be 200.
    let held = w.hub.stats().approval_deadlines;
    assert!(
        held <= 66,
        "{held} deadlines held for one waiting join at most"
    );
}

/// A member that asks, through the raw endpoint, for requests to be relayed on the hub's
/// control channel gets none relayed: they would queue in front of the hub's notices to the
/// target and crowd them out of the channel's room (an audit found them relayed).
#[test]
fn requests_on_the_control_channel_are_not_relayed() {
    let (mut sim, mut w) = world(37, 2, hub_config(), link(0.0));
    room_of_all(&mut sim, &mut w, "ctl");
    control_channel_requests(&mut sim, &mut w);
    w.run(&mut sim, 500);
    let stats = w.hub.stats();
    assert_eq!(stats.dropped_requests, 4);
    assert_eq!(stats.relayed_requests, 0);
}

/// Messages larger than a member's whole queue at the hub are dropped and counted, and say
/// nothing about whether the member reads: a room mate sending them for longer than
/// `stall_timeout` does not get it cut off as too slow (it did: every refusal counted as
/// the queue not draining).
#[test]
fn a_room_mate_sending_what_cannot_fit_does_not_get_a_reader_cut_off() {
    let endpoint = hub_endpoint_with_queues_of(32 * 1024);
    let (mut sim, mut w) = world_with(32, 2, small_rooms_hub_config(), endpoint, link(0.0));
    room_of_all(&mut sim, &mut w, "big");
    let victim = w.user(1);
    for n in 0..30u32 {
        w.act(&mut sim, 0, |c, ep| {
            c.send(ep, Target::User(victim), 0, numbered(0, n, 40_000))
        })
        .expect("send");
        w.run(&mut sim, 100);
    }
    w.run(&mut sim, 500);
    let stats = w.hub.stats();
    assert!(stats.dropped_queue_full >= 30, "{stats:?}");
    assert_eq!(stats.too_slow, 0, "the victim reads");
    let conn = w.client(1).connection();
    assert!(sim.endpoint(w.members[1]).is_connected(conn));
}

/// Two members in league: one asks with a few bytes, the other answers with 100 kB each
/// time. The answers are relayed data like any other: they count against the responder's
/// relay budget, not past it.
#[test]
fn relayed_responses_count_against_the_responders_relay_budget() {
    let limited = HubConfig {
        relay_bytes: RateLimit {
            per_second: 10_000.0,
            burst: 20_000.0,
        },
        ..hub_config()
    };
    let (mut sim, mut w) = world(33, 2, limited, link(0.0));
    room_of_all(&mut sim, &mut w, "league");
    let b = w.user(1);
    for n in 0..20u32 {
        let now = sim.now();
        w.act(&mut sim, 0, |cl, ep| {
            cl.request(ep, now, b, 2, &numbered(2, n, 8))
        })
        .expect("request");
    }
    for _ in 0..20 {
        w.run(&mut sim, 20);
        for e in w.take(1) {
            if let HubEvent::Request { request, .. } = e {
                w.act(&mut sim, 1, |cl, ep| {
                    cl.respond(ep, request, &vec![0x42; 100_000])
                })
                .expect("respond");
            }
        }
    }
    w.run(&mut sim, 2000);
    let stats = w.hub.stats();
    assert!(
        stats.relayed_responses <= 1,
        "{} responses of 100 kB relayed within a 20 kB burst",
        stats.relayed_responses
    );
    assert!(stats.dropped_rate_limited > 0);
}

#[test]
fn a_config_whose_member_list_cannot_be_sent_is_refused() {
    let endpoint = hub::endpoint_config();
    let big = HubConfig {
        max_metadata_len: 4096,
        ..hub_config()
    };
    let err = shoal_proto::hub::Hub::new(big, &endpoint).expect_err("cannot describe a full room");
    assert!(matches!(
        err,
        shoal_proto::hub::HubConfigError::MemberListTooLarge { .. }
    ));
    assert!(err.to_string().contains("max_members_per_room"));
    // The defaults fit.
    assert!(shoal_proto::hub::Hub::new(hub_config(), &endpoint).is_ok());
}

/// A hub hands out pair keys on its connections: on an unprotected endpoint they would
/// cross the network in the clear, so it does not start.
#[test]
fn a_hub_on_an_unprotected_endpoint_is_refused() {
    let endpoint = shoal_proto::Config {
        protection: shoal_proto::Protection::None,
        ..hub::endpoint_config()
    };
    let err = shoal_proto::hub::Hub::new(hub_config(), &endpoint).expect_err("unprotected");
    assert_eq!(err, shoal_proto::hub::HubConfigError::Unprotected);
    assert!(err.to_string().contains("protected"));
}

/// A member keeps at most 4,096 members a room, 65,536 entries and 16 MiB of metadata over
/// all its rooms (a hostile hub could otherwise make it hold what it likes): a hub whose
/// limits would let a member be in more is refused, rather than leave the member refusing
/// its notices and the two out of step.
#[test]
fn a_hub_that_could_put_a_member_in_more_than_it_keeps_is_refused() {
    let endpoint = hub::endpoint_config();
    for config in [
        HubConfig {
            max_members_per_room: 5_000,
            max_rooms_per_member: 1,
            max_metadata_len: 1,
            max_name_len: 1,
            ..hub_config()
        },
        HubConfig {
            max_rooms_per_member: 300,
            max_members_per_room: 256,
            ..hub_config()
        },
        HubConfig {
            max_rooms_per_member: 128,
            max_members_per_room: 256,
            max_metadata_len: 1_024,
            ..hub_config()
        },
    ] {
        let err = shoal_proto::hub::Hub::new(config, &endpoint).expect_err("too large");
        assert!(
            matches!(
                err,
                shoal_proto::hub::HubConfigError::MemberViewsTooLarge { .. }
            ),
            "{err}"
        );
        assert!(err.to_string().contains("lower max_rooms_per_member"));
    }
    assert!(shoal_proto::hub::Hub::new(hub_config(), &endpoint).is_ok());
}

/// Room mates sending requests their target cannot open (junk where the sealed payload
/// goes) do not hold the hub's places among the target's pending requests: its client
/// declines them at once, empty, so an honest request still gets through. (They were
/// dropped unanswered, each place held for the request timeout, so two attackers could
/// keep every place taken.)
#[test]
fn junk_requests_to_a_member_do_not_hold_its_pending_requests() {
    let mut endpoint = hub::endpoint_config();
    endpoint.max_pending_requests = 8;
    let config = HubConfig {
        max_relayed_requests: 4,
        ..hub_config()
    };
    let (mut sim, mut w) = world_with(34, 4, config, endpoint, link(0.0));
    room_of_all(&mut sim, &mut w, "rpc");
    let victim = w.user(3);
    for attacker in 0..2 {
        for n in 0..4u32 {
            let now = sim.now();
            w.act(&mut sim, attacker, |cl, ep| {
                let hub_conn = cl.connection();
                ep.request_redirected(now, hub_conn, 2, numbered(2, n, 40), Some(victim))
            })
            .expect("request");
        }
    }
    w.run(&mut sim, 300);
    assert!(
        request_reaches(&mut sim, &mut w, 2, 3),
        "the honest request reached its target (dropped: {})",
        w.hub.stats().dropped_requests
    );
    // The attackers' requests ended, each once, unanswered.
    for attacker in 0..2 {
        let ended = w
            .take(attacker)
            .iter()
            .filter(|e| {
                matches!(
                    e,
                    HubEvent::Transport(shoal_proto::Event::RequestTimedOut { .. })
                        | HubEvent::Transport(shoal_proto::Event::Response { .. })
                )
            })
            .count();
        assert_eq!(ended, 4, "attacker {attacker}");
    }
}

/// A member joining and leaving a room in turn pays for the notices its joins make the hub
/// send (a `PeerJoined` to every room mate): a join costs one command however large the
/// room, so churning through full rooms made the hub send hundreds of times what it got.
#[test]
fn a_member_churning_through_a_room_pays_for_the_notices_its_joins_cost() {
    churn_until_refused(36, hub::RoomOptions::default());
}

/// Joins the owner approves pay for their notices too: an owner approving whatever asks
/// would otherwise let a member churn through its room unpaced.
#[test]
fn approved_joins_pay_for_their_notices_too() {
    churn_until_refused(37, approval_room());
}

/// Members 1 to 3 join member 0's room (the owner approves whatever asks), then member 4
/// joins and leaves: with eight notices to spend and four room mates each time, its third
/// join is refused.
fn churn_until_refused(seed: u64, options: hub::RoomOptions) {
    let config = HubConfig {
        max_members_per_room: 8,
        join_notices: RateLimit {
            per_second: 0.001,
            burst: 8.0,
        },
        ..hub_config()
    };
    let (mut sim, mut w) = world(seed, 5, config, link(0.0));
    let room = create(&mut sim, &mut w, 0, "big", options);
    let join = |sim: &mut Simulator, w: &mut World, i: usize, metadata: &[u8]| {
        w.act(sim, i, |c, ep| c.join_room(ep, "big", b"", metadata))
            .expect("join");
        w.run(sim, 100);
        for e in w.take(0) {
            if let HubEvent::JoinRequested { room: r, user, .. } = e {
                w.act(sim, 0, |c, ep| c.approve(ep, r, user, true))
                    .expect("approve");
            }
        }
        w.run(sim, 100);
    };
    for i in 1..4 {
        join(&mut sim, &mut w, i, b"m");
    }
    for round in 0..3 {
        w.take(4);
        join(&mut sim, &mut w, 4, b"churn");
        let events = w.take(4);
        if round < 2 {
            assert_eq!(joined(&events), Some(room), "round {round}");
            w.act(&mut sim, 4, |c, ep| c.leave_room(ep, room))
                .expect("leave");
            w.run(&mut sim, 100);
        } else {
            assert_eq!(refusal(&events), Some(Refusal::RateLimited));
        }
    }
}

/// A request whose asker left before it was answered still gets an answer, empty, from a
/// member that tries to answer it: the hub holds a place among the member's pending
/// requests until one comes, and askers that request and leave at once held them all.
#[test]
fn a_request_whose_asker_left_is_still_answered_so_its_place_frees() {
    let (mut sim, mut w) = world(38, 2, hub_config(), link(0.0));
    let room = room_of_all(&mut sim, &mut w, "rpc");
    let b = w.user(1);
    let now = sim.now();
    w.act(&mut sim, 0, |cl, ep| {
        cl.request(ep, now, b, 2, &numbered(2, 1, 40))
    })
    .expect("request");
    w.run(&mut sim, 200);
    let request = w
        .take(1)
        .into_iter()
        .find_map(|e| match e {
            HubEvent::Request { request, .. } => Some(request),
            _ => None,
        })
        .expect("the request arrived");
    w.act(&mut sim, 0, |cl, ep| cl.leave_room(ep, room))
        .expect("leave");
    w.run(&mut sim, 200);
    let answered = w.act(&mut sim, 1, |cl, ep| cl.respond(ep, request, b"late"));
    assert!(matches!(answered, Err(hub::HubError::NotIntroduced(_))));
    let before = w.hub.stats().relayed_responses;
    w.run(&mut sim, 200);
    assert_eq!(
        w.hub.stats().relayed_responses,
        before + 1,
        "the place was freed"
    );
}

/// Declining a junk request (an empty answer) costs the decliner nothing: room mates
/// sending junk requests must not drain the relay budget it needs for its own messages.
#[test]
fn declining_junk_requests_leaves_the_decliners_relay_budget_whole() {
    let config = HubConfig {
        relay_messages: RateLimit {
            per_second: 0.001,
            burst: 5.0,
        },
        ..hub_config()
    };
    let (mut sim, mut w) = world(39, 3, config, link(0.0));
    room_of_all(&mut sim, &mut w, "rpc");
    let (victim, friend) = (w.user(2), w.user(1));
    for n in 0..5u32 {
        let now = sim.now();
        w.act(&mut sim, 0, |cl, ep| {
            let hub_conn = cl.connection();
            ep.request_redirected(now, hub_conn, 2, numbered(2, n, 40), Some(victim))
        })
        .expect("request");
    }
    w.run(&mut sim, 300);
    w.take(1);
    w.act(&mut sim, 2, |cl, ep| {
        cl.send(ep, Target::User(friend), 2, numbered(2, 7, 20))
    })
    .expect("send");
    w.run(&mut sim, 200);
    assert_eq!(
        messages(&w.take(1)).len(),
        1,
        "its own message still relayed"
    );
}

/// Requests the hub drops (here on its own control channel) cost the asker's relay budget
/// like messages it drops: they cannot be sent without end.
#[test]
fn dropped_requests_spend_the_askers_budget() {
    let config = HubConfig {
        relay_messages: RateLimit {
            per_second: 0.001,
            burst: 4.0,
        },
        ..hub_config()
    };
    let (mut sim, mut w) = world(40, 2, config, link(0.0));
    room_of_all(&mut sim, &mut w, "ctl");
    control_channel_requests(&mut sim, &mut w);
    w.run(&mut sim, 300);
    assert_eq!(w.hub.stats().dropped_requests, 4);
    w.take(1);
    let b = w.user(1);
    w.act(&mut sim, 0, |cl, ep| {
        cl.send(ep, Target::User(b), 2, numbered(2, 9, 20))
    })
    .expect("send");
    w.run(&mut sim, 200);
    assert!(messages(&w.take(1)).is_empty(), "the budget was spent");
}

/// A `join_notices` burst below the room size is raised to it: a join to a full room must
/// be payable.
#[test]
fn a_join_notice_burst_below_a_room_is_raised_to_it() {
    let config = HubConfig {
        max_members_per_room: 8,
        join_notices: RateLimit {
            per_second: 1.0,
            burst: 7.0,
        },
        ..hub_config()
    };
    let hub = hub::Hub::new(config, &hub::endpoint_config()).expect("a working config");
    assert_eq!(hub.config().join_notices.burst, 8.0);
}

/// Member `i` asks the hub to create `name`: `None` once it is created, else the refusal.
fn create_refused(sim: &mut Simulator, w: &mut World, i: usize, name: &str) -> Option<Refusal> {
    w.take(i);
    w.act(sim, i, |c, ep| {
        c.create_room(ep, name, &hub::RoomOptions::default())
    })
    .expect("create");
    w.run(sim, 200);
    let events = w.take(i);
    let refused = refusal(&events);
    assert!(
        refused.is_some() || joined(&events).is_some(),
        "no answer to creating {name}"
    );
    refused
}

/// The id of the room named `name` member `i` is in.
fn room_named(w: &mut World, i: usize, name: &str) -> hub::RoomId {
    w.client(i)
        .rooms()
        .find(|r| r.name == name.as_bytes())
        .map(|r| r.id)
        .expect("in the room")
}

/// A member may have created at most `max_owned_rooms` open rooms: with the default 128
/// rooms a member and 64 connections an address, one host filled the hub's 4,096 rooms in
/// two minutes and kept everyone else from opening one. A room counts against its creator
/// until it closes, whoever owns it: ownership passed to an heir charges the heir nothing
/// (a member could otherwise push rooms onto others and lock them out), and frees nothing
/// of the creator's.
#[test]
fn a_member_may_have_created_at_most_max_owned_rooms_and_heirs_are_not_charged() {
    let config = HubConfig {
        max_owned_rooms: 2,
        ..hub_config()
    };
    let (mut sim, mut w) = world(41, 2, config, link(0.0));
    let a = create(&mut sim, &mut w, 0, "a", hub::RoomOptions::default());
    create(&mut sim, &mut w, 0, "b", hub::RoomOptions::default());
    assert_eq!(
        create_refused(&mut sim, &mut w, 0, "c"),
        Some(Refusal::TooManyOwned)
    );
    // Member 1 joins "a" and owns it once member 0 leaves it: "a" still counts for member
    // 0, and not for member 1, which may create two of its own.
    w.act(&mut sim, 1, |c, ep| c.join_room(ep, "a", b"", b"m1"))
        .expect("join");
    w.run(&mut sim, 200);
    w.act(&mut sim, 0, |c, ep| c.leave_room(ep, a))
        .expect("leave");
    w.run(&mut sim, 200);
    assert_eq!(w.client(1).room(a).map(|r| r.owner), Some(w.user(1)));
    assert_eq!(
        create_refused(&mut sim, &mut w, 0, "c"),
        Some(Refusal::TooManyOwned)
    );
    assert_eq!(create_refused(&mut sim, &mut w, 1, "d"), None);
    assert_eq!(create_refused(&mut sim, &mut w, 1, "e"), None);
    assert_eq!(
        create_refused(&mut sim, &mut w, 1, "f"),
        Some(Refusal::TooManyOwned)
    );
    // A closed room counts for nobody: "d" for member 1, "a" (closed by its heir) for
    // member 0.
    let d = room_named(&mut w, 1, "d");
    w.act(&mut sim, 1, |c, ep| c.close_room(ep, d))
        .expect("close");
    w.act(&mut sim, 1, |c, ep| c.close_room(ep, a))
        .expect("close");
    w.run(&mut sim, 200);
    assert_eq!(create_refused(&mut sim, &mut w, 1, "f"), None);
    assert_eq!(create_refused(&mut sim, &mut w, 0, "c"), None);
}

/// The members at one address may have created at most `max_owned_rooms_per_ip` open rooms
/// between them, however many connections the address holds; others' rooms are not
/// affected. A room counts against the address until it closes, also after its creator
/// left the hub and others kept it.
#[test]
fn the_members_at_one_address_may_have_created_at_most_max_owned_rooms_per_ip() {
    use shoal_proto::hub::PathPolicy;
    use shoal_sim::{NatConfig, NatKind};
    let config = HubConfig {
        max_owned_rooms_per_ip: 2,
        ..hub_config()
    };
    let (mut sim, mut w) = world(42, 1, config, link(0.0));
    let nat = sim
        .add_nat(NatConfig::new(NatKind::PortRestricted))
        .expect("nat");
    for _ in 0..3 {
        w.add_member(&mut sim, Some(nat), PathPolicy::Messages);
    }
    w.settle(&mut sim);
    assert_eq!(create_refused(&mut sim, &mut w, 1, "n1"), None);
    assert_eq!(create_refused(&mut sim, &mut w, 2, "n2"), None);
    assert_eq!(
        create_refused(&mut sim, &mut w, 3, "n3"),
        Some(Refusal::TooManyOwned)
    );
    assert_eq!(create_refused(&mut sim, &mut w, 0, "out"), None);
    // Member 1 leaves the hub: its room closes with it, and frees its place.
    let leave_hub = |sim: &mut Simulator, w: &mut World, i: usize| {
        let conn = w.client(i).connection();
        sim.endpoint_mut(w.members[i]).disconnect(conn, 0);
        w.run(sim, 300);
    };
    leave_hub(&mut sim, &mut w, 1);
    assert_eq!(create_refused(&mut sim, &mut w, 3, "n3"), None);
    // Member 0 (outside) joins "n2", and member 2 leaves the hub: "n2" lives on, owned
    // by member 0, and still counts against the address it was created from.
    w.act(&mut sim, 0, |c, ep| c.join_room(ep, "n2", b"", b"m0"))
        .expect("join");
    w.run(&mut sim, 200);
    leave_hub(&mut sim, &mut w, 2);
    assert!(w.client(0).rooms().any(|r| r.name == b"n2"[..]));
    assert_eq!(
        create_refused(&mut sim, &mut w, 3, "n4"),
        Some(Refusal::TooManyOwned)
    );
    assert_eq!(create_refused(&mut sim, &mut w, 0, "out2"), None);
}

/// A member waits for approval in at most `max_pending_asks` rooms: each wait holds a place
/// in a room's approval queue and the member's metadata until the owner answers, the
/// approval times out or the room closes. Each of those frees a place.
#[test]
fn a_member_waits_for_approval_in_at_most_max_pending_asks_rooms() {
    let config = HubConfig {
        max_pending_asks: 2,
        approval_timeout: Duration::from_secs(5),
        ..hub_config()
    };
    let (mut sim, mut w) = world(43, 4, config, link(0.0));
    let rooms: Vec<_> = (0..3)
        .map(|i| create(&mut sim, &mut w, i, &format!("r{i}"), approval_room()))
        .collect();
    let ask = |sim: &mut Simulator, w: &mut World, name: &str| {
        w.take(3);
        w.act(sim, 3, |c, ep| c.join_room(ep, name, b"", b"m"))
            .expect("join");
        w.run(sim, 200);
        refusal(&w.take(3))
    };
    let full = Some(Refusal::TooManyAsks);
    assert_eq!(ask(&mut sim, &mut w, "r0"), None);
    assert_eq!(ask(&mut sim, &mut w, "r1"), None);
    assert_eq!(ask(&mut sim, &mut w, "r2"), full);
    // Room 0's owner says no: one wait fewer.
    let asker = w.user(3);
    w.act(&mut sim, 0, |c, ep| c.approve(ep, rooms[0], asker, false))
        .expect("refuse");
    w.run(&mut sim, 200);
    assert_eq!(refusal(&w.take(3)), Some(Refusal::NotApproved));
    assert_eq!(ask(&mut sim, &mut w, "r2"), None);
    assert_eq!(ask(&mut sim, &mut w, "r0"), full);
    // Room 2 closes: one wait fewer.
    w.act(&mut sim, 2, |c, ep| c.close_room(ep, rooms[2]))
        .expect("close");
    w.run(&mut sim, 200);
    assert_eq!(refusal(&w.take(3)), Some(Refusal::UnknownRoom));
    assert_eq!(ask(&mut sim, &mut w, "r0"), None);
    assert_eq!(ask(&mut sim, &mut w, "r2"), Some(Refusal::UnknownRoom));
    // Nobody answers: both waits time out, and the member may ask again.
    w.run(&mut sim, 6000);
    assert_eq!(refusal(&w.take(3)), Some(Refusal::NotApproved));
    assert_eq!(ask(&mut sim, &mut w, "r0"), None);
    assert_eq!(ask(&mut sim, &mut w, "r1"), None);
}
