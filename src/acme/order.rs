//! One ACME order, from the account to the stored certificate, and the
//! CA's ARI window for a certificate: the protocol steps of the task in
//! `acme/mod.rs`, through `instant-acme`.

use std::time::Duration;

use instant_acme::{
    Account, AuthorizationStatus, ChallengeType, Identifier, NewAccount, NewOrder, OrderStatus,
    RetryPolicy,
};

use super::certificate::{CertificateInfo, Loaded};
use super::schedule::RenewalWindow;
use super::store::StoredCertificate;
use super::{Acme, AcmeError, ATTEMPT_TIMEOUT, ORDER_TIMEOUT};
use crate::config::AcmeChallenge;

impl Acme {
    /// The stored account for this directory, or a new one (then stored).
    pub(super) async fn account(&self) -> Result<Account, AcmeError> {
        let directory = &self.config.directory;
        let builder = || match &self.config.directory_ca {
            Some(ca) => Account::builder_with_root(ca),
            None => Account::builder(),
        };
        if let Some(credentials) = self.stored_account().await? {
            return Ok(builder()?.from_credentials(credentials).await?);
        }
        let contact = self.config.contact_urls();
        let contact: Vec<&str> = contact.iter().map(String::as_str).collect();
        let (account, credentials) = builder()?
            .create(
                &NewAccount {
                    contact: &contact,
                    terms_of_service_agreed: true,
                    only_return_existing: false,
                },
                directory.clone(),
                None,
            )
            .await?;
        self.save_account(credentials).await?;
        tracing::info!(directory = %directory, account = %account.id(), "ACME account created");
        Ok(account)
    }

    /// One order, from the new order to the stored certificate.
    pub(super) async fn order(&self, account: &Account) -> Result<Loaded, AcmeError> {
        let mut tokens = Vec::new();
        let ordered = self.order_answering(account, &mut tokens).await;
        self.clear_challenges(&self.config.domains, &tokens).await;
        ordered
    }

    /// [`Acme::order`], noting each HTTP-01 token it answers in `tokens`.
    async fn order_answering(
        &self,
        account: &Account,
        tokens: &mut Vec<String>,
    ) -> Result<Loaded, AcmeError> {
        tracing::info!(domains = ?self.config.domains, challenge = %self.config.challenge, "ordering a certificate");
        let identifiers: Vec<Identifier> = self
            .config
            .domains
            .iter()
            .map(|d| Identifier::Dns(d.clone()))
            .collect();
        let mut order = account.new_order(&NewOrder::new(&identifiers)).await?;
        let kind = match self.config.challenge {
            AcmeChallenge::TlsAlpn01 => ChallengeType::TlsAlpn01,
            AcmeChallenge::Http01 => ChallengeType::Http01,
        };
        let mut authorizations = order.authorizations();
        while let Some(authorization) = authorizations.next().await {
            let mut authorization = authorization?;
            match authorization.status {
                AuthorizationStatus::Pending => {}
                AuthorizationStatus::Valid => continue,
                other => {
                    return Err(AcmeError::Challenge(format!(
                        "an authorization is {other:?}"
                    )))
                }
            }
            let mut challenge = authorization.challenge(kind.clone()).ok_or_else(|| {
                AcmeError::Challenge(format!(
                    "the CA offers no {} challenge",
                    self.config.challenge
                ))
            })?;
            let key_authorization = challenge.key_authorization();
            match self.config.challenge {
                AcmeChallenge::TlsAlpn01 => {
                    let domain = challenge.identifier().to_string();
                    self.answer_tls(&domain, key_authorization.digest().as_ref())
                        .await?;
                }
                AcmeChallenge::Http01 => {
                    tokens.push(challenge.token.clone());
                    self.answer_http(&challenge.token, key_authorization.as_str())
                        .await?;
                }
            }
            challenge.set_ready().await?;
        }
        let retries = RetryPolicy::new()
            .initial_delay(Duration::from_millis(100))
            .backoff(1.5)
            .timeout(ORDER_TIMEOUT);
        let status = order.poll_ready(&retries).await?;
        if status != OrderStatus::Ready {
            let detail = order
                .state()
                .error
                .as_ref()
                .map_or_else(|| "no detail".to_owned(), |p| p.to_string());
            return Err(AcmeError::Order { status, detail });
        }
        let key = rcgen::KeyPair::generate().map_err(|e| AcmeError::Certificate(e.to_string()))?;
        let mut params = rcgen::CertificateParams::new(self.config.domains.clone())
            .map_err(|e| AcmeError::Certificate(e.to_string()))?;
        params.distinguished_name = rcgen::DistinguishedName::new();
        let csr = params
            .serialize_request(&key)
            .map_err(|e| AcmeError::Certificate(e.to_string()))?;
        order.finalize_csr(csr.der()).await?;
        let chain_pem = order.poll_certificate(&retries).await?;
        let stored = StoredCertificate {
            chain_pem,
            key_pem: key.serialize_pem(),
        };
        let loaded = Loaded::from_stored(&stored)?;
        self.save_certificate(&stored).await?;
        Ok(loaded)
    }
}

/// The CA's ARI window for `certificate`, where the CA has one, and when
/// it asks to be asked again (its Retry-After).
pub(super) async fn renewal_window(
    account: &Account,
    certificate: &CertificateInfo,
) -> Option<(RenewalWindow, Duration)> {
    let id = certificate.id.as_ref()?;
    match tokio::time::timeout(ATTEMPT_TIMEOUT, account.renewal_info(id))
        .await
        .ok()?
    {
        Ok((info, recheck)) => Some((
            RenewalWindow {
                start_ms: (info.suggested_window.start.unix_timestamp_nanos() / 1_000_000) as i64,
                end_ms: (info.suggested_window.end.unix_timestamp_nanos() / 1_000_000) as i64,
            },
            recheck,
        )),
        Err(instant_acme::Error::Unsupported(_)) => None,
        Err(err) => {
            tracing::debug!(error = %err, "no ARI window; renewing at a third of the lifetime");
            None
        }
    }
}
