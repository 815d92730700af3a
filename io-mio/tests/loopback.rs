//! Real sockets on 127.0.0.1, bounded in time: every test gives up after a deadline.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::ops::ControlFlow;
use std::time::{Duration, Instant};

use mio::net::UdpSocket as MioUdpSocket;
use mio::{Events, Interest, Poll, Token};
use shoal_mio::{
    Config, ConnectionHandle, DisconnectReason, Event, EventLoop, IoMode, MioDriver, RunOutcome,
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

fn text(payload: &[u8]) -> String {
    String::from_utf8_lossy(payload).into_owned()
}

#[test]
fn drivers_in_a_caller_owned_poll_exchange_reliable_messages() {
    exchange_reliable_messages_in_a_caller_owned_poll(IoMode::Portable);
}

#[test]
fn drivers_in_a_caller_owned_poll_exchange_reliable_messages_with_batched_io() {
    exchange_reliable_messages_in_a_caller_owned_poll(IoMode::Batched);
}

/// Two drivers reading and sending in `mode` echo 50 reliable and 50 ordered messages.
fn exchange_reliable_messages_in_a_caller_owned_poll(mode: IoMode) {
    const COUNT: usize = 50;
    // The application's own event loop, with a source of its own besides Shoal's.
    const APP_SOCKET: Token = Token(1);
    const SERVER: Token = Token(7);
    const CLIENT: Token = Token(8);
    let mut poll = Poll::new().expect("poll");
    let mut events = Events::with_capacity(64);
    let mut app_socket = MioUdpSocket::bind(SocketAddr::from(([127, 0, 0, 1], 0))).expect("bind");
    poll.registry()
        .register(&mut app_socket, APP_SOCKET, Interest::READABLE)
        .expect("register app socket");

    let mut server =
        MioDriver::bind_with("127.0.0.1:0", server_config(1), mode).expect("bind server");
    let mut client =
        MioDriver::bind_with("127.0.0.1:0", client_config(2), mode).expect("bind client");
    server
        .register(poll.registry(), SERVER)
        .expect("register server");
    client
        .register(poll.registry(), CLIENT)
        .expect("register client");

    let conn = client
        .connect(server.local_addr(), b"mio")
        .expect("connect");
    for i in 0..COUNT {
        client.send(conn, 2, format!("reliable {i}")).expect("send");
        client.send(conn, 3, format!("ordered {i}")).expect("send");
    }
    // Something for the application's own socket, to show its events still reach it.
    let poke = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
    poke.send_to(b"app", app_socket.local_addr().expect("address"))
        .expect("send");

    let mut app_datagrams = 0;
    let mut echoes: HashMap<u8, Vec<String>> = HashMap::new();
    let mut client_connected = false;
    let deadline = Instant::now() + DEADLINE;
    while echoes.values().map(Vec::len).sum::<usize>() < 2 * COUNT {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "timed out; echoes so far: {echoes:?}");
        // Only the drivers' own timers (and the deadline) bound the sleep: no polling interval.
        let timeout = [server.next_timeout(), client.next_timeout(), Some(left)]
            .into_iter()
            .flatten()
            .min();
        poll.poll(&mut events, timeout).expect("poll");
        for event in events.iter() {
            match event.token() {
                SERVER => server.on_event(event).expect("server event"),
                CLIENT => client.on_event(event).expect("client event"),
                APP_SOCKET => {
                    let mut buf = [0u8; 64];
                    while let Ok((len, _)) = app_socket.recv_from(&mut buf) {
                        assert_eq!(&buf[..len], b"app");
                        app_datagrams += 1;
                    }
                }
                other => panic!("event for a token nobody registered: {other:?}"),
            }
        }
        while let Some(event) = server.poll_event() {
            if let Event::Message {
                conn,
                channel,
                payload,
                ..
            } = event
            {
                let reply = format!("echo {}", text(&payload));
                server.send(conn, channel, reply).expect("echo");
            }
        }
        while let Some(event) = client.poll_event() {
            match event {
                Event::Connected { conn: c, .. } => {
                    assert_eq!(c, conn);
                    client_connected = true;
                }
                Event::Message {
                    channel, payload, ..
                } => {
                    echoes.entry(channel).or_default().push(text(&payload));
                }
                other => panic!("unexpected client event {other:?}"),
            }
        }
        server.update().expect("server update");
        client.update().expect("client update");
    }
    assert!(client_connected);
    assert_eq!(app_datagrams, 1);
    let mut reliable = echoes.remove(&2).unwrap_or_default();
    reliable.sort_by_key(|m| m.rsplit(' ').next().and_then(|i| i.parse::<usize>().ok()));
    let expected: Vec<String> = (0..COUNT).map(|i| format!("echo reliable {i}")).collect();
    assert_eq!(reliable, expected, "reliable: each exactly once");
    let ordered = echoes.remove(&3).unwrap_or_default();
    let expected: Vec<String> = (0..COUNT).map(|i| format!("echo ordered {i}")).collect();
    assert_eq!(ordered, expected, "ordered: each once, in order");
    assert_eq!(client.stats().send_errors, 0);
    assert_eq!(server.stats().send_errors, 0);
}

#[test]
fn a_mio_client_and_a_std_peer_interoperate() {
    let server = shoal_std::spawn("127.0.0.1:0", server_config(3)).expect("spawn std server");
    let mut client = EventLoop::bind("127.0.0.1:0", client_config(4)).expect("bind mio client");

    let conn = client
        .driver_mut()
        .connect(server.local_addr(), &[])
        .expect("connect");
    client
        .driver_mut()
        .send(conn, 2, "mio to std")
        .expect("send");

    // The std side answers from the application thread.
    let server_thread = std::thread::spawn(move || {
        let deadline = Instant::now() + DEADLINE;
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match server.next_output(left) {
                Ok(Some(shoal_std::Output::Event(Event::Message { conn, payload, .. }))) => {
                    let reply = format!("std got {:?}", text(&payload));
                    server.send(conn, 2, reply).expect("reply");
                }
                Ok(Some(shoal_std::Output::Event(Event::Disconnected { reason, .. }))) => {
                    return Some(reason);
                }
                Ok(_) => {}
                Err(e) => panic!("server thread: {e}"),
            }
        }
        None
    });

    let mut reply = None;
    let outcome = client
        .run_until(Instant::now() + DEADLINE, |driver, event| match event {
            Event::Message { conn, payload, .. } => {
                reply = Some(text(&payload));
                driver.disconnect(conn, 42);
                ControlFlow::Break(())
            }
            _ => ControlFlow::Continue(()),
        })
        .expect("run_until");
    assert_eq!(outcome, RunOutcome::Stopped);
    assert_eq!(reply.as_deref(), Some("std got \"mio to std\""));
    // `run_until` flushed the close notice on the way out.
    let reason = server_thread.join().expect("server thread");
    assert_eq!(reason, Some(DisconnectReason::ClosedByPeer { code: 42 }));
}

#[test]
fn two_standalone_loops_connect_and_a_deadline_ends_a_quiet_run() {
    let mut server = EventLoop::bind("127.0.0.1:0", server_config(5)).expect("bind");
    let mut client = EventLoop::bind("127.0.0.1:0", client_config(6)).expect("bind");
    let server_addr = server.driver().local_addr();
    let conn: ConnectionHandle = client
        .driver_mut()
        .connect(server_addr, &[])
        .expect("connect");

    let deadline = Instant::now() + DEADLINE;
    let mut connected = (false, false);
    while connected != (true, true) {
        assert!(Instant::now() < deadline, "never connected: {connected:?}");
        client
            .run_once(Some(Duration::from_millis(2)))
            .expect("client turn");
        server
            .run_once(Some(Duration::from_millis(2)))
            .expect("server turn");
        for event in client.driver_mut().events() {
            connected.0 |= matches!(event, Event::Connected { conn: c, .. } if c == conn);
        }
        for event in server.driver_mut().events() {
            connected.1 |= matches!(event, Event::Connected { .. });
        }
    }
    assert!(client.driver().endpoint().is_connected(conn));

    // Nothing more happens: the run ends at its deadline, not earlier.
    let start = Instant::now();
    let outcome = server
        .run_until(start + Duration::from_millis(80), |_, event| {
            panic!("unexpected event {event:?}")
        })
        .expect("run_until");
    assert_eq!(outcome, RunOutcome::DeadlineReached);
    assert!(start.elapsed() >= Duration::from_millis(80));
}

#[test]
fn dropping_a_connected_mio_driver_tells_its_peer_at_once() {
    let mut server = shoal_std::Driver::bind("127.0.0.1:0", server_config(5)).expect("bind std");
    let mut client = EventLoop::bind("127.0.0.1:0", client_config(6)).expect("bind mio");
    client
        .driver_mut()
        .connect(server.local_addr(), &[])
        .expect("connect");
    let deadline = Instant::now() + DEADLINE;
    let mut connected = false;
    while !connected {
        assert!(Instant::now() < deadline, "timed out connecting");
        client
            .run_once(Some(Duration::from_millis(1)))
            .expect("client turn");
        server.update().expect("server update");
        connected |= server
            .events()
            .any(|e| matches!(e, Event::Connected { .. }));
    }
    drop(client);
    // Far under the 10 s idle timeout: the goodbye left with the drop.
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        assert!(Instant::now() < deadline, "no goodbye within 2 s");
        server.update().expect("server update");
        let goodbye = server.events().any(|e| {
            matches!(
                e,
                Event::Disconnected {
                    reason: DisconnectReason::ClosedByPeer {
                        code: shoal_std::SHUTDOWN_CODE
                    },
                    ..
                }
            )
        });
        if goodbye {
            break;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}
