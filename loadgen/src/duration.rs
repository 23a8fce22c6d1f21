//! Durations on the command line: `30s`, `500ms`, `2m`, `1h`, `1.5s`.
//!
//! A small parser rather than a crate: the flags need four units and a decimal point, and an
//! error that names what was wrong.

use std::time::Duration;

/// Why a duration did not parse.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    #[error("`{0}`: expected a number with a unit (ms, s, m or h), e.g. 30s or 500ms")]
    Syntax(String),
    #[error("`{0}`: too long")]
    TooLong(String),
}

/// Parses `<number><unit>` with unit `ms`, `s`, `m` or `h`; `0` alone is accepted too.
pub fn parse(s: &str) -> Result<Duration, DurationError> {
    let t = s.trim();
    if t == "0" {
        return Ok(Duration::ZERO);
    }
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .ok_or_else(|| DurationError::Syntax(s.into()))?;
    let (num, unit) = t.split_at(split);
    let nanos_per_unit: f64 = match unit {
        "ms" => 1e6,
        "s" => 1e9,
        "m" | "min" => 60e9,
        "h" => 3600e9,
        _ => return Err(DurationError::Syntax(s.into())),
    };
    // `str::parse::<f64>` accepts "inf", "NaN" and exponents; only digits and a dot got here.
    if num.is_empty() || num.matches('.').count() > 1 || num == "." {
        return Err(DurationError::Syntax(s.into()));
    }
    let value: f64 = num.parse().map_err(|_| DurationError::Syntax(s.into()))?;
    let nanos = value * nanos_per_unit;
    // A year is far more than any run; the cap keeps the float-to-int conversion exact.
    if nanos > 365.0 * 86400e9 {
        return Err(DurationError::TooLong(s.into()));
    }
    Ok(Duration::from_nanos(nanos.round() as u64))
}

/// The shortest exact form of `d` among `ms`, `s`, `m`: for messages and reports.
pub fn format(d: Duration) -> String {
    let ms = d.as_millis();
    if ms.is_multiple_of(60_000) && ms > 0 {
        format!("{}m", ms / 60_000)
    } else if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units() {
        assert_eq!(parse("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse("0"), Ok(Duration::ZERO));
        assert_eq!(parse(" 5s "), Ok(Duration::from_secs(5)));
    }

    #[test]
    fn errors() {
        for bad in [
            "", "30", "s", "1.2.3s", ".s", "-1s", "1x", "infs", "1e3s", "5 s",
        ] {
            assert!(
                matches!(parse(bad), Err(DurationError::Syntax(_))),
                "{bad:?} should not parse"
            );
        }
        assert!(matches!(parse("99999h"), Err(DurationError::TooLong(_))));
    }

    #[test]
    fn formats() {
        assert_eq!(format(Duration::from_secs(30)), "30s");
        assert_eq!(format(Duration::from_secs(120)), "2m");
        assert_eq!(format(Duration::from_millis(1500)), "1500ms");
        assert_eq!(format(Duration::ZERO), "0s");
    }
}
