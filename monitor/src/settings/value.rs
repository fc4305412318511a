//! One setting's declaration ([`Setting`]) and what each type of value needs to be read from a
//! flag and from the file, checked, and written back for the docs ([`Value`]).

use std::{
    fmt,
    net::SocketAddr,
    ops::RangeInclusive,
    path::{Path, PathBuf},
    str::FromStr,
};

use clap::{Arg, ArgAction, ArgMatches, ValueEnum};
use serde::Deserialize;

use crate::kernel::AttachMode;

/// A setting: its key in the file (`section.key` in a table), its flag, what it sets, its
/// default and what it allows beyond its type.
pub struct Setting<T: Value> {
    pub key: &'static str,
    pub flag: Flag,
    /// What it sets, for `--help` and docs/config.md (the allowed values are added).
    pub help: &'static str,
    pub default: T,
    pub allowed: T::Allowed,
}

/// A setting's command-line flag.
pub struct Flag {
    pub long: &'static str,
    pub short: Option<char>,
    pub value_name: &'static str,
}

/// `--long VALUE_NAME`.
pub const fn flag(long: &'static str, value_name: &'static str) -> Flag {
    Flag {
        long,
        short: None,
        value_name,
    }
}

impl<T: Value> Setting<T> {
    /// Checks a value from a flag or the file: a flag and its key accept the same values.
    pub fn check(&self, value: T) -> Result<T, String> {
        value.check(&self.allowed)?;
        Ok(value)
    }

    /// A flag's value (clap's `value_parser`).
    pub fn parse(&self, text: &str) -> Result<T, String> {
        self.check(T::parse_flag(text, &self.allowed)?)
    }

    /// `--help` for the flag: what it sets, then what it allows.
    pub fn help(&self) -> String {
        self.help_for(self.help)
    }

    /// `--help` for a flag that shares the setting's values but means something of its own.
    pub fn help_for(&self, what: &str) -> String {
        match T::describe(&self.allowed) {
            Some(allowed) => format!("{what} ({allowed})"),
            None => what.to_owned(),
        }
    }
}

/// What a type of setting value needs.
pub trait Value: Clone + PartialEq + fmt::Debug + Send + Sync + 'static {
    /// What a setting of this type allows beyond its type: a range for numbers.
    type Allowed: Sync + 'static;

    fn check(&self, allowed: &Self::Allowed) -> Result<(), String>;

    /// The allowed values in words, if the type does not say it all.
    fn describe(allowed: &Self::Allowed) -> Option<String>;

    /// Parses a flag's text (checked afterwards).
    fn parse_flag(text: &str, allowed: &Self::Allowed) -> Result<Self, String>;

    /// Reads the file's value (checked afterwards).
    fn from_toml(value: toml::Value) -> Result<Self, String>;

    /// The value as the file writes it; `None` for an unset value (a path that is off, no
    /// interface named).
    fn to_toml(&self) -> Option<String>;

    /// The flag, made to parse into this type.
    fn arg(setting: &'static Setting<Self>, arg: Arg) -> Arg {
        arg.num_args(1)
            .value_parser(move |text: &str| setting.parse(text))
    }

    /// The flag's value, if it was given.
    fn from_matches(matches: &ArgMatches, id: &str) -> Option<Self> {
        matches.get_one::<Self>(id).cloned()
    }

    /// Makes a path read from the file relative to the file's own directory.
    fn resolve_relative(&mut self, _base: &Path) {}
}

/// Deserializes a TOML value, with serde's words for a value of the wrong type.
fn deserialize<T: for<'de> Deserialize<'de>>(value: toml::Value) -> Result<T, String> {
    value
        .try_into()
        .map_err(|err: toml::de::Error| err.message().trim_end().to_owned())
}

fn range_words<T: fmt::Display>(range: &RangeInclusive<T>) -> String {
    format!("expected {} to {}", range.start(), range.end())
}

macro_rules! numbers {
    ($($number:ty),*) => {$(
        impl Value for $number {
            type Allowed = RangeInclusive<$number>;

            fn check(&self, allowed: &Self::Allowed) -> Result<(), String> {
                if allowed.contains(self) {
                    Ok(())
                } else {
                    Err(format!("{self} is out of range: {}", range_words(allowed)))
                }
            }

            fn describe(allowed: &Self::Allowed) -> Option<String> {
                Some(format!("{} to {}", allowed.start(), allowed.end()))
            }

            fn parse_flag(text: &str, allowed: &Self::Allowed) -> Result<Self, String> {
                text.parse()
                    .map_err(|err| format!("not a number ({err}): {}", range_words(allowed)))
            }

            fn from_toml(value: toml::Value) -> Result<Self, String> {
                deserialize(value)
            }

            fn to_toml(&self) -> Option<String> {
                Some(self.to_string())
            }
        }
    )*};
}

numbers!(u64, usize);

impl Value for bool {
    type Allowed = ();

    fn check(&self, (): &()) -> Result<(), String> {
        Ok(())
    }

    fn describe((): &()) -> Option<String> {
        None
    }

    fn parse_flag(text: &str, (): &()) -> Result<Self, String> {
        text.parse()
            .map_err(|_| format!("`{text}` is not a boolean: expected true or false"))
    }

    fn from_toml(value: toml::Value) -> Result<Self, String> {
        deserialize(value)
    }

    fn to_toml(&self) -> Option<String> {
        Some(self.to_string())
    }

    /// `--flag` alone is `--flag true`.
    fn arg(setting: &'static Setting<Self>, arg: Arg) -> Arg {
        arg.num_args(0..=1)
            .default_missing_value("true")
            .value_parser(move |text: &str| setting.parse(text))
    }
}

impl Value for SocketAddr {
    type Allowed = ();

    fn check(&self, (): &()) -> Result<(), String> {
        Ok(())
    }

    fn describe((): &()) -> Option<String> {
        None
    }

    fn parse_flag(text: &str, (): &()) -> Result<Self, String> {
        SocketAddr::from_str(text).map_err(|err| format!("{err}: expected IP:PORT"))
    }

    fn from_toml(value: toml::Value) -> Result<Self, String> {
        deserialize(value)
    }

    fn to_toml(&self) -> Option<String> {
        Some(format!("\"{self}\""))
    }
}

/// A list of names (the interfaces), each checked by `Allowed`. The flag is repeated.
impl Value for Vec<String> {
    type Allowed = fn(&str) -> Result<(), String>;

    fn check(&self, allowed: &Self::Allowed) -> Result<(), String> {
        self.iter().try_for_each(|name| allowed(name))
    }

    fn describe(_: &Self::Allowed) -> Option<String> {
        None
    }

    fn parse_flag(text: &str, _: &Self::Allowed) -> Result<Self, String> {
        Ok(vec![text.to_owned()])
    }

    fn from_toml(value: toml::Value) -> Result<Self, String> {
        deserialize(value)
    }

    /// `None` when empty, which means every interface.
    fn to_toml(&self) -> Option<String> {
        let names: Vec<String> = self.iter().map(|name| format!("{name:?}")).collect();
        (!names.is_empty()).then(|| format!("[{}]", names.join(", ")))
    }

    fn arg(setting: &'static Setting<Self>, arg: Arg) -> Arg {
        arg.action(ArgAction::Append)
            .value_parser(move |text: &str| (setting.allowed)(text).map(|()| text.to_owned()))
    }

    fn from_matches(matches: &ArgMatches, id: &str) -> Option<Self> {
        let names = matches.get_many::<String>(id)?;
        Some(names.cloned().collect())
    }
}

/// A file path, or off (`None`). In the file, a relative path is relative to the file.
impl Value for Option<PathBuf> {
    type Allowed = ();

    fn check(&self, (): &()) -> Result<(), String> {
        match self {
            Some(path) if path.file_name().is_none() => Err("expected a file path".to_owned()),
            _ => Ok(()),
        }
    }

    fn describe((): &()) -> Option<String> {
        None
    }

    fn parse_flag(text: &str, (): &()) -> Result<Self, String> {
        Ok(Some(PathBuf::from(text)))
    }

    fn from_toml(value: toml::Value) -> Result<Self, String> {
        deserialize::<PathBuf>(value).map(Some)
    }

    fn to_toml(&self) -> Option<String> {
        self.as_ref()
            .map(|path| format!("{:?}", path.display().to_string()))
    }

    fn resolve_relative(&mut self, base: &Path) {
        if let Some(path) = self
            && path.is_relative()
            && path != Path::new("-")
        {
            *path = base.join(&*path);
        }
    }
}

/// Which SYN-ACKs are sampled.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Directions {
    Egress,
    Ingress,
    Both,
}

/// Which network namespaces the daemon follows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum NetnsMode {
    /// Its own only.
    #[value(name = "self")]
    Own,
    /// Every network namespace of the host, as they come and go.
    All,
}

/// A choice among a clap value enum's names, in the file as on the command line.
macro_rules! choices {
    ($($choice:ty),*) => {$(
        impl Value for $choice {
            type Allowed = ();

            fn check(&self, (): &()) -> Result<(), String> {
                Ok(())
            }

            fn describe((): &()) -> Option<String> {
                Some(names::<$choice>().join(", "))
            }

            fn parse_flag(text: &str, (): &()) -> Result<Self, String> {
                <$choice as ValueEnum>::from_str(text, false).map_err(|_| {
                    format!("`{text}` is not allowed: expected one of {}", names::<$choice>().join(", "))
                })
            }

            fn from_toml(value: toml::Value) -> Result<Self, String> {
                Self::parse_flag(&deserialize::<String>(value)?, &())
            }

            fn to_toml(&self) -> Option<String> {
                let name = self.to_possible_value()?;
                Some(format!("\"{}\"", name.get_name()))
            }
        }
    )*};
}

choices!(Directions, AttachMode, NetnsMode);

fn names<T: ValueEnum>() -> Vec<String> {
    T::value_variants()
        .iter()
        .filter_map(|v| v.to_possible_value().map(|p| p.get_name().to_owned()))
        .collect()
}

/// Names: `web,db` on the command line (empty: none), an array in the file; each 1 to
/// [`MAX_NAME`] characters, at most [`MAX_NAMES`] of them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NameList(pub Vec<String>);

/// The longest name of a [`NameList`], and how many it holds.
const MAX_NAME: usize = 253;
const MAX_NAMES: usize = 256;

impl Value for NameList {
    type Allowed = ();

    fn check(&self, (): &()) -> Result<(), String> {
        if self.0.len() > MAX_NAMES {
            return Err(format!("{} names: at most {MAX_NAMES}", self.0.len()));
        }
        match self
            .0
            .iter()
            .find(|name| name.is_empty() || name.len() > MAX_NAME)
        {
            Some(name) => Err(format!("{name:?}: a name has 1 to {MAX_NAME} characters")),
            None => Ok(()),
        }
    }

    fn describe((): &()) -> Option<String> {
        Some("names; empty: none".to_owned())
    }

    fn parse_flag(text: &str, (): &()) -> Result<Self, String> {
        let names = text
            .split(',')
            .map(str::trim)
            .filter(|name| !name.is_empty());
        let list = NameList(names.map(str::to_owned).collect());
        list.check(&()).map(|()| list)
    }

    fn from_toml(value: toml::Value) -> Result<Self, String> {
        deserialize(value).map(NameList)
    }

    fn to_toml(&self) -> Option<String> {
        let names: Vec<String> = self.0.iter().map(|name| format!("{name:?}")).collect();
        Some(format!("[{}]", names.join(", ")))
    }
}

/// A list of TCP ports: `443,8443` on the command line (empty: no port), an array in the file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortList(pub Vec<u16>);

impl Value for PortList {
    type Allowed = ();

    fn check(&self, (): &()) -> Result<(), String> {
        if self.0.contains(&0) {
            return Err("0 is not a port: expected 1 to 65535".to_owned());
        }
        Ok(())
    }

    fn describe((): &()) -> Option<String> {
        Some("ports 1 to 65535; empty: none".to_owned())
    }

    fn parse_flag(text: &str, (): &()) -> Result<Self, String> {
        text.split(',')
            .map(str::trim)
            .filter(|port| !port.is_empty())
            .map(|port| match port.parse::<u16>() {
                Ok(port) if port > 0 => Ok(port),
                _ => Err(format!("{port:?} is not a port: expected 1 to 65535")),
            })
            .collect::<Result<_, _>>()
            .map(PortList)
    }

    fn from_toml(value: toml::Value) -> Result<Self, String> {
        deserialize(value).map(PortList)
    }

    fn to_toml(&self) -> Option<String> {
        let ports: Vec<String> = self.0.iter().map(u16::to_string).collect();
        Some(format!("[{}]", ports.join(", ")))
    }
}
