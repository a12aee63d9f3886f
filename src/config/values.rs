//! The human-readable value types of `relay.toml`: durations (`"5m"`),
//! sizes (`"1MiB"`) and rates (`"20/s"`). Each parses itself, so a bad value
//! is reported by the TOML deserializer at the value's own line and column.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Deserializer};

/// A duration written as a human string: `"50ms"`, `"5m"`, `"72h"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct HumanDuration(pub Duration);

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(de: D) -> Result<Self, D::Error> {
        let text = String::deserialize(de)?;
        parse_duration(&text)
            .map(HumanDuration)
            .map_err(serde::de::Error::custom)
    }
}

/// Parses `"5m"`, `"1h 30m"`, `"250ms"`; a bare number is refused because its
/// unit would be a guess.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text.trim()).map_err(|err| {
        format!("invalid duration {text:?} ({err}); write e.g. \"500ms\", \"5m\", \"72h\"")
    })
}

/// A byte size written as `"1MiB"`, `"512KiB"`, `"64MB"` or a plain number of bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ByteSize(pub u64);

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(de: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Number(u64),
            Text(String),
        }
        match Raw::deserialize(de)? {
            Raw::Number(n) => Ok(ByteSize(n)),
            Raw::Text(text) => parse_size(&text)
                .map(ByteSize)
                .map_err(serde::de::Error::custom),
        }
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} bytes", self.0)
    }
}

/// Parses a size with an optional binary (`KiB`, `MiB`, `GiB`) or decimal
/// (`KB`, `MB`, `GB`) unit.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let trimmed = text.trim();
    let split = trimmed
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(trimmed.len());
    let (digits, unit) = trimmed.split_at(split);
    let invalid =
        || format!("invalid size {text:?}; write e.g. \"1MiB\", \"512KiB\" or a number of bytes");
    let number: u64 = digits.parse().map_err(|_| invalid())?;
    let multiplier: u64 = match unit.trim() {
        "" | "B" => 1,
        "KB" | "kB" => 1_000,
        "KiB" => 1 << 10,
        "MB" => 1_000_000,
        "MiB" => 1 << 20,
        "GB" => 1_000_000_000,
        "GiB" => 1 << 30,
        _ => return Err(invalid()),
    };
    number.checked_mul(multiplier).ok_or_else(invalid)
}

/// A rate written as `"20/s"`, `"600/m"` or `"1000/h"`: that many events per period.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub count: u32,
    pub per: Duration,
}

impl<'de> Deserialize<'de> for Rate {
    fn deserialize<D: Deserializer<'de>>(de: D) -> Result<Self, D::Error> {
        let text = String::deserialize(de)?;
        parse_rate(&text).map_err(serde::de::Error::custom)
    }
}

pub fn parse_rate(text: &str) -> Result<Rate, String> {
    let invalid = || format!("invalid rate {text:?}; write e.g. \"20/s\", \"600/m\", \"1000/h\"");
    let (count, unit) = text.trim().split_once('/').ok_or_else(invalid)?;
    let count: u32 = count.trim().parse().map_err(|_| invalid())?;
    if count == 0 {
        return Err(format!(
            "invalid rate {text:?}: the count must be at least 1"
        ));
    }
    let per = match unit.trim() {
        "s" => Duration::from_secs(1),
        "m" => Duration::from_secs(60),
        "h" => Duration::from_secs(3600),
        _ => return Err(invalid()),
    };
    Ok(Rate { count, per })
}

impl Rate {
    /// The interval at which one unit of quota comes back.
    pub fn replenish_interval(&self) -> Duration {
        self.per / self.count
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("50ms"), Ok(Duration::from_millis(50)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("72h"), Ok(Duration::from_secs(72 * 3600)));
        assert!(parse_duration("5").is_err());
        assert!(parse_duration("soon").is_err());
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("1MiB"), Ok(1 << 20));
        assert_eq!(parse_size("512KiB"), Ok(512 << 10));
        assert_eq!(parse_size("64MB"), Ok(64_000_000));
        assert_eq!(parse_size("100"), Ok(100));
        assert!(parse_size("1 PiB").is_err());
        assert!(parse_size("MiB").is_err());
        assert!(parse_size("99999999999999999999GiB").is_err());
    }

    #[test]
    fn rates() {
        let rate = parse_rate("20/s").unwrap();
        assert_eq!(rate.count, 20);
        assert_eq!(rate.replenish_interval(), Duration::from_millis(50));
        assert_eq!(
            parse_rate("600/m").unwrap().replenish_interval(),
            Duration::from_millis(100)
        );
        assert!(parse_rate("0/s").is_err());
        assert!(parse_rate("20 per second").is_err());
        assert!(parse_rate("20/d").is_err());
    }
}
