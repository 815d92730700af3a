//! What a scenario run measured, and its summary table.

use core::fmt;
use core::time::Duration;

use shoal_proto::DropCounts;

use super::drops::{cause_words, reason_words, DropClass};
use super::{Game, Kind, ScenarioConfig};
use crate::{LatencyHistogram, SimStats, Simulator, TurnTimes};

/// Guarantee violations seen by the receivers. All must be zero.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Violations {
    /// Payloads whose bytes, length or header did not match what was sent (or that came on
    /// the wrong channel or in the wrong direction).
    pub corrupted: u64,
    /// Sequenced messages delivered after a newer one (or twice).
    pub sequenced_stale: u64,
    /// Reliable messages delivered more than once.
    pub reliable_duplicated: u64,
    /// Ordered messages delivered out of order, twice, or after a gap.
    pub ordered_out_of_order: u64,
    /// Reliable or ordered messages never delivered although their connection stayed up
    /// until the end of the drain.
    pub reliable_undelivered: u64,
    /// Responses to no pending request, or carrying another request's payload.
    pub unexpected_responses: u64,
}

impl Violations {
    /// All violations.
    pub fn total(&self) -> u64 {
        self.iter().map(|(_, n)| n).sum()
    }

    /// `(name, count)` for every kind of violation, zero or not.
    pub fn iter(&self) -> impl Iterator<Item = (&'static str, u64)> {
        [
            ("corrupted", self.corrupted),
            ("sequenced_stale", self.sequenced_stale),
            ("reliable_duplicated", self.reliable_duplicated),
            ("ordered_out_of_order", self.ordered_out_of_order),
            ("reliable_undelivered", self.reliable_undelivered),
            ("unexpected_responses", self.unexpected_responses),
        ]
        .into_iter()
    }
}

/// Delivery figures of one kind of message.
#[derive(Clone, Debug)]
pub struct KindReport {
    /// The kind.
    pub kind: Kind,
    /// Bytes per message.
    pub size: usize,
    /// Messages sent (requests: requests sent).
    pub sent: u64,
    /// Messages delivered (requests: responses received).
    pub delivered: u64,
    /// Payload bytes the application sent (requests: request and response).
    pub payload_bytes: u64,
    /// Delivery latencies (requests: round trips).
    pub latency: LatencyHistogram,
    /// Latencies by send time, in [`PLOT_BINS`](super::PLOT_BINS) equal bins over the run.
    pub bins: Vec<LatencyHistogram>,
    /// An evenly thinned sample of `(send time µs, latency µs)`.
    pub scatter: Vec<(u64, u64)>,
}

/// Everything a scenario run measured. Its [`Display`](fmt::Display) is the summary table;
/// it holds no wall-clock figures, so equal seeds give equal text.
#[derive(Clone, Debug)]
pub struct Report {
    /// The settings of the run.
    pub config: ScenarioConfig,
    /// Simulated time, including the drain after the traffic stopped.
    pub simulated: Duration,
    /// Per kind of message, in [`Kind::ALL`] order.
    pub kinds: Vec<KindReport>,
    /// Clients whose connection the server accepted.
    pub clients_connected: usize,
    /// How long each connected client took from its `connect` call to its `Connected` event.
    pub connect_times: LatencyHistogram,
    /// Connections that ended during the run, by side and reason.
    pub disconnects: Vec<(String, u64)>,
    /// Datagrams all endpoints sent.
    pub datagrams_sent: u64,
    /// Bytes all endpoints sent (UDP payload).
    pub wire_bytes: u64,
    /// Application payload bytes sent.
    pub payload_bytes: u64,
    /// Frames (messages or message chunks) sent again, after their packet was declared lost
    /// or copied into a probe (live connections at the end).
    pub retransmissions: u64,
    /// Packets declared lost (live connections at the end).
    pub packets_lost: u64,
    /// Packets declared lost that were acknowledged later: late, not lost (live connections
    /// at the end).
    pub spurious_losses: u64,
    /// Probe timeouts that fired: a timer that expires when nothing was acknowledged for a
    /// while and sends up to two probe packets. A timer expiry, not a retransmission; the
    /// frames a probe copies are counted in `retransmissions` (live connections at the end).
    pub probe_timeouts: u64,
    /// Repair blocks sent: forward error correction of small packets under loss (live
    /// connections at the end).
    pub repairs_sent: u64,
    /// Lost packets rebuilt from repair blocks (live connections at the end).
    pub packets_rebuilt: u64,
    /// Drops inside the endpoints, by cause; [`DropClass`] sorts them into redundant copies,
    /// outdated updates and real drops.
    pub proto_drops: DropCounts,
    /// The simulated network's counters (its drops by cause among them).
    pub sim: SimStats,
    /// Where the run's wall time went, by happening (all zero unless
    /// [`ScenarioConfig::time_turns`]).
    pub turn_times: TurnTimes,
    /// Guarantee violations.
    pub violations: Violations,
    /// Requests that got no response in time.
    pub request_timeouts: u64,
    /// Sends the endpoints refused (e.g. a full queue).
    pub send_errors: u64,
    /// The simulator's trace hash: equal for equal runs.
    pub trace_hash: u64,
}

pub(super) fn build(sim: &Simulator, game: &Game, end: shoal_proto::Instant) -> Report {
    let config = &game.config;
    let mut report = Report {
        config: config.clone(),
        simulated: end - shoal_proto::Instant::ZERO,
        kinds: Vec::new(),
        clients_connected: game
            .clients
            .iter()
            .filter(|c| c.server_conn.is_some() || c.server_lost)
            .count(),
        connect_times: game.connect_times.clone(),
        disconnects: game.disconnects.clone(),
        datagrams_sent: 0,
        wire_bytes: 0,
        payload_bytes: 0,
        retransmissions: 0,
        packets_lost: 0,
        spurious_losses: 0,
        probe_timeouts: 0,
        repairs_sent: 0,
        packets_rebuilt: 0,
        proto_drops: DropCounts::default(),
        sim: *sim.stats(),
        turn_times: *sim.turn_times(),
        violations: game.violations,
        request_timeouts: game.request_timeouts,
        send_errors: game.send_errors,
        trace_hash: sim.trace_hash(),
    };
    for node in sim.nodes() {
        let endpoint = sim.endpoint(node);
        let s = endpoint.stats();
        report.datagrams_sent += s.datagrams_sent;
        report.wire_bytes += s.bytes_sent;
        report.proto_drops.merge(&s.drops);
        for conn in endpoint.connections() {
            if let Some(c) = endpoint.connection_stats(conn) {
                report.retransmissions += c.retransmissions;
                report.packets_lost += c.packets_lost;
                report.spurious_losses += c.spurious_losses;
                report.probe_timeouts += c.rto_fired;
                report.repairs_sent += c.repairs_sent;
                report.packets_rebuilt += c.packets_rebuilt;
                report.proto_drops.merge(&c.drops);
            }
        }
    }
    for kind in Kind::ALL {
        let k = &game.kinds[kind as usize];
        report.payload_bytes += k.payload_bytes;
        report.kinds.push(KindReport {
            kind,
            size: size_of(config, kind),
            sent: k.sent,
            delivered: k.delivered,
            payload_bytes: k.payload_bytes,
            latency: k.latency.clone(),
            bins: k.bins.clone(),
            scatter: k.scatter.clone(),
        });
    }
    report
}

fn size_of(config: &ScenarioConfig, kind: Kind) -> usize {
    match kind {
        Kind::Input => config.input_size,
        Kind::State => config.state_size,
        Kind::ReliableUp | Kind::ReliableDown => config.reliable_size,
        Kind::OrderedUp | Kind::OrderedDown => config.ordered_size,
        Kind::Large => config.large_size,
        Kind::Request => config.request_size,
    }
}

/// `1234567` as `1,234,567`.
pub(crate) fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

pub(crate) fn millis(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1000.0)
}

/// A duration as a person writes it: `40ms`, `1.5s`, `250us`.
pub(crate) fn human(d: Duration) -> String {
    if d.is_zero() {
        "0".to_string()
    } else if d.as_micros() < 1000 {
        format!("{}us", d.as_micros())
    } else if d < Duration::from_secs(1) {
        format!("{}ms", trim(d.as_secs_f64() * 1000.0))
    } else {
        format!("{}s", trim(d.as_secs_f64()))
    }
}

fn trim(x: f64) -> String {
    let s = format!("{x:.3}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

fn percent(p: f64) -> String {
    format!("{}%", trim(p * 100.0))
}

impl Report {
    /// The link settings in one line.
    pub fn link_summary(&self) -> String {
        describe_link(&self.config.link)
    }
}

/// One line describing a link's settings.
fn describe_link(l: &crate::LinkConfig) -> String {
    {
        let burst = match &l.burst_loss {
            Some(b) => format!(
                "{} in / {} out (loss {} in bursts, mean {})",
                percent(b.p_good_to_bad),
                percent(b.p_bad_to_good),
                percent(b.loss_bad),
                percent(b.mean_loss())
            ),
            None => "none".to_string(),
        };
        let outages = match &l.outages {
            Some(o) => format!(
                ", outages of {} every {} on average (down {})",
                human(o.mean_down),
                human(o.mean_up + o.mean_down),
                percent(o.mean_loss())
            ),
            None => String::new(),
        };
        let bandwidth = match l.bandwidth {
            Some(b) => format!(
                "{} B/s, queue {} B",
                thousands(b),
                thousands(l.queue_bytes as u64)
            ),
            None => "unlimited".to_string(),
        };
        format!(
            "latency {}, jitter {}{}, loss {}, burst loss {}{}, duplicate {}, reorder {} (+{}), bandwidth {}, mtu {}",
            human(l.latency),
            human(l.jitter),
            if l.jitter_reorders { " (reordering)" } else { "" },
            percent(l.loss),
            burst,
            outages,
            percent(l.duplicate),
            percent(l.reorder),
            human(l.reorder_delay),
            bandwidth,
            l.mtu
        )
    }
}

impl Report {
    /// Wire bytes sent per application payload byte.
    pub fn wire_overhead(&self) -> f64 {
        self.wire_bytes as f64 / self.payload_bytes.max(1) as f64
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = &self.config;
        let drain = self.simulated.saturating_sub(c.duration);
        writeln!(
            f,
            "shoal-demo: 1 server + {} clients, {} of traffic then {} of drain, seed {}",
            c.clients,
            human(c.duration),
            human(drain),
            c.seed
        )?;
        match &c.downlink {
            None => writeln!(f, "link (each direction): {}", self.link_summary())?,
            Some(down) => {
                writeln!(f, "link client → server: {}", self.link_summary())?;
                writeln!(f, "link server → client: {}", describe_link(down))?;
            }
        }
        let lost: u64 = self.disconnects.iter().map(|(_, n)| n).sum();
        writeln!(
            f,
            "connections: {} of {} clients connected, {} disconnect events",
            self.clients_connected, c.clients, lost
        )?;
        let t = &self.connect_times;
        if t.count() > 0 {
            writeln!(
                f,
                "  connecting took (connect call to Connected) p50 {} ms, p99 {} ms, max {} ms",
                millis(t.percentile(50.0)),
                millis(t.percentile(99.0)),
                millis(t.max())
            )?;
        }
        for (reason, n) in &self.disconnects {
            writeln!(f, "  {reason}: {n}")?;
        }
        writeln!(f)?;
        writeln!(
            f,
            "{:<17} {:<9} {:<4} {:>7} {:>10} {:>10} {:>7} {:>8} {:>8} {:>8} {:>8} {:>8}",
            "kind",
            "channel",
            "dir",
            "bytes",
            "sent",
            "delivered",
            "deliv%",
            "mean ms",
            "p50 ms",
            "p95 ms",
            "p99 ms",
            "max ms"
        )?;
        for k in &self.kinds {
            let share = if k.sent == 0 {
                "-".to_string()
            } else {
                format!("{:.1}", k.delivered as f64 * 100.0 / k.sent as f64)
            };
            writeln!(
                f,
                "{:<17} {:<9} {:<4} {:>7} {:>10} {:>10} {:>7} {:>8} {:>8} {:>8} {:>8} {:>8}",
                k.kind.name(),
                k.kind.channel_name(),
                k.kind.direction(),
                thousands(k.size as u64),
                thousands(k.sent),
                thousands(k.delivered),
                share,
                format!("{:.2}", k.latency.mean().as_secs_f64() * 1000.0),
                millis(k.latency.percentile(50.0)),
                millis(k.latency.percentile(95.0)),
                millis(k.latency.percentile(99.0)),
                millis(k.latency.max()),
            )?;
        }
        // The mean is exact, and the steadier figure to compare runs by: at a loss rate near
        // 1% the p99 sits between a message that went once and one sent again, and jumps
        // between them with any change of the random path.
        writeln!(f, "(latencies from send to delivery, requests from request to response; the mean exact, percentiles within 1.6%)")?;
        writeln!(f)?;
        writeln!(
            f,
            "bandwidth: {} bytes in {} UDP datagrams to carry {} bytes of messages = {:.2} bytes sent per message byte",
            thousands(self.wire_bytes),
            thousands(self.datagrams_sent),
            thousands(self.payload_bytes),
            self.wire_overhead()
        )?;
        writeln!(
            f,
            "  (the extra is headers, acknowledgements, encryption, repair data and resends)"
        )?;
        let s = &self.sim;
        writeln!(
            f,
            "simulated network: {} datagrams sent, {} arrived, {} lost, {} duplicated, {} held back to reorder",
            thousands(s.datagrams_sent),
            thousands(s.datagrams_delivered),
            thousands(s.drops.total()),
            thousands(s.duplicates),
            thousands(s.reordered),
        )?;
        for (cause, n) in s.drops.iter() {
            line(f, 1, cause_words(cause), n, cause.name())?;
        }
        writeln!(f, "loss recovery (connections still open at the end):")?;
        let lines = [
            (1, "packets the senders declared lost", self.packets_lost),
            (2, "of which late, not lost", self.spurious_losses),
            (
                1,
                "messages or chunks sent again (after a loss, or in a probe)",
                self.retransmissions,
            ),
            (
                1,
                "probe timeouts (timer expiries; each may resend nothing)",
                self.probe_timeouts,
            ),
            (
                1,
                "repair blocks sent (error correction for small packets)",
                self.repairs_sent,
            ),
            (
                1,
                "lost packets rebuilt from repair data (no resend needed)",
                self.packets_rebuilt,
            ),
        ];
        for (depth, words, n) in lines {
            line(f, depth, words, n, "")?;
        }
        writeln!(
            f,
            "application: {} requests without a response in time, {} sends refused by the endpoints (e.g. a full queue)",
            thousands(self.request_timeouts),
            thousands(self.send_errors)
        )?;
        writeln!(
            f,
            "discarded on arrival by the endpoints: {} (packets or messages)",
            thousands(self.proto_drops.total())
        )?;
        for class in DropClass::ALL {
            line(f, 1, class.title(), class.count(&self.proto_drops), "")?;
            for (reason, n) in self
                .proto_drops
                .iter()
                .filter(|&(r, _)| DropClass::of(r) == class)
            {
                line(f, 2, reason_words(reason), n, reason.name())?;
            }
        }
        writeln!(f, "guarantee violations: {}", self.violations.total())?;
        for (name, n) in self.violations.iter().filter(|(_, n)| *n > 0) {
            writeln!(f, "  VIOLATION {name}: {n}")?;
        }
        writeln!(
            f,
            "simulator internals: {} steps in {}, {} endpoint wake-ups ({} skipped as superseded), {} app timers, {} events, {} timer spins (above 0: a protocol bug)",
            thousands(s.steps),
            if s.windows > 0 {
                format!("{} lookahead windows, node by node", thousands(s.windows))
            } else {
                "one time order".to_string()
            },
            thousands(s.wakeups),
            thousands(s.stale_wakeups),
            thousands(s.timers_fired),
            thousands(s.events),
            s.timer_spins
        )?;
        write!(
            f,
            "trace hash (equal runs, equal hash): {:#018x}",
            self.trace_hash
        )
    }
}

/// Width of a summary line's words, indent included, before its count.
const WORDS_WIDTH: usize = 62;

/// One indented line of the summary: plain words, a count aligned with the others, and the
/// name of the counter behind it (if one), in brackets.
fn line(
    f: &mut fmt::Formatter<'_>,
    depth: usize,
    words: &str,
    n: u64,
    counter: &str,
) -> fmt::Result {
    let indent = "  ".repeat(depth);
    let width = WORDS_WIDTH.saturating_sub(indent.len());
    write!(f, "{indent}{words:<width$} {:>12}", thousands(n))?;
    if counter.is_empty() {
        writeln!(f)
    } else {
        writeln!(f, "  [{counter}]")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn number_formats() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(1_234_567), "1,234,567");
        assert_eq!(human(Duration::from_millis(40)), "40ms");
        assert_eq!(human(Duration::from_millis(1500)), "1.5s");
        assert_eq!(human(Duration::from_micros(250)), "250us");
        assert_eq!(percent(0.05), "5%");
        assert_eq!(millis(Duration::from_micros(40_250)), "40.2");
    }
}
