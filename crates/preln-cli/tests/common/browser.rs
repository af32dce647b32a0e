//! Reports in a real browser: headless Chromium loads an HTML report, and a probe script added to
//! a copy of it reports every image that failed to load and every error or `console.error`;
//! a second run saves a screenshot.

use std::path::Path;
use std::process::Command;

/// What the page showed.
#[derive(Debug, serde::Deserialize)]
pub struct PageCheck {
    pub images: usize,
    pub broken: Vec<String>,
    pub errors: Vec<String>,
}

const PROBE: &str = r#"<script>
window.__errors = [];
window.addEventListener('error', e => window.__errors.push(String(e.message || (e.target && (e.target.alt || e.target.tagName)))), true);
(function () { const o = console.error; console.error = function (...a) { window.__errors.push(a.join(' ')); o.apply(console, a); }; })();
window.addEventListener('load', () => {
  const imgs = Array.from(document.images);
  const broken = imgs.filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.alt || 'image');
  const out = document.createElement('pre');
  out.id = 'preln-check';
  out.textContent = JSON.stringify({images: imgs.length, broken: broken, errors: window.__errors});
  document.body.appendChild(out);
});
</script>"#;

/// Chromium on PATH. Without it the check is skipped with the reason on stderr, except under
/// CI (`CI=true`), where `.ci/run` installs it and its absence is a failure.
fn chromium() -> Option<&'static str> {
    for name in ["chromium", "chromium-browser", "google-chrome"] {
        if Command::new(name).arg("--version").output().is_ok_and(|o| o.status.success()) {
            return Some(name);
        }
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "CI must have Chromium (.ci/run installs Debian's `chromium`)"
    );
    eprintln!("SKIPPED the browser check: no chromium on PATH (apt-get install chromium)");
    None
}

fn headless(browser: &str) -> Command {
    let mut c = Command::new(browser);
    c.args(["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--virtual-time-budget=5000"]);
    c
}

/// Loads `html` in headless Chromium and saves a `screenshot` (PNG, 1280 wide); `None` where no
/// Chromium exists (see [`chromium`]).
pub fn check_page(html: &Path, screenshot: &Path) -> Option<PageCheck> {
    let browser = chromium()?;
    let text = std::fs::read_to_string(html).unwrap();
    let at = text.find("<head>").map(|i| i + "<head>".len()).unwrap_or(0);
    let probe = html.with_extension("probe.html");
    std::fs::write(&probe, format!("{}{PROBE}{}", &text[..at], &text[at..])).unwrap();
    let dom = headless(browser).arg("--dump-dom").arg(format!("file://{}", probe.display())).output().unwrap();
    assert!(dom.status.success(), "chromium --dump-dom failed: {}", String::from_utf8_lossy(&dom.stderr));
    let dom = String::from_utf8_lossy(&dom.stdout);
    let start = dom.find("<pre id=\"preln-check\">").expect("the probe ran") + "<pre id=\"preln-check\">".len();
    let json = &dom[start..start + dom[start..].find("</pre>").unwrap()];
    let check: PageCheck = serde_json::from_str(&json.replace("&quot;", "\"").replace("&amp;", "&")).unwrap();
    let shot = headless(browser)
        .arg("--window-size=1280,2400")
        .arg(format!("--screenshot={}", screenshot.display()))
        .arg(format!("file://{}", html.display()))
        .output()
        .unwrap();
    assert!(shot.status.success() && screenshot.exists(), "chromium --screenshot failed");
    let _ = std::fs::remove_file(&probe);
    Some(check)
}
