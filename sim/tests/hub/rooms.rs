//! Rooms, member lists, notices, the relay on every channel kind, limits and their
//! reasons, and what a hostile or silent member can do.

use std::collections::BTreeMap;
use std::time::Duration;

use shoal_proto::hub::{
    self, HubClient, HubConfig, HubEvent, LeaveReason, RateLimit, Refusal, RoomId, RoomOptions,
    Target,
};
use shoal_proto::{Bytes, DropReason, Endpoint};
use shoal_sim::{NodeId, Simulator};

use crate::world::{
    approval_room, create, hub_config, joined, link, messages, number, numbered, refusal,
    room_of_all, small_rooms_hub_config, world, world_with, World,
};

#[test]
fn joiners_get_the_member_list_and_everyone_hears_joins_and_leaves() {
    let (mut sim, mut w) = world(1, 3, hub_config(), link(0.0));
    let (a, b, c) = (w.user(0), w.user(1), w.user(2));
    w.act(&mut sim, 0, |cl, ep| {
        let options = RoomOptions {
            metadata: b"alice".to_vec(),
            ..RoomOptions::default()
        };
        cl.create_room(ep, "lobby", &options)
    })
    .expect("create");
    w.run(&mut sim, 300);
    let room = joined(&w.take(0)).expect("created");
    w.act(&mut sim, 1, |cl, ep| cl.join_room(ep, "lobby", b"", b"bob"))
        .expect("join");
    w.run(&mut sim, 300);
    w.act(&mut sim, 2, |cl, ep| {
        cl.join_room(ep, "lobby", b"", b"carol")
    })
    .expect("join");
    w.run(&mut sim, 300);

    // Carol's list: everyone, oldest first, with what each said about itself.
    assert_eq!(joined(&w.take(2)), Some(room));
    let view = w.client(2).room(room).expect("in room").clone();
    assert_eq!(view.owner, a);
    let list: Vec<(u16, &[u8])> = view
        .members
        .iter()
        .map(|m| (m.user, m.metadata.as_ref()))
        .collect();
    assert_eq!(list, [(a, &b"alice"[..]), (b, b"bob"), (c, b"carol")]);
    // Alice heard both joins, Bob heard Carol's.
    let peers_joined = |events: &[HubEvent]| -> Vec<u16> {
        events
            .iter()
            .filter_map(|e| match e {
                HubEvent::PeerJoined { user, .. } => Some(*user),
                _ => None,
            })
            .collect()
    };
    assert_eq!(peers_joined(&w.take(0)), [b, c]);
    let bob = w.take(1);
    assert_eq!(joined(&bob), Some(room));
    assert_eq!(peers_joined(&bob), [c]);
    assert_eq!(w.client(1).room(room).expect("in").members.len(), 3);

    // Carol leaves: she is told it is done, the others that she left.
    w.act(&mut sim, 2, |cl, ep| cl.leave_room(ep, room))
        .expect("leave");
    w.run(&mut sim, 300);
    let carol = w.take(2);
    assert!(carol.contains(&HubEvent::RoomLeft {
        room,
        reason: LeaveReason::Left
    }));
    assert!(carol.iter().any(|e| matches!(e, HubEvent::Done { .. })));
    assert!(w.client(2).room(room).is_none());
    for i in 0..2 {
        assert!(w.take(i).contains(&HubEvent::PeerLeft {
            room,
            user: c,
            reason: LeaveReason::Left
        }));
        assert_eq!(w.client(i).room(room).expect("in").members.len(), 2);
    }
    // A member that disconnects leaves every room with that reason.
    let conn = w.client(1).connection();
    sim.endpoint_mut(w.members[1]).disconnect(conn, 0);
    w.run(&mut sim, 300);
    assert!(w.take(0).contains(&HubEvent::PeerLeft {
        room,
        user: b,
        reason: LeaveReason::Disconnected
    }));
    assert_eq!(w.hub.stats().members, 2);
}

#[test]
fn every_channel_kind_relays_with_its_guarantees_under_loss() {
    let (mut sim, mut w) = world(2, 2, hub_config(), link(0.05));
    room_of_all(&mut sim, &mut w, "duel");
    let (a, b) = (w.user(0), w.user(1));
    w.take(0);
    w.take(1);
    const N: u32 = 200;
    for n in 0..N {
        for channel in 0..4u8 {
            w.act(&mut sim, 0, |cl, ep| {
                cl.send(ep, Target::User(b), channel, numbered(channel, n, 40))
            })
            .expect("send");
        }
        w.run(&mut sim, 5);
    }
    // Chunked messages, on the reliable and the ordered channel.
    for channel in [2u8, 3] {
        let big = numbered(channel, N, 200_000);
        w.act(&mut sim, 0, |cl, ep| {
            cl.send(ep, Target::User(b), channel, big)
        })
        .expect("send big");
    }
    // Two 200 KB messages relayed (two hops, each losing 5%): about 6 s.
    w.run(&mut sim, 9000);

    let got = messages(&w.take(1));
    assert!(got
        .iter()
        .all(|(from, to, ..)| *from == a && *to == Target::User(b)));
    let on = |channel: u8| -> Vec<u32> {
        got.iter()
            .filter(|m| m.2 == channel)
            .map(|m| number(&m.3))
            .collect()
    };
    // Unreliable: a subset, no copies.
    let unreliable = on(0);
    let mut dedup = unreliable.clone();
    dedup.sort_unstable();
    dedup.dedup();
    assert_eq!(dedup.len(), unreliable.len(), "no duplicates");
    assert!(unreliable.len() > (N as usize) / 2, "most arrive");
    // Sequenced: never goes back.
    assert!(on(1).windows(2).all(|w| w[0] < w[1]));
    // Reliable: every one exactly once, the big one whole.
    let mut reliable = on(2);
    reliable.sort_unstable();
    assert_eq!(reliable, (0..=N).collect::<Vec<_>>());
    // Ordered: every one, in order.
    assert_eq!(on(3), (0..=N).collect::<Vec<_>>());
    let bigs: Vec<usize> = got
        .iter()
        .filter(|m| number(&m.3) == N)
        .map(|m| m.3.len())
        .collect();
    assert_eq!(bigs, [200_000, 200_000]);
    assert_eq!(w.client(1).stats().unopened, 0);
}

#[test]
fn requests_relay_to_one_member_and_its_response_comes_back() {
    let (mut sim, mut w) = world(3, 2, hub_config(), link(0.05));
    room_of_all(&mut sim, &mut w, "rpc");
    let (a, b) = (w.user(0), w.user(1));
    let mut ids = Vec::new();
    for n in 0..20u32 {
        let channel = if n % 2 == 0 { 2 } else { 0 };
        let now = sim.now();
        let id = w
            .act(&mut sim, 0, |cl, ep| {
                cl.request(ep, now, b, channel, &numbered(channel, n, 3000))
            })
            .expect("request");
        ids.push(id);
    }
    // Bob answers each with its number doubled.
    let mut answered = 0;
    for _ in 0..40 {
        w.run(&mut sim, 50);
        for e in w.take(1) {
            if let HubEvent::Request { request, payload } = e {
                assert_eq!(request.from, a);
                let answer = (number(&payload) * 2).to_be_bytes();
                w.act(&mut sim, 1, |cl, ep| cl.respond(ep, request, &answer))
                    .expect("respond");
                answered += 1;
            }
        }
    }
    w.run(&mut sim, 2000);
    let responses: BTreeMap<_, _> = w
        .take(0)
        .into_iter()
        .filter_map(|e| match e {
            HubEvent::Response { id, from, payload } => {
                assert_eq!(from, b);
                Some((id, u32::from_be_bytes(payload[..4].try_into().unwrap())))
            }
            _ => None,
        })
        .collect();
    // The reliable ones all come back; the unreliable ones may be lost either way.
    for (n, id) in ids.iter().enumerate() {
        if n % 2 == 0 {
            assert_eq!(responses.get(id), Some(&(n as u32 * 2)), "request {n}");
        } else if let Some(v) = responses.get(id) {
            assert_eq!(*v, n as u32 * 2);
        }
    }
    assert!(answered >= 10);
    // Every response that came back was relayed, and nothing the member did not send was;
    // an unreliable one may be lost after the hub relayed it (several small ones share a
    // packet, and one loss takes them all).
    let relayed = w.hub.stats().relayed_responses;
    assert!(
        (responses.len() as u64..=answered).contains(&relayed),
        "relayed {relayed}, answered {answered}, came back {}",
        responses.len()
    );
}

#[test]
fn room_broadcasts_reach_everyone_or_everyone_but_the_sender() {
    let (mut sim, mut w) = world(4, 5, hub_config(), link(0.0));
    let room = room_of_all(&mut sim, &mut w, "party");
    for i in 0..5 {
        w.take(i);
    }
    w.act(&mut sim, 0, |cl, ep| {
        cl.send(ep, Target::Room(room), 3, &b"to all"[..])
    })
    .expect("send");
    w.act(&mut sim, 1, |cl, ep| {
        cl.send(ep, Target::RoomExceptSender(room), 3, &b"to others"[..])
    })
    .expect("send");
    w.run(&mut sim, 300);
    let (a, b) = (w.user(0), w.user(1));
    for i in 0..5 {
        let got: Vec<(u16, Bytes)> = messages(&w.take(i))
            .into_iter()
            .map(|m| (m.0, m.3))
            .collect();
        let mut expected = vec![(a, Bytes::from_static(b"to all"))];
        if i != 1 {
            expected.push((b, Bytes::from_static(b"to others")));
        }
        let mut got_sorted = got.clone();
        got_sorted.sort();
        expected.sort();
        assert_eq!(got_sorted, expected, "member {i}");
    }
    assert_eq!(w.hub.stats().relayed_messages, 5 + 4);
}

#[test]
fn relayed_payloads_to_one_member_are_sealed_end_to_end() {
    let (mut sim, mut w) = world(5, 2, hub_config(), link(0.0));
    room_of_all(&mut sim, &mut w, "secret");
    let b = w.user(1);
    let secret = b"the hub must not read this".to_vec();
    w.act(&mut sim, 0, |cl, ep| {
        cl.send(ep, Target::User(b), 2, secret.clone())
    })
    .expect("send");
    w.run(&mut sim, 300);
    assert_eq!(messages(&w.take(1))[0].3, secret);
    let at_hub = w.hub_saw.last().expect("relayed").clone();
    assert_eq!(at_hub.len(), secret.len() + shoal_proto::hub::PAIR_OVERHEAD);
    assert!(!at_hub
        .windows(8)
        .any(|win| secret.windows(8).any(|s| s == win)));
}

#[test]
fn a_forged_owner_id_is_dropped_by_the_hub() {
    let (mut sim, mut w) = world(6, 3, hub_config(), link(0.0));
    let room = room_of_all(&mut sim, &mut w, "forgery");
    let (victim, target) = (w.user(1), w.user(2));
    w.take(2);
    let violations = |sim: &Simulator, hub: NodeId| -> u64 {
        let ep = sim.endpoint(hub);
        ep.connections()
            .filter_map(|c| ep.connection_stats(c))
            .map(|s| s.drops.get(DropReason::ProtocolViolation))
            .sum()
    };
    let before = violations(&sim, w.hub_node);
    // Mallory (member 0) writes Bob's id as the owner of a message to Carol, and to the room.
    let conn = w.client(0).connection();
    let ep = sim.endpoint_mut(w.members[0]);
    ep.relay(conn, 2, &b"from bob, honest"[..], victim, Some(target))
        .expect("queued");
    ep.relay(
        conn,
        2,
        &b"from bob too"[..],
        victim,
        Some(Target::Room(room).to_wire()),
    )
    .expect("queued");
    w.run(&mut sim, 500);
    assert!(messages(&w.take(2)).is_empty());
    assert!(messages(&w.take(1)).is_empty());
    let after = violations(&sim, w.hub_node);
    assert!(after > before, "counted as a protocol violation");
}

#[test]
fn unknown_targets_and_strangers_are_dropped_and_counted() {
    let (mut sim, mut w) = world(7, 3, hub_config(), link(0.0));
    // 0 and 1 share a room; 2 is in a room of its own.
    w.act(&mut sim, 0, |c, ep| {
        c.create_room(ep, "a", &RoomOptions::default())
    })
    .expect("create");
    w.act(&mut sim, 2, |c, ep| {
        c.create_room(ep, "b", &RoomOptions::default())
    })
    .expect("create");
    w.run(&mut sim, 300);
    let other_room = joined(&w.take(2)).expect("created");
    w.act(&mut sim, 1, |c, ep| c.join_room(ep, "a", b"", b""))
        .expect("join");
    w.run(&mut sim, 300);
    let stranger = w.user(2);
    // The client refuses to seal for a stranger...
    assert_eq!(
        w.act(&mut sim, 0, |c, ep| c.send(
            ep,
            Target::User(stranger),
            2,
            &b"x"[..]
        )),
        Err(shoal_proto::hub::HubError::NotIntroduced(stranger))
    );
    // ...and the hub drops what a raw endpoint sends anyway.
    let conn = w.client(0).connection();
    let ep = sim.endpoint_mut(w.members[0]);
    ep.send_redirected(conn, 2, &b"to a stranger"[..], Some(stranger))
        .expect("queued");
    ep.send_redirected(conn, 2, &b"to nobody"[..], Some(40_000))
        .expect("queued");
    ep.send_redirected(
        conn,
        2,
        &b"to a room not mine"[..],
        Some(Target::Room(other_room).to_wire()),
    )
    .expect("queued");
    ep.send_redirected(
        conn,
        2,
        &b"to no room"[..],
        Some(Target::Room(RoomId(999)).to_wire()),
    )
    .expect("queued");
    w.run(&mut sim, 300);
    assert!(messages(&w.take(2)).is_empty());
    let stats = w.hub.stats();
    assert_eq!(stats.dropped_no_shared_room, 2);
    assert_eq!(stats.dropped_unknown_target, 2);
    assert_eq!(stats.relayed_messages, 0);
}

#[test]
fn limits_refuse_with_their_reasons() {
    let config = HubConfig {
        max_rooms: 2,
        max_rooms_per_member: 2,
        max_members_per_room: 2,
        room_creates: RateLimit {
            per_second: 0.1,
            burst: 3.0,
        },
        ..hub_config()
    };
    let (mut sim, mut w) = world(8, 4, config, link(0.0));
    let ask = |sim: &mut Simulator,
               w: &mut World,
               i: usize,
               f: &dyn Fn(&mut HubClient, &mut Endpoint)| {
        w.act(sim, i, f);
        w.run(sim, 200);
        let events = w.take(i);
        (joined(&events), refusal(&events))
    };
    let create = |name: &'static str| {
        move |c: &mut HubClient, ep: &mut Endpoint| {
            c.create_room(
                ep,
                name,
                &RoomOptions {
                    password: b"pw".to_vec(),
                    ..RoomOptions::default()
                },
            )
            .expect("create");
        }
    };
    let join = |name: &'static str, pw: &'static [u8]| {
        move |c: &mut HubClient, ep: &mut Endpoint| {
            c.join_room(ep, name, pw, b"").expect("join");
        }
    };
    assert!(ask(&mut sim, &mut w, 0, &create("one")).0.is_some());
    assert_eq!(
        ask(&mut sim, &mut w, 1, &create("one")).1,
        Some(Refusal::RoomExists)
    );
    assert_eq!(
        ask(&mut sim, &mut w, 1, &join("none", b"")).1,
        Some(Refusal::UnknownRoom)
    );
    assert_eq!(
        ask(&mut sim, &mut w, 1, &join("one", b"no")).1,
        Some(Refusal::WrongPassword)
    );
    assert!(ask(&mut sim, &mut w, 1, &join("one", b"pw")).0.is_some());
    assert_eq!(
        ask(&mut sim, &mut w, 1, &join("one", b"pw")).1,
        Some(Refusal::AlreadyMember)
    );
    assert_eq!(
        ask(&mut sim, &mut w, 2, &join("one", b"pw")).1,
        Some(Refusal::RoomFull)
    );
    assert!(ask(&mut sim, &mut w, 0, &create("two")).0.is_some());
    assert_eq!(
        ask(&mut sim, &mut w, 2, &create("three")).1,
        Some(Refusal::HubFull)
    );
    assert_eq!(
        ask(&mut sim, &mut w, 0, &create("four")).1,
        Some(Refusal::TooManyRooms)
    );
    assert_eq!(
        ask(&mut sim, &mut w, 3, &create("")).1,
        Some(Refusal::Invalid)
    );
    // A create flood: three allowed at once, then one per ten seconds.
    let flood: Vec<Option<Refusal>> = (0..4)
        .map(|_| ask(&mut sim, &mut w, 1, &create("two")).1)
        .collect();
    assert_eq!(flood[3], Some(Refusal::RateLimited));
    assert!(flood[..2].iter().all(|r| *r == Some(Refusal::RoomExists)));
    assert!(w.hub.stats().refusals >= 10);
}

#[test]
fn owners_kick_and_close_and_others_may_not() {
    let (mut sim, mut w) = world(9, 3, hub_config(), link(0.0));
    let room = room_of_all(&mut sim, &mut w, "guild");
    let (b, c) = (w.user(1), w.user(2));
    for i in 0..3 {
        w.take(i);
    }
    w.act(&mut sim, 1, |cl, ep| cl.kick(ep, room, c))
        .expect("kick");
    w.run(&mut sim, 200);
    assert_eq!(refusal(&w.take(1)), Some(Refusal::NotOwner));
    w.act(&mut sim, 0, |cl, ep| cl.kick(ep, room, c))
        .expect("kick");
    w.run(&mut sim, 200);
    assert!(w.take(2).contains(&HubEvent::RoomLeft {
        room,
        reason: LeaveReason::Kicked
    }));
    assert!(w.take(1).contains(&HubEvent::PeerLeft {
        room,
        user: c,
        reason: LeaveReason::Kicked
    }));
    assert!(w.take(0).iter().any(|e| matches!(e, HubEvent::Done { .. })));
    assert_eq!(w.hub.stats().kicks, 1);
    // Kicked, Carol can no longer reach Bob.
    assert!(!w.client(2).is_introduced(b));

    w.act(&mut sim, 0, |cl, ep| cl.close_room(ep, room))
        .expect("close");
    w.run(&mut sim, 200);
    for i in 0..2 {
        assert!(w.take(i).contains(&HubEvent::RoomLeft {
            room,
            reason: LeaveReason::ClosedByOwner
        }));
        assert_eq!(w.client(i).rooms().count(), 0);
    }
    assert_eq!(w.hub.stats().rooms, 0);
}

#[test]
fn an_owner_leaving_hands_the_room_over_or_closes_it_as_configured() {
    let (mut sim, mut w) = world(10, 3, hub_config(), link(0.0));
    let kept = room_of_all(&mut sim, &mut w, "kept");
    w.act(&mut sim, 0, |cl, ep| {
        let options = RoomOptions {
            close_with_owner: true,
            ..RoomOptions::default()
        };
        cl.create_room(ep, "closing", &options)
    })
    .expect("create");
    w.run(&mut sim, 200);
    let closing = joined(&w.take(0)).expect("created");
    w.act(&mut sim, 1, |cl, ep| cl.join_room(ep, "closing", b"", b""))
        .expect("join");
    w.run(&mut sim, 200);
    w.take(1);
    w.take(2);
    let b = w.user(1);
    let conn = w.client(0).connection();
    sim.endpoint_mut(w.members[0]).disconnect(conn, 0);
    w.run(&mut sim, 300);
    let bob = w.take(1);
    assert!(bob.contains(&HubEvent::OwnerChanged {
        room: kept,
        owner: b
    }));
    assert!(bob.contains(&HubEvent::RoomLeft {
        room: closing,
        reason: LeaveReason::OwnerLeft
    }));
    assert_eq!(w.client(2).room(kept).expect("kept").owner, b);
    assert_eq!(w.hub.rooms().count(), 1);
}

#[test]
fn joins_wait_for_the_owners_approval_and_expire_unanswered() {
    let config = HubConfig {
        approval_timeout: Duration::from_secs(2),
        ..hub_config()
    };
    let (mut sim, mut w) = world(11, 4, config, link(0.0));
    let room = create(&mut sim, &mut w, 0, "vip", approval_room());
    for i in 1..4 {
        w.act(&mut sim, i, |cl, ep| {
            cl.join_room(ep, "vip", b"", format!("m{i}").as_bytes())
        })
        .expect("join");
    }
    w.run(&mut sim, 300);
    let asks: Vec<(u16, Bytes)> = w
        .take(0)
        .into_iter()
        .filter_map(|e| match e {
            HubEvent::JoinRequested { user, metadata, .. } => Some((user, metadata)),
            _ => None,
        })
        .collect();
    assert_eq!(asks.len(), 3);
    let (b, c) = (w.user(1), w.user(2));
    w.act(&mut sim, 0, |cl, ep| cl.approve(ep, room, b, true))
        .expect("approve");
    w.act(&mut sim, 0, |cl, ep| cl.approve(ep, room, c, false))
        .expect("refuse");
    w.run(&mut sim, 300);
    assert_eq!(joined(&w.take(1)), Some(room));
    assert_eq!(refusal(&w.take(2)), Some(Refusal::NotApproved));
    // Member 3 is never answered.
    w.run(&mut sim, 2500);
    assert_eq!(refusal(&w.take(3)), Some(Refusal::NotApproved));
    assert_eq!(w.client(0).room(room).expect("in").members.len(), 2);
}

#[test]
fn a_member_that_stops_reading_is_disconnected_without_slowing_the_others() {
    let mut endpoint = hub::endpoint_config();
    for ch in &mut endpoint.channels {
        ch.max_queued_bytes = 64 * 1024;
    }
    let (mut sim, mut w) = world_with(12, 4, small_rooms_hub_config(), endpoint, link(0.0));
    let room = room_of_all(&mut sim, &mut w, "stream");
    let silent = w.user(3);
    // Member 3 stops reading: nothing from the hub reaches it any more.
    sim.set_link_up(w.hub_node, w.members[3], false);
    for i in 0..4 {
        w.take(i);
    }
    const N: u32 = 300;
    for n in 0..N {
        w.act(&mut sim, 0, |cl, ep| {
            cl.send(ep, Target::RoomExceptSender(room), 3, numbered(3, n, 1000))
        })
        .expect("send");
        w.run(&mut sim, 10);
    }
    w.run(&mut sim, 1000);
    for i in 1..3 {
        let events = w.take(i);
        let got: Vec<u32> = messages(&events).iter().map(|m| number(&m.3)).collect();
        assert_eq!(
            got,
            (0..N).collect::<Vec<_>>(),
            "member {i} got all, in order"
        );
        assert!(events.contains(&HubEvent::PeerLeft {
            room,
            user: silent,
            reason: LeaveReason::TooSlow
        }));
    }
    assert_eq!(w.hub.stats().too_slow, 1);
    assert!(w.hub.stats().dropped_queue_full >= 1);
}

#[test]
fn relay_floods_are_cut_to_the_rate_limit() {
    let config = HubConfig {
        relay_messages: RateLimit {
            per_second: 100.0,
            burst: 50.0,
        },
        ..hub_config()
    };
    let (mut sim, mut w) = world(13, 2, config, link(0.0));
    room_of_all(&mut sim, &mut w, "flood");
    let b = w.user(1);
    w.take(1);
    // 1,000 messages in one second: 50 at once plus 100 a second get through.
    for n in 0..1000u32 {
        w.act(&mut sim, 0, |cl, ep| {
            cl.send(ep, Target::User(b), 2, numbered(2, n, 20))
        })
        .expect("send");
        if n % 10 == 9 {
            w.run(&mut sim, 10);
        }
    }
    w.run(&mut sim, 500);
    let got = messages(&w.take(1)).len() as u64;
    assert!((140..=160).contains(&got), "{got} relayed");
    assert_eq!(w.hub.stats().dropped_rate_limited, 1000 - got);
}

/// Messages the hub drops (to a room the sender is not in) cost the sender's relay budget
/// like any other: they made the hub look the room up and were never charged, so they
/// could be sent without end.
#[test]
fn dropped_relays_spend_the_senders_budget() {
    let config = HubConfig {
        relay_messages: RateLimit {
            per_second: 0.001,
            burst: 10.0,
        },
        ..hub_config()
    };
    let (mut sim, mut w) = world(14, 3, config, link(0.0));
    room_of_all(&mut sim, &mut w, "all");
    let private = create(&mut sim, &mut w, 0, "private", RoomOptions::default());
    let b = w.user(1);
    w.take(1);
    for n in 0..20u32 {
        w.act(&mut sim, 2, |cl, ep| {
            cl.send(ep, Target::Room(private), 2, numbered(2, n, 20))
        })
        .expect("send");
    }
    w.run(&mut sim, 100);
    assert_eq!(w.hub.stats().dropped_no_shared_room, 20);
    w.act(&mut sim, 2, |cl, ep| {
        cl.send(ep, Target::User(b), 2, numbered(2, 99, 20))
    })
    .expect("send");
    w.run(&mut sim, 200);
    assert!(messages(&w.take(1)).is_empty(), "the budget was spent");
    assert_eq!(w.hub.stats().dropped_rate_limited, 1);
}

/// The hub logs rooms opening and closing as they happen, for a server to report without
/// walking every room on each change.
#[test]
fn the_hub_logs_rooms_opening_and_closing_in_order() {
    let (mut sim, mut w) = world(15, 2, hub_config(), link(0.0));
    let mut changes = Vec::new();
    assert!(w.hub.take_room_changes(&mut changes));
    let a = create(&mut sim, &mut w, 0, "a", RoomOptions::default());
    let b = create(&mut sim, &mut w, 1, "b", RoomOptions::default());
    w.act(&mut sim, 0, |c, ep| c.leave_room(ep, a))
        .expect("leave");
    w.run(&mut sim, 200);
    assert!(w.hub.take_room_changes(&mut changes));
    let (u0, u1) = (w.user(0), w.user(1));
    assert_eq!(
        changes,
        [
            hub::RoomChange::Opened {
                room: a,
                name: "a".into(),
                owner: u0
            },
            hub::RoomChange::Opened {
                room: b,
                name: "b".into(),
                owner: u1
            },
            hub::RoomChange::Closed {
                room: a,
                name: "a".into()
            },
        ]
    );
    changes.clear();
    assert!(w.hub.take_room_changes(&mut changes));
    assert!(changes.is_empty(), "taken once");
}

#[test]
fn three_hundred_members_in_ten_rooms_all_hear_their_room() {
    let (mut sim, mut w) = world(14, 300, hub_config(), link(0.01));
    for r in 0..10 {
        let owner = r * 30;
        w.act(&mut sim, owner, |c, ep| {
            c.create_room(ep, &format!("room{r}"), &RoomOptions::default())
        })
        .expect("create");
    }
    w.run(&mut sim, 500);
    for i in 0..300 {
        if i % 30 != 0 {
            let name = format!("room{}", i / 30);
            w.act(&mut sim, i, |c, ep| c.join_room(ep, &name, b"", b""))
                .expect("join");
        }
    }
    w.run(&mut sim, 1500);
    for i in 0..300 {
        let room = w.client(i).rooms().next().expect("in a room").clone();
        assert_eq!(room.members.len(), 30, "member {i} sees its whole room");
        w.take(i);
    }
    for i in 0..300 {
        let room = w.client(i).rooms().next().expect("room").id;
        w.act(&mut sim, i, |c, ep| {
            c.send(
                ep,
                Target::RoomExceptSender(room),
                2,
                numbered(2, i as u32, 32),
            )
        })
        .expect("send");
    }
    w.run(&mut sim, 2000);
    for i in 0..300 {
        let mut from: Vec<u32> = messages(&w.take(i)).iter().map(|m| number(&m.3)).collect();
        from.sort_unstable();
        let base = (i / 30 * 30) as u32;
        let expected: Vec<u32> = (base..base + 30).filter(|&n| n != i as u32).collect();
        assert_eq!(from, expected, "member {i}");
    }
    assert_eq!(w.hub.stats().relayed_messages, 300 * 29);
}

#[test]
fn leaving_or_kicking_outside_a_room_and_a_full_approval_queue_are_refused() {
    let config = HubConfig {
        max_pending_joins: 1,
        ..hub_config()
    };
    let (mut sim, mut w) = world(15, 3, config, link(0.0));
    let room = create(&mut sim, &mut w, 0, "door", approval_room());
    let stranger = w.user(2);
    // Member 1 is in no room: it cannot leave one.
    w.act(&mut sim, 1, |cl, ep| cl.leave_room(ep, room))
        .expect("leave");
    w.run(&mut sim, 200);
    assert_eq!(refusal(&w.take(1)), Some(Refusal::NotMember));
    // The owner cannot kick someone who is not in the room.
    w.act(&mut sim, 0, |cl, ep| cl.kick(ep, room, stranger))
        .expect("kick");
    w.run(&mut sim, 200);
    assert_eq!(refusal(&w.take(0)), Some(Refusal::NotMember));
    // One join may wait for approval; the next is refused at once.
    w.act(&mut sim, 1, |cl, ep| cl.join_room(ep, "door", b"", b""))
        .expect("join");
    w.run(&mut sim, 200);
    w.act(&mut sim, 2, |cl, ep| cl.join_room(ep, "door", b"", b""))
        .expect("join");
    w.run(&mut sim, 200);
    assert_eq!(refusal(&w.take(2)), Some(Refusal::ApprovalQueueFull));
    assert_eq!(refusal(&w.take(1)), None, "still waiting");
}
