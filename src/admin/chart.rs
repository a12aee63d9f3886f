//! The dashboard's chart of the last hour, server-rendered as inline SVG
//! (no script, nothing loaded): notifications received and deliveries made
//! per minute, and the oldest waiting age, from the metrics' in-memory
//! [`History`](crate::metrics::history). The numbers are HTML around the
//! SVG, so they stay readable however wide the screen; each bar's exact
//! value and minute show on hover (an SVG `<title>`).

use std::fmt::Write as _;

use super::humane;
use crate::metrics::history::Minute;

/// Drawing units: one minute is `SLOT` wide, bars `HEIGHT` tall at most.
const SLOT: u64 = 10;
const HEIGHT: u64 = 60;

/// The chart of `hour` (oldest minute first), as HTML.
pub fn last_hour(hour: &[Minute]) -> String {
    let most = |of: fn(&Minute) -> u64| hour.iter().map(of).max().unwrap_or(0);
    let (received, delivered) = (most(|m| m.received).max(1), most(|m| m.delivered).max(1));
    let top = received.max(delivered);
    let total = |of: fn(&Minute) -> u64| hour.iter().map(of).sum::<u64>();
    let mut out = format!(
        "<figure id=chart><figcaption>Last hour, per minute: \
         <span class=key-received>■</span> {} received, \
         <span class=key-delivered>■</span> {} made \
         <span class=muted>(the tallest bar is {top})</span></figcaption>",
        humane::count(total(|m| m.received), "notification"),
        humane::count(total(|m| m.delivered), "delivery"),
    );
    out.push_str(&svg_open(
        "notifications received and deliveries made per minute",
    ));
    for (i, minute) in (0u64..).zip(hour) {
        let at = minute_label(minute);
        bar(
            &mut out,
            "received",
            i * SLOT + 1,
            minute.received,
            top,
            &format!("{at}: {} received", minute.received),
        );
        bar(
            &mut out,
            "delivered",
            i * SLOT + 5,
            minute.delivered,
            top,
            &format!("{at}: {} delivered", minute.delivered),
        );
    }
    out.push_str("</svg>");
    // The oldest waiting age, in whole seconds for the bars.
    let ages: Vec<Option<u64>> = hour
        .iter()
        .map(|m| m.oldest_waiting_seconds.map(|s| s.round() as u64))
        .collect();
    let oldest = ages.iter().flatten().copied().max().unwrap_or(0);
    let now = ages.last().copied().flatten();
    let _ = write!(
        out,
        "<p class=caption><span class=key-waiting>■</span> oldest waiting delivery: {} now, at most {} this hour \
         <span class=muted>(sampled when this page or a scrape looks)</span></p>",
        now.map_or_else(|| "not sampled".into(), |s| humane::span(to_ms(s))),
        humane::span(to_ms(oldest)),
    );
    out.push_str(&svg_open("age of the oldest waiting delivery per minute"));
    for ((i, minute), age) in (0u64..).zip(hour).zip(&ages) {
        if let Some(age) = age {
            let label = format!(
                "{}: oldest waiting {}",
                minute_label(minute),
                humane::span(to_ms(*age))
            );
            bar(
                &mut out,
                "waiting",
                i * SLOT + 1,
                *age,
                oldest.max(1),
                &label,
            );
        }
    }
    out.push_str(
        "</svg><p class=\"caption axis\"><span>60 min ago</span><span>now</span></p></figure>",
    );
    out
}

fn to_ms(seconds: u64) -> i64 {
    i64::try_from(seconds.saturating_mul(1000)).unwrap_or(i64::MAX)
}

fn svg_open(label: &str) -> String {
    format!(
        "<svg viewBox=\"0 0 {} {HEIGHT}\" preserveAspectRatio=none role=img aria-label=\"{label}\">\
         <line x1=0 y1={HEIGHT} x2={} y2={HEIGHT} stroke=\"#bbb\"/>",
        SLOT * 60,
        SLOT * 60
    )
}

/// One bar of `value` on a scale whose top is `top` (nothing at zero).
fn bar(out: &mut String, class: &str, x: u64, value: u64, top: u64, title: &str) {
    if value == 0 {
        return;
    }
    // At least a unit tall, so a 1 beside a 1000 still shows.
    let height = (value.saturating_mul(HEIGHT) / top.max(1)).clamp(1, HEIGHT);
    let _ = write!(
        out,
        "<rect class={class} x={x} y={} width=4 height={height}><title>{}</title></rect>",
        HEIGHT - height,
        super::humane::escape(title)
    );
}

/// The minute's start, "HH:MM UTC".
fn minute_label(minute: &Minute) -> String {
    let exact = crate::clock::format_ms(minute.start_ms);
    match exact.get(11..16) {
        Some(hh_mm) => format!("{hh_mm} UTC"),
        None => exact,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::history::{History, MINUTES};

    #[test]
    fn traffic_makes_bars_and_an_empty_hour_makes_none() {
        let now = 1_764_000_000_000;
        let mut history = History::default();
        let empty = last_hour(&history.last_hour(now));
        assert!(empty.contains("<svg"), "{empty}");
        assert!(!empty.contains("<rect"), "{empty}");

        history.received(now - 120_000);
        history.received(now - 120_000);
        history.delivered(now);
        history.sample_oldest_waiting(now, 200.0);
        let hour = history.last_hour(now);
        assert_eq!(hour.len(), MINUTES);
        let chart = last_hour(&hour);
        assert_eq!(chart.matches("<rect class=received").count(), 1, "{chart}");
        assert_eq!(chart.matches("<rect class=delivered").count(), 1, "{chart}");
        assert_eq!(chart.matches("<rect class=waiting").count(), 1, "{chart}");
        assert!(chart.contains("2 notifications received"), "{chart}");
        assert!(chart.contains("1 delivery made"), "{chart}");
        assert!(
            chart.contains("<title>16:00 UTC: 1 delivered</title>"),
            "{chart}"
        );
        assert!(chart.contains("3 min now"), "{chart}");
        // The tallest bar is full height, the smaller one half.
        assert!(
            chart.contains("y=0 width=4 height=60><title>15:58 UTC: 2 received"),
            "{chart}"
        );
        assert!(
            chart.contains("y=30 width=4 height=30><title>16:00 UTC: 1 delivered"),
            "{chart}"
        );
    }
}
