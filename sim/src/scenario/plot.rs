//! The SVG plot of a scenario run, written by hand: the latency distribution of each kind as
//! a complementary CDF on log-log axes (so p99 and p99.9 tails are readable), and latency
//! over the run (a scatter sample with p50 and p99 lines).

use core::fmt::Write;

use super::report::{human, millis, thousands, Report};
use super::PLOT_BINS;

const WIDTH: f64 = 1180.0;
const HEIGHT: f64 = 1070.0;
const LEFT: f64 = 80.0;
const RIGHT: f64 = 850.0;
const CCDF_TOP: f64 = 100.0;
const CCDF_BOTTOM: f64 = 510.0;
const TIME_TOP: f64 = 610.0;
const TIME_BOTTOM: f64 = 990.0;
/// The percentile guide lines of the distribution panel: `(name, share slower, in words)`.
const GUIDES: [(&str, f64, &str); 3] = [
    ("p50", 0.5, "half slower"),
    ("p99", 0.01, "1 in 100 slower"),
    ("p99.9", 0.001, "1 in 1,000 slower"),
];

const COLORS: [&str; 8] = [
    "#1f77b4", "#ff7f0e", "#2ca02c", "#17becf", "#d62728", "#e377c2", "#9467bd", "#8c564b",
];

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// A logarithmic latency axis from `lo` to `hi` milliseconds (powers of ten).
#[derive(Clone, Copy)]
struct LogAxis {
    lo: f64,
    hi: f64,
}

impl LogAxis {
    /// Position of `ms` between `a` (at `lo`) and `b` (at `hi`).
    fn pos(self, ms: f64, a: f64, b: f64) -> f64 {
        let t = (ms.max(self.lo).log10() - self.lo.log10()) / (self.hi.log10() - self.lo.log10());
        a + t.clamp(0.0, 1.0) * (b - a)
    }

    /// Tick values: 1, 2 and 5 times each power of ten in range.
    fn ticks(self) -> Vec<f64> {
        let mut ticks = Vec::new();
        let mut decade = 10f64.powf(self.lo.log10().floor());
        while decade <= self.hi * 1.0001 {
            for m in [1.0, 2.0, 5.0] {
                let v = decade * m;
                if v >= self.lo * 0.9999 && v <= self.hi * 1.0001 {
                    ticks.push(v);
                }
            }
            decade *= 10.0;
        }
        ticks
    }

    /// The axis from the largest 1-2-5 value at or below `min` to the smallest at or above
    /// `max`.
    fn around(min: f64, max: f64) -> LogAxis {
        let step = |x: f64, up: bool| {
            let decade = 10f64.powf(x.log10().floor());
            let steps = [1.0, 2.0, 5.0, 10.0].map(|m| decade * m);
            if up {
                steps
                    .into_iter()
                    .find(|&v| v >= x * 0.9999)
                    .unwrap_or(decade * 10.0)
            } else {
                steps
                    .into_iter()
                    .rev()
                    .find(|&v| v <= x * 1.0001)
                    .unwrap_or(decade)
            }
        };
        LogAxis {
            lo: step(min, false),
            hi: step(max, true),
        }
    }
}

/// A latency tick: `0.5`, `20`, `500`, `1 s`, `2 s`.
fn tick_label(ms: f64) -> String {
    if ms >= 1000.0 {
        format!("{} s", trim_num(ms / 1000.0))
    } else if ms >= 1.0 {
        format!("{ms:.0}")
    } else {
        let s = format!("{ms:.3}");
        s.trim_end_matches('0').to_string()
    }
}

/// A share tick: `100%`, `1%`, `0.01%`.
fn share_label(share: f64) -> String {
    let percent = share * 100.0;
    if percent >= 1.0 {
        format!("{percent:.0}%")
    } else {
        format!("{}%", trim_num_to(percent, 6))
    }
}

impl Report {
    /// An SVG image of the run's latencies, for a person to read: top, for each kind, the
    /// share of its messages slower than a latency (a complementary CDF on log-log axes,
    /// with p50, p99 and p99.9 guide lines, so tails are readable); bottom, latency by send
    /// time, with a sample of individual messages and p50/p99 lines per time bin.
    pub fn to_svg(&self) -> String {
        let mut svg = String::new();
        // Writing to a String cannot fail.
        let _ = self.write_svg(&mut svg);
        svg
    }

    fn write_svg(&self, s: &mut String) -> core::fmt::Result {
        writeln!(
            s,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="12">"#
        )?;
        writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#)?;
        let c = &self.config;
        writeln!(
            s,
            r#"<text x="{LEFT}" y="28" font-size="17" font-weight="bold">shoal-demo: 1 server + {} clients, {} of traffic, seed {}</text>"#,
            c.clients,
            human(c.duration),
            c.seed
        )?;
        writeln!(
            s,
            r##"<text x="{LEFT}" y="48" fill="#444">link: {}</text>"##,
            escape(&self.link_summary())
        )?;
        writeln!(
            s,
            r##"<text x="{LEFT}" y="64" fill="#444">guarantee violations: {}, trace hash {:#018x}</text>"##,
            self.violations.total(),
            self.trace_hash
        )?;

        let delivered: Vec<_> = self
            .kinds
            .iter()
            .filter(|k| k.latency.count() > 0)
            .collect();
        if delivered.is_empty() {
            writeln!(
                s,
                r#"<text x="{LEFT}" y="200">No message was delivered: nothing to plot.</text>"#
            )?;
            return writeln!(s, "</svg>");
        }
        let min_ms = delivered
            .iter()
            .map(|k| k.latency.min().as_secs_f64() * 1000.0)
            .fold(f64::INFINITY, f64::min)
            .max(0.01);
        let max_ms = delivered
            .iter()
            .map(|k| k.latency.max().as_secs_f64() * 1000.0)
            .fold(0.0, f64::max)
            .max(min_ms * 1.5);
        let axis = LogAxis::around(min_ms, max_ms);

        // ---- top panel: share of each kind's messages slower than a latency (log-log)
        let most = delivered
            .iter()
            .map(|k| k.latency.count())
            .max()
            .unwrap_or(1);
        // Down to the decade that holds one message of the largest kind.
        let floor = 10f64.powf((1.0 / most as f64).log10().floor()).min(0.001);
        let shares = LogAxis { lo: floor, hi: 1.0 };
        let share_y = |share: f64| shares.pos(share, CCDF_BOTTOM, CCDF_TOP);
        self.frame(
            s,
            CCDF_TOP,
            CCDF_BOTTOM,
            "Tails: share of each kind's messages slower than a latency (log-log; read p99 where a curve crosses the p99 line)",
        )?;
        let mut decade = 1.0;
        while decade >= floor * 0.999 {
            let y = share_y(decade);
            writeln!(
                s,
                r##"<line x1="{LEFT}" y1="{y:.1}" x2="{RIGHT}" y2="{y:.1}" stroke="#e4e4e4"/>"##
            )?;
            writeln!(
                s,
                r#"<text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"#,
                LEFT - 6.0,
                y + 4.0,
                share_label(decade)
            )?;
            decade /= 10.0;
        }
        for v in axis.ticks() {
            let x = axis.pos(v, LEFT, RIGHT);
            writeln!(
                s,
                r##"<line x1="{x:.1}" y1="{CCDF_TOP}" x2="{x:.1}" y2="{CCDF_BOTTOM}" stroke="#e4e4e4"/>"##
            )?;
        }
        self.log_x_ticks(s, axis, CCDF_BOTTOM)?;
        writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">latency (ms, log scale; requests: round trip)</text>"#,
            (LEFT + RIGHT) / 2.0,
            CCDF_BOTTOM + 36.0
        )?;
        for (label, share, words) in GUIDES {
            let y = share_y(share);
            writeln!(
                s,
                r##"<line class="guide" x1="{LEFT}" y1="{y:.1}" x2="{RIGHT}" y2="{y:.1}" stroke="#777" stroke-dasharray="6,4"/>"##
            )?;
            writeln!(
                s,
                r##"<text x="{:.1}" y="{:.1}" text-anchor="end" fill="#555" font-size="11">{label} ({words})</text>"##,
                RIGHT - 4.0,
                y - 4.0
            )?;
        }
        for (i, k) in self.kinds.iter().enumerate() {
            if k.latency.count() == 0 {
                continue;
            }
            // A step down at each bucket's upper bound: the share slower than it. The last
            // step (nothing slower than the maximum) goes to the bottom edge.
            let mut d = format!("M{LEFT:.1},{:.1}", share_y(1.0));
            for (upper, at_or_below) in k.latency.cumulative() {
                let x = axis.pos(upper as f64 / 1000.0, LEFT, RIGHT);
                let slower = 1.0 - at_or_below;
                let y = if slower < floor * 0.5 {
                    CCDF_BOTTOM
                } else {
                    share_y(slower)
                };
                let _ = write!(d, " H{x:.1} V{y:.1}");
            }
            writeln!(
                s,
                r#"<path class="ccdf" data-kind="{} {}" d="{d}" fill="none" stroke="{}" stroke-width="2" stroke-linejoin="round"/>"#,
                k.kind.name(),
                k.kind.direction(),
                COLORS[i % COLORS.len()]
            )?;
        }

        // ---- bottom panel: latency over the run
        self.frame(
            s,
            TIME_TOP,
            TIME_BOTTOM,
            "Over the run: latency (ms, log scale) by send time",
        )?;
        for v in axis.ticks() {
            let y = axis.pos(v, TIME_BOTTOM, TIME_TOP);
            writeln!(
                s,
                r##"<line x1="{LEFT}" y1="{y:.1}" x2="{RIGHT}" y2="{y:.1}" stroke="#eee"/>"##
            )?;
            writeln!(
                s,
                r#"<text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"#,
                LEFT - 6.0,
                y + 4.0,
                tick_label(v)
            )?;
        }
        let span_s = c.duration.as_secs_f64().max(1e-6);
        for i in 0..=10 {
            let t = span_s * f64::from(i) / 10.0;
            let x = LEFT + (RIGHT - LEFT) * f64::from(i) / 10.0;
            writeln!(
                s,
                r##"<line x1="{x:.1}" y1="{TIME_BOTTOM}" x2="{x:.1}" y2="{:.1}" stroke="#333"/>"##,
                TIME_BOTTOM + 5.0
            )?;
            writeln!(
                s,
                r#"<text x="{x:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
                TIME_BOTTOM + 19.0,
                trim_num(t)
            )?;
        }
        writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">send time (s)</text>"#,
            (LEFT + RIGHT) / 2.0,
            TIME_BOTTOM + 38.0
        )?;
        let time_x = |micros: f64| LEFT + (RIGHT - LEFT) * (micros / 1e6 / span_s).clamp(0.0, 1.0);
        for (i, k) in self.kinds.iter().enumerate() {
            let color = COLORS[i % COLORS.len()];
            writeln!(s, r#"<g fill="{color}" fill-opacity="0.3" stroke="none">"#)?;
            for &(sent, latency) in &k.scatter {
                let x = time_x(sent as f64);
                let y = axis.pos(latency as f64 / 1000.0, TIME_BOTTOM, TIME_TOP);
                writeln!(s, r#"<circle cx="{x:.1}" cy="{y:.1}" r="1.6"/>"#)?;
            }
            writeln!(s, "</g>")?;
        }
        let bin_us = span_s * 1e6 / PLOT_BINS as f64;
        for (i, k) in self.kinds.iter().enumerate() {
            let color = COLORS[i % COLORS.len()];
            for (p, dash) in [(50.0, ""), (99.0, r#" stroke-dasharray="5,4""#)] {
                let points: Vec<String> = k
                    .bins
                    .iter()
                    .enumerate()
                    .filter(|(_, h)| h.count() > 0)
                    .map(|(b, h)| {
                        let x = time_x((b as f64 + 0.5) * bin_us);
                        let y = axis.pos(
                            h.percentile(p).as_secs_f64() * 1000.0,
                            TIME_BOTTOM,
                            TIME_TOP,
                        );
                        format!("{x:.1},{y:.1}")
                    })
                    .collect();
                if points.len() > 1 {
                    writeln!(
                        s,
                        r#"<polyline points="{}" fill="none" stroke="{color}" stroke-width="1.5"{dash}/>"#,
                        points.join(" ")
                    )?;
                }
            }
        }

        // ---- legend
        let lx = RIGHT + 25.0;
        writeln!(
            s,
            r#"<text x="{lx}" y="{}" font-weight="bold">kind (channel, direction)</text>"#,
            CCDF_TOP - 16.0
        )?;
        writeln!(
            s,
            r##"<text x="{lx}" y="{}" fill="#555" font-size="11">sent → delivered; p50 / p99 / p99.9 in ms</text>"##,
            CCDF_TOP - 2.0
        )?;
        let mut y = CCDF_TOP + 22.0;
        for (i, k) in self.kinds.iter().enumerate() {
            writeln!(
                s,
                r#"<line x1="{lx}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="{}" stroke-width="3"/>"#,
                y - 4.0,
                lx + 14.0,
                y - 4.0,
                COLORS[i % COLORS.len()]
            )?;
            writeln!(
                s,
                r#"<text x="{:.1}" y="{y:.1}">{} ({}, {})</text>"#,
                lx + 20.0,
                k.kind.name(),
                k.kind.channel_name(),
                k.kind.direction()
            )?;
            let percentiles = if k.latency.count() == 0 {
                "no delivery".to_string()
            } else {
                GUIDES
                    .iter()
                    .map(|&(_, share, _)| millis(k.latency.percentile(100.0 * (1.0 - share))))
                    .collect::<Vec<_>>()
                    .join(" / ")
            };
            writeln!(
                s,
                r##"<text x="{:.1}" y="{:.1}" fill="#555" font-size="11">{} → {}; {percentiles}</text>"##,
                lx + 20.0,
                y + 14.0,
                thousands(k.sent),
                thousands(k.delivered)
            )?;
            y += 44.0;
        }
        writeln!(
            s,
            r#"<text x="{lx}" y="{TIME_TOP}" font-weight="bold">over the run (bottom)</text>"#
        )?;
        let line_y = TIME_TOP + 22.0;
        writeln!(
            s,
            r##"<line x1="{lx}" y1="{line_y}" x2="{:.1}" y2="{line_y}" stroke="#333" stroke-width="1.5"/>"##,
            lx + 30.0
        )?;
        writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}">p50 per 1/{PLOT_BINS} of the run</text>"#,
            lx + 36.0,
            line_y + 4.0
        )?;
        let line_y = line_y + 20.0;
        writeln!(
            s,
            r##"<line x1="{lx}" y1="{line_y}" x2="{:.1}" y2="{line_y}" stroke="#333" stroke-width="1.5" stroke-dasharray="5,4"/>"##,
            lx + 30.0
        )?;
        writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}">p99 per 1/{PLOT_BINS} of the run</text>"#,
            lx + 36.0,
            line_y + 4.0
        )?;
        let dot_y = line_y + 20.0;
        writeln!(
            s,
            r##"<circle cx="{:.1}" cy="{dot_y}" r="2.5" fill="#333" fill-opacity="0.5"/>"##,
            lx + 15.0
        )?;
        writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}">a sample of single messages</text>"#,
            lx + 36.0,
            dot_y + 4.0
        )?;
        writeln!(s, "</svg>")
    }

    /// Axes of a panel, with its title above it.
    fn frame(&self, s: &mut String, top: f64, bottom: f64, title: &str) -> core::fmt::Result {
        writeln!(
            s,
            r##"<line x1="{LEFT}" y1="{top}" x2="{LEFT}" y2="{bottom}" stroke="#333"/>"##
        )?;
        writeln!(
            s,
            r##"<line x1="{LEFT}" y1="{bottom}" x2="{RIGHT}" y2="{bottom}" stroke="#333"/>"##
        )?;
        // Above the panel, not rotated beside it: every renderer draws it, and it reads
        // the right way up.
        writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}" font-weight="bold">{}</text>"#,
            LEFT - 50.0,
            top - 14.0,
            escape(title)
        )
    }

    fn log_x_ticks(&self, s: &mut String, axis: LogAxis, bottom: f64) -> core::fmt::Result {
        for v in axis.ticks() {
            let x = axis.pos(v, LEFT, RIGHT);
            writeln!(
                s,
                r##"<line x1="{x:.1}" y1="{bottom}" x2="{x:.1}" y2="{:.1}" stroke="#333"/>"##,
                bottom + 5.0
            )?;
            writeln!(
                s,
                r#"<text x="{x:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
                bottom + 19.0,
                tick_label(v)
            )?;
        }
        Ok(())
    }
}

fn trim_num(v: f64) -> String {
    trim_num_to(v, 2)
}

/// `v` with at most `decimals` decimals, trailing zeros dropped.
fn trim_num_to(v: f64, decimals: usize) -> String {
    let s = format!("{v:.decimals$}");
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_axis_places_decades_evenly() {
        let axis = LogAxis { lo: 1.0, hi: 100.0 };
        assert_eq!(axis.pos(1.0, 0.0, 100.0), 0.0);
        assert!((axis.pos(10.0, 0.0, 100.0) - 50.0).abs() < 1e-9);
        assert_eq!(axis.pos(100.0, 0.0, 100.0), 100.0);
        assert_eq!(axis.ticks(), vec![1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0]);
        let around = LogAxis::around(42.0, 1469.0);
        assert_eq!((around.lo, around.hi), (20.0, 2000.0));
        assert_eq!(
            around.ticks(),
            vec![20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0]
        );
        assert_eq!(tick_label(0.5), "0.5");
        assert_eq!(tick_label(200.0), "200");
        assert_eq!(tick_label(1000.0), "1 s");
        assert_eq!(share_label(1.0), "100%");
        assert_eq!(share_label(0.001), "0.1%");
        assert_eq!(share_label(0.0001), "0.01%");
    }
}
