//! The `cryoforge` binary: argument parsing and glue. Every capability lives in a
//! library crate; each subcommand is one module in `cmd/`.

mod cmd;
mod common;

use clap::{Parser, Subcommand};

/// cryoforge — fast cryo-EM single-particle analysis that reads and writes the files of
/// RELION, cryoSPARC, cryoDRGN and ChimeraX.
#[derive(Parser)]
#[command(name = "cryoforge", version, about, long_about = None, propagate_version = true)]
struct Cli {
    /// Worker threads (default: all cores).
    #[arg(long, global = true)]
    threads: Option<usize>,
    /// Print only errors and the final result line.
    #[arg(long, short, global = true)]
    quiet: bool,
    /// More logging (-v info, -vv debug).
    #[arg(long, short, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    Info(cmd::info::Args),
    Convert(cmd::convert::Args),
    Select(cmd::select::Args),
    Downsample(cmd::downsample::Args),
    Reconstruct(cmd::reconstruct::Args),
    Refine(cmd::refine::Args),
    Fsc(cmd::fsc::Args),
    Simulate(cmd::simulate::Args),
    CenterModel(cmd::center_model::Args),
    Pdb2map(cmd::pdb2map::Args),
    Mask(cmd::mask::Args),
    Postprocess(cmd::postprocess::Args),
    Orient(cmd::orient::Args),
    AlignMaps(cmd::align_maps::Args),
    Abinit(cmd::abinit::Args),
    Class2d(cmd::class2d::Args),
    Rebalance(cmd::rebalance::Args),
    Report(cmd::report::Args),
    Demo(cmd::demo::Args),
    Morph(cmd::morph::Args),
    /// cryoSPHERE: train, analyze, toy benchmark.
    Sphere(cmd::sphere::Args),
    Star(cmd::star::Args),
    /// Cryo-IEF: particle features from a ViT foundation model.
    Ief(cmd::ief::Args),
    /// CryoRanker: particle-quality scores.
    Ranker(cmd::ranker::Args),
}

fn main() {
    cryoforge_core::alloc::retain_freed_memory();
    let cli = Cli::parse();
    let level = if cli.quiet {
        "error"
    } else {
        match cli.verbose {
            0 => "warn",
            1 => "info",
            _ => "debug",
        }
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("CRYOFORGE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).without_time().init();
    if let Some(t) = cli.threads {
        // candle's CPU kernels size their work split from RAYON_NUM_THREADS; still single-threaded here.
        std::env::set_var("RAYON_NUM_THREADS", t.max(1).to_string());
        if let Err(e) = rayon::ThreadPoolBuilder::new().num_threads(t.max(1)).build_global() {
            eprintln!("warning: could not set the thread count: {e}");
        }
    }
    let ctx = common::Ctx { quiet: cli.quiet, nested: false };
    let r = match cli.command {
        Command::Info(a) => cmd::info::run(a, &ctx),
        Command::Convert(a) => cmd::convert::run(a, &ctx),
        Command::Select(a) => cmd::select::run(a, &ctx),
        Command::Downsample(a) => cmd::downsample::run(a, &ctx),
        Command::Reconstruct(a) => cmd::reconstruct::run(a, &ctx),
        Command::Refine(a) => cmd::refine::run(a, &ctx),
        Command::Fsc(a) => cmd::fsc::run(a, &ctx),
        Command::Simulate(a) => cmd::simulate::run(a, &ctx),
        Command::CenterModel(a) => cmd::center_model::run(a, &ctx),
        Command::Pdb2map(a) => cmd::pdb2map::run(a, &ctx),
        Command::Mask(a) => cmd::mask::run(a, &ctx),
        Command::Postprocess(a) => cmd::postprocess::run(a, &ctx),
        Command::Orient(a) => cmd::orient::run(a, &ctx),
        Command::AlignMaps(a) => cmd::align_maps::run(a, &ctx),
        Command::Abinit(a) => cmd::abinit::run(a, &ctx),
        Command::Class2d(a) => cmd::class2d::run(a, &ctx),
        Command::Rebalance(a) => cmd::rebalance::run(a, &ctx),
        Command::Report(a) => cmd::report::run(a, &ctx),
        Command::Demo(a) => cmd::demo::run(a, &ctx),
        Command::Morph(a) => cmd::morph::run(a, &ctx),
        Command::Sphere(a) => cmd::sphere::run(a, &ctx),
        Command::Star(a) => cmd::star::run(a, &ctx),
        Command::Ief(a) => cmd::ief::run(a, &ctx),
        Command::Ranker(a) => cmd::ranker::run(a, &ctx),
    };
    if let Err(e) = r {
        eprintln!("error: {e}");
        let mut src = e.source();
        while let Some(s) = src {
            eprintln!("  caused by: {s}");
            src = s.source();
        }
        std::process::exit(1);
    }
}
