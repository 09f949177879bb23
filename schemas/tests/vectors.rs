//! The committed test vectors (`schemas/vectors/`) against the codec, the generator and the CDDL
//! (`schemas/locker.cddl`), checked with a real RFC 8610 validator (the `cddl` crate).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use ciborium::Value;
use locker_schemas::codec;
use locker_schemas::topics::{DownKind, StreamKind, UpKind};
use locker_schemas::vectors::{self, Example};

fn crate_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn vectors_dir() -> PathBuf {
    crate_dir().join("vectors")
}

fn schema() -> String {
    std::fs::read_to_string(crate_dir().join("locker.cddl")).expect("schemas/locker.cddl")
}

/// Validates `bytes` against one rule of the schema. The `cddl` crate validates against the
/// first rule of a document, so a root naming the wanted rule is put in front.
fn validate(schema: &str, rule: &str, bytes: &[u8]) -> Result<(), String> {
    let doc = format!("vector-under-test = {rule}\n{schema}");
    cddl::validate_cbor_from_slice(&doc, bytes, None).map_err(|e| e.to_string())
}

fn to_value(bytes: &[u8]) -> Value {
    ciborium::from_reader(bytes).expect("well-formed CBOR")
}

fn to_bytes(v: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    ciborium::into_writer(v, &mut out).expect("encodes");
    out
}

fn last(v: &Value) -> &Value {
    match v {
        Value::Array(items) => items.last().expect("non-empty array"),
        other => panic!("expected an array, got {other:?}"),
    }
}

fn decodes(family: &str, bytes: &[u8]) -> Result<(), codec::DecodeError> {
    match family {
        "uplink" => codec::decode_uplink(bytes).map(drop),
        "downlink" => codec::decode_downlink(bytes).map(drop),
        _ => codec::decode_stream(bytes).map(drop),
    }
}

fn example(name: &str) -> Example {
    vectors::examples()
        .into_iter()
        .find(|e| e.name == name)
        .unwrap_or_else(|| panic!("no example {name}"))
}

fn files_with_extension(dir: &Path, ext: &str) -> BTreeSet<String> {
    std::fs::read_dir(dir)
        .expect("schemas/vectors exists")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().and_then(|e| e.to_str()) == Some(ext))
        .map(|p| {
            p.file_stem()
                .and_then(|s| s.to_str())
                .expect("utf-8 name")
                .to_owned()
        })
        .collect()
}

#[test]
fn committed_vectors_are_exactly_the_examples_and_round_trip() {
    let dir = vectors_dir();
    let examples = vectors::examples();
    let names: BTreeSet<String> = examples.iter().map(|e| e.name.to_owned()).collect();
    for ext in ["cbor", "diag", "hex"] {
        assert_eq!(
            files_with_extension(&dir, ext),
            names,
            "schemas/vectors/*.{ext} must be exactly one file per example; regenerate with \
             `cargo run -p locker-schemas --features gen --bin locker-vectors`"
        );
    }
    for e in &examples {
        let on_disk = std::fs::read(dir.join(format!("{}.cbor", e.name))).expect("reads");
        assert_eq!(on_disk, e.bytes, "{}.cbor is stale", e.name);
        let again = vectors::reencode(e.name, &on_disk)
            .unwrap_or_else(|err| panic!("{}.cbor does not decode: {err}", e.name));
        assert_eq!(again, on_disk, "{} re-encodes byte-identically", e.name);
    }
}

#[test]
fn generator_check_mode_finds_the_committed_folder_up_to_date() {
    let report = vectors::write_all(&vectors_dir(), true).expect("checks");
    assert!(
        report.is_clean(),
        "schemas/vectors is out of date; run `cargo run -p locker-schemas --features gen --bin \
         locker-vectors`:\n{}",
        report
            .changes
            .iter()
            .map(|c| c.to_string())
            .collect::<Vec<_>>()
            .join("\n")
    );
}

#[test]
fn diagnostic_notation_converts_back_to_the_exact_bytes() {
    for e in vectors::examples() {
        let text = std::fs::read_to_string(vectors_dir().join(format!("{}.diag", e.name)))
            .expect("reads .diag");
        let item = cbor_diag::parse_diag(text.trim_end())
            .unwrap_or_else(|err| panic!("{}.diag does not parse: {err}", e.name));
        assert_eq!(
            item.to_bytes(),
            e.bytes,
            "{}.diag encodes to the vector",
            e.name
        );
    }
}

#[test]
fn the_schema_parses() {
    cddl::cddl_from_str(&schema(), true).expect("locker.cddl is valid CDDL");
}

#[test]
fn examples_cover_every_kind_and_action() {
    let rules: BTreeSet<&str> = vectors::examples()
        .iter()
        .flat_map(|e| [Some(e.message_rule), Some(e.body_rule), e.action_rule])
        .flatten()
        .collect();
    for k in UpKind::ALL {
        assert!(rules.contains(k.as_str()), "no example uplink of kind {k}");
    }
    assert_eq!(
        vectors::examples()
            .iter()
            .filter(|e| e.family_rule == "downlink")
            .map(|e| e.message_rule)
            .collect::<BTreeSet<_>>()
            .len(),
        DownKind::ALL.len(),
        "an example for every downlink kind"
    );
    for k in StreamKind::ALL {
        assert!(
            rules.contains(k.as_str()),
            "no example stream message of kind {k}"
        );
    }
    for a in [
        "action-unlock",
        "action-unlock-all",
        "action-set-config",
        "action-power-save",
        "action-reboot",
        "action-sync-credentials",
    ] {
        assert!(rules.contains(a), "no example command with {a}");
    }
}

#[test]
fn every_vector_matches_its_rules_in_the_cddl() {
    let schema = schema();
    let examples = vectors::examples();
    let families = ["uplink", "downlink", "stream-message"];
    for e in &examples {
        let bytes = std::fs::read(vectors_dir().join(format!("{}.cbor", e.name))).expect("reads");
        for rule in ["locker-message", e.family_rule, e.message_rule] {
            validate(&schema, rule, &bytes)
                .unwrap_or_else(|err| panic!("{} does not match rule {rule}:\n{err}", e.name));
        }
        let value = to_value(&bytes);
        let body = last(&value);
        validate(&schema, e.body_rule, &to_bytes(body)).unwrap_or_else(|err| {
            panic!(
                "body of {} does not match rule {}:\n{err}",
                e.name, e.body_rule
            )
        });
        if let Some(action) = e.action_rule {
            validate(&schema, action, &to_bytes(last(body))).unwrap_or_else(|err| {
                panic!("action of {} does not match {action}:\n{err}", e.name)
            });
        }
        // ... and nothing else: not another family, not another kind of its own family.
        for other in families.iter().filter(|f| **f != e.family_rule) {
            assert!(
                validate(&schema, other, &bytes).is_err(),
                "{} must not match {other}",
                e.name
            );
        }
        for other in examples
            .iter()
            .filter(|o| o.family_rule == e.family_rule && o.message_rule != e.message_rule)
        {
            assert!(
                validate(&schema, other.message_rule, &bytes).is_err(),
                "{} must not match {}",
                e.name,
                other.message_rule
            );
        }
    }
}

/// Rebuilds `name`'s vector with the element at `path` replaced by `with`.
fn mutate(name: &str, path: &[usize], with: Value) -> Vec<u8> {
    fn walk(v: &mut Value, path: &[usize], with: Value) {
        match path.split_first() {
            None => *v = with,
            Some((i, rest)) => match v {
                Value::Array(items) => walk(&mut items[*i], rest, with),
                other => panic!("path leads into {other:?}"),
            },
        }
    }
    let mut v = to_value(&example(name).bytes);
    walk(&mut v, path, with);
    to_bytes(&v)
}

fn int(n: i64) -> Value {
    Value::Integer(n.into())
}

#[test]
fn wrong_payloads_fail_the_cddl_and_the_codec() {
    let schema = schema();
    let cases: Vec<(&str, &str, &str, Vec<u8>)> = vec![
        // (what, vector, family, payload)
        (
            "version as text",
            "up-door",
            "uplink",
            mutate("up-door", &[0], Value::Text("1".into())),
        ),
        (
            "version 2",
            "up-door",
            "uplink",
            mutate("up-door", &[0], int(2)),
        ),
        (
            "seq as text",
            "up-door",
            "uplink",
            mutate("up-door", &[3], Value::Text("4000000".into())),
        ),
        (
            "negative boot",
            "up-door",
            "uplink",
            mutate("up-door", &[2], int(-1)),
        ),
        (
            "boot over u32",
            "up-door",
            "uplink",
            mutate("up-door", &[2], int(1 << 32)),
        ),
        (
            "15-byte command id",
            "down-cmd-unlock",
            "downlink",
            mutate("down-cmd-unlock", &[2, 0], Value::Bytes(vec![0x01; 15])),
        ),
        (
            "15-byte door cause",
            "up-door",
            "uplink",
            mutate("up-door", &[6, 2], Value::Bytes(vec![0x01; 15])),
        ),
        (
            "outcome 9",
            "up-result",
            "uplink",
            mutate("up-result", &[6, 1], int(9)),
        ),
        (
            "door cause 2",
            "up-door",
            "uplink",
            mutate("up-door", &[6, 2], int(2)),
        ),
        ("door kind with a hello body", "up-door", "uplink", {
            let hello = to_value(&example("up-hello").bytes);
            mutate("up-door", &[6], last(&hello).clone())
        }),
        (
            "unknown uplink kind",
            "up-door",
            "uplink",
            mutate("up-door", &[5], int(8)),
        ),
        (
            "unknown action",
            "down-cmd-reboot",
            "downlink",
            mutate("down-cmd-reboot", &[2, 4, 0], int(6)),
        ),
        (
            "unlock without compartment",
            "down-cmd-unlock",
            "downlink",
            { mutate("down-cmd-unlock", &[2, 4], Value::Array(vec![int(0)])) },
        ),
        (
            "null compartment in a door event",
            "up-door",
            "uplink",
            mutate("up-door", &[6, 0], Value::Null),
        ),
        (
            "door parcel reading as 1",
            "up-door-closed-parcel",
            "uplink",
            mutate("up-door-closed-parcel", &[6, 3], int(1)),
        ),
        (
            "door parcel reading as text",
            "up-door-closed-parcel",
            "uplink",
            mutate("up-door-closed-parcel", &[6, 3], Value::Text("true".into())),
        ),
        (
            "door with two elements",
            "up-door",
            "uplink",
            mutate(
                "up-door",
                &[6],
                Value::Array(vec![int(48), Value::Bool(true)]),
            ),
        ),
        (
            "unknown alarm kind",
            "up-alarm",
            "uplink",
            mutate("up-alarm", &[6, 0], int(8)),
        ),
        (
            "temperature over i16",
            "up-power",
            "uplink",
            mutate("up-power", &[6, 5], int(40_000)),
        ),
        ("cabinet id as bytes", "up-door", "uplink", {
            mutate("up-door", &[1], Value::Bytes(b"CAB-000123".to_vec()))
        }),
        (
            "empty cabinet id",
            "up-door",
            "uplink",
            mutate("up-door", &[1], Value::Text(String::new())),
        ),
        ("cabinet id too long", "up-door", "uplink", {
            mutate("up-door", &[1], Value::Text("x".repeat(65)))
        }),
        (
            "presence online as 1",
            "gw-presence",
            "stream-message",
            mutate("gw-presence", &[2, 0], int(1)),
        ),
        (
            "ack without seq",
            "down-ack",
            "downlink",
            mutate("down-ack", &[2], Value::Array(vec![])),
        ),
    ];
    for (what, name, family, bytes) in &cases {
        let e = example(name);
        for rule in [*family, e.message_rule, "locker-message"] {
            assert!(
                validate(&schema, rule, bytes).is_err(),
                "{what}: the CDDL rule {rule} accepts it"
            );
        }
        assert!(
            decodes(family, bytes).is_err(),
            "{what}: the codec accepts it"
        );
    }
    // The original vectors of course pass, so the checks above fail for the stated reason.
    for (_, name, family, _) in &cases {
        validate(&schema, family, &example(name).bytes).expect("the unmutated vector passes");
    }
}

/// Where the CDDL states the contract more tightly than the reference decoder needs to enforce:
/// the CDDL rejects these, the codec takes them (ranges are the application's business, and
/// appended elements are how later revisions extend a message).
#[test]
fn cddl_is_stricter_than_the_codec_where_documented() {
    let schema = schema();
    let appended = |name: &str, path: &[usize]| {
        let mut v = to_value(&example(name).bytes);
        let mut at = &mut v;
        for i in path {
            let Value::Array(items) = at else {
                panic!("array")
            };
            at = &mut items[*i];
        }
        let Value::Array(items) = at else {
            panic!("array")
        };
        items.push(Value::Text("from a later revision".into()));
        to_bytes(&v)
    };
    let cases: Vec<(&str, &str, &str, Vec<u8>)> = vec![
        (
            "compartment 0",
            "up-door",
            "uplink",
            mutate("up-door", &[6, 0], int(0)),
        ),
        (
            "state of charge 101 %",
            "up-power",
            "uplink",
            mutate("up-power", &[6, 1], int(101)),
        ),
        (
            "31-byte secret hash",
            "down-creds",
            "downlink",
            mutate("down-creds", &[2, 1, 0, 1], Value::Bytes(vec![0xab; 31])),
        ),
        (
            "element appended to the envelope",
            "up-door",
            "uplink",
            appended("up-door", &[]),
        ),
        (
            "element appended to a body",
            "up-door",
            "uplink",
            appended("up-door", &[6]),
        ),
        (
            "element appended to an action",
            "down-cmd-unlock",
            "downlink",
            { appended("down-cmd-unlock", &[2, 4]) },
        ),
        (
            "element appended to a stream body",
            "gw-alert",
            "stream-message",
            { appended("gw-alert", &[2]) },
        ),
    ];
    for (what, name, family, bytes) in &cases {
        assert!(
            validate(&schema, family, bytes).is_err(),
            "{what}: the CDDL accepts it"
        );
        let e = example(name);
        assert!(
            validate(&schema, e.message_rule, bytes).is_err(),
            "{what}: {} accepts it",
            e.message_rule
        );
        decodes(family, bytes).unwrap_or_else(|err| panic!("{what}: the codec rejects it: {err}"));
    }
}

#[test]
fn readme_states_the_measured_door_event_size() {
    let door = example("up-door").bytes.len();
    assert!(door <= 64, "a door event is {door} bytes; the budget is 64");
    let readme = std::fs::read_to_string(crate_dir().join("README.md")).expect("schemas/README.md");
    let claim = format!("a door event is {door} bytes");
    assert!(
        readme.contains(&claim),
        "schemas/README.md must say \"{claim}\" (the measured size of vectors/up-door.cbor)"
    );
}

/// The door's `parcel` element (appended to revision 1): the vectors carry it, and a door from
/// an older sender without it is still a door (decoded as no reading, accepted by the CDDL).
#[test]
fn door_parcel_reading_decodes_and_an_older_three_element_door_still_passes() {
    use locker_schemas::{Door, UplinkBody};
    let door = |bytes: &[u8]| match codec::decode_uplink(bytes).expect("decodes").body {
        UplinkBody::Door(d) => d,
        other => panic!("not a door: {other:?}"),
    };
    let closed = door(&example("up-door-closed-parcel").bytes);
    assert!(!closed.open);
    assert_eq!(
        closed.parcel,
        Some(true),
        "the close carries the parcel sensor"
    );
    assert_eq!(door(&example("up-door").bytes).parcel, None);

    let schema = schema();
    let mut v = to_value(&example("up-door-closed-parcel").bytes);
    let Value::Array(items) = &mut v else {
        panic!("array")
    };
    let Value::Array(body) = &mut items[6] else {
        panic!("body array")
    };
    assert_eq!(body.pop(), Some(Value::Bool(true)));
    let older = to_bytes(&v);
    let Door {
        open,
        cause,
        parcel,
        ..
    } = door(&older);
    assert_eq!((open, parcel), (false, None), "three elements: no reading");
    assert_eq!(cause, closed.cause);
    for rule in ["locker-message", "uplink", "uplink-door"] {
        validate(&schema, rule, &older)
            .unwrap_or_else(|err| panic!("an older sender's door fails {rule}:\n{err}"));
    }
}
