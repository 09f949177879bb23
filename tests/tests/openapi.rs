//! The OpenAPI document of the HTTP API, checked against the real gateway: `GET /openapi.json`
//! (no token) passes the stock validator `openapi-spec-validator` (installed by
//! `scripts/install-test-deps.sh`), is OpenAPI 3.1, documents every route the gateway's source
//! registers and nothing the router does not serve; `/docs` answers with assets served by the
//! gateway itself (no CDN); and real responses match their documented schemas (checked with
//! the stock `jsonschema` package the validator brings, plus "no undocumented field").

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use locker_tests::agent::TestCabinet;
use locker_tests::api::ApiClient;
use locker_tests::gateway::TestGateway;
use locker_tests::parcels::{self, DHL_TOKEN};
use locker_tests::pki::TestPki;
use reqwest::Method;
use serde_json::{json, Value};

const MISSING: &str =
    "openapi-spec-validator not found: run scripts/install-test-deps.sh (or set OPENAPI_SPEC_VALIDATOR)";

/// The stock validator: `$OPENAPI_SPEC_VALIDATOR`, the venv of install-test-deps.sh, or PATH.
fn validator() -> PathBuf {
    if let Some(p) = std::env::var_os("OPENAPI_SPEC_VALIDATOR") {
        return PathBuf::from(p);
    }
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")));
    if let Some(c) = cache {
        let v = c.join("locker-hub/openapi-validator/bin/openapi-spec-validator");
        if v.exists() {
            return v;
        }
    }
    let on_path = Command::new("openapi-spec-validator")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(on_path, "{MISSING}");
    PathBuf::from("openapi-spec-validator")
}

/// The Python that has the validator's packages (`jsonschema` comes with it).
fn python_of(validator: &Path) -> PathBuf {
    validator
        .parent()
        .map(|d| d.join("python"))
        .filter(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from("python3"))
}

/// The document as the gateway serves it, without a token.
async fn fetch_doc(api: &ApiClient) -> Value {
    let (s, ctype, body) = api.raw(Method::GET, "/openapi.json", None, false).await;
    assert_eq!(s, 200, "{body}");
    assert!(ctype.starts_with("application/json"), "{ctype}");
    serde_json::from_str(&body).expect("the document is JSON")
}

/// Every `(path, method)` the document describes.
fn operations(doc: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for m in ["get", "put", "post", "delete", "patch"] {
            if item.get(m).is_some() {
                out.push((path.clone(), m.to_owned()));
            }
        }
    }
    out
}

/// The paths the gateway's source registers with a bare `.route("...")` (the documented
/// ones go through `routes!`, which documents them by construction).
fn routes_in_source() -> BTreeSet<String> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../gateway/src");
    let mut found = BTreeSet::new();
    let mut stack = vec![src];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("gateway source dir") {
            let p = entry.expect("dir entry").path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|e| e == "rs") {
                let text = std::fs::read_to_string(&p).expect("source file");
                let mut rest = text.as_str();
                while let Some(i) = rest.find(".route(") {
                    rest = &rest[i + ".route(".len()..];
                    let t = rest.trim_start();
                    if let Some(lit) = t.strip_prefix("\"/") {
                        if let Some(end) = lit.find('"') {
                            found.insert(format!("/{}", &lit[..end]));
                        }
                    }
                }
            }
        }
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_document_is_valid_openapi_3_1_and_covers_every_route() {
    let v = validator();
    let pki = TestPki::new();
    let gw = TestGateway::start(&pki).await;
    let doc = fetch_doc(&gw.api).await;

    // the stock validator accepts it
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("openapi.json");
    std::fs::write(&file, serde_json::to_vec_pretty(&doc).expect("json")).expect("write");
    let out = Command::new(&v).arg(&file).output().unwrap_or_else(|e| {
        panic!("{MISSING} ({}: {e})", v.display());
    });
    assert!(
        out.status.success(),
        "openapi-spec-validator rejects /openapi.json:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // 3.1, with the bearer scheme and the shared error body
    assert!(
        doc["openapi"]
            .as_str()
            .is_some_and(|s| s.starts_with("3.1")),
        "{}",
        doc["openapi"]
    );
    assert_eq!(
        doc["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );
    let err = &doc["components"]["schemas"]["ErrorBody"];
    assert_eq!(err["required"], json!(["error", "message"]), "{err}");

    // every route the source registers by hand is documented (or is a page of the document)
    let ops = operations(&doc);
    let paths: BTreeSet<&str> = ops.iter().map(|(p, _)| p.as_str()).collect();
    // pages: the document's own, and the console's (its files and its browser login, which
    // the README documents; integrators use bearer tokens)
    let pages = [
        "/openapi.json",
        "/docs",
        "/docs/",
        "/docs/{*rest}",
        "/console",
        "/console/",
        "/console/assets/{*path}",
        "/console/session",
    ];
    for r in routes_in_source() {
        assert!(
            paths.contains(r.as_str()) || pages.contains(&r.as_str()),
            "the route {r} is not in /openapi.json: register it with `routes!` (gateway/src/api/mod.rs)"
        );
    }
    // and the router serves every documented operation: axum answers a path or method it
    // does not route with an empty 404 or 405, every handler with JSON or its own body
    for (path, method) in &ops {
        let mut concrete = path
            .replace("{id}", "nope-0001")
            .replace("{courier}", "nope-0001")
            .replace("{c}", "1");
        if path == "/v1/live" {
            // the feed streams until the client leaves: a bad filter is answered at once
            concrete.push_str("?cabinet=not%20an%20id");
        }
        let m = Method::from_bytes(method.to_uppercase().as_bytes()).expect("method");
        let (s, _, body) = gw.api.raw(m, &concrete, None, true).await;
        assert!(
            !((s == 404 || s == 405) && body.is_empty()),
            "{method} {path} is documented but the router does not serve it ({s})"
        );
        // each documented status of an operation includes what a token route always can give
        let responses = &doc["paths"][path][method]["responses"];
        if path.starts_with("/v1/") {
            assert!(responses.get("401").is_some(), "{method} {path}: no 401");
            assert!(
                doc["paths"][path][method]["description"]
                    .as_str()
                    .is_some_and(|d| d.contains("Scopes:")),
                "{method} {path}: its description does not name the scopes it serves"
            );
        }
    }
    assert!(ops.len() >= 38, "only {} operations documented", ops.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docs_page_loads_its_assets_from_the_gateway() {
    let pki = TestPki::new();
    let gw = TestGateway::start(&pki).await;
    // no token; `/docs` redirects to `/docs/`
    let (s, ctype, html) = gw.api.raw(Method::GET, "/docs", None, false).await;
    assert_eq!(s, 200, "{html}");
    assert!(ctype.starts_with("text/html"), "{ctype}");
    assert!(html.contains("swagger-ui"), "{html}");
    assert!(
        !html.contains("http://") && !html.contains("https://") && !html.contains("src=\"//"),
        "the page loads something from another host:\n{html}"
    );
    let mut assets = Vec::new();
    for attr in ["src=\"", "href=\""] {
        let mut rest = html.as_str();
        while let Some(i) = rest.find(attr) {
            rest = &rest[i + attr.len()..];
            if let Some(end) = rest.find('"') {
                assets.push(rest[..end].trim_start_matches("./").to_owned());
            }
        }
    }
    assert!(
        assets.iter().any(|a| a.ends_with(".js")) && assets.iter().any(|a| a.ends_with(".css")),
        "{assets:?}"
    );
    for a in &assets {
        let (s, _, body) = gw
            .api
            .raw(Method::GET, &format!("/docs/{a}"), None, false)
            .await;
        assert_eq!(s, 200, "/docs/{a}");
        assert!(!body.is_empty(), "/docs/{a} is empty");
    }
    // the page reads the gateway's own document
    let (s, _, init) = gw
        .api
        .raw(Method::GET, "/docs/swagger-initializer.js", None, false)
        .await;
    assert_eq!(s, 200);
    assert!(init.contains("/openapi.json"), "{init}");
}

/// The schema of the documented response `status` of `method path`, with the document's
/// components beside it so its `$ref`s resolve.
fn response_schema(doc: &Value, method: &str, path: &str, status: u16) -> Value {
    let s = &doc["paths"][path][method]["responses"][status.to_string()]["content"]
        ["application/json"]["schema"];
    assert!(
        s.is_object(),
        "{method} {path} documents no JSON body for {status}"
    );
    json!({"allOf": [s], "components": doc["components"]})
}

/// Resolves a local `$ref`.
fn resolve<'a>(doc: &'a Value, s: &'a Value) -> &'a Value {
    match s.get("$ref").and_then(Value::as_str) {
        Some(r) => {
            let name = r.trim_start_matches("#/components/schemas/");
            resolve(doc, &doc["components"]["schemas"][name])
        }
        None => s,
    }
}

/// The property schemas an object schema allows (through `allOf`, `oneOf` and `$ref`).
fn properties<'a>(doc: &'a Value, s: &'a Value, out: &mut Vec<(&'a str, &'a Value)>) {
    let s = resolve(doc, s);
    if let Some(p) = s.get("properties").and_then(Value::as_object) {
        out.extend(p.iter().map(|(k, v)| (k.as_str(), v)));
    }
    for key in ["allOf", "oneOf", "anyOf"] {
        for sub in s.get(key).and_then(Value::as_array).into_iter().flatten() {
            properties(doc, sub, out);
        }
    }
}

/// Fails on any field of `value` its schema does not document (the other way round, types and
/// required fields, is the stock validator's job).
fn no_undocumented_fields(doc: &Value, schema: &Value, value: &Value, at: &str) {
    let schema = resolve(doc, schema);
    match value {
        Value::Object(m) => {
            let mut props = Vec::new();
            properties(doc, schema, &mut props);
            if props.is_empty() {
                return; // a free-form object
            }
            for (k, v) in m {
                let Some((_, sub)) = props.iter().find(|(name, _)| name == k) else {
                    panic!("{at}.{k} is in the response but not in the documented schema");
                };
                no_undocumented_fields(doc, sub, v, &format!("{at}.{k}"));
            }
        }
        Value::Array(items) => {
            let mut item_schemas = vec![schema];
            for key in ["oneOf", "anyOf"] {
                for sub in schema
                    .get(key)
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    item_schemas.push(resolve(doc, sub));
                }
            }
            if let Some(item) = item_schemas.iter().find_map(|s| s.get("items")) {
                for (i, v) in items.iter().enumerate() {
                    no_undocumented_fields(doc, item, v, &format!("{at}[{i}]"));
                }
            }
        }
        _ => {}
    }
}

/// Checks a real response against its documented schema with the stock `jsonschema`
/// (JSON Schema 2020-12, the dialect of OpenAPI 3.1) and for undocumented fields.
fn check_response(doc: &Value, method: &str, path: &str, status: u16, body: &Value) {
    let schema = response_schema(doc, method, path, status);
    no_undocumented_fields(doc, &schema["allOf"][0], body, &format!("{method} {path}"));
    let dir = tempfile::tempdir().expect("temp dir");
    let (sf, bf) = (dir.path().join("schema.json"), dir.path().join("body.json"));
    std::fs::write(&sf, schema.to_string()).expect("write");
    std::fs::write(&bf, body.to_string()).expect("write");
    let script = "import json, sys\n\
        from jsonschema import Draft202012Validator\n\
        schema = json.load(open(sys.argv[1])); body = json.load(open(sys.argv[2]))\n\
        errors = [f\"{'/'.join(map(str, e.absolute_path))}: {e.message}\" for e in Draft202012Validator(schema).iter_errors(body)]\n\
        print('\\n'.join(errors)); sys.exit(1 if errors else 0)\n";
    let py = python_of(&validator());
    let out = Command::new(&py)
        .arg("-c")
        .arg(script)
        .arg(&sf)
        .arg(&bf)
        .output()
        .unwrap_or_else(|e| panic!("{MISSING} ({}: {e})", py.display()));
    assert!(
        out.status.success(),
        "{method} {path} {status} does not match its documented schema:\n{}{}\nbody: {body}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_responses_match_their_documented_schemas() {
    let mut pki = TestPki::new();
    let gw = TestGateway::start_with(&pki, parcels::tokens).await;
    let cab = TestCabinet::start(&mut pki, "CAB-OA1", gw.edge_addr()).await;
    parcels::online(&gw.api, &cab.id).await;
    parcels::setup(&gw.api, &[cab.id.as_str()]).await;
    let doc = fetch_doc(&gw.api).await;
    let op = &gw.api;

    // an order: created (201) with every documented required field
    let dhl = op.with_token(DHL_TOKEN);
    let order = parcels::order(&dhl, "OA-TRACK-1", "M").await;
    check_response(&doc, "post", "/v1/orders", 201, &order);
    let required = doc["components"]["schemas"]["OrderView"]["required"]
        .as_array()
        .expect("OrderView.required");
    for f in required {
        let f = f.as_str().expect("name");
        assert!(order.get(f).is_some(), "the new order has no {f}: {order}");
    }
    let id = order["id"].as_str().expect("id");
    let (s, b) = dhl.get(&format!("/v1/orders/{id}")).await;
    check_response(&doc, "get", "/v1/orders/{id}", s, &b);
    let (s, b) = dhl.get("/v1/orders").await;
    check_response(&doc, "get", "/v1/orders", s, &b);
    let (s, b) = dhl
        .post(
            "/v1/orders/batch",
            json!({"orders": [
                {"site": parcels::SITE, "size": "S", "tracking": "OA-TRACK-2"},
                {"site": "no-such-site", "size": "S", "tracking": "OA-TRACK-3"}]}),
        )
        .await;
    check_response(&doc, "post", "/v1/orders/batch", s, &b);
    let (s, b) = dhl
        .post(
            &format!("/v1/orders/{id}/unlock"),
            json!({"reason": "deposit", "wait_ms": 10_000}),
        )
        .await;
    check_response(&doc, "post", "/v1/orders/{id}/unlock", s, &b);

    // the fleet, a command, the parcel views, the health checks
    let (s, b) = op.get(&format!("/v1/cabinets/{}", cab.id)).await;
    check_response(&doc, "get", "/v1/cabinets/{id}", s, &b);
    let (s, b) = op.get("/v1/cabinets").await;
    check_response(&doc, "get", "/v1/cabinets", s, &b);
    let (s, b) = op
        .post(
            &format!("/v1/cabinets/{}/commands", cab.id),
            json!({"action": {"type": "set_config", "values": {}}, "wait_ms": 10_000}),
        )
        .await;
    check_response(&doc, "post", "/v1/cabinets/{id}/commands", s, &b);
    let (s, b) = op
        .get(&format!("/v1/cabinets/{}/events?limit=5", cab.id))
        .await;
    check_response(&doc, "get", "/v1/cabinets/{id}/events", s, &b);
    let (s, b) = op
        .get(&format!("/v1/cabinets/{}/compartments", cab.id))
        .await;
    check_response(&doc, "get", "/v1/cabinets/{id}/compartments", s, &b);
    for path in [
        "/v1/sites",
        "/v1/carriers",
        "/v1/parcel-audit",
        "/v1/alerts",
        "/v1/quarantine",
    ] {
        let (s, b) = op.get(path).await;
        check_response(&doc, "get", path, s, &b);
    }
    let (s, b) = op.get("/v1/carriers/dhl/couriers").await;
    check_response(&doc, "get", "/v1/carriers/{id}/couriers", s, &b);

    // the console's reads: the fleet overview, search, a cabinet's commands, an order's notices
    for path in ["/v1/fleet/summary", "/v1/fleet/sites?limit=5"] {
        let (s, b) = op.get(path).await;
        check_response(&doc, "get", path.split('?').next().unwrap_or(path), s, &b);
    }
    let (s, b) = op.get(&format!("/v1/fleet/sites/{}", parcels::SITE)).await;
    check_response(&doc, "get", "/v1/fleet/sites/{site}", s, &b);
    let (s, b) = op.get("/v1/search?q=OA-TRACK-1").await;
    check_response(&doc, "get", "/v1/search", s, &b);
    let (s, b) = op.get(&format!("/v1/cabinets/{}/commands", cab.id)).await;
    check_response(&doc, "get", "/v1/cabinets/{id}/commands", s, &b);
    let (s, b) = dhl.get(&format!("/v1/orders/{id}/notifications")).await;
    check_response(&doc, "get", "/v1/orders/{id}/notifications", s, &b);
    let (s, b) = op
        .get(&format!("/v1/sites/{}/occupancy", parcels::SITE))
        .await;
    check_response(&doc, "get", "/v1/sites/{id}/occupancy", s, &b);
    let (s, _, text) = op.raw(Method::GET, "/readyz", None, false).await;
    let b: Value = serde_json::from_str(&text).expect("readyz JSON");
    check_response(&doc, "get", "/readyz", s, &b);

    // errors: the one shared body
    let (s, b) = op.get("/v1/cabinets/NO-SUCH-CAB").await;
    assert_eq!(s, 404, "{b}");
    check_response(&doc, "get", "/v1/cabinets/{id}", 404, &b);
    let (s, _, text) = op.raw(Method::GET, "/v1/cabinets", None, false).await;
    assert_eq!(s, 401);
    let b: Value = serde_json::from_str(&text).expect("401 JSON");
    check_response(&doc, "get", "/v1/cabinets", 401, &b);
}
