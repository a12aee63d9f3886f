use super::validate::is_example_secret;
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
    assert!(config.spool.sled.sync_data);
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
            "subscriptions[0].secret",
            "subscriptions[0].sources[0]",
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
    assert_eq!(config.spool.sled.path, dir.path().join("spool"));
}

#[test]
fn subscriptions_match_sources_and_event_patterns() {
    let text = format!(
        "{}\n[[subscriptions]]\nname = \"erp\"\nurl = \"http://127.0.0.1:9/x\"\nsecret = \"{SECRET}\"\nsources = [\"tus\"]\nevents = [\"facturacion.*\"]\n",
        minimal()
    );
    let config = Config::parse(&text).unwrap();
    let sub = &config.subscriptions[0];
    assert!(sub.matches("tus", "facturacion.emitido", InvoiceStatus::Accepted));
    assert!(!sub.matches("tus", "comprobante.aceptado", InvoiceStatus::Accepted));
    assert!(!sub.matches("other", "facturacion.emitido", InvoiceStatus::Accepted));
    assert_eq!(sub.retry_schedule().unwrap().max_attempts(), 6);
}

#[test]
fn a_target_url_with_spaces_or_a_bad_host_is_refused_at_its_key() {
    for (url, said) in [
        (
            " http://billing.internal/in",
            "spaces or control characters",
        ),
        (
            "http://billing.internal/in\\n",
            "spaces or control characters",
        ),
        ("http://x..apps.test/in", "empty label"),
    ] {
        let text = format!(
            "{}\n[[subscriptions]]\nname = \"erp\"\nurl = \"{url}\"\nsecret = \"{SECRET}\"\n",
            minimal()
        );
        let problems = Config::parse(&text).expect_err(url);
        assert_eq!(problems.len(), 1, "{url:?}: {problems:?}");
        assert_eq!(problems[0].key, "subscriptions[0].url");
        assert!(problems[0].line.is_some(), "{problems:?}");
        assert!(problems[0].message.contains(said), "{url:?}: {problems:?}");
    }
    let bad = minimal() + "[admin]\nallowed_targets = [\"x..apps.test\"]\n";
    assert!(Config::parse(&bad).is_err(), "the same host syntax");
}

#[test]
fn a_statuses_filter_takes_the_named_statuses_and_refuses_other_words() {
    let subscription = |statuses: &str| {
        format!(
            "{}\n[[subscriptions]]\nname = \"erp\"\nurl = \"http://127.0.0.1:9/x\"\nsecret = \"{SECRET}\"\nstatuses = {statuses}\n",
            minimal()
        )
    };
    let config = Config::parse(&subscription(r#"["accepted", "rejected"]"#)).unwrap();
    let sub = &config.subscriptions[0];
    assert!(sub.matches("tus", "facturacion.emitido", InvoiceStatus::Accepted));
    assert!(sub.matches("tus", "facturacion.error", InvoiceStatus::Rejected));
    assert!(!sub.matches("tus", "facturacion.encolado", InvoiceStatus::Queued));
    let problems = Config::parse(&subscription(r#"["emitido"]"#)).unwrap_err();
    assert!(
        problems.iter().any(|p| p.key.contains("statuses")),
        "{problems:?}"
    );
    assert_eq!(sub.on_superseded, OnSuperseded::Mark, "the default");
    let problems = Config::parse(&subscription("[]")).unwrap_err();
    assert!(
        problems
            .iter()
            .any(|p| p.key.contains("statuses") && p.message.contains("takes no status")),
        "{problems:?}"
    );
}

#[test]
fn expect_every_is_a_duration_of_a_second_or_more() {
    let with = |every: &str| {
        Config::parse(&minimal().replace(
            "provider = \"tusfacturas\"\n",
            &format!("provider = \"tusfacturas\"\nexpect_every = \"{every}\"\n"),
        ))
    };
    let config = with("6h").unwrap();
    let every = config
        .sources
        .values()
        .find_map(|s| s.expect_every)
        .unwrap();
    assert_eq!(every.0, std::time::Duration::from_secs(6 * 3600));
    let problems = with("10ms").unwrap_err();
    assert!(
        problems.iter().any(|p| p.key.contains("expect_every")),
        "{problems:?}"
    );
}

#[test]
fn on_superseded_takes_deliver_mark_or_skip() {
    let with = |choice: &str| {
        Config::parse(&format!(
            "{}\n[[subscriptions]]\nname = \"erp\"\nurl = \"http://127.0.0.1:9/x\"\nsecret = \"{SECRET}\"\non_superseded = \"{choice}\"\n",
            minimal()
        ))
    };
    for (choice, wanted) in [
        ("deliver", OnSuperseded::Deliver),
        ("mark", OnSuperseded::Mark),
        ("skip", OnSuperseded::Skip),
    ] {
        assert_eq!(with(choice).unwrap().subscriptions[0].on_superseded, wanted);
    }
    let problems = with("drop").unwrap_err();
    assert!(
        problems.iter().any(|p| p.key.contains("on_superseded")),
        "{problems:?}"
    );
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
            ("server.trusted_proxies", Some(2)),
            ("sources.tus.allow_ips", Some(8))
        ]
    );
    // The message names the entry.
    assert!(
        problems[0].message.contains("\"10.0.0.0/99\""),
        "{problems:?}"
    );
    assert!(
        problems[1].message.contains("\"not an address\""),
        "{problems:?}"
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

#[test]
fn a_bad_value_hides_no_other_problem_in_its_section_or_the_file() {
    // The issue's case: a bad duration, a source without authentication
    // and max_in_flight = 0 in one file, plus a bad duration beside other
    // problems inside one subscription.
    let text = format!(
        "{}\n[spool]\ndedup_window = \"15 seconds\"\n\n[forwarder]\nmax_in_flight = 0\n\n[sources.open]\nprovider = \"generic\"\nrate = \"fast\"\n\n[[subscriptions]]\nname = \"erp\"\nurl = \"http://127.0.0.1:9/\"\nsecret = \"{SECRET}\"\nschedule = [\"5m\", \"1y\"]\ntimeout_first = \"3h\"\nmax_in_flight = 0\n",
        minimal()
    );
    let problems = Config::parse(&text).unwrap_err();
    let found: Vec<(Option<usize>, &str)> =
        problems.iter().map(|p| (p.line, p.key.as_str())).collect();
    assert_eq!(
        found,
        [
            (Some(9), "spool.dedup_window"),
            (Some(12), "forwarder.max_in_flight"),
            (Some(14), "sources.open"),
            (Some(16), "sources.open.rate"),
            (Some(22), "subscriptions[0].schedule"),
            (Some(23), "subscriptions[0].timeout_first"),
            (Some(24), "subscriptions[0].max_in_flight"),
        ],
        "{problems:?}"
    );
    assert!(problems[0].message.contains("\"15 seconds\""));
    assert!(problems[4].message.contains("unknown unit \"y\""));
    assert!(
        problems[5].message.contains("at most 10m"),
        "{}",
        problems[5].message
    );
    assert!(problems.iter().all(|p| p.column.is_some()));
}

#[test]
fn absurd_durations_and_sizes_are_refused_with_their_bounds() {
    let text = format!(
        "{}\n[[subscriptions]]\nname = \"erp\"\nurl = \"http://127.0.0.1:9/\"\nsecret = \"{SECRET}\"\nschedule = [\"5m\", \"365d\"]\n",
        minimal().replace("[server]\n", "[server]\nmax_body = \"1GiB\"\nidle_timeout = \"0s\"\n")
    );
    let problems = Config::parse(&text).unwrap_err();
    let keys: Vec<&str> = problems.iter().map(|p| p.key.as_str()).collect();
    assert_eq!(
        keys,
        [
            "server.max_body",
            "server.idle_timeout",
            "subscriptions[0].schedule[1]"
        ],
        "{problems:?}"
    );
    assert!(
        problems[2].message.contains("365d is too long: at most 7d"),
        "{problems:?}"
    );
    let problems =
        Config::parse(&minimal().replace("[server]\n", "[server]\nmax_body = \"1MB\"\n"))
            .unwrap_err();
    assert!(
        problems[0].message.contains("did you mean \"1MiB\""),
        "{problems:?}"
    );
}

#[test]
fn a_config_with_nothing_to_receive_is_an_error() {
    let problems = Config::parse("[server]\nself_signed = true\n").unwrap_err();
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert_eq!(problems[0].key, "sources");
    assert!(problems[0].message.contains("receive nothing"));
    // But a source that is there and wrong is not also "nothing".
    let problems = Config::parse("[sources.tus]\nprovider = \"sap\"\n").unwrap_err();
    let keys: Vec<&str> = problems.iter().map(|p| p.key.as_str()).collect();
    assert_eq!(
        keys,
        ["sources.tus.provider", "server.tls_cert"],
        "{problems:?}"
    );
}

#[test]
fn placeholders_and_examples_are_named() {
    let text = "[server]\nself_signed = true\n\n[sources.tus]\nprovider = \"tusfacturas\"\ntoken = \"CHANGE-ME-token\"\n\n[[subscriptions]]\nname = \"erp\"\nurl = \"http://127.0.0.1:9/\"\nsecret = \"CHANGE-ME\"\n";
    let problems = Config::parse(text).unwrap_err();
    let keys: Vec<&str> = problems.iter().map(|p| p.key.as_str()).collect();
    assert_eq!(
        keys,
        ["sources.tus.token", "subscriptions[0].secret"],
        "{problems:?}"
    );
    assert!(problems.iter().all(|p| p.message.contains("placeholder")));

    // Examples are known by their marker, whatever file they are in.
    let example_key = "whsec_ZXhhbXBsZS1zdWJzY3JpcHRpb24tc2VjcmV0LTAxMjM=";
    let text = format!(
        "{}\n[[subscriptions]]\nname = \"erp\"\nurl = \"http://127.0.0.1:9/\"\nsecret = \"{example_key}\"\n\n[admin]\nlisten = \"127.0.0.1:9090\"\ntokens = [{{ name = \"admin\", token = \"example-admin-0123456789\", role = \"admin\" }}]\n",
        minimal().replace("0123456789abcdef", "example-token-0123"),
    );
    let named: Vec<String> = Config::parse(&text)
        .unwrap()
        .example_secrets()
        .iter()
        .map(|k| k.to_string())
        .collect();
    assert_eq!(
        named,
        [
            "sources.tus.token",
            "subscriptions[0].secret",
            "admin.tokens[0].token"
        ]
    );
    assert!(is_example_secret(example_key));
    assert!(!is_example_secret(SECRET));
    assert!(!is_example_secret("whsec_not base64!"));
    assert!(!is_example_secret("an-example-in-the-middle"));
    assert!(Config::parse(&minimal())
        .unwrap()
        .example_secrets()
        .is_empty());
}

#[test]
fn header_names_and_networks_are_typed_at_load() {
    let text = minimal()
        + "allow_ips = [\"203.0.113.0/24\", \"::1\"]\nhmac = { header = \"X-Sig\", secret = \"0123456789abcdef\" }\n";
    let config = Config::parse(&text).unwrap();
    let source = &config.sources["tus"];
    assert_eq!(source.allowed_networks().len(), 2);
    assert_eq!(source.hmac.as_ref().unwrap().header.0, "x-sig");
    let problems = Config::parse(&text.replace("X-Sig", "X Sig")).unwrap_err();
    assert_eq!(problems[0].key, "sources.tus.hmac.header", "{problems:?}");
    assert!(problems[0].message.contains("not a valid HTTP header name"));
}

#[test]
fn the_packaged_relay_toml_is_refused_for_its_placeholders_only() {
    let text = include_str!("../../debian/relay.toml");
    let problems = Config::parse(text).unwrap_err();
    let keys: Vec<&str> = problems.iter().map(|p| p.key.as_str()).collect();
    assert_eq!(
        keys,
        ["sources.tusfacturas.token", "subscriptions[0].secret"],
        "{problems:?}"
    );
    assert!(problems.iter().all(|p| p.message.contains("placeholder")));
    // Filled in, it is valid: TLS on with files, the admin listener on a
    // unix socket, no example secret.
    let filled = text
        .replace(
            "token = \"CHANGE-ME\"",
            "token = \"a-token-of-our-own-0123\"",
        )
        .replace("secret = \"CHANGE-ME\"", &format!("secret = \"{SECRET}\""));
    let config = Config::parse(&filled).unwrap();
    assert!(config.server.tls && config.server.tls_cert.is_some() && !config.server.self_signed);
    assert!(matches!(config.admin.listen, Some(AdminListen::Unix(_))));
    assert!(config.example_secrets().is_empty());
}

#[test]
fn allowed_targets_are_hosts_domains_or_networks_and_a_bad_one_is_located() {
    let text = minimal()
        + "[admin]\nallowed_targets = [\"billing.internal\", \"*.apps.internal\", \"10.0.0.0/8\", \"::1\"]\n";
    let admin = Config::parse(&text).unwrap().admin;
    let allows = |url: &str| admin.allows_target(&reqwest::Url::parse(url).unwrap());
    assert!(allows("https://BILLING.internal/hooks"));
    assert!(allows("http://erp.apps.internal:8080/in"));
    assert!(allows("http://10.1.2.3/in"));
    assert!(allows("http://[::1]:9000/in"));
    assert!(
        !allows("https://apps.internal/in"),
        "the domain itself is not under it"
    );
    assert!(!allows("https://billing.internal.evil.example/in"));
    assert!(!allows("http://11.0.0.1/in"));
    assert!(!allows("https://invoices.example.com/in"));
    assert!(
        !Config::parse(&minimal())
            .unwrap()
            .admin
            .allows_target(&reqwest::Url::parse("http://127.0.0.1/").unwrap()),
        "absent, it allows nothing"
    );

    let bad = minimal() + "[admin]\nallowed_targets = [\"ok.internal\", \"no spaces\"]\n";
    let problems = Config::parse(&bad).unwrap_err();
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert_eq!(problems[0].key, "admin.allowed_targets");
    assert!(problems[0].line.is_some(), "{problems:?}");
    assert!(
        problems[0].message.contains("\"no spaces\""),
        "{problems:?}"
    );
}

#[test]
fn the_relay_source_is_reserved_and_failing_after_is_at_least_one() {
    assert_eq!(
        Config::parse(&minimal()).unwrap().forwarder.failing_after,
        5
    );
    let text = format!(
        "{}\n[forwarder]\nfailing_after = 0\n\n[sources.relay]\nprovider = \"generic\"\ntoken = \"0123456789abcdef\"\n",
        minimal()
    );
    let problems = Config::parse(&text).unwrap_err();
    let keys: Vec<&str> = problems.iter().map(|p| p.key.as_str()).collect();
    assert_eq!(
        keys,
        ["forwarder.failing_after", "sources.relay"],
        "{problems:?}"
    );
    assert!(problems[1].message.contains("reserved"), "{problems:?}");
}

#[test]
fn stuck_after_defaults_per_provider_and_must_be_more_than_zero() {
    let with = |line: &str| {
        Config::parse(&minimal().replace(
            "provider = \"tusfacturas\"\n",
            &format!("provider = \"tusfacturas\"\n{line}"),
        ))
    };
    let stuck_after = |config: Config| config.sources.values().find_map(|s| s.stuck_after());
    let day = std::time::Duration::from_secs(24 * 3600);
    assert_eq!(stuck_after(with("").unwrap()), Some(day));
    let set = with("stuck_after = \"5ms\"\n").unwrap();
    assert_eq!(stuck_after(set), Some(std::time::Duration::from_millis(5)));
    let problems = with("stuck_after = \"0s\"\n").unwrap_err();
    assert!(
        problems.iter().any(|p| p.key.contains("stuck_after")),
        "{problems:?}"
    );
}

#[test]
fn a_stop_must_fit_in_timeout_stop_sec_whatever_body_timeout_is() {
    let config =
        Config::parse(&minimal().replace("[server]\n", "[server]\nbody_timeout = \"1h\"\n"))
            .unwrap();
    assert_eq!(config.server.shutdown_grace.0, Duration::from_secs(20));
    let text = minimal().replace("[server]\n", "[server]\nshutdown_grace = \"1m\"\n");
    let problems = Config::parse(&text).unwrap_err();
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert_eq!(problems[0].key, "server.shutdown_grace");
    assert!(problems[0].message.contains("at most 50s"), "{problems:?}");
}

#[test]
fn spool_settings_are_keyed_by_backend() {
    let text = format!(
        "{}\n[spool]\nbackend = \"sled\"\ndedup_window = \"1h\"\n\n[spool.sled]\npath = \"/var/lib/relay/spool\"\ncache_capacity = \"8MiB\"\nsync_data = false\nmin_free = 0\n",
        minimal()
    );
    let config = Config::parse(&text).unwrap();
    assert_eq!(config.spool.backend, SpoolBackend::Sled);
    assert_eq!(config.spool.dedup_window.0, Duration::from_secs(3600));
    assert_eq!(
        config.spool.sled,
        SledConfig {
            path: "/var/lib/relay/spool".into(),
            cache_capacity: ByteSize(8 << 20),
            sync_data: false,
            min_free: ByteSize(0),
        }
    );
    assert!(config.warnings.is_empty(), "{:?}", config.warnings);
}

#[test]
fn spool_defaults_are_unchanged_by_the_backend_table() {
    let config = Config::parse(&minimal()).unwrap();
    let spool = &config.spool;
    assert_eq!(spool.backend, SpoolBackend::Sled);
    assert_eq!(spool.dedup_window.0, Duration::from_secs(72 * 3600));
    assert_eq!(spool.retention.0, Duration::from_secs(30 * 24 * 3600));
    assert_eq!(spool.dead_retention, None);
    assert_eq!(spool.sled.path, std::path::PathBuf::from("data/spool"));
    assert_eq!(spool.sled.cache_capacity, ByteSize(16 << 20));
    assert!(spool.sled.sync_data);
    assert_eq!(spool.sled.min_free, ByteSize(64 << 20));
    assert_eq!(*spool, SpoolConfig::default());
    assert!(config.warnings.is_empty());
}

#[test]
fn the_flat_spool_spelling_is_read_into_the_sled_table_with_a_located_warning() {
    // Lines: 8 [spool], 9 path, 10 dedup_window, 11 cache_capacity,
    // 12 sync_data, 13 min_free.
    let text = format!(
        "{}\n[spool]\npath = \"old/spool\"\ndedup_window = \"2h\"\ncache_capacity = \"4MiB\"\nsync_data = false\nmin_free = \"1MiB\"\n",
        minimal()
    );
    let config = Config::parse(&text).unwrap();
    assert_eq!(
        config.spool.sled,
        SledConfig {
            path: "old/spool".into(),
            cache_capacity: ByteSize(4 << 20),
            sync_data: false,
            min_free: ByteSize(1 << 20),
        }
    );
    assert_eq!(config.spool.dedup_window.0, Duration::from_secs(7200));
    let warnings: Vec<(Option<usize>, &str)> = config
        .warnings
        .iter()
        .map(|w| (w.line, w.key.as_str()))
        .collect();
    assert_eq!(
        warnings,
        [
            (Some(9), "spool.path"),
            (Some(11), "spool.cache_capacity"),
            (Some(12), "spool.sync_data"),
            (Some(13), "spool.min_free"),
        ]
    );
    let path = &config.warnings[0];
    assert!(path.message.contains("deprecated"), "{path:?}");
    assert!(path.message.contains("[spool.sled]"), "{path:?}");
    assert!(path.message.contains("`spool.sled.path`"), "{path:?}");

    // The same values either way: the old file means what it meant.
    let new = format!(
        "{}\n[spool]\ndedup_window = \"2h\"\n\n[spool.sled]\npath = \"old/spool\"\ncache_capacity = \"4MiB\"\nsync_data = false\nmin_free = \"1MiB\"\n",
        minimal()
    );
    assert_eq!(Config::parse(&new).unwrap().spool, config.spool);
}

#[test]
fn a_flat_spool_key_with_a_bad_value_is_still_located_at_its_own_spelling() {
    let text = format!("{}\n[spool]\ncache_capacity = \"lots\"\n", minimal());
    let problems = Config::parse(&text).unwrap_err();
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert_eq!(problems[0].key, "spool.cache_capacity");
    assert_eq!(problems[0].line, Some(9));
}

#[test]
fn a_sled_key_set_both_flat_and_in_its_table_is_refused_naming_both_places() {
    // Lines: 8 [spool], 9 path, 10 min_free, 11 blank, 12 [spool.sled], 13 path.
    let text = format!(
        "{}\n[spool]\npath = \"a\"\nmin_free = 0\n\n[spool.sled]\npath = \"b\"\n",
        minimal()
    );
    let problems = Config::parse(&text).unwrap_err();
    assert_eq!(problems.len(), 1, "{problems:?}");
    let twice = &problems[0];
    assert_eq!((twice.key.as_str(), twice.line), ("spool.path", Some(9)));
    assert!(
        twice.message.contains("`spool.sled.path` at line 13"),
        "{twice:?}"
    );

    // And through load: the file too.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("relay.toml");
    std::fs::write(&path, &text).unwrap();
    let err = Config::load(&path).unwrap_err().to_string();
    assert!(
        err.starts_with(&format!("{}:9:1: `spool.path`: set twice", path.display())),
        "{err}"
    );
}

#[test]
fn an_unknown_spool_backend_is_refused_with_its_line_and_the_backends_known() {
    let text = format!("{}\n[spool]\nbackend = \"nats\"\n", minimal());
    let problems = Config::parse(&text).unwrap_err();
    assert_eq!(problems.len(), 1, "{problems:?}");
    let unknown = &problems[0];
    assert_eq!(
        (unknown.key.as_str(), unknown.line),
        ("spool.backend", Some(9))
    );
    assert!(unknown.message.contains("\"nats\""), "{unknown:?}");
    assert!(
        unknown.message.contains("the backends known are \"sled\""),
        "{unknown:?}"
    );
}

#[test]
fn load_keeps_the_warnings_and_resolves_the_sled_path_either_way() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("relay.toml");
    for (spool, warned) in [
        ("[spool]\npath = \"spool\"\n", true),
        ("[spool.sled]\npath = \"spool\"\n", false),
    ] {
        std::fs::write(&path, format!("{}{spool}", minimal())).unwrap();
        let config = Config::load(&path).unwrap();
        assert_eq!(config.spool.sled.path, dir.path().join("spool"));
        assert_eq!(config.warnings.len(), usize::from(warned), "{spool}");
        assert_eq!(
            config.self_signed_paths().0,
            dir.path().join("tls/self-signed.crt")
        );
    }
}
