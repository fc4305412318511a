use super::*;

/// docs/config.md carries the table generated from the declarations: it cannot drift.
#[test]
fn the_docs_table_is_the_generated_one() {
    let docs = include_str!("../../../docs/config.md");
    let table = markdown_table();
    assert!(
        docs.contains(&table),
        "docs/config.md is out of date; replace its table of keys with:\n\n{table}"
    );
}

/// The packaged configuration shows every setting, commented out, in its section: with its
/// default, or, for a setting that is off by default, with a valid example; and no other key.
#[test]
fn the_packaged_file_shows_every_setting_and_its_default() {
    let packaged = include_str!("../../../packaging/seqwatch.toml");
    let mut shown: Vec<(String, String)> = Vec::new();
    let mut section = String::new();
    for line in packaged.lines() {
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = format!("{name}.");
        } else if let Some((key, value)) = line
            .strip_prefix("# ")
            .and_then(|assignment| assignment.split_once(" = "))
            && key.chars().all(|c| c.is_ascii_lowercase() || c == '_')
        {
            shown.push((format!("{section}{key}"), value.to_owned()));
        }
    }
    struct Check(Vec<(String, String)>, Vec<String>);
    impl Visit for Check {
        fn visit<T: Value>(
            &mut self,
            setting: &'static Setting<T>,
            _: fn(&mut Settings) -> &mut T,
        ) {
            let Some(index) = self.0.iter().position(|(key, _)| key == setting.key) else {
                self.1.push(format!("{}: missing", setting.key));
                return;
            };
            let (_, text) = self.0.remove(index);
            let value = toml::from_str::<toml::Table>(&format!("value = {text}"))
                .map_err(|err| err.to_string())
                .and_then(|mut table| T::from_toml(table.remove("value").expect("parsed")))
                .and_then(|value| setting.check(value));
            match (value, setting.default.to_toml()) {
                (Err(err), _) => self.1.push(format!("{}: {text}: {err}", setting.key)),
                (Ok(value), Some(_)) if value != setting.default => self.1.push(format!(
                    "{}: shows {text}, the default is {:?}",
                    setting.key, setting.default
                )),
                _ => {}
            }
        }
    }
    let mut check = Check(shown, Vec::new());
    Settings::visit(&mut check);
    for (key, _) in &check.0 {
        check.1.push(format!("{key}: not a setting"));
    }
    assert!(
        check.1.is_empty(),
        "packaging/seqwatch.toml: {:#?}",
        check.1
    );
}

#[test]
fn every_flag_is_a_setting_of_its_own() {
    let command = RunArgs::augment_args(Command::new("run"));
    let mut longs: Vec<&str> = command.get_arguments().filter_map(Arg::get_long).collect();
    let all = longs.len();
    longs.sort_unstable();
    longs.dedup();
    assert_eq!(longs.len(), all, "a flag declared twice");
    assert_eq!(
        all,
        Settings::keys().len() + 1,
        "one flag per setting, and --config"
    );
}
