//! `ops bench`: the pipeline benchmark. It lives in `ops/bench/pipeline` (Python: it drives
//! pgbench, wrk and h2load and reads /proc), and this runs it from the repository root.

use std::path::PathBuf;
use std::process::{Command, ExitCode};

use clap::Args;

use crate::OpsError;

#[derive(Args)]
pub struct BenchArgs {
    /// Passed to ops/bench/pipeline (e.g. --quick, --json FILE).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    args: Vec<String>,
}

pub fn run(args: BenchArgs) -> Result<ExitCode, OpsError> {
    let script = repository_root()?.join("ops/bench/pipeline");
    let status = Command::new(&script)
        .args(&args.args)
        .status()
        .map_err(OpsError::io(format!("cannot run {}", script.display())))?;
    Ok(ExitCode::from(
        status.code().unwrap_or(1).clamp(0, 255) as u8
    ))
}

/// The checkout the command runs in: the nearest directory above the current one that
/// holds `ops/bench/pipeline`.
pub fn repository_root() -> Result<PathBuf, OpsError> {
    let cwd = std::env::current_dir().map_err(OpsError::io("current directory"))?;
    cwd.ancestors()
        .find(|dir| dir.join("ops/bench/pipeline").is_file())
        .map(PathBuf::from)
        .ok_or_else(|| {
            OpsError::Usage(
                "run ops from inside the repository (ops/bench/pipeline not found)".into(),
            )
        })
}
