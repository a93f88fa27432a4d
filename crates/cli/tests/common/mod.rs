//! Helpers shared by the CLI tests that build particle sets from AdK models.
#![allow(dead_code)]

use std::path::Path;
use std::process::{Command, Output};

pub fn run(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cryoforge")).args(args).output().expect("cannot start cryoforge")
}

pub fn ok(o: &Output) {
    assert!(o.status.success(), "stderr: {}", String::from_utf8_lossy(&o.stderr));
}

pub fn fails_with(o: &Output, needles: &[&str]) {
    let e = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "expected exit 1, stderr: {e}");
    assert!(!e.contains("panicked"), "panic: {e}");
    for n in needles {
        assert!(e.contains(n), "stderr lacks {n:?}: {e}");
    }
}

pub fn atoms(pdb: &str) -> Vec<(String, [f64; 3])> {
    pdb.lines()
        .filter(|l| (l.starts_with("ATOM") || l.starts_with("HETATM")) && l.len() >= 54)
        .map(|l| (l.to_string(), [0, 1, 2].map(|i| l[30 + 8 * i..38 + 8 * i].trim().parse::<f64>().unwrap())))
        .collect()
}

/// Interleave the particle STARs written by `simulate` (same optics) into `out`.
pub fn merge(out: &Path, ins: &[&Path]) {
    let mut header = Vec::new();
    let mut tables = Vec::new();
    for p in ins {
        let text = std::fs::read_to_string(p.join("particles.star")).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        let last = lines.iter().rposition(|l| l.starts_with("_rln")).unwrap();
        if header.is_empty() {
            header = lines[..=last].iter().map(|s| s.to_string()).collect();
        }
        let name = p.file_name().unwrap().to_str().unwrap();
        tables.push(
            lines[last + 1..]
                .iter()
                .filter(|l| !l.trim().is_empty())
                .map(|l| l.replacen("@particles.mrcs", &format!("@{name}/particles.mrcs"), 1))
                .collect::<Vec<_>>(),
        );
    }
    let mut text = header.join("\n") + "\n";
    let longest = tables.iter().map(|t| t.len()).max().unwrap();
    for i in 0..longest {
        for t in &tables {
            if let Some(r) = t.get(i) {
                text.push_str(r);
                text.push('\n');
            }
        }
    }
    std::fs::write(out, text).unwrap();
}
