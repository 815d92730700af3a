//! Two real drivers on 127.0.0.1, bounded in time: every test gives up after a deadline.

use std::collections::HashSet;
use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use shoal_std::{
    Config, ConnectionHandle, DisconnectReason, Driver, Event, IoMode, NetError, Network, Output,
    ThreadError, SHUTDOWN_CODE,
};

const DEADLINE: Duration = Duration::from_secs(10);

fn server_config(seed: u64) -> Config {
    Config {
        seed,
        ..Config::default()
    }
}

fn client_config(seed: u64) -> Config {
    Config {
        seed,
        accept_incoming: false,
        ..Config::default()
    }
}

/// A driver and every event it produced.
struct Peer {
    driver: Driver,
    events: Vec<Event>,
}

impl Peer {
    fn bind(config: Config) -> Peer {
        Peer {
            driver: Driver::bind("127.0.0.1:0", config).expect("bind on loopback"),
            events: Vec::new(),
        }
    }

    fn addr(&self) -> SocketAddr {
        self.driver.local_addr()
    }

    fn collect(&mut self) {
        self.events.extend(self.driver.events());
    }

    fn connected(&self) -> Option<ConnectionHandle> {
        self.events.iter().find_map(|e| match e {
            Event::Connected { conn, .. } => Some(*conn),
            _ => None,
        })
    }

    /// Payloads received on `channel`, in arrival order.
    fn messages(&self, channel: u8) -> Vec<String> {
        self.events
            .iter()
            .filter_map(|e| match e {
                Event::Message {
                    channel: c,
                    payload,
                    ..
                } if *c == channel => Some(String::from_utf8_lossy(payload).into_owned()),
                _ => None,
            })
            .collect()
    }
}

/// Drives both peers with the never-blocking `update` (a game's frame loop, at ~1 kHz) until
/// `done` holds; panics with `what` at the deadline.
fn run_frames(a: &mut Peer, b: &mut Peer, what: &str, mut done: impl FnMut(&Peer, &Peer) -> bool) {
    let deadline = Instant::now() + DEADLINE;
    while !done(a, b) {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        a.driver.update().expect("update a");
        b.driver.update().expect("update b");
        a.collect();
        b.collect();
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Like `run_frames`, with the blocking `poll`.
fn run_polling(a: &mut Peer, b: &mut Peer, what: &str, mut done: impl FnMut(&Peer, &Peer) -> bool) {
    let deadline = Instant::now() + DEADLINE;
    while !done(a, b) {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        a.driver
            .poll(Some(Duration::from_millis(2)))
            .expect("poll a");
        b.driver
            .poll(Some(Duration::from_millis(2)))
            .expect("poll b");
        a.collect();
        b.collect();
    }
}

fn connect(client: &mut Peer, server: &mut Peer) -> (ConnectionHandle, ConnectionHandle) {
    let server_addr = server.addr();
    let conn = client
        .driver
        .connect(server_addr, b"join")
        .expect("connect starts");
    run_frames(client, server, "both sides connected", |c, s| {
        c.connected().is_some() && s.connected().is_some()
    });
    let server_side = server.connected().expect("server connected");
    assert_eq!(client.connected(), Some(conn));
    (conn, server_side)
}

fn indices(messages: &[String], prefix: &str) -> Vec<u32> {
    messages
        .iter()
        .map(|m| {
            m.strip_prefix(prefix)
                .and_then(|i| i.parse().ok())
                .unwrap_or_else(|| panic!("unexpected payload {m:?}"))
        })
        .collect()
}

/// What each delivery kind promises, checked on the messages `0..count` sent on the default
/// channels: 0 unreliable, 1 sequenced, 2 reliable, 3 ordered.
fn check_delivery(peer: &Peer, prefix: &str, count: u32) {
    let unreliable = indices(&peer.messages(0), &format!("{prefix}0-"));
    let unique: HashSet<_> = unreliable.iter().collect();
    assert_eq!(unique.len(), unreliable.len(), "unreliable duplicated");
    assert!(!unreliable.is_empty() && unreliable.iter().all(|&i| i < count));

    let sequenced = indices(&peer.messages(1), &format!("{prefix}1-"));
    assert!(!sequenced.is_empty());
    assert!(
        sequenced.windows(2).all(|w| w[0] < w[1]),
        "sequenced delivered an older message after a newer one: {sequenced:?}"
    );

    let mut reliable = indices(&peer.messages(2), &format!("{prefix}2-"));
    reliable.sort_unstable();
    assert_eq!(
        reliable,
        (0..count).collect::<Vec<_>>(),
        "reliable: each exactly once"
    );

    let ordered = indices(&peer.messages(3), &format!("{prefix}3-"));
    assert_eq!(
        ordered,
        (0..count).collect::<Vec<_>>(),
        "ordered: each once, in order"
    );
}

fn all_arrived(peer: &Peer, count: usize) -> bool {
    !peer.messages(0).is_empty()
        && !peer.messages(1).is_empty()
        && peer.messages(2).len() >= count
        && peer.messages(3).len() >= count
}

#[test]
fn two_drivers_exchange_messages_on_every_channel_kind() {
    const COUNT: u32 = 20;
    let mut server = Peer::bind(server_config(1));
    let mut client = Peer::bind(client_config(2));
    let (client_conn, server_conn) = connect(&mut client, &mut server);

    for i in 0..COUNT {
        for channel in 0..4u8 {
            client
                .driver
                .send(client_conn, channel, format!("c{channel}-{i}"))
                .expect("client send");
            server
                .driver
                .send(server_conn, channel, format!("s{channel}-{i}"))
                .expect("server send");
        }
    }
    run_frames(
        &mut client,
        &mut server,
        "every channel's messages",
        |c, s| all_arrived(c, COUNT as usize) && all_arrived(s, COUNT as usize),
    );
    check_delivery(&server, "c", COUNT);
    check_delivery(&client, "s", COUNT);
}

#[test]
fn reliable_message_and_request_make_round_trips() {
    let mut server = Peer::bind(server_config(3));
    let mut client = Peer::bind(client_config(4));
    let (conn, _) = connect(&mut client, &mut server);

    // A reliable message, echoed by the server's application.
    client.driver.send(conn, 2, "ping").expect("send ping");
    run_polling(&mut client, &mut server, "the ping", |_, s| {
        !s.messages(2).is_empty()
    });
    for event in std::mem::take(&mut server.events) {
        if let Event::Message {
            conn,
            channel: 2,
            payload,
            ..
        } = event
        {
            let reply = [&b"echo:"[..], &payload].concat();
            server.driver.send(conn, 2, reply).expect("echo");
        }
    }
    run_polling(&mut client, &mut server, "the echo", |c, _| {
        !c.messages(2).is_empty()
    });
    assert_eq!(client.messages(2), ["echo:ping"]);

    // A request and its response.
    let id = client
        .driver
        .request(conn, 3, "what time is it")
        .expect("request");
    run_polling(&mut client, &mut server, "the request", |_, s| {
        s.events.iter().any(|e| matches!(e, Event::Request { .. }))
    });
    let (server_conn, request, payload) = server
        .events
        .iter()
        .find_map(|e| match e {
            Event::Request {
                conn,
                request,
                payload,
                ..
            } => Some((*conn, *request, payload.clone())),
            _ => None,
        })
        .expect("request event");
    assert_eq!(payload, "what time is it");
    server
        .driver
        .respond(server_conn, request, "tea time")
        .expect("respond");
    run_polling(&mut client, &mut server, "the response", |c, _| {
        c.events.iter().any(|e| matches!(e, Event::Response { .. }))
    });
    let response = client.events.iter().find_map(|e| match e {
        Event::Response {
            id: got, payload, ..
        } => Some((*got, payload.clone())),
        _ => None,
    });
    assert_eq!(response, Some((id, "tea time".into())));
}

#[test]
fn a_connection_attempt_to_a_silent_port_times_out_and_the_driver_keeps_running() {
    // A port with no Shoal endpoint: a bound socket that never answers.
    let silent = UdpSocket::bind("127.0.0.1:0").expect("bind silent socket");
    let mut client = Peer::bind(Config {
        handshake_timeout: Duration::from_millis(300),
        handshake_resend_interval: Duration::from_millis(50),
        ..client_config(5)
    });
    let conn = client
        .driver
        .connect(silent.local_addr().expect("address"), &[])
        .expect("connect starts");
    let deadline = Instant::now() + DEADLINE;
    let reason = loop {
        assert!(Instant::now() < deadline, "the handshake never timed out");
        // No explicit timeout: `poll` must wake up for the endpoint's own timers.
        client.driver.poll(None).expect("poll");
        client.collect();
        if let Some(reason) = client.events.iter().find_map(|e| match e {
            Event::ConnectFailed { conn: c, reason } if *c == conn => Some(*reason),
            _ => None,
        }) {
            break reason;
        }
    };
    assert_eq!(reason, DisconnectReason::TimedOut);
    let mut buf = [0u8; 2048];
    silent.set_nonblocking(true).expect("nonblocking");
    assert!(silent.recv_from(&mut buf).is_ok(), "the handshake was sent");
}

#[test]
fn poll_sleeps_until_its_timeout_and_update_never_blocks() {
    let mut driver = Driver::bind("127.0.0.1:0", server_config(6)).expect("bind");
    let start = Instant::now();
    driver.update().expect("update");
    assert!(start.elapsed() < Duration::from_secs(1), "update blocked");

    let start = Instant::now();
    driver.poll(Some(Duration::from_millis(60))).expect("poll");
    let slept = start.elapsed();
    assert!(
        slept >= Duration::from_millis(50),
        "poll returned early: {slept:?}"
    );
    assert!(slept < Duration::from_secs(5), "poll overslept: {slept:?}");
}

#[test]
fn poll_returns_when_a_datagram_arrives() {
    let mut driver = Driver::bind("127.0.0.1:0", server_config(7)).expect("bind");
    let other = UdpSocket::bind("127.0.0.1:0").expect("bind");
    other
        .send_to(b"not shoal", driver.local_addr())
        .expect("send");
    let start = Instant::now();
    driver.poll(Some(Duration::from_secs(5))).expect("poll");
    assert!(
        start.elapsed() < Duration::from_secs(4),
        "poll ignored the datagram"
    );
    assert_eq!(driver.endpoint().stats().datagrams_received, 1);
}

#[test]
fn an_invalid_config_is_an_invalid_input_error() {
    let config = Config {
        mtu: 10,
        ..Config::default()
    };
    let err = Driver::bind("127.0.0.1:0", config).expect_err("mtu 10 is invalid");
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);
    // One too large to allocate is refused the same way, before anything is sized from it.
    let absurd = Config {
        mtu: usize::MAX / 2,
        ..Config::default()
    };
    let err = Driver::bind("127.0.0.1:0", absurd).expect_err("refused");
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);
}

#[test]
fn a_zero_seed_is_replaced_and_a_set_seed_is_kept() {
    let random = Driver::bind("127.0.0.1:0", server_config(0)).expect("bind");
    assert_ne!(random.endpoint().config().seed, 0);
    let fixed = Driver::bind("127.0.0.1:0", server_config(99)).expect("bind");
    assert_eq!(fixed.endpoint().config().seed, 99);
}

/// Waits for the first output `pick` accepts, skipping others.
fn wait_for<T>(
    handle: &shoal_std::Handle,
    what: &str,
    mut pick: impl FnMut(Output) -> Option<T>,
) -> T {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "timed out waiting for: {what}");
        if let Some(output) = handle.next_output(left).expect("thread running") {
            if let Some(found) = pick(output) {
                return found;
            }
        }
    }
}

#[test]
fn background_thread_delivers_a_message_and_shuts_down_cleanly() {
    let server = shoal_std::spawn("127.0.0.1:0", server_config(8)).expect("spawn server");
    let mut client = shoal_std::spawn("127.0.0.1:0", client_config(9)).expect("spawn client");

    let conn = client.connect(server.local_addr(), b"hi").expect("connect");
    client.send(conn, 2, "from the thread").expect("send");
    let server_conn = wait_for(&server, "Connected", |o| match o {
        Output::Event(Event::Connected { conn, .. }) => Some(conn),
        _ => None,
    });
    let payload = wait_for(&server, "the message", |o| match o {
        Output::Event(Event::Message { payload, .. }) => Some(payload),
        _ => None,
    });
    assert_eq!(payload, "from the thread");

    // A refused send comes back as an output, not as silence.
    client
        .send(conn, 9, "no such channel")
        .expect("handed over");
    let error = wait_for(&client, "SendFailed", |o| match o {
        Output::SendFailed { error, .. } => Some(error),
        _ => None,
    });
    assert_eq!(error, shoal_std::SendError::UnknownChannel(9));

    // Shutting the client down closes its connection; the server hears it.
    client.shutdown().expect("client thread ended cleanly");
    let reason = wait_for(&server, "Disconnected", |o| match o {
        Output::Event(Event::Disconnected { conn, reason }) if conn == server_conn => Some(reason),
        _ => None,
    });
    assert_eq!(
        reason,
        DisconnectReason::ClosedByPeer {
            code: SHUTDOWN_CODE
        }
    );

    // Idempotent, and the handle reports the stop.
    client.shutdown().expect("second shutdown is a no-op");
    assert_eq!(client.send(conn, 2, "late"), Err(ThreadError::Stopped));
    assert_eq!(
        client.connect(server.local_addr(), &[]),
        Err(ThreadError::Stopped)
    );

    // Dropping the server's handle stops its thread and closes its socket: the port is free.
    let server_addr = server.local_addr();
    drop(server);
    UdpSocket::bind(server_addr).expect("the server's port was released");
}

/// Drives one peer until `done` holds, for at most `limit`.
fn run_alone(peer: &mut Peer, limit: Duration, what: &str, done: impl Fn(&Peer) -> bool) {
    let deadline = Instant::now() + limit;
    while !done(peer) {
        assert!(Instant::now() < deadline, "not within {limit:?}: {what}");
        peer.driver.update().expect("update");
        peer.collect();
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn closed_by_peer(peer: &Peer, code: u16) -> bool {
    peer.events.iter().any(|e| {
        matches!(e, Event::Disconnected { reason: DisconnectReason::ClosedByPeer { code: c }, .. } if *c == code)
    })
}

#[test]
fn dropping_a_connected_driver_tells_its_peer_at_once() {
    let mut server = Peer::bind(server_config(41));
    let mut client = Peer::bind(client_config(42));
    connect(&mut client, &mut server);
    drop(client);
    // Far under the 10 s idle timeout: the goodbye left with the drop.
    run_alone(
        &mut server,
        Duration::from_secs(2),
        "the peer's goodbye",
        |s| closed_by_peer(s, SHUTDOWN_CODE),
    );
}

#[test]
fn disconnect_sends_its_notice_without_waiting_for_an_update() {
    let mut server = Peer::bind(server_config(43));
    let mut client = Peer::bind(client_config(44));
    let (conn, _) = connect(&mut client, &mut server);
    client.driver.disconnect(conn, 7);
    // The client is never updated again.
    run_alone(
        &mut server,
        Duration::from_secs(2),
        "the close notice",
        |s| closed_by_peer(s, 7),
    );
}

#[test]
fn a_bind_error_names_the_address_and_keeps_the_os_error_kind() {
    let taken = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("address");
    let e = Driver::bind(addr, server_config(45)).expect_err("port taken");
    assert_eq!(e.kind(), std::io::ErrorKind::AddrInUse);
    assert!(e.to_string().contains(&addr.to_string()), "{e}");
}

#[test]
fn connecting_across_address_families_is_an_error_at_connect() {
    let mut client = Peer::bind(client_config(46));
    let v6: SocketAddr = "[::1]:7777".parse().expect("address");
    let e = client
        .driver
        .connect(v6, &[])
        .expect_err("IPv4 socket, IPv6 peer");
    assert!(matches!(e, shoal_std::ConnectError::AddressFamily { remote, .. } if remote == v6));
    assert!(e.to_string().contains("family"), "{e}");
}

/// Game code that knows only [`Network`]: a server that welcomes each player by the name in
/// its connect data (kept as the connection's user data... here, in the game's own table)
/// and echoes every request.
fn serve(net: &mut impl Network, events: &mut Vec<Event>, names: &mut Vec<String>) {
    net.drain_events(events);
    for event in events.drain(..) {
        match event {
            Event::Connected { conn, identity, .. } => {
                let name = String::from_utf8_lossy(&identity.connect_data).into_owned();
                let text = format!("welcome {name}");
                net.broadcast(3, text, None);
                names.push(name);
                let _ = conn;
            }
            Event::Request {
                conn,
                request,
                payload,
                ..
            } => net.respond(conn, request, payload).expect("respond"),
            _ => {}
        }
    }
}

#[test]
fn the_same_network_code_drives_a_driver_and_the_background_thread() {
    let mut server = Peer::bind(server_config(31));
    let mut client: shoal_std::Handle =
        shoal_std::spawn("127.0.0.1:0", client_config(32)).expect("spawn");
    let conn = Network::connect(&mut client, server.addr(), b"ada").expect("connect");
    let mut events = Vec::new();
    let mut names = Vec::new();
    let mut seen = Vec::new();
    let mut asked = None;
    let deadline = Instant::now() + DEADLINE;
    while !seen.iter().any(|e| matches!(e, Event::Response { .. })) {
        assert!(Instant::now() < deadline, "no response: {seen:?}");
        server
            .driver
            .poll(Some(Duration::from_millis(5)))
            .expect("poll");
        serve(&mut *server.driver, &mut events, &mut names); // a Driver, through its core
        client.drain_events(&mut seen); // the thread, through the trait
        if asked.is_none() && seen.iter().any(|e| matches!(e, Event::Connected { .. })) {
            asked = Some(Network::request(&mut client, conn, 2, "ping").expect("request"));
        }
    }
    assert_eq!(names, vec!["ada".to_string()]);
    assert!(seen
        .iter()
        .any(|e| matches!(e, Event::Message { payload, .. } if payload == "welcome ada")));
    assert!(seen.iter().any(|e| matches!(e, Event::Response { id, payload, .. } if Some(*id) == asked && payload == "ping")));
    // Figures and peers through both.
    assert_eq!(Network::peers(&client), vec![conn]);
    let stats = Network::link_stats(&client, conn).expect("live");
    // (Bytes per second need a whole second of traffic: proto's tests pin them.)
    assert!(stats.rtt > Duration::ZERO, "{stats:?}");
    let server_conn = server.driver.peers()[0];
    assert!(server.driver.link_stats(server_conn).is_some());
    client.shutdown().expect("clean");
    assert_eq!(
        Network::send(&mut client, conn, 2, "late"),
        Err(NetError::Stopped)
    );
}

/// Ten clients each send 100 reliable messages at once to a server that reads in `mode`;
/// every message arrives, in each client's order.
fn bursts_from_many_clients_all_arrive(mode: IoMode) {
    const CLIENTS: usize = 10;
    const COUNT: u32 = 100;
    let mut server = Driver::bind_with("127.0.0.1:0", server_config(40), mode).expect("bind");
    if mode == IoMode::Portable || !cfg!(any(target_os = "linux", target_os = "android")) {
        assert_eq!(server.io_mode(), IoMode::Portable);
    } else {
        assert_eq!(server.io_mode(), IoMode::Batched);
    }
    let mut clients: Vec<(Driver, ConnectionHandle)> = (0..CLIENTS)
        .map(|i| {
            let mut driver =
                Driver::bind("127.0.0.1:0", client_config(41 + i as u64)).expect("bind");
            let conn = driver.connect(server.local_addr(), &[]).expect("connect");
            (driver, conn)
        })
        .collect();
    for (client, conn) in &mut clients {
        for i in 0..COUNT {
            client.send(*conn, 3, format!("{i}")).expect("send");
        }
    }
    let mut received: std::collections::HashMap<ConnectionHandle, Vec<u32>> = Default::default();
    let deadline = Instant::now() + DEADLINE;
    while received.values().map(Vec::len).sum::<usize>() < CLIENTS * COUNT as usize {
        assert!(
            Instant::now() < deadline,
            "{mode:?}: timed out; got {received:?}"
        );
        for (client, _) in &mut clients {
            client.update().expect("client update");
            client.events().for_each(drop);
        }
        server.update().expect("server update");
        for event in server.events() {
            if let Event::Message { conn, payload, .. } = event {
                let index = String::from_utf8_lossy(&payload).parse().expect("index");
                received.entry(conn).or_default().push(index);
            }
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(received.len(), CLIENTS);
    for indices in received.values() {
        assert_eq!(
            *indices,
            (0..COUNT).collect::<Vec<_>>(),
            "{mode:?}: in order"
        );
    }
}

#[test]
fn bursts_from_many_clients_all_arrive_with_batched_reads() {
    bursts_from_many_clients_all_arrive(IoMode::Batched);
}

#[test]
fn bursts_from_many_clients_all_arrive_with_portable_reads() {
    bursts_from_many_clients_all_arrive(IoMode::Portable);
}

/// A server that sends in `mode` sends 100 ordered messages at once to each of ten clients;
/// every message arrives, in order, and no send fails.
fn bursts_to_many_clients_all_arrive(mode: IoMode) {
    const CLIENTS: usize = 10;
    const COUNT: u32 = 100;
    let mut server = Driver::bind_with("127.0.0.1:0", server_config(50), mode).expect("bind");
    let mut clients: Vec<Driver> = (0..CLIENTS)
        .map(|i| {
            let mut driver =
                Driver::bind("127.0.0.1:0", client_config(51 + i as u64)).expect("bind");
            driver.connect(server.local_addr(), &[]).expect("connect");
            driver
        })
        .collect();
    let mut received: Vec<Vec<u32>> = vec![Vec::new(); CLIENTS];
    let mut sent = false;
    let deadline = Instant::now() + DEADLINE;
    while received.iter().map(Vec::len).sum::<usize>() < CLIENTS * COUNT as usize {
        assert!(
            Instant::now() < deadline,
            "{mode:?}: timed out; got {received:?}"
        );
        server.update().expect("server update");
        let peers = server.peers();
        if !sent && peers.len() == CLIENTS {
            for conn in peers {
                for i in 0..COUNT {
                    server.send(conn, 3, format!("{i}")).expect("send");
                }
            }
            sent = true;
            server.flush();
        }
        server.events().for_each(drop);
        for (client, got) in clients.iter_mut().zip(&mut received) {
            client.update().expect("client update");
            for event in client.events() {
                if let Event::Message { payload, .. } = event {
                    got.push(String::from_utf8_lossy(&payload).parse().expect("index"));
                }
            }
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    for got in &received {
        assert_eq!(*got, (0..COUNT).collect::<Vec<_>>(), "{mode:?}: in order");
    }
    assert_eq!(server.stats().send_errors, 0, "{mode:?}");
}

#[test]
fn bursts_to_many_clients_all_arrive_with_batched_sends() {
    bursts_to_many_clients_all_arrive(IoMode::Batched);
}

#[test]
fn bursts_to_many_clients_all_arrive_with_portable_sends() {
    bursts_to_many_clients_all_arrive(IoMode::Portable);
}

/// Whether this host's kernel takes segmented UDP sends (GSO), as `quinn-udp` finds out.
#[cfg(target_os = "linux")]
fn kernel_segments_sends() -> bool {
    let socket = UdpSocket::bind("127.0.0.1:0").expect("bind");
    quinn_udp::UdpSocketState::new((&socket).into()).is_ok_and(|s| s.max_gso_segments() > 1)
}

/// A server that sends in `mode` sends a 300 KB message and a few small ones after it to a
/// client reading in `client_mode` (with `update`, or with the blocking `poll` if
/// `polling`): everything arrives whole and in order, and no send fails. Returns the
/// server's driver counters.
fn a_large_message_arrives_whole(
    mode: IoMode,
    client_mode: IoMode,
    polling: bool,
) -> shoal_std::DriverStats {
    let payload: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let mut server = Driver::bind_with("127.0.0.1:0", server_config(60), mode).expect("bind");
    let mut client =
        Driver::bind_with("127.0.0.1:0", client_config(61), client_mode).expect("bind client");
    client.connect(server.local_addr(), &[]).expect("connect");
    let mut received: Vec<Vec<u8>> = Vec::new();
    let mut sent = false;
    let deadline = Instant::now() + DEADLINE;
    while received.len() < 4 {
        assert!(Instant::now() < deadline, "{mode:?}: timed out");
        server.update().expect("server update");
        if let (false, Some(&conn)) = (sent, server.peers().first()) {
            server.send(conn, 3, payload.clone()).expect("send");
            for i in 0..3u8 {
                server.send(conn, 3, vec![i; 10]).expect("send");
            }
            sent = true;
            server.flush();
        }
        server.events().for_each(drop);
        if polling {
            client
                .poll(Some(Duration::from_millis(1)))
                .expect("client poll");
        } else {
            client.update().expect("client update");
        }
        for event in client.events() {
            if let Event::Message { payload, .. } = event {
                received.push(payload.to_vec());
            }
        }
        if !polling {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    assert!(
        received[0] == payload,
        "{mode:?}: the large message arrives whole"
    );
    assert_eq!(received[1..], [vec![0u8; 10], vec![1; 10], vec![2; 10]]);
    let stats = server.stats();
    assert_eq!(stats.send_errors, 0, "{mode:?}: {stats:?}");
    stats
}

/// Most of the message's some 260 datagrams leave in trains, where the kernel takes them.
#[test]
fn a_large_message_leaves_in_segmented_sends_with_batched_io() {
    let stats = a_large_message_arrives_whole(IoMode::Batched, IoMode::Batched, false);
    #[cfg(target_os = "linux")]
    if kernel_segments_sends() {
        assert!(stats.segmented_datagrams >= 130, "{stats:?}");
    }
    let _ = stats;
}

/// A peer that reads one datagram at a time gets the trains cut up by its kernel.
#[test]
fn a_large_message_in_segmented_sends_arrives_whole_at_a_portable_client() {
    a_large_message_arrives_whole(IoMode::Batched, IoMode::Portable, false);
    a_large_message_arrives_whole(IoMode::Batched, IoMode::Portable, true);
}

/// The blocking `poll` of a batched driver reads as `update` does: a train of datagrams
/// (GRO joins a segmented send's datagrams again on the way in) read with one `recv_from`
/// would reach the endpoint as one datagram of tens of kilobytes, and be dropped.
#[test]
fn a_large_message_arrives_whole_at_a_batched_client_that_polls() {
    a_large_message_arrives_whole(IoMode::Batched, IoMode::Batched, true);
}

#[test]
fn a_large_message_arrives_whole_with_portable_io() {
    let stats = a_large_message_arrives_whole(IoMode::Portable, IoMode::Portable, false);
    assert_eq!(stats.segmented_sends, 0, "{stats:?}");
    a_large_message_arrives_whole(IoMode::Portable, IoMode::Portable, true);
}

/// Whether an IPv6 socket bound to `[::]` here also takes IPv4 (dual-stack): not on hosts
/// without IPv6 or with `bindv6only` set, where the dual-stack test has nothing to check.
fn dual_stack_available() -> bool {
    let Ok(v6) = UdpSocket::bind("[::]:0") else {
        return false;
    };
    let Ok(port) = v6.local_addr().map(|a| a.port()) else {
        return false;
    };
    let _ = v6.set_read_timeout(Some(Duration::from_secs(1)));
    let sent = UdpSocket::bind("127.0.0.1:0").and_then(|v4| v4.send_to(b"?", ("127.0.0.1", port)));
    sent.is_ok() && v6.recv_from(&mut [0; 8]).is_ok()
}

/// A driver on a dual-stack socket (`[::]`) sees IPv4 peers at their IPv4 addresses (not
/// `::ffff:a.b.c.d`, which it would hand on, to a hub's members on IPv4 sockets say, and
/// count apart from the peer's IPv4 address), and reaches IPv4 peers it connects to.
#[test]
fn a_dual_stack_driver_meets_ipv4_peers_at_their_ipv4_addresses() {
    if !dual_stack_available() {
        eprintln!("no dual-stack IPv6 socket here: nothing to check");
        return;
    }
    let mut server = Peer {
        driver: Driver::bind("[::]:0", server_config(61)).expect("bind [::]"),
        events: Vec::new(),
    };
    let port = server.addr().port();
    let mut client = Peer::bind(client_config(62));
    let conn = client
        .driver
        .connect(("127.0.0.1", port), b"v4")
        .expect("connect starts");
    run_frames(
        &mut client,
        &mut server,
        "an IPv4 client connected",
        |c, s| c.connected().is_some() && s.connected().is_some(),
    );
    let remote = server.events.iter().find_map(|e| match e {
        Event::Connected { remote, .. } => Some(*remote),
        _ => None,
    });
    assert_eq!(remote, Some(client.addr()), "seen at its IPv4 address");
    let server_side = server.connected().expect("server connected");
    client.driver.send(conn, 2, &b"up"[..]).expect("send");
    server
        .driver
        .send(server_side, 2, &b"down"[..])
        .expect("send");
    run_frames(&mut client, &mut server, "a message each way", |c, s| {
        c.messages(2) == ["down"] && s.messages(2) == ["up"]
    });

    // Connecting out from the dual-stack socket to an IPv4 address.
    let mut v4 = Peer::bind(server_config(63));
    let out = server
        .driver
        .connect(v4.addr(), b"out")
        .expect("an IPv6 socket may reach IPv4");
    run_frames(&mut server, &mut v4, "the IPv4 peer connected", |s, p| {
        p.connected().is_some()
            && s.events
                .iter()
                .any(|e| matches!(e, Event::Connected { conn, .. } if *conn == out))
    });
    assert_eq!(server.driver.stats().send_errors, 0);
}
