//! The page's sessions, in memory: a login makes a random session id (the
//! cookie) that maps to the token it was made with, plus a CSRF token for
//! the session's forms. The cookie never holds the admin token, so logging
//! out (which deletes the session here) ends it for good. Bounded: at most
//! [`MAX_SESSIONS`], each ending after [`IDLE_MS`] unused or [`LIFETIME_MS`]
//! in all; a restart ends them all.

use std::collections::HashMap;
use std::sync::Mutex;

use base64::Engine as _;
use http::{header, HeaderMap};
use sha2::{Digest, Sha256};

/// The cookie that carries the session id.
pub const SESSION_COOKIE: &str = "relay_session";
/// Sessions kept at once; a login beyond it ends the least recently used.
pub const MAX_SESSIONS: usize = 1024;
/// A session unused for this long ends (1 h).
pub const IDLE_MS: i64 = 60 * 60 * 1000;
/// A session ends this long after its login, used or not (12 h).
pub const LIFETIME_MS: i64 = 12 * 60 * 60 * 1000;

/// A live session, as a request finds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    /// SHA-256 of the admin token it was opened with: the token's current
    /// name and role are looked up by it, so a token removed or changed by
    /// a reload takes its sessions with it.
    pub token_digest: [u8; 32],
    /// What the session's forms must send back.
    pub csrf: String,
}

struct Entry {
    session: Session,
    opened_ms: i64,
    used_ms: i64,
}

/// The sessions, keyed by the SHA-256 of their id (so a lookup's time
/// tells nothing of the ids kept).
#[derive(Default)]
pub struct Sessions {
    entries: Mutex<HashMap<[u8; 32], Entry>>,
}

impl Sessions {
    /// Opens a session for the token whose digest is given; returns its
    /// id, for the cookie.
    pub fn open(&self, token_digest: [u8; 32], now_ms: i64) -> String {
        let id = random_text();
        let entry = Entry {
            session: Session {
                token_digest,
                csrf: random_text(),
            },
            opened_ms: now_ms,
            used_ms: now_ms,
        };
        let mut entries = self.lock();
        entries.retain(|_, e| e.is_live(now_ms));
        if entries.len() >= MAX_SESSIONS {
            let oldest = entries
                .iter()
                .min_by_key(|(_, e)| e.used_ms)
                .map(|(key, _)| *key);
            if let Some(key) = oldest {
                entries.remove(&key);
            }
        }
        entries.insert(digest(&id), entry);
        id
    }

    /// The live session of that id (and marks it used), or None.
    pub fn find(&self, id: &str, now_ms: i64) -> Option<Session> {
        let key = digest(id);
        let mut entries = self.lock();
        let entry = entries.get_mut(&key)?;
        if !entry.is_live(now_ms) {
            entries.remove(&key);
            return None;
        }
        entry.used_ms = now_ms;
        Some(entry.session.clone())
    }

    /// Ends the session of that id; whether there was one.
    pub fn close(&self, id: &str) -> bool {
        self.lock().remove(&digest(id)).is_some()
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], Entry>> {
        // A panic while holding it cannot leave a half-made entry behind.
        self.entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Entry {
    fn is_live(&self, now_ms: i64) -> bool {
        now_ms.saturating_sub(self.used_ms) < IDLE_MS
            && now_ms.saturating_sub(self.opened_ms) < LIFETIME_MS
    }
}

/// The session id of the request's cookie, if it sent one.
pub fn cookie(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| pair.trim().strip_prefix(SESSION_COOKIE)?.strip_prefix('='))
        .filter(|id| !id.is_empty())
}

/// The `Set-Cookie` value that hands a new session id to the browser:
/// no script may read it, no other site may make the browser send it,
/// and over HTTPS it is never sent in clear.
pub fn set_cookie(id: &str, https: bool) -> String {
    let secure = if https { "; Secure" } else { "" };
    format!("{SESSION_COOKIE}={id}; Path=/; HttpOnly; SameSite=Strict{secure}")
}

/// The `Set-Cookie` value that makes the browser forget its session.
pub fn clear_cookie(https: bool) -> String {
    let secure = if https { "; Secure" } else { "" };
    format!("{SESSION_COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0{secure}")
}

/// 256 random bits, URL-safe base64 (no character a cookie or a form
/// must escape).
fn random_text() -> String {
    let bytes: [u8; 32] = rand::random();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn digest(id: &str) -> [u8; 32] {
    Sha256::digest(id.as_bytes()).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN: [u8; 32] = [7; 32];

    #[test]
    fn a_session_is_found_by_its_id_until_closed() {
        let sessions = Sessions::default();
        let id = sessions.open(TOKEN, 0);
        assert_eq!(id.len(), 43, "256 bits: {id}");
        let found = sessions.find(&id, 1).expect("live");
        assert_eq!(found.token_digest, TOKEN);
        assert_eq!(found.csrf.len(), 43);
        assert_ne!(found.csrf, id, "the CSRF token is not the id");
        assert_eq!(sessions.find(&id, 2), Some(found), "the same each time");

        let other = sessions.open(TOKEN, 3);
        assert_ne!(other, id, "each login its own id");
        assert_ne!(
            sessions.find(&other, 3).unwrap().csrf,
            sessions.find(&id, 3).unwrap().csrf
        );
        assert!(sessions.find("not-an-id", 3).is_none());
        assert!(sessions.find(&id[1..], 3).is_none());

        assert!(sessions.close(&id));
        assert!(sessions.find(&id, 4).is_none(), "closed for good");
        assert!(!sessions.close(&id));
        assert!(sessions.find(&other, 4).is_some(), "the other lives on");
    }

    #[test]
    fn an_idle_or_old_session_ends() {
        let sessions = Sessions::default();
        let id = sessions.open(TOKEN, 0);
        assert!(sessions.find(&id, IDLE_MS - 1).is_some());
        assert!(
            sessions.find(&id, 2 * IDLE_MS - 2).is_some(),
            "use keeps it"
        );
        assert!(sessions.find(&id, 3 * IDLE_MS).is_none(), "idle too long");
        assert!(sessions.is_empty(), "and gone from memory");

        let busy = sessions.open(TOKEN, 0);
        let mut now = 0;
        while now + IDLE_MS / 2 < LIFETIME_MS {
            now += IDLE_MS / 2;
            assert!(sessions.find(&busy, now).is_some(), "at {now}");
        }
        assert!(sessions.find(&busy, LIFETIME_MS).is_none(), "12 h at most");
    }

    #[test]
    fn the_count_is_bounded_and_the_least_recently_used_goes_first() {
        let sessions = Sessions::default();
        let first = sessions.open(TOKEN, 0);
        let second = sessions.open(TOKEN, 1);
        for i in 2..MAX_SESSIONS as i64 {
            sessions.open(TOKEN, i);
        }
        assert_eq!(sessions.len(), MAX_SESSIONS);
        // The first is used again, so the second is the least recent.
        let now = MAX_SESSIONS as i64;
        assert!(sessions.find(&first, now).is_some());
        let newest = sessions.open(TOKEN, now + 1);
        assert_eq!(sessions.len(), MAX_SESSIONS);
        assert!(sessions.find(&second, now + 2).is_none(), "evicted");
        assert!(sessions.find(&first, now + 2).is_some());
        assert!(sessions.find(&newest, now + 2).is_some());

        // Expired ones make room before any live one is evicted.
        let later = now + IDLE_MS + 10;
        let fresh = sessions.open(TOKEN, later);
        assert_eq!(sessions.len(), 1);
        assert!(sessions.find(&fresh, later).is_some());
    }

    #[test]
    fn the_cookie_is_read_among_others_and_made_strict() {
        let mut headers = HeaderMap::new();
        headers.append(
            header::COOKIE,
            "a=1; relay_session=abc_-9; b=2".parse().unwrap(),
        );
        assert_eq!(cookie(&headers), Some("abc_-9"));
        let mut old = HeaderMap::new();
        old.append(
            header::COOKIE,
            "relay_token=admin-token; relay_session=".parse().unwrap(),
        );
        assert_eq!(cookie(&old), None);

        let plain = set_cookie("abc", false);
        assert_eq!(
            plain,
            "relay_session=abc; Path=/; HttpOnly; SameSite=Strict"
        );
        assert!(set_cookie("abc", true).ends_with("; Secure"));
        assert!(clear_cookie(false).contains("Max-Age=0"));
        assert!(clear_cookie(true).ends_with("; Secure"));
    }
}
