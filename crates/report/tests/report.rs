//! A report built from a complete synthetic run directory (every contract file) is valid,
//! self-contained HTML whose numbers are the files' numbers.

use cryoforge_io::npy::write_npy_f32;
use cryoforge_report::html::check_html;
use cryoforge_report::{build_report, DirKind};
use std::path::Path;

fn write(p: &Path, s: &str) {
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, s).unwrap();
}

fn fake_run(root: &Path) -> std::path::PathBuf {
    let n = 200;
    let sim = root.join("sim");
    let mut truth = String::from("index,model,rot_deg\n");
    for i in 0..n {
        truth.push_str(&format!("{i},{},0\n", i % 10));
    }
    write(&sim.join("truth.csv"), &truth);
    let run = root.join("star");
    write(
        &run.join("run.toml"),
        &format!(
            "[run]\ncommand = \"cryoforge star train sim/particles.star --out star <&>\"\nmethod = \"cryostar\"\nversion = \"0.1.0\"\nstarted = \"2025-01-01T00:00:00Z\"\nseed = 7\n\n[settings]\nzdim = 8\nlr = 0.0001\n\n[data]\nparticles = \"{}\"\nn_particles = {n}\nbox = 64\napix = 1.5\n",
            sim.join("particles.star").display()
        ),
    );
    let mut m = String::from("step,epoch,images,elapsed_s,loss,recon,kl,continuity\n");
    for s in 0..30 {
        let l = 1.0 / (1.0 + s as f64);
        m.push_str(&format!(
            "{s},{},{},{},{l},{},{},{}\n",
            s / 10,
            s * 64,
            s as f64 * 0.5,
            l * 0.8,
            l * 0.1,
            0.1 * l
        ));
    }
    write(&run.join("metrics.csv"), &m);
    let an = run.join("analysis");
    std::fs::create_dir_all(an.join("kmeans")).unwrap();
    let pca: Vec<f32> = (0..n)
        .flat_map(|i| [(i % 10) as f32 + 0.1 * (i as f32).sin(), (i as f32 * 0.3).cos(), 0.01 * i as f32])
        .collect();
    write_npy_f32(an.join("pca.npy"), &[n, 3], &pca).unwrap();
    write_npy_f32(
        an.join("umap.npy"),
        &[n, 2],
        &pca.chunks(3).flat_map(|r| [r[0], r[1]]).collect::<Vec<_>>(),
    )
    .unwrap();
    write(&an.join("kmeans/labels.txt"), &(0..n).map(|i| format!("{}\n", (i % 10) / 4)).collect::<String>());
    write(&an.join("summary.json"), "{\"method\": \"cryostar\", \"n_particles\": 200, \"zdim\": 8, \"explained_variance_ratio\": [0.91, 0.05, 0.01], \"kmeans\": {\"k\": 3, \"inertia\": 12.5}}");
    write(&an.join("truth.json"), "{\"pc1_frame_spearman\": -0.987654, \"pc1_frame_pearson\": -0.95, \"rmsd_mean_A\": 1.234, \"rmsd_ref_mean_A\": 3.5, \"per_frame_rmsd\": [[0, 1.0, 0.5], [5, 1.2, 3.0], [9, 1.1, 6.0]]}");
    let d = 16;
    let ex: Vec<f32> = (0..3 * 2 * d * d).map(|i| ((i * 7919) % 101) as f32).collect();
    write_npy_f32(an.join("examples.npy"), &[3, 2, d, d], &ex).unwrap();
    write(&an.join("examples.txt"), "5\n17\n99\n");
    let mut seg = String::from("residue,chain,resid,segment,w1,w2\n");
    for r in 0..60 {
        let s = usize::from(r >= 30);
        seg.push_str(&format!("{r},A,{},{s},{},{}\n", r + 1, 1 - s, s));
    }
    write(&an.join("segmentation.csv"), &seg);
    write(&an.join("pc1/traversal.pdb"), "END\n");
    run
}

#[test]
fn run_report_is_valid_self_contained_and_exact() {
    let d = tempfile::tempdir().unwrap();
    let run = fake_run(d.path());
    let r = build_report(&run).unwrap();
    assert_eq!(r.kind, DirKind::Run);
    assert!(r.warnings.is_empty(), "{:?}", r.warnings);
    let imgs = check_html(&r.html).unwrap();
    // loss terms (4), PCA: cluster + truth + density (3), UMAP (3), histograms (3),
    // examples (1), segmentation (1), per-frame RMSD (1).
    assert_eq!(imgs, 4 + 3 + 3 + 3 + 1 + 1 + 1, "images");
    let h = &r.html;
    // Command and settings, escaped.
    assert!(h.contains("--out star &lt;&amp;&gt;"));
    assert!(h.contains("data-key=\"zdim\">8<") && h.contains("data-key=\"lr\">0.0001<"));
    // Truth metrics verbatim, and the |Spearman| line.
    assert!(h.contains("data-key=\"pc1_frame_spearman\">-0.987654<"));
    assert!(h.contains("data-key=\"rmsd_mean_A\">1.234<"));
    assert!(h.contains("PC1–frame |Spearman| = 0.988"));
    assert_eq!(r.numbers["pc1_frame_spearman"], serde_json::json!(-0.987654));
    // Explained variance in the histogram captions.
    assert!(h.contains("PC1 (91.0 % of the variance)"));
    // Segmentation summary table.
    assert!(h.contains("<td>1</td><td>30</td><td>31–60</td>"));
    // The file table names ChimeraX for PDB files.
    assert!(h.contains("pc1/traversal.pdb") && h.contains("ChimeraX"));
    for s in [
        "command",
        "configuration",
        "loss",
        "latent",
        "pc-histograms",
        "examples",
        "segmentation",
        "truth",
        "files",
    ] {
        assert!(h.contains(&format!("<section id=\"{s}\">")), "section {s}");
    }
}

#[test]
fn a_bad_file_becomes_a_warning_naming_it() {
    let d = tempfile::tempdir().unwrap();
    let run = fake_run(d.path());
    std::fs::write(run.join("metrics.csv"), "step,epoch,images,elapsed_s,loss\n1,0,1,0.1,oops\n").unwrap();
    std::fs::write(run.join("analysis/pca.npy"), b"garbage").unwrap();
    let r = build_report(&run).unwrap();
    check_html(&r.html).unwrap();
    assert_eq!(r.warnings.len(), 2, "{:?}", r.warnings);
    assert!(
        r.warnings[0].contains("metrics.csv")
            && r.warnings[0].contains("line 2")
            && r.warnings[0].contains("loss")
    );
    assert!(r.warnings[1].contains("pca.npy") && r.warnings[1].contains("magic"));
    assert!(r.html.contains("class=\"warn\""));
}

#[test]
fn a_folder_of_something_else_is_an_error() {
    let d = tempfile::tempdir().unwrap();
    let e = build_report(d.path()).unwrap_err().to_string();
    assert!(e.contains("not a cryoforge output folder"), "{e}");
}
