//! The SVG plot of a scenario run, written by hand: a latency histogram per kind, and latency
//! over the run (a scatter sample with p50 and p99 lines).

use core::fmt::Write;

use super::report::{human, thousands, Report};
use super::PLOT_BINS;

const WIDTH: f64 = 1180.0;
const HEIGHT: f64 = 980.0;
const LEFT: f64 = 80.0;
const RIGHT: f64 = 850.0;
const HIST_TOP: f64 = 90.0;
const HIST_BOTTOM: f64 = 420.0;
const TIME_TOP: f64 = 520.0;
const TIME_BOTTOM: f64 = 900.0;
const HIST_BINS: usize = 60;

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
        let mut decade = self.lo;
        while decade <= self.hi * 1.0001 {
            for m in [1.0, 2.0, 5.0] {
                let v = decade * m;
                if v <= self.hi * 1.0001 {
                    ticks.push(v);
                }
            }
            decade *= 10.0;
        }
        ticks
    }
}

fn tick_label(ms: f64) -> String {
    if ms >= 1.0 {
        format!("{ms:.0}")
    } else {
        let s = format!("{ms:.3}");
        s.trim_end_matches('0').to_string()
    }
}

/// A round upper bound for a linear axis: 1, 2 or 5 times a power of ten.
fn nice_ceiling(x: f64) -> f64 {
    if x <= 0.0 {
        return 1.0;
    }
    let decade = 10f64.powf(x.log10().floor());
    for m in [1.0, 2.0, 5.0, 10.0] {
        if decade * m >= x {
            return decade * m;
        }
    }
    decade * 10.0
}

impl Report {
    /// An SVG image of the run's latencies, for a person to read: top, the share of each
    /// kind's messages by delivery latency (log scale); bottom, latency by send time, with a
    /// sample of individual messages and p50/p99 lines per time bin.
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
        let axis = LogAxis {
            lo: 10f64.powf(min_ms.log10().floor()),
            hi: 10f64.powf(max_ms.log10().ceil()),
        };

        // ---- top panel: histogram of latencies per kind (share of the kind's messages)
        let mut shares: Vec<(usize, Vec<f64>)> = Vec::new();
        for (i, k) in self.kinds.iter().enumerate() {
            if k.latency.count() == 0 {
                continue;
            }
            let mut bins = vec![0.0; HIST_BINS];
            for (low, high, n) in k.latency.buckets() {
                let mid_ms = (low + (high - low) / 2) as f64 / 1000.0;
                let x = axis.pos(mid_ms, 0.0, 1.0);
                let b = ((x * HIST_BINS as f64) as usize).min(HIST_BINS - 1);
                bins[b] += n as f64;
            }
            let total = k.latency.count() as f64;
            bins.iter_mut().for_each(|b| *b = *b * 100.0 / total);
            shares.push((i, bins));
        }
        let y_max = nice_ceiling(
            shares
                .iter()
                .flat_map(|(_, b)| b.iter().copied())
                .fold(0.0, f64::max),
        );
        self.frame(s, HIST_TOP, HIST_BOTTOM, "share of the kind's messages (%)")?;
        for i in 0..=4 {
            let v = y_max * f64::from(i) / 4.0;
            let y = HIST_BOTTOM - (HIST_BOTTOM - HIST_TOP) * f64::from(i) / 4.0;
            writeln!(
                s,
                r##"<line x1="{LEFT}" y1="{y:.1}" x2="{RIGHT}" y2="{y:.1}" stroke="#eee"/>"##
            )?;
            writeln!(
                s,
                r#"<text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"#,
                LEFT - 6.0,
                y + 4.0,
                trim_num(v)
            )?;
        }
        self.log_x_ticks(s, axis, HIST_BOTTOM)?;
        writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">delivery latency (ms, log scale; requests: round trip)</text>"#,
            (LEFT + RIGHT) / 2.0,
            HIST_BOTTOM + 36.0
        )?;
        for (i, bins) in &shares {
            let mut points = String::new();
            for (b, share) in bins.iter().enumerate() {
                let x0 = LEFT + (RIGHT - LEFT) * b as f64 / HIST_BINS as f64;
                let x1 = LEFT + (RIGHT - LEFT) * (b + 1) as f64 / HIST_BINS as f64;
                let y = HIST_BOTTOM - (HIST_BOTTOM - HIST_TOP) * share / y_max;
                let _ = write!(points, "{x0:.1},{y:.1} {x1:.1},{y:.1} ");
            }
            writeln!(
                s,
                r#"<polyline points="{}" fill="none" stroke="{}" stroke-width="1.8"/>"#,
                points.trim_end(),
                COLORS[i % COLORS.len()]
            )?;
        }

        // ---- bottom panel: latency over the run
        self.frame(s, TIME_TOP, TIME_BOTTOM, "latency (ms, log scale)")?;
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
            writeln!(s, r#"<g fill="{color}" fill-opacity="0.3">"#)?;
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
            HIST_TOP - 16.0
        )?;
        writeln!(
            s,
            r##"<text x="{lx}" y="{}" fill="#555" font-size="11">messages sent → delivered</text>"##,
            HIST_TOP - 2.0
        )?;
        let mut y = HIST_TOP + 22.0;
        for (i, k) in self.kinds.iter().enumerate() {
            writeln!(
                s,
                r#"<rect x="{lx}" y="{:.1}" width="12" height="12" fill="{}"/>"#,
                y - 10.0,
                COLORS[i % COLORS.len()]
            )?;
            writeln!(
                s,
                r#"<text x="{:.1}" y="{y:.1}">{} ({}, {})</text>"#,
                lx + 18.0,
                k.kind.name(),
                k.kind.channel_name(),
                k.kind.direction()
            )?;
            writeln!(
                s,
                r##"<text x="{:.1}" y="{:.1}" fill="#555" font-size="11">{} → {}</text>"##,
                lx + 18.0,
                y + 14.0,
                thousands(k.sent),
                thousands(k.delivered)
            )?;
            y += 36.0;
        }
        writeln!(
            s,
            r#"<text x="{lx}" y="{TIME_TOP}" font-weight="bold">bottom panel</text>"#
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

    /// Axes of a panel, with the y axis title.
    fn frame(&self, s: &mut String, top: f64, bottom: f64, y_title: &str) -> core::fmt::Result {
        writeln!(
            s,
            r##"<line x1="{LEFT}" y1="{top}" x2="{LEFT}" y2="{bottom}" stroke="#333"/>"##
        )?;
        writeln!(
            s,
            r##"<line x1="{LEFT}" y1="{bottom}" x2="{RIGHT}" y2="{bottom}" stroke="#333"/>"##
        )?;
        let mid = (top + bottom) / 2.0;
        writeln!(
            s,
            r#"<text x="24" y="{mid:.1}" text-anchor="middle" transform="rotate(-90 24 {mid:.1})">{}</text>"#,
            escape(y_title)
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
    let s = format!("{v:.2}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
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
        assert_eq!(nice_ceiling(7.3), 10.0);
        assert_eq!(nice_ceiling(13.0), 20.0);
        assert_eq!(tick_label(0.5), "0.5");
        assert_eq!(tick_label(200.0), "200");
    }
}
