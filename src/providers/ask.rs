//! Which provider module asks about an invoice: [`Provider`]'s
//! reconciliation methods, dispatching to `nubefact/query.rs`,
//! `tusfacturas/query.rs` and `datil/query.rs`. Kept apart from
//! `query.rs`, whose shared types those modules use, so that the imports
//! point one way.

use super::query::{
    Answer, AnswerError, QueryBuildError, QueryCredentials, QueryKeys, QueryRequest,
};
use super::{datil, nubefact, tusfacturas, Provider};

impl Provider {
    /// The keys of this provider's query, read from a webhook body of the
    /// invoice; `None` for generic (no query API) or a body without them.
    pub fn query_keys(&self, webhook_body: &[u8]) -> Option<QueryKeys> {
        match self {
            Provider::TusFacturas => tusfacturas::query::keys(webhook_body),
            Provider::Datil => datil::query::keys(webhook_body),
            Provider::NubeFact => nubefact::query::keys(webhook_body),
            Provider::Generic(_) => None,
        }
    }

    /// The request asking where the invoice stands.
    pub fn build_query(
        &self,
        keys: &QueryKeys,
        creds: &QueryCredentials,
    ) -> Result<QueryRequest, QueryBuildError> {
        use QueryCredentials as C;
        use QueryKeys as K;
        let mismatch = |given, of| QueryBuildError::Mismatch {
            provider: self.name(),
            given,
            of,
        };
        match (self, keys, creds) {
            (Provider::Generic(_), _, _) => Err(QueryBuildError::NoQueryApi(self.name())),
            (
                Provider::NubeFact,
                K::NubeFact {
                    tipo,
                    serie,
                    numero,
                },
                C::NubeFact { token, header },
            ) => nubefact::query::build(*tipo, serie, *numero, token, *header),
            (
                Provider::TusFacturas,
                K::TusFacturas { external_reference },
                C::TusFacturas {
                    apikey,
                    apitoken,
                    usertoken,
                },
            ) => Ok(tusfacturas::query::build(
                external_reference,
                apikey,
                apitoken,
                usertoken,
            )),
            (Provider::Datil, K::Datil { id }, C::Datil { api_key }) => {
                datil::query::build(id, api_key)
            }
            (_, keys, _) if keys.provider_name() != self.name() => {
                Err(mismatch("keys", keys.provider_name()))
            }
            (_, _, creds) => Err(mismatch("credentials", creds.provider_name())),
        }
    }

    /// Reads the provider's answer (whatever its HTTP status) to the query
    /// for `keys`. `subject` is the invoice's subject as the relay knows
    /// it, kept on the notification of a final answer.
    pub fn read_answer(
        &self,
        keys: &QueryKeys,
        subject: &str,
        http_status: u16,
        body: &[u8],
    ) -> Result<Answer, AnswerError> {
        use QueryKeys as K;
        match (self, keys) {
            (
                Provider::NubeFact,
                K::NubeFact {
                    tipo,
                    serie,
                    numero,
                },
            ) => nubefact::query::read(*tipo, serie, *numero, subject, http_status, body),
            (Provider::TusFacturas, K::TusFacturas { external_reference }) => {
                tusfacturas::query::read(external_reference, subject, http_status, body)
            }
            (Provider::Datil, K::Datil { id }) => {
                datil::query::read(id, subject, http_status, body)
            }
            _ => Err(AnswerError::Unreadable(format!(
                "keys of {} given to a {} source",
                keys.provider_name(),
                self.name()
            ))),
        }
    }
}
