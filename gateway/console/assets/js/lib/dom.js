// DOM helpers for the console: elements are built with createElement and text nodes, never
// innerHTML, so data from the API can never become markup.

const PROPS = new Set(["value", "checked", "disabled", "selected", "hidden"]);

/**
 * h(tag, attrs, ...children): creates an element.
 * attrs: class, id, data-*, aria-*, href, type, name, ... set as attributes; value/checked/
 * disabled/selected/hidden set as properties; on* (a function) as an event listener;
 * null/undefined/false values are skipped.
 * children: strings or numbers (text nodes), nodes, arrays of those, null/false (skipped).
 */
export function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  if (attrs) {
    for (const [k, v] of Object.entries(attrs)) {
      if (v === null || v === undefined || v === false) continue;
      if (k.startsWith("on") && typeof v === "function") {
        el.addEventListener(k.slice(2).toLowerCase(), v);
      } else if (PROPS.has(k)) {
        el[k] = v;
      } else if (k === "class" && Array.isArray(v)) {
        el.setAttribute("class", v.filter(Boolean).join(" "));
      } else {
        el.setAttribute(k, v === true ? "" : String(v));
      }
    }
  }
  append(el, children);
  return el;
}

/** Appends children (strings, numbers, nodes, nested arrays; null/false skipped). */
export function append(el, children) {
  for (const c of children) {
    if (c === null || c === undefined || c === false) continue;
    if (Array.isArray(c)) append(el, c);
    else if (c instanceof Node) el.appendChild(c);
    else el.appendChild(document.createTextNode(String(c)));
  }
  return el;
}

/** Removes every child of `el`. */
export function clear(el) {
  while (el.firstChild) el.removeChild(el.firstChild);
  return el;
}

/** Replaces the children of `el` with `children`. */
export function replace(el, ...children) {
  clear(el);
  return append(el, children);
}

/** debounce(fn, ms): calls fn at most once per `ms`, after the last call of a burst
 * (and at least every `ms` while calls keep coming, so a busy stream still refreshes). */
export function debounce(fn, ms) {
  let timer = null;
  let first = 0;
  return (...args) => {
    const now = Date.now();
    if (timer === null) first = now;
    clearTimeout(timer);
    const wait = Math.max(0, Math.min(ms, first + ms * 2 - now));
    timer = setTimeout(() => {
      timer = null;
      fn(...args);
    }, wait);
  };
}
