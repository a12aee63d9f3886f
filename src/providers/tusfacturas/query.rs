//! TusFacturas' "consulta avanzada por external_reference": a POST to
//! `/facturacion/consulta_avanzada` with the credentials in the body and
//! `busqueda_tipo: "EXT_REF"`. Its answer lists comprobantes; the one whose
//! `external_reference` is the invoice's tells its `status`. `error: "S"`
//! is an error whatever the HTTP status (the official SDK looks at nothing
//! else); not found is, inferred, `total: 0` with an empty list.

use super::super::query::{
    by_status, final_answer, message_of, parse_answer, said, Answer, AnswerError, QueryKeys,
    QueryRequest,
};
use super::super::{field, non_empty, parse_object, required, text, text_or_int, InvoiceStatus};
use http::header::{ACCEPT, CONTENT_TYPE};
use http::{HeaderValue, Method};
use serde_json::{json, Map, Value};

/// The path joined to the configured base url.
pub(crate) const PATH: &str = "/facturacion/consulta_avanzada";

/// The key from a webhook body: its `external_reference` (not empty).
pub(crate) fn keys(webhook_body: &[u8]) -> Option<QueryKeys> {
    const F: &str = "external_reference";
    let obj = parse_object(webhook_body, &mut Vec::new()).ok()?;
    let external_reference = non_empty(text_or_int(field(&obj, F)?, F).ok()?, F).ok()?;
    Some(QueryKeys::TusFacturas { external_reference })
}

pub(crate) fn build(
    external_reference: &str,
    apikey: &str,
    apitoken: &str,
    usertoken: &str,
) -> QueryRequest {
    let body = json!({
        "apikey": apikey,
        "apitoken": apitoken,
        "usertoken": usertoken,
        "busqueda_tipo": "EXT_REF",
        "pagina": 0,
        "limite": 100,
        "comprobante": {"external_reference": external_reference, "operacion": "V"},
    });
    let json = HeaderValue::from_static("application/json");
    QueryRequest {
        method: Method::POST,
        path: PATH.to_owned(),
        headers: vec![(CONTENT_TYPE, json.clone()), (ACCEPT, json)],
        body: body.to_string().into_bytes().into(),
    }
}

pub(crate) fn read(
    external_reference: &str,
    subject: &str,
    http_status: u16,
    body: &[u8],
) -> Result<Answer, AnswerError> {
    let mut flags = Vec::new();
    let obj = parse_answer(http_status, body, &mut flags)?;
    if is_error(&obj)? {
        return Err(error(http_status, &obj));
    }
    if !(200..=299).contains(&http_status) {
        return Err(by_status(http_status, "no `error` in the answer"));
    }
    let listed = match field(&obj, "comprobantes") {
        None => &[][..],
        Some(Value::Array(items)) => items.as_slice(),
        Some(_) => {
            return Err(AnswerError::Unreadable(
                "`comprobantes` is not a list".into(),
            ))
        }
    };
    let mut matching = Vec::new();
    for (at, item) in listed.iter().enumerate() {
        let comprobante = comprobante_of(item, at)?;
        const F: &str = "external_reference";
        let theirs = field(comprobante, F)
            .map(|v| text_or_int(v, F))
            .transpose()?;
        if theirs.as_deref() == Some(external_reference) {
            let path = format!("comprobantes[{at}].comprobante.status");
            matching.push(text(required(comprobante, "status", &path)?, &path)?);
        }
    }
    // An invoice issued after an error may be listed twice: the issued one wins.
    let status = match matching.iter().find(|s| is_emitido(s)) {
        Some(emitido) => emitido,
        None => matching.first().ok_or_else(|| {
            AnswerError::NotFound(said(&format!(
                "{} comprobantes listed, none with external_reference {external_reference}",
                listed.len()
            )))
        })?,
    };
    let upper = status.to_uppercase();
    let (event_type, invoice_status) = if is_emitido(status) {
        ("facturacion.emitido", InvoiceStatus::Accepted)
    } else if upper.starts_with("ENVIADO A PROCESAR") && upper.contains("ERROR") {
        ("facturacion.error", InvoiceStatus::Rejected)
    } else {
        // "APROBADO Y EN COLA…", "EN COLA, ESPERANDO APROBACION", and any
        // state the doc does not show: not known to be decided.
        return Ok(Answer::Pending { said: said(status) });
    };
    Ok(final_answer(
        event_type.into(),
        subject,
        invoice_status,
        flags,
    ))
}

fn is_emitido(status: &str) -> bool {
    status.eq_ignore_ascii_case("EMITIDO")
}

/// `comprobantes[at].comprobante`.
fn comprobante_of(item: &Value, at: usize) -> Result<&Map<String, Value>, AnswerError> {
    match item {
        Value::Object(entry) => match field(entry, "comprobante") {
            Some(Value::Object(c)) => Ok(c),
            _ => Err(AnswerError::Unreadable(format!(
                "comprobantes[{at}].comprobante is not an object"
            ))),
        },
        _ => Err(AnswerError::Unreadable(format!(
            "comprobantes[{at}] is not an object"
        ))),
    }
}

/// `error`: "S" or "N" (booleans taken too).
fn is_error(obj: &Map<String, Value>) -> Result<bool, AnswerError> {
    match field(obj, "error") {
        None => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(Value::String(s)) => match s.trim().to_ascii_uppercase().as_str() {
            "S" | "SI" | "TRUE" | "1" => Ok(true),
            "N" | "NO" | "FALSE" | "0" | "" => Ok(false),
            _ => Err(AnswerError::Unreadable(said(&format!(
                "`error` is {s:?}, not S or N"
            )))),
        },
        Some(other) => Err(AnswerError::Unreadable(format!(
            "`error` is {other}, not S or N"
        ))),
    }
}

/// An answer with `error: "S"`: refused credentials when the status says
/// so or the message names them (the doc gives no code for it), else the
/// provider's failure.
fn error(http_status: u16, obj: &Map<String, Value>) -> AnswerError {
    let message = field(obj, "errores")
        .map(message_of)
        .filter(|m| !m.is_empty())
        .unwrap_or_else(|| "error S without errores".to_owned());
    let lower = message.to_lowercase();
    let names_credentials = ["apikey", "apitoken", "usertoken", "token", "credencial"]
        .iter()
        .any(|word| lower.contains(word));
    if matches!(http_status, 401 | 403) || names_credentials {
        AnswerError::Unauthorized(message)
    } else {
        AnswerError::Provider {
            status: http_status,
            message,
        }
    }
}

#[cfg(test)]
mod tests;
