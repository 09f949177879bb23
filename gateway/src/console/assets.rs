//! The console's files: `gateway/console/` of the repository, embedded in the binary
//! (rust-embed: release builds carry them; debug builds read the folder, so a page edit shows
//! on reload while developing). Served with their content type, an ETag and
//! `Cache-Control: no-cache` (the browser revalidates; an unchanged file is a 304).

use axum::extract::Path;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};

/// The console's files.
#[derive(rust_embed::Embed)]
#[folder = "console/"]
struct Files;

/// `GET /console`: to `/console/` (relative asset paths need the slash).
pub(super) async fn to_index() -> Redirect {
    Redirect::permanent("/console/")
}

/// `GET /console/`: the page shell.
pub(super) async fn index(headers: HeaderMap) -> Response {
    serve("index.html", &headers)
}

/// `GET /console/assets/{*path}`.
pub(super) async fn asset(Path(path): Path<String>, headers: HeaderMap) -> Response {
    if path.split('/').any(|p| p == ".." || p.is_empty()) {
        return StatusCode::NOT_FOUND.into_response();
    }
    serve(&format!("assets/{path}"), &headers)
}

/// Whether the console has this file (tests, and the page shell's self-check).
pub fn exists(path: &str) -> bool {
    Files::get(path).is_some()
}

/// Every file of the console (paths relative to `gateway/console/`).
pub fn list() -> Vec<String> {
    Files::iter().map(|p| p.into_owned()).collect()
}

/// One file's text, if it is UTF-8 (tests check the message files with it).
pub fn text(path: &str) -> Option<String> {
    Files::get(path).and_then(|f| String::from_utf8(f.data.into_owned()).ok())
}

fn serve(path: &str, headers: &HeaderMap) -> Response {
    let Some(file) = Files::get(path) else {
        return (StatusCode::NOT_FOUND, "no such console file").into_response();
    };
    let etag = format!("\"{}\"", hex::encode(&file.metadata.sha256_hash()[..16]));
    let cached = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag));
    let mut h = HeaderMap::new();
    if let Ok(v) = HeaderValue::from_str(&etag) {
        h.insert(header::ETAG, v);
    }
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    if cached {
        return (StatusCode::NOT_MODIFIED, h).into_response();
    }
    let mime = match path.rsplit('.').next() {
        Some("js") | Some("mjs") => "text/javascript; charset=utf-8",
        Some("json") => "application/json",
        _ => file.metadata.mimetype(),
    };
    if let Ok(v) = HeaderValue::from_str(mime) {
        h.insert(header::CONTENT_TYPE, v);
    }
    (h, file.data.into_owned()).into_response()
}
