//! The explorer page in a real browser (headless Chromium: `SIAMESE_CHROMIUM`, else
//! `chromium`; without one the test says it was skipped, and CI installs it). The page's
//! own `#selftest` hovers and clicks item 0 through mouse events and reports what it
//! showed; the test also takes a screenshot and checks it is not blank.

use std::path::Path;
use std::process::Command;

use siamese_train::explore::{explorer_html, Exploration};
use siamese_train::LabelledEmbeddings;

fn chromium() -> Option<String> {
    let bin = std::env::var("SIAMESE_CHROMIUM").unwrap_or_else(|_| "chromium".to_string());
    Command::new(&bin)
        .arg("--version")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|_| bin)
}

fn headless(bin: &str, profile: &Path) -> Command {
    let mut c = Command::new(bin);
    c.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1200,800",
        "--virtual-time-budget=10000",
    ])
    .arg(format!("--user-data-dir={}", profile.display()));
    c
}

/// Opens `file` with `#selftest=FILTER` and returns what the page's self-test reported,
/// and the page's DOM.
fn self_test(bin: &str, file: &Path, filter: &str) -> (serde_json::Value, String) {
    let url = format!("file://{}#selftest={filter}", file.display());
    let profile = file.with_extension("profile");
    let out = headless(bin, &profile)
        .arg("--dump-dom")
        .arg(&url)
        .output()
        .unwrap();
    let dom = String::from_utf8_lossy(&out.stdout).into_owned();
    let start = dom
        .find("id=\"selftest-result\"")
        .unwrap_or_else(|| panic!("no self-test result in the page: {dom:.2000}"));
    let json = &dom[start..];
    let json = &json[json.find('>').unwrap() + 1..json.find("</pre>").unwrap()];
    assert!(!json.is_empty(), "the self-test wrote nothing: {dom:.3000}");
    // The DOM dump escapes text as HTML.
    let json = json
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&amp;", "&");
    let seen: serde_json::Value = serde_json::from_str(&json).unwrap();
    eprintln!("self-test: {seen}");
    (seen, dom)
}

#[test]
fn the_legend_of_a_thousand_classes_scrolls_and_filters() {
    let Some(bin) = chromium() else {
        eprintln!("SKIPPED: no chromium (set SIAMESE_CHROMIUM)");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let classes = 1000usize;
    let n = 2 * classes;
    let embeddings: Vec<f32> = (0..n)
        .flat_map(|i| [(i % classes) as f32, (i / classes) as f32 + (i % 7) as f32])
        .collect();
    let labels: Vec<u32> = (0..n).map(|i| (i % classes) as u32).collect();
    let names: Vec<String> = (0..classes).map(|c| format!("class {c}")).collect();
    let page = explorer_html(&Exploration {
        title: "many classes",
        set: LabelledEmbeddings {
            embeddings: &embeddings,
            dim: 2,
            labels: &labels,
            class_names: &names,
            paths: &[],
            images: None,
        },
        threshold: None,
    })
    .unwrap();
    let file = dir.path().join("many.html");
    std::fs::write(&file, &page).unwrap();
    let (seen, _) = self_test(&bin, &file, "class%2012");
    assert_eq!(seen["errors"], serde_json::json!([]), "{seen}");
    assert_eq!(seen["legendEntries"], 1000);
    assert_eq!(seen["legendScrolls"], true, "{seen}");
    assert!(seen["colours"].as_u64().unwrap() > 900, "{seen}");
    // "class 12" lists classes 12 and 120-129; hiding them leaves 989 drawn.
    assert_eq!(seen["listed"], 11, "{seen}");
    assert_eq!(seen["drawnAfterHide"], 989, "{seen}");
    assert_eq!(seen["drawnAfterShow"], 1000, "{seen}");
}

#[test]
fn the_explorer_works_in_a_real_browser() {
    let Some(bin) = chromium() else {
        eprintln!("SKIPPED: no chromium (set SIAMESE_CHROMIUM)");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    // Three clusters of 8x8 images; item 0 stands alone so hovering it is unambiguous.
    let n = 600;
    let (side, dim) = (8usize, 2usize);
    let mut embeddings = Vec::with_capacity(n * dim);
    let mut labels = Vec::with_capacity(n);
    let mut pixels = Vec::with_capacity(n * side * side);
    for i in 0..n {
        let class = (i % 3) as u32;
        let jitter = |k: usize| ((i * 7919 + k * 104729) % 1000) as f32 / 1000.0;
        let (x, y) = if i == 0 {
            (-6.0, -6.0)
        } else {
            (
                class as f32 * 3.0 + jitter(0),
                class as f32 * 2.0 + jitter(1),
            )
        };
        embeddings.extend([x, y]);
        labels.push(class);
        pixels.extend((0..side * side).map(|p| ((p * 31 + i) % 256) as u8));
    }
    let evil = "<img src=x onerror=alert(1)>".to_string();
    let names = [evil.clone(), "two".to_string(), "three".to_string()];
    let page = explorer_html(&Exploration {
        title: "browser test",
        set: LabelledEmbeddings {
            embeddings: &embeddings,
            dim,
            labels: &labels,
            class_names: &names,
            paths: &[],
            images: Some((&pixels, side, side)),
        },
        threshold: Some(0.5),
    })
    .unwrap();
    let file = dir.path().join("page.html");
    std::fs::write(&file, &page).unwrap();
    let (seen, dom) = self_test(&bin, &file, "two");
    assert_eq!(
        seen["errors"],
        serde_json::json!([]),
        "console errors: {seen}"
    );
    // Item 0 is of class 0, whose name is markup: shown as text.
    assert_eq!(seen["label"], format!("{evil} (item 0)"), "{seen}");
    assert_eq!(seen["tooltipShown"], true);
    assert_eq!(
        seen["neighbours"], 5,
        "clicking lists the neighbours: {seen}"
    );
    assert_eq!(seen["legendEntries"], 3);
    // Issue #28: a right-to-left override in a class name reordered the legend.
    assert_eq!(seen["bidiIsolated"], true, "{seen}");
    // The filter "two" lists one class; hiding what it lists leaves two drawn.
    assert_eq!(
        (
            &seen["listed"],
            &seen["drawnAfterHide"],
            &seen["drawnAfterShow"]
        ),
        (&1.into(), &2.into(), &3.into()),
        "{seen}"
    );
    assert!(
        seen["coloured"].as_u64().unwrap() > 1000,
        "the canvas is drawn: {seen}"
    );
    // No element was made from the class name: it never became an <img>.
    assert!(
        !dom.contains("<img src=\"x\""),
        "markup from a class name reached the DOM"
    );

    let shot = dir.path().join("explorer.png");
    let out = headless(&bin, &dir.path().join("profile2"))
        .arg(format!("--screenshot={}", shot.display()))
        .arg(format!("file://{}", file.display()))
        .output()
        .unwrap();
    assert!(shot.exists(), "{}", String::from_utf8_lossy(&out.stderr));
    let decoder = png::Decoder::new(std::fs::File::open(&shot).unwrap());
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).unwrap();
    let channels = info.color_type.samples();
    let non_white = buf
        .chunks(channels)
        .filter(|p| p.iter().take(3).any(|&v| v < 200))
        .count();
    assert!(
        non_white > 2000,
        "the screenshot is blank ({non_white} dark pixels)"
    );
    if let Ok(keep) = std::env::var("SIAMESE_KEEP_SCREENSHOT") {
        std::fs::copy(&shot, keep).unwrap();
    }
}
