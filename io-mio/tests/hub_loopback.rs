//! The `shoal-hub` binary on 127.0.0.1 with three `shoal-std` members: one creates a room,
//! two join, and they send to one user, to the room, to the room except the sender, and a
//! request with its response, all through the hub. Then one leaves, and the hub is stopped
//! with SIGINT (on Unix) and must say goodbye to the other two and exit 0.
//!
//! Every wait has a deadline; ports are ephemeral. Negative checks ("carol never gets what
//! alice sent to bob") need no sleeping: each sender ends with a marker to the whole room on
//! the same ordered channel, and the hub forwards in order, so a member that got the marker
//! got everything that sender would ever send it before it.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::time::{Duration, Instant};

use shoal_std::shoal_proto::hub::{
    self, HubClient, HubEvent, LeaveReason, RoomId, RoomOptions, Target,
};
use shoal_std::{Bytes, Config, DisconnectReason, Driver, Event};

const DEADLINE: Duration = Duration::from_secs(30);
/// The ordered channel of `hub::endpoint_config()`.
const ORDERED: u8 = 3;
/// The application close code the hub says goodbye with (`shoal_mio::hub::CLOSE_SHUTDOWN`).
const CLOSE_SHUTDOWN: u16 = shoal_mio::hub::CLOSE_SHUTDOWN;

/// The hub process; killed if the test fails before it stops it.
struct HubProcess {
    child: Child,
    addr: SocketAddr,
    /// Its log lines (stderr), read on a thread.
    lines: Receiver<String>,
    seen: Vec<String>,
}

impl HubProcess {
    fn start() -> HubProcess {
        let mut child = Command::new(env!("CARGO_BIN_EXE_shoal-hub"))
            .args(["--bind", "127.0.0.1:0", "--status-interval", "100ms"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the shoal-hub binary starts");
        let stderr = child.stderr.take().expect("piped stderr");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut hub = HubProcess {
            child,
            addr: SocketAddr::from(([0, 0, 0, 0], 0)),
            lines,
            seen: Vec::new(),
        };
        let line = hub.wait_line(|l| l.contains("listening on "), "the listening line");
        let addr = line
            .split("listening on ")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("no address in {line:?}"));
        hub.addr = addr;
        hub
    }

    /// Waits (bounded) for a log line matching `pred`, looking at those already seen first.
    fn wait_line(&mut self, pred: impl Fn(&str) -> bool, what: &str) -> String {
        if let Some(l) = self.seen.iter().find(|l| pred(l)) {
            return l.clone();
        }
        let deadline = Instant::now() + DEADLINE;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if pred(&line) {
                        return line;
                    }
                }
                Err(_) => panic!(
                    "hub log: no {what} within {DEADLINE:?}; got {:#?}",
                    self.seen
                ),
            }
        }
    }
}

impl Drop for HubProcess {
    fn drop(&mut self) {
        // Only if the test did not stop it already.
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

struct Member {
    name: &'static str,
    driver: Driver,
    client: HubClient,
    events: Vec<HubEvent>,
}

impl Member {
    fn connect(name: &'static str, hub: SocketAddr) -> Member {
        let config = Config {
            accept_incoming: false,
            ..hub::endpoint_config()
        };
        let mut driver = Driver::bind("127.0.0.1:0", config).expect("bind a member");
        let conn = driver.connect(hub, &[]).expect("connect starts");
        let client = HubClient::new(conn, driver.endpoint().config()).expect("hub client");
        Member {
            name,
            driver,
            client,
            events: Vec::new(),
        }
    }

    fn user(&self) -> u16 {
        self.client.user_id().expect("connected")
    }

    fn turn(&mut self) {
        self.driver.update().expect("socket works");
        let now = self.driver.now();
        while let Some(e) = self.client.next_event(self.driver.endpoint_mut(), now) {
            self.events.push(e);
        }
        self.driver.flush();
    }

    fn joined(&self) -> Option<RoomId> {
        self.events.iter().find_map(|e| match e {
            HubEvent::Joined { room, .. } => Some(*room),
            _ => None,
        })
    }

    /// The relayed messages received: (sender, target, payload), by sender then payload.
    fn messages(&self) -> Vec<(u16, Target, Bytes)> {
        let mut v: Vec<_> = self
            .events
            .iter()
            .filter_map(|e| match e {
                HubEvent::Message {
                    from, to, payload, ..
                } => Some((*from, *to, payload.clone())),
                _ => None,
            })
            .collect();
        sort(&mut v);
        v
    }

    fn got(&self, payload: &str) -> bool {
        self.events.iter().any(|e| {
            matches!(e, HubEvent::Message { payload: p, .. } if p.as_ref() == payload.as_bytes())
        })
    }
}

/// Messages in a fixed order (user ids depend on who connected first).
fn sort(v: &mut [(u16, Target, Bytes)]) {
    v.sort_by(|a, b| (a.0, &a.2).cmp(&(b.0, &b.2)));
}

fn sorted<const N: usize>(mut v: [(u16, Target, Bytes); N]) -> [(u16, Target, Bytes); N] {
    sort(&mut v);
    v
}

/// Runs every member's turn until `done` holds, or panics after the deadline naming `what`.
fn pump(members: &mut [Member], what: &str, mut done: impl FnMut(&[Member]) -> bool) {
    let deadline = Instant::now() + DEADLINE;
    loop {
        for m in members.iter_mut() {
            m.turn();
        }
        if done(members) {
            return;
        }
        if Instant::now() > deadline {
            let seen: Vec<_> = members.iter().map(|m| (m.name, &m.events)).collect();
            panic!("no {what} within {DEADLINE:?}; events: {seen:#?}");
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[test]
fn three_members_talk_through_the_hub_binary() {
    let mut hub = HubProcess::start();
    let mut m: Vec<Member> = ["alice", "bob", "carol"]
        .into_iter()
        .map(|name| Member::connect(name, hub.addr))
        .collect();
    pump(&mut m, "connections", |m| {
        m.iter().all(|m| m.client.user_id().is_some())
    });
    let (alice, bob, carol) = (m[0].user(), m[1].user(), m[2].user());

    // Alice creates the lobby; Bob and Carol join it once it exists.
    let options = RoomOptions {
        metadata: b"alice".to_vec(),
        ..RoomOptions::default()
    };
    let a = &mut m[0];
    a.client
        .create_room(a.driver.endpoint_mut(), "lobby", &options)
        .expect("create");
    pump(&mut m, "room created", |m| m[0].joined().is_some());
    let room = m[0].joined().expect("joined");
    for member in &mut m[1..] {
        let name = member.name;
        member
            .client
            .join_room(member.driver.endpoint_mut(), "lobby", b"", name.as_bytes())
            .expect("join");
    }
    pump(&mut m, "joins and introductions", |m| {
        let users: Vec<u16> = m.iter().map(Member::user).collect();
        m.iter().all(|x| {
            x.joined() == Some(room)
                && users
                    .iter()
                    .all(|&u| u == x.user() || x.client.is_introduced(u))
                && x.client.room(room).is_some_and(|r| r.members.len() == 3)
        })
    });
    // Everyone sees everyone's metadata, and the owner is Alice.
    let view = m[2].client.room(room).expect("carol's view").clone();
    assert_eq!(view.owner, alice);
    assert_eq!(view.members[0].user, alice, "the oldest member first");
    // Bob's and Carol's joins race each other to the hub: compare by name.
    let mut names: Vec<(u16, &[u8])> = view
        .members
        .iter()
        .map(|x| (x.user, x.metadata.as_ref()))
        .collect();
    names.sort_by_key(|x| x.1);
    assert_eq!(
        names,
        [(alice, &b"alice"[..]), (bob, b"bob"), (carol, b"carol")]
    );

    // To one user, to the room, to the room but the sender; each sender ends with a marker
    // to the whole room on the same ordered channel.
    let send = |x: &mut Member, to: Target, text: &str| {
        x.client
            .send(
                x.driver.endpoint_mut(),
                to,
                ORDERED,
                text.as_bytes().to_vec(),
            )
            .expect("send");
    };
    send(&mut m[0], Target::User(bob), "alice to bob");
    send(&mut m[0], Target::Room(room), "alice done");
    send(&mut m[1], Target::Room(room), "bob to all");
    send(
        &mut m[2],
        Target::RoomExceptSender(room),
        "carol to the others",
    );
    send(&mut m[2], Target::Room(room), "carol done");
    pump(&mut m, "the messages and markers", |m| {
        m.iter()
            .all(|x| x.got("alice done") && x.got("bob to all") && x.got("carol done"))
    });
    let b = |s: &str| Bytes::copy_from_slice(s.as_bytes());
    let (r, rx) = (Target::Room(room), Target::RoomExceptSender(room));
    assert_eq!(
        m[0].messages(),
        sorted([
            (alice, r, b("alice done")),
            (bob, r, b("bob to all")),
            (carol, r, b("carol done")),
            (carol, rx, b("carol to the others")),
        ])
    );
    assert_eq!(
        m[1].messages(),
        sorted([
            (alice, r, b("alice done")),
            (alice, Target::User(bob), b("alice to bob")),
            (bob, r, b("bob to all")),
            (carol, r, b("carol done")),
            (carol, rx, b("carol to the others")),
        ])
    );
    assert_eq!(
        m[2].messages(),
        sorted([
            (alice, r, b("alice done")),
            (bob, r, b("bob to all")),
            (carol, r, b("carol done")),
        ])
    );

    // A request from Bob to Alice, answered by Alice, through the hub.
    let x = &mut m[1];
    let now = x.driver.now();
    let id = x
        .client
        .request(x.driver.endpoint_mut(), now, alice, 2, b"ping?")
        .expect("request");
    let request = |m: &[Member]| {
        m[0].events.iter().find_map(|e| match e {
            HubEvent::Request { request, payload } => Some((*request, payload.clone())),
            _ => None,
        })
    };
    pump(&mut m, "the request", |m| request(m).is_some());
    let (req, payload) = request(&m).expect("the request");
    assert_eq!((req.from, payload.as_ref()), (bob, &b"ping?"[..]));
    let mut answer = b"pong:".to_vec();
    answer.extend_from_slice(&payload);
    let a = &mut m[0];
    a.client
        .respond(a.driver.endpoint_mut(), req, &answer)
        .expect("respond");
    pump(&mut m, "the response", |m| {
        m[1].events
            .iter()
            .any(|e| matches!(e, HubEvent::Response { id: i, .. } if *i == id))
    });
    let response = m[1].events.iter().find_map(|e| match e {
        HubEvent::Response {
            id: i,
            from,
            payload,
        } if *i == id => Some((*from, payload.clone())),
        _ => None,
    });
    assert_eq!(response, Some((alice, b("pong:ping?"))));

    // The hub logged a status line with the room and its members (after logging their
    // connects and the room's opening, which it does as they happen).
    hub.wait_line(
        |l| l.contains("status") && l.contains("rooms=1") && l.contains("members=3"),
        "status line with the room and its members",
    );
    hub.wait_line(
        |l| l.contains("room opened") && l.contains("name=lobby"),
        "room opened",
    );
    assert_eq!(
        hub.seen
            .iter()
            .filter(|l| l.contains("member connected"))
            .count(),
        3,
        "{:#?}",
        hub.seen
    );

    // Carol leaves; the others hear it with the reason.
    let c = &mut m[2];
    c.client
        .leave_room(c.driver.endpoint_mut(), room)
        .expect("leave");
    pump(&mut m, "carol's leave", |m| {
        m[..2].iter().all(|x| {
            x.events.iter().any(|e| {
                matches!(e, HubEvent::PeerLeft { user, reason: LeaveReason::Left, .. } if *user == carol)
            })
        }) && m[2]
            .events
            .iter()
            .any(|e| matches!(e, HubEvent::Done { .. } | HubEvent::RoomLeft { .. }))
    });

    stop(&mut hub, &mut m);
}

/// SIGINT: the hub disconnects every member with `CLOSE_SHUTDOWN` and exits 0.
#[cfg(unix)]
fn stop(hub: &mut HubProcess, m: &mut [Member]) {
    let pid = hub.child.id().to_string();
    let status = Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .expect("kill runs");
    assert!(status.success());
    pump(m, "the hub's goodbye", |m| {
        m.iter().all(|x| {
            x.events.iter().any(|e| {
                matches!(
                    e,
                    HubEvent::Transport(Event::Disconnected {
                        reason: DisconnectReason::ClosedByPeer {
                            code: CLOSE_SHUTDOWN
                        },
                        ..
                    })
                )
            })
        })
    });
    let deadline = Instant::now() + DEADLINE;
    let status = loop {
        if let Some(status) = hub.child.try_wait().expect("wait") {
            break status;
        }
        assert!(Instant::now() < deadline, "the hub did not exit");
        std::thread::sleep(Duration::from_millis(5));
    };
    assert!(status.success(), "hub exit status {status}");
    hub.wait_line(|l| l.contains("stopped"), "the stop line");
}

#[cfg(not(unix))]
fn stop(_hub: &mut HubProcess, _m: &mut [Member]) {
    // No SIGINT to send: the guard kills the hub.
}

/// The same server in-process ([`shoal_mio::hub::HubServer`] on a thread): what it reports,
/// and its shutdown through a `Stopper`.
#[test]
fn an_in_process_hub_reports_members_and_rooms_and_says_goodbye() {
    use shoal_mio::hub::{HubServer, HubServerEvent};
    use shoal_std::shoal_proto::hub::HubConfig;

    let mut server = HubServer::bind("127.0.0.1:0", hub::endpoint_config(), HubConfig::default())
        .expect("hub binds");
    let addr = server.local_addr();
    let stopper = server.stopper();
    let thread = std::thread::spawn(move || {
        let mut seen = Vec::new();
        server.run(|e| seen.push(e.clone())).map(|()| seen)
    });

    let mut m = vec![Member::connect("dora", addr)];
    pump(&mut m, "the connection", |m| {
        m[0].client.user_id().is_some()
    });
    let d = &mut m[0];
    d.client
        .create_room(d.driver.endpoint_mut(), "den", &RoomOptions::default())
        .expect("create");
    pump(&mut m, "the room", |m| m[0].joined().is_some());
    let user = m[0].user();

    stopper.stop();
    pump(&mut m, "the hub's goodbye", |m| {
        m[0].events.iter().any(|e| {
            matches!(
                e,
                HubEvent::Transport(Event::Disconnected {
                    reason: DisconnectReason::ClosedByPeer {
                        code: CLOSE_SHUTDOWN
                    },
                    ..
                })
            )
        })
    });
    let seen = thread.join().expect("hub thread").expect("hub ran");
    let kinds: Vec<String> = seen
        .iter()
        .map(|e| match e {
            HubServerEvent::Connected { user: u, .. } => format!("connected {}", *u == user),
            HubServerEvent::RoomOpened { name, owner, .. } => {
                format!(
                    "opened {} {}",
                    String::from_utf8_lossy(name),
                    *owner == user
                )
            }
            HubServerEvent::Disconnected {
                user: u, reason, ..
            } => format!("disconnected {} {reason:?}", *u == Some(user)),
            HubServerEvent::RoomClosed { name, .. } => {
                format!("closed {}", String::from_utf8_lossy(name))
            }
            other => format!("{other:?}"),
        })
        .collect();
    assert_eq!(
        kinds,
        [
            "connected true",
            "opened den true",
            // The room the member's leaving closes is reported before the member's end.
            "closed den",
            "disconnected true ClosedLocally",
        ]
    );
}

/// An in-process hub whose application reads no reports holds at most
/// `MAX_WAITING_REPORTS` of them: the rest wait in the endpoint (data refused and resent as
/// its queue does), none is lost once the application reads again, and a shutdown reports
/// every member leaving however many reports wait.
#[test]
fn an_in_process_hub_holds_a_bounded_number_of_unread_reports() {
    use shoal_mio::hub::{HubServer, HubServerEvent, MAX_WAITING_REPORTS};
    use shoal_std::shoal_proto::hub::HubConfig;

    const SENT: usize = MAX_WAITING_REPORTS + 1000;
    let mut server = HubServer::bind("127.0.0.1:0", hub::endpoint_config(), HubConfig::default())
        .expect("hub binds");
    let config = Config {
        accept_incoming: false,
        ..hub::endpoint_config()
    };
    let mut member = Driver::bind("127.0.0.1:0", config).expect("bind a member");
    let conn = member
        .connect(server.local_addr(), &[])
        .expect("connect starts");
    let mut sent = 0;
    let mut messages = 0;
    let mut left = false;
    let read = |server: &mut HubServer, messages: &mut usize, left: &mut bool| {
        while let Some(event) = server.poll_event() {
            match event {
                HubServerEvent::Other(Event::Message { payload, .. }) => {
                    assert_eq!(&payload[..], &[7; 16]);
                    *messages += 1;
                }
                HubServerEvent::Disconnected { .. } => *left = true,
                _ => {}
            }
        }
    };
    let deadline = Instant::now() + DEADLINE;
    // Reliable messages to the hub itself (no relay target), each one a report, in two
    // floods: read after the first, a shutdown after the second.
    for flood in [SENT, 2 * SENT] {
        // The application reads nothing until every message was sent and the hub is full.
        while !(sent == flood && server.waiting_reports() == MAX_WAITING_REPORTS) {
            assert!(
                Instant::now() < deadline,
                "{sent} sent, {messages} reported"
            );
            member.update().expect("member socket");
            while member.poll_event().is_some() {}
            while sent < flood && member.send(conn, 2, Bytes::from_static(&[7; 16])).is_ok() {
                sent += 1;
            }
            member.flush();
            server
                .run_once(Some(Duration::from_millis(1)))
                .expect("hub socket");
            assert!(
                server.waiting_reports() <= MAX_WAITING_REPORTS,
                "{} reports wait",
                server.waiting_reports()
            );
        }
        if flood == 2 * SENT {
            break;
        }
        while messages < flood {
            assert!(Instant::now() < deadline, "{messages} of {flood} reported");
            read(&mut server, &mut messages, &mut left);
            member.update().expect("member socket");
            member.flush();
            server
                .run_once(Some(Duration::from_millis(1)))
                .expect("hub socket");
        }
    }
    server
        .shutdown(Duration::from_millis(300))
        .expect("hub socket");
    read(&mut server, &mut messages, &mut left);
    // (What the member had not got through yet is lost with the connection.)
    assert!(messages >= SENT + MAX_WAITING_REPORTS, "{messages}");
    assert!(left, "the member's Disconnected is reported");
}
