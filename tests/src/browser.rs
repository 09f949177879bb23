//! A real browser for the console's end-to-end tests: Debian's Chromium, headless, driven over
//! WebDriver by its own `chromedriver` process through `fantoccini`.
//!
//! [`Browser::start`] spawns `/usr/bin/chromedriver` (or `$CHROMEDRIVER`) on a free loopback
//! port (`--port=0`, the port it reports), waits until it answers, and opens a session on
//! `/usr/bin/chromium` (or `$CHROMIUM`) with a fresh profile in a temp dir. Dropping the browser
//! kills chromedriver and the Chromium it started (their own process group).
//!
//! Every helper polls until its condition holds or [`DEADLINE`] passes (then it panics naming
//! what it waited for); none sleeps a fixed time. A missing Chromium or chromedriver is a test
//! failure that names `scripts/install-test-deps.sh`, never a skip.

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

/// A headless Chromium session and the chromedriver serving it.
pub struct Browser {
    /// The WebDriver client, for what the helpers do not cover.
    pub client: Client,
    driver: tokio::process::Child,
    _profile: tempfile::TempDir,
}

/// Where a binary is: `$var` if set, else `default`; panics naming the install script when it
/// is missing.
fn binary(var: &str, default: &str) -> PathBuf {
    let path = std::env::var_os(var)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(default));
    assert!(
        path.is_file(),
        "{} not found (set ${var} or run scripts/install-test-deps.sh, which installs \
         Debian's chromium and chromium-driver)",
        path.display()
    );
    path
}

impl Browser {
    /// Starts chromedriver and a headless Chromium session (1280×900).
    pub async fn start() -> Self {
        crate::init_tracing();
        let chromedriver = binary("CHROMEDRIVER", "/usr/bin/chromedriver");
        let chromium = binary("CHROMIUM", "/usr/bin/chromium");
        let profile = tempfile::tempdir().expect("browser profile dir");

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
            .unwrap_or_else(|e| panic!("starting {}: {e}", chromedriver.display()));
        let stdout = driver.stdout.take().expect("chromedriver stdout");
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
        .expect("chromedriver reports its port");
        // Keep draining its output so it never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });

        let url = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::new();
        crate::eventually_async("chromedriver answers /status", || async {
            let r = http.get(format!("{url}/status")).send().await.ok()?;
            let v: Value = r.json().await.ok()?;
            (v["value"]["ready"] == json!(true)).then_some(())
        })
        .await;

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
            .unwrap_or_else(|e| panic!("WebDriver session on {}: {e}", chromium.display()));
        Self {
            client,
            driver,
            _profile: profile,
        }
    }

    /// Ends the WebDriver session (Chromium quits), then chromedriver.
    pub async fn close(mut self) {
        let _ = self.client.clone().close().await;
        let _ = self.driver.start_kill();
    }

    /// Navigates to `url`.
    pub async fn goto(&self, url: &str) {
        self.client
            .goto(url)
            .await
            .unwrap_or_else(|e| panic!("goto {url}: {e}"));
    }

    /// Runs `script` (a function body; `arguments[i]` are `args`) and returns its value.
    pub async fn eval(&self, script: &str, args: Vec<Value>) -> Value {
        self.client
            .execute(script, args)
            .await
            .unwrap_or_else(|e| panic!("script failed: {e}\n{script}"))
    }

    /// Polls `script` until it returns something other than null/false; returns that value.
    pub async fn poll(&self, what: &str, script: &str, args: Vec<Value>) -> Value {
        let start = Instant::now();
        loop {
            if let Ok(v) = self.client.execute(script, args.clone()).await {
                if !v.is_null() && v != json!(false) {
                    return v;
                }
            }
            assert!(
                start.elapsed() < DEADLINE,
                "timed out waiting for: {what} (at {})",
                self.current_url().await
            );
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
        self.poll(
            &format!("{css} with {attr}={value:?}"),
            "for (const e of document.querySelectorAll(arguments[0])) {
                 if (e.getAttribute(arguments[1]) === arguments[2]) return true;
             }
             return false;",
            vec![json!(css), json!(attr), json!(value)],
        )
        .await;
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
        let start = Instant::now();
        loop {
            let err = match self.client.find(Locator::Css(css)).await {
                Ok(e) => match e.click().await {
                    Ok(()) => return,
                    Err(e) => e.to_string(),
                },
                Err(e) => e.to_string(),
            };
            assert!(
                start.elapsed() < DEADLINE,
                "timed out clicking {css}: {err} (at {})",
                self.current_url().await
            );
            tokio::time::sleep(POLL).await;
        }
    }

    /// Replaces the value of the input matching `css` with `text` (typed as a user would).
    pub async fn fill(&self, css: &str, text: &str) {
        let start = Instant::now();
        loop {
            let r = async {
                let e = self.client.find(Locator::Css(css)).await?;
                e.clear().await?;
                e.send_keys(text).await
            }
            .await;
            match r {
                Ok(()) => return,
                Err(e) => assert!(
                    start.elapsed() < DEADLINE,
                    "timed out filling {css}: {e} (at {})",
                    self.current_url().await
                ),
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Resizes the window (the layout viewport follows).
    pub async fn set_window(&self, width: u32, height: u32) {
        self.client
            .set_window_size(width, height)
            .await
            .expect("set window size");
    }

    /// Saves a PNG screenshot of the window to `path`.
    pub async fn screenshot(&self, path: &Path) {
        let png = self.client.screenshot().await.expect("screenshot");
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).expect("screenshot dir");
        }
        std::fs::write(path, png).expect("write screenshot");
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
    /// waits for the navigation bar.
    pub async fn login(&self, base_url: &str, token: &str) {
        self.goto(&format!("{base_url}/console/#/login")).await;
        self.fill("[data-test=login-token]", token).await;
        self.click("[data-test=login-submit]").await;
        self.wait_for("[data-test=nav]").await;
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
