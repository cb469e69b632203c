//! Runs the flood-and-kill scenario across the loss of the node leading `MESH_INTENTS`
//! ([`mesh_tests::node_loss`]) many times, one after another, and prints the figures of each
//! run and the totals. Exits 1 if any run lost an intent, delivered one out of order, delivered
//! to or from a killed agent after its kill returned, or had a kill exit other than 0 or 3.
//!
//! `cargo run -p mesh-tests --bin node-loss-loop -- --runs 20` (needs `MESH_NATS_SERVER` or a
//! `nats-server` on `PATH`, like the tests; about 40 s per run).

use std::process::ExitCode;

use mesh_tests::init_tracing;
use mesh_tests::node_loss::{run_once, Figures};

fn runs_from_args() -> Result<usize, String> {
    let mut args = std::env::args().skip(1);
    let mut runs = 20;
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--runs" => {
                runs = args
                    .next()
                    .and_then(|v| v.parse().ok())
                    .ok_or("--runs takes a number")?;
            }
            "-h" | "--help" => {
                return Err("usage: node-loss-loop [--runs N]   (default 20)".into());
            }
            other => return Err(format!("unknown argument {other:?}; try --help")),
        }
    }
    Ok(runs)
}

fn print_run(run: usize, figures: &Figures) {
    println!("run {run:>2}: {}", figures.summary());
    for i in &figures.inversions {
        println!("        inversion: {i}");
    }
    for k in &figures.kills {
        if k.exit != Some(0) || k.after_return() > 0 {
            println!(
                "        kill {}: to {}→{} from {}→{}; {}",
                k.agent, k.to_at_return, k.to_at_end, k.from_at_return, k.from_at_end, k.output
            );
        }
    }
}

fn main() -> ExitCode {
    let runs = match runs_from_args() {
        Ok(runs) => runs,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    init_tracing();
    let rt = match mesh_tests::scenario_runtime() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let all: Vec<Figures> = rt.block_on(async {
        let mut all = Vec::new();
        for run in 1..=runs {
            let figures = run_once().await;
            print_run(run, &figures);
            all.push(figures);
        }
        all
    });
    let sum = |f: fn(&Figures) -> usize| all.iter().map(f).sum::<usize>();
    let exits = |want: fn(Option<i32>) -> bool| sum_kills(&all, want);
    println!(
        "{runs} runs: sent {} delivered {} lost {} out-of-order {} after-kill {} \
         unconfirmed-delivering {} kills exit 0: {} exit 3: {} other: {}",
        sum(|f| f.sent),
        sum(|f| f.delivered),
        sum(Figures::lost),
        sum(|f| f.inversions.len()),
        sum(Figures::after_kill),
        sum(Figures::unconfirmed_delivering),
        exits(|e| e == Some(0)),
        exits(|e| e == Some(3)),
        exits(|e| e != Some(0) && e != Some(3)),
    );
    if all.iter().all(Figures::clean) {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn sum_kills(all: &[Figures], want: fn(Option<i32>) -> bool) -> usize {
    all.iter()
        .flat_map(|f| &f.kills)
        .filter(|k| want(k.exit))
        .count()
}
