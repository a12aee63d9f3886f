//! Values as a person reads them on the page: counts with their plural,
//! sizes in KiB and MiB, times as "3 min ago" with the exact UTC time on
//! hover, lists as words, and a Latin-1 body decoded. Pure: the time is
//! passed in. Everything returned is HTML, escaped.

use serde_json::Value;

/// Text made safe inside HTML elements and attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// `n` and its noun, singular for one: "1 attempt", "2 attempts",
/// "2 deliveries".
pub fn count(n: u64, noun: &str) -> String {
    if n == 1 {
        return format!("1 {noun}");
    }
    match noun.strip_suffix('y') {
        Some(stem) if !stem.ends_with(['a', 'e', 'i', 'o', 'u']) => format!("{n} {stem}ies"),
        _ => format!("{n} {noun}s"),
    }
}

/// A size in bytes, KiB or MiB (or GiB), to a tenth.
pub fn size(bytes: u64) -> String {
    const KIB: f64 = 1024.0;
    let b = bytes as f64;
    if bytes < 1024 {
        count(bytes, "byte")
    } else if b < KIB * KIB {
        format!("{:.1} KiB", b / KIB)
    } else if b < KIB * KIB * KIB {
        format!("{:.1} MiB", b / (KIB * KIB))
    } else {
        format!("{:.1} GiB", b / (KIB * KIB * KIB))
    }
}

/// A span of time in the largest unit that keeps it readable: "45 s",
/// "3 min", "5 h", "2 days".
pub fn span(ms: i64) -> String {
    let seconds = ms.max(0) / 1000;
    let n = |v: i64| u64::try_from(v).unwrap_or(0);
    if seconds < 60 {
        format!("{seconds} s")
    } else if seconds < 3600 {
        format!("{} min", seconds / 60)
    } else if seconds < 48 * 3600 {
        format!("{} h", seconds / 3600)
    } else {
        count(n(seconds / 86_400), "day")
    }
}

/// How long ago (or how soon) `at_ms` is from `now_ms`.
pub fn relative(now_ms: i64, at_ms: i64) -> String {
    let delta = now_ms.saturating_sub(at_ms);
    if delta.abs() < 1000 {
        "just now".into()
    } else if delta > 0 {
        format!("{} ago", span(delta))
    } else {
        format!("in {}", span(-delta))
    }
}

/// Unix ms of an RFC 3339 time as the API writes them.
pub fn parse_ms(text: &str) -> Option<i64> {
    let at =
        time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339).ok()?;
    i64::try_from(at.unix_timestamp_nanos() / 1_000_000).ok()
}

/// A time as "3 min ago", its exact UTC time on hover; "–" when absent.
pub fn when(now_ms: i64, value: &Value) -> String {
    let Some(text) = value.as_str() else {
        return "–".into();
    };
    match parse_ms(text) {
        Some(at) => when_ms(now_ms, at),
        None => escape(text),
    }
}

/// The same, of Unix ms.
pub fn when_ms(now_ms: i64, at_ms: i64) -> String {
    let exact = escape(&crate::clock::format_ms(at_ms));
    format!(
        "<time datetime=\"{exact}\" title=\"{exact}\">{}</time>",
        relative(now_ms, at_ms)
    )
}

/// A list of words (a JSON array), comma-separated; `empty` when there is
/// none or it is absent.
pub fn list(value: &Value, empty: &str) -> String {
    let words: Vec<String> = match value {
        Value::Array(items) => items
            .iter()
            .map(|item| match item {
                Value::String(s) => escape(s),
                other => escape(&other.to_string()),
            })
            .collect(),
        Value::String(s) => vec![escape(s)],
        _ => Vec::new(),
    };
    if words.is_empty() {
        escape(empty)
    } else {
        words.join(", ")
    }
}

/// A count of dead deliveries: marked only when there are some.
pub fn dead(n: u64) -> String {
    if n == 0 {
        "0 dead".into()
    } else {
        format!("<span class=dead>{n} dead</span>")
    }
}

/// A body the provider sent in Latin-1, as text: decoded as Windows-1252
/// (a superset the providers' "ISO-8859-1" bodies are in practice), as
/// the forwarder sends it.
pub fn latin1(body: &[u8]) -> String {
    let (text, _) = encoding_rs::WINDOWS_1252.decode_without_bom_handling(body);
    text.into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_are_singular_for_one() {
        assert_eq!(count(1, "attempt"), "1 attempt");
        assert_eq!(count(2, "attempt"), "2 attempts");
        assert_eq!(count(0, "attempt"), "0 attempts");
        assert_eq!(count(3, "delivery"), "3 deliveries");
        assert_eq!(count(2, "day"), "2 days");
    }

    #[test]
    fn sizes_are_in_kib_and_mib() {
        assert_eq!(size(1), "1 byte");
        assert_eq!(size(900), "900 bytes");
        assert_eq!(size(524_287), "512.0 KiB");
        assert_eq!(size(3 * 1024 * 1024 + 512 * 1024), "3.5 MiB");
        assert_eq!(size(5 * 1024 * 1024 * 1024), "5.0 GiB");
    }

    #[test]
    fn times_read_as_ago_with_the_exact_time_on_hover() {
        let now = 1_700_000_000_000;
        assert_eq!(relative(now, now - 400), "just now");
        assert_eq!(relative(now, now - 45_000), "45 s ago");
        assert_eq!(relative(now, now - 3 * 60_000 - 5_000), "3 min ago");
        assert_eq!(relative(now, now - 5 * 3_600_000), "5 h ago");
        assert_eq!(relative(now, now - 3 * 86_400_000), "3 days ago");
        assert_eq!(relative(now, now + 300_000), "in 5 min");
        let shown = when(now, &Value::String("2023-11-14T22:10:00.000Z".into()));
        assert_eq!(
            shown,
            "<time datetime=\"2023-11-14T22:10:00.000Z\" title=\"2023-11-14T22:10:00.000Z\">3 min ago</time>"
        );
        assert_eq!(when(now, &Value::Null), "–");
    }

    #[test]
    fn lists_are_words_and_escaped() {
        let value = serde_json::json!(["tusfacturas", "da<til"]);
        assert_eq!(list(&value, "any"), "tusfacturas, da&lt;til");
        assert_eq!(list(&Value::Null, "any"), "any");
        assert_eq!(list(&serde_json::json!([]), "any"), "any");
    }

    #[test]
    fn dead_is_marked_only_when_some_are() {
        assert_eq!(dead(0), "0 dead");
        assert_eq!(dead(2), "<span class=dead>2 dead</span>");
    }

    #[test]
    fn latin1_is_decoded_as_windows_1252() {
        assert_eq!(latin1(b"N\xba 17032 \x80"), "Nº 17032 €");
    }
}
