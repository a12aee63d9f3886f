//! The offline check of a whole spool: every entry read (parts sled cannot
//! read reported, not a panic), the loss check against the acknowledged
//! mark, orphans, and the counts compared with a recount.

use std::panic::AssertUnwindSafe;

use super::super::counts::{self, Kept};
use super::super::mark::{self, Acknowledged};
use super::super::quiet_panic::catch_quietly;
use super::super::{decode_delivery, keys, newest_notification, storage, Store};
use super::read_api_subscriptions;
use super::repair::{open_store_or_damage, panic_text, Refused};
use super::walk::{describe, gap_text, Step, Walk};
use crate::config::SpoolConfig;
use crate::spool::{
    audit, CheckProblem, CheckReport, NotificationId, NotificationRecord, Routes, SpoolError,
};

/// Verifies a stopped spool, every entry; see [`crate::spool::Spool::check`].
/// A spool sled cannot open for damage is a report with that problem, not
/// an error; its problems are [`CheckProblem`]s.
pub fn check(config: &SpoolConfig, accept_loss: bool) -> Result<CheckReport, SpoolError> {
    let (store, repaired) = match open_store_or_damage(config) {
        Ok(opened) => opened,
        Err(Refused::Damaged(detail)) => {
            return Ok(CheckReport {
                problems: vec![CheckProblem::Unreadable(format!(
                    "sled cannot open it: {detail}"
                ))],
                ..CheckReport::default()
            })
        }
        Err(Refused::Other(err)) => return Err(err),
    };
    let mut report = CheckReport {
        repaired,
        ..CheckReport::default()
    };
    let looked = newest_notification(&store.tree).and_then(|newest| {
        let acknowledged = Acknowledged::read(&config.sled.path, newest);
        let missing = acknowledged.missing(&store.tree)?;
        Ok((acknowledged, newest, missing))
    });
    match looked {
        Ok((_, _, None)) => {}
        Ok((mut acknowledged, newest, Some(missing))) if accept_loss => {
            acknowledged.newest = newest;
            acknowledged.written = None;
            if newest.is_some() {
                acknowledged.persist(&config.sled.path);
            } else {
                mark::forget(&config.sled.path);
            }
            report.repaired.push(format!("loss accepted: {missing}"));
        }
        Ok((_, _, Some(missing))) => report
            .problems
            .push(CheckProblem::Lost(missing.to_string())),
        Err(err) => report.problems.push(CheckProblem::Unreadable(format!(
            "cannot tell whether acknowledged notifications are missing: {err}"
        ))),
    }
    let walked = catch_quietly(AssertUnwindSafe(|| walk_all(&store, &mut report)));
    if let Err(panic) = walked {
        report.problems.push(CheckProblem::Unreadable(format!(
            "sled panicked reading the spool: {}",
            panic_text(&panic)
        )));
    }
    report.orphans = catch_quietly(AssertUnwindSafe(|| {
        // The API's subscriptions are no orphans, though no config names them.
        let api = read_api_subscriptions(&store)?;
        super::super::orphans::count(&store.tree, &Routes::default().with_names(api.keys()))
    }))
    .ok()
    .and_then(Result::ok)
    .unwrap_or_default();
    check_counts(&store, &mut report);
    store.db.flush().map_err(storage)?;
    Ok(report)
}

/// Counts again and compares with the kept counts. Where they differ (or
/// none are kept), the recount is written in their place, but only when
/// everything else read clean: a recount that skipped damaged records is
/// not the truth either, and is then only reported.
fn check_counts(store: &Store, report: &mut CheckReport) {
    if report
        .problems
        .iter()
        .any(|p| matches!(p, CheckProblem::Unreadable(_)))
    {
        // The walk met parts sled cannot read; a recount would meet them
        // again and could only be wrong. Show what was kept, if readable.
        let kept = catch_quietly(AssertUnwindSafe(|| counts::load(&store.tree)));
        if let Ok(Ok(Kept::Found(kept))) = kept {
            report.kept_counts = Some(kept);
        }
        return;
    }
    let guarded = catch_quietly(AssertUnwindSafe(|| {
        Ok::<_, SpoolError>((counts::load(&store.tree)?, counts::recount(&store.tree)?))
    }));
    let (kept, recount) = match guarded {
        Ok(Ok(found)) => found,
        Ok(Err(err)) => {
            report.problems.push(CheckProblem::Unreadable(format!(
                "cannot count the deliveries again: {err}"
            )));
            return;
        }
        Err(panic) => {
            report.problems.push(CheckProblem::Unreadable(format!(
                "sled panicked counting the deliveries again: {}",
                panic_text(&panic)
            )));
            return;
        }
    };
    let clean = report.problems.is_empty() && recount.unreadable == 0;
    let counted = recount.counts;
    let disagreement = match &kept {
        Kept::Found(kept) if *kept == counted => None,
        Kept::Found(kept) => Some(format!(
            "the kept delivery counts disagree with a recount: {}",
            kept.differences(&counted, ["kept", "counted"]).join("; ")
        )),
        Kept::Missing => Some(
            "no delivery counts were kept yet (a spool from a relay before they were)".to_owned(),
        ),
        Kept::WithoutSources => Some(
            "no per-source counts were kept yet (a spool from a relay before they were)".to_owned(),
        ),
        Kept::Damaged(why) => Some(format!("the kept delivery counts are damaged: {why}")),
    };
    if let Kept::Found(kept) = kept {
        report.kept_counts = Some(kept);
    }
    if let Some(disagreement) = disagreement {
        let rewritten = clean
            && catch_quietly(AssertUnwindSafe(|| {
                counts::write_all(&store.tree, &counted)
            }))
            .is_ok_and(|written| written.is_ok());
        if rewritten {
            report
                .repaired
                .push(format!("{disagreement}; the recount is kept now"));
            report.kept_counts = Some(counted.clone());
        } else {
            report.problems.push(CheckProblem::Record(format!(
                "{disagreement} (not rewritten while the spool has other problems)"
            )));
        }
    }
    report.counts = Some(counted);
}

/// Whether the notification is surely not there (a read that fails is
/// reported by the walk that meets the same damage).
fn surely_missing(store: &Store, id: NotificationId) -> bool {
    catch_quietly(AssertUnwindSafe(|| store.get(&keys::notification(id))))
        .is_ok_and(|got| matches!(got, Ok(None)))
}

fn walk_all(store: &Store, report: &mut CheckReport) {
    for step in Walk::whole(store.tree.clone()) {
        let (key, value) = match step {
            Step::Entry(key, value) => (key, value),
            // Keys of no kind: a page there also holds keys of a kind
            // beside them (pages split at keys that exist), whose walk
            // reports the same damage.
            Step::Gap { kind: None, .. } => continue,
            Step::Gap {
                kind,
                after,
                resume,
                error,
            } => {
                report.problems.push(CheckProblem::Unreadable(gap_text(
                    kind,
                    after.as_ref(),
                    resume.as_ref(),
                    &error,
                )));
                continue;
            }
        };
        match key.first().copied() {
            Some(keys::NOTIFICATION) => {
                report.notifications += 1;
                if let Err(err) = NotificationRecord::decode(&value) {
                    report
                        .problems
                        .push(CheckProblem::Record(format!("{}: {err}", describe(&key))));
                }
            }
            Some(keys::QUARANTINE) => {
                report.quarantined += 1;
                if let Err(err) = crate::spool::QuarantineRecord::decode(&value) {
                    report
                        .problems
                        .push(CheckProblem::Record(format!("{}: {err}", describe(&key))));
                }
            }
            Some(keys::DELIVERY) => {
                report.deliveries += 1;
                match (keys::id_of(&key), decode_delivery(&value)) {
                    (Some(id), Ok(_)) if surely_missing(store, id) => {
                        report.problems.push(CheckProblem::Record(format!(
                            "delivery record of missing notification {id}"
                        )))
                    }
                    (_, Err(err)) => report
                        .problems
                        .push(CheckProblem::Record(format!("{}: {err}", describe(&key)))),
                    _ => {}
                }
            }
            Some(keys::RETRY) => {
                report.retries += 1;
                match keys::split_retry(&key) {
                    Some((name, _, id)) if surely_missing(store, id) => {
                        report.problems.push(CheckProblem::Record(format!(
                            "retry of missing notification {id} for {name}"
                        )))
                    }
                    Some(_) => {}
                    None => report.problems.push(CheckProblem::Record(format!(
                        "malformed retry entry {key:?}"
                    ))),
                }
            }
            Some(keys::DEDUP) => {
                report.dedup_entries += 1;
                if keys::split_dedup_value(&value).is_none() {
                    report.problems.push(CheckProblem::Record(format!(
                        "malformed dedup entry {key:?}"
                    )));
                }
            }
            Some(keys::DEDUP_EXPIRY) if keys::split_dedup_expiry(&key).is_none() => {
                report.problems.push(CheckProblem::Record(format!(
                    "malformed dedup expiry {key:?}"
                )));
            }
            Some(keys::AUDIT) => {
                report.audit_records += 1;
                let decoded = keys::audit_id_of(&key)
                    .ok_or_else(|| SpoolError::Corrupt(format!("malformed audit key {key:?}")))
                    .and_then(|id| audit::decode_record(id, &value));
                if let Err(err) = decoded {
                    report.problems.push(CheckProblem::Record(err.to_string()));
                }
            }
            Some(keys::CURSOR) if NotificationId::from_bytes(&value).is_none() => {
                report
                    .problems
                    .push(CheckProblem::Record(format!("malformed cursor {key:?}")));
            }
            Some(keys::DEDUP_EXPIRY | keys::CURSOR | keys::MARK) => {}
            Some(super::super::invoices::ENTRY) => {
                if let Some(problem) = super::super::invoices::check_entry(&key, &value) {
                    report.problems.push(CheckProblem::Record(problem));
                }
            }
            Some(super::super::invoices::WAITING) => {
                if let Some(problem) = super::super::invoices::check_waiting(&key, &value) {
                    report.problems.push(CheckProblem::Record(problem));
                }
            }
            Some(keys::CHECK) => {
                if let Some(problem) = super::super::checks::check_entry(&key, &value) {
                    report.problems.push(CheckProblem::Record(problem));
                }
            }
            _ => report
                .problems
                .push(CheckProblem::Record(format!("unknown entry {key:?}"))),
        }
    }
}
