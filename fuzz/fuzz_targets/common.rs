//! What every provider target checks of an accepted notification: the
//! parts that end up in keys, headers and routes are safe there.

use webhook_relay::providers::{Notification, Rejection};

pub fn check_notification(result: Result<Notification, Rejection>, prefix: &str) {
    let Ok(n) = result else { return };
    assert!(
        n.dedup_key.starts_with(prefix),
        "dedup key {:?}",
        n.dedup_key
    );
    assert!(!n.event_type.is_empty());
    assert!(
        !n.event_type.chars().any(char::is_control),
        "event type {:?}",
        n.event_type
    );
    if let Some(subject) = &n.subject {
        assert!(
            !subject.chars().any(char::is_control),
            "subject {subject:?}"
        );
    }
}

/// Event names of the named providers: `a-z 0-9 _ - .` only.
#[allow(dead_code)] // not for generic, whose event type is the sender's
pub fn check_event_name(result: &Result<Notification, Rejection>) {
    if let Ok(n) = result {
        assert!(
            n.event_type
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "_-.".contains(c)),
            "event type {:?}",
            n.event_type
        );
    }
}
