//! A real browser for the console: Debian's Chromium, headless, driven over WebDriver by its
//! own `chromedriver` process through `fantoccini`. One harness for the console's end-to-end
//! tests (`locker_tests::browser` re-exports this module) and for `locker-sim bench console`.
//!
//! [`Browser::start`] spawns `/usr/bin/chromedriver` (or `$CHROMEDRIVER`) on a free loopback
//! port (`--port=0`, the port it reports), waits until it answers, and opens a session on
//! `/usr/bin/chromium` (or `$CHROMIUM`) with a fresh profile in a temp dir. Dropping the browser
//! kills chromedriver and the Chromium it started (their own process group).
//!
//! Every helper polls until its condition holds or [`DEADLINE`] passes; none sleeps a fixed
//! time. Two flavours of each: `try_*` returns a [`BrowserError`] (the benchmark), the plain
//! name panics with that error's message (the tests: a missing Chromium or chromedriver is a
//! test failure that names `scripts/install-test-deps.sh`, never a skip).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, BufReader};

/// How long a browser condition may take: generous, because Chromium on a loaded 2-core CI
/// machine is slow to start and to render; tests pass as soon as the condition holds.
pub const DEADLINE: Duration = Duration::from_secs(45);

const POLL: Duration = Duration::from_millis(50);

/// What went wrong driving the browser.
#[derive(Debug, thiserror::Error)]
pub enum BrowserError {
    #[error(
        "{0} not found (set ${1} or run scripts/install-test-deps.sh, which installs \
         Debian's chromium and chromium-driver)"
    )]
    Missing(String, &'static str),
    #[error("starting chromedriver: {0}")]
    Driver(String),
    #[error("WebDriver session on {0}: {1}")]
    Session(String, String),
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    #[error("{what}: {error}")]
    Command { what: String, error: String },
    #[error("timed out waiting for: {what} (at {url})")]
    Timeout { what: String, url: String },
}

impl BrowserError {
    fn cmd(what: impl Into<String>, e: impl std::fmt::Display) -> Self {
        Self::Command {
            what: what.into(),
            error: e.to_string(),
        }
    }
}

/// The harness's panicking flavour: `Ok` value, or a panic with the error's message.
fn ok<T>(r: Result<T, BrowserError>) -> T {
    r.unwrap_or_else(|e| panic!("{e}"))
}

/// A headless Chromium session and the chromedriver serving it.
pub struct Browser {
    /// The WebDriver client, for what the helpers do not cover.
    pub client: Client,
    driver: tokio::process::Child,
    _profile: tempfile::TempDir,
}

/// Where a binary is: `$var` if set, else `default`.
fn binary(var: &'static str, default: &str) -> Result<PathBuf, BrowserError> {
    let path = std::env::var_os(var)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(default));
    if path.is_file() {
        Ok(path)
    } else {
        Err(BrowserError::Missing(path.display().to_string(), var))
    }
}

impl Browser {
    /// Starts chromedriver and a headless Chromium session (1280×900); panics on failure.
    pub async fn start() -> Self {
        ok(Self::try_start().await)
    }

    /// Starts chromedriver and a headless Chromium session (1280×900).
    pub async fn try_start() -> Result<Self, BrowserError> {
        let chromedriver = binary("CHROMEDRIVER", "/usr/bin/chromedriver")?;
        let chromium = binary("CHROMIUM", "/usr/bin/chromium")?;
        let profile = tempfile::tempdir()?;

        let mut cmd = tokio::process::Command::new(&chromedriver);
        cmd.arg("--port=0")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            // its own process group, so Drop ends chromedriver and every Chromium process
            .process_group(0);
        let mut driver = cmd
            .spawn()
            .map_err(|e| BrowserError::Driver(format!("{}: {e}", chromedriver.display())))?;
        let stdout = driver
            .stdout
            .take()
            .ok_or_else(|| BrowserError::Driver("no stdout".into()))?;
        let mut lines = BufReader::new(stdout).lines();
        let port = tokio::time::timeout(DEADLINE, async {
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(rest) = line.split("started successfully on port ").nth(1) {
                    return rest.trim_end_matches('.').trim().parse::<u16>().ok();
                }
            }
            None
        })
        .await
        .ok()
        .flatten()
        .ok_or_else(|| BrowserError::Driver("chromedriver did not report its port".into()))?;
        // Keep draining its output so it never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });

        let url = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::new();
        let start = Instant::now();
        loop {
            let ready = async {
                let r = http.get(format!("{url}/status")).send().await.ok()?;
                let v: Value = r.json().await.ok()?;
                (v["value"]["ready"] == json!(true)).then_some(())
            }
            .await;
            if ready.is_some() {
                break;
            }
            if start.elapsed() > DEADLINE {
                return Err(BrowserError::Timeout {
                    what: "chromedriver answers /status".into(),
                    url,
                });
            }
            tokio::time::sleep(POLL).await;
        }

        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            json!({
                "binary": chromium.to_string_lossy(),
                "args": [
                    "--headless=new",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-dev-shm-usage",
                    "--disable-quic",
                    "--no-first-run",
                    "--disable-background-networking",
                    "--disable-component-update",
                    "--disable-sync",
                    format!("--user-data-dir={}", profile.path().display()),
                    "--window-size=1280,900",
                ],
            }),
        );
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        let client = ClientBuilder::new(connector)
            .capabilities(caps)
            .connect(&url)
            .await
            .map_err(|e| BrowserError::Session(chromium.display().to_string(), e.to_string()))?;
        Ok(Self {
            client,
            driver,
            _profile: profile,
        })
    }

    /// Ends the WebDriver session (Chromium quits), then chromedriver.
    pub async fn close(mut self) {
        let _ = self.client.clone().close().await;
        let _ = self.driver.start_kill();
    }

    /// Navigates to `url`.
    pub async fn goto(&self, url: &str) {
        ok(self.try_goto(url).await)
    }

    /// Navigates to `url` (returns when the document has loaded).
    pub async fn try_goto(&self, url: &str) -> Result<(), BrowserError> {
        self.client
            .goto(url)
            .await
            .map_err(|e| BrowserError::cmd(format!("goto {url}"), e))
    }

    /// Runs `script` (a function body; `arguments[i]` are `args`) and returns its value.
    pub async fn eval(&self, script: &str, args: Vec<Value>) -> Value {
        ok(self.try_eval(script, args).await)
    }

    /// Runs `script` (a function body; `arguments[i]` are `args`) and returns its value.
    pub async fn try_eval(&self, script: &str, args: Vec<Value>) -> Result<Value, BrowserError> {
        self.client
            .execute(script, args)
            .await
            .map_err(|e| BrowserError::cmd(format!("script failed\n{script}"), e))
    }

    /// Runs the asynchronous `script`: its last argument is the callback it calls with its
    /// result (WebDriver's script timeout, 30 s by default, bounds it).
    pub async fn try_eval_async(
        &self,
        script: &str,
        args: Vec<Value>,
    ) -> Result<Value, BrowserError> {
        self.client
            .execute_async(script, args)
            .await
            .map_err(|e| BrowserError::cmd(format!("async script failed\n{script}"), e))
    }

    /// Polls `script` until it returns something other than null/false; returns that value.
    pub async fn poll(&self, what: &str, script: &str, args: Vec<Value>) -> Value {
        ok(self.try_poll(what, script, args).await)
    }

    /// Polls `script` until it returns something other than null/false or [`DEADLINE`] passes.
    pub async fn try_poll(
        &self,
        what: &str,
        script: &str,
        args: Vec<Value>,
    ) -> Result<Value, BrowserError> {
        let start = Instant::now();
        loop {
            if let Ok(v) = self.client.execute(script, args.clone()).await {
                if !v.is_null() && v != json!(false) {
                    return Ok(v);
                }
            }
            if start.elapsed() >= DEADLINE {
                return Err(BrowserError::Timeout {
                    what: what.to_owned(),
                    url: self.current_url().await,
                });
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// The page's current URL (for failure messages).
    pub async fn current_url(&self) -> String {
        self.client
            .current_url()
            .await
            .map(|u| u.to_string())
            .unwrap_or_default()
    }

    /// The location's hash (`#/fleet`).
    pub async fn current_hash(&self) -> String {
        self.eval("return location.hash;", vec![])
            .await
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    /// Whether an element matching `css` is in the page now.
    pub async fn exists(&self, css: &str) -> bool {
        self.eval(
            "return !!document.querySelector(arguments[0]);",
            vec![json!(css)],
        )
        .await
            == json!(true)
    }

    /// Waits until an element matching `css` is in the page and visible.
    pub async fn wait_for(&self, css: &str) {
        self.poll(
            &format!("element {css}"),
            "const e = document.querySelector(arguments[0]);
             return !!e && e.getClientRects().length > 0;",
            vec![json!(css)],
        )
        .await;
    }

    /// Waits until an element matching `css` is in the page (visible or not).
    pub async fn wait_present(&self, css: &str) {
        ok(self.try_wait_present(css).await)
    }

    /// Waits until an element matching `css` is in the page (visible or not).
    pub async fn try_wait_present(&self, css: &str) -> Result<(), BrowserError> {
        self.try_poll(
            &format!("element {css} in the page"),
            "return !!document.querySelector(arguments[0]);",
            vec![json!(css)],
        )
        .await
        .map(drop)
    }

    /// Waits until an element matching `css` is gone from the page (or hidden).
    pub async fn wait_gone(&self, css: &str) {
        self.poll(
            &format!("no element {css}"),
            "const e = document.querySelector(arguments[0]);
             return !e || e.getClientRects().length === 0;",
            vec![json!(css)],
        )
        .await;
    }

    /// Waits until some element matching `css` contains `text`; returns its whole text.
    pub async fn wait_for_text(&self, css: &str, text: &str) -> String {
        self.poll(
            &format!("{css} containing {text:?}"),
            "for (const e of document.querySelectorAll(arguments[0])) {
                 if (e.textContent.includes(arguments[1])) return e.textContent;
             }
             return null;",
            vec![json!(css), json!(text)],
        )
        .await
        .as_str()
        .unwrap_or_default()
        .to_owned()
    }

    /// Waits until some element matching `css` has `attr` equal to `value`.
    pub async fn wait_attr(&self, css: &str, attr: &str, value: &str) {
        ok(self.try_wait_attr(css, attr, value).await)
    }

    /// Waits until some element matching `css` has `attr` equal to `value`.
    pub async fn try_wait_attr(
        &self,
        css: &str,
        attr: &str,
        value: &str,
    ) -> Result<(), BrowserError> {
        self.try_poll(
            &format!("{css} with {attr}={value:?}"),
            "for (const e of document.querySelectorAll(arguments[0])) {
                 if (e.getAttribute(arguments[1]) === arguments[2]) return true;
             }
             return false;",
            vec![json!(css), json!(attr), json!(value)],
        )
        .await
        .map(drop)
    }

    /// The text of the first element matching `css` (waits for it).
    pub async fn text(&self, css: &str) -> String {
        self.poll(
            &format!("text of {css}"),
            "const e = document.querySelector(arguments[0]); return e ? e.textContent : null;",
            vec![json!(css)],
        )
        .await
        .as_str()
        .unwrap_or_default()
        .to_owned()
    }

    /// An attribute of the first element matching `css` (waits for the element).
    pub async fn attr(&self, css: &str, attr: &str) -> Option<String> {
        self.wait_for(css).await;
        self.eval(
            "const e = document.querySelector(arguments[0]);
             return e ? e.getAttribute(arguments[1]) : null;",
            vec![json!(css), json!(attr)],
        )
        .await
        .as_str()
        .map(str::to_owned)
    }

    /// Clicks the first element matching `css`, retrying while it is missing, hidden or covered.
    pub async fn click(&self, css: &str) {
        ok(self.try_click(css).await)
    }

    /// Clicks the first element matching `css`, retrying while it is missing, hidden or covered.
    pub async fn try_click(&self, css: &str) -> Result<(), BrowserError> {
        let start = Instant::now();
        loop {
            let err = match self.client.find(Locator::Css(css)).await {
                Ok(e) => match e.click().await {
                    Ok(()) => return Ok(()),
                    Err(e) => e.to_string(),
                },
                Err(e) => e.to_string(),
            };
            if start.elapsed() >= DEADLINE {
                return Err(BrowserError::Timeout {
                    what: format!("clicking {css}: {err}"),
                    url: self.current_url().await,
                });
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Replaces the value of the input matching `css` with `text` (typed as a user would).
    pub async fn fill(&self, css: &str, text: &str) {
        ok(self.try_fill(css, text).await)
    }

    /// Replaces the value of the input matching `css` with `text` (typed as a user would).
    pub async fn try_fill(&self, css: &str, text: &str) -> Result<(), BrowserError> {
        let start = Instant::now();
        loop {
            let r = async {
                let e = self.client.find(Locator::Css(css)).await?;
                e.clear().await?;
                e.send_keys(text).await
            }
            .await;
            match r {
                Ok(()) => return Ok(()),
                Err(e) if start.elapsed() >= DEADLINE => {
                    return Err(BrowserError::Timeout {
                        what: format!("filling {css}: {e}"),
                        url: self.current_url().await,
                    })
                }
                Err(_) => {}
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Resizes the window (the layout viewport follows).
    pub async fn set_window(&self, width: u32, height: u32) {
        ok(self.try_set_window(width, height).await)
    }

    /// Resizes the window (the layout viewport follows).
    pub async fn try_set_window(&self, width: u32, height: u32) -> Result<(), BrowserError> {
        self.client
            .set_window_size(width, height)
            .await
            .map_err(|e| BrowserError::cmd("set window size", e))
    }

    /// Saves a PNG screenshot of the window to `path`.
    pub async fn screenshot(&self, path: &Path) {
        ok(self.try_screenshot(path).await)
    }

    /// Saves a PNG screenshot of the window to `path` (creating its directory).
    pub async fn try_screenshot(&self, path: &Path) -> Result<(), BrowserError> {
        let png = self
            .client
            .screenshot()
            .await
            .map_err(|e| BrowserError::cmd("screenshot", e))?;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            tokio::fs::create_dir_all(dir).await?;
        }
        tokio::fs::write(path, png).await?;
        Ok(())
    }

    /// Saves `<name>.png` into `$LOCKER_SCREENSHOTS` when that is set (the README's pictures);
    /// does nothing otherwise.
    pub async fn screenshot_if_asked(&self, name: &str) {
        if let Some(dir) = std::env::var_os("LOCKER_SCREENSHOTS") {
            self.screenshot(&Path::new(&dir).join(format!("{name}.png")))
                .await;
        }
    }

    /// Opens the console at `base_url` (`http://127.0.0.1:port`), logs in with `token` and
    /// waits for the navigation bar (in the page: on a phone it is collapsed).
    pub async fn login(&self, base_url: &str, token: &str) {
        ok(self.try_login(base_url, token).await)
    }

    /// Opens the console's login page at `base_url`, logs in with `token` and waits for the
    /// navigation bar.
    pub async fn try_login(&self, base_url: &str, token: &str) -> Result<(), BrowserError> {
        self.try_goto(&format!("{base_url}/console/#/login"))
            .await?;
        self.try_fill("[data-test=login-token]", token).await?;
        self.try_click("[data-test=login-submit]").await?;
        self.try_wait_present("[data-test=nav]").await
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // chromedriver and the Chromium it started share the process group we gave it.
        if let Some(pid) = self.driver.id() {
            let _ = std::process::Command::new("kill")
                .args(["-KILL", "--", &format!("-{pid}")])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
        let _ = self.driver.start_kill();
    }
}
