//! Headless Chromium (Debian's `chromium`) on one page, driven over the
//! DevTools protocol: evaluate JavaScript in the page, take a screenshot.
//!
//! `chromium --dump-dom --virtual-time-budget=...` would be simpler, but
//! virtual time fires the page's timers without real time passing, so a
//! page that computes rates from successive scrapes would see nothing
//! happen between them. Over the protocol the page runs in real time, as
//! in a person's browser, while the test reads its DOM.

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{json, Value};

use super::http::get;
use super::websocket::WebSocket;

/// The browser binary on PATH, by the names Debian and others give it.
pub fn find() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    ["chromium", "chromium-browser", "google-chrome"]
        .iter()
        .flat_map(|name| std::env::split_paths(&path).map(move |dir| dir.join(name)))
        .find(|candidate| candidate.is_file())
}

pub struct Chromium {
    child: Child,
    log: PathBuf,
    page: WebSocket,
    next_id: u64,
}

impl Chromium {
    /// Starts `binary` headless on `url` in a `width` x `height` window, with
    /// its profile and log under `dir`, and connects to the page.
    pub fn open(binary: &Path, url: &str, dir: &Path, (width, height): (u32, u32)) -> Chromium {
        let profile = dir.join("chromium-profile");
        let log = dir.join("chromium.log");
        let out = File::create(&log).expect("create chromium.log");
        let err = out.try_clone().expect("clone the log handle");
        let mut child = Command::new(binary)
            .args([
                "--headless",
                // Root in a container has no user namespaces to sandbox with.
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-extensions",
                "--hide-scrollbars",
                "--remote-debugging-address=127.0.0.1",
                "--remote-debugging-port=0",
            ])
            .arg(format!("--window-size={width},{height}"))
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg(url)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", binary.display()));
        let port = wait_for(&mut child, &log, "its DevTools port file", || {
            // Chromium writes the port it chose, then the browser's path.
            let text = fs::read_to_string(profile.join("DevToolsActivePort")).ok()?;
            text.lines().next()?.trim().parse::<u16>().ok()
        });
        let host = format!("127.0.0.1:{port}");
        let page_path = wait_for(&mut child, &log, "the page target", || {
            let list: Value = serde_json::from_str(&get(&host, "/json/list").ok()?.1).ok()?;
            list.as_array()?
                .iter()
                .find(|target| target["type"] == "page" && target["url"] == url)
                .and_then(|target| target["webSocketDebuggerUrl"].as_str())
                .and_then(|ws| {
                    ws.split_once(host.as_str())
                        .map(|(_, path)| path.to_string())
                })
        });
        let page = WebSocket::connect(&host, &page_path)
            .unwrap_or_else(|e| panic!("{e}\n{}", log_tail(&log)));
        let mut browser = Chromium {
            child,
            log,
            page,
            next_id: 0,
        };
        // The window's size includes its (invisible) frame: make the page's
        // viewport the size asked for.
        let viewport = json!({
            "width": width, "height": height, "deviceScaleFactor": 1, "mobile": false,
        });
        if let Err(e) = browser.call("Emulation.setDeviceMetricsOverride", viewport) {
            panic!("setting the viewport: {e}\n{}", browser.log_tail());
        }
        browser
    }

    /// Calls a DevTools method on the page and returns its result.
    pub fn call(&mut self, method: &str, params: Value) -> Result<Value, String> {
        self.next_id += 1;
        let id = self.next_id;
        self.page
            .send_text(&json!({ "id": id, "method": method, "params": params }).to_string())?;
        loop {
            let message: Value = serde_json::from_str(&self.page.receive_text()?)
                .map_err(|e| format!("DevTools sent something that is not JSON: {e}"))?;
            // Events (no id) and older answers are not ours.
            if message["id"] != id {
                continue;
            }
            if let Some(error) = message.get("error") {
                return Err(format!("{method}: {error}"));
            }
            return Ok(message["result"].clone());
        }
    }

    /// The value of a JavaScript expression in the page (JSON-able).
    pub fn evaluate(&mut self, expression: &str) -> Result<Value, String> {
        let result = self.call(
            "Runtime.evaluate",
            json!({ "expression": expression, "returnByValue": true }),
        )?;
        if let Some(exception) = result.get("exceptionDetails") {
            return Err(format!("the page threw: {exception}"));
        }
        Ok(result["result"]["value"].clone())
    }

    /// A PNG of the window.
    pub fn screenshot(&mut self) -> Vec<u8> {
        let result = self
            .call("Page.captureScreenshot", json!({ "format": "png" }))
            .unwrap_or_else(|e| panic!("screenshot: {e}\n{}", self.log_tail()));
        base64::engine::general_purpose::STANDARD
            .decode(result["data"].as_str().unwrap_or_default())
            .expect("the screenshot is base64")
    }

    pub fn log_tail(&self) -> String {
        log_tail(&self.log)
    }
}

impl Drop for Chromium {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `probe` every 100 ms until it answers; panics after 30 s or when
/// the browser exits.
fn wait_for<T>(
    child: &mut Child,
    log: &Path,
    what: &str,
    mut probe: impl FnMut() -> Option<T>,
) -> T {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(found) = probe() {
            return found;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!(
                "chromium exited ({status}) before {what}\n{}",
                log_tail(log)
            );
        }
        assert!(
            Instant::now() < deadline,
            "chromium: no {what} after 30 s\n{}",
            log_tail(log)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn log_tail(log: &Path) -> String {
    let text = fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text
        .lines()
        // A container has no D-Bus, and chromium says so often.
        .filter(|line| !line.contains("dbus"))
        .collect();
    format!(
        "--- last lines of {} ---\n{}",
        log.display(),
        lines[lines.len().saturating_sub(20)..].join("\n")
    )
}
