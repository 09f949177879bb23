//! Unit tests of the notifier: language fallback, routing precedence and channel fallback,
//! escaping in provider templates, configuration errors naming their key, the shipped config.

use locker_schemas::{CarrierId, OrderId, SiteId};

use super::config::NotifyConfig;
use super::http::{sample_message, SendVars};
use super::templates::Templates;
use super::{Message, Notifier, SendError};
use crate::parcels::model::{Channel, Notice, NoticeKind, Recipient};

fn cfg(toml_src: &str) -> NotifyConfig {
    toml::from_str(toml_src).expect("config parses")
}

fn err_key(toml_src: &str) -> String {
    match Notifier::new(&cfg(toml_src)) {
        Ok(_) => panic!("accepted: {toml_src}"),
        Err(e) => {
            let k = e.key().to_owned();
            eprintln!("{e}");
            k
        }
    }
}

/// Three providers (form SMS, JSON WhatsApp, push) and an SMTP one.
const PROVIDERS: &str = r#"
qr_link = "https://lockers.example.com/qr/{{ qr }}"
[providers.twilio]
kind = "http"
url = "https://api.twilio.example/2010-04-01/Accounts/AC1/Messages.json"
auth = { kind = "basic", username = "AC1", password = "secret" }
content_type = "form"
body = { To = "{{ to }}", From = "+15005550006", Body = "{{ text }}" }
message_id = "/sid"
[providers.local]
kind = "http"
url = "http://127.0.0.1:9/sms"
body = '{"to": {{ to }}, "text": {{ text }}, "lang": {{ language|tojson }}}'
[providers.push]
kind = "http"
url = "http://127.0.0.1:9/push"
auth = { kind = "bearer", token = "t0ken" }
body = '{"token": {{ to }}, "title": {{ subject }}, "body": {{ text }}, "order": {{ order }}}'
[providers.mail]
kind = "smtp"
host = "smtp.example.com"
from = "Locker Hub <noreply@lockers.example.com>"
"#;

fn notice(kind: NoticeKind, recipient: Recipient) -> Notice {
    Notice {
        id: 7,
        order: OrderId(ulid::Ulid::from_parts(1, 2)),
        kind,
        carrier: CarrierId::new("dhl").expect("id"),
        site: SiteId::new("berlin-hbf").expect("id"),
        cabinet: None,
        compartment: None,
        recipient,
        pin: Some("482913".into()),
        qr: Some("QR-abc".into()),
        site_name: "Berlin Hbf".into(),
        address: "Europaplatz 1, 10557 Berlin".into(),
        expires_at: Some(1_796_317_200_000),
        expires_local: Some("2026-12-03 18:00 CET".into()),
        created_at: 1,
    }
}

fn person(channel: Channel, language: &str) -> Recipient {
    Recipient {
        name: Some("Zoë \"Z\" Müller".into()),
        phone: Some("+4915112345678".into()),
        email: Some("zoe@example.com".into()),
        push: Some("push-token-1".into()),
        channel,
        language: language.into(),
    }
}

#[test]
fn languages_fall_back_to_the_base_tag_then_english() {
    let t = Templates::load(None).expect("built-in messages");
    assert_eq!(t.language("de"), "de");
    assert_eq!(t.language("de-AT"), "de");
    assert_eq!(t.language("de_CH"), "de");
    assert_eq!(t.language("EN-gb"), "en");
    assert_eq!(t.language("fr"), "en");
    assert_eq!(t.language("zh-Hant-TW"), "en");
    assert_eq!(t.language(""), "en");
}

#[test]
fn a_german_recipient_gets_german_text_with_the_code_link_address_and_local_expiry() {
    let n = Notifier::new(&cfg(&format!(
        "{PROVIDERS}\n[channels]\nsms = \"twilio\"\nemail = \"mail\"\n"
    )))
    .expect("valid");
    let m = n
        .render(&notice(NoticeKind::Ready, person(Channel::Email, "de-AT")))
        .expect("rendered");
    assert_eq!(m.language, "de");
    assert_eq!(m.channel, Channel::Email);
    assert_eq!(m.provider, "mail");
    assert_eq!(m.to, "zoe@example.com");
    let subject = m.subject.as_deref().expect("subject");
    assert!(subject.contains("Ihr Paket"), "{subject}");
    for want in [
        "Hallo Zoë \"Z\" Müller",
        "482913",
        "https://lockers.example.com/qr/QR-abc",
        "Europaplatz 1, 10557 Berlin",
        "2026-12-03 18:00 CET",
    ] {
        assert!(m.body.contains(want), "{want:?} not in {}", m.body);
    }
    // SMS: the short text, no subject.
    let m = n
        .render(&notice(NoticeKind::Reminder, person(Channel::Sms, "en")))
        .expect("rendered");
    assert_eq!((m.channel, m.subject.as_deref()), (Channel::Sms, None));
    assert!(m.body.starts_with("Reminder:"), "{}", m.body);
    assert!(m.body.contains("2026-12-03 18:00 CET"), "{}", m.body);
    // What the outbox stores comes back the same.
    let back: Message =
        serde_json::from_str(&serde_json::to_string(&m).expect("json")).expect("parses");
    assert_eq!(back, m);
}

#[test]
fn every_kind_renders_in_every_built_in_language() {
    let n = Notifier::new(&cfg(&format!(
        "{PROVIDERS}\n[channels]\nsms = \"twilio\"\nemail = \"mail\"\n"
    )))
    .expect("valid");
    for lang in ["en", "de"] {
        for (kind, _) in super::templates::KINDS {
            for ch in [Channel::Sms, Channel::Email] {
                let mut no = notice(kind, person(ch, lang));
                if matches!(kind, NoticeKind::Expired | NoticeKind::Reminder) {
                    (no.pin, no.qr) = (None, None);
                }
                let m = n.render(&no).expect("rendered");
                assert!(!m.body.is_empty());
                assert!(!m.body.contains("none"), "{lang} {kind:?}: {}", m.body);
                if ch == Channel::Sms {
                    assert!(m.body.chars().count() < 320, "{lang} {kind:?}: {}", m.body);
                }
            }
        }
    }
}

#[test]
fn the_most_specific_route_wins_per_channel() {
    let n = Notifier::new(&cfg(&format!(
        r#"{PROVIDERS}
[providers.b]
kind = "http"
url = "http://127.0.0.1:9/b"
body = {{ to = "{{{{ to }}}}" }}
[providers.c]
kind = "http"
url = "http://127.0.0.1:9/c"
body = {{ to = "{{{{ to }}}}" }}
[providers.d]
kind = "http"
url = "http://127.0.0.1:9/d"
body = {{ to = "{{{{ to }}}}" }}
[channels]
sms = "twilio"
email = "mail"
[[routes]]
site = "berlin-hbf"
sms = "b"
[[routes]]
carrier = "dhl"
sms = "c"
[[routes]]
site = "berlin-hbf"
carrier = "dhl"
sms = "d"
[[routes]]
site = "berlin-hbf"
carrier = "ups"
email = "mail"
"#
    )))
    .expect("valid");
    let r = &n.inner.router;
    let (s1, s2) = (
        SiteId::new("berlin-hbf").expect("id"),
        SiteId::new("hamburg").expect("id"),
    );
    let (c1, c2) = (
        CarrierId::new("dhl").expect("id"),
        CarrierId::new("ups").expect("id"),
    );
    assert_eq!(r.provider(&s1, &c1, Channel::Sms), Some("d"));
    assert_eq!(r.provider(&s2, &c1, Channel::Sms), Some("c"));
    // The ups route at berlin-hbf names only e-mail: SMS falls to the site's route.
    assert_eq!(r.provider(&s1, &c2, Channel::Sms), Some("b"));
    assert_eq!(r.provider(&s2, &c2, Channel::Sms), Some("twilio"));
    assert_eq!(r.provider(&s2, &c2, Channel::Push), None);
    let m = n
        .render(&notice(NoticeKind::Ready, person(Channel::Sms, "en")))
        .expect("rendered");
    assert_eq!(m.provider, "d");
}

#[test]
fn a_recipient_without_an_address_for_their_channel_falls_back_in_order() {
    let n = Notifier::new(&cfg(&format!(
        "{PROVIDERS}\n[channels]\nsms = \"twilio\"\nwhatsapp = \"local\"\nemail = \"mail\"\n"
    )))
    .expect("valid");
    // E-mail chosen but none given: SMS is first in the fallback order.
    let mut p = person(Channel::Email, "en");
    p.email = None;
    let m = n.render(&notice(NoticeKind::Ready, p)).expect("rendered");
    assert_eq!((m.channel, m.provider.as_str()), (Channel::Sms, "twilio"));
    // Push chosen, no push provider configured: SMS.
    let m = n
        .render(&notice(NoticeKind::Ready, person(Channel::Push, "en")))
        .expect("rendered");
    assert_eq!(m.channel, Channel::Sms);
    // Only an e-mail address (an invalid one): nothing fits, permanently, with the reasons.
    let p = Recipient {
        email: Some("not an address".into()),
        ..Recipient::default()
    };
    match n.render(&notice(NoticeKind::Ready, p)) {
        Err(SendError::Permanent { reason }) => {
            assert!(reason.contains("sms: no phone number"), "{reason}");
            assert!(
                reason.contains("email: the e-mail address is not valid"),
                "{reason}"
            );
            assert!(reason.contains("push: no push token"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
    // Nothing configured at all.
    let n = Notifier::new(&NotifyConfig::default()).expect("defaults are valid");
    assert!(!n.enabled());
    let r = n.render(&notice(NoticeKind::Ready, person(Channel::Sms, "en")));
    assert!(
        matches!(&r, Err(SendError::Permanent { reason }) if reason.contains("no provider")),
        "{r:?}"
    );
}

#[test]
fn provider_templates_escape_json_and_keep_form_fields_raw() {
    let mut t = Templates::load(None).expect("built-in");
    let mut m = sample_message().expect("sample");
    m.name = Some("Zoë \"Z\" O'Brien </script> \\ 🚀".into());
    m.body = "Line 1\nLine \"2\" \u{0007} {{ not a template }}".into();
    let vars = SendVars::new(&m);
    t.add(
        "a.json".into(),
        r#"{"name": {{ name }}, "text": {{ text|tojson }}, "n": {{ notice }}}"#.into(),
    )
    .expect("compiles");
    let out = t.render("a.json", &vars).expect("renders");
    let v: serde_json::Value = serde_json::from_str(&out).expect("valid JSON");
    assert_eq!(v["name"], m.name.as_deref().expect("name"));
    assert_eq!(v["text"], m.body.as_str());
    assert_eq!(v["n"], 1);
    // Plain text templates (form fields, message texts) keep the text as it is.
    t.add("b.txt".into(), "{{ name }}".into())
        .expect("compiles");
    assert_eq!(
        t.render("b.txt", &vars).expect("renders"),
        m.name.as_deref().expect("name")
    );
}

#[test]
fn configuration_errors_name_the_key() {
    let with = |extra: &str| format!("{PROVIDERS}\n{extra}");
    assert_eq!(
        err_key(&with("[channels]\nsms = \"nope\"")),
        "notifications.channels.sms"
    );
    assert_eq!(
        err_key(&with("[channels]\nsms = \"mail\"")),
        "notifications.channels.sms",
        "SMTP serves e-mail only"
    );
    assert_eq!(
        err_key(&with("[[routes]]\nsms = \"twilio\"")),
        "notifications.routes[0]"
    );
    assert_eq!(
        err_key(&with(
            "[[routes]]\ncarrier = \"dhl\"\nsms = \"twilio\"\n[[routes]]\ncarrier = \"dhl\"\nsms = \"local\""
        )),
        "notifications.routes[1].sms"
    );
    assert_eq!(
        err_key(&with("[[routes]]\nsite = \"a\"\npush = \"ghost\"")),
        "notifications.routes[0].push"
    );
    assert_eq!(
        err_key("qr_link = \"https://x/{{ qr \""),
        "notifications.qr_link"
    );
    assert_eq!(
        err_key("qr_link = \"https://x/{{ qr_token }}\""),
        "notifications.qr_link",
        "an unknown variable is caught at start"
    );
    let provider = |body: &str, extra: &str| {
        format!(
            "[providers.p]\nkind = \"http\"\nurl = \"http://127.0.0.1:9/\"\nbody = {body}\n{extra}"
        )
    };
    assert_eq!(
        err_key(&provider(r#"'{"to": {{ phone }}}'"#, "")),
        "notifications.providers.p.body"
    );
    assert_eq!(
        err_key(&provider(r#"'{"to": "{{ to }}"}'"#, "")),
        "notifications.providers.p.body",
        "a quoted value renders as invalid JSON"
    );
    assert_eq!(
        err_key(&provider(r#"'To={{ to }}'"#, "content_type = \"form\"")),
        "notifications.providers.p.body"
    );
    assert_eq!(
        err_key(&provider(
            r#"{ To = "{{ too }}" }"#,
            "content_type = \"form\""
        )),
        "notifications.providers.p.body.To"
    );
    assert_eq!(
        err_key(&provider(r#"{ To = "{{ to }}" }"#, "success = [42]")),
        "notifications.providers.p.success"
    );
    assert_eq!(
        err_key(&provider(r#"{ To = "{{ to }}" }"#, "message_id = \"sid\"")),
        "notifications.providers.p.message_id"
    );
    assert_eq!(
        err_key(&provider(r#"{ To = "{{ to }}" }"#, "method = \"P O S T\"")),
        "notifications.providers.p.method"
    );
    assert_eq!(
        err_key(&provider(
            r#"{ To = "{{ to }}" }"#,
            "auth = { kind = \"bearer\", token = \"\" }"
        )),
        "notifications.providers.p.auth.token"
    );
    assert_eq!(
        err_key("[providers.p]\nkind = \"http\"\nurl = \"ftp://x/\"\nbody = { a = \"b\" }"),
        "notifications.providers.p.url"
    );
    assert_eq!(
        err_key("[providers.m]\nkind = \"smtp\"\nhost = \"h\"\nfrom = \"not an address\""),
        "notifications.providers.m.from"
    );
    assert_eq!(
        err_key("[providers.m]\nkind = \"smtp\"\nhost = \"h\"\nfrom = \"a@b.c\"\nca_file = \"/nonexistent/ca.pem\""),
        "notifications.providers.m.ca_file"
    );
    // Unknown keys are refused by serde (a typo is not silently ignored).
    assert!(toml::from_str::<NotifyConfig>("enabeld = true").is_err());
    assert!(toml::from_str::<NotifyConfig>(
        "[providers.m]\nkind = \"smtp\"\nhost = \"h\"\nfrom = \"a@b.c\"\nstarttls = true"
    )
    .is_err());
}

#[test]
fn message_files_in_templates_dir_override_and_add_languages() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        dir.path().join("en.toml"),
        "[ready]\nshort = \"PIN {{ pin }} at {{ site_name }}\"\n",
    )
    .expect("write");
    let complete_fr: String = super::templates::KINDS
        .iter()
        .map(|(_, k)| {
            format!("[{k}]\nshort = \"Colis {{{{ pin }}}}\"\nsubject = \"Colis\"\nemail = \"Bonjour\"\n")
        })
        .collect();
    std::fs::write(dir.path().join("fr.toml"), complete_fr).expect("write");
    let c = cfg(&format!(
        "templates_dir = {:?}\n{PROVIDERS}\n[channels]\nsms = \"twilio\"",
        dir.path()
    ));
    let n = Notifier::new(&c).expect("valid");
    let m = n
        .render(&notice(NoticeKind::Ready, person(Channel::Sms, "en-US")))
        .expect("rendered");
    assert_eq!(m.body, "PIN 482913 at Berlin Hbf");
    let m = n
        .render(&notice(NoticeKind::Ready, person(Channel::Sms, "fr-BE")))
        .expect("rendered");
    assert_eq!(
        (m.language.as_str(), m.body.as_str()),
        ("fr", "Colis 482913")
    );
    // The other English texts stay built in.
    let m = n
        .render(&notice(NoticeKind::Expired, person(Channel::Sms, "en")))
        .expect("rendered");
    assert!(m.body.contains("not collected"), "{}", m.body);

    // A new language must be complete; a typo in a variable fails at start, naming the text.
    std::fs::write(dir.path().join("it.toml"), "[ready]\nshort = \"x\"\n").expect("write");
    let e = Notifier::new(&c).expect_err("incomplete");
    assert!(
        e.key().contains("it.toml") && e.key().contains("ready.subject"),
        "{e}"
    );
    std::fs::remove_file(dir.path().join("it.toml")).expect("rm");
    std::fs::write(
        dir.path().join("de.toml"),
        "[reminder]\nemail = \"{{ pni }}\"\n",
    )
    .expect("write");
    let e = Notifier::new(&c).expect_err("typo");
    assert!(e.key().contains("de.toml: reminder.email"), "{e}");
}

#[test]
fn the_shipped_gateway_config_has_a_valid_notifications_section() {
    let file =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../broker-config/gateway.toml");
    let cfg = crate::config::GatewayConfig::load(Some(&file)).expect("loads");
    assert!(
        !cfg.notifications.enabled,
        "off unless an operator turns it on"
    );
    Notifier::new(&cfg.notifications).expect("valid");
}

#[test]
fn retry_after_is_read_as_seconds_or_an_http_date() {
    use reqwest::header::{HeaderMap, HeaderValue, RETRY_AFTER};
    use std::time::Duration;
    let with = |v: &str| {
        let mut h = HeaderMap::new();
        h.insert(RETRY_AFTER, HeaderValue::from_str(v).expect("value"));
        super::http::retry_after(&h)
    };
    assert_eq!(with("120"), Some(Duration::from_secs(120)));
    // A date already past: right away.
    assert_eq!(with("Wed, 21 Oct 2015 07:28:00 GMT"), Some(Duration::ZERO));
    // A date far ahead: about that long (no wall-time bound asserted, only the order).
    let ahead = with("Fri, 01 Jan 2100 00:00:00 GMT").expect("a date");
    assert!(ahead > Duration::from_secs(365 * 24 * 3600), "{ahead:?}");
    assert_eq!(with("soon"), None);
    assert_eq!(super::http::retry_after(&HeaderMap::new()), None);
}
