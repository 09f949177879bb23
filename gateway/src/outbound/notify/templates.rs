//! The message files: the built-in texts per language and notice kind (`messages/*.toml`,
//! embedded), the operator's overrides from `templates_dir`, the language fallback
//! (`de-AT` -> `de` -> `en`), and the one template environment that also holds the providers'
//! URL and body templates. Every template compiles and renders a sample at start, so a typo is
//! a configuration error, not a failed delivery.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use minijinja::{AutoEscape, Environment, UndefinedBehavior};
use serde::{Deserialize, Serialize};

use super::NotifyConfigError;
use crate::parcels::model::NoticeKind;

/// The built-in message files: (language, TOML).
const BUILT_IN: [(&str, &str); 2] = [
    ("en", include_str!("messages/en.toml")),
    ("de", include_str!("messages/de.toml")),
];

/// The language every lookup ends at; it must stay complete.
pub const BASE_LANGUAGE: &str = "en";

/// Every notice kind, as the tables of a message file name them.
pub const KINDS: [(NoticeKind, &str); 5] = [
    (NoticeKind::Ready, "ready"),
    (NoticeKind::Resend, "resend"),
    (NoticeKind::Reminder, "reminder"),
    (NoticeKind::Expired, "expired"),
    (NoticeKind::ReturnCode, "return_code"),
];

/// The texts of a message file, per kind: `short`, `subject`, `email`.
pub const FIELDS: [&str; 3] = ["short", "subject", "email"];

/// The snake_case name of a notice kind.
pub fn kind_name(k: NoticeKind) -> &'static str {
    match k {
        NoticeKind::Ready => "ready",
        NoticeKind::Resend => "resend",
        NoticeKind::Reminder => "reminder",
        NoticeKind::Expired => "expired",
        NoticeKind::ReturnCode => "return_code",
    }
}

/// One kind's texts in a message file (any may be left out of an override file).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct KindTexts {
    short: Option<String>,
    subject: Option<String>,
    email: Option<String>,
}

impl KindTexts {
    fn get(&self, field: &str) -> Option<&String> {
        match field {
            "short" => self.short.as_ref(),
            "subject" => self.subject.as_ref(),
            _ => self.email.as_ref(),
        }
    }

    fn overlay(&mut self, other: KindTexts) {
        if other.short.is_some() {
            self.short = other.short;
        }
        if other.subject.is_some() {
            self.subject = other.subject;
        }
        if other.email.is_some() {
            self.email = other.email;
        }
    }
}

type MessageFile = BTreeMap<String, KindTexts>;

/// The variables a message template sees (absent values are empty strings).
#[derive(Debug, Clone, Default, Serialize)]
pub struct TextVars {
    pub name: String,
    pub pin: String,
    pub qr: String,
    pub qr_link: String,
    pub site_name: String,
    pub address: String,
    pub expires_local: String,
    pub order: String,
    pub kind: String,
    pub carrier: String,
    pub site: String,
    pub cabinet: String,
    pub compartment: String,
}

impl TextVars {
    /// Every variable set, to render each template once at start.
    pub fn sample() -> TextVars {
        TextVars {
            name: "Zoë \"Z\" Müller".into(),
            pin: "123456".into(),
            qr: "QRTOKEN".into(),
            qr_link: "https://lockers.example.com/qr/QRTOKEN".into(),
            site_name: "Berlin Hbf".into(),
            address: "Europaplatz 1, 10557 Berlin".into(),
            expires_local: "2026-12-03 18:00 CET".into(),
            order: "01J00000000000000000000000".into(),
            kind: "ready".into(),
            carrier: "dhl".into(),
            site: "berlin-hbf".into(),
            cabinet: "cab-1".into(),
            compartment: "1".into(),
        }
    }
}

/// The rendered texts of one notice in one language.
#[derive(Debug, Clone, PartialEq)]
pub struct Texts {
    /// The language used (after fallback).
    pub language: String,
    pub short: String,
    pub subject: String,
    pub email: String,
}

/// The template environment: message texts per language and the providers' templates.
pub struct Templates {
    env: Environment<'static>,
    languages: BTreeSet<String>,
}

/// The template name of a message text.
fn text_name(lang: &str, kind: &str, field: &str) -> String {
    format!("messages/{lang}/{kind}/{field}.txt")
}

impl Templates {
    /// Loads the built-in files, overlays `dir/<language>.toml` (if given), and compiles and
    /// test-renders every text. Blocks briefly (reads the folder): call it at start.
    pub fn load(dir: Option<&Path>) -> Result<Templates, NotifyConfigError> {
        let mut files: BTreeMap<String, MessageFile> = BTreeMap::new();
        for (lang, src) in BUILT_IN {
            let f: MessageFile = toml::from_str(src).map_err(|e| {
                NotifyConfigError::invalid(format!("built-in messages/{lang}.toml"), e)
            })?;
            files.insert(lang.into(), f);
        }
        if let Some(dir) = dir.filter(|d| !d.as_os_str().is_empty()) {
            let key = "notifications.templates_dir";
            let entries = std::fs::read_dir(dir)
                .map_err(|e| NotifyConfigError::invalid(key, format!("{}: {e}", dir.display())))?;
            let mut paths: Vec<_> = entries
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "toml"))
                .collect();
            paths.sort();
            for p in paths {
                let lang = p
                    .file_stem()
                    .and_then(|s| s.to_str())
                    .map(normalise)
                    .unwrap_or_default();
                let at = format!("{key} ({})", p.display());
                if !valid_tag(&lang) {
                    return Err(NotifyConfigError::invalid(
                        at,
                        "the file name must be a language tag such as `fr` or `de-at`",
                    ));
                }
                let src =
                    std::fs::read_to_string(&p).map_err(|e| NotifyConfigError::invalid(&at, e))?;
                let f: MessageFile =
                    toml::from_str(&src).map_err(|e| NotifyConfigError::invalid(&at, e))?;
                let merged = files.entry(lang).or_default();
                for (kind, texts) in f {
                    if !KINDS.iter().any(|(_, k)| *k == kind) {
                        return Err(NotifyConfigError::invalid(
                            format!("{at}: [{kind}]"),
                            "not a notice kind (ready, resend, reminder, expired, return_code)",
                        ));
                    }
                    merged.entry(kind).or_default().overlay(texts);
                }
            }
        }
        let mut env = Environment::new();
        env.set_undefined_behavior(UndefinedBehavior::Strict);
        env.set_trim_blocks(true);
        env.set_auto_escape_callback(|name| {
            if name.ends_with(".json") {
                AutoEscape::Json
            } else {
                AutoEscape::None
            }
        });
        let sample = TextVars::sample();
        for (lang, file) in &files {
            for (_, kind) in KINDS {
                for field in FIELDS {
                    let at = format!("messages/{lang}.toml: {kind}.{field}");
                    let src = file.get(kind).and_then(|t| t.get(field)).ok_or_else(|| {
                        NotifyConfigError::invalid(&at, "missing (every language needs every text)")
                    })?;
                    let name = text_name(lang, kind, field);
                    env.add_template_owned(name.clone(), src.clone())
                        .map_err(|e| NotifyConfigError::invalid(&at, e))?;
                    render(&env, &name, &sample).map_err(|e| NotifyConfigError::invalid(&at, e))?;
                }
            }
        }
        Ok(Templates {
            env,
            languages: files.into_keys().collect(),
        })
    }

    /// The language used for `tag`: itself, then shorter prefixes (`zh-hant-tw` -> `zh-hant`
    /// -> `zh`), then English.
    pub fn language(&self, tag: &str) -> String {
        let mut t = normalise(tag);
        loop {
            if self.languages.contains(&t) {
                return t;
            }
            match t.rfind('-') {
                Some(i) => t.truncate(i),
                None => return BASE_LANGUAGE.into(),
            }
        }
    }

    /// Every language with messages.
    pub fn languages(&self) -> impl Iterator<Item = &str> {
        self.languages.iter().map(String::as_str)
    }

    /// Renders the texts of `kind` for a recipient speaking `tag`.
    pub fn texts(
        &self,
        tag: &str,
        kind: NoticeKind,
        vars: &TextVars,
    ) -> Result<Texts, minijinja::Error> {
        let lang = self.language(tag);
        let k = kind_name(kind);
        let one = |field: &str| render(&self.env, &text_name(&lang, k, field), vars);
        Ok(Texts {
            short: one("short")?,
            subject: one("subject")?.replace(['\r', '\n'], " "),
            email: one("email")?,
            language: lang,
        })
    }

    /// Adds a provider's template (`.json` names are JSON-escaped).
    pub fn add(&mut self, name: String, src: String) -> Result<(), minijinja::Error> {
        self.env.add_template_owned(name, src)
    }

    /// Renders a template added with [`Templates::add`].
    pub fn render<S: Serialize>(&self, name: &str, ctx: &S) -> Result<String, minijinja::Error> {
        render(&self.env, name, ctx)
    }
}

fn render<S: Serialize>(
    env: &Environment<'_>,
    name: &str,
    ctx: &S,
) -> Result<String, minijinja::Error> {
    let t = env.get_template(name)?;
    Ok(t.render(ctx)?.trim().to_owned())
}

/// A language tag in the form of the lookups: lower case, `-` separated.
pub fn normalise(tag: &str) -> String {
    tag.trim().to_ascii_lowercase().replace('_', "-")
}

fn valid_tag(t: &str) -> bool {
    !t.is_empty()
        && t.split('-')
            .all(|p| !p.is_empty() && p.len() <= 8 && p.chars().all(|c| c.is_ascii_alphanumeric()))
}
