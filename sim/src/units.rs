//! Parsing the quantities a person types on a command line: `5%`, `40ms`, `1MB/s`, `64KiB`.
//!
//! Every parser returns an error message that says what was expected.
//!
//! ```
//! use core::time::Duration;
//! use shoal_sim::units::{parse_bandwidth, parse_duration, parse_probability};
//! assert_eq!(parse_probability("5%"), Ok(0.05));
//! assert_eq!(parse_probability("0.05"), Ok(0.05));
//! assert_eq!(parse_duration("40ms"), Ok(Duration::from_millis(40)));
//! assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
//! assert_eq!(parse_bandwidth("8Mbit/s"), Ok(1_000_000));
//! ```

use core::time::Duration;

use crate::link::{BurstLoss, Outages};

/// Splits `"12.5ms"` into `(12.5, "ms")`.
fn split_number(s: &str) -> Result<(f64, &str), String> {
    let s = s.trim();
    let end = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '_'))
        .unwrap_or(s.len());
    let (number, unit) = s.split_at(end);
    let number: String = number.chars().filter(|&c| c != '_').collect();
    let value: f64 = number
        .parse()
        .map_err(|_| format!("`{s}` does not start with a number"))?;
    if !value.is_finite() {
        return Err(format!("`{s}` is not a finite number"));
    }
    Ok((value, unit.trim()))
}

/// A probability: `5%`, `0.05` or `0`. Must lie in `[0, 1]`.
pub fn parse_probability(s: &str) -> Result<f64, String> {
    let (value, unit) = split_number(s)?;
    let p = match unit {
        "%" => value / 100.0,
        "" => value,
        _ => return Err(format!("`{s}`: write a probability as `5%` or `0.05`")),
    };
    if !(0.0..=1.0).contains(&p) {
        return Err(format!(
            "`{s}` is not a probability between 0 and 1 (0% and 100%)"
        ));
    }
    Ok(p)
}

/// A duration with a unit: `500us`, `40ms`, `1.5s`, `2m`; a bare `0` is zero.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let (value, unit) = split_number(s)?;
    let micros_per_unit = match unit {
        "us" | "µs" => 1.0,
        "ms" => 1_000.0,
        "s" => 1_000_000.0,
        "m" | "min" => 60_000_000.0,
        "" if value == 0.0 => 0.0,
        _ => {
            return Err(format!(
                "`{s}`: give a duration with a unit, e.g. `40ms`, `1.5s`, `500us`, `2m`"
            ))
        }
    };
    let micros = (value * micros_per_unit).round();
    if micros > u64::MAX as f64 {
        return Err(format!("`{s}` is too long"));
    }
    Ok(Duration::from_micros(micros as u64))
}

/// A size in bytes: `1200`, `64KiB`, `1.5MB` (`KB`/`MB`/`GB` are powers of 1000, `KiB`/`MiB`/
/// `GiB` of 1024).
pub fn parse_bytes(s: &str) -> Result<u64, String> {
    let (value, unit) = split_number(s)?;
    let factor = byte_factor(unit)
        .ok_or_else(|| format!("`{s}`: give a size like `1200`, `64KiB` or `1.5MB`"))?;
    Ok((value * factor).round() as u64)
}

fn byte_factor(unit: &str) -> Option<f64> {
    Some(match unit {
        "" | "B" => 1.0,
        "KB" | "kB" => 1e3,
        "MB" => 1e6,
        "GB" => 1e9,
        "KiB" => 1024.0,
        "MiB" => 1024.0 * 1024.0,
        "GiB" => 1024.0 * 1024.0 * 1024.0,
        _ => return None,
    })
}

/// A rate in bytes per second: `500000` (bytes/s), `500KB/s`, `2MiB/s`, `10Mbit/s`,
/// `10Mbps`, `64kbit`.
pub fn parse_bandwidth(s: &str) -> Result<u64, String> {
    let (value, unit) = split_number(s)?;
    let unit = unit
        .strip_suffix("/s")
        .or_else(|| unit.strip_suffix("ps"))
        .unwrap_or(unit);
    let bits = match unit {
        "bit" | "b" => Some(1.0),
        "kbit" | "Kbit" | "kb" => Some(1e3),
        "Mbit" | "Mb" => Some(1e6),
        "Gbit" | "Gb" => Some(1e9),
        _ => None,
    };
    let bytes_per_second = match (bits, byte_factor(unit)) {
        (Some(f), _) => value * f / 8.0,
        (None, Some(f)) => value * f,
        (None, None) => {
            return Err(format!(
                "`{s}`: give a rate like `500KB/s`, `2MiB/s`, `10Mbit/s` or a number of bytes per second"
            ))
        }
    };
    let rate = bytes_per_second.round() as u64;
    if rate == 0 {
        return Err(format!("`{s}` is below one byte per second"));
    }
    Ok(rate)
}

/// Gilbert–Elliott burst loss as `ENTER,EXIT[,LOSS_IN_BURST]`, each a probability:
/// `1%,25%` enters a burst with 1% per datagram, leaves it with 25% (bursts of 4 datagrams on
/// average) and loses every datagram inside it; `1%,25%,50%` loses half of them.
pub fn parse_burst_loss(s: &str) -> Result<BurstLoss, String> {
    let parts: Vec<&str> = s.split([',', ':']).collect();
    let usage = || format!("`{s}`: give burst loss as ENTER,EXIT[,LOSS_IN_BURST], e.g. `1%,25%`");
    let (enter, exit, loss) = match parts.as_slice() {
        [enter, exit] => (*enter, *exit, None),
        [enter, exit, loss] => (*enter, *exit, Some(*loss)),
        _ => return Err(usage()),
    };
    let mut b = BurstLoss::new(parse_probability(enter)?, parse_probability(exit)?);
    if let Some(loss) = loss {
        b.loss_bad = parse_probability(loss)?;
    }
    if b.p_bad_to_good == 0.0 && b.p_good_to_bad > 0.0 {
        return Err(format!(
            "`{s}`: an EXIT probability of 0 never leaves the first burst"
        ));
    }
    Ok(b)
}

/// Outages in time as `SHARE,LENGTH`: `1%,200ms` takes the link down 1% of the time, for
/// 200 ms on average each time (so about every 20 s), losing everything sent meanwhile.
pub fn parse_outages(s: &str) -> Result<Outages, String> {
    let usage = || format!("`{s}`: give outages as SHARE,LENGTH, e.g. `1%,200ms`");
    let [share, length] = s.split([',', ':']).collect::<Vec<_>>()[..] else {
        return Err(usage());
    };
    let (share, length) = (parse_probability(share)?, parse_duration(length)?);
    Outages::averaging(share, length).ok_or_else(|| {
        format!("`{s}`: the share must be above 0% and below 100%, the length above zero")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probabilities() {
        assert_eq!(parse_probability("0"), Ok(0.0));
        assert_eq!(parse_probability("100%"), Ok(1.0));
        assert_eq!(parse_probability(" 2.5% "), Ok(0.025));
        assert!(parse_probability("5").is_err());
        assert!(parse_probability("-1%").is_err());
        assert!(parse_probability("5 percent").is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("60s"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("250us"), Ok(Duration::from_micros(250)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert!(parse_duration("40").is_err());
        assert!(parse_duration("ms").is_err());
        assert!(parse_duration("4h").is_err());
    }

    #[test]
    fn sizes_and_rates() {
        assert_eq!(parse_bytes("1200"), Ok(1200));
        assert_eq!(parse_bytes("64KiB"), Ok(65_536));
        assert_eq!(parse_bytes("1.5MB"), Ok(1_500_000));
        assert!(parse_bytes("12 apples").is_err());
        assert_eq!(parse_bandwidth("1000"), Ok(1000));
        assert_eq!(parse_bandwidth("500KB/s"), Ok(500_000));
        assert_eq!(parse_bandwidth("1MiB/s"), Ok(1_048_576));
        assert_eq!(parse_bandwidth("10Mbps"), Ok(1_250_000));
        assert_eq!(parse_bandwidth("64kbit"), Ok(8_000));
        assert!(parse_bandwidth("0").is_err());
        assert!(parse_bandwidth("fast").is_err());
    }

    #[test]
    fn burst_loss() {
        let b = parse_burst_loss("1%,25%").expect("valid");
        assert_eq!(
            (b.p_good_to_bad, b.p_bad_to_good, b.loss_bad),
            (0.01, 0.25, 1.0)
        );
        let b = parse_burst_loss("0.01:0.5:50%").expect("valid");
        assert_eq!(b.loss_bad, 0.5);
        assert!(parse_burst_loss("1%").is_err());
        assert!(parse_burst_loss("1%,0").is_err());
    }

    #[test]
    fn outages() {
        let o = parse_outages("1%,200ms").expect("valid");
        assert_eq!(o.mean_down, Duration::from_millis(200));
        assert!((o.mean_up.as_secs_f64() - 19.8).abs() < 1e-9);
        assert!(parse_outages("1%").is_err());
        assert!(parse_outages("0%,200ms").is_err());
        assert!(parse_outages("1%,0ms").is_err());
        assert!(parse_outages("100%,1s").is_err());
    }
}
