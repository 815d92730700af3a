//! The background-thread mode: a [`Driver`] on its own thread, commanded through channels.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, ToSocketAddrs, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TryRecvError, TrySendError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use shoal_proto::{
    Bytes, Config, ConnectError, ConnectionHandle, Event, IncomingRequest, LinkStats, NetError,
    Network, RequestId, SendError,
};

use crate::driver::Driver;

/// Commands the application may have waiting for the thread at once. Beyond it, the
/// fire-and-forget commands ([`Handle::send`], ...) fail with [`ThreadError::Busy`].
pub const COMMAND_CAPACITY: usize = 4096;

/// Outputs waiting for the application at once (in [`Handle::events`]). While it is full the
/// thread leaves further events in the endpoint, whose own bound
/// (`Config::max_pending_event_bytes`) then applies.
pub const OUTPUT_CAPACITY: usize = 4096;

/// The close code the thread uses for the connections still open when it shuts down.
pub const SHUTDOWN_CODE: u16 = 0;

/// How often the thread looks for commands when it could not set up its wake-up socket, and
/// how often it retries handing over outputs while [`Handle::events`] is full.
const FALLBACK_POLL_INTERVAL: Duration = Duration::from_millis(2);

/// What the background thread hands to the application.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Output {
    /// An endpoint event.
    Event(Event),
    /// A fire-and-forget command ([`Handle::send`], [`Handle::respond`]) failed.
    SendFailed {
        /// The connection named in the command.
        conn: ConnectionHandle,
        /// The channel named in the command.
        channel: u8,
        /// Why it failed.
        error: SendError,
    },
}

/// Why a [`Handle`] command failed: [`NetError`], the error of every [`Network`].
///
/// `Stopped`: the thread has stopped (shut down, or failed: [`Handle::shutdown`] returns its
/// error). `Busy`: [`COMMAND_CAPACITY`] commands are waiting already; try again after the
/// thread catches up.
pub type ThreadError = NetError;

enum Command {
    Connect {
        remote: SocketAddr,
        data: Vec<u8>,
        reply: SyncSender<Result<ConnectionHandle, ConnectError>>,
    },
    Send {
        conn: ConnectionHandle,
        channel: u8,
        payload: Bytes,
    },
    Request {
        conn: ConnectionHandle,
        channel: u8,
        payload: Bytes,
        reply: SyncSender<Result<RequestId, SendError>>,
    },
    Respond {
        conn: ConnectionHandle,
        request: IncomingRequest,
        payload: Bytes,
    },
    Disconnect {
        conn: ConnectionHandle,
        code: u16,
    },
    Broadcast {
        channel: u8,
        payload: Bytes,
        except: Option<ConnectionHandle>,
        /// Where to say how many it was queued for, if anyone asks.
        reply: Option<SyncSender<usize>>,
    },
    Peers {
        reply: SyncSender<Vec<ConnectionHandle>>,
    },
    LinkStats {
        conn: ConnectionHandle,
        reply: SyncSender<Option<LinkStats>>,
    },
    Shutdown,
}

/// Wakes the thread from its blocking receive by sending it an empty datagram from a socket
/// of its own, whose address the driver recognises and does not pass to the endpoint.
///
/// `armed` coalesces wake-ups: the application sends a datagram only when none is on its way
/// since the thread last looked at its commands.
#[derive(Debug)]
struct Waker {
    socket: UdpSocket,
    target: SocketAddr,
    armed: Arc<AtomicBool>,
}

impl Waker {
    fn new(driver_addr: SocketAddr) -> io::Result<Self> {
        let ip = match driver_addr.ip() {
            IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
            ip => ip,
        };
        let socket = UdpSocket::bind(SocketAddr::new(ip, 0))?;
        socket.set_nonblocking(true)?;
        Ok(Waker {
            socket,
            target: SocketAddr::new(ip, driver_addr.port()),
            armed: Arc::new(AtomicBool::new(false)),
        })
    }

    /// Called after a command was queued.
    fn wake(&self) {
        if !self.armed.swap(true, Ordering::SeqCst) {
            // Best effort: if the datagram is lost, the thread still wakes at its next timer.
            // One that could not even be sent leaves the next command to try again.
            if self.socket.send_to(&[], self.target).is_err() {
                self.armed.store(false, Ordering::SeqCst);
            }
        }
    }
}

/// The application's side of a driver running on a background thread, from [`spawn`].
///
/// Commands go to the thread through a bounded channel and the thread wakes at once to carry
/// them out; outputs (events, and failures of fire-and-forget commands) come back through
/// [`events`](Self::events). [`connect`](Self::connect) and [`request`](Self::request) wait
/// for the thread's answer (a handle or an id); the rest return at once.
///
/// Dropping the handle shuts the thread down like [`shutdown`](Self::shutdown).
#[derive(Debug)]
pub struct Handle {
    commands: SyncSender<Command>,
    outputs: Receiver<Output>,
    waker: Option<Waker>,
    thread: Option<JoinHandle<io::Result<()>>>,
    local_addr: SocketAddr,
    dual_stack: bool,
    dropped_failures: Arc<AtomicU64>,
}

/// Binds a [`Driver`] to `addr` and runs it on a new thread named `shoal-std`.
///
/// Errors are those of [`Driver::bind`], or of spawning the thread.
pub fn spawn(addr: impl ToSocketAddrs, config: Config) -> io::Result<Handle> {
    spawn_driver(Driver::bind(addr, config)?)
}

/// Runs an existing [`Driver`] on a new thread (e.g. one made with [`Driver::from_socket`]).
pub fn spawn_driver(mut driver: Driver) -> io::Result<Handle> {
    let local_addr = driver.local_addr();
    let dual_stack = driver.is_dual_stack();
    // Without a waker the thread still works, checking for commands every few milliseconds.
    // (A connected socket takes datagrams from its peer only: a wake-up would never arrive,
    // and a thread with no timer due would wait for it for good.)
    let waker = if driver.is_socket_connected() {
        None
    } else {
        Waker::new(local_addr).ok()
    };
    if let Some(waker) = &waker {
        driver.set_wake_source(waker.socket.local_addr()?);
    }
    let (commands, command_rx) = mpsc::sync_channel(COMMAND_CAPACITY);
    let (output_tx, outputs) = mpsc::sync_channel(OUTPUT_CAPACITY);
    let dropped_failures = Arc::new(AtomicU64::new(0));
    let worker = Worker {
        driver,
        commands: command_rx,
        outputs: output_tx,
        backlog: std::collections::VecDeque::new(),
        wake_armed: waker.as_ref().map(|w| Arc::clone(&w.armed)),
        dropped_failures: Arc::clone(&dropped_failures),
    };
    let thread = std::thread::Builder::new()
        .name("shoal-std".into())
        .spawn(move || worker.run())?;
    Ok(Handle {
        commands,
        outputs,
        waker,
        thread: Some(thread),
        local_addr,
        dual_stack,
        dropped_failures,
    })
}

impl Handle {
    /// The address the thread's socket is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Where events arrive: use `try_recv` in a frame loop, `recv_timeout` or `recv` to wait.
    /// A `Disconnected` error means the thread stopped; [`shutdown`](Self::shutdown) says why.
    pub fn events(&self) -> &Receiver<Output> {
        &self.outputs
    }

    /// Waits up to `timeout` for the next output. `Err(Stopped)` if the thread has stopped
    /// and every output was read; `Ok(None)` if the time ran out.
    pub fn next_output(&self, timeout: Duration) -> Result<Option<Output>, ThreadError> {
        match self.outputs.recv_timeout(timeout) {
            Ok(output) => Ok(Some(output)),
            Err(RecvTimeoutError::Timeout) => Ok(None),
            Err(RecvTimeoutError::Disconnected) => Err(ThreadError::Stopped),
        }
    }

    /// [`Output::SendFailed`] notices the application did not see: the thread dropped them
    /// because [`events`](Self::events) was full, or they were skipped by
    /// [`Network::poll_event`].
    pub fn dropped_failures(&self) -> u64 {
        self.dropped_failures.load(Ordering::Relaxed)
    }

    /// Starts connecting to `remote`, an address or text that resolves to one (as
    /// [`DriverCore::connect`](crate::DriverCore::connect)); waits for the thread's answer.
    pub fn connect(
        &self,
        remote: impl ToSocketAddrs,
        data: &[u8],
    ) -> Result<ConnectionHandle, ThreadError> {
        let remote = crate::io_util::resolve(remote, self.local_addr, self.dual_stack)
            .map_err(ThreadError::Connect)?;
        let (reply, answer) = mpsc::sync_channel(1);
        self.command_blocking(Command::Connect {
            remote,
            data: data.to_vec(),
            reply,
        })?;
        match answer.recv() {
            Ok(result) => result.map_err(ThreadError::Connect),
            Err(_) => Err(ThreadError::Stopped),
        }
    }

    /// Queues a message. Returns once the command is handed over; if the endpoint refuses the
    /// message, an [`Output::SendFailed`] arrives in [`events`](Self::events).
    pub fn send(
        &self,
        conn: ConnectionHandle,
        channel: u8,
        payload: impl Into<Bytes>,
    ) -> Result<(), ThreadError> {
        self.command(Command::Send {
            conn,
            channel,
            payload: payload.into(),
        })
    }

    /// Sends a request; waits for the thread's answer (the id its response will carry).
    pub fn request(
        &self,
        conn: ConnectionHandle,
        channel: u8,
        payload: impl Into<Bytes>,
    ) -> Result<RequestId, ThreadError> {
        let (reply, answer) = mpsc::sync_channel(1);
        self.command_blocking(Command::Request {
            conn,
            channel,
            payload: payload.into(),
            reply,
        })?;
        match answer.recv() {
            Ok(result) => result.map_err(ThreadError::Send),
            Err(_) => Err(ThreadError::Stopped),
        }
    }

    /// Answers a request. Like [`send`](Self::send), failures arrive as
    /// [`Output::SendFailed`].
    pub fn respond(
        &self,
        conn: ConnectionHandle,
        request: IncomingRequest,
        payload: impl Into<Bytes>,
    ) -> Result<(), ThreadError> {
        self.command(Command::Respond {
            conn,
            request,
            payload: payload.into(),
        })
    }

    /// Closes a connection with `code`.
    pub fn disconnect(&self, conn: ConnectionHandle, code: u16) -> Result<(), ThreadError> {
        self.command(Command::Disconnect { conn, code })
    }

    /// Queues `payload` on `channel` to every connected peer but `except`. Returns once the
    /// command is handed over.
    pub fn broadcast(
        &self,
        channel: u8,
        payload: impl Into<Bytes>,
        except: Option<ConnectionHandle>,
    ) -> Result<(), ThreadError> {
        self.command(Command::Broadcast {
            channel,
            payload: payload.into(),
            except,
            reply: None,
        })
    }

    /// The connected peers (whose `Connected` the thread has put in the channel, still
    /// open); waits for the thread's answer.
    pub fn peers(&self) -> Result<Vec<ConnectionHandle>, ThreadError> {
        let (reply, answer) = mpsc::sync_channel(1);
        self.command_blocking(Command::Peers { reply })?;
        answer.recv().map_err(|_| ThreadError::Stopped)
    }

    /// Round-trip time, loss and bytes per second of a live connection; waits for the
    /// thread's answer (a few microseconds when it is idle).
    pub fn link_stats(&self, conn: ConnectionHandle) -> Result<Option<LinkStats>, ThreadError> {
        let (reply, answer) = mpsc::sync_channel(1);
        self.command_blocking(Command::LinkStats { conn, reply })?;
        answer.recv().map_err(|_| ThreadError::Stopped)
    }

    /// Stops the thread: it closes every open connection with [`SHUTDOWN_CODE`] (the peers
    /// see `ClosedByPeer`), sends the notices, hands over the last events it can, and exits.
    /// Waits for it and returns the error it stopped with, if any. Calling it again (or
    /// dropping the handle afterwards) does nothing and returns `Ok(())`.
    pub fn shutdown(&mut self) -> io::Result<()> {
        let Some(thread) = self.thread.take() else {
            return Ok(());
        };
        // Blocking send: the thread drains commands continually, and if it has stopped the
        // send fails at once.
        let _ = self.commands.send(Command::Shutdown);
        self.wake();
        match thread.join() {
            Ok(result) => result,
            Err(_) => Err(io::Error::other("the shoal-std thread panicked")),
        }
    }

    fn command(&self, command: Command) -> Result<(), ThreadError> {
        match self.commands.try_send(command) {
            Ok(()) => {
                self.wake();
                Ok(())
            }
            Err(TrySendError::Full(_)) => {
                self.wake();
                Err(ThreadError::Busy)
            }
            Err(TrySendError::Disconnected(_)) => Err(ThreadError::Stopped),
        }
    }

    fn command_blocking(&self, command: Command) -> Result<(), ThreadError> {
        self.commands
            .send(command)
            .map_err(|_| ThreadError::Stopped)?;
        self.wake();
        Ok(())
    }

    fn wake(&self) {
        if let Some(waker) = &self.waker {
            waker.wake();
        }
    }
}

/// The background thread as a [`Network`], for game code written once for every driver and
/// the simulator. Through it, [`Output::SendFailed`] notices are not seen (`poll_event` gives
/// endpoint events only): they are counted in [`dropped_failures`](Handle::dropped_failures),
/// so `send` returning `Ok` means handed over, not queued. `broadcast`, `disconnect`,
/// `peers` and `link_stats` wait for the thread (a command queue that is full makes them wait
/// their turn rather than fail); `broadcast` returns how many it was queued for. `peers`
/// (and so `broadcast`) name the connections whose `Connected` the thread has put in the
/// channel: on a thread that can be just before the game takes it.
impl Network for Handle {
    fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    fn connect(&mut self, remote: SocketAddr, data: &[u8]) -> Result<ConnectionHandle, NetError> {
        Handle::connect(self, remote, data)
    }

    fn send(
        &mut self,
        conn: ConnectionHandle,
        channel: u8,
        payload: impl Into<Bytes>,
    ) -> Result<(), NetError> {
        Handle::send(self, conn, channel, payload)
    }

    fn request(
        &mut self,
        conn: ConnectionHandle,
        channel: u8,
        payload: impl Into<Bytes>,
    ) -> Result<RequestId, NetError> {
        Handle::request(self, conn, channel, payload)
    }

    fn respond(
        &mut self,
        conn: ConnectionHandle,
        request: IncomingRequest,
        payload: impl Into<Bytes>,
    ) -> Result<(), NetError> {
        Handle::respond(self, conn, request, payload)
    }

    fn broadcast(
        &mut self,
        channel: u8,
        payload: impl Into<Bytes>,
        except: Option<ConnectionHandle>,
    ) -> usize {
        // Waits its turn in a full queue, and counts what the thread queued (a peer whose
        // queue was full is not counted).
        let (reply, answer) = mpsc::sync_channel(1);
        let command = Command::Broadcast {
            channel,
            payload: payload.into(),
            except,
            reply: Some(reply),
        };
        match self.command_blocking(command) {
            Ok(()) => answer.recv().unwrap_or(0),
            Err(_) => 0,
        }
    }

    fn disconnect(&mut self, conn: ConnectionHandle, code: u16) {
        // Waits its turn in a full queue: a close dropped for want of room would leave the
        // peer connected with no `Disconnected` to come. (A stopped thread has no connection
        // left to close.)
        let _ = self.command_blocking(Command::Disconnect { conn, code });
    }

    fn poll_event(&mut self) -> Option<Event> {
        loop {
            match self.outputs.try_recv().ok()? {
                Output::Event(event) => return Some(event),
                Output::SendFailed { .. } => {
                    self.dropped_failures.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }

    fn peers(&self) -> Vec<ConnectionHandle> {
        Handle::peers(self).unwrap_or_default()
    }

    fn link_stats(&self, conn: ConnectionHandle) -> Option<LinkStats> {
        Handle::link_stats(self, conn).ok().flatten()
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        let _ = self.shutdown();
    }
}

/// The thread's side.
struct Worker {
    driver: Driver,
    commands: Receiver<Command>,
    outputs: SyncSender<Output>,
    /// Outputs the channel had no room for, oldest first (at most [`OUTPUT_CAPACITY`]).
    backlog: std::collections::VecDeque<Output>,
    /// Shared with the [`Waker`]; `None` if there is none.
    wake_armed: Option<Arc<AtomicBool>>,
    dropped_failures: Arc<AtomicU64>,
}

impl Worker {
    fn run(mut self) -> io::Result<()> {
        loop {
            if !self.apply_commands() {
                self.close_all();
                return Ok(());
            }
            self.hand_over();
            let wait = if !self.backlog.is_empty() || self.wake_armed.is_none() {
                Some(FALLBACK_POLL_INTERVAL)
            } else {
                None
            };
            // Flushes what the commands queued, then sleeps until a datagram (or a wake-up),
            // a timer or `wait`.
            if let Err(e) = self.driver.poll(wait) {
                self.close_all();
                return Err(e);
            }
            self.hand_over();
        }
    }

    /// Carries out the waiting commands. `false` when it is time to stop.
    fn apply_commands(&mut self) -> bool {
        // Disarm before looking, so a command queued from now on sends a fresh wake-up.
        if let Some(armed) = &self.wake_armed {
            armed.store(false, Ordering::SeqCst);
        }
        loop {
            let command = match self.commands.try_recv() {
                Ok(command) => command,
                Err(TryRecvError::Empty) => return true,
                Err(TryRecvError::Disconnected) => return false,
            };
            match command {
                Command::Connect {
                    remote,
                    data,
                    reply,
                } => {
                    let _ = reply.send(self.driver.connect(remote, &data));
                }
                Command::Send {
                    conn,
                    channel,
                    payload,
                } => {
                    if let Err(error) = self.driver.send(conn, channel, payload) {
                        self.report(Output::SendFailed {
                            conn,
                            channel,
                            error,
                        });
                    }
                }
                Command::Request {
                    conn,
                    channel,
                    payload,
                    reply,
                } => {
                    let _ = reply.send(self.driver.request(conn, channel, payload));
                }
                Command::Respond {
                    conn,
                    request,
                    payload,
                } => {
                    if let Err(error) = self.driver.respond(conn, request, payload) {
                        self.report(Output::SendFailed {
                            conn,
                            channel: request.channel,
                            error,
                        });
                    }
                }
                Command::Disconnect { conn, code } => self.driver.disconnect(conn, code),
                Command::Broadcast {
                    channel,
                    payload,
                    except,
                    reply,
                } => {
                    let mut queued = 0;
                    for conn in self.peers().into_iter().filter(|&c| Some(c) != except) {
                        queued +=
                            usize::from(self.driver.send(conn, channel, payload.clone()).is_ok());
                    }
                    if let Some(reply) = reply {
                        let _ = reply.send(queued);
                    }
                }
                Command::Peers { reply } => {
                    let _ = reply.send(self.peers());
                }
                Command::LinkStats { conn, reply } => {
                    let _ = reply.send(self.driver.link_stats(conn));
                }
                Command::Shutdown => return false,
            }
        }
    }

    /// The endpoint's peers less those whose `Connected` waits in the backlog: handed over
    /// means in the channel.
    fn peers(&self) -> Vec<ConnectionHandle> {
        // (The backlog holds at most one endpoint event: `hand_over` stops at the first
        // the channel refuses.)
        let waiting: Vec<ConnectionHandle> = self
            .backlog
            .iter()
            .filter_map(|o| match o {
                Output::Event(Event::Connected { conn, .. }) => Some(*conn),
                _ => None,
            })
            .collect();
        let mut peers = self.driver.peers();
        if !waiting.is_empty() {
            peers.retain(|c| !waiting.contains(c));
        }
        peers
    }

    fn report(&mut self, output: Output) {
        if self.backlog.len() < OUTPUT_CAPACITY {
            self.backlog.push_back(output);
        } else {
            self.dropped_failures.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Moves outputs into the channel until it is full: the backlog first, then the
    /// endpoint's events. An event the channel refuses joins the backlog; the rest stay in
    /// the endpoint.
    fn hand_over(&mut self) {
        while let Some(output) = self.backlog.pop_front() {
            match self.outputs.try_send(output) {
                Ok(()) => {}
                Err(TrySendError::Full(output)) | Err(TrySendError::Disconnected(output)) => {
                    self.backlog.push_front(output);
                    return;
                }
            }
        }
        while let Some(event) = self.driver.poll_event() {
            match self.outputs.try_send(Output::Event(event)) {
                Ok(()) => {}
                Err(TrySendError::Full(output)) | Err(TrySendError::Disconnected(output)) => {
                    self.backlog.push_back(output);
                    return;
                }
            }
        }
    }

    /// Closes every connection, sends the notices, and hands over what fits.
    fn close_all(&mut self) {
        let open: Vec<ConnectionHandle> = self.driver.endpoint().connections().collect();
        for conn in open {
            self.driver.disconnect(conn, SHUTDOWN_CODE);
        }
        self.driver.flush();
        self.hand_over();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wake_up_datagrams_never_reach_the_endpoint() {
        let mut driver = Driver::bind("127.0.0.1:0", Config::default()).expect("bind");
        let waker = Waker::new(driver.local_addr()).expect("waker");
        driver.set_wake_source(waker.socket.local_addr().expect("waker address"));

        waker.wake();
        driver
            .poll(Some(Duration::from_secs(2)))
            .expect("poll wakes up");
        assert_eq!(driver.endpoint().stats().datagrams_received, 0);

        // The same empty datagram from anyone else is the endpoint's business (and dropped
        // by it as malformed).
        let stranger = UdpSocket::bind("127.0.0.1:0").expect("bind stranger");
        stranger
            .send_to(&[], driver.local_addr())
            .expect("send from stranger");
        driver
            .poll(Some(Duration::from_secs(2)))
            .expect("poll wakes up");
        assert_eq!(driver.endpoint().stats().datagrams_received, 1);
    }

    /// A socket connected to its one peer drops every other sender's datagrams, the thread's
    /// wake-ups included: the thread must still take commands and shut down.
    #[test]
    fn spawn_driver_on_a_connected_socket_takes_commands_and_shuts_down() {
        let (done, finished) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let server = UdpSocket::bind("127.0.0.1:0").expect("bind server");
            let socket = UdpSocket::bind("127.0.0.1:0").expect("bind");
            socket
                .connect(server.local_addr().expect("addr"))
                .expect("connect the socket");
            let config = Config {
                secret_seed: Some(shoal_proto::SecretSeed::insecure_from_u64(3)),
                ..Config::default()
            };
            let mut handle =
                spawn_driver(Driver::from_socket(socket, config).expect("driver")).expect("spawn");
            handle
                .connect(server.local_addr().expect("addr"), b"")
                .expect("a connection attempt");
            handle.shutdown().expect("shut down");
            let _ = done.send(());
        });
        assert!(
            finished.recv_timeout(Duration::from_secs(20)).is_ok(),
            "the thread never took the command or never stopped"
        );
    }

    /// A handle whose thread is played by the test: commands land in the returned queue,
    /// which holds `room` of them.
    fn handle_with_queue(room: usize) -> (Handle, Receiver<Command>) {
        let (commands, taken) = mpsc::sync_channel(room);
        let (_outputs_tx, outputs) = mpsc::channel();
        let handle = Handle {
            commands,
            outputs,
            waker: None,
            thread: None,
            local_addr: "127.0.0.1:1".parse().expect("address"),
            dual_stack: false,
            dropped_failures: Arc::new(AtomicU64::new(0)),
        };
        (handle, taken)
    }

    fn some_connection() -> ConnectionHandle {
        let config = Config {
            secret_seed: Some(shoal_proto::SecretSeed::insecure_from_u64(5)),
            ..Config::default()
        };
        let mut endpoint = shoal_proto::Endpoint::new(config).expect("endpoint");
        endpoint
            .connect(
                shoal_proto::Instant::from_millis(1),
                "127.0.0.1:2".parse().expect("address"),
                b"",
            )
            .expect("an attempt")
    }

    /// Plays the thread: after a while (the caller is then blocked on a full queue), takes
    /// every command until the handle is dropped, answering broadcasts as if `peers` were
    /// queued.
    fn slow_thread(taken: Receiver<Command>, peers: usize) -> JoinHandle<Vec<&'static str>> {
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            let mut seen = Vec::new();
            while let Ok(command) = taken.recv() {
                seen.push(match command {
                    Command::Disconnect { code: 7, .. } => "disconnect",
                    Command::Broadcast { reply, .. } => {
                        if let Some(reply) = reply {
                            let _ = reply.send(peers);
                        }
                        "broadcast"
                    }
                    _ => "other",
                });
            }
            seen
        })
    }

    #[test]
    fn a_disconnect_through_network_waits_for_room_in_a_full_queue() {
        let (mut handle, taken) = handle_with_queue(1);
        let conn = some_connection();
        Handle::send(&handle, conn, 0, &b"fills the queue"[..]).expect("queued");
        let thread = slow_thread(taken, 0);
        Network::disconnect(&mut handle, conn, 7);
        drop(handle);
        let seen = thread.join().expect("the test's thread");
        assert_eq!(
            seen,
            ["other", "disconnect"],
            "the close must not be dropped"
        );
    }

    #[test]
    fn a_broadcast_through_network_waits_for_room_and_returns_what_the_thread_queued() {
        let (mut handle, taken) = handle_with_queue(1);
        let conn = some_connection();
        Handle::send(&handle, conn, 0, &b"fills the queue"[..]).expect("queued");
        let thread = slow_thread(taken, 3);
        let queued = Network::broadcast(&mut handle, 0, &b"to all"[..], None);
        drop(handle);
        let seen = thread.join().expect("the test's thread");
        assert_eq!(seen, ["other", "broadcast"]);
        assert_eq!(queued, 3, "the count the thread queued for");
    }

    /// A connection whose `Connected` waits in the thread's backlog (the channel was full)
    /// is not among the peers the thread names, nor broadcast to, until it is handed over.
    #[test]
    fn peers_are_those_whose_connected_is_in_the_channel() {
        let config = |seed| Config {
            secret_seed: Some(shoal_proto::SecretSeed::insecure_from_u64(seed)),
            ..Config::default()
        };
        let server = Driver::bind("127.0.0.1:0", config(1)).expect("bind server");
        let mut client = Driver::bind("127.0.0.1:0", config(2)).expect("bind client");
        let (commands, command_rx) = mpsc::sync_channel(1);
        let (output_tx, outputs) = mpsc::sync_channel(1);
        let mut worker = Worker {
            driver: server,
            commands: command_rx,
            outputs: output_tx,
            backlog: std::collections::VecDeque::new(),
            wake_armed: None,
            dropped_failures: Arc::new(AtomicU64::new(0)),
        };
        let conn = client
            .connect(worker.driver.local_addr(), b"")
            .expect("connect");
        // The channel is full: whatever the server's endpoint says next waits in the backlog.
        worker
            .outputs
            .try_send(Output::SendFailed {
                conn,
                channel: 0,
                error: SendError::UnknownConnection,
            })
            .expect("room for one");
        for _ in 0..200 {
            client.poll(Some(Duration::from_millis(5))).expect("client");
            worker
                .driver
                .poll(Some(Duration::from_millis(5)))
                .expect("server");
            worker.hand_over();
            if !worker.backlog.is_empty() {
                break;
            }
        }
        assert_eq!(worker.driver.peers().len(), 1, "connected");
        assert!(worker.peers().is_empty(), "its Connected is in the backlog");
        let (reply, answer) = mpsc::sync_channel(1);
        let broadcast = Command::Broadcast {
            channel: 3,
            payload: Bytes::from_static(b"early"),
            except: None,
            reply: Some(reply),
        };
        commands.send(broadcast).expect("queued");
        assert!(worker.apply_commands());
        assert_eq!(answer.recv().expect("answer"), 0);
        assert!(matches!(outputs.recv(), Ok(Output::SendFailed { .. })));
        worker.hand_over();
        assert!(matches!(
            outputs.recv(),
            Ok(Output::Event(Event::Connected { .. }))
        ));
        assert_eq!(worker.peers().len(), 1, "handed over");
    }

    #[test]
    fn wake_ups_are_coalesced_until_the_thread_looks() {
        let driver = Driver::bind("127.0.0.1:0", Config::default()).expect("bind");
        let waker = Waker::new(driver.local_addr()).expect("waker");
        waker.wake();
        waker.wake();
        assert!(waker.armed.load(Ordering::SeqCst));
        // Only one datagram was sent.
        let mut buf = [0u8; 16];
        driver
            .socket_for_tests()
            .set_nonblocking(true)
            .expect("nonblocking");
        std::thread::sleep(Duration::from_millis(20));
        assert!(driver.socket_for_tests().recv_from(&mut buf).is_ok());
        assert!(driver.socket_for_tests().recv_from(&mut buf).is_err());
    }
}
