//! NubeFact's "Operación 2: Consultar Comprobante": a POST to the account's
//! RUTA with `{"operacion": "consultar_comprobante", tipo_de_comprobante,
//! serie, numero}` (numbers as JSON numbers) and the token in
//! `Authorization` (`Token token="…"` or bare). The answer is the receipt
//! a webhook carries plus `anulado`; errors are `{"errors", "codigo"}`
//! with any HTTP status (the manual does not pair them), so the body is
//! read whatever the status.

use super::super::query::{
    by_status, final_answer, message_of, parse_answer, said, Answer, AnswerError, NubefactHeader,
    QueryBuildError, QueryKeys, QueryRequest,
};
use super::super::{boolish, field, parse_object, required, text, unsigned, InvoiceStatus};
use super::{numero, response_code, serie, tipo};
use http::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE};
use http::{HeaderValue, Method};
use serde_json::{json, Map, Value};

/// The keys from a webhook body: `tipo_de_comprobante`, `serie`, `numero`.
pub(crate) fn keys(webhook_body: &[u8]) -> Option<QueryKeys> {
    let obj = parse_object(webhook_body, &mut Vec::new()).ok()?;
    Some(QueryKeys::NubeFact {
        tipo: tipo(&obj).ok()?,
        serie: serie(&obj).ok()?,
        numero: numero(&obj).ok()?,
    })
}

pub(crate) fn build(
    tipo: u64,
    serie: &str,
    numero: u64,
    token: &str,
    header: NubefactHeader,
) -> Result<QueryRequest, QueryBuildError> {
    let value = match header {
        // A quote would end the quoted form early.
        NubefactHeader::TokenQuoted if token.contains(['"', '\\']) => None,
        NubefactHeader::TokenQuoted => Some(format!("Token token=\"{token}\"")),
        NubefactHeader::Bare => Some(token.to_owned()),
    };
    let mut authorization = value
        .and_then(|v| HeaderValue::from_str(&v).ok())
        .ok_or(QueryBuildError::BadCredential("token"))?;
    authorization.set_sensitive(true);
    let json = HeaderValue::from_static("application/json");
    let body = json!({
        "operacion": "consultar_comprobante",
        "tipo_de_comprobante": tipo,
        "serie": serie,
        "numero": numero,
    });
    Ok(QueryRequest {
        method: Method::POST,
        path: String::new(),
        headers: vec![
            (AUTHORIZATION, authorization),
            (CONTENT_TYPE, json.clone()),
            (ACCEPT, json),
        ],
        body: body.to_string().into_bytes().into(),
    })
}

pub(crate) fn read(
    tipo: u64,
    serie: &str,
    numero: u64,
    subject: &str,
    http_status: u16,
    body: &[u8],
) -> Result<Answer, AnswerError> {
    let mut flags = Vec::new();
    let obj = parse_answer(http_status, body, &mut flags)?;
    if let Some(errors) = field(&obj, "errors") {
        return Err(error(http_status, errors, field(&obj, "codigo")));
    }
    if !(200..=299).contains(&http_status) {
        return Err(by_status(http_status, "no `errors` in the answer"));
    }
    same_receipt(&obj, tipo, serie, numero)?;
    const ANULADO: &str = "anulado";
    if let Some(true) = field(&obj, ANULADO)
        .map(|v| boolish(v, ANULADO))
        .transpose()?
    {
        let status = InvoiceStatus::Deleted;
        return Ok(final_answer(
            "comprobante.anulado".into(),
            subject,
            status,
            flags,
        ));
    }
    const F: &str = "aceptada_por_sunat";
    let accepted = boolish(required(&obj, F, F)?, F)?;
    let code = response_code(&obj)?;
    let (suffix, status) = match (accepted, code.as_deref()) {
        (true, _) => ("aceptado", InvoiceStatus::Accepted),
        (false, Some(c)) if c != "0" => ("rechazado", InvoiceStatus::Rejected),
        (false, code) => return Ok(pending(&obj, code)),
    };
    Ok(final_answer(
        format!("comprobante.{suffix}"),
        subject,
        status,
        flags,
    ))
}

/// What the provider said of a receipt not yet decided.
fn pending(obj: &Map<String, Value>, code: Option<&str>) -> Answer {
    let mut said_text = match code {
        Some(code) => format!("aceptada_por_sunat false, sunat_responsecode {code}"),
        None => "aceptada_por_sunat false, no response code".to_owned(),
    };
    if let Some(description) = field(obj, "sunat_description") {
        said_text.push_str(&format!(": {}", message_of(description)));
    }
    Answer::Pending {
        said: said(&said_text),
    }
}

/// The answer's receipt, where it names one, must be the one asked about.
fn same_receipt(
    obj: &Map<String, Value>,
    tipo: u64,
    serie: &str,
    numero: u64,
) -> Result<(), AnswerError> {
    let number = |name: &str| field(obj, name).map(|v| unsigned(v, name)).transpose();
    let their_tipo = number("tipo_de_comprobante")?.unwrap_or(tipo);
    let their_numero = number("numero")?.unwrap_or(numero);
    let their_serie = match field(obj, "serie") {
        Some(v) => text(v, "serie")?,
        None => serie.to_owned(),
    };
    if (their_tipo, their_serie.as_str(), their_numero) != (tipo, serie, numero) {
        return Err(AnswerError::Unreadable(said(&format!(
            "the answer is about tipo {their_tipo} {their_serie}-{their_numero}, not tipo {tipo} {serie}-{numero}"
        ))));
    }
    Ok(())
}

/// `{"errors": "...", "codigo": N}`: 10/11 are the token or the RUTA, 24
/// an unknown receipt, the rest the provider's failure. Without a code the
/// HTTP status decides.
fn error(http_status: u16, errors: &Value, codigo: Option<&Value>) -> AnswerError {
    let message = message_of(errors);
    let codigo = codigo.and_then(|v| unsigned(v, "codigo").ok());
    let message = match codigo {
        Some(n) => format!("codigo {n}: {message}"),
        None => message,
    };
    match codigo {
        Some(10 | 11) => AnswerError::Unauthorized(message),
        Some(24) => AnswerError::NotFound(message),
        Some(_) => AnswerError::Provider {
            status: http_status,
            message,
        },
        None => match by_status(http_status, &message) {
            AnswerError::Unreadable(message) => AnswerError::Provider {
                status: http_status,
                message,
            },
            other => other,
        },
    }
}

#[cfg(test)]
mod tests;
