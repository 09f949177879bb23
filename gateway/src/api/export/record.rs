//! The one record shape of the audit export, what each source's entries become in it, and the
//! two encodings (NDJSON: one JSON object a line; CSV: the same columns, a header line first,
//! quoted by the `csv` crate).

use locker_schemas::{
    AccessAction, AlarmKind, CompartmentId, DoorCause, Millis, OrderId, ScanSource, Uplink,
    UplinkBody,
};
use serde::Serialize;

use crate::json::{AccessActionName, AlarmName, ScanSourceName};
use crate::rules::Alert;
use crate::store::parcels::AuditRecord;

/// The export's record groups (`kinds=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Category {
    /// `door_opened`, `door_closed`.
    Door,
    /// `scan` (an attempt at the scanner or keypad), `access_granted`, `unknown_access`.
    Access,
    /// `order_transition`.
    Order,
    /// `override_open` (admin override), `remote_unlock` (of an order, with its reason).
    Override,
    /// `alert_raised`, `alert_acknowledged`, `alert_cleared`, and the cabinets' own alarms
    /// (`alarm_active`, `alarm_inactive`).
    Alert,
    /// `command_result` (a command's outcome at the cabinet).
    Command,
    /// `partition`, `service` (compartment partition and service changes).
    Admin,
}

impl Category {
    pub const ALL: [Category; 7] = [
        Category::Door,
        Category::Access,
        Category::Order,
        Category::Override,
        Category::Alert,
        Category::Command,
        Category::Admin,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Category::Door => "door",
            Category::Access => "access",
            Category::Order => "order",
            Category::Override => "override",
            Category::Alert => "alert",
            Category::Command => "command",
            Category::Admin => "admin",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.as_str() == s)
    }
}

/// One line of the export. Every source maps to these columns; a column a record has nothing
/// for is `null` (NDJSON) or empty (CSV).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ExportRecord {
    /// When, ms since the epoch (the cabinet's clock for cabinet events, the gateway's for the
    /// parcel trail and alerts).
    pub at: Millis,
    /// The same instant, RFC 3339 UTC.
    pub at_utc: String,
    /// `cabinet`, `parcel` or `alert`.
    pub source: &'static str,
    pub kind: &'static str,
    pub site: Option<String>,
    pub cabinet: Option<String>,
    pub compartment: Option<u16>,
    pub order: Option<String>,
    pub tracking: Option<String>,
    pub carrier: Option<String>,
    /// Who: a courier, `recipient`, an API client, `rules`, the acknowledging user.
    pub actor: Option<String>,
    /// Why, as a code: `local_access`, `command`, `api`, a timer, an alarm or alert kind.
    pub cause: Option<String>,
    /// Why, in words: a remote unlock's or override's reason, an ack note, a clear reason.
    pub reason: Option<String>,
    pub detail: String,
    /// The group `kinds=` filters on (not a column).
    #[serde(skip)]
    pub category: Category,
}

pub use crate::json::utc;

impl ExportRecord {
    fn new(at: Millis, source: &'static str, kind: &'static str, category: Category) -> Self {
        Self {
            at,
            at_utc: utc(at),
            source,
            kind,
            site: None,
            cabinet: None,
            compartment: None,
            order: None,
            tracking: None,
            carrier: None,
            actor: None,
            cause: None,
            reason: None,
            detail: String::new(),
            category,
        }
    }

    /// The record of a stored uplink; `None` for telemetry (hello, power, network), which is
    /// not an audit fact (it stays in `GET /v1/cabinets/{id}/events`).
    pub fn from_uplink(u: &Uplink) -> Option<Self> {
        let mut r = match &u.body {
            UplinkBody::Door(d) => {
                let kind = if d.open { "door_opened" } else { "door_closed" };
                let mut r = Self::new(u.ts, "cabinet", kind, Category::Door);
                r.compartment = Some(d.compartment.0);
                let (cause, detail) = match d.cause {
                    DoorCause::Unknown => ("unknown", String::new()),
                    DoorCause::LocalAccess => ("local_access", String::new()),
                    DoorCause::Command(id) => ("command", format!("command {id}")),
                };
                r.cause = Some(cause.into());
                r.detail = detail;
                if let Some(p) = d.parcel {
                    let p = if p { "parcel inside" } else { "empty" };
                    r.detail = if r.detail.is_empty() {
                        p.into()
                    } else {
                        format!("{}; {p}", r.detail)
                    };
                }
                r
            }
            UplinkBody::Scan(s) => {
                // the value is never exported: it can be a recipient's PIN or QR token
                let mut r = Self::new(u.ts, "cabinet", "scan", Category::Access);
                r.cause = Some(source_name(s.source).into());
                r.detail = format!("{} characters", s.value.chars().count());
                r
            }
            UplinkBody::Access(a) => {
                let mut r = Self::new(u.ts, "cabinet", "access_granted", Category::Access);
                r.compartment = Some(a.compartment.0);
                r.actor = Some(if a.actor.is_empty() {
                    match a.action {
                        AccessAction::Pickup => "recipient".into(),
                        _ => "customer".into(),
                    }
                } else {
                    a.actor.clone()
                });
                r.cause = Some(action_name(a.action).into());
                if a.reference.parse::<OrderId>().is_ok() {
                    r.order = Some(a.reference.clone());
                }
                r.detail = format!(
                    "{} by {}, reference {}",
                    action_name(a.action),
                    source_name(a.source),
                    a.reference
                );
                r
            }
            UplinkBody::Alarm(a) => {
                let kind = if a.active {
                    "alarm_active"
                } else {
                    "alarm_inactive"
                };
                let mut r = Self::new(u.ts, "cabinet", kind, Category::Alert);
                r.compartment = a.compartment.map(|c: CompartmentId| c.0);
                r.cause = Some(alarm_name(a.kind));
                r.actor = Some("cabinet".into());
                r.detail = match a.board {
                    Some(b) if a.detail.is_empty() => format!("board {b}"),
                    Some(b) => format!("board {b}: {}", a.detail),
                    None => a.detail.clone(),
                };
                r
            }
            UplinkBody::Result(c) => {
                let mut r = Self::new(u.ts, "cabinet", "command_result", Category::Command);
                r.cause = Some(c.outcome.as_str().into());
                r.detail = if c.detail.is_empty() {
                    format!("command {}", c.command)
                } else {
                    format!("command {}: {}", c.command, c.detail)
                };
                r
            }
            UplinkBody::Hello(_) | UplinkBody::Power(_) | UplinkBody::Network(_) => return None,
        };
        r.cabinet = Some(u.cabinet.to_string());
        Some(r)
    }

    /// The record of a line of the parcel audit trail.
    pub fn from_parcel(a: &AuditRecord) -> Self {
        let remote_unlock = a.what == "unlock"
            || (a.what == "order" && a.from == a.to && a.detail.starts_with("remote unlock "));
        let (kind, category) = match a.what.as_str() {
            _ if remote_unlock => ("remote_unlock", Category::Override),
            "order" => ("order_transition", Category::Order),
            "override_open" => ("override_open", Category::Override),
            "partition" => ("partition", Category::Admin),
            "service" => ("service", Category::Admin),
            "unknown_access" => ("unknown_access", Category::Access),
            _ => ("parcel_other", Category::Admin),
        };
        let mut r = Self::new(a.at, "parcel", kind, category);
        r.site = a.site.as_ref().map(ToString::to_string);
        r.cabinet = a.cabinet.as_ref().map(ToString::to_string);
        r.compartment = a.compartment.map(|c| c.0);
        r.order = a.order.map(|o| o.to_string());
        r.carrier = a.carrier.as_ref().map(ToString::to_string);
        r.tracking = a.tracking.clone();
        r.actor = Some(a.actor.clone());
        r.cause = Some(a.cause.clone());
        // the reason of a remote unlock or override is what follows the first ": "
        // (`remote unlock <command> for <purpose>: <reason>`, `command <id>: <reason>`)
        r.reason = match kind {
            "remote_unlock" | "override_open" => a
                .detail
                .split_once(": ")
                .map(|(_, reason)| reason.to_owned()),
            "service" => (!a.detail.is_empty()).then(|| a.detail.clone()),
            _ => a.exception.map(|e| e.as_str().to_owned()),
        };
        let states = match (&a.from, &a.to) {
            (Some(f), Some(t)) => format!("{f} -> {t}"),
            (None, Some(t)) => format!("-> {t}"),
            _ => String::new(),
        };
        r.detail = match (states.is_empty(), a.detail.is_empty()) {
            (true, _) => a.detail.clone(),
            (false, true) => states,
            (false, false) => format!("{states}; {}", a.detail),
        };
        r
    }

    /// The records of an alert: raised, acknowledged, cleared, each at its own time.
    pub fn from_alert(a: &Alert) -> Vec<Self> {
        let base = |at, kind| {
            let mut r = Self::new(at, "alert", kind, Category::Alert);
            r.site = a.site.as_ref().map(ToString::to_string);
            r.cabinet = Some(a.cabinet.to_string());
            r.cause = Some(a.kind.as_str().into());
            r.compartment = a
                .subject
                .strip_prefix("compartment ")
                .and_then(|c| c.parse().ok());
            r.detail = if a.subject.is_empty() {
                format!("{} {}", a.id, a.severity.as_str())
            } else {
                format!("{} {} {}", a.id, a.severity.as_str(), a.subject)
            };
            r
        };
        let mut out = Vec::with_capacity(3);
        let mut raised = base(a.raised_at, "alert_raised");
        raised.actor = Some("rules".into());
        raised.reason = (!a.detail.is_empty()).then(|| a.detail.clone());
        out.push(raised);
        if let Some(at) = a.acked_at {
            let mut r = base(at, "alert_acknowledged");
            r.actor = a.acked_by.clone();
            r.reason = a.ack_note.clone();
            out.push(r);
        }
        if let Some(at) = a.cleared_at {
            let mut r = base(at, "alert_cleared");
            r.actor = Some("rules".into());
            r.reason = a.clear_reason.clone();
            out.push(r);
        }
        out
    }
}

fn source_name(s: ScanSource) -> &'static str {
    match ScanSourceName::from(s) {
        ScanSourceName::Barcode => "barcode",
        ScanSourceName::Qr => "qr",
        ScanSourceName::Rfid => "rfid",
        ScanSourceName::Keypad => "keypad",
    }
}

fn action_name(a: AccessAction) -> &'static str {
    match AccessActionName::from(a) {
        AccessActionName::Pickup => "pickup",
        AccessActionName::Deposit => "deposit",
        AccessActionName::Collect => "collect",
    }
}

fn alarm_name(k: AlarmKind) -> String {
    serde_json::to_value(AlarmName::from(k))
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

/// The two encodings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Ndjson,
    Csv,
}

impl Format {
    pub fn as_str(self) -> &'static str {
        match self {
            Format::Ndjson => "ndjson",
            Format::Csv => "csv",
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Format::Ndjson => "application/x-ndjson",
            Format::Csv => "text/csv; charset=utf-8",
        }
    }
}

/// Why a record could not be encoded.
#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    #[error("json: {0}")]
    Json(#[from] serde_json::Error),
    #[error("csv: {0}")]
    Csv(#[from] csv::Error),
    #[error("csv: {0}")]
    Io(#[from] std::io::Error),
}

/// Encodes records into chunks of bytes: NDJSON lines, or CSV with its header line first.
pub enum Encoder {
    Ndjson(Vec<u8>),
    Csv(Box<csv::Writer<Vec<u8>>>),
}

impl Encoder {
    pub fn new(f: Format) -> Self {
        match f {
            Format::Ndjson => Encoder::Ndjson(Vec::with_capacity(80 * 1024)),
            Format::Csv => Encoder::Csv(Box::new(
                csv::WriterBuilder::new()
                    .has_headers(true)
                    .from_writer(Vec::with_capacity(80 * 1024)),
            )),
        }
    }

    pub fn push(&mut self, r: &ExportRecord) -> Result<(), EncodeError> {
        match self {
            Encoder::Ndjson(buf) => {
                serde_json::to_writer(&mut *buf, r)?;
                buf.push(b'\n');
            }
            Encoder::Csv(w) => w.serialize(r)?,
        }
        Ok(())
    }

    /// The bytes encoded so far (the buffer is emptied).
    pub fn take(&mut self) -> Result<Vec<u8>, EncodeError> {
        match self {
            Encoder::Ndjson(buf) => Ok(std::mem::take(buf)),
            Encoder::Csv(w) => {
                // the header went out with the first chunk: the next writer writes none
                let next = csv::WriterBuilder::new()
                    .has_headers(false)
                    .from_writer(Vec::with_capacity(80 * 1024));
                let done = std::mem::replace(w.as_mut(), next);
                done.into_inner()
                    .map_err(|e| EncodeError::Io(std::io::Error::other(e.to_string())))
            }
        }
    }

    /// Roughly how many bytes are waiting (CSV keeps a small buffer of its own).
    pub fn pending(&self) -> usize {
        match self {
            Encoder::Ndjson(buf) => buf.len(),
            Encoder::Csv(w) => w.get_ref().len(),
        }
    }

    /// A CSV export with no record still starts with its header line.
    pub fn header_if_empty(&mut self) -> Result<(), EncodeError> {
        if let Encoder::Csv(w) = self {
            w.write_record(COLUMNS)?;
        }
        Ok(())
    }
}

/// The columns, in order (the CSV header).
pub const COLUMNS: [&str; 14] = [
    "at",
    "at_utc",
    "source",
    "kind",
    "site",
    "cabinet",
    "compartment",
    "order",
    "tracking",
    "carrier",
    "actor",
    "cause",
    "reason",
    "detail",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_has_the_columns_of_the_json_and_quotes_what_needs_it() {
        let mut r = ExportRecord::new(1_700_000_000_123, "parcel", "service", Category::Admin);
        r.reason = Some("broken hinge, \"urgent\"\nsecond line".into());
        let mut e = Encoder::new(Format::Csv);
        e.push(&r).expect("push");
        let bytes = e.take().expect("take");
        let mut rd = csv::Reader::from_reader(bytes.as_slice());
        let header: Vec<String> = rd
            .headers()
            .expect("header")
            .iter()
            .map(str::to_owned)
            .collect();
        assert_eq!(header, COLUMNS);
        let row = rd.records().next().expect("row").expect("row");
        assert_eq!(&row[1], "2023-11-14T22:13:20.123Z");
        assert_eq!(&row[12], "broken hinge, \"urgent\"\nsecond line");
        let json = serde_json::to_value(&r).expect("json");
        let keys: Vec<&str> = json
            .as_object()
            .expect("object")
            .keys()
            .map(String::as_str)
            .collect();
        let mut cols = COLUMNS.to_vec();
        cols.sort_unstable();
        let mut keys = keys;
        keys.sort_unstable();
        assert_eq!(keys, cols);
    }
}
