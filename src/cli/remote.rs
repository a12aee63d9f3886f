//! The CLI's commands for a running relay: they call its admin API. The
//! address and token are found in this order: flags (`--admin-url`,
//! `--token-file`), the environment (`WEBHOOK_RELAY_ADMIN_URL`,
//! `WEBHOOK_RELAY_TOKEN`), then the `[admin]` section of `relay.toml`.
//! Each request waits at most `--timeout` (`WEBHOOK_RELAY_TIMEOUT`, 30 s)
//! for the whole answer, then says so and exits 69.
//! People get tables with RFC 3339 times; scripts get `--json`.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::config::{parse_duration, AdminListen, Config, HumanDuration, Role};

/// EX_UNAVAILABLE: the relay's admin listener cannot be reached.
pub const EXIT_UNREACHABLE: u8 = 69;
/// EX_NOPERM: the admin API refused the token.
pub const EXIT_NOPERM: u8 = 77;

#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    #[error(
        "no admin address: pass --admin-url, set WEBHOOK_RELAY_ADMIN_URL, or set [admin] listen in {}",
        .0.display()
    )]
    NoAddress(PathBuf),
    #[error("cannot read the token file {}: {source}", path.display())]
    TokenFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "the relay's admin listener at {address} does not answer ({detail}); is the relay running? \
         (for a stopped relay, `webhook-relay spool dump` reads the spool directly)"
    )]
    Unreachable { address: String, detail: String },
    #[error(
        "the relay's admin listener at {address} did not answer within {timeout} \
         (--timeout or WEBHOOK_RELAY_TIMEOUT); the relay may be overloaded or stuck"
    )]
    TimedOut {
        address: String,
        timeout: HumanDuration,
    },
    #[error("the admin API refused the token ({status}): {detail}")]
    Denied { status: u16, detail: String },
    #[error("the admin API answered {status}: {detail}")]
    Refused { status: u16, detail: String },
    #[error("{0}")]
    Usage(String),
    /// A download that broke off midway.
    #[error("the transfer broke off: {0}")]
    Cut(String),
}

impl RemoteError {
    pub fn exit_code(&self) -> u8 {
        match self {
            RemoteError::Unreachable { .. } | RemoteError::TimedOut { .. } => EXIT_UNREACHABLE,
            RemoteError::Denied { .. } => EXIT_NOPERM,
            RemoteError::NoAddress(_) | RemoteError::Usage(_) => 64,
            _ => 1,
        }
    }

    /// Whether the relay is simply not running there (an offline command may do instead).
    pub fn is_unreachable(&self) -> bool {
        matches!(self, RemoteError::Unreachable { .. })
    }
}

/// Where the admin API is and how to call it.
#[derive(Debug, clap::Args, Clone)]
pub struct RemoteArgs {
    /// The admin API: `http://127.0.0.1:9090` or `unix:/run/webhook-relay/admin.sock`.
    #[arg(long, env = "WEBHOOK_RELAY_ADMIN_URL")]
    pub admin_url: Option<String>,
    /// A file holding the bearer token (else WEBHOOK_RELAY_TOKEN, else a
    /// token of relay.toml's [admin] section).
    #[arg(long)]
    pub token_file: Option<PathBuf>,
    /// Print the API's JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// The longest wait for the relay's whole answer: `30s`, `2m`.
    #[arg(long, env = "WEBHOOK_RELAY_TIMEOUT", default_value = "30s", value_parser = parse_timeout)]
    pub timeout: HumanDuration,
}

fn parse_timeout(text: &str) -> Result<HumanDuration, String> {
    match parse_duration(text)? {
        std::time::Duration::ZERO => Err("the timeout must be longer than 0s".into()),
        timeout => Ok(HumanDuration(timeout)),
    }
}

pub struct AdminClient {
    client: reqwest::Client,
    /// `http://host:port`, or `http://localhost` over a unix socket.
    base: String,
    /// As the user wrote it, for messages.
    address: String,
    token: Option<String>,
    timeout: HumanDuration,
    runtime: tokio::runtime::Runtime,
}

impl AdminClient {
    /// Finds the address and the token. The config is read only when the
    /// flags and the environment leave something open.
    pub fn locate(args: &RemoteArgs, config_path: &Path) -> anyhow::Result<AdminClient> {
        let token = match &args.token_file {
            Some(path) => Some(
                std::fs::read_to_string(path)
                    .map_err(|source| RemoteError::TokenFile {
                        path: path.clone(),
                        source,
                    })?
                    .trim_end_matches(['\n', '\r'])
                    .to_owned(),
            ),
            None => std::env::var("WEBHOOK_RELAY_TOKEN").ok(),
        };
        let config = if args.admin_url.is_none() || token.is_none() {
            Some(Config::load(config_path)?)
        } else {
            None
        };
        let listen = match &args.admin_url {
            Some(url) => parse_url(url)?,
            None => config
                .as_ref()
                .and_then(|c| c.admin.listen.clone())
                .ok_or_else(|| RemoteError::NoAddress(config_path.to_owned()))?,
        };
        // The config's strongest token: the person at the host's shell runs it.
        let token = token.or_else(|| {
            let config = config.as_ref()?;
            let mut tokens: Vec<_> = config.admin.tokens.iter().collect();
            tokens.sort_by_key(|t| std::cmp::Reverse(t.role));
            tokens
                .into_iter()
                .find(|t| t.role >= Role::Viewer)
                .and_then(|t| t.token.clone())
        });
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let builder = reqwest::Client::builder().timeout(args.timeout.0);
        let (builder, base) = match &listen {
            AdminListen::Tcp(addr) => (builder, format!("http://{addr}")),
            AdminListen::Unix(path) => {
                (builder.unix_socket(path.clone()), "http://localhost".into())
            }
        };
        Ok(AdminClient {
            client: builder.build()?,
            base,
            address: listen.to_string(),
            token,
            timeout: args.timeout,
            runtime,
        })
    }

    pub fn get(&self, path: &str) -> Result<Value, RemoteError> {
        self.call(reqwest::Method::GET, path)
    }

    pub fn post(&self, path: &str) -> Result<Value, RemoteError> {
        self.call(reqwest::Method::POST, path)
    }

    /// POST with a JSON body.
    pub fn post_json(&self, path: &str, body: &Value) -> Result<Value, RemoteError> {
        self.send(reqwest::Method::POST, path, Some(body))
    }

    pub fn delete(&self, path: &str) -> Result<Value, RemoteError> {
        self.call(reqwest::Method::DELETE, path)
    }

    /// What a failed request means: no answer in time, or no relay there.
    fn failed(&self, err: &reqwest::Error) -> RemoteError {
        if err.is_timeout() {
            RemoteError::TimedOut {
                address: self.address.clone(),
                timeout: self.timeout,
            }
        } else {
            RemoteError::Unreachable {
                address: self.address.clone(),
                detail: root_cause(err),
            }
        }
    }

    fn call(&self, method: reqwest::Method, path: &str) -> Result<Value, RemoteError> {
        self.send(method, path, None)
    }

    fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, RemoteError> {
        let mut request = self.client.request(method, format!("{}{path}", self.base));
        if let Some(body) = body {
            request = request
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body.to_string());
        }
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        self.runtime.block_on(async {
            let response = request.send().await.map_err(|err| self.failed(&err))?;
            let status = response.status().as_u16();
            let text = response.text().await.map_err(|err| self.failed(&err))?;
            let body: Value = serde_json::from_str(&text).unwrap_or(Value::String(text));
            match status {
                200..=299 => Ok(body),
                401 | 403 => Err(RemoteError::Denied {
                    status,
                    detail: detail_of(&body),
                }),
                _ => Err(RemoteError::Refused {
                    status,
                    detail: detail_of(&body),
                }),
            }
        })
    }
}

impl AdminClient {
    /// POSTs to `path` and copies the answer's body into `out` as it comes,
    /// telling `progress` the bytes so far. No overall timeout (a backup of
    /// a big spool takes minutes); a pause of [`STALLED`] between two
    /// chunks is an error.
    pub fn download(
        &self,
        path: &str,
        out: &mut dyn std::io::Write,
        progress: &mut dyn FnMut(u64),
    ) -> Result<u64, RemoteError> {
        let mut request = self
            .client
            .post(format!("{}{path}", self.base))
            .timeout(std::time::Duration::from_secs(7 * 24 * 3600));
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        let unreachable = |err: &reqwest::Error| RemoteError::Unreachable {
            address: self.address.clone(),
            detail: root_cause(err),
        };
        self.runtime.block_on(async {
            let mut response = request.send().await.map_err(|e| unreachable(&e))?;
            let status = response.status().as_u16();
            if !(200..=299).contains(&status) {
                let text = response.text().await.unwrap_or_default();
                let body: Value = serde_json::from_str(&text).unwrap_or(Value::String(text));
                let detail = detail_of(&body);
                return Err(match status {
                    401 | 403 => RemoteError::Denied { status, detail },
                    _ => RemoteError::Refused { status, detail },
                });
            }
            let mut received = 0u64;
            loop {
                let chunk = tokio::time::timeout(STALLED, response.chunk())
                    .await
                    .map_err(|_| RemoteError::Cut(format!("nothing came for {STALLED:?}")))?
                    .map_err(|e| RemoteError::Cut(root_cause(&e)))?;
                let Some(chunk) = chunk else {
                    return Ok(received);
                };
                out.write_all(&chunk)
                    .map_err(|e| RemoteError::Cut(format!("cannot write what came: {e}")))?;
                received += chunk.len() as u64;
                progress(received);
            }
        })
    }
}

/// How long a download may wait for its next chunk.
const STALLED: std::time::Duration = std::time::Duration::from_secs(300);

fn parse_url(url: &str) -> Result<AdminListen, RemoteError> {
    if url.starts_with("unix:") {
        return AdminListen::parse(url).map_err(RemoteError::Usage);
    }
    let rest = url.strip_prefix("http://").unwrap_or(url);
    let host = rest.trim_end_matches('/');
    host.parse().map(AdminListen::Tcp).map_err(|_| {
        RemoteError::Usage(format!(
            "--admin-url {url:?}: write http://ADDRESS:PORT (an IP address) or unix:PATH"
        ))
    })
}

/// The innermost cause of a client error: "Connection refused (os error 111)".
fn root_cause(err: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = err;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}

fn detail_of(body: &Value) -> String {
    body["detail"]
        .as_str()
        .map(str::to_owned)
        .unwrap_or_else(|| body.to_string())
}

/// Builds a query string from the pairs that are set.
pub fn query(pairs: &[(&str, Option<String>)]) -> String {
    let mut out = form_urlencoded::Serializer::new(String::new());
    for (name, value) in pairs {
        if let Some(value) = value {
            out.append_pair(name, value);
        }
    }
    let text = out.finish();
    if text.is_empty() {
        text
    } else {
        format!("?{text}")
    }
}

/// Left-aligned columns, two spaces apart; cells cut to `MAX_CELL`.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    table_cut(headers, rows, false)
}

/// [`table`], but the last column is never cut (it aligns nothing after
/// it): for a column whose end matters as much as its start.
pub fn table_keeping_last(headers: &[&str], rows: &[Vec<String>]) -> String {
    table_cut(headers, rows, true)
}

fn table_cut(headers: &[&str], rows: &[Vec<String>], keep_last: bool) -> String {
    const MAX_CELL: usize = 48;
    let cut = |cell: &str| -> String {
        match cell.char_indices().nth(MAX_CELL) {
            Some((at, _)) => format!("{}…", &cell[..at]),
            None => cell.to_owned(),
        }
    };
    let rows: Vec<Vec<String>> = rows
        .iter()
        .map(|row| {
            row.iter()
                .enumerate()
                .map(|(i, c)| {
                    if keep_last && i + 1 == row.len() {
                        c.clone()
                    } else {
                        cut(c)
                    }
                })
                .collect()
        })
        .collect();
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: Vec<&str>| {
        let mut text = String::new();
        for (i, (cell, width)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 == cells.len() {
                text.push_str(cell);
            } else {
                let _ = write!(text, "{cell:<width$}  ");
            }
        }
        out.push_str(text.trim_end());
        out.push('\n');
    };
    line(headers.to_vec());
    for row in &rows {
        line(row.iter().map(String::as_str).collect());
    }
    out
}

/// A JSON field as a table cell ("-" when absent).
pub fn cell(value: &Value) -> String {
    match value {
        Value::Null => "-".into(),
        Value::String(text) => text.clone(),
        other => other.to_string(),
    }
}

/// A change through the API: its JSON answer, or a line for people.
pub(crate) fn post_and_print(
    config: &Path,
    remote: &RemoteArgs,
    path: &str,
    say: impl FnOnce(&serde_json::Value) -> String,
) -> anyhow::Result<()> {
    let client = AdminClient::locate(remote, config)?;
    let done = client.post(path)?;
    if remote.json {
        outln!("{done}")?;
    } else {
        outln!("{}", say(&done))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_columns_and_cut_long_cells() {
        let text = table(
            &["ID", "SUBJECT"],
            &[
                vec!["a".into(), "0001-1234".into()],
                vec!["longer-id".into(), "x".repeat(60)],
            ],
        );
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "ID         SUBJECT");
        assert_eq!(lines[1], "a          0001-1234");
        assert!(lines[2].ends_with('…'));
        assert_eq!(lines[2].chars().count(), 11 + 48 + 1);
    }

    #[test]
    fn timeouts_are_durations_longer_than_zero() {
        assert_eq!(
            parse_timeout("30s").unwrap().0,
            std::time::Duration::from_secs(30)
        );
        assert!(parse_timeout("0s").is_err());
        assert!(parse_timeout("30").is_err());
    }

    #[test]
    fn urls_are_addresses_or_sockets() {
        assert_eq!(
            parse_url("http://127.0.0.1:9090/").unwrap(),
            AdminListen::Tcp("127.0.0.1:9090".parse().unwrap())
        );
        assert_eq!(
            parse_url("unix:/run/x.sock").unwrap(),
            AdminListen::Unix("/run/x.sock".into())
        );
        assert!(parse_url("http://relay.internal:9090").is_err());
        assert_eq!(
            query(&[
                ("state", Some("dead".into())),
                ("source", None),
                ("subject", Some("0001 12".into()))
            ]),
            "?state=dead&subject=0001+12"
        );
    }
}
