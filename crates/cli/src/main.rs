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
    /// cryoPROS: auxiliary particles for preferred-orientation data.
    Pros(cmd::pros::Args),
    Wizard(cmd::wizard::Args),
    /// CryoSolver: heterogeneous reconstruction on frozen Cryo-IEF features.
    Solver(cmd::solver::Args),
}

/// Commands that split their work over MPI ranks (`mpirun -n K cryoforge …`, built with
/// `--features mpi`); every other command refuses to run on more than one rank.
fn distributed_ok(c: &Command) -> bool {
    match c {
        Command::Reconstruct(_) | Command::Refine(_) => true,
        Command::Ranker(a) => cmd::ranker::distributed_ok(a),
        Command::Ief(a) => cmd::ief::distributed_ok(a),
        Command::Star(a) => cmd::star::distributed_ok(a),
        Command::Sphere(a) => cmd::sphere::distributed_ok(a),
        _ => false,
    }
}

/// Started by mpirun/srun (Open MPI, PMIx or PMI set these).
#[cfg(feature = "mpi")]
fn under_mpi_launcher() -> bool {
    ["OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "PMI_SIZE"].iter().any(|k| std::env::var_os(k).is_some())
}

fn main() {
    cryoforge_core::alloc::retain_freed_memory();
    #[cfg(feature = "mpi")]
    let _mpi = if under_mpi_launcher() { cryoforge_core::dist::mpi::init() } else { None };
    let world = cryoforge_core::dist::world();
    if world.is_distributed() {
        // A panicking rank stops all ranks (after the default hook has printed the panic).
        let hook = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            eprint!("rank {}: ", cryoforge_core::dist::world().rank());
            hook(info);
            cryoforge_core::dist::world().abort(101);
        }));
    }
    let cli = Cli::parse();
    if world.is_distributed() && !distributed_ok(&cli.command) {
        if world.is_root() {
            eprintln!(
                "error: this command does not run across MPI ranks ({} started); run it with one rank. \
                 Distributed: reconstruct, refine, ranker score, ief features, star train, sphere train",
                world.size()
            );
        }
        world.abort(2);
    }
    let quiet = cli.quiet || !world.is_root();
    let level = if quiet {
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
    let ctx = common::Ctx { quiet, nested: false };
    // Fault injection for the MPI tests: this rank fails at once, while the others go on
    // into their first collective and must be stopped with its error.
    let injected = std::env::var("CRYOFORGE_MPI_FAIL_RANK").ok().and_then(|v| v.parse::<usize>().ok());
    if world.is_distributed() && injected == Some(world.rank()) {
        eprintln!(
            "rank {} of {}: error: failure injected by CRYOFORGE_MPI_FAIL_RANK",
            world.rank(),
            world.size()
        );
        world.abort(1);
    }
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
        Command::Pros(a) => cmd::pros::run(a, &ctx),
        Command::Wizard(a) => cmd::wizard::run(a, &ctx),
        Command::Solver(a) => cmd::solver::run(a, &ctx),
    };
    if let Err(e) = r {
        if world.is_distributed() {
            eprint!("rank {} of {}: ", world.rank(), world.size());
        }
        eprintln!("error: {e}");
        let mut src = e.source();
        while let Some(s) = src {
            eprintln!("  caused by: {s}");
            src = s.source();
        }
        if world.is_distributed() {
            // Every other rank is stopped with this rank's error (they may wait in a
            // collective that this rank will never join).
            world.abort(1);
        }
        std::process::exit(1);
    }
}
