//! Local simulators of the three providers' query APIs (issue 20), written
//! from `shared/providers/query-apis.md`, for the reconcile tests: one hyper
//! server on 127.0.0.1 (plain HTTP, or HTTPS under a CA of its own) that
//! plays NubeFact, TusFacturas or Dátil.
//!
//! What is documented and what is inferred (a test can vary the inferred):
//! - **NubeFact** "Operación 2: Consultar Comprobante", `POST <RUTA>`.
//!   Documented: the accepted answer (the webhook's fields plus `enlace*`,
//!   `aceptada_por_sunat`, `sunat_*`, `anulado`, `cadena_para_codigo_qr`,
//!   `codigo_hash`), `anulado: true` for a void, the error body
//!   `{"errors", "codigo"}` and its codes, both header forms as real clients
//!   send them. Inferred: the pending and rejected answers, and which HTTP
//!   status goes with which `codigo` ([`Shapes::nubefact_error_status`]).
//! - **TusFacturas** `POST <base>/facturacion/consulta_avanzada`, EXT_REF.
//!   Documented: the found answer `{rta, error: "N", errores, total,
//!   comprobantes: [{cliente, comprobante}]}`, the statuses EMITIDO, EN COLA,
//!   CON ERROR, and the error body `{"error": "S", "errores", ...}`.
//!   Inferred: not found as `total: 0` ([`TusNotFound`]), the HTTP status of
//!   an auth error, the status word of a deleted invoice ("ELIMINADO").
//! - **Dátil** `GET <base>/invoices/<id>` (and `/edocs/<id>`), `X-Key`.
//!   Documented: the full invoice with `estado`, `envio_sri`, `autorizacion`;
//!   404 for an unknown id; errors as JSON `{message, code, ...}`.
//!   Inferred: the error bodies' wording and `code` values, a pending
//!   invoice's missing `autorizacion`, `ANULADO` for a void.
//!
//! Invoices are keyed by the subject the relay gives them: NubeFact
//! `"<serie>-<numero>"`, TusFacturas the `external_reference`, Dátil the id.
//! Every request is recorded (with the answer sent) and counted; a test
//! awaits counts through a `watch` channel, never by sleeping.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{json, Map, Value};
use tokio::sync::watch;

use crate::helpers::{init, TestCa};

/// The RUTA's account id in the NubeFact simulator's URL.
pub const NUBEFACT_RUTA: &str = "/api/v1/4f5a1d2e-7c3b-4e8a-9d6f-0b1c2d3e4f5a";
/// The TusFacturas simulator's base path (the documented base's path).
pub const TUSFACTURAS_BASE: &str = "/app/api/v2";

// === Public API ===

/// The form of NubeFact's `Authorization` header the simulator accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeaderForm {
    /// `Authorization: Token token="T"` (NubeFact's PHP sample, most clients).
    TokenQuoted,
    /// `Authorization: T` (the manual's words).
    Bare,
    /// Either of them.
    Either,
}

/// Which provider the simulator plays, with the credentials it accepts.
#[derive(Debug, Clone)]
pub enum SimProvider {
    NubeFact {
        token: String,
        form: HeaderForm,
    },
    TusFacturas {
        apikey: String,
        apitoken: String,
        usertoken: String,
    },
    Datil {
        api_key: String,
    },
}

/// Where an invoice stands at the provider.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InvoiceState {
    /// NubeFact `aceptada_por_sunat: false`, no code; TusFacturas
    /// "EN COLA, ESPERANDO APROBACION"; Dátil `RECIBIDO`.
    Pending,
    /// NubeFact accepted, code "0"; TusFacturas "EMITIDO" with a CAE;
    /// Dátil `AUTORIZADO`.
    Accepted,
    /// NubeFact not accepted, code "2017"; TusFacturas "ENVIADO A PROCESAR -
    /// CON ERROR"; Dátil `NO AUTORIZADO` with the doc's message.
    Rejected,
    /// NubeFact `anulado: true`; TusFacturas "ELIMINADO" (inferred);
    /// Dátil `ANULADO` (inferred).
    Voided,
}

/// How TusFacturas answers a reference it does not know (inferred).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TusNotFound {
    /// `{"rta": "OK", "error": "N", "errores": [], "total": 0, "comprobantes": []}`, HTTP 200.
    TotalZero,
    /// `{"error": "S", "errores": ["..."]}` with this HTTP status.
    Error(u16),
}

/// The inferred shapes, which a test may vary.
#[derive(Debug, Clone)]
pub struct Shapes {
    /// NubeFact: the HTTP status of every `{"errors", "codigo"}` answer;
    /// `None` (default) = 401 for codigo 10/11, 400 for 12/20/24, 500 for 40.
    pub nubefact_error_status: Option<u16>,
    /// TusFacturas: the HTTP status of an auth refusal (default 401).
    pub tusfacturas_auth_status: u16,
    /// TusFacturas: how an unknown reference is answered (default `TotalZero`).
    pub tusfacturas_not_found: TusNotFound,
    /// TusFacturas: put a comprobante of another reference before the
    /// matching one (default false), so a reader must pick by reference.
    pub tusfacturas_decoy: bool,
}

impl Default for Shapes {
    fn default() -> Self {
        Shapes {
            nubefact_error_status: None,
            tusfacturas_auth_status: 401,
            tusfacturas_not_found: TusNotFound::TotalZero,
            tusfacturas_decoy: false,
        }
    }
}

/// A misbehaviour on demand, applied before auth and lookup.
#[derive(Debug, Clone, PartialEq)]
pub enum Fault {
    /// This status with a short HTML body (what a proxy in front answers).
    Status(u16),
    /// This status with this body, as `application/json`.
    StatusBody(u16, Bytes),
    /// 200 with a body that does not parse as JSON.
    Unparseable,
    /// This provider's documented error body (NubeFact `{"errors",
    /// "codigo"}`, TusFacturas `{"error": "S", ...}`, Dátil `{"message",
    /// "code"}`) with this HTTP status.
    ProviderError {
        http: u16,
        code: u32,
        message: String,
    },
    /// The normal answer, after this long (past a client's timeout).
    Delay(Duration),
    /// Close the connection without answering.
    Drop,
}

/// One request the simulator received, with what it answered.
#[derive(Debug, Clone)]
pub struct SimRequest {
    pub method: http::Method,
    /// Path and query, as sent (still percent-encoded).
    pub path: String,
    pub headers: http::HeaderMap,
    pub body: Bytes,
    /// The invoice the request asks about, when the simulator could read it.
    pub key: Option<String>,
    /// The fault applied, if any.
    pub fault: Option<Fault>,
    /// The status and body answered (`None` for [`Fault::Drop`]); after a
    /// [`Fault::Delay`], what was sent once the delay ran out.
    pub answer: Option<(u16, Bytes)>,
}

/// A provider's query API on loopback. Clones share the same server.
#[derive(Clone)]
pub struct ProviderSim {
    addr: SocketAddr,
    tls: Option<Arc<SimTls>>,
    inner: Arc<Inner>,
}

impl ProviderSim {
    /// NubeFact accepting `token` in `form`, on plain HTTP.
    pub async fn nubefact(token: &str, form: HeaderForm) -> ProviderSim {
        let provider = SimProvider::NubeFact {
            token: token.into(),
            form,
        };
        ProviderSim::start(provider, false).await
    }

    /// TusFacturas accepting these body credentials, on plain HTTP.
    pub async fn tusfacturas(apikey: &str, apitoken: &str, usertoken: &str) -> ProviderSim {
        let provider = SimProvider::TusFacturas {
            apikey: apikey.into(),
            apitoken: apitoken.into(),
            usertoken: usertoken.into(),
        };
        ProviderSim::start(provider, false).await
    }

    /// Dátil accepting `X-Key: api_key`, on plain HTTP.
    pub async fn datil(api_key: &str) -> ProviderSim {
        let provider = SimProvider::Datil {
            api_key: api_key.into(),
        };
        ProviderSim::start(provider, false).await
    }

    /// Starts on 127.0.0.1:0; with `tls`, HTTPS under a CA of its own
    /// (see [`ProviderSim::ca_file`]).
    pub async fn start(provider: SimProvider, tls: bool) -> ProviderSim {
        init();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let tls = tls.then(|| Arc::new(SimTls::new()));
        let (seen, _) = watch::channel(0);
        let inner = Arc::new(Inner {
            provider,
            shapes: Mutex::default(),
            invoices: Mutex::default(),
            faults: Mutex::default(),
            persistent_fault: Mutex::default(),
            requests: Mutex::default(),
            seen,
        });
        let acceptor = tls.as_ref().map(|t| t.acceptor.clone());
        tokio::spawn(serve(listener, acceptor, inner.clone()));
        ProviderSim { addr, tls, inner }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// What a reconcile section's `url` takes: NubeFact the RUTA itself,
    /// TusFacturas the API base, Dátil the base the `/invoices/<id>` path
    /// joins.
    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let path = match self.inner.provider {
            SimProvider::NubeFact { .. } => NUBEFACT_RUTA,
            SimProvider::TusFacturas { .. } => TUSFACTURAS_BASE,
            SimProvider::Datil { .. } => "",
        };
        format!("{scheme}://{}{path}", self.addr)
    }

    /// The CA that signed the HTTPS certificate (for `tls_ca`), if TLS.
    pub fn ca_file(&self) -> Option<&Path> {
        self.tls.as_ref().map(|t| t.ca_file.as_path())
    }

    /// The CA's PEM, if TLS.
    pub fn ca_pem(&self) -> Option<&str> {
        self.tls.as_ref().map(|t| t.ca_pem.as_str())
    }

    /// The invoice `key` now stands at `state` (until changed).
    pub fn set(&self, key: &str, state: InvoiceState) {
        self.script(key, [state]);
    }

    /// The invoice `key` answers these states in turn, one per query
    /// about it that reaches the lookup; the last one stays.
    pub fn script(&self, key: &str, states: impl IntoIterator<Item = InvoiceState>) {
        let states: VecDeque<_> = states.into_iter().collect();
        assert!(!states.is_empty(), "a script of no state");
        let mut invoices = self.inner.invoices.lock().unwrap();
        invoices.entry(key.to_owned()).or_default().states = states;
    }

    /// Merges `patch` (RFC 7396: `null` removes a key) into the invoice's
    /// own object of every later answer: NubeFact's answer, TusFacturas'
    /// `comprobante`, Dátil's invoice. The invoice must be set first.
    pub fn patch(&self, key: &str, patch: Value) {
        let mut invoices = self.inner.invoices.lock().unwrap();
        let entry = invoices.get_mut(key).expect("patch of an invoice not set");
        merge(entry.patch.get_or_insert(json!({})), &patch);
    }

    /// The provider no longer knows `key` (NubeFact codigo 24, TusFacturas
    /// not found, Dátil 404).
    pub fn forget(&self, key: &str) {
        self.inner.invoices.lock().unwrap().remove(key);
    }

    /// Changes the inferred shapes.
    pub fn shapes(&self, change: impl FnOnce(&mut Shapes)) {
        change(&mut self.inner.shapes.lock().unwrap());
    }

    /// The next request gets `fault` (queued: one fault per request).
    pub fn fault_next(&self, fault: Fault) {
        self.inner.faults.lock().unwrap().push_back(fault);
    }

    /// Every request gets `fault` (after the queued ones), until `None`.
    pub fn fault_always(&self, fault: Option<Fault>) {
        *self.inner.persistent_fault.lock().unwrap() = fault;
    }

    pub fn requests(&self) -> Vec<SimRequest> {
        self.inner.requests.lock().unwrap().clone()
    }

    pub fn count(&self) -> usize {
        *self.inner.seen.borrow()
    }

    /// How many requests asked about `key`.
    pub fn count_for(&self, key: &str) -> usize {
        let requests = self.inner.requests.lock().unwrap();
        requests
            .iter()
            .filter(|r| r.key.as_deref() == Some(key))
            .count()
    }

    /// Waits until at least `n` requests arrived (counted on arrival, before
    /// any delay), failing after `limit`; all requests so far.
    pub async fn wait_requests(&self, n: usize, limit: Duration) -> Vec<SimRequest> {
        let mut seen = self.inner.seen.subscribe();
        let waited = tokio::time::timeout(limit, seen.wait_for(|count| *count >= n)).await;
        if !matches!(waited, Ok(Ok(_))) {
            panic!(
                "provider simulator got {} requests, expected {n}",
                self.count()
            );
        }
        self.requests()
    }

    /// A webhook body this provider would send for the invoice at `state`
    /// (to post to the relay's ingress): NubeFact the webhook's fields,
    /// TusFacturas the hook (`encolado`, `emitido`, `error`, `eliminado`),
    /// Dátil the full invoice.
    pub fn webhook(&self, key: &str, state: InvoiceState) -> Vec<u8> {
        let value = match &self.inner.provider {
            SimProvider::NubeFact { .. } => {
                let (serie, numero) = split_subject(key).expect("a NubeFact key is SERIE-NUMERO");
                let tipo = if serie.starts_with('F') { 1 } else { 2 };
                let mut full = nubefact_invoice(tipo, &serie, numero, state);
                if let Value::Object(map) = &mut full {
                    for extra in ["anulado", "cadena_para_codigo_qr", "sunat_note"] {
                        map.remove(extra);
                    }
                }
                full
            }
            SimProvider::TusFacturas { .. } => {
                let evento = match state {
                    InvoiceState::Pending => "encolado",
                    InvoiceState::Accepted => "emitido",
                    InvoiceState::Rejected => "error",
                    InvoiceState::Voided => "eliminado",
                };
                json!({
                    "creado": "18/03/2022 15:58:11", "evento": evento, "recurso": "facturacion",
                    "external_reference": key, "intento": 1, "msg": [],
                    "hook_id": format!("hook-{key}-{evento}"),
                })
            }
            SimProvider::Datil { .. } => datil_invoice(key, state),
        };
        serde_json::to_vec(&value).unwrap()
    }
}

// === Server ===

#[derive(Default)]
struct InvoiceEntry {
    states: VecDeque<InvoiceState>,
    patch: Option<Value>,
}

struct Inner {
    provider: SimProvider,
    shapes: Mutex<Shapes>,
    invoices: Mutex<HashMap<String, InvoiceEntry>>,
    faults: Mutex<VecDeque<Fault>>,
    persistent_fault: Mutex<Option<Fault>>,
    requests: Mutex<Vec<SimRequest>>,
    /// How many requests arrived; `wait_requests` subscribes.
    seen: watch::Sender<usize>,
}

impl Inner {
    fn take_fault(&self) -> Option<Fault> {
        let queued = self.faults.lock().unwrap().pop_front();
        queued.or_else(|| self.persistent_fault.lock().unwrap().clone())
    }

    /// The invoice's current state (advancing its script) and patch.
    fn lookup(&self, key: &str) -> Option<(InvoiceState, Option<Value>)> {
        let mut invoices = self.invoices.lock().unwrap();
        let entry = invoices.get_mut(key)?;
        let state = if entry.states.len() > 1 {
            entry.states.pop_front()?
        } else {
            *entry.states.front()?
        };
        Some((state, entry.patch.clone()))
    }

    fn shapes(&self) -> Shapes {
        self.shapes.lock().unwrap().clone()
    }
}

/// An answer: status and JSON (or raw) body.
struct Reply {
    status: u16,
    body: Bytes,
    content_type: &'static str,
}

impl Reply {
    fn json(status: u16, value: &Value) -> Reply {
        Reply {
            status,
            body: Bytes::from(serde_json::to_vec(value).unwrap()),
            content_type: "application/json; charset=utf-8",
        }
    }
}

async fn serve(
    listener: tokio::net::TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    inner: Arc<Inner>,
) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            return;
        };
        let inner = inner.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| handle(inner.clone(), req));
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            match tls {
                None => {
                    let _ = builder
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                }
                Some(acceptor) => {
                    let accepted =
                        tokio::time::timeout(Duration::from_secs(5), acceptor.accept(stream)).await;
                    if let Ok(Ok(stream)) = accepted {
                        let _ = builder
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                    }
                }
            }
        });
    }
}

async fn handle(
    inner: Arc<Inner>,
    req: Request<hyper::body::Incoming>,
) -> Result<Response<Full<Bytes>>, std::io::Error> {
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let path = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_default();
    let key = key_of(&inner.provider, &path, &body);
    let fault = inner.take_fault();
    let reply = match &fault {
        Some(Fault::Drop) => None,
        Some(Fault::Delay(_)) | None => Some(answer(&inner, &parts, &path, &body)),
        Some(other) => Some(fault_reply(&inner.provider, other)),
    };
    inner.requests.lock().unwrap().push(SimRequest {
        method: parts.method.clone(),
        path,
        headers: parts.headers.clone(),
        body,
        key,
        fault: fault.clone(),
        answer: reply.as_ref().map(|r| (r.status, r.body.clone())),
    });
    inner.seen.send_modify(|count| *count += 1);
    if let Some(Fault::Delay(time)) = fault {
        tokio::time::sleep(time).await;
    }
    let Some(reply) = reply else {
        // An error from the service makes hyper close the connection.
        return Err(std::io::Error::other("simulated drop"));
    };
    let mut response = Response::new(Full::new(reply.body));
    *response.status_mut() = http::StatusCode::from_u16(reply.status).unwrap();
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        reply.content_type.parse().unwrap(),
    );
    Ok(response)
}

/// The invoice a request asks about, if it can be read.
fn key_of(provider: &SimProvider, path: &str, body: &[u8]) -> Option<String> {
    match provider {
        SimProvider::NubeFact { .. } => {
            let request: Value = serde_json::from_slice(body).ok()?;
            let serie = text_of(request.get("serie")?)?;
            let numero = number_of(request.get("numero")?)?;
            Some(format!("{serie}-{numero}"))
        }
        SimProvider::TusFacturas { .. } => {
            let request: Value = serde_json::from_slice(body).ok()?;
            text_of(request.get("comprobante")?.get("external_reference")?)
        }
        SimProvider::Datil { .. } => datil_id(path),
    }
}

fn answer(inner: &Inner, parts: &http::request::Parts, path: &str, body: &[u8]) -> Reply {
    match &inner.provider {
        SimProvider::NubeFact { token, form } => {
            nubefact_answer(inner, parts, path, body, token, *form)
        }
        SimProvider::TusFacturas {
            apikey,
            apitoken,
            usertoken,
        } => tusfacturas_answer(inner, parts, path, body, [apikey, apitoken, usertoken]),
        SimProvider::Datil { api_key } => datil_answer(inner, parts, path, api_key),
    }
}

fn fault_reply(provider: &SimProvider, fault: &Fault) -> Reply {
    match fault {
        Fault::Status(status) => Reply {
            status: *status,
            body: Bytes::from(format!(
                "<html><body><h1>{status}</h1>Service Unavailable</body></html>"
            )),
            content_type: "text/html",
        },
        Fault::StatusBody(status, body) => Reply {
            status: *status,
            body: body.clone(),
            content_type: "application/json",
        },
        Fault::Unparseable => Reply {
            status: 200,
            body: Bytes::from_static(b"{\"aceptada_por_sunat\": tru"),
            content_type: "application/json",
        },
        Fault::ProviderError {
            http,
            code,
            message,
        } => Reply::json(*http, &provider_error(provider, *code, message)),
        Fault::Delay(_) | Fault::Drop => unreachable!("answered by `handle`"),
    }
}

/// The provider's documented error body.
fn provider_error(provider: &SimProvider, code: u32, message: &str) -> Value {
    match provider {
        SimProvider::NubeFact { .. } => json!({"errors": message, "codigo": code}),
        SimProvider::TusFacturas { .. } => json!({
            "error": "S", "errores": [message], "error_cod": [code], "error_details": [],
        }),
        SimProvider::Datil { .. } => json!({
            "message": message, "code": code, "details": null, "parameter": null, "value": null,
        }),
    }
}

// === NubeFact ===

fn nubefact_answer(
    inner: &Inner,
    parts: &http::request::Parts,
    path: &str,
    body: &[u8],
    token: &str,
    form: HeaderForm,
) -> Reply {
    let error_status = inner.shapes().nubefact_error_status;
    let error = |codigo: u32, message: &str| {
        let inferred = match codigo {
            10 | 11 => 401,
            40 => 500,
            _ => 400,
        };
        Reply::json(
            error_status.unwrap_or(inferred),
            &json!({"errors": message, "codigo": codigo}),
        )
    };
    let authorization = parts
        .headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let quoted = authorization == format!("Token token=\"{token}\"");
    let bare = authorization == token;
    let authorized = match form {
        HeaderForm::TokenQuoted => quoted,
        HeaderForm::Bare => bare,
        HeaderForm::Either => quoted || bare,
    };
    if !authorized {
        return error(10, "El token enviado no es válido");
    }
    if parts.method != http::Method::POST || path != NUBEFACT_RUTA {
        return error(11, "La ruta o URL enviada no es válida");
    }
    let content_type = parts
        .headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !content_type.starts_with("application/json") {
        return error(12, "El Content-Type debe ser application/json");
    }
    let Ok(Value::Object(request)) = serde_json::from_slice::<Value>(body) else {
        return error(
            20,
            "El archivo enviado no cumple con el formato establecido",
        );
    };
    let operacion = request.get("operacion").and_then(Value::as_str);
    if !matches!(
        operacion,
        Some("consultar_comprobante") | Some("consultar_anulacion")
    ) {
        return error(20, "La operación enviada no es válida");
    }
    let tipo = request.get("tipo_de_comprobante").and_then(number_of);
    let serie = request.get("serie").and_then(text_of);
    let numero = request.get("numero").and_then(number_of);
    let (Some(tipo), Some(serie), Some(numero)) = (tipo, serie, numero) else {
        return error(20, "Faltan tipo_de_comprobante, serie o numero");
    };
    let Some((state, patch)) = inner.lookup(&format!("{serie}-{numero}")) else {
        return error(24, "El documento no existe");
    };
    let mut invoice = nubefact_invoice(tipo, &serie, numero, state);
    if let Some(patch) = patch {
        merge(&mut invoice, &patch);
    }
    Reply::json(200, &invoice)
}

/// The full answer for an invoice at `state` (pending and rejected inferred).
fn nubefact_invoice(tipo: u64, serie: &str, numero: u64, state: InvoiceState) -> Value {
    let name = format!("{serie}-{numero}");
    let enlace = format!("https://www.nubefact.com/cpe/4f5a1d2e-{serie}-{numero}");
    let (aceptada, description, code, anulado) = match state {
        InvoiceState::Pending => (false, Value::Null, Value::Null, false),
        InvoiceState::Accepted => (
            true,
            json!(format!(
                "La Boleta de Venta numero {name}, ha sido aceptada"
            )),
            json!("0"),
            false,
        ),
        InvoiceState::Rejected => (
            false,
            json!(format!(
                "El comprobante {name} ha sido rechazado: el numero de RUC del receptor no existe"
            )),
            json!("2017"),
            false,
        ),
        InvoiceState::Voided => (
            true,
            json!(format!(
                "La Boleta de Venta numero {name}, ha sido aceptada"
            )),
            json!("0"),
            true,
        ),
    };
    json!({
        "tipo_de_comprobante": tipo,
        "serie": serie,
        "numero": numero,
        "enlace": enlace,
        "enlace_del_pdf": format!("{enlace}.pdf"),
        "enlace_del_xml": format!("{enlace}.xml"),
        "enlace_del_cdr": if aceptada { json!(format!("{enlace}.cdr")) } else { json!("") },
        "aceptada_por_sunat": aceptada,
        "sunat_description": description,
        "sunat_note": null,
        "sunat_responsecode": code,
        "sunat_soap_error": "",
        "anulado": anulado,
        "cadena_para_codigo_qr": format!("20600695771 | 0{tipo} | {serie} | {numero} | 0.00 | 118.00 | 2017-05-12 | 1 | 12345678 |"),
        "codigo_hash": "xMLFMnbgp1/bHEy572RKRTE9hPY=",
    })
}

// === TusFacturas ===

fn tusfacturas_answer(
    inner: &Inner,
    parts: &http::request::Parts,
    path: &str,
    body: &[u8],
    credentials: [&String; 3],
) -> Reply {
    let shapes = inner.shapes();
    let error = |status: u16, message: &str| {
        Reply::json(
            status,
            &json!({"error": "S", "errores": [message], "error_cod": [], "error_details": []}),
        )
    };
    if parts.method != http::Method::POST {
        return error(405, "Método no permitido");
    }
    if path != format!("{TUSFACTURAS_BASE}/facturacion/consulta_avanzada") {
        return error(404, "Recurso inexistente");
    }
    let Ok(Value::Object(request)) = serde_json::from_slice::<Value>(body) else {
        return error(400, "El JSON enviado no es válido");
    };
    let authorized = ["apikey", "apitoken", "usertoken"]
        .iter()
        .zip(credentials)
        .all(|(name, expected)| request.get(*name).and_then(text_of).as_ref() == Some(expected));
    if !authorized {
        return error(
            shapes.tusfacturas_auth_status,
            "Los datos de autenticación (apikey, apitoken, usertoken) no son válidos",
        );
    }
    let reference = request
        .get("comprobante")
        .and_then(|c| c.get("external_reference"))
        .and_then(text_of);
    let (Some("EXT_REF"), Some(reference)) = (
        request.get("busqueda_tipo").and_then(Value::as_str),
        reference,
    ) else {
        return error(
            400,
            "Falta busqueda_tipo EXT_REF o comprobante.external_reference",
        );
    };
    let Some((state, patch)) = inner.lookup(&reference) else {
        return match shapes.tusfacturas_not_found {
            TusNotFound::TotalZero => Reply::json(
                200,
                &json!({"rta": "OK", "error": "N", "errores": [], "total": 0, "comprobantes": []}),
            ),
            TusNotFound::Error(status) => error(status, "No se encontraron comprobantes"),
        };
    };
    let mut comprobante = tusfacturas_comprobante(&reference, state);
    if let Some(patch) = patch {
        merge(&mut comprobante, &patch);
    }
    let mut found = vec![json!({"cliente": tusfacturas_cliente(), "comprobante": comprobante})];
    if shapes.tusfacturas_decoy {
        let decoy = tusfacturas_comprobante(&format!("{reference}-otro"), InvoiceState::Accepted);
        found.insert(
            0,
            json!({"cliente": tusfacturas_cliente(), "comprobante": decoy}),
        );
    }
    Reply::json(
        200,
        &json!({"rta": "OK", "error": "N", "errores": [], "total": found.len(), "comprobantes": found}),
    )
}

fn tusfacturas_cliente() -> Value {
    json!({
        "documento_tipo": "CUIT", "documento_nro": "30712345678",
        "razon_social": "Cliente de Prueba S.A.", "email": "cliente@example.com",
        "domicilio": "Av. Siempreviva 742", "provincia": "2", "condicion_iva": "RI",
    })
}

/// The `comprobante` of an invoice at `state` (ELIMINADO inferred).
fn tusfacturas_comprobante(reference: &str, state: InvoiceState) -> Value {
    let (status, cae, vencimiento, pdf, observaciones) = match state {
        InvoiceState::Pending => ("EN COLA, ESPERANDO APROBACION", "", "", "", json!([])),
        InvoiceState::Accepted => (
            "EMITIDO",
            "72123456789012",
            "28/03/2022",
            "https://www.tusfacturas.app/app/pdf/comprobante-17032.pdf",
            json!([]),
        ),
        InvoiceState::Rejected => (
            "ENVIADO A PROCESAR - CON ERROR",
            " ",
            "",
            "",
            json!(["10015: El CUIT del receptor no es válido"]),
        ),
        InvoiceState::Voided => ("ELIMINADO", " ", "", "", json!([])),
    };
    json!({
        "tipo": "FACTURA B", "operacion": "V", "punto_venta": "0002", "numero": "00000006",
        "fecha": "18/03/2022", "moneda": "PES", "total": "121.00",
        "external_reference": reference,
        "status": status,
        "cae": cae,
        "vencimiento_cae": vencimiento,
        "comprobante_pdf_url": pdf,
        "afip_observaciones": observaciones,
    })
}

// === Dátil ===

/// The id in `/invoices/<id>` or `/edocs/<id>`, percent-decoded.
fn datil_id(path: &str) -> Option<String> {
    let path = path.split('?').next().unwrap_or("");
    let id = path
        .strip_prefix("/invoices/")
        .or_else(|| path.strip_prefix("/edocs/"))?;
    if id.is_empty() || id.contains('/') {
        return None;
    }
    percent_encoding::percent_decode_str(id)
        .decode_utf8()
        .ok()
        .map(|id| id.into_owned())
}

fn datil_answer(inner: &Inner, parts: &http::request::Parts, path: &str, api_key: &str) -> Reply {
    let error = |status: u16, message: &str| {
        Reply::json(
            status,
            &json!({"message": message, "code": status, "details": null, "parameter": null, "value": null}),
        )
    };
    let key = parts.headers.get("x-key").and_then(|v| v.to_str().ok());
    if key != Some(api_key) {
        return error(401, "Credenciales inválidas: revise la cabecera X-Key");
    }
    let Some(id) = datil_id(path) else {
        return error(404, "Recurso no encontrado");
    };
    if parts.method != http::Method::GET {
        return error(405, "Método no permitido");
    }
    let Some((state, patch)) = inner.lookup(&id) else {
        return error(404, "El comprobante no existe");
    };
    let mut invoice = datil_invoice(&id, state);
    if let Some(patch) = patch {
        merge(&mut invoice, &patch);
    }
    Reply::json(200, &invoice)
}

/// The full invoice at `state` (pending's missing `autorizacion` and
/// ANULADO inferred).
fn datil_invoice(id: &str, state: InvoiceState) -> Value {
    let fecha = "2015-09-28T19:28:56.782Z";
    let autorizado = json!({
        "numero": "2907201515283909927125540017656314390", "fecha": fecha,
        "estado": "AUTORIZADO", "mensajes": [],
    });
    let (estado, autorizacion) = match state {
        InvoiceState::Pending => ("RECIBIDO", Value::Null),
        InvoiceState::Accepted => ("AUTORIZADO", autorizado),
        InvoiceState::Rejected => (
            "NO AUTORIZADO",
            json!({
                "numero": "2907201515283909927125540017656314390", "fecha": fecha,
                "estado": "NO AUTORIZADO",
                "mensajes": [{
                    "identificador": 46, "mensaje": "RUC NO EXISTE",
                    "informacion_adicional": "El RUC debe tener 13 dígitos.", "tipo": "ERROR",
                }],
            }),
        ),
        InvoiceState::Voided => ("ANULADO", autorizado),
    };
    let mut invoice = json!({
        "id": id,
        "secuencial": "1765",
        "fecha_emision": "2015-09-28T14:00:00-05:00",
        "clave_acceso": "2809201501099187643500110010010000017651234567810",
        "ambiente": 1,
        "tipo_emision": 1,
        "moneda": "USD",
        "emisor": {"ruc": "0991876435001", "razon_social": "Dátil Cía. Ltda."},
        "comprador": {"razon_social": "Juan Pérez", "identificacion": "0921091010", "tipo_identificacion": "05"},
        "totales": {"total_sin_impuestos": 30.84, "importe_total": 34.54},
        "estado": estado,
        "envio_sri": {"estado": "RECIBIDA", "mensajes": [], "fecha": fecha},
        "autorizacion": autorizacion,
    });
    if let Value::Object(map) = &mut invoice {
        map.retain(|_, v| !v.is_null());
    }
    invoice
}

// === TLS ===

/// A CA of the simulator's own and a certificate it signed for
/// `localhost` and 127.0.0.1.
struct SimTls {
    acceptor: tokio_rustls::TlsAcceptor,
    ca_pem: String,
    ca_file: PathBuf,
    _dir: tempfile::TempDir,
}

impl SimTls {
    fn new() -> SimTls {
        use rustls_pki_types::pem::PemObject;
        let ca = TestCa::new("provider simulator test CA");
        let leaf =
            rustls_pki_types::CertificateDer::from_pem_slice(ca.cert_pem.as_bytes()).unwrap();
        let private =
            rustls_pki_types::PrivateKeyDer::from_pem_slice(ca.key_pem.as_bytes()).unwrap();
        let mut config = rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(vec![leaf], private)
            .unwrap();
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let dir = tempfile::tempdir().unwrap();
        let ca_file = dir.path().join("provider-ca.pem");
        std::fs::write(&ca_file, &ca.ca_pem).unwrap();
        SimTls {
            acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(config)),
            ca_pem: ca.ca_pem,
            ca_file,
            _dir: dir,
        }
    }
}

// === JSON helpers ===

/// A string, or a number as text (clients send both).
fn text_of(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// A number, or a string of digits (`"0105"` is 105).
fn number_of(value: &Value) -> Option<u64> {
    match value {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// `"BBB1-105"` → (`"BBB1"`, 105).
fn split_subject(key: &str) -> Option<(String, u64)> {
    let (serie, numero) = key.rsplit_once('-')?;
    Some((serie.to_owned(), numero.parse().ok()?))
}

/// RFC 7396 JSON merge patch.
fn merge(target: &mut Value, patch: &Value) {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    if let Value::Object(target) = target {
        for (name, value) in patch {
            if value.is_null() {
                target.remove(name);
            } else {
                merge(target.entry(name.clone()).or_insert(Value::Null), value);
            }
        }
    }
}

// === Self-tests ===

const LIMIT: Duration = Duration::from_secs(5);

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(LIMIT)
        .build()
        .unwrap()
}

/// Sends `request` and reads the answer as JSON.
async fn json_answer(request: reqwest::RequestBuilder) -> (u16, Value) {
    let response = request.send().await.expect("the simulator answers");
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    let json = serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text:?}"));
    (status, json)
}

async fn nubefact_query(sim: &ProviderSim, authorization: &str, query: Value) -> (u16, Value) {
    let request = client()
        .post(sim.url())
        .header("authorization", authorization)
        .header("content-type", "application/json")
        .body(query.to_string());
    json_answer(request).await
}

fn boleta_query() -> Value {
    json!({"operacion": "consultar_comprobante", "tipo_de_comprobante": 2, "serie": "BBB1", "numero": 105})
}

#[tokio::test]
async fn nubefact_sim_takes_either_header_form_and_answers_codigo_10_otherwise() {
    let sim = ProviderSim::nubefact("T0K", HeaderForm::Either).await;
    sim.set("BBB1-105", InvoiceState::Pending);
    for authorization in ["Token token=\"T0K\"", "T0K"] {
        let (status, answer) = nubefact_query(&sim, authorization, boleta_query()).await;
        assert_eq!(status, 200, "{authorization}: {answer}");
        assert_eq!(answer["aceptada_por_sunat"], json!(false));
    }
    let (status, answer) = nubefact_query(&sim, "Token token=\"other\"", boleta_query()).await;
    assert_eq!((status, &answer["codigo"]), (401, &json!(10)));
    assert!(answer["errors"].is_string(), "{answer}");
    // The manual lists 200 among the statuses: the same body with 200.
    sim.shapes(|s| s.nubefact_error_status = Some(200));
    let (status, answer) = nubefact_query(&sim, "", boleta_query()).await;
    assert_eq!((status, &answer["codigo"]), (200, &json!(10)));

    let quoted_only = ProviderSim::nubefact("T0K", HeaderForm::TokenQuoted).await;
    quoted_only.set("BBB1-105", InvoiceState::Accepted);
    let (status, answer) = nubefact_query(&quoted_only, "T0K", boleta_query()).await;
    assert_eq!((status, &answer["codigo"]), (401, &json!(10)));
    let bare_only = ProviderSim::nubefact("T0K", HeaderForm::Bare).await;
    bare_only.set("BBB1-105", InvoiceState::Accepted);
    let (_, answer) = nubefact_query(&bare_only, "Token token=\"T0K\"", boleta_query()).await;
    assert_eq!(answer["codigo"], json!(10));
    let (status, _) = nubefact_query(&bare_only, "T0K", boleta_query()).await;
    assert_eq!(status, 200);
    let seen = bare_only.requests();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[1].headers["authorization"], "T0K");
    assert_eq!(seen[1].key.as_deref(), Some("BBB1-105"));
}

#[tokio::test]
async fn nubefact_sim_moves_an_invoice_from_pending_to_accepted_rejected_voided() {
    let sim = ProviderSim::nubefact("T0K", HeaderForm::TokenQuoted).await;
    let auth = "Token token=\"T0K\"";
    sim.script("BBB1-105", [InvoiceState::Pending, InvoiceState::Accepted]);
    let (status, pending) = nubefact_query(&sim, auth, boleta_query()).await;
    assert_eq!(status, 200);
    assert_eq!(pending["aceptada_por_sunat"], json!(false));
    assert_eq!(pending["sunat_responsecode"], Value::Null);
    // Numbers as strings, as some clients send them; the script moved on.
    let as_strings = json!({"operacion": "consultar_comprobante", "tipo_de_comprobante": "2", "serie": "BBB1", "numero": "0105"});
    for _ in 0..2 {
        let (status, accepted) = nubefact_query(&sim, auth, as_strings.clone()).await;
        assert_eq!(status, 200);
        for (field, value) in [
            ("tipo_de_comprobante", json!(2)),
            ("serie", json!("BBB1")),
            ("numero", json!(105)),
            ("aceptada_por_sunat", json!(true)),
            ("sunat_responsecode", json!("0")),
            ("anulado", json!(false)),
        ] {
            assert_eq!(accepted[field], value, "{field}");
        }
        for field in [
            "enlace",
            "enlace_del_pdf",
            "enlace_del_xml",
            "enlace_del_cdr",
            "codigo_hash",
            "cadena_para_codigo_qr",
            "sunat_description",
        ] {
            assert!(accepted[field].is_string(), "{field}: {accepted}");
        }
    }
    sim.set("BBB1-105", InvoiceState::Rejected);
    let (_, rejected) = nubefact_query(&sim, auth, boleta_query()).await;
    assert_eq!(rejected["aceptada_por_sunat"], json!(false));
    assert_eq!(rejected["sunat_responsecode"], json!("2017"));
    sim.set("BBB1-105", InvoiceState::Voided);
    sim.patch(
        "BBB1-105",
        json!({"sunat_note": "anulada por comunicación de baja"}),
    );
    let (_, voided) = nubefact_query(&sim, auth, boleta_query()).await;
    assert_eq!(voided["anulado"], json!(true));
    assert_eq!(
        voided["sunat_note"],
        json!("anulada por comunicación de baja")
    );
    sim.forget("BBB1-105");
    let (status, missing) = nubefact_query(&sim, auth, boleta_query()).await;
    assert_eq!((status, &missing["codigo"]), (400, &json!(24)));
    assert_eq!(sim.count_for("BBB1-105"), 6);
    // The webhook of the same invoice: the fields the relay's check reads.
    let webhook: Value =
        serde_json::from_slice(&sim.webhook("BBB1-105", InvoiceState::Pending)).unwrap();
    assert_eq!(
        (
            &webhook["serie"],
            &webhook["numero"],
            &webhook["aceptada_por_sunat"]
        ),
        (&json!("BBB1"), &json!(105), &json!(false))
    );
}

async fn tusfacturas_query(sim: &ProviderSim, apitoken: &str, reference: &str) -> (u16, Value) {
    let query = json!({
        "apikey": "68", "apitoken": apitoken, "usertoken": "U",
        "busqueda_tipo": "EXT_REF", "pagina": 0, "limite": 100,
        "comprobante": {"external_reference": reference, "operacion": "V"},
    });
    let url = format!("{}/facturacion/consulta_avanzada", sim.url());
    json_answer(
        client()
            .post(url)
            .header("content-type", "application/json")
            .body(query.to_string()),
    )
    .await
}

#[tokio::test]
async fn tusfacturas_sim_answers_consulta_avanzada_and_error_s() {
    let sim = ProviderSim::tusfacturas("68", "A", "U").await;
    sim.script("17032", [InvoiceState::Pending, InvoiceState::Accepted]);
    let (status, refused) = tusfacturas_query(&sim, "wrong", "17032").await;
    assert_eq!((status, &refused["error"]), (401, &json!("S")));
    assert!(refused["errores"][0].is_string(), "{refused}");
    let (status, pending) = tusfacturas_query(&sim, "A", "17032").await;
    assert_eq!(status, 200);
    assert_eq!(
        (&pending["rta"], &pending["error"], &pending["total"]),
        (&json!("OK"), &json!("N"), &json!(1))
    );
    let comprobante = &pending["comprobantes"][0]["comprobante"];
    assert_eq!(
        comprobante["status"],
        json!("EN COLA, ESPERANDO APROBACION")
    );
    assert!(pending["comprobantes"][0]["cliente"].is_object());
    let (_, emitted) = tusfacturas_query(&sim, "A", "17032").await;
    let comprobante = &emitted["comprobantes"][0]["comprobante"];
    assert_eq!(
        (&comprobante["status"], &comprobante["external_reference"]),
        (&json!("EMITIDO"), &json!("17032"))
    );
    for field in ["cae", "vencimiento_cae", "comprobante_pdf_url"] {
        assert_ne!(comprobante[field], json!(""), "{field}");
    }
    assert!(comprobante["afip_observaciones"].is_array());

    sim.set("17032", InvoiceState::Rejected);
    sim.shapes(|s| s.tusfacturas_decoy = true);
    let (_, rejected) = tusfacturas_query(&sim, "A", "17032").await;
    assert_eq!(rejected["total"], json!(2));
    let matching = &rejected["comprobantes"][1]["comprobante"];
    assert_eq!(
        (&matching["status"], &matching["cae"]),
        (&json!("ENVIADO A PROCESAR - CON ERROR"), &json!(" "))
    );
    sim.set("17032", InvoiceState::Pending);
    sim.patch(
        "17032",
        json!({"status": "APROBADO Y EN COLA. SE EMITE EL 20/03/2022"}),
    );
    let (_, queued) = tusfacturas_query(&sim, "A", "17032").await;
    assert_eq!(
        queued["comprobantes"][1]["comprobante"]["status"],
        json!("APROBADO Y EN COLA. SE EMITE EL 20/03/2022")
    );

    let (status, none) = tusfacturas_query(&sim, "A", "99999").await;
    assert_eq!(
        (status, &none["total"], &none["comprobantes"]),
        (200, &json!(0), &json!([]))
    );
    sim.shapes(|s| {
        s.tusfacturas_not_found = TusNotFound::Error(404);
        s.tusfacturas_auth_status = 200;
    });
    let (status, none) = tusfacturas_query(&sim, "A", "99999").await;
    assert_eq!((status, &none["error"]), (404, &json!("S")));
    let (status, refused) = tusfacturas_query(&sim, "wrong", "17032").await;
    assert_eq!((status, &refused["error"]), (200, &json!("S")));
    let hook: Value = serde_json::from_slice(&sim.webhook("17032", InvoiceState::Pending)).unwrap();
    assert_eq!(
        (&hook["evento"], &hook["external_reference"]),
        (&json!("encolado"), &json!("17032"))
    );
}

async fn datil_get(
    sim: &ProviderSim,
    client: &reqwest::Client,
    key: Option<&str>,
    path: &str,
) -> (u16, Value) {
    let mut request = client.get(format!("{}{path}", sim.url()));
    if let Some(key) = key {
        request = request.header("x-key", key);
    }
    json_answer(request).await
}

#[tokio::test]
async fn datil_sim_answers_the_invoice_401_and_404() {
    let sim = ProviderSim::datil("K3Y").await;
    let id = "abcde 12/34";
    sim.script(id, [InvoiceState::Pending, InvoiceState::Accepted]);
    let escaped = "/invoices/abcde%2012%2F34";
    let client = client();
    let (status, refused) = datil_get(&sim, &client, Some("wrong"), escaped).await;
    assert_eq!(status, 401);
    assert!(
        refused["message"].is_string() && !refused["code"].is_null(),
        "{refused}"
    );
    let (status, _) = datil_get(&sim, &client, None, escaped).await;
    assert_eq!(status, 401);
    let (status, pending) = datil_get(&sim, &client, Some("K3Y"), escaped).await;
    assert_eq!(
        (status, &pending["estado"], &pending["id"]),
        (200, &json!("RECIBIDO"), &json!(id))
    );
    assert_eq!(pending["envio_sri"]["estado"], json!("RECIBIDA"));
    let (_, accepted) = datil_get(&sim, &client, Some("K3Y"), "/edocs/abcde%2012%2F34").await;
    assert_eq!(
        (&accepted["estado"], &accepted["autorizacion"]["estado"]),
        (&json!("AUTORIZADO"), &json!("AUTORIZADO"))
    );
    assert!(accepted["clave_acceso"].is_string() && accepted["secuencial"].is_string());
    sim.set(id, InvoiceState::Rejected);
    let (_, rejected) = datil_get(&sim, &client, Some("K3Y"), escaped).await;
    assert_eq!(
        rejected["autorizacion"]["mensajes"][0]["mensaje"],
        json!("RUC NO EXISTE")
    );
    sim.set(id, InvoiceState::Voided);
    let (_, voided) = datil_get(&sim, &client, Some("K3Y"), escaped).await;
    assert_eq!(voided["estado"], json!("ANULADO"));
    let (status, missing) = datil_get(&sim, &client, Some("K3Y"), "/invoices/unknown").await;
    assert_eq!((status, &missing["code"]), (404, &json!(404)));
    assert_eq!(sim.count_for(id), 6);
    assert_eq!(
        sim.webhook(id, InvoiceState::Accepted),
        serde_json::to_vec(&accepted).unwrap()
    );
}

#[tokio::test]
async fn sim_faults_answer_5xx_garbage_provider_errors_delays_and_drops() {
    let sim = ProviderSim::datil("K3Y").await;
    sim.set("1", InvoiceState::Accepted);
    sim.fault_next(Fault::Status(503));
    sim.fault_next(Fault::Unparseable);
    sim.fault_next(Fault::ProviderError {
        http: 500,
        code: 500,
        message: "Error interno".into(),
    });
    sim.fault_next(Fault::StatusBody(502, Bytes::from_static(b"{}")));
    let url = format!("{}/invoices/1", sim.url());
    let get = || client().get(&url).header("x-key", "K3Y").send();
    let unavailable = get().await.unwrap();
    assert_eq!(unavailable.status(), 503);
    let garbage = get().await.unwrap();
    assert_eq!(garbage.status(), 200);
    assert!(serde_json::from_slice::<Value>(&garbage.bytes().await.unwrap()).is_err());
    let (status, error) = json_answer(client().get(&url).header("x-key", "K3Y")).await;
    assert_eq!((status, &error["message"]), (500, &json!("Error interno")));
    assert_eq!(get().await.unwrap().status(), 502);
    // Past the client's timeout, then a dropped connection.
    sim.fault_always(Some(Fault::Delay(Duration::from_secs(30))));
    let short = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_millis(200))
        .build()
        .unwrap();
    let timed_out = short
        .get(&url)
        .header("x-key", "K3Y")
        .send()
        .await
        .unwrap_err();
    assert!(timed_out.is_timeout(), "{timed_out:?}");
    sim.fault_always(Some(Fault::Drop));
    assert!(get().await.is_err());
    sim.fault_always(None);
    assert_eq!(get().await.unwrap().status(), 200);
    let seen = sim.wait_requests(7, LIMIT).await;
    let faults: Vec<_> = seen.iter().map(|r| r.fault.clone()).collect();
    assert_eq!(faults[5], Some(Fault::Drop));
    assert_eq!(faults[6], None);
    assert!(seen
        .iter()
        .all(|r| r.method == http::Method::GET && r.path == "/invoices/1" && r.body.is_empty()));
    assert_eq!(
        seen[6].answer.as_ref().map(|(status, _)| *status),
        Some(200)
    );
    assert_eq!(seen[5].answer, None);
}

#[tokio::test]
async fn sim_over_tls_is_trusted_through_its_ca_and_counts_are_awaited() {
    let sim = ProviderSim::start(
        SimProvider::Datil {
            api_key: "K3Y".into(),
        },
        true,
    )
    .await;
    sim.set("7", InvoiceState::Accepted);
    assert!(sim.url().starts_with("https://127.0.0.1:"));
    assert_eq!(sim.url(), format!("https://{}", sim.addr()));
    let pem = std::fs::read(sim.ca_file().expect("a CA file")).unwrap();
    assert_eq!(
        Some(String::from_utf8(pem.clone()).unwrap().as_str()),
        sim.ca_pem()
    );
    let trusting = reqwest::Client::builder()
        .no_proxy()
        .tls_certs_only([reqwest::Certificate::from_pem(&pem).unwrap()])
        .build()
        .unwrap();
    let waiter = {
        let sim = sim.clone();
        tokio::spawn(async move { sim.wait_requests(1, LIMIT).await })
    };
    let (status, invoice) = datil_get(&sim, &trusting, Some("K3Y"), "/invoices/7").await;
    assert_eq!((status, &invoice["estado"]), (200, &json!("AUTORIZADO")));
    let seen = waiter.await.unwrap();
    assert_eq!(seen[0].key.as_deref(), Some("7"));
    assert_eq!(sim.count(), 1);
    // A client that does not trust the simulator's CA is refused.
    assert!(client()
        .get(format!("{}/invoices/7", sim.url()))
        .send()
        .await
        .is_err());
}
