//! The web console in a real browser (Debian's headless chromium through chromedriver) on a
//! real mesh: it opens the console, sees the agents, kills one with a reason and sees it turn
//! killed and the kill in the live feed, resumes it, edits a policy with a bad value and sees
//! the error next to the field, and fits a phone's width. Screenshots: `target/console.png`
//! and `target/console-phone.png`.

use std::path::PathBuf;
use std::time::Duration;

use crate::console::{ConsoleMesh, TOKEN};
use crate::webdriver::Browser;

const WITHIN: Duration = Duration::from_secs(30);

fn target_dir() -> PathBuf {
    // CARGO_TARGET_TMPDIR is <target>/tmp.
    let tmp = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    tmp.parent().map(PathBuf::from).unwrap_or(tmp)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_kills_resumes_and_edits_policies_in_a_browser() {
    let started = std::time::Instant::now();
    let mesh = ConsoleMesh::start().await;
    mesh.wait_for_agents(&["billing", "deployer"]).await;
    let browser = Browser::start(1280, 1000).await;
    browser.goto(&mesh.url).await;

    // Refused until a token is given; then the agents show.
    browser
        .wait_for(
            "the console says it has no token",
            "return document.querySelector('#conn').textContent.includes('no bearer token')",
            WITHIN,
        )
        .await;
    browser.fill("#token", TOKEN).await;
    browser.click("#connect").await;
    for id in ["billing", "deployer"] {
        browser
            .wait_for(
                &format!("{id} in the agents table"),
                &format!(
                    "const r = document.querySelector('tr[data-agent=\"{id}\"]'); \
                     return !!r && r.querySelector('td.state').textContent === 'active' \
                     && r.querySelector('td.instances').textContent === '1'"
                ),
                WITHIN,
            )
            .await;
    }
    browser
        .wait_for(
            "the live feed is live",
            "return document.querySelector('#feed-state').dataset.live === 'true'",
            WITHIN,
        )
        .await;

    // Kill billing with a reason.
    browser
        .click("tr[data-agent=\"billing\"] button.kill")
        .await;
    browser
        .wait_for(
            "the kill dialog",
            "return document.querySelector('#kill-dialog').open",
            WITHIN,
        )
        .await;
    browser
        .fill("#kill-reason", "invoiced every customer twice")
        .await;
    browser.click("#kill-confirm").await;
    browser
        .wait_for(
            "the fence result",
            "return /^killed billing: 1\\/1 replicas confirmed in [0-9.]+ ms/.test(document.querySelector('#message').textContent)",
            WITHIN,
        )
        .await;
    browser
        .wait_for(
            "billing killed in the table",
            "const r = document.querySelector('tr[data-agent=\"billing\"]'); \
             return !!r && r.querySelector('td.state').textContent === 'killed' \
             && r.querySelector('td.health').textContent === 'killed'",
            WITHIN,
        )
        .await;
    browser
        .wait_for(
            "the kill in the live feed",
            "return [...document.querySelectorAll('#feed li.live[data-kind=\"kill\"][data-agent=\"billing\"]')]\
             .some(li => li.textContent.includes('alice@console') && li.textContent.includes('invoiced every customer twice'))",
            WITHIN,
        )
        .await;
    let shot = browser.screenshot(&target_dir().join("console.png")).await;

    // Resume it.
    browser
        .click("tr[data-agent=\"billing\"] button.resume")
        .await;
    browser
        .wait_for(
            "billing active again",
            "const r = document.querySelector('tr[data-agent=\"billing\"]'); \
             return !!r && r.querySelector('td.state').textContent === 'active' \
             && document.querySelector('#message').textContent.startsWith('resumed billing')",
            WITHIN,
        )
        .await;
    browser
        .wait_for(
            "the resume in the live feed",
            "return !!document.querySelector('#feed li.live[data-kind=\"resume\"][data-agent=\"billing\"]')",
            WITHIN,
        )
        .await;

    // A policy with a bad value: the error shows at the field.
    browser
        .click("tr[data-agent=\"billing\"] button.policy")
        .await;
    browser
        .wait_for(
            "the policy editor loaded billing",
            "return document.querySelector('#policy-key').value === 'billing' \
             && document.querySelector('#message').textContent.includes('policy of billing')",
            WITHIN,
        )
        .await;
    browser.fill("#field-max_cost_usd", "-5").await;
    browser.click("#policy-save").await;
    browser
        .wait_for(
            "the error at max_cost_usd",
            "const i = document.querySelector('#field-max_cost_usd'); \
             const e = document.querySelector('.field-error[data-field=\"max_cost_usd\"]'); \
             return i.classList.contains('invalid') && e.textContent.includes('max_cost_usd') \
             && document.querySelectorAll('#policy-fields input.invalid').length === 1",
            WITHIN,
        )
        .await;
    // Fixed, it saves.
    browser.fill("#field-max_cost_usd", "50").await;
    browser.click("#policy-save").await;
    browser
        .wait_for(
            "the policy saved",
            "return document.querySelector('#message').textContent.startsWith('policy of billing set') \
             && document.querySelectorAll('#policy-fields input.invalid').length === 0",
            WITHIN,
        )
        .await;

    // A phone: nothing wider than the screen but the table, which scrolls in its box.
    browser.set_window(390, 844).await;
    browser
        .wait_for(
            "the page fits a phone's width",
            "return document.documentElement.scrollWidth <= window.innerWidth + 1",
            WITHIN,
        )
        .await;
    browser
        .screenshot(&target_dir().join("console-phone.png"))
        .await;

    browser.quit().await;
    mesh.stop().await;
    eprintln!(
        "browser test: {:.1}s; screenshot {}",
        started.elapsed().as_secs_f64(),
        shot.display()
    );
}
