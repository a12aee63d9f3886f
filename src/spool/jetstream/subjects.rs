//! The spool's subjects in the stream `P_spool` (see
//! `docs/design/jetstream.md`, "Names and subjects"): how a record's kind,
//! source, dedup key and id are written into one, and read back by the
//! index's fold.
//!
//! A source name that is already a subject token (`[A-Za-z0-9_-]+`) is
//! used as it is; any other is `~` and its bytes in hex, so two names never
//! share a token. A dedup key is the 26-character Crockford base32 of the
//! first 16 bytes of SHA-256 over the key (fixed length, token-safe).

use sha2::{Digest, Sha256};

use super::Names;
use crate::spool::{AuditId, NotificationId};

/// The header holding a record's metadata (JSON) beside its raw body.
pub(super) const META: &str = "Relay-Meta";
/// On a notification made of a quarantined body: the quarantine id it
/// takes out of the quarantine.
pub(super) const RELEASED: &str = "Relay-Released";
/// On a delivery's state: `due` (the consumer hands it out), `wait` (the
/// waker marks it `due` when its time comes) or `final`.
pub(super) const LEASE: &str = "Relay-Lease";
/// On a delivery's state marked `wait` or `due`: when it is due (ms).
pub(super) const DUE: &str = "Relay-Due";
/// On a delivery's state: which relay's write it is (`{relay}.{n}`), so a
/// write whose ack was lost is known for its own.
pub(super) const WRITE: &str = "Relay-Write";
/// On a delivery's state: where it stands for the counts (`waiting`,
/// `delivered`, `dead` or `purged`), since the fold reads headers only.
pub(super) const STANDING: &str = "Relay-Standing";
/// On an API subscription's record: the id of the audit record of the
/// change (published just before it).
pub(super) const AUDIT: &str = "Relay-Audit";

/// A name written as one subject token.
pub(super) fn token(name: &str) -> String {
    let safe = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if safe {
        return name.to_owned();
    }
    let mut out = String::with_capacity(1 + 2 * name.len());
    out.push('~');
    for b in name.bytes() {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

/// The name a subject token was made of (the inverse of [`token`]);
/// `None` for what no name makes.
pub(super) fn name_of(token: &str) -> Option<String> {
    let Some(hex) = token.strip_prefix('~') else {
        return Some(token.to_owned());
    };
    if hex.len() % 2 != 0 {
        return None;
    }
    let bytes = (0..hex.len())
        .step_by(2)
        .map(|at| u8::from_str_radix(hex.get(at..at + 2)?, 16).ok())
        .collect::<Option<Vec<u8>>>()?;
    String::from_utf8(bytes).ok()
}

/// The token of a dedup key: every store of one key (within a source)
/// shares it, whatever the key's length or characters.
pub(super) fn key_hash(dedup_key: &str) -> String {
    let digest = Sha256::digest(dedup_key.as_bytes());
    let mut first = [0u8; 16];
    first.copy_from_slice(&digest[..16]);
    ulid::Ulid(u128::from_be_bytes(first)).to_string()
}

impl Names {
    /// A notification: `P.n.{src}.{kh}.{id}`.
    pub(super) fn notification(&self, source: &str, dedup_key: &str, id: NotificationId) -> String {
        format!("{}.{id}", self.dedup_key(source, dedup_key))
    }

    /// Every notification of one dedup key: `P.n.{src}.{kh}.*`, what the
    /// store's compare-and-set is made over.
    pub(super) fn dedup_wildcard(&self, source: &str, dedup_key: &str) -> String {
        format!("{}.*", self.dedup_key(source, dedup_key))
    }

    fn dedup_key(&self, source: &str, dedup_key: &str) -> String {
        format!(
            "{}.n.{}.{}",
            self.prefix,
            token(source),
            key_hash(dedup_key)
        )
    }

    /// A quarantined body: `P.q.{src}.{id}`.
    pub(super) fn quarantine(&self, source: &str, id: NotificationId) -> String {
        format!("{}.q.{}.{id}", self.prefix, token(source))
    }

    /// A resend of `id` inside the window: `P.e.{id}.{resend}`.
    pub(super) fn resend(&self, id: NotificationId, resend: ulid::Ulid) -> String {
        format!("{}.e.{id}.{resend}", self.prefix)
    }

    /// A delivery's current state: `P.d.{sub}.{id}`.
    pub(super) fn delivery(&self, subscription: &str, id: NotificationId) -> String {
        format!("{}.d.{}.{id}", self.prefix, token(subscription))
    }

    /// Every notification: what each subscription's consumer hands out
    /// as first attempts.
    pub(super) fn notifications(&self) -> String {
        format!("{}.n.>", self.prefix)
    }

    /// Every delivery state of one subscription.
    pub(super) fn deliveries_of(&self, subscription: &str) -> String {
        format!("{}.d.{}.*", self.prefix, token(subscription))
    }

    /// A subscription's pause flag: `P.c.pause.{sub}`.
    pub(super) fn pause(&self, subscription: &str) -> String {
        format!("{}.c.pause.{}", self.prefix, token(subscription))
    }

    /// An audit record: `P.a.{auditid}`.
    pub(super) fn audit(&self, id: AuditId) -> String {
        format!("{}.a.{id}", self.prefix)
    }

    /// An API-created subscription (its latest version, or a tombstone):
    /// `P.c.sub.{name}`.
    pub(super) fn api_subscription(&self, name: &str) -> String {
        format!("{}.c.sub.{}", self.prefix, token(name))
    }

    /// A stuck invoice's mark: `P.x.stuck.{src}.{subj}`.
    pub(super) fn stuck(&self, source: &str, subject: &str) -> String {
        format!(
            "{}.x.stuck.{}.{}",
            self.prefix,
            token(source),
            token(subject)
        )
    }

    /// How far the stuck check walked a source: `P.x.walked.{src}`.
    pub(super) fn walked(&self, source: &str) -> String {
        format!("{}.x.walked.{}", self.prefix, token(source))
    }

    /// An invoice's reconcile check in `slot`: `P.x.check.{src}.{subj}.{slot}`.
    pub(super) fn check(&self, source: &str, subject: &str, slot: u64) -> String {
        format!(
            "{}.x.check.{}.{}.{slot}",
            self.prefix,
            token(source),
            token(subject)
        )
    }

    /// Every reconcile check of an invoice: `P.x.check.{src}.{subj}.>`.
    pub(super) fn checks_of(&self, source: &str, subject: &str) -> String {
        format!(
            "{}.x.check.{}.{}.>",
            self.prefix,
            token(source),
            token(subject)
        )
    }

    /// The durable consumer of one subscription's first attempts: `P_s_{sub}`.
    pub(super) fn consumer(&self, subscription: &str) -> String {
        format!("{}_s_{}", self.prefix, token(subscription))
    }

    /// The durable consumer of one subscription's retries: `P_r_{sub}`.
    pub(super) fn retry_consumer(&self, subscription: &str) -> String {
        format!("{}_r_{}", self.prefix, token(subscription))
    }

    /// What a subject of this spool holds, for the fold.
    pub(super) fn parse(&self, subject: &str) -> Kind {
        let Some(rest) = subject
            .strip_prefix(self.prefix.as_str())
            .and_then(|r| r.strip_prefix('.'))
        else {
            return Kind::Other;
        };
        let tokens: Vec<&str> = rest.split('.').collect();
        let id = |text: &str| NotificationId::parse(text);
        match tokens.as_slice() {
            ["n", _, _, last] => id(last).map_or(Kind::Other, Kind::Notification),
            ["q", _, last] => id(last).map_or(Kind::Other, Kind::Quarantine),
            ["e", of, _] => id(of).map_or(Kind::Other, Kind::Resend),
            ["c", "pause", _] => Kind::Pause,
            ["c", "sub", name] => name_of(name).map_or(Kind::Other, Kind::ApiSubscription),
            ["a", last] => {
                crate::spool::parse_ulid(last).map_or(Kind::Other, |id| Kind::Audit(AuditId(id)))
            }
            ["r", last] => {
                id(last).map_or(Kind::Other, |id| Kind::Removed(Removed::Notification(id)))
            }
            ["r", "q", last] => {
                id(last).map_or(Kind::Other, |id| Kind::Removed(Removed::Quarantine(id)))
            }
            ["r", "a", last] => crate::spool::parse_ulid(last)
                .map_or(Kind::Other, |id| Kind::Removed(Removed::Audit(AuditId(id)))),
            ["x", "stuck", source, subject] => match (name_of(source), name_of(subject)) {
                (Some(source), Some(subject)) => Kind::Stuck { source, subject },
                _ => Kind::Other,
            },
            ["x", "walked", source] => name_of(source).map_or(Kind::Other, Kind::Walked),
            ["x", "check", source, subject, _] => match (name_of(source), name_of(subject)) {
                (Some(source), Some(subject)) => Kind::Check { source, subject },
                _ => Kind::Other,
            },
            ["d", sub, last] => id(last).map_or(Kind::Other, |id| Kind::Delivery {
                subscription: (*sub).to_owned(),
                id,
            }),
            _ => Kind::Other,
        }
    }
}

/// What one message of the stream is, as the fold sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Kind {
    Notification(NotificationId),
    Quarantine(NotificationId),
    /// A resend of this notification inside the window.
    Resend(NotificationId),
    /// A delivery's state; `subscription` is the name's subject token.
    Delivery {
        subscription: String,
        id: NotificationId,
    },
    /// A subscription's pause flag (its name is in the metadata).
    Pause,
    /// An API-created subscription, by name (a tombstone has no metadata).
    ApiSubscription(String),
    /// An audit record.
    Audit(AuditId),
    /// Retention's marker that a record went (`P.r.…`, `removal.rs`).
    Removed(Removed),
    /// A stuck invoice's mark (a tombstone has no metadata).
    Stuck {
        source: String,
        subject: String,
    },
    /// How far the stuck check walked a source.
    Walked(String),
    /// A reconcile check of an invoice.
    Check {
        source: String,
        subject: String,
    },
    /// Something the index does not keep (yet).
    Other,
}

/// What a removal marker of retention's names (`removal.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Removed {
    Notification(NotificationId),
    Quarantine(NotificationId),
    Audit(AuditId),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_become_tokens_that_never_collide() {
        assert_eq!(token("tus"), "tus");
        assert_eq!(token("a.b"), "~612e62");
        assert_eq!(token("~612e62"), "~7e363132653632");
        assert_ne!(token("a b"), token("a_b"));
        for name in ["tus", "a.b", "~612e62", "ñandú", "x y.z"] {
            assert_eq!(name_of(&token(name)).as_deref(), Some(name));
        }
        assert_eq!(name_of("~6"), None);
        assert_eq!(name_of("~zz"), None);
        assert_eq!(name_of("~ff"), None, "not UTF-8");
        assert_eq!(key_hash("x").len(), 26);
        assert_eq!(key_hash("x"), key_hash("x"));
        assert_ne!(key_hash("x"), key_hash("y"));
    }

    #[test]
    fn the_fold_reads_back_what_each_subject_holds() {
        let names = Names::new("t1");
        let id = NotificationId::new(1_700_000_000_000);
        let stored = names.notification("a.b", "key with spaces", id);
        assert_eq!(names.parse(&stored), Kind::Notification(id));
        assert!(names
            .dedup_wildcard("a.b", "key with spaces")
            .ends_with(".*"));
        assert_eq!(
            names.parse(&names.quarantine("tus", id)),
            Kind::Quarantine(id)
        );
        assert_eq!(
            names.parse(&names.resend(id, ulid::Ulid::new())),
            Kind::Resend(id)
        );
        assert_eq!(
            names.parse(&names.delivery("a.b", id)),
            Kind::Delivery {
                subscription: token("a.b"),
                id
            }
        );
        assert_eq!(names.parse(&names.pause("a.b")), Kind::Pause);
        assert_eq!(
            names.parse(&names.api_subscription("a.b")),
            Kind::ApiSubscription("a.b".into())
        );
        let audit = AuditId::next_after(None, 1_700_000_000_000);
        assert_eq!(names.parse(&names.audit(audit)), Kind::Audit(audit));
        for removed in [
            Removed::Notification(id),
            Removed::Quarantine(id),
            Removed::Audit(audit),
        ] {
            assert_eq!(names.parse(&names.removal(removed)), Kind::Removed(removed));
        }
        assert_eq!(
            names.parse(&names.stuck("tus", "0002:b")),
            Kind::Stuck {
                source: "tus".into(),
                subject: "0002:b".into()
            }
        );
        assert_eq!(
            names.parse(&names.walked("a.b")),
            Kind::Walked("a.b".into())
        );
        assert_eq!(
            names.parse(&names.check("tus", "A.1", 7)),
            Kind::Check {
                source: "tus".into(),
                subject: "A.1".into()
            }
        );
        assert_eq!(names.parse("t1.a.nope"), Kind::Other);
        assert_eq!(names.parse("t1.m.identity"), Kind::Other);
        assert_eq!(names.parse("t2.q.tus.x"), Kind::Other);
    }
}
