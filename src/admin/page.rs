//! The admin page: server-rendered HTML over the same reads as the API,
//! with no script and no build step. The token is asked once, by a form,
//! and opens a session: the cookie holds its random id (HttpOnly,
//! SameSite=Strict, Secure over HTTPS), never the token, and "log out"
//! ends it on the server. Buttons are forms that POST and come back to the
//! page they were on; each POST must come from the page's own origin and
//! carry the session's CSRF token (see `csrf`).

use std::fmt::Write as _;
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use serde_json::Value;

use super::auth;
use super::csrf::{self, CsrfError, CSRF_FIELD};
use super::html::{csrf_input, escape, flags, html, page, redirect, text, LoggedIn};
use super::humane;
use super::notifications::list_notifications;
use super::quarantine::{list_quarantine, release, release_as_generic};
use super::query::Filter;
use super::record_page::{notification, quarantined};
use super::replay::replay_one;
use super::respond::{parse_id, single_parameter, ApiError};
use super::session;
use super::stats::stats_value;
use super::style;
use super::subscriptions::{pause, retry_now, subscriptions};
use super::Admin;
use crate::config::Role;

/// The login form's body is a token, the others' a CSRF token: a few
/// hundred bytes at most.
const MAX_FORM: usize = 4096;
/// How long the login form may take to arrive.
const FORM_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// The page's views, as `admin::ROUTES` lists them (its forms post to
/// more paths, all of them below these).
pub(super) const PAGES: [(&str, &str); 4] = [
    ("GET", "/"),
    ("GET", "/n/{id}"),
    ("GET", "/i"),
    ("GET", "/i/{source}/{subject}"),
];

/// Whether the request is for the page (not the API or the probes).
pub(super) fn is_page(path: &str) -> bool {
    path == "/"
        || path == "/login"
        || path == "/logout"
        || path.starts_with("/n/")
        || path.starts_with("/q/")
        || path.starts_with("/s/")
        || path == "/i"
        || path.starts_with("/i/")
}

pub(super) async fn handle(
    admin: &Arc<Admin>,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, ApiError> {
    let (parts, body) = request.into_parts();
    let path = parts.uri.path().to_owned();
    let query = parts.uri.query().unwrap_or("").to_owned();
    let method = parts.method.clone();
    let https = csrf::is_https(&parts.headers);
    // Anything but a read must come from the page itself, login included
    // (another site must not log the browser in as someone else either).
    let changes = method != Method::GET && method != Method::HEAD;
    if changes {
        if let Err(err) = csrf::check_origin(&parts.uri, &parts.headers) {
            return Ok(refused(&method, &path, &err));
        }
    }
    let session_id = session::cookie(&parts.headers);
    if path == "/login" && method == Method::POST {
        return login(admin, body, session_id, https).await;
    }
    let user = session_id.and_then(|id| logged_in(admin, id));
    if changes {
        let form = read_form(body).await?;
        if let Some(user) = &user {
            if let Err(err) =
                csrf::check_token(&user.csrf, form_field(&form, CSRF_FIELD).as_deref())
            {
                return Ok(refused(&method, &path, &err));
            }
        }
    }
    if path == "/logout" && method == Method::POST {
        if let (Some(id), Some(user)) = (session_id, &user) {
            admin.sessions.close(id);
            tracing::info!(by = %user.caller.name, "logged out of the admin page");
        }
        return Ok(redirect(
            "/",
            HeaderValue::from_str(&session::clear_cookie(https)).ok(),
        ));
    }
    let Some(user) = user else {
        return Ok(html(StatusCode::UNAUTHORIZED, &login_form(None)));
    };
    let caller = &user.caller;
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    match (method, segments.as_slice()) {
        (Method::GET, [""]) => dashboard(admin, &user, &query).await,
        (Method::GET, ["n", id]) => notification(admin, &user, id).await,
        (Method::POST, ["n", id, "replay"]) => {
            caller.require(Role::Admin)?;
            let id = parse_id(id)?;
            let subscription = single_parameter(&query, "subscription")?;
            replay_one(admin, caller, id, subscription).await?;
            Ok(redirect(&format!("/n/{id}"), None))
        }
        (Method::GET, ["q", id]) => quarantined(admin, &user, id).await,
        (Method::POST, ["q", id, "release"]) => {
            caller.require(Role::Admin)?;
            let id = parse_id(id)?;
            let as_generic = release_as_generic(&query)?;
            let released = release(admin, caller, id, as_generic).await?;
            let notification = released["notification"].as_str().unwrap_or_default();
            Ok(redirect(&format!("/n/{notification}"), None))
        }
        (Method::GET, ["i"]) => super::invoice_page::search(admin, &user, &query).await,
        (Method::GET, ["i", source, subject]) => {
            super::invoice_page::timeline(admin, &user, source, subject).await
        }
        (Method::POST, ["i", source, subject, "reconcile"]) => {
            caller.require(Role::Admin)?;
            let decode = |s: &str| {
                percent_encoding::percent_decode_str(s)
                    .decode_utf8_lossy()
                    .into_owned()
            };
            // A failed check is on the timeline too: back to it either way.
            super::reconcile::check_now(admin, caller, &decode(source), &decode(subject)).await?;
            Ok(redirect(&format!("/i/{source}/{subject}"), None))
        }
        (Method::POST, ["s", name, action @ ("pause" | "resume")]) => {
            caller.require(Role::Admin)?;
            let name = percent_encoding::percent_decode_str(name)
                .decode_utf8_lossy()
                .into_owned();
            pause(admin, caller, &name, *action == "pause").await?;
            Ok(redirect("/", None))
        }
        (Method::POST, ["s", name, "retry"]) => {
            caller.require(Role::Admin)?;
            let name = percent_encoding::percent_decode_str(name)
                .decode_utf8_lossy()
                .into_owned();
            retry_now(admin, caller, &name).await?;
            Ok(redirect("/", None))
        }
        (method, _) if method != Method::GET => Err(ApiError::Method(method)),
        _ => Err(ApiError::NoRoute),
    }
}

/// The session of that id, with the caller its token names now (a token
/// a reload removed ends its sessions).
fn logged_in(admin: &Admin, id: &str) -> Option<LoggedIn> {
    let found = admin.sessions.find(id, admin.clock.now_ms())?;
    match admin.tokens.load().find_digest(&found.token_digest) {
        Ok(caller) => Some(LoggedIn {
            caller,
            csrf: found.csrf,
        }),
        Err(_) => {
            admin.sessions.close(id);
            None
        }
    }
}

/// Anyone who reaches the listener may post the login form: a body that
/// never comes must not hold a connection slot (`listen::slots`) for good.
async fn read_form(body: Incoming) -> Result<Bytes, ApiError> {
    Ok(
        tokio::time::timeout(FORM_TIMEOUT, Limited::new(body, MAX_FORM).collect())
            .await
            .map_err(|_| ApiError::Invalid("the form did not arrive in time".into()))?
            .map_err(|_| ApiError::Invalid("the form is too large".into()))?
            .to_bytes(),
    )
}

fn form_field(form: &[u8], name: &str) -> Option<String> {
    form_urlencoded::parse(form)
        .find(|(field, _)| field == name)
        .map(|(_, value)| value.into_owned())
}

/// A change refused because it may come from another site.
fn refused(method: &Method, path: &str, err: &CsrfError) -> Response<Full<Bytes>> {
    tracing::warn!(%method, path, error = %err, "admin page request refused as cross-site");
    html(
        StatusCode::FORBIDDEN,
        &page(
            "refused",
            None,
            &format!(
                "<p class=dead>{}</p><p><a href=/>back</a></p>",
                escape(&err.to_string())
            ),
        ),
    )
}

async fn login(
    admin: &Arc<Admin>,
    body: Incoming,
    old_session: Option<&str>,
    https: bool,
) -> Result<Response<Full<Bytes>>, ApiError> {
    let form = read_form(body).await?;
    let token = form_field(&form, "token")
        .map(|t| t.trim().to_owned())
        .unwrap_or_default();
    match admin.tokens.load().find(&token) {
        Ok(caller) => {
            tracing::info!(by = %caller.name, "logged in to the admin page");
            if let Some(old) = old_session {
                admin.sessions.close(old);
            }
            let id = admin
                .sessions
                .open(auth::digest(&token), admin.clock.now_ms());
            let cookie = HeaderValue::from_str(&session::set_cookie(&id, https)).ok();
            Ok(redirect("/", cookie))
        }
        Err(_) => Ok(html(
            StatusCode::UNAUTHORIZED,
            &login_form(Some("That token is not one of the relay's admin tokens.")),
        )),
    }
}

fn login_form(error: Option<&str>) -> String {
    let error = error
        .map(|e| format!("<p class=dead>{}</p>", escape(e)))
        .unwrap_or_default();
    page(
        "log in",
        None,
        &format!(
            "{error}<form method=post action=/login><label>Admin token <input type=password name=token autofocus></label> <button>log in</button></form>\
             <p class=muted>The session ends with the browser's, after an hour unused, or at \"log out\".</p>"
        ),
    )
}

async fn dashboard(
    admin: &Arc<Admin>,
    user: &LoggedIn,
    query: &str,
) -> Result<Response<Full<Bytes>>, ApiError> {
    let caller = &user.caller;
    caller.require(Role::Viewer)?;
    // An empty field of the filter form means "any".
    let query: String = form_urlencoded::Serializer::new(String::new())
        .extend_pairs(form_urlencoded::parse(query.as_bytes()).filter(|(_, v)| !v.is_empty()))
        .finish();
    let now_ms = admin.clock.now_ms();
    // A filter that cannot be read gets the page, with what to type.
    let (filter, problem) = match Filter::parse(&query, now_ms, false) {
        Ok(filter) => (filter, None),
        Err(err) => (Filter::parse("", now_ms, false)?, Some(err)),
    };
    let stats = stats_value(admin).await?;
    let quarantine = filter.state == Some(super::query::StateFilter::Quarantined);
    let list = if quarantine {
        list_quarantine(&admin.spool, &filter).await?
    } else {
        list_notifications(&admin.spool, &filter).await?
    };

    // Sources with `expect_every` that sent nothing for that long: on top,
    // whatever else the page shows.
    let mut body = String::new();
    for (name, source) in stats["sources"].as_object().into_iter().flatten() {
        if source["silent"] == Value::Bool(true) {
            let _ = write!(
                body,
                "<p class=dead id=silent-{name}>Source {name} is silent: nothing received for {} s (last: {}).</p>",
                text(&source["expect_every_seconds"]),
                humane::when(now_ms, &source["last_received_at"]),
                name = escape(name),
            );
        }
    }
    let results = match &problem {
        Some(err) => format!(
            "<h2 id=notifications>Notifications</h2><p class=problem id=problem>That filter cannot be read: {}. \
             Fill in the fields below (each may be left empty for any; event and invoice take <code>*</code> \
             for any characters), or <a href=/>show everything</a>.</p>{}",
            escape(&err.to_string()),
            filter_form(&filter)
        ),
        None => notification_list(&filter, &query, &list, quarantine, now_ms),
    };
    let filtering = problem.is_some() || !query.is_empty();
    // Results first when the page was asked for some.
    if filtering {
        body.push_str(&results);
        body.push_str("<h2>The relay now</h2>");
    }
    let store = &stats["spool"];
    let bytes = store["bytes"].as_u64().unwrap_or(0);
    let _ = write!(
        body,
        "<p>Spool <code>{}</code>: <span id=spool-size title=\"{bytes} bytes\">{}</span>, {}.</p>",
        text(&store["path"]),
        humane::size(bytes),
        if store["writable"] == Value::Bool(true) {
            "taking notifications".to_owned()
        } else {
            format!(
                "<span class=dead>not writable: {}</span>",
                text(&store["condition"])
            )
        }
    );
    if let Some(status) = admin.certificate.get() {
        body.push_str(&super::certificate::line(status, now_ms));
    }
    // The chart's oldest waiting age is sampled when someone looks.
    let counts = &stats["subscriptions"];
    let oldest = counts
        .as_object()
        .into_iter()
        .flatten()
        .filter_map(|(_, of)| of["oldest_waiting_age_seconds"].as_f64())
        .fold(0.0, f64::max);
    admin.metrics.sample_oldest_waiting(oldest);
    body.push_str(&super::chart::last_hour(&admin.metrics.last_hour()));
    body.push_str(&super::invoice_page::stuck_table(admin));
    body.push_str("<h2 id=subscriptions>Subscriptions</h2>");
    body.push_str(&style::SUBSCRIPTIONS.head(None));
    for sub in subscriptions(admin, caller)["items"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let name = sub["name"].as_str().unwrap_or("");
        let paused = sub["paused"] == Value::Bool(true);
        let of = &counts[name];
        let oldest = match &of["oldest_waiting_received_at"] {
            Value::String(_) => format!(
                " (oldest received {})",
                humane::when(now_ms, &of["oldest_waiting_received_at"])
            ),
            _ => String::new(),
        };
        let number = |key: &str| of[key].as_u64().unwrap_or(0);
        let mut state = format!(
            "{} waiting{oldest}, {}, {} delivered{}",
            number("waiting"),
            humane::dead(number("dead")),
            number("delivered"),
            match (paused, &sub["target_allowed"]) {
                (true, Value::Bool(false)) => " — <b>paused: target no longer allowed</b>",
                (true, _) => " — <b>paused</b>",
                (false, _) => "",
            }
        );
        if caller.role >= Role::Admin {
            let action = if paused { "resume" } else { "pause" };
            let path =
                percent_encoding::utf8_percent_encode(name, percent_encoding::NON_ALPHANUMERIC)
                    .to_string();
            let _ = write!(
                state,
                " <form class=inline method=post action=\"/s/{}/{action}\">{}<button>{action}</button></form>\
                 <form class=inline method=post action=\"/s/{}/retry\">{}<button>retry now</button></form>",
                escape(&path),
                csrf_input(user),
                escape(&path),
                csrf_input(user)
            );
        }
        let _ = write!(
            body,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{state}</td></tr>",
            text(&sub["name"]),
            text(&sub["url"]),
            humane::list(&sub["sources"], "any"),
            humane::list(&sub["events"], "any")
        );
    }
    body.push_str("</table>");
    sources_table(&mut body, &stats["sources"], now_ms);
    body.push_str("<h2>Invoices</h2>");
    body.push_str(&super::invoice_page::search_form(""));
    if !filtering {
        body.push_str(&results);
    }
    let status = if problem.is_some() {
        StatusCode::BAD_REQUEST
    } else {
        StatusCode::OK
    };
    Ok(html(status, &page("notifications", Some(user), &body)))
}

/// The notifications (or quarantined bodies) the filter found, with the
/// filter's form above and the link to the next page below.
fn notification_list(
    filter: &Filter,
    query: &str,
    list: &Value,
    quarantine: bool,
    now_ms: i64,
) -> String {
    let mut body = String::from("<h2 id=notifications>Notifications</h2>");
    let items = list["items"].as_array().map_or(&[][..], Vec::as_slice);
    if !query.is_empty() {
        let _ = write!(
            body,
            "<p class=note>{} matching the filter{}. <a href=/>Clear the filter</a>.</p>",
            humane::count(
                items.len() as u64,
                if quarantine {
                    "quarantined body"
                } else {
                    "notification"
                }
            ),
            if list["next_cursor"].is_string() {
                " on this page"
            } else {
                ""
            },
        );
    }
    body.push_str(&filter_form(filter));
    if quarantine {
        body.push_str(&style::QUARANTINE.head(None));
        for item in items {
            let _ = write!(
                body,
                "<tr><td><a href=\"/q/{id}\">{id}</a></td><td>{}</td><td>{}</td><td>{}</td></tr>",
                humane::when(now_ms, &item["received_at"]),
                text(&item["source"]),
                text(&item["reason"]),
                id = text(&item["id"]),
            );
        }
    } else {
        body.push_str(&style::NOTIFICATIONS.head(None));
        for item in items {
            let deliveries: Vec<String> = item["deliveries"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|d| {
                    format!(
                        "{} <span class={state}>{state}</span> ({})",
                        text(&d["subscription"]),
                        humane::count(d["attempts"].as_u64().unwrap_or(0), "attempt"),
                        state = text(&d["state"])
                    )
                })
                .collect();
            let _ = write!(
                body,
                "<tr><td><a href=\"/n/{id}\">{id}</a></td><td>{}</td><td>{}</td><td>{}{}</td><td>{}</td><td>{}</td></tr>",
                humane::when(now_ms, &item["received_at"]),
                text(&item["source"]),
                text(&item["event"]),
                flags(&item["flags"]),
                super::invoice_page::invoice_link(item),
                deliveries.join("<br>"),
                id = text(&item["id"]),
            );
        }
    }
    body.push_str("</table>");
    if let Some(cursor) = list["next_cursor"].as_str() {
        let mut next = form_urlencoded::Serializer::new(String::new());
        next.extend_pairs(form_urlencoded::parse(query.as_bytes()).filter(|(k, _)| k != "cursor"));
        next.append_pair("cursor", cursor);
        let _ = write!(
            body,
            "<p><a href=\"/?{}\">older →</a></p>",
            escape(&next.finish())
        );
    }
    body
}

fn filter_form(filter: &Filter) -> String {
    let field = |label: &str, name: &str, value: &Option<String>| {
        format!(
            "<label>{label} <input name={name} size=12 value=\"{}\"></label> ",
            escape(value.as_deref().unwrap_or(""))
        )
    };
    let state = match filter.state {
        Some(super::query::StateFilter::Delivery(state)) => state.name(),
        Some(super::query::StateFilter::Quarantined) => "quarantined",
        None => "",
    };
    let options: String = ["", "waiting", "delivered", "dead", "purged", "quarantined"]
        .iter()
        .map(|option| {
            let selected = if *option == state { " selected" } else { "" };
            format!(
                "<option value=\"{option}\"{selected}>{}</option>",
                if option.is_empty() { "any" } else { option }
            )
        })
        .collect();
    format!(
        "<form method=get action=/>{}{}{}{}<label>state <select name=state>{options}</select></label> <button>filter</button></form>",
        field("source", "source", &filter.source),
        field("event", "event", &filter.event),
        field("invoice", "subject", &filter.subject),
        field("subscription", "subscription", &filter.subscription),
    )
}

/// What the spool holds per source, each count a link to that list.
fn sources_table(body: &mut String, sources: &Value, now_ms: i64) {
    body.push_str("<h2>Sources</h2>");
    body.push_str(&style::SOURCES.head(None));
    for (name, source) in sources.as_object().into_iter().flatten() {
        let query: String = form_urlencoded::Serializer::new(String::new())
            .append_pair("source", name)
            .finish();
        let _ = write!(
            body,
            "<tr><td>{}</td><td><a href=\"/?{query}\">{}</a></td><td><a href=\"/?{query}&amp;state=quarantined\">{}</a></td><td>{}</td></tr>",
            escape(name),
            text(&source["stored"]),
            text(&source["quarantined"]),
            humane::when(now_ms, &source["last_received_at"]),
            query = escape(&query),
        );
    }
    body.push_str("</table>");
}
