//! The configuration file (TOML): read within a size bound, every value checked as its flag
//! is, unknown keys refused, and every error naming the file, the line, the key and what is
//! allowed.

use std::{
    fmt,
    ops::Range,
    path::{Path, PathBuf},
};

use toml::de::{DeTable, DeValue};

use super::{
    Settings, Visit,
    value::{Setting, Value},
};
use crate::{export::web::WebConfig, util::files::read_bounded};

/// A configuration that cannot be used: exit code 2, like a usage error.
#[derive(Debug)]
pub struct ConfigError(pub String);

impl fmt::Display for ConfigError {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

/// A configuration file's text and where it came from, for messages and relative paths.
pub struct ConfigFile {
    path: PathBuf,
    source: String,
}

impl ConfigFile {
    /// Reads, parses and checks the file (and the web config it names), and sets what it
    /// says in `settings`.
    pub fn load(path: &Path, settings: &mut Settings) -> Result<(), ConfigError> {
        let source = read_bounded(path)
            .and_then(|bytes| String::from_utf8(bytes).map_err(std::io::Error::other))
            .map_err(|err| ConfigError(format!("{}: cannot read: {err}", path.display())))?;
        let file = ConfigFile {
            path: path.to_owned(),
            source,
        };
        let table: toml::Table = toml::from_str(&file.source)
            .map_err(|err| file.error_at(err.span(), err.message().trim_end().to_owned(), None))?;
        file.refuse_unknown_keys(&table)?;
        let mut reader = FileValues {
            file: &file,
            table: &table,
            settings,
            error: None,
        };
        Settings::visit(&mut reader);
        if let Some(err) = reader.error {
            return Err(err);
        }
        if let Some(web_config) = &settings.web_config
            && table.contains_key("web_config")
        {
            WebConfig::load(web_config)
                .map_err(|err| file.key_error(&["web_config"], err.to_string()))?;
        }
        Ok(())
    }

    /// Every key must be a setting's, and every table a section of them.
    fn refuse_unknown_keys(&self, table: &toml::Table) -> Result<(), ConfigError> {
        let keys = Settings::keys();
        let top: Vec<&'static str> = keys
            .iter()
            .map(|key| key.split('.').next().unwrap_or(key))
            .collect();
        for (name, value) in table {
            let section = format!("{name}.");
            let inner: Vec<&'static str> = keys
                .iter()
                .filter_map(|key| key.strip_prefix(section.as_str()))
                .collect();
            if !top.contains(&name.as_str()) {
                return Err(self.key_error(&[name], unknown_field(name, &dedup(top))));
            }
            if inner.is_empty() {
                continue;
            }
            let Some(section) = value.as_table() else {
                return Err(self.key_error(&[name], "expected a table".to_owned()));
            };
            for key in section.keys() {
                if !inner.contains(&key.as_str()) {
                    return Err(self.key_error(&[name, key], unknown_field(key, &inner)));
                }
            }
        }
        Ok(())
    }

    /// An error about a key that parsed but is not acceptable.
    fn key_error(&self, key: &[&str], message: String) -> ConfigError {
        let span = DeTable::parse(&self.source)
            .ok()
            .and_then(|table| key_span(table.get_ref(), key));
        self.error_at(span, message, Some(key.join(".")))
    }

    /// `FILE:LINE: key `KEY`: MESSAGE`, the key found from the span when not given.
    fn error_at(
        &self,
        span: Option<Range<usize>>,
        message: String,
        key: Option<String>,
    ) -> ConfigError {
        let file = self.path.display();
        let Some(span) = span else {
            return ConfigError(format!("{file}: {message}"));
        };
        let line = self.source[..span.start.min(self.source.len())]
            .matches('\n')
            .count()
            + 1;
        let key = key.or_else(|| {
            let table = DeTable::parse(&self.source).ok()?;
            key_at(table.get_ref(), span.start)
        });
        match key {
            Some(key) => ConfigError(format!("{file}:{line}: key `{key}`: {message}")),
            None => ConfigError(format!("{file}:{line}: {message}")),
        }
    }
}

/// Serde's words for a key it does not know.
fn unknown_field(name: &str, expected: &[&str]) -> String {
    let quoted: Vec<String> = expected.iter().map(|key| format!("`{key}`")).collect();
    let expected = match quoted.as_slice() {
        [] => "there are no fields".to_owned(),
        [one] => one.clone(),
        [a, b] => format!("{a} or {b}"),
        many => format!("one of {}", many.join(", ")),
    };
    format!("unknown field `{name}`, expected {expected}")
}

fn dedup(mut names: Vec<&'static str>) -> Vec<&'static str> {
    let mut seen = Vec::new();
    names.retain(|name| {
        let new = !seen.contains(name);
        seen.push(*name);
        new
    });
    names
}

/// Sets each setting the file has, checked.
struct FileValues<'a> {
    file: &'a ConfigFile,
    table: &'a toml::Table,
    settings: &'a mut Settings,
    error: Option<ConfigError>,
}

impl Visit for FileValues<'_> {
    fn visit<T: Value>(
        &mut self,
        setting: &'static Setting<T>,
        field: fn(&mut Settings) -> &mut T,
    ) {
        if self.error.is_some() {
            return;
        }
        let key: Vec<&str> = setting.key.split('.').collect();
        let mut value = Some(self.table.get(key[0]));
        for name in &key[1..] {
            value = value.map(|v| v.and_then(|v| v.get(name)));
        }
        let Some(Some(value)) = value else {
            return;
        };
        match T::from_toml(value.clone()).and_then(|value| setting.check(value)) {
            Ok(mut value) => {
                value.resolve_relative(self.file.path.parent().unwrap_or(Path::new(".")));
                *field(self.settings) = value;
            }
            Err(message) => self.error = Some(self.file.key_error(&key, message)),
        }
    }
}

/// The dotted key whose name or value covers byte `pos`, innermost first.
fn key_at(table: &DeTable<'_>, pos: usize) -> Option<String> {
    table.iter().find_map(|(key, value)| {
        if let DeValue::Table(inner) = value.get_ref()
            && let Some(inner_key) = key_at(inner, pos)
        {
            return Some(format!("{}.{inner_key}", key.get_ref()));
        }
        (key.span().contains(&pos) || value.span().contains(&pos))
            .then(|| key.get_ref().to_string())
    })
}

/// Where a dotted key's name is written.
fn key_span(table: &DeTable<'_>, path: &[&str]) -> Option<Range<usize>> {
    let (first, rest) = path.split_first()?;
    let (key, value) = table.iter().find(|(key, _)| key.get_ref() == first)?;
    match (rest.is_empty(), value.get_ref()) {
        (true, _) => Some(key.span()),
        (false, DeValue::Table(inner)) => key_span(inner, rest),
        (false, _) => None,
    }
}
