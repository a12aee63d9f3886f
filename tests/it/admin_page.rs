//! The admin page as a person reads it, on a spool with a dead delivery,
//! a Latin-1 notification and a flagged one: values in words (plurals,
//! lists, KiB/MiB, ages), links from invoice numbers to their timelines,
//! results before the dashboard, help for an empty or malformed search,
//! the hour's chart, and headless Chromium at 1280×900 and 390×844 with
//! no sideways scrolling on any of its pages.

use std::time::Duration;

use crate::admin::*;
use crate::helpers::*;

/// The longest an awaited condition may take: generous, since a loaded
/// machine is slow and a condition met returns at once.
const WAIT: Duration = Duration::from_secs(30);

/// A relay whose spool holds a notification with a dead delivery (to
/// `billing`, delivered to `erp`) and a Latin-1 one flagged
/// `latin1_body` and `unknown_event`, both delivered.
struct Scene {
    relay: TestRelay,
    admin: Admin,
    /// Invoice 0005-0042: dead to billing after 4 attempts, delivered to erp.
    dead: String,
    /// Invoice "Nº 17032", sent in ISO-8859-1.
    latin1: String,
    _targets: (Target, Target),
}

async fn scene() -> Scene {
    let failing = Target::start(vec![Reply::Status(500); 4]).await;
    let ok = Target::start(Vec::new()).await;
    let relay = TestRelay::start(&format!(
        "{}{}{}",
        subscription("billing", &failing.url(), ""),
        subscription(
            "erp",
            &ok.url(),
            "sources = [\"tusfacturas\", \"datil\"]\nevents = [\"facturacion.*\"]"
        ),
        admin_section()
    ))
    .await;
    let admin = Admin::of(&relay);
    let dead = dead_notification(&relay, &admin, "page-1", "0005-0042").await;
    // "ANULADO" is an event TusFacturas does not document: flagged.
    let latin1 = post_latin1_tus(&relay, "page-latin1", "ANULADO").await;
    for id in [&dead, &latin1] {
        admin
            .wait_for(
                &format!("/api/notifications/{id}"),
                "its deliveries final",
                |n| {
                    n["deliveries"]
                        .as_array()
                        .is_some_and(|d| d.iter().all(|d| d["state"] != "waiting"))
                },
            )
            .await;
    }
    Scene {
        relay,
        admin,
        dead,
        latin1,
        _targets: (failing, ok),
    }
}

/// The text between `from` and the next `to` after it.
fn between<'a>(page: &'a str, from: &str, to: &str) -> &'a str {
    let start = page
        .find(from)
        .unwrap_or_else(|| panic!("{from:?} in {page}"))
        + from.len();
    let len = page[start..]
        .find(to)
        .unwrap_or_else(|| panic!("{to:?} after {from:?} in {page}"));
    &page[start..start + len]
}

/// A table row of the page that holds `what`.
fn row<'a>(page: &'a str, what: &str) -> &'a str {
    page.split("<tr>")
        .find(|row| row.contains(what))
        .unwrap_or_else(|| panic!("a row with {what:?} in {page}"))
}

#[tokio::test]
async fn the_page_shows_counts_lists_sizes_ages_links_flags_and_a_latin1_body_in_words() {
    let scene = scene().await;
    let page = scene.admin.log_in_page(VIEWER_TOKEN).await;
    let (status, dashboard) = page.get("/").await;
    assert_eq!(status, 200, "{dashboard}");

    // Subscriptions: sources and events as words, not JSON arrays.
    let erp = row(&dashboard, "<td>erp</td>");
    assert!(
        erp.contains("<td>tusfacturas, datil</td><td>facturacion.*</td>"),
        "{erp}"
    );
    assert!(!dashboard.contains("[&quot;"), "no JSON array: {dashboard}");
    // Dead in red only where there are some.
    assert!(erp.contains(", 0 dead, "), "{erp}");
    assert!(
        !dashboard.contains("<span class=dead>0 dead"),
        "{dashboard}"
    );
    let billing = row(&dashboard, "<td>billing</td>");
    assert!(
        billing.contains("<span class=dead>1 dead</span>"),
        "{billing}"
    );

    // The spool's size in KiB or MiB, the bytes on hover.
    // (The spool grows while the test runs: the shown size is checked
    // against the bytes on the same page, not a later read.)
    let size = between(&dashboard, "id=spool-size title=\"", "</span>");
    let (title, shown) = size.split_once("\">").unwrap();
    let bytes: f64 = title.strip_suffix(" bytes").unwrap().parse().unwrap();
    let (number, unit) = shown.split_once(' ').unwrap();
    let scale = match unit {
        "KiB" => 1024.0,
        "MiB" => 1024.0 * 1024.0,
        "GiB" => 1024.0 * 1024.0 * 1024.0,
        other => panic!("{other}: not a size unit in {shown}"),
    };
    let number: f64 = number.parse().unwrap();
    assert!(
        bytes > 0.0 && (number * scale - bytes).abs() <= 0.05 * bytes + scale * 0.05,
        "{shown} for {bytes} bytes"
    );

    // Ages in words, the exact UTC time on hover.
    let received = between(row(&dashboard, &scene.dead), "<td><time ", "</time>");
    assert!(
        received.contains("title=\"20") && received.contains("Z\">"),
        "{received}"
    );
    let ago = received.rsplit('>').next().unwrap();
    assert!(ago.ends_with(" ago") || ago == "just now", "{ago}");

    // Invoice numbers link to their timelines, in the list and on the
    // notification's page; the timeline links back.
    let link = "<a href=\"/i/tusfacturas/0005%2D0042\">0005-0042</a>";
    assert!(row(&dashboard, &scene.dead).contains(link), "{dashboard}");
    let (_, shown) = page.get(&format!("/n/{}", scene.dead)).await;
    assert!(row(&shown, "<th>invoice</th>").contains(link), "{shown}");
    let (status, timeline) = page.get("/i/tusfacturas/0005%2D0042").await;
    assert_eq!(status, 200, "{timeline}");
    assert!(timeline.contains(&format!("<a href=\"/n/{}\">", scene.dead)));

    // Plurals: 4 attempts to billing, 1 to erp, everywhere.
    for (what, page) in [
        ("list", &dashboard),
        ("notification", &shown),
        ("timeline", &timeline),
    ] {
        assert!(!page.contains("(1 attempts)"), "{what}: {page}");
        assert!(page.contains("(4 attempts)"), "{what}: {page}");
        assert!(page.contains("(1 attempt)"), "{what}: {page}");
    }

    // The Latin-1 notification: flagged in the list and on its page, its
    // body decoded and labelled.
    let latin1_row = row(&dashboard, &scene.latin1);
    assert!(
        latin1_row.contains("<span class=flag>latin1_body</span>")
            && latin1_row.contains("<span class=flag>unknown_event</span>"),
        "{latin1_row}"
    );
    assert!(
        latin1_row.contains("<a href=\"/i/tusfacturas/N%C2%BA%2017032\">Nº 17032</a>"),
        "{latin1_row}"
    );
    let (_, latin1) = page.get(&format!("/n/{}", scene.latin1)).await;
    assert!(
        row(&latin1, "<th>flags</th>").contains("<span class=flag>latin1_body</span>"),
        "{latin1}"
    );
    assert!(latin1.contains("decoded from Windows-1252"), "{latin1}");
    assert!(
        latin1.contains("&quot;external_reference&quot;:&quot;Nº 17032&quot;"),
        "the body as text: {latin1}"
    );
    // A notification without flags says so.
    assert!(
        row(&shown, "<th>flags</th>").contains("<td id=flags>none</td>"),
        "{shown}"
    );
    scene.relay.stop().await;
}

#[tokio::test]
async fn filtered_results_come_first_and_a_bad_search_says_what_to_type() {
    let scene = scene().await;
    let page = scene.admin.log_in_page(VIEWER_TOKEN).await;
    let position = |page: &str, id: &str| {
        page.find(&format!("id={id}"))
            .unwrap_or_else(|| panic!("id={id} in {page}"))
    };

    // Unfiltered: the dashboard, then the notifications.
    let (_, dashboard) = page.get("/").await;
    assert!(position(&dashboard, "subscriptions") < position(&dashboard, "notifications"));
    // Filtered: the results first, said as such.
    let (status, filtered) = page.get("/?state=dead").await;
    assert_eq!(status, 200, "{filtered}");
    assert!(
        position(&filtered, "notifications") < position(&filtered, "subscriptions"),
        "{filtered}"
    );
    assert!(
        filtered.contains("1 notification matching the filter"),
        "{filtered}"
    );
    assert!(filtered.contains(&scene.dead) && !filtered.contains(&scene.latin1));

    // A filter that cannot be read: the page, saying why and what to type.
    let (status, wrong) = page.get("/?sorce=tusfacturas").await;
    assert_eq!(status, 400, "{wrong}");
    let problem = between(&wrong, "id=problem>", "</p>");
    assert!(
        problem.contains("unknown parameter &quot;sorce&quot;")
            && problem.contains("Fill in the fields below"),
        "{problem}"
    );
    assert!(wrong.contains("<form method=get action=/>"), "{wrong}");
    assert!(
        wrong.contains("id=subscriptions"),
        "the dashboard still: {wrong}"
    );

    // The invoice search: a wrong parameter, and an empty one.
    let (status, wrong) = page.get("/i?q=").await;
    assert_eq!(status, 400, "{wrong}");
    let problem = between(&wrong, "id=problem>", "</p>");
    assert!(
        problem.contains("takes <code>number</code>, not <code>q</code>")
            && problem.contains("Type an invoice number"),
        "{problem}"
    );
    assert!(wrong.contains("<input name=number"), "{wrong}");
    for empty in ["/i", "/i?number=", "/i?number=+"] {
        let (status, shown) = page.get(empty).await;
        assert_eq!(status, 200, "{empty}: {shown}");
        assert!(
            between(&shown, "id=problem>", "</p>").contains("Type an invoice number"),
            "{empty}: {shown}"
        );
    }
    let (_, none) = page.get("/i?number=9999-9999").await;
    assert!(
        none.contains("No invoice numbered like 9999-9999"),
        "{none}"
    );
    let (_, found) = page.get("/i?number=0042").await;
    assert!(found.contains("1 invoice numbered like 0042"), "{found}");
    scene.relay.stop().await;
}

/// The chart of the last hour: an SVG with no bars before any traffic,
/// and bars for what was received and delivered after some.
#[tokio::test]
async fn the_hour_chart_draws_bars_for_notifications_received_and_delivered() {
    let target = Target::start(Vec::new()).await;
    let (relay, admin) = relay_to(&target).await;
    let page = admin.log_in_page(VIEWER_TOKEN).await;
    let (_, before) = page.get("/").await;
    let chart = between(&before, "<figure id=chart>", "</figure>");
    assert_eq!(chart.matches("<svg").count(), 2, "{chart}");
    assert!(!chart.contains("<rect"), "no traffic, no bars: {chart}");
    assert!(chart.contains("0 notifications received"), "{chart}");

    for (n, hook) in ["c-1", "c-2", "c-3"].iter().enumerate() {
        let id = post_tus(&relay, hook, &format!("0009-000{n}")).await;
        assert!(target.wait_until(WAIT, |t| t.succeeded(&id)).await);
    }
    // The forwarder counts a delivery once its outcome is in: wait for it.
    admin
        .wait_for("/api/stats", "three delivered", |s| {
            s["subscriptions"]["billing"]["delivered"] == 3
        })
        .await;
    let (_, after) = page.get("/").await;
    let chart = between(&after, "<figure id=chart>", "</figure>");
    assert!(chart.contains("3 notifications received"), "{chart}");
    assert!(chart.contains("3 deliveries made"), "{chart}");
    let bar = |class: &str| {
        let rect = between(chart, &format!("<rect class={class} "), "</rect>");
        let height: u64 = between(rect, "height=", ">").parse().unwrap();
        assert!(height > 0, "{rect}");
        rect.to_owned()
    };
    assert!(bar("received").contains(": 3 received</title>"), "{chart}");
    bar("delivered");
    // Nothing waits: the oldest waiting age was sampled at zero.
    assert!(
        chart.contains("oldest waiting delivery: 0 s now"),
        "{chart}"
    );
    relay.stop().await;
}

/// Width of the phone the page is checked on (an iPhone 14's CSS pixels).
const PHONE: (u32, u32) = (390, 844);
const DESKTOP: (u32, u32) = (1280, 900);

/// Headless Chromium, at 1280×900, as a 390×844 phone (mobile emulation,
/// where a page without a viewport is laid out at 980 px) and in a
/// desktop window 390 px wide, on
/// the dashboard, the subscriptions, a flagged Latin-1 notification, a
/// dead one and an invoice's timeline: no page scrolls sideways. Each
/// screenshot is saved and its path printed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_fits_a_desktop_and_a_phone_without_scrolling_sideways() {
    let Some((desktop, mut desktop_driver)) = headless_browser().await else {
        return;
    };
    let phone_options = serde_json::json!({"mobileEmulation": {"deviceMetrics": {
        "width": PHONE.0, "height": PHONE.1, "pixelRatio": 2.0, "touch": true, "mobile": true
    }}});
    let Some((phone, mut phone_driver)) = headless_browser_with(phone_options).await else {
        return;
    };
    let scene = scene().await;
    let shots = tempfile::Builder::new()
        .prefix("admin-page-screenshots-")
        .tempdir()
        .unwrap()
        .keep();
    let pages = [
        ("dashboard", "/".to_owned()),
        ("subscriptions", "/#subscriptions".to_owned()),
        ("latin1-notification", format!("/n/{}", scene.latin1)),
        ("dead-notification", format!("/n/{}", scene.dead)),
        ("invoice-timeline", "/i/tusfacturas/0005%2D0042".to_owned()),
        ("filtered", "/?state=dead".to_owned()),
    ];
    // The desktop at its size, the phone, and a desktop window as narrow
    // as the phone (where only the layout, not the viewport, matters).
    let passes = [
        (&desktop, "1280", Some(DESKTOP)),
        (&phone, "390", None),
        (&desktop, "390-window", Some(PHONE)),
    ];
    for (browser, width, window) in passes {
        if let Some((w, h)) = window {
            browser.set_window_size(w, h).await.unwrap();
        }
        browser.goto(&scene.admin.base).await.unwrap();
        if width != "390-window" {
            log_in(browser, VIEWER_TOKEN).await;
        }
        shown(browser, fantoccini::Locator::Css("form[action='/logout']")).await;
        for (name, path) in &pages {
            browser
                .goto(&format!("{}{path}", scene.admin.base))
                .await
                .unwrap();
            shown(browser, fantoccini::Locator::Css("header")).await;
            let file = shots.join(format!("{width}-{name}.png"));
            std::fs::write(&file, browser.screenshot().await.unwrap()).unwrap();
            println!("screenshot: {}", file.display());
            let measured = browser
                .execute(
                    "return [document.documentElement.scrollWidth, window.innerWidth]",
                    Vec::new(),
                )
                .await
                .unwrap();
            let number = |i: usize| measured[i].as_u64().unwrap_or_else(|| panic!("{measured}"));
            let (scroll_width, inner_width) = (number(0), number(1));
            assert!(
                scroll_width <= inner_width,
                "{name} at {width} px scrolls sideways: {scroll_width} px wide in a {inner_width} px window ({})",
                file.display()
            );
            if width == "390" {
                assert_eq!(
                    inner_width,
                    u64::from(PHONE.0),
                    "{name}: laid out at the phone's width, not a desktop's ({})",
                    file.display()
                );
            }
        }
    }
    desktop.close().await.unwrap();
    phone.close().await.unwrap();
    let _ = desktop_driver.kill().await;
    let _ = phone_driver.kill().await;
    scene.relay.stop().await;
}
