//! `cryoforge ranker`: CryoRanker particle-quality scores.

use crate::cmd::ief::ModelArgs;
use crate::common::{ensure_dir, write_json_atomic, Ctx, ParticleArgs};
use anyhow::{bail, Result};
use cryoforge_ief::infer;
use cryoforge_io::export;
use cryoforge_io::stack::Source;
use std::fmt::Write as _;
use std::path::PathBuf;

/// CryoRanker (paper 001): particle-quality scores from a ViT with a ranking head.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(subcommand)]
    pub cmd: Sub,
}

#[derive(clap::Subcommand, Debug)]
pub enum Sub {
    Score(ScoreArgs),
}

/// Score every particle (0 = junk, 1 = good) with a CryoRanker model (the published v1.5
/// head: LayerNorm → Linear → sigmoid, or v1: 2-way softmax).
///
/// Writes DIR/scores.csv (index, image, score; particle order), DIR/particles_scored.star
/// (the input's columns + rlnCryoRankerScore), DIR/particles_sorted.star (best first),
/// DIR/top_N.star for each --top N (and top_N.cs when the input is a cryoSPARC .cs),
/// DIR/summary.json (counts, mean, histogram in 20 bins), DIR/examples.npy/.csv (the 8 best
/// and 8 worst particles) and DIR/report.html (score histogram, best and worst particles).
///
/// Examples:
///   cryoforge ranker score particles.star --weights cryoranker.safetensors --out ranked/
///   cryoforge ranker score J12_particles.cs --weights cryoranker.safetensors --out ranked/ --top 50000,100000
#[derive(clap::Args, Debug)]
#[command(verbatim_doc_comment)]
pub struct ScoreArgs {
    #[command(flatten)]
    pub particles: ParticleArgs,
    #[command(flatten)]
    pub model: ModelArgs,
    /// Output folder.
    #[arg(long, short)]
    pub out: PathBuf,
    /// Sizes of the best-scored subsets to write (default: half of the particles).
    #[arg(long, value_delimiter = ',', value_name = "N,...")]
    pub top: Option<Vec<usize>>,
}

/// Whether the subcommand runs across MPI ranks (all do).
pub fn distributed_ok(_: &Args) -> bool {
    true
}

pub fn run(a: Args, ctx: &Ctx) -> Result<()> {
    match a.cmd {
        Sub::Score(s) => score(s, ctx),
    }
}

fn score(a: ScoreArgs, ctx: &Ctx) -> Result<()> {
    let opts = a.model.options()?;
    let stack = a.particles.load(ctx)?;
    let n = stack.len();
    if n == 0 {
        bail!("{}: no particles", a.particles.particles.display());
    }
    let top = a.top.clone().unwrap_or_else(|| vec![n.div_ceil(2)]);
    for &t in &top {
        if t == 0 || t > n {
            bail!("--top {t}: must be between 1 and the number of particles ({n})");
        }
    }
    let model = a.model.load(ctx)?;
    if model.head.is_none() {
        bail!(
            "{}: no ranker head (head.mlp_classifier.0.* or head.*): an encoder only gives features (cryoforge ief features)",
            a.model.weights.display()
        );
    }
    if !cryoforge_core::dist::world().is_root() {
        // Another MPI rank: score this rank's blocks; rank 0 gathers and writes them.
        infer::run(&model, &stack, &opts, |_| Ok(()))?;
        return Ok(());
    }
    ensure_dir(&a.out)?;
    let bar = ctx.progress(n as u64, "scoring");
    let t0 = std::time::Instant::now();
    let mut scores = vec![0f32; n];
    infer::run(&model, &stack, &opts, |b| {
        if let Some(s) = b.scores {
            scores[b.start..b.start + b.len].copy_from_slice(s);
        }
        bar.inc(b.len as u64);
        Ok(())
    })?;
    bar.finish_and_clear();
    let dt = t0.elapsed().as_secs_f64();

    let mut csv = String::from("index,image,score\n");
    for (i, s) in scores.iter().enumerate() {
        let name = export::image_name(&stack, i).unwrap_or_default();
        let _ = writeln!(csv, "{i},{name},{s:.6}");
    }
    cryoforge_io::atomic::write_bytes_atomic(&a.out.join("scores.csv"), csv.as_bytes())?;
    let col: Vec<String> = scores.iter().map(|s| format!("{s:.6}")).collect();
    export::write_star_with(&stack, &a.out.join("particles_scored.star"), &[("rlnCryoRankerScore", col)])?;
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&i, &j| scores[j].total_cmp(&scores[i]).then(i.cmp(&j)));
    let mut sorted = stack.clone();
    sorted.select(&order)?;
    let col: Vec<String> = order.iter().map(|&i| format!("{:.6}", scores[i])).collect();
    export::write_star_with(&sorted, &a.out.join("particles_sorted.star"), &[("rlnCryoRankerScore", col)])?;
    let is_cs = matches!(stack.source, Source::Cs(_));
    for &t in &top {
        let mut sub = stack.clone();
        let mut keep = order[..t].to_vec();
        keep.sort_unstable();
        sub.select(&keep)?;
        let col: Vec<String> = keep.iter().map(|&i| format!("{:.6}", scores[i])).collect();
        export::write_star_with(&sub, &a.out.join(format!("top_{t}.star")), &[("rlnCryoRankerScore", col)])?;
        if is_cs {
            export::write_cs(&sub, &a.out.join(format!("top_{t}.cs")))?;
        }
    }
    // The best and worst particles as stored, for the report.
    let kb = n.min(8);
    let kw = (n - kb).min(8);
    let d = stack.box_px()?;
    let mut ex = vec![0f32; (kb + kw) * d * d];
    let mut ex_csv = String::from("kind,index,score\n");
    let picks: Vec<(&str, usize)> = order[..kb]
        .iter()
        .map(|&i| ("best", i))
        .chain(order[n - kw..].iter().rev().map(|&i| ("worst", i)))
        .collect();
    for (j, (kind, i)) in picks.iter().enumerate() {
        stack.read_image(*i, &mut ex[j * d * d..(j + 1) * d * d])?;
        let _ = writeln!(ex_csv, "{kind},{i},{:.4}", scores[*i]);
    }
    cryoforge_io::npy::write_npy_f32(a.out.join("examples.npy"), &[kb + kw, d, d], &ex)?;
    cryoforge_io::atomic::write_bytes_atomic(&a.out.join("examples.csv"), ex_csv.as_bytes())?;
    let mut hist = [0usize; 20];
    for &s in &scores {
        hist[((s.clamp(0.0, 1.0) * 20.0) as usize).min(19)] += 1;
    }
    let mean = scores.iter().map(|&s| s as f64).sum::<f64>() / n as f64;
    write_json_atomic(
        &a.out.join("summary.json"),
        &serde_json::json!({
            "particles": n,
            "weights": a.model.weights.display().to_string(),
            "head": format!("{:?}", model.head.as_ref().map(|h| h.kind)),
            "mean_score": mean,
            "above_0.5": scores.iter().filter(|&&s| s > 0.5).count(),
            "histogram_20_bins": hist.to_vec(),
            "top": top,
            "seconds": dt,
            "particles_per_s": n as f64 / dt.max(1e-9),
        }),
    )?;
    if let Err(e) = crate::cmd::report::write(&a.out, &a.out.join("report.html")) {
        ctx.say(format!("warning: report.html not written: {e}"));
    }
    ctx.done(format!(
        "scored {n} particles in {dt:.1} s ({:.1}/s), mean score {mean:.3}: wrote {}",
        n as f64 / dt.max(1e-9),
        a.out.display()
    ));
    Ok(())
}
