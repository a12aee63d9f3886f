//! Reading `relay.toml`: the file, its syntax, then each section on its own
//! (so one bad section or key hides nothing else), then the rules across
//! fields; every problem is located (file, line, column, key) and all of
//! them are returned together.

use std::collections::BTreeSet;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use toml::de::{DeTable, DeValue};
use toml::Spanned;

use super::locate::{self, KeyPath};
use super::problem::Problem;
use super::spool::fold_flat_sled_keys;
use super::{AdminConfig, Config, ForwarderConfig, ServerConfig, SpoolConfig};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The cause is the source (printed after this, once).
    #[error("cannot read config file {}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}", Problems(path, problems))]
    Invalid {
        path: PathBuf,
        problems: Vec<Problem>,
    },
}

struct Problems<'a>(&'a Path, &'a [Problem]);

impl fmt::Display for Problems<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, problem) in self.1.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{}", self.0.display())?;
            if let Some(line) = problem.line {
                write!(f, ":{line}:{}", problem.column.unwrap_or(1))?;
            }
            if problem.key.is_empty() {
                write!(f, ": {}", problem.message)?;
            } else {
                write!(f, ": `{}`: {}", problem.key, problem.message)?;
            }
        }
        Ok(())
    }
}

/// A section (or a key in one) that could not be read: the rules across
/// fields stay quiet about it, as its problem is already reported.
#[derive(Debug, Default)]
pub(super) struct SetAside {
    /// Keys whose value was wrong, and whole sections that could not be read.
    pub keys: Vec<KeyPath>,
    /// Sources that could not be read: subscriptions may still name them.
    pub sources: BTreeSet<String>,
}

impl SetAside {
    fn covers(&self, key: &KeyPath) -> bool {
        self.keys.iter().any(|aside| key.starts_with(aside))
    }
}

/// At most this many problems are reported per section (each one found
/// costs a new attempt at reading the section).
const MAX_PROBLEMS_PER_SECTION: usize = 64;

impl Config {
    /// Reads, parses and validates a config file. Relative paths inside it
    /// are resolved against the file's directory. Its warnings (keys spelt
    /// the old way) are logged, each with the file, line and key, and kept
    /// in [`Config::warnings`].
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        let mut config =
            Config::parse_in(&text, base).map_err(|problems| ConfigError::Invalid {
                path: path.to_owned(),
                problems,
            })?;
        for warning in &config.warnings {
            tracing::warn!("{}", Problems(path, std::slice::from_ref(warning)));
        }
        config.resolve_paths(base);
        let unreadable = config
            .admin
            .read_token_files(&KeyPath::default().key("admin"));
        if !unreadable.is_empty() {
            return Err(ConfigError::Invalid {
                path: path.to_owned(),
                problems: unreadable
                    .into_iter()
                    .map(|(key, message)| located(&text, key, message))
                    .collect(),
            });
        }
        Ok(config)
    }

    /// Parses and validates TOML text: every problem, in the file's order.
    /// The secret files it names (`[sources.NAME.reconcile]`) are read
    /// from the working directory when relative.
    pub fn parse(text: &str) -> Result<Config, Vec<Problem>> {
        Config::parse_in(text, Path::new(""))
    }

    /// [`Config::parse`], reading relative secret files from `base`.
    fn parse_in(text: &str, base: &Path) -> Result<Config, Vec<Problem>> {
        let (mut config, mut problems, aside) = Config::deserialize_sections(text)?;
        for (key, message) in config.problems_besides(&aside) {
            if aside.covers(&key) {
                continue;
            }
            problems.push(located(text, key, message));
        }
        for (key, message) in super::reconcile::read_sections(&mut config, base) {
            problems.push(located(text, key, message));
        }
        if problems.is_empty() {
            return Ok(config);
        }
        // In the order of the file; problems with no place (none today) last.
        problems.sort_by_key(|p| (p.line.unwrap_or(usize::MAX), p.column));
        Err(problems)
    }

    fn resolve_paths(&mut self, base: &Path) {
        let resolve = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        resolve(&mut self.spool.sled.path);
        self.spool.jetstream.resolve_paths(base);
        self.server.tls_cert.as_mut().map(resolve);
        self.server.tls_key.as_mut().map(resolve);
        if let Some(acme) = self.server.acme.as_mut() {
            acme.directory_ca.as_mut().map(resolve);
        }
        for sub in &mut self.subscriptions {
            sub.tls_ca.as_mut().map(resolve);
        }
        self.admin.resolve_paths(base);
    }

    /// Deserializes each section on its own (each source and subscription
    /// too), so that a type error or an unknown key in one does not hide
    /// those in the others. Returns what could be read, with the problems
    /// met; only a syntax error stops it.
    fn deserialize_sections(text: &str) -> Result<(Config, Vec<Problem>, SetAside), Vec<Problem>> {
        let (root, syntax) = DeTable::parse_recoverable(text);
        if !syntax.is_empty() {
            return Err(syntax.iter().map(|e| parse_problem(text, e)).collect());
        }
        let mut reader = Reader {
            text,
            problems: Vec::new(),
            aside: SetAside::default(),
        };
        let mut warnings = Vec::new();
        let mut config = Config {
            server: ServerConfig::default(),
            spool: SpoolConfig::default(),
            forwarder: ForwarderConfig::default(),
            sources: Default::default(),
            subscriptions: Vec::new(),
            admin: AdminConfig::default(),
            warnings: Vec::new(),
        };
        let top = KeyPath::default();
        for (key, value) in root.into_inner() {
            let name = key.get_ref().as_ref();
            match name {
                "server" => {
                    config.server = reader.section(top.key(name), value).unwrap_or_default()
                }
                "spool" => {
                    let mut value = value;
                    let folded = fold_flat_sled_keys(text, &mut value);
                    reader.problems.extend(folded.problems);
                    warnings.extend(folded.warnings);
                    config.spool = reader.section(top.key(name), value).unwrap_or_default()
                }
                "forwarder" => {
                    config.forwarder = reader.section(top.key(name), value).unwrap_or_default()
                }
                "admin" => config.admin = reader.section(top.key(name), value).unwrap_or_default(),
                "sources" => match value.into_inner() {
                    DeValue::Table(sources) => {
                        for (source_name, source) in sources {
                            let source_name = source_name.into_inner().into_owned();
                            let at = top.key("sources").key(&source_name);
                            match reader.section(at, source) {
                                Some(source) => {
                                    config.sources.insert(source_name, source);
                                }
                                None => {
                                    reader.aside.sources.insert(source_name);
                                }
                            }
                        }
                    }
                    _ => reader.problems.push(problem_at(
                        text,
                        key.span(),
                        "must be a table of sources ([sources.<name>])",
                    )),
                },
                "subscriptions" => match value.into_inner() {
                    DeValue::Array(subscriptions) => {
                        for (i, subscription) in subscriptions.into_iter().enumerate() {
                            let at = top.key("subscriptions").index(i);
                            if let Some(subscription) = reader.section(at, subscription) {
                                config.subscriptions.push(subscription);
                            }
                        }
                    }
                    _ => reader.problems.push(problem_at(
                        text,
                        key.span(),
                        "must be an array of tables ([[subscriptions]])",
                    )),
                },
                other => reader.problems.push(problem_at(
                    text,
                    key.span(),
                    &format!(
                        "unknown key `{other}`, expected one of the sections `server`, `spool`, `forwarder`, `sources`, `subscriptions`, `admin`"
                    ),
                )),
            }
        }
        warnings.sort_by_key(|p: &Problem| (p.line, p.column));
        config.warnings = warnings;
        Ok((config, reader.problems, reader.aside))
    }
}

struct Reader<'t> {
    text: &'t str,
    problems: Vec<Problem>,
    aside: SetAside,
}

impl Reader<'_> {
    /// One section deserialized from its spanned value. A key whose value
    /// is wrong is reported, taken out, and the section read again without
    /// it, so that the section's other keys are still read and checked.
    /// `None` when the section cannot be read at all (a required key wrong
    /// or missing): it is then set aside whole.
    fn section<T: DeserializeOwned>(
        &mut self,
        at: KeyPath,
        mut value: Spanned<DeValue<'_>>,
    ) -> Option<T> {
        let mut removed: Option<KeyPath> = None;
        for _ in 0..MAX_PROBLEMS_PER_SECTION {
            let err = match T::deserialize(toml::de::ValueDeserializer::from(value.clone())) {
                Ok(section) => return Some(section),
                Err(err) => err,
            };
            let missing = err.message().starts_with("missing field");
            // The key just taken out was required: its problem is already told.
            if missing
                && removed
                    .as_ref()
                    .is_some_and(|key| mentions(err.message(), key))
            {
                break;
            }
            self.problems.push(parse_problem(self.text, &err));
            removed = match (err.span(), value.get_mut()) {
                (Some(span), DeValue::Table(table)) if !missing => {
                    locate::remove_at(table, span.start)
                }
                _ => None,
            };
            match &removed {
                Some(key) => self.aside.keys.push(at.join(key)),
                None => break,
            }
        }
        self.aside.keys.push(at);
        None
    }
}

/// A problem found on the parsed config, with its place in the text.
fn located(text: &str, key: KeyPath, message: String) -> Problem {
    let at = locate::locate(text, &key);
    Problem {
        key: key.to_string(),
        line: at.map(|p| p.line),
        column: at.map(|p| p.column),
        message,
    }
}

/// Whether a deserializer's message names the last key of `path` (as `key`).
fn mentions(message: &str, path: &KeyPath) -> bool {
    match path.0.last() {
        Some(locate::Segment::Key(key)) => message.contains(&format!("`{key}`")),
        _ => false,
    }
}

/// A problem found by hand at `span` of the text (not by the deserializer).
fn problem_at(text: &str, span: std::ops::Range<usize>, message: &str) -> Problem {
    let at = locate::position_of(text, span.start);
    Problem {
        key: locate::key_at(text, span.start).to_string(),
        line: Some(at.line),
        column: Some(at.column),
        message: message.to_owned(),
    }
}

fn parse_problem(text: &str, err: &toml::de::Error) -> Problem {
    let span = err.span();
    let at = span.as_ref().map(|s| locate::position_of(text, s.start));
    let key = span
        .map(|s| locate::key_at(text, s.start).to_string())
        .unwrap_or_default();
    Problem {
        key,
        line: at.map(|p| p.line),
        column: at.map(|p| p.column),
        message: err.message().trim().to_owned(),
    }
}
