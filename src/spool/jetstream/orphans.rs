//! Orphans (`docs/design/jetstream.md` §1.3): deliveries waiting for a
//! subscription that is no longer in the routes. Reported from the index
//! (its states in the due set, marked `wait` or `due`, and the first
//! attempts it still has to make), counted at open and on new routes for
//! `health` (as sled counts them at open), and handed by an admin to
//! another subscription or purged: `reassign_orphans(from, to)` writes
//! `to`'s state marked `due` expecting none (so a second run, or a second
//! relay, adds nothing), then purges `from`'s, kept with its history,
//! each a compare-and-set (`states.rs`). An outcome of `from` recorded
//! after its purge (a lease held meanwhile) is written over the purged
//! state (`complete.rs`), as sled records it.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;

use super::deliveries::{id_at_end, prefix, Mark, FIRST, WAITING};
use super::index::{storage, Family, Index};
use super::subjects::token;
use super::JetStreamSpool;
use crate::delivery::Delivery;
use crate::spool::{NotificationId, NotificationMeta, Routes, SpoolError};

/// The orphans by subscription as last counted, for `health`.
#[derive(Debug, Default)]
pub(super) struct Orphans(Mutex<BTreeMap<String, u64>>);

impl Orphans {
    pub(super) fn now(&self) -> BTreeMap<String, u64> {
        self.lock().clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, u64>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The name a subscription's subject token was made from
/// ([`token`]); `None` for a token no name makes.
fn name_of(sub: &str) -> Option<String> {
    let Some(hex) = sub.strip_prefix('~') else {
        return Some(sub.to_owned());
    };
    let bytes = (0..hex.len())
        .step_by(2)
        .map(|at| u8::from_str_radix(hex.get(at..at + 2)?, 16).ok())
        .collect::<Option<Vec<u8>>>()?;
    String::from_utf8(bytes).ok()
}

impl JetStreamSpool {
    /// Counts the orphans against the routes now, for `health`.
    pub(super) fn count_orphans(&self) -> Result<(), SpoolError> {
        let counted = self.index.orphans(&self.routes.load())?;
        *self.orphans.lock() = counted;
        Ok(())
    }

    /// The deliveries waiting for a subscription `routes` does not have,
    /// by subscription, as the index holds them now.
    pub(crate) fn orphans_against(
        &self,
        routes: &Routes,
    ) -> Result<BTreeMap<String, u64>, SpoolError> {
        self.index.orphans(routes)
    }

    /// Gives every delivery waiting for `from` (not configured) to the
    /// configured `to`, due now, or purges them when `to` is `None`;
    /// `from`'s are kept, purged, with their history. How many.
    pub(crate) async fn reassign_orphans(
        &self,
        from: &str,
        to: Option<&str>,
        now_ms: i64,
    ) -> Result<u64, SpoolError> {
        self.open_for_writes()?;
        let routes = self.routes.load();
        routes.check_reassign(from, to)?;
        // What any relay wrote before the call is in the walk.
        self.sync().await?;
        let mut done = 0;
        let mut top = 0;
        for id in self.index.waiting_for(from)? {
            let Some(entry) = self.index.get(Family::Notifications, id)? else {
                continue; // removed meanwhile
            };
            // An unreadable one stays where it is, as on sled.
            let Ok(meta) = serde_json::from_slice::<NotificationMeta>(&entry.meta) else {
                continue;
            };
            if let Some(to) = to {
                let has_one = meta.subscriptions.iter().any(|s| s == to);
                if !has_one {
                    let given = self
                        .rewrite_readable(to, id, |current| {
                            Ok(current
                                .delivery
                                .is_none()
                                .then(|| (Delivery::new(to, now_ms), Mark::Due)))
                        })
                        .await?;
                    top = top.max(given.unwrap_or(0));
                }
            }
            let purged = self
                .rewrite_readable(from, id, |current| {
                    let mut delivery = current
                        .delivery
                        .clone()
                        .unwrap_or_else(|| Delivery::new(from, meta.received_ms));
                    // Final already (an outcome came first): left as it is.
                    Ok(delivery
                        .purge(now_ms)
                        .is_ok()
                        .then_some((delivery, Mark::Final)))
                })
                .await?;
            top = top.max(purged.unwrap_or(0));
            done += 1;
        }
        if top > 0 {
            self.caught_up(top).await?;
        }
        self.orphans.lock().remove(from);
        Ok(done)
    }
}

impl Index {
    /// Deliveries waiting for subscriptions `routes` does not have.
    fn orphans(&self, routes: &Routes) -> Result<BTreeMap<String, u64>, SpoolError> {
        let db = self.db()?;
        let mut subs: BTreeSet<String> = self.subscriptions_with(WAITING)?.into_iter().collect();
        subs.extend(self.subscriptions_with(FIRST)?);
        let mut out = BTreeMap::new();
        for sub in subs {
            let Some(name) = name_of(&sub) else { continue };
            if routes.contains(&name) {
                continue;
            }
            let mut waiting = 0u64;
            for tag in [WAITING, FIRST] {
                for item in db.scan_prefix(prefix(tag, &sub)) {
                    item.map_err(storage)?;
                    waiting += 1;
                }
            }
            if waiting > 0 {
                out.insert(name, waiting);
            }
        }
        Ok(out)
    }

    /// The ids of the deliveries waiting for `subscription`: its states in
    /// the due set and the first attempts it has to make, in id order.
    fn waiting_for(&self, subscription: &str) -> Result<BTreeSet<NotificationId>, SpoolError> {
        let db = self.db()?;
        let sub = token(subscription);
        let mut ids = BTreeSet::new();
        for tag in [WAITING, FIRST] {
            for item in db.scan_prefix(prefix(tag, &sub)) {
                let (key, _) = item.map_err(storage)?;
                ids.extend(id_at_end(&key));
            }
        }
        Ok(ids)
    }
}

#[cfg(test)]
mod tests {
    use super::{name_of, token};

    #[test]
    fn a_subscription_s_name_is_read_back_from_its_token() {
        for name in ["erp", "a.b", "~612e62", "crm-2_x", "ñandú"] {
            assert_eq!(name_of(&token(name)).as_deref(), Some(name));
        }
        assert_eq!(name_of("~6"), None);
        assert_eq!(name_of("~zz"), None);
    }
}
