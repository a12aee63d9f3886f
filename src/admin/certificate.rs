//! The page's line about the ACME certificate (`[server.acme]`): its
//! domains, issuer and expiry, or why there is none yet. Pure: the status
//! and the time are passed in; the HTML is escaped.

use super::humane::{escape, when_ms};
use crate::acme::Status;

pub fn line(status: &Status, now_ms: i64) -> String {
    match status.certificate() {
        Some(cert) => {
            let expiry = cert.validity.not_after_ms;
            let class = if now_ms >= expiry { " class=dead" } else { "" };
            let failing = status
                .last_error()
                .map(|e| format!(" <span class=dead>Renewing fails: {}</span>", escape(&e)))
                .unwrap_or_default();
            format!(
                "<p id=certificate{class}>Certificate for <code>{}</code> from {}, expires {}.{failing}</p>",
                escape(&cert.domains.join(", ")),
                escape(&cert.issuer),
                when_ms(now_ms, expiry),
            )
        }
        None => format!(
            "<p id=certificate class=dead>No certificate yet (ACME){}.</p>",
            status
                .last_error()
                .map(|e| format!(": the last order failed: {}", escape(&e)))
                .unwrap_or_default()
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::acme::certificate::CertificateInfo;
    use crate::acme::schedule::Validity;

    #[test]
    fn no_certificate_yet_says_why() {
        let status = Status::default();
        assert!(line(&status, 0).contains("No certificate yet (ACME)."));
        status.set_error(Some("refused <here>".into()));
        assert!(line(&status, 0).contains("the last order failed: refused &lt;here&gt;"));
    }

    #[test]
    fn names_domains_issuer_and_expiry_escaped() {
        let status = Status::default();
        status.set_certificate(CertificateInfo {
            domains: vec!["relay.example.com".into(), "b.example.com".into()],
            issuer: "CN=R10, O=Let's Encrypt".into(),
            validity: Validity {
                not_before_ms: 0,
                not_after_ms: 1_800_000_000_000,
            },
            id: None,
        });
        let shown = line(&status, 1_700_000_000_000);
        assert!(shown.starts_with("<p id=certificate>"), "{shown}");
        assert!(
            shown.contains("<code>relay.example.com, b.example.com</code>"),
            "{shown}"
        );
        assert!(shown.contains("CN=R10, O=Let&#39;s Encrypt"), "{shown}");
        assert!(shown.contains("2027-01-15T08:00:00"), "{shown}");
        let expired = line(&status, 1_900_000_000_000);
        assert!(
            expired.starts_with("<p id=certificate class=dead>"),
            "{expired}"
        );
    }
}
