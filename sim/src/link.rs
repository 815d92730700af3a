//! The link model: what happens to a datagram between two nodes, per direction.

use core::fmt;
use core::time::Duration;

use shoal_proto::Instant;

use crate::rng::SimRng;
use crate::simulator::FastMap;

/// Gilbert–Elliott burst loss: a two-state Markov chain stepped once per datagram. In the
/// good state datagrams are lost with `loss_good`, in the bad state with `loss_bad`.
///
/// The mean burst length is `1 / p_bad_to_good` datagrams, and the long-run share of time in
/// the bad state is `p_good_to_bad / (p_good_to_bad + p_bad_to_good)`.
///
/// ```
/// use shoal_sim::BurstLoss;
/// let bursts = BurstLoss::new(0.01, 0.25); // bursts of 4 datagrams on average
/// assert!((bursts.mean_loss() - 0.0385).abs() < 0.001);
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BurstLoss {
    /// Probability of moving from the good to the bad state, per datagram.
    pub p_good_to_bad: f64,
    /// Probability of moving from the bad to the good state, per datagram.
    pub p_bad_to_good: f64,
    /// Loss probability in the good state.
    pub loss_good: f64,
    /// Loss probability in the bad state.
    pub loss_bad: f64,
}

impl BurstLoss {
    /// Bursts entered with `p_good_to_bad` and left with `p_bad_to_good`, losing everything in
    /// the bad state and nothing in the good one.
    pub fn new(p_good_to_bad: f64, p_bad_to_good: f64) -> Self {
        BurstLoss {
            p_good_to_bad,
            p_bad_to_good,
            loss_good: 0.0,
            loss_bad: 1.0,
        }
    }

    /// Bursts that lose `loss` of all datagrams in the long run, `mean_burst` datagrams in a
    /// row on average (every one inside a burst lost, none outside). `None` unless
    /// `0 < loss < 1` and `mean_burst >= 1`, or if bursts that short cannot lose that much
    /// (gaps of at least one datagram between them: `loss / (1 - loss) <= mean_burst`).
    ///
    /// A burst is counted in datagrams, not time: on a link that carries few, such as one
    /// whose sender is waiting out a probe timeout, a burst of four can last seconds.
    ///
    /// ```
    /// use shoal_sim::BurstLoss;
    /// let bursts = BurstLoss::averaging(0.01, 4.0).expect("a loss rate and a burst length");
    /// assert!((bursts.mean_loss() - 0.01).abs() < 1e-12);
    /// assert_eq!(bursts.p_bad_to_good, 0.25);
    /// ```
    pub fn averaging(loss: f64, mean_burst: f64) -> Option<Self> {
        if !(loss > 0.0 && loss < 1.0 && mean_burst >= 1.0) {
            return None;
        }
        let leave = 1.0 / mean_burst;
        // In the long run the bad state holds enter / (enter + leave) of the datagrams.
        let enter = leave * loss / (1.0 - loss);
        (enter <= 1.0).then(|| BurstLoss::new(enter, leave))
    }

    /// The long-run loss rate this chain produces.
    pub fn mean_loss(&self) -> f64 {
        let total = self.p_good_to_bad + self.p_bad_to_good;
        if total <= 0.0 {
            return self.loss_good;
        }
        let bad_share = self.p_good_to_bad / total;
        bad_share * self.loss_bad + (1.0 - bad_share) * self.loss_good
    }
}

/// Outages in time: the link alternates between up and down, each period drawn from an
/// exponential distribution with its mean, and loses every datagram sent while it is down.
///
/// Unlike [`BurstLoss`], whose bursts are counted in datagrams, an outage lasts as long
/// however much the link carries: a connection that sends only a probe now and then sees
/// the same outages as one that sends a packet every millisecond (a radio fade, a Wi-Fi
/// roam, a route change).
///
/// ```
/// use core::time::Duration;
/// use shoal_sim::Outages;
/// // Down 1% of the time, 200 ms at a time.
/// let fades = Outages::averaging(0.01, Duration::from_millis(200)).expect("a share and a length");
/// assert!((fades.mean_loss() - 0.01).abs() < 1e-9);
/// assert_eq!(fades.mean_down, Duration::from_millis(200));
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Outages {
    /// Mean time the link stays up between two outages.
    pub mean_up: Duration,
    /// Mean length of an outage.
    pub mean_down: Duration,
}

impl Outages {
    /// Outages of `mean_down` on average that take `loss` of the time in the long run.
    /// `None` unless `0 < loss < 1` and `mean_down` is not zero.
    pub fn averaging(loss: f64, mean_down: Duration) -> Option<Self> {
        if !(loss > 0.0 && loss < 1.0) || mean_down.is_zero() {
            return None;
        }
        let mean_up = Duration::try_from_secs_f64(mean_down.as_secs_f64() * (1.0 - loss) / loss)
            .ok()
            .filter(|up| !up.is_zero())?;
        Some(Outages { mean_up, mean_down })
    }

    /// The long-run share of the time the link is down (and of datagrams lost, for a
    /// sender that does not time its datagrams by the outages).
    pub fn mean_loss(&self) -> f64 {
        let (up, down) = (self.mean_up.as_secs_f64(), self.mean_down.as_secs_f64());
        if up + down <= 0.0 {
            return 0.0;
        }
        down / (up + down)
    }
}

/// How one direction of a link treats datagrams. The [`Default`] is a perfect link: no delay,
/// no loss, unlimited bandwidth, a 64 KiB MTU.
///
/// A datagram goes through these steps in order, each counted when it drops one
/// ([`DropCause`]): MTU check, link down / partition, the bandwidth queue, i.i.d. loss, burst
/// loss, outages; a survivor is delayed by `latency` plus a uniform `[0, jitter]`, and maybe by
/// `reorder_delay` more, and maybe duplicated (the copy gets its own delay).
///
/// Jitter keeps each direction in order by default (a datagram never arrives before one sent
/// earlier on the same link, as with queueing delay on a real path); set `jitter_reorders`
/// to let it reorder freely, as Linux netem does. `reorder` reorders on purpose either way.
///
/// ```
/// use core::time::Duration;
/// use shoal_sim::LinkConfig;
/// let wan = LinkConfig {
///     latency: Duration::from_millis(40),
///     jitter: Duration::from_millis(5),
///     loss: 0.02,
///     bandwidth: Some(1_000_000), // 1 MB/s
///     ..LinkConfig::default()
/// };
/// assert!(wan.validate().is_ok());
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LinkConfig {
    /// One-way propagation delay.
    pub latency: Duration,
    /// Extra delay, uniform in `[0, jitter]`, drawn per datagram.
    pub jitter: Duration,
    /// Whether jitter may reorder datagrams (otherwise a datagram waits for the one before).
    pub jitter_reorders: bool,
    /// Independent loss probability per datagram.
    pub loss: f64,
    /// Burst loss on top of `loss`, if any.
    pub burst_loss: Option<BurstLoss>,
    /// Outages in time on top of both, if any.
    pub outages: Option<Outages>,
    /// Probability that a datagram is delivered twice.
    pub duplicate: f64,
    /// Probability that a datagram is held back by `reorder_delay`, so later ones overtake it.
    pub reorder: f64,
    /// Extra delay of a reordered datagram.
    pub reorder_delay: Duration,
    /// Bottleneck rate in bytes per second (`None`: unlimited). Datagrams wait in a FIFO
    /// queue while the link serializes earlier ones.
    pub bandwidth: Option<u64>,
    /// Bytes the bandwidth queue holds; a datagram that does not fit is dropped (drop-tail).
    pub queue_bytes: usize,
    /// Largest datagram the link carries; larger ones are dropped.
    pub mtu: usize,
}

impl Default for LinkConfig {
    fn default() -> Self {
        LinkConfig {
            latency: Duration::ZERO,
            jitter: Duration::ZERO,
            jitter_reorders: false,
            loss: 0.0,
            burst_loss: None,
            outages: None,
            duplicate: 0.0,
            reorder: 0.0,
            reorder_delay: Duration::from_millis(10),
            bandwidth: None,
            queue_bytes: 64 * 1024,
            mtu: 65_535,
        }
    }
}

/// A [`LinkConfig`] value that makes no sense.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum LinkConfigError {
    /// A probability outside `[0, 1]` (or NaN), with the field's name.
    Probability(&'static str, f64),
    /// A bandwidth of zero bytes per second.
    ZeroBandwidth,
    /// An MTU of zero.
    ZeroMtu,
    /// Outages whose mean up or down time is zero.
    ZeroOutagePeriod,
}

impl fmt::Display for LinkConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LinkConfigError::Probability(field, p) => {
                write!(
                    f,
                    "link {field} must be a probability between 0 and 1, got {p}"
                )
            }
            LinkConfigError::ZeroBandwidth => {
                f.write_str("link bandwidth must be above zero (use None for unlimited)")
            }
            LinkConfigError::ZeroMtu => f.write_str("link MTU must be above zero"),
            LinkConfigError::ZeroOutagePeriod => {
                f.write_str("link outages need a mean up time and a mean outage length above zero")
            }
        }
    }
}

impl std::error::Error for LinkConfigError {}

impl LinkConfig {
    /// Checks that probabilities are probabilities and limits are positive.
    pub fn validate(&self) -> Result<(), LinkConfigError> {
        let mut probabilities = vec![
            ("loss", self.loss),
            ("duplicate", self.duplicate),
            ("reorder", self.reorder),
        ];
        if let Some(b) = &self.burst_loss {
            probabilities.extend([
                ("burst_loss.p_good_to_bad", b.p_good_to_bad),
                ("burst_loss.p_bad_to_good", b.p_bad_to_good),
                ("burst_loss.loss_good", b.loss_good),
                ("burst_loss.loss_bad", b.loss_bad),
            ]);
        }
        for (field, p) in probabilities {
            if !(0.0..=1.0).contains(&p) {
                return Err(LinkConfigError::Probability(field, p));
            }
        }
        if self.bandwidth == Some(0) {
            return Err(LinkConfigError::ZeroBandwidth);
        }
        if self.mtu == 0 {
            return Err(LinkConfigError::ZeroMtu);
        }
        if self
            .outages
            .is_some_and(|o| o.mean_up.is_zero() || o.mean_down.is_zero())
        {
            return Err(LinkConfigError::ZeroOutagePeriod);
        }
        Ok(())
    }
}

/// Why the simulated network dropped a datagram.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(usize)]
pub enum DropCause {
    /// Independent random loss ([`LinkConfig::loss`]).
    RandomLoss,
    /// Gilbert–Elliott burst loss ([`LinkConfig::burst_loss`]).
    BurstLoss,
    /// Sent during an outage ([`LinkConfig::outages`]).
    Outage,
    /// The bandwidth queue was full ([`LinkConfig::queue_bytes`]).
    QueueFull,
    /// Larger than the link's MTU.
    Mtu,
    /// A partition separated sender and receiver.
    Partition,
    /// The link was down.
    LinkDown,
    /// No node has the destination address (e.g. the old address of a rebound node).
    Unroutable,
    /// A NAT had no mapping at the destination port.
    NatNoMapping,
    /// A NAT's filter refused the sender ([`NatKind`](crate::NatKind)).
    NatFiltered,
    /// A NAT's mapping had gone idle for longer than its timeout.
    NatExpired,
    /// A NAT needed a new mapping or filter entry and its table was full.
    NatTableFull,
    /// A datagram from inside a NAT to one of its public mappings, with hairpinning off.
    NatNoHairpin,
}

impl DropCause {
    /// Number of causes.
    pub const COUNT: usize = 13;
    /// Every cause, in counter order.
    pub const ALL: [DropCause; DropCause::COUNT] = [
        DropCause::RandomLoss,
        DropCause::BurstLoss,
        DropCause::Outage,
        DropCause::QueueFull,
        DropCause::Mtu,
        DropCause::Partition,
        DropCause::LinkDown,
        DropCause::Unroutable,
        DropCause::NatNoMapping,
        DropCause::NatFiltered,
        DropCause::NatExpired,
        DropCause::NatTableFull,
        DropCause::NatNoHairpin,
    ];

    /// A short snake_case name, for tables.
    pub fn name(self) -> &'static str {
        match self {
            DropCause::RandomLoss => "random_loss",
            DropCause::BurstLoss => "burst_loss",
            DropCause::Outage => "outage",
            DropCause::QueueFull => "queue_full",
            DropCause::Mtu => "mtu",
            DropCause::Partition => "partition",
            DropCause::LinkDown => "link_down",
            DropCause::Unroutable => "unroutable",
            DropCause::NatNoMapping => "nat_no_mapping",
            DropCause::NatFiltered => "nat_filtered",
            DropCause::NatExpired => "nat_expired",
            DropCause::NatTableFull => "nat_table_full",
            DropCause::NatNoHairpin => "nat_no_hairpin",
        }
    }
}

impl fmt::Display for DropCause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Datagrams the simulated network dropped, by [`DropCause`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LinkDrops {
    counts: [u64; DropCause::COUNT],
}

impl LinkDrops {
    /// Drops for `cause`.
    pub fn get(&self, cause: DropCause) -> u64 {
        self.counts[cause as usize]
    }

    /// All drops.
    pub fn total(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// `(cause, count)` for every cause with a non-zero count, in [`DropCause::ALL`] order.
    pub fn iter(&self) -> impl Iterator<Item = (DropCause, u64)> + '_ {
        DropCause::ALL
            .iter()
            .map(|&c| (c, self.get(c)))
            .filter(|&(_, n)| n > 0)
    }

    pub(crate) fn add(&mut self, cause: DropCause) {
        self.counts[cause as usize] += 1;
    }
}

/// What the link decided for one datagram.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum LinkVerdict {
    Drop(DropCause),
    /// Deliver at `at`; `reordered` if held back; `duplicate_at` for a second copy.
    Deliver {
        at: Instant,
        reordered: bool,
        duplicate_at: Option<Instant>,
    },
}

/// Per-direction mutable state: the burst-loss chain, the outages, the bandwidth queue, the
/// last arrival.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct LinkState {
    in_bad_state: bool,
    /// Whether an outage held the link at its last datagram.
    down: bool,
    /// When the outage state changes next, as drawn at the last datagram (`None` before the
    /// first).
    next_flip: Option<Instant>,
    /// When the bottleneck finishes serializing what it holds, in nanoseconds.
    busy_until_ns: u64,
    /// Arrival time of the latest in-order datagram (jitter does not reorder past it).
    last_arrival: Instant,
}

/// The states of every link that keeps one, found without a hash lookup in the common case.
///
/// A node's first peer gets the node's own slot, holding both directions of that pair;
/// other pairs go to a map. With thousands of clients each talking to one server, every
/// link is in a slot, and a server tick (which sends in client order) reads the slots in
/// order rather than at hashed places all over a map.
#[derive(Debug, Default)]
pub(crate) struct LinkStates {
    slots: Vec<PeerLinks>,
    others: FastMap<(u32, u32), LinkState>,
}

/// Node `i`'s slot: the links between it and `peer`, each way.
#[derive(Clone, Copy, Debug)]
struct PeerLinks {
    /// `NO_PEER` while the slot is free.
    peer: u32,
    out: LinkState,
    back: LinkState,
}

const NO_PEER: u32 = u32::MAX;

impl LinkStates {
    /// Node `node`'s slot (the links to its first peer), for a prefetch: nothing is read.
    pub(crate) fn slot(&self, node: u32) -> Option<&impl Sized> {
        self.slots.get(node as usize)
    }

    /// The state of the link from node `from` to node `to`, made on first use.
    pub(crate) fn get(&mut self, from: u32, to: u32) -> &mut LinkState {
        let (f, t) = (from as usize, to as usize);
        let need = f.max(t) + 1;
        if self.slots.len() < need {
            let free = PeerLinks {
                peer: NO_PEER,
                out: LinkState::default(),
                back: LinkState::default(),
            };
            self.slots.resize(need, free);
        }
        // A slot's peer never changes once set, so each link stays where it was first put.
        if self.slots[f].peer == to {
            return &mut self.slots[f].out;
        }
        if self.slots[t].peer == from {
            return &mut self.slots[t].back;
        }
        if !self.others.contains_key(&(from, to)) {
            if self.slots[f].peer == NO_PEER {
                self.slots[f].peer = to;
                return &mut self.slots[f].out;
            }
            if self.slots[t].peer == NO_PEER {
                self.slots[t].peer = from;
                return &mut self.slots[t].back;
            }
        }
        self.others.entry((from, to)).or_default()
    }
}

impl LinkState {
    /// Whether `link` needs state kept between datagrams (otherwise a fresh state will do).
    pub(crate) fn is_needed(link: &LinkConfig) -> bool {
        link.bandwidth.is_some()
            || link.burst_loss.is_some()
            || link.outages.is_some()
            || (!link.jitter.is_zero() && !link.jitter_reorders)
    }
}

impl LinkState {
    /// Whether `outages` hold the link at `now`. The periods are exponential, so the state
    /// is a two-state Markov chain in continuous time: past the change drawn last, the
    /// state at `now` follows from the time since that change alone, however many changes a
    /// quiet link slept through (one draw, not one per period), and the next change is
    /// drawn afresh from `now`.
    fn in_outage(&mut self, outages: &Outages, now: Instant, rng: &mut SimRng) -> bool {
        let (up, down) = (
            outages.mean_up.as_secs_f64(),
            outages.mean_down.as_secs_f64(),
        );
        match self.next_flip {
            Some(at) if at > now => return self.down,
            Some(at) => {
                // Down (1) or up (0) just after the change at `at`, then its pull towards
                // the long-run share fading with the time since.
                let after = f64::from(u8::from(!self.down));
                let share_down = down / (up + down);
                let since = now.saturating_duration_since(at).as_secs_f64();
                let memory = (-(1.0 / up + 1.0 / down) * since).exp();
                self.down = rng.chance(share_down + (after - share_down) * memory);
            }
            // A link starts up.
            None => self.down = false,
        }
        let mean = if self.down { down } else { up };
        // (A float cast saturates: an absurdly long draw is merely far away.)
        let wait_micros = (rng.exponential(mean) * 1e6) as u64;
        self.next_flip = Some(Instant::from_micros(
            now.as_micros().saturating_add(wait_micros),
        ));
        self.down
    }

    /// Runs a datagram of `len` bytes, sent at `now`, through the bandwidth queue, loss and
    /// delay of `link`. The MTU, link-down and partition checks happen before (they need no
    /// state).
    pub(crate) fn transmit(
        &mut self,
        link: &LinkConfig,
        now: Instant,
        len: usize,
        rng: &mut SimRng,
    ) -> LinkVerdict {
        let now_ns = now.as_micros().saturating_mul(1000);
        let mut depart_ns = now_ns;
        if let Some(rate) = link.bandwidth {
            let start = self.busy_until_ns.max(now_ns);
            let backlog_bytes = u128::from(start - now_ns) * u128::from(rate) / 1_000_000_000;
            if backlog_bytes + len as u128 > link.queue_bytes as u128 {
                return LinkVerdict::Drop(DropCause::QueueFull);
            }
            let serialize_ns = (len as u128 * 1_000_000_000).div_ceil(u128::from(rate));
            depart_ns = start.saturating_add(u64::try_from(serialize_ns).unwrap_or(u64::MAX));
            self.busy_until_ns = depart_ns;
        }
        if rng.chance(link.loss) {
            return LinkVerdict::Drop(DropCause::RandomLoss);
        }
        if let Some(b) = &link.burst_loss {
            let flip = if self.in_bad_state {
                b.p_bad_to_good
            } else {
                b.p_good_to_bad
            };
            if rng.chance(flip) {
                self.in_bad_state = !self.in_bad_state;
            }
            let p = if self.in_bad_state {
                b.loss_bad
            } else {
                b.loss_good
            };
            if rng.chance(p) {
                return LinkVerdict::Drop(DropCause::BurstLoss);
            }
        }
        if let Some(o) = &link.outages {
            if self.in_outage(o, now, rng) {
                return LinkVerdict::Drop(DropCause::Outage);
            }
        }
        let depart = Instant::from_micros(depart_ns.div_ceil(1000));
        let reordered = rng.chance(link.reorder);
        let mut at = depart + delay(link, rng);
        if reordered {
            at += link.reorder_delay;
        } else if !link.jitter_reorders {
            at = at.max(self.last_arrival);
            self.last_arrival = at;
        }
        let duplicate_at = rng
            .chance(link.duplicate)
            .then(|| depart + delay(link, rng));
        LinkVerdict::Deliver {
            at,
            reordered,
            duplicate_at,
        }
    }
}

fn delay(link: &LinkConfig, rng: &mut SimRng) -> Duration {
    let jitter = u64::try_from(link.jitter.as_micros()).unwrap_or(u64::MAX);
    if jitter == 0 {
        link.latency
    } else {
        link.latency + Duration::from_micros(rng.below(jitter.saturating_add(1)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Losses of `link` for a sender of one datagram every `every`, `count` times: the share
    /// lost and the mean length of a run of losses, in datagrams.
    fn loss_runs(link: &LinkConfig, every: Duration, count: u64, seed: u64) -> (f64, f64) {
        let mut state = LinkState::default();
        let mut rng = SimRng::new(seed);
        let (mut lost, mut runs, mut in_run) = (0u64, 0u64, false);
        for i in 0..count {
            let now = Instant::ZERO + every * u32::try_from(i).expect("few datagrams");
            let dropped = matches!(
                state.transmit(link, now, 100, &mut rng),
                LinkVerdict::Drop(DropCause::BurstLoss | DropCause::Outage)
            );
            lost += u64::from(dropped);
            runs += u64::from(dropped && !in_run);
            in_run = dropped;
        }
        (lost as f64 / count as f64, lost as f64 / runs.max(1) as f64)
    }

    /// Outages are in time: a sender of a datagram a millisecond and one of a datagram every
    /// quarter second both lose the share of time the link is down; the first loses each
    /// outage's 100 ms as a run of about 100 datagrams, the second mostly one at a time.
    /// Bursts counted in datagrams make the sparse sender lose runs as long as the dense.
    #[test]
    fn outages_last_a_time_however_much_the_link_carries() {
        let outages = Outages::averaging(0.1, Duration::from_millis(100)).expect("valid");
        assert_eq!(outages.mean_up, Duration::from_millis(900));
        let link = LinkConfig {
            outages: Some(outages),
            ..LinkConfig::default()
        };
        let (dense, dense_run) = loss_runs(&link, Duration::from_millis(1), 2_000_000, 1);
        let (sparse, sparse_run) = loss_runs(&link, Duration::from_millis(250), 200_000, 2);
        assert!((dense - 0.1).abs() < 0.01, "dense sender lost {dense}");
        assert!((sparse - 0.1).abs() < 0.01, "sparse sender lost {sparse}");
        assert!(
            (85.0..115.0).contains(&dense_run),
            "dense runs of {dense_run}"
        );
        assert!(sparse_run < 1.2, "sparse runs of {sparse_run}");

        let bursts = LinkConfig {
            burst_loss: BurstLoss::averaging(0.1, 100.0),
            ..LinkConfig::default()
        };
        let (_, sparse_burst_run) = loss_runs(&bursts, Duration::from_millis(250), 200_000, 2);
        assert!(sparse_burst_run > 50.0, "bursts of {sparse_burst_run}");
    }

    #[test]
    fn outages_need_both_periods() {
        let down = |mean_up, mean_down| LinkConfig {
            outages: Some(Outages { mean_up, mean_down }),
            ..LinkConfig::default()
        };
        let ms = Duration::from_millis;
        assert_eq!(down(ms(900), ms(100)).validate(), Ok(()));
        for bad in [down(ms(0), ms(100)), down(ms(900), ms(0))] {
            assert_eq!(bad.validate(), Err(LinkConfigError::ZeroOutagePeriod));
        }
        assert_eq!(Outages::averaging(0.0, ms(100)), None);
        assert_eq!(Outages::averaging(0.5, ms(0)), None);
    }

    /// `BurstLoss::averaging` asks for a long-run loss and a mean run length: a link stepped
    /// 400,000 times loses that share, in runs of that length on average.
    #[test]
    fn bursts_averaging_a_loss_lose_that_share_in_runs_of_that_length() {
        assert_eq!(BurstLoss::averaging(0.0, 4.0), None);
        assert_eq!(BurstLoss::averaging(0.01, 0.5), None);
        assert_eq!(
            BurstLoss::averaging(0.6, 1.0),
            None,
            "gaps would be shorter than one"
        );
        assert!(BurstLoss::averaging(0.6, 2.0).is_some());
        let link = LinkConfig {
            burst_loss: BurstLoss::averaging(0.02, 5.0),
            ..LinkConfig::default()
        };
        let mut state = LinkState::default();
        let mut rng = SimRng::new(3);
        let (mut lost, mut runs, mut in_run) = (0u32, 0u32, false);
        for i in 0..400_000u64 {
            let verdict = state.transmit(&link, Instant::from_micros(i * 1000), 100, &mut rng);
            let dropped = matches!(verdict, LinkVerdict::Drop(DropCause::BurstLoss));
            lost += u32::from(dropped);
            runs += u32::from(dropped && !in_run);
            in_run = dropped;
        }
        let share = f64::from(lost) / 400_000.0;
        let mean_run = f64::from(lost) / f64::from(runs);
        assert!((share - 0.02).abs() < 0.002, "lost {share}");
        assert!((mean_run - 5.0).abs() < 0.5, "runs of {mean_run}");
    }

    /// Every link keeps one state of its own however the pairs come: the table agrees with
    /// a plain map from (from, to) through a star's links and a mesh's, interleaved.
    #[test]
    fn link_states_keep_one_state_per_link() {
        let mut table = LinkStates::default();
        let mut model: std::collections::HashMap<(u32, u32), u64> = Default::default();
        let mut rng = SimRng::new(7);
        for step in 0..20_000u64 {
            let (from, to) = match rng.below(3) {
                // A star around node 0 (a client's slot holds both ways).
                0 => (0, 1 + rng.below(50) as u32),
                1 => (1 + rng.below(50) as u32, 0),
                // A mesh among a few nodes (first peers in slots, the rest in the map).
                _ => {
                    let a = 40 + rng.below(12) as u32;
                    let b = 40 + rng.below(12) as u32;
                    if a == b {
                        continue;
                    }
                    (a, b)
                }
            };
            let state = table.get(from, to);
            let seen = model.entry((from, to)).or_default();
            assert_eq!(state.busy_until_ns, *seen, "link {from} -> {to}");
            state.busy_until_ns = step + 1;
            *seen = step + 1;
        }
        assert!(!table.others.is_empty(), "the mesh used the map too");
    }

    fn run(link: &LinkConfig, n: usize, seed: u64) -> Vec<LinkVerdict> {
        let mut state = LinkState::default();
        let mut rng = SimRng::new(seed);
        (0..n)
            .map(|i| state.transmit(link, Instant::from_millis(i as u64), 100, &mut rng))
            .collect()
    }

    #[test]
    fn perfect_link_delivers_after_latency() {
        let link = LinkConfig {
            latency: Duration::from_millis(30),
            ..LinkConfig::default()
        };
        let v = run(&link, 3, 1);
        assert_eq!(
            v[2],
            LinkVerdict::Deliver {
                at: Instant::from_millis(32),
                reordered: false,
                duplicate_at: None
            }
        );
    }

    #[test]
    fn jitter_stays_within_bounds() {
        let link = LinkConfig {
            latency: Duration::from_millis(10),
            jitter: Duration::from_millis(5),
            ..LinkConfig::default()
        };
        for (i, v) in run(&link, 500, 2).into_iter().enumerate() {
            let LinkVerdict::Deliver { at, .. } = v else {
                panic!("lost on a lossless link")
            };
            let d = at - Instant::from_millis(i as u64);
            assert!(
                d >= Duration::from_millis(10) && d <= Duration::from_millis(15),
                "{d:?}"
            );
        }
    }

    #[test]
    fn jitter_keeps_order_unless_allowed_to_reorder() {
        let mut link = LinkConfig {
            latency: Duration::from_millis(10),
            jitter: Duration::from_millis(20),
            ..LinkConfig::default()
        };
        let arrivals = |link: &LinkConfig| -> Vec<Instant> {
            let mut state = LinkState::default();
            let mut rng = SimRng::new(9);
            (0..200)
                .filter_map(|i| {
                    match state.transmit(link, Instant::from_micros(i * 500), 100, &mut rng) {
                        LinkVerdict::Deliver { at, .. } => Some(at),
                        LinkVerdict::Drop(_) => None,
                    }
                })
                .collect()
        };
        assert!(arrivals(&link).windows(2).all(|w| w[0] <= w[1]));
        link.jitter_reorders = true;
        assert!(arrivals(&link).windows(2).any(|w| w[0] > w[1]));
    }

    #[test]
    fn burst_loss_rate_and_burstiness() {
        let link = LinkConfig {
            burst_loss: Some(BurstLoss::new(0.02, 0.2)),
            ..LinkConfig::default()
        };
        let v = run(&link, 100_000, 3);
        let lost: Vec<bool> = v
            .iter()
            .map(|v| matches!(v, LinkVerdict::Drop(_)))
            .collect();
        let rate = lost.iter().filter(|&&l| l).count() as f64 / lost.len() as f64;
        let expected = BurstLoss::new(0.02, 0.2).mean_loss();
        assert!(
            (rate - expected).abs() < 0.01,
            "rate {rate}, expected {expected}"
        );
        // Bursty: a loss is far more likely right after a loss than on average.
        let after_loss = lost.windows(2).filter(|w| w[0]).count();
        let loss_after_loss = lost.windows(2).filter(|w| w[0] && w[1]).count();
        assert!(loss_after_loss as f64 / after_loss as f64 > 0.7);
    }

    #[test]
    fn bandwidth_spaces_datagrams_and_drops_tail() {
        let link = LinkConfig {
            bandwidth: Some(100_000), // 100 bytes take 1 ms
            queue_bytes: 450,
            ..LinkConfig::default()
        };
        let mut state = LinkState::default();
        let mut rng = SimRng::new(4);
        let now = Instant::from_millis(10);
        let verdicts: Vec<_> = (0..6)
            .map(|_| state.transmit(&link, now, 100, &mut rng))
            .collect();
        let arrivals: Vec<_> = verdicts
            .iter()
            .filter_map(|v| match v {
                LinkVerdict::Deliver { at, .. } => Some(at.as_micros()),
                LinkVerdict::Drop(_) => None,
            })
            .collect();
        assert_eq!(arrivals, vec![11_000, 12_000, 13_000, 14_000]);
        assert_eq!(verdicts[4], LinkVerdict::Drop(DropCause::QueueFull));
        // Once the queue drained, the link takes datagrams again.
        let later = state.transmit(&link, Instant::from_millis(20), 100, &mut rng);
        assert!(matches!(later, LinkVerdict::Deliver { at, .. } if at == Instant::from_millis(21)));
    }

    #[test]
    fn validate_rejects_nonsense() {
        let bad = LinkConfig {
            loss: 1.5,
            ..LinkConfig::default()
        };
        assert_eq!(
            bad.validate(),
            Err(LinkConfigError::Probability("loss", 1.5))
        );
        let nan = LinkConfig {
            duplicate: f64::NAN,
            ..LinkConfig::default()
        };
        assert!(nan.validate().is_err());
        let zero = LinkConfig {
            bandwidth: Some(0),
            ..LinkConfig::default()
        };
        assert_eq!(zero.validate(), Err(LinkConfigError::ZeroBandwidth));
    }
}
