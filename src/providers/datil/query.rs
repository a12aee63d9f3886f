//! Dátil's "Consulta de una factura": `GET /invoices/<id>` with the key in
//! `X-Key`. The answer is the whole invoice, as the webhook sends it, with
//! its `estado` (else the `autorizacion` / `envio_sri` one, as the webhook
//! check reads them). Errors are `{message, code, ...}` with a 4xx/5xx:
//! 404 is an unknown id, 401/403 a refused key.

use super::super::query::{
    final_answer, message_of, parse_answer, said, Answer, AnswerError, QueryBuildError, QueryKeys,
    QueryRequest,
};
use super::super::{field, non_empty, parse_json, parse_object, safe_name, text, text_or_int};
use super::{status_of, sub_object};
use crate::providers::InvoiceStatus;
use http::header::ACCEPT;
use http::{HeaderName, HeaderValue, Method};
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use serde_json::{Map, Value};

/// Everything but letters, digits, `-` and `_` is escaped in the id, so it
/// stays one path segment.
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'_');

/// The key from a webhook body: the receipt's `id` (the API looks up by
/// nothing else).
pub(crate) fn keys(webhook_body: &[u8]) -> Option<QueryKeys> {
    let obj = parse_object(webhook_body, &mut Vec::new()).ok()?;
    let id = non_empty(text_or_int(field(&obj, "id")?, "id").ok()?, "id").ok()?;
    Some(QueryKeys::Datil { id })
}

pub(crate) fn build(id: &str, api_key: &str) -> Result<QueryRequest, QueryBuildError> {
    if id.is_empty() || id.chars().all(|c| c == '.') {
        // `%2E%2E` is still a dot segment to a URL parser.
        return Err(QueryBuildError::BadKeys(format!("Dátil id {id:?}")));
    }
    let mut key =
        HeaderValue::from_str(api_key).map_err(|_| QueryBuildError::BadCredential("api_key"))?;
    key.set_sensitive(true);
    Ok(QueryRequest {
        method: Method::GET,
        path: format!("/invoices/{}", utf8_percent_encode(id, SEGMENT)),
        headers: vec![
            (HeaderName::from_static("x-key"), key),
            (ACCEPT, HeaderValue::from_static("application/json")),
        ],
        body: bytes::Bytes::new(),
    })
}

pub(crate) fn read(
    id: &str,
    subject: &str,
    http_status: u16,
    body: &[u8],
) -> Result<Answer, AnswerError> {
    match http_status {
        200..=299 => {}
        404 => return Err(AnswerError::NotFound(error_message(http_status, body))),
        401 | 403 => return Err(AnswerError::Unauthorized(error_message(http_status, body))),
        status => {
            return Err(AnswerError::Provider {
                status,
                message: error_message(status, body),
            })
        }
    }
    let mut flags = Vec::new();
    let invoice = parse_answer(http_status, body, &mut flags)?;
    if let Some(theirs) = field(&invoice, "id")
        .map(|v| text_or_int(v, "id"))
        .transpose()?
    {
        if theirs != id {
            return Err(AnswerError::Unreadable(said(&format!(
                "the answer is about invoice {theirs}, not {id}"
            ))));
        }
    }
    let raw = estado(&invoice)?;
    let state = match safe_name(&raw).as_deref() {
        Some("devuelta") => "devuelto".to_owned(),
        Some(other) => other.to_owned(),
        None => return Err(AnswerError::Unreadable(said(&format!("estado {raw:?}")))),
    };
    let status = match state.as_str() {
        "anulado" => InvoiceStatus::Deleted,
        // Listed by the doc beside NO AUTORIZADO as the authorisation's
        // outcome; a later AUTORIZADO webhook may still follow it.
        "error" => InvoiceStatus::Rejected,
        other => status_of(other),
    };
    if !status.is_final() {
        // ENVIADO, RECIBIDO, PRE-AUTORIZADO, and states the doc does not show.
        return Ok(Answer::Pending {
            said: said(&format!("estado {raw}")),
        });
    }
    Ok(final_answer(
        format!("comprobante.{state}"),
        subject,
        status,
        flags,
    ))
}

/// The invoice's `estado`, else its `autorizacion.estado`, else its
/// `envio_sri.estado`.
fn estado(invoice: &Map<String, Value>) -> Result<String, AnswerError> {
    if let Some(v) = field(invoice, "estado") {
        return Ok(text(v, "estado")?);
    }
    for name in ["autorizacion", "envio_sri"] {
        if let Some(v) = sub_object(invoice, name)?.and_then(|o| field(o, "estado")) {
            return Ok(text(v, &format!("{name}.estado"))?);
        }
    }
    Err(AnswerError::Unreadable("no `estado` in the answer".into()))
}

/// `{message, code, ...}` as a short text, or the status alone.
fn error_message(http_status: u16, body: &[u8]) -> String {
    let obj = match parse_json(body, &mut Vec::new()) {
        Ok(Value::Object(obj)) => obj,
        _ => return format!("HTTP {http_status}"),
    };
    let message = field(&obj, "message").map(message_of);
    let code = field(&obj, "code").map(message_of);
    match (code, message) {
        (Some(code), Some(message)) => format!("HTTP {http_status}, code {code}: {message}"),
        (None, Some(message)) => format!("HTTP {http_status}: {message}"),
        (Some(code), None) => format!("HTTP {http_status}, code {code}"),
        (None, None) => format!("HTTP {http_status}"),
    }
}

#[cfg(test)]
mod tests;
