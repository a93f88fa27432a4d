//! `cryoforge abinit`: reference-free initial models (cryoSPARC-style SGD, K classes).

use crate::common::{ensure_dir, write_json_atomic, Ctx, ParticleArgs};
use anyhow::{bail, Context, Result};
use cryoforge_io::{export, mrc, stack::Origin};
use cryoforge_refine::abinit::{abinit, AbinitConfig, AbinitIteration, AbinitObserver};
use serde_json::json;
use std::fmt::Write as _;
use std::path::PathBuf;

/// Reference-free initial models: stochastic gradient descent over mini-batches from random
/// starts (cryoSPARC's ab initio), with K classes.
///
/// Each iteration searches a random mini-batch globally against every class (the refine
/// engine's coarse-to-fine search), assigns class posteriors and moves each class map a step
/// towards the batch's reconstruction; the resolution rises from --res-start-a (35 Å) to
/// --res-end-a (12 Å). At the end every particle is assigned to its most probable class and
/// each class is reconstructed with gold-standard halves. An ab initio map has either hand:
/// compare with a known map through `cryoforge align-maps --try-hand`.
///
/// Writes OUT/class_001.mrc … (and class_NNN_half_a/b.mrc), particles.star (input columns,
/// poses of the assigned class, rlnClassNumber), classes.csv, iterations.jsonl,
/// summary.json and report.html; with --then-refine, OUT/refine/ from `cryoforge refine` on
/// the largest class (or --class).
///
/// Examples:
///   cryoforge abinit particles.star --out abinit/
///   cryoforge abinit particles.star --classes 3 --starts 2 --seed 7 --out abinit3/
///   cryoforge abinit particles.star --out abinit/ --then-refine
#[derive(clap::Args, Debug)]
#[command(verbatim_doc_comment)]
pub struct Args {
    #[command(flatten)]
    pub input: ParticleArgs,
    /// Output folder.
    #[arg(long, short, default_value = "abinit", value_name = "DIR")]
    pub out: PathBuf,
    /// Number of classes.
    #[arg(long, default_value_t = 1, value_name = "K")]
    pub classes: usize,
    /// Independent random starts (the best by log-likelihood on a common batch is kept).
    #[arg(long, default_value_t = 1)]
    pub starts: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Point-group symmetry.
    #[arg(long, default_value = "C1")]
    pub sym: String,
    /// SGD iterations (mini-batches).
    #[arg(long, default_value_t = 80)]
    pub iterations: usize,
    /// Particles per mini-batch.
    #[arg(long, default_value_t = 300)]
    pub batch: usize,
    /// Resolution of the first iterations (Å).
    #[arg(long, default_value_t = 35.0, value_name = "A")]
    pub res_start_a: f64,
    /// Resolution of the last iterations (Å).
    #[arg(long, default_value_t = 12.0, value_name = "A")]
    pub res_end_a: f64,
    /// Particle diameter for the mask (Å; default 0.75 × the box).
    #[arg(long, value_name = "A")]
    pub particle_diameter_a: Option<f64>,
    /// Shift search range around the box centre (Å).
    #[arg(long, default_value_t = 10.0, value_name = "A")]
    pub offset_range_a: f64,
    /// Particles are protein-dark (flip their sign).
    #[arg(long)]
    pub invert: bool,
    /// Continue with `cryoforge refine` on the largest class (or --class) into OUT/refine.
    #[arg(long)]
    pub then_refine: bool,
    /// The class --then-refine refines (1-based).
    #[arg(long, value_name = "N", requires = "then_refine")]
    pub class: Option<usize>,
    /// Print summary.json on stdout.
    #[arg(long)]
    pub json: bool,
}

struct Obs<'a> {
    bar: indicatif::ProgressBar,
    ctx: &'a Ctx,
}

impl AbinitObserver for Obs<'_> {
    fn iteration(&self, it: &AbinitIteration) {
        self.bar.set_position(it.iter as u64);
        let fr: Vec<String> = it.class_fractions.iter().map(|f| format!("{f:.2}")).collect();
        self.bar.set_message(format!(
            "start {} · {:.1} Å · classes [{}]",
            it.start + 1,
            it.resolution_a,
            fr.join(" ")
        ));
        tracing::debug!(
            "abinit iteration {}: {:.1} Å, η {:.3}, score {:.1}",
            it.iter,
            it.resolution_a,
            it.eta,
            it.mean_score
        );
    }
    fn stage(&self, what: &str) {
        self.bar.set_message(what.to_string());
        self.ctx.say(format!("abinit: {what}"));
    }
}

pub fn run(a: Args, ctx: &Ctx) -> Result<()> {
    let cfg = AbinitConfig {
        classes: a.classes,
        starts: a.starts,
        seed: a.seed,
        res_start_a: a.res_start_a,
        res_end_a: a.res_end_a,
        iterations: a.iterations,
        batch: a.batch,
        particle_diameter_a: a.particle_diameter_a,
        offset_range_a: a.offset_range_a,
        symmetry: a.sym.clone(),
        invert: a.invert,
        ..Default::default()
    };
    cfg.validate()?;
    if let Some(c) = a.class {
        if c == 0 || c > a.classes {
            bail!("--class {c}: classes are numbered 1..={}", a.classes);
        }
    }
    let s = a.input.load(ctx)?;
    let d = s.box_px()?;
    let apix = s.apix_a()?;
    let t0 = std::time::Instant::now();
    let obs = Obs { bar: ctx.progress(a.iterations as u64, "ab initio"), ctx };
    let o = abinit(&s, &cfg, &obs)?;
    obs.bar.finish_and_clear();
    let secs = t0.elapsed().as_secs_f64();

    let k = a.classes;
    let sizes: Vec<usize> = (0..k).map(|c| o.class_of.iter().filter(|&&x| x == c).count()).collect();
    let res: Vec<Option<f64>> =
        o.recons.iter().map(|r| r.as_ref().map(|r| r.fsc.resolution_at(0.143))).collect();
    // Files, built in memory first.
    let mut csv = String::from("class,particles,fraction,resolution_0.143_A,map\n");
    for c in 0..k {
        let _ = writeln!(
            csv,
            "{},{},{:.4},{},class_{:03}.mrc",
            c + 1,
            sizes[c],
            sizes[c] as f64 / s.len() as f64,
            res[c].map(|r| format!("{r:.2}")).unwrap_or_else(|| "NaN".into()),
            c + 1
        );
    }
    let mut jl = String::new();
    for it in &o.iterations {
        jl.push_str(&serde_json::to_string(it)?);
        jl.push('\n');
    }
    let mut st = s.clone();
    st.poses = Some(o.poses.clone());
    st.poses_origin = Some(Origin::Computed);
    st.half_subset = Some(o.halves.iter().map(|h| h + 1).collect());
    let largest = (0..k).max_by_key(|&c| sizes[c]).unwrap_or(0);
    let summary = json!({
        "command": std::env::args().collect::<Vec<_>>().join(" "),
        "version": env!("CARGO_PKG_VERSION"),
        "particles": s.len(),
        "box_px": d,
        "apix_a": apix,
        "classes": k,
        "class_sizes": sizes,
        "class_resolution_0.143_A": res,
        "largest_class": largest + 1,
        "starts": a.starts,
        "chosen_start": o.chosen_start + 1,
        "start_scores": o.start_scores,
        "particle_diameter_a": o.diameter_a,
        "config": cfg,
        "seconds": secs,
    });
    ensure_dir(&a.out)?;
    for c in 0..k {
        let name = format!("class_{:03}", c + 1);
        mrc::write_volume(a.out.join(format!("{name}.mrc")), &o.maps[c], [d; 3], apix as f32, [0.0; 3])?;
        if let Some(r) = &o.recons[c] {
            mrc::write_volume(
                a.out.join(format!("{name}_half_a.mrc")),
                &r.half_a,
                [d; 3],
                apix as f32,
                [0.0; 3],
            )?;
            mrc::write_volume(
                a.out.join(format!("{name}_half_b.mrc")),
                &r.half_b,
                [d; 3],
                apix as f32,
                [0.0; 3],
            )?;
        }
    }
    let classes: Vec<String> = o.class_of.iter().map(|c| (c + 1).to_string()).collect();
    let probs: Vec<String> = o.class_prob.iter().map(|p| export::fmt(*p)).collect();
    export::write_star_with(
        &st,
        &a.out.join("particles.star"),
        &[("rlnClassNumber", classes), ("rlnMaxValueProbDistribution", probs)],
    )?;
    cryoforge_io::atomic::write_bytes_atomic(&a.out.join("classes.csv"), csv.as_bytes())?;
    cryoforge_io::atomic::write_bytes_atomic(&a.out.join("iterations.jsonl"), jl.as_bytes())?;
    write_json_atomic(&a.out.join("summary.json"), &summary)?;
    if let Err(e) = crate::cmd::report::write(&a.out, &a.out.join("report.html")) {
        tracing::warn!("results written, but the report failed: {e:#}");
    }
    if a.json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    }
    let list: Vec<String> = (0..k).map(|c| format!("{} ({} particles)", c + 1, sizes[c])).collect();
    ctx.done(format!(
        "ab initio: {k} class(es) {} in {secs:.1} s; results in {}",
        list.join(", "),
        a.out.display()
    ));
    if a.then_refine {
        let c = a.class.map(|c| c - 1).unwrap_or(largest);
        let members: Vec<usize> = (0..s.len()).filter(|&i| o.class_of[i] == c).collect();
        let sub_star = a.out.join(format!("class_{:03}_particles.star", c + 1));
        let mut sub = s.clone();
        sub.select(&members).context("selecting the class's particles")?;
        export::write_star(&sub, &sub_star)?;
        let refine_args = crate::cmd::refine::Args::for_abinit(
            sub_star,
            a.out.join(format!("class_{:03}.mrc", c + 1)),
            a.out.join("refine"),
            &a.sym,
            a.invert,
            a.seed,
        )?;
        ctx.say(format!(
            "refining class {} ({} particles) into {}",
            c + 1,
            members.len(),
            a.out.join("refine").display()
        ));
        crate::cmd::refine::run(refine_args, ctx)?;
    }
    Ok(())
}
