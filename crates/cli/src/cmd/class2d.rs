//! `cryoforge class2d`: reference-free 2D classification (RELION Class2D-style EM).

use crate::common::{ensure_dir, write_json_atomic, Ctx, ParticleArgs};
use anyhow::Result;
use cryoforge_io::stack::{Origin, Pose};
use cryoforge_io::{export, mrc};
use cryoforge_refine::class2d::{class2d, Class2dConfig, Class2dIteration, Class2dObserver};
use cryoforge_report::charts::{image_tiles_png, Tile};
use serde_json::json;
use std::fmt::Write as _;
use std::path::PathBuf;

/// Reference-free 2D classification: expectation–maximisation over K class averages,
/// in-plane rotations and shifts, with the CTF (as RELION's Class2D), from random classes.
///
/// Every class has its own noise spectrum (estimated from its members' residuals), so junk
/// (empty picks, ice, off-centre picks, aggregates: images a class average cannot explain)
/// gathers in its own classes. Use it to throw out junk before ab initio and refinement: look at the gallery in report.html and keep the
/// good classes with `cryoforge select OUT/particles.star --classes 1,4,7 -o good.star`.
///
/// Writes OUT/classes.mrcs (the averages, class i in slice i), particles.star (input columns,
/// rlnClassNumber, rlnAnglePsi, rlnOriginX/YAngst, rlnMaxValueProbDistribution), classes.csv,
/// iterations.jsonl, summary.json and report.html (gallery).
///
/// Examples:
///   cryoforge class2d particles.star --classes 50 --out class2d/
///   cryoforge class2d particles.star --classes 20 --highres-a 10 --iterations 30 --out c2d/
#[derive(clap::Args, Debug)]
#[command(verbatim_doc_comment)]
pub struct Args {
    #[command(flatten)]
    pub input: ParticleArgs,
    /// Number of classes.
    #[arg(long, default_value_t = 20, value_name = "K")]
    pub classes: usize,
    /// Output folder.
    #[arg(long, short, default_value = "class2d", value_name = "DIR")]
    pub out: PathBuf,
    /// EM iterations.
    #[arg(long, default_value_t = 25)]
    pub iterations: usize,
    /// In-plane angular step (degrees).
    #[arg(long, default_value_t = 10.0, value_name = "DEG")]
    pub psi_step_deg: f64,
    /// Shift search range around the previous shift (Å).
    #[arg(long, default_value_t = 10.0, value_name = "A")]
    pub offset_range_a: f64,
    /// Shift step (px).
    #[arg(long, default_value_t = 1.0, value_name = "PX")]
    pub offset_step_px: f64,
    /// Highest resolution used in the alignment (Å; default 15).
    #[arg(long, value_name = "A")]
    pub highres_a: Option<f64>,
    /// Particle diameter of the mask (Å; default 0.75 × the box).
    #[arg(long, value_name = "A")]
    pub particle_diameter_a: Option<f64>,
    /// Weight, in particles, of the pooled noise spectrum in each class's own noise
    /// spectrum (`inf`: one noise spectrum for all classes, as RELION).
    #[arg(long, default_value_t = 20.0, value_name = "N")]
    pub noise_prior: f64,
    /// Particles are protein-dark (flip their sign).
    #[arg(long)]
    pub invert: bool,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Print summary.json on stdout.
    #[arg(long)]
    pub json: bool,
}

struct Obs {
    bar: indicatif::ProgressBar,
}

impl Class2dObserver for Obs {
    fn iteration(&self, it: &Class2dIteration) {
        self.bar.set_position(it.iter as u64);
        self.bar.set_message(format!("{:.1} % changed class", 100.0 * it.changed));
    }
}

pub fn run(a: Args, ctx: &Ctx) -> Result<()> {
    let cfg = Class2dConfig {
        classes: a.classes,
        iterations: a.iterations,
        psi_step_deg: a.psi_step_deg,
        offset_range_a: a.offset_range_a,
        offset_step_px: a.offset_step_px,
        highres_a: a.highres_a,
        particle_diameter_a: a.particle_diameter_a,
        noise_prior: a.noise_prior,
        seed: a.seed,
        invert: a.invert,
        ..Default::default()
    };
    cfg.validate()?;
    let s = a.input.load(ctx)?;
    let d = s.box_px()?;
    let apix = s.apix_a()?;
    let t0 = std::time::Instant::now();
    let obs = Obs { bar: ctx.progress(a.iterations as u64, "2D classification") };
    let o = class2d(&s, &cfg, &obs)?;
    obs.bar.finish_and_clear();
    let secs = t0.elapsed().as_secs_f64();
    let k = a.classes;
    let mut order: Vec<usize> = (0..k).collect();
    order.sort_by(|&x, &y| o.class_sizes[y].cmp(&o.class_sizes[x]));
    let mut csv = String::from("class,particles,fraction\n");
    for c in 0..k {
        let _ =
            writeln!(csv, "{},{},{:.4}", c + 1, o.class_sizes[c], o.class_sizes[c] as f64 / s.len() as f64);
    }
    let mut jl = String::new();
    for it in &o.iterations {
        jl.push_str(&serde_json::to_string(it)?);
        jl.push('\n');
    }
    let tiles: Vec<Tile> = order
        .iter()
        .map(|&c| Tile {
            pixels: o.averages[c].clone(),
            nx: d,
            ny: d,
            caption: format!("{} ({})", c + 1, o.class_sizes[c]),
        })
        .collect();
    let gallery = image_tiles_png("Class averages (largest first)", &tiles, 8.min(k.max(1)), 96)?;
    let mut st = s.clone();
    st.poses = Some(
        (0..s.len())
            .map(|i| Pose {
                rot: cryoforge_core::EulerRelion::new(0.0, 0.0, o.psi_deg[i]).to_rot(),
                shift_px: o.shift_px[i],
            })
            .collect(),
    );
    st.poses_origin = Some(Origin::Computed);
    let summary = json!({
        "command": std::env::args().collect::<Vec<_>>().join(" "),
        "version": env!("CARGO_PKG_VERSION"),
        "particles": s.len(),
        "box_px": d,
        "apix_a": apix,
        "classes": k,
        "class_sizes": o.class_sizes,
        "particle_diameter_a": o.diameter_a,
        "config": cfg,
        "seconds": secs,
    });
    ensure_dir(&a.out)?;
    let stack: Vec<f32> = o.averages.iter().flatten().copied().collect();
    mrc::write_stack(a.out.join("classes.mrcs"), &stack, d, d, k, apix as f32)?;
    let classes: Vec<String> = o.class_of.iter().map(|c| (c + 1).to_string()).collect();
    let probs: Vec<String> = o.max_prob.iter().map(|p| export::fmt(*p)).collect();
    export::write_star_with(
        &st,
        &a.out.join("particles.star"),
        &[("rlnClassNumber", classes), ("rlnMaxValueProbDistribution", probs)],
    )?;
    cryoforge_io::atomic::write_bytes_atomic(&a.out.join("classes.csv"), csv.as_bytes())?;
    cryoforge_io::atomic::write_bytes_atomic(&a.out.join("iterations.jsonl"), jl.as_bytes())?;
    cryoforge_io::atomic::write_bytes_atomic(&a.out.join("gallery.png"), &gallery)?;
    write_json_atomic(&a.out.join("summary.json"), &summary)?;
    if let Err(e) = crate::cmd::report::write(&a.out, &a.out.join("report.html")) {
        tracing::warn!("results written, but the report failed: {e:#}");
    }
    if a.json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    }
    ctx.done(format!(
        "2D classification of {} particles into {k} classes in {secs:.1} s; largest {}; results in {}",
        s.len(),
        order
            .iter()
            .take(5)
            .map(|&c| format!("{} ({})", c + 1, o.class_sizes[c]))
            .collect::<Vec<_>>()
            .join(", "),
        a.out.display()
    ));
    Ok(())
}
