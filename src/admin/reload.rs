//! `POST /api/reload`: the config file read again, as SIGHUP does, by
//! whoever holds the reload channel (`serve`); answered with what changed,
//! or a 422 with why nothing did (the old config stays). Audited.

use std::time::Duration;

use super::respond::{audit, no_parameters, ok, Answer, ApiError, Call};

/// `POST /api/reload`
pub(super) async fn post_reload(call: Call) -> Answer {
    let (admin, caller) = (&call.admin, &call.caller);
    no_parameters(&call.query)?;
    let (reply, answer) = tokio::sync::oneshot::channel();
    admin
        .reloads
        .send(reply)
        .await
        .map_err(|_| ApiError::Conflict("this relay cannot reload its config".into()))?;
    // Nobody may be listening (a relay embedded without `serve`).
    let answer = tokio::time::timeout(Duration::from_secs(30), answer)
        .await
        .map_err(|_| ApiError::Conflict("no answer to the reload request".into()))?;
    match answer {
        Ok(Ok(report)) => {
            tracing::info!(by = %caller.name, "config reloaded through the admin API");
            audit(admin, caller, "config.reload", "relay.toml", report.clone()).await?;
            ok(report)
        }
        Ok(Err(problems)) => Err(ApiError::Invalid(problems)),
        Err(_) => Err(ApiError::Conflict("the relay is stopping".into())),
    }
}
