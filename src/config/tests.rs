use super::*;

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

fn minimal() -> String {
    "[server]\nself_signed = true\n\n[sources.tus]\nprovider = \"tusfacturas\"\ntoken = \"0123456789abcdef\"\n".to_owned()
}

#[test]
fn the_shipped_relay_toml_is_valid() {
    let text = include_str!("../../relay.toml");
    let config = Config::parse(text).expect("relay.toml must validate");
    for name in ["tusfacturas", "datil", "nubefact"] {
        assert!(config.sources.contains_key(name), "missing source {name}");
    }
    assert!(config.server.self_signed);
}

#[test]
fn defaults_apply() {
    let config = Config::parse(&minimal()).unwrap();
    assert_eq!(config.spool.dedup_window.0, Duration::from_secs(72 * 3600));
    assert_eq!(config.server.max_body.0, 1 << 20);
    assert!(config.spool.sync_data);
}

#[test]
fn unknown_keys_are_errors_with_line_and_key() {
    let text = format!("{}colour = \"blue\"\n", minimal());
    let problems = Config::parse(&text).unwrap_err();
    assert_eq!(problems.len(), 1);
    assert_eq!(problems[0].line, Some(7));
    assert!(problems[0].message.contains("colour"), "{:?}", problems[0]);
}

#[test]
fn a_bad_value_names_its_key_and_line() {
    let text = format!("{}rate = \"fast\"\n", minimal());
    let problems = Config::parse(&text).unwrap_err();
    assert_eq!(problems[0].key, "sources.tus.rate");
    assert_eq!(problems[0].line, Some(7));
    assert!(problems[0].message.contains("invalid rate"));
}

#[test]
fn every_validation_problem_is_listed() {
    let text = format!(
        "{}\n[sources.open]\nprovider = \"generic\"\n\n[[subscriptions]]\nname = \"erp\"\nurl = \"ftp://x\"\nsecret = \"nope\"\nsources = [\"ghost\"]\nschedule = []\n",
        minimal()
    );
    let problems = Config::parse(&text).unwrap_err();
    let keys: Vec<&str> = problems.iter().map(|p| p.key.as_str()).collect();
    assert_eq!(
        keys,
        [
            "sources.open",
            "subscriptions[0].url",
            "subscriptions[0].sources[0]",
            "subscriptions[0].secret",
            "subscriptions[0].schedule"
        ]
    );
    let url = &problems[1];
    assert_eq!(url.line, Some(13));
    assert!(problems.iter().all(|p| p.line.is_some()));
}

#[test]
fn tls_modes_are_exclusive() {
    let text = "[server]\ntls = false\nself_signed = true\n";
    let problems = Config::parse(text).unwrap_err();
    assert_eq!(problems[0].key, "server.tls");
    let problems = Config::parse("[server]\ntls_cert = \"a.pem\"\n").unwrap_err();
    assert_eq!(problems[0].key, "server.tls_key");
}

#[test]
fn load_names_the_file_and_resolves_paths() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("relay.toml");
    std::fs::write(
        &path,
        format!("{}[spool]\npath = \"spool\"\nbogus = 1\n", minimal()),
    )
    .unwrap();
    let err = Config::load(&path).unwrap_err().to_string();
    assert!(err.starts_with(&format!("{}:9:", path.display())), "{err}");
    std::fs::write(&path, format!("{}[spool]\npath = \"spool\"\n", minimal())).unwrap();
    let config = Config::load(&path).unwrap();
    assert_eq!(config.spool.path, dir.path().join("spool"));
}

#[test]
fn subscriptions_match_sources_and_event_patterns() {
    let text = format!(
        "{}\n[[subscriptions]]\nname = \"erp\"\nurl = \"http://127.0.0.1:9/x\"\nsecret = \"{SECRET}\"\nsources = [\"tus\"]\nevents = [\"facturacion.*\"]\n",
        minimal()
    );
    let config = Config::parse(&text).unwrap();
    let sub = &config.subscriptions[0];
    assert!(sub.matches("tus", "facturacion.emitido"));
    assert!(!sub.matches("tus", "comprobante.aceptado"));
    assert!(!sub.matches("other", "facturacion.emitido"));
    assert_eq!(sub.retry_schedule().unwrap().max_attempts(), 6);
}

#[test]
fn wildcards() {
    assert!(wildcard_match("*", ""));
    assert!(wildcard_match("a.*", "a.b"));
    assert!(wildcard_match("*.emitido", "facturacion.emitido"));
    assert!(wildcard_match("a*b*c", "aXXbYYc"));
    assert!(!wildcard_match("a*b*c", "aXXcYYb"));
    assert!(!wildcard_match("ab*ba", "aba"));
    assert!(wildcard_match("exact", "exact"));
    assert!(!wildcard_match("exact", "exactly"));
}

#[test]
fn a_bad_network_names_its_list_entry_and_line() {
    let text = minimal().replace(
        "[server]\n",
        "[server]\ntrusted_proxies = [\"10.0.0.0/8\", \"10.0.0.0/99\"]\n",
    ) + "allow_ips = [\"not an address\"]\n";
    let problems = Config::parse(&text).unwrap_err();
    let found: Vec<(&str, Option<usize>)> =
        problems.iter().map(|p| (p.key.as_str(), p.line)).collect();
    assert_eq!(
        found,
        [
            ("server.trusted_proxies[1]", Some(2)),
            ("sources.tus.allow_ips[0]", Some(8))
        ]
    );
}

#[test]
fn type_errors_and_unknown_keys_in_several_sections_are_all_listed() {
    let text = format!(
        "{}colour = \"blue\"\n\n[spool]\ndedup_window = 5\n\n[sources.other]\nprovider = \"sap\"\ntoken = \"0123456789abcdef\"\n\n[[subscriptions]]\nname = \"erp\"\nurl = \"http://127.0.0.1:1/\"\nsecret = \"{SECRET}\"\nmax_in_flight = \"many\"\n\n[extra]\nx = 1\n",
        minimal()
    );
    let problems = Config::parse(&text).unwrap_err();
    let found: Vec<(Option<usize>, &str)> =
        problems.iter().map(|p| (p.line, p.key.as_str())).collect();
    assert_eq!(
        found,
        [
            (Some(7), "sources.tus.colour"),
            (Some(10), "spool.dedup_window"),
            (Some(13), "sources.other.provider"),
            (Some(20), "subscriptions[0].max_in_flight"),
            (Some(22), "extra"),
        ],
        "{problems:?}"
    );
    assert!(problems[4].message.contains("unknown key `extra`"));
}

#[test]
fn a_syntax_error_is_located() {
    let problems = Config::parse("[server]\nlisten = \n").unwrap_err();
    assert_eq!(problems[0].line, Some(2), "{problems:?}");
}
