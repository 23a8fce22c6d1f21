//! loadgen's command line. Exit codes: 0 every agent connected; 1 the run could not be done
//! (unreachable server, bad credentials, I/O); 2 bad flags; 3 the run was done but some agents
//! failed (see the summary); 4 `--nat-matrix` did not match the theory (see the table).

use std::process::ExitCode;

use clap::Parser;
use loadgen::cli::{Args, Config, Mode};

fn main() -> ExitCode {
    let filter = tracing_subscriber::EnvFilter::try_from_env("LOADGEN_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    if std::env::args_os().nth(1).is_some_and(|a| a == "natcheck") {
        return loadgen::natcheck::main(std::env::args_os().skip(1));
    }
    let config = match Config::from_args(Args::parse()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("loadgen: {e}");
            return ExitCode::from(2);
        }
    };
    for note in &config.notes {
        eprintln!("note: {note}");
    }
    // The allocation benchmarks have reports of their own.
    let alloc_bench = match config.mode {
        Mode::Churn => {
            Some(loadgen::churn::run(&config).map(|r| (r.summary(), r.allocations.failed)))
        }
        Mode::Idle => {
            Some(loadgen::idle::run(&config).map(|r| (r.summary(), r.allocations.failed)))
        }
        Mode::TurnOnly | Mode::Ice => None,
    };
    if let Some(result) = alloc_bench {
        return match result {
            Ok((summary, failed)) => {
                print!("{summary}");
                if failed > 0 {
                    ExitCode::from(3)
                } else {
                    ExitCode::SUCCESS
                }
            }
            Err(e) => {
                eprintln!("loadgen: {e}");
                ExitCode::from(1)
            }
        };
    }
    match loadgen::run::run(&config) {
        Ok(outcome) => {
            if let Some(m) = &outcome.report.matrix {
                println!("{}", m.table());
            }
            print!("{}", outcome.report.summary());
            let f = outcome.fabric;
            if f.nat_sockets_opened > 0 || f.filtered + f.no_mapping + f.unreachable > 0 {
                println!(
                    "  nat: {} public sockets opened, {} closed; dropped: {} filtered, {} no mapping, {} unreachable, {} port exhaustion",
                    f.nat_sockets_opened,
                    f.nat_sockets_closed,
                    f.filtered,
                    f.no_mapping,
                    f.unreachable,
                    f.nat_full
                );
            }
            if outcome
                .report
                .matrix
                .as_ref()
                .is_some_and(|m| m.mismatches() > 0)
            {
                ExitCode::from(4)
            } else if outcome.report.agents.failed > 0 {
                ExitCode::from(3)
            } else {
                ExitCode::SUCCESS
            }
        }
        Err(e) => {
            eprintln!("loadgen: {e}");
            ExitCode::from(1)
        }
    }
}
