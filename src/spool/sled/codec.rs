//! A delivery's record as sled keeps it (the bytes are
//! `spool::delivery_codec`'s, shared by the backends), and every decoder of
//! what the spool reads back, run together for the fuzz targets.

use super::{keys, Store};
use crate::delivery::Delivery;
pub(super) use crate::spool::delivery_codec::{decode_delivery, encode_delivery};
use crate::spool::{NotificationId, SpoolError};

/// A delivery's record, or the pending delivery its absence means; and
/// whether the record exists.
pub(super) fn delivery_of(
    store: &Store,
    id: NotificationId,
    subscription: &str,
    received_ms: i64,
) -> Result<(Delivery, bool), SpoolError> {
    match store.get(&keys::delivery(id, subscription))? {
        Some(bytes) => decode_delivery(&bytes).map(|d| (d, true)),
        None => Ok((Delivery::new(subscription, received_ms), false)),
    }
}

/// Runs every decoder of what the spool reads back (records, deliveries,
/// index keys and values) on `bytes`; for the fuzz targets. Returns how
/// many accepted them; none may panic.
pub fn decode_any(bytes: &[u8]) -> usize {
    let mut accepted = 0;
    accepted += usize::from(crate::spool::NotificationRecord::decode(bytes).is_ok());
    accepted += usize::from(crate::spool::QuarantineRecord::decode(bytes).is_ok());
    if let Ok(delivery) = decode_delivery(bytes) {
        // What decodes must encode again to the same delivery.
        let again = encode_delivery(&delivery).and_then(|b| decode_delivery(&b));
        assert_eq!(again.ok(), Some(delivery), "a delivery does not round-trip");
        accepted += 1;
    }
    accepted += usize::from(keys::id_of(bytes).is_some());
    accepted += usize::from(keys::split_dedup_value(bytes).is_some());
    accepted += usize::from(keys::split_dedup_expiry(bytes).is_some());
    accepted += usize::from(keys::split_retry(bytes).is_some());
    accepted += usize::from(crate::spool::subscriptions::decode(bytes).is_ok());
    accepted += usize::from(crate::spool::reconcile::decode_check(bytes).is_ok());
    accepted += usize::from(super::checks::split_key(bytes).is_some());
    accepted
}
