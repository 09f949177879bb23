//! The OpenAPI 3.1 document of the HTTP API and the pages that serve it: `GET /openapi.json`
//! (no token) and `GET /docs` (Swagger UI, its assets compiled into the binary, so the page
//! works with no network access). It owns what the handlers' own annotations do not say: the
//! document's title and tags, the bearer security scheme, the shared error body
//! [`ErrorBody`], the responses every `/v1` route can give (401, 408), and how the ids of
//! `locker-schemas` look in JSON (strings with a pattern: [`CabinetIdDoc`], ...).
//!
//! The paths themselves come from the handlers' `#[utoipa::path]` annotations, registered with
//! `routes!` on the same `OpenApiRouter` that builds the axum router (see [`super`]), so a
//! route and its documentation cannot drift apart.

use std::borrow::Cow;

use axum::Router;
use serde::Serialize;
use utoipa::openapi::path::Operation;
use utoipa::openapi::schema::{Object, ObjectBuilder, Schema, Type};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ContentBuilder, OpenApi, Ref, RefOr, ResponseBuilder};
use utoipa::{PartialSchema, ToSchema};
use utoipa_swagger_ui::SwaggerUi;

use super::ApiState;

/// Where the document is served.
pub const OPENAPI_PATH: &str = "/openapi.json";
/// Where the browsable page is served.
pub const DOCS_PATH: &str = "/docs";
/// The name of the bearer security scheme in the document.
pub const BEARER: &str = "bearer";

/// Every error of the API: `{"error": "<stable code>", "message": "..."}`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ErrorBody {
    /// A stable machine-readable code: `unauthorized`, `forbidden`, `not_found`,
    /// `bad_request`, `conflict`, `storage`, ...
    #[schema(example = "not_found")]
    pub error: String,
    /// What went wrong, for people.
    #[schema(example = "unknown cabinet cab-0001")]
    pub message: String,
}

/// A string schema with a pattern and an example.
fn string_schema(desc: &str, pattern: &str, example: &str) -> Object {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .description(Some(desc))
        .pattern(Some(pattern))
        .examples([serde_json::Value::from(example)])
        .build()
}

/// Declares how an id of `locker-schemas` looks in JSON (a string with its pattern), under the
/// id's own name in `components/schemas`. Fields of that type say `#[schema(value_type = ...)]`.
macro_rules! id_schema {
    ($(#[$doc:meta])* $doc_ty:ident, $name:literal, $desc:literal, $pattern:expr, $example:literal) => {
        $(#[$doc])*
        pub struct $doc_ty;

        impl PartialSchema for $doc_ty {
            fn schema() -> RefOr<Schema> {
                RefOr::T(Schema::Object(string_schema($desc, $pattern, $example)))
            }
        }

        impl ToSchema for $doc_ty {
            fn name() -> Cow<'static, str> {
                Cow::Borrowed($name)
            }
        }
    };
}

/// The pattern of every slug id (cabinets, sites, carriers, couriers).
macro_rules! slug_pattern {
    () => {
        "^[A-Za-z0-9._-]{1,64}$"
    };
}

id_schema!(
    /// [`locker_schemas::CabinetId`] in the document.
    CabinetIdDoc,
    "CabinetId",
    "A cabinet id: 1 to 64 ASCII letters, digits, '-', '_' or '.' (the certificate's common name).",
    slug_pattern!(),
    "cab-0001"
);
id_schema!(
    /// [`locker_schemas::SiteId`] in the document.
    SiteIdDoc,
    "SiteId",
    "A site id: 1 to 64 ASCII letters, digits, '-', '_' or '.'.",
    slug_pattern!(),
    "berlin-hbf"
);
id_schema!(
    /// [`locker_schemas::CarrierId`] in the document.
    CarrierIdDoc,
    "CarrierId",
    "A carrier id: 1 to 64 ASCII letters, digits, '-', '_' or '.'.",
    slug_pattern!(),
    "dhl"
);
id_schema!(
    /// [`locker_schemas::CourierId`] in the document.
    CourierIdDoc,
    "CourierId",
    "A courier id: 1 to 64 ASCII letters, digits, '-', '_' or '.'.",
    slug_pattern!(),
    "dhl-0007"
);
id_schema!(
    /// [`locker_schemas::OrderId`] in the document.
    OrderIdDoc,
    "OrderId",
    "An order id: `ORD-` and a 26-character ULID (ids sort by creation time).",
    "^ORD-[0-9A-HJKMNP-TV-Za-hjkmnp-tv-z]{26}$",
    "ORD-01JD6Z3K4Q8V2T5N7M9P0R1S2W"
);
id_schema!(
    /// [`locker_schemas::CommandId`] in the document.
    CommandIdDoc,
    "CommandId",
    "A command id: a 26-character ULID (Crockford base32).",
    "^[0-9A-HJKMNP-TV-Za-hjkmnp-tv-z]{26}$",
    "01JD6Z3K4Q8V2T5N7M9P0R1S2W"
);

/// A command's outcome name ([`locker_schemas::Outcome`]), one of [`locker_schemas::Outcome::ALL`].
pub struct OutcomeDoc;

impl PartialSchema for OutcomeDoc {
    fn schema() -> RefOr<Schema> {
        let names: Vec<&str> = locker_schemas::Outcome::ALL
            .iter()
            .map(|o| o.as_str())
            .collect();
        RefOr::T(Schema::Object(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .description(Some("A command's one final outcome."))
                .enum_values(Some(names))
                .build(),
        ))
    }
}

impl ToSchema for OutcomeDoc {
    fn name() -> Cow<'static, str> {
        Cow::Borrowed("Outcome")
    }
}

/// A free-form JSON object (an audit-log event: its fields depend on its kind, see the
/// README's "JSON values").
pub struct AnyObjectDoc;

impl PartialSchema for AnyObjectDoc {
    fn schema() -> RefOr<Schema> {
        RefOr::T(Schema::Object(
            ObjectBuilder::new()
                .schema_type(Type::Object)
                .description(Some(
                    "A stored uplink event: `position`, `kind`, the envelope fields and the \
                     body's fields, or `{position, error}` if it no longer decodes.",
                ))
                .build(),
        ))
    }
}

impl ToSchema for AnyObjectDoc {
    fn name() -> Cow<'static, str> {
        Cow::Borrowed("AuditEvent")
    }
}

/// The tags (one per area) and what they cover, in the order the page shows them.
const TAGS: &[(&str, &str)] = &[
    (
        "cabinets",
        "The fleet: cabinets, their state, their audit log and commands (operator; one cabinet also its site manager).",
    ),
    (
        "fleet",
        "The console's overview: the fleet and its sites at a glance, and search (scoped).",
    ),
    (
        "commands",
        "Raw cabinet commands through the durable queue (operator).",
    ),
    (
        "quarantine",
        "Uplinks ingest kept but could not accept (operator).",
    ),
    (
        "orders",
        "Parcel orders: create, list, act on, remote unlock (scoped).",
    ),
    ("sites", "Sites, carriers and couriers (scoped)."),
    (
        "compartments",
        "Compartments, partitions, service state and override opens (scoped).",
    ),
    (
        "alerts",
        "Alerts of the rules engine (operator, site manager).",
    ),
    (
        "notifications",
        "The recipient notification outbox (scoped).",
    ),
    ("audit", "The parcel audit trail (scoped)."),
    (
        "webhooks",
        "Webhook subscriptions, their delivery health and dead letters; every outbound target (scoped).",
    ),
    (
        "live",
        "What changes where, as server-sent events, for pages that redraw (scoped).",
    ),
    (
        "health",
        "Liveness, readiness and Prometheus metrics (no token).",
    ),
];

const DESCRIPTION: &str = "The Locker Hub gateway's HTTP API for integrators.\n\n\
Every `/v1` route needs `Authorization: Bearer <token>`, a token from the `[api.tokens]` table \
of gateway.toml. A token has a scope: `operator` (everything), `carrier` (its own orders, \
couriers and partitions) or `site_manager` (its sites); each route says which scopes it \
serves. The operations console at `/console/` logs in with the same tokens and calls these \
routes with its session cookie instead (unsafe methods then need its `X-CSRF-Token`). Errors are `{\"error\": \"<stable code>\", \"message\": \"...\"}` (`ErrorBody`).";

/// Completes the document the router's annotations built: title, tags, the bearer scheme,
/// the 401 and 408 responses of every route that needs a token, unique operation ids, and
/// the name of [`locker_schemas::Millis`].
pub fn finish(doc: OpenApi) -> OpenApi {
    let mut doc = name_millis(doc);
    doc.info.title = "Locker Hub gateway API".into();
    doc.info.version = env!("CARGO_PKG_VERSION").into();
    doc.info.description = Some(DESCRIPTION.into());
    doc.info.license = Some(utoipa::openapi::License::new("Apache-2.0"));
    doc.tags = Some(
        TAGS.iter()
            .map(|(name, desc)| {
                utoipa::openapi::tag::TagBuilder::new()
                    .name(*name)
                    .description(Some(*desc))
                    .build()
            })
            .collect(),
    );
    let components = doc
        .components
        .get_or_insert_with(utoipa::openapi::Components::new);
    components.add_security_scheme(
        BEARER,
        SecurityScheme::Http(
            HttpBuilder::new()
                .scheme(HttpAuthScheme::Bearer)
                .description(Some("A token of gateway.toml `[api.tokens]`."))
                .build(),
        ),
    );
    components
        .schemas
        .insert(ErrorBody::name().into_owned(), ErrorBody::schema());
    for (path, item) in doc.paths.paths.iter_mut() {
        if !path.starts_with("/v1/") {
            continue;
        }
        let ops = [
            &mut item.get,
            &mut item.put,
            &mut item.post,
            &mut item.delete,
            &mut item.patch,
        ];
        for op in ops.into_iter().flatten() {
            add_common(op);
        }
    }
    unique_operation_ids(&mut doc);
    doc
}

/// `Millis` is an alias of `u64`, which the derive files under the component name `u64`:
/// renamed to `Millis` with what it means.
fn name_millis(doc: OpenApi) -> OpenApi {
    let Ok(json) = serde_json::to_string(&doc) else {
        return doc;
    };
    let json = json.replace(
        "\"#/components/schemas/u64\"",
        "\"#/components/schemas/Millis\"",
    );
    let Ok(mut renamed) = serde_json::from_str::<OpenApi>(&json) else {
        return doc;
    };
    if let Some(c) = renamed.components.as_mut() {
        if c.schemas.remove("u64").is_some() {
            let millis = ObjectBuilder::new()
                .schema_type(Type::Integer)
                .format(Some(utoipa::openapi::SchemaFormat::KnownFormat(
                    utoipa::openapi::KnownFormat::Int64,
                )))
                .minimum(Some(0))
                .description(Some("A time: milliseconds since the Unix epoch (UTC)."))
                .examples([serde_json::Value::from(1_767_225_600_000u64)])
                .build();
            c.schemas
                .insert("Millis".into(), RefOr::T(Schema::Object(millis)));
        }
    }
    renamed
}

/// Handlers of different areas share names (`list`, `get_one`): an operation id used more
/// than once becomes `<tag>_<id>` (client generators name their methods after them).
fn unique_operation_ids(doc: &mut OpenApi) {
    let mut seen = std::collections::HashMap::<String, usize>::new();
    for_each_operation(doc, |op| {
        if let Some(id) = &op.operation_id {
            *seen.entry(id.clone()).or_default() += 1;
        }
    });
    for_each_operation(doc, |op| {
        let tag = op.tags.as_ref().and_then(|t| t.first()).cloned();
        if let (Some(id), Some(tag)) = (&op.operation_id, tag) {
            if seen.get(id).is_some_and(|n| *n > 1) {
                op.operation_id = Some(format!("{tag}_{id}"));
            }
        }
    });
}

fn for_each_operation(doc: &mut OpenApi, mut f: impl FnMut(&mut Operation)) {
    for item in doc.paths.paths.values_mut() {
        let ops = [
            &mut item.get,
            &mut item.put,
            &mut item.post,
            &mut item.delete,
            &mut item.patch,
        ];
        for op in ops.into_iter().flatten() {
            f(op);
        }
    }
}

/// An error response with the shared body.
pub fn error_response(desc: &str) -> utoipa::openapi::Response {
    ResponseBuilder::new()
        .description(desc)
        .content(
            "application/json",
            ContentBuilder::new()
                .schema(Some(Ref::from_schema_name(ErrorBody::name())))
                .build(),
        )
        .build()
}

/// The bearer requirement and the responses every token route can give.
fn add_common(op: &mut Operation) {
    if op.security.is_none() {
        op.security = Some(vec![utoipa::openapi::security::SecurityRequirement::new::<
            &str,
            [&str; 0],
            &str,
        >(BEARER, [])]);
    }
    let responses = &mut op.responses.responses;
    responses.entry("401".into()).or_insert_with(|| {
        RefOr::T(error_response(
            "`unauthorized`: no bearer token, or one gateway.toml does not know.",
        ))
    });
    responses.entry("408".into()).or_insert_with(|| {
        RefOr::T(error_response(
            "`request_timeout`: the request took longer than `api.request_timeout_ms`.",
        ))
    });
}

/// The routes of `/openapi.json` and `/docs` (Swagger UI with its vendored assets).
pub fn pages(doc: OpenApi) -> Router<ApiState> {
    Router::from(SwaggerUi::new(DOCS_PATH).url(OPENAPI_PATH, doc))
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_document_is_3_1_with_every_area_and_the_shared_error() {
        let doc = super::super::openapi();
        let v = serde_json::to_value(&doc).expect("json");
        if let Ok(p) = std::env::var("LOCKER_OPENAPI_DUMP") {
            std::fs::write(p, serde_json::to_string_pretty(&v).expect("json")).expect("dump");
        }
        assert_eq!(v["openapi"], "3.1.0");
        assert!(v["components"]["schemas"]["ErrorBody"].is_object());
        assert!(v["components"]["securitySchemes"][super::BEARER].is_object());
        for p in [
            "/v1/orders",
            "/v1/cabinets/{id}",
            "/v1/alerts",
            "/healthz",
            "/metrics",
        ] {
            assert!(v["paths"][p].is_object(), "{p} missing");
        }
    }
}
