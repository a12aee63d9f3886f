//! The value types of `relay.toml` that parse themselves from strings:
//! durations (`"5m"`), sizes (`"1MiB"`), rates (`"20/s"`), networks
//! (`"203.0.113.0/24"`) and header names. Each one is parsed once, at load,
//! into the type the rest of the relay uses, so a bad value is reported by
//! the TOML deserializer at its own line and column and nothing downstream
//! can meet (and drop) an unparsed string.
//!
//! The grammar (docs/configuration.md, "Values: one grammar"):
//! - a duration is one or more `<digits><unit>` terms, largest unit first,
//!   with no spaces: units `d`, `h`, `m`, `s`, `ms` (`"500ms"`, `"5m"`,
//!   `"1h30m"`, `"30d"`); no bare numbers, no words, no fractions, no
//!   weeks, months or years;
//! - a size is a TOML integer (bytes) or `<digits><unit>` with a binary unit
//!   `B`, `KiB`, `MiB`, `GiB`. Decimal units (`kB`, `MB`, `GB`) are refused,
//!   so that nobody has to guess whether `1MB` means 10^6 or 2^20 bytes.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Deserializer};

// === durations ===

/// A duration written in the config's grammar: `"50ms"`, `"5m"`, `"1h30m"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct HumanDuration(pub Duration);

impl HumanDuration {
    /// What is wrong with it outside `min..=max`, said in the config's own
    /// grammar; `None` within.
    pub fn outside(self, min: Duration, max: Duration) -> Option<String> {
        if self.0 < min {
            Some(if min <= Duration::from_millis(1) {
                "must be longer than zero".to_owned()
            } else {
                format!("must be at least {}", HumanDuration(min))
            })
        } else if self.0 > max {
            Some(format!(
                "{self} is too long: at most {}",
                HumanDuration(max)
            ))
        } else {
            None
        }
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(de: D) -> Result<Self, D::Error> {
        let text = String::deserialize(de)?;
        parse_duration(&text)
            .map(HumanDuration)
            .map_err(serde::de::Error::custom)
    }
}

impl fmt::Display for HumanDuration {
    /// In the same grammar, so a message can be pasted back into the file.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut ms = self.0.as_millis();
        if ms == 0 {
            return f.write_str("0s");
        }
        for (unit, size) in DURATION_UNITS {
            if ms >= size {
                write!(f, "{}{unit}", ms / size)?;
                ms %= size;
            }
        }
        Ok(())
    }
}

/// Units, largest first, with their length in milliseconds.
const DURATION_UNITS: [(&str, u128); 5] = [
    ("d", 86_400_000),
    ("h", 3_600_000),
    ("m", 60_000),
    ("s", 1_000),
    ("ms", 1),
];

/// Parses a duration in the config's grammar (see the module's doc).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    const HINT: &str =
        "write <digits><unit> terms with units d, h, m, s, ms, largest first and without spaces, e.g. \"500ms\", \"5m\", \"1h30m\"";
    let invalid = |why: &str| format!("invalid duration {text:?}: {why}; {HINT}");
    if text.is_empty() {
        return Err(invalid("empty"));
    }
    let mut rest = text;
    let mut total: u128 = 0;
    let mut last_unit = None;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(invalid("expected a number"));
        }
        let (number, after) = rest.split_at(digits);
        let unit_len = after.bytes().take_while(u8::is_ascii_alphabetic).count();
        let (unit, after) = after.split_at(unit_len);
        let Some(index) = DURATION_UNITS.iter().position(|(name, _)| *name == unit) else {
            return Err(invalid(&match unit {
                "" if after.is_empty() => format!("the number {number} has no unit"),
                "" => format!(
                    "unexpected {:?} after {number}",
                    after.chars().next().unwrap_or_default()
                ),
                _ => format!("unknown unit {unit:?}"),
            }));
        };
        if last_unit.is_some_and(|last| index <= last) {
            return Err(invalid("units must go from largest to smallest, each once"));
        }
        last_unit = Some(index);
        let number: u128 = number.parse().map_err(|_| invalid("number too large"))?;
        total = number
            .checked_mul(DURATION_UNITS[index].1)
            .and_then(|ms| total.checked_add(ms))
            .ok_or_else(|| invalid("too long"))?;
        rest = after;
    }
    let ms = u64::try_from(total).map_err(|_| invalid("too long"))?;
    Ok(Duration::from_millis(ms))
}

// === sizes ===

/// A byte size: a TOML integer (bytes) or `"1MiB"`, `"512KiB"`.
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
        match Raw::deserialize(de) {
            Ok(Raw::Number(n)) => Ok(ByteSize(n)),
            Ok(Raw::Text(text)) => parse_size(&text)
                .map(ByteSize)
                .map_err(serde::de::Error::custom),
            Err(_) => Err(serde::de::Error::custom(
                "a size is a number of bytes or a string such as \"1MiB\"",
            )),
        }
    }
}

impl fmt::Display for ByteSize {
    /// In the config's grammar: the largest binary unit that divides it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (unit, size) in SIZE_UNITS.iter().rev() {
            if self.0 != 0 && self.0.is_multiple_of(*size) {
                return write!(f, "{}{unit}", self.0 / size);
            }
        }
        write!(f, "{}B", self.0)
    }
}

const SIZE_UNITS: [(&str, u64); 4] = [
    ("B", 1),
    ("KiB", 1 << 10),
    ("MiB", 1 << 20),
    ("GiB", 1 << 30),
];

/// Parses `<digits><unit>` with a binary unit (see the module's doc).
pub fn parse_size(text: &str) -> Result<u64, String> {
    let digits = text.bytes().take_while(u8::is_ascii_digit).count();
    let (number, unit) = text.split_at(digits);
    let invalid = |why: String| {
        format!("invalid size {text:?}: {why}; write a number of bytes or <digits><unit> with unit B, KiB, MiB or GiB, e.g. \"512KiB\", \"1MiB\"")
    };
    if number.is_empty() {
        return Err(invalid("expected a number".into()));
    }
    let multiplier = match unit {
        "" => 1,
        "kB" | "KB" | "MB" | "GB" => {
            let binary = format!("{}iB", unit[..1].to_ascii_uppercase());
            return Err(invalid(format!(
                "decimal units (kB, MB, GB) are not accepted, so that 1MB cannot be mistaken for 1MiB: did you mean \"{number}{binary}\"?"
            )));
        }
        _ => match SIZE_UNITS.iter().find(|(name, _)| *name == unit) {
            Some((_, size)) => *size,
            None => return Err(invalid(format!("unknown unit {unit:?}"))),
        },
    };
    number
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(multiplier))
        .ok_or_else(|| invalid("too large".into()))
}

// === rates ===

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

// === networks and header names ===

/// An IP network, written as a CIDR (`"203.0.113.0/24"`) or a single
/// address (`"198.51.100.7"`, a /32 or /128).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Network(pub ipnet::IpNet);

impl<'de> Deserialize<'de> for Network {
    fn deserialize<D: Deserializer<'de>>(de: D) -> Result<Self, D::Error> {
        let text = String::deserialize(de)?;
        parse_network(&text)
            .map(Network)
            .ok_or_else(|| {
                serde::de::Error::custom(format!(
                    "{text:?} is not an IP address or CIDR network (e.g. \"203.0.113.0/24\", \"2001:db8::/32\", \"198.51.100.7\")"
                ))
            })
    }
}

fn parse_network(text: &str) -> Option<ipnet::IpNet> {
    text.parse::<ipnet::IpNet>().ok().or_else(|| {
        text.parse::<std::net::IpAddr>()
            .ok()
            .map(ipnet::IpNet::from)
    })
}

/// An HTTP header name, checked at load (`"X-Signature"`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderName(pub http::HeaderName);

impl<'de> Deserialize<'de> for HeaderName {
    fn deserialize<D: Deserializer<'de>>(de: D) -> Result<Self, D::Error> {
        let text = String::deserialize(de)?;
        http::HeaderName::from_bytes(text.as_bytes())
            .map(HeaderName)
            .map_err(|_| {
                serde::de::Error::custom(format!(
                    "{text:?} is not a valid HTTP header name (letters, digits and !#$%&'*+-.^_`|~ only)"
                ))
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_follow_one_grammar() {
        assert_eq!(parse_duration("50ms"), Ok(Duration::from_millis(50)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("72h"), Ok(Duration::from_secs(72 * 3600)));
        assert_eq!(parse_duration("3d"), Ok(Duration::from_secs(3 * 86_400)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
        for bad in [
            "5",
            "soon",
            "15 seconds",
            "15s ",
            " 15s",
            "1h 30m",
            "1y",
            "2w",
            "1.5h",
            "30m1h",
            "1m1m",
            "",
            "-5s",
            "99999999999999999999999d",
        ] {
            let err = parse_duration(bad).expect_err(bad);
            assert!(err.contains("write <digits><unit>"), "{bad}: {err}");
        }
        assert!(parse_duration("1y")
            .unwrap_err()
            .contains("unknown unit \"y\""));
    }

    #[test]
    fn a_character_of_several_bytes_after_a_number_is_an_error_not_a_panic() {
        // Found by the admin_filter fuzz target: `until=182025%BA...`
        // reached this parser and cut the text inside a character.
        for bad in ["182025\u{FFFD}%2.*", "1º", "5é", "1h\u{1F600}", "30m€"] {
            let err = parse_duration(bad).expect_err(bad);
            assert!(err.contains("write <digits><unit>"), "{bad}: {err}");
        }
        assert!(parse_duration("1º")
            .unwrap_err()
            .contains("unexpected 'º' after 1"));
    }

    #[test]
    fn durations_print_in_their_grammar() {
        for text in ["0s", "500ms", "5m", "1h30m", "3d", "1d2h3m4s5ms"] {
            let parsed = HumanDuration(parse_duration(text).unwrap());
            assert_eq!(parsed.to_string(), text);
        }
    }

    #[test]
    fn sizes_take_binary_units_only() {
        assert_eq!(parse_size("1MiB"), Ok(1 << 20));
        assert_eq!(parse_size("512KiB"), Ok(512 << 10));
        assert_eq!(parse_size("2GiB"), Ok(2 << 30));
        assert_eq!(parse_size("100B"), Ok(100));
        assert_eq!(parse_size("100"), Ok(100));
        let mb = parse_size("1MB").unwrap_err();
        assert!(mb.contains("did you mean \"1MiB\""), "{mb}");
        assert!(parse_size("64kB").unwrap_err().contains("\"64KiB\""));
        for bad in [
            "1 MiB",
            "1PiB",
            "MiB",
            "1mib",
            "1.5MiB",
            "99999999999999999999GiB",
        ] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
        assert_eq!(ByteSize(1 << 20).to_string(), "1MiB");
        assert_eq!(ByteSize(1000).to_string(), "1000B");
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

    #[test]
    fn networks_are_cidrs_or_addresses() {
        assert_eq!(parse_network("10.0.0.0/8"), "10.0.0.0/8".parse().ok());
        assert_eq!(parse_network("::1"), "::1/128".parse().ok());
        assert_eq!(parse_network("10.0.0.0/99"), None);
        assert_eq!(parse_network("office"), None);
    }
}
