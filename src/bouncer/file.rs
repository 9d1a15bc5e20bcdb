//! A [`BouncerConfig`] from a TOML file, refused with the key and line of what is
//! wrong: a typo must not fall back to a default unseen. A [`ConfigFile`] is one read
//! but not yet checked, for a program that completes it first.

use std::{
    fmt,
    ops::Range,
    path::{Path, PathBuf},
};

use toml::de::{DeTable, DeValue};

use super::{BouncerConfig, SettingError};

/// The most a configuration file may hold; a larger one is refused, unread if its size
/// shows, else once that much is read.
const MAX_FILE_LEN: u64 = 1024 * 1024;

/// A configuration file that cannot be used: unreadable, not TOML, an unknown key, a
/// value of the wrong type, or a setting that cannot work.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigFileError {
    path: Option<PathBuf>,
    line: Option<usize>,
    key: Option<String>,
    message: String,
}

impl ConfigFileError {
    /// The file, when read from one.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// The line (from 1) of the key or value at fault, when known.
    pub fn line(&self) -> Option<usize> {
        self.line
    }

    /// The key at fault, as `section.key`, when known.
    pub fn key(&self) -> Option<&str> {
        self.key.as_deref()
    }

    /// What is wrong.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for ConfigFileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.path, self.line) {
            (Some(path), Some(line)) => write!(f, "{}:{line}: ", path.display())?,
            (Some(path), None) => write!(f, "{}: ", path.display())?,
            (None, Some(line)) => write!(f, "line {line}: ")?,
            (None, None) => {}
        }
        if let Some(key) = &self.key {
            write!(f, "`{key}`: ")?;
        }
        f.write_str(&self.message)
    }
}

impl std::error::Error for ConfigFileError {}

impl BouncerConfig {
    /// Reads a TOML configuration file (feature `config`): every key optional, each
    /// missing one at its default; an unknown key, a value of the wrong type or a
    /// setting that cannot work is an error naming its key and line.
    ///
    /// ```
    /// use tower_bouncer::bouncer::BouncerConfig;
    ///
    /// let config = BouncerConfig::from_toml_str(
    ///     r#"
    ///     [connections]
    ///     per_peer = 8
    ///
    ///     [timeouts]
    ///     idle = "30s"
    ///     "#,
    /// )
    /// .unwrap();
    /// assert_eq!(config.connections.per_peer, 8);
    ///
    /// let typo = BouncerConfig::from_toml_str("[connections]\nper_per = 8\n").unwrap_err();
    /// assert_eq!(typo.key(), Some("connections.per_per"));
    /// assert_eq!(typo.line(), Some(2));
    /// ```
    pub fn from_toml_file(path: impl AsRef<Path>) -> Result<Self, ConfigFileError> {
        let file = ConfigFile::read(path)?;
        file.config
            .validate()
            .map_err(|error| file.locate(&error))?;
        Ok(file.config)
    }

    /// Parses a configuration from TOML text, as [`from_toml_file`](Self::from_toml_file)
    /// does.
    pub fn from_toml_str(text: &str) -> Result<Self, ConfigFileError> {
        let config = parse(text)?;
        config
            .validate()
            .map_err(|error| setting_error(text, &error))?;
        Ok(config)
    }
}

/// A configuration file read and parsed but not yet checked, for a program that
/// completes it before checking the whole (as the examples do with their flags): a
/// setting that needs another beside it is checked with that other in place, and a
/// setting that cannot work is still named with the file's line
/// ([`locate`](Self::locate)).
///
/// ```
/// use tower_bouncer::bouncer::ConfigFile;
/// # let path = std::env::temp_dir().join(format!("config-file-doc-{}.toml", std::process::id()));
/// # std::fs::write(&path, "[bans]\nmax = \"5m\"\n").unwrap();
///
/// // `[bans] max = "5m"`, with the first ban (10 minutes by default) given elsewhere.
/// let file = ConfigFile::read(&path)?;
/// let mut config = file.config().clone();
/// config.bans.first = std::time::Duration::from_secs(3600);
/// let error = config.validate().unwrap_err();
/// assert_eq!(file.locate(&error).line(), Some(2));
/// # std::fs::remove_file(&path).ok();
/// # Ok::<(), tower_bouncer::bouncer::ConfigFileError>(())
/// ```
#[derive(Clone)]
pub struct ConfigFile {
    path: PathBuf,
    /// What was read, to find a key's line in.
    text: String,
    config: BouncerConfig,
}

impl ConfigFile {
    /// Reads and parses `path`: unreadable, not TOML, an unknown key or a value of the
    /// wrong type is an error naming the file (and the key and its line). Whether the
    /// settings can work is left to [`BouncerConfig::validate`].
    pub fn read(path: impl AsRef<Path>) -> Result<Self, ConfigFileError> {
        let path = path.as_ref();
        let text = read_text(path)?;
        let config = parse(&text).map_err(|error| ConfigFileError {
            path: Some(path.to_owned()),
            ..error
        })?;
        Ok(Self {
            path: path.to_owned(),
            text,
            config,
        })
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Its settings, each key it leaves out at its default.
    pub fn config(&self) -> &BouncerConfig {
        &self.config
    }

    /// `error` named with this file and the line its key is on (or its section's, for a
    /// key the file leaves out; no line if the file leaves out both).
    pub fn locate(&self, error: &SettingError) -> ConfigFileError {
        ConfigFileError {
            path: Some(self.path.clone()),
            ..setting_error(&self.text, error)
        }
    }

    /// Whether the file writes the dotted `key` itself (`max` in `[bans]` for
    /// `bans.max`), not only its section: a setting it leaves at its default, found
    /// wrong, was made so by what the program set beside the file.
    pub fn writes(&self, key: &str) -> bool {
        spans_of_key(&self.text, key).len() == key.split('.').count()
    }
}

impl fmt::Debug for ConfigFile {
    /// The path alone: the text may hold secrets (`admin.token`, a Redis password).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConfigFile")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

/// The text of `path`, at most [`MAX_FILE_LEN`] bytes of it.
fn read_text(path: &Path) -> Result<String, ConfigFileError> {
    let failed = |message: String| ConfigFileError {
        path: Some(path.to_owned()),
        line: None,
        key: None,
        message,
    };
    let file = std::fs::File::open(path).map_err(|error| failed(error.to_string()))?;
    let bytes = crate::bounded_read::read_at_most(file, MAX_FILE_LEN, "a configuration file")
        .map_err(|error| failed(error.to_string()))?;
    String::from_utf8(bytes).map_err(|error| failed(format!("not UTF-8 text: {error}")))
}

/// The settings `text` writes, unchecked; a TOML error names its key and line.
fn parse(text: &str) -> Result<BouncerConfig, ConfigFileError> {
    toml::from_str(text).map_err(|error| {
        let span = error.span();
        ConfigFileError {
            path: None,
            line: span.as_ref().map(|span| line_of(text, span.start)),
            key: span.and_then(|span| key_at(text, span)),
            message: error.message().to_owned(),
        }
    })
}

/// A setting that cannot work, with the line its key is on.
fn setting_error(text: &str, error: &SettingError) -> ConfigFileError {
    ConfigFileError {
        path: None,
        line: spans_of_key(text, error.key())
            .last()
            .map(|span| line_of(text, span.start)),
        key: Some(error.key().to_owned()),
        message: error.reason().to_owned(),
    }
}

/// The line, from 1, that byte `offset` is on.
fn line_of(text: &str, offset: usize) -> usize {
    let offset = offset.min(text.len());
    text.as_bytes()[..offset]
        .iter()
        .filter(|&&byte| byte == b'\n')
        .count()
        + 1
}

/// The dotted key whose name or value holds `span`: the innermost, so that an error in
/// `per_peer = 0` names `connections.per_peer`, not `connections`.
fn key_at(text: &str, span: Range<usize>) -> Option<String> {
    let table = DeTable::parse(text).ok()?;
    let mut path = Vec::new();
    find_in_table(table.get_ref(), &span, &mut path).then(|| path.join("."))
}

fn find_in_table(table: &DeTable<'_>, span: &Range<usize>, path: &mut Vec<String>) -> bool {
    let contains = |outer: Range<usize>| outer.start <= span.start && span.end <= outer.end;
    for (key, value) in table {
        path.push(key.get_ref().to_string());
        // A `[section]`'s span is its header's, not its keys': look inside it anyway.
        let found = match value.get_ref() {
            DeValue::Table(inner) => find_in_table(inner, span, path) || contains(key.span()),
            _ => contains(key.span()) || contains(value.span()),
        };
        if found {
            return true;
        }
        path.pop();
    }
    false
}

/// Where each part of the dotted `key` is written, as far as `text` writes it: every
/// part for a key it writes, its sections alone for a key left at its default.
fn spans_of_key(text: &str, key: &str) -> Vec<Range<usize>> {
    let Ok(table) = DeTable::parse(text) else {
        return Vec::new();
    };
    let mut table = table.get_ref();
    let mut spans = Vec::new();
    for part in key.split('.') {
        let Some((name, value)) = table.get_key_value(part) else {
            break;
        };
        spans.push(name.span());
        let DeValue::Table(inner) = value.get_ref() else {
            break;
        };
        table = inner;
    }
    spans
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use proptest::prelude::*;

    use super::*;

    fn refused(text: &str) -> ConfigFileError {
        BouncerConfig::from_toml_str(text).expect_err("refused")
    }

    #[test]
    fn an_empty_file_is_the_defaults() {
        assert_eq!(
            BouncerConfig::from_toml_str("").unwrap(),
            BouncerConfig::default()
        );
    }

    #[test]
    fn the_sample_file_says_the_defaults() {
        let sample = include_str!("../../examples/bouncer.toml");
        assert_eq!(
            BouncerConfig::from_toml_str(sample).unwrap(),
            BouncerConfig::default()
        );
    }

    #[test]
    fn durations_are_written_with_their_unit() {
        let config = BouncerConfig::from_toml_str(
            "[timeouts]\nidle = \"1m 30s\"\nrequest = \"500ms\"\n[logins]\ntimeout = \"30s\"\n",
        )
        .unwrap();
        assert_eq!(config.timeouts.idle, Duration::from_secs(90));
        assert_eq!(config.timeouts.request, Duration::from_millis(500));
        assert_eq!(config.logins.timeout, Some(Duration::from_secs(30)));
        let error = refused("[timeouts]\nidle = 30\n");
        assert_eq!(error.key(), Some("timeouts.idle"));
        assert_eq!(error.line(), Some(2));
    }

    #[test]
    fn an_unknown_key_is_named_with_its_line() {
        let error = refused("[peers]\nexempt = []\n[connections]\nmax = 10\nper_per = 3\n");
        assert_eq!(error.key(), Some("connections.per_per"));
        assert_eq!(error.line(), Some(5));
        assert!(error.message().contains("unknown field"), "{error}");
        let error = refused("[conections]\nmax = 10\n");
        assert_eq!(error.key(), Some("conections"));
        assert_eq!(error.line(), Some(1));
    }

    #[test]
    fn a_value_of_the_wrong_type_is_named_with_its_line() {
        let error = refused("[rates]\nglobal = \"fast\"\n");
        assert_eq!(error.key(), Some("rates.global"));
        assert_eq!(error.line(), Some(2));
        let error = refused("[peers]\nexempt = [\"10.0.0.0/8\", \"nonsense\"]\n");
        assert_eq!(error.key(), Some("peers.exempt"));
        assert_eq!(error.line(), Some(2));
    }

    #[test]
    fn a_setting_that_cannot_work_is_named_with_its_line() {
        let error = refused("[connections]\n\n\nper_peer = 0\n");
        assert_eq!(error.key(), Some("connections.per_peer"));
        assert_eq!(error.line(), Some(4));
        assert_eq!(
            error.to_string(),
            "line 4: `connections.per_peer`: must be at least 1"
        );
        let error = refused("[bans]\nfirst = \"1h\"\nmax = \"10m\"\n");
        assert_eq!(error.key(), Some("bans.max"));
        assert_eq!(error.line(), Some(3));
        let error = refused("[peers]\nipv6_prefix = 129\n");
        assert_eq!(error.key(), Some("peers.ipv6_prefix"));
    }

    #[test]
    fn a_request_maximum_below_the_request_timeout_is_refused_while_the_minimum_rate_is_on() {
        let config = BouncerConfig::from_toml_str(
            "[timeouts]\nrequest_min_rate = 1000\nrequest_max = \"2m\"\n",
        )
        .unwrap();
        assert_eq!(config.timeouts.request_min_rate, 1000);
        assert_eq!(config.timeouts.request_max, Duration::from_secs(120));
        let error = refused("[timeouts]\nrequest = \"1m\"\nrequest_max = \"30s\"\n");
        assert_eq!(error.key(), Some("timeouts.request_max"));
        assert_eq!(error.line(), Some(3));
        assert!(error.message().contains("`timeouts.request`"), "{error}");
        // Off, the minimum rate has no maximum to respect.
        let config = BouncerConfig::from_toml_str(
            "[timeouts]\nrequest = \"1m\"\nrequest_max = \"30s\"\nrequest_min_rate = 0\n",
        )
        .unwrap();
        assert_eq!(config.timeouts.request_min_rate, 0);
        let error = refused("[timeouts]\nrequest_min_rate = -1\n");
        assert_eq!(error.key(), Some("timeouts.request_min_rate"));
    }

    #[test]
    fn a_file_names_itself() {
        let path = std::env::temp_dir().join(format!("bouncer-{}.toml", std::process::id()));
        std::fs::write(&path, "[timeouts]\nidle = \"0s\"\n").unwrap();
        let error = BouncerConfig::from_toml_file(&path).unwrap_err();
        std::fs::remove_file(&path).ok();
        assert_eq!(
            error.to_string(),
            format!(
                "{}:2: `timeouts.idle`: must be longer than zero",
                path.display()
            )
        );
        let missing = BouncerConfig::from_toml_file("/nonexistent/bouncer.toml").unwrap_err();
        assert!(
            missing
                .to_string()
                .starts_with("/nonexistent/bouncer.toml: ")
        );
    }

    #[test]
    fn a_file_over_the_most_is_refused_though_its_size_does_not_show() {
        // A pipe (`--config <(render)`, `/dev/stdin`) says it holds 0 bytes.
        let dir = std::env::temp_dir().join(format!("bouncer-fifo-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let fifo = dir.join("bouncer.toml");
        let made = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(made.success());
        let writer = std::thread::spawn({
            let fifo = fifo.clone();
            move || {
                use std::io::Write;
                // Comments, twice the most a file may hold; stops once nobody reads.
                let line = format!("# {}\n", "x".repeat(1022));
                let mut pipe = std::fs::OpenOptions::new().write(true).open(&fifo).unwrap();
                for _ in 0..2 * MAX_FILE_LEN / 1024 {
                    if pipe.write_all(line.as_bytes()).is_err() {
                        break;
                    }
                }
            }
        });
        let outcome = BouncerConfig::from_toml_file(&fifo);
        drop(std::fs::remove_dir_all(&dir));
        writer.join().unwrap();
        let error = outcome.expect_err("2 MiB read from a pipe and taken");
        assert!(
            error.message().contains("a configuration file is at most"),
            "{error}"
        );
    }

    #[test]
    fn a_file_that_is_not_utf8_text_is_refused_with_its_path() {
        let dir = std::env::temp_dir().join(format!("bouncer-latin1-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("bouncer.toml");
        // "dry_run = true # café" saved as Latin-1.
        std::fs::write(&path, b"dry_run = true # caf\xe9\n").unwrap();
        let outcome = BouncerConfig::from_toml_file(&path);
        drop(std::fs::remove_dir_all(&dir));
        let error = outcome.expect_err("Latin-1 taken as TOML");
        assert_eq!(error.path(), Some(path.as_path()));
        assert!(error.message().contains("not UTF-8 text"), "{error}");
    }

    #[test]
    fn a_file_writes_a_key_only_if_the_key_itself_is_in_it() {
        let text = "dry_run = true\n[bans]\nfirst = \"1h\"\n";
        let file = ConfigFile {
            path: PathBuf::from("bouncer.toml"),
            text: text.to_owned(),
            config: parse(text).unwrap(),
        };
        assert!(file.writes("dry_run"));
        assert!(file.writes("bans.first"));
        assert!(!file.writes("bans.max"), "its section alone");
        assert!(!file.writes("admin.token"));
    }

    #[test]
    #[cfg(feature = "admin")]
    fn an_admin_token_no_header_can_carry_is_named() {
        let error = refused("[admin]\naddr = \"127.0.0.1:9000\"\ntoken = \"two words\"\n");
        assert_eq!(error.key(), Some("admin.token"));
        assert_eq!(error.line(), Some(3));
        assert!(error.message().contains("visible ASCII"), "{error}");
    }

    proptest! {
        #[test]
        fn any_text_is_parsed_or_refused_without_panicking(text in ".{0,200}") {
            let _ = BouncerConfig::from_toml_str(&text);
        }

        #[test]
        fn any_value_of_a_known_key_is_parsed_or_refused(
            key in prop::sample::select(vec![
                "connections.max", "connections.per_peer", "rates.burst", "timeouts.idle",
                "bans.window", "peers.exempt", "tls.cert", "fleet.redis", "bans.kernel",
            ]),
            value in "[-0-9a-z\"\\[\\]., /]{0,24}",
        ) {
            let (section, name) = key.split_once('.').unwrap_or(("", key));
            let text = if section.is_empty() {
                format!("{name} = {value}\n")
            } else {
                format!("[{section}]\n{name} = {value}\n")
            };
            if let Err(error) = BouncerConfig::from_toml_str(&text) {
                prop_assert!(error.line().is_some(), "{error}");
            }
        }
    }
}
