//! The admin routes, as a table: each route's method, path, the role it
//! needs and its handler are declared once, in [`TABLE`], and the role is
//! checked here from the table before any handler runs. The probes
//! (`/healthz`, `/readyz`, `/metrics`) need no token; every other route
//! authenticates first, so an unknown path without a token is a 401, with
//! one a 404, and a known path asked with another method a 405. The page's
//! paths go to `page`, which logs in by session. Every failure is an
//! [`ApiError`] answered as JSON with its status.

use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Response};
use http_body_util::{Either, Full};
use hyper::body::Incoming;

use super::backup::{self, AdminBody};
use super::html;
use super::respond::{ApiError, Call, Reply};
use super::Admin;
use super::{
    audit_log, backfill, health, invoices, jobs, notifications, page, purge, quarantine, reconcile,
    reload, replay, stats, subscriptions,
};
use crate::config::Role;
use crate::listen::slots::RequestUnderWay;

/// Every route, as `doc/openapi.json` documents it (a test holds the two
/// and the live listener to each other): the table's, then the page's.
pub const ROUTES: [(&str, &str); TABLE.len() + page::PAGES.len()] = {
    let mut routes = [("", ""); TABLE.len() + page::PAGES.len()];
    let mut i = 0;
    while i < TABLE.len() {
        routes[i] = (TABLE[i].method, TABLE[i].path);
        i += 1;
    }
    let mut j = 0;
    while j < page::PAGES.len() {
        routes[i + j] = page::PAGES[j];
        j += 1;
    }
    routes
};

/// The routes: method (`GET` answers `HEAD` too), path (`{…}` is any one
/// segment, handed to the handler as sent), who may call it, and its handler.
const TABLE: [Route; 30] = [
    Route::open("GET", "/healthz", |_, _| Box::pin(health::healthz())),
    Route::open("GET", "/readyz", |admin, _| {
        Box::pin(async move { health::readyz(&admin).await })
    }),
    Route::open("GET", "/metrics", |admin, request| {
        Box::pin(health::get_metrics(admin, request))
    }),
    Route::json("GET", "/api/notifications", Role::Viewer, |call| {
        Box::pin(notifications::get_list(call))
    }),
    Route::json("GET", "/api/notifications/{id}", Role::Viewer, |call| {
        Box::pin(notifications::get_one(call))
    }),
    Route::json(
        "POST",
        "/api/notifications/{id}/replay",
        Role::Admin,
        |call| Box::pin(replay::post_one(call)),
    ),
    Route::json("POST", "/api/replay", Role::Admin, |call| {
        Box::pin(replay::post_bulk(call))
    }),
    Route::json("POST", "/api/purge", Role::Admin, |call| {
        Box::pin(purge::post_purge(call))
    }),
    Route::json("GET", "/api/jobs/{id}", Role::Viewer, |call| {
        Box::pin(jobs::get_one(call))
    }),
    Route::streamed("POST", "/api/spool/backup", Role::Admin, |call| {
        Box::pin(backup::post_backup(call))
    }),
    Route::json("GET", "/api/quarantine", Role::Viewer, |call| {
        Box::pin(quarantine::get_list(call))
    }),
    Route::json("GET", "/api/quarantine/{id}", Role::Viewer, |call| {
        Box::pin(quarantine::get_one(call))
    }),
    Route::json(
        "POST",
        "/api/quarantine/{id}/release",
        Role::Admin,
        |call| Box::pin(quarantine::post_release(call)),
    ),
    Route::json(
        "POST",
        "/api/quarantine/{id}/discard",
        Role::Admin,
        |call| Box::pin(quarantine::post_discard(call)),
    ),
    Route::json("GET", "/api/stats", Role::Viewer, |call| {
        Box::pin(stats::get_stats(call))
    }),
    // A subscriber lists and creates subscriptions and manages those it
    // created (`subscriptions` checks which are its own).
    Route::json("GET", "/api/subscriptions", Role::Subscriber, |call| {
        Box::pin(subscriptions::get_list(call))
    }),
    Route::json("POST", "/api/subscriptions", Role::Subscriber, |call| {
        Box::pin(subscriptions::post_create(call))
    }),
    Route::json(
        "DELETE",
        "/api/subscriptions/{name}",
        Role::Subscriber,
        |call| Box::pin(subscriptions::delete_one(call)),
    ),
    Route::json(
        "POST",
        "/api/subscriptions/{name}/pause",
        Role::Subscriber,
        |call| Box::pin(subscriptions::post_pause(call, true)),
    ),
    Route::json(
        "POST",
        "/api/subscriptions/{name}/resume",
        Role::Subscriber,
        |call| Box::pin(subscriptions::post_pause(call, false)),
    ),
    Route::json(
        "POST",
        "/api/subscriptions/{name}/retry",
        Role::Subscriber,
        |call| Box::pin(subscriptions::post_retry(call)),
    ),
    Route::json(
        "POST",
        "/api/subscriptions/{name}/backfill",
        Role::Subscriber,
        |call| Box::pin(backfill::post_backfill(call)),
    ),
    Route::json(
        "POST",
        "/api/subscriptions/{name}/test",
        Role::Subscriber,
        |call| Box::pin(backfill::post_test(call)),
    ),
    Route::json(
        "POST",
        "/api/subscriptions/{name}/rotate-secret",
        Role::Subscriber,
        |call| Box::pin(subscriptions::post_rotate_secret(call)),
    ),
    Route::json("POST", "/api/reload", Role::Admin, |call| {
        Box::pin(reload::post_reload(call))
    }),
    Route::json("GET", "/api/audit", Role::Viewer, |call| {
        Box::pin(audit_log::get_log(call))
    }),
    Route::json("GET", "/api/invoices", Role::Viewer, |call| {
        Box::pin(invoices::get_list(call))
    }),
    Route::json(
        "GET",
        "/api/invoices/{source}/{subject}",
        Role::Viewer,
        |call| Box::pin(invoices::get_one(call)),
    ),
    Route::json("POST", "/api/invoices/reconcile", Role::Admin, |call| {
        Box::pin(reconcile::post_bulk(call))
    }),
    Route::json(
        "POST",
        "/api/invoices/{source}/{subject}/reconcile",
        Role::Admin,
        |call| Box::pin(reconcile::post_one(call)),
    ),
];

// === impl Route ===

/// A probe: open to anyone who can reach the listener.
type Probe = fn(Arc<Admin>, Request<Incoming>) -> Reply<Full<Bytes>>;

#[derive(Clone, Copy)]
enum Access {
    Anyone(Probe),
    Needs(Role, Handler),
}

#[derive(Clone, Copy)]
enum Handler {
    /// Answers whole (JSON).
    Json(fn(Call) -> Reply<Full<Bytes>>),
    /// Streams its answer (the backup archive).
    Streamed(fn(Call) -> Reply<AdminBody>),
}

#[derive(Clone, Copy)]
struct Route {
    method: &'static str,
    path: &'static str,
    access: Access,
}

impl Route {
    const fn open(method: &'static str, path: &'static str, probe: Probe) -> Route {
        Route {
            method,
            path,
            access: Access::Anyone(probe),
        }
    }

    const fn json(
        method: &'static str,
        path: &'static str,
        role: Role,
        handler: fn(Call) -> Reply<Full<Bytes>>,
    ) -> Route {
        Route {
            method,
            path,
            access: Access::Needs(role, Handler::Json(handler)),
        }
    }

    const fn streamed(
        method: &'static str,
        path: &'static str,
        role: Role,
        handler: fn(Call) -> Reply<AdminBody>,
    ) -> Route {
        Route {
            method,
            path,
            access: Access::Needs(role, Handler::Streamed(handler)),
        }
    }

    /// The `{…}` segments of a path this route's pattern fits.
    fn params(&self, segments: &[&str]) -> Option<Vec<String>> {
        let pattern: Vec<&str> = self.path.trim_matches('/').split('/').collect();
        if pattern.len() != segments.len() {
            return None;
        }
        let mut params = Vec::new();
        for (want, got) in pattern.iter().zip(segments) {
            if want.starts_with('{') {
                params.push((*got).to_owned());
            } else if want != got {
                return None;
            }
        }
        Some(params)
    }

    fn allows(&self, method: &Method) -> bool {
        self.method == method.as_str() || (self.method == "GET" && method == Method::HEAD)
    }
}

// === routing ===

pub(super) async fn handle(
    admin: Arc<Admin>,
    request: Request<Incoming>,
    under_way: RequestUnderWay,
) -> Response<AdminBody> {
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    if page::is_page(&path) {
        let response = match page::handle(&admin, request).await {
            Ok(response) => response,
            Err(err) => html::error_page(&err),
        };
        return response.map(Either::Left);
    }
    match route(admin, request, under_way).await {
        Ok(response) => response,
        Err(err) => {
            if err.status().is_server_error() {
                tracing::warn!(%method, path, error = %err, "admin request failed");
            } else {
                tracing::debug!(%method, path, error = %err, "admin request refused");
            }
            err.into_response().map(Either::Left)
        }
    }
}

/// The table's route for the request, its role checked, answered.
async fn route(
    admin: Arc<Admin>,
    request: Request<Incoming>,
    under_way: RequestUnderWay,
) -> Result<Response<AdminBody>, ApiError> {
    let path = request.uri().path().to_owned();
    let method = request.method().clone();
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let fitting: Vec<(Route, Vec<String>)> = TABLE
        .iter()
        .filter_map(|route| Some((*route, route.params(&segments)?)))
        .collect();
    // The probes answer before any token is looked at.
    if let Some((route, _)) = fitting
        .iter()
        .find(|(route, _)| matches!(route.access, Access::Anyone(_)))
    {
        return match route.access {
            Access::Anyone(probe) if route.allows(&method) => {
                Ok(probe(admin, request).await?.map(Either::Left))
            }
            _ => Err(ApiError::Method(method)),
        };
    }
    let caller = admin.tokens.load().authenticate(request.headers())?;
    let Some((route, params)) = fitting.iter().find(|(route, _)| route.allows(&method)) else {
        return Err(match fitting.is_empty() {
            true => ApiError::NoRoute,
            false => ApiError::Method(method),
        });
    };
    let Access::Needs(role, handler) = route.access else {
        return Err(ApiError::NoRoute);
    };
    caller.require(role)?;
    let call = Call {
        admin,
        caller,
        params: params.clone(),
        query: request.uri().query().unwrap_or("").to_owned(),
        request,
        under_way,
    };
    match handler {
        Handler::Json(handler) => Ok(handler(call).await?.map(Either::Left)),
        Handler::Streamed(handler) => handler(call).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_route_is_declared_once_and_routes_lists_the_table_then_the_pages() {
        let mut seen = std::collections::BTreeSet::new();
        for route in &TABLE {
            assert!(
                seen.insert((route.method, route.path)),
                "{} {} twice",
                route.method,
                route.path
            );
        }
        assert_eq!(ROUTES.len(), 34);
        assert_eq!(ROUTES[0], ("GET", "/healthz"));
        assert_eq!(ROUTES[TABLE.len()], ("GET", "/"));
        // Only the probes are open; each of them is a GET.
        let open: Vec<&str> = TABLE
            .iter()
            .filter(|r| matches!(r.access, Access::Anyone(_)))
            .map(|r| r.path)
            .collect();
        assert_eq!(open, ["/healthz", "/readyz", "/metrics"]);
    }

    #[test]
    fn a_pattern_fits_its_own_paths_and_hands_over_the_segments_as_sent() {
        let route = |path: &str| TABLE.iter().find(|r| r.path == path).copied().unwrap();
        let segments = |path: &'static str| path.trim_matches('/').split('/').collect::<Vec<_>>();
        let invoice = route("/api/invoices/{source}/{subject}");
        assert_eq!(
            invoice.params(&segments("/api/invoices/tus/0001-%2F42")),
            Some(vec!["tus".to_owned(), "0001-%2F42".to_owned()])
        );
        assert_eq!(invoice.params(&segments("/api/invoices/tus")), None);
        assert_eq!(invoice.params(&segments("/api/quarantine/tus/x")), None);
        let health = route("/healthz");
        assert_eq!(health.params(&segments("/healthz/")), Some(Vec::new()));
        assert!(health.allows(&Method::HEAD) && !health.allows(&Method::POST));
        let pause = route("/api/subscriptions/{name}/pause");
        assert!(pause.allows(&Method::POST) && !pause.allows(&Method::GET));
        // Roles come from the table: a subscriber's routes are the
        // subscriptions', a viewer's the reads, an admin's the changes.
        for route in &TABLE {
            let Access::Needs(role, _) = route.access else {
                continue;
            };
            let expected = if route.path.starts_with("/api/subscriptions") {
                Role::Subscriber
            } else if route.method == "GET" {
                Role::Viewer
            } else {
                Role::Admin
            };
            assert_eq!(role, expected, "{} {}", route.method, route.path);
        }
    }
}
