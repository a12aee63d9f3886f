//! `[sources.NAME.reconcile]`: defaults per provider, each problem at its
//! key and line, secrets read from files (relative to the config file on
//! load, again on each load) and never in `Debug`.

use std::path::Path;
use std::time::Duration;

use super::*;

const NUBEFACT_TOKEN: &str = "nf-secret-7f3a9c";
const TUS_APITOKEN: &str = "tus-apitoken-51d0";
const TUS_USERTOKEN: &str = "tus-usertoken-a2e8";
const TUS_APIKEY: &str = "tus-apikey-90b4";
const DATIL_KEY: &str = "datil-key-c61e";

/// A directory holding one secret file per credential.
fn secrets_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (name, text) in [
        ("nf.token", format!("{NUBEFACT_TOKEN}\n")),
        ("tus.apitoken", TUS_APITOKEN.to_owned()),
        ("tus.usertoken", format!("{TUS_USERTOKEN}\r\n")),
        ("datil.key", DATIL_KEY.to_owned()),
        ("empty", "\n".to_owned()),
        ("two-lines", "first\nsecond\n".to_owned()),
    ] {
        std::fs::write(dir.path().join(name), text).unwrap();
    }
    dir
}

/// A source of `provider` with `reconcile` as its section's keys (line 6
/// is `[sources.s.reconcile]`, its first key on line 7).
fn source(provider: &str, reconcile: &str) -> String {
    format!(
        "[server]\nself_signed = true\n\n[sources.s]\nprovider = \"{provider}\"\ntoken = \"0123456789abcdef\"\n[sources.s.reconcile]\n{reconcile}"
    )
}

fn file(dir: &Path, name: &str) -> String {
    dir.join(name).display().to_string()
}

fn nubefact(dir: &Path, extra: &str) -> String {
    source(
        "nubefact",
        &format!(
            "url = \"https://api.nubefact.com/api/v1/abc\"\ntoken_file = \"{}\"\n{extra}",
            file(dir, "nf.token")
        ),
    )
}

fn tusfacturas(dir: &Path, extra: &str) -> String {
    source(
        "tusfacturas",
        &format!(
            "apikey = \"{TUS_APIKEY}\"\napitoken_file = \"{}\"\nusertoken_file = \"{}\"\n{extra}",
            file(dir, "tus.apitoken"),
            file(dir, "tus.usertoken")
        ),
    )
}

fn datil(dir: &Path, extra: &str) -> String {
    source(
        "datil",
        &format!("api_key_file = \"{}\"\n{extra}", file(dir, "datil.key")),
    )
}

fn reconcile_of(text: &str) -> (SourceConfig, ReconcileConfig) {
    let mut config = Config::parse(text).unwrap_or_else(|p| panic!("{p:?}"));
    let source = config.sources.remove("s").unwrap();
    let reconcile = source.reconcile.clone().expect("reconcile read");
    (source, reconcile)
}

/// The problems' keys and lines.
fn located(text: &str) -> Vec<(String, Option<usize>, String)> {
    Config::parse(text)
        .expect_err("problems")
        .into_iter()
        .map(|p| (p.key, p.line, p.message))
        .collect()
}

fn hours(n: u64) -> Duration {
    Duration::from_secs(n * 3600)
}

#[test]
fn defaults_per_provider_and_for_every_source() {
    let dir = secrets_dir();
    let (source, nf) = reconcile_of(&nubefact(dir.path(), ""));
    assert_eq!(nf.url, "https://api.nubefact.com/api/v1/abc");
    assert_eq!(
        nf.credentials,
        ReconcileAuth::NubeFact {
            token: Secret::new(NUBEFACT_TOKEN),
            header: NubefactHeaderForm::Token,
        }
    );
    assert_eq!((nf.rate.count, nf.rate.per), (1, Duration::from_secs(1)));
    assert_eq!(nf.after, None);
    assert_eq!(source.reconcile_after(), Some(hours(48)));
    assert_eq!(nf.every, [1, 3, 6, 12, 24].map(hours));
    assert_eq!(nf.give_up_after, hours(7 * 24));
    assert_eq!(nf.timeout, Duration::from_secs(10));
    assert_eq!(
        nf.failure_backoff,
        [60, 300, 1800, 3600].map(Duration::from_secs)
    );
    assert_eq!(nf.tls_ca, None);

    let (source, tus) = reconcile_of(&tusfacturas(dir.path(), ""));
    assert_eq!(tus.url, TUSFACTURAS_API);
    assert_eq!(
        tus.credentials,
        ReconcileAuth::TusFacturas {
            apikey: Secret::new(TUS_APIKEY),
            apitoken: Secret::new(TUS_APITOKEN),
            usertoken: Secret::new(TUS_USERTOKEN),
        }
    );
    assert_eq!(source.reconcile_after(), Some(hours(24)));

    let (_, datil) = reconcile_of(&datil(dir.path(), ""));
    assert_eq!(datil.url, DATIL_API);
    assert_eq!(
        datil.credentials,
        ReconcileAuth::Datil {
            api_key: Secret::new(DATIL_KEY)
        }
    );

    let without = Config::parse(&source_without_reconcile()).unwrap();
    assert!(without.sources["s"].reconcile.is_none());
    assert_eq!(without.sources["s"].reconcile_after(), None);
}

fn source_without_reconcile() -> String {
    "[server]\nself_signed = true\n\n[sources.s]\nprovider = \"datil\"\ntoken = \"0123456789abcdef\"\n"
        .to_owned()
}

#[test]
fn every_key_is_read() {
    let dir = secrets_dir();
    let text = nubefact(
        dir.path(),
        "header = \"bare\"\nrate = \"10/m\"\nafter = \"3d\"\nevery = [\"30m\", \"2h\"]\ngive_up_after = \"14d\"\ntimeout = \"3s\"\nfailure_backoff = [\"10s\"]\ntls_ca = \"/etc/ca.pem\"\n",
    );
    let (source, nf) = reconcile_of(&text);
    assert!(matches!(
        nf.credentials,
        ReconcileAuth::NubeFact {
            header: NubefactHeaderForm::Bare,
            ..
        }
    ));
    assert_eq!((nf.rate.count, nf.rate.per), (10, Duration::from_secs(60)));
    assert_eq!(source.reconcile_after(), Some(hours(72)));
    assert_eq!(nf.every, [Duration::from_secs(1800), hours(2)]);
    assert_eq!(nf.give_up_after, hours(14 * 24));
    assert_eq!(nf.timeout, Duration::from_secs(3));
    assert_eq!(nf.failure_backoff, [Duration::from_secs(10)]);
    assert_eq!(nf.tls_ca, Some("/etc/ca.pem".into()));
}

#[test]
fn keys_of_another_provider_are_refused_at_their_line() {
    let dir = secrets_dir();
    let text = datil(dir.path(), "token_file = \"x\"\napikey = \"y\"\n");
    let problems = located(&text);
    let keys: Vec<(&str, Option<usize>)> =
        problems.iter().map(|(k, l, _)| (k.as_str(), *l)).collect();
    assert_eq!(
        keys,
        [
            ("sources.s.reconcile.token_file", Some(9)),
            ("sources.s.reconcile.apikey", Some(10)),
        ],
        "{problems:?}"
    );
    assert!(
        problems[0].2.contains("not a nubefact key")
            && problems[0]
                .2
                .contains("a datil source's reconcile takes url, api_key_file"),
        "{problems:?}"
    );
    assert!(
        problems[1].2.contains("not a tusfacturas key"),
        "{problems:?}"
    );
}

#[test]
fn a_generic_source_has_no_reconcile() {
    let text = "[server]\nself_signed = true\n\n[sources.s]\nprovider = \"generic\"\ntoken = \"0123456789abcdef\"\n[sources.s.reconcile]\nurl = \"https://x.test\"\n";
    let problems = located(text);
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert_eq!(
        (problems[0].0.as_str(), problems[0].1),
        ("sources.s.reconcile", Some(7))
    );
    assert!(problems[0].2.contains("a generic source has no query API"));
}

#[test]
fn a_missing_credential_or_nubefact_url_points_at_the_section() {
    let problems = located(&source("nubefact", "header = \"token\"\n"));
    let keys: Vec<(&str, Option<usize>)> =
        problems.iter().map(|(k, l, _)| (k.as_str(), *l)).collect();
    assert_eq!(
        keys,
        [
            ("sources.s.reconcile.token_file", Some(7)),
            ("sources.s.reconcile.url", Some(7)),
        ],
        "{problems:?}"
    );
    assert!(problems[0].2.contains("needs a file holding the token"));
    assert!(problems[1].2.contains("the account's RUTA"));

    let problems = located(&source("tusfacturas", "apikey = \"k\"\n"));
    let keys: Vec<&str> = problems.iter().map(|(k, _, _)| k.as_str()).collect();
    assert_eq!(
        keys,
        [
            "sources.s.reconcile.apitoken_file",
            "sources.s.reconcile.usertoken_file"
        ]
    );
    let problems = located(&source("tusfacturas", ""));
    assert!(problems
        .iter()
        .any(|(k, _, m)| k == "sources.s.reconcile.apikey" && m.contains("needs the apikey")));
}

#[test]
fn a_url_must_be_http_or_https() {
    let dir = secrets_dir();
    for bad in ["ftp://api.test/x", "api.nubefact.com/x", "https://"] {
        let text = datil(dir.path(), &format!("url = \"{bad}\"\n"));
        let problems = located(&text);
        assert_eq!(problems.len(), 1, "{bad}: {problems:?}");
        assert_eq!(
            (problems[0].0.as_str(), problems[0].1),
            ("sources.s.reconcile.url", Some(9)),
            "{bad}"
        );
    }
    let (_, ok) = reconcile_of(&datil(dir.path(), "url = \"http://127.0.0.1:9000\"\n"));
    assert_eq!(ok.url, "http://127.0.0.1:9000");
}

#[test]
fn secret_files_unreadable_empty_or_of_several_lines_are_refused_by_key() {
    let dir = secrets_dir();
    for (name, says) in [
        ("absent", "cannot read"),
        ("empty", "is empty"),
        ("two-lines", "more than one line"),
    ] {
        let text = source(
            "datil",
            &format!("api_key_file = \"{}\"\n", file(dir.path(), name)),
        );
        let problems = located(&text);
        assert_eq!(problems.len(), 1, "{name}: {problems:?}");
        let (key, line, message) = &problems[0];
        assert_eq!(
            (key.as_str(), *line),
            ("sources.s.reconcile.api_key_file", Some(8))
        );
        assert!(message.contains(says), "{name}: {message}");
        assert!(message.contains(&file(dir.path(), name)), "{message}");
        assert!(
            !message.contains("second"),
            "the text is not shown: {message}"
        );
    }
}

#[test]
fn times_are_checked() {
    let dir = secrets_dir();
    let cases = [
        ("every = []\n", "sources.s.reconcile.every", "names no wait"),
        (
            "every = [\"1h\", \"0s\"]\n",
            "sources.s.reconcile.every[1]",
            "longer than zero",
        ),
        (
            "failure_backoff = []\n",
            "sources.s.reconcile.failure_backoff",
            "names no wait",
        ),
        (
            "give_up_after = \"0s\"\n",
            "sources.s.reconcile.give_up_after",
            "longer than zero",
        ),
        (
            "give_up_after = \"24h\"\n",
            "sources.s.reconcile.give_up_after",
            "no invoice would ever be checked",
        ),
        (
            "timeout = \"0s\"\n",
            "sources.s.reconcile.timeout",
            "longer than zero",
        ),
        (
            "timeout = \"1h\"\n",
            "sources.s.reconcile.timeout",
            "too long",
        ),
        (
            "after = \"1h\"\n",
            "sources.s.reconcile.after",
            "shorter than the source's stuck_after (1d)",
        ),
        (
            "every = \"1h\"\n",
            "sources.s.reconcile.every",
            "invalid type",
        ),
        ("rate = \"0/s\"\n", "sources.s.reconcile.rate", "at least 1"),
        (
            "colour = \"blue\"\n",
            "sources.s.reconcile.colour",
            "unknown field",
        ),
    ];
    for (extra, key, says) in cases {
        let problems = located(&datil(dir.path(), extra));
        assert_eq!(problems.len(), 1, "{extra}: {problems:?}");
        let (found_key, line, message) = &problems[0];
        assert_eq!((found_key.as_str(), *line), (key, Some(9)), "{extra}");
        assert!(message.contains(says), "{extra}: {message}");
    }
    // `after` may be longer than stuck_after, and follows it when set.
    let text = datil(dir.path(), "after = \"30h\"\n").replace(
        "[sources.s.reconcile]",
        "stuck_after = \"2h\"\n[sources.s.reconcile]",
    );
    let (source, _) = reconcile_of(&text);
    assert_eq!(source.reconcile_after(), Some(hours(30)));
}

#[test]
fn secrets_are_not_in_debug_output() {
    let dir = secrets_dir();
    for text in [
        nubefact(dir.path(), ""),
        tusfacturas(dir.path(), ""),
        datil(dir.path(), ""),
    ] {
        let config = Config::parse(&text).unwrap();
        assert!(config.sources["s"].reconcile.is_some());
        let debug = format!("{config:?} {config:#?}");
        for secret in [
            NUBEFACT_TOKEN,
            TUS_APIKEY,
            TUS_APITOKEN,
            TUS_USERTOKEN,
            DATIL_KEY,
        ] {
            assert!(!debug.contains(secret), "{secret} shown in {debug}");
        }
        assert!(debug.contains("Secret(***)"), "{debug}");
    }
}

#[test]
fn the_apikey_placeholder_is_refused_like_other_secrets() {
    let dir = secrets_dir();
    let text = tusfacturas(dir.path(), "").replace(TUS_APIKEY, "CHANGE-ME");
    let problems = located(&text);
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert_eq!(problems[0].0, "sources.s.reconcile.apikey");
    assert!(problems[0].2.contains("placeholder"));
}

/// `check-config` and a reload both go through `Config::load`.
#[test]
fn load_reads_secret_files_from_the_config_directory_and_again_on_reload() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("relay.toml");
    let secrets = dir.path().join("secrets");
    std::fs::create_dir(&secrets).unwrap();
    std::fs::write(secrets.join("datil.key"), "first-key\n").unwrap();
    std::fs::write(
        &path,
        source(
            "datil",
            "api_key_file = \"secrets/datil.key\"\ntls_ca = \"ca.pem\"\n",
        ),
    )
    .unwrap();
    let first = Config::load(&path).unwrap();
    let reconcile = first.sources["s"].reconcile.clone().unwrap();
    assert_eq!(
        reconcile.credentials,
        ReconcileAuth::Datil {
            api_key: Secret::new("first-key")
        }
    );
    assert_eq!(reconcile.tls_ca, Some(dir.path().join("ca.pem")));

    std::fs::write(secrets.join("datil.key"), "rotated-key\n").unwrap();
    let again = Config::load(&path).unwrap();
    assert_eq!(
        again.sources["s"].reconcile.as_ref().unwrap().credentials,
        ReconcileAuth::Datil {
            api_key: Secret::new("rotated-key")
        }
    );

    std::fs::remove_file(secrets.join("datil.key")).unwrap();
    let err = Config::load(&path).unwrap_err().to_string();
    assert!(
        err.starts_with(&format!(
            "{}:8:1: `sources.s.reconcile.api_key_file`: cannot read {}",
            path.display(),
            secrets.join("datil.key").display()
        )),
        "{err}"
    );
}
