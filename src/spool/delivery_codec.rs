//! How a delivery's state is kept as bytes (versioned JSON), the same on
//! every backend: sled stores it under the delivery's key, JetStream as the
//! payload of the delivery's subject, so a migration copies it as it is.

use crate::delivery::Delivery;
use crate::spool::SpoolError;

const DELIVERY_V1: u8 = 1;

pub(in crate::spool) fn encode_delivery(delivery: &Delivery) -> Result<Vec<u8>, SpoolError> {
    let mut out = vec![DELIVERY_V1];
    serde_json::to_writer(&mut out, delivery)
        .map_err(|e| SpoolError::Encode(crate::spool::cause(e)))?;
    Ok(out)
}

pub(in crate::spool) fn decode_delivery(bytes: &[u8]) -> Result<Delivery, SpoolError> {
    match bytes.split_first() {
        Some((&DELIVERY_V1, json)) => {
            serde_json::from_slice(json).map_err(|e| SpoolError::Corrupt(e.to_string()))
        }
        Some((other, _)) => Err(SpoolError::Corrupt(format!(
            "unknown delivery version {other}"
        ))),
        None => Err(SpoolError::Corrupt("empty delivery record".into())),
    }
}
