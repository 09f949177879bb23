// The login page: an API token (password field) and the language; on success the shell opens
// the page asked for (or the fleet).

import { setLang, currentLang, LANGS } from "../lib/i18n.js";

export async function render(view, ctx) {
  const { h, t } = ctx;
  const token = h("input", {
    type: "password",
    id: "login-token",
    name: "token",
    autocomplete: "current-password",
    required: true,
    "data-test": "login-token",
  });
  const lang = h("select", {
    id: "login-lang",
    "data-test": "login-lang",
    onchange: async () => {
      await setLang(lang.value, true);
      // re-render the whole shell in the new language
      window.dispatchEvent(new HashChangeEvent("hashchange"));
    },
  }, LANGS.map((l) => h("option", { value: l, selected: l === currentLang() }, t(`common.lang_${l}`))));
  const error = h("p", { class: "form-error", role: "alert", "data-test": "login-error", hidden: true });
  const submit = h("button", { type: "submit", class: "btn btn-primary", "data-test": "login-submit" }, t("login.submit"));
  const form = h("form", { class: "card login-card", "data-test": "login-form" },
    h("h1", null, t("login.title")),
    h("p", { class: "muted" }, t("login.intro")),
    h("label", { for: "login-token" }, t("login.token")),
    token,
    h("label", { for: "login-lang" }, t("common.language")),
    lang,
    error,
    submit);
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    error.hidden = true;
    const v = token.value.trim();
    if (!v) {
      error.textContent = t("login.empty");
      error.hidden = false;
      return;
    }
    submit.disabled = true;
    try {
      await ctx.login(v);
    } catch (err) {
      error.textContent = err.status === 401 ? t("login.wrong_token") : t("login.failed", { message: err.message });
      error.hidden = false;
      token.select();
    } finally {
      submit.disabled = false;
    }
  });
  view.appendChild(h("div", { class: "login-wrap" }, form));
  token.focus();
}
