//! `cryoforge demo` end to end at a tiny size, and the reports it and `reconstruct` write:
//! valid self-contained HTML, every image embedded, numbers equal to summary.json and
//! fsc.csv; a headless-Chromium screenshot when a Chromium is installed.

use cryoforge_report::html::check_html;
use std::path::Path;
use std::process::Command;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_cryoforge"))
}

fn tiny_demo(out: &Path) -> std::process::Output {
    bin()
        .args(["demo", "--quick", "--n", "300", "--frames", "6", "--steps", "2", "--json", "--out"])
        .arg(out)
        .output()
        .expect("cannot start cryoforge")
}

/// The text between `<td data-key="KEY">` and `</td>`.
fn cell<'a>(html: &'a str, key: &str) -> Option<&'a str> {
    let tag = format!("<td data-key=\"{key}\">");
    let i = html.find(&tag)? + tag.len();
    Some(&html[i..i + html[i..].find("</td>")?])
}

#[test]
fn demo_runs_end_to_end_and_reports() {
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("demo");
    let t = std::time::Instant::now();
    let o = tiny_demo(&out);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "demo failed: {err}");
    eprintln!("tiny demo: {:.1} s", t.elapsed().as_secs_f64());
    // --json: stdout is exactly demo.json's content; the final line is on stderr.
    let stdout = String::from_utf8_lossy(&o.stdout);
    let v: serde_json::Value = serde_json::from_str(&stdout).expect("stdout is one JSON document");
    let on_disk: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("demo.json")).unwrap()).unwrap();
    assert_eq!(v["steps"], on_disk["steps"]);
    let last = err.trim().lines().last().unwrap_or("");
    assert!(last.starts_with("demo finished") && last.contains("report.html"), "{last}");
    let steps = v["steps"].as_array().unwrap();
    let status =
        |n: &str| steps.iter().find(|s| s["name"] == n).map(|s| s["status"].as_str().unwrap().to_string());
    for s in ["structures", "simulate", "reconstruct", "report"] {
        assert_eq!(status(s).as_deref(), Some("done"), "step {s}");
    }
    for m in ["cryoSTAR", "cryoSPHERE"] {
        let s = status(m).unwrap();
        assert!(s == "done" || s == "not yet available", "{m}: {s}");
    }
    assert_eq!(v["size"]["particles"], 300);
    for f in [
        "structures/trajectory.pdb",
        "sim/particles.mrcs",
        "sim/truth.csv",
        "recon/map.mrc",
        "recon/report.html",
        "report.html",
    ] {
        assert!(out.join(f).is_file(), "{f} missing");
    }
    // The demo report: valid, self-contained, all sections of the finished steps.
    let html = std::fs::read_to_string(out.join("report.html")).unwrap();
    let imgs = check_html(&html).unwrap();
    assert!(imgs >= 2, "{imgs} images");
    assert_eq!(html.matches("<img ").count(), html.matches("src=\"data:image/png;base64,").count());
    assert!(!html.contains("http://") && !html.contains("https://"));
    assert!(html.contains("id=\"reconstruct-fsc\"") && html.contains("id=\"simulate-particles\""));
    assert!(html.contains("recon/map.mrc") && html.contains("ChimeraX"));
    assert!(html.contains("cryoSTAR PC1–frame |Spearman|"));

    // The reconstruct report's numbers are summary.json's and fsc.csv's.
    let rh = std::fs::read_to_string(out.join("recon/report.html")).unwrap();
    check_html(&rh).unwrap();
    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("recon/summary.json")).unwrap()).unwrap();
    let mut checked = 0;
    for (k, val) in summary.as_object().unwrap() {
        if k == "command" {
            continue;
        }
        let want = match val {
            serde_json::Value::String(s) => s.clone(),
            serde_json::Value::Null => "—".into(),
            other => other.to_string(),
        };
        assert_eq!(cell(&rh, k), Some(want.as_str()), "summary.json {k}");
        checked += 1;
    }
    assert!(checked >= 10);
    let fsc = std::fs::read_to_string(out.join("recon/fsc.csv")).unwrap();
    for line in fsc.lines().skip(1) {
        let row: String = line.split(',').map(|c| format!("<td>{c}</td>")).collect();
        assert!(rh.contains(&format!("<tr>{row}</tr>")), "fsc.csv row {line} not in the report");
    }

    // `cryoforge report` on the same folder, elsewhere, with --json.
    let o = bin()
        .args(["report", "--json", "--out"])
        .arg(d.path().join("r.html"))
        .arg(out.join("recon"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let s = String::from_utf8_lossy(&o.stdout);
    let end = s.rfind("\n}").unwrap() + 2;
    let j: serde_json::Value = serde_json::from_str(&s[..end]).unwrap();
    assert_eq!(j["kind"], "reconstruction");
    assert_eq!(j["numbers"]["resolution_0.143_masked_A"], summary["resolution_0.143_masked_A"]);
    assert!(d.path().join("r.html").is_file());

    screenshot(&out.join("report.html"), d.path());
}

/// Render the report in headless Chromium and check a screenshot came out.
fn screenshot(html: &Path, tmp: &Path) {
    let exe =
        ["chromium", "chromium-browser", "google-chrome", "google-chrome-stable"].into_iter().find(|c| {
            std::env::var_os("PATH").is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(c).is_file()))
        });
    let Some(exe) = exe else {
        eprintln!("SKIP report screenshot: no chromium, chromium-browser or google-chrome on PATH");
        return;
    };
    let shot = tmp.join("report.png");
    let o = Command::new(exe)
        .args(["--headless", "--disable-gpu", "--no-sandbox", "--window-size=1280,4000"])
        .arg(format!("--screenshot={}", shot.display()))
        .arg(format!("file://{}", html.canonicalize().unwrap().display()))
        .output()
        .expect("cannot start chromium");
    assert!(o.status.success(), "chromium: {}", String::from_utf8_lossy(&o.stderr));
    let png = std::fs::read(&shot).expect("no screenshot written");
    assert_eq!(&png[1..4], b"PNG");
    assert!(png.len() > 20_000, "screenshot of {} bytes looks blank", png.len());
    eprintln!("report screenshot: {} ({} bytes)", shot.display(), png.len());
}

#[test]
fn report_of_a_folder_that_is_not_an_output_names_what_it_expects() {
    let d = tempfile::tempdir().unwrap();
    let o = bin().arg("report").arg(d.path()).output().unwrap();
    let e = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{e}");
    assert!(e.contains("not a cryoforge output folder") && e.contains("fsc.csv"), "{e}");
    assert!(!d.path().join("report.html").exists());
}

#[test]
fn readme_first_command_is_the_demo() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let setup = &readme[readme.find("## Set up").expect("README has a Set up section")..];
    let first_block = setup.split("```").nth(1).expect("a code block in Set up");
    let first_cmd = first_block.lines().map(str::trim).find(|l| !l.is_empty()).unwrap();
    assert_eq!(first_cmd, "cargo run --release -- demo");
    // The test command stays what CI runs.
    let ci = std::fs::read_to_string(root.join(".ci/run")).unwrap();
    let ci_cmd = ci.lines().last().unwrap().trim();
    assert!(readme.lines().any(|l| l.trim() == ci_cmd), "README lacks the CI command {ci_cmd:?}");
}
