//! [`EventLoop`]: a [`MioDriver`] with a `mio::Poll` of its own, for standalone use.

use std::io;
use std::net::ToSocketAddrs;
use std::ops::ControlFlow;
use std::time::Duration;

use mio::{Events, Poll, Token};
use shoal_proto::{Config, Event};

use crate::driver::MioDriver;

/// The token the loop registers its driver under.
pub const DRIVER_TOKEN: Token = Token(0);

/// Why [`EventLoop::run_until`] returned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RunOutcome {
    /// The handler returned `ControlFlow::Break`.
    Stopped,
    /// The deadline passed.
    DeadlineReached,
}

/// A [`MioDriver`] that owns its `mio::Poll`: the whole loop for a program that has no event
/// loop of its own (a server, a tool, a test).
///
/// ```
/// use std::ops::ControlFlow;
/// use std::time::{Duration, Instant};
/// use shoal_mio::{Config, EventLoop, RunOutcome};
///
/// # fn main() -> std::io::Result<()> {
/// let mut server = EventLoop::bind("127.0.0.1:0", Config::default())?;
/// // Nobody connects: the loop returns at the deadline.
/// let outcome = server.run_until(Instant::now() + Duration::from_millis(20), |_driver, _event| {
///     ControlFlow::Continue(())
/// })?;
/// assert_eq!(outcome, RunOutcome::DeadlineReached);
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct EventLoop {
    poll: Poll,
    events: Events,
    driver: MioDriver,
}

impl EventLoop {
    /// Binds a [`MioDriver`] to `addr` and registers it in a new `Poll`.
    pub fn bind(addr: impl ToSocketAddrs, config: Config) -> io::Result<Self> {
        Self::new(MioDriver::bind(addr, config)?)
    }

    /// Registers `driver` in a new `Poll` under [`DRIVER_TOKEN`].
    pub fn new(mut driver: MioDriver) -> io::Result<Self> {
        let poll = Poll::new()?;
        driver.register(poll.registry(), DRIVER_TOKEN)?;
        Ok(EventLoop {
            poll,
            events: Events::with_capacity(16),
            driver,
        })
    }

    /// The driver, for its getters.
    pub fn driver(&self) -> &MioDriver {
        &self.driver
    }

    /// The driver, to connect, send, and read events between turns.
    pub fn driver_mut(&mut self) -> &mut MioDriver {
        &mut self.driver
    }

    /// One turn: sends what is queued, sleeps until the socket is ready, a timer is due or
    /// `timeout` passes (`None`: no limit besides the timers), reads, runs the timers and
    /// sends again. Events wait in the driver: drain them with
    /// [`poll_event`](shoal_std::DriverCore::poll_event) afterwards.
    pub fn run_once(&mut self, timeout: Option<Duration>) -> io::Result<()> {
        self.driver.update()?;
        let wait = match (self.driver.next_timeout(), timeout) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        match self.poll.poll(&mut self.events, wait) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
        for event in self.events.iter() {
            if event.token() == DRIVER_TOKEN {
                self.driver.on_event(event)?;
            }
        }
        self.driver.update()
    }

    /// Runs turns until `deadline`, passing each event to `handler` with the driver (to
    /// reply, connect, disconnect). Returns when the handler breaks or at the deadline;
    /// whatever the handler queued is flushed before it returns.
    pub fn run_until<F>(
        &mut self,
        deadline: std::time::Instant,
        mut handler: F,
    ) -> io::Result<RunOutcome>
    where
        F: FnMut(&mut MioDriver, Event) -> ControlFlow<()>,
    {
        loop {
            while let Some(event) = self.driver.poll_event() {
                if handler(&mut self.driver, event).is_break() {
                    self.driver.flush();
                    return Ok(RunOutcome::Stopped);
                }
            }
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                self.driver.flush();
                return Ok(RunOutcome::DeadlineReached);
            }
            self.run_once(Some(left))?;
        }
    }
}
