//! `ferroscope recipe list|set NAME`: the running station's products, over its local control
//! socket (see `station::control_socket`).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Result;
use clap::Subcommand;

use ferroscope::station::config::StationConfig;
use ferroscope::station::control_socket::{ask, socket_path};

#[derive(Subcommand)]
pub enum RecipeCmd {
    /// The profile's recipes and the one the running station decides with.
    List {
        /// The running station's profile (default: the first found of $FERROSCOPE_CONFIG, /etc/ferroscope/station.toml, boards/host-sim.toml).
        #[arg(long)]
        config: Option<PathBuf>,
        /// One JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Switch the running station to recipe NAME: returns once it decides with it (exit 0), or
    /// says why it was refused (exit 1; the running recipe stays).
    Set {
        /// The recipe's name (`station.recipe` or a `[[recipes]]` name).
        name: String,
        /// The running station's profile.
        #[arg(long)]
        config: Option<PathBuf>,
        /// One JSON object.
        #[arg(long)]
        json: bool,
    },
}

fn socket(config: Option<&Path>) -> Result<PathBuf> {
    let path = super::profile(config)?;
    Ok(socket_path(&StationConfig::load(&path)?))
}

/// Run one `recipe` command.
pub fn recipe(cmd: RecipeCmd) -> Result<ExitCode> {
    let (config, request, json) = match &cmd {
        RecipeCmd::List { config, json } => (config, "recipe list".to_string(), *json),
        RecipeCmd::Set { name, config, json } => (config, format!("recipe set {name}"), *json),
    };
    let answer = ask(&socket(config.as_deref())?, &request)?;
    let ok = answer["ok"].as_bool() == Some(true);
    if json {
        println!("{answer}");
    } else if !ok {
        eprintln!("refused: {}", answer["error"].as_str().unwrap_or("?"));
    } else if let RecipeCmd::Set { .. } = cmd {
        println!(
            "recipe {} decides from item {} of this run on",
            answer["recipe"].as_str().unwrap_or("?"),
            answer["after_items"].as_u64().unwrap_or(0) + 1
        );
    } else {
        let active = answer["active"].as_str().unwrap_or("");
        for (i, n) in answer["recipes"].as_array().into_iter().flatten().enumerate() {
            let n = n.as_str().unwrap_or("?");
            println!("{} {i:>2} {n}", if n == active { "*" } else { " " });
        }
    }
    Ok(if ok { ExitCode::SUCCESS } else { ExitCode::from(1) })
}
