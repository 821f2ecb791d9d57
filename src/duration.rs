//! The one duration syntax of the crate, for command-line flags and topology values alike.
//!
//! `500ms`, `2s`, `1.5s`, `2m`, `1h` or a bare number of seconds. The CLI and the topology
//! loader used to have a parser each, and they disagreed on fractions; worse, the CLI one fed
//! `1e30` into `Duration::from_secs_f64`, which panics. Here the value is checked against a cap
//! ([`MAX`], 7 days) before any conversion, so no input can overflow or panic.

use std::time::Duration;

/// The longest duration accepted anywhere: no timeout in this tool needs more than a week, and
/// capping keeps deadline arithmetic (`Instant + d`) far from overflow.
pub const MAX: Duration = Duration::from_secs(7 * 24 * 3600);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    #[error("`{0}` is not a duration (e.g. 500ms, 30s, 1.5s, 2m, 1h or seconds)")]
    Syntax(String),
    #[error("`{0}` is longer than the maximum of 7 days")]
    TooLong(String),
}

/// Parse a duration; see the module documentation for the syntax.
pub fn parse(s: &str) -> Result<Duration, DurationError> {
    let t = s.trim();
    let syntax = || DurationError::Syntax(s.to_string());
    let (num, unit_secs) = if let Some(n) = t.strip_suffix("ms") {
        (n, 0.001)
    } else if let Some(n) = t.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = t.strip_suffix('m') {
        (n, 60.0)
    } else if let Some(n) = t.strip_suffix('h') {
        (n, 3600.0)
    } else {
        (t, 1.0)
    };
    // Plain decimal numbers only: f64's parser would also take `inf`, `NaN`, `1e3` and `+1`.
    let num = num.trim();
    let digits_ok = !num.is_empty()
        && num.chars().all(|c| c.is_ascii_digit() || c == '.')
        && num.chars().filter(|c| *c == '.').count() <= 1
        && num.chars().any(|c| c.is_ascii_digit());
    if !digits_ok {
        return Err(syntax());
    }
    let v: f64 = num.parse().map_err(|_| syntax())?;
    let secs = v * unit_secs;
    if !secs.is_finite() || secs > MAX.as_secs_f64() {
        return Err(DurationError::TooLong(s.to_string()));
    }
    // Round to whole milliseconds: `0.1s` is 100ms, not 99.999…ms.
    Ok(Duration::from_millis((secs * 1000.0).round() as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_and_fractions() {
        assert_eq!(parse("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse("0.5m"), Ok(Duration::from_secs(30)));
        assert_eq!(parse("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse(" 7 "), Ok(Duration::from_secs(7)));
        assert_eq!(parse("0.1s"), Ok(Duration::from_millis(100)));
        assert_eq!(parse("0"), Ok(Duration::ZERO));
        assert_eq!(parse("168h"), Ok(MAX));
    }

    #[test]
    fn bad_syntax_is_an_error() {
        for s in ["", "soon", "-1s", "+1s", "1e3", "inf", "NaN", "1..2s", ".s", "1 h 2", "ms", "1d"] {
            assert!(matches!(parse(s), Err(DurationError::Syntax(_))), "{s:?}: {:?}", parse(s));
        }
    }

    #[test]
    fn regression_duration_1e30_panics() {
        // Used to reach Duration::from_secs_f64(1e30), which panics (exit 101).
        assert!(parse("1e30s").is_err());
        let huge = format!("{}s", "9".repeat(400));
        assert_eq!(parse(&huge), Err(DurationError::TooLong(huge.clone())));
        assert!(matches!(parse("169h"), Err(DurationError::TooLong(_))));
        assert!(matches!(parse("18446744073709551616ms"), Err(DurationError::TooLong(_))));
    }
}
