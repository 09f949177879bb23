// The gateway's HTTP API from the console: same-origin fetch with the session cookie, the
// CSRF header on unsafe methods, JSON in and out, errors as ApiError.

let csrf = null;
let onUnauthorized = () => {};

/** An API call that failed: HTTP status, the API's error code and message. */
export class ApiError extends Error {
  constructor(status, error, message) {
    super(message || error || `HTTP ${status}`);
    this.name = "ApiError";
    this.status = status;
    this.error = error || "";
  }
  /** 403/404: the caller may not see it, or it does not exist (shown alike). */
  get hidden() {
    return this.status === 403 || this.status === 404;
  }
}

/** Sets the CSRF token of the session (from POST/GET /console/session). */
export function setCsrf(token) {
  csrf = token || null;
}

/** Sets what happens on a 401 (the shell shows the login page). */
export function setUnauthorizedHandler(fn) {
  onUnauthorized = fn;
}

/** apiUrl("/v1/orders", {status: "ready", site: ""}) -> "/v1/orders?status=ready" (empty values dropped). */
export function apiUrl(path, query) {
  if (!query) return path;
  const q = new URLSearchParams();
  const entries = query instanceof URLSearchParams ? query.entries() : Object.entries(query);
  for (const [k, v] of entries) {
    if (v === null || v === undefined || v === "") continue;
    q.append(k, String(v));
  }
  const s = q.toString();
  return s ? `${path}?${s}` : path;
}

const UNSAFE = new Set(["POST", "PUT", "PATCH", "DELETE"]);

/** api(method, path, body?) -> parsed JSON, or null for an empty answer; throws ApiError. */
export async function api(method, path, body) {
  const headers = { Accept: "application/json" };
  const init = { method, headers, credentials: "same-origin", cache: "no-store" };
  if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  if (UNSAFE.has(method) && csrf) headers["X-CSRF-Token"] = csrf;
  let r;
  try {
    r = await fetch(path, init);
  } catch (e) {
    throw new ApiError(0, "network", e.message || "network error");
  }
  const text = await r.text();
  let data = null;
  if (text) {
    try {
      data = JSON.parse(text);
    } catch {
      data = { message: text };
    }
  }
  if (!r.ok) {
    const err = new ApiError(r.status, data && data.error, data && data.message);
    if (r.status === 401 && !path.startsWith("/console/session")) onUnauthorized(err);
    throw err;
  }
  return data;
}
