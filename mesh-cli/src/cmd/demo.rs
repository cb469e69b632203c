//! `mesh-cli demo`: the rogue-agent scenario (contract §8), end to end, on a local mesh.
//! Not written yet.

use crate::error::CliError;
use crate::Ctx;

#[derive(Debug, Clone, clap::Args)]
pub struct Args {}

pub async fn run(_args: Args, _ctx: &mut Ctx) -> Result<(), CliError> {
    Err(CliError::NotImplemented("demo"))
}
