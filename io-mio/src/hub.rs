//! [`HubServer`]: a [`Hub`] on a [`MioDriver`], with a `mio::Poll` of its own.
//!
//! The `shoal-hub` binary is this loop plus flags, logs and Ctrl-C; a test or a program that
//! wants a hub in-process runs it on a thread:
//!
//! ```
//! use std::time::Duration;
//! use shoal_mio::hub::{HubServer, HubServerEvent};
//! use shoal_mio::shoal_proto::hub::{self, HubConfig};
//!
//! # fn main() -> std::io::Result<()> {
//! let mut server = HubServer::bind("127.0.0.1:0", hub::endpoint_config(), HubConfig::default())?;
//! let addr = server.local_addr(); // members connect here, with `hub::endpoint_config()`
//! let stopper = server.stopper();
//! let thread = std::thread::spawn(move || {
//!     server.run(|event| {
//!         if let HubServerEvent::RoomOpened { name, .. } = event {
//!             println!("room {name:?} opened");
//!         }
//!     })
//! });
//! # let _ = addr;
//! std::thread::sleep(Duration::from_millis(10));
//! stopper.stop(); // disconnects every member and returns
//! thread.join().expect("hub thread")?;
//! # Ok(())
//! # }
//! ```

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use mio::{Events, Poll, Token, Waker};
use shoal_proto::hub::{Hub, HubConfig, RoomChange, RoomId};
use shoal_proto::{Bytes, Config, ConnectionHandle, DisconnectReason, Event};

use crate::clock::Clock;
use crate::driver::MioDriver;

/// The application close code members are disconnected with when the hub shuts down.
pub const CLOSE_SHUTDOWN: u16 = 0x4802;

/// How long [`HubServer::run`] keeps sending after it disconnected everyone, so the close
/// notices leave (and are resent if lost).
pub const SHUTDOWN_LINGER: Duration = Duration::from_millis(300);

/// Most reports of endpoint events that wait for [`HubServer::poll_event`] (room reports
/// come on top: a turn's room changes, at most the 4,096 the hub logs between takes, or
/// what a walk of its rooms finds after it gave the log up). Past this (or past the endpoint's
/// `max_pending_event_bytes` of message payloads) the hub stops taking the endpoint's events
/// until some are read: members' data then waits in the endpoint, refused and resent as its
/// own event queue does when an application falls behind. Nothing is dropped; once reports
/// are read the loop takes the waiting events at once. `shutdown` takes every event.
pub const MAX_WAITING_REPORTS: usize = 4096;

const DRIVER: Token = Token(0);
const WAKER: Token = Token(1);

/// What happened on a [`HubServer`], for its logs: members coming and going, rooms opening
/// and closing, and the endpoint events the hub does not consume.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum HubServerEvent {
    /// A member connected (its handshake finished).
    Connected {
        /// Its connection.
        conn: ConnectionHandle,
        /// Its user id on the hub.
        user: u16,
        /// Its address.
        remote: SocketAddr,
    },
    /// A connection ended (the hub has already taken the member out of its rooms; a room
    /// that closed with it is reported just before).
    Disconnected {
        /// Its connection.
        conn: ConnectionHandle,
        /// Its user id, if it had connected.
        user: Option<u16>,
        /// Its address, if it had connected.
        remote: Option<SocketAddr>,
        /// Why.
        reason: DisconnectReason,
    },
    /// A room was created.
    RoomOpened {
        /// Its id.
        room: RoomId,
        /// Its name, as the creator gave it (bytes; usually UTF-8).
        name: Bytes,
        /// The creator's user id.
        owner: u16,
    },
    /// A room closed (emptied, or closed by its owner).
    RoomClosed {
        /// Its id.
        room: RoomId,
        /// Its name.
        name: Bytes,
    },
    /// Any other event the hub passed on: messages and requests addressed to the hub itself
    /// rather than relayed, responses, timeouts.
    Other(Event),
}

/// Stops a [`HubServer`] from another thread (or a signal handler thread): the running
/// [`run`](HubServer::run) wakes at once, disconnects everyone and returns.
#[derive(Clone, Debug)]
pub struct Stopper {
    flag: Arc<AtomicBool>,
    waker: Arc<Waker>,
}

impl Stopper {
    /// Asks the hub to stop. Repeated calls are harmless.
    pub fn stop(&self) {
        self.flag.store(true, Ordering::SeqCst);
        // If the wake fails the loop still sees the flag at its next turn.
        let _ = self.waker.wake();
    }

    /// Whether [`stop`](Self::stop) was called.
    pub fn is_stopped(&self) -> bool {
        self.flag.load(Ordering::SeqCst)
    }
}

/// A hub server: a [`MioDriver`] whose every event goes through a [`Hub`], in a
/// `mio::Poll` of its own. Drive it with [`run`](Self::run) (until a [`Stopper`] stops it),
/// or turn by turn with [`run_once`](Self::run_once) and [`poll_event`](Self::poll_event).
#[derive(Debug)]
pub struct HubServer {
    poll: Poll,
    events: Events,
    driver: MioDriver,
    hub: Hub,
    stopper: Stopper,
    /// Connected members: user id and address, for the `Disconnected` report.
    members: HashMap<ConnectionHandle, (u16, SocketAddr)>,
    /// The rooms last seen, to report openings and closings.
    rooms: BTreeMap<RoomId, Bytes>,
    /// The hub's room changes, taken each turn (kept for its buffer).
    room_changes: Vec<RoomChange>,
    /// Reports waiting for `poll_event`, and the payload bytes they hold (see
    /// [`MAX_WAITING_REPORTS`]; room reports come on top, a turn's room changes).
    out: VecDeque<HubServerEvent>,
    out_bytes: usize,
    max_out_bytes: usize,
    /// Set while `shutdown` runs: the reports are not bounded.
    shutting_down: bool,
}

impl HubServer {
    /// Binds the hub's socket to `addr` with endpoint configuration `endpoint` (start from
    /// [`shoal_proto::hub::endpoint_config`]; members must use the same channel layout).
    /// A missing `hub.secret_seed` (or `endpoint.secret_seed`) is filled with 32 bytes from
    /// the OS random source.
    ///
    /// Fails with `InvalidInput` if either configuration cannot work, or with the OS error if
    /// the socket cannot be bound.
    pub fn bind(
        addr: impl ToSocketAddrs,
        endpoint: Config,
        mut hub: HubConfig,
    ) -> io::Result<Self> {
        if hub.secret_seed.is_none() {
            hub.secret_seed = Some(shoal_std::clock::os_secret_seed()?);
        }
        let max_out_bytes = endpoint.max_pending_event_bytes;
        let mut driver = MioDriver::bind(addr, endpoint)?;
        let hub = Hub::new(hub, driver.endpoint().config())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
        let poll = Poll::new()?;
        driver.register(poll.registry(), DRIVER)?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        Ok(HubServer {
            poll,
            events: Events::with_capacity(64),
            driver,
            hub,
            stopper: Stopper {
                flag: Arc::new(AtomicBool::new(false)),
                waker,
            },
            members: HashMap::new(),
            rooms: BTreeMap::new(),
            room_changes: Vec::new(),
            out: VecDeque::new(),
            out_bytes: 0,
            max_out_bytes,
            shutting_down: false,
        })
    }

    /// The address members connect to.
    pub fn local_addr(&self) -> SocketAddr {
        self.driver.local_addr()
    }

    /// The hub: its rooms, its configuration, its counters.
    pub fn hub(&self) -> &Hub {
        &self.hub
    }

    /// The driver: its endpoint and its socket counters.
    pub fn driver(&self) -> &MioDriver {
        &self.driver
    }

    /// Members connected now. (Count them here rather than with `HubStats::members`, which
    /// the hub only updates when a member leaves.)
    pub fn member_count(&self) -> usize {
        self.members.len()
    }

    /// Reports waiting for [`poll_event`](Self::poll_event).
    pub fn waiting_reports(&self) -> usize {
        self.out.len()
    }

    /// A handle that stops [`run`](Self::run) from another thread.
    pub fn stopper(&self) -> Stopper {
        self.stopper.clone()
    }

    /// Whether the [`Stopper`] was used.
    pub fn is_stopped(&self) -> bool {
        self.stopper.is_stopped()
    }

    /// The next thing that happened, if any. Read them every turn ([`run`](Self::run) does):
    /// past [`MAX_WAITING_REPORTS`] unread the hub stops taking the endpoint's events.
    pub fn poll_event(&mut self) -> Option<HubServerEvent> {
        let event = self.out.pop_front()?;
        self.out_bytes -= held_bytes(&event);
        Some(event)
    }

    /// How long the loop may sleep: until the endpoint's or the hub's next timer.
    fn next_timeout(&self) -> Option<Duration> {
        let now = self.driver.clock().peek();
        let hub = self.hub.poll_timeout().map(|t| Clock::until(now, t));
        match (self.driver.next_timeout(), hub) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// One turn: does what is due, sleeps until a datagram arrives, a timer is due, the
    /// [`Stopper`] is used or `timeout` passes (`None`: no limit besides the timers), then
    /// hands what arrived to the hub and sends its answers. Read what happened with
    /// [`poll_event`](Self::poll_event).
    pub fn run_once(&mut self, timeout: Option<Duration>) -> io::Result<()> {
        if self.process()? {
            // Reports filled up with events still waiting: back to the caller to read them
            // rather than asleep until a datagram or a timer.
            return Ok(());
        }
        let wait = match (self.next_timeout(), timeout) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        if self.is_stopped() {
            return Ok(());
        }
        match self.poll.poll(&mut self.events, wait) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
        for event in self.events.iter() {
            if event.token() == DRIVER {
                self.driver.on_event(event)?;
            }
        }
        self.process().map(|_| ())
    }

    /// Runs until the [`Stopper`] is used, passing each [`HubServerEvent`] to `on_event`,
    /// then [`shutdown`](Self::shutdown)s with [`SHUTDOWN_LINGER`].
    pub fn run(&mut self, mut on_event: impl FnMut(&HubServerEvent)) -> io::Result<()> {
        while !self.is_stopped() {
            self.run_once(None)?;
            while let Some(event) = self.poll_event() {
                on_event(&event);
            }
        }
        self.shutdown(SHUTDOWN_LINGER)?;
        while let Some(event) = self.poll_event() {
            on_event(&event);
        }
        Ok(())
    }

    /// Disconnects every member with [`CLOSE_SHUTDOWN`] and keeps sending for up to
    /// `linger` so the close notices leave. Returns how many connections were closed; their
    /// `Disconnected` (and the rooms' `RoomClosed`) wait in [`poll_event`](Self::poll_event).
    pub fn shutdown(&mut self, linger: Duration) -> io::Result<usize> {
        let conns: Vec<ConnectionHandle> = self.driver.endpoint().connections().collect();
        for &conn in &conns {
            self.driver.disconnect(conn, CLOSE_SHUTDOWN);
        }
        // Every `Disconnected` reaches the hub and the reports however many wait: the last
        // turn's (bounded by the connections there were).
        self.shutting_down = true;
        self.process()?;
        let deadline = std::time::Instant::now() + linger;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() || self.driver.endpoint().connection_count() == 0 {
                break;
            }
            // Still inside `poll` so a lost close notice is resent on the endpoint's timer.
            match self
                .poll
                .poll(&mut self.events, Some(left.min(Duration::from_millis(20))))
            {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
            for event in self.events.iter() {
                if event.token() == DRIVER {
                    self.driver.on_event(event)?;
                }
            }
            self.process()?;
        }
        self.driver.flush();
        self.shutting_down = false;
        Ok(conns.len())
    }

    /// Runs the timers, hands the endpoint's events to the hub (while reports have room),
    /// notes what changed, and sends. Says whether it stopped for room: it took events and
    /// left some.
    fn process(&mut self) -> io::Result<bool> {
        self.driver.update()?;
        let now = self.driver.now();
        if self.hub.poll_timeout().is_some_and(|t| t <= now) {
            self.hub.handle_timeout(self.driver.endpoint_mut(), now);
        }
        let mut took = false;
        while self.has_room() || self.shutting_down {
            let Some(event) = self.driver.poll_event() else {
                break;
            };
            took = true;
            let passed = self
                .hub
                .handle_event(self.driver.endpoint_mut(), now, event);
            // The rooms this event opened or closed first: a room its owner's disconnect
            // closed is reported before the disconnect, and one opened before it.
            self.note_rooms();
            if let Some(passed) = passed {
                self.note(passed);
            }
        }
        self.note_rooms();
        self.driver.flush();
        Ok(took && self.driver.endpoint().has_pending_events())
    }

    /// Whether another report may wait (see [`MAX_WAITING_REPORTS`]).
    fn has_room(&self) -> bool {
        self.out.len() < MAX_WAITING_REPORTS && self.out_bytes < self.max_out_bytes
    }

    fn note(&mut self, event: Event) {
        let out = match event {
            Event::Connected {
                conn,
                remote,
                identity,
            } => {
                let user = identity.user_id;
                self.members.insert(conn, (user, remote));
                HubServerEvent::Connected { conn, user, remote }
            }
            Event::Disconnected { conn, reason } => {
                let known = self.members.remove(&conn);
                HubServerEvent::Disconnected {
                    conn,
                    user: known.map(|k| k.0),
                    remote: known.map(|k| k.1),
                    reason,
                }
            }
            other => HubServerEvent::Other(other),
        };
        self.out_bytes += held_bytes(&out);
        self.out.push_back(out);
    }

    /// Reports rooms opened and closed since the last look, from the hub's log of them (an
    /// event's cost is its changes, not the rooms there are); from a walk over every room
    /// only when the hub gave its log up.
    fn note_rooms(&mut self) {
        let mut changes = std::mem::take(&mut self.room_changes);
        if self.hub.take_room_changes(&mut changes) {
            for change in changes.drain(..) {
                match change {
                    RoomChange::Opened { room, name, owner } => {
                        self.rooms.insert(room, name.clone());
                        self.out
                            .push_back(HubServerEvent::RoomOpened { room, name, owner });
                    }
                    RoomChange::Closed { room, name } => {
                        self.rooms.remove(&room);
                        self.out
                            .push_back(HubServerEvent::RoomClosed { room, name });
                    }
                    // (A change this wrapper does not report yet.)
                    _ => {}
                }
            }
        } else {
            changes.clear();
            self.walk_rooms();
        }
        self.room_changes = changes;
    }

    /// Reports what changed between the rooms last seen and the hub's rooms now.
    fn walk_rooms(&mut self) {
        let mut before = std::mem::take(&mut self.rooms);
        for info in self.hub.rooms() {
            match before.remove(&info.id) {
                Some(name) if name == info.name => {}
                // The id was reused meanwhile: the old room closed, a new one opened.
                Some(name) => {
                    self.out.push_back(HubServerEvent::RoomClosed {
                        room: info.id,
                        name,
                    });
                    self.out.push_back(HubServerEvent::RoomOpened {
                        room: info.id,
                        name: info.name.clone(),
                        owner: info.owner,
                    });
                }
                None => self.out.push_back(HubServerEvent::RoomOpened {
                    room: info.id,
                    name: info.name.clone(),
                    owner: info.owner,
                }),
            }
            self.rooms.insert(info.id, info.name);
        }
        for (room, name) in before {
            self.out
                .push_back(HubServerEvent::RoomClosed { room, name });
        }
    }
}

/// The payload bytes a report holds, as the endpoint's event queue charges them.
fn held_bytes(event: &HubServerEvent) -> usize {
    match event {
        HubServerEvent::Other(
            Event::Message { payload, .. }
            | Event::Request { payload, .. }
            | Event::Response { payload, .. },
        ) => payload.len() + 64,
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_proto::hub;
    use shoal_std::Driver;

    /// A hub on loopback, and a member's driver whose connection to it has started.
    fn hub_and_member() -> (HubServer, Driver, ConnectionHandle) {
        let server = HubServer::bind("127.0.0.1:0", hub::endpoint_config(), HubConfig::default())
            .expect("hub binds");
        let config = Config {
            accept_incoming: false,
            ..hub::endpoint_config()
        };
        let mut member = Driver::bind("127.0.0.1:0", config).expect("bind a member");
        let conn = member
            .connect(server.local_addr(), &[])
            .expect("connect starts");
        (server, member, conn)
    }

    /// A turn that fills the reports with events still waiting says so (`run_once` then
    /// returns at once for them to be read rather than sleeping until a datagram or a
    /// timer); a turn that takes nothing (nobody read) does not.
    #[test]
    fn a_turn_that_fills_the_reports_returns_for_them_to_be_read() {
        let (mut server, mut member, conn) = hub_and_member();
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        let mut sent = 0;
        // Nobody reads until the reports are full with more than a hundred events still
        // waiting (each 16-byte message is charged 16 + 64 bytes): the turn below takes a
        // hundred and must leave some. (Waiting for any at all made the test depend on how
        // the sockets' timing split the messages.)
        while !(server.waiting_reports() == MAX_WAITING_REPORTS
            && server.driver.endpoint().pending_event_bytes() > 100 * (16 + 64))
        {
            assert!(std::time::Instant::now() < deadline, "{sent} sent");
            member.update().expect("member socket");
            while member.poll_event().is_some() {}
            while sent < 2 * MAX_WAITING_REPORTS
                && member.send(conn, 2, Bytes::from_static(&[7; 16])).is_ok()
            {
                sent += 1;
            }
            member.flush();
            server
                .run_once(Some(Duration::from_millis(1)))
                .expect("hub socket");
        }
        // A few are read: the next turn takes as many and leaves the rest.
        for _ in 0..100 {
            server.poll_event();
        }
        assert!(server.process().expect("hub socket"), "cut short");
        assert_eq!(server.waiting_reports(), MAX_WAITING_REPORTS);
        // Nobody reads: the next turn takes nothing, and may sleep.
        assert!(!server.process().expect("hub socket"));
    }

    /// A member that creates a room and disconnects, both taken in one turn: the reports
    /// say the room opened and closed before the member left (they said it opened after its
    /// owner was gone when a turn's room changes were noted at its end).
    #[test]
    fn rooms_a_member_opens_and_closes_are_reported_before_its_disconnect() {
        use shoal_proto::hub::{HubClient, RoomOptions};
        let (mut server, mut member, conn) = hub_and_member();
        let mut client = HubClient::new(conn, member.endpoint().config()).expect("client");
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while client.user_id().is_none() {
            assert!(std::time::Instant::now() < deadline, "member connects");
            member.update().expect("member socket");
            let now = member.now();
            while client.next_event(member.endpoint_mut(), now).is_some() {}
            member.flush();
            server
                .run_once(Some(Duration::from_millis(1)))
                .expect("hub socket");
        }
        while server.poll_event().is_some() {}
        client
            .create_room(member.endpoint_mut(), "brief", &RoomOptions::default())
            .expect("create");
        member.flush();
        member.disconnect(conn, 0);
        member.flush();
        // Both datagrams wait in the hub's socket: one turn takes them.
        std::thread::sleep(Duration::from_millis(50));
        server
            .run_once(Some(Duration::from_millis(10)))
            .expect("hub socket");
        let mut order = Vec::new();
        while let Some(e) = server.poll_event() {
            order.push(match e {
                HubServerEvent::RoomOpened { .. } => "opened",
                HubServerEvent::RoomClosed { .. } => "closed",
                HubServerEvent::Disconnected { .. } => "disconnected",
                _ => "other",
            });
        }
        assert_eq!(order, ["opened", "closed", "disconnected"]);
    }
}
